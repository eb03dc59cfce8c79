package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// stateStore opens the state schema the way the API does, for tests that
// create and watch backfills.
func stateStore(t testing.TB, url string) *outbox.Store {
	t.Helper()
	st, err := outbox.Open(context.Background(), url, "walhook", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// waitBackfill waits until a backfill leaves the running state and
// returns it.
func waitBackfill(t testing.TB, st *outbox.Store, sinkName string, id int64, d time.Duration) *backfill.Backfill {
	t.Helper()
	var bf *backfill.Backfill
	waitFor(t, d, fmt.Sprintf("backfill %d to end", id), func() bool {
		var err error
		bf, err = backfill.Get(context.Background(), st, sinkName, id)
		if err != nil {
			t.Fatal(err)
		}
		return bf.State != backfill.Running
	})
	return bf
}

// reads returns the delivered read messages by row id.
func reads(msgs []message) map[float64]int {
	out := map[float64]int{}
	for _, m := range msgs {
		if m.Action == "read" {
			out[m.Record["id"].(float64)]++
		}
	}
	return out
}

// `start: beginning` backfills 50,000 rows: every row arrives once as a
// read, each group (group_by) in primary-key order, with progress
// recorded.
func TestBackfillFull(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id bigint PRIMARY KEY, g int NOT NULL, v text);
		INSERT INTO t SELECT i, i % 97, 'row ' || i FROM generate_series(1, 50000) i;`, "public.t")
	b.cfg.Sinks[0].Start = "beginning"
	b.cfg.Sinks[0].BatchSize = 100
	b.cfg.Sinks[0].GroupBy = map[string][]string{"public.t": {"g"}}
	b.start(t)
	st := stateStore(t, b.url)
	var list []*backfill.Backfill
	waitFor(t, 10*time.Second, "the leader to apply start: beginning", func() bool {
		var err error
		if list, err = backfill.List(context.Background(), st, "s"); err != nil {
			t.Fatal(err)
		}
		return len(list) > 0
	})
	if len(list) != 1 {
		t.Fatalf("backfills of s: %+v", list)
	}
	bf := waitBackfill(t, st, "s", list[0].ID, 90*time.Second)
	if bf.State != backfill.Done || bf.RowsProcessed != 50000 || bf.RowsTotal != 50000 {
		t.Fatalf("backfill ended %+v", bf)
	}
	msgs := b.recv.waitCount(t, 50000, 60*time.Second)
	got := reads(msgs)
	if len(got) != 50000 {
		t.Fatalf("%d distinct rows read, want 50000", len(got))
	}
	last := map[float64]float64{}
	for _, m := range msgs {
		id, g := m.Record["id"].(float64), m.Record["g"].(float64)
		if m.Action != "read" || m.Metadata.TableName != "t" {
			t.Fatalf("unexpected message %s", m.Raw)
		}
		if id <= last[g] {
			t.Fatalf("group %v: row %v delivered after row %v", g, id, last[g])
		}
		last[g] = id
	}
}

// Updates, deletes and inserts while a backfill runs: for every row the
// versions delivered never go back (a read never follows a newer change)
// and the last message delivered is the row's final state.
func TestBackfillConcurrentChanges(t *testing.T) {
	const rows = 20000
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO t SELECT i, 0 FROM generate_series(1, 20000) i;`, "public.t")
	b.cfg.Sinks[0].BatchSize = 100
	b.cfg.Sinks[0].Concurrency = 8
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()

	// Writers: bump versions of random rows, delete some, insert new
	// ones past the end, until the backfill is over. They stop by a flag,
	// not by cancelling their statements: a cancelled statement may still
	// commit after its caller returned.
	var wg sync.WaitGroup
	var writes atomic.Int64
	var stop atomic.Bool
	defer stop.Store(true)
	for w := 0; w < 3; w++ {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for !stop.Load() {
				id := 1 + r.IntN(rows)
				var err error
				switch x := r.IntN(100); {
				case x < 3:
					_, err = b.db.Exec(ctx, `DELETE FROM t WHERE id = $1`, id)
				case x < 6:
					_, err = b.db.Exec(ctx, `INSERT INTO t VALUES ($1, 0) ON CONFLICT (id) DO UPDATE SET v = t.v + 1`, rows+1+r.IntN(1000))
				default:
					// Several rows per transaction, near each other, so
					// pages see changes in their own key range.
					_, err = b.db.Exec(ctx, `UPDATE t SET v = v + 1 WHERE id BETWEEN $1 AND $1 + 5`, id)
				}
				if err != nil {
					t.Errorf("writer: %v", err)
					return
				}
				writes.Add(1)
				time.Sleep(5 * time.Millisecond) // a busy table, not a flood the test machine cannot drain
			}
		})
	}
	waitFor(t, 5*time.Second, "writers to start", func() bool { return writes.Load() > 50 })
	bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{})
	if err != nil {
		t.Fatal(err)
	}
	bf = waitBackfill(t, st, "s", bf.ID, 90*time.Second)
	stop.Store(true)
	wg.Wait()
	if bf.State != backfill.Done {
		t.Fatalf("backfill ended %+v", bf)
	}
	t.Logf("%d writes during the backfill", writes.Load())

	// The final state, then wait until every row's last message matches.
	final := finalValues(t, b)
	type state struct {
		v       float64
		deleted bool
		seen    bool
	}
	var last map[float64]state
	var mismatch string
	check := func() bool {
		msgs := b.recv.acked()
		last = map[float64]state{}
		for _, m := range msgs {
			id := m.Record["id"].(float64)
			if m.Action == "delete" {
				last[id] = state{deleted: true, seen: true}
				continue
			}
			last[id] = state{v: m.Record["v"].(float64), seen: true}
		}
		for id, v := range final {
			if s := last[id]; !s.seen || s.deleted || s.v != v {
				mismatch = fmt.Sprintf("row %v: last delivered %+v, final v=%v", id, s, v)
				return false
			}
		}
		for id, s := range last {
			if _, ok := final[id]; !ok && !s.deleted {
				mismatch = fmt.Sprintf("row %v: deleted, but last delivered %+v", id, s)
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(60 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("after the backfill: %s", mismatch)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Versions per row never go back: a read is never delivered after a
	// newer change of its row.
	msgs := b.recv.acked()
	prev := map[float64]float64{}
	nreads := 0
	for _, m := range msgs {
		id := m.Record["id"].(float64)
		if m.Action == "read" {
			nreads++
		}
		if m.Action == "delete" {
			prev[id] = -1
			continue
		}
		v := m.Record["v"].(float64)
		if p, ok := prev[id]; ok && v < p && p >= 0 {
			t.Errorf("row %v: %s of v=%v delivered after v=%v", id, m.Action, v, p)
		}
		prev[id] = v
	}
	t.Logf("%d reads, %d messages", nreads, len(msgs))
}

// A backfill stopped mid-way (the service shut down while the backfill
// waits for its sink's backlog to drain) resumes from its last written
// page: every row is read exactly once over both runs.
func TestBackfillResumesAfterRestart(t *testing.T) {
	const rows = 30000
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 30000) i;`, "public.t")
	b.cfg.Sinks[0].BatchSize = 100 // backlog bound 10,000
	stop := b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()
	// A paused sink delivers nothing: the backfill fills the outbox up
	// to its bound, then waits.
	b.exec(t, `UPDATE walhook.sinks SET status = 'paused'`)
	bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{Tables: []string{"public.t"}})
	if err != nil {
		t.Fatal(err)
	}
	var before *backfill.Backfill
	waitFor(t, 30*time.Second, "the backfill to pause at its backlog bound", func() bool {
		cur, err := backfill.Get(ctx, st, "s", bf.ID)
		if err != nil {
			t.Fatal(err)
		}
		paused := before != nil && cur.RowsProcessed == before.RowsProcessed && cur.RowsProcessed > 0
		before = cur
		if !paused {
			time.Sleep(time.Second) // paused means: no progress over a second
		}
		return paused
	})
	if before.State != backfill.Running || before.RowsProcessed >= rows {
		t.Fatalf("backfill before the restart: %+v", before)
	}
	stop()
	mid, err := backfill.Get(ctx, st, "s", bf.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped at %d of %d rows", mid.RowsProcessed, rows)

	b.exec(t, `UPDATE walhook.sinks SET status = 'active'`)
	b.start(t)
	done := waitBackfill(t, st, "s", bf.ID, 60*time.Second)
	if done.State != backfill.Done || done.RowsProcessed != rows {
		t.Fatalf("backfill after the restart: %+v", done)
	}
	waitFor(t, 60*time.Second, "every row read", func() bool { return len(reads(b.recv.acked())) == rows })
	b.waitDrained(t, 60*time.Second) // the backfill is done: a row read twice is queued or delivered
	for id, n := range reads(b.recv.acked()) {
		if n != 1 {
			t.Errorf("row %v read %d times", id, n)
		}
	}
}

// A cancelled backfill stops within a page.
func TestBackfillCancel(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY);
		INSERT INTO t SELECT generate_series(1, 30000);`, "public.t")
	b.cfg.Sinks[0].BatchSize = 10
	var gate atomic.Bool
	b.recv.setRespond(func(*request) int {
		if !gate.Load() {
			return 500
		}
		return 200
	})
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()
	bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a first page", func() bool {
		cur, err := backfill.Get(ctx, st, "s", bf.ID)
		return err == nil && cur.RowsProcessed > 0
	})
	cancelled, err := backfill.Cancel(ctx, st, "s", bf.ID)
	if err != nil || cancelled.State != backfill.Cancelled {
		t.Fatalf("cancel: %+v %v", cancelled, err)
	}
	gate.Store(true)
	// The runner exposes no event for having seen the cancel, so this
	// waits longer than it takes to write a page: a runner that missed it
	// would have written more rows by then.
	time.Sleep(1500 * time.Millisecond)
	after, err := backfill.Get(ctx, st, "s", bf.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != backfill.Cancelled || after.RowsProcessed != cancelled.RowsProcessed {
		t.Fatalf("after cancel: %+v (at cancel %+v)", after, cancelled)
	}
	if after.RowsProcessed >= 30000 {
		t.Fatalf("cancelled backfill read the whole table")
	}
	if again, err := backfill.Cancel(ctx, st, "s", bf.ID); err != nil || again.State != backfill.Cancelled {
		t.Fatalf("cancel again: %+v %v", again, err)
	}
}

// A partial backfill copies only the rows where column >= from.
func TestBackfillPartial(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, day date NOT NULL);
		INSERT INTO t SELECT i, date '2024-01-01' + (i % 100) FROM generate_series(1, 5000) i;
		CREATE TABLE other (id int PRIMARY KEY);
		INSERT INTO other SELECT generate_series(1, 10);`, "public.t", "public.other")
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()
	// The leader applies sink starts every second; a round that makes no
	// backfill leaves no trace to await, so wait out more than one.
	time.Sleep(1500 * time.Millisecond)
	if list, err := backfill.List(ctx, st, "s"); err != nil || len(list) != 0 {
		t.Fatalf("start: end made backfills: %+v %v", list, err)
	}
	if _, err := backfill.Create(ctx, st, nil, "s", backfill.Request{Tables: []string{"public.nope"}}); err == nil {
		t.Fatal("a table the sink does not subscribe to was accepted")
	}
	if _, err := backfill.Create(ctx, st, nil, "s", backfill.Request{Column: "day"}); err == nil {
		t.Fatal("column without from was accepted")
	}
	bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{Tables: []string{"public.t"}, Column: "day", From: []byte(`"2024-03-01"`)})
	if err != nil {
		t.Fatal(err)
	}
	bf = waitBackfill(t, st, "s", bf.ID, 30*time.Second)
	var want int
	if err := b.db.QueryRow(ctx, `SELECT count(*) FROM t WHERE day >= '2024-03-01'`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if bf.State != backfill.Done || bf.RowsProcessed != int64(want) {
		t.Fatalf("backfill ended %+v, want %d rows", bf, want)
	}
	b.recv.waitCount(t, want, 30*time.Second)
	b.waitDrained(t, 30*time.Second) // the backfill is done: anything more is queued or delivered
	msgs := b.recv.acked()
	if len(msgs) != want {
		t.Fatalf("%d messages, want %d", len(msgs), want)
	}
	for _, m := range msgs {
		if m.Metadata.TableName != "t" || m.Record["day"].(string) < "2024-03-01" {
			t.Fatalf("outside the partial backfill: %s", m.Raw)
		}
	}

	// A numeric from, and a column missing from the table, with the
	// source at hand: checked at once.
	if _, err := backfill.Create(ctx, st, b.db, "s", backfill.Request{Tables: []string{"public.other"}, Column: "day", From: []byte(`1`)}); err == nil {
		t.Fatal("a column missing from the table was accepted")
	}
	bf, err = backfill.Create(ctx, st, b.db, "s", backfill.Request{Tables: []string{"public.other"}, Column: "id", From: []byte(`8`)})
	if err != nil {
		t.Fatal(err)
	}
	if bf = waitBackfill(t, st, "s", bf.ID, 30*time.Second); bf.State != backfill.Done || bf.RowsProcessed != 3 {
		t.Fatalf("numeric partial backfill: %+v", bf)
	}
}

// recordOf is a message's record as sent.
func recordOf(t testing.TB, m message) string {
	t.Helper()
	var env struct {
		Record json.RawMessage `json:"record"`
	}
	if err := json.Unmarshal(m.Raw, &env); err != nil {
		t.Fatal(err)
	}
	return string(env.Record)
}

// Composite, text, uuid and enum primary keys page correctly (enum order
// is declaration order, not text order), and a read renders every value
// type byte for byte like a live change of the same row.
func TestBackfillKeyTypes(t *testing.T) {
	b := setup(t, `
		DO $$ BEGIN
			EXECUTE (SELECT 'CREATE TYPE label AS ENUM (' || string_agg(quote_literal('m' || (3000 - i)), ',' ORDER BY i) || ')' FROM generate_series(1, 2500) i);
		END $$;
		CREATE TABLE comp (a int, b text, v int, PRIMARY KEY (a, b));
		INSERT INTO comp SELECT i / 7, 'k' || (i % 7) || md5(i::text), i FROM generate_series(1, 3000) i;
		CREATE TABLE tx (id text PRIMARY KEY, v int);
		INSERT INTO tx SELECT CASE WHEN i % 3 = 0 THEN upper(md5(i::text)) ELSE md5(i::text) || ' é' END, i FROM generate_series(1, 3000) i;
		CREATE TABLE tu (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v int);
		INSERT INTO tu (v) SELECT generate_series(1, 3000);
		CREATE TABLE te (id label PRIMARY KEY, v int);
		INSERT INTO te SELECT e, row_number() OVER () FROM unnest(enum_range(NULL::label)) e;
		CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
		CREATE TABLE types (
			id bigint PRIMARY KEY, i2 smallint, f4 real, f8 double precision, num numeric, num_nan numeric,
			ok boolean, txt text, ch char(3), u uuid, m mood, j json, jb jsonb, ia integer[], ta text[], ma mood[],
			tstz timestamptz, ts timestamp, d date, tm time, ttz timetz, by bytea, iv interval, inet_v inet, dom posint, nul text,
			g int GENERATED ALWAYS AS (id * 2) STORED);
		INSERT INTO types VALUES (1, -2, 1.5, 0.1, 12345678901234567890.000100, 'NaN', true, 'he said "hi"
next', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{"a": [1, 2]}', '{"b": {"c": null}}',
			'{1,NULL,3}', '{"x,y","q\"z"}', '{sad,happy}', '2024-03-20 15:30:00.123456+02', '2024-03-20 15:30:00',
			'2024-03-20', '15:30:00', '15:30:00+02', '\x0102ff', '1 day 02:00:00', '10.0.0.1/32', 7, NULL);`,
		"public.comp", "public.tx", "public.tu", "public.te", "public.types")
	b.cfg.Sinks[0].BatchSize = 100
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()
	bf, err := backfill.Create(ctx, st, b.db, "s", backfill.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if bf = waitBackfill(t, st, "s", bf.ID, 60*time.Second); bf.State != backfill.Done {
		t.Fatalf("backfill ended %+v", bf)
	}
	counts := map[string]int{"comp": 3000, "tx": 3000, "tu": 3000, "te": 2500, "types": 1}
	total := 0
	for _, n := range counts {
		total += n
	}
	if bf.RowsProcessed != int64(total) {
		t.Errorf("rows processed %d, want %d", bf.RowsProcessed, total)
	}
	msgs := b.recv.waitCount(t, total, 60*time.Second)
	seen := map[string]map[string]bool{}
	for _, m := range msgs {
		tbl := m.Metadata.TableName
		if seen[tbl] == nil {
			seen[tbl] = map[string]bool{}
		}
		var key string
		if tbl == "comp" {
			key = jsonString(m.Record["a"]) + "/" + jsonString(m.Record["b"])
		} else {
			key = jsonString(m.Record["id"])
		}
		if seen[tbl][key] {
			t.Errorf("%s: row %s read twice", tbl, key)
		}
		seen[tbl][key] = true
	}
	for tbl, n := range counts {
		if len(seen[tbl]) != n {
			t.Errorf("%s: %d rows read, want %d", tbl, len(seen[tbl]), n)
		}
	}

	// The read of each table's rows against a live update of the same row.
	var read message
	for _, m := range msgs {
		if m.Metadata.TableName == "types" {
			read = m
		}
	}
	b.exec(t, `UPDATE types SET id = id`)
	b.exec(t, `UPDATE te SET v = v WHERE id = 'm600'`)
	live := b.recv.waitCount(t, total+2, 30*time.Second)
	for _, m := range live[total:] {
		if m.Action != "update" {
			t.Fatalf("want the updates last, got %s", m.Raw)
		}
		if m.Metadata.TableName == "types" {
			if got, want := recordOf(t, read), recordOf(t, m); got != want {
				t.Errorf("read record differs from a live change of the same row:\nread %s\nlive %s", got, want)
			}
		}
	}
	if !seen["te"][`"m600"`] {
		t.Error("enum row m600 not read")
	}
}

// The backfill and replay routes and commands: create, list, get and
// cancel backfills, the CLI's --wait, replays, and clear errors.
func TestBackfillAPIAndCLI(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT i, 'x' FROM generate_series(1, 3000) i;`, "public.t")
	b.cfg.Retention = config.Retention{Tables: []string{"public.t"}, Keep: config.Duration(time.Hour)}
	e := startAPI(t, b)
	c := &cliEnv{apiEnv: e, bin: walhookBin(t)}

	bf := decodeAs[backfill.Backfill](t, e.must(t, 201, "POST", "/api/sinks/s/backfills", `{"tables": ["public.t"], "column": "id", "from": 2001}`))
	if bf.ID == 0 || bf.State != "running" || bf.Sink != "s" {
		t.Fatalf("created %+v", bf)
	}
	path := fmt.Sprintf("/api/sinks/s/backfills/%d", bf.ID)
	waitFor(t, 30*time.Second, "the backfill to end", func() bool {
		bf = decodeAs[backfill.Backfill](t, e.must(t, 200, "GET", path, nil))
		return bf.State != "running"
	})
	if bf.State != "done" || bf.RowsProcessed != 1000 || bf.RowsTotal != 1000 {
		t.Fatalf("backfill %+v", bf)
	}
	list := decodeAs[struct{ Data []backfill.Backfill }](t, e.must(t, 200, "GET", "/api/sinks/s/backfills", nil))
	if len(list.Data) != 1 || list.Data[0].ID != bf.ID {
		t.Fatalf("list %+v", list)
	}
	if got := decodeAs[backfill.Backfill](t, e.must(t, 200, "DELETE", path, nil)); got.State != "done" {
		t.Errorf("DELETE of a done backfill changed it: %+v", got)
	}
	e.must(t, 404, "GET", "/api/sinks/s/backfills/999", nil)
	e.must(t, 404, "GET", "/api/sinks/s/backfills/x", nil)
	e.must(t, 404, "GET", "/api/sinks/nope/backfills", nil)
	e.must(t, 404, "POST", "/api/sinks/nope/backfills", "")
	for body, want := range map[string]string{
		`{"column": "id"}`:                   "column and from go together",
		`{"tables": ["public.x"]}`:           "not one of sink s's tables",
		`{"tabels": ["public.t"]}`:           "unknown field",
		`{"from": {"a": 1}, "column": "id"}`: "from must be",
	} {
		out := e.must(t, 400, "POST", "/api/sinks/s/backfills", body)
		if msg := decodeAs[apiErr](t, out).Error.Message; !strings.Contains(msg, want) {
			t.Errorf("POST %s: %q, want %q", body, msg, want)
		}
	}

	// The CLI: all tables, waiting with progress (no terminal: lines).
	out := c.ok(t, "backfill", "s", "--wait")
	if !strings.Contains(out, "done: 3000 rows") {
		t.Errorf("backfill --wait: %q", out)
	}
	out = c.ok(t, "backfill", "s", "--table", "public.t", "--column", "id", "--from", "2991", "--json")
	if started := decodeAs[backfill.Backfill](t, []byte(out)); started.State != "running" || started.Column != "id" || *started.From != "2991" {
		t.Errorf("backfill --json: %s", out)
	}
	c.fails(t, "--column and --from go together", "backfill", "s", "--column", "id")
	c.fails(t, `sink "nope": not found`, "backfill", "nope")
	b.recv.waitCount(t, 1000+3000+10, 60*time.Second)

	// Replays: only the changes retained in the window (the rows inserted
	// before walhook started were never captured).
	b.exec(t, `INSERT INTO t SELECT i, 'new' FROM generate_series(3001, 3005) i`)
	b.recv.waitCount(t, 4015, 20*time.Second)
	if out := c.ok(t, "replay", "s", "--from", "1h", "--wait"); !strings.HasSuffix(out, " done: 5 messages to sink s (5 retained changes in the window)\n") ||
		!strings.Contains(out, "5/~5 changes  5 messages, done\n") {
		t.Errorf("replay --wait: %q", out)
	}
	b.recv.waitCount(t, 4020, 20*time.Second)
	res := decodeAs[backfill.Replay](t, e.must(t, 201, "POST", "/api/sinks/s/replays", map[string]any{"from": time.Now().Add(-time.Hour), "to": time.Now().Add(-time.Minute)}))
	waitFor(t, 20*time.Second, "the empty replay to end", func() bool {
		res = decodeAs[backfill.Replay](t, e.must(t, 200, "GET", fmt.Sprintf("/api/sinks/s/replays/%d", res.ID), nil))
		return res.State != "running"
	})
	if res.State != "done" || res.Messages != 0 || res.ChangesTotal != 0 {
		t.Errorf("replay of an empty window: %+v", res)
	}
	if list := decodeAs[struct{ Data []backfill.Replay }](t, e.must(t, 200, "GET", "/api/sinks/s/replays", nil)); len(list.Data) != 2 || list.Data[0].ID != res.ID {
		t.Errorf("replays: %+v", list)
	}
	out = c.ok(t, "replay", "s", "--from", "2h", "--to", "1h", "--json")
	if started := decodeAs[backfill.Replay](t, []byte(out)); started.ID == 0 || started.Sink != "s" {
		t.Errorf("replay --json: %s", out)
	}
	// A retried POST with the same Idempotency-Key gets the same replay;
	// the key with another window is a conflict.
	window := fmt.Sprintf(`{"from": %q, "to": %q}`, time.Now().Add(-3*time.Hour).Format(time.RFC3339), time.Now().Add(-2*time.Hour).Format(time.RFC3339))
	post := func(body string) (int, backfill.Replay) {
		req, _ := http.NewRequest("POST", e.base+"/api/sinks/s/replays", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiToken)
		req.Header.Set("Idempotency-Key", "k-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rp backfill.Replay
		_ = json.NewDecoder(resp.Body).Decode(&rp)
		return resp.StatusCode, rp
	}
	st1, first := post(window)
	st2, second := post(window)
	if st1 != 201 || st2 != 200 || first.ID == 0 || second.ID != first.ID || second.IdempotencyKey != "k-1" {
		t.Errorf("POST twice with one Idempotency-Key: %d %+v, then %d %+v", st1, first, st2, second)
	}
	if st3, _ := post(`{"from": "2024-01-01T00:00:00Z"}`); st3 != 409 {
		t.Errorf("the key with another window: %d, want 409", st3)
	}
	// DELETE cancels a running replay; one that ended stays as it was.
	replayPath := fmt.Sprintf("/api/sinks/s/replays/%d", res.ID)
	if got := decodeAs[backfill.Replay](t, e.must(t, 200, "DELETE", replayPath, nil)); got.State != "done" {
		t.Errorf("DELETE of a done replay changed it: %+v", got)
	}
	e.must(t, 404, "DELETE", "/api/sinks/s/replays/999", nil)
	e.must(t, 404, "GET", "/api/sinks/s/replays/999", nil)
	e.must(t, 404, "GET", "/api/sinks/s/replays/x", nil)
	e.must(t, 400, "POST", "/api/sinks/s/replays", `{"to": "2024-01-01T00:00:00Z"}`)
	e.must(t, 400, "POST", "/api/sinks/s/replays", `{"from": "yesterday"}`)
	e.must(t, 404, "POST", "/api/sinks/nope/replays", `{"from": "2024-01-01T00:00:00Z"}`)
	c.fails(t, "--from is required", "replay", "s")
	c.fails(t, `--from "soon"`, "replay", "s", "--from", "soon")
}

// finalValues reads table t's rows as id → v (as float64, the JSON
// numbers delivered messages carry), to compare with what was delivered.
func finalValues(t *testing.T, b *testBundle) map[float64]float64 {
	t.Helper()
	final := map[float64]float64{}
	rs, err := b.db.Query(context.Background(), `SELECT id, v FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var id, v int
		if err := rs.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		final[float64(id)] = float64(v)
	}
	if rs.Err() != nil {
		t.Fatal(rs.Err())
	}
	return final
}
