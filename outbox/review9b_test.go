package outbox

import (
	"sync"
	"testing"
	"time"
)

// Review 9b: attacks on rule A (prefetch, adoption, release).

func review9bReq(b *testBundle, size int, vis time.Duration) ClaimRequest {
	return ClaimRequest{SinkID: b.sinkID, BatchSize: size, MaxAckPending: 1000, Lease: vis, Worker: "receive", Pull: true}
}

// A whole-batch ack naming a prefetch nobody adopted, with the prefetch
// given as the known batch (a consumer guessing the claim id), changes
// nothing: the prefetch keeps its messages and is still adoptable.
func TestReview9bWholeAckOfPrefetchChangesNothing(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	p := b.prefetch(t, 10, 10*time.Second)
	res, err := b.store.PullAckKnown(ctx, b.sinkID, refsOf(p, p.Messages...), []*Batch{p})
	if err != nil || len(res.Acked) != 0 || len(res.NotHeld) != 3 {
		t.Fatalf("whole ack of an unadopted prefetch: %+v %v; want nothing acked, 3 not held", res, err)
	}
	if waiting, held, attempts := b.messageState(t); waiting != 0 || held != 3 || attempts != 0 {
		t.Fatalf("after the ack: %d waiting, %d held, %d attempts; want 0, 3, 0", waiting, held, attempts)
	}
	_, got, err := b.store.Receive(ctx, nil, nil, review9bReq(b, 10, time.Minute), p)
	if err != nil || got == nil || got.ClaimID != p.ClaimID || len(got.Messages) != 3 {
		t.Fatalf("adoption after the refused ack: %+v %v", got, err)
	}
}

// Two receives adopting the same prefetch at once: one gets it, the
// other never gets any of its messages.
func TestReview9bConcurrentAdoption(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 3)
	b.queueCommitted(t, "b", 2)
	for round := 0; round < 10; round++ {
		p := b.prefetch(t, 10, 10*time.Second)
		var wg sync.WaitGroup
		got := make([]*Batch, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, got[i], errs[i] = b.store.Receive(ctx, nil, nil, review9bReq(b, 10, time.Minute), p)
			}()
		}
		wg.Wait()
		seen := map[int64]int64{}
		for i, g := range got {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if g == nil {
				continue
			}
			for _, m := range g.Messages {
				if c, ok := seen[m.ID]; ok {
					t.Fatalf("round %d: message %d handed to two receives (claims %d and %d)", round, m.ID, c, g.ClaimID)
				}
				seen[m.ID] = g.ClaimID
			}
		}
		if (got[0] == nil) == (got[1] == nil) || len(seen) != len(p.Messages) {
			t.Fatalf("round %d: receives got %+v and %+v; want exactly one with the prefetch", round, got[0], got[1])
		}
		// Give the messages back for the next round.
		for _, g := range got {
			if g != nil {
				if _, err := b.store.PullNack(ctx, b.sinkID, refsOf(g, g.Messages...), time.Time{}, 0, "again"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// The prefetch's lease ends, another consumer claims its groups, then the
// receive that took the prefetch tries to adopt it: it must not get the
// other consumer's messages, and the release it does must not hand the
// held groups to a third receive (its P must not break I1).
func TestReview9bStalePrefetchAfterOtherClaim(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	p := b.prefetch(t, 10, 100*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	other := b.receive(t, 10, time.Minute, 0)
	if other == nil || len(other.Messages) != 3 {
		t.Fatalf("other consumer after the prefetch's lease: %+v; want a1 a2 b1", other)
	}
	_, got, err := b.store.Receive(ctx, nil, nil, review9bReq(b, 10, time.Minute), p)
	if err != nil {
		t.Fatal(err)
	}
	if got != nil && got.ClaimID == p.ClaimID {
		t.Fatalf("a stale prefetch was adopted: %+v", got)
	}
	seen := map[int64]bool{}
	for _, m := range other.Messages {
		seen[m.ID] = true
	}
	if got != nil {
		for _, m := range got.Messages {
			if seen[m.ID] {
				t.Fatalf("message %d (group %s) handed to two consumers", m.ID, m.Group)
			}
			seen[m.ID] = true
		}
	}
	if third := b.receive(t, 10, time.Minute, 0); third != nil {
		t.Fatalf("third receive after the stale release got %+v; want nothing (all held)", third)
	}
	res, err := b.store.PullAck(ctx, b.sinkID, refsOf(other, other.Messages...))
	if err != nil || len(res.Acked) != len(other.Messages) {
		t.Fatalf("the other consumer's ack: %+v %v", res, err)
	}
}

// An adopted prefetch that lapses counts one attempt per message (a
// consumer had them); one that lapses unadopted counts none.
func TestReview9bLapseAttempts(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 2)
	p := b.prefetch(t, 10, 100*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	if _, err := b.store.ReapClaims(ctx); err != nil {
		t.Fatal(err)
	}
	if waiting, held, attempts := b.messageState(t); waiting != 2 || held != 0 || attempts != 0 {
		t.Fatalf("unadopted prefetch lapsed: %d waiting, %d held, %d attempts; want 2, 0, 0", waiting, held, attempts)
	}
	if err := b.store.Release(ctx, p); err != nil { // late release: nothing
		t.Fatal(err)
	}

	p = b.prefetch(t, 10, 10*time.Second)
	_, got, err := b.store.Receive(ctx, nil, nil, review9bReq(b, 10, 200*time.Millisecond), p)
	if err != nil || got == nil || got.ClaimID != p.ClaimID {
		t.Fatalf("adoption: %+v %v", got, err)
	}
	// The visibility timeout counts from the adoption, not the prefetch
	// (whose lease was 10s).
	time.Sleep(300 * time.Millisecond)
	if _, err := b.store.ReapClaims(ctx); err != nil {
		t.Fatal(err)
	}
	if waiting, held, attempts := b.messageState(t); waiting != 2 || held != 0 || attempts != 2 {
		t.Fatalf("adopted prefetch lapsed: %d waiting, %d held, %d attempts; want 2, 0, 2", waiting, held, attempts)
	}
	// Its acks, late, change nothing; nack too.
	res, err := b.store.PullAck(ctx, b.sinkID, refsOf(got, got.Messages...))
	if err != nil || len(res.Acked) != 0 {
		t.Fatalf("ack after the lapse: %+v %v", res, err)
	}
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 2 || next.Messages[0].DeliverCount != 1 || next.Messages[1].DeliverCount != 1 {
		t.Fatalf("receive after the lapse: %+v; want a1 a2 with deliver count 1", next)
	}
}

// Adopted, nacked, then acked: the ack changes nothing, and the nack
// counted one attempt.
func TestReview9bNackAdoptedThenAck(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 1)
	p := b.prefetch(t, 10, 10*time.Second)
	_, got, err := b.store.Receive(ctx, nil, nil, review9bReq(b, 10, time.Minute), p)
	if err != nil || got == nil || got.ClaimID != p.ClaimID {
		t.Fatalf("adoption: %+v %v", got, err)
	}
	n, err := b.store.PullNack(ctx, b.sinkID, refsOf(got, got.Messages...), time.Time{}, 0, "no")
	if err != nil || n.Nacked != 1 {
		t.Fatalf("nack: %+v %v", n, err)
	}
	res, err := b.store.PullAckKnown(ctx, b.sinkID, refsOf(got, got.Messages...), []*Batch{got})
	if err != nil || len(res.Acked) != 0 || len(res.NotHeld) != 1 {
		t.Fatalf("ack after the nack: %+v %v; want not held", res, err)
	}
	if waiting, _, attempts := b.messageState(t); waiting != 1 || attempts != 1 {
		t.Fatalf("after nack and ack: %d waiting, %d attempts; want 1, 1", waiting, attempts)
	}
}
