package delivery

import (
	"testing"
	"time"

	"github.com/walhook/walhook/outbox"
)

// The buffer keeps only what the trimmed history could keep: the newest
// historyKeep messages per sink, whatever the delivery rate.
func TestHistoryKeepsTheNewestPerSink(t *testing.T) {
	t.Parallel()
	h := newHistory()
	for i := 0; i < 27; i++ {
		b := &outbox.Batch{SinkID: 1}
		if i >= 20 {
			b.SinkID = 2
		}
		for k := 0; k < 100; k++ {
			b.Messages = append(b.Messages, outbox.Message{ID: int64(i*100 + k), DeliverCount: 2})
		}
		h.add(b, 204, time.Now())
	}
	one, two := h.bySink[1].appendTo(nil), h.bySink[2].appendTo(nil)
	if len(one) != historyKeep || len(two) != 700 {
		t.Fatalf("kept %d and %d, want %d and 700", len(one), len(two), historyKeep)
	}
	if first, last := one[0], one[len(one)-1]; first.Message.ID != 1000 || last.Message.ID != 1999 || last.DeliverCount != 3 || last.Status != 204 {
		t.Fatalf("sink 1 keeps %+v .. %+v", first, last)
	}
}
