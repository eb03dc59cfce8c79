package integration

import (
	"testing"
	"time"
)

// Review 9b: two consumers of one sink alternate, so each receive takes
// the prefetch the other's full receive started (rule A). Every row is
// handed out once, to one consumer, each batch within its batch_size,
// and every delivered message counts one attempt.
func TestReview9bTwoConsumersShareThePrefetch(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	b.exec(t, `INSERT INTO t SELECT generate_series(1, 40)`)
	waitFor(t, 10*time.Second, "40 messages pending", func() bool {
		return decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)).RawCounts["pending"] == 40
	})
	sizes := [2]int{8, 5}
	var pending [2][]string
	seen := map[float64]int{}
	idle := 0
	for round := 0; idle < 4 && round < 100; round++ {
		c := round % 2
		req := map[string]any{"batch_size": sizes[c]}
		if len(pending[c]) > 0 {
			req["ack_ids"] = pending[c]
		}
		batch := e.receive(t, "s", req)
		if len(batch) > sizes[c] {
			t.Fatalf("consumer %d asked %d, got %d", c, sizes[c], len(batch))
		}
		pending[c] = ackIDsOf(batch)
		if len(batch) == 0 {
			idle++
		} else {
			idle = 0
		}
		for _, m := range batch {
			id := m.Message.Record["id"].(float64)
			if prev, ok := seen[id]; ok {
				t.Fatalf("row %v handed to consumer %d after consumer %d had it", id, c, prev)
			}
			seen[id] = c
		}
	}
	if len(seen) != 40 {
		t.Fatalf("received %d distinct rows, want 40", len(seen))
	}
	waitFor(t, 10*time.Second, "40 acked messages in the history", func() bool {
		return len(e.messages(t, "s", "?state=delivered&limit=100")) == 40
	})
	for _, m := range e.messages(t, "s", "?state=delivered&limit=100") {
		if m.DeliverCount != 1 {
			t.Fatalf("delivered message attempted %d times, want once: %+v", m.DeliverCount, m)
		}
	}
}
