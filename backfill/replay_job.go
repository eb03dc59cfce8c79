package backfill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/sink"
)

// replayLoop runs the running replays on the leader, each in its own
// goroutine (one waiting for its sink's backlog must not hold up the
// others), for as long as the term lasts. A replay whose run failed for a
// passing reason waits a little before it runs again; one that cannot
// succeed is marked failed.
func (r *Runner) replayLoop(ctx context.Context, source *pgxpool.Pool) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	active := map[int64]bool{}
	retryAt := map[int64]time.Time{}
	failures := map[int64]int{}
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		ids, err := runningReplays(ctx, r.cfg.Store)
		if err != nil && ctx.Err() == nil {
			r.cfg.Log.Error().Err(err).Msg("list running replays")
		}
		mu.Lock()
		for _, id := range ids {
			if active[id] || time.Now().Before(retryAt[id]) {
				continue
			}
			active[id] = true
			wg.Go(func() {
				err := r.runReplay(ctx, source, id)
				failed := err != nil && ctx.Err() == nil && permanent(err)
				if failed {
					r.cfg.Log.Error().Err(err).Int64("replay", id).Msg("replay failed")
					if ferr := r.cfg.Store.FailReplay(ctx, id, err.Error()); ferr != nil {
						r.cfg.Log.Error().Err(ferr).Int64("replay", id).Msg("record the replay's failure")
					}
				}
				mu.Lock()
				defer mu.Unlock()
				delete(active, id)
				if err == nil || failed || ctx.Err() != nil {
					delete(failures, id)
					delete(retryAt, id)
					return
				}
				failures[id]++
				wait := min(time.Duration(failures[id])*5*time.Second, time.Minute)
				retryAt[id] = time.Now().Add(wait)
				r.cfg.Log.Error().Err(err).Int64("replay", id).Dur("retry_in", wait).Msg("replay interrupted; it resumes after its last chunk")
			})
		}
		mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func runningReplays(ctx context.Context, store *outbox.Store) ([]int64, error) {
	return store.ListRunningReplays(ctx)
}

// runReplay runs one replay from its recorded position until it is done
// or no longer running. Each chunk's messages and the new position are
// one transaction, guarded by the position it started from, so a chunk
// is never queued twice, even by two leaders in a hand-over.
func (r *Runner) runReplay(ctx context.Context, source *pgxpool.Pool, id int64) error {
	store := r.cfg.Store
	row, err := store.GetReplayByID(ctx, id)
	if errors.Is(err, outbox.ErrNotFound) {
		return nil // its sink was deleted
	}
	if err != nil {
		return err
	}
	rp := replayFromRow(row)
	if rp.State != Running {
		return nil
	}
	s, err := store.GetSink(ctx, rp.Sink)
	if errors.Is(err, outbox.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	log := r.cfg.Log.With().Int64("replay", id).Str("sink", rp.Sink).Logger()
	if !rp.resolved {
		if stopped, err := r.waitCaptured(ctx, source, id); err != nil || stopped {
			return err
		}
		lo, hi, n, err := store.GetRetainedWindow(ctx, rp.From, rp.To)
		if err != nil {
			return fmt.Errorf("replay %d: %w", id, err)
		}
		rp.lastID, rp.hiID, rp.ChangesTotal = lo-1, hi, n
		state := Running
		if n == 0 {
			state = Done
		}
		ok, err := store.ResolveReplay(ctx, id, rp.lastID, rp.hiID, n, state)
		if err != nil {
			return err
		}
		if !ok || n == 0 {
			return nil
		}
		log.Info().Int64("changes", n).Time("from", rp.From).Time("to", rp.To).Msg("replay running")
	}
	router := sink.NewRouter([]*sink.Sink{s.Sink})
	rels := map[string]*sink.Relation{}
	bound := min(100_000, max(2*replayChunk, 100*s.Config.BatchSize))
	for rp.lastID < rp.hiID {
		if stopped, err := r.waitReplayBacklog(ctx, id, s.ID, bound); err != nil || stopped {
			return err
		}
		var chunk []outbox.NewMessage
		var arena []byte
		last, n, err := store.ReadRetainedChanges(ctx, rp.lastID, rp.hiID, rp.From, &rp.To, replayChunk, rels, func(ch *sink.Change) {
			for _, rt := range router.ForTable(ch.Rel.Schema, ch.Rel.Table) {
				if !rt.Match(ch) {
					continue
				}
				arena = rt.Render(arena[:0], ch)
				chunk = append(chunk, outbox.NewMessage{SinkID: rt.Sink.ID, Group: rt.GroupKey(ch), CommitLSN: ch.CommitLSN, CommitIdx: ch.CommitIdx, Payload: slices.Clone(arena)})
			}
		})
		if err != nil {
			return fmt.Errorf("replay %d: %w", id, err)
		}
		if n < replayChunk {
			last = rp.hiID // nothing more in the window
		}
		state := Running
		if last >= rp.hiID {
			state = Done
		}
		kept, err := store.EnqueueReplayChunk(ctx, chunk, outbox.ReplayProgress{ReplayID: id, After: rp.lastID, Last: last, Changes: n, State: state})
		if err != nil {
			return fmt.Errorf("replay %d: %w", id, err)
		}
		if !kept {
			return nil // cancelled, or its sink deleted
		}
		rp.lastID = last
		rp.ChangesProcessed += int64(n)
		rp.Messages += int64(len(chunk))
	}
	log.Info().Int64("changes", rp.ChangesProcessed).Int64("messages", rp.Messages).Msg("replay done")
	return nil
}

// waitReplayBacklog holds a replay while its sink has more than bound
// messages waiting, as backfills do, so a large window never floods the
// outbox. stopped reports that the replay is no longer running.
func (r *Runner) waitReplayBacklog(ctx context.Context, id, sinkID int64, bound int) (stopped bool, err error) {
	return r.replayWait(ctx, id, WaitBacklog, 200*time.Millisecond, func() (bool, error) {
		n, err := r.cfg.Store.CountWaitingMessages(ctx, sinkID, bound-replayChunk+1)
		return n+replayChunk <= bound, err
	})
}

// replayWait polls ready every so often until it holds, showing meanwhile
// that the replay waits for what. stopped reports that the replay is no
// longer running (cancelled, its sink deleted).
func (r *Runner) replayWait(ctx context.Context, id int64, what string, every time.Duration, ready func() (bool, error)) (stopped bool, err error) {
	for waiting := false; ; waiting = true {
		ok, err := ready()
		if err != nil {
			return false, fmt.Errorf("replay %d: wait for %s: %w", id, what, err)
		}
		if ok {
			return false, nil
		}
		if !waiting {
			running, err := r.cfg.Store.SetReplayWaiting(ctx, id, what)
			if err != nil {
				return false, err
			}
			if !running {
				return true, nil
			}
		} else {
			running, err := r.cfg.Store.IsReplayRunning(ctx, id)
			if err != nil || !running {
				return err == nil, err
			}
		}
		if err := sleep(ctx, every); err != nil {
			return false, err
		}
	}
}

// replayMarkPrefix marks the source's WAL when a replay is about to bound
// its window (capture ignores logical messages of other prefixes).
const replayMarkPrefix = "walhook.replay"

// waitCaptured returns once the stream has captured every change committed
// before now, hence before the replay's window ends (to is at most its
// creation): a change committed but not yet captured would otherwise be
// left out of the window. It writes a logical message into the source's
// WAL and waits until the durable stream position passes it; the replay
// shows it waits for capture meanwhile. stopped reports that the replay
// is no longer running.
func (r *Runner) waitCaptured(ctx context.Context, source *pgxpool.Pool, id int64) (stopped bool, err error) {
	if r.cfg.Slot == "" {
		return false, fmt.Errorf("%w: replay %d: the runner has no replication slot to wait for", ErrInvalid, id)
	}
	var mark int64
	err = source.QueryRow(ctx, `SELECT (pg_logical_emit_message(true, $1::text, $2::text) - '0/0'::pg_lsn)::bigint`,
		replayMarkPrefix, fmt.Sprint(id)).Scan(&mark)
	if err != nil {
		return false, fmt.Errorf("replay %d: mark the source's WAL: %w", id, err)
	}
	return r.replayWait(ctx, id, WaitCapture, 100*time.Millisecond, func() (bool, error) {
		end, err := r.cfg.Store.GetCapturedEnd(ctx, r.cfg.Slot)
		return end > mark, err
	})
}
