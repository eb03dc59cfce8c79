package outbox

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// enqueueWith queues messages like Enqueue, in one transaction with
// record, which writes the writer's position (a replay's progress): a
// restart then resumes exactly after what was queued, never queueing a
// message twice. When record reports false (the job was cancelled or its
// sink deleted), nothing is queued and enqueueWith reports false.
func (s *Store) enqueueWith(ctx context.Context, rows []NewMessage, record func(pgx.Tx) (bool, error)) (bool, error) {
	var kept bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if kept, err = record(tx); err != nil || !kept {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		if err := queueRows(ctx, tx, rows); err != nil {
			return err
		}
		var sinks []int64
		for _, r := range rows {
			sinks = append(sinks, r.SinkID)
		}
		slices.Sort(sinks)
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), joinIDs(slices.Compact(sinks))); err != nil {
			return fmt.Errorf("notify delivery: %w", err)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("queue %d messages: %w", len(rows), err)
	}
	return kept, nil
}

// GetRetainedWindow bounds and counts the retained changes committed in
// [from, to): their ids are in [lo, hi]; n is 0 when there are none.
func (s *Store) GetRetainedWindow(ctx context.Context, from, to time.Time) (lo, hi, n int64, err error) {
	var l, h *int64
	err = s.pool.QueryRow(ctx, `SELECT min(id), max(id), count(*) FROM retained_changes
		WHERE commit_timestamp >= $1 AND commit_timestamp < $2`, from, to).Scan(&l, &h, &n)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("bound retained changes: %w", err)
	}
	if l == nil {
		return 0, 0, 0, nil
	}
	return *l, *h, n, nil
}
