package outbox

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/sink"
)

// hookFixture is a Capture with one sink on public.t, driven by hand the
// way the stream drives it, without a database (nothing is flushed).
type hookFixture struct {
	t   *testing.T
	c   *Capture
	rel *sink.Relation
	lsn uint64
	// pages are the pages capture handed over for writing.
	pages []*pageWrite
}

func newHookFixture(t *testing.T, opts ...func(*config.Sink)) *hookFixture {
	var router atomic.Pointer[sink.Router]
	cfg := config.Sink{Name: "s", Tables: []string{"public.t"}}
	for _, o := range opts {
		o(&cfg)
	}
	router.Store(sink.NewRouter([]*sink.Sink{{ID: 7, UUID: "u", Name: "s", Config: cfg}}))
	c := NewCapture(&Store{}, "slot", &router, zerolog.Nop())
	c.reset(context.Background())
	rel := &sink.Relation{Schema: "public", Table: "t", Columns: []sink.Column{{Name: "id", TypeOID: 23, Key: true}, {Name: "v", TypeOID: 25}}}
	f := &hookFixture{t: t, c: c, rel: rel, lsn: 100}
	c.testPages = func(pw *pageWrite) { f.pages = append(f.pages, pw) }
	return f
}

// tx runs fn inside one source transaction.
func (f *hookFixture) tx(fn func(ctx context.Context)) {
	ctx := context.Background()
	f.lsn += 100
	if err := f.c.Begin(ctx, f.lsn, time.Unix(1700000000, 0)); err != nil {
		f.t.Fatal(err)
	}
	fn(ctx)
	if err := f.c.Commit(ctx, f.lsn, f.lsn+1); err != nil {
		f.t.Fatal(err)
	}
}

func (f *hookFixture) update(id string) {
	f.tx(func(ctx context.Context) {
		ch := &sink.Change{Rel: f.rel, Action: sink.Update, New: [][]byte{[]byte(id), []byte(`"x"`)}, CommitLSN: f.lsn}
		if err := f.c.Change(ctx, ch); err != nil {
			f.t.Fatal(err)
		}
	})
}

func (f *hookFixture) mark(w *Window, page uint64, high bool) {
	f.tx(func(ctx context.Context) {
		if err := f.c.Message(ctx, f.lsn-10, true, WatermarkPrefix, w.Watermark(page, high)); err != nil {
			f.t.Fatal(err)
		}
	})
}

func (f *hookFixture) page(seq uint64, ids ...string) *Page {
	p := &Page{Seq: seq, SinkID: 7, Rel: f.rel, Done: make(chan PageResult, 1)}
	for _, id := range ids {
		p.Rows = append(p.Rows, [][]byte{[]byte(id), []byte(`"v"`)})
		p.Keys = append(p.Keys, id)
	}
	return p
}

func result(t *testing.T, p *Page) PageResult {
	t.Helper()
	select {
	case r := <-p.Done:
		return r
	default:
		t.Fatal("page not resolved")
		return PageResult{}
	}
}

// Rows changed since the previous page's low watermark are dropped; the
// rest become read messages at the high watermark's position.
func TestWindowDropsChangedRows(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t)
	w := f.c.OpenWindow(7, "public", "t", []string{"id"})
	defer w.Close()
	f.update("1") // before the window: not recorded
	f.mark(w, 0, false)
	f.update("2") // between the opening low and page 1's low
	f.mark(w, 1, false)
	f.update("3")
	p1 := f.page(1, "1", "2", "3", "4")
	w.Submit(p1)
	f.mark(w, 1, true)
	if r := result(t, p1); r.Err != nil || r.Written != 2 || r.Dropped != 2 {
		t.Fatalf("page 1: %+v, want 2 written (1, 4), 2 dropped", r)
	}
	reads := f.pages[0].rows
	for i, want := range []string{`"id":1`, `"id":4`} {
		p := string(reads[i].Payload)
		if !strings.Contains(p, want) || !strings.Contains(p, `"action":"read"`) || reads[i].CommitLSN != f.lsn-10 || reads[i].CommitIdx != i {
			t.Errorf("read %d: lsn %d idx %d %s", i, reads[i].CommitLSN, reads[i].CommitIdx, p)
		}
	}

	// Page 2: row 3 changed in page 1's window (still dropped), row 2
	// only before it (kept now).
	f.mark(w, 2, false)
	p2 := f.page(2, "2", "3", "5")
	p2.Position = &BackfillPosition{BackfillID: 1}
	p2.Flushed = make(chan struct{})
	w.Submit(p2)
	f.mark(w, 2, true)
	if r := result(t, p2); r.Err != nil || r.Written != 2 || r.Dropped != 1 {
		t.Fatalf("page 2: %+v, want 2 written, 1 dropped", r)
	}
	if len(f.pages) != 2 || f.pages[1].page != p2 || len(f.pages[1].rows) != 2 {
		t.Errorf("pages handed over: %v", f.pages)
	}
}

// A change the backfill's sink does not receive (an action it does not
// take, a filter that fails) leaves the row in the page: only changes the
// sink gets carry a newer state of the row.
func TestWindowRecordsOnlyWhatTheSinkReceives(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t, func(c *config.Sink) {
		c.Actions = []string{"insert", "update"}
		c.Filters = []config.Filter{{Column: "v", Op: "=", Value: "x"}}
	})
	change := func(action sink.Action, id, v string) {
		f.tx(func(ctx context.Context) {
			ch := &sink.Change{Rel: f.rel, Action: action, CommitLSN: f.lsn}
			row := [][]byte{[]byte(id), []byte(v)}
			if action == sink.Delete {
				ch.Old = row
			} else {
				ch.New = row
			}
			if err := f.c.Change(ctx, ch); err != nil {
				f.t.Fatal(err)
			}
		})
	}
	w := f.c.OpenWindow(7, "public", "t", []string{"id"})
	defer w.Close()
	f.mark(w, 0, false)
	f.mark(w, 1, false)
	change(sink.Update, "1", `"y"`) // the filter fails: not received
	change(sink.Update, "2", `"x"`) // received: its state wins over the page's
	change(sink.Delete, "3", `"x"`) // an action the sink does not take
	p := f.page(1)
	for _, id := range []string{"1", "2", "3", "4"} {
		p.Rows = append(p.Rows, [][]byte{[]byte(id), []byte(`"x"`)})
		p.Keys = append(p.Keys, id)
	}
	w.Submit(p)
	f.mark(w, 1, true)
	if r := result(t, p); r.Err != nil || r.Written != 3 || r.Dropped != 1 {
		t.Fatalf("page: %+v, want 3 written (1, 3, 4), 1 dropped (2)", r)
	}
	for i, want := range []string{`"id":1`, `"id":3`, `"id":4`} {
		if p := string(f.pages[0].rows[i].Payload); !strings.Contains(p, want) || !strings.Contains(p, `"action":"read"`) {
			t.Errorf("read %d: %s, want %s", i, p, want)
		}
	}
}

// Watermarks of unknown or closed windows are ignored; a page whose low
// watermark was never seen, or whose window saw a change without its key,
// is read again; a sink capture does not route yet writes nothing.
func TestWindowInconclusive(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t)
	stale := f.c.OpenWindow(7, "public", "t", []string{"id"})
	stale.Close()
	f.mark(stale, 0, false)
	if f.c.wm.recording.Load() != 0 {
		t.Fatal("a closed window records")
	}

	w := f.c.OpenWindow(7, "public", "t", []string{"id"})
	defer w.Close()
	p := f.page(1, "1")
	w.Submit(p)
	f.mark(w, 1, true)
	if r := result(t, p); !errors.Is(r.Err, ErrPageRetry) {
		t.Fatalf("high without low: %+v", r)
	}

	f.mark(w, 0, false)
	f.mark(w, 2, false)
	f.tx(func(ctx context.Context) { // an old tuple without the key column
		ch := &sink.Change{Rel: f.rel, Action: sink.Delete, Old: [][]byte{nil, []byte(`"x"`)}}
		if err := f.c.Change(ctx, ch); err != nil {
			t.Fatal(err)
		}
	})
	p = f.page(2, "9")
	w.Submit(p)
	f.mark(w, 2, true)
	if r := result(t, p); !errors.Is(r.Err, ErrPageRetry) {
		t.Fatalf("unknown key in the window: %+v", r)
	}

	f.mark(w, 3, false)
	f.mark(w, 4, false) // the unknown key is two lows back now
	p = f.page(4, "9")
	p.SinkID = 8
	w.Submit(p)
	f.mark(w, 4, true)
	if r := result(t, p); !errors.Is(r.Err, ErrSinkNotRouted) {
		t.Fatalf("unrouted sink: %+v", r)
	}
	p = f.page(5, "9")
	f.mark(w, 5, false)
	w.Submit(p)
	f.mark(w, 5, true)
	if r := result(t, p); r.Err != nil || r.Written != 1 {
		t.Fatalf("after the window moved on: %+v", r)
	}
}

// Values survive the retention encoding byte for byte, absent columns
// and SQL NULL kept apart.
func TestValuesJSONRoundTrip(t *testing.T) {
	t.Parallel()
	vals := [][]byte{[]byte(`1`), nil, []byte(`null`), []byte(`"a \"q\" <b> é"`), []byte(`{"k": [1, 2.50]}`), sink.UnchangedToast}
	got, err := parseValuesJSON(AppendValuesJSON(nil, vals))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(vals) {
		t.Fatalf("got %d values", len(got))
	}
	for i := range vals {
		if (got[i] == nil) != (vals[i] == nil) || string(got[i]) != string(vals[i]) {
			t.Errorf("value %d: %q, want %q", i, got[i], vals[i])
		}
	}
}

// A flush waits for the pages being written of the sinks it has messages
// for (a read must commit before its sink's newer changes), and for no
// other sink's.
func TestFlushWaitsForItsSinksPages(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t)
	pw := &pageWrite{page: f.page(1, "1"), done: make(chan struct{})}
	f.c.pending = map[int64]*pageWrite{7: pw}
	f.c.pendingPage = pw
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	f.c.touched = map[int64]int{8: 1} // another sink's messages: no wait
	if err := f.c.waitPages(cancelled); err != nil {
		t.Fatalf("a flush without the page's sink waited: %v", err)
	}
	f.c.touched = map[int64]int{7: 1, 8: 1}
	if err := f.c.waitPages(cancelled); err == nil {
		t.Fatal("a flush with the page's sink did not wait for the page")
	}
	close(pw.done) // committed (or failed: its sink's changes go on)
	if err := f.c.waitPages(cancelled); err != nil || len(f.c.pending) != 0 || f.c.pendingPage != nil {
		t.Fatalf("after the page: err %v, pending %v, last %v", err, f.c.pending, f.c.pendingPage)
	}
}

// Pages are handed over in order, each after the one before it, and
// capture keeps the latest of each sink for its flushes to wait for.
func TestPagesHandedOverInOrder(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t)
	w := f.c.OpenWindow(7, "public", "t", []string{"id"})
	defer w.Close()
	f.mark(w, 0, false)
	for seq := uint64(1); seq <= 2; seq++ {
		f.mark(w, seq, false)
		p := f.page(seq, "1", "2")
		w.Submit(p)
		f.mark(w, seq, true)
		if r := result(t, p); r.Err != nil || r.Written != 2 {
			t.Fatalf("page %d: %+v", seq, r)
		}
	}
	if len(f.pages) != 2 || f.pages[0].page.Seq != 1 || f.pages[1].page.Seq != 2 {
		t.Fatalf("pages handed over: %v", f.pages)
	}
	if f.pages[1].prev != f.pages[0] || f.pages[0].prev != nil || f.c.pending[7] != f.pages[1] || f.c.pendingPage != f.pages[1] {
		t.Errorf("page 2 does not commit after page 1, or flushes of sink 7 do not wait for it")
	}
}

// A page handed over after one that failed is not written either: its
// backfill reads both again, and its position must not pass the first.
func TestPageAfterAFailedPageFails(t *testing.T) {
	t.Parallel()
	f := newHookFixture(t)
	prev := &pageWrite{done: make(chan struct{}), failed: true}
	close(prev.done)
	p := f.page(2, "3")
	p.Flushed, p.Failed = make(chan struct{}), make(chan error, 1)
	pw := &pageWrite{page: p, prev: prev, done: make(chan struct{})}
	f.c.commitPageAfter(context.Background(), pw)
	select {
	case err := <-p.Failed:
		if !errors.Is(err, errEarlierPage) {
			t.Fatalf("failed with %v, want errEarlierPage", err)
		}
	default:
		t.Fatal("page after a failed page not failed")
	}
	select {
	case <-p.Flushed:
		t.Fatal("page after a failed page announced as written")
	case <-pw.done:
	}
	if !pw.failed {
		t.Fatal("the next page would not know this one failed")
	}
}
