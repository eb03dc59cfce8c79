package outbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Third adversarial review: Receive (a receive that carries acks,
// dd289f9) and the claim statement whose windows partition by
// (head_ready, head_id) (51addc1). Each test is a sequence tried against
// I1–I5 (doc.go).

// r3OldClaimSQL is claimSQL as it was before 51addc1: its windows
// partitioned by head_id alone (the only change besides comments).
func r3OldClaimSQL(t *testing.T) string {
	t.Helper()
	const from, to = "PARTITION BY head_ready, head_id", "PARTITION BY head_id"
	if n := strings.Count(claimSQL, from); n != 4 {
		t.Fatalf("claimSQL has %d windows partitioned by (head_ready, head_id), want 4: update this test", n)
	}
	old := strings.ReplaceAll(claimSQL, from, to)
	if strings.Contains(old, "PARTITION BY head_ready") {
		t.Fatal("claimSQL still partitions by head_ready after the rewrite")
	}
	return old
}

// r3ClaimArgs are queueClaim's arguments for req.
func r3ClaimArgs(req ClaimRequest) []any {
	var workerID, lapse *int64
	if req.WorkerID != 0 {
		workerID = &req.WorkerID
	}
	if req.Pull {
		us := max(req.MaxAge.Microseconds(), 0)
		lapse = &us
	}
	return []any{req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker, workerID, lapse, max(req.Batches, 1)}
}

// r3Digest runs one claim statement (sql: claimSQL or the old one) for
// req under the claim lock, in a transaction it rolls back, after the
// pull ack of refs and its promote when refs is not nil (as Receive
// does), and describes everything it did: the flags cleared, the rows
// returned (claim ids numbered in order of appearance: they are random),
// the claims rows inserted, and every message's flag after it.
func (b *testBundle) r3Digest(t *testing.T, sql string, req ClaimRequest, refs []PullRef) string {
	t.Helper()
	ctx := t.Context()
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only use
	if _, err := tx.Exec(ctx, claimLockPlanSQL, req.SinkID); err != nil {
		t.Fatal(err)
	}
	var before []int64
	if err := tx.QueryRow(ctx, `SELECT COALESCE(array_agg(id), '{}') FROM claims`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if refs != nil {
		rows, err := tx.Query(ctx, pullAckSQL, pullAckArgs(req.SinkID, refs)...)
		if err != nil {
			t.Fatal(err)
		}
		res := &PullAckResult{}
		if err := res.scan(rows); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		for _, m := range res.Acked {
			fmt.Fprintf(&sb, "acked %d; ", m.ID)
		}
		fmt.Fprintf(&sb, "not held %v\n", res.NotHeld)
		if _, err := tx.Exec(ctx, pullPromoteSQL, req.SinkID); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := tx.Query(ctx, sql, r3ClaimArgs(req)...)
	if err != nil {
		t.Fatal(err)
	}
	claimNo := map[int64]int{}
	for rows.Next() {
		var demoted int64
		var claim, id *int64
		var group *string
		var skip any
		if err := rows.Scan(&demoted, &claim, &id, &group, &skip, &skip, &skip, &skip, &skip, &skip); err != nil {
			t.Fatal(err)
		}
		if id == nil {
			fmt.Fprintf(&sb, "demoted %d, nothing\n", demoted)
			continue
		}
		if _, ok := claimNo[*claim]; !ok {
			claimNo[*claim] = len(claimNo)
		}
		fmt.Fprintf(&sb, "demoted %d, claim #%d: %d (%s)\n", demoted, claimNo[*claim], *id, *group)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	crows, err := tx.Query(ctx, `SELECT fresh, ids::text, groups::text, worker, COALESCE(lapse_max_age, -1), extract(epoch FROM until - claimed_at)::int
		FROM claims WHERE NOT (id = ANY ($1)) ORDER BY ids[1]`, before)
	if err != nil {
		t.Fatal(err)
	}
	for crows.Next() {
		var fresh, secs int
		var ids, groups, worker string
		var lapse int64
		if err := crows.Scan(&fresh, &ids, &groups, &worker, &lapse, &secs); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&sb, "claims row: fresh %d ids %s groups %s worker %s lapse %d lease %ds\n", fresh, ids, groups, worker, lapse, secs)
	}
	if err := crows.Err(); err != nil {
		t.Fatal(err)
	}
	var heads string
	if err := tx.QueryRow(ctx, `SELECT COALESCE(string_agg(id || ':' || COALESCE(head::text, 'null'), ' ' ORDER BY id), '') FROM outbox WHERE sink_id = $1`, req.SinkID).Scan(&heads); err != nil {
		t.Fatal(err)
	}
	sb.WriteString("heads " + heads + "\n")
	return sb.String()
}

// r3Differential runs the old and the new claim statement on the same
// state (each rolled back). With timing (leases and backoffs that may end
// between the runs) it brackets the new run by two old ones and fails
// only when the new one differs from both; without, they must be equal.
func (b *testBundle) r3Differential(t *testing.T, old string, req ClaimRequest, refs []PullRef, timing bool) {
	t.Helper()
	var o1, n, o2 string
	for range 5 {
		o1 = b.r3Digest(t, old, req, refs)
		n = b.r3Digest(t, claimSQL, req, refs)
		if n == o1 || !timing {
			break
		}
		if o2 = b.r3Digest(t, old, req, refs); n == o2 {
			return
		}
		// A backoff or a lease ended between the runs: again, when the
		// clock edges are past.
		time.Sleep(60 * time.Millisecond)
	}
	if n != o1 {
		t.Fatalf("claimSQL (partition by head_ready, head_id) differs from the old one (by head_id) for %+v:\nold:\n%s\nnew:\n%s\nold again:\n%s", req, o1, n, o2)
	}
}

// The windows' partition (51addc1) on random states built directly, far
// from any clock edge (ready_at an hour away, leases an hour away), so
// both statements must do exactly the same: ties in commit order, equal
// ready_at across groups (head_ready ties), retries and fresh candidates
// of one group, flags of every kind, failed messages, live, ended and
// lapsed-unrecorded claims, max_ack_pending from 1 (full) to plenty,
// BatchSize and Batches from 1.
func TestReview3ClaimWindowDifferentialRandomStates(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	old := r3OldClaimSQL(t)
	states, perState := 300, 6
	if testing.Short() {
		states = 60
	}
	for seed := range uint64(states) {
		rnd := rand.New(rand.NewPCG(seed, 33))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		groups := []string{"a", "b", "c", "d", "e"}[:1+rnd.IntN(5)]
		n := 1 + rnd.IntN(25)
		// A few distinct ready_at values, so that candidates of different
		// groups tie on head_ready.
		base := time.Now().Truncate(time.Second)
		readyPast := []time.Time{base.Add(-time.Hour), base.Add(-2 * time.Hour), base.Add(-3 * time.Hour)}
		for range n {
			g := groups[rnd.IntN(len(groups))]
			dc := 0
			if rnd.IntN(3) == 0 {
				dc = 1 + rnd.IntN(3)
			}
			head := []string{"NULL", "true", "false"}[rnd.IntN(3)]
			ready := readyPast[rnd.IntN(len(readyPast))]
			if rnd.IntN(5) == 0 {
				ready = base.Add(time.Hour)
			}
			failed := "NULL"
			if rnd.IntN(12) == 0 {
				failed = "now()"
			}
			if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
				VALUES ($1, $2, $3, $4, '{}', $5, %s, $6, %s)`, head, failed),
				b.sinkID, g, rnd.IntN(4), rnd.IntN(3), dc, ready); err != nil {
				t.Fatal(err)
			}
		}
		var ids []int64
		var gs []string
		if err := b.store.Pool.QueryRow(ctx, `SELECT array_agg(id ORDER BY id), array_agg(group_key ORDER BY id) FROM outbox`).Scan(&ids, &gs); err != nil {
			t.Fatal(err)
		}
		// Claims: each takes a random subset of messages no other claim
		// has, named with their groups.
		taken := map[int64]bool{}
		for range rnd.IntN(3) {
			var cids []int64
			cgs := map[string]bool{}
			for i, id := range ids {
				if !taken[id] && rnd.IntN(4) == 0 {
					taken[id] = true
					cids = append(cids, id)
					cgs[gs[i]] = true
				}
			}
			if len(cids) == 0 {
				continue
			}
			until := []string{"1 hour", "-1 hour"}[rnd.IntN(2)]
			lapse := "NULL"
			if rnd.IntN(3) == 0 {
				lapse = "0" // a pull claim whose lapse is not recorded yet
			}
			var cg []string
			for g := range cgs {
				cg = append(cg, g)
			}
			fresh := rnd.IntN(len(cids) + 1)
			if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
				VALUES ($1, 'x', now() + interval '%s', $2, $3, $4, %s)`, until, lapse), b.sinkID, fresh, cids, cg); err != nil {
				t.Fatal(err)
			}
		}
		for range perState {
			req := ClaimRequest{SinkID: b.sinkID, BatchSize: 1 + rnd.IntN(5), MaxAckPending: 1 + rnd.IntN(12), Batches: 1 + rnd.IntN(4),
				Lease: time.Hour, Worker: "w", Pull: rnd.IntN(2) == 0}
			b.r3Differential(t, old, req, nil, false)
		}
	}
}

// r3Busy is the groups live claims name after an ack of acked (the
// messages that left their claims), from the claims rows read before it:
// a row with unrecorded lapse keeps its groups; a live one keeps the
// groups of the messages it still holds.
type r3ClaimRow struct {
	id        int64
	ids       []int64
	groups    []string
	live      bool // until well ahead: live through what follows
	maybeLive bool // until ahead when read
	lapseSet  bool // a pull claim whose lapse is not recorded
}

func (b *testBundle) r3Claims(t *testing.T) []r3ClaimRow {
	t.Helper()
	rows, err := b.store.Pool.Query(t.Context(), `SELECT id, ids, groups::text[], until > clock_timestamp() + interval '1 second',
		until > clock_timestamp(), lapse_max_age IS NOT NULL FROM claims WHERE sink_id = $1`, b.sinkID)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (r3ClaimRow, error) {
		var c r3ClaimRow
		err := r.Scan(&c.id, &c.ids, &c.groups, &c.live, &c.maybeLive, &c.lapseSet)
		return c, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// r3AckClaim runs Receive and checks it against the state just
// before: acked messages were held by a live claim named by their ref
// (I4); the batch's groups were named by no claim after the ack (I1),
// each a ready prefix of its group's unfailed messages, in commit order,
// once the acked ones left (I2).
func (b *testBundle) r3AckClaim(t *testing.T, refs []PullRef, req ClaimRequest) (*PullAckResult, *Batch) {
	t.Helper()
	req.SinkID = b.sinkID
	order := b.r2Order(t)
	claims := b.r3Claims(t)
	groupOf := map[int64]string{}
	for g, ms := range order {
		for _, m := range ms {
			groupOf[m.id] = g
		}
	}
	res, batch, err := b.store.Receive(t.Context(), refs, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res == nil { // no refs: nothing acked
		res = &PullAckResult{}
	}
	acked := map[int64]bool{}
	for _, m := range res.Acked {
		acked[m.ID] = true
		ok := false
		for _, c := range claims {
			if !c.maybeLive || !slices.Contains(c.ids, m.ID) {
				continue
			}
			if slices.Contains(refs, PullRef{ClaimID: c.id, MessageID: m.ID}) {
				ok = true
			}
		}
		if !ok {
			t.Fatalf("I4: acked message %d, which no claim named by its refs held live (refs %v)", m.ID, refs)
		}
	}
	for _, ref := range res.NotHeld {
		if acked[ref.MessageID] {
			// Acked under another ref of the same message: fine only if
			// that ref named its claim.
			continue
		}
		for _, c := range claims {
			if c.id == ref.ClaimID && c.live && slices.Contains(c.ids, ref.MessageID) {
				t.Fatalf("ref %v reported not held although claim %d held it live", ref, c.id)
			}
		}
	}
	// The groups claims name after the ack, as far as timing lets us
	// know (a lower bound where a lease may end meanwhile).
	busy := map[string]int64{}
	for _, c := range claims {
		switch {
		case c.lapseSet && !c.maybeLive: // ended for the ack, live for the claim
			for _, g := range c.groups {
				busy[g] = c.id
			}
		case c.live || c.lapseSet:
			for _, id := range c.ids {
				if !acked[id] {
					busy[groupOf[id]] = c.id
				}
			}
		}
	}
	if batch == nil {
		return res, nil
	}
	if len(batch.Messages) == 0 || len(batch.Messages) > req.BatchSize {
		t.Fatalf("batch of %d messages (BatchSize %d)", len(batch.Messages), req.BatchSize)
	}
	per := map[string][]int64{}
	for _, m := range batch.Messages {
		per[m.Group] = append(per[m.Group], m.ID)
	}
	for g, ids := range per {
		if c, ok := busy[g]; ok {
			t.Fatalf("I1: the receive with acks took group %s (%v) while claim %d still holds a message of it", g, ids, c)
		}
		var rest []r2Msg
		for _, m := range order[g] {
			if !acked[m.id] {
				rest = append(rest, m)
			}
		}
		if len(ids) > len(rest) {
			t.Fatalf("I2: batch takes %v of group %s, which had %+v", ids, g, rest)
		}
		for i, id := range ids {
			if rest[i].id != id {
				t.Fatalf("I2: batch takes %v of group %s, not a prefix of %+v", ids, g, rest)
			}
		}
	}
	var all, early []int64
	for _, m := range batch.Messages {
		all = append(all, m.ID)
	}
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT COALESCE(array_agg(id), '{}') FROM outbox WHERE id = ANY ($1) AND ready_at > clock_timestamp()`, all).Scan(&early); err != nil {
		t.Fatal(err)
	}
	if len(early) > 0 {
		t.Fatalf("received %v before their backoff ended", early)
	}
	b.r2LiveGroups(t, 0)
	return res, batch
}

// A random walk like TestReview2RandomWalk, with receives that carry
// acks (Receive): the acks name part of a received batch, parts of
// several, duplicates, refs of other claims, and refs of ended claims.
// Before every claim, the old and the new claim statement run on the
// same state (rolled back) and must agree; every receive with acks is
// checked for I1, I2 and I4 against the state before it; I3's structural
// form holds after every step; at the end everything drains (I3) and
// every message was acked exactly when it left (I5).
func TestReview3RandomWalk(t *testing.T) {
	seeds := 30
	if testing.Short() {
		seeds = 5
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { r3Walk(t, seed, 250) })
	}
}

func r3Walk(t *testing.T, seed uint64, steps int) {
	b := setup(t)
	ctx := t.Context()
	old := r3OldClaimSQL(t)
	rnd := rand.New(rand.NewPCG(seed, 99))
	groups := []string{"a", "b", "c", "d"}
	w := &r2Queue{b: b, rnd: rnd, groups: groups, lsn: 1000, queued: map[int64]bool{}}
	queued, queue := w.queued, func() { w.queue(t) }
	acked := map[int64]bool{}
	var held, pulled []*Batch
	pullReq := func() ClaimRequest {
		lease := time.Minute
		if rnd.IntN(6) == 0 {
			lease = 30 * time.Millisecond
		}
		return ClaimRequest{SinkID: b.sinkID, BatchSize: 1 + rnd.IntN(4), MaxAckPending: 1 + rnd.IntN(8), Lease: lease, Worker: "receive", Pull: true}
	}
	// pickRefs names a random part of random received batches (and
	// sometimes refs nobody holds, or twice); it drops what it names from
	// pulled.
	pickRefs := func() []PullRef {
		var refs []PullRef
		for range 1 + rnd.IntN(2) {
			if len(pulled) == 0 {
				break
			}
			i := rnd.IntN(len(pulled))
			batch := pulled[i]
			var keep []Message
			for _, m := range batch.Messages {
				if rnd.IntN(3) != 0 {
					refs = append(refs, PullRef{ClaimID: batch.ClaimID, MessageID: m.ID})
				} else {
					keep = append(keep, m)
				}
			}
			if len(keep) == 0 {
				pulled = slices.Delete(pulled, i, i+1)
			} else {
				batch.Messages = keep
			}
		}
		if len(refs) > 0 && rnd.IntN(4) == 0 {
			refs = append(refs, refs[0])                                                   // twice
			refs = append(refs, PullRef{ClaimID: refs[0].ClaimID + 2, MessageID: w.maxID}) // no such claim
		}
		return refs
	}
	for step := range steps {
		switch op := rnd.IntN(12); {
		case op < 3:
			queue()
		case op < 5:
			req := ClaimRequest{SinkID: b.sinkID, BatchSize: 1 + rnd.IntN(3), MaxAckPending: 1 + rnd.IntN(6), Batches: 1 + rnd.IntN(4), Lease: time.Minute, Worker: "w"}
			if rnd.IntN(6) == 0 {
				req.Lease = 30 * time.Millisecond
			}
			b.r3Differential(t, old, req, nil, true)
			held = append(held, b.r2Claim(t, req)...)
		case op < 6:
			req := pullReq()
			b.r3Differential(t, old, req, nil, true)
			pulled = append(pulled, b.r2Claim(t, req)...)
		case op < 9:
			// A receive carrying acks.
			refs := pickRefs()
			req := pullReq()
			b.r3Differential(t, old, req, refs, true)
			res, batch := b.r3AckClaim(t, refs, req)
			for _, m := range res.Acked {
				if acked[m.ID] {
					t.Fatalf("message %d acked twice", m.ID)
				}
				acked[m.ID] = true
			}
			if batch != nil {
				pulled = append(pulled, batch)
			}
		case op < 10 && len(held) > 0:
			i := rnd.IntN(len(held))
			batch := held[i]
			held = slices.Delete(held, i, i+1)
			if rnd.IntN(3) == 0 {
				_, err := b.store.Nack(ctx, batch, Failure{AttemptStart: time.Now(), Status: 500, Error: "x", Backoff: time.Duration(rnd.IntN(50)) * time.Millisecond})
				if err != nil && !IsClaimEnded(err) {
					t.Fatal(err)
				}
			} else {
				err := b.store.Ack(ctx, batch)
				if err != nil && !IsClaimEnded(err) {
					t.Fatal(err)
				}
				if err == nil {
					for _, m := range batch.Messages {
						acked[m.ID] = true
					}
				}
			}
		case op < 11 && len(pulled) > 0:
			refs := pickRefs()
			if _, err := b.store.PullNack(ctx, b.sinkID, refs, time.Now().Add(time.Duration(rnd.IntN(40))*time.Millisecond), 0, "x"); err != nil {
				t.Fatal(err)
			}
		default:
			if _, err := b.store.ReapClaims(ctx); err != nil {
				t.Fatal(err)
			}
		}
		b.r2Reachable(t, fmt.Sprint("step ", step))
	}
	b.r2Finish(t, held, pulled, queued, acked)
}

// r3Held is the ids of the sink's messages live claims hold.
func (b *testBundle) r3Held(t *testing.T) []int64 {
	t.Helper()
	var ids []int64
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT COALESCE(array_agg(i ORDER BY i), '{}') FROM claims, unnest(ids) AS u(i)
		WHERE sink_id = $1 AND until > clock_timestamp()`, b.sinkID).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	return ids
}

func r3IDs(ms []Message) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func (b *testBundle) r3Pull(size, pending int) ClaimRequest {
	return ClaimRequest{SinkID: b.sinkID, BatchSize: size, MaxAckPending: pending, Lease: time.Minute, Worker: "receive", Pull: true}
}

// Acking part of a group and receiving in one transaction: the rest of
// the group is still held, so nothing of the group may go (not the held
// rest, not what was queued behind it: I1, I2); acking the rest hands the
// group on, in order, in the same call.
func TestReview3AckPartOfGroupAndReceive(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 3)
	b.queueCommitted(t, "h", 1)
	a := b.receive(t, 10, time.Minute, 0) // g1 g2 g3 h1
	if a == nil || len(a.Messages) != 4 {
		t.Fatalf("receive: %+v", a)
	}
	b.enqueueAt(t, "g", 10, 0) // g4
	b.enqueueAt(t, "h", 10, 1) // h2
	g, h := a.Messages[:3], a.Messages[3:]
	res, got := b.r3AckClaim(t, refsOf(a, g[0], g[1], h[0]), b.r3Pull(10, 1000))
	if len(res.Acked) != 3 || len(res.NotHeld) != 0 {
		t.Fatalf("ack: %+v", res)
	}
	if got == nil || len(got.Messages) != 1 || got.Messages[0].Group != "h" {
		t.Fatalf("received %+v, want h2 only (g3 is still held)", got)
	}
	res, got = b.r3AckClaim(t, refsOf(a, g[2]), b.r3Pull(10, 1000))
	if len(res.Acked) != 1 || got == nil || len(got.Messages) != 1 || got.Messages[0].Group != "g" {
		t.Fatalf("ack g3: %+v, received %+v, want g4", res, got)
	}
	b.r2Reachable(t, "end")
}

// A consumer nacks the first message of a group (backing off for an
// hour) and acks the second with its next receive: the claim ends, and
// the receive must not hand out what was queued behind the nacked one
// (I2: it waits for it), nor the nacked one before its backoff ends.
// Once the backoff ends, they go in order.
func TestReview3AckLaterOfGroupEarlierNacked(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "g", 2)
	a := b.receive(t, 10, time.Minute, 0) // g1 g2
	if a == nil || len(a.Messages) != 2 {
		t.Fatalf("receive: %+v", a)
	}
	b.enqueueAt(t, "g", 10, 0) // g3
	if res, err := b.store.PullNack(ctx, b.sinkID, refsOf(a, a.Messages[0]), time.Now().Add(time.Hour), 0, "later"); err != nil || res.Nacked != 1 {
		t.Fatalf("nack g1: %+v, %v", res, err)
	}
	res, got := b.r3AckClaim(t, refsOf(a, a.Messages[1]), b.r3Pull(10, 1000))
	if len(res.Acked) != 1 {
		t.Fatalf("ack g2: %+v", res)
	}
	if got != nil {
		t.Fatalf("I2: received %+v while g1 backs off", got.Messages)
	}
	b.r2Reachable(t, "ack of g2")
	if _, err := b.store.Pool.Exec(ctx, `UPDATE outbox SET ready_at = clock_timestamp(), not_before = clock_timestamp() WHERE id = $1`, a.Messages[0].ID); err != nil {
		t.Fatal(err)
	}
	_, got = b.r3AckClaim(t, nil, b.r3Pull(10, 1000))
	if got == nil || len(got.Messages) != 2 || got.Messages[0].ID != a.Messages[0].ID || got.Messages[0].DeliverCount != 1 {
		t.Fatalf("after the backoff: %+v, want g1 (attempted once) then g3", got)
	}
}

// A receive whose acks name a claim whose visibility timeout passed but
// whose lapse is not recorded yet: the acks change nothing (F), and the
// claim in the same transaction must still count the ended claim as
// holding its groups (U): nothing of them goes until the lapse is
// recorded; then they come back, attempted once, in order.
func TestReview3AckClaimLapsedUnrecorded(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "g", 2)
	a := b.receive(t, 10, 50*time.Millisecond, 0)
	if a == nil || len(a.Messages) != 2 {
		t.Fatalf("receive: %+v", a)
	}
	b.enqueueAt(t, "g", 10, 0)
	b.enqueueAt(t, "k", 10, 1)
	time.Sleep(100 * time.Millisecond)
	res, got := b.r3AckClaim(t, refsOf(a, a.Messages...), b.r3Pull(10, 1000))
	if len(res.Acked) != 0 || len(res.NotHeld) != 2 {
		t.Fatalf("ack of a lapsed claim: %+v", res)
	}
	if got == nil || len(got.Messages) != 1 || got.Messages[0].Group != "k" {
		t.Fatalf("received %+v, want k1 only (g is in a lapse not recorded yet)", got)
	}
	if _, err := b.store.ReapClaims(ctx); err != nil {
		t.Fatal(err)
	}
	_, got = b.r3AckClaim(t, refsOf(got, got.Messages...), b.r3Pull(10, 1000))
	if got == nil || len(got.Messages) != 3 || got.Messages[0].ID != a.Messages[0].ID || got.Messages[0].DeliverCount != 1 || got.Messages[2].DeliverCount != 0 {
		t.Fatalf("after the lapse: %+v, want g1 g2 (attempted once) g3", got)
	}
}

// max_ack_pending across a partial ack and a receive in one transaction:
// the claim counts the room its own transaction's ack freed, and no
// more: what live claims hold fresh never exceeds max_ack_pending.
func TestReview3AckClaimMaxAckPending(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	for _, g := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		b.queueCommitted(t, g, 1)
	}
	first, err := b.store.Claim(ctx, b.r3Pull(3, 4))
	if err != nil || first == nil || len(first.Messages) != 3 {
		t.Fatalf("receive: %+v, %v", first, err)
	}
	check := func(when string, want int) {
		t.Helper()
		var fresh, held int
		if err := b.store.Pool.QueryRow(ctx, `SELECT COALESCE(sum(fresh), 0), COALESCE(sum(cardinality(ids)), 0) FROM claims WHERE until > clock_timestamp()`).Scan(&fresh, &held); err != nil {
			t.Fatal(err)
		}
		if held > 4 || fresh > 4 || held != want {
			t.Fatalf("%s: live claims hold %d messages (%d counted fresh), max_ack_pending 4, want %d held", when, held, fresh, want)
		}
	}
	check("first receive", 3)
	// Ack 2 of 3 and receive up to 10: room for 3.
	res, got := b.r3AckClaim(t, refsOf(first, first.Messages[:2]...), b.r3Pull(10, 4))
	if len(res.Acked) != 2 || got == nil || len(got.Messages) != 3 {
		t.Fatalf("ack 2 and receive: %+v, %+v", res, got)
	}
	check("ack 2 and receive", 4)
	second := got
	// Nothing acked (refs not held): no room.
	res, got = b.r3AckClaim(t, refsOf(first, first.Messages[:2]...), b.r3Pull(10, 4))
	if len(res.NotHeld) != 2 || got != nil {
		t.Fatalf("ack nothing and receive: %+v, %+v", res, got)
	}
	check("ack nothing and receive", 4)
	// Ack the rest of the first and one of the second: room for 2, and 2
	// groups are left (g, h).
	res, got = b.r3AckClaim(t, append(refsOf(first, first.Messages[2]), refsOf(second, second.Messages[0])...), b.r3Pull(10, 4))
	if len(res.Acked) != 2 || got == nil || len(got.Messages) != 2 {
		t.Fatalf("ack 2 of two claims and receive: %+v, %+v", res, got)
	}
	check("ack 2 of two claims and receive", 4)
}

// A receive with acks whose claim finds only candidates behind others
// (it clears their flags, takes nothing): Receive looks again
// outside the transaction, as ClaimBatches does, and gets what lies
// past them; the ack stays done.
func TestReview3AckClaimLooksAgainPastDemoted(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "k", 1)
	k, err := b.store.Claim(t.Context(), b.r3Pull(1, 1000)) // k1
	if err != nil || k == nil {
		t.Fatalf("receive k: %+v, %v", k, err)
	}
	b.enqueueAt(t, "g", 10, 0) // g1
	g, err := b.store.Claim(t.Context(), b.r3Pull(1, 1000))
	if err != nil || g == nil || g.Messages[0].Group != "g" {
		t.Fatalf("receive g: %+v, %v", g, err)
	}
	g2 := b.enqueueAt(t, "g", 11, 0) // unsorted, behind a claim
	h1 := b.enqueueAt(t, "h", 12, 0)
	// The first look's window (BatchSize 1) holds g2 only: it is demoted.
	if d := b.r3Digest(t, claimSQL, b.r3Pull(1, 1000), refsOf(k, k.Messages...)); !strings.Contains(d, "demoted 1, nothing") {
		t.Fatalf("the first look did not demote g2 and take nothing:\n%s", d)
	}
	res, got := b.r3AckClaim(t, refsOf(k, k.Messages...), b.r3Pull(1, 1000))
	if len(res.Acked) != 1 {
		t.Fatalf("ack: %+v", res)
	}
	if got == nil || len(got.Messages) != 1 || got.Messages[0].ID != h1 {
		t.Fatalf("received %+v, want h1 (%d), past g2 (%d)", got, h1, g2)
	}
	if held := b.r3Held(t); !slices.Equal(held, []int64{g.Messages[0].ID, h1}) {
		t.Fatalf("held %v", held)
	}
}

// A receive with acks whose claim statement fails: the acks must not
// take effect either (one transaction), so an answer that says the
// request failed is true.
func TestReview3AckClaimFailureUndoesAck(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	a := b.receive(t, 10, time.Minute, 0)
	if a == nil {
		t.Fatal("nothing received")
	}
	req := b.r3Pull(10, 1000)
	req.BatchSize = -1 // LIMIT -1: the claim statement fails
	if _, _, err := b.store.Receive(t.Context(), refsOf(a, a.Messages...), req, nil); err == nil {
		t.Fatal("a claim with BatchSize -1 did not fail")
	}
	if held := b.r3Held(t); !slices.Equal(held, r3IDs(a.Messages)) {
		t.Fatalf("after a failed ack-and-receive, held %v, want %v (the ack must be undone)", held, r3IDs(a.Messages))
	}
	var n int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d messages left, want 2 (%v)", n, err)
	}
}

// Refs nobody holds (no such claim, another claim's message, twice)
// with a receive: all reported, nothing acked, and the receive works.
func TestReview3AckClaimNothingHeld(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "a", 1)
	b.queueCommitted(t, "b", 1)
	x, err := b.store.Claim(t.Context(), b.r3Pull(1, 1000))
	if err != nil || x == nil {
		t.Fatal(x, err)
	}
	b.queueCommitted(t, "c", 1)
	refs := []PullRef{{ClaimID: x.ClaimID + 2, MessageID: x.Messages[0].ID}, {ClaimID: x.ClaimID, MessageID: x.Messages[0].ID + 1}}
	refs = append(refs, refs...)
	res, got := b.r3AckClaim(t, refs, b.r3Pull(10, 1000))
	if len(res.Acked) != 0 || len(res.NotHeld) != 2 {
		t.Fatalf("ack of refs not held: %+v", res)
	}
	if got == nil || len(got.Messages) != 2 {
		t.Fatalf("received %+v, want b1 c1", got)
	}
	if held := b.r3Held(t); len(held) != 3 {
		t.Fatalf("held %v", held)
	}
}

// max_ack_pending after a partial ack (pull.go: a claim's fresh "never
// grows"): a replay queued f0 before the retry g1 (nacked), so a receive
// with max_ack_pending 1 holds f0 and g1 (f0 stands before a retry: not
// counted, it holds the retry's room). The consumer acks g1 only, in a
// receive: the retry is gone and so is the room it held, but f0 is
// still held and counted nowhere (fresh stays 0), so the receive hands
// out h1 too: two messages received and unacknowledged with
// max_ack_pending 1.
func TestReview3BreakMaxAckPendingAfterAckOfRetry(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	g1 := b.enqueueAt(t, "g", 10, 0)
	a, err := b.store.Claim(ctx, b.r3Pull(10, 1))
	if err != nil || a == nil {
		t.Fatal(a, err)
	}
	if res, err := b.store.PullNack(ctx, b.sinkID, refsOf(a, a.Messages...), time.Time{}, 0, "x"); err != nil || res.Nacked != 1 {
		t.Fatalf("nack: %+v, %v", res, err)
	}
	f0 := b.enqueueAt(t, "g", 5, 0) // a replay, before the retry
	held, err := b.store.Claim(ctx, b.r3Pull(10, 1))
	if err != nil || held == nil || !slices.Equal(r3IDs(held.Messages), []int64{f0, g1}) {
		t.Fatalf("receive: %+v, %v; want f0 %d, g1 %d", held, err, f0, g1)
	}
	b.enqueueAt(t, "h", 20, 0)
	res, got := b.r3AckClaim(t, refsOf(held, held.Messages[1]), b.r3Pull(10, 1))
	if len(res.Acked) != 1 {
		t.Fatalf("ack of g1: %+v", res)
	}
	if n := len(b.r3Held(t)); n > 1 {
		t.Fatalf("max_ack_pending 1, but %d messages are received and unacknowledged (f0 still held, and the receive that acked g1 handed out %v)", n, r3IDs(got.Messages))
	}
}
