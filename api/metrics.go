package api

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
)

// gaugeEvery is how often the per-sink gauges (backlog per state, age of
// the oldest waiting message) are read from the state database. Counting
// the outbox costs in proportion to its backlog, so scrapes read a cache
// instead: any number of scrapers cost one count every few seconds, and a
// scrape never waits behind another.
const gaugeEvery = 5 * time.Second

// gaugeCache refreshes the per-sink gauges in the background, from the
// first scrape on, until the server closes.
type gaugeCache struct {
	start sync.Once
	ready chan struct{} // closed after the first refresh
	sinks map[string]bool
}

// metrics serves the Prometheus registry. The replication gauges come
// from memory on each scrape; the per-sink ones from the cache (the very
// first scrape waits, briefly, for its first fill).
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.gauges.start.Do(func() {
		s.gauges.ready = make(chan struct{})
		s.bg.Go(s.refreshGaugesLoop)
	})
	select {
	case <-s.gauges.ready:
	case <-r.Context().Done():
	case <-time.After(gaugeEvery):
	}
	s.setStreamGauges()
	promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

func (s *Server) setStreamGauges() {
	st := s.d.Stream()
	if st.Received == 0 && st.Confirmed == 0 {
		return // not streaming in this process
	}
	metrics.Position.Set(float64(st.Confirmed))
	metrics.SlotLag.Set(float64(max(st.Received, st.Confirmed) - st.Confirmed))
	metrics.ReplicationLagSeconds.Set(st.Lag.Seconds())
}

func (s *Server) refreshGaugesLoop() {
	t := time.NewTicker(gaugeEvery)
	defer t.Stop()
	first := true
	for {
		ctx, cancel := context.WithTimeout(context.Background(), gaugeEvery)
		if err := s.refreshGauges(ctx); err != nil {
			s.log.Warn().Err(err).Msg("metrics: refresh the per-sink gauges")
		}
		cancel()
		if first {
			close(s.gauges.ready)
			first = false
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// refreshGauges reads the per-sink gauges. Series of deleted sinks are
// removed, not reset: a scrape meanwhile sees the old or the new values,
// never none.
func (s *Server) refreshGauges(ctx context.Context) error {
	if s.d.Store == nil {
		return nil
	}
	sinks, err := s.d.Store.ListSinks(ctx)
	if err != nil {
		return err
	}
	counts, err := s.d.Store.CountSinkMessages(ctx, 0)
	if err != nil {
		return err
	}
	oldest, err := s.d.Store.GetOldestWaiting(ctx)
	if err != nil {
		return err
	}
	now := map[string]bool{}
	for _, sk := range sinks {
		now[sk.Name] = true
		c := counts[sk.ID]
		for state, n := range map[string]int64{
			outbox.StatePending: c.Pending, outbox.StateInFlight: c.InFlight,
			outbox.StateBackingOff: c.BackingOff, outbox.StateFailed: c.Failed,
		} {
			metrics.Backlog.WithLabelValues(sk.Name, state).Set(float64(n))
		}
		metrics.OldestWaiting.WithLabelValues(sk.Name).Set(oldest[sk.ID].Seconds())
	}
	for name := range s.gauges.sinks {
		if !now[name] {
			metrics.Backlog.DeletePartialMatch(prometheus.Labels{"sink": name})
			metrics.OldestWaiting.DeleteLabelValues(name)
		}
	}
	s.gauges.sinks = now
	return nil
}
