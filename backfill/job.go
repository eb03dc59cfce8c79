package backfill

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/replication"
)

// job is one run of one backfill.
type job struct {
	r      *Runner
	source *pgxpool.Pool
	b      *Backfill
	log    zerolog.Logger

	pageSize int
	maxPage  int
	bound    int
	// backlog estimates the sink's waiting messages: the last count plus
	// what was written since, so the (bounded) count runs only near the
	// bound.
	backlog int
	counted bool
	// lastFlushed is closed once the last page is committed; lastWritten
	// is its message count.
	lastFlushed chan struct{}
	lastWritten int
	// written are the pages handed over to capture and not yet known to
	// be committed, oldest first: pages are read while earlier ones are
	// written, up to maxWriting of them.
	written []*outbox.Page
	// reach is how long the stream took to reach the last page's high
	// watermark; paced counts the pages after which the backfill yielded.
	reach    time.Duration
	paced    int
	lastLogs time.Time
}

func (j *job) fail(ctx context.Context, cause error) error {
	return j.r.cfg.Store.FailBackfill(ctx, j.b.ID, cause.Error())
}

func (j *job) run(ctx context.Context) error {
	store := j.r.cfg.Store
	s, err := store.GetSink(ctx, j.b.Sink)
	if errors.Is(err, outbox.ErrNotFound) {
		return errStopped
	}
	if err != nil {
		return err
	}
	j.bound = j.r.cfg.MaxBacklog
	if j.bound <= 0 {
		j.bound = min(100_000, max(2*j.r.cfg.MaxPage, 100*s.Config.BatchSize))
	}
	// A page must fit in half the bound, or the backfill would wait for
	// the backlog to drain entirely before each page.
	j.maxPage = max(min(j.r.cfg.MaxPage, j.bound/2), 1)
	j.pageSize = min(j.pageSize, j.maxPage)
	if !j.b.resolved {
		tables, total, err := resolve(ctx, j.source, store.Schema, s.Sink.Config, j.b.Tables, j.b.Column)
		if err != nil {
			return err
		}
		running, err := store.ResolveBackfill(ctx, j.b.ID, tables, total)
		if err != nil {
			return err
		}
		if !running {
			return errStopped
		}
		j.b.Tables, j.b.resolved = tables, true
	}
	j.log.Info().Strs("tables", j.b.Tables).Int("table", j.b.tableIdx).Msg("backfill running")
	for j.b.tableIdx < len(j.b.Tables) {
		name := j.b.Tables[j.b.tableIdx]
		schema, table := splitTable(name)
		info, err := describe(ctx, j.source, schema, table)
		if err != nil {
			return err
		}
		for i, c := range info.pk {
			if c < 0 {
				return fmt.Errorf("%w: table %s: primary-key column %s is generated, which the stream does not carry", ErrInvalid, name, info.pkNames[i])
			}
		}
		if j.b.Column != "" {
			if _, ok := info.types[j.b.Column]; !ok {
				return fmt.Errorf("%w: column %s does not exist in table %s", ErrInvalid, j.b.Column, name)
			}
		}
		if err := j.waitPublished(ctx, schema, table); err != nil {
			return err
		}
		if err := j.copyTable(ctx, info); err != nil {
			return err
		}
	}
	if err := j.settle(ctx, 0); err != nil {
		return err
	}
	j.log.Info().Msg("backfill done")
	return nil
}

// waitPublished waits until the table is in the publication: changes
// made before that are not streamed, so no page may be read earlier.
func (j *job) waitPublished(ctx context.Context, schema, table string) error {
	for logged := false; ; {
		published, err := replication.PublishedTables(ctx, j.source, j.r.cfg.Publication)
		if err != nil {
			return fmt.Errorf("backfill %d: publication of %s.%s: %w", j.b.ID, schema, table, err)
		}
		if published[schema+"."+table] {
			return nil
		}
		if !logged {
			j.log.Info().Str("table", schema+"."+table).Msg("backfill waits for the table to join the publication")
			logged = true
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// checkRunning stops the run when the backfill was cancelled or its sink
// deleted.
func (j *job) checkRunning(ctx context.Context) error {
	state, err := j.r.cfg.Store.GetBackfillState(ctx, j.b.ID)
	if errors.Is(err, outbox.ErrNotFound) {
		return errStopped
	}
	if err != nil {
		return err
	}
	if state != Running {
		j.log.Info().Str("state", state).Msg("backfill stopped")
		return errStopped
	}
	return nil
}

// waitBacklog holds the backfill while its sink has more messages waiting
// than the bound. It reports whether it had to wait (the caller then
// closes its window: nothing to record while paused).
func (j *job) waitBacklog(ctx context.Context) (bool, error) {
	if j.counted && j.backlog+j.pageSize <= j.bound {
		return false, nil
	}
	paused := false
	for {
		// The last page may still be in capture's buffer: count once it is
		// committed, or count it as waiting.
		unflushed := 0
		if j.lastFlushed != nil {
			select {
			case <-j.lastFlushed:
				j.lastFlushed = nil
			case <-time.After(time.Second):
				unflushed = j.lastWritten
			case <-ctx.Done():
				return paused, ctx.Err()
			}
		}
		n, err := j.countBacklog(ctx)
		if err != nil {
			return paused, err
		}
		n += unflushed
		j.backlog, j.counted = n, true
		if n+j.pageSize <= j.bound {
			if paused {
				j.log.Debug().Int("backlog", n).Msg("backfill resumes")
			}
			return paused, nil
		}
		if !paused {
			j.log.Debug().Int("backlog", n).Int("bound", j.bound).Msg("backfill pauses while the sink's backlog drains")
			paused = true
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return paused, err
		}
		if err := j.checkRunning(ctx); err != nil {
			return paused, err
		}
	}
}

// countBacklog counts the sink's waiting messages, up to just past the
// bound: the count costs at most bound index entries.
func (j *job) countBacklog(ctx context.Context) (int, error) {
	n, err := countWaiting(ctx, j.r.cfg.Store, j.b.sinkID, j.bound+1)
	if err != nil {
		return 0, fmt.Errorf("backfill %d: %w", j.b.ID, err)
	}
	return n, nil
}

// countWaiting counts a sink's waiting messages, up to limit: the count
// costs at most limit index entries.
func countWaiting(ctx context.Context, store *outbox.Store, sinkID int64, limit int) (int, error) {
	return store.CountWaitingMessages(ctx, sinkID, limit)
}
