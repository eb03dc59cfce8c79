package outbox

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func (b *testBundle) receive(t *testing.T, size int, lease time.Duration, maxAge time.Duration) *Batch {
	t.Helper()
	batch, err := b.store.Claim(t.Context(), ClaimRequest{SinkID: b.sinkID, BatchSize: size, MaxAckPending: 1000, Lease: lease, Worker: "receive", Pull: true, MaxAge: maxAge})
	if err != nil {
		t.Fatal(err)
	}
	return batch
}

func refsOf(b *Batch, ms ...Message) []PullRef {
	out := make([]PullRef, len(ms))
	for i, m := range ms {
		out[i] = PullRef{ClaimID: b.ClaimID, MessageID: m.ID}
	}
	return out
}

// A pull claim whose lease ends is reaped by ReapClaims too (nobody
// receives), and the lapse counts as an attempt.
func TestPullLapseByReapClaims(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	got := b.receive(t, 10, 50*time.Millisecond, 0)
	if got == nil || len(got.Messages) != 2 {
		t.Fatalf("receive: %+v", got)
	}
	var ended bool
	for !ended {
		if err := b.store.Pool.QueryRow(t.Context(), `SELECT until <= clock_timestamp() FROM claims`).Scan(&ended); err != nil {
			t.Fatal(err)
		}
	}
	sinks, err := b.store.ReapClaims(t.Context())
	if err != nil || len(sinks) != 1 {
		t.Fatalf("ReapClaims: %v %v", sinks, err)
	}
	var claims, attempted int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM outbox WHERE deliver_count = 1)`).Scan(&claims, &attempted); err != nil {
		t.Fatal(err)
	}
	if claims != 0 || attempted != 2 {
		t.Errorf("after the reap: %d claims, %d messages attempted once", claims, attempted)
	}
}

// Partial ack: a group stays busy while a message of it remains in the
// claim, and is handed on once none does; other groups of the claim are
// handed on as soon as theirs leave.
func TestPullPartialAck(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	got := b.receive(t, 10, time.Minute, 0)
	if got == nil || len(got.Messages) != 3 {
		t.Fatalf("receive: %+v", got)
	}
	b.queueCommitted(t, "a", 1)
	b.queueCommitted(t, "b", 1)
	var a1, a2, b1 Message
	for _, m := range got.Messages {
		switch {
		case m.Group == "a" && a1.ID == 0:
			a1 = m
		case m.Group == "a":
			a2 = m
		default:
			b1 = m
		}
	}
	res, err := b.store.PullAck(t.Context(), b.sinkID, refsOf(got, a1, b1))
	if err != nil || len(res.Acked) != 2 || len(res.NotHeld) != 0 {
		t.Fatalf("ack a1, b1: %+v %v", res, err)
	}
	// b is free, a is not (a2 is still held).
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 1 || next.Messages[0].Group != "b" {
		t.Fatalf("receive while a2 is held: %+v", next)
	}
	res, err = b.store.PullAck(t.Context(), b.sinkID, append(refsOf(got, a2, a1), PullRef{ClaimID: next.ClaimID + 100, MessageID: a2.ID}))
	if err != nil || len(res.Acked) != 1 || len(res.NotHeld) != 2 {
		t.Fatalf("ack a2 (and a1 again, and a forged claim): %+v %v", res, err)
	}
	last := b.receive(t, 10, time.Minute, 0)
	if last == nil || len(last.Messages) != 1 || last.Messages[0].Group != "a" {
		t.Fatalf("receive after a2 was acked: %+v", last)
	}
	var claims int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT count(*) FROM claims WHERE id = $1`, got.ClaimID).Scan(&claims); err != nil || claims != 0 {
		t.Errorf("the emptied claim is still there: %d %v", claims, err)
	}
}

// Partial nack: the nacked message backs off and its group is not handed
// on while another of its messages is held; max_age fails it instead.
func TestPullPartialNack(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	got := b.receive(t, 10, time.Minute, 0)
	if got == nil || len(got.Messages) != 2 {
		t.Fatalf("receive: %+v", got)
	}
	res, err := b.store.PullNack(t.Context(), b.sinkID, refsOf(got, got.Messages[1]), time.Time{}, 0, "later")
	if err != nil || res.Nacked != 1 {
		t.Fatalf("nack: %+v %v", res, err)
	}
	if next := b.receive(t, 10, time.Minute, 0); next != nil {
		t.Fatalf("received a group with a message still held: %+v", next)
	}
	if _, err := b.store.PullAck(t.Context(), b.sinkID, refsOf(got, got.Messages[0])); err != nil {
		t.Fatal(err)
	}
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 1 || next.Messages[0].ID != got.Messages[1].ID || next.Messages[0].DeliverCount != 1 {
		t.Fatalf("receive after the ack: %+v", next)
	}
	res, err = b.store.PullNack(t.Context(), b.sinkID, refsOf(next, next.Messages[0]), time.Time{}, time.Microsecond, "again")
	if err != nil || res.Failed != 1 {
		t.Fatalf("nack past max_age: %+v %v", res, err)
	}
}

// Lapses past max_age fail the messages, through ReapClaims.
func TestPullLapsePastMaxAge(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	for round := range 2 {
		got := b.receive(t, 10, 100*time.Millisecond, 150*time.Millisecond)
		if got == nil || len(got.Messages) != 2 {
			t.Fatalf("receive %d: %+v", round, got)
		}
		var ended bool
		for !ended {
			if err := b.store.Pool.QueryRow(t.Context(), `SELECT until <= clock_timestamp() FROM claims`).Scan(&ended); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.store.ReapClaims(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	var claims, failed int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL)`).Scan(&claims, &failed); err != nil {
		t.Fatal(err)
	}
	if claims != 0 || failed != 2 {
		t.Errorf("after two lapses past max_age: %d claims, %d failed", claims, failed)
	}
}

// Found by the pull actors of the torture test: when max_ack_pending is
// full of retries and each of their groups has a fresh message in front
// (a replay queued an older commit position), the retries must still lead
// a claim to those fresh messages (rule C: retries keep their flags).
func TestFreshBeforeRetriesWithRoomFullDoesNotStall(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	q := func(g string, lsn uint64, n int) {
		rows := make([]NewMessage, n)
		for i := range rows {
			rows[i] = NewMessage{SinkID: b.sinkID, Group: g, CommitLSN: lsn, CommitIdx: i, Payload: []byte(`{}`)}
		}
		if err := pgx.BeginFunc(ctx, b.store.Pool, func(tx pgx.Tx) error { return queueRows(ctx, tx, rows) }); err != nil {
			t.Fatal(err)
		}
	}
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 4, Lease: time.Minute, Worker: "r", Pull: true}
	var held []PullRef
	for _, g := range []string{"a", "b"} {
		q(g, 10, 2)
		got, err := b.store.Claim(ctx, req)
		if err != nil || got == nil || len(got.Messages) != 2 {
			t.Fatalf("receive %s: %+v %v", g, got, err)
		}
		// The second becomes a retry behind the first, still held.
		if _, err := b.store.PullNack(ctx, b.sinkID, refsOf(got, got.Messages[1]), time.Time{}, 0, "later"); err != nil {
			t.Fatal(err)
		}
		held = append(held, refsOf(got, got.Messages[0])...)
		q(g, 1, 1) // a replay: older than both
	}
	req.MaxAckPending = 2 // the two retries fill it
	if _, err := b.store.PullAck(ctx, b.sinkID, held); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := b.store.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			return
		}
	}
	t.Fatalf("nothing claimable: max_ack_pending is full of retries that wait behind fresh messages")
}
