package backfill

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

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

// replayFromRow shapes a stored replay for the API.
func replayFromRow(r *outbox.ReplayRow) *Replay {
	return &Replay{
		ID: r.ID, Sink: r.Sink, State: r.State, From: r.From, To: r.To,
		ChangesProcessed: r.ChangesProcessed, ChangesTotal: r.ChangesTotal, Messages: r.Messages,
		WaitingFor: r.WaitingFor, IdempotencyKey: r.IdempotencyKey, Error: r.Error, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		toAsked: r.ToAsked, resolved: r.Resolved, lastID: r.LastID, hiID: r.HiID,
	}
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
	s, err := store.GetSink(ctx, sinkName)
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
	// The insert loses to an existing replay with the key or an identical
	// running one; that replay may end between the two statements, so
	// the pair is tried again.
	for range 3 {
		id, ok, err := store.CreateReplay(ctx, s.ID, req.From, req.To, key)
		if err != nil {
			return nil, false, fmt.Errorf("create replay for sink %s: %w", s.Name, err)
		}
		if ok {
			r, err := GetReplay(ctx, store, sinkName, id)
			return r, true, err
		}
		row, err := store.FindReplay(ctx, s.ID, req.From, req.To, key)
		if errors.Is(err, outbox.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("create replay for sink %s: %w", s.Name, err)
		}
		r := replayFromRow(row)
		if key != "" && r.IdempotencyKey == key && (!r.From.Equal(req.From) || !sameTime(r.toAsked, req.To)) {
			return nil, false, fmt.Errorf("%w: replay %d of sink %s was made with this Idempotency-Key for another window", ErrKeyReused, r.ID, s.Name)
		}
		if key != "" && r.IdempotencyKey == "" {
			// The identical running replay answers this key from now on,
			// also once it has ended.
			if err := store.SetReplayKey(ctx, r.ID, key); err != nil {
				return nil, false, fmt.Errorf("sink %s: %w", s.Name, err)
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
	if _, err := store.GetSink(ctx, sinkName); err != nil {
		return nil, err
	}
	rows, err := store.ListReplays(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	out := make([]*Replay, len(rows))
	for i, r := range rows {
		out[i] = replayFromRow(r)
	}
	return out, nil
}

// GetReplay returns one replay of a sink, or an error wrapping
// outbox.ErrNotFound.
func GetReplay(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Replay, error) {
	r, err := store.GetReplay(ctx, sinkName, id)
	if err != nil {
		return nil, err
	}
	return replayFromRow(r), nil
}

// CancelReplay stops a running replay after the chunk being written;
// what was queued stays queued. Cancelling a replay that has ended
// changes nothing. It returns the replay as it is now.
func CancelReplay(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Replay, error) {
	if err := store.CancelReplay(ctx, sinkName, id); err != nil {
		return nil, err
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
