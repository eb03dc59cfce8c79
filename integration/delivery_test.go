package integration

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// checkGroupOrder fails unless, for every row id, the delivered updates
// of that row carry increasing versions (the receiver may see duplicates
// of in-flight batches only when told so).
func checkGroupOrder(t *testing.T, msgs []message) map[float64][]float64 {
	t.Helper()
	seen := map[float64][]float64{}
	for _, m := range msgs {
		id := m.Record["id"].(float64)
		v := m.Record["v"].(float64)
		prev := seen[id]
		if len(prev) > 0 && v < prev[len(prev)-1] {
			t.Errorf("row %v: version %v delivered after %v", id, v, prev[len(prev)-1])
		}
		seen[id] = append(prev, v)
	}
	return seen
}

// A receiver failing 30% of requests still gets everything, each group in
// order, and never two requests of one group at once.
func TestFlakyReceiverKeepsOrder(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].BatchSize = 10
	b.cfg.Sinks[0].Concurrency = 8
	var reqs atomic.Int64
	b.recv.setRespond(func(*request) int {
		reqs.Add(1)
		time.Sleep(time.Millisecond)
		if rand.IntN(10) < 3 {
			return 500
		}
		return 200
	})
	b.start(t)
	const rows, versions = 50, 20
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, $1) g`, rows)
	for v := 1; v < versions; v++ {
		b.exec(t, `UPDATE t SET v = $1`, v)
	}
	msgs := b.recv.waitCount(t, rows*versions, 60*time.Second)
	seen := checkGroupOrder(t, msgs)
	for id := 1; id <= rows; id++ {
		vs := seen[float64(id)]
		if len(vs) != versions || vs[len(vs)-1] != versions-1 {
			t.Errorf("row %d: got versions %v", id, vs)
		}
	}
	if o := b.recv.overlaps(); len(o) > 0 {
		t.Errorf("groups delivered concurrently: %v", o[:min(len(o), 5)])
	}
	if reqs.Load() <= int64(len(b.recv.ackedRequests())) {
		t.Errorf("expected failed requests too (%d requests, %d acked)", reqs.Load(), len(b.recv.ackedRequests()))
	}
}

// A request that outlives request_timeout fails and is retried.
func TestRequestTimeoutRetries(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].RequestTimeout = config.Duration(200 * time.Millisecond)
	var calls atomic.Int64
	b.recv.setRespond(func(*request) int {
		if calls.Add(1) == 1 {
			time.Sleep(time.Second)
		}
		return 200
	})
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	if calls.Load() < 2 {
		t.Fatalf("calls = %d, want a retry after the timeout", calls.Load())
	}
	// The history shows two attempts once the ack commits (the receiver
	// answers before walhook records it).
	var count int
	waitFor(t, 10*time.Second, "the ack with deliver_count 2", func() bool {
		mustScan(t, b.db.QueryRow(context.Background(), `SELECT COALESCE(max(deliver_count), 0) FROM walhook.delivered`), &count)
		return count >= 2
	})
}

// max_ack_pending bounds delivered-but-unacknowledged messages.
func TestMaxAckPending(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].BatchSize = 5
	b.cfg.Sinks[0].Concurrency = 8
	b.cfg.Sinks[0].MaxAckPending = 7
	var inflight, peak atomic.Int64
	b.recv.setRespond(func(r *request) int {
		n := inflight.Add(int64(len(r.Data)))
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		inflight.Add(-int64(len(r.Data)))
		return 200
	})
	b.start(t)
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, 200) g`)
	b.recv.waitCount(t, 200, 60*time.Second)
	if p := peak.Load(); p > 7 || p < 2 {
		t.Fatalf("peak in-flight messages = %d, want between 2 and max_ack_pending 7", p)
	}
}

// Retry-After on 429 makes the sink wait at least that long.
func TestRetryAfter(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	var mu sync.Mutex
	var times []time.Time
	b.recv.setRespond(func(*request) int {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == 1 {
			return 429
		}
		return 200
	})
	// The receiver sets Retry-After through a wrapping handler.
	inner := b.recv.srv.Config.Handler
	b.recv.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		first := len(times) == 0
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "2")
		}
		inner.ServeHTTP(w, r)
	})
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(times) < 2 || times[1].Sub(times[0]) < 2*time.Second {
		t.Fatalf("retry came %v after the 429 with Retry-After: 2", times[1].Sub(times[0]))
	}
}

// Standard Webhooks signatures verify with an independent implementation,
// and a retry of the same messages carries the same webhook-id.
func TestSigning(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].SigningSecret = secret
	var mu sync.Mutex
	var ids []string
	b.recv.setRespond(func(r *request) int {
		id, ts, sig := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature")
		mac := hmac.New(sha256.New, key)
		fmt.Fprintf(mac, "%s.%s.%s", id, ts, r.Body)
		want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
		if sig != want {
			t.Errorf("signature %q, want %q", sig, want)
		}
		if sec, err := strconv.ParseInt(ts, 10, 64); err != nil || time.Since(time.Unix(sec, 0)) > time.Minute {
			t.Errorf("timestamp %q", ts)
		}
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, id)
		if len(ids) == 1 {
			return 500
		}
		return 200
	})
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(ids) < 2 || ids[0] != ids[1] || ids[0] == "" {
		t.Fatalf("webhook-id across a retry: %v", ids)
	}
}

// After max_age a message is failed and kept; redeliver sends it again.
func TestMaxAgeFailsThenRedeliver(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(300 * time.Millisecond)
	var healthy atomic.Bool
	b.recv.setRespond(func(*request) int {
		if healthy.Load() {
			return 200
		}
		return 503
	})
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	ctx := context.Background()
	var failed int
	waitFor(t, 20*time.Second, "the message to be failed", func() bool {
		mustScan(t, b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.outbox WHERE failed_at IS NOT NULL`), &failed)
		return failed == 1
	})
	var status int
	var lastErr string
	if err := b.db.QueryRow(ctx, `SELECT last_status, last_error FROM walhook.outbox`).Scan(&status, &lastErr); err != nil || status != 503 || lastErr == "" {
		t.Errorf("last_status %d last_error %q err %v", status, lastErr, err)
	}
	// A later change of another row still flows.
	healthy.Store(true)
	b.exec(t, `INSERT INTO t VALUES (2, 0)`)
	msgs := b.recv.waitCount(t, 1, 20*time.Second)
	if msgs[0].Record["id"] != float64(2) {
		t.Fatalf("got %v", msgs[0].Record)
	}
	if _, err := b.redeliverFailed(ctx); err != nil {
		t.Fatal(err)
	}
	msgs = b.recv.waitCount(t, 2, 20*time.Second)
	if msgs[1].Record["id"] != float64(1) {
		t.Fatalf("redelivered %v", msgs[1].Record)
	}
}

// Endpoint headers and decrypted encrypted headers reach the receiver;
// the stored value is sealed.
func TestEndpointHeaders(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.EncryptionKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	b.cfg.HTTPEndpoints[0].Headers = map[string]string{"X-Env": "test"}
	b.cfg.HTTPEndpoints[0].EncryptedHeaders = map[string]string{"Authorization": "Bearer s3cret-token"}
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	h := b.recv.ackedRequests()[0].Header
	if h.Get("X-Env") != "test" || h.Get("Authorization") != "Bearer s3cret-token" || h.Get("Content-Type") != "application/json" || h.Get("User-Agent") == "" {
		t.Fatalf("headers: %v", h)
	}
	var sealed []byte
	if err := b.db.QueryRow(context.Background(), `SELECT encrypted_headers FROM walhook.http_endpoints`).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if len(sealed) == 0 || bytes.Contains(sealed, []byte("s3cret")) {
		t.Fatalf("encrypted headers stored in clear: %q", sealed)
	}
}

// The delivered history keeps the newest messages per sink.
func TestPruneDeliveredHistory(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.start(t)
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, 30) g`)
	b.recv.waitCount(t, 30, 20*time.Second)
	ctx := context.Background()
	store, err := outbox.Open(ctx, b.url, "walhook", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var before int
	waitFor(t, 10*time.Second, "30 in history", func() bool {
		mustScan(t, b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.delivered`), &before)
		return before == 30
	})
	n, err := store.PruneDelivered(ctx, 10)
	if err != nil || n != 20 {
		t.Fatalf("pruned %d, %v; want 20", n, err)
	}
	var minID, left int
	mustScan(t, b.db.QueryRow(ctx, `SELECT count(*), min(id) FROM walhook.delivered`), &left, &minID)
	var maxOutbox int
	mustScan(t, b.db.QueryRow(ctx, `SELECT max(id) FROM walhook.delivered`), &maxOutbox)
	if left != 10 || maxOutbox-minID != 9 {
		t.Fatalf("history keeps %d rows, ids %d..%d; want the newest 10", left, minID, maxOutbox)
	}
}

// Rows changed again and again while their earlier versions are in
// flight: every version arrives, in order, one request per group at a
// time, and nothing is left in the outbox (a group whose next message was
// queued during an ack must not be stranded).
func TestHotGroupsWhileDelivering(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].BatchSize = 10
	b.cfg.Sinks[0].Concurrency = 4
	b.start(t)
	const rows, versions = 20, 100
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, $1) g`, rows)
	for v := 1; v < versions; v++ {
		// One row per transaction: capture commits often, so appends race
		// with the acks of the same groups.
		b.exec(t, `UPDATE t SET v = $1 WHERE id = $2`, v, 1+v%rows)
		b.exec(t, `UPDATE t SET v = $1 WHERE id <> $2`, v, 1+v%rows)
	}
	msgs := b.recv.waitCount(t, rows*versions, 60*time.Second)
	seen := checkGroupOrder(t, msgs)
	for id := 1; id <= rows; id++ {
		if vs := seen[float64(id)]; len(vs) != versions || vs[len(vs)-1] != versions-1 {
			t.Errorf("row %d: got versions %v", id, vs)
		}
	}
	if o := b.recv.overlaps(); len(o) > 0 {
		t.Errorf("groups delivered concurrently: %v", o[:min(len(o), 5)])
	}
	waitFor(t, 10*time.Second, "an empty outbox", func() bool {
		var n int
		mustScan(t, b.db.QueryRow(context.Background(), `SELECT count(*) FROM walhook.outbox`), &n)
		return n == 0
	})
}
