package api

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/outbox"
)

// prefetcher claims a pull sink's next batch while its consumer handles
// the last one (rule A, outbox/doc.go), so that the consumer's next
// receive finds it ready instead of waiting for a claim: a consumer that
// receives and acks batch after batch then keeps the claim off its path,
// as push keeps it off its workers' by claiming for the idle ones.
//
// A prefetch is an ordinary claim with a short lease that nobody has
// seen: the next receive of the sink adopts it (outbox.Store.Receive),
// and from then on it is that receive's pull claim. One not adopted
// within prefetchIdle is released, with no attempt counted; one whose
// process died ends with its lease, as a push claim does. One prefetch
// per sink at most, made only after a receive that came back full (a
// backlog is there, and the consumer is reading it).
type prefetcher struct {
	store *outbox.Store
	log   zerolog.Logger
	bg    *sync.WaitGroup

	mu     sync.Mutex
	closed bool
	held   map[int64]*prefetch // by sink
}

// prefetch is one sink's claim ahead: done is closed once the claim
// returned; batches are then what it took that no receive has taken yet
// (nil: nothing, or it failed), last when a receive last took one.
type prefetch struct {
	done    chan struct{}
	batches []*outbox.Batch
	last    time.Time
}

const (
	// prefetchBatches is how many batches one prefetch claims: claims
	// are made in one statement for all of them, whose fixed cost they
	// share, as push claims for all its idle workers at once.
	prefetchBatches = 2
	// prefetchLease bounds how long a process that died holding a
	// prefetch keeps its groups (no worker session revokes it: receives
	// are not tied to one).
	prefetchLease = 2 * time.Second
	// prefetchIdle is how long a prefetch waits for a receive. A consumer
	// working through a backlog asks again within milliseconds; past this
	// it is not, and the groups go back for other consumers.
	prefetchIdle = 200 * time.Millisecond
)

func newPrefetcher(store *outbox.Store, log zerolog.Logger, bg *sync.WaitGroup) *prefetcher {
	return &prefetcher{store: store, log: log, bg: bg, held: map[int64]*prefetch{}}
}

// start claims ahead for req's sink, unless a prefetch of it is held or
// under way. req is the receive's claim: the prefetch takes the same
// batch size and max_ack_pending.
func (p *prefetcher) start(req outbox.ClaimRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.held[req.SinkID] != nil {
		return
	}
	f := &prefetch{done: make(chan struct{})}
	p.held[req.SinkID] = f
	req.Pull, req.MaxAge, req.Lease, req.WorkerID, req.Worker = false, 0, prefetchLease, 0, "prefetch for "+req.Worker
	req.Batches = prefetchBatches
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), prefetchLease/2)
		bs, err := p.store.ClaimBatches(ctx, req)
		cancel()
		if err != nil {
			// A claim that committed unseen ends with its short lease.
			p.log.Warn().Err(err).Int64("sink_id", req.SinkID).Msg("prefetch for a pull consumer failed")
		}
		p.mu.Lock()
		f.batches, f.last = bs, time.Now()
		if len(bs) == 0 && p.held[req.SinkID] == f {
			delete(p.held, req.SinkID)
		}
		p.mu.Unlock()
		close(f.done)
		if len(bs) > 0 {
			p.expireAfter(req.SinkID, f, prefetchIdle)
		}
	}()
}

// take hands the sink's next prefetched batch to a receive of up to size
// messages, waiting for a prefetch under way. It returns nil when there
// is none, or when it does not fit (it is released then). The receive
// must adopt or release what it gets (outbox.Store.Receive does either).
func (p *prefetcher) take(ctx context.Context, sinkID int64, size int) *outbox.Batch {
	p.mu.Lock()
	f := p.held[sinkID]
	p.mu.Unlock()
	if f == nil {
		return nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil // left to the next receive, or to expire
	}
	p.mu.Lock()
	if p.held[sinkID] != f || len(f.batches) == 0 { // taken or released meanwhile
		p.mu.Unlock()
		return nil
	}
	b := f.batches[0]
	f.batches, f.last = f.batches[1:], time.Now()
	if len(f.batches) == 0 {
		delete(p.held, sinkID)
	}
	p.mu.Unlock()
	if len(b.Messages) > size {
		p.release(b)
		return nil
	}
	return b
}

// expireAfter releases what f holds once no receive has taken a batch of
// it for prefetchIdle.
func (p *prefetcher) expireAfter(sinkID int64, f *prefetch, d time.Duration) {
	time.AfterFunc(d, func() {
		p.mu.Lock()
		if p.held[sinkID] != f {
			p.mu.Unlock()
			return
		}
		if idle := time.Since(f.last); idle < prefetchIdle {
			p.mu.Unlock()
			p.expireAfter(sinkID, f, prefetchIdle-idle)
			return
		}
		delete(p.held, sinkID)
		bs := f.batches
		f.batches = nil
		p.mu.Unlock()
		for _, b := range bs {
			p.release(b)
		}
	})
}

// release ends a prefetch no receive adopted. Releasing one that was
// adopted after all (a receive that failed after its commit) changes
// nothing: rule A releases only what was never handed out.
func (p *prefetcher) release(b *outbox.Batch) {
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), prefetchLease)
	defer cancel()
	if err := p.store.Release(ctx, b); err != nil {
		p.log.Warn().Err(err).Msg("release of a pull consumer's prefetch failed: it ends with its lease")
	}
}

// close releases every prefetch and takes no more: on shutdown, their
// groups go back at once rather than with their leases.
func (p *prefetcher) close() {
	p.mu.Lock()
	p.closed = true
	held := p.held
	p.held = map[int64]*prefetch{}
	p.mu.Unlock()
	for _, f := range held {
		<-f.done
		p.mu.Lock()
		bs := f.batches
		f.batches = nil
		p.mu.Unlock()
		for _, b := range bs {
			p.release(b)
		}
	}
}
