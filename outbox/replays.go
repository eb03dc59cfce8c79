package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplayRow is a replay as stored; package backfill shapes it for the API
// and runs it.
type ReplayRow struct {
	ID    int64
	Sink  string
	State string
	// From and To bound the window of commit times; ToAsked is the end
	// the request gave (nil: up to the replay's creation).
	From    time.Time
	To      time.Time
	ToAsked *time.Time
	// IdempotencyKey is empty when none was given.
	IdempotencyKey string
	// Resolved says LastID and HiID bound the window's retained changes:
	// the replay has queued those up to LastID.
	Resolved         bool
	LastID           int64
	HiID             int64
	ChangesProcessed int64
	ChangesTotal     int64
	Messages         int64
	WaitingFor       string
	Error            string
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// ReplayProgress is a replay's position after a chunk, recorded in the
// transaction that queues the chunk's messages (EnqueueReplayChunk).
type ReplayProgress struct {
	ReplayID int64
	// After is the position the chunk started from, Last the id of the
	// last retained change it covers.
	After, Last int64
	// Changes are the retained changes the chunk covered.
	Changes int
	// State is the replay's state after the chunk (running or done).
	State string
}

const replaySelect = `
	SELECT r.id, s.name, r.state, r.from_time, r.to_time, r.to_asked, COALESCE(r.idempotency_key, ''), r.resolved, r.last_id, r.hi_id,
		r.changes_processed, r.changes_total, r.messages, COALESCE(r.waiting_for, ''), COALESCE(r.error, ''), r.created_at, r.updated_at
	FROM replays r JOIN sinks s ON s.id = r.sink_id`

func scanReplay(row pgx.Row) (*ReplayRow, error) {
	var r ReplayRow
	err := row.Scan(&r.ID, &r.Sink, &r.State, &r.From, &r.To, &r.ToAsked, &r.IdempotencyKey, &r.Resolved, &r.LastID, &r.HiID,
		&r.ChangesProcessed, &r.ChangesTotal, &r.Messages, &r.WaitingFor, &r.Error, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// CreateReplay stores a new running replay of a sink over [from, to) (no
// to: up to now). It loses to an existing replay with the same key, or a
// running one of the same window: ok is false then (FindReplay finds it).
func (s *Store) CreateReplay(ctx context.Context, sinkID int64, from time.Time, to *time.Time, key string) (id int64, ok bool, err error) {
	err = s.pool.QueryRow(ctx, `
		INSERT INTO replays (sink_id, from_time, to_time, to_asked, idempotency_key) VALUES ($1, $2, COALESCE($3, now()), $3, $4)
		ON CONFLICT DO NOTHING RETURNING id`, sinkID, from, to, nullIfEmpty(key)).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("insert replay: %w", err)
	}
	return id, true, nil
}

// FindReplay returns the replay of a sink that made CreateReplay lose:
// the one with the key, else a running one of the same window; an error
// wrapping ErrNotFound when there is none (it ended meanwhile).
func (s *Store) FindReplay(ctx context.Context, sinkID int64, from time.Time, to *time.Time, key string) (*ReplayRow, error) {
	r, err := scanReplay(s.pool.QueryRow(ctx, replaySelect+`
		WHERE r.sink_id = $1 AND (r.idempotency_key = $4
			OR r.state = 'running' AND r.from_time = $2 AND r.to_asked IS NOT DISTINCT FROM $3)
		ORDER BY r.idempotency_key = $4 DESC NULLS LAST, r.id DESC LIMIT 1`, sinkID, from, to, nullIfEmpty(key)))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("replay of sink %d: %w", sinkID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("find replay of sink %d: %w", sinkID, err)
	}
	return r, nil
}

// SetReplayKey gives a replay made without an idempotency key the key of
// an identical request, which it answers from then on.
func (s *Store) SetReplayKey(ctx context.Context, id int64, key string) error {
	if _, err := s.pool.Exec(ctx, `UPDATE replays SET idempotency_key = $2 WHERE id = $1 AND idempotency_key IS NULL`, id, key); err != nil {
		return fmt.Errorf("replay %d: record idempotency key: %w", id, err)
	}
	return nil
}

// ListReplays returns a sink's replays, newest first.
func (s *Store) ListReplays(ctx context.Context, sinkName string) ([]*ReplayRow, error) {
	rows, err := s.pool.Query(ctx, replaySelect+` WHERE s.name = $1 ORDER BY r.id DESC`, sinkName)
	if err != nil {
		return nil, fmt.Errorf("list replays of sink %s: %w", sinkName, err)
	}
	defer rows.Close()
	out := []*ReplayRow{}
	for rows.Next() {
		r, err := scanReplay(rows)
		if err != nil {
			return nil, fmt.Errorf("list replays of sink %s: %w", sinkName, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list replays of sink %s: %w", sinkName, err)
	}
	return out, nil
}

// GetReplay returns one replay of a sink, or an error wrapping
// ErrNotFound.
func (s *Store) GetReplay(ctx context.Context, sinkName string, id int64) (*ReplayRow, error) {
	r, err := scanReplay(s.pool.QueryRow(ctx, replaySelect+` WHERE s.name = $1 AND r.id = $2`, sinkName, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("replay %d of sink %q: %w", id, sinkName, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("replay %d of sink %q: %w", id, sinkName, err)
	}
	return r, nil
}

// GetReplayByID returns a replay whatever its sink (the runner knows only
// ids), or an error wrapping ErrNotFound (its sink was deleted).
func (s *Store) GetReplayByID(ctx context.Context, id int64) (*ReplayRow, error) {
	r, err := scanReplay(s.pool.QueryRow(ctx, replaySelect+` WHERE r.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("replay %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("replay %d: %w", id, err)
	}
	return r, nil
}

// ListRunningReplays returns the ids of the running replays, oldest
// first.
func (s *Store) ListRunningReplays(ctx context.Context) ([]int64, error) {
	return s.ids(ctx, "list running replays", `SELECT id FROM replays WHERE state = 'running' ORDER BY id`)
}

// CancelReplay marks a running replay of a sink cancelled; one that has
// ended stays as it is.
func (s *Store) CancelReplay(ctx context.Context, sinkName string, id int64) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE replays r SET state = 'cancelled', waiting_for = NULL, updated_at = now()
		FROM sinks s WHERE s.id = r.sink_id AND s.name = $1 AND r.id = $2 AND r.state = 'running'`, sinkName, id)
	if err != nil {
		return fmt.Errorf("cancel replay %d of sink %q: %w", id, sinkName, err)
	}
	return nil
}

// FailReplay marks a running replay failed with its cause.
func (s *Store) FailReplay(ctx context.Context, id int64, cause string) error {
	_, err := s.pool.Exec(ctx, `UPDATE replays SET state = 'failed', error = $2, waiting_for = NULL, updated_at = now() WHERE id = $1 AND state = 'running'`,
		id, cause)
	if err != nil {
		return fmt.Errorf("replay %d: record failure: %w", id, err)
	}
	return nil
}

// ResolveReplay records the bounds of a running replay's window (its
// retained changes have ids in (lastID, hiID], total of them) and its
// state (done when the window is empty). It reports false when the
// replay is no longer running or was resolved already.
func (s *Store) ResolveReplay(ctx context.Context, id, lastID, hiID, total int64, state string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE replays SET resolved = true, last_id = $2, hi_id = $3, changes_total = $4, state = $5, waiting_for = NULL, updated_at = now()
		WHERE id = $1 AND state = 'running' AND NOT resolved`, id, lastID, hiID, total, state)
	if err != nil {
		return false, fmt.Errorf("replay %d: record its window: %w", id, err)
	}
	return tag.RowsAffected() > 0, nil
}

// SetReplayWaiting shows what a running replay waits for. It reports
// false when the replay is no longer running.
func (s *Store) SetReplayWaiting(ctx context.Context, id int64, what string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE replays SET waiting_for = $2, updated_at = now() WHERE id = $1 AND state = 'running'`, id, what)
	if err != nil {
		return false, fmt.Errorf("replay %d: record its wait: %w", id, err)
	}
	return tag.RowsAffected() > 0, nil
}

// IsReplayRunning reports whether a replay is still running (not
// cancelled, and its sink not deleted).
func (s *Store) IsReplayRunning(ctx context.Context, id int64) (bool, error) {
	var running bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM replays WHERE id = $1 AND state = 'running')`, id).Scan(&running)
	if err != nil {
		return false, fmt.Errorf("replay %d: read state: %w", id, err)
	}
	return running, nil
}

// EnqueueReplayChunk queues a replay chunk's messages in one transaction
// with the replay's new position, guarded by the position the chunk
// started from: a restart resumes exactly after what was queued, and a
// chunk is never queued twice, even by two leaders in a hand-over. When
// the replay moved on, was cancelled or its sink deleted, nothing is
// queued and it reports false.
func (s *Store) EnqueueReplayChunk(ctx context.Context, rows []NewMessage, p ReplayProgress) (bool, error) {
	return s.enqueueWith(ctx, rows, func(tx pgx.Tx) (bool, error) {
		tag, err := tx.Exec(ctx, `UPDATE replays SET last_id = $3, changes_processed = changes_processed + $4, messages = messages + $5,
				state = $6, waiting_for = NULL, updated_at = now()
			WHERE id = $1 AND state = 'running' AND last_id = $2`, p.ReplayID, p.After, p.Last, p.Changes, len(rows), p.State)
		if err != nil {
			return false, fmt.Errorf("record progress of replay %d: %w", p.ReplayID, err)
		}
		return tag.RowsAffected() == 1, nil
	})
}

// GetCapturedEnd returns the end of the last transaction capture has
// committed for a slot (0 before the first), so a job can wait until a
// mark it wrote into the source's WAL is captured.
func (s *Store) GetCapturedEnd(ctx context.Context, slot string) (int64, error) {
	var end int64
	err := s.pool.QueryRow(ctx, `SELECT COALESCE((SELECT end_lsn FROM replication_state WHERE slot = $1), 0)`, slot).Scan(&end)
	if err != nil {
		return 0, fmt.Errorf("read the captured position of slot %s: %w", slot, err)
	}
	return end, nil
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
