package api

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/outbox"
)

// Review 9: handedOut stays bounded whatever its callers do: batches
// taken at once, never taken, past their visibility timeout behind one
// that is not, from many goroutines. Its byte count is what it holds.
func TestR9HandedOutBounded(t *testing.T) {
	t.Parallel()
	batch := func(claim int64, n, payload int) *outbox.Batch {
		b := &outbox.Batch{SinkID: 1, ClaimID: claim}
		for i := range n {
			b.Messages = append(b.Messages, outbox.Message{ID: claim*1000 + int64(i), Group: "g", Payload: make([]byte, payload)})
		}
		return b
	}
	check := func(h *handedOut, what string) {
		t.Helper()
		h.mu.Lock()
		defer h.mu.Unlock()
		sum := 0
		for _, e := range h.byClaim {
			sum += e.size
		}
		if sum != h.bytes {
			t.Fatalf("%s: bytes %d, entries hold %d", what, h.bytes, sum)
		}
		if h.bytes > h.limit {
			t.Fatalf("%s: %d bytes kept, limit %d", what, h.bytes, h.limit)
		}
		if len(h.order) > 2*len(h.byClaim)+65 {
			t.Fatalf("%s: order holds %d ids for %d batches", what, len(h.order), len(h.byClaim))
		}
		live := map[int64]bool{}
		for _, id := range h.order {
			live[id] = true
		}
		for id := range h.byClaim {
			if !live[id] {
				t.Fatalf("%s: batch %d kept but not in order (never evicted)", what, id)
			}
		}
	}

	// Taken at once, with a visibility timeout of 12h: nothing piles up.
	h := &handedOut{limit: 100_000}
	for i := range int64(100_000) {
		h.add(batch(i+1, 1, 10), 12*time.Hour)
		if got := h.take([]outbox.PullRef{{ClaimID: i + 1}}); len(got) != 1 {
			t.Fatalf("batch %d not kept", i+1)
		}
	}
	check(h, "taken at once")
	if len(h.byClaim) != 0 || cap(h.order) > 1000 {
		t.Fatalf("taken at once: %d kept, order cap %d", len(h.byClaim), cap(h.order))
	}

	// Taken at once behind one never taken: the ids taken are not kept
	// in order forever.
	h = &handedOut{limit: 100_000}
	h.add(batch(1, 1, 10), 12*time.Hour)
	for i := range int64(100_000) {
		h.add(batch(i+2, 1, 10), 12*time.Hour)
		h.take([]outbox.PullRef{{ClaimID: i + 2}})
	}
	check(h, "taken at once behind one kept")

	// Never taken: the byte bound holds, the oldest go.
	h = &handedOut{limit: 100_000}
	for i := range int64(50_000) {
		h.add(batch(i+1, 1+int(i%5), int(i%300)), 12*time.Hour)
		if i%997 == 0 {
			check(h, "never taken")
		}
	}
	check(h, "never taken")
	if h.take([]outbox.PullRef{{ClaimID: 50_000}}) == nil {
		t.Fatalf("the newest batch was not kept")
	}

	// One long-lived batch ahead of many whose visibility timeout passed
	// (and that nobody takes): still bounded by the bytes.
	h = &handedOut{limit: 100_000}
	h.add(batch(1, 1, 10), 12*time.Hour)
	for i := range int64(20_000) {
		h.add(batch(i+2, 1, 10), time.Nanosecond)
	}
	check(h, "expired behind a live one")

	// Many goroutines adding and taking.
	h = &handedOut{limit: 50_000}
	var wg sync.WaitGroup
	for g := range int64(8) {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range int64(5000) {
				id := g*1_000_000 + i + 1
				h.add(batch(id, 1+r.IntN(4), r.IntN(200)), time.Duration(r.IntN(3))*time.Millisecond)
				if r.IntN(2) == 0 {
					h.take([]outbox.PullRef{{ClaimID: id - int64(r.IntN(3))}})
				}
			}
		})
	}
	wg.Wait()
	check(h, "concurrent")
}

// A batch is taken once: an ack and a concurrent ack (or nack) of the
// same claim never both get it, so at most one of them ends it whole.
func TestR9HandedOutTakenOnce(t *testing.T) {
	t.Parallel()
	h := &handedOut{}
	for i := range int64(2000) {
		b := &outbox.Batch{SinkID: 1, ClaimID: i + 1, Messages: []outbox.Message{{ID: i + 1}}}
		h.add(b, time.Minute)
		var wg sync.WaitGroup
		got := make([]int, 4)
		for j := range got {
			wg.Go(func() { got[j] = len(h.take([]outbox.PullRef{{ClaimID: i + 1, MessageID: i + 1}})) })
		}
		wg.Wait()
		if got[0]+got[1]+got[2]+got[3] != 1 {
			t.Fatalf("claim %d taken %v times", i+1, got)
		}
	}
}
