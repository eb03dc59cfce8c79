package outbox

import (
	"context"
	"errors"
	"fmt"
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
	// Lease is how long the claim holds; a crashed worker's groups become
	// claimable again after it.
	Lease  time.Duration
	Worker string
}

// groupOrder: the statements that walk one group's messages in id order
// name the group as a range (group_key >= k AND group_key <= k) and sort
// by (group_key, id). With '=' and ORDER BY id, the planner may walk the
// primary key instead, filtering every row of the outbox for each group:
// it does so whenever its statistics say the outbox is nearly empty, which
// for a queue they mostly do (every vacuum sees few live rows). Only
// outbox_group_idx yields this order, and the pool disables sequential
// scans (Open), so each lookup is one index descent whatever the
// statistics.

// Batch is a claimed set of messages: its groups are the worker's until
// it acks or nacks the batch, or until the lease ends.
type Batch struct {
	ClaimID  int64
	SinkID   int64
	Messages []Message
}

// claimSQL takes the heads ready longest (backoff over, not in a live
// claim), skipping rows other transactions hold, then each head's group
// from its oldest waiting message, in order. A head with an older message
// of its group still waiting (in flight, or a spare head) yields rows that
// start before it, and its group is left alone. Messages already
// attempted (backing off) count against max_ack_pending already, so only
// fresh ones are limited by the room left. The result is a prefix of each
// group, groups one after the other, recorded as one claims row. A paused
// or holding sink (Retry-After) gets nothing.
const claimSQL = `
WITH live AS MATERIALIZED (
	SELECT fresh, ids FROM claims WHERE sink_id = $1 AND until > now()
), st AS (
	SELECT s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= now()) AS active,
		$3::int
		- (SELECT COALESCE(sum(fresh), 0) FROM live)
		- (SELECT count(*) FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL) AS room
	FROM sinks s WHERE s.id = $1
), h AS (
	SELECT o.id, o.group_key, o.ready_at FROM outbox o
	WHERE o.sink_id = $1 AND o.head AND o.failed_at IS NULL AND o.ready_at <= now()
		AND COALESCE((SELECT active FROM st), false)
		AND o.id NOT IN (SELECT unnest(ids) FROM live) -- a hashed lookup
	ORDER BY o.ready_at, o.id
	LIMIT $2
	FOR NO KEY UPDATE OF o SKIP LOCKED
), g AS (
	SELECT x.id, x.group_key, x.deliver_count, h.ready_at, h.id AS head_id, min(x.id) OVER (PARTITION BY h.id) AS first_id
	FROM h CROSS JOIN LATERAL (
		SELECT id, group_key, deliver_count
		FROM outbox
		WHERE sink_id = $1 AND group_key >= h.group_key AND group_key <= h.group_key AND failed_at IS NULL -- see groupOrder
		ORDER BY group_key, id
		-- A fair share of the batch per group (twice it, for slack), so
		-- many deep groups do not make the claim read batch² rows.
		LIMIT LEAST($2, CEIL(2.0 * $2 / (SELECT count(*) FROM h))::int)
	) x
), r AS (
	SELECT g.*, sum((deliver_count = 0)::int) OVER (ORDER BY ready_at, head_id, id) AS fresh FROM g WHERE first_id = head_id
), pick AS (
	SELECT * FROM r WHERE deliver_count > 0 OR fresh <= (SELECT room FROM st) ORDER BY ready_at, head_id, id LIMIT $2
), c AS (
	INSERT INTO claims (sink_id, worker, until, fresh, ids)
	SELECT $1, $5, now() + make_interval(secs => $4::float8), count(*) FILTER (WHERE deliver_count = 0), array_agg(id)
	FROM pick HAVING count(*) > 0
	RETURNING id
)
-- Payloads are read last, for the picked messages only.
SELECT (SELECT id FROM c), o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
FROM pick JOIN outbox o ON o.id = pick.id
ORDER BY pick.ready_at, pick.head_id, pick.id`

// claimLockSQL serializes the claims of one sink (and redeliveries), so
// max_ack_pending and the one-claim-per-group rule hold across workers and
// processes. It is
// its own statement because a statement's snapshot is taken when it
// starts: the claim that follows must see the claims committed while this
// one waited.
const claimLockSQL = `SELECT pg_advisory_xact_lock(hashtext('walhook.claim'), $1::int)`

// Claim takes a batch for one worker: the lock and the claim go in one
// round trip, as one implicit transaction. It returns nil when there is
// nothing to take.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (*Batch, error) {
	var b *Batch
	err := s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(claimLockSQL, req.SinkID)
		pb.Queue(claimSQL, req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker).Query(func(rows pgx.Rows) error {
			b = nil
			for rows.Next() {
				var m Message
				var claim int64
				if err := rows.Scan(&claim, &m.ID, &m.Group, &m.CommitLSN, &m.CommitIdx, &m.Payload, &m.DeliverCount, &m.FirstAttemptAt, &m.CreatedAt); err != nil {
					return err
				}
				if b == nil {
					b = &Batch{ClaimID: claim, SinkID: req.SinkID}
				}
				b.Messages = append(b.Messages, m)
			}
			return rows.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("claim batch for sink %d: %w", req.SinkID, err)
	}
	return b, nil
}

func (b *Batch) idsAndGroups() ([]int64, []string) {
	seen := map[string]bool{}
	var groups []string
	ids := make([]int64, len(b.Messages))
	for i, m := range b.Messages {
		ids[i] = m.ID
		if !seen[m.Group] {
			seen[m.Group] = true
			groups = append(groups, m.Group)
		}
	}
	return ids, groups
}

// lockSQL locks a batch's messages before a nack changes them. It must be
// its own statement: it waits for a capture that relies on one of them
// (olderSQL) to commit, and the statements after it then start with a
// snapshot that shows what that capture queued behind them. (An ack needs
// no such statement: its DELETE waits the same way, and its promoteSQL
// comes after.)
const lockSQL = `SELECT 1 FROM outbox WHERE id = ANY($1) ORDER BY id FOR UPDATE`

// promoteSQL flags the oldest waiting message of each of the groups $2 of
// sink $1 as head, once the messages before it are gone or failed. (An
// id list, so the update is index lookups whatever the planner thinks.)
const promoteSQL = `
UPDATE outbox SET head = true
WHERE id = ANY (ARRAY(
	SELECT t.id FROM unnest($2::text[]) AS g(k)
	CROSS JOIN LATERAL (
		SELECT x.id FROM outbox x WHERE x.sink_id = $1 AND x.group_key >= g.k AND x.group_key <= g.k AND x.failed_at IS NULL
		ORDER BY x.group_key, x.id LIMIT 1) t)) -- see groupOrder
AND NOT head`

// Ack removes delivered messages, ends the claim and hands each group on
// to its next message. One round trip, one implicit transaction. The
// recent-delivery history is written apart (RecordDelivered), off this
// path.
func (s *Store) Ack(ctx context.Context, b *Batch) error {
	ids, groups := b.idsAndGroups()
	err := s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(`WITH d AS (DELETE FROM outbox WHERE id = ANY($1)) DELETE FROM claims WHERE id = $2`, ids, b.ClaimID)
		pb.Queue(promoteSQL, b.SinkID, groups)
	})
	if err != nil {
		return fmt.Errorf("ack %d messages of sink %d: %w", len(b.Messages), b.SinkID, err)
	}
	return nil
}

// Delivered is one acknowledged message for the recent-delivery history.
type Delivered struct {
	SinkID       int64
	Message      Message
	DeliverCount int32
	Status       int
	At           time.Time
}

// RecordDelivered appends to the recent-delivery history, a debugging aid
// trimmed by PruneDelivered; it is not part of the delivery guarantee.
// Rows of sinks deleted meanwhile are dropped.
func (s *Store) RecordDelivered(ctx context.Context, rows []Delivered) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	ids, sinks, lsns := make([]int64, n), make([]int64, n), make([]int64, n)
	idxs, counts, statuses := make([]int32, n), make([]int32, n), make([]int32, n)
	groups, payloads, ats := make([]string, n), make([]string, n), make([]time.Time, n)
	for i, r := range rows {
		ids[i], sinks[i], lsns[i] = r.Message.ID, r.SinkID, r.Message.CommitLSN
		idxs[i], counts[i], statuses[i] = r.Message.CommitIdx, r.DeliverCount, int32(r.Status)
		groups[i], payloads[i], ats[i] = r.Message.Group, string(r.Message.Payload), r.At
	}
	_, err := s.Pool.Exec(ctx, `
		INSERT INTO delivered (id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, last_status, delivered_at)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::int[], $8::int[], $9::timestamptz[]) AS u(i, s)
		WHERE EXISTS (SELECT 1 FROM sinks WHERE id = u.s)`,
		ids, sinks, groups, lsns, idxs, payloads, counts, statuses, ats)
	if err != nil {
		return fmt.Errorf("record %d delivered messages: %w", n, err)
	}
	return nil
}

// Failure describes a failed delivery attempt.
type Failure struct {
	AttemptStart time.Time
	Status       int // 0 when there was no response
	Error        string
	NotBefore    time.Time
	// MaxAge, when set, fails messages first attempted longer ago.
	MaxAge time.Duration
}

// Nack records a failed attempt and ends the claim: the messages back off
// until NotBefore (their groups with them), or become failed once MaxAge
// has passed since their first attempt, leaving their group's queue to
// the messages behind them. It returns how many became failed.
func (s *Store) Nack(ctx context.Context, b *Batch, f Failure) (failed int, err error) {
	ids, groups := b.idsAndGroups()
	var status *int
	if f.Status != 0 {
		status = &f.Status
	}
	err = s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(lockSQL, ids)
		pb.Queue(`
			WITH o AS (
				UPDATE outbox SET deliver_count = deliver_count + 1,
					first_attempt_at = COALESCE(first_attempt_at, $3),
					last_attempt_at = $3, last_status = $4, last_error = $5, not_before = $6, ready_at = $6,
					failed_at = CASE WHEN $7::bigint > 0 AND COALESCE(first_attempt_at, $3) + make_interval(secs => $7::bigint / 1e6::float8) <= now() THEN now() END
				WHERE id = ANY($1) AND failed_at IS NULL
				RETURNING failed_at IS NOT NULL AS failed
			), c AS (
				DELETE FROM claims WHERE id = $2
			)
			SELECT count(*) FILTER (WHERE failed)::int FROM o`,
			ids, b.ClaimID, f.AttemptStart, status, f.Error, f.NotBefore, f.MaxAge.Microseconds()).QueryRow(func(row pgx.Row) error {
			return row.Scan(&failed)
		})
		pb.Queue(promoteSQL, b.SinkID, groups)
	})
	if err != nil {
		return 0, fmt.Errorf("record failed delivery of %d messages of sink %d: %w", len(b.Messages), b.SinkID, err)
	}
	return failed, nil
}

// ReleaseExpired deletes claims whose lease ran out (their worker died).
// Their groups are claimable again from the moment the lease ended; this
// only keeps the claims table small.
func (s *Store) ReleaseExpired(ctx context.Context) (int64, error) {
	tag, err := s.Pool.Exec(ctx, `DELETE FROM claims WHERE until < now()`)
	if err != nil {
		return 0, fmt.Errorf("release expired claims: %w", err)
	}
	return tag.RowsAffected(), nil
}

// queueTables are the tables every delivered message churns: a row in,
// a row out. Their dead rows must be vacuumed within seconds, not at
// autovacuum's next visit (autovacuum_naptime, a minute by default),
// or they grow by everything delivered in between.
var queueTables = []string{"outbox", "claims", "delivered"}

// VacuumQueues vacuums the queue tables that hold at least minDead dead
// rows, and at least as many dead rows as live ones (a vacuum reads the
// whole table: while a backlog drains, once per backlog is enough),
// skipping any another process (or autovacuum) is vacuuming now. It
// returns the tables it vacuumed.
func (s *Store) VacuumQueues(ctx context.Context, minDead int64) ([]string, error) {
	rows, err := s.Pool.Query(ctx, `SELECT relname FROM pg_stat_user_tables
		WHERE schemaname = current_schema() AND relname = ANY($1) AND n_dead_tup >= $2 AND n_dead_tup >= n_live_tup`, queueTables, minDead)
	if err != nil {
		return nil, fmt.Errorf("vacuum queue tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("vacuum queue tables: %w", err)
	}
	for _, t := range tables {
		// VACUUM cannot run in a transaction: the simple protocol sends
		// it alone. No truncation: see migration 00003.
		if _, err := s.Pool.Exec(ctx, `VACUUM (SKIP_LOCKED, TRUNCATE false, INDEX_CLEANUP on) `+pgx.Identifier{t}.Sanitize(), pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	return tables, nil
}

// Hold makes a whole sink wait (a receiver's Retry-After).
func (s *Store) Hold(ctx context.Context, sinkID int64, until time.Time) error {
	_, err := s.Pool.Exec(ctx, `UPDATE sinks SET hold_until = GREATEST(COALESCE(hold_until, $2), $2) WHERE id = $1`, sinkID, until)
	if err != nil {
		return fmt.Errorf("hold sink %d: %w", sinkID, err)
	}
	return nil
}

// PruneDelivered keeps the newest keep delivered messages per sink, and
// none of sinks that no longer exist. It deletes in short statements: a long one would hold back the xmin
// horizon, and every queue table here depends on vacuum keeping up.
func (s *Store) PruneDelivered(ctx context.Context, keep int) (int64, error) {
	rows, err := s.Pool.Query(ctx, `SELECT id FROM sinks`)
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	sinkIDs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	tag, err := s.Pool.Exec(ctx, `DELETE FROM delivered d WHERE NOT EXISTS (SELECT 1 FROM sinks s WHERE s.id = d.sink_id)`)
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	total := tag.RowsAffected()
	for _, id := range sinkIDs {
		var cut int64
		err := s.Pool.QueryRow(ctx, `SELECT id FROM delivered WHERE sink_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1`, id, keep).Scan(&cut)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return total, fmt.Errorf("prune delivered history of sink %d: %w", id, err)
		}
		for {
			tag, err := s.Pool.Exec(ctx, `DELETE FROM delivered WHERE ctid = ANY (ARRAY(
				SELECT ctid FROM delivered WHERE sink_id = $1 AND id <= $2 LIMIT 10000))`, id, cut)
			if err != nil {
				return total, fmt.Errorf("prune delivered history of sink %d: %w", id, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < 10000 {
				break
			}
		}
	}
	return total, nil
}
