package api

import (
	"sync"
	"time"

	"github.com/walhook/walhook/outbox"
)

// handedOut keeps the batches this process's receives handed out, until
// an ack or nack names them or their visibility timeout passes, so that
// an ack naming all of a batch ends its claim whole, as a push ack does
// (outbox.Store.PullAckKnown), and the acked messages come from memory
// rather than back from Postgres: the consumer's ack then costs about what
// a push ack costs. An ack that reaches another process, or one whose
// batch was evicted, takes the general path: same outcome, more work.
//
// Batches are kept as Claim returned them, which PullAckKnown relies on.
// Payloads make them large, so the total is bounded (handedOutMaxBytes),
// oldest out first.
type handedOut struct {
	mu      sync.Mutex
	byClaim map[int64]handed
	order   []int64 // claim ids, oldest first; some already gone
	bytes   int
	limit   int // handedOutMaxBytes when 0 (tests set less)
}

type handed struct {
	b     *outbox.Batch
	until time.Time
	size  int
}

// handedOutMaxBytes bounds what handedOut keeps: some 16k messages in
// flight at 1 KB each, a small share of the 100 MB a process may use.
const handedOutMaxBytes = 16 << 20

// add keeps b, handed out with visibility timeout vis.
func (h *handedOut) add(b *outbox.Batch, vis time.Duration) {
	size := 64
	for _, m := range b.Messages {
		size += len(m.Payload) + len(m.Group) + 160 // the Message and its allocations
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byClaim == nil {
		h.byClaim = map[int64]handed{}
	}
	if h.limit == 0 {
		h.limit = handedOutMaxBytes
	}
	h.byClaim[b.ClaimID] = handed{b: b, until: now.Add(vis), size: size}
	h.order = append(h.order, b.ClaimID)
	h.bytes += size
	// Oldest out first: those past their visibility timeout (their claim
	// has ended), then any while over the bound.
	drop := 0
	for _, id := range h.order {
		e, ok := h.byClaim[id]
		if ok && h.bytes <= h.limit && now.Before(e.until) {
			break
		}
		if ok {
			delete(h.byClaim, id)
			h.bytes -= e.size
		}
		drop++
	}
	h.order = h.order[drop:]
	if len(h.order) > 2*len(h.byClaim)+64 { // ids of batches taken since
		live := make([]int64, 0, len(h.byClaim))
		for _, id := range h.order {
			if _, ok := h.byClaim[id]; ok {
				live = append(live, id)
			}
		}
		h.order = live
	}
}

// take returns the kept batches of the claims refs name, and forgets
// them: an ack or nack ends or shrinks those claims, and a batch kept
// after that would no longer be what its claim holds.
func (h *handedOut) take(refs []outbox.PullRef) []*outbox.Batch {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*outbox.Batch
	for _, r := range refs {
		if e, ok := h.byClaim[r.ClaimID]; ok {
			out = append(out, e.b)
			delete(h.byClaim, r.ClaimID)
			h.bytes -= e.size
		}
	}
	return out
}
