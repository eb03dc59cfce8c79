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

	"github.com/jackc/pgx/v5"
)

// TestClaimHeadsDifferential compares claimSQL with the statement before
// it lost its nested-loop joins (oldClaimHeadsJoinSQL, below, as it
// was): on random states, both must pick the same batches, write the
// same claims rows and clear the same flags, and each batch must come
// with its own claims row. WALHOOK_CLAIM_DIFF_STATES
// sets how many states (default 400), WALHOOK_CLAIM_DIFF_SEED the first
// seed.
func TestClaimHeadsDifferential(t *testing.T) {
	states, base := 400, uint64(1)
	if n, err := strconv.Atoi(os.Getenv("WALHOOK_CLAIM_DIFF_STATES")); err == nil && n > 0 {
		states = n
	}
	if n, err := strconv.ParseUint(os.Getenv("WALHOOK_CLAIM_DIFF_SEED"), 10, 64); err == nil {
		base = n
	}
	b := setup(t)
	ctx := t.Context()
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	took := 0
	for i := range uint64(states) {
		seed := base + i
		rnd := rand.New(rand.NewPCG(seed, 43))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		status, hold := []string{"active", "active", "active", "paused"}[rnd.IntN(4)], []string{"NULL", "NULL", "now() - interval '1 hour'", "now() + interval '1 hour'"}[rnd.IntN(4)]
		if _, err := b.store.Pool.Exec(ctx, fmt.Sprintf(`UPDATE sinks SET status = '%s', hold_until = %s WHERE id = $1`, status, hold), b.sinkID); err != nil {
			t.Fatal(err)
		}
		// One base time per state: ready_at ties, which the order by
		// (ready_at, id) breaks, are common.
		var base time.Time
		if err := b.store.Pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&base); err != nil {
			t.Fatal(err)
		}
		groups := []string{"a", "b", "c", "d", "e", "f", "g", "h"}[:2+rnd.IntN(7)]
		var ids []int64
		var gs []string
		for _, sink := range []int64{b.sinkID, other} {
			for range 1 + rnd.IntN(40) {
				g := groups[rnd.IntN(len(groups))]
				var id int64
				ready := []string{"-2 hours", "-1 hour", "-1 hour", "1 hour"}[rnd.IntN(4)]
				failed := "NULL"
				if rnd.IntN(8) == 0 {
					failed = "now()"
				}
				if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
					VALUES ($1, $2, $3, $4, '{"p":1}', $5, $6, $7::timestamptz + interval '%s', %s) RETURNING id`, ready, failed),
					sink, g, rnd.IntN(5), rnd.IntN(3), []int{0, 0, 0, 1, 2}[rnd.IntN(5)], []any{nil, nil, true, false}[rnd.IntN(4)], base).Scan(&id); err != nil {
					t.Fatal(err)
				}
				if sink == b.sinkID {
					ids, gs = append(ids, id), append(gs, g)
				}
			}
		}
		b.randomClaims(t, rnd, ids, gs, rnd.IntN(4), 4)
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: 1 + rnd.IntN(6), MaxAckPending: 1 + rnd.IntN(30), Lease: time.Minute,
			Worker: "w", Batches: 1 + rnd.IntN(4), Pull: rnd.IntN(4) == 0}
		want := claimOutcome(t, b, oldClaimHeadsJoinSQL, req)
		got := claimOutcome(t, b, claimSQL, req)
		if got != want {
			t.Fatalf("seed %d (WALHOOK_CLAIM_DIFF_SEED=%d WALHOOK_CLAIM_DIFF_STATES=1), request %+v:\nold: %s\nnew: %s", seed, seed, req, want, got)
		}
		if strings.Contains(want, "batch") {
			took++
		}
	}
	if took < states/4 {
		t.Fatalf("only %d of %d states gave a batch: the states do not test the claim", took, states)
	}
	t.Logf("%d states, %d with batches", states, took)
}

// randomClaims inserts up to n claims rows of b's sink, each holding
// about one in oneIn of the messages ids (of groups gs) no row holds
// yet: live, ended, or lapsed without its attempt recorded.
func (b *testBundle) randomClaims(t *testing.T, rnd *rand.Rand, ids []int64, gs []string, n, oneIn int) {
	t.Helper()
	taken := map[int64]bool{}
	for range n {
		var cids []int64
		cgs := map[string]bool{}
		for i, id := range ids {
			if !taken[id] && rnd.IntN(oneIn) == 0 {
				taken[id], cgs[gs[i]] = true, true
				cids = append(cids, id)
			}
		}
		if len(cids) == 0 {
			continue
		}
		until, lapse := "1 hour", "NULL"
		switch rnd.IntN(5) {
		case 0:
			until = "-1 hour" // ended
		case 1:
			until, lapse = "-1 hour", "0" // lapsed, not recorded yet
		}
		if _, err := b.store.Pool.Exec(t.Context(), fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
			VALUES ($1, 'x', now() + interval '%s', $2, $3, $4, %s)`, until, lapse),
			b.sinkID, rnd.IntN(len(cids)+1), cids, slices.Sorted(maps.Keys(cgs))); err != nil {
			t.Fatal(err)
		}
	}
}

// claimOutcome runs sql as claimSQL for req in a transaction it rolls
// back, and describes what it did: the batches it returned, the claims
// rows it wrote (by their messages: claim ids are random) and the flags
// of the sink's messages after it.
func claimOutcome(t *testing.T, b *testBundle, sql string, req ClaimRequest) string {
	t.Helper()
	ctx := t.Context()
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var before []int64
	if err := tx.QueryRow(ctx, `SELECT COALESCE(array_agg(id), '{}') FROM claims`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	var c claimed
	pb := &pgx.Batch{}
	queueClaimSQL(pb, sql, req, &c)
	if err := tx.SendBatch(ctx, pb).Close(); err != nil {
		t.Fatalf("claim: %v", err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "demoted %d;", c.demoted)
	for _, bt := range c.batches {
		sb.WriteString(" batch")
		var mids []int64
		for _, m := range bt.Messages {
			fmt.Fprintf(&sb, " %d/%s/%d", m.ID, m.Group, m.DeliverCount)
			mids = append(mids, m.ID)
		}
		sb.WriteString(";")
		// Each batch comes with the id of its own claims row.
		var held []int64
		if err := tx.QueryRow(ctx, `SELECT ids FROM claims WHERE id = $1`, bt.ClaimID).Scan(&held); err != nil {
			t.Fatalf("claim %d of batch %v: %v", bt.ClaimID, mids, err)
		}
		if slices.Sort(mids); !slices.Equal(held, mids) {
			t.Fatalf("batch %v came with claim %d, which holds %v", mids, bt.ClaimID, held)
		}
	}
	rows, err := tx.Query(ctx, `SELECT format('%s fresh %s groups %s worker %s lapse %s', ids, fresh, groups, worker, lapse_max_age)
		FROM claims WHERE NOT id = ANY($1) ORDER BY ids`, before)
	if err != nil {
		t.Fatal(err)
	}
	written, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var heads string
	if err := tx.QueryRow(ctx, `SELECT string_agg(id || ':' || COALESCE(head::text, 'null'), ' ' ORDER BY id) FROM outbox`).Scan(&heads); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&sb, " claims %v; heads %s", written, heads)
	return sb.String()
}

// oldClaimHeadsJoinSQL is claimSQL as it was before it lost its
// nested-loop joins: it joined every candidate's group window (x) to the
// chosen heads, and the messages to their claims rows, which the planner
// did in nested loops. Kept as the oracle of TestClaimHeadsDifferential
// and review 7's tests.
const oldClaimHeadsJoinSQL = `
WITH t AS MATERIALIZED (
	SELECT clock_timestamp() AS now
), live AS MATERIALIZED (
	-- A pull claim whose lease ended keeps its messages from claims until
	-- ReapClaims has recorded the lapse as an attempt (lapse_max_age NULL
	-- after lapseSQL): they come back with their deliver count raised,
	-- and a lapse never fails a message another claim holds.
	SELECT fresh, ids, groups FROM claims WHERE sink_id = $1 AND (until > (SELECT now FROM t) OR lapse_max_age IS NOT NULL)
), st AS MATERIALIZED (
	SELECT s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= (SELECT now FROM t)) AS active,
		$3::int
		- (SELECT COALESCE(sum(fresh), 0) FROM live)
		-- Only whether the retries reach the limit matters: count no further.
		- (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL LIMIT $3) x) AS room
	FROM sinks s WHERE s.id = $1
), cand AS MATERIALIZED (
	-- Retries keep their flags (they are never cleared, below), so those
	-- of groups in flight are passed over here rather than fill the window.
	(SELECT o.id, o.group_key, o.ready_at, true AS retry FROM outbox o
	WHERE o.sink_id = $1 AND o.head IS NOT FALSE AND o.failed_at IS NULL AND o.deliver_count > 0 -- outbox_retry_idx
		AND o.ready_at <= (SELECT now FROM t) AND (SELECT active FROM st)
		AND o.id NOT IN (SELECT unnest(ids) FROM live) -- a hashed lookup
		AND o.group_key NOT IN (SELECT unnest(groups) FROM live)
	ORDER BY o.ready_at, o.id LIMIT $2::int * $8::int)
	UNION ALL
	(SELECT o.id, o.group_key, o.ready_at, false FROM outbox o
	WHERE o.sink_id = $1 AND o.head IS NOT FALSE AND o.failed_at IS NULL AND o.deliver_count = 0 -- outbox_ready_idx
		AND o.ready_at <= (SELECT now FROM t) AND (SELECT active AND room > 0 FROM st)
		AND o.id NOT IN (SELECT unnest(ids) FROM live)
	ORDER BY o.ready_at, o.id LIMIT $2::int * $8::int)
), x AS MATERIALIZED (
	-- Each candidate's group from its first message on, in commit order:
	-- a fair share of the batch per group (twice it, for slack), so many
	-- deep groups do not make the claim read batch² rows.
	SELECT c.id AS cid, c.group_key, c.ready_at AS cready, c.retry AS cretry, c.group_key IN (SELECT unnest(groups) FROM live) AS busy, y.*
	FROM cand c CROSS JOIN LATERAL (
		SELECT z.*, row_number() OVER (ORDER BY z.gk, z.commit_lsn, z.commit_idx, z.id) AS pos FROM (
			SELECT id, group_key AS gk, deliver_count, commit_lsn, commit_idx, ready_at <= (SELECT now FROM t) AS ready
			FROM outbox
			WHERE sink_id = $1 AND group_key >= c.group_key AND group_key <= c.group_key AND failed_at IS NULL -- see groupOrder
			ORDER BY group_key, commit_lsn, commit_idx, id
			LIMIT LEAST($2, CEIL(2.0 * $2::int * $8::int / (SELECT count(*) FROM cand))::int)
		) z
	) y
), cls AS (
	SELECT cid, group_key, cready, cretry, busy, id AS first_id, ready AS first_ready FROM x WHERE pos = 1
), demote AS (
	-- A retry keeps its flag: without room it is how a claim reaches the
	-- fresh messages before it in its group (a replay queued them), which
	-- it must take first; retries are few (max_ack_pending bounds them).
	UPDATE outbox SET head = false WHERE id = ANY (ARRAY(SELECT cid FROM cls WHERE NOT cretry AND (busy OR cid <> first_id))) RETURNING 1
), h AS (
	SELECT cid, cready, cretry FROM (
		SELECT DISTINCT ON (group_key) cid, group_key, cready, cretry FROM cls
		WHERE NOT busy AND first_ready
		ORDER BY group_key, cready, cid
	) d ORDER BY cready, cid LIMIT $2::int * $8::int
), g AS (
	SELECT x.id, x.group_key, x.deliver_count, x.commit_lsn, x.commit_idx, x.ready, h.cready AS head_ready, h.cid AS head_id, h.cretry AS head_retry
	FROM h JOIN x ON x.cid = h.cid
), q AS (
	-- Every window from here on sorts by (head_ready, head_id, commit
	-- order): a batch's groups are partitioned by (head_ready, head_id),
	-- the same partition as by head_id alone (head_ready is its head's),
	-- so that the windows share one sort instead of one each.
	--
	-- Pending: attempted before, or standing before a retry of its group:
	-- one later in the window, or the candidate itself when it is a
	-- retry, wherever it stands (the window may end before it).
	SELECT g.*, deliver_count > 0
		OR bool_or(deliver_count > 0) OVER (PARTITION BY head_ready, head_id ORDER BY commit_lsn, commit_idx, id
			ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)
		OR head_retry AND COALESCE(bool_and(id <> head_id) OVER (PARTITION BY head_ready, head_id ORDER BY commit_lsn, commit_idx, id
			ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), true) AS pending
	FROM g
), r AS (
	SELECT q.*, ready AND (pending OR sum((NOT pending)::int) OVER (ORDER BY head_ready, head_id, commit_lsn, commit_idx, id) <= (SELECT room FROM st)) AS fits
	FROM q
), fit AS (
	SELECT * FROM (
		SELECT r.*, bool_and(fits) OVER (PARTITION BY head_ready, head_id ORDER BY commit_lsn, commit_idx, id) AS prefix FROM r
	) p WHERE prefix
	ORDER BY head_ready, head_id, commit_lsn, commit_idx, id LIMIT $2::int * $8::int
), cut AS (
	-- $8 batches of at most $2 messages, in order; a group that would
	-- straddle two batches keeps only its part in the first (a prefix).
	SELECT fit.*, (row_number() OVER (ORDER BY head_ready, head_id, commit_lsn, commit_idx, id) - 1) / $2 AS bn FROM fit
), pick AS (
	SELECT * FROM (SELECT cut.*, min(bn) OVER (PARTITION BY head_ready, head_id) AS gbn FROM cut) b WHERE bn = gbn
), c AS (
	-- One claims row per batch: each is acked, nacked and fenced alone.
	INSERT INTO claims (sink_id, worker, worker_id, until, fresh, ids, groups, claimed_at, lapse_max_age)
	SELECT $1, $5, $6, (SELECT now FROM t) + make_interval(secs => $4::float8),
		count(*) FILTER (WHERE NOT pending), array_agg(id ORDER BY id), array_agg(DISTINCT group_key), (SELECT now FROM t), $7::bigint
	FROM pick GROUP BY bn
	RETURNING id, ids[1] AS first
), bf AS (
	-- Which claims row is which batch: by the batch's least id.
	SELECT bn, min(id) AS first FROM pick GROUP BY bn
)
-- Payloads are read last, for the picked messages only. One row even when
-- nothing is picked: it says how many flags were cleared.
SELECT (SELECT count(*) FROM demote), c.id, o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
FROM (SELECT 1) one
LEFT JOIN (pick JOIN bf ON bf.bn = pick.bn JOIN c ON c.first = bf.first JOIN outbox o ON o.id = pick.id) ON true
ORDER BY pick.bn, pick.head_ready, pick.head_id, pick.commit_lsn, pick.commit_idx, pick.id`
