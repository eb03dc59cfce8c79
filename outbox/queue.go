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

// queueRows writes messages into the outbox in tx. Every writer of the
// outbox goes through here (capture, backfill pages, replays), so the
// head flags hold whoever queues (doc.go, rule Q): the first message of
// each group in the chunk, in commit order, is queued unsorted (head
// NULL: it may be its group's first), the others behind it (false). They
// commit together, so no one can see the later ones without the first.
// Queueing reads nothing and locks nothing: it cannot wait for, or
// deadlock with, delivery.
func queueRows(ctx context.Context, tx pgx.Tx, rows []NewMessage) error {
	if len(rows) == 0 {
		return nil
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"sink_id", "group_key", "commit_lsn", "commit_idx", "payload", "head"},
		&rowSource{rows: rows, head: heads(rows), i: -1})
	if err != nil {
		return fmt.Errorf("copy into outbox: %w", err)
	}
	return nil
}

// heads is each row's head flag as queued: false for a row behind another
// of its group among rows (no claim needs to look at it), else NULL.
func heads(rows []NewMessage) []*bool {
	first := make(map[groupRef]int, len(rows))
	for i, r := range rows {
		g := groupRef{r.SinkID, r.Group}
		if j, ok := first[g]; !ok || r.before(&rows[j]) {
			first[g] = i
		}
	}
	head := make([]*bool, len(rows))
	behind := false
	for i := range rows {
		if first[groupRef{rows[i].SinkID, rows[i].Group}] != i {
			head[i] = &behind
		}
	}
	return head
}

// insertSQL is queueRows as one statement, for a batch (a small flush).
const insertSQL = `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::int[], $5::text[], $6::bool[])`

// queueInsert queues rows into b as queueRows copies them.
func queueInsert(b *pgx.Batch, rows []NewMessage) {
	if len(rows) == 0 {
		return
	}
	sinks, groups, lsns := make([]int64, len(rows)), make([]string, len(rows)), make([]int64, len(rows))
	idxs, payloads := make([]int32, len(rows)), make([]string, len(rows))
	for i, r := range rows {
		sinks[i], groups[i], lsns[i], idxs[i], payloads[i] = r.SinkID, r.Group, int64(r.CommitLSN), int32(r.CommitIdx), string(r.Payload)
	}
	b.Queue(insertSQL, sinks, groups, lsns, idxs, payloads, heads(rows))
}

// before reports whether m comes before o in commit order.
func (m *NewMessage) before(o *NewMessage) bool {
	return m.CommitLSN < o.CommitLSN || m.CommitLSN == o.CommitLSN && m.CommitIdx < o.CommitIdx
}

// rowSource feeds rows to COPY without building [][]any.
type rowSource struct {
	rows []NewMessage
	head []*bool
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
