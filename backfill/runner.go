package backfill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
	lastLogs    time.Time
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

// pageTimeout bounds the wait for the stream to reach a page's high
// watermark.
const pageTimeout = 2 * time.Minute

// copyTable pages through one table from the backfill's cursor. Each page
// is read between a low and a high watermark and handed to capture, which
// writes it and the new position (see outbox/backfill_hook.go).
func (j *job) copyTable(ctx context.Context, info *tableInfo) error {
	q := newPageQuery(info, j.b.Column)
	var w *outbox.Window
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	var seq uint64
	retries := 0
	for {
		if err := j.checkRunning(ctx); err != nil {
			return err
		}
		paused, err := j.waitBacklog(ctx)
		if err != nil {
			return err
		}
		if paused && w != nil {
			w.Close()
			w = nil
		}
		if w == nil {
			// A new window starts with a low watermark of its own: the
			// first page's drop set starts there (see backfill_hook.go).
			w = j.r.cfg.Capture.OpenWindow(j.b.sinkID, info.schema, info.name, info.pkNames)
			if err := j.emit(ctx, w, 0, false); err != nil {
				return err
			}
		}
		seq++
		cycle := time.Now()
		if err := j.emit(ctx, w, seq, false); err != nil {
			return err
		}
		limit := j.pageSize
		started := time.Now()
		page, cursor, err := q.read(ctx, j.source, j.b.cursor, j.b.From, limit)
		if err != nil {
			return fmt.Errorf("backfill %d: read %s.%s: %w", j.b.ID, info.schema, info.name, err)
		}
		took := time.Since(started)
		if retries == 0 { // a page read again keeps the size it was given
			j.adapt(took)
		}
		n := len(page.Rows)
		tableDone := n < limit
		nextIdx, nextCursor := j.b.tableIdx, cursor
		if tableDone {
			nextIdx, nextCursor = j.b.tableIdx+1, nil
		}
		allDone := tableDone && nextIdx >= len(j.b.Tables)
		page.Seq, page.SinkID, page.Rel = seq, j.b.sinkID, info.rel
		page.Done = make(chan outbox.PageResult, 1)
		page.Flushed = make(chan struct{})
		page.Position = &outbox.BackfillPosition{BackfillID: j.b.ID, TableIdx: nextIdx, Cursor: nextCursor, Rows: int64(n), Done: allDone}
		w.Submit(page)
		if err := j.emit(ctx, w, seq, true); err != nil {
			return err
		}
		var res outbox.PageResult
		select {
		case <-ctx.Done():
			return ctx.Err()
		case res = <-page.Done:
			j.log.Trace().Uint64("page", seq).Int("rows", len(page.Rows)).Dur("query", took).Dur("cycle", time.Since(cycle)).
				Int("written", res.Written).Int("dropped", res.Dropped).AnErr("retry", res.Err).Msg("backfill page")
		case <-time.After(pageTimeout):
			return fmt.Errorf("backfill %d: the stream did not reach the page's high watermark within %s", j.b.ID, pageTimeout)
		}
		switch {
		case errors.Is(res.Err, outbox.ErrSinkNotRouted):
			// The sink was just created (or deleted): wait for capture's
			// router to know it, then read the page again.
			if err := sleep(ctx, 500*time.Millisecond); err != nil {
				return err
			}
			continue
		case errors.Is(res.Err, outbox.ErrPageRetry):
			// A change without its key (a table whose replica identity is
			// not its primary key) makes a window inconclusive; smaller
			// pages make quieter windows.
			retries++
			if retries%10 == 0 {
				j.log.Warn().Int("retries", retries).Str("table", info.schema+"."+info.name).
					Msg("backfill page read again and again: changes without their primary key keep its windows inconclusive")
				j.pageSize = max(j.pageSize/2, 1)
			}
			continue
		case res.Err != nil:
			return res.Err
		}
		retries = 0
		j.backlog += res.Written
		j.lastFlushed, j.lastWritten = page.Flushed, res.Written
		j.b.RowsProcessed += int64(n)
		j.b.cursor, j.b.tableIdx = nextCursor, nextIdx
		if time.Since(j.lastLogs) > 10*time.Second {
			j.lastLogs = time.Now()
			j.log.Debug().Str("table", info.schema+"."+info.name).Int64("rows", j.b.RowsProcessed).Int("page_size", j.pageSize).
				Int("dropped", res.Dropped).Msg("backfill progress")
		}
		if tableDone {
			return nil
		}
	}
}

// emit writes a watermark into the source's WAL, as its own transaction.
func (j *job) emit(ctx context.Context, w *outbox.Window, seq uint64, high bool) error {
	_, err := j.source.Exec(ctx, `SELECT pg_logical_emit_message(true, $1::text, $2::text)`, outbox.WatermarkPrefix, string(w.Watermark(seq, high)))
	if err != nil {
		return fmt.Errorf("backfill %d: write watermark: %w", j.b.ID, err)
	}
	return nil
}

// adapt moves the page size toward the query-time budget: doubling while
// well under it, shrinking in proportion when over.
func (j *job) adapt(took time.Duration) {
	budget := j.r.cfg.PageBudget
	switch {
	case took < budget/4:
		j.pageSize *= 2
	case took > budget:
		j.pageSize = max(j.pageSize/2, int(float64(j.pageSize)*float64(budget)/float64(took)))
	}
	j.pageSize = max(min(max(j.pageSize, j.r.cfg.MinPage), j.maxPage), 1)
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

// pageQuery is a table's keyset page query: every column, then the
// primary key again for the cursor, after the cursor, in key order, all
// in text format. The cursor's values are cast back from their text.
type pageQuery struct {
	info     *tableInfo
	first    string // without a cursor
	next     string // after a cursor ($1..$k)
	hasFrom  bool
	nColumns int
	nKey     int
}

func newPageQuery(info *tableInfo, column string) *pageQuery {
	var sel strings.Builder
	sel.WriteString("SELECT ")
	for i, c := range info.rel.Columns {
		if i > 0 {
			sel.WriteString(", ")
		}
		sel.WriteString(pgx.Identifier{"r", c.Name}.Sanitize())
	}
	// Qualified names everywhere: an unqualified ORDER BY could name an
	// output column rather than the table's.
	keys := make([]string, len(info.pkNames))
	for i, k := range info.pkNames {
		keys[i] = pgx.Identifier{"r", k}.Sanitize()
		sel.WriteString(", " + keys[i])
	}
	sel.WriteString(" FROM " + pgx.Identifier{info.schema, info.name}.Sanitize() + " AS r")
	order := " ORDER BY " + strings.Join(keys, ", ")

	build := func(withCursor bool) string {
		var conds []string
		n := 0
		if withCursor {
			params := make([]string, len(keys))
			for i := range keys {
				n++
				params[i] = "$" + strconv.Itoa(n) + "::text::" + info.pkTypes[i]
			}
			conds = append(conds, "("+strings.Join(keys, ", ")+") > ("+strings.Join(params, ", ")+")")
		}
		if column != "" {
			n++
			conds = append(conds, pgx.Identifier{"r", column}.Sanitize()+" >= $"+strconv.Itoa(n)+"::text::"+info.types[column])
		}
		where := ""
		if len(conds) > 0 {
			where = " WHERE " + strings.Join(conds, " AND ")
		}
		n++
		return sel.String() + where + order + " LIMIT $" + strconv.Itoa(n)
	}
	return &pageQuery{info: info, first: build(false), next: build(true), hasFrom: column != "", nColumns: len(info.rel.Columns), nKey: len(keys)}
}

// read reads one page and renders it. It returns the page (rows and
// window keys) and the cursor after it (nil when the page is empty).
func (q *pageQuery) read(ctx context.Context, pool *pgxpool.Pool, cursor []string, from *string, limit int) (*outbox.Page, []string, error) {
	sql := q.first
	var args []any
	if cursor != nil {
		sql = q.next
		for _, c := range cursor {
			args = append(args, c)
		}
	}
	if q.hasFrom {
		args = append(args, *from)
	}
	args = append(args, limit)
	// Text results are the types' output functions, exactly what pgoutput
	// sends (a cast to text is not: bool, char(n) and inet differ).
	rows, err := pool.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	// Values are appended to one arena and sliced once it is complete,
	// since it moves while it grows.
	var arena []byte
	var ends [][2]int
	var last []string
	nrows := 0
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != q.nColumns+q.nKey {
			return nil, nil, fmt.Errorf("page query returned %d columns, want %d", len(raw), q.nColumns+q.nKey)
		}
		for i := 0; i < q.nColumns; i++ {
			start := len(arena)
			if raw[i] == nil {
				arena = append(arena, "null"...)
			} else {
				arena = q.info.render[i].Append(arena, raw[i])
			}
			ends = append(ends, [2]int{start, len(arena)})
		}
		if last == nil {
			last = make([]string, q.nKey)
		}
		for k := 0; k < q.nKey; k++ {
			last[k] = string(raw[q.nColumns+k])
		}
		nrows++
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	page := &outbox.Page{Rows: make([][][]byte, nrows), Keys: make([]string, nrows)}
	for r := 0; r < nrows; r++ {
		vals := make([][]byte, q.nColumns)
		for i := range vals {
			e := ends[r*q.nColumns+i]
			vals[i] = arena[e[0]:e[1]:e[1]]
		}
		page.Rows[r] = vals
		page.Keys[r], _ = outbox.WindowKey(vals, q.info.pk) // key values are never null
	}
	return page, last, nil
}
