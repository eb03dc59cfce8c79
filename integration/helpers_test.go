package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/service"
)

// testBundle is what most end-to-end tests need: a fresh database, a
// receiver and the config that joins them.
type testBundle struct {
	t    testing.TB // the test that made it; nil for the benchmarks' bare bundles
	url  string
	db   *pgxpool.Pool
	recv *receiver
	cfg  *config.Config
}

// setup makes a fresh database with the given DDL, a receiver, and a
// config with one endpoint "recv" and one sink "s" on tables.
func setup(t *testing.T, ddl string, tables ...string) *testBundle {
	t.Helper()
	url := pgtest.NewDB(t)
	ctx := context.Background()
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if ddl != "" {
		if _, err := db.Exec(ctx, ddl); err != nil {
			t.Fatalf("ddl: %v", err)
		}
	}
	recv := newReceiver(t)
	cfg := &config.Config{
		Database:      config.Database{URL: url},
		HTTPEndpoints: []config.HTTPEndpoint{{Name: "recv", URL: recv.URL()}},
		Sinks:         []config.Sink{{Name: "s", Endpoint: "recv", Path: "/hook", Tables: tables}},
		Log:           config.Log{Level: "warn"},
	}
	cfg.ApplyDefaults()
	for i := range cfg.Sinks {
		cfg.Sinks[i].Retry = config.Retry{InitialBackoff: config.Duration(50 * time.Millisecond), MaxBackoff: config.Duration(200 * time.Millisecond)}
	}
	return &testBundle{t: t, url: url, db: db, recv: recv, cfg: cfg}
}

// start runs the service in-process until the test ends (or stop is
// called).
func (b *testBundle) start(t testing.TB) (stop func()) {
	t.Helper()
	return startService(t, b.cfg, zerolog.WarnLevel, nil)
}

// startService runs the service in-process, logging at level, until the
// test ends (or stop is called), and waits until it streams. prepare, when
// set, may replace parts of the service between New and Run.
func startService(t testing.TB, cfg *config.Config, level zerolog.Level, prepare func(*service.Service, zerolog.Logger)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(level).With().Timestamp().Logger()
	svc, err := service.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("service.New: %v", err)
	}
	if prepare != nil {
		prepare(svc, log)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = svc.Run(ctx)
		svc.Close()
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	waitFor(t, 20*time.Second, "replication streaming", func() bool { return svc.Stream.Status().Streaming })
	return stop
}

func (b *testBundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// skipUnlessCI skips a test that cannot run on this machine (a tool or a
// kernel interface missing), except under CI=true, where every test must
// run: there it fails.
func skipUnlessCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (under CI=true this test must run)", args...)
	}
	t.Skipf(format, args...)
}

// mustScan scans row into dest and fails the test on error, so that a
// failed query is not read as a zero.
func mustScan(t testing.TB, row pgx.Row, dest ...any) {
	t.Helper()
	if err := row.Scan(dest...); err != nil {
		t.Fatalf("query: %v", err)
	}
}

// waitDrained waits until the outbox holds no message: everything queued
// so far was delivered and acknowledged. Once a later change has been
// delivered, this proves that nothing earlier is still on its way, since
// capture writes the outbox in commit order and the receiver records a
// request before walhook deletes its messages.
func (b *testBundle) waitDrained(t testing.TB, d time.Duration) {
	t.Helper()
	waitFor(t, d, "the outbox to drain", func() bool {
		var n int
		if err := b.db.QueryRow(context.Background(), `SELECT count(*) FROM walhook.outbox`).Scan(&n); err != nil {
			t.Fatalf("count the outbox: %v", err)
		}
		return n == 0
	})
}

// message is a delivered message, decoded loosely.
type message struct {
	Record   map[string]any  `json:"record"`
	Changes  json.RawMessage `json:"changes"`
	Action   string          `json:"action"`
	Metadata struct {
		TableSchema    string `json:"table_schema"`
		TableName      string `json:"table_name"`
		CommitLSN      uint64 `json:"commit_lsn"`
		CommitIdx      int    `json:"commit_idx"`
		IdempotencyKey string `json:"idempotency_key"`
		CommitTime     string `json:"commit_timestamp"`
		Deleted        bool   `json:"deleted"`
		Consumer       struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"consumer"`
	} `json:"metadata"`
	Raw json.RawMessage `json:"-"`
}

// request is one POST the receiver got.
type request struct {
	Path    string
	Query   string
	Header  http.Header
	Body    []byte
	Data    []message
	Started time.Time
}

// receiver is an HTTP endpoint that records requests. respond decides
// the status of each request (200 when nil).
type receiver struct {
	t   testing.TB
	srv *httptest.Server

	mu       sync.Mutex
	requests []request
	respond  func(r *request) int
	inFlight map[string]int // per group key, to catch concurrent delivery of one group
	overlap  []string
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{t: t, inFlight: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) URL() string { return r.srv.URL }

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		// The sender went away mid-body (a test killed it): nothing was
		// delivered, as for any receiver that did not read a whole request.
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rq := request{Path: req.URL.Path, Query: req.URL.RawQuery, Header: req.Header.Clone(), Body: body, Started: time.Now()}
	var env struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		r.t.Errorf("receiver: body is not {\"data\": [...]}: %v: %s", err, body)
	}
	for _, raw := range env.Data {
		var m message
		if err := json.Unmarshal(raw, &m); err != nil {
			r.t.Errorf("receiver: message: %v", err)
		}
		m.Raw = raw
		rq.Data = append(rq.Data, m)
	}
	keys := groupsOfRequest(rq)
	r.mu.Lock()
	for _, k := range keys {
		r.inFlight[k]++
		if r.inFlight[k] > 1 {
			r.overlap = append(r.overlap, k)
		}
	}
	respond := r.respond
	r.mu.Unlock()
	status := 200
	if respond != nil {
		status = respond(&rq)
	}
	r.mu.Lock()
	for _, k := range keys {
		r.inFlight[k]--
	}
	if status >= 200 && status < 300 {
		r.requests = append(r.requests, rq)
	}
	r.mu.Unlock()
	w.WriteHeader(status)
}

// groupsOfRequest keys messages by table and "id", the tests' group.
func groupsOfRequest(rq request) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range rq.Data {
		k := m.Metadata.TableName + ":" + jsonString(m.Record["id"])
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// acked returns every message of every acknowledged request, in the order
// the requests were answered.
func (r *receiver) acked() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []message
	for _, rq := range r.requests {
		out = append(out, rq.Data...)
	}
	return out
}

func (r *receiver) count() int { return len(r.acked()) }

// has reports whether a message of row id was acknowledged.
func (r *receiver) has(id float64) bool {
	for _, m := range r.acked() {
		if m.Record["id"] == id {
			return true
		}
	}
	return false
}

func (r *receiver) ackedRequests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.requests...)
}

func (r *receiver) setRespond(f func(r *request) int) {
	r.mu.Lock()
	r.respond = f
	r.mu.Unlock()
}

func (r *receiver) overlaps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.overlap...)
}

// waitCount waits until at least n messages were acknowledged.
func (r *receiver) waitCount(t testing.TB, n int, d time.Duration) []message {
	t.Helper()
	waitFor(t, d, "delivery of "+itoa(n)+" messages", func() bool { return r.count() >= n })
	return r.acked()
}

func itoa(n int) string { return strings.TrimSpace(jsonString(n)) }

// stateDB opens a pool on the state schema for a test's own setup and
// checks: outbox keeps its pool to itself.
func stateDB(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = "walhook"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// redeliverFailed revives the failed messages of every sink with the
// store call the API's redeliver uses.
func (b *testBundle) redeliverFailed(ctx context.Context) (int64, error) {
	store, err := outbox.Open(ctx, b.url, "walhook", 2)
	if err != nil {
		return 0, err
	}
	defer store.Close()
	sinks, err := store.ListSinks(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, s := range sinks {
		k, err := store.Redeliver(ctx, s.ID, nil)
		if err != nil {
			return n, err
		}
		n += int64(k)
	}
	return n, nil
}
