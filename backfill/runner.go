package backfill

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/pgdial"
	"github.com/walhook/walhook/replication"
)

// Defaults of the runner's tuning. Pages are capped at 5,000 rows
// although their queries are far under budget by then: a page's rows are
// rendered and written by capture on the stream's goroutine, so a page's
// size bounds how long live changes wait behind it (about 150 ms for
// 5,000 rows on a small machine), and larger pages measured no faster.
const (
	DefaultPageBudget = 200 * time.Millisecond
	DefaultFirstPage  = 1000
	DefaultMinPage    = 100
	DefaultMaxPage    = 5000
	DefaultPoll       = time.Second
	DefaultPaceLag    = 25 * time.Millisecond
)

// Config wires a Runner.
type Config struct {
	Store   *outbox.Store
	Capture *outbox.Capture
	// SourceURL is the source database; Publication the one the slot
	// streams (a table is copied only once it is published, so none of its
	// changes can slip between the page and the stream).
	SourceURL   string
	Publication string
	// Slot is the replication slot whose captured position a replay waits
	// for (replication_state), so its window misses no change that was
	// committed but not yet captured.
	Slot string
	// RetentionKeep, when positive, prunes retained changes older than it.
	RetentionKeep time.Duration
	Log           zerolog.Logger

	// PageBudget is the page query time the page size adapts to; pages
	// hold between MinPage and MaxPage rows, starting at FirstPage.
	PageBudget                  time.Duration
	FirstPage, MinPage, MaxPage int
	// PaceLag is how long the stream may take to reach a page's high
	// watermark before the backfill yields to live changes, which wait
	// as long: above it, pages halve (down to MinPage) and the next one
	// waits as long as the stream took; pages grow again only while it
	// stays under half of it. The walsender decodes each page's outbox
	// rows before anything committed after them, so on a busy server the
	// page size is what live changes wait behind.
	PaceLag time.Duration
	// MaxBacklog pauses a backfill while its sink has more messages than
	// this waiting in the outbox. Default: 100 × batch_size, within
	// [2 × MaxPage, 100,000]. Live changes of the same sink queue behind
	// that backlog, so it is kept to about a second of delivery at the
	// target rate (30,000 rows/s at batch_size 100) rather than made
	// large.
	MaxBacklog int
	// Poll is how often the runner looks for new or cancelled backfills.
	Poll time.Duration
}

// Runner runs backfills and replays, and prunes retained changes. It runs
// on the leader only, for one leadership term at a time: Run returns when the
// term's context ends.
type Runner struct {
	cfg Config
}

// NewRunner fills in defaults; it connects nothing until Run.
func NewRunner(cfg Config) *Runner {
	if cfg.PageBudget <= 0 {
		cfg.PageBudget = DefaultPageBudget
	}
	if cfg.MinPage <= 0 {
		cfg.MinPage = DefaultMinPage
	}
	if cfg.MaxPage <= 0 {
		cfg.MaxPage = DefaultMaxPage
	}
	if cfg.FirstPage <= 0 {
		cfg.FirstPage = DefaultFirstPage
	}
	cfg.FirstPage = min(max(cfg.FirstPage, cfg.MinPage), cfg.MaxPage)
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.PaceLag <= 0 {
		cfg.PaceLag = DefaultPaceLag
	}
	return &Runner{cfg: cfg}
}

// OpenSource connects to the source database with the session settings
// the value rendering relies on (the replication connection's), so that
// read messages render byte for byte like live changes.
func OpenSource(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	replication.SetSessionParams(cfg.ConnConfig.RuntimeParams)
	pgdial.Configure(&cfg.ConnConfig.Config)
	cfg.ConnConfig.RuntimeParams["application_name"] = "walhook-backfill"
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: connect: %w", err)
	}
	return pool, nil
}

// Run works until ctx ends: it runs every running backfill (each in its
// own goroutine) and replay (one at a time), and prunes retained changes.
func (r *Runner) Run(ctx context.Context) {
	source, err := OpenSource(ctx, r.cfg.SourceURL, 8)
	if err != nil {
		r.cfg.Log.Error().Err(err).Msg("backfills not running")
		return
	}
	defer source.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	if r.cfg.RetentionKeep > 0 {
		wg.Go(func() { r.pruneLoop(ctx) })
	}
	wg.Go(func() { r.replayLoop(ctx, source) })

	var mu sync.Mutex
	active := map[int64]bool{}
	// retryAt holds back a backfill whose run failed for a passing reason;
	// finished ones never run again in this term (their final state may
	// not be committed yet when the next poll comes).
	retryAt := map[int64]time.Time{}
	failures := map[int64]int{}
	finished := map[int64]bool{}
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		if err := ApplyStarts(ctx, r.cfg.Store); err != nil && ctx.Err() == nil {
			r.cfg.Log.Error().Err(err).Msg("apply the start of new sinks")
		}
		ids, err := runningIDs(ctx, r.cfg.Store)
		if err != nil && ctx.Err() == nil {
			r.cfg.Log.Error().Err(err).Msg("list running backfills")
		}
		mu.Lock()
		for _, id := range ids {
			if active[id] || finished[id] || time.Now().Before(retryAt[id]) {
				continue
			}
			active[id] = true
			wg.Go(func() {
				err := r.runOne(ctx, source, id)
				mu.Lock()
				defer mu.Unlock()
				delete(active, id)
				switch {
				case err == nil:
					finished[id] = true
				case ctx.Err() != nil:
				default:
					failures[id]++
					wait := min(time.Duration(failures[id])*5*time.Second, time.Minute)
					retryAt[id] = time.Now().Add(wait)
					r.cfg.Log.Error().Err(err).Int64("backfill", id).Dur("retry_in", wait).Msg("backfill interrupted; it resumes from its last page")
				}
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

// ApplyStarts applies the `start` of sinks created since it last ran
// (SPEC §2: once, when the sink is created): `start: beginning` gets a
// backfill of all the sink's tables. Marking the sink and creating the
// backfill are one statement, so a start applies exactly once whichever
// way the sink was made and whatever crashes. The leader runs it.
func ApplyStarts(ctx context.Context, store *outbox.Store) error {
	return store.ApplySinkStarts(ctx)
}

func runningIDs(ctx context.Context, store *outbox.Store) ([]int64, error) {
	return store.ListRunningBackfills(ctx)
}

// errStopped ends a run whose backfill is no longer running (cancelled,
// or its sink deleted).
var errStopped = errors.New("backfill stopped")

// permanent reports errors that running again will not fix: the backfill
// fails with them.
func permanent(err error) bool {
	if errors.Is(err, ErrInvalid) || errors.Is(err, errNoPrimaryKey) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Data exceptions (a from value that does not cast), syntax and
		// access errors, undefined objects.
		return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "42")
	}
	return false
}

// runOne runs a backfill until it is done, stops, or fails. A nil error
// means the run is over for good.
func (r *Runner) runOne(ctx context.Context, source *pgxpool.Pool, id int64) error {
	b, err := load(ctx, r.cfg.Store, id)
	if err != nil {
		return err
	}
	if b.State != Running {
		return nil
	}
	j := &job{r: r, source: source, b: b, log: r.cfg.Log.With().Int64("backfill", id).Str("sink", b.Sink).Logger(), pageSize: r.cfg.FirstPage}
	err = j.run(ctx)
	switch {
	case err == nil, errors.Is(err, errStopped):
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case permanent(err):
		j.log.Error().Err(err).Msg("backfill failed")
		if ferr := j.fail(ctx, err); ferr != nil {
			return ferr
		}
		return nil
	}
	return err
}

func load(ctx context.Context, store *outbox.Store, id int64) (*Backfill, error) {
	r, err := store.GetBackfillByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return fromRow(r), nil
}
