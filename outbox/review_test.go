package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/walhook/walhook/sink"
)

// Sequences found by an adversarial review of the claim protocol (doc.go).
// Each failed on the first version of the redesign; the fixes are in the
// rules (a candidate starts its group at the group's first message; a
// batch stops at the first message still backing off; fresh messages
// before a retry do not wait for room; retries have their own index;
// capture's transaction is exempt from the idle timeout until its flush).

// enqueueAt queues one message of group at a commit position, in its own
// transaction, the way a replay does (Enqueue).
func (b *testBundle) enqueueAt(t *testing.T, group string, lsn uint64, idx int) int64 {
	t.Helper()
	if err := b.store.Enqueue(t.Context(), []NewMessage{{SinkID: b.sinkID, Group: group, CommitLSN: lsn, CommitIdx: idx, Payload: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT max(id) FROM outbox`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// Break 1 (I3, liveness; rules C and Q with max_ack_pending): a replay
// queues an older commit position into a group whose message is backing
// off while retries fill max_ack_pending. The claim hides the fresh
// replayed message (no room) and demotes the retry (it is behind the
// replayed one). The retry holds the room the replayed message waits
// for: nothing is ever claimed again.
func TestReplayBehindRetryWhenFullDoesNotStall(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1, Lease: time.Minute, Worker: "w"}
	live := b.enqueueAt(t, "g", 100, 0)
	first, err := b.store.Claim(ctx, req)
	if err != nil || first == nil {
		t.Fatalf("claim: %v, %v", first, err)
	}
	b.nack(t, first, time.Now().Add(100*time.Millisecond), 0) // one retry: max_ack_pending is full
	replayed := b.enqueueAt(t, "g", 50, 0)                    // replay of an older change of g

	var order []int64
	deadline := time.Now().Add(3 * time.Second)
	for len(order) < 2 && time.Now().Before(deadline) {
		batch, err := b.store.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if batch == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		for _, m := range batch.Messages {
			order = append(order, m.ID)
		}
		b.ack(t, batch)
	}
	if len(order) < 2 {
		t.Fatalf("sink stalled: delivered %v of [%d %d]; heads %v", order, replayed, live, b.heads(t))
	}
	if order[0] != replayed || order[1] != live {
		t.Fatalf("order %v, want [%d %d]", order, replayed, live)
	}
}

// explainClaim runs the claim statement under EXPLAIN ANALYZE (rolled
// back) and returns how many rows its plan read and threw away.
func (b *testBundle) explainClaim(t *testing.T, req ClaimRequest) (removed int64, plan string) {
	t.Helper()
	ctx := t.Context()
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var raw []byte
	if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) `+claimSQL, req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker, nil, nil, max(req.Batches, 1)).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if k == "Rows Removed by Filter" {
					n, _ := x.(float64)
					loops, _ := v["Actual Loops"].(float64)
					removed += int64(n * max(loops, 1))
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	walk(doc)
	return removed, string(raw)
}

// Cliff 1 (performance): when retries fill max_ack_pending, the claim's
// candidate scan walks outbox_ready_idx filtering out every ready fresh
// head (deliver_count is not in the index) to find the retries. Every
// claim of a saturated sink, the moment a slow receiver makes it
// saturated, reads the whole ready backlog and returns nothing.
func TestFullSinkClaimDoesNotScanBacklog(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 10, Lease: time.Minute, Worker: "w"}
	b.enqueueAt(t, "slow", 1, 0)
	batch, err := b.store.Claim(ctx, req)
	if err != nil || batch == nil {
		t.Fatalf("claim: %v, %v", batch, err)
	}
	// Ten attempts in flight then backing off fill max_ack_pending.
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head, deliver_count, ready_at)
		SELECT $1, 'retry' || i, 1, 0, '{}', true, 1, now() + interval '1 hour' FROM generate_series(1, 10) i`, b.sinkID); err != nil {
		t.Fatal(err)
	}
	b.ack(t, batch)
	const backlog = 20000
	rows := make([]NewMessage, backlog)
	for i := range rows {
		rows[i] = NewMessage{SinkID: b.sinkID, Group: fmt.Sprint("g", i), CommitLSN: 2, CommitIdx: i, Payload: []byte(`{}`)}
	}
	if err := b.store.Enqueue(ctx, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Pool.Exec(ctx, `ANALYZE outbox`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got, err := b.store.Claim(ctx, req); err != nil || got != nil {
		t.Fatalf("claim with max_ack_pending full: %v, %v", got, err)
	}
	took := time.Since(start)
	removed, _ := b.explainClaim(t, req)
	if removed > 1000 {
		t.Fatalf("a claim that returns nothing threw away %d rows (backlog %d, took %s): its cost grows with the backlog", removed, backlog, took)
	}
}

// Break 2 (state diagram: backing off leaves only when its backoff is
// over or by Redeliver; rule C reads only ready candidates, but the batch
// takes the group "from it on" whatever each message's ready_at): a
// replay queues an older message into a group whose message backs off
// for an hour. The replayed message starts a batch that carries the
// backing-off message along: it is delivered an hour early, the moment
// after its receiver failed it.
func TestReplayDoesNotCarryBackingOffMessage(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.enqueueAt(t, "g", 100, 0)
	first := b.claim(t, 10)
	b.nack(t, first, time.Now().Add(time.Hour), 0)
	b.enqueueAt(t, "g", 50, 0) // replay of an older change of g
	batch, err := b.store.Claim(ctx, ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if batch == nil {
		t.Fatal("the replayed message was not claimed")
	}
	for _, m := range batch.Messages {
		if m.ID == first.Messages[0].ID {
			t.Fatalf("claimed message %d an hour before its backoff ends (batch %d messages)", m.ID, len(batch.Messages))
		}
	}
}

// Break 3 (capture liveness; rule T's flush and Open's
// idle_in_transaction_session_timeout): capture opens its state
// transaction at the first spilled chunk of a source transaction and
// commits it only at the flush after the source commit (a flush never
// happens inside a source transaction). Between two spills the session is
// idle in transaction; if decoding the rest of a large source transaction
// (changes the sink's filter drops, or tables outside the publication
// that the walsender still decodes) takes longer than the 30 s that Open
// sets, the server ends the session and the flush fails. The stream
// restarts from the durable position, decodes the same transaction at
// the same pace, and fails again: capture never gets past it.
func TestLongSourceTransactionFlushes(t *testing.T) {
	t.Parallel() // 31 s of waiting, which the other parallel tests fill
	if testing.Short() {
		t.Skip("waits out idle_in_transaction_session_timeout (30 s)")
	}
	b := setup(t)
	ctx := t.Context()
	c, rel := newTestCapture(t, b)
	const lsn = 1000
	if err := c.Begin(ctx, lsn, time.Now()); err != nil {
		t.Fatal(err)
	}
	change := func(i int) {
		ch := &sink.Change{Rel: rel, Action: sink.Update, New: [][]byte{[]byte(fmt.Sprint(i)), []byte(`"x"`)}, CommitLSN: lsn, CommitIdx: i}
		if err := c.Change(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	for i := range chunkRows { // the first chunk spills: the state transaction opens
		change(i)
	}
	time.Sleep(31 * time.Second) // decoding the rest of the source transaction
	change(chunkRows)
	if err := c.Commit(ctx, lsn, lsn+1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Flush(ctx); err != nil {
		t.Fatalf("a source transaction whose decoding pauses 31 s between two chunks cannot be flushed: %v", err)
	}
}

// Found by the torture test (a stall under load, seed 20261127): retries
// fill max_ack_pending, and the oldest retry stands behind more fresh
// messages than a batch holds (a replay queued older commit positions
// into its group). The fresh messages before a retry need no room (rule
// C), but the claim only counted them as before a retry when the retry
// was within the batch's window of the group: every claim then found
// the same retry, took nothing, and the sink stalled for good.
func TestRetryBehindLongReplayGoesWithMaxAckPendingFull(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 2, MaxAckPending: 2, Lease: time.Minute, Worker: "w"}
	// Two retries, ready, fill max_ack_pending.
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head, deliver_count, ready_at)
		SELECT $1, 'g' || i, 100, 0, '{}', true, 1, now() - interval '1 second' FROM generate_series(1, 2) i`, b.sinkID); err != nil {
		t.Fatal(err)
	}
	// A replay queues five older messages into each retry's group.
	for _, g := range []string{"g1", "g2"} {
		for i := range 5 {
			b.enqueueAt(t, g, 10, i)
		}
	}
	var got []int64
	for range 20 {
		batch, err := b.store.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if batch == nil {
			break
		}
		for _, m := range batch.Messages {
			got = append(got, m.ID)
		}
		b.ack(t, batch)
	}
	if len(got) != 12 {
		t.Fatalf("delivered %d of 12 messages (%v): the retries behind the replays stalled the sink", len(got), got)
	}
}
