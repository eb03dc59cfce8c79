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

// Third adversarial review: PullAckClaim (a receive that carries acks,
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
// pull ack of refs and its promote when refs is not nil (as PullAckClaim
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
	o1 := b.r3Digest(t, old, req, refs)
	n := b.r3Digest(t, claimSQL, req, refs)
	if n == o1 {
		return
	}
	if timing {
		if o2 := b.r3Digest(t, old, req, refs); n == o2 {
			return
		}
	}
	t.Fatalf("claimSQL (partition by head_ready, head_id) differs from the old one (by head_id) for %+v:\nold:\n%s\nnew:\n%s", req, o1, n)
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

// r3AckClaim runs PullAckClaim and checks it against the state just
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
	res, batch, err := b.store.PullAckClaim(t.Context(), refs, req)
	if err != nil {
		t.Fatal(err)
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
