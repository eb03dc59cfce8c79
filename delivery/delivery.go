// Package delivery moves the outbox to HTTP endpoints: workers claim
// batches per sink, POST them, and record the outcome (ack, backoff,
// failed). Wake-ups come from LISTEN/NOTIFY with a poll fallback.
package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
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

// UserAgent is sent with every request.
const UserAgent = "walhook/1"

// claimMargin is added to request_timeout for a claim's lease: a worker
// that dies mid-request loses its claim after that.
const claimMargin = 15 * time.Second

// errorSnippet bounds how much of a failing response body is kept.
const errorSnippet = 512

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
		payload, err := l.Wait(ctx)
		if err != nil {
			return err
		}
		for _, part := range strings.Split(payload, ",") {
			if id, err := strconv.ParseInt(part, 10, 64); err == nil {
				m.Wake(id)
			}
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
		if err := m.history.flush(ctx, m.cfg.Store); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("record delivery history")
		}
		if n++; n%4 != 0 {
			continue
		}
		if dead, err := m.cfg.Store.ReapDeadWorkers(ctx, m.worker.Load().ID); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("revoke claims of dead workers")
		} else if dead > 0 {
			m.cfg.Log.Warn().Int("workers", dead).Msg("revoked the claims of delivery workers whose process died; their messages are delivered again")
		}
		if sinks, err := m.cfg.Store.ReapClaims(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn().Err(err).Msg("end expired claims")
		} else if len(sinks) > 0 {
			m.cfg.Log.Warn().Ints64("sinks", sinks).Msg("ended claims whose lease ran out or whose worker died; their messages are delivered again")
		}
		if n%8 != 0 {
			continue
		}
		m.checkWorker(ctx)
		if n%40 == 0 {
			if _, err := m.cfg.Store.PruneDelivered(ctx, historyKeep); err != nil && ctx.Err() == nil {
				m.cfg.Log.Warn().Err(err).Msg("prune delivered history")
			}
			m.purgeDeleted(ctx)
		}
		if n%16 == 0 {
			if _, err := m.cfg.Store.VacuumQueues(ctx, vacuumAfter); err != nil && ctx.Err() == nil {
				m.cfg.Log.Warn().Err(err).Msg("vacuum the outbox")
			}
		}
	}
}

// doorbell wakes a sink's dispatcher when there may be something to
// claim: a notification, an ack that freed groups, a backoff that ended.
// One token: a ring while the dispatcher is busy is kept for its next
// sleep, so no notification is lost.
type doorbell chan struct{}

func (d doorbell) ring() {
	select {
	case d <- struct{}{}:
	default:
	}
}

// runner delivers one sink.
type runner struct {
	m       *Manager
	sink    *sink.Sink
	url     string
	headers http.Header
	signer  *Signer
	fp      string
	wake    doorbell
	log     zerolog.Logger

	cancel context.CancelFunc
	wg     sync.WaitGroup

	// acks carries delivered batches from the workers to the acker, which
	// acknowledges all that are waiting in one statement (group commit):
	// one turn of the sink's claim lock for many batches. A worker waits
	// for its ack before it claims again, so a process never has more
	// than concurrency batches delivered but unacknowledged (the
	// duplicates a crash can cause).
	acks   chan acked
	ackers sync.WaitGroup
}

// acked is a batch the endpoint acknowledged; done is closed once the ack
// is recorded (or refused).
type acked struct {
	b      *outbox.Batch
	status int
	done   chan struct{}
}

func (m *Manager) newRunner(s *sink.Sink, ep *outbox.Endpoint, fp string) (*runner, error) {
	h := http.Header{}
	for k, v := range ep.Headers {
		h.Set(k, v)
	}
	secret, err := m.cfg.Box.OpenMap(ep.EncryptedHeaders)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: encrypted headers: %w", ep.Name, err)
	}
	for k, v := range secret {
		h.Set(k, v)
	}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", UserAgent)
	signer, err := SinkSigner(&s.Config)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", s.Name, err)
	}
	return &runner{
		m: m, sink: s, url: joinURL(ep.URL, s.Config.Path), headers: h, signer: signer,
		fp: fp, wake: make(doorbell, 1), log: m.cfg.Log.With().Str("sink", s.Name).Logger(),
	}, nil
}

func (r *runner) start(ctx context.Context) {
	n := max(r.sink.Config.Concurrency, 1)
	r.acks = make(chan acked, 2*n)
	r.ackers.Go(func() { r.ack(context.WithoutCancel(ctx)) })
	ctx, r.cancel = context.WithCancel(ctx)
	jobs := make(chan *outbox.Batch, n)
	idle := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		r.wg.Go(func() { r.work(ctx, jobs, idle) })
	}
	r.wg.Go(func() {
		r.dispatch(ctx, n, jobs, idle)
		close(jobs)
	})
}

// stop stops claiming, waits for in-flight batches and records their
// acknowledgements.
func (r *runner) stop() {
	r.cancel()
	r.wg.Wait()
	close(r.acks)
	r.ackers.Wait()
}

// maxAckGroup bounds how many batches one ack statement takes.
const maxAckGroup = 256

// ack acknowledges delivered batches, all that are waiting at once, until
// the workers have stopped.
func (r *runner) ack(ctx context.Context) {
	for first := range r.acks {
		jobs := []acked{first}
	more:
		for len(jobs) < maxAckGroup {
			select {
			case j, ok := <-r.acks:
				if !ok {
					break more
				}
				jobs = append(jobs, j)
			default:
				break more
			}
		}
		batches := make([]*outbox.Batch, len(jobs))
		for i, j := range jobs {
			batches[i] = j.b
		}
		r.record(ctx, jobs, batches)
		for _, j := range jobs {
			close(j.done)
		}
	}
}

// record acknowledges one group of delivered batches.
func (r *runner) record(ctx context.Context, jobs []acked, batches []*outbox.Batch) {
	ackStart := time.Now()
	ended, err := r.m.cfg.Store.AckAll(ctx, r.sink.ID, batches)
	metrics.AckDuration.WithLabelValues(r.sink.Name, "ack").Observe(time.Since(ackStart).Seconds())
	if err != nil {
		r.log.Error().Err(err).Int("batches", len(jobs)).Msg("ack (messages will be delivered again)")
		return
	}
	// The groups are free: a worker may find their next messages.
	r.wake.ring()
	now := time.Now()
	latency := metrics.Latency.WithLabelValues(r.sink.Name)
	delivered := 0
	for _, j := range jobs {
		if slices.Contains(ended, j.b) {
			r.log.Warn().Int64("claim", j.b.ClaimID).Int("messages", len(j.b.Messages)).
				Msg("delivered, but the claim had ended: the ack changed nothing and the messages will be delivered again")
			continue
		}
		delivered += len(j.b.Messages)
		r.m.history.add(j.b, j.status, now)
		for _, m := range j.b.Messages {
			latency.Observe(now.Sub(m.CreatedAt).Seconds())
		}
	}
	metrics.Delivered.WithLabelValues(r.sink.Name).Add(float64(delivered))
}

// dispatch claims for the sink's idle workers, all of them in one claim
// (one turn of the sink's claim lock), and hands them the batches. A
// worker reports idle once its outcome is recorded, so a process never
// holds more than n batches.
func (r *runner) dispatch(ctx context.Context, n int, jobs chan<- *outbox.Batch, idle <-chan struct{}) {
	cfg := r.sink.Config
	req := outbox.ClaimRequest{
		SinkID: r.sink.ID, BatchSize: max(cfg.BatchSize, 1), MaxAckPending: max(cfg.MaxAckPending, 1),
		Lease: cfg.RequestTimeout.D() + claimMargin, Worker: r.m.cfg.Worker,
	}
	free := n
	for ctx.Err() == nil {
		// Wait for a worker, then count every other that is free too.
		for free == 0 {
			select {
			case <-ctx.Done():
				return
			case <-idle:
				free++
			}
		}
	more:
		for {
			select {
			case <-idle:
				free++
			default:
				break more
			}
		}
		req.WorkerID = r.m.worker.Load().ID
		req.Batches = free
		claimStart := time.Now()
		// A claim is not cancelled half way: one that committed while its
		// caller gave up would hold its groups until the lease ran out. A
		// batch claimed as the runner stops is still delivered.
		bs, err := r.m.cfg.Store.ClaimBatches(context.WithoutCancel(ctx), req)
		metrics.ClaimDuration.WithLabelValues(r.sink.Name).Observe(time.Since(claimStart).Seconds())
		if err != nil {
			if ctx.Err() == nil {
				r.log.Error().Err(err).Msg("claim")
				sleep(ctx, time.Second, nil)
			}
			continue
		}
		for _, b := range bs {
			jobs <- b
		}
		free -= len(bs)
		if len(bs) < req.Batches {
			// Nothing more to take until a notification, an ack freeing
			// groups, or the poll.
			sleep(ctx, r.m.cfg.Poll, r.wake)
		}
	}
}

// work delivers the batches the dispatcher hands it.
func (r *runner) work(ctx context.Context, jobs <-chan *outbox.Batch, idle chan<- struct{}) {
	for b := range jobs {
		r.deliver(ctx, b)
		idle <- struct{}{}
	}
}

func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}

// deliver POSTs one batch and records the outcome. It finishes even when
// ctx is cancelled (shutdown): the request has its own timeout.
func (r *runner) deliver(ctx context.Context, b *outbox.Batch) {
	bg := context.WithoutCancel(ctx)
	msgs := b.Messages
	cfg := r.sink.Config
	start := time.Now()
	status, snippet, retryAfter, err := r.post(bg, msgs)
	metrics.RequestDuration.WithLabelValues(r.sink.Name).Observe(time.Since(start).Seconds())
	metrics.Attempts.WithLabelValues(r.sink.Name, class(status, err)).Inc()
	if err == nil && status >= 200 && status < 300 {
		done := make(chan struct{})
		r.acks <- acked{b, status, done}
		<-done
		return
	}
	attempt := 1
	for _, m := range msgs {
		attempt = max(attempt, int(m.DeliverCount)+1)
	}
	wait := Backoff(attempt, cfg.Retry.InitialBackoff.D(), cfg.Retry.MaxBackoff.D())
	retryAfter = CapRetryAfter(retryAfter, cfg.Retry.MaxBackoff.D())
	if retryAfter > 0 {
		wait = max(wait, retryAfter)
		if err := r.m.cfg.Store.Hold(bg, r.sink.ID, time.Now().Add(retryAfter)); err != nil {
			r.log.Error().Err(err).Msg("hold sink for Retry-After")
		}
	}
	msg := snippet
	if err != nil {
		msg = redactError(err, r.url)
	}
	nackStart := time.Now()
	notBefore := time.Now().Add(wait)
	failed, nerr := r.m.cfg.Store.Nack(bg, b, outbox.Failure{
		AttemptStart: start, Status: status, Error: msg, NotBefore: notBefore, MaxAge: cfg.Retry.MaxAge.D(),
	})
	metrics.AckDuration.WithLabelValues(r.sink.Name, "nack").Observe(time.Since(nackStart).Seconds())
	if outbox.IsClaimEnded(nerr) {
		r.log.Warn().Err(nerr).Msg("delivery failed, but the claim had ended: nothing recorded")
		return
	}
	if nerr != nil {
		r.log.Error().Err(nerr).Msg("record failed delivery")
		return
	}
	// The retry goes on time, not at the next poll (other processes'
	// backoffs are found by theirs).
	time.AfterFunc(time.Until(notBefore)+2*time.Millisecond, r.wake.ring)
	ev := r.log.Warn()
	ev.Int("status", status).Str("error", msg).Int("messages", len(msgs)).Int("attempt", attempt).Dur("retry_in", wait).Msg("delivery failed")
	if failed > 0 {
		metrics.Failed.WithLabelValues(r.sink.Name).Add(float64(failed))
		r.log.Error().Int("messages", failed).Dur("max_age", cfg.Retry.MaxAge.D()).Msg("ALERT: messages exceeded retry.max_age and are now failed; redeliver them once the endpoint is fixed")
	}
}

// post sends the batch. It returns the status (0 without a response), a
// bounded snippet of a failing response, a Retry-After wait, or the
// transport error.
func (r *runner) post(ctx context.Context, msgs []outbox.Message) (int, string, time.Duration, error) {
	size := len(`{"data":[]}`)
	for _, m := range msgs {
		size += len(m.Payload) + 1
	}
	body := make([]byte, 0, size)
	body = append(body, `{"data":[`...)
	for i, m := range msgs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, m.Payload...)
	}
	body = append(body, "]}"...)

	ctx, cancel := context.WithTimeout(ctx, r.sink.Config.RequestTimeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return 0, "", 0, fmt.Errorf("build request: %w", err)
	}
	req.Header = r.headers.Clone()
	if r.signer != nil {
		ids := make([]int64, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		id := BatchID(r.sink.ID, ids)
		ts, sig := r.signer.Sign(id, time.Now(), body)
		req.Header.Set("webhook-id", id)
		req.Header.Set("webhook-timestamp", ts)
		req.Header.Set("webhook-signature", sig)
	}
	resp, err := r.m.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return 0, "", 0, fmt.Errorf("timed out after %s", r.sink.Config.RequestTimeout.D())
		}
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	var snippet string
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, errorSnippet))
		snippet = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // drain for connection reuse
	return resp.StatusCode, snippet, RetryAfter(resp, time.Now()), nil
}

func class(status int, err error) string {
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "timed out") {
			return "timeout"
		}
		return "error"
	}
	return strconv.Itoa(status/100) + "xx"
}
