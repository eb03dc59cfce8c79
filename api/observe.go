package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/outbox"
)

// Observe tuning.
const (
	observePage      = 1000
	observePoll      = time.Second            // without notifications
	observeMinGap    = 50 * time.Millisecond  // between looks, however busy
	observeKeepalive = 15 * time.Second       // SSE comment so proxies keep the stream
	observeBuffer    = 1024                   // events a slow client may lag behind
	observeMaxHoles  = 10000                  // bound on remembered holes and checkpoints
	observeHeadRetry = 500 * time.Millisecond // before retrying a failed look
	// observeHoleGrace keeps a hole open this long after every writer that
	// could fill it has committed: a message delivered before a look saw
	// it in the outbox reaches the delivered history later (delivery
	// writes it every 250 ms, apart from the ack).
	observeHoleGrace = 3 * time.Second
)

// observedEvent is the data of one SSE event.
type observedEvent struct {
	ID        int64           `json:"id"`
	Sink      string          `json:"sink"`
	Group     string          `json:"group"`
	CommitLSN int64           `json:"commit_lsn"`
	CommitIdx int32           `json:"commit_idx"`
	Message   json.RawMessage `json:"message"`
}

// observe streams, as Server-Sent Events, every message that enters the
// outbox from now on (of one sink with ?sink=).
func (s *Server) observe(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	if errs := unknownParams(q, "sink"); len(errs) > 0 {
		s.fail(w, r, errs[:1])
		return
	}
	var sinkID int64
	if name := q.Get("sink"); name != "" {
		sk, err := s.d.Store.GetSink(ctx, name)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		sinkID = sk.ID
	}
	sub, err := s.hub.subscribe(ctx, sinkID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.hub.unsubscribe(sub)

	rc := http.NewResponseController(w)
	// The stream outlives the server's read timeout.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, ": observing\n\n"); err != nil {
		return
	}
	if err := rc.Flush(); err != nil {
		return
	}
	keep := time.NewTicker(observeKeepalive)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			_, _ = fmt.Fprint(w, "event: end\ndata: {\"reason\":\"server shutting down\"}\n\n")
			_ = rc.Flush()
			return
		case <-sub.dropped:
			_, _ = fmt.Fprint(w, "event: error\ndata: {\"error\":{\"code\":\"too_slow\",\"message\":\"the client fell too far behind; reconnect\"}}\n\n")
			_ = rc.Flush()
			return
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
		case m := <-sub.ch:
			data, err := json.Marshal(observedEvent{ID: m.ID, Sink: m.Sink, Group: m.Group, CommitLSN: m.CommitLSN, CommitIdx: m.CommitIdx, Message: validJSON(m.Payload)})
			if err != nil {
				continue
			}
			// json.Marshal compacts the message, so data is one line.
			if _, err := fmt.Fprintf(w, "id: %d\nevent: message\ndata: %s\n\n", m.ID, data); err != nil {
				return
			}
		}
		// Batch what is already queued into one flush.
		if len(sub.ch) == 0 {
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// validJSON is b as JSON, or as a JSON string when b is not valid JSON,
// so one bad row never breaks a whole answer.
func validJSON(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}

// hub runs one outbox tail for every observer, only while there are
// observers: one LISTEN connection and one query per look however many
// clients watch.
type hub struct {
	store *outbox.Store
	log   zerolog.Logger

	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	run    *tailRun // the running tail, nil when none runs
	closed bool
	wg     sync.WaitGroup
}

// tailRun is one run of the tail, from the first observer to the last.
type tailRun struct {
	cancel context.CancelFunc
	ready  chan struct{} // closed once the tail follows the outbox (or failed)
	err    error         // why it failed to start; read after ready
}

type subscriber struct {
	sinkID  int64 // 0: every sink
	ch      chan outbox.Observed
	dropped chan struct{} // closed when the subscriber fell behind
}

func newHub(store *outbox.Store, log zerolog.Logger) *hub {
	return &hub{store: store, log: log, subs: map[*subscriber]struct{}{}}
}

var errShuttingDown = errors.New("server is shutting down")

// subscribe adds an observer. It returns once the tail runs, so every
// message committed after it returns reaches the observer.
func (h *hub) subscribe(ctx context.Context, sinkID int64) (*subscriber, error) {
	sub := &subscriber{sinkID: sinkID, ch: make(chan outbox.Observed, observeBuffer), dropped: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, errShuttingDown
	}
	if h.run == nil {
		tailCtx, cancel := context.WithCancel(context.Background())
		run := &tailRun{cancel: cancel, ready: make(chan struct{})}
		h.run = run
		h.wg.Go(func() { h.tail(tailCtx, run) })
	}
	run := h.run
	h.subs[sub] = struct{}{}
	h.mu.Unlock()
	select {
	case <-run.ready:
		if run.err != nil {
			h.unsubscribe(sub)
			return nil, run.err
		}
	case <-ctx.Done():
		h.unsubscribe(sub)
		return nil, ctx.Err()
	}
	return sub, nil
}

// unsubscribe removes an observer; the last one stops the tail.
func (h *hub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, sub)
	if len(h.subs) == 0 && h.run != nil {
		h.run.cancel()
		h.run = nil
	}
}

func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	if h.run != nil {
		h.run.cancel()
		h.run = nil
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *hub) broadcast(ctx context.Context, m outbox.Observed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ctx.Err() != nil {
		return // a newer tail serves the current subscribers
	}
	for sub := range h.subs {
		if sub.sinkID != 0 && sub.sinkID != m.SinkID {
			continue
		}
		select {
		case sub.ch <- m:
		default:
			close(sub.dropped)
			delete(h.subs, sub)
		}
	}
}

type checkpoint struct {
	highest int64     // highest id seen by a look
	xmax    uint64    // that look's snapshot xmax
	at      time.Time // when the look ran
}

// tail follows the outbox. Each look pages on from the highest id sent.
// Ids are taken before commit, so a message can become visible below ids
// sent already: the ids skipped between sent ones are kept as holes, and
// each look reads only those (an index probe each) besides the new ids,
// never the messages it has sent, however long another transaction keeps
// its snapshot open. A hole is forgotten once a later look's snapshot
// shows that every transaction in progress when it was seen has ended,
// and observeHoleGrace has passed: a message acknowledged before any look
// saw it reaches the delivered history a moment later.
func (h *hub) tail(ctx context.Context, run *tailRun) {
	started := func(err error) {
		run.err = err
		close(run.ready)
	}
	l, err := h.store.Listen(ctx)
	if err != nil {
		started(err)
		return
	}
	notify := make(chan struct{}, 1)
	waitDone := make(chan struct{})
	go func() {
		defer close(waitDone)
		for {
			if _, err := l.Wait(ctx); err != nil {
				if ctx.Err() == nil {
					h.log.Warn().Err(err).Msg("observe: notifications stopped; polling")
				}
				return
			}
			select {
			case notify <- struct{}{}:
			default:
			}
		}
	}()
	defer func() {
		<-waitDone
		l.Close()
	}()
	head, err := h.store.ObserveHead(ctx)
	if err != nil {
		started(err)
		return
	}
	started(nil)

	highest := head
	var gaps holes
	var checkpoints []checkpoint
	poll := time.NewTicker(observePoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-notify:
		case <-poll.C:
		}
		page, err := h.store.ObserveSince(ctx, highest, gaps.ranges, observePage)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn().Err(err).Msg("observe: read outbox")
			sleepCtx(ctx, observeHeadRetry)
			continue
		}
		for _, m := range page.Messages {
			if m.ID > highest {
				gaps.add(highest+1, m.ID-1)
				highest = m.ID
			} else if !gaps.remove(m.ID) {
				continue // already sent
			}
			h.broadcast(ctx, m)
		}
		if len(checkpoints) == 0 || checkpoints[len(checkpoints)-1].highest < highest {
			// Dropping a checkpoint only delays forgetting holes.
			if len(checkpoints) >= observeMaxHoles {
				checkpoints = checkpoints[1:]
			}
			checkpoints = append(checkpoints, checkpoint{highest: highest, xmax: page.Xmax, at: time.Now()})
		}
		i := 0
		for i < len(checkpoints) && checkpoints[i].xmax <= page.Xmin && time.Since(checkpoints[i].at) > observeHoleGrace {
			gaps.forgetThrough(checkpoints[i].highest)
			i++
		}
		checkpoints = checkpoints[i:]
		gaps.bound(observeMaxHoles)
		if page.More {
			select {
			case notify <- struct{}{}:
			default:
			}
		}
		sleepCtx(ctx, observeMinGap)
	}
}

// holes are the ids below the highest sent that were not visible when
// the tail passed them, as sorted, disjoint, inclusive ranges.
type holes struct {
	ranges []outbox.IDRange
}

// add records a new hole above every known one.
func (g *holes) add(lo, hi int64) {
	if lo <= hi {
		g.ranges = append(g.ranges, outbox.IDRange{Lo: lo, Hi: hi})
	}
}

// remove takes id out of the holes; false when it was in none (sent).
func (g *holes) remove(id int64) bool {
	i, found := slices.BinarySearchFunc(g.ranges, id, func(r outbox.IDRange, id int64) int { return cmp.Compare(r.Hi, id) })
	if !found && (i == len(g.ranges) || g.ranges[i].Lo > id) {
		return false
	}
	r := g.ranges[i]
	switch {
	case r.Lo == id && r.Hi == id:
		g.ranges = slices.Delete(g.ranges, i, i+1)
	case r.Lo == id:
		g.ranges[i].Lo++
	case r.Hi == id:
		g.ranges[i].Hi--
	default:
		g.ranges = slices.Insert(g.ranges, i+1, outbox.IDRange{Lo: id + 1, Hi: r.Hi})
		g.ranges[i].Hi = id - 1
	}
	return true
}

// forgetThrough drops the holes at or below id: nothing can appear there
// any more.
func (g *holes) forgetThrough(id int64) {
	i := 0
	for i < len(g.ranges) && g.ranges[i].Hi <= id {
		i++
	}
	g.ranges = g.ranges[i:]
	if len(g.ranges) > 0 && g.ranges[0].Lo <= id {
		g.ranges[0].Lo = id + 1
	}
}

// bound keeps at most n holes, forgetting the oldest: a look probes each.
func (g *holes) bound(n int) {
	if len(g.ranges) > n {
		g.ranges = slices.Delete(g.ranges, 0, len(g.ranges)-n)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
