package api

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/outbox"
)

// waker wakes waiting receives (long polls) when their sink gets
// messages: one LISTEN connection for the whole process, not one per
// request, started by the first receive and kept until Close. While it is
// down (the connection broke), receives fall back to polling.
type waker struct {
	store *outbox.Store
	log   zerolog.Logger
	stop  <-chan struct{}
	bg    *sync.WaitGroup

	mu      sync.Mutex
	started bool
	ready   chan struct{} // closed once the first LISTEN succeeded or failed
	subs    map[int64]map[chan struct{}]struct{}
}

func newWaker(store *outbox.Store, log zerolog.Logger, stop <-chan struct{}, bg *sync.WaitGroup) *waker {
	return &waker{store: store, log: log, stop: stop, bg: bg, ready: make(chan struct{}), subs: map[int64]map[chan struct{}]struct{}{}}
}

// subscribe returns a channel that receives a value when sinkID may have
// new messages. The first call starts the listener and waits (bounded by
// ctx) until it listens, so no commit after subscribe goes unheard.
func (w *waker) subscribe(ctx context.Context, sinkID int64) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	if w.subs[sinkID] == nil {
		w.subs[sinkID] = map[chan struct{}]struct{}{}
	}
	w.subs[sinkID][ch] = struct{}{}
	if !w.started {
		w.started = true
		w.bg.Add(1)
		go w.run()
	}
	w.mu.Unlock()
	select {
	case <-w.ready:
	case <-ctx.Done():
	case <-w.stop:
	}
	return ch, func() {
		w.mu.Lock()
		delete(w.subs[sinkID], ch)
		if len(w.subs[sinkID]) == 0 {
			delete(w.subs, sinkID)
		}
		w.mu.Unlock()
	}
}

func (w *waker) run() {
	defer w.bg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-w.stop
		cancel()
	}()
	var once sync.Once
	markReady := func() { once.Do(func() { close(w.ready) }) }
	defer markReady()
	for ctx.Err() == nil {
		err := w.listen(ctx, markReady)
		markReady() // a failed LISTEN: receives poll meanwhile
		if ctx.Err() != nil {
			return
		}
		w.log.Warn().Err(err).Msg("receive: outbox notifications stopped; polling until they are back")
		w.ringAll() // anything may have been missed
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (w *waker) listen(ctx context.Context, ready func()) error {
	l, err := w.store.Listen(ctx)
	if err != nil {
		return err
	}
	defer l.Close()
	ready()
	for {
		ids, err := l.Wait(ctx)
		if err != nil {
			return err
		}
		for _, id := range ids {
			w.ring(id)
		}
	}
}

func (w *waker) ring(sinkID int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subs[sinkID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (w *waker) ringAll() {
	w.mu.Lock()
	ids := make([]int64, 0, len(w.subs))
	for id := range w.subs {
		ids = append(ids, id)
	}
	w.mu.Unlock()
	for _, id := range ids {
		w.ring(id)
	}
}
