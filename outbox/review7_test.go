package outbox

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestR7ClaimHeadsDifferentialShapes compares claimSQL with
// oldClaimHeadsJoinSQL on states that TestClaimHeadsDifferential's
// generator does not draw, each under both the custom and the generic plan
// (the pool forces generic plans for claims: claimLockPlanSQL):
//
//   - wide: up to 80 groups of a message or three, batch sizes of 1 to 3
//     and up to 40 batches, so that the limit of $2 * $8 heads cuts;
//   - deep: a few groups of up to 300 messages, so that each candidate's
//     window is its share (count(cand)) and batches are cut mid-group;
//   - mixed: one or two groups holding most candidates, retries and fresh
//     ones of one group, failed first messages, busy groups;
//   - cut: a limit of $2 * $8 of 1 to 8 heads and as many retries as fresh
//     messages, so that more heads than the limit are eligible, some
//     without room (whether a head past the limit may fill the batch).
//
// Besides: ready_at drawn to the microsecond (ties, and ties with a
// different id order), commit order unrelated to id order, group keys
// such as "", " ", "A" beside "a" and "é", claims whose groups name more
// groups than their ids, and the other sink's claims naming this sink's
// groups. WALHOOK_R7_DIFF_STATES sets how many states
// (default 300, 40 with -short), WALHOOK_R7_DIFF_SEED the first seed.
func TestR7ClaimHeadsDifferentialShapes(t *testing.T) {
	states, base := 300, uint64(7_000_000)
	if testing.Short() {
		states = 40
	}
	if n, err := strconv.Atoi(os.Getenv("WALHOOK_R7_DIFF_STATES")); err == nil && n > 0 {
		states = n
	}
	if n, err := strconv.ParseUint(os.Getenv("WALHOOK_R7_DIFF_SEED"), 10, 64); err == nil {
		base = n
	}
	b := setup(t)
	ctx := t.Context()
	generic := r7Generic(t, b, 2)
	var mode string
	if err := generic.store.Pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&mode); err != nil || mode != "force_generic_plan" {
		t.Fatalf("the generic pool's plan_cache_mode is %q (%v)", mode, err)
	}
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	var took, multi, demoted, cut int
	for i := range uint64(states) {
		seed := base + i
		req, shape := r7State(t, b, other, seed)
		if r7HeadsCut(t, b, req) {
			cut++
		}
		want := claimOutcome(t, b, oldClaimHeadsJoinSQL, req)
		for _, run := range []struct {
			name string
			b    *testBundle
			sql  string
		}{{"new custom", b, claimSQL}, {"old generic", generic, oldClaimHeadsJoinSQL}, {"new generic", generic, claimSQL}} {
			if got := claimOutcome(t, run.b, run.sql, req); got != want {
				t.Fatalf("seed %d (%s; WALHOOK_R7_DIFF_SEED=%d WALHOOK_R7_DIFF_STATES=1), request %+v, %s differs:\nold custom: %s\n%s: %s",
					seed, shape, seed, req, run.name, want, run.name, got)
			}
		}
		if n := strings.Count(want, " batch"); n > 0 {
			took++
			if n > 1 {
				multi++
			}
		}
		if !strings.HasPrefix(want, "demoted 0;") {
			demoted++
		}
	}
	if took < states/4 || multi < states/20 || demoted < states/20 || cut < states/40 {
		t.Fatalf("of %d states %d gave a batch, %d several, %d cleared flags, %d had more heads than the limit: the states do not test the claim",
			states, took, multi, demoted, cut)
	}
	t.Logf("%d states from seed %d: %d with batches, %d with several, %d that cleared flags, %d with more heads than $2 * $8",
		states, base, took, multi, demoted, cut)
}

// r7HeadsCut says whether the limit of $2 * $8 batch heads leaves some
// out in the state: the groups that oldClaimHeadsJoinSQL's CTE h takes
// its heads from, counted in a transaction rolled back.
func r7HeadsCut(t *testing.T, b *testBundle, req ClaimRequest) bool {
	t.Helper()
	ctx := t.Context()
	i := strings.Index(oldClaimHeadsJoinSQL, "), h AS (")
	if i < 0 {
		t.Fatal("oldClaimHeadsJoinSQL has no CTE h")
	}
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var heads int
	if err := tx.QueryRow(ctx, oldClaimHeadsJoinSQL[:i]+`) SELECT count(DISTINCT group_key) FROM cls, (SELECT $3::int, $4::float8, $5::text, $6::bigint, $7::bigint) p
		WHERE NOT busy AND first_ready`,
		req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker, nil, nil, req.Batches).Scan(&heads); err != nil {
		t.Fatalf("heads: %v", err)
	}
	return heads > req.BatchSize*req.Batches
}

// r7Generic is b with a pool of its own whose connections plan every
// statement generically, as claims run (claimLockPlanSQL).
func r7Generic(t *testing.T, b *testBundle, maxConns int32) *testBundle {
	t.Helper()
	cfg := b.store.Pool.Config()
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	cfg.MaxConns = maxConns
	p, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("generic pool: %v", err)
	}
	t.Cleanup(p.Close)
	return &testBundle{store: &testStore{Store: b.store.Store, Pool: p}, sinkID: b.sinkID}
}

// r7State writes the state of seed (outbox, claims, the sink's status)
// and returns the request to claim with and the state's shape.
func r7State(t *testing.T, b *testBundle, other int64, seed uint64) (ClaimRequest, string) {
	t.Helper()
	ctx := t.Context()
	rnd := rand.New(rand.NewPCG(seed, 77))
	if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
		t.Fatal(err)
	}
	status, hold := []string{"active", "active", "active", "active", "paused"}[rnd.IntN(5)], []string{"NULL", "NULL", "NULL", "now() - interval '1 hour'", "now() + interval '1 hour'"}[rnd.IntN(5)]
	if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`UPDATE sinks SET status = '%s', hold_until = %s WHERE id = $1`, status, hold), b.sinkID); err != nil {
		t.Fatal(err)
	}
	shape := []string{"wide", "deep", "mixed", "cut"}[rnd.IntN(4)]
	var ngroups, nmsgs, batch, batches, maxPending int
	switch shape {
	case "wide":
		ngroups, batch = 10+rnd.IntN(71), 1+rnd.IntN(3)
		batches = 1 + rnd.IntN(ngroups/2)
		nmsgs = ngroups + rnd.IntN(2*ngroups)
		maxPending = 1 + rnd.IntN(6*ngroups)
	case "deep":
		ngroups, batch, batches = 1+rnd.IntN(4), 5+rnd.IntN(46), 1+rnd.IntN(4)
		nmsgs = ngroups * (20 + rnd.IntN(281))
		maxPending = 1 + rnd.IntN(2*batch*batches)
	case "cut":
		ngroups, batch, batches = 6+rnd.IntN(20), 1+rnd.IntN(2), 1+rnd.IntN(4)
		nmsgs = ngroups + rnd.IntN(ngroups)
		maxPending = nmsgs/2 + rnd.IntN(nmsgs)
	default:
		ngroups, batch, batches = 2+rnd.IntN(5), 1+rnd.IntN(8), 1+rnd.IntN(6)
		nmsgs = 10 + rnd.IntN(80)
		maxPending = 1 + rnd.IntN(40)
	}
	names := []string{"", " ", "a", "A", "b", "é", "z", "a b", "-", "~"}
	groups := make([]string, ngroups)
	for i := range groups {
		if i < len(names) && rnd.IntN(2) == 0 {
			groups[i] = names[i]
		} else {
			groups[i] = fmt.Sprintf("g%03d", i)
		}
	}
	// Which group a message falls in: mixed states pile most into the
	// first one or two groups.
	pickGroup := func() string {
		if shape == "mixed" && rnd.IntN(3) != 0 {
			return groups[rnd.IntN(2)]
		}
		return groups[rnd.IntN(len(groups))]
	}
	// ready_at offsets: a few ties to the microsecond, most past, some future.
	ties := []int64{-7_200_000_000, -3_600_000_000, -3_600_000_000, -1, 0}
	readyAt := func() int64 {
		switch rnd.IntN(6) {
		case 0:
			return 3_600_000_000 + rnd.Int64N(1000)
		case 1, 2:
			return -rnd.Int64N(10_000_000)
		default:
			return ties[rnd.IntN(len(ties))] - 1_000_000
		}
	}
	var sinks []int64
	var gks []string
	var lsns, ready []int64
	var idxs, counts []int32
	var heads []*bool
	var failed []bool
	yes, no := true, false
	add := func(sink int64, g string, failedP int) {
		sinks, gks = append(sinks, sink), append(gks, g)
		lsns, idxs = append(lsns, rnd.Int64N(20)), append(idxs, int32(rnd.IntN(4)))
		if shape == "cut" {
			counts = append(counts, []int32{0, 1}[rnd.IntN(2)])
		} else {
			counts = append(counts, []int32{0, 0, 0, 0, 1, 3}[rnd.IntN(6)])
		}
		heads = append(heads, []*bool{nil, nil, &yes, &no}[rnd.IntN(4)])
		failed = append(failed, rnd.IntN(failedP) == 0)
		ready = append(ready, readyAt())
	}
	for range nmsgs {
		add(b.sinkID, pickGroup(), 10)
	}
	// Mixed states: the first message of a group (commit order) failed,
	// or a retry in the middle of fresh ones.
	if shape == "mixed" {
		for range 1 + rnd.IntN(3) {
			g := pickGroup()
			add(b.sinkID, g, 1)
			lsns[len(lsns)-1] = -1
		}
	}
	for range rnd.IntN(30) {
		add(other, pickGroup(), 8)
	}
	// Ids in an order unrelated to groups, commit order and ready_at.
	rnd.Shuffle(len(sinks), func(i, j int) {
		sinks[i], sinks[j] = sinks[j], sinks[i]
		gks[i], gks[j] = gks[j], gks[i]
		lsns[i], lsns[j] = lsns[j], lsns[i]
		idxs[i], idxs[j] = idxs[j], idxs[i]
		counts[i], counts[j] = counts[j], counts[i]
		heads[i], heads[j] = heads[j], heads[i]
		ready[i], ready[j] = ready[j], ready[i]
		failed[i], failed[j] = failed[j], failed[i]
	})
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
		SELECT s, g, l, i, '{"p":1}', c, h, date_trunc('second', now()) + r * interval '1 microsecond', CASE WHEN f THEN now() END
		FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::int[], $5::int[], $6::bool[], $7::bigint[], $8::bool[]) WITH ORDINALITY AS u(s, g, l, i, c, h, r, f, n)
		ORDER BY n`, sinks, gks, lsns, idxs, counts, heads, ready, failed); err != nil {
		t.Fatal(err)
	}
	// Each id's group and sink, for the claims.
	type row struct {
		id   int64
		sink int64
		g    string
	}
	var all []row
	rs, err := b.store.Pool.Query(ctx, `SELECT id, sink_id, group_key FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.sink, &r.g); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	taken := map[int64]bool{}
	for range rnd.IntN(5) {
		sink := b.sinkID
		if rnd.IntN(5) == 0 {
			sink = other
		}
		var cids []int64
		cgs := map[string]bool{}
		for _, r := range all {
			if r.sink == sink && !taken[r.id] && rnd.IntN(6) == 0 {
				taken[r.id], cgs[r.g] = true, true
				cids = append(cids, r.id)
			}
		}
		// A group named without its messages (their ack took them).
		if rnd.IntN(3) == 0 {
			cgs[groups[rnd.IntN(len(groups))]] = true
		}
		if len(cgs) == 0 {
			continue
		}
		until, lapse := "1 hour", "NULL"
		switch rnd.IntN(5) {
		case 0:
			until = "-1 hour"
		case 1:
			until, lapse = "-1 hour", "0"
		}
		if cids == nil {
			cids = []int64{}
		}
		if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
			VALUES ($1, 'x', now() + interval '%s', $2, $3, $4, %s)`, until, lapse),
			sink, rnd.IntN(len(cids)+1), cids, slices.Sorted(maps.Keys(cgs))); err != nil {
			t.Fatal(err)
		}
	}
	return ClaimRequest{SinkID: b.sinkID, BatchSize: batch, MaxAckPending: maxPending, Lease: time.Minute,
		Worker: "w", Batches: batches, Pull: rnd.IntN(4) == 0, MaxAge: time.Duration(rnd.IntN(3)) * time.Hour}, shape
}

// TestR7HeadLimit: the limit of $2 * $8 batch heads is observable, so
// claimSQL must apply it to the same heads as oldClaimHeadsJoinSQL, under
// either plan. A head past the limit never fills a batch, even when the
// heads within it leave the batch short (no room for their fresh
// messages) and it is a retry, which needs none; and a candidate whose
// group's first message is not ready is no head, so it takes no place
// within the limit. TestClaimHeadsDifferential's states rarely have more
// heads than the limit, and changes to either rule passed its 400 states.
func TestR7HeadLimit(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	generic := r7Generic(t, b, 1)
	msg := func(g string, lsn, count int, ready string) int64 {
		t.Helper()
		var id int64
		if err := b.store.Pool.QueryRow(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at)
			VALUES ($1, $2, $3, 0, '{}', $4, NULL, now() + $5::interval) RETURNING id`, b.sinkID, g, lsn, count, ready).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	r7FixedStates(t, b, generic, false, []r7Fixed{
		{"room spent, a retry head past the limit", ClaimRequest{BatchSize: 1, Batches: 2, MaxAckPending: 2}, func() string {
			a := msg("a", 1, 0, "-3 hours")
			msg("b", 1, 0, "-2 hours")
			msg("c", 1, 1, "-1 hour") // a retry: room is 2 - 1
			return fmt.Sprintf("demoted 0; batch %d/a/0; claims", a)
		}},
		{"a candidate behind a first message not ready", ClaimRequest{BatchSize: 2, Batches: 1, MaxAckPending: 10}, func() string {
			// A retry and fresh candidates: each leg of cand has a limit
			// of $2 * $8 candidates, as many as heads. The retry's window
			// holds its group's first message, not ready, and itself.
			msg("a", 1, 0, "1 hour")
			msg("a", 2, 1, "-3 hours")
			b1, d1 := msg("b", 1, 0, "-2 hours"), msg("d", 1, 0, "-1 hour")
			return fmt.Sprintf("demoted 0; batch %d/b/0 %d/d/0; claims", b1, d1)
		}},
	})
}

// r7Fixed is a fixed state for the claim: state builds it (on an empty
// outbox) and returns a prefix of the outcome the old statement must
// give, "" for any.
type r7Fixed struct {
	name  string
	req   ClaimRequest
	state func() string
}

// r7FixedStates builds each state, checks the old statement's outcome
// against its prefix (and that it took a batch, when needBatch), and
// that the old statement and claimSQL give that outcome under custom
// (b) and generic plans.
func r7FixedStates(t *testing.T, b, generic *testBundle, needBatch bool, states []r7Fixed) {
	t.Helper()
	for _, c := range states {
		if _, err := b.store.Pool.Exec(t.Context(), `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		prefix := c.state()
		req := c.req
		req.SinkID, req.Lease, req.Worker = b.sinkID, time.Minute, "w"
		want := claimOutcome(t, b, oldClaimHeadsJoinSQL, req)
		if !strings.HasPrefix(want, prefix) {
			t.Fatalf("%s: the old statement did %s, want %s...", c.name, want, prefix)
		}
		if needBatch && !strings.Contains(want, "batch") {
			t.Fatalf("%s: no batch (%s): the state tests nothing", c.name, want)
		}
		for _, bb := range []*testBundle{b, generic} {
			for _, sql := range []string{oldClaimHeadsJoinSQL, claimSQL} {
				if got := claimOutcome(t, bb, sql, req); got != want {
					t.Errorf("%s: got %s, want %s", c.name, got, want)
				}
			}
		}
		t.Logf("%s: %s", c.name, want)
	}
}
