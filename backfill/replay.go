package backfill

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/outbox"
)

// replayChunk is how many retained changes one replay transaction
// enqueues: big windows go in pieces, each committed (and announced to
// delivery) on its own with the replay's new position, so none holds
// locks or memory for long and a restart resumes after the last one.
const replayChunk = 5000

// ReplayRequest is the body of POST /api/sinks/{name}/replays: the window
// [from, to) of commit times; no to means up to the replay's creation.
type ReplayRequest struct {
	From time.Time  `json:"from"`
	To   *time.Time `json:"to,omitempty"`
}

// Replay is a replay job as the API shows it. ChangesTotal is known once
// the leader has started it (0 before); ChangesProcessed counts the
// window's retained changes done so far, Messages those the sink took
// (its tables, actions and filters).
type Replay struct {
	ID               int64     `json:"id"`
	Sink             string    `json:"sink"`
	State            string    `json:"state"`
	From             time.Time `json:"from"`
	To               time.Time `json:"to"`
	ChangesProcessed int64     `json:"changes_processed"`
	ChangesTotal     int64     `json:"changes_total"`
	Messages         int64     `json:"messages"`
	// WaitingFor says what a running replay waits for: WaitCapture or
	// WaitBacklog (a paused sink holds it there); empty when it works.
	WaitingFor     string    `json:"waiting_for,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Error          string    `json:"error,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`

	toAsked  *time.Time
	resolved bool
	lastID   int64
	hiID     int64
}

const selectReplay = `
	SELECT r.id, s.name, r.state, r.from_time, r.to_time, r.to_asked, COALESCE(r.idempotency_key, ''), r.resolved, r.last_id, r.hi_id,
		r.changes_processed, r.changes_total, r.messages, COALESCE(r.waiting_for, ''), COALESCE(r.error, ''), r.created_at, r.updated_at
	FROM replays r JOIN sinks s ON s.id = r.sink_id`

func scanReplay(row pgx.Row) (*Replay, error) {
	var r Replay
	err := row.Scan(&r.ID, &r.Sink, &r.State, &r.From, &r.To, &r.toAsked, &r.IdempotencyKey, &r.resolved, &r.lastID, &r.hiID,
		&r.ChangesProcessed, &r.ChangesTotal, &r.Messages, &r.WaitingFor, &r.Error, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// What a running replay may wait for (Replay.WaitingFor).
const (
	// WaitCapture: the stream has not yet captured every change committed
	// before the window's end; the window is bounded once it has.
	WaitCapture = "capture"
	// WaitBacklog: the sink has too many messages waiting for another
	// chunk.
	WaitBacklog = "backlog"
)

// ErrKeyReused marks an Idempotency-Key already used for a different
// replay window of the sink. The API answers it with 409.
var ErrKeyReused = errors.New("idempotency key reused")

// CreateReplay starts a replay of the retained changes committed in
// [from, to) (no to: up to now), in their original commit order and with
// their original commit_lsn and commit_idx, hence idempotency keys; the
// sink's current settings decide which changes it takes and how they
// render. A retried request does not queue the window twice: with the
// same key (the Idempotency-Key header) it gets the replay that key made,
// and a request identical to a running replay gets that one. created
// says whether a new replay was made. Errors wrap outbox.ErrNotFound (no
// such sink), ErrInvalid or ErrKeyReused.
func CreateReplay(ctx context.Context, store *outbox.Store, sinkName string, req ReplayRequest, key string) (r *Replay, created bool, err error) {
	s, err := store.Sink(ctx, sinkName)
	if err != nil {
		return nil, false, err
	}
	if req.From.IsZero() {
		return nil, false, fmt.Errorf("%w: replay needs a from time", ErrInvalid)
	}
	if req.To != nil && !req.To.After(req.From) {
		return nil, false, fmt.Errorf("%w: replay window: to (%s) must be after from (%s)", ErrInvalid,
			req.To.Format(time.RFC3339Nano), req.From.Format(time.RFC3339Nano))
	}
	var keyArg *string
	if key != "" {
		keyArg = &key
	}
	// The insert loses to an existing replay with the key or an identical
	// running one; that replay may end between the two statements, so
	// the pair is tried again.
	for range 3 {
		var id int64
		err := store.Pool.QueryRow(ctx, `
			INSERT INTO replays (sink_id, from_time, to_time, to_asked, idempotency_key) VALUES ($1, $2, COALESCE($3, now()), $3, $4)
			ON CONFLICT DO NOTHING RETURNING id`, s.ID, req.From, req.To, keyArg).Scan(&id)
		if err == nil {
			r, err := GetReplay(ctx, store, sinkName, id)
			return r, true, err
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, false, fmt.Errorf("create replay for sink %s: %w", s.Name, err)
		}
		r, err := scanReplay(store.Pool.QueryRow(ctx, selectReplay+`
			WHERE r.sink_id = $1 AND (r.idempotency_key = $4
				OR r.state = 'running' AND r.from_time = $2 AND r.to_asked IS NOT DISTINCT FROM $3)
			ORDER BY r.idempotency_key = $4 DESC NULLS LAST, r.id DESC LIMIT 1`, s.ID, req.From, req.To, keyArg))
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("create replay for sink %s: %w", s.Name, err)
		}
		if key != "" && r.IdempotencyKey == key && (!r.From.Equal(req.From) || !sameTime(r.toAsked, req.To)) {
			return nil, false, fmt.Errorf("%w: replay %d of sink %s was made with this Idempotency-Key for another window", ErrKeyReused, r.ID, s.Name)
		}
		if key != "" && r.IdempotencyKey == "" {
			// The identical running replay answers this key from now on,
			// also once it has ended.
			if _, err := store.Pool.Exec(ctx, `UPDATE replays SET idempotency_key = $2 WHERE id = $1 AND idempotency_key IS NULL`, r.ID, key); err != nil {
				return nil, false, fmt.Errorf("replay %d of sink %s: record idempotency key: %w", r.ID, s.Name, err)
			}
			r.IdempotencyKey = key
		}
		return r, false, nil
	}
	return nil, false, fmt.Errorf("create replay for sink %s: replays of the same window kept starting and ending; try again", s.Name)
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// ListReplays returns a sink's replays, newest first.
func ListReplays(ctx context.Context, store *outbox.Store, sinkName string) ([]*Replay, error) {
	if _, err := store.Sink(ctx, sinkName); err != nil {
		return nil, err
	}
	rows, err := store.Pool.Query(ctx, selectReplay+` WHERE s.name = $1 ORDER BY r.id DESC`, sinkName)
	if err != nil {
		return nil, fmt.Errorf("list replays of sink %s: %w", sinkName, err)
	}
	defer rows.Close()
	out := []*Replay{}
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
// outbox.ErrNotFound.
func GetReplay(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Replay, error) {
	r, err := scanReplay(store.Pool.QueryRow(ctx, selectReplay+` WHERE s.name = $1 AND r.id = $2`, sinkName, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("replay %d of sink %q: %w", id, sinkName, outbox.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("replay %d of sink %q: %w", id, sinkName, err)
	}
	return r, nil
}

// CancelReplay stops a running replay after the chunk being written;
// what was queued stays queued. Cancelling a replay that has ended
// changes nothing. It returns the replay as it is now.
func CancelReplay(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Replay, error) {
	_, err := store.Pool.Exec(ctx, `
		UPDATE replays r SET state = 'cancelled', waiting_for = NULL, updated_at = now()
		FROM sinks s WHERE s.id = r.sink_id AND s.name = $1 AND r.id = $2 AND r.state = 'running'`, sinkName, id)
	if err != nil {
		return nil, fmt.Errorf("cancel replay %d of sink %q: %w", id, sinkName, err)
	}
	return GetReplay(ctx, store, sinkName, id)
}

// pruneBatch is how many retained changes one DELETE removes: small
// enough that no statement holds its locks for long.
const pruneBatch = 5000

// Prune deletes retained changes committed more than keep ago, in small
// batches. It returns how many it deleted.
func Prune(ctx context.Context, store *outbox.Store, keep time.Duration) (int64, error) {
	if keep <= 0 {
		return 0, nil
	}
	var total int64
	for {
		n, err := store.PruneRetained(ctx, keep, pruneBatch)
		if err != nil {
			return total, err
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil { // let others at the table between batches
			return total, err
		}
	}
}

// pruneLoop prunes retained changes on the leader, every tenth of keep
// (between a second and a minute).
func (r *Runner) pruneLoop(ctx context.Context) {
	every := min(max(r.cfg.RetentionKeep/10, time.Second), time.Minute)
	for {
		n, err := Prune(ctx, r.cfg.Store, r.cfg.RetentionKeep)
		switch {
		case err != nil && ctx.Err() == nil:
			r.cfg.Log.Error().Err(err).Msg("prune retained changes")
		case n > 0:
			r.cfg.Log.Debug().Int64("deleted", n).Msg("pruned retained changes")
		}
		if sleep(ctx, every) != nil {
			return
		}
	}
}

// ParseTime reads a replay bound: RFC 3339, or a duration ago ("2h" is
// two hours ago), for the CLI.
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, errors.New("want an RFC 3339 time (2024-03-20T15:30:00Z) or a duration ago (90m)")
}
