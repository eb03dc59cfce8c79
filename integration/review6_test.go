package integration

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Review 6: one receive's ack ids sent at once by several consumers (ack,
// and receive carrying them): the messages are acked once, counted once
// in the answers, and recorded once in the delivered history.
func TestR6PullDuplicateWholeAcks(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	total := 0
	for round := range 3 {
		for i := range 10 {
			b.exec(t, fmt.Sprintf(`INSERT INTO t VALUES (%d)`, round*100+i))
		}
		total += 10
		var got []pulled
		waitFor(t, 10*time.Second, "10 messages received", func() bool {
			got = append(got, e.receive(t, "s", map[string]any{"wait": "1s", "batch_size": 10 - len(got)})...)
			return len(got) == 10
		})
		ids := ackIDsOf(got)
		var mu sync.Mutex
		acked := 0
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if w%2 == 0 {
					status, out := e.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": append(ids, ids[:3]...)}, apiToken)
					switch status {
					case 200:
						n := decodeAs[map[string]int](t, out)["acked"]
						mu.Lock()
						acked += n
						mu.Unlock()
					case 409:
					default:
						t.Errorf("ack: %d %s", status, out)
					}
					return
				}
				out := e.must(t, 200, "POST", "/api/sinks/s/receive", map[string]any{"wait": "0s", "ack_ids": ids})
				r := decodeAs[struct {
					Data    []pulled `json:"data"`
					Acked   int      `json:"acked"`
					NotHeld []string `json:"not_held"`
				}](t, out)
				if len(r.Data) != 0 {
					t.Errorf("received after acking everything: %+v", r.Data)
				}
				if r.Acked+len(r.NotHeld) != len(ids) {
					t.Errorf("receive with acks: %d acked, %d not held of %d", r.Acked, len(r.NotHeld), len(ids))
				}
				mu.Lock()
				acked += r.Acked
				mu.Unlock()
			}()
		}
		wg.Wait()
		if acked != 10 {
			t.Errorf("round %d: %d acked in all, 10 received", round, acked)
		}
	}
	waitFor(t, 10*time.Second, "the history", func() bool {
		return len(e.messages(t, "s", "?state=delivered&limit=1000")) >= total
	})
	time.Sleep(300 * time.Millisecond)
	if h := e.messages(t, "s", "?state=delivered&limit=1000"); len(h) != total {
		t.Errorf("%d in the delivered history, %d acked", len(h), total)
	}
}
