package delivery

import (
	"context"
	"sync"
	"time"

	"github.com/walhook/walhook/outbox"
)

// historyKeep is how many delivered messages per sink the history keeps;
// historyEvery is how often buffered deliveries are written.
const (
	historyKeep  = 1000
	historyEvery = 250 * time.Millisecond
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
	bySink map[int64][]outbox.Delivered
}

func newHistory() *history { return &history{bySink: map[int64][]outbox.Delivered{}} }

// add records a batch acknowledged with status.
func (h *history) add(b *outbox.Batch, status int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rows := h.bySink[b.SinkID]
	for _, m := range b.Messages {
		rows = append(rows, outbox.Delivered{SinkID: b.SinkID, Message: m, DeliverCount: m.DeliverCount + 1, Status: status, At: at})
	}
	if over := len(rows) - historyKeep; over > 0 {
		rows = append(rows[:0], rows[over:]...)
	}
	h.bySink[b.SinkID] = rows
}

// flush writes what was buffered since the last flush.
func (h *history) flush(ctx context.Context, store *outbox.Store) error {
	h.mu.Lock()
	var rows []outbox.Delivered
	for id, r := range h.bySink {
		rows = append(rows, r...)
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
