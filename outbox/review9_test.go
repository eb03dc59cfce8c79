package outbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Review 9: attacks on PullAckKnown's claim that it has exactly
// PullAck's outcome (messages deleted, claims rows, groups handed on, and
// the Acked/NotHeld result) for every state that can arise, given known
// batches as Store.Claim returned them.

// r9Digest runs the ack PullAckKnown would run for refs and known
// (pullAckOf; known nil: PullAck's) in a transaction that holds the
// claim lock, then rule P, and describes everything: the acked messages
// with every field (sorted by id, duplicates kept), the refs not held
// (sorted, duplicates kept), the groups handed on, outbox and claims. It
// rolls back, so both paths see the same state.
func (b *testBundle) r9Digest(t *testing.T, refs []PullRef, known []*Batch) (string, bool) {
	t.Helper()
	ctx := t.Context()
	tx, rollback := b.lockedTx(t)
	defer rollback()
	a := pullAckOf(b.sinkID, refs, known)
	rows, err := tx.Query(ctx, a.sql, a.args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.scan(rows); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	acked := slices.Clone(a.res.Acked)
	slices.SortStableFunc(acked, func(x, y Message) int { return int(x.ID - y.ID) })
	var as []string
	for _, m := range acked {
		fa := "nil"
		if m.FirstAttemptAt != nil {
			fa = fmt.Sprint(m.FirstAttemptAt.UnixMicro())
		}
		as = append(as, fmt.Sprintf("%d/%s/%d/%d/%s/%d/%s/%d", m.ID, m.Group, m.CommitLSN, m.CommitIdx, m.Payload, m.DeliverCount, fa, m.CreatedAt.UnixMicro()))
	}
	var nh []string
	for _, r := range a.res.NotHeld {
		nh = append(nh, fmt.Sprint(r))
	}
	slices.Sort(nh)
	if _, err := tx.Exec(ctx, pullPromoteSQL, b.sinkID); err != nil {
		t.Fatal(err)
	}
	var left, outbox, claimRows string
	if err := tx.QueryRow(ctx, `SELECT
		(SELECT COALESCE(string_agg(g, ' ' ORDER BY g), '') FROM json_array_elements_text(current_setting('walhook.left_groups')::json) g),
		(SELECT COALESCE(string_agg(concat_ws(':', id, sink_id, head, deliver_count, failed_at IS NULL, last_error, not_before IS NULL), ' ' ORDER BY id), '') FROM outbox),
		(SELECT COALESCE(string_agg(concat_ws(':', id, sink_id, (SELECT array_agg(x ORDER BY x) FROM unnest(ids) x),
			(SELECT array_agg(x ORDER BY x) FROM unnest(groups) x), fresh, until > now(), lapse_max_age), ' ' ORDER BY id), '') FROM claims)`).Scan(&left, &outbox, &claimRows); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("acked %v\nnot held %v\nhanded on %s\noutbox %s\nclaims %s\n", as, nh, left, outbox, claimRows), a.sql == pullWholeAckSQL
}

// r9Same fails unless PullAckKnown (refs, known) has PullAck's outcome;
// wantWhole says whether the whole path must have been taken (the attack
// is void otherwise).
func (b *testBundle) r9Same(t *testing.T, what string, refs []PullRef, known []*Batch, wantWhole bool) {
	t.Helper()
	o, _ := b.r9Digest(t, refs, nil)
	n, whole := b.r9Digest(t, refs, known)
	if whole != wantWhole {
		t.Fatalf("%s: pullWholeAckSQL taken: %v, want %v", what, whole, wantWhole)
	}
	if o != n {
		t.Errorf("%s: PullAckKnown differs from PullAck for refs %v:\nPullAck:\n%s\nPullAckKnown:\n%s", what, refs, o, n)
	}
}

func r9Refs(bs ...*Batch) []PullRef {
	var out []PullRef
	for _, b := range bs {
		out = append(out, refsOf(b, b.Messages...)...)
	}
	return out
}

// r9Lapse waits for b's lease to end on the server's clock.
func (b *testBundle) r9Lapse(t *testing.T, claim int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ended bool
		if err := b.store.Pool.QueryRow(t.Context(), `SELECT until <= clock_timestamp() FROM claims WHERE id = $1`, claim).Scan(&ended); err != nil {
			t.Fatal(err)
		}
		if ended {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("claim %d did not lapse", claim)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Attack 1: a message in two known batches. A handed out m, lapsed and
// was reaped; B handed m out again. An ack that names both batches
// whole (a consumer acking what it got in both receives) is whole for
// both claims: scanWhole keys "deleted" by message id alone, so m is
// Acked twice (once with A's stale fields) and A's ref is not reported as
// not held. PullAck: m once, (A, m) not held.
func TestR9OverlapAfterLapse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "g", 1)
	a := b.receive(t, 10, 50*time.Millisecond, 0)
	if a == nil || len(a.Messages) != 1 {
		t.Fatalf("receive A: %+v", a)
	}
	b.r9Lapse(t, a.ClaimID)
	if _, err := b.store.ReapClaims(t.Context()); err != nil {
		t.Fatal(err)
	}
	bb := b.receive(t, 10, time.Minute, 0)
	if bb == nil || len(bb.Messages) != 1 || bb.Messages[0].ID != a.Messages[0].ID {
		t.Fatalf("receive B: %+v", bb)
	}
	refs := r9Refs(a, bb)
	b.r9Same(t, "A (lapsed, reaped) and B whole, both known", refs, []*Batch{a, bb}, true)
	b.r9Same(t, "B and A (lapsed, reaped) whole, both known", r9Refs(bb, a), []*Batch{bb, a}, true)

	// And for real, with PullAck's contract as the oracle.
	res, err := b.store.PullAckKnown(t.Context(), b.sinkID, refs, []*Batch{a, bb})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Acked) != 1 || len(res.NotHeld) != 1 || res.NotHeld[0] != refs[0] {
		t.Errorf("PullAckKnown of A (lapsed) and B (holds m): %s; want m acked once, %v not held", r9Describe(res), refs[0])
	}
}

// Attack 2: the same overlap without a lapse. A = {m1, m2}; m1 is
// nacked (by another path: another process, or the known batch was kept
// anyway), B receives m1. Refs name A's batch and B's whole; A is still
// live (holds m2), so both claims end whole.
func TestR9OverlapAfterPartialNack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "g1", 1)
	b.queueCommitted(t, "g2", 1)
	a := b.receive(t, 10, time.Minute, 0)
	if a == nil || len(a.Messages) != 2 {
		t.Fatalf("receive A: %+v", a)
	}
	if res, err := b.store.PullNack(t.Context(), b.sinkID, refsOf(a, a.Messages[0]), time.Time{}, 0, "nack"); err != nil || res.Nacked != 1 {
		t.Fatalf("nack: %+v %v", res, err)
	}
	bb := b.receive(t, 10, time.Minute, 0)
	if bb == nil || len(bb.Messages) != 1 || bb.Messages[0].ID != a.Messages[0].ID {
		t.Fatalf("receive B: %+v", bb)
	}
	b.r9Same(t, "A (m1 nacked since) and B (m1 again) whole, both known", r9Refs(a, bb), []*Batch{a, bb}, true)
	// Only A known: refs name B too, so the general path (no divergence).
	b.r9Same(t, "only A known", r9Refs(a, bb), []*Batch{a}, false)
	// A alone, stale: no overlap in the refs.
	b.r9Same(t, "A alone, stale", r9Refs(a), []*Batch{a}, true)
}

// Attack 3: duplicate refs (the API dedupes them, the Store does not).
// pullAckSQL's req is DISTINCT, so a ref not held is reported once;
// scanWhole walks refs as given.
func TestR9DuplicateRefs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	a := b.receive(t, 10, time.Minute, 0)
	if a == nil || len(a.Messages) != 2 {
		t.Fatalf("receive A: %+v", a)
	}
	dup := append(r9Refs(a), r9Refs(a)...)
	b.r9Same(t, "live claim, every ref twice", dup, []*Batch{a}, true)
	// Acked already: every ref is not held, and given twice.
	if _, err := b.store.PullAck(t.Context(), b.sinkID, r9Refs(a)); err != nil {
		t.Fatal(err)
	}
	b.r9Same(t, "ended claim, every ref twice", dup, []*Batch{a}, true)
}

// Claims that are not live, in each way: lapsed with lapse_max_age still
// set (not yet reaped), reaped, deleted by an ack, of another sink (the
// known batch says so or lies about its sink).
func TestR9NotLiveClaims(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "lapsing", 2)
	a := b.receive(t, 10, 50*time.Millisecond, time.Hour)
	if a == nil || len(a.Messages) != 2 {
		t.Fatalf("receive: %+v", a)
	}
	b.r9Lapse(t, a.ClaimID)
	var lapse *int64
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT lapse_max_age FROM claims WHERE id = $1`, a.ClaimID).Scan(&lapse); err != nil || lapse == nil {
		t.Fatalf("lapse_max_age: %v %v", lapse, err)
	}
	b.r9Same(t, "lapsed, lapse_max_age set, not reaped", r9Refs(a), []*Batch{a}, true)
	if _, err := b.store.ReapClaims(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.r9Same(t, "lapsed and reaped", r9Refs(a), []*Batch{a}, true)
	again := b.receive(t, 10, time.Minute, 0)
	if again == nil || len(again.Messages) != 2 {
		t.Fatalf("receive after the reap: %+v", again)
	}
	b.r9Same(t, "reaped A and its messages' new claim, both known", r9Refs(again, a), []*Batch{again, a}, true)
	if _, err := b.store.PullAck(t.Context(), b.sinkID, r9Refs(again)); err != nil {
		t.Fatal(err)
	}

	b.queueCommitted(t, "acked", 2)
	c := b.receive(t, 10, time.Minute, 0)
	if c == nil || len(c.Messages) != 2 {
		t.Fatalf("receive: %+v", c)
	}
	if _, err := b.store.PullAck(t.Context(), b.sinkID, r9Refs(c)); err != nil {
		t.Fatal(err)
	}
	b.r9Same(t, "deleted claim", r9Refs(c), []*Batch{c}, true)

	// Another sink's live claim, named by refs of this sink.
	var other int64
	if err := b.store.Pool.QueryRow(t.Context(), `INSERT INTO sinks (name, config) VALUES ('o', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	ob := &testBundle{store: b.store, sinkID: other}
	ob.queueCommitted(t, "x", 2)
	oc := ob.receive(t, 10, time.Minute, 0)
	if oc == nil || len(oc.Messages) != 2 {
		t.Fatalf("receive other: %+v", oc)
	}
	lie := *oc
	lie.SinkID = b.sinkID
	b.r9Same(t, "another sink's claim, known batch lies about its sink", r9Refs(oc), []*Batch{&lie}, true)
	b.r9Same(t, "another sink's claim, known batch of that sink", r9Refs(oc), []*Batch{oc}, false)
	// Mixed: one live claim of this sink and the other sink's, both whole.
	b.queueCommitted(t, "live", 2)
	d := b.receive(t, 10, time.Minute, 0)
	b.r9Same(t, "live claim and another sink's (lying)", r9Refs(d, oc), []*Batch{d, &lie}, true)
	b.r9Same(t, "live claim and a reaped one", r9Refs(d, a), []*Batch{d, a}, true)
	b.r9Same(t, "live claim and a deleted one", r9Refs(a, d, c), []*Batch{c, d, a}, true)
}

// Shapes of refs that must not take the whole path, or must give the
// same outcome if they do: a part of a batch, a batch and a stray ref,
// two claims of which one is known, an empty known batch, a message of
// another claim named under a known claim.
func TestR9RefShapes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "a", 3)
	b.queueCommitted(t, "b", 2)
	x := b.receive(t, 3, time.Minute, 0)
	y := b.receive(t, 3, time.Minute, 0)
	if x == nil || y == nil || len(x.Messages) != 3 || len(y.Messages) != 2 {
		t.Fatalf("receives: %+v %+v", x, y)
	}
	b.r9Same(t, "part of x", r9Refs(x)[:2], []*Batch{x}, false)
	b.r9Same(t, "x and a stray ref of x", append(r9Refs(x), PullRef{ClaimID: x.ClaimID, MessageID: y.Messages[0].ID}), []*Batch{x}, false)
	b.r9Same(t, "x whole and y whole, only x known", r9Refs(x, y), []*Batch{x}, false)
	b.r9Same(t, "x whole and y part, both known", append(r9Refs(x), r9Refs(y)[:1]...), []*Batch{x, y}, false)
	b.r9Same(t, "x and y whole, both known, twice", r9Refs(x, y), []*Batch{x, y, y, x}, true)
	empty := &Batch{ClaimID: x.ClaimID, SinkID: b.sinkID}
	b.r9Same(t, "an empty known batch", r9Refs(x), []*Batch{empty}, false)
	b.r9Same(t, "an empty known batch first, then x", r9Refs(x), []*Batch{empty, x}, true)
}

// The acked messages come from the known batch, not from Postgres: after
// a nack and a second receive they carry the attempt, as the rows do.
func TestR9AckedFields(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	a := b.receive(t, 10, time.Minute, 0)
	if _, err := b.store.PullNack(t.Context(), b.sinkID, r9Refs(a), time.Time{}, 0, "again"); err != nil {
		t.Fatal(err)
	}
	c := b.receive(t, 10, time.Minute, 0)
	if c == nil || len(c.Messages) != 2 || c.Messages[0].DeliverCount != 1 || c.Messages[0].FirstAttemptAt == nil {
		t.Fatalf("second receive: %+v", c)
	}
	b.r9Same(t, "second receive whole", r9Refs(c), []*Batch{c}, true)
	// A partial ack of c by another path, then c whole again (stale).
	if _, err := b.store.PullAck(t.Context(), b.sinkID, r9Refs(c)[:1]); err != nil {
		t.Fatal(err)
	}
	b.r9Same(t, "c whole after a partial ack", r9Refs(c), []*Batch{c}, true)
}

// Concurrent acks of one batch, one with the batch known, one without
// (and both known): exactly one acks each message, the other finds it
// not held; nothing is acked twice, nothing left.
func TestR9ConcurrentAcks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for round := range 30 {
		b.queueCommitted(t, fmt.Sprint("g", round%3), 1+round%4)
		batch := b.receive(t, 10, time.Minute, 0)
		if batch == nil {
			t.Fatalf("round %d: nothing received", round)
		}
		refs := r9Refs(batch)
		var wg sync.WaitGroup
		results := make([]*PullAckResult, 2)
		for i := range 2 {
			wg.Go(func() {
				var known []*Batch
				if i == 0 || round%2 == 0 {
					known = []*Batch{batch}
				}
				res, err := b.store.PullAckKnown(t.Context(), b.sinkID, refs, known)
				if err != nil {
					t.Error(err)
					return
				}
				results[i] = res
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		acked := len(results[0].Acked) + len(results[1].Acked)
		notHeld := len(results[0].NotHeld) + len(results[1].NotHeld)
		if acked != len(refs) || notHeld != len(refs) {
			t.Fatalf("round %d: two acks of %d messages: %d acked, %d not held", round, len(refs), acked, notHeld)
		}
		var left int
		if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM claims)`).Scan(&left); err != nil || left != 0 {
			t.Fatalf("round %d: %d rows left: %v", round, left, err)
		}
	}
}

// PullAckKnownClaim: the claim in the ack's transaction sees the groups
// the whole ack handed on (the next message of the same group), as
// PullAckClaim's does.
func TestR9AckClaimSeesHandedOn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for round, known := range []bool{true, false, true, false} {
		g := fmt.Sprint("g", round)
		b.queueCommitted(t, g, 1)
		first := b.receive(t, 10, time.Minute, 0)
		if first == nil || len(first.Messages) != 1 {
			t.Fatalf("round %d: receive: %+v", round, first)
		}
		b.queueCommitted(t, g, 2)
		var kb []*Batch
		if known {
			kb = []*Batch{first}
		}
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "r", Pull: true}
		res, next, err := b.store.PullAckKnownClaim(t.Context(), r9Refs(first), kb, req)
		if err != nil || len(res.Acked) != 1 || len(res.NotHeld) != 0 {
			t.Fatalf("round %d (known %v): %+v %v", round, known, res, err)
		}
		if next == nil || len(next.Messages) != 2 || next.Messages[0].Group != g {
			t.Fatalf("round %d (known %v): the claim after the ack did not see group %s handed on: %+v", round, known, g, next)
		}
		if _, err := b.store.PullAck(t.Context(), b.sinkID, r9Refs(next)); err != nil {
			t.Fatal(err)
		}
	}
}

// r9Describe is a one-line summary of results, for failures.
func r9Describe(res *PullAckResult) string {
	var ids []string
	for _, m := range res.Acked {
		ids = append(ids, fmt.Sprint(m.ID))
	}
	return fmt.Sprintf("acked [%s] not held %v", strings.Join(ids, " "), res.NotHeld)
}

// A random walk of receives, partial acks and nacks, lapses (a lease
// ended: until moved into the past, as time would) and reaps, keeping
// every batch ever received, as a cache that never forgets would. At each
// step, acks of random sets of kept batches (whole) whose messages do not
// overlap are compared with PullAck, and with the sets that overlap
// (a message received twice) too when overlap is set.
func r9Walk(t *testing.T, overlap bool) {
	b := setup(t)
	ctx := t.Context()
	seen, whole := 0, 0
	for seed := range uint64(12) {
		rnd := rand.New(rand.NewPCG(seed, 9))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM claims; DELETE FROM outbox`); err != nil {
			t.Fatal(err)
		}
		for g := range 4 {
			b.queueCommitted(t, fmt.Sprint("g", g), 1+rnd.IntN(3))
		}
		var kept []*Batch
		for step := range 25 {
			switch rnd.IntN(6) {
			case 0, 1:
				if got := b.receive(t, 1+rnd.IntN(4), time.Minute, time.Duration(rnd.IntN(2))*time.Hour); got != nil {
					kept = append(kept, got)
				}
			case 2: // a partial ack or nack of a kept batch, by another path
				if len(kept) > 0 {
					k := kept[rnd.IntN(len(kept))]
					refs := r9Refs(k)
					refs = refs[:rnd.IntN(len(refs))+1]
					if rnd.IntN(2) == 0 {
						if _, err := b.store.PullAck(ctx, b.sinkID, refs); err != nil {
							t.Fatal(err)
						}
					} else if _, err := b.store.PullNack(ctx, b.sinkID, refs, time.Time{}, 0, "nack"); err != nil {
						t.Fatal(err)
					}
				}
			case 3: // a lease ends
				if _, err := b.store.Pool.Exec(ctx, `UPDATE claims SET until = clock_timestamp() - interval '1s' WHERE id = (SELECT id FROM claims ORDER BY random() LIMIT 1)`); err != nil {
					t.Fatal(err)
				}
			case 4:
				if _, err := b.store.ReapClaims(ctx); err != nil {
					t.Fatal(err)
				}
			case 5:
				b.queueCommitted(t, fmt.Sprint("g", rnd.IntN(4)), 1)
			}
			if len(kept) == 0 {
				continue
			}
			for range 3 {
				var named []*Batch
				msgs := map[int64]bool{}
				clash := false
				for _, k := range kept {
					if rnd.IntN(3) != 0 {
						continue
					}
					for _, m := range k.Messages {
						clash = clash || msgs[m.ID]
						msgs[m.ID] = true
					}
					named = append(named, k)
				}
				if len(named) == 0 || clash != overlap {
					continue
				}
				seen++
				o, _ := b.r9Digest(t, r9Refs(named...), nil)
				n, w := b.r9Digest(t, r9Refs(named...), kept)
				if w {
					whole++
				}
				if o != n {
					var desc []string
					for _, k := range named {
						desc = append(desc, fmt.Sprint(k.ClaimID, ":", len(k.Messages)))
					}
					t.Fatalf("seed %d step %d: ack of kept batches %v (message in two: %v):\nPullAck:\n%s\nPullAckKnown:\n%s", seed, step, desc, clash, o, n)
				}
			}
		}
	}
	t.Logf("%d acks compared, %d by pullWholeAckSQL", seen, whole)
	if whole == 0 {
		t.Fatalf("no ack took the whole path")
	}
}

func TestR9WalkDisjoint(t *testing.T) { t.Parallel(); r9Walk(t, false) }
func TestR9WalkOverlap(t *testing.T)  { t.Parallel(); r9Walk(t, true) }
