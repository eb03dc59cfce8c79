package outbox

import (
	"context"
	"testing"
	"time"
)

// These are the delivery-protocol bugs of issue 9, each as the shortest
// sequence that showed it. They failed on the protocol before the
// redesign described in doc.go.

// claimUntil claims batches of size 1 until one contains want or the
// deadline passes, acking everything else it gets.
func (b *testBundle) claimUntil(t *testing.T, d time.Duration, want int64) *Batch {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		batch := b.claim(t, 1)
		if batch == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		for _, m := range batch.Messages {
			if m.ID == want {
				return batch
			}
		}
		b.ack(t, batch)
	}
	t.Fatalf("message %d was never claimed: the sink stalled", want)
	return nil
}

func (b *testBundle) ids(t *testing.T, group string) []int64 {
	t.Helper()
	var ids []int64
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM outbox WHERE group_key = $1`, group).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	return ids
}

// Bug 1a: a nack holds its message locked while capture queues a newer
// message of the same group. The sink must go on delivering.
func TestNackWhileCaptureQueuesBehindDoesNotStall(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "g", 1)
	first := b.claim(t, 1)

	lock, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE`, first.Messages[0].ID); err != nil {
		t.Fatal(err)
	}
	b.queueCommitted(t, "g", 1) // while the nack holds the row
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b.nack(t, first, time.Now().Add(300*time.Millisecond), 0)
	b.queueCommitted(t, "h", 1)

	other := b.ids(t, "h")[0]
	b.ack(t, b.claimUntil(t, 5*time.Second, other))
	b.ack(t, b.claimUntil(t, 5*time.Second, first.Messages[0].ID))
	b.ack(t, b.claimUntil(t, 5*time.Second, b.ids(t, "g")[0]))
}

// Bug 1b: redelivering a failed message while a younger one of its group
// waits (the sink paused) must neither stall the sink nor reorder.
func TestRedeliverWhileYoungerWaitsDoesNotStall(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "g", 1)
	first := b.claim(t, 1)
	b.nack(t, first, time.Now(), time.Millisecond) // failed
	b.queueCommitted(t, "g", 1)
	if err := b.store.SetSinkPaused(ctx, "s", true); err != nil {
		t.Fatal(err)
	}
	if n, err := b.store.Redeliver(ctx, b.sinkID, nil); err != nil || n != 1 {
		t.Fatalf("redeliver: %d, %v", n, err)
	}
	b.queueCommitted(t, "h", 1)
	if err := b.store.SetSinkPaused(ctx, "s", false); err != nil {
		t.Fatal(err)
	}
	g := b.ids(t, "g")
	got := b.claimUntil(t, 5*time.Second, g[0])
	if got.Messages[0].ID != first.Messages[0].ID {
		t.Fatalf("the revived message must go first, got %d", got.Messages[0].ID)
	}
	b.ack(t, got)
	b.ack(t, b.claimUntil(t, 5*time.Second, g[1]))
	b.ack(t, b.claimUntil(t, 5*time.Second, b.ids(t, "h")[0]))
}

// Bug 2: a replay's row takes a lower id than capture's row of the same
// group but commits later. The group must not go out twice at once.
func TestReplayCommittingLateNeverDoubleClaims(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	replay, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer replay.Rollback(context.WithoutCancel(ctx))
	b.queue(t, replay, "g", 1) // lower id, not committed yet
	b.queueCommitted(t, "g", 1)
	live := b.claim(t, 1)
	if live == nil {
		t.Fatal("capture's message was not claimed")
	}
	if err := replay.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if again := b.claim(t, 10); again != nil {
		t.Fatalf("claimed %+v while the group's batch %+v is in flight", again.Messages, live.Messages)
	}
	b.ack(t, live)
	if next := b.claim(t, 10); next == nil {
		t.Fatal("the replayed message was not claimed after the ack")
	}
}

// Bug 3: an ack that comes after its lease ended, when another worker has
// claimed the same messages, changes nothing: the group is not handed on
// while the second request is in flight.
func TestLateAckIsFenced(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	lease := 500 * time.Millisecond
	first := b.claimLease(t, 1, lease)
	time.Sleep(lease + 100*time.Millisecond) // the point: the first lease runs out
	second := b.claimLease(t, 1, time.Minute)
	if second == nil || second.Messages[0].ID != first.Messages[0].ID {
		t.Fatalf("the expired batch was not claimed again: %+v", second)
	}
	b.lateAck(t, first)
	if again := b.claim(t, 10); again != nil {
		t.Fatalf("claimed %+v while the group's batch is in flight: the late ack handed it on", again.Messages)
	}
	if ids := b.ids(t, "g"); len(ids) != 2 {
		t.Fatalf("the late ack deleted messages: %v left", ids)
	}
}

// A lease is measured from the moment of the claim, on the server's
// clock, not from the start of its transaction (which waited for the
// claim lock here).
func TestLeaseStartsAtTheClaim(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "g", 1)
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, claimLockSQL, b.sinkID); err != nil {
		t.Fatal(err)
	}
	got := make(chan *Batch, 1)
	go func() { got <- b.claimLease(t, 1, 700*time.Millisecond) }()
	time.Sleep(time.Second) // the point: the claim waits on the lock longer than its lease
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	first := <-got
	if first == nil {
		t.Fatal("nothing claimed")
	}
	if again := b.claim(t, 1); again != nil {
		t.Fatalf("a claim made a moment ago had already expired: %+v", again.Messages)
	}
}

// Found by the torture test: when messages backing off fill
// max_ack_pending, fresh groups that are ready sooner must not hide them
// from every claim, or the sink never frees room again.
func TestRetriesGoWhenMaxAckPendingIsFull(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 1)
	b.queueCommitted(t, "b", 1)
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 1, MaxAckPending: 2, Lease: time.Minute, Worker: "w"}
	for range 2 { // both attempted and backing off: the sink is full
		batch, err := b.store.Claim(ctx, req)
		if err != nil || batch == nil {
			t.Fatalf("claim: %v, %v", batch, err)
		}
		b.nack(t, batch, time.Now().Add(200*time.Millisecond), 0)
	}
	for _, g := range []string{"c", "d", "e"} { // fresh, ready first
		b.queueCommitted(t, g, 1)
	}
	if _, err := b.store.Pool.Exec(ctx, `UPDATE outbox SET ready_at = now() - interval '1 hour' WHERE deliver_count = 0`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		batch, err := b.store.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if batch != nil {
			if batch.Messages[0].DeliverCount == 0 {
				t.Fatalf("claimed fresh message %d with no room", batch.Messages[0].ID)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the messages backing off were never retried: the sink stalled")
}
