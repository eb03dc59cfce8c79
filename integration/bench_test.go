package integration

// Benchmarks print rows/s as ratios to a raw pglogrepl decode of the same
// WAL, measured in the same run, because this machine is shared and
// absolute numbers drift. BenchmarkSuite (suite_bench_test.go) runs every
// workload of the performance targets and prints one table:
//
//	go test ./integration/ -run '^$' -bench BenchmarkSuite -benchtime 1x -timeout 20m
//
// The ones here give more detail on one thing each; run one with
// -bench <name>.
// Each benchmark does its whole workload once per b.N iteration, so
// -benchtime 1x is the useful setting.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/sink"
)

const benchDDL = `CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, status text, total numeric, created_at timestamptz DEFAULT now())`

// writeWorkload commits rows in 100-row transactions.
func writeWorkload(ctx context.Context, tb testing.TB, db *pgxpool.Pool, from, rows int) {
	for i := from; i < from+rows; i += 100 {
		if _, err := db.Exec(ctx, `INSERT INTO orders (id, customer_id, status, total)
			SELECT g, g % 1000, 'new', (g % 997) * 1.25 FROM generate_series($1::bigint, $2::bigint) g`, i, i+99); err != nil {
			tb.Fatal(err)
		}
	}
}

func currentLSN(ctx context.Context, tb testing.TB, db *pgxpool.Pool) uint64 {
	var s string
	if err := db.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		tb.Fatal(err)
	}
	lsn, _ := pglogrepl.ParseLSN(s)
	return uint64(lsn)
}

// rawDecode streams a slot with pglogrepl and parses every message until
// it has seen want inserts: the baseline walhook's capture is compared
// with.
func rawDecode(ctx context.Context, tb testing.TB, url, slot, pub string, want int) (changes int, d time.Duration) {
	return rawStream(ctx, tb, url, slot, pub, want, nil, nil)
}

// rawStream is rawDecode with hooks: onStart gets the walsender's pid
// before streaming starts (for its CPU time), onInsert each insert's first
// column as it arrives.
func rawStream(ctx context.Context, tb testing.TB, url, slot, pub string, want int, onStart func(pid int), onInsert func(id string, at time.Time)) (changes int, d time.Duration) {
	cfg, _ := pgconn.ParseConfig(url)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if onStart != nil {
		res, err := conn.Exec(ctx, `SELECT pg_backend_pid()`).ReadAll()
		if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
			tb.Fatalf("raw decode: backend pid: %v", err)
		}
		pid, _ := strconv.Atoi(string(res[0].Rows[0][0]))
		onStart(pid)
	}
	start := time.Now()
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + pub + "'", "messages 'true'"}})
	if err != nil {
		tb.Fatal(err)
	}
	for {
		raw, err := conn.ReceiveMessage(ctx)
		if err != nil {
			tb.Fatalf("raw decode: %v", err)
		}
		cd, ok := raw.(*pgproto3.CopyData)
		if !ok {
			continue
		}
		if cd.Data[0] == pglogrepl.PrimaryKeepaliveMessageByteID {
			// Answer keepalives so wal_sender_timeout never ends a long run.
			if ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:]); err == nil && ka.ReplyRequested {
				_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: 1})
			}
			continue
		}
		if cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			tb.Fatal(err)
		}
		m, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			tb.Fatal(err)
		}
		switch m := m.(type) {
		case *pglogrepl.InsertMessage:
			changes++
			if onInsert != nil && m.Tuple != nil && len(m.Tuple.Columns) > 0 {
				onInsert(string(m.Tuple.Columns[0].Data), time.Now())
			}
		case *pglogrepl.CommitMessage:
			if changes >= want {
				return changes, time.Since(start)
			}
		}
	}
}

// benchStore prepares the state schema and a sink for bench runs.
func benchStore(ctx context.Context, tb testing.TB, url string, endpoint string, batch int) (*outbox.Store, *atomic.Pointer[sink.Router]) {
	if _, err := migrations.Up(ctx, url, "walhook"); err != nil {
		tb.Fatal(err)
	}
	store, err := outbox.Open(ctx, url, "walhook", 32)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(store.Close)
	if err := store.PutEndpoint(ctx, &outbox.Endpoint{Name: "recv", URL: endpoint}); err != nil {
		tb.Fatal(err)
	}
	sc := config.Sink{Name: "s", Endpoint: "recv", Tables: []string{"public.orders"}, BatchSize: batch, Concurrency: 4}
	sc.ApplyDefaults()
	if _, err := store.PutSink(ctx, sc); err != nil {
		tb.Fatal(err)
	}
	sinks, err := store.ListSinkModels(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	var router atomic.Pointer[sink.Router]
	router.Store(sink.NewRouter(sinks))
	return store, &router
}

// BenchmarkCapture measures slot-to-committed-outbox throughput with
// 100-row transactions, next to a raw pglogrepl decode of the same WAL.
func BenchmarkCapture(b *testing.B) {
	const rows = 200_000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		url := pgtest.NewDB(b)
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		for _, q := range []string{benchDDL, `CREATE PUBLICATION bench FOR TABLE orders`,
			`SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')`,
			`SELECT pg_create_logical_replication_slot('bench_wh', 'pgoutput')`} {
			if _, err := db.Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		store, router := benchStore(ctx, b, url, "http://127.0.0.1:1", 100)
		if _, err := stateDB(b, url).Exec(ctx, `UPDATE sinks SET status = 'paused'`); err != nil {
			b.Fatal(err)
		}
		writeWorkload(ctx, b, db, 1, rows)
		end := currentLSN(ctx, b, db)

		n, rawDur := rawDecode(ctx, b, url, "bench_raw", "bench", rows)
		if n != rows {
			b.Fatalf("raw decode saw %d inserts, want %d", n, rows)
		}

		capture := outbox.NewCapture(store, "bench_wh", router, zerolog.Nop())
		stream := replication.NewStream(replication.Config{URL: url, Slot: "bench_wh", Publication: "bench", Log: zerolog.Nop()}, db)
		sctx, cancel := context.WithCancel(ctx)
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- stream.Run(sctx, capture) }()
		for stream.Status().Confirmed < end {
			time.Sleep(5 * time.Millisecond)
		}
		whDur := time.Since(start)
		cancel()
		<-done
		var count int
		_ = stateDB(b, url).QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&count)
		if count != rows {
			b.Fatalf("outbox has %d rows, want %d", count, rows)
		}
		raw := float64(rows) / rawDur.Seconds()
		wh := float64(rows) / whDur.Seconds()
		b.ReportMetric(raw, "raw_rows/s")
		b.ReportMetric(wh, "capture_rows/s")
		b.ReportMetric(wh/raw, "capture/raw")
		fmt.Printf("\n| capture, %d rows in 100-row txs | rows/s |\n|---|---|\n| raw pglogrepl decode | %.0f |\n| walhook slot → outbox (committed) | %.0f |\n| ratio | %.2f |\n", rows, raw, wh, wh/raw)
		db.Close()
	}
}

// benchReceiver answers 200, counts messages and read messages, and
// records the commit-to-receipt latency of the others per request path
// (a sink's path).
type benchReceiver struct {
	srv   *httptest.Server
	n     atomic.Int64
	reads atomic.Int64
	mu    sync.Mutex
	lats  map[string][]time.Duration
}

func newBenchReceiver(tb testing.TB) *benchReceiver {
	r := &benchReceiver{lats: map[string][]time.Duration{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var env struct {
			Data []struct {
				Action   string `json:"action"`
				Metadata struct {
					CommitTimestamp time.Time `json:"commit_timestamp"`
				} `json:"metadata"`
			} `json:"data"`
		}
		if err := json.NewDecoder(req.Body).Decode(&env); err != nil {
			w.WriteHeader(400)
			return
		}
		now := time.Now()
		var reads int64
		r.mu.Lock()
		for _, m := range env.Data {
			if m.Action == "read" {
				reads++
			} else {
				r.lats[req.URL.Path] = append(r.lats[req.URL.Path], now.Sub(m.Metadata.CommitTimestamp))
			}
		}
		r.mu.Unlock()
		r.reads.Add(reads)
		r.n.Add(int64(len(env.Data)))
	}))
	tb.Cleanup(r.srv.Close)
	return r
}

// percentiles are over every path.
func (r *benchReceiver) percentiles() (p50, p99 time.Duration) {
	r.mu.Lock()
	var all []time.Duration
	for _, l := range r.lats {
		all = append(all, l...)
	}
	r.mu.Unlock()
	_, p50, p99, _ = spread(all)
	return p50, p99
}

// latency is one path's.
func (r *benchReceiver) latency(path string) (n int, p50, p99, maxLat time.Duration) {
	r.mu.Lock()
	l := slices.Clone(r.lats[path])
	r.mu.Unlock()
	return spread(l)
}

func spread(l []time.Duration) (n int, p50, p99, maxLat time.Duration) {
	if len(l) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(l)
	return len(l), l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
}

func (r *benchReceiver) reset() {
	r.mu.Lock()
	clear(r.lats)
	r.mu.Unlock()
	r.n.Store(0)
	r.reads.Store(0)
}

// BenchmarkEndToEnd commits 100-row transactions while walhook runs and a
// loopback receiver answers 200: sustained rows/s and commit-to-receipt
// latency at batch_size 1 and 100, then p99 latency at a paced 1,000
// rows/s, next to a raw decode of the same WAL.
func BenchmarkEndToEnd(b *testing.B) {
	for _, c := range []struct {
		batch   int
		stateDB bool
	}{{1, true}, {100, true}, {100, false}} {
		batch := c.batch
		where := "source_db"
		if c.stateDB {
			where = "own_db"
		}
		b.Run(fmt.Sprintf("batch=%d/state=%s", batch, where), func(b *testing.B) {
			rows := 100_000
			if batch == 1 {
				rows = 20_000
			}
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				tb := setupBench(b, batch, c.stateDB)
				defer tb.stop()
				tb.recv.reset()
				start := time.Now()
				writeWorkload(ctx, b, tb.db, 1, rows)
				for tb.recv.n.Load() < int64(rows) {
					time.Sleep(2 * time.Millisecond)
				}
				dur := time.Since(start)
				p50, p99 := tb.recv.percentiles()
				b.Logf("delivered %d rows in %s", rows, dur)
				_, rawDur := rawDecode(ctx, b, tb.url, "bench_raw", "bench", rows)
				raw := float64(rows) / rawDur.Seconds()
				rate := float64(rows) / dur.Seconds()

				// Paced: 1,000 rows/s in 100-row transactions for 5 s.
				tb.recv.reset()
				next := time.Now()
				for k := 0; k < 50; k++ {
					writeWorkload(ctx, b, tb.db, 1_000_000+k*100, 100)
					next = next.Add(100 * time.Millisecond)
					time.Sleep(time.Until(next))
				}
				for tb.recv.n.Load() < 5000 {
					time.Sleep(2 * time.Millisecond)
				}
				pp50, pp99 := tb.recv.percentiles()
				b.ReportMetric(rate, "rows/s")
				b.ReportMetric(rate/raw, "e2e/raw")
				b.ReportMetric(float64(p99.Milliseconds()), "p99_ms")
				b.ReportMetric(float64(pp99.Milliseconds()), "paced_p99_ms")
				fmt.Printf("\n| end to end, batch_size %d, %d rows, state in %s | value |\n|---|---|\n| raw pglogrepl decode rows/s | %.0f |\n| walhook delivered rows/s | %.0f |\n| ratio | %.2f |\n| commit-to-receipt p50 / p99 (saturated) | %s / %s |\n| commit-to-receipt p50 / p99 at 1,000 rows/s | %s / %s |\n",
					batch, rows, where, raw, rate, rate/raw, p50.Round(time.Millisecond), p99.Round(time.Millisecond), pp50.Round(time.Millisecond), pp99.Round(time.Millisecond))
			}
		})
	}
}

type benchBundle struct {
	url      string
	stateURL string
	db       *pgxpool.Pool
	recv     *benchReceiver
	stop     func()
}

// setupBench starts the whole service against a fresh database, with a
// raw slot created first so the baseline decodes the same WAL. With
// stateDB the state schema lives in a second database of the same server
// (the recommended setup: the slot then skips walhook's own writes).
func setupBench(b *testing.B, batch int, stateDB bool) *benchBundle {
	ctx := context.Background()
	url := pgtest.NewDB(b)
	stateURL := url
	if stateDB {
		stateURL = pgtest.NewDB(b)
	}
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	for _, q := range []string{benchDDL, `CREATE PUBLICATION bench FOR TABLE orders`,
		`SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')`} {
		if _, err := db.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	recv := newBenchReceiver(b)
	tb := &testBundle{url: url, db: db}
	tb.cfg = &config.Config{
		Database:      config.Database{URL: url},
		State:         config.State{URL: stateURL},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: recv.srv.URL}},
		Sinks:         []config.Sink{{Name: "s", Endpoint: "recv", Tables: []string{"public.orders"}, BatchSize: batch, Concurrency: 4}},
		Log:           config.Log{Level: "error"},
	}
	tb.cfg.ApplyDefaults()
	stop := tb.start(b)
	return &benchBundle{url: url, stateURL: stateURL, db: db, recv: recv, stop: stop}
}

// BenchmarkSteadyLoad delivers 1M rows committed at a steady 10,000
// rows/s (100-row transactions), which delivery keeps up with: the
// outbox's size after each 200k rows must stay flat, a small fraction of
// what 1M waiting rows take (BenchmarkBacklog), because delivered rows
// leave and vacuum hands their space to new ones.
func BenchmarkSteadyLoad(b *testing.B) {
	const rows, rate, every = 1_000_000, 10_000, 200_000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		tb := setupBench(b, 100, true)
		// No raw baseline here, and an idle logical slot would hold back
		// the horizon that frees btree pages on Postgres 15 and older,
		// growing every index of the outbox.
		if _, err := tb.db.Exec(ctx, `SELECT pg_drop_replication_slot('bench_raw')`); err != nil {
			b.Fatal(err)
		}
		state, err := pgxpool.New(ctx, tb.stateURL)
		if err != nil {
			b.Fatal(err)
		}
		size := func() int64 {
			var n int64
			_ = state.QueryRow(ctx, `SELECT pg_total_relation_size('walhook.outbox') + pg_total_relation_size('walhook.claims')`).Scan(&n)
			return n
		}
		tb.recv.reset()
		var sizes []int64
		start := time.Now()
		next := start
		for k := 0; k < rows/100; k++ {
			writeWorkload(ctx, b, tb.db, 1+k*100, 100)
			next = next.Add(time.Second * 100 / rate)
			time.Sleep(time.Until(next))
			if (k+1)*100%every == 0 {
				sizes = append(sizes, size())
			}
		}
		for tb.recv.n.Load() < rows {
			time.Sleep(10 * time.Millisecond)
		}
		p50, p99 := tb.recv.percentiles()
		fmt.Printf("\n| steady load: %d rows at %d rows/s, batch_size 100 | value |\n|---|---|\n| commit-to-receipt p50 / p99 | %s / %s |\n", rows, rate, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
		for k, sz := range sizes {
			fmt.Printf("| outbox+claims size after %dk rows | %d MB |\n", (k+1)*every/1000, sz>>20)
		}
		b.ReportMetric(float64(sizes[len(sizes)-1]>>20), "final_outbox_MB")
		b.ReportMetric(float64(p99.Milliseconds()), "p99_ms")
		state.Close()
		tb.stop()
	}
}

// BenchmarkClaim measures one claim plus ack of a 100-message batch with
// very different backlogs: the claim reads only the messages heading
// their groups, so its cost should not grow with the number of pending
// groups or with one hot group.
func BenchmarkClaim(b *testing.B) {
	cases := []struct {
		name           string
		groups, perGrp int
	}{
		{"100_groups_x_100", 100, 100},
		{"100000_groups_x_1", 100_000, 1},
		{"1_hot_group_x_100000", 1, 100_000},
	}
	ctx := context.Background()
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			url := pgtest.NewDB(b)
			store, _ := benchStore(ctx, b, url, "http://127.0.0.1:1", 100)
			// The backlog outlasts b.N × cycles claims of 100: deeper groups
			// when b.N asks for more than the case's own backlog.
			const cycles = 50
			perGrp := max(tc.perGrp, (b.N*cycles*100+tc.groups-1)/tc.groups)
			n := tc.groups * perGrp
			if _, err := stateDB(b, url).Exec(ctx, `
				INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head)
				SELECT s.id, 'g' || (i % $1), i, 0, '{"record":{"id":' || i || '}}', i <= $1
				FROM generate_series(1, $2::int) i, sinks s`, tc.groups, n); err != nil {
				b.Fatal(err)
			}
			for _, q := range []string{`VACUUM ANALYZE outbox`} {
				if _, err := stateDB(b, url).Exec(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			var sinkID int64
			_ = stateDB(b, url).QueryRow(ctx, `SELECT id FROM sinks`).Scan(&sinkID)
			req := outbox.ClaimRequest{SinkID: sinkID, BatchSize: 100, MaxAckPending: 10000, Lease: time.Minute, Worker: "bench"}
			var claimT, ackT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k := 0; k < cycles; k++ {
					t0 := time.Now()
					batch, err := store.Claim(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if batch == nil || len(batch.Messages) != 100 {
						b.Fatalf("claimed %v, want 100 messages", batch)
					}
					if err := store.Ack(ctx, batch); err != nil {
						b.Fatal(err)
					}
					claimT += t1.Sub(t0)
					ackT += time.Since(t1)
				}
			}
			per := float64(b.N * cycles)
			b.ReportMetric(float64(claimT.Microseconds())/per, "claim_us")
			b.ReportMetric(float64(ackT.Microseconds())/per, "ack_us")
			fmt.Printf("| claim+ack of 100, backlog %s | claim %.0f µs | ack %.0f µs |\n", tc.name, float64(claimT.Microseconds())/per, float64(ackT.Microseconds())/per)
		})
	}
}

// BenchmarkBacklog builds a backlog of 1M messages (sink paused), then
// delivers it at batch_size 100: walhook's peak RSS, and the outbox's size
// once drained (it must not bloat).
func BenchmarkBacklog(b *testing.B) {
	const rows = 1_000_000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		url := pgtest.NewDB(b)
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := db.Exec(ctx, benchDDL); err != nil {
			b.Fatal(err)
		}
		recv := newBenchReceiver(b)
		bundle := &testBundle{url: url, db: db}
		cfgPath := bundle.writeConfigFor(b, recv.srv.URL, "public.orders", 100)
		p := startProc(b, cfgPath, "walhook")
		waitFor(b, 30*time.Second, "streaming", bundle.slotActive)
		if _, err := db.Exec(ctx, `UPDATE walhook.sinks SET status = 'paused'`); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		writeWorkload(ctx, b, db, 1, rows)
		waitFor(b, 10*time.Minute, "the backlog", func() bool {
			var n int
			_ = db.QueryRow(ctx, `SELECT count(*) FROM walhook.outbox`).Scan(&n)
			return n >= rows
		})
		captured := time.Since(start)
		rssBacklog := peakRSS(b, p.cmd.Process.Pid)
		var sizeFull int64
		_ = db.QueryRow(ctx, `SELECT pg_total_relation_size('walhook.outbox') + pg_total_relation_size('walhook.claims')`).Scan(&sizeFull)
		start = time.Now()
		if _, err := db.Exec(ctx, `UPDATE walhook.sinks SET status = 'active'`); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 15*time.Minute, "the backlog delivered", func() bool { return recv.n.Load() >= rows })
		delivered := time.Since(start)
		rssPeak := peakRSS(b, p.cmd.Process.Pid)
		// A second round of 100k through the drained tables shows whether
		// space is reused.
		writeWorkload(ctx, b, db, rows+1, 100_000)
		waitFor(b, 5*time.Minute, "the second round", func() bool { return recv.n.Load() >= rows+100_000 })
		var sizeAfter int64
		_ = db.QueryRow(ctx, `SELECT pg_total_relation_size('walhook.outbox') + pg_total_relation_size('walhook.claims')`).Scan(&sizeAfter)
		b.ReportMetric(float64(rssPeak>>20), "peak_rss_MB")
		b.ReportMetric(float64(rows)/delivered.Seconds(), "drain_rows/s")
		fmt.Printf("\n| backlog of %d messages | value |\n|---|---|\n| capture into the paused sink | %s (%.0f rows/s) |\n| RSS with the backlog / peak while draining | %d MB / %d MB |\n| drain at batch_size 100 | %s (%.0f rows/s) |\n| outbox+claims size full / after draining and 100k more | %d MB / %d MB |\n",
			rows, captured.Round(time.Second), float64(rows)/captured.Seconds(), rssBacklog>>20, rssPeak>>20, delivered.Round(time.Second), float64(rows)/delivered.Seconds(), sizeFull>>20, sizeAfter>>20)
		db.Close()
	}
}
