package api

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
)

// healthz answers while the process can serve HTTP at all: a liveness
// probe must not fail because a dependency is down, or the process would be
// restarted for nothing.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when the state database answers and replication is
// either streaming (on the leader) or standing by (on the others).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.d.Store.Pool.Ping(ctx); err != nil {
		s.log.Warn().Err(err).Msg("readiness: state database does not answer")
		writeError(w, http.StatusServiceUnavailable, "not_ready", "state database does not answer")
		return
	}
	replication := "standby"
	if s.d.Leading() {
		if !s.d.Stream().Streaming {
			writeError(w, http.StatusServiceUnavailable, "not_ready", "elected to stream the replication slot, but not streaming (yet)")
			return
		}
		replication = "streaming"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "state_db": "ok", "replication": replication})
}

// metrics serves the Prometheus registry after refreshing the gauges that
// are read on demand (backlog per state, slot position and lag) rather
// than kept current on every message.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.refreshGauges(r.Context())
	promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

func (s *Server) refreshGauges(ctx context.Context) {
	s.metricsMu.Lock()
	defer s.metricsMu.Unlock()
	if st := s.d.Stream(); st.Received > 0 || st.Confirmed > 0 {
		metrics.Position.Set(float64(st.Confirmed))
		lag := 0.0
		if st.Received > st.Confirmed {
			lag = float64(st.Received - st.Confirmed)
		}
		metrics.SlotLag.Set(lag)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sinks, err := s.d.Store.Sinks(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("metrics: list sinks")
		return
	}
	counts, err := s.d.Store.SinkCounts(ctx, 0)
	if err != nil {
		s.log.Warn().Err(err).Msg("metrics: count backlog")
		return
	}
	// Reset drops series of deleted sinks.
	metrics.Backlog.Reset()
	for _, sk := range sinks {
		c := counts[sk.ID]
		for state, n := range map[string]int64{
			outbox.StatePending: c.Pending, outbox.StateInFlight: c.InFlight,
			outbox.StateBackingOff: c.BackingOff, outbox.StateFailed: c.Failed,
		} {
			metrics.Backlog.WithLabelValues(sk.Name, state).Set(float64(n))
		}
	}
}
