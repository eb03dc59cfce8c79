package outbox

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Review 6: adversarial tests of pullAckSQL's whole-claim path.

// r6Count runs a query returning one integer.
func (b *testBundle) r6Count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := b.store.Pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Several consumers ack the same whole claim at once (the same ack id
// list, in other orders, with duplicates, one with a receive after it),
// while another nacks a part of it: each message is acked or nacked
// once, reported once, and what is reported is what was done.
func TestR6ConcurrentWholeAcksOfOneClaim(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	for round := range 25 {
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		for _, g := range []string{"a", "b", "c", "d", "e"} {
			b.queueCommitted(t, g, 4)
		}
		got := b.receive(t, 20, time.Minute, 0)
		if got == nil || len(got.Messages) != 20 {
			t.Fatalf("round %d: receive: %+v", round, got)
		}
		refs := refsOf(got, got.Messages...)
		rnd := rand.New(rand.NewPCG(uint64(round), 6))
		var mu sync.Mutex
		acked := map[int64]int{}
		nacked := 0
		var wg sync.WaitGroup
		for w := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := slices.Clone(refs)
				mu.Lock()
				rnd.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
				mu.Unlock()
				if w%2 == 1 {
					mine = append(mine, mine[:5]...)
				}
				switch w {
				case 3: // a nack of a part
					res, err := b.store.PullNack(ctx, b.sinkID, refs[:7], time.Time{}, 0, "part")
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					nacked += res.Nacked
					mu.Unlock()
					return
				case 4: // an ack with a receive after it
					res, more, err := b.store.Receive(ctx, mine, ClaimRequest{SinkID: b.sinkID, BatchSize: 20, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true}, nil)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, m := range res.Acked {
						acked[m.ID]++
					}
					mu.Unlock()
					if more != nil {
						for _, m := range more.Messages {
							if slices.ContainsFunc(res.Acked, func(a Message) bool { return a.ID == m.ID }) {
								t.Errorf("round %d: message %d acked and received again", round, m.ID)
							}
						}
					}
					return
				}
				res, err := b.store.PullAck(ctx, b.sinkID, mine)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, m := range res.Acked {
					acked[m.ID]++
				}
				mu.Unlock()
				// Every distinct named ref is reported, acked or not held.
				if n := len(res.Acked) + len(res.NotHeld); n != len(refs) {
					t.Errorf("round %d: %d refs reported, %d named", round, n, len(refs))
				}
			}()
		}
		wg.Wait()
		for id, n := range acked {
			if n != 1 {
				t.Errorf("round %d: message %d reported acked %d times", round, id, n)
			}
		}
		if len(acked)+nacked != 20 {
			t.Errorf("round %d: %d acked + %d nacked, 20 held", round, len(acked), nacked)
		}
		left := b.r6Count(t, `SELECT count(*) FROM outbox WHERE id = ANY($1)`, idsOf(got.Messages))
		if left != int64(nacked) {
			t.Errorf("round %d: %d of the claim's messages left, %d nacked", round, left, nacked)
		}
		if n := b.r6Count(t, `SELECT count(*) FROM claims WHERE id = $1`, got.ClaimID); n != 0 {
			t.Errorf("round %d: the claim outlived its messages", round)
		}
	}
}

func idsOf(ms []Message) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// A whole ack races the end of the lease and the reaper: a message is
// either acked (deleted, reported) or lapsed (attempt recorded, not
// reported), never both, never neither.
func TestR6WholeAckRacesLease(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the reaper
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.store.ReapClaims(ctx); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	var acks, lapses int
	for round := range 60 {
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		for _, g := range []string{"a", "b", "c"} {
			b.queueCommitted(t, g, 3)
		}
		lease := 30 * time.Millisecond
		got := b.receive(t, 9, lease, 0)
		if got == nil || len(got.Messages) != 9 {
			t.Fatalf("round %d: receive: %+v", round, got)
		}
		time.Sleep(lease - 5*time.Millisecond + time.Duration(round%10)*time.Millisecond)
		res, err := b.store.PullAck(ctx, b.sinkID, refsOf(got, got.Messages...))
		if err != nil {
			t.Fatal(err)
		}
		// Wait for the lapse and the reap.
		deadline := time.Now().Add(5 * time.Second)
		for b.r6Count(t, `SELECT count(*) FROM claims`) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: claim not reaped", round)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if len(res.Acked)+len(res.NotHeld) != 9 {
			t.Fatalf("round %d: %d reported of 9", round, len(res.Acked)+len(res.NotHeld))
		}
		if len(res.Acked) != 0 && len(res.Acked) != 9 {
			t.Errorf("round %d: a whole ack took effect in part: %d acked", round, len(res.Acked))
		}
		left := b.r6Count(t, `SELECT count(*) FROM outbox`)
		lapsed := b.r6Count(t, `SELECT count(*) FROM outbox WHERE deliver_count = 1`)
		if left != int64(9-len(res.Acked)) || lapsed != left {
			t.Errorf("round %d: %d acked, %d left, %d of them lapsed", round, len(res.Acked), left, lapsed)
		}
		if len(res.Acked) > 0 {
			acks++
		} else {
			lapses++
		}
	}
	t.Logf("%d acked in time, %d lapsed", acks, lapses)
}

// One ack names: a claim whole (some twice), a part of another, the ids
// of a claim acked already, a forged claim id, a claim of another sink
// (under its own id, and its ids under the whole claim's id), and the
// whole claim's ids under a partial claim's id.
func TestR6MixedAck(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"a", "b", "c", "d", "e", "f"} {
		b.queueCommitted(t, g, 3)
	}
	allGroups := []string{"a", "b", "c", "d", "e", "f"}
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 6, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true}
	bs, err := b.store.ClaimBatches(ctx, ClaimRequest{SinkID: b.sinkID, BatchSize: 6, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true, Batches: 3})
	if err != nil || len(bs) != 3 {
		t.Fatalf("claim: %v %v", bs, err)
	}
	whole, part, done := bs[0], bs[1], bs[2]
	for _, g := range allGroups { // the next message of each group
		b.queueCommitted(t, g, 1)
	}
	if res, err := b.store.PullAck(ctx, b.sinkID, refsOf(done, done.Messages...)); err != nil || len(res.Acked) != len(done.Messages) {
		t.Fatalf("ack done: %+v %v", res, err)
	}
	// A claim of the other sink.
	ob := &testBundle{store: b.store, sinkID: other}
	ob.queueCommitted(t, "x", 3)
	oc := ob.receive(t, 3, time.Minute, 0)
	if oc == nil || len(oc.Messages) != 3 {
		t.Fatalf("other sink's receive: %+v", oc)
	}
	var refs []PullRef
	refs = append(refs, refsOf(whole, whole.Messages...)...)
	refs = append(refs, refsOf(whole, whole.Messages[:2]...)...)
	refs = append(refs, refsOf(part, part.Messages[:2]...)...)
	refs = append(refs, refsOf(done, done.Messages...)...)
	refs = append(refs, PullRef{ClaimID: 1 << 60, MessageID: part.Messages[3].ID})
	refs = append(refs, refsOf(oc, oc.Messages...)...)
	refs = append(refs, PullRef{ClaimID: part.ClaimID, MessageID: whole.Messages[0].ID})
	rnd := rand.New(rand.NewPCG(6, 6))
	rnd.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
	res, more, err := b.store.Receive(ctx, refs, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantAcked := append(idsOf(whole.Messages), idsOf(part.Messages[:2])...)
	gotAcked := idsOf(res.Acked)
	slices.Sort(wantAcked)
	slices.Sort(gotAcked)
	if !slices.Equal(wantAcked, gotAcked) {
		t.Errorf("acked %v, want %v", gotAcked, wantAcked)
	}
	// Not held: done's, the forged one, the other sink's, whole's id
	// under part's claim id.
	if n := len(res.NotHeld); n != len(done.Messages)+1+3+1 {
		t.Errorf("%d not held: %v", n, res.NotHeld)
	}
	// The other sink's claim and messages are untouched.
	if n := b.r6Count(t, `SELECT count(*) FROM outbox WHERE sink_id = $1 AND deliver_count = 0`, other); n != 3 {
		t.Errorf("other sink: %d messages left", n)
	}
	if n := b.r6Count(t, `SELECT cardinality(ids) FROM claims WHERE id = $1`, oc.ClaimID); n != 3 {
		t.Errorf("other sink's claim holds %d", n)
	}
	// part holds its rest, in order, with the groups of its rest.
	var ids []int64
	var groups []string
	var fresh int64
	if err := b.store.Pool.QueryRow(ctx, `SELECT ids, groups, fresh FROM claims WHERE id = $1`, part.ClaimID).Scan(&ids, &groups, &fresh); err != nil {
		t.Fatal(err)
	}
	rest := idsOf(part.Messages[2:])
	slices.Sort(rest)
	if !slices.Equal(ids, rest) {
		t.Errorf("part's ids %v, want %v", ids, rest)
	}
	var wantGroups []string
	for _, m := range part.Messages[2:] {
		if !slices.Contains(wantGroups, m.Group) {
			wantGroups = append(wantGroups, m.Group)
		}
	}
	slices.Sort(wantGroups)
	slices.Sort(groups)
	if !slices.Equal(groups, wantGroups) || fresh != int64(len(rest)) {
		t.Errorf("part's groups %v fresh %d, want %v %d", groups, fresh, wantGroups, len(rest))
	}
	// The receive after the ack: whole's groups were handed on, so it
	// takes their next messages; nothing part still holds a group of.
	if more == nil {
		t.Fatal("nothing received after the ack")
	}
	gotGroups := map[string]bool{}
	for _, m := range more.Messages {
		gotGroups[m.Group] = true
		if slices.Contains(wantGroups, m.Group) {
			t.Errorf("received %d of group %s, which part still holds", m.ID, m.Group)
		}
	}
	for _, m := range whole.Messages {
		if !gotGroups[m.Group] {
			t.Errorf("group %s of the claim acked whole was not handed on to the receive after it: %+v", m.Group, more.Messages)
		}
	}
	b.r6CheckI1(t)
}

// r6CheckI1: no group is named by two live claims, and each live
// claim's groups are exactly its messages' groups.
func (b *testBundle) r6CheckI1(t *testing.T) {
	t.Helper()
	if n := b.r6Count(t, `SELECT count(*) FROM (SELECT g FROM claims, unnest(groups) g WHERE until > clock_timestamp() GROUP BY sink_id, g HAVING count(*) > 1) x`); n != 0 {
		t.Errorf("%d groups in two live claims", n)
	}
	if n := b.r6Count(t, `SELECT count(*) FROM claims c WHERE until > clock_timestamp() AND
		(SELECT array_agg(DISTINCT g ORDER BY g) FROM unnest(c.groups) g) IS DISTINCT FROM
		(SELECT array_agg(DISTINCT o.group_key ORDER BY o.group_key) FROM outbox o WHERE o.id = ANY (c.ids))`); n != 0 {
		t.Errorf("%d live claims whose groups are not their messages'", n)
	}
}

// A claim with retries acked in parts, then whole with a receive after
// it (Receive), max_ack_pending small: the sum of live claims'
// fresh never passes it, and each claim's fresh is what it holds.
func TestR6PartialThenWholeFresh(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	const maxPending = 5
	for seed := range uint64(30) {
		rnd := rand.New(rand.NewPCG(seed, 66))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		for _, g := range []string{"a", "b", "c", "d"} {
			b.queueCommitted(t, g, 2+rnd.IntN(4))
		}
		// Some earlier attempts (retries, counted out of max_ack_pending).
		if _, err := b.store.Pool.Exec(ctx, `UPDATE outbox SET deliver_count = 1, first_attempt_at = now() WHERE random() < 0.3`); err != nil {
			t.Fatal(err)
		}
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: 6, MaxAckPending: maxPending, Lease: time.Minute, Worker: "receive", Pull: true}
		var held []*Batch
		partial := map[int64]bool{}
		if got, err := b.store.Claim(ctx, req); err != nil {
			t.Fatal(err)
		} else if got != nil {
			held = append(held, got)
		}
		for step := 0; step < 40 && len(held) > 0; step++ {
			i := rnd.IntN(len(held))
			c := held[i]
			var ids []int64
			if err := b.store.Pool.QueryRow(ctx, `SELECT COALESCE((SELECT ids FROM claims WHERE id = $1), '{}')`, c.ClaimID).Scan(&ids); err != nil {
				t.Fatal(err)
			}
			if len(ids) == 0 {
				held = slices.Delete(held, i, i+1)
				continue
			}
			var refs []PullRef
			if rnd.IntN(2) == 0 { // whole
				for _, id := range ids {
					refs = append(refs, PullRef{c.ClaimID, id})
				}
			} else {
				partial[c.ClaimID] = true
				for _, id := range ids[:1+rnd.IntN(len(ids))] {
					refs = append(refs, PullRef{c.ClaimID, id})
				}
			}
			res, more, err := b.store.Receive(ctx, refs, req, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Acked) != len(refs) {
				t.Fatalf("seed %d step %d: %d acked of %d held", seed, step, len(res.Acked), len(refs))
			}
			if more != nil {
				held = append(held, more)
			}
			b.r6CheckI1(t)
			b.r6CheckFresh(t, maxPending, partial, fmt.Sprintf("seed %d step %d", seed, step))
		}
	}
}

// r6CheckFresh: each live claim partially acked has as fresh the number of its messages
// never attempted that stand before no held retry of their group, and
// their sum is logged when past max_ack_pending (pull.go allows it).
func (b *testBundle) r6CheckFresh(t *testing.T, maxPending int64, partial map[int64]bool, at string) {
	t.Helper()
	rows, err := b.store.Pool.Query(t.Context(), `SELECT c.id, c.fresh, (SELECT count(*) FROM outbox o WHERE o.id = ANY (c.ids) AND o.deliver_count = 0
		AND NOT EXISTS (SELECT 1 FROM outbox r WHERE r.id = ANY (c.ids) AND r.group_key = o.group_key AND r.deliver_count > 0
			AND (r.commit_lsn, r.commit_idx, r.id) > (o.commit_lsn, o.commit_idx, o.id)))
		FROM claims c WHERE c.until > clock_timestamp()`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var sum int64
	for rows.Next() {
		var id, fresh, want int64
		if err := rows.Scan(&id, &fresh, &want); err != nil {
			t.Fatal(err)
		}
		// A claim as claimSQL made it counts out of fresh the messages
		// before a retry of their group wherever the retry stands (rule
		// C); after a partial outcome, before a held retry (pull.go).
		if partial[id] && fresh != want {
			var detail string
			_ = b.store.Pool.QueryRow(t.Context(), `SELECT string_agg(concat_ws(':', o.id, o.group_key, o.commit_lsn, o.commit_idx, o.deliver_count), ' ' ORDER BY o.group_key, o.commit_lsn, o.commit_idx, o.id) FROM outbox o WHERE o.id = ANY ((SELECT ids FROM claims WHERE id = $1)::bigint[])`, id).Scan(&detail)
			var all string
			_ = b.store.Pool.QueryRow(t.Context(), `SELECT string_agg(concat_ws(':', o.id, o.group_key, o.commit_lsn, o.commit_idx, o.deliver_count), ' ' ORDER BY o.group_key, o.commit_lsn, o.commit_idx, o.id) FROM outbox o`).Scan(&all)
			t.Errorf("%s: claim %d fresh %d, holds %d fresh: %s (all %s)", at, id, fresh, want, detail, all)
		}
		sum += fresh
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if sum > maxPending { // allowed: fresh may grow on a partial outcome (pull.go)
		t.Logf("%s: %d fresh held, max_ack_pending %d", at, sum, maxPending)
	}
}

// States TestPullAckWholeClaimDifferential does not generate, each acked
// by the old statement and the new one (rolled back): a claim holding a
// message that is gone, one of another sink, an id twice, ids whose
// array does not start at 1, no ids; named whole with the other sink's
// claim's ids under its id, or with another live claim's ids.
func TestR6DifferentialOddStates(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	msg := func(sink int64, g string) int64 {
		var id int64
		if err := b.store.Pool.QueryRow(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head)
			VALUES ($1, $2, 1, 0, '{}', true) RETURNING id`, sink, g).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	claim := func(sink int64, ids string, groups []string) int64 {
		var id int64
		if err := b.store.Pool.QueryRow(ctx, `INSERT INTO claims (sink_id, worker, until, fresh, ids, groups)
			VALUES ($1, 'x', now() + interval '1 hour', 0, `+ids+`, $2) RETURNING id`, sink, groups).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	type state struct {
		name string
		refs func() []PullRef
	}
	states := []state{
		{"a message gone", func() []PullRef {
			m1, m2 := msg(b.sinkID, "a"), msg(b.sinkID, "b")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d]::bigint[]", m1, m2), []string{"a", "b"})
			if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, m2); err != nil {
				t.Fatal(err)
			}
			return []PullRef{{c, m1}, {c, m2}}
		}},
		{"another sink's message in the claim", func() []PullRef {
			m1, m2 := msg(b.sinkID, "a"), msg(other, "b")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d]::bigint[]", m1, m2), []string{"a", "b"})
			return []PullRef{{c, m1}, {c, m2}}
		}},
		{"an id twice", func() []PullRef {
			m1, m2 := msg(b.sinkID, "a"), msg(b.sinkID, "b")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d, %d]::bigint[]", m1, m2, m2), []string{"a", "b"})
			return []PullRef{{c, m1}, {c, m2}}
		}},
		{"lower bound 0", func() []PullRef {
			m1, m2 := msg(b.sinkID, "a"), msg(b.sinkID, "b")
			c := claim(b.sinkID, fmt.Sprintf("'[0:1]={%d,%d}'::bigint[]", m1, m2), []string{"a", "b"})
			return []PullRef{{c, m1}, {c, m2}}
		}},
		{"no ids", func() []PullRef {
			m1 := msg(b.sinkID, "a")
			c := claim(b.sinkID, "'{}'::bigint[]", []string{"a"})
			return []PullRef{{c, m1}}
		}},
		{"whole with the other sink's claim's ids", func() []PullRef {
			m1, m2 := msg(b.sinkID, "a"), msg(b.sinkID, "b")
			o1 := msg(other, "a")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d]::bigint[]", m1, m2), []string{"a", "b"})
			oc := claim(other, fmt.Sprintf("ARRAY[%d]::bigint[]", o1), []string{"a"})
			return []PullRef{{c, m1}, {c, m2}, {c, o1}, {oc, o1}, {oc, m1}}
		}},
		{"whole, and another live claim's ids under its id", func() []PullRef {
			m1, m2, m3 := msg(b.sinkID, "a"), msg(b.sinkID, "b"), msg(b.sinkID, "c")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d]::bigint[]", m1, m2), []string{"a", "b"})
			d := claim(b.sinkID, fmt.Sprintf("ARRAY[%d]::bigint[]", m3), []string{"c"})
			return []PullRef{{c, m1}, {c, m2}, {c, m3}, {d, m1}}
		}},
		{"two claims whole, one ended, one of them named twice over", func() []PullRef {
			m1, m2, m3 := msg(b.sinkID, "a"), msg(b.sinkID, "b"), msg(b.sinkID, "c")
			c := claim(b.sinkID, fmt.Sprintf("ARRAY[%d, %d]::bigint[]", m1, m2), []string{"a", "b"})
			d := claim(b.sinkID, fmt.Sprintf("ARRAY[%d]::bigint[]", m3), []string{"c"})
			if _, err := b.store.Pool.Exec(ctx, `UPDATE claims SET until = '-infinity' WHERE id = $1`, d); err != nil {
				t.Fatal(err)
			}
			return []PullRef{{c, m1}, {c, m2}, {d, m3}, {c, m2}, {d, m3}, {0, m1}}
		}},
	}
	for _, s := range states {
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		msg(b.sinkID, "free") // pullDigest wants an outbox not empty
		refs := s.refs()
		if o, n := b.pullDigest(t, prePullAckSQL, refs, false), b.pullDigest(t, pullAckSQL, refs, false); o != n {
			t.Errorf("%s: pullAckSQL differs from before:\nbefore:\n%s\nnow:\n%s", s.name, o, n)
		}
		if o, n := b.pullDigest(t, prePullNackSQL, refs, true), b.pullDigest(t, pullNackSQL, refs, true); o != n {
			t.Errorf("%s: pullNackSQL differs from before:\nbefore:\n%s\nnow:\n%s", s.name, o, n)
		}
	}
}

// TestR6DifferentialMoreSeeds is TestPullAckWholeClaimDifferential on seeds it
// does not try (WALHOOK_R6_DIFF_BASE picks others).
func TestR6DifferentialMoreSeeds(t *testing.T) {
	states := 400
	if testing.Short() {
		states = 50
	}
	base := uint64(1_000_000)
	if v, err := strconv.ParseUint(os.Getenv("WALHOOK_R6_DIFF_BASE"), 10, 64); err == nil {
		base = v
	}
	t.Logf("seeds from %d (WALHOOK_R6_DIFF_BASE)", base)
	pullAckDifferential(t, base, states)
}

// A receive's ack of a claim whose lease ended (not lapsed yet): nothing
// is acked, and the receive after it in the same transaction either
// leaves the claim's messages alone or takes them with the lapse's
// attempt recorded, never as if never attempted.
func TestR6WholeAckOfEndedClaimThenReceive(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	for _, g := range []string{"a", "b"} {
		b.queueCommitted(t, g, 2)
	}
	got := b.receive(t, 4, 20*time.Millisecond, 0)
	if got == nil || len(got.Messages) != 4 {
		t.Fatalf("receive: %+v", got)
	}
	for b.r6Count(t, `SELECT count(*) FROM claims WHERE until > clock_timestamp()`) != 0 {
		time.Sleep(time.Millisecond)
	}
	res, more, err := b.store.Receive(ctx, refsOf(got, got.Messages...), ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Acked) != 0 || len(res.NotHeld) != 4 {
		t.Fatalf("ack of an ended claim: %+v", res)
	}
	if more != nil {
		for _, m := range more.Messages {
			if m.DeliverCount != 1 {
				t.Errorf("message %d received again with deliver count %d (the lapse not recorded)", m.ID, m.DeliverCount)
			}
		}
	}
	if n := b.r6Count(t, `SELECT count(*) FROM outbox`); n != 4 {
		t.Errorf("%d messages left of 4", n)
	}
	b.r6CheckI1(t)
}
