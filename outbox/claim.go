package outbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Message is an outbox row claimed for delivery.
type Message struct {
	ID             int64
	Group          string
	CommitLSN      int64
	CommitIdx      int32
	Payload        []byte
	DeliverCount   int32
	FirstAttemptAt *time.Time
	CreatedAt      time.Time
}

// ClaimRequest says what a worker may take.
type ClaimRequest struct {
	SinkID        int64
	BatchSize     int
	MaxAckPending int
	// Lease is how long the claim holds, from the moment it is made, on
	// the server's clock. A worker that outlives it has lost the batch:
	// its ack or nack changes nothing.
	Lease time.Duration
	// Worker names the claimant for operators; WorkerID ties the claim to
	// a registered worker (RegisterWorker), whose death revokes it at
	// once. Zero: the claim lives out its lease.
	Worker   string
	WorkerID int64
	// Pull marks a pull consumer's claim (a receive): a lease that ends
	// without an ack or nack counts as a failed attempt, since the
	// consumer had the messages, and MaxAge (the sink's retry.max_age, 0
	// = forever) then fails them as a nack would (lapseSQL). Push claims
	// end without counting: their worker either reports an outcome or
	// died, and a delivery that never happened is no attempt.
	Pull   bool
	MaxAge time.Duration
	// Batches is how many batches of up to BatchSize one claim may take
	// (ClaimBatches; 0 means 1): a process claims for all its idle
	// workers in one turn of the claim lock. Each batch is a claim of its
	// own, acked, nacked and fenced alone.
	Batches int
}

// groupOrder: the statements that walk one group's messages in commit
// order name the group as a range (group_key >= k AND group_key <= k) and
// sort by (group_key, commit_lsn, commit_idx, id). With '=' the planner
// may walk another index, filtering every row of the outbox for each
// group: it does so whenever its statistics say the outbox is nearly
// empty, which for a queue they mostly do. Only outbox_group_idx yields
// this order, and the pool disables sequential scans (Open), so each
// lookup is one index descent whatever the statistics.

// Batch is a claimed set of messages: its groups are the worker's until
// it acks or nacks the batch, or until the claim ends (lease, revocation).
type Batch struct {
	ClaimID  int64
	SinkID   int64
	Messages []Message
}

// claimLockSQL is the sink's claim lock (doc.go, rule L): claims, acks,
// nacks, redeliveries and reaping of one sink take it, so each sees the
// committed result of the one before. It is its own statement because a
// statement's snapshot is taken when it starts: the statements that follow
// must see what was committed while this one waited.
const claimLockSQL = `SELECT pg_advisory_xact_lock(hashtext('walhook.claim'), $1::int)`

// claimLockPlanSQL is claimLockSQL for claims, acks and nacks. It also
// has the statements after it run on their generic plans, planned once
// per connection rather than at every execution (their plans do not
// depend on the values, and planning the claim costs about as much as
// running it), and commits them without waiting for the WAL flush (doc.go,
// "Durability"): the lock is then held for no disk write. No bitmap
// scans: a plain index scan marks the entries of deleted rows dead as it
// passes them, and the next one skips them; a bitmap scan never does, so
// each claim would visit every claims row acked since the last vacuum.
const claimLockPlanSQL = `SELECT pg_advisory_xact_lock(hashtext('walhook.claim'), $1::int),
	set_config('plan_cache_mode', 'force_generic_plan', true), set_config('synchronous_commit', 'off', true),
	set_config('enable_bitmapscan', 'off', true)`

// firstOfGroupSQL is the oldest unfailed message of group %s of sink $1,
// in commit order (see groupOrder). %s is an expression naming the group.
const firstOfGroupSQL = `(SELECT x.id FROM outbox x
	WHERE x.sink_id = $1 AND x.group_key >= %[1]s AND x.group_key <= %[1]s AND x.failed_at IS NULL
	ORDER BY x.group_key, x.commit_lsn, x.commit_idx, x.id LIMIT 1)`

// claimSQL (rule C): candidates are unclaimed messages whose head flag is
// not false and whose wait is over, oldest ready first: retries from
// their own index, and fresh messages only while max_ack_pending leaves
// room (so neither a full sink nor a deep backlog makes a claim read more
// than a window of each). A candidate whose group no live claim names
// starts a batch at its group's first message, if that one is ready: the
// group from there on, in commit order, up to its first message still
// backing off, a fair share of the batch per group. Every fresh candidate
// that is not its group's first, or whose group is in a live claim, has
// its flag cleared, so no candidate is looked at twice in vain (retries
// keep theirs: see demote). Messages
// already attempted count against max_ack_pending already, and so do
// fresh ones that stand before a retry in their group (the retry cannot
// go without them); other fresh ones are limited by the room left, and a
// group is only ever cut after a prefix. The batch is recorded as one
// claims row whose lease starts now on the server's clock. A paused or
// holding sink (Retry-After) gets nothing.
var claimSQL = `
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
), cls AS MATERIALIZED (
	-- Each candidate's group's first message, in commit order (see
	-- groupOrder).
	SELECT c.id AS cid, c.group_key, c.ready_at AS cready, c.retry AS cretry, c.group_key IN (SELECT unnest(groups) FROM live) AS busy,
		f.id AS first_id, f.ready_at <= (SELECT now FROM t) AS first_ready
	FROM cand c CROSS JOIN LATERAL (
		SELECT id, ready_at FROM outbox
		WHERE sink_id = $1 AND group_key >= c.group_key AND group_key <= c.group_key AND failed_at IS NULL
		ORDER BY group_key, commit_lsn, commit_idx, id LIMIT 1
	) f
), demote AS (
	-- A retry keeps its flag: without room it is how a claim reaches the
	-- fresh messages before it in its group (a replay queued them), which
	-- it must take first; retries are few (max_ack_pending bounds them).
	UPDATE outbox SET head = false WHERE id = ANY (ARRAY(SELECT cid FROM cls WHERE NOT cretry AND (busy OR cid <> first_id))) RETURNING 1
), h AS (
	SELECT cid, group_key, cready, cretry FROM (
		SELECT DISTINCT ON (group_key) cid, group_key, cready, cretry FROM cls
		WHERE NOT busy AND first_ready
		ORDER BY group_key, cready, cid
	) d ORDER BY cready, cid LIMIT $2::int * $8::int
), g AS (
	-- Each head's group from its first message on, in commit order: a
	-- fair share of the batch per group (twice it, for slack), so many
	-- deep groups do not make the claim read batch² rows. Read for the
	-- heads only, after they are chosen: the group's first message is
	-- read twice, but no join (which the planner, expecting a row or two
	-- of each CTE, runs as a nested loop, quadratic in the candidates)
	-- brings the heads and their groups together.
	SELECT y.id, h.group_key, y.deliver_count, y.commit_lsn, y.commit_idx, y.ready, h.cready AS head_ready, h.cid AS head_id, h.cretry AS head_retry
	FROM h CROSS JOIN LATERAL (
		SELECT id, deliver_count, commit_lsn, commit_idx, ready_at <= (SELECT now FROM t) AS ready
		FROM outbox
		WHERE sink_id = $1 AND group_key >= h.group_key AND group_key <= h.group_key AND failed_at IS NULL -- see groupOrder
		ORDER BY group_key, commit_lsn, commit_idx, id
		LIMIT LEAST($2, CEIL(2.0 * $2::int * $8::int / (SELECT count(*) FROM cand))::int)
	) y
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
), pf AS (
	-- Which claims row is which batch, without a join (the planner nests
	-- joins of CTEs in loops, a cost quadratic in the batches): batches
	-- ranked by their least id, as cm ranks the claims rows by ids[1].
	SELECT p.*, dense_rank() OVER (ORDER BY first) AS fr FROM (SELECT pick.*, min(id) OVER (PARTITION BY bn) AS first FROM pick) p
), cm AS (
	SELECT array_agg(id ORDER BY first) AS cids FROM c
)
-- Payloads are read last, for the picked messages only, each by its id
-- (a lateral the planner cannot flatten: as a join, a plan made while
-- the outbox looked empty scanned all of outbox_pkey for each message).
-- One row even when nothing is picked: it says how many flags were
-- cleared.
SELECT (SELECT count(*) FROM demote), (SELECT cids FROM cm)[pf.fr], o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
FROM (SELECT 1) one
LEFT JOIN (pf CROSS JOIN LATERAL (
	SELECT id, group_key, commit_lsn, commit_idx, payload, deliver_count, first_attempt_at, created_at FROM outbox WHERE id = pf.id LIMIT 1
) o) ON true
ORDER BY pf.bn, pf.head_ready, pf.head_id, pf.commit_lsn, pf.commit_idx, pf.id`

// Claim takes one batch for one worker (ClaimBatches with Batches 1).
// It returns nil when there is nothing to take.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (*Batch, error) {
	req.Batches = 1
	bs, err := s.ClaimBatches(ctx, req)
	if err != nil || len(bs) == 0 {
		return nil, err
	}
	return bs[0], nil
}

// ClaimBatches takes up to req.Batches batches, for as many workers: the
// claim lock and the claim go in one round trip, as one implicit
// transaction. Claims that ended without an outcome are not live for it;
// ReapClaims ends them for good. It returns no batches when there is
// nothing to take.
func (s *Store) ClaimBatches(ctx context.Context, req ClaimRequest) ([]*Batch, error) {
	for {
		var c claimed
		err := s.batch(ctx, func(pb *pgx.Batch) {
			pb.Queue(claimLockPlanSQL, req.SinkID)
			s.queueClaim(pb, req, &c)
		})
		if err == nil && c.demoted == freshMissed {
			s.freshMiss(req.SinkID)
			err = s.batch(ctx, func(pb *pgx.Batch) {
				pb.Queue(claimLockPlanSQL, req.SinkID)
				queueClaimSQL(pb, claimSQL, req, &c)
			})
		}
		if err != nil {
			return nil, fmt.Errorf("claim batches for sink %d: %w", req.SinkID, err)
		}
		// Candidates that were behind others took the places of ones that
		// may be claimable: look again, past them.
		if len(c.batches) > 0 || c.demoted == 0 {
			return c.batches, nil
		}
	}
}

// claimed is what one claim statement took: its batches, and how many
// candidates it found behind others (cleared flags).
type claimed struct {
	batches []*Batch
	demoted int64
}

// queueClaim queues a claim for req into a pipeline that holds the
// sink's claim lock already, reading its result into c: claimFreshSQL,
// unless it recently did not apply for the sink (a sink with hot groups
// would run it in vain before every claim), then claimSQL. c.demoted is
// freshMissed when claimFreshSQL did not apply: the caller notes it
// (freshMiss) and runs claimSQL.
func (s *Store) queueClaim(pb *pgx.Batch, req ClaimRequest, c *claimed) {
	if skips := s.freshSkipsOf(req.SinkID); skips.Load() > 0 {
		skips.Add(-1)
		queueClaimSQL(pb, claimSQL, req, c)
		return
	}
	queueClaimSQL(pb, claimFreshSQL, req, c)
}

// freshMissed is claimFreshSQL's answer when it does not apply.
const freshMissed = -1

// freshSkipsAfterMiss is how many claims of a sink go straight to
// claimSQL after claimFreshSQL did not apply.
const freshSkipsAfterMiss = 16

// freshMiss notes that claimFreshSQL did not apply for the sink.
func (s *Store) freshMiss(sinkID int64) { s.freshSkipsOf(sinkID).Store(freshSkipsAfterMiss) }

func (s *Store) freshSkipsOf(sinkID int64) *atomic.Int32 {
	v, ok := s.freshSkips.Load(sinkID) // no allocation per claim once it exists
	if !ok {
		v, _ = s.freshSkips.LoadOrStore(sinkID, new(atomic.Int32))
	}
	return v.(*atomic.Int32)
}

// queueClaimSQL is queueClaim with another statement of claimSQL's
// parameters and results: a differential test's oracle.
func queueClaimSQL(pb *pgx.Batch, sql string, req ClaimRequest, c *claimed) {
	var workerID, lapse *int64
	if req.WorkerID != 0 {
		workerID = &req.WorkerID
	}
	if req.Pull {
		us := max(req.MaxAge.Microseconds(), 0)
		lapse = &us
	}
	pb.Queue(sql, req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker, workerID, lapse, max(req.Batches, 1)).Query(func(rows pgx.Rows) error {
		*c = claimed{}
		var b *Batch
		for rows.Next() {
			var claim, id *int64
			var m Message
			var lsn *int64
			var idx, count *int32
			var group *string
			var created *time.Time
			if err := rows.Scan(&c.demoted, &claim, &id, &group, &lsn, &idx, &m.Payload, &count, &m.FirstAttemptAt, &created); err != nil {
				return err
			}
			if id == nil {
				continue
			}
			m.ID, m.Group, m.CommitLSN, m.CommitIdx, m.DeliverCount, m.CreatedAt = *id, *group, *lsn, *idx, *count, *created
			if b == nil || b.ClaimID != *claim {
				b = &Batch{ClaimID: *claim, SinkID: req.SinkID}
				c.batches = append(c.batches, b)
			}
			b.Messages = append(b.Messages, m)
		}
		return rows.Err()
	})
}

func (b *Batch) groups() []string {
	seen := map[string]bool{}
	var groups []string
	for _, m := range b.Messages {
		if !seen[m.Group] {
			seen[m.Group] = true
			groups = append(groups, m.Group)
		}
	}
	return groups
}
