package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/service"
)

// BenchmarkPull drains one backlog of rows twice in the same run: pushed
// by delivery at batch_size 100 (concurrency 4) to a loopback receiver,
// and received by pull consumers in batches of 100, each batch acked
// before the next receive (one consumer, then four). Capture is out of
// the measurement: both sinks have the whole backlog queued before either
// phase starts, so the rows/s compare delivery paths only.
//
//	go test ./integration/ -run '^$' -bench BenchmarkPull -benchtime 1x
func BenchmarkPull(b *testing.B) {
	const rows = 50_000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		url := pgtest.NewDB(b)
		stateURL := pgtest.NewDB(b)
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(db.Close)
		tb := &testBundle{url: url, db: db}
		if _, err := tb.db.Exec(ctx, benchDDL); err != nil {
			b.Fatal(err)
		}
		recv := newBenchReceiver(b)
		tb.cfg = &config.Config{
			Database:      config.Database{URL: url},
			State:         config.State{URL: stateURL},
			Server:        config.Server{APITokens: []string{apiToken}},
			HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: recv.srv.URL}},
			Sinks: []config.Sink{
				{Name: "push", Endpoint: "recv", Tables: []string{"public.orders"}, BatchSize: 100, Concurrency: 4},
				{Name: "pull1", Kind: config.KindPull, Tables: []string{"public.orders"}, BatchSize: 100},
				{Name: "pull4", Kind: config.KindPull, Tables: []string{"public.orders"}, BatchSize: 100},
			},
			Log: config.Log{Level: "error"},
		}
		tb.cfg.ApplyDefaults()
		e, _ := startBenchAPI(b, tb)
		e.must(b, 200, "POST", "/api/sinks/push/pause", nil)

		writeWorkload(ctx, b, tb.db, 1, rows)
		for _, s := range []string{"push", "pull1", "pull4"} {
			for decodeAs[apiSink](b, e.must(b, 200, "GET", "/api/sinks/"+s, nil)).RawCounts["pending"] < rows {
				time.Sleep(50 * time.Millisecond)
			}
		}

		recv.reset()
		start := time.Now()
		e.must(b, 200, "POST", "/api/sinks/push/resume", nil)
		for recv.n.Load() < rows {
			time.Sleep(2 * time.Millisecond)
		}
		push := float64(rows) / time.Since(start).Seconds()

		pull := func(sinkName string, consumers int) float64 {
			var got atomic.Int64
			start := time.Now()
			var wg sync.WaitGroup
			for range consumers {
				wg.Go(func() {
					for got.Load() < rows {
						// A lean consumer, like the push receiver: it reads
						// the ack ids, not every field of every message.
						var res struct {
							Data []struct {
								AckID string `json:"ack_id"`
							} `json:"data"`
						}
						benchPost(b, e, "/api/sinks/"+sinkName+"/receive", map[string]any{"batch_size": 100, "wait": "1s"}, &res)
						if len(res.Data) == 0 {
							continue
						}
						ids := make([]string, len(res.Data))
						for i, m := range res.Data {
							ids[i] = m.AckID
						}
						benchPost(b, e, "/api/sinks/"+sinkName+"/ack", map[string]any{"ack_ids": ids}, nil)
						got.Add(int64(len(ids)))
					}
				})
			}
			wg.Wait()
			return float64(rows) / time.Since(start).Seconds()
		}
		pull1 := pull("pull1", 1)
		pull4 := pull("pull4", 4)
		b.ReportMetric(push, "push_rows/s")
		b.ReportMetric(pull1, "pull1_rows/s")
		b.ReportMetric(pull4, "pull4_rows/s")
		fmt.Printf("\n| drain a backlog of %d rows, batches of 100 | rows/s | vs push |\n|---|---|---|\n| push (delivery, concurrency 4, loopback receiver) | %.0f | 1.00 |\n| pull, 1 consumer (receive + ack per batch) | %.0f | %.2f |\n| pull, 4 consumers | %.0f | %.2f |\n",
			rows, push, pull1, pull1/push, pull4, pull4/push)
	}
}

// startBenchAPI runs the service and its HTTP server for a benchmark,
// quietly (startAPI logs everything at debug level for its checks).
func startBenchAPI(b *testing.B, tb *testBundle) (*apiEnv, func()) {
	b.Helper()
	ln, err := api.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	tb.cfg.Server.PublicURL = "http://" + ln.Addr().String()
	e := &apiEnv{testBundle: tb, base: tb.cfg.Server.PublicURL, log: &syncBuffer{}, bodies: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := service.New(ctx, tb.cfg, zerolog.Nop())
	if err != nil {
		cancel()
		ln.Close()
		b.Fatalf("service.New: %v", err)
	}
	srv := svc.API()
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil && err != http.ErrServerClosed {
			b.Errorf("Serve: %v", err)
		}
	})
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			svc.Close()
		})
	}
	b.Cleanup(stop)
	waitFor(b, 20*time.Second, "replication streaming", func() bool { return svc.Stream.Status().Streaming })
	return e, stop
}

// benchPost posts body as JSON with the API token and decodes a 200
// answer into out (when not nil); anything else fails the benchmark.
func benchPost(b *testing.B, e *apiEnv, path string, body, out any) {
	raw, err := json.Marshal(body)
	if err != nil {
		b.Fatal(err)
	}
	req, err := http.NewRequest("POST", e.base+path, bytes.NewReader(raw))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		b.Fatalf("POST %s: %d %s", path, resp.StatusCode, msg)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			b.Fatal(err)
		}
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
}
