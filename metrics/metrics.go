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
	// Backlog is the number of outbox messages per sink and state; its
	// "failed" series is the failed count per sink to alert on. Refreshed
	// every few seconds, not per scrape.
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
	// OldestWaiting is the age of each sink's oldest waiting (not failed)
	// message: a stuck sink shows here before its backlog is large.
	OldestWaiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "walhook_oldest_waiting_message_age_seconds", Help: "Age of the oldest message waiting for delivery (failed ones excluded), per sink; 0 when none waits.",
	}, []string{"sink"})
	// ReplicationLagSeconds is how old the latest transaction read from the
	// slot was when the server sent it: 0 once walhook has caught up.
	ReplicationLagSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "walhook_replication_lag_seconds", Help: "Commit-to-send delay of the latest transaction read from the slot (server clock); 0 when caught up.",
	})
	// ClaimDuration is the time a worker's claim of a batch takes in the
	// state database: it grows when the outbox or its indexes bloat.
	ClaimDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "walhook_claim_seconds", Help: "Duration of claiming a batch in the state database.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	}, []string{"sink"})
	// AckDuration is the time recording a batch's outcome takes: outcome
	// "ack" (delivered) or "nack" (failed, backing off).
	AckDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "walhook_ack_seconds", Help: "Duration of recording a batch's outcome in the state database.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	}, []string{"sink", "outcome"})
	// WebhooksReceived counts ingested webhooks per source and result.
	WebhooksReceived = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "walhook_webhooks_received_total", Help: "Inbound webhooks by source and HTTP status.",
	}, []string{"source", "status"})
)

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		Captured, Delivered, Failed, Attempts, Latency, RequestDuration, Backlog, Truncates, SlotLag, Position, Leader, WebhooksReceived,
		OldestWaiting, ReplicationLagSeconds, ClaimDuration, AckDuration)
}
