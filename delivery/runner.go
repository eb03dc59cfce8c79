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
	// posting counts the batches whose request is under way: their acks
	// are coming, and the acker may wait a moment to take them along.
	posting atomic.Int32
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
	var took time.Duration // by the last ack
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
		if r.posting.Load() > 0 {
			// More acks are on their way: an ack for a few batches costs
			// the database nearly what one for many does, so wait for
			// them as long as the last ack took, but no longer. A batch
			// alone (one busy group) is acked at once.
			jobs = r.gatherAcks(jobs, min(took, maxGather))
		}
		batches := make([]*outbox.Batch, len(jobs))
		for i, j := range jobs {
			batches[i] = j.b
		}
		start := time.Now()
		r.record(ctx, jobs, batches)
		took = time.Since(start)
		for _, j := range jobs {
			close(j.done)
		}
	}
}

// gatherAcks adds acks arriving within wait while requests are under way.
func (r *runner) gatherAcks(jobs []acked, wait time.Duration) []acked {
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(jobs) < maxAckGroup && r.posting.Load() > 0 {
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
func (r *runner) dispatch(ctx context.Context, n int, jobs chan<- *outbox.Batch, idle <-chan struct{}) {
	cfg := r.sink.Config
	req := outbox.ClaimRequest{
		SinkID: r.sink.ID, BatchSize: max(cfg.BatchSize, 1), MaxAckPending: max(cfg.MaxAckPending, 1),
		Lease: cfg.RequestTimeout.D() + claimMargin, Worker: r.m.cfg.Worker,
	}
	free := n
	// backlog: the last claim took all it asked for, so more is waiting;
	// gather is how long that claim took.
	backlog, gather := false, time.Duration(0)
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
		if backlog && free < n/2 {
			// Behind a backlog, a claim for a few workers costs the
			// database nearly what one for many does: let more workers
			// come free first, for as long as the last claim took (the
			// database's pace), but no longer.
			if !r.gather(ctx, &free, n/2, min(gather, maxGather), idle) {
				return
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
		gather = time.Since(claimStart)
		metrics.ClaimDuration.WithLabelValues(r.sink.Name).Observe(gather.Seconds())
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
		backlog = len(bs) == req.Batches
		if !backlog {
			// Nothing more to take until a notification, an ack freeing
			// groups, or the poll.
			sleep(ctx, r.m.cfg.Poll, r.wake)
		}
	}
}

// maxGather bounds how long a dispatcher waits for more workers to come
// free before it claims.
const maxGather = 5 * time.Millisecond

// gather counts workers coming free until want are or wait has passed.
// It returns false when ctx ended.
func (r *runner) gather(ctx context.Context, free *int, want int, wait time.Duration, idle <-chan struct{}) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	for *free < want {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-idle:
			*free++
		}
	}
	return true
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
