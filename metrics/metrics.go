// Package metrics holds walhook's Prometheus collectors in one registry, so
// every package reports under the same names and /metrics serves them all.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry is what /metrics serves.
var Registry = prometheus.NewRegistry()

var (
	// Captured counts messages written to the outbox, per sink.
	Captured = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_messages_captured_total", Help: "Messages written to the outbox.",
	}, []string{"sink"})
	// Delivered counts acknowledged messages, per sink.
	Delivered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_messages_delivered_total", Help: "Messages acknowledged by their endpoint.",
	}, []string{"sink"})
	// Failed counts messages that passed retry.max_age (an alert).
	Failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_messages_failed_total", Help: "Messages that exceeded retry.max_age and were parked as failed.",
	}, []string{"sink"})
	// Attempts counts HTTP requests by outcome class (2xx, 4xx, 5xx, timeout, error).
	Attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_delivery_attempts_total", Help: "Delivery requests by sink and outcome class.",
	}, []string{"sink", "class"})
	// Latency is commit-to-acknowledgement time of delivered messages.
	Latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "walhook_delivery_latency_seconds", Help: "Time from capture to acknowledgement.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	}, []string{"sink"})
	// RequestDuration is the HTTP round trip.
	RequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "walhook_delivery_request_seconds", Help: "HTTP request duration.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"sink"})
	// Backlog is the number of outbox messages per sink and state.
	Backlog = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "walhook_backlog_messages", Help: "Outbox messages by sink and state.",
	}, []string{"sink", "state"})
	// Truncates counts TRUNCATEs seen per table (not delivered).
	Truncates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_truncates_total", Help: "TRUNCATEs captured (not delivered).",
	}, []string{"table"})
	// SlotLag is the WAL the slot retains behind the server's position.
	SlotLag = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "walhook_replication_lag_bytes", Help: "Bytes between the server's WAL end and the slot's confirmed position.",
	})
	// Position is the confirmed LSN of the slot.
	Position = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "walhook_replication_confirmed_lsn", Help: "LSN confirmed to the replication slot.",
	})
	// Leader is 1 in the process streaming the slot.
	Leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "walhook_replication_leader", Help: "1 when this process streams the slot.",
	})
	// WebhooksReceived counts ingested webhooks per source and result.
	WebhooksReceived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_webhooks_received_total", Help: "Inbound webhooks by source and HTTP status.",
	}, []string{"source", "status"})
)

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		Captured, Delivered, Failed, Attempts, Latency, RequestDuration, Backlog, Truncates, SlotLag, Position, Leader, WebhooksReceived)
}
