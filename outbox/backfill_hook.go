package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/sink"
)

// This file is capture's side of backfills
// (docs/reference.md#6-backfills-retention-and-the-slot), after DBLog: a
// backfill reads a page of rows between two watermarks it writes into the
// source's WAL with pg_logical_emit_message, and the page meets the stream
// here. Between the low and the high watermark the keys of every change to the
// table that the backfill's sink receives are recorded; at the high watermark
// the rows whose key changed are dropped from the page (the stream carries
// their newer state) and the others are written as `read` messages, in one
// transaction with the backfill's new position, committed after the sink's
// older messages and before its newer ones (writePage). So a `read` is never
// queued behind a newer change of its row, and a page is written exactly once.
//
// One refinement over DBLog: a page's drop set starts at the low
// watermark of the page before it (the runner writes an extra low
// watermark before a window's first page), not at its own. Commit order in
// the WAL and visibility order differ by a hair: a transaction whose
// commit record precedes the low watermark may still be invisible to the
// page's snapshot while its backend finishes committing. Its change would
// come before the low watermark and the page would hold the row's older
// state. Widening the window to the previous page makes that race need a
// committing backend stalled for a whole page cycle instead of one round
// trip. Dropping more is always safe: a dropped row's state comes with its
// change.

// WatermarkPrefix is the logical decoding message prefix of backfill
// watermarks.
const WatermarkPrefix = "walhook.backfill"

// maxWindowKeys bounds the keys one window records. A window that
// overflows (a table changing faster than pages are read) retries its
// page rather than grow without bound.
const maxWindowKeys = 1_000_000

// Watermark is the content of a watermark message.
type Watermark struct {
	Window string `json:"w"`
	Page   uint64 `json:"p"`
	High   bool   `json:"h,omitempty"`
}

// ErrPageRetry means the page could not be checked against the stream
// (its window overflowed, a change's key was unknown, or its low
// watermark was not seen) and nothing was written: read it again.
var ErrPageRetry = errors.New("backfill page must be read again")

// ErrSinkNotRouted means the capture's router has no route for the page's
// sink (just created, or deleted): nothing was written.
var ErrSinkNotRouted = errors.New("sink not routed by capture yet")

// Page is one keyset page of a backfill, read between the low and the
// high watermark of its sequence number.
type Page struct {
	Seq    uint64
	SinkID int64
	Rel    *sink.Relation
	// Rows are the page's rows, values rendered as JSON and indexed like
	// Rel.Columns; Keys the window key of each row (see Window).
	Rows [][][]byte
	Keys []string
	// Position is the backfill's position after the page, recorded in the
	// state transaction that writes the page's rows (nil: none).
	Position *BackfillPosition
	// Done receives the outcome once the high watermark is handled. It
	// must have room for one value.
	Done chan PageResult
	// Flushed, when not nil, is closed once the page's rows and position
	// are committed. Failed, when not nil, receives the error of a write
	// that failed instead (it must have room for one value); the page's
	// position is not recorded then, so the backfill must read it again.
	Flushed chan struct{}
	Failed  chan error
}

// PageResult is what became of a page.
type PageResult struct {
	Written, Dropped, Filtered int
	Err                        error
}

// Window records the changes of one table for a running backfill. Its
// key of a row is the JSON of its primary-key columns joined by commas,
// as the backfill renders them.
type Window struct {
	hook    *watermarks
	token   string
	sinkID  int64
	schema  string
	table   string
	keyCols []string

	// Stream side, under hook.mu.
	recording bool
	epoch     uint64 // incremented at each low watermark
	low       uint64 // epoch of the latest low watermark
	keys      map[string]uint64
	wild      uint64 // epoch of the latest change whose key was unknown
	overflow  bool
	cols      map[*sink.Relation][]int
	page      *Page
}

// Watermark returns the message content of a low or high watermark.
func (w *Window) Watermark(page uint64, high bool) []byte {
	b, _ := json.Marshal(Watermark{Window: w.token, Page: page, High: high}) // cannot fail
	return b
}

// Submit hands a page over before its high watermark is written.
func (w *Window) Submit(p *Page) {
	w.hook.mu.Lock()
	defer w.hook.mu.Unlock()
	w.page = p
}

// Close stops recording. Watermarks of the window seen later are ignored.
func (w *Window) Close() {
	h := w.hook
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.windows[w.token]; !ok {
		return
	}
	delete(h.windows, w.token)
	if w.recording {
		h.recording.Add(-1)
	}
	w.recording, w.keys, w.page = false, nil, nil
}

// watermarks is the Capture's registry of open windows. The runner opens
// and closes windows and submits pages; the stream goroutine records and
// resolves. recording counts windows past their first low watermark, so
// Change pays nothing when no backfill runs.
type watermarks struct {
	mu        sync.Mutex
	windows   map[string]*Window
	recording atomic.Int32
}

// OpenWindow starts a window on a table for a backfill of a sink. keyCols
// are the columns whose values identify a row (the primary key).
// Recording starts when the stream reaches the window's first low
// watermark.
func (c *Capture) OpenWindow(sinkID int64, schema, table string, keyCols []string) *Window {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:]) // never fails
	w := &Window{hook: &c.wm, token: hex.EncodeToString(rnd[:]), sinkID: sinkID, schema: schema, table: table, keyCols: keyCols}
	c.wm.mu.Lock()
	defer c.wm.mu.Unlock()
	if c.wm.windows == nil {
		c.wm.windows = map[string]*Window{}
	}
	c.wm.windows[w.token] = w
	return w
}

// observe records a change's key in every recording window of its table
// whose sink receives the change (received: the sinks of routes that
// matched it). A change the sink does not receive (an action it does not
// take, a filter that fails) must not drop the row from the page, or the
// sink would get neither. A sink not routed for the table at all is
// recorded for: dropping more is always safe. It runs on the stream
// goroutine for every change while a window records.
func (h *watermarks) observe(ch *sink.Change, routes []*sink.Route, received []int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.windows {
		if !w.recording || w.table != ch.Rel.Table || w.schema != ch.Rel.Schema {
			continue
		}
		routed := slices.ContainsFunc(routes, func(rt *sink.Route) bool { return rt.Sink.ID == w.sinkID })
		if routed && !slices.Contains(received, w.sinkID) {
			continue
		}
		cols, ok := w.cols[ch.Rel]
		if !ok {
			cols = make([]int, len(w.keyCols))
			for i, name := range w.keyCols {
				cols[i] = ch.Rel.ColumnIndex(name)
			}
			if len(w.cols) > 100 { // relations are replaced on ALTER TABLE
				clear(w.cols)
			}
			w.cols[ch.Rel] = cols
		}
		w.record(cols, ch.New)
		w.record(cols, ch.Old)
		if ch.New == nil && ch.Old == nil {
			w.wild = w.epoch
		}
	}
}

// record adds the key of one tuple. A tuple without its key values (an
// old tuple of a table whose replica identity is not the primary key)
// makes the whole window suspect.
func (w *Window) record(cols []int, vals [][]byte) {
	if vals == nil {
		return
	}
	key, ok := WindowKey(vals, cols)
	if !ok {
		w.wild = w.epoch
		return
	}
	if len(w.keys) >= maxWindowKeys {
		w.overflow = true
		clear(w.keys)
	}
	w.keys[key] = w.epoch
}

// WindowKey is how a row is known in a backfill window: the rendered
// values of its key columns, comma-joined. Pages (the backfill runner)
// and changes (capture) must build it alike. ok is false when a key value
// is unknown (missing, or unchanged TOAST).
func WindowKey(vals [][]byte, cols []int) (key string, ok bool) {
	var b strings.Builder
	for i, c := range cols {
		if c < 0 || c >= len(vals) || vals[c] == nil || string(vals[c]) == string(sink.UnchangedToast) {
			return "", false
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(vals[c])
	}
	return b.String(), true
}

// watermark handles a watermark message on the stream goroutine: a low
// one starts (or continues) recording, a high one resolves the window's
// submitted page into the buffered outbox rows.
func (c *Capture) watermark(ctx context.Context, lsn uint64, content []byte) error {
	var m Watermark
	if err := json.Unmarshal(content, &m); err != nil {
		c.log.Warn().Err(err).Msg("ignoring a malformed backfill watermark")
		return nil
	}
	h := &c.wm
	h.mu.Lock()
	w, ok := h.windows[m.Window]
	if !ok { // another term's window, or closed
		h.mu.Unlock()
		return nil
	}
	if !m.High {
		if !w.recording {
			w.recording = true
			w.keys = map[string]uint64{}
			w.cols = map[*sink.Relation][]int{}
			h.recording.Add(1)
		}
		w.epoch++
		w.low = w.epoch
		for k, e := range w.keys {
			if e+1 < w.low {
				delete(w.keys, k)
			}
		}
		h.mu.Unlock()
		return nil
	}
	p := w.page
	if p == nil || p.Seq != m.Page {
		h.mu.Unlock()
		return nil
	}
	w.page = nil
	since := w.low - 1 // the previous page's low watermark: see the top of the file
	suspect := !w.recording || w.overflow || (w.wild != 0 && w.wild >= since)
	w.overflow = false
	var keep []int
	if !suspect {
		keep = make([]int, 0, len(p.Rows))
		for i, k := range p.Keys {
			if e, changed := w.keys[k]; !changed || e < since {
				keep = append(keep, i)
			}
		}
	}
	h.mu.Unlock()
	if suspect {
		p.Done <- PageResult{Err: ErrPageRetry}
		return nil
	}
	res, err := c.writePage(ctx, lsn, p, keep)
	p.Done <- res
	return err
}

// writePage renders the kept rows of a page as `read` messages for the
// page's sink, at the high watermark's position: commit_lsn is the
// watermark message's LSN (no commit record has that LSN, so idempotency
// keys stay unique) and commit_idx the row's position among those kept.
//
// The page is committed by a transaction of its own, with the backfill's
// new position, off the stream's goroutine: copying a page's thousands of
// rows into the outbox took longer than anything else the stream did, and
// live changes of every sink waited behind it. Commit order still keeps a
// read behind the older changes of its sink and before the newer ones:
// the sink's buffered messages (older than the page) are committed first,
// and capture's flushes that carry messages of the sink wait for the page
// (Flush). Pages commit one after the other, in order; a page whose
// predecessor failed fails too.
func (c *Capture) writePage(ctx context.Context, lsn uint64, p *Page, keep []int) (PageResult, error) {
	var rt *sink.Route
	if c.routerSeen != nil {
		rt = c.routerSeen.RouteOf(p.SinkID)
	}
	if rt == nil {
		return PageResult{Err: ErrSinkNotRouted}, nil
	}
	res := PageResult{Dropped: len(p.Rows) - len(keep)}
	pw := &pageWrite{page: p, lease: c.lease, done: make(chan struct{})}
	pw.rows = make([]NewMessage, 0, len(keep))
	var arena []byte
	ch := sink.Change{Rel: p.Rel, Action: sink.Read, CommitLSN: lsn, CommitTime: c.txTime}
	for i, row := range keep {
		ch.New, ch.CommitIdx = p.Rows[row], i
		if !rt.Match(&ch) {
			res.Filtered++
			continue
		}
		start := len(arena)
		arena = rt.Render(arena, &ch)
		if start == 0 { // one allocation for the page, from its first row's size
			arena = append(make([]byte, 0, (len(arena)+16)*(len(keep)+1)), arena...)
		}
		pw.rows = append(pw.rows, NewMessage{SinkID: rt.Sink.ID, Group: rt.GroupKey(&ch), CommitLSN: lsn, CommitIdx: i,
			Payload: arena[start:len(arena):len(arena)]})
	}
	res.Written = len(pw.rows)
	if c.testPages == nil && c.touched[p.SinkID] > 0 {
		// The sink's older messages commit before the page. The stream is
		// inside the watermark's transaction, which holds nothing else:
		// the position recorded is the end of the transaction before it.
		if _, err := c.Flush(ctx); err != nil {
			return PageResult{Err: ErrPageRetry}, err
		}
	}
	if c.pending == nil {
		c.pending = map[int64]*pageWrite{}
	}
	pw.prev = c.pendingPage
	c.pending[p.SinkID], c.pendingPage = pw, pw
	if c.testPages != nil {
		c.testPages(pw)
		return res, nil
	}
	go c.commitPageAfter(context.WithoutCancel(ctx), pw)
	return res, nil
}

// pageWrite is a page on its way into the outbox.
type pageWrite struct {
	page  *Page
	rows  []NewMessage
	lease *leaseRef
	// prev is the page handed over before this one (nil: none); done is
	// closed once this one is committed or failed (then failed is set).
	prev   *pageWrite
	done   chan struct{}
	failed bool
}

// errEarlierPage fails a page handed over after one that failed: the
// backfill reads both again, and its position must not pass the first.
var errEarlierPage = errors.New("an earlier backfill page was not written")

// pageWriteTimeout bounds a page's transaction.
const pageWriteTimeout = time.Minute

// commitPageAfter commits a page once the page before it is settled.
// Its context does not end with the stream's: a page committed after the
// stream stopped is still consistent (its rows and its position commit
// together, and its sink's newer changes are captured again after it).
func (c *Capture) commitPageAfter(ctx context.Context, pw *pageWrite) {
	defer close(pw.done)
	var err error
	if pw.prev != nil {
		<-pw.prev.done
		if pw.prev.failed {
			err = errEarlierPage
		}
	}
	p := pw.page
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, pageWriteTimeout)
		err = c.store.commitPage(ctx, pw)
		cancel()
		if err != nil {
			c.log.Error().Err(err).Int64("sink", p.SinkID).Msg("backfill page not written; the backfill reads it again")
		}
	}
	if err != nil {
		pw.failed = true
		if p.Failed != nil {
			p.Failed <- err
		}
		return
	}
	if p.Flushed != nil {
		close(p.Flushed)
	}
	if c.OnCommit != nil && len(pw.rows) > 0 {
		c.OnCommit(map[int64]int{p.SinkID: len(pw.rows)})
	}
}

// commitPage writes a page's rows and its backfill's new position in one
// transaction, fenced by the leader's term like capture's flushes, and
// wakes delivery.
func (s *Store) commitPage(ctx context.Context, pw *pageWrite) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		// Asynchronous commit loses nothing the backfill relies on: the
		// rows and the position are lost together in a Postgres crash (the
		// page is read again), and any later synchronous commit, such as
		// capture's flush of the sink's newer changes or of a stream
		// position past the page, makes the page durable first (the WAL is
		// flushed in order).
		b.Queue(`SET LOCAL synchronous_commit = off`)
		fenced := true
		if pw.lease != nil {
			b.Queue(fenceSQL, pw.lease.name, pw.lease.token).Query(func(rows pgx.Rows) error {
				fenced = rows.Next()
				rows.Close()
				return rows.Err()
			})
		}
		recorded := true
		if pos := pw.page.Position; pos != nil {
			pos.queue(b, &recorded)
		}
		if len(pw.rows) > 0 {
			b.Queue(`SELECT pg_notify($1, $2)`, s.Channel(), joinIDs([]int64{pw.page.SinkID}))
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("record backfill position: %w", err)
		}
		if !fenced {
			return fmt.Errorf("write backfill page: %w", ErrLostLease)
		}
		if !recorded {
			return fmt.Errorf("write backfill page: %w", ErrPagePositionMoved)
		}
		return queueRows(ctx, tx, pw.rows)
	})
}

// waitPages waits until the pages handed over for the sinks that have
// messages in this flush are settled, so none of those messages commits
// before an older read.
func (c *Capture) waitPages(ctx context.Context) error {
	for id, pw := range c.pending {
		select {
		case <-pw.done:
			delete(c.pending, id)
			continue
		default:
		}
		if c.touched[id] == 0 {
			continue
		}
		select {
		case <-pw.done:
			delete(c.pending, id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if c.pendingPage != nil {
		select {
		case <-c.pendingPage.done:
			c.pendingPage = nil
		default:
		}
	}
	return nil
}
