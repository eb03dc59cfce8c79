package outbox

import (
	"context"
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

// ClaimResult is a batch, or why there is none.
type ClaimResult struct {
	Messages []Message
	// Inactive: the sink is paused or holding (Retry-After).
	Inactive bool
	// Full: max_ack_pending is reached.
	Full bool
}

// claimSQL picks the groups ready longest (nothing in flight, backoff
// over), skipping groups other workers hold, then takes each group's
// messages in order. Messages already attempted (backing off) count
// against max_ack_pending already, so only fresh ones are limited by the
// room left ($3). The result is a prefix of each group, in group order.
const claimSQL = `
WITH g AS (
	SELECT group_key, ready_at FROM outbox_groups
	WHERE sink_id = $1 AND claimed_until IS NULL AND ready_at <= now()
	ORDER BY ready_at
	LIMIT $2
	FOR UPDATE SKIP LOCKED
), m AS (
	SELECT o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at, g.ready_at
	FROM g CROSS JOIN LATERAL (
		SELECT id, group_key, commit_lsn, commit_idx, payload, deliver_count, first_attempt_at, created_at
		FROM outbox
		WHERE sink_id = $1 AND group_key = g.group_key AND failed_at IS NULL
		ORDER BY id
		LIMIT $2
	) o
), r AS (
	SELECT m.*, sum((deliver_count = 0)::int) OVER (ORDER BY ready_at, id) AS fresh FROM m
), pick AS (
	SELECT * FROM r WHERE deliver_count > 0 OR fresh <= $3 ORDER BY ready_at, id LIMIT $2
), u AS (
	UPDATE outbox_groups og
	SET claimed_until = now() + make_interval(secs => $4::float8), claimed_by = $5, claimed_count = c.fresh_n, claimed_max_id = c.max_id
	FROM (SELECT group_key, sum((deliver_count = 0)::int) AS fresh_n, max(id) AS max_id FROM pick GROUP BY group_key) c
	WHERE og.sink_id = $1 AND og.group_key = c.group_key
)
SELECT id, group_key, commit_lsn, commit_idx, payload, deliver_count, first_attempt_at, created_at FROM pick ORDER BY ready_at, id`

// Claim takes a batch for one worker. Claims of one sink are serialized
// by a transaction-scoped advisory lock, so max_ack_pending holds across
// workers and processes.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (ClaimResult, error) {
	var res ClaimResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = ClaimResult{}
		var active bool
		var pending int
		// The lock is its own statement: a statement's snapshot is taken
		// when it starts, and the count must see the claims committed while
		// this one waited.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('walhook.claim'), $1::int)`, req.SinkID); err != nil {
			return fmt.Errorf("claim lock: %w", err)
		}
		err := tx.QueryRow(ctx, `
			SELECT s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= now()),
				(SELECT COALESCE(sum(claimed_count), 0) FROM outbox_groups WHERE sink_id = $1 AND claimed_until IS NOT NULL)
				+ (SELECT count(*) FROM outbox WHERE sink_id = $1 AND deliver_count > 0 AND failed_at IS NULL)
			FROM sinks s WHERE s.id = $1`, req.SinkID).Scan(&active, &pending)
		if err == pgx.ErrNoRows {
			res.Inactive = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("sink state: %w", err)
		}
		if !active {
			res.Inactive = true
			return nil
		}
		room := req.MaxAckPending - pending
		rows, err := tx.Query(ctx, claimSQL, req.SinkID, req.BatchSize, max(room, 0), req.Lease.Seconds(), req.Worker)
		if err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		for rows.Next() {
			var m Message
			if err := rows.Scan(&m.ID, &m.Group, &m.CommitLSN, &m.CommitIdx, &m.Payload, &m.DeliverCount, &m.FirstAttemptAt, &m.CreatedAt); err != nil {
				rows.Close()
				return fmt.Errorf("claim: scan: %w", err)
			}
			res.Messages = append(res.Messages, m)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		res.Full = len(res.Messages) == 0 && room <= 0
		return nil
	})
	if err != nil {
		return ClaimResult{}, fmt.Errorf("claim batch for sink %d: %w", req.SinkID, err)
	}
	return res, nil
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
// uses too, so the two never deadlock.
const lockGroupsSQL = `SELECT 1 FROM outbox_groups WHERE sink_id = $1 AND group_key = ANY($2) ORDER BY group_key FOR UPDATE`

// Ack removes delivered messages (keeping them in the recent history),
// releases their groups and puts them at the back of the queue, so one hot
// group cannot starve the others.
func (s *Store) Ack(ctx context.Context, sinkID int64, msgs []Message, worker string, status int) error {
	groups, ids := groupsOf(msgs)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(lockGroupsSQL, sinkID, groups)
		b.Queue(`
			WITH d AS (
				DELETE FROM outbox WHERE id = ANY($2)
				RETURNING id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count
			), h AS (
				INSERT INTO delivered (id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, last_status)
				SELECT id, sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count + 1, $3 FROM d
				ON CONFLICT (id) DO NOTHING
			)
			UPDATE outbox_groups og SET pending = og.pending - c.n
			FROM (SELECT group_key, count(*) AS n FROM d GROUP BY group_key) c
			WHERE og.sink_id = $1 AND og.group_key = c.group_key`, sinkID, ids, status)
		b.Queue(`UPDATE outbox_groups SET claimed_until = NULL, claimed_by = NULL, claimed_count = 0, claimed_max_id = NULL, ready_at = now()
			WHERE sink_id = $1 AND group_key = ANY($2) AND claimed_by = $3`, sinkID, groups, worker)
		b.Queue(`DELETE FROM outbox_groups WHERE sink_id = $1 AND group_key = ANY($2) AND pending <= 0 AND claimed_until IS NULL`, sinkID, groups)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("ack %d messages of sink %d: %w", len(msgs), sinkID, err)
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

// Nack records a failed attempt: the messages back off until NotBefore
// (their groups with them), or become failed once MaxAge has passed since
// their first attempt. It returns how many became failed.
func (s *Store) Nack(ctx context.Context, sinkID int64, msgs []Message, worker string, f Failure) (failed int, err error) {
	groups, ids := groupsOf(msgs)
	var status *int
	if f.Status != 0 {
		status = &f.Status
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(lockGroupsSQL, sinkID, groups)
		b.Queue(`
			WITH o AS (
				UPDATE outbox SET deliver_count = deliver_count + 1,
					first_attempt_at = COALESCE(first_attempt_at, $3),
					last_attempt_at = $3, last_status = $4, last_error = $5, not_before = $6,
					failed_at = CASE WHEN $7::bigint > 0 AND COALESCE(first_attempt_at, $3) + make_interval(secs => $7::bigint / 1e6::float8) <= now() THEN now() END
				WHERE id = ANY($2) AND failed_at IS NULL
				RETURNING group_key, failed_at IS NOT NULL AS failed
			), c AS (
				SELECT group_key, count(*) FILTER (WHERE failed) AS nf FROM o GROUP BY group_key
			), g AS (
				UPDATE outbox_groups og SET pending = og.pending - c.nf
				FROM c WHERE og.sink_id = $1 AND og.group_key = c.group_key AND c.nf > 0
			)
			SELECT COALESCE(sum(nf), 0)::int FROM c`,
			sinkID, ids, f.AttemptStart, status, f.Error, f.NotBefore, f.MaxAge.Microseconds())
		b.Queue(`UPDATE outbox_groups SET claimed_until = NULL, claimed_by = NULL, claimed_count = 0, claimed_max_id = NULL, ready_at = $3
			WHERE sink_id = $1 AND group_key = ANY($2) AND claimed_by = $4`, sinkID, groups, f.NotBefore, worker)
		b.Queue(`DELETE FROM outbox_groups WHERE sink_id = $1 AND group_key = ANY($2) AND pending <= 0 AND claimed_until IS NULL`, sinkID, groups)
		br := tx.SendBatch(ctx, b)
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
		if err := br.QueryRow().Scan(&failed); err != nil {
			br.Close()
			return err
		}
		return br.Close()
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

// PruneDelivered keeps the newest keep delivered messages per sink.
func (s *Store) PruneDelivered(ctx context.Context, keep int) (int64, error) {
	tag, err := s.Pool.Exec(ctx, `
		DELETE FROM delivered d USING (
			SELECT s.id AS sink_id, (SELECT id FROM delivered WHERE sink_id = s.id ORDER BY id DESC OFFSET $1 LIMIT 1) AS cut
			FROM sinks s
		) c
		WHERE d.sink_id = c.sink_id AND d.id <= c.cut`, keep)
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	return tag.RowsAffected(), nil
}
