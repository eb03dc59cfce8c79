package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The states of an outbox message as the API shows them. They are derived,
// not stored: in flight means named by a live claims row.
const (
	StatePending    = "pending"     // never attempted, waiting its turn
	StateInFlight   = "in_flight"   // part of a claimed batch
	StateBackingOff = "backing_off" // attempted, failed, waiting to retry
	StateFailed     = "failed"      // passed retry.max_age; kept until redelivered
	StateDelivered  = "delivered"   // acknowledged; from the bounded history
)

// States lists the message states in the order a message moves through
// them, for validation and help texts.
var States = []string{StatePending, StateInFlight, StateBackingOff, StateFailed, StateDelivered}

// MessageRow is one message of a sink as the API shows it.
type MessageRow struct {
	ID             int64
	Group          string
	State          string
	DeliverCount   int32
	LastError      *string
	LastStatus     *int32
	NotBefore      *time.Time
	CommitLSN      int64
	CommitIdx      int32
	Payload        []byte
	CreatedAt      *time.Time
	FirstAttemptAt *time.Time
	LastAttemptAt  *time.Time
	FailedAt       *time.Time
	DeliveredAt    *time.Time
}

// MessageQuery selects messages of one sink.
type MessageQuery struct {
	SinkID int64
	// State is one of States, or "" for every message still in the outbox.
	State string
	// After pages: only messages with a greater id (smaller for delivered,
	// which lists newest first).
	After int64
	Limit int
}

// inFlightSQL: a live claim names outbox row o. liveClaimedSQL lists the
// messages live claims of sink $1 name.
const (
	inFlightSQL    = `EXISTS (SELECT 1 FROM claims c WHERE c.sink_id = o.sink_id AND c.until > clock_timestamp() AND o.id = ANY(c.ids))`
	liveClaimedSQL = `SELECT unnest(ids) FROM claims WHERE sink_id = $1 AND until > clock_timestamp()`
)

// messageStateSQL is the derived state of an outbox row o.
const messageStateSQL = `CASE
	WHEN o.failed_at IS NOT NULL THEN 'failed'
	WHEN ` + inFlightSQL + ` THEN 'in_flight'
	WHEN o.deliver_count > 0 THEN 'backing_off'
	ELSE 'pending' END`

const outboxMessageSelect = `
	SELECT o.id, o.group_key, ` + messageStateSQL + `, o.deliver_count, o.last_error, o.last_status, o.not_before,
		o.commit_lsn, o.commit_idx, o.payload, o.created_at, o.first_attempt_at, o.last_attempt_at, o.failed_at, NULL::timestamptz
	FROM outbox o`

const deliveredMessageSelect = `
	SELECT d.id, d.group_key, 'delivered', d.deliver_count, NULL::text, d.last_status, NULL::timestamptz,
		d.commit_lsn, d.commit_idx, d.payload, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, d.delivered_at
	FROM delivered d`

func scanMessage(row pgx.Row) (*MessageRow, error) {
	var m MessageRow
	err := row.Scan(&m.ID, &m.Group, &m.State, &m.DeliverCount, &m.LastError, &m.LastStatus, &m.NotBefore,
		&m.CommitLSN, &m.CommitIdx, &m.Payload, &m.CreatedAt, &m.FirstAttemptAt, &m.LastAttemptAt, &m.FailedAt, &m.DeliveredAt)
	return &m, err
}

// ListMessages lists a sink's messages: outbox states oldest first (the
// order they will be delivered in), delivered ones newest first.
func (s *Store) ListMessages(ctx context.Context, q MessageQuery) ([]*MessageRow, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	var sql string
	args := []any{q.SinkID, q.After, q.Limit}
	switch q.State {
	case StateDelivered:
		sql = deliveredMessageSelect + ` WHERE d.sink_id = $1 AND ($2::bigint = 0 OR d.id < $2::bigint) ORDER BY d.id DESC LIMIT $3`
	case "":
		sql = outboxMessageSelect + ` WHERE o.sink_id = $1 AND o.id > $2 ORDER BY o.id LIMIT $3`
	case StatePending, StateInFlight, StateBackingOff, StateFailed:
		// The plain predicates let the partial indexes help; the derived
		// state decides.
		pre := map[string]string{
			StatePending:    `o.deliver_count = 0 AND o.failed_at IS NULL`,
			StateInFlight:   `o.id IN (` + liveClaimedSQL + `)`,
			StateBackingOff: `o.deliver_count > 0 AND o.failed_at IS NULL`,
			StateFailed:     `o.failed_at IS NOT NULL`,
		}[q.State]
		sql = outboxMessageSelect + ` WHERE o.sink_id = $1 AND o.id > $2 AND ` + pre +
			` AND ` + messageStateSQL + ` = $4 ORDER BY o.id LIMIT $3`
		args = append(args, q.State)
	default:
		return nil, fmt.Errorf("list messages: unknown state %q", q.State)
	}
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
	}
	defer rows.Close()
	out := []*MessageRow{}
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
	}
	return out, nil
}

// GetMessage returns one message of a sink from the outbox or, once
// delivered, from the history; ErrNotFound when it is in neither.
func (s *Store) GetMessage(ctx context.Context, sinkID, id int64) (*MessageRow, error) {
	m, err := scanMessage(s.pool.QueryRow(ctx, outboxMessageSelect+` WHERE o.sink_id = $1 AND o.id = $2
		UNION ALL `+deliveredMessageSelect+` WHERE d.sink_id = $1 AND d.id = $2 LIMIT 1`, sinkID, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("message %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return m, nil
}

// Redeliver makes failed and backing-off messages of a sink deliverable
// now: failed ones rejoin their group's queue (first attempt forgotten,
// so max_age counts afresh), backing-off ones lose their wait, and a
// Retry-After hold on the sink ends. ids restricts it to some messages;
// nil means every one. It returns how many messages it changed.
func (s *Store) Redeliver(ctx context.Context, sinkID int64, ids []int64) (int, error) {
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		n = 0
		// Under the claim lock (doc.go, rule L): a batch in flight keeps
		// its backoff, its outcome decides.
		if _, err := tx.Exec(ctx, claimLockSQL, sinkID); err != nil {
			return fmt.Errorf("lock claims: %w", err)
		}
		// Backing-off first: revived messages would match it too.
		hurried, err := tx.Exec(ctx, `
			UPDATE outbox o SET not_before = NULL, ready_at = LEAST(o.ready_at, now())
			WHERE o.sink_id = $1 AND o.failed_at IS NULL AND o.deliver_count > 0 AND ($2::bigint[] IS NULL OR o.id = ANY($2))
				AND NOT `+inFlightSQL, sinkID, ids)
		if err != nil {
			return fmt.Errorf("clear backoff: %w", err)
		}
		// A revived message is queued unsorted (rule Q): it may now be
		// its group's first, and a claim sorts it out.
		revived, err := tx.Exec(ctx, `
			UPDATE outbox o SET failed_at = NULL, first_attempt_at = NULL, not_before = NULL, ready_at = now(), head = NULL
			WHERE o.sink_id = $1 AND o.failed_at IS NOT NULL AND ($2::bigint[] IS NULL OR o.id = ANY($2))`, sinkID, ids)
		if err != nil {
			return fmt.Errorf("revive failed messages: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE sinks SET hold_until = NULL WHERE id = $1 AND hold_until IS NOT NULL`, sinkID); err != nil {
			return fmt.Errorf("end hold: %w", err)
		}
		n = int(revived.RowsAffected() + hurried.RowsAffected())
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(sinkID)); err != nil {
			return fmt.Errorf("notify: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redeliver messages of sink %d: %w", sinkID, err)
	}
	return n, nil
}

// Counts are a sink's messages by state. Delivered counts the bounded
// recent history, not every message ever delivered.
type Counts struct {
	Pending, InFlight, BackingOff, Failed, Delivered int64
}

// countsSQL derives the states the way messageStateSQL does, but counts
// through the partial indexes so the cost follows the small states
// (in flight, retrying, failed) except for one count of the backlog.
const countsSQL = `
SELECT s.id,
	COALESCE(o.unfailed, 0), COALESCE(o.failed, 0), COALESCE(o.retrying, 0),
	COALESCE(f.in_flight, 0), COALESCE(f.in_flight_retrying, 0), COALESCE(d.delivered, 0)
FROM sinks s
LEFT JOIN (
	SELECT sink_id, count(*) FILTER (WHERE failed_at IS NULL) AS unfailed,
		count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
		count(*) FILTER (WHERE deliver_count > 0 AND failed_at IS NULL) AS retrying
	FROM outbox WHERE $1::bigint IS NULL OR sink_id = $1 GROUP BY sink_id
) o ON o.sink_id = s.id
LEFT JOIN (
	SELECT c.sink_id, count(*) AS in_flight, count(*) FILTER (WHERE o.deliver_count > 0) AS in_flight_retrying
	FROM claims c CROSS JOIN LATERAL unnest(c.ids) AS i(id)
	JOIN outbox o ON o.id = i.id AND o.failed_at IS NULL
	WHERE c.until > clock_timestamp() AND ($1::bigint IS NULL OR c.sink_id = $1)
	GROUP BY c.sink_id
) f ON f.sink_id = s.id
LEFT JOIN (
	SELECT sink_id, count(*) AS delivered FROM delivered WHERE $1::bigint IS NULL OR sink_id = $1 GROUP BY sink_id
) d ON d.sink_id = s.id
WHERE $1::bigint IS NULL OR s.id = $1`

// CountSinkMessages returns message counts per sink id; sinkID 0 means every
// sink.
func (s *Store) CountSinkMessages(ctx context.Context, sinkID int64) (map[int64]Counts, error) {
	var arg *int64
	if sinkID != 0 {
		arg = &sinkID
	}
	rows, err := s.pool.Query(ctx, countsSQL, arg)
	if err != nil {
		return nil, fmt.Errorf("count messages: %w", err)
	}
	defer rows.Close()
	out := map[int64]Counts{}
	for rows.Next() {
		var id, unfailed, failed, retrying, inFlight, inFlightRetrying, delivered int64
		if err := rows.Scan(&id, &unfailed, &failed, &retrying, &inFlight, &inFlightRetrying, &delivered); err != nil {
			return nil, fmt.Errorf("count messages: %w", err)
		}
		backingOff := retrying - inFlightRetrying
		out[id] = Counts{
			Pending:    max(unfailed-inFlight-backingOff, 0),
			InFlight:   inFlight,
			BackingOff: max(backingOff, 0),
			Failed:     failed,
			Delivered:  delivered,
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count messages: %w", err)
	}
	return out, nil
}

// CountWaitingMessages counts a sink's waiting (not failed) messages, up
// to limit: the count costs at most limit index entries, so a job that
// only needs to know whether the backlog passed a bound stays cheap.
func (s *Store) CountWaitingMessages(ctx context.Context, sinkID int64, limit int) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sink_id = $1 AND failed_at IS NULL LIMIT $2) x`,
		sinkID, limit).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count the backlog of sink %d: %w", sinkID, err)
	}
	return n, nil
}

// GetOldestWaiting returns, per sink id with messages waiting (failed ones
// excluded), how long ago its oldest one was queued, measured on the
// state database's clock.
func (s *Store) GetOldestWaiting(ctx context.Context) (map[int64]time.Duration, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT sink_id, EXTRACT(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE failed_at IS NULL GROUP BY sink_id`)
	if err != nil {
		return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
	}
	defer rows.Close()
	out := map[int64]time.Duration{}
	for rows.Next() {
		var id int64
		var secs float64
		if err := rows.Scan(&id, &secs); err != nil {
			return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
		}
		out[id] = time.Duration(max(secs, 0) * float64(time.Second))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
	}
	return out, nil
}
