package delivery

import (
	"context"
	"sync"
	"time"

	"github.com/walhook/walhook/outbox"
)

// historyKeep is how many delivered messages per sink the history keeps;
// historyEvery is how often buffered deliveries are written. Each write
// costs up to historyKeep rows per sink, and as many deleted by the trim
// and vacuumed later: at a second, a sink delivering thousands of
// messages a second writes a thousand of them.
const (
	historyKeep  = 1000
	historyEvery = time.Second
)

// history buffers acknowledged messages and writes them to the state
// schema's recent-delivery history every historyEvery. Only the newest
// historyKeep per sink can survive the trim anyway, so at most that many
// per sink are written per flush, whatever the delivery rate: the history
// costs the ack nothing. The price: a message shows as delivered a moment
// after its ack, and a crash loses that moment of history, never a
// delivery.
type history struct {
	mu     sync.Mutex
	bySink map[int64]*ring
}

// ring holds a sink's newest deliveries, at most historyKeep: once full,
// each new one takes the place of the oldest.
type ring struct {
	rows  []outbox.Delivered
	start int // where the oldest is, once full
}

func (r *ring) push(d outbox.Delivered) {
	if len(r.rows) < historyKeep {
		r.rows = append(r.rows, d)
		return
	}
	r.rows[r.start] = d
	r.start = (r.start + 1) % len(r.rows)
}

// appendTo appends the rows oldest first.
func (r *ring) appendTo(out []outbox.Delivered) []outbox.Delivered {
	return append(append(out, r.rows[r.start:]...), r.rows[:r.start]...)
}

func newHistory() *history { return &history{bySink: map[int64]*ring{}} }

// add records a batch acknowledged with status.
func (h *history) add(b *outbox.Batch, status int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.bySink[b.SinkID]
	if r == nil {
		r = &ring{}
		h.bySink[b.SinkID] = r
	}
	for _, m := range b.Messages {
		r.push(outbox.Delivered{SinkID: b.SinkID, Message: m, DeliverCount: m.DeliverCount + 1, Status: status, At: at})
	}
}

// flush writes what was buffered since the last flush.
func (h *history) flush(ctx context.Context, store *outbox.Store) error {
	h.mu.Lock()
	n := 0
	for _, r := range h.bySink {
		n += len(r.rows)
	}
	rows := make([]outbox.Delivered, 0, n)
	for id, r := range h.bySink {
		rows = r.appendTo(rows)
		delete(h.bySink, id)
	}
	h.mu.Unlock()
	return store.RecordDelivered(ctx, rows)
}

// Delivered adds a batch acknowledged outside delivery (a pull consumer's
// ack; status 0: no HTTP status) to the history, written with the next
// flush like delivery's own.
func (m *Manager) Delivered(b *outbox.Batch, status int, at time.Time) {
	m.history.add(b, status, at)
}
