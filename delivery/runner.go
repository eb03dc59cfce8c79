package delivery

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/sink"
)

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
	m    *Manager
	sink *sink.Sink
	url  string
	// tmpl is the request every POST copies (its URL parsed once); nil
	// when the URL does not parse, so each POST fails with the reason.
	tmpl    *http.Request
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
	// for its ack before it reports idle to the dispatcher, so a process
	// never has more than concurrency batches delivered but
	// unacknowledged (the duplicates a crash can cause).
	acks   chan acked
	ackers sync.WaitGroup
	// released counts the workers whose ack is recorded and who have
	// not reported idle yet: they will in a moment, and the dispatcher
	// claims for all of them at once.
	released atomic.Int32
}

// job is a batch for a worker, with the cohort it was claimed in.
type job struct {
	b      *outbox.Batch
	cohort *cohort
}

// cohort is the batches one claim handed out: their requests start
// together and mostly end together, so the acker waits a moment for the
// cohort's other acks and records them all at once. A batch claimed
// alone is acked at once.
type cohort struct{ posting atomic.Int32 }

// acked is a batch the endpoint acknowledged; done is closed once the ack
// is recorded (or refused).
type acked struct {
	b      *outbox.Batch
	cohort *cohort
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
	u := joinURL(ep.URL, s.Config.Path)
	tmpl, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		tmpl = nil
	}
	return &runner{
		m: m, sink: s, url: u, tmpl: tmpl, headers: h, signer: signer,
		fp: fp, wake: make(doorbell, 1), log: m.cfg.Log.With().Str("sink", s.Name).Logger(),
	}, nil
}

func (r *runner) start(ctx context.Context) {
	n := max(r.sink.Config.Concurrency, 1)
	r.acks = make(chan acked, 2*n)
	r.ackers.Go(func() { r.ack(context.WithoutCancel(ctx)) })
	ctx, r.cancel = context.WithCancel(ctx)
	jobs := make(chan job, n)
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
		jobs = r.awaitCohorts(jobs)
		batches := make([]*outbox.Batch, len(jobs))
		for i, j := range jobs {
			batches[i] = j.b
		}
		r.record(ctx, jobs, batches)
		r.released.Add(int32(len(jobs)))
		for _, j := range jobs {
			close(j.done)
		}
	}
}

// maxCohortWait bounds how long the acker waits for the rest of a
// cohort: an ack for a few batches costs the database nearly what one
// for many does, but a batch delivered waits for its ack.
const maxCohortWait = 5 * time.Millisecond

// awaitCohorts adds the acks of the cohorts' other batches, as long as
// some of their requests are under way, for at most maxCohortWait.
func (r *runner) awaitCohorts(jobs []acked) []acked {
	posting := func() bool {
		for _, j := range jobs {
			if j.cohort.posting.Load() > 0 {
				return true
			}
		}
		return false
	}
	if !posting() {
		return jobs
	}
	t := time.NewTimer(maxCohortWait)
	defer t.Stop()
	for len(jobs) < maxAckGroup && posting() {
		select {
		case j, ok := <-r.acks:
			if !ok {
				return jobs
			}
			jobs = append(jobs, j)
		case <-t.C:
			return jobs
		}
	}
	return jobs
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
func (r *runner) dispatch(ctx context.Context, n int, jobs chan<- job, idle <-chan struct{}) {
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
		// The workers an ack just released report idle in a moment: one
		// claim for all of them (a claim for a few batches costs the
		// database nearly what one for many does).
		for free < n && r.released.Load() > 0 {
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
		c := &cohort{}
		c.posting.Store(int32(len(bs)))
		for _, b := range bs {
			jobs <- job{b, c}
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
func (r *runner) work(ctx context.Context, jobs <-chan job, idle chan<- struct{}) {
	for j := range jobs {
		r.deliver(ctx, j.b, j.cohort)
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
