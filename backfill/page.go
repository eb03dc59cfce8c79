package backfill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/outbox"
)

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
		page.Flushed, page.Failed = make(chan struct{}), make(chan error, 1)
		page.Position = &outbox.BackfillPosition{BackfillID: j.b.ID, TableIdx: nextIdx, Cursor: nextCursor,
			FromTableIdx: j.b.tableIdx, FromCursor: j.b.cursor, Rows: int64(n), Done: allDone}
		// Pages are written (in order) while the next ones are read, but
		// only so many of them are held in memory.
		if err := j.settle(ctx, maxWriting-1); err != nil {
			return err
		}
		w.Submit(page)
		if err := j.emit(ctx, w, seq, true); err != nil {
			return err
		}
		emitted := time.Now()
		var res outbox.PageResult
		select {
		case <-ctx.Done():
			return ctx.Err()
		case res = <-page.Done:
			j.reach = time.Since(emitted)
			j.log.Trace().Uint64("page", seq).Int("rows", len(page.Rows)).Dur("query", took).Dur("reach", j.reach).Dur("cycle", time.Since(cycle)).
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
		j.written = append(j.written, page)
		j.backlog += res.Written
		j.lastFlushed, j.lastWritten = page.Flushed, res.Written
		j.b.RowsProcessed += int64(n)
		j.b.cursor, j.b.tableIdx = nextCursor, nextIdx
		if time.Since(j.lastLogs) > 10*time.Second {
			j.lastLogs = time.Now()
			j.log.Debug().Str("table", info.schema+"."+info.name).Int64("rows", j.b.RowsProcessed).Int("page_size", j.pageSize).
				Int("dropped", res.Dropped).Int("paced", j.paced).Msg("backfill progress")
		}
		if tableDone {
			return nil
		}
		if err := j.pace(ctx); err != nil {
			return err
		}
	}
}

// pace yields to live changes when the stream took longer than PaceLag to
// reach the last page's high watermark: the next page is half as large,
// and starts after a pause as long as that delay, which lets the stream
// and the walsender catch up.
func (j *job) pace(ctx context.Context) error {
	if j.reach <= j.r.cfg.PaceLag {
		return nil
	}
	j.pageSize = max(min(j.pageSize/2, j.maxPage), j.r.cfg.MinPage, 1)
	j.paced++
	return sleep(ctx, min(j.reach, time.Second))
}

// maxWriting bounds the pages of a backfill on their way into the
// outbox: capture writes them one after the other while the runner reads
// the next.
const maxWriting = 2

// settle waits until at most keep of the pages handed over are not yet
// committed. A page that failed to commit ends the run: its position was
// not recorded, so the next run reads it again (capture fails the pages
// handed over after it, so none records a position first).
func (j *job) settle(ctx context.Context, keep int) error {
	for len(j.written) > keep {
		p := j.written[0]
		select {
		case <-p.Flushed:
			j.written = j.written[1:]
		case err := <-p.Failed:
			return fmt.Errorf("backfill %d: write page: %w", j.b.ID, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pageTimeout):
			return fmt.Errorf("backfill %d: a page was not written within %s", j.b.ID, pageTimeout)
		}
	}
	return nil
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
// well under it (and while the stream keeps well under PaceLag), shrinking
// in proportion when over.
func (j *job) adapt(took time.Duration) {
	budget := j.r.cfg.PageBudget
	switch {
	case took < budget/4 && j.reach < j.r.cfg.PaceLag/2:
		j.pageSize *= 2
	case took > budget:
		j.pageSize = max(j.pageSize/2, int(float64(j.pageSize)*float64(budget)/float64(took)))
	}
	j.pageSize = max(min(max(j.pageSize, j.r.cfg.MinPage), j.maxPage), 1)
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
