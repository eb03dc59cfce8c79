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

// TestClaimFreshDifferential: on random states, claimFreshSQL either
// says it does not apply and changes nothing, or does exactly what
// claimSQL does. States lean to those it applies to (single-message
// groups, few retries), with every kind of exception mixed in.
func TestClaimFreshDifferential(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	applied, took, states := 0, 0, 400
	if v := os.Getenv("WALHOOK_CLAIM_FRESH_STATES"); v != "" {
		states, _ = strconv.Atoi(v)
	}
	for seed := range uint64(states) {
		rnd := rand.New(rand.NewPCG(seed, 47))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		status, hold := []string{"active", "active", "active", "active", "paused"}[rnd.IntN(5)], []string{"NULL", "NULL", "NULL", "now() - interval '1 hour'", "now() + interval '1 hour'"}[rnd.IntN(5)]
		if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`UPDATE sinks SET status = '%s', hold_until = %s WHERE id = $1`, status, hold), b.sinkID); err != nil {
			t.Fatal(err)
		}
		var base time.Time
		if err := b.store.Pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&base); err != nil {
			t.Fatal(err)
		}
		ngroups := []int{2 + rnd.IntN(4), 3 + rnd.IntN(40), 1000, 1000}[rnd.IntN(4)] // hot, mixed, mostly single-message groups
		var ids []int64
		var gs []string
		for _, sink := range []int64{b.sinkID, other} {
			for range 1 + rnd.IntN(40) {
				g := fmt.Sprintf("g%d", rnd.IntN(ngroups))
				var id int64
				ready := []string{"-2 hours", "-1 hour", "-1 hour", "-1 hour", "1 hour"}[rnd.IntN(5)]
				failed := "NULL"
				if rnd.IntN(12) == 0 {
					failed = "now()"
				}
				dc := 0
				if rnd.IntN(25) == 0 {
					dc = 1 + rnd.IntN(2)
				}
				if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
					VALUES ($1, $2, $3, $4, '{"p":1}', $5, $6, $7::timestamptz + interval '%s', %s) RETURNING id`, ready, failed),
					sink, g, rnd.IntN(5), rnd.IntN(3), dc, []any{nil, true, true, false}[rnd.IntN(4)], base).Scan(&id); err != nil {
					t.Fatal(err)
				}
				if sink == b.sinkID {
					ids, gs = append(ids, id), append(gs, g)
				}
			}
		}
		b.randomClaims(t, rnd, ids, gs, rnd.IntN(3), 6)
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: 1 + rnd.IntN(8), MaxAckPending: 1 + rnd.IntN(60), Lease: time.Minute,
			Worker: "w", Batches: 1 + rnd.IntN(4), Pull: rnd.IntN(4) == 0}
		ok, withBatches := checkFreshContract(t, b, req, fmt.Sprintf("seed %d", seed))
		if ok {
			applied++
		}
		if withBatches {
			took++
		}
	}
	if took < states/10 {
		t.Fatalf("claimFreshSQL took batches in only %d of %d states (applied in %d)", took, states, applied)
	}
	t.Logf("%d states, claimFreshSQL applied in %d, %d of them with batches", states, applied, took)
}

// checkFreshContract checks claimFreshSQL's contract for req in b's
// state: it either says -1 and changes nothing, or does exactly what
// claimSQL does (claimOutcome). It says which, and whether batches were
// taken.
func checkFreshContract(t *testing.T, b *testBundle, req ClaimRequest, what string) (applied, took bool) {
	t.Helper()
	want := claimOutcome(t, b, claimSQL, req)
	got := claimOutcome(t, b, claimFreshSQL, req)

	if strings.HasPrefix(got, "demoted -1;") {
		none := claimOutcome(t, b, `SELECT -1::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, NULL::int, NULL::bytea, NULL::int, NULL::timestamptz, NULL::timestamptz
			FROM (SELECT $1::bigint, $2::int, $3::int, $4::float8, $5::text, $6::bigint, $7::bigint, $8::int) p`, req)
		if got != none {
			t.Fatalf("%s: claimFreshSQL did not apply but changed something:\n%s\nnothing: %s", what, got, none)
		}
		return false, false
	}
	if got != want {
		t.Fatalf("%s, request %+v:\nclaimSQL:      %s\nclaimFreshSQL: %s", what, req, want, got)
	}
	return true, strings.Contains(got, "batch")
}
