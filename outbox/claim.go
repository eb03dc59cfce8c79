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

// claimSQL picks the groups ready longest (nothing in flight, backoff
// over), skipping groups other workers hold, then takes each group's
// messages in order. Messages already attempted (backing off) count
// against max_ack_pending already, so only fresh ones are limited by the
// room left. The result is a prefix of each group, in group order. A
// paused or holding sink (Retry-After) gets nothing.
const claimSQL = `
WITH st AS (
	SELECT s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= now()) AS active,
		$3::int
		- (SELECT COALESCE(sum(claimed_count), 0) FROM outbox_groups WHERE sink_id = $1 AND claimed_until IS NOT NULL)
		- (SELECT count(*) FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL) AS room
	FROM sinks s WHERE s.id = $1
), g AS (
	SELECT group_key, ready_at FROM outbox_groups
	WHERE sink_id = $1 AND claimed_until IS NULL AND ready_at <= now() AND COALESCE((SELECT active FROM st), false)
	ORDER BY ready_at
	LIMIT $2
	FOR UPDATE SKIP LOCKED
), m AS (
	SELECT o.id, o.group_key, o.deliver_count, g.ready_at
	FROM g CROSS JOIN LATERAL (
		SELECT id, group_key, deliver_count
		FROM outbox
		WHERE sink_id = $1 AND group_key = g.group_key AND failed_at IS NULL
		ORDER BY id
		-- A fair share of the batch per group (twice it, for slack), so
		-- many deep groups do not make the claim read batch² rows.
		LIMIT LEAST($2, CEIL(2.0 * $2 / (SELECT count(*) FROM g))::int)
	) o
), r AS (
	SELECT m.*, sum((deliver_count = 0)::int) OVER (ORDER BY ready_at, id) AS fresh FROM m
), pick AS (
	SELECT * FROM r WHERE deliver_count > 0 OR fresh <= (SELECT room FROM st) ORDER BY ready_at, id LIMIT $2
), u AS (
	UPDATE outbox_groups og
	SET claimed_until = now() + make_interval(secs => $4::float8), claimed_by = $5, claimed_count = c.fresh_n, claimed_max_id = c.max_id
	FROM (SELECT group_key, sum((deliver_count = 0)::int) AS fresh_n, max(id) AS max_id FROM pick GROUP BY group_key) c
	WHERE og.sink_id = $1 AND og.group_key = c.group_key
)
-- Payloads are read last, for the picked messages only.
SELECT o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
FROM pick JOIN outbox o ON o.id = pick.id
ORDER BY pick.ready_at, pick.id`

// claimLockSQL serializes the claims of one sink, so max_ack_pending holds
// across workers and processes. It is its own statement because a
// statement's snapshot is taken when it starts: the claim that follows
// must see the claims committed while this one waited.
const claimLockSQL = `SELECT pg_advisory_xact_lock(hashtext('walhook.claim'), $1::int)`

// Claim takes a batch for one worker: the lock and the claim go in one
// round trip, as one implicit transaction.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) ([]Message, error) {
	var msgs []Message
	err := s.batch(ctx, func(b *pgx.Batch) {
		b.Queue(claimLockSQL, req.SinkID)
		b.Queue(claimSQL, req.SinkID, req.BatchSize, req.MaxAckPending, req.Lease.Seconds(), req.Worker).Query(func(rows pgx.Rows) error {
			msgs = msgs[:0]
			for rows.Next() {
				var m Message
				if err := rows.Scan(&m.ID, &m.Group, &m.CommitLSN, &m.CommitIdx, &m.Payload, &m.DeliverCount, &m.FirstAttemptAt, &m.CreatedAt); err != nil {
					return err
				}
				msgs = append(msgs, m)
			}
			return rows.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("claim batch for sink %d: %w", req.SinkID, err)
	}
	return msgs, nil
}

func groupsOf(msgs []Message) ([]string, []int64) {
	seen := map[string]bool{}
	var groups []string
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
		if !seen[m.Group] {
			seen[m.Group] = true
			groups = append(groups, m.Group)
		}
	}
	return groups, ids
}

// lockGroupsSQL locks a batch's group rows in key order, the order capture
// uses too, so the two never deadlock. It must be its own statement, even
// for one group: the statement after it then starts with a snapshot that
// sees every capture committed before the lock was granted, so its
// "is the group now empty?" test reads the current pending count. (In one
// statement, a row judged on an older snapshot is skipped by both the
// delete and the update, and the group is stuck until its lease ends.)
const lockGroupsSQL = `SELECT 1 FROM outbox_groups WHERE sink_id = $1 AND group_key = ANY($2) ORDER BY group_key FOR UPDATE`

// Ack removes delivered messages (keeping them in the recent history),
// releases their groups and puts them at the back of the queue, so one hot
// group cannot starve the others; a group left empty is deleted. One round
// trip, one implicit transaction.
func (s *Store) Ack(ctx context.Context, sinkID int64, msgs []Message, worker string, status int) error {
	groups, ids := groupsOf(msgs)
	err := s.batch(ctx, func(b *pgx.Batch) {
		b.Queue(lockGroupsSQL, sinkID, groups)
		b.Queue(`
			WITH d AS (
				DELETE FROM outbox WHERE id = ANY($2)
				RETURNING id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count
			), h AS (
				INSERT INTO delivered (id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, last_status)
				SELECT id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count + 1, $5 FROM d
			), c AS (
				SELECT g.group_key, count(d.id) AS n FROM unnest($3::text[]) AS g(group_key)
				LEFT JOIN d ON d.group_key = g.group_key GROUP BY g.group_key
			)`+settleGroupsSQL("n", "now()")+`
			SELECT count(*) FROM c`, sinkID, ids, groups, worker, status)
	})
	if err != nil {
		return fmt.Errorf("ack %d messages of sink %d: %w", len(msgs), sinkID, err)
	}
	return nil
}

// settleGroupsSQL ends a statement whose CTE c has (group_key, <n>): the
// groups lose n pending messages and this worker's claim; a group left
// empty and unclaimed is deleted, others are updated (disjoint rows, so
// one statement does both). readyAt is when the group may be claimed
// again. $1 is the sink, $3 the groups, $4 the worker. (The explicit
// group_key = ANY($3) gives the planner the index; c's size is unknown
// to it.)
func settleGroupsSQL(n, readyAt string) string {
	empty := `og.pending - c.` + n + ` <= 0 AND (og.claimed_by = $4 OR og.claimed_until IS NULL)`
	return `, del AS (
				DELETE FROM outbox_groups og USING c
				WHERE og.sink_id = $1 AND og.group_key = ANY($3) AND og.group_key = c.group_key AND ` + empty + `
			), upd AS (
				UPDATE outbox_groups og SET pending = og.pending - c.` + n + `,
					claimed_until = CASE WHEN og.claimed_by = $4 THEN NULL ELSE og.claimed_until END,
					claimed_count = CASE WHEN og.claimed_by = $4 THEN 0 ELSE og.claimed_count END,
					claimed_max_id = CASE WHEN og.claimed_by = $4 THEN NULL ELSE og.claimed_max_id END,
					ready_at = CASE WHEN og.claimed_by = $4 THEN ` + readyAt + ` ELSE og.ready_at END,
					claimed_by = CASE WHEN og.claimed_by = $4 THEN NULL ELSE og.claimed_by END
				FROM c WHERE og.sink_id = $1 AND og.group_key = ANY($3) AND og.group_key = c.group_key AND NOT (` + empty + `)
			)`
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

// Nack records a failed attempt: the messages back off until NotBefore
// (their groups with them), or become failed once MaxAge has passed since
// their first attempt, leaving their group's queue. It returns how many
// became failed.
func (s *Store) Nack(ctx context.Context, sinkID int64, msgs []Message, worker string, f Failure) (failed int, err error) {
	groups, ids := groupsOf(msgs)
	var status *int
	if f.Status != 0 {
		status = &f.Status
	}
	err = s.batch(ctx, func(b *pgx.Batch) {
		b.Queue(lockGroupsSQL, sinkID, groups)
		b.Queue(`
			WITH o AS (
				UPDATE outbox SET deliver_count = deliver_count + 1,
					first_attempt_at = COALESCE(first_attempt_at, $5),
					last_attempt_at = $5, last_status = $6, last_error = $7, not_before = $8,
					failed_at = CASE WHEN $9::bigint > 0 AND COALESCE(first_attempt_at, $5) + make_interval(secs => $9::bigint / 1e6::float8) <= now() THEN now() END
				WHERE id = ANY($2) AND failed_at IS NULL
				RETURNING group_key, failed_at IS NOT NULL AS failed
			), c AS (
				SELECT g.group_key, count(o.group_key) FILTER (WHERE o.failed) AS nf FROM unnest($3::text[]) AS g(group_key)
				LEFT JOIN o ON o.group_key = g.group_key GROUP BY g.group_key
			)`+settleGroupsSQL("nf", "$8")+`
			SELECT COALESCE(sum(nf), 0)::int FROM c`,
			sinkID, ids, groups, worker, f.AttemptStart, status, f.Error, f.NotBefore, f.MaxAge.Microseconds()).QueryRow(func(row pgx.Row) error {
			return row.Scan(&failed)
		})
	})
	if err != nil {
		return 0, fmt.Errorf("record failed delivery of %d messages of sink %d: %w", len(msgs), sinkID, err)
	}
	return failed, nil
}

// Release gives claimed groups back untouched (shutdown before sending).
func (s *Store) Release(ctx context.Context, sinkID int64, msgs []Message, worker string) error {
	groups, _ := groupsOf(msgs)
	_, err := s.Pool.Exec(ctx, `UPDATE outbox_groups SET claimed_until = NULL, claimed_by = NULL, claimed_count = 0, claimed_max_id = NULL
		WHERE sink_id = $1 AND group_key = ANY($2) AND claimed_by = $3`, sinkID, groups, worker)
	if err != nil {
		return fmt.Errorf("release claim: %w", err)
	}
	return nil
}

// ReleaseExpired frees groups whose claim lease ran out (their worker
// died); their messages are delivered again.
func (s *Store) ReleaseExpired(ctx context.Context) (int64, error) {
	tag, err := s.Pool.Exec(ctx, `
		UPDATE outbox_groups og SET claimed_until = NULL, claimed_by = NULL, claimed_count = 0, claimed_max_id = NULL
		FROM (SELECT sink_id, group_key FROM outbox_groups WHERE claimed_until < now() FOR UPDATE SKIP LOCKED) x
		WHERE og.sink_id = x.sink_id AND og.group_key = x.group_key`)
	if err != nil {
		return 0, fmt.Errorf("release expired claims: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Hold makes a whole sink wait (a receiver's Retry-After).
func (s *Store) Hold(ctx context.Context, sinkID int64, until time.Time) error {
	_, err := s.Pool.Exec(ctx, `UPDATE sinks SET hold_until = GREATEST(COALESCE(hold_until, $2), $2) WHERE id = $1`, sinkID, until)
	if err != nil {
		return fmt.Errorf("hold sink %d: %w", sinkID, err)
	}
	return nil
}

// PruneDelivered keeps the newest keep delivered messages per sink. It
// deletes in short statements: a long one would hold back the xmin
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
	var total int64
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
