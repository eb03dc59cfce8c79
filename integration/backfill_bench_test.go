package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/service"
)

// startBench runs the service with a log level of its own ("" = error),
// since a benchmark is best watched with the backfill's debug log. A
// positive maxBacklog replaces the backfill runner's backlog bound, and
// WALHOOK_BENCH_MAXPAGE its page-size cap.
func startBench(tb testing.TB, cfg *config.Config, level string, maxBacklog int) (stop func()) {
	tb.Helper()
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.ErrorLevel
	}
	return startService(tb, cfg, lvl, func(svc *service.Service, log zerolog.Logger) {
		if maxBacklog > 0 || benchMaxPage() > 0 {
			svc.Backfills = backfill.NewRunner(backfill.Config{
				Store: svc.Store, Capture: svc.Capture, SourceURL: cfg.Database.URL, Publication: cfg.Database.Publication, Slot: cfg.Database.Slot,
				RetentionKeep: cfg.Retention.Keep.D(), Log: log, MaxBacklog: maxBacklog, MaxPage: benchMaxPage(),
			})
		}
	})
}

// BenchmarkBackfill backfills a 1,000,000-row table (WALHOOK_BENCH_ROWS
// for another size; WALHOOK_BENCH_LOG=trace shows every page) at
// batch_size 100 while a live table gets an insert
// every 20 ms, and prints a table. Sub-benchmarks:
//
//   - delivered: to a receiver that answers 200; rows/s from the
//     backfill's creation to the last read received.
//   - outbox: the backfilling sink paused and its backlog unbounded, so
//     the backfill's own rate shows: rows/s into the outbox.
//
// Both report the live inserts' commit-to-receipt latency through a sink
// of their own, which is the stream's latency while pages go through
// capture; "delivered" also reports it through the backfilling sink,
// where live changes queue behind the sink's backlog. Run it with:
//
//	go test ./integration/ -run '^$' -bench Backfill -benchtime 1x
func BenchmarkBackfill(b *testing.B) {
	rows := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("WALHOOK_BENCH_ROWS")); err == nil && n > 0 {
		rows = n
	}
	b.Run("delivered", func(b *testing.B) { benchBackfill(b, rows, false) })
	b.Run("outbox", func(b *testing.B) { benchBackfill(b, rows, true) })
}

func benchBackfill(b *testing.B, rows int, outboxOnly bool) {
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		url := pgtest.NewDB(b)
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(db.Close)
		for _, q := range []string{benchDDL,
			`INSERT INTO orders (id, customer_id, status, total) SELECT g, g % 1000, 'new', (g % 997) * 1.25 FROM generate_series(1, ` + strconv.Itoa(rows) + `) g`,
			`CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())`,
			`VACUUM ANALYZE orders`} {
			if _, err := db.Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		recv := newBenchReceiver(b)
		cfg := &config.Config{
			Database:      config.Database{URL: url},
			HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: recv.srv.URL}},
			Sinks: []config.Sink{
				{Name: "s", Endpoint: "recv", Path: "/s", Tables: []string{"public.orders", "public.ticks"}, BatchSize: 100},
				{Name: "live", Endpoint: "recv", Path: "/live", Tables: []string{"public.ticks"}, BatchSize: 100},
			},
			Log: config.Log{Level: "error"},
		}
		cfg.ApplyDefaults()
		maxBacklog := 0
		if outboxOnly {
			maxBacklog = 2*rows + 100_000 // never pause
		}
		stop := startBench(b, cfg, os.Getenv("WALHOOK_BENCH_LOG"), maxBacklog)
		st := stateStore(b, url)
		if outboxOnly {
			if _, err := db.Exec(ctx, `UPDATE walhook.sinks SET status = 'paused' WHERE name = 's'`); err != nil {
				b.Fatal(err)
			}
		}

		tickCtx, stopTicks := context.WithCancel(ctx)
		var ticks sync.WaitGroup
		ticks.Go(func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-tickCtx.Done():
					return
				case <-t.C:
				}
				if _, err := db.Exec(tickCtx, `INSERT INTO ticks DEFAULT VALUES`); err != nil && tickCtx.Err() == nil {
					b.Error(err)
					return
				}
			}
		})

		b.ResetTimer()
		start := time.Now()
		bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{Tables: []string{"public.orders"}})
		if err != nil {
			b.Fatal(err)
		}
		var copied time.Duration
		for {
			if copied == 0 {
				if cur, err := backfill.Get(ctx, st, "s", bf.ID); err == nil && cur.State != backfill.Running {
					copied = time.Since(start)
				}
			}
			if outboxOnly && copied > 0 || !outboxOnly && recv.reads.Load() >= int64(rows) {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Errorf("not done after 10 minutes: %d reads received", recv.reads.Load())
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		dur := time.Since(start)
		b.StopTimer()
		stopTicks()
		ticks.Wait()
		time.Sleep(time.Second) // the last live inserts arrive
		stop()

		ln, l50, l99, lmax := recv.latency("/live")
		if outboxOnly {
			rate := float64(rows) / copied.Seconds()
			b.ReportMetric(rate, "outbox_rows/s")
			b.ReportMetric(float64(l99.Milliseconds()), "live_p99_ms")
			fmt.Printf("\n| backfill of %d rows into the outbox (sink paused), live inserts every 20 ms | value |\n|---|---|\n"+
				"| rows/s, backfill created → done (every page in the outbox) | %.0f |\n"+
				"| backfill done after | %s |\n"+
				"| live inserts, own sink: n, p50 / p99 / max | %d, %s / %s / %s |\n",
				rows, rate, copied.Round(time.Millisecond),
				ln, l50.Round(time.Millisecond), l99.Round(time.Millisecond), lmax.Round(time.Millisecond))
			continue
		}
		received := recv.reads.Load()
		rate := float64(received) / dur.Seconds()
		sn, s50, s99, smax := recv.latency("/s")
		b.ReportMetric(rate, "rows/s")
		b.ReportMetric(float64(l99.Milliseconds()), "live_p99_ms")
		b.ReportMetric(float64(s99.Milliseconds()), "same_sink_p99_ms")
		fmt.Printf("\n| backfill of %d rows delivered at batch_size 100, live inserts every 20 ms | value |\n|---|---|\n"+
			"| rows/s, backfill created → last read received | %.0f |\n"+
			"| backfill done (every page in the outbox) after | %s |\n"+
			"| %d reads received after | %s |\n"+
			"| live inserts, own sink: n, p50 / p99 / max | %d, %s / %s / %s |\n"+
			"| live inserts, backfilling sink: n, p50 / p99 / max | %d, %s / %s / %s |\n",
			rows, rate, copied.Round(time.Millisecond), received, dur.Round(time.Millisecond),
			ln, l50.Round(time.Millisecond), l99.Round(time.Millisecond), lmax.Round(time.Millisecond),
			sn, s50.Round(time.Millisecond), s99.Round(time.Millisecond), smax.Round(time.Millisecond))
	}
}

// benchMaxPage is WALHOOK_BENCH_MAXPAGE, a page-size cap to compare
// against the default (0: the default).
func benchMaxPage() int {
	n, _ := strconv.Atoi(os.Getenv("WALHOOK_BENCH_MAXPAGE"))
	return n
}
