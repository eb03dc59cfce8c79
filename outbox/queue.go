package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// NewMessage is a rendered message for one sink, ready to be queued.
type NewMessage struct {
	SinkID    int64
	Group     string
	CommitLSN uint64
	CommitIdx int
	Payload   []byte
}

type groupRef struct {
	sinkID int64
	group  string
}

// olderSQL finds the groups among ($1, $2) that already have a waiting
// message, and locks one of them per group FOR KEY SHARE: until this
// transaction commits, that message can be neither acked nor failed (both
// lock FOR UPDATE first), so its group cannot empty out behind the new
// messages' backs; they queue behind it, unflagged. SKIP LOCKED: when
// every waiting message of a group is taken, an ack is emptying it (or a
// nack is retrying it, rarely) and the new message is flagged head,
// which is always safe. Capture never waits here, so it cannot deadlock
// with delivery. (One probe per group: a join here lets the planner scan
// the whole outbox.)
const olderSQL = `
SELECT t.sink_id, t.group_key
FROM unnest($1::bigint[], $2::text[]) AS u(s, g)
CROSS JOIN LATERAL (
	SELECT x.sink_id, x.group_key FROM outbox x
	WHERE x.sink_id = u.s AND x.group_key = u.g AND x.failed_at IS NULL
	LIMIT 1
	FOR KEY SHARE SKIP LOCKED) t`

// queueRows writes messages into the outbox in tx, flagging the first
// message of each group that has nothing waiting yet as its head. Every
// writer of the outbox goes through here (capture, replays), so the
// flags hold whoever queues.
func queueRows(ctx context.Context, tx pgx.Tx, rows []NewMessage) error {
	if len(rows) == 0 {
		return nil
	}
	first := make(map[groupRef]int, len(rows))
	sinks := make([]int64, 0, len(rows))
	groups := make([]string, 0, len(rows))
	for i, r := range rows {
		g := groupRef{r.SinkID, r.Group}
		if _, ok := first[g]; !ok {
			first[g] = i
			sinks, groups = append(sinks, r.SinkID), append(groups, r.Group)
		}
	}
	older, err := tx.Query(ctx, olderSQL, sinks, groups)
	if err != nil {
		return fmt.Errorf("find waiting groups: %w", err)
	}
	head := make([]bool, len(rows))
	for _, i := range first {
		head[i] = true
	}
	for older.Next() {
		var g groupRef
		if err := older.Scan(&g.sinkID, &g.group); err != nil {
			older.Close()
			return fmt.Errorf("find waiting groups: %w", err)
		}
		head[first[g]] = false
	}
	if err := older.Err(); err != nil {
		return fmt.Errorf("find waiting groups: %w", err)
	}
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"sink_id", "group_key", "commit_lsn", "commit_idx", "payload", "head"},
		&rowSource{rows: rows, head: head, i: -1})
	if err != nil {
		return fmt.Errorf("copy into outbox: %w", err)
	}
	return nil
}

// rowSource feeds rows to COPY without building [][]any.
type rowSource struct {
	rows []NewMessage
	head []bool
	i    int
	vals [6]any
}

func (r *rowSource) Next() bool { r.i++; return r.i < len(r.rows) }
func (r *rowSource) Values() ([]any, error) {
	row := &r.rows[r.i]
	r.vals = [6]any{row.SinkID, row.Group, int64(row.CommitLSN), int32(row.CommitIdx), row.Payload, r.head[r.i]}
	return r.vals[:], nil
}
func (r *rowSource) Err() error { return nil }

// Enqueue queues messages in their own transaction and wakes delivery:
// for writers outside the replication stream (replays).
func (s *Store) Enqueue(ctx context.Context, rows []NewMessage) error {
	if len(rows) == 0 {
		return nil
	}
	seen := map[int64]bool{}
	var sinkIDs []int64
	for _, r := range rows {
		if !seen[r.SinkID] {
			seen[r.SinkID] = true
			sinkIDs = append(sinkIDs, r.SinkID)
		}
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := queueRows(ctx, tx, rows); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), joinIDs(sinkIDs)); err != nil {
			return fmt.Errorf("notify delivery: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue %d messages: %w", len(rows), err)
	}
	return nil
}
