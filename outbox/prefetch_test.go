package outbox

import (
	"testing"
	"time"
)

// prefetch claims ahead as api's prefetcher does (rule A): a push-style
// claim with a short lease.
func (b *testBundle) prefetch(t *testing.T, size int, lease time.Duration) *Batch {
	t.Helper()
	p, err := b.store.Claim(t.Context(), ClaimRequest{SinkID: b.sinkID, BatchSize: size, MaxAckPending: 1000, Lease: lease, Worker: "prefetch"})
	if err != nil || p == nil {
		t.Fatalf("prefetch: %v %v", p, err)
	}
	return p
}

// messageState is what a consumer can tell of the sink's messages: how
// many wait, how many a claim holds, and their deliver counts summed.
func (b *testBundle) messageState(t *testing.T) (waiting, held, attempts int) {
	t.Helper()
	err := b.store.Pool.QueryRow(t.Context(), `SELECT
		count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE o.id = ANY (c.ids))),
		count(*) FILTER (WHERE EXISTS (SELECT 1 FROM claims c WHERE o.id = ANY (c.ids))),
		COALESCE(sum(deliver_count), 0)
		FROM outbox o WHERE sink_id = $1`, b.sinkID).Scan(&waiting, &held, &attempts)
	if err != nil {
		t.Fatal(err)
	}
	return waiting, held, attempts
}

func TestPrefetchAdoptedBecomesTheReceive(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	p := b.prefetch(t, 10, 10*time.Second)
	if len(p.Messages) != 3 {
		t.Fatalf("prefetch took %d messages, want 3", len(p.Messages))
	}

	// Its messages were never handed out: no ack or nack holds them.
	res, err := b.store.PullAck(ctx, b.sinkID, refsOf(p, p.Messages...))
	if err != nil || len(res.Acked) != 0 || len(res.NotHeld) != 3 {
		t.Fatalf("ack of a prefetch's messages: %+v %v; want all 3 not held", res, err)
	}
	nres, err := b.store.PullNack(ctx, b.sinkID, refsOf(p, p.Messages...), time.Time{}, 0, "x")
	if err != nil || nres.Nacked != 0 || len(nres.NotHeld) != 3 {
		t.Fatalf("nack of a prefetch's messages: %+v %v; want all 3 not held", nres, err)
	}

	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true, MaxAge: time.Hour}
	_, got, err := b.store.Receive(ctx, nil, nil, req, p)
	if err != nil || got == nil || got.ClaimID != p.ClaimID || len(got.Messages) != 3 {
		t.Fatalf("receive adopting the prefetch: %+v %v; want claim %d with 3 messages", got, err, p.ClaimID)
	}
	var leaseLeft time.Duration
	var lapse *int64
	if err := b.store.Pool.QueryRow(ctx, `SELECT until - clock_timestamp(), lapse_max_age FROM claims WHERE id = $1`, p.ClaimID).Scan(&leaseLeft, &lapse); err != nil {
		t.Fatal(err)
	}
	if leaseLeft < 50*time.Second || lapse == nil || *lapse != time.Hour.Microseconds() {
		t.Fatalf("adopted claim: lease left %s, lapse_max_age %v; want the visibility timeout (1m) and max_age 1h", leaseLeft, lapse)
	}

	// Adopted, it is the receive's: a release changes nothing, an ack
	// takes effect.
	if err := b.store.Release(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, held, _ := b.messageState(t); held != 3 {
		t.Fatalf("a release of an adopted claim let go of messages: %d held, want 3", held)
	}
	res, err = b.store.PullAck(ctx, b.sinkID, refsOf(got, got.Messages...))
	if err != nil || len(res.Acked) != 3 {
		t.Fatalf("ack of the adopted batch: %+v %v; want 3 acked", res, err)
	}
}

func TestPrefetchReleasedCountsNoAttempt(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	p := b.prefetch(t, 10, 10*time.Second)
	if err := b.store.Release(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	waiting, held, attempts := b.messageState(t)
	if waiting != 3 || held != 0 || attempts != 0 {
		t.Fatalf("after a release: %d waiting, %d held, %d attempts; want 3, 0, 0", waiting, held, attempts)
	}
	// The groups were handed on: the next receive gets them in order.
	got := b.receive(t, 10, time.Minute, 0)
	if got == nil || len(got.Messages) != 3 || got.Messages[0].DeliverCount != 0 {
		t.Fatalf("receive after a release: %+v; want all 3, never attempted", got)
	}
}

func TestPrefetchNotAdoptedWhenPausedOrEnded(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true}

	// Paused after the prefetch: the receive gets nothing, and the
	// prefetch is released, not left holding the group.
	p := b.prefetch(t, 10, 10*time.Second)
	if err := b.store.SetSinkPaused(ctx, "s", true); err != nil {
		t.Fatal(err)
	}
	if _, got, err := b.store.Receive(ctx, nil, nil, req, p); err != nil || got != nil {
		t.Fatalf("receive from a paused sink adopting a prefetch: %+v %v; want nothing", got, err)
	}
	if waiting, held, attempts := b.messageState(t); waiting != 2 || held != 0 || attempts != 0 {
		t.Fatalf("after a refused adoption: %d waiting, %d held, %d attempts; want 2, 0, 0", waiting, held, attempts)
	}
	if err := b.store.SetSinkPaused(ctx, "s", false); err != nil {
		t.Fatal(err)
	}

	// Its lease ended first: the receive claims the same messages anew.
	p = b.prefetch(t, 10, 50*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	_, got, err := b.store.Receive(ctx, nil, nil, req, p)
	if err != nil || got == nil || got.ClaimID == p.ClaimID || len(got.Messages) != 2 || got.Messages[0].DeliverCount != 0 {
		t.Fatalf("receive adopting a prefetch whose lease ended: %+v %v; want a new claim of both messages", got, err)
	}
}

func TestPrefetchAdoptedWithAcks(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	first := b.receive(t, 1, time.Minute, 0) // a1
	p := b.prefetch(t, 10, 10*time.Second)   // b1: a is in flight
	if len(p.Messages) != 1 || p.Messages[0].Group != "b" {
		t.Fatalf("prefetch while a is in flight: %+v; want b alone", p.Messages)
	}
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true}
	res, got, err := b.store.Receive(ctx, refsOf(first, first.Messages...), nil, req, p)
	if err != nil || len(res.Acked) != 1 || got == nil || got.ClaimID != p.ClaimID {
		t.Fatalf("ack and adopt: %+v %+v %v; want a1 acked and the prefetch adopted", res, got, err)
	}
	// a2, handed on by the ack, comes with the next receive.
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 1 || next.Messages[0].Group != "a" {
		t.Fatalf("receive after: %+v; want a2", next)
	}
}
