package delivery

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/egress"
	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/secrets"
	"github.com/walhook/walhook/sink"
)

// Config wires a Manager.
type Config struct {
	Store  *outbox.Store
	Box    *secrets.Box
	Log    zerolog.Logger
	Worker string // this process's identity in claims
	// Poll is the fallback when no notification arrives (backoffs expire
	// without one). Default 500ms.
	Poll time.Duration
	// Client overrides the HTTP client (tests).
	Client *http.Client
	// Egress says where requests may connect; nil means the default
	// (link-local refused).
	Egress *egress.Policy
}

// Manager runs one set of workers per sink and keeps them in line with the
// sinks in the state schema.
type Manager struct {
	cfg    Config
	client *http.Client

	mu      sync.Mutex
	runners map[int64]*runner
	reload  chan struct{}
	history *history
	// running is set while Run loads sinks; reloaded holds the callers of
	// Reload waiting for the next load to finish.
	running  atomic.Bool
	reloaded []chan struct{}

	// worker is this process's registration (outbox.Worker): claims are
	// tied to its session, so they come back at once if the process dies.
	worker atomic.Pointer[outbox.Worker]
}

// NewManager prepares a manager; Run starts it.
func NewManager(cfg Config) *Manager {
	if cfg.Poll <= 0 {
		cfg.Poll = 500 * time.Millisecond
	}
	client := cfg.Client
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 1024
		tr.MaxIdleConnsPerHost = 256
		tr.IdleConnTimeout = 90 * time.Second
		tr.DialContext = policyOrDefault(cfg.Egress).DialContext
		client = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Manager{cfg: cfg, client: client, runners: map[int64]*runner{}, reload: make(chan struct{}, 1), history: newHistory()}
}

// reloadWait bounds how long Reload waits: stopping a runner waits for
// its requests in flight.
const reloadWait = 5 * time.Second

// Reload has the manager re-read sinks and endpoints now, and waits (up to
// reloadWait) until it has, so that a change made through the API applies
// to every delivery after the API's answer.
func (m *Manager) Reload() {
	if !m.running.Load() {
		return
	}
	done := make(chan struct{})
	m.mu.Lock()
	m.reloaded = append(m.reloaded, done)
	m.mu.Unlock()
	select {
	case m.reload <- struct{}{}:
	default:
	}
	t := time.NewTimer(reloadWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Run delivers until ctx ends, then waits for in-flight batches to finish
// (each bounded by its request_timeout).
func (m *Manager) Run(ctx context.Context) error {
	if err := m.register(ctx); err != nil {
		return nil // stopped before it could start
	}
	var wg sync.WaitGroup
	wg.Go(func() { m.listen(ctx) })
	wg.Go(func() { m.housekeep(ctx) })
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	m.running.Store(true)
	defer m.running.Store(false)
	for {
		m.mu.Lock()
		waiting := m.reloaded
		m.reloaded = nil
		m.mu.Unlock()
		if err := m.sync(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Error().Err(err).Msg("load sinks")
		}
		for _, done := range waiting {
			close(done)
		}
		select {
		case <-ctx.Done():
			m.mu.Lock()
			for _, r := range m.runners {
				r.stop()
			}
			m.mu.Unlock()
			wg.Wait()
			bg := context.WithoutCancel(ctx)
			if err := m.history.flush(bg, m.cfg.Store); err != nil {
				m.cfg.Log.Warn().Err(err).Msg("record delivery history")
			}
			if err := m.worker.Load().Close(bg); err != nil {
				m.cfg.Log.Warn().Err(err).Msg("release claims")
			}
			return nil
		case <-tick.C:
		case <-m.reload:
		}
	}
}

// register records this process as a worker, retrying until it can (the
// state database may be restarting) or ctx ends.
func (m *Manager) register(ctx context.Context) error {
	for {
		w, err := m.cfg.Store.RegisterWorker(ctx, m.cfg.Worker)
		if err == nil {
			m.worker.Store(w)
			return nil
		}
		m.cfg.Log.Error().Err(err).Msg("register delivery worker; retrying")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// checkWorker replaces the worker registration when its session is gone.
// The old one's claims are revoked by whoever notices (possibly this
// process): their acks are refused and the messages delivered again.
func (m *Manager) checkWorker(ctx context.Context) {
	w := m.worker.Load()
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := w.Alive(actx)
	cancel()
	if err == nil || ctx.Err() != nil {
		return
	}
	m.cfg.Log.Warn().Err(err).Msg("delivery worker session lost; registering again")
	_ = w.Close(ctx)
	if nw, err := m.cfg.Store.RegisterWorker(ctx, m.cfg.Worker); err == nil {
		m.worker.Store(nw)
	} else if ctx.Err() == nil {
		m.cfg.Log.Error().Err(err).Msg("register delivery worker")
	}
}

// sync starts, restarts and stops runners to match the stored sinks.
func (m *Manager) sync(ctx context.Context) error {
	sinks, err := m.cfg.Store.ListSinkModels(ctx)
	if err != nil {
		return err
	}
	endpoints, err := m.cfg.Store.ListEndpoints(ctx)
	if err != nil {
		return err
	}
	byName := map[string]*outbox.Endpoint{}
	for _, e := range endpoints {
		byName[e.Name] = e
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[int64]bool{}
	for _, s := range sinks {
		if s.Config.IsPull() {
			// Consumers receive a pull sink's messages (api, receive):
			// a sink that became one stops its runner below.
			continue
		}
		seen[s.ID] = true
		ep := byName[s.Config.Endpoint]
		if ep == nil {
			m.cfg.Log.Error().Str("sink", s.Name).Str("endpoint", s.Config.Endpoint).Msg("sink names a missing http endpoint; not delivering")
			continue
		}
		fp := fingerprint(s, ep)
		if r, ok := m.runners[s.ID]; ok {
			if r.fp == fp {
				continue
			}
			r.stop()
		}
		r, err := m.newRunner(s, ep, fp)
		if err != nil {
			m.cfg.Log.Error().Err(err).Str("sink", s.Name).Msg("cannot deliver")
			delete(m.runners, s.ID)
			continue
		}
		m.runners[s.ID] = r
		r.start(ctx)
	}
	for id, r := range m.runners {
		if !seen[id] {
			r.stop()
			delete(m.runners, id)
		}
	}
	return nil
}

// reportReaped logs the claims ReapClaims ended. A pull consumer that
// let its visibility timeout pass is routine (its messages come back),
// a push claim that outlived its lease is not; messages a lapse took past
// retry.max_age are failed, counted and alerted on as a push nack's are.
func (m *Manager) reportReaped(reaped []outbox.Reaped) {
	var ended []int64
	for _, r := range reaped {
		if r.Ended > r.LapsedClaims {
			ended = append(ended, r.SinkID)
		}
		if back := r.Lapsed - r.Failed; back > 0 {
			m.cfg.Log.Info().Str("sink", r.SinkName).Int("messages", back).
				Msg("received messages were not acked or nacked within their visibility timeout; they are available again")
		}
		if r.Failed > 0 {
			metrics.Failed.WithLabelValues(r.SinkName).Add(float64(r.Failed))
			m.cfg.Log.Error().Str("sink", r.SinkName).Int("messages", r.Failed).
				Msg("ALERT: received messages exceeded retry.max_age without an ack and are now failed; redeliver them once the consumer is fixed")
		}
	}
	if len(ended) > 0 {
		m.cfg.Log.Warn().Ints64("sinks", ended).Msg("ended claims whose lease ran out or whose worker died; their messages are delivered again")
	}
}

func fingerprint(s *sink.Sink, ep *outbox.Endpoint) string {
	b, _ := json.Marshal([]any{s.Config, ep.URL, ep.Headers, ep.EncryptedHeaders, ep.UpdatedAt})
	return string(b)
}

// Wake tells a sink's dispatcher that messages arrived.
func (m *Manager) Wake(sinkID int64) {
	m.mu.Lock()
	r := m.runners[sinkID]
	m.mu.Unlock()
	if r != nil {
		r.wake.ring()
	}
}

// listen turns NOTIFYs from capture into wake-ups. On connection loss it
// reconnects; the poll fallback covers the gap.
func (m *Manager) listen(ctx context.Context) {
	for ctx.Err() == nil {
		err := m.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		m.cfg.Log.Warn().Err(err).Msg("listen for outbox notifications; retrying")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (m *Manager) listenOnce(ctx context.Context) error {
	l, err := m.cfg.Store.Listen(ctx)
	if err != nil {
		return err
	}
	defer l.Close()
	for {
		ids, err := l.Wait(ctx)
		if err != nil {
			return err
		}
		for _, id := range ids {
			m.Wake(id)
		}
	}
}

// vacuumAfter is how many dead rows a queue table may gather before
// housekeeping vacuums it (checked every 4 s): under steady load the
// outbox then stays the size of a few seconds of traffic.
const vacuumAfter = 20_000

// housekeep writes the delivery history, revokes the claims of dead
// workers (every second), ends claims whose lease ran out, trims the
// history, purges deleted sinks' messages and vacuums the queue tables.
func (m *Manager) housekeep(ctx context.Context) {
	tick := time.NewTicker(historyEvery)
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n++
		if err := m.history.flush(ctx, m.cfg.Store); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("record delivery history")
		}
		// A reap that failed part way reports what it did before: those
		// claims are gone, and the next reap cannot count them.
		dead, reaped, err := m.cfg.Store.ReapDeadWorkers(ctx, m.worker.Load().ID)
		if err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("revoke claims of dead workers")
		} else if dead > 0 {
			m.cfg.Log.Warn().Int("workers", dead).Msg("revoked the claims of delivery workers whose process died; their messages are delivered again")
		}
		m.reportReaped(reaped)
		reaped, err = m.cfg.Store.ReapClaims(ctx)
		if err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("end expired claims")
		}
		m.reportReaped(reaped)
		if n%2 != 0 {
			continue
		}
		m.checkWorker(ctx)
		if n%10 == 0 {
			if _, err := m.cfg.Store.PruneDelivered(ctx, historyKeep); err != nil && ctx.Err() == nil {
				m.cfg.Log.Warn().Err(err).Msg("prune delivered history")
			}
			m.purgeDeleted(ctx)
		}
		if n%4 == 0 {
			if _, err := m.cfg.Store.VacuumQueues(ctx, vacuumAfter); err != nil && ctx.Err() == nil {
				m.cfg.Log.Warn().Err(err).Msg("vacuum the outbox")
			}
		}
	}
}
