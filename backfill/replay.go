package backfill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/sink"
)

// replayChunk is how many retained changes one replay transaction
// enqueues: big windows go in pieces, each committed (and announced to
// delivery) on its own, so none holds locks or memory for long.
const replayChunk = 5000

// ReplayRequest is the body of POST /api/sinks/{name}/replays: the window
// [from, to) of commit times; no to means up to now.
type ReplayRequest struct {
	From time.Time  `json:"from"`
	To   *time.Time `json:"to,omitempty"`
}

// ReplayResult is what a replay enqueued.
type ReplayResult struct {
	Sink string     `json:"sink"`
	From time.Time  `json:"from"`
	To   *time.Time `json:"to,omitempty"`
	// Changes is how many retained changes the window holds; Messages how
	// many of them the sink took (its tables, actions and filters).
	Changes  int64 `json:"changes"`
	Messages int64 `json:"messages"`
}

// Replay enqueues again, for one sink, the retained changes committed in
// [from, to) (to zero: up to now), in their original commit order and
// with their original commit_lsn and commit_idx, hence idempotency keys.
// The sink's current settings decide which changes it takes and how they
// render. Errors wrap outbox.ErrNotFound (no such sink) or ErrInvalid.
func Replay(ctx context.Context, store *outbox.Store, sinkName string, from, to time.Time) (*ReplayResult, error) {
	s, err := store.Sink(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	if from.IsZero() {
		return nil, fmt.Errorf("%w: replay needs a from time", ErrInvalid)
	}
	res := &ReplayResult{Sink: s.Name, From: from}
	var upper *time.Time
	if !to.IsZero() {
		if !to.After(from) {
			return nil, fmt.Errorf("%w: replay window: to (%s) must be after from (%s)", ErrInvalid, to.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano))
		}
		upper = &to
		res.To = upper
	}
	router := sink.NewRouter([]*sink.Sink{s.Sink})

	lo, hi, ok, err := store.RetainedRange(ctx, from, upper)
	if err != nil {
		return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
	}
	if !ok {
		return res, nil
	}
	rels := map[string]*sink.Relation{}
	last := lo - 1
	for {
		var chunk []outbox.NewMessage
		var arena []byte
		lastID, n, err := store.RetainedChanges(ctx, last, hi, from, upper, replayChunk, rels, func(ch *sink.Change) {
			for _, rt := range router.ForTable(ch.Rel.Schema, ch.Rel.Table) {
				if !rt.Match(ch) {
					continue
				}
				arena = rt.Render(arena[:0], ch)
				chunk = append(chunk, outbox.NewMessage{SinkID: rt.Sink.ID, Group: rt.GroupKey(ch), CommitLSN: ch.CommitLSN, CommitIdx: ch.CommitIdx, Payload: slices.Clone(arena)})
			}
		})
		if err != nil {
			return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
		}
		if n == 0 {
			return res, nil
		}
		res.Changes += int64(n)
		if err := store.Enqueue(ctx, chunk); err != nil {
			return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
		}
		res.Messages += int64(len(chunk))
		last = lastID
		if n < replayChunk {
			return res, nil
		}
	}
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
