package outbox

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// review8Generic: WALHOOK_REVIEW8_GENERIC=1 runs both statements after
// claimLockPlanSQL's settings take effect in their transaction.
var review8Generic = os.Getenv("WALHOOK_REVIEW8_GENERIC") != ""

// claimLockPlanSQL's settings are then the server's (ALTER SYSTEM, each
// test has its own cluster), as ClaimBatches runs the statements.
func review8Settings(t *testing.T, b *testBundle) {
	t.Helper()
	if !review8Generic {
		return
	}
	if _, err := b.store.Pool.Exec(t.Context(), `ALTER SYSTEM SET plan_cache_mode = 'force_generic_plan'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Pool.Exec(t.Context(), `ALTER SYSTEM SET enable_bitmapscan = off`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Pool.Exec(t.Context(), `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	var m string
	if err := b.store.Pool.QueryRow(t.Context(), `SHOW plan_cache_mode`).Scan(&m); err != nil || m != "force_generic_plan" {
		t.Fatalf("plan_cache_mode %q, %v", m, err)
	}
}

// TestReview8FreshNullGroupInLiveClaim: a live claims row whose groups
// array holds a NULL element (the column is text[] NOT NULL, its
// elements may be NULL). claimSQL's busy (group_key IN (... NULL)) is
// NULL for every other group, so it neither takes nor demotes any fresh
// candidate; claimFreshSQL's "NOT EXISTS (... WHERE busy OR ...)" reads
// the NULL as "not busy" and took them all (5ebaf0e); it now reads
// "busy IS NOT FALSE", does not apply, and claimSQL runs.
func TestReview8FreshNullGroupInLiveClaim(t *testing.T) {

	b := setup(t)
	ctx := t.Context()
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head, ready_at)
		SELECT $1, 'g' || i, i, 0, '{}', true, now() - interval '1 hour' FROM generate_series(1, 3) i`, b.sinkID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO claims (sink_id, worker, until, fresh, ids, groups)
		VALUES ($1, 'x', now() + interval '1 hour', 0, '{}', ARRAY['zz', NULL]::text[])`, b.sinkID); err != nil {
		t.Fatal(err)
	}
	checkFreshContract(t, b, ClaimRequest{SinkID: b.sinkID, BatchSize: 2, MaxAckPending: 10, Lease: time.Minute, Worker: "w", Batches: 2}, "NULL in a live claim's groups")
}

// TestReview8FreshEdges: random states aimed at the edges of
// claimFreshSQL's conditions, which TestClaimFreshDifferential reaches
// rarely: max_ack_pending around the candidate count (room exactly
// equal, one short, negative through live claims' fresh counts),
// retries that claimSQL would not take (busy group, failed, not ready,
// flag false, claimed, other sink), singleton groups with a failed,
// backing-off, flag-false or other-sink sibling, exact ready_at ties,
// infinite ready_at, lapsed unrecorded pull claims, batch boundaries.
func TestReview8FreshEdges(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	review8Settings(t, b)
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	states := 300
	if v, err := strconv.Atoi(os.Getenv("WALHOOK_REVIEW8_STATES")); err == nil && v > 0 {
		states = v
	}
	applied, took := 0, 0
	for seed := range uint64(states) {
		rnd := rand.New(rand.NewPCG(seed, 88))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		hold := []string{"NULL", "NULL", "NULL", "now() - interval '1 second'", "now() + interval '1 hour'"}[rnd.IntN(5)]
		if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`UPDATE sinks SET status = 'active', hold_until = %s WHERE id = $1`, hold), b.sinkID); err != nil {
			t.Fatal(err)
		}
		var base time.Time
		if err := b.store.Pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&base); err != nil {
			t.Fatal(err)
		}
		ins := func(sink int64, g string, ready string, dc int, head any, failed string, lsn int) int64 {
			var id int64
			if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
				VALUES ($1, $2, $3, 0, '{}', $4, $5, %s, %s) RETURNING id`, ready, failed), sink, g, lsn, dc, head).Scan(&id); err != nil {
				t.Fatal(err)
			}
			return id
		}
		readies := []string{"$6::timestamptz", "$6::timestamptz", "$6::timestamptz - interval '1 hour'", "LEAST($6::timestamptz, '-infinity')"}
		n := 1 + rnd.IntN(12)
		var cands []int64
		var cgroups []string
		for i := range n {
			g := fmt.Sprintf("s%d", i)
			// Reorder: ids ascending but ready_at ties broken by id, or not.
			ready := readies[rnd.IntN(len(readies))]
			var id int64
			if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at)
				VALUES ($1, $2, $3, 0, '{}', 0, $4, %s) RETURNING id`, strings.Replace(ready, "$6", "$5", 1)),
				b.sinkID, g, 10+rnd.IntN(3), []any{nil, true}[rnd.IntN(2)], base).Scan(&id); err != nil {
				t.Fatal(err)
			}
			cands, cgroups = append(cands, id), append(cgroups, g)
			switch rnd.IntN(14) {
			case 0: // a failed sibling, older
				ins(b.sinkID, g, "now()", 0, true, "now()", 1)
			case 1: // a backing-off sibling, younger
				ins(b.sinkID, g, "now() + interval '1 hour'", 1, nil, "NULL", 99)
			case 2: // a flag-false sibling, older
				ins(b.sinkID, g, "now() - interval '2 hours'", 0, false, "NULL", 1)
			case 3: // same group key, other sink
				ins(other, g, "now() - interval '2 hours'", 1, true, "NULL", 1)
			case 4: // a fresh sibling, younger, flag false
				ins(b.sinkID, g, "now() - interval '3 hours'", 0, false, "NULL", 99)
			case 5: // a failed retry sibling
				ins(b.sinkID, g, "now() - interval '3 hours'", 3, nil, "now()", 99)
			}
		}
		// Retries claimSQL would not take, or would.
		for range rnd.IntN(3) {
			g := fmt.Sprintf("r%d", rnd.IntN(3))
			switch rnd.IntN(6) {
			case 0:
				ins(b.sinkID, g, "now() + interval '1 hour'", 1, true, "NULL", 1) // not ready
			case 1:
				ins(b.sinkID, g, "now() - interval '1 hour'", 1, false, "NULL", 1) // flag false
			case 2:
				ins(b.sinkID, g, "now() - interval '1 hour'", 2, true, "now()", 1) // failed
			case 3:
				ins(other, g, "now() - interval '1 hour'", 2, true, "NULL", 1) // other sink
			default:
				id := ins(b.sinkID, g, "now() - interval '1 hour'", 1, true, "NULL", 1)
				if rnd.IntN(2) == 0 { // busy: held or its group named
					ids := "'{}'::bigint[]"
					if rnd.IntN(2) == 0 {
						ids = fmt.Sprintf("ARRAY[%d]::bigint[]", id)
					}
					until, lapse := []string{"1 hour", "-1 hour"}[rnd.IntN(2)], []string{"NULL", "0"}[rnd.IntN(2)]
					if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
						VALUES ($1, 'x', now() + interval '%s', 0, %s, ARRAY[$2]::text[], %s)`, until, ids, lapse), b.sinkID, g); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		// Live (or lapsed, unrecorded) claims with fresh counts, sometimes
		// naming a candidate's group or the candidate itself.
		liveFresh := 0
		for range rnd.IntN(3) {
			f := rnd.IntN(4)
			ids, groups := "'{}'::bigint[]", "'{}'::text[]"
			switch rnd.IntN(4) {
			case 0:
				i := rnd.IntN(len(cands))
				groups = fmt.Sprintf("ARRAY['%s']::text[]", cgroups[i])
			case 1:
				i := rnd.IntN(len(cands))
				ids, groups = fmt.Sprintf("ARRAY[%d]::bigint[]", cands[i]), fmt.Sprintf("ARRAY['%s']::text[]", cgroups[i])
			}
			until, lapse := "1 hour", "NULL"
			switch rnd.IntN(4) {
			case 0:
				until, lapse = "-1 hour", "0"
			case 1:
				until = "-1 hour"
			}
			if until == "1 hour" || lapse != "NULL" {
				liveFresh += f
			}
			if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
				VALUES ($1, 'x', now() + interval '%s', $2, %s, %s, %s)`, until, ids, groups, lapse), b.sinkID, f); err != nil {
				t.Fatal(err)
			}
		}
		var retries int
		if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL`, b.sinkID).Scan(&retries); err != nil {
			t.Fatal(err)
		}
		bs := 1 + rnd.IntN(5)
		// max_ack_pending so that room is the candidate count, one less,
		// one more, zero or negative.
		mapn := max(1, n+liveFresh+retries+[]int{0, 0, -1, 1, -n, -n - 2}[rnd.IntN(6)])
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: bs, MaxAckPending: mapn, Lease: time.Minute,
			Worker: "w", Batches: 1 + rnd.IntN(4), Pull: rnd.IntN(3) == 0, WorkerID: int64(rnd.IntN(2))}
		a, k := checkFreshContract(t, b, req, fmt.Sprintf("seed %d", seed))
		if a {
			applied++
		}
		if k {
			took++
		}
	}
	t.Logf("%d states, claimFreshSQL applied in %d, %d of them with batches", states, applied, took)
}
