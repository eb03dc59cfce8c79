package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/pgcluster"
)

// BenchmarkSuite measures every workload of the performance targets in
// one run and prints one markdown table at the end:
//
//	go test ./integration/ -run '^$' -bench BenchmarkSuite -benchtime 1x -timeout 20m
//
// Each workload runs next to a raw pglogrepl decode of the same WAL, so
// the ratios mean something on a shared, noisy machine. It starts a
// Postgres cluster of its own with fsync on (the test cluster runs with
// fsync off); WALHOOK_BENCH_FAST=1 uses the test cluster instead, for a
// quick look.
//
// The receiver and the writer of 1-row transactions run in a helper
// process (suite_helper_test.go), and walhook runs in this process (or,
// for the scale-out rows, as `walhook run` processes), so "walhook CPU"
// is this process's getrusage time (or the processes' /proc time), with
// nothing else in it but the benchmark's idle polling. Only the pull row
// has its consumer (an HTTP client) in the process too. The walsender's
// CPU is read from /proc/<pid>/stat of the pid pg_stat_replication shows
// for the slot.
//
// Sizes can be scaled with WALHOOK_BENCH_SCALE (e.g. 0.2 for a smoke
// run). WALHOOK_BENCH_ONLY=2,5 runs only those rows. No measurement
// waits more than WALHOOK_BENCH_CAP (default 20s) for its messages: a
// slow build reports the rate of what came by then, and says so.
func BenchmarkSuite(b *testing.B) {
	for i := 0; i < b.N; i++ {
		s := newSuite(b)
		s.run()
	}
}

type suite struct {
	b     *testing.B
	ctx   context.Context
	admin string
	// dataDir is the own cluster's data folder ("" on the test cluster).
	dataDir string
	fsync   string
	pgver   string
	helper  *benchHelper
	scale   float64
	cap     time.Duration // the longest wait for one measurement's messages
	only    map[string]bool
	seq     int
	rows    []suiteRow
}

// suiteRow is one line of the final table. Zero rates and CPU figures
// print as "–".
type suiteRow struct {
	id, workload string
	rate, raw    float64 // rows/s
	lat          string
	cpu, ws      float64 // µs per row: walhook process(es), its walsender
	rawCPU       float64 // µs per row: the raw decoder, its walsender
	rawWS        float64
	note         string
}

func newSuite(b *testing.B) *suite {
	s := &suite{b: b, ctx: context.Background(), scale: 1, cap: 20 * time.Second, only: map[string]bool{}}
	if d, err := time.ParseDuration(os.Getenv("WALHOOK_BENCH_CAP")); err == nil && d > 0 {
		s.cap = d
	}
	if v, err := strconv.ParseFloat(os.Getenv("WALHOOK_BENCH_SCALE"), 64); err == nil && v > 0 {
		s.scale = v
	}
	for _, r := range strings.Split(os.Getenv("WALHOOK_BENCH_ONLY"), ",") {
		if r = strings.TrimSpace(r); r != "" {
			s.only[r] = true
		}
	}
	if os.Getenv("WALHOOK_BENCH_FAST") == "" && os.Getenv(pgtest.EnvDatabaseURL) == "" {
		t0 := time.Now()
		c, err := pgcluster.Start(s.ctx, pgcluster.Options{Settings: costSettings()})
		if err != nil {
			b.Fatalf("start a durable cluster: %v", err)
		}
		b.Cleanup(func() {
			keepPlans(c.LogFile())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = c.Stop(ctx)
		})
		s.admin = c.URL("postgres")
		s.dataDir = c.DataDir()
		fmt.Printf("bench: own Postgres cluster started in %s\n", time.Since(t0).Round(time.Millisecond))
	} else {
		s.admin = pgtest.AdminURL(b)
	}
	conn, err := pgx.Connect(s.ctx, s.admin)
	if err != nil {
		b.Fatal(err)
	}
	_ = conn.QueryRow(s.ctx, `SELECT current_setting('fsync'), current_setting('server_version')`).Scan(&s.fsync, &s.pgver)
	conn.Close(s.ctx)
	s.helper = startBenchHelper(b)
	return s
}

func (s *suite) n(rows int) int { return max(int(float64(rows)*s.scale), 100) / 100 * 100 }

func (s *suite) run() {
	began := time.Now()
	steps := []struct {
		id string
		f  func()
	}{
		{"7", s.scaleOut}, // first: it builds the walhook binary before anything is timed
		{"1", func() {
			s.drain("1", "30k rows committed in 100-row txs, batch_size 1, default config", s.n(30_000), 1, false)
		}},
		{"2", s.live3k},
		{"3", func() {
			s.drain("3", "200k rows committed in 100-row txs, batch_size 100, default config", s.n(200_000), 100, false)
			s.drain("3b", "same, state in its own database", s.n(200_000), 100, true)
			s.captureOnly("3c", s.n(200_000))
		}},
		{"4", s.paced},
		{"5", s.retries},
		{"6", s.backfill},
		{"pull", s.pull},
	}
	for _, st := range steps {
		if len(s.only) > 0 && !s.only[st.id] {
			continue
		}
		t0 := time.Now()
		st.f()
		fmt.Printf("bench: row %s took %s\n", st.id, time.Since(t0).Round(time.Second))
	}
	s.print(time.Since(began))
}

func (s *suite) add(r suiteRow) {
	s.rows = append(s.rows, r)
	fmt.Printf("bench: | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.cells()...)
}

func (r suiteRow) cells() []any {
	num := func(v float64, f string) string {
		if v <= 0 {
			return "–"
		}
		return fmt.Sprintf(f, v)
	}
	ratio := "–"
	if r.rate > 0 && r.raw > 0 {
		ratio = fmt.Sprintf("%.3f", r.rate/r.raw)
	}
	rawCPU := "–"
	if r.rawCPU > 0 || r.rawWS > 0 {
		rawCPU = num(r.rawCPU, "%.1f") + " / " + num(r.rawWS, "%.1f")
	}
	lat := r.lat
	if lat == "" {
		lat = "–"
	}
	return []any{r.id, r.workload, num(r.rate, "%.0f"), num(r.raw, "%.0f"), ratio, lat, num(r.cpu, "%.0f"), num(r.ws, "%.1f"), rawCPU, r.note}
}

func (s *suite) print(took time.Duration) {
	fmt.Printf("\n## walhook benchmark suite (Postgres %s, fsync %s, %d CPUs, %s)\n\n", s.pgver, s.fsync, numCPU(), took.Round(time.Second))
	fmt.Println("| row | workload | walhook rows/s | raw decode rows/s | walhook/raw | commit→receipt p50 / p99 | walhook CPU µs/row | walsender CPU µs/row | raw decode: decoder / walsender CPU µs/row | notes |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range s.rows {
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.cells()...)
	}
	fmt.Println()
}

func numCPU() int {
	n := 0
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "processor") {
			n++
		}
	}
	return n
}

// newDB creates a database for one row; drop removes it with its slots,
// so no idle slot of an earlier row holds back later ones.
func (s *suite) newDB(tag string) string {
	s.seq++
	name := fmt.Sprintf("bench_%d_%s", s.seq, tag)
	conn, err := pgx.Connect(s.ctx, s.admin)
	if err != nil {
		s.b.Fatal(err)
	}
	defer conn.Close(s.ctx)
	if _, err := conn.Exec(s.ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
		s.b.Fatal(err)
	}
	if _, err := conn.Exec(s.ctx, `CREATE DATABASE `+name); err != nil {
		s.b.Fatal(err)
	}
	u, _ := url.Parse(s.admin)
	u.Path = "/" + name
	return u.String()
}

func (s *suite) drop(dbURL string) {
	u, _ := url.Parse(dbURL)
	name := strings.TrimPrefix(u.Path, "/")
	conn, err := pgx.Connect(s.ctx, s.admin)
	if err != nil {
		return
	}
	defer conn.Close(s.ctx)
	for range 50 {
		_, _ = conn.Exec(s.ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, _ = conn.Exec(s.ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		_ = conn.QueryRow(s.ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left)
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := conn.Exec(s.ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
		fmt.Printf("bench: drop %s: %v\n", name, err)
	}
}

func (s *suite) pool(dbURL string) *pgxpool.Pool {
	db, err := pgxpool.New(s.ctx, dbURL)
	if err != nil {
		s.b.Fatal(err)
	}
	return db
}

func (s *suite) exec(db *pgxpool.Pool, qs ...string) {
	for _, q := range qs {
		if _, err := db.Exec(s.ctx, q); err != nil {
			s.b.Fatalf("%s: %v", q, err)
		}
	}
}

// sourceDB makes a source database with the orders table, and a raw
// slot with its publication when raw is set (before any workload, so the
// raw decode sees the same WAL as walhook).
func (s *suite) sourceDB(raw bool) (string, *pgxpool.Pool) {
	u := s.newDB("src")
	db := s.pool(u)
	s.exec(db, benchDDL)
	if raw {
		s.exec(db, `CREATE PUBLICATION bench FOR TABLE orders`,
			`SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')`)
	}
	return u, db
}

// dropSlot drops a slot once its walsender has gone (a closed
// replication connection's walsender exits a moment later).
func (s *suite) dropSlot(db *pgxpool.Pool, slot string) {
	var err error
	for range 100 {
		if _, err = db.Exec(s.ctx, `SELECT pg_drop_replication_slot($1)`, slot); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.b.Fatalf("drop slot %s: %v", slot, err)
}

// config is walhook's config for one sink "s" on public.orders posting to
// the helper at /s; conc 0 keeps the default concurrency.
func (s *suite) config(src, state string, batch, conc int) *config.Config {
	cfg := &config.Config{
		Database:      config.Database{URL: src},
		State:         config.State{URL: state},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: s.helper.url}},
		Sinks:         []config.Sink{{Name: "s", Endpoint: "recv", Path: "/s", Tables: []string{"public.orders"}, BatchSize: batch, Concurrency: conc}},
		Log:           config.Log{Level: "error"},
	}
	cfg.ApplyDefaults()
	return cfg
}

// writeParallel commits rows in 100-row transactions over 4 connections.
func (s *suite) writeParallel(db *pgxpool.Pool, from, rows int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(100)) - 100
				if i >= rows {
					return
				}
				writeWorkload(s.ctx, s.b, db, from+i, min(100, rows-i))
			}
		})
	}
	wg.Wait()
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's utime+stime from /proc (100 Hz ticks).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	st := string(raw)
	f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	sy, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+sy) * time.Second / 100
}

// walsenderPID is the walsender streaming slot of db's database.
func (s *suite) walsenderPID(db *pgxpool.Pool, slot string) int {
	var pid int
	for range 100 {
		err := db.QueryRow(s.ctx, `SELECT r.pid FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
			WHERE s.slot_name = $1 AND s.database = current_database()`, slot).Scan(&pid)
		if err == nil {
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

// meter measures this process's CPU and a walsender's over a window,
// and the server's commits, WAL flushes and WAL bytes (whole cluster,
// which only the row's workload uses).
type meter struct {
	self, ws time.Duration
	pid      int
	db       *pgxpool.Pool
	srv      serverStats
}

type serverStats struct{ commits, syncs, bytes float64 }

func (s *suite) serverStats(db *pgxpool.Pool) serverStats {
	var st serverStats
	_ = db.QueryRow(s.ctx, `SELECT (SELECT sum(xact_commit) FROM pg_stat_database)::float8, wal_sync::float8, wal_bytes::float8 FROM pg_stat_wal`).
		Scan(&st.commits, &st.syncs, &st.bytes)
	return st
}

func (s *suite) startMeter(db *pgxpool.Pool, slot string) *meter {
	m := &meter{pid: s.walsenderPID(db, slot), db: db, srv: s.serverStats(db)}
	m.ws = procCPU(m.pid)
	m.self = selfCPU()
	return m
}

// server is the server's work per row since startMeter: commits, WAL
// flushes and WAL bytes. Postgres publishes these counters up to a
// second late, so short windows undercount.
func (s *suite) server(m *meter, rows int64) string {
	now := s.serverStats(m.db)
	r := float64(max(rows, 1))
	return fmt.Sprintf("per row: %.2f commits, %.2f WAL flushes, %.0f WAL bytes", (now.commits-m.srv.commits)/r, (now.syncs-m.srv.syncs)/r, (now.bytes-m.srv.bytes)/r)
}

// perRow is µs of walhook and walsender CPU per row since startMeter.
func (m *meter) perRow(rows int) (cpu, ws float64) {
	cpu = float64((selfCPU() - m.self).Microseconds()) / float64(rows)
	if m.pid != 0 {
		ws = float64((procCPU(m.pid) - m.ws).Microseconds()) / float64(rows)
	}
	return cpu, ws
}

// rawResult is a raw pglogrepl decode: rows/s and µs of CPU per row of
// the decoder (this process) and of its walsender.
type rawResult struct {
	n       int
	dur     time.Duration
	cpu, ws float64
}

func (r rawResult) rate() float64 { return float64(r.n) / r.dur.Seconds() }

// rawRun decodes slot with pglogrepl until it has seen want inserts and
// their commit; onInsert, when set, gets each insert's first column as
// text and when it arrived.
func (s *suite) rawRun(ctx context.Context, dbURL, slot, pub string, want int, onInsert func(id string, at time.Time)) rawResult {
	var pid int
	var ws0, cpu0 time.Duration
	changes, d := rawStream(ctx, s.b, dbURL, slot, pub, want, func(p int) {
		pid = p
		ws0, cpu0 = procCPU(pid), selfCPU()
	}, onInsert)
	return rawResult{n: changes, dur: d,
		cpu: float64((selfCPU() - cpu0).Microseconds()) / float64(changes),
		ws:  float64((procCPU(pid) - ws0).Microseconds()) / float64(changes)}
}

func pct(l []time.Duration) (p50, p99, mx time.Duration) {
	if len(l) == 0 {
		return 0, 0, 0
	}
	l = slices.Clone(l)
	slices.Sort(l)
	return l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}

// latText is p50 / p99, marked as a lower bound when some messages had
// not come when the wait ended.
func latText(l []time.Duration, missing int) string {
	if missing == 0 {
		return p50p99(l)
	}
	return fmt.Sprintf("≥ %s (%d of %d not received)", p50p99(l), missing, len(l))
}

// partial says how many rows a figure is over.
func (s *suite) partial(got int64, rows int, all bool) string {
	if all {
		return fmt.Sprintf("%d rows", rows)
	}
	return fmt.Sprintf("**stopped after %s: %d of %d rows**", s.cap, got, rows)
}

func p50p99(l []time.Duration) string {
	p50, p99, _ := pct(l)
	return ms(p50) + " / " + ms(p99)
}

// backlog makes cfg's slot and state schema (walhook started and
// stopped), commits rows in 100-row transactions to the source db, and
// decodes them raw from the bench_raw slot (sourceDB(true)) for the
// row's comparison.
func (s *suite) backlog(cfg *config.Config, db *pgxpool.Pool, rows int) rawResult {
	startService(s.b, cfg, zerolog.ErrorLevel, nil)()
	s.writeParallel(db, 1, rows)
	raw := s.rawRun(s.ctx, cfg.Database.URL, "bench_raw", "bench", rows, nil)
	s.dropSlot(db, "bench_raw")
	return raw
}

// drain: rows committed while walhook was stopped (its slot made
// before), then walhook started: rows/s from streaming to the last
// receipt, next to a raw decode of the same WAL made before walhook ran.
func (s *suite) drain(id, what string, rows, batch int, ownState bool) {
	src, db := s.sourceDB(true)
	defer s.drop(src)
	defer db.Close()
	state := src
	if ownState {
		state = s.newDB("state")
		defer s.drop(state)
	}
	cfg := s.config(src, state, batch, 0)
	raw := s.backlog(cfg, db, rows)

	s.helper.reset(helperMode{})
	cpu0 := selfCPU()
	t0 := time.Now()
	stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
	streaming := time.Now()
	m := s.startMeter(db, cfg.Database.Slot)
	m.self = cpu0 // start-up included
	costs := s.startCosts(db)
	st, all := s.helper.waitUpTo(int64(rows), s.cap)
	cpu, ws := m.perRow(int(st.N))
	costs.report(id, st.N)
	stop()
	time.Sleep(time.Second) // the server's counters
	srv := s.server(m, st.N)
	dur := time.Duration(st.Last - streaming.UnixNano())
	s.add(suiteRow{id: id, workload: what, rate: float64(st.N) / dur.Seconds(), raw: raw.rate(), cpu: cpu, ws: ws, rawCPU: raw.cpu, rawWS: raw.ws,
		note: fmt.Sprintf("%s, concurrency %d; start-up to streaming %s (not in rows/s); %s", s.partial(st.N, rows, all), cfg.Sinks[0].Concurrency, streaming.Sub(t0).Round(time.Millisecond), srv)})
}

// captureOnly: the rows of row 3 captured into the outbox of a pull
// sink that nobody consumes, so nothing is delivered: what capture alone
// (the walsender's decode, walhook's, the durable outbox write) costs a
// row, all processes together, and the most rows/s the machine's cores
// could give at that cost even if delivery were free.
func (s *suite) captureOnly(id string, rows int) {
	src, db := s.sourceDB(true)
	defer s.drop(src)
	defer db.Close()
	cfg := s.config(src, src, 100, 0)
	cfg.HTTPEndpoints = nil
	cfg.Sinks[0].Endpoint, cfg.Sinks[0].Path, cfg.Sinks[0].Kind = "", "", config.KindPull
	raw := s.backlog(cfg, db, rows)

	pg0, cpu0 := s.postgresCPU(), selfCPU()
	stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
	defer stop()
	t0 := time.Now()
	m := s.startMeter(db, cfg.Database.Slot)
	m.self = cpu0 // start-up included
	var got int64
	for deadline := t0.Add(s.cap); time.Now().Before(deadline) && got < int64(rows); time.Sleep(10 * time.Millisecond) {
		// Flushes commit in id order, so the greatest id visible is how
		// many rows are in (a fresh schema, one sink).
		if err := db.QueryRow(s.ctx, `SELECT COALESCE(max(id), 0) FROM `+cfg.State.Schema+`.outbox`).Scan(&got); err != nil {
			s.b.Fatalf("count captured rows: %v", err)
		}
	}
	dur := time.Since(t0)
	cpu, ws := m.perRow(int(max(got, 1)))
	note := fmt.Sprintf("%s, no delivery (a pull sink nobody consumes)", s.partial(got, rows, got >= int64(rows)))
	if pg0 != 0 {
		pg := float64((s.postgresCPU() - pg0).Microseconds()) / float64(max(got, 1))
		note += fmt.Sprintf("; Postgres CPU %.0f µs/row (all processes, the walsender included), with walhook's %.0f: %.0f µs/row, so %d cores give capture alone at most %.0fk rows/s", pg, cpu, pg+cpu, numCPU(), float64(numCPU())*1e3/(pg+cpu))
	}
	s.add(suiteRow{id: id, workload: "capture alone: the rows of row 3 into the outbox", rate: float64(got) / dur.Seconds(), raw: raw.rate(), cpu: cpu, ws: ws, rawCPU: raw.cpu, rawWS: raw.ws, note: note})
}

// live3k: 1-row transactions committed at about 3k/s over 8 connections
// while walhook runs at batch_size 1.
func (s *suite) live3k() {
	src, db := s.sourceDB(true)
	defer s.drop(src)
	defer db.Close()
	cfg := s.config(src, src, 1, 0)
	stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
	defer stop()
	rows := s.n(9_000)
	s.helper.reset(helperMode{Record: true})
	m := s.startMeter(db, cfg.Database.Slot)
	costs := s.startCosts(db)
	s.helper.write(helperWrite{URL: src, Table: "orders", From: 1, N: int64(rows), TPS: 3000, Conns: 16})
	w := s.helper.written()
	s.helper.waitUpTo(int64(rows), s.cap)
	st := s.helper.stats(true)
	cpu, ws := m.perRow(int(st.N))
	costs.report("2", st.N)
	stop()
	time.Sleep(time.Second)
	srv := s.server(m, int64(rows))
	lats, missing := latencies(w, st, "/s", 1)
	first, last := w.Commits[0], slices.Max(w.Commits)
	committed := float64(rows) / time.Duration(last-first).Seconds()
	delivered := float64(st.N) / time.Duration(st.Last-first).Seconds()
	raw := s.rawRun(s.ctx, src, "bench_raw", "bench", rows, nil)
	s.add(suiteRow{id: "2", workload: "1-row txs committed at ~3k/s while running, batch_size 1", rate: delivered, raw: raw.rate(), lat: latText(lats, missing),
		cpu: cpu, ws: ws, rawCPU: raw.cpu, rawWS: raw.ws,
		note: fmt.Sprintf("%s; committed at %.0f/s over 16 connections; rows/s = first commit → last receipt; raw decode after walhook, so its WAL has walhook's writes too; %s (the writer's included)", s.partial(st.N, rows, missing == 0), committed, srv)})
}

// paced: one 1-row transaction every 5 ms, decoded raw first (live, for
// its own commit-to-receipt latency), then through walhook.
func (s *suite) paced() {
	src, db := s.sourceDB(false)
	defer s.drop(src)
	defer db.Close()
	s.exec(db, `CREATE PUBLICATION bench FOR TABLE orders`, `SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')`)
	rawN := s.n(1_000)
	var mu sync.Mutex
	rawAt := map[string]int64{}
	done := make(chan rawResult, 1)
	go func() {
		done <- s.rawRun(s.ctx, src, "bench_raw", "bench", rawN, func(id string, at time.Time) {
			mu.Lock()
			rawAt["/raw "+id] = at.UnixNano()
			mu.Unlock()
		})
	}()
	time.Sleep(300 * time.Millisecond)
	s.helper.write(helperWrite{URL: src, Table: "orders", From: 1, N: int64(rawN), TPS: 200, Conns: 2})
	rw := s.helper.written()
	raw := <-done
	s.dropSlot(db, "bench_raw")
	var rawLats []time.Duration
	for i, c := range rw.Commits {
		if a, ok := rawAt["/raw "+strconv.Itoa(1+i)]; ok && c != 0 {
			rawLats = append(rawLats, time.Duration(a-c))
		}
	}

	cfg := s.config(src, src, 1, 0)
	stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
	defer stop()
	rows := s.n(2_000)
	s.helper.reset(helperMode{Record: true})
	m := s.startMeter(db, cfg.Database.Slot)
	s.helper.write(helperWrite{URL: src, Table: "orders", From: 100_001, N: int64(rows), TPS: 200, Conns: 2})
	w := s.helper.written()
	s.helper.waitUpTo(int64(rows), s.cap)
	st := s.helper.stats(true)
	cpu, ws := m.perRow(int(st.N))
	stop()
	time.Sleep(time.Second)
	srv := s.server(m, int64(rows))
	lats, missing := latencies(w, st, "/s", 100_001)
	_, _, mx := pct(lats)
	var took []time.Duration
	for _, t := range w.Took {
		if t > 0 {
			took = append(took, time.Duration(t))
		}
	}
	s.add(suiteRow{id: "4", workload: "paced: a 1-row tx every 5 ms (200 tps), batch_size 1", lat: latText(lats, missing), cpu: cpu, ws: ws,
		note: fmt.Sprintf("%s over %s, max %s; raw decode live (%d rows): p50 / p99 %s; the writer's own 1-row durable INSERT (send to commit returned, meanwhile): p50 / p99 %s, the floor of capture's outbox write; %s (the writer's included)",
			s.partial(st.N, rows, missing == 0), time.Duration(slices.Max(w.Commits)-w.Commits[0]).Round(100*time.Millisecond), ms(mx), rawN, p50p99(rawLats), p50p99(took), srv)})
	s.add(suiteRow{id: "4raw", workload: "paced, raw pglogrepl decode of the same kind of WAL (live)", lat: p50p99(rawLats), rawCPU: raw.cpu, rawWS: raw.ws})
}

// retries: the receiver fails every message once (retry.initial_backoff
// 20 ms); how late the second attempt comes after the not_before walhook
// set, which a trigger on the outbox records.
func (s *suite) retries() {
	src, db := s.sourceDB(false)
	defer s.drop(src)
	defer db.Close()
	cfg := &config.Config{
		Database:      config.Database{URL: src},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: s.helper.url}},
		Sinks: []config.Sink{{Name: "s", Endpoint: "recv", Path: "/s", Tables: []string{"public.orders"}, BatchSize: 1,
			Retry: config.Retry{InitialBackoff: config.Duration(20 * time.Millisecond)}}},
		Log: config.Log{Level: "error"},
	}
	cfg.ApplyDefaults()
	// The trigger goes on before walhook runs: one created on the outbox
	// under a running service invalidates every connection's cached
	// plans, and each would plan its claims and nacks again during the
	// row, which the row would count as lateness.
	startService(s.b, cfg, zerolog.ErrorLevel, nil)() // makes the state schema
	s.exec(db, `CREATE SCHEMA bench`,
		`CREATE TABLE bench.not_before (rec text, not_before timestamptz)`,
		`CREATE FUNCTION bench.log_not_before() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			IF NEW.not_before IS NOT NULL AND NEW.not_before IS DISTINCT FROM OLD.not_before THEN
				INSERT INTO bench.not_before VALUES (NEW.payload::jsonb->'record'->>'id', NEW.not_before);
			END IF;
			RETURN NEW;
		END $$`,
		`CREATE TRIGGER bench_not_before AFTER UPDATE ON walhook.outbox FOR EACH ROW EXECUTE FUNCTION bench.log_not_before()`)
	stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
	defer stop()
	const n = 50
	s.helper.reset(helperMode{FailOnce: true, Record: true})
	s.helper.write(helperWrite{URL: src, Table: "orders", From: 1, N: n, TPS: 25, Conns: 1})
	s.helper.written()
	s.helper.waitUpTo(n, s.cap)
	st := s.helper.stats(true)
	stop()
	notBefore := map[string]time.Time{}
	rows, err := db.Query(s.ctx, `SELECT rec, min(not_before) FROM bench.not_before GROUP BY rec`)
	if err != nil {
		s.b.Fatal(err)
	}
	for rows.Next() {
		var rec string
		var nb time.Time
		if err := rows.Scan(&rec, &nb); err != nil {
			s.b.Fatal(err)
		}
		notBefore[rec] = nb
	}
	rows.Close()
	var late, afterFail []time.Duration
	fromTrigger := 0
	for i := 1; i <= n; i++ {
		k := "/s " + strconv.Itoa(i)
		a := st.Arrivals[k]
		if len(a) < 2 {
			continue
		}
		if fail, ok := st.Failed[k]; ok {
			afterFail = append(afterFail, time.Duration(a[1]-fail))
		}
		if nb, ok := notBefore[strconv.Itoa(i)]; ok {
			fromTrigger++
			late = append(late, time.Duration(a[1]-nb.UnixNano()))
		}
	}
	p50, _, mx := pct(late)
	f50, _, fmx := pct(afterFail)
	note := fmt.Sprintf("%d messages, not_before from a trigger on the outbox for %d; retry after the 500 was answered: p50 %s, max %s (backoff 10–20 ms with jitter)", n, fromTrigger, ms(f50), ms(fmx))
	lat := "–"
	if len(late) > 0 {
		lat = "late after not_before: p50 " + ms(p50) + ", max " + ms(mx)
	}
	s.add(suiteRow{id: "5", workload: "retry on time: each message failed once, initial_backoff 20 ms", lat: lat, note: note})
}

// backfill: rows/s read into the outbox (the sink paused, so the
// backfill's own rate shows), and a live table's commit-to-receipt
// latency through its own sink without a backfill and during one.
func (s *suite) backfill() {
	rows := s.n(200_000)
	if n, err := strconv.Atoi(os.Getenv("WALHOOK_BENCH_ROWS")); err == nil && n > 0 {
		rows = n
	}
	src, db := s.sourceDB(false)
	defer s.drop(src)
	defer db.Close()
	s.exec(db, `INSERT INTO orders (id, customer_id, status, total) SELECT g, g % 1000, 'new', (g % 997) * 1.25 FROM generate_series(1, `+strconv.Itoa(rows)+`) g`,
		`CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())`,
		`VACUUM ANALYZE orders`)
	cfg := &config.Config{
		Database:      config.Database{URL: src},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: s.helper.url}},
		Sinks: []config.Sink{
			{Name: "s", Endpoint: "recv", Path: "/s", Tables: []string{"public.orders"}, BatchSize: 100},
			{Name: "live", Endpoint: "recv", Path: "/live", Tables: []string{"public.ticks"}},
		},
		Log: config.Log{Level: "error"},
	}
	cfg.ApplyDefaults()
	stop := startBench(s.b, cfg, os.Getenv("WALHOOK_BENCH_LOG"), 2*rows+100_000)
	defer stop()
	s.exec(db, `UPDATE walhook.sinks SET status = 'paused' WHERE name = 's'`)
	st, err := outbox.Open(s.ctx, src, "walhook", 4)
	if err != nil {
		s.b.Fatal(err)
	}
	defer st.Close()

	ticks := func() (helperWritten, helperStats) {
		w := s.helper.written()
		k := 0
		for _, c := range w.Commits {
			if c != 0 {
				k++
			}
		}
		s.helper.waitUpTo(int64(k), s.cap)
		return w, s.helper.stats(true)
	}
	// 500 live rows (10 s) without a backfill: the p99 of 100 was their
	// second slowest, and swung from 11 to 117 ms between runs.
	idle := s.n(500)
	s.helper.reset(helperMode{Record: true})
	s.helper.write(helperWrite{URL: src, Table: "ticks", From: 1, N: int64(idle), TPS: 50, Conns: 1})
	w, hs := ticks()
	before, bMissing := latencies(w, hs, "/live", 1)

	s.helper.reset(helperMode{Record: true})
	s.helper.write(helperWrite{URL: src, Table: "ticks", From: 100_001, N: 50 * 600, TPS: 50, Conns: 1})
	m := s.startMeter(db, cfg.Database.Slot)
	pg0 := s.postgresCPU()
	stopWaits := func() {}
	if os.Getenv("WALHOOK_BENCH_WAITS") != "" {
		stopWaits = s.sampleWaits(db)
	}
	start := time.Now()
	bf, err := backfill.Create(s.ctx, st, nil, "s", backfill.Request{Tables: []string{"public.orders"}})
	if err != nil {
		s.b.Fatal(err)
	}
	var copied time.Duration
	for copied == 0 {
		if cur, err := backfill.Get(s.ctx, st, "s", bf.ID); err == nil && cur.State != backfill.Running {
			copied = time.Since(start)
		}
		if time.Since(start) > 5*time.Minute {
			s.b.Fatal("backfill not done after 5 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cpu, ws := m.perRow(rows)
	busy := ""
	if pg0 != 0 {
		pg := float64((s.postgresCPU() - pg0).Microseconds()) / float64(rows)
		rate := float64(rows) / copied.Seconds()
		busy = fmt.Sprintf("; Postgres CPU %.0f µs per backfilled row (all processes, the live rows' included), with walhook's: %.1f of %d cores busy at this rate", pg, (pg+cpu)*rate/1e6, numCPU())
	}
	stopWaits()
	s.helper.stopWrite()
	w, hs = ticks()
	during, dMissing := latencies(w, hs, "/live", 100_001)
	_, b99, _ := pct(before)
	_, d99, _ := pct(during)
	ratio := 0.0
	if b99 > 0 {
		ratio = float64(d99) / float64(b99)
	}
	s.add(suiteRow{id: "6", workload: "backfill into the outbox (sink paused); live 1-row txs every 20 ms on another sink", rate: float64(rows) / copied.Seconds(),
		lat: "live without: " + latText(before, bMissing) + "; during: " + latText(during, dMissing), cpu: cpu, ws: ws,
		note: fmt.Sprintf("%d rows in %s; live p99 during / without = %.2f× (%d / %d live rows); CPU per backfilled row%s", rows, copied.Round(time.Millisecond), ratio, len(during), len(before), busy)})
}

// scaleOut: a receiver that takes 20 ms per request, batch_size 1:
// rows/s at concurrency 1, 4 and 16 in one in-process service, then with
// 1, 2 and 4 `walhook run` processes (concurrency 4 each) sharing one
// state schema, and how many rows each process delivered.
func (s *suite) scaleOut() {
	walhookBin(s.b)
	src, db := s.sourceDB(false)
	defer db.Close()
	next := 1
	backlog := func(rows int) {
		s.writeParallel(db, next, rows)
		next += rows
	}
	startService(s.b, s.config(src, src, 1, 1), zerolog.ErrorLevel, nil)()
	// Each measurement lasts at most window: the backlog is what the ideal
	// rate (50 requests per second per worker) would take twice as long
	// to deliver.
	const limit = 6 * time.Second
	window := func(got int64, rows int, all bool) string {
		if all {
			return fmt.Sprintf("%d rows", rows)
		}
		return fmt.Sprintf("%d rows in %s (of a backlog of %d)", got, limit, rows)
	}
	for _, c := range []int{1, 4, 16} {
		rows := s.n(600 * c)
		backlog(rows)
		s.helper.reset(helperMode{SleepMS: 20})
		cfg := s.config(src, src, 1, c)
		stop := startService(s.b, cfg, zerolog.ErrorLevel, nil)
		m := s.startMeter(db, cfg.Database.Slot)
		st, all := s.helper.waitUpTo(int64(rows), limit)
		cpu, ws := m.perRow(int(st.N))
		stop()
		rate := float64(st.N-1) / time.Duration(st.Last-st.First).Seconds()
		s.add(suiteRow{id: "7", workload: fmt.Sprintf("receiver takes 20 ms, batch_size 1, concurrency %d, 1 in-process service", c), rate: rate, cpu: cpu, ws: ws,
			note: fmt.Sprintf("%s; ideal %d rows/s; rows/s = first → last receipt", window(st.N, rows, all), 50*c)})
	}
	s.drop(src)
	db.Close()

	// Processes: a fresh database with `walhook run` defaults (state in
	// the source database).
	src, db = s.sourceDB(false)
	defer s.drop(src)
	defer db.Close()
	next = 1
	cfgs := make([]string, 4)
	ports := make([]int, 4)
	for i := range cfgs {
		ports[i] = freePort(s.b)
		cfgs[i] = writeProcConfig(s.b, src, s.helper.url, ports[i])
	}
	p := startProc(s.b, cfgs[0], "walhook-init")
	waitFor(s.b, 30*time.Second, "streaming", func() bool { return s.walsenderPID(db, "walhook") != 0 })
	stopProc(p)
	for _, k := range []int{1, 2, 4} {
		rows := s.n(2400 * k)
		backlog(rows)
		s.helper.reset(helperMode{SleepMS: 20})
		procs := make([]*proc, k)
		for i := range procs {
			procs[i] = startProc(s.b, cfgs[i], fmt.Sprintf("walhook-%d-of-%d", i+1, k))
		}
		// The window starts once every process serves and one streams:
		// start-up under load takes seconds, and is not delivery.
		for i := range procs {
			waitFor(s.b, time.Minute, "walhook process serving", func() bool { return procDelivered(ports[i]) >= 0 })
		}
		waitFor(s.b, time.Minute, "streaming", func() bool { return s.walsenderPID(db, "walhook") != 0 })
		st, all := s.helper.waitUpTo(int64(rows), limit)
		var cpu time.Duration
		per := make([]string, k)
		for i, p := range procs {
			cpu += procCPU(p.cmd.Process.Pid)
			per[i] = strconv.Itoa(int(procDelivered(ports[i])))
		}
		wsPID := s.walsenderPID(db, "walhook")
		ws := float64(procCPU(wsPID).Microseconds()) / float64(st.N)
		for _, p := range procs {
			stopProc(p)
		}
		rate := float64(st.N-1) / time.Duration(st.Last-st.First).Seconds()
		s.add(suiteRow{id: "7", workload: fmt.Sprintf("receiver takes 20 ms, batch_size 1, %d `walhook run` process(es) × concurrency 4, one state schema", k), rate: rate,
			cpu: float64(cpu.Microseconds()) / float64(st.N), ws: ws,
			note: fmt.Sprintf("%s; ideal %d rows/s; delivered per process: %s; CPU = the processes' whole life, start-up included", window(st.N, rows, all), 200*k, strings.Join(per, " + "))})
	}
}

func freePort(tb testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func writeProcConfig(tb testing.TB, src, recv string, port int) string {
	dir := tb.TempDir()
	path := dir + "/walhook.yaml"
	yaml := fmt.Sprintf(`
database: {url: %q}
server: {listen: "127.0.0.1:%d"}
log: {level: warn, format: json}
http_endpoints:
  - {name: recv, url: %q}
sinks:
  - name: s
    endpoint: recv
    path: /s
    tables: [public.orders]
    batch_size: 1
    concurrency: 4
`, src, port, recv)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// stopProc ends a walhook process the way an operator would (SIGINT).
func stopProc(p *proc) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _, _ = p.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// procDelivered reads walhook_messages_delivered_total of sink s from
// a process's /metrics.
func procDelivered(port int) float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), `walhook_messages_delivered_total{sink="s"} `); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

// pull: one backlog drained by push (batch_size 100, default concurrency)
// and by one pull consumer receiving batches of 100 and acking each,
// with a separate ack or with the next receive.
// consume receives up to n messages of a pull sink in batches of 100 and
// acks them, until deadline. ackNext: each receive carries the ack ids of
// the batch before (walhook receive --ack does this); the last batch is
// acked alone.
func (s *suite) consume(e *apiEnv, sink string, ackNext bool, n int, deadline time.Time) (got int) {
	var ids []string
	for got+len(ids) < n && time.Now().Before(deadline) {
		var res struct {
			Data []struct {
				AckID string `json:"ack_id"`
			} `json:"data"`
		}
		body := map[string]any{"batch_size": min(100, n-got-len(ids)), "wait": "1s"}
		if ackNext && len(ids) > 0 {
			body["ack_ids"] = ids
			got += len(ids)
			ids = nil
		}
		benchPost(s.b, e, "/api/sinks/"+sink+"/receive", body, &res)
		if len(res.Data) == 0 {
			continue
		}
		ids = make([]string, len(res.Data))
		for i, m := range res.Data {
			ids[i] = m.AckID
		}
		if !ackNext {
			benchPost(s.b, e, "/api/sinks/"+sink+"/ack", map[string]any{"ack_ids": ids}, nil)
			got += len(ids)
			ids = nil
		}
	}
	if len(ids) > 0 {
		benchPost(s.b, e, "/api/sinks/"+sink+"/ack", map[string]any{"ack_ids": ids}, nil)
		got += len(ids)
	}
	return got
}

func (s *suite) pull() {
	rows := s.n(64_000)
	src, db := s.sourceDB(true)
	defer s.drop(src)
	defer db.Close()
	tb := &testBundle{url: src, db: db}
	tb.cfg = &config.Config{
		Database:      config.Database{URL: src},
		Server:        config.Server{APITokens: []string{apiToken}},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: s.helper.url}},
		Sinks: []config.Sink{
			{Name: "push", Endpoint: "recv", Path: "/push", Tables: []string{"public.orders"}, BatchSize: 100},
			{Name: "pull1", Kind: config.KindPull, Tables: []string{"public.orders"}, BatchSize: 100},
			{Name: "pull2", Kind: config.KindPull, Tables: []string{"public.orders"}, BatchSize: 100},
		},
		Log: config.Log{Level: "error"},
	}
	tb.cfg.ApplyDefaults()
	e, stop := startBenchAPI(s.b, tb)
	defer stop()
	e.must(s.b, 200, "POST", "/api/sinks/push/pause", nil)
	s.writeParallel(db, 1, rows)
	raw := s.rawRun(s.ctx, src, "bench_raw", "bench", rows, nil)
	s.dropSlot(db, "bench_raw")
	for _, name := range []string{"push", "pull1", "pull2"} {
		for decodeAs[apiSink](s.b, e.must(s.b, 200, "GET", "/api/sinks/"+name, nil)).RawCounts["pending"] < int64(rows) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	s.helper.reset(helperMode{})

	// The three drain the same backlog in interleaved rounds, so that a
	// machine whose load drifts weighs on each alike: per round, push runs
	// until it has delivered its share (then pauses, and what it had in
	// flight lands outside every measured window), then each consumer
	// takes its share. Each consumer's rate is also compared with push's
	// in the same round: the median of those ratios is the figure a drift
	// of the machine's load moves least.
	const rounds = 8
	// CPU: this process's, Postgres's (own cluster only), walhook's
	// walsender's.
	type cpus struct{ cpu, pg, ws time.Duration }
	wsPID := s.walsenderPID(db, tb.cfg.Database.Slot)
	cpuNow := func() cpus { return cpus{selfCPU(), s.postgresCPU(), procCPU(wsPID)} }
	type tally struct {
		rows int
		took time.Duration
		cpus
	}
	charge := func(t *tally, from cpus) {
		now := cpuNow()
		t.cpu, t.pg, t.ws = t.cpu+now.cpu-from.cpu, t.pg+now.pg-from.pg, t.ws+now.ws-from.ws
	}
	var push, serial, ackNext tally
	ratios := map[*tally][]float64{}
	// Push keeps a margin: batches in flight at a pause (its workers'
	// and those claimed for them) are delivered unmeasured, from the same
	// backlog.
	pushShare := int64(rows/rounds - 10*100)
	for round := range rounds {
		before := s.helper.stats(false).N
		var costs *costMeter
		if round == rounds-1 {
			costs = s.startCosts(db) // WALHOOK_BENCH_COSTS: the last round of each
		}
		cpu0, start := cpuNow(), time.Now()
		e.must(s.b, 200, "POST", "/api/sinks/push/resume", nil)
		st, _ := s.helper.waitUpTo(before+pushShare, s.cap)
		charge(&push, cpu0)
		costs.report("push", st.N-before)
		e.must(s.b, 200, "POST", "/api/sinks/push/pause", nil)
		push.rows += int(st.N - before)
		push.took += time.Duration(st.Last - start.UnixNano())
		pushRate := float64(st.N-before) / time.Duration(st.Last-start.UnixNano()).Seconds()
		time.Sleep(300 * time.Millisecond) // the batches in flight land
		for _, c := range []struct {
			sink string
			t    *tally
		}{{"pull1", &serial}, {"pull2", &ackNext}} {
			var costs *costMeter
			if round == rounds-1 {
				costs = s.startCosts(db)
			}
			cpu0, start := cpuNow(), time.Now()
			got := s.consume(e, c.sink, c.t == &ackNext, rows/rounds, start.Add(s.cap))
			costs.report(c.sink, int64(got))
			charge(c.t, cpu0)
			took := time.Since(start)
			c.t.took += took
			c.t.rows += got
			ratios[c.t] = append(ratios[c.t], float64(got)/took.Seconds()/pushRate)
		}
	}
	rate := func(t tally) float64 { return float64(t.rows) / t.took.Seconds() }
	perRow := func(t tally) float64 { return float64(t.cpu.Microseconds()) / float64(max(t.rows, 1)) }
	wsPerRow := func(t tally) float64 { return float64(t.ws.Microseconds()) / float64(max(t.rows, 1)) }
	median := func(t *tally) float64 {
		r := slices.Sorted(slices.Values(ratios[t]))
		return (r[(len(r)-1)/2] + r[len(r)/2]) / 2
	}
	pgNote := func(t tally) string {
		if t.pg == 0 {
			return ""
		}
		return fmt.Sprintf("; Postgres CPU %.0f µs/row", float64(t.pg.Microseconds())/float64(max(t.rows, 1)))
	}
	all := push.rows >= int(pushShare)*rounds
	got, got2 := serial.rows, ackNext.rows
	stop()
	s.add(suiteRow{id: "pull", workload: "push, batch_size 100, backlog already in the outbox", rate: rate(push), raw: raw.rate(), cpu: perRow(push), ws: wsPerRow(push), rawCPU: raw.cpu, rawWS: raw.ws,
		note: fmt.Sprintf("%s, concurrency %d, %d rounds interleaved with the consumers below; capture not in rows/s%s", s.partial(int64(push.rows), int(pushShare)*rounds, all), tb.cfg.Sinks[0].Concurrency, rounds, pgNote(push))})
	s.add(suiteRow{id: "pull", workload: "pull, 1 consumer receiving batches of 100 and acking each", rate: rate(serial), raw: raw.rate(), cpu: perRow(serial), ws: wsPerRow(serial),
		note: fmt.Sprintf("%s; %.2f× push (median of the rounds' ratios %.2f×); CPU includes the consumer's HTTP client (in process)%s", s.partial(int64(got), rows, got >= rows), rate(serial)/rate(push), median(&serial), pgNote(serial))})
	s.add(suiteRow{id: "pull", workload: "pull, 1 consumer acking each batch with the receive of the next (ack_ids in the receive, as walhook receive --ack does)", rate: rate(ackNext), raw: raw.rate(), cpu: perRow(ackNext), ws: wsPerRow(ackNext),
		note: fmt.Sprintf("%s; %.2f× push (median of the rounds' ratios %.2f×); CPU includes the consumer's HTTP client (in process)%s", s.partial(int64(got2), rows, got2 >= rows), rate(ackNext)/rate(push), median(&ackNext), pgNote(ackNext))})
}

// sampleWaits samples pg_stat_activity every 10 ms until the returned
// func is called, then prints how often each backend was seen in each
// state and wait event (WALHOOK_BENCH_WAITS=1: where a backfill's time
// goes on the server).
func (s *suite) sampleWaits(db *pgxpool.Pool) (stop func()) {
	ctx, cancel := context.WithCancel(s.ctx)
	counts := map[string]int{}
	samples := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			rows, err := db.Query(ctx, `SELECT backend_type || ':' || coalesce(nullif(application_name, ''), '-'), coalesce(state, ''),
				coalesce(wait_event_type || ':' || wait_event, 'CPU')
				FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (state IS NULL OR state <> 'idle') AND backend_type <> 'autovacuum launcher'`)
			if err == nil {
				for rows.Next() {
					var app, state, wait string
					if rows.Scan(&app, &state, &wait) == nil {
						counts[app+" | "+state+" | "+wait]++
					}
				}
				rows.Close()
				samples++
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return func() {
		cancel()
		<-done
		keys := make([]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return counts[keys[i]] > counts[keys[j]] })
		fmt.Printf("bench: pg_stat_activity, %d samples (share of samples a backend was seen so):\n", samples)
		for _, k := range keys {
			fmt.Printf("bench:   %5.1f%%  %s\n", 100*float64(counts[k])/float64(max(samples, 1)), k)
		}
	}
}
