package integration

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// A Retry-After of ten years holds the sink for an hour at most (max_backoff
// is shorter here): a receiver must not be able to stop a sink for good.
func TestRetryAfterCapped(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.recv.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "315360000")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	e := startAPI(t, b)
	b.exec(t, `INSERT INTO t VALUES (1)`)
	var m apiMessage
	waitFor(t, 20*time.Second, "a backing-off message", func() bool {
		ms := e.messages(t, "s", "?state=backing_off")
		if len(ms) == 1 {
			m = ms[0]
		}
		return len(ms) == 1
	})
	if m.NotBefore == nil || time.Until(*m.NotBefore) > time.Hour || time.Until(*m.NotBefore) < 50*time.Minute {
		t.Errorf("not_before %v: want about an hour from now", m.NotBefore)
	}
	var held time.Duration
	if err := b.db.QueryRow(context.Background(), `SELECT EXTRACT(epoch FROM hold_until - now())::float8 * 1e9 FROM walhook.sinks WHERE name = 's'`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held > time.Hour || held < 50*time.Minute {
		t.Errorf("sink held for %v, want about an hour", held)
	}
}

// A webhook body whose earlier message failed (past retry.max_age) is
// queued again when the sender sends it again, in place of the failed
// one: it is not acknowledged with 200 and then dropped.
func TestWebhookAfterFailedDuplicate(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(300 * time.Millisecond)
	e := startAPI(t, b)
	var healthy atomic.Bool
	b.recv.setRespond(func(*request) int {
		if healthy.Load() {
			return 200
		}
		return 500
	})
	body := `{"order": 7}`
	e.must(t, 200, "POST", "/api/webhook/hook", body)
	var failed []apiMessage
	waitFor(t, 20*time.Second, "the webhook message to fail", func() bool {
		failed = e.messages(t, "s", "?state=failed")
		return len(failed) == 1
	})

	healthy.Store(true)
	e.must(t, 200, "POST", "/api/webhook/hook", body)
	got := b.recv.waitCount(t, 1, 20*time.Second)
	if len(got) != 1 || !strings.Contains(string(got[0].Raw), `"record":{"order": 7}`) {
		t.Errorf("delivered: %s", got[0].Raw)
	}
	waitFor(t, 20*time.Second, "the outbox to empty", func() bool { return len(e.messages(t, "s", "")) == 0 })
	if ms := e.messages(t, "s", "?state=failed"); len(ms) != 0 {
		t.Errorf("the failed message is still there: %+v", ms)
	}
}

// Messages written for a sink after it was deleted (capture routing a
// transaction with the sinks it knew when it began, a replay page queued
// just then) are purged by housekeeping, however late they come.
func TestDeletedSinkMessagesPurged(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.start(t)
	ctx := context.Background()
	st := stateStore(t, b.url)
	// Deleted without the API (as through another process), so only
	// housekeeping can sweep what comes after.
	id, err := st.DeleteSink(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Enqueue(ctx, []outbox.NewMessage{{SinkID: id, Group: "g1", Payload: []byte(`{}`)}, {SinkID: id, Group: "g2", Payload: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the deleted sink's messages to be purged", func() bool {
		var n int
		if err := b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.outbox WHERE sink_id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}

// While a long transaction holds the state database's snapshot horizon
// back, the live tail still pages on from the highest id it sent: more
// messages than one look reads all arrive, and a message committed below
// ids already sent (its transaction took its id first) arrives too.
func TestObserveDuringLongTransaction(t *testing.T) {
	const rows = 2500 // more than one look (1000)
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	e.must(t, 200, "POST", "/api/sinks/s/pause", nil) // keep the messages in the outbox
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	long, err := b.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(context.Background()) //nolint:errcheck // ends the test's long transaction
	if _, err := long.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	// A message whose id is taken now but committed last.
	late, err := b.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(context.Background()) //nolint:errcheck // committed below
	sc := e.observe(ctx, t, "s")
	// The sink is paused: nothing delivers the message before it is seen.
	if _, err := late.Exec(ctx, `INSERT INTO walhook.outbox (sink_id, group_key, commit_lsn, commit_idx, payload)
		SELECT id, 'late', 0, 0, '{"late": true}' FROM walhook.sinks WHERE name = 's'`); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO t SELECT generate_series(1, $1)`, rows)
	got := map[string]bool{}
	sawLate, committed := false, false
	for len(got) < rows || !sawLate {
		if len(got) == rows && !committed {
			if err := late.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			committed = true
		}
		if !sc.Scan() {
			t.Fatalf("stream ended after %d of %d messages (late seen: %v): %v", len(got), rows, sawLate, sc.Err())
		}
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		ev := decodeAs[map[string]any](t, []byte(d))
		if ev["group"] == "late" {
			sawLate = true
			continue
		}
		if got[ev["group"].(string)] {
			t.Fatalf("%s sent twice", ev["group"])
		}
		got[ev["group"].(string)] = true
	}
}

// observe opens the live tail of a sink and reads past its first line.
func (e *apiEnv) observe(ctx context.Context, t *testing.T, sink string) *bufio.Scanner {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/observe?sink="+sink, nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() || sc.Text() != ": observing" {
		t.Fatalf("first line %q", sc.Text())
	}
	return sc
}

// metricValue finds one series in a /metrics answer; ok is false when the
// series is absent.
func metricValue(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, found := strings.CutPrefix(line, series+" "); found {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

// /metrics shows what an operator alerts on: backlog per state (failed
// included), the age of the oldest waiting message, replication lag, and
// claim and ack durations. The per-sink gauges come from a cache, so a
// scrape answers even while the outbox cannot be counted.
func TestMetricsGauges(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	scrape := func() string { return string(e.must(t, 200, "GET", "/metrics", nil)) }
	e.must(t, 200, "POST", "/api/sinks/s/pause", nil)
	b.exec(t, `INSERT INTO t VALUES (1), (2), (3)`)
	waitFor(t, 20*time.Second, "three pending messages and their age", func() bool {
		m := scrape()
		pending, _ := metricValue(t, m, `walhook_backlog_messages{sink="s",state="pending"}`)
		age, _ := metricValue(t, m, `walhook_oldest_waiting_message_age_seconds{sink="s"}`)
		return pending == 3 && age > 0
	})

	// The outbox locked: counting it waits, scrapes do not.
	ctx := context.Background()
	lock, err := b.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE walhook.outbox IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, ok := metricValue(t, scrape(), `walhook_backlog_messages{sink="s",state="pending"}`); !ok {
				t.Errorf("a scrape while the outbox is locked lacks the backlog")
			}
		})
	}
	wg.Wait()
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	e.must(t, 200, "POST", "/api/sinks/s/resume", nil)
	b.recv.waitCount(t, 3, 20*time.Second)
	waitFor(t, 20*time.Second, "the drained backlog", func() bool {
		m := scrape()
		pending, _ := metricValue(t, m, `walhook_backlog_messages{sink="s",state="pending"}`)
		age, ok := metricValue(t, m, `walhook_oldest_waiting_message_age_seconds{sink="s"}`)
		return pending == 0 && ok && age == 0
	})
	m := scrape()
	for _, series := range []string{`walhook_claim_seconds_count{sink="s"}`, `walhook_ack_seconds_count{outcome="ack",sink="s"}`} {
		if n, _ := metricValue(t, m, series); n < 1 {
			t.Errorf("%s = %v, want at least 1", series, n)
		}
	}
	for _, series := range []string{`walhook_replication_lag_seconds`, `walhook_replication_lag_bytes`, `walhook_backlog_messages{sink="s",state="failed"}`} {
		if _, ok := metricValue(t, m, series); !ok {
			t.Errorf("metrics lack %s", series)
		}
	}

	// A deleted sink's series go.
	e.must(t, 204, "DELETE", "/api/sinks/s", nil)
	waitFor(t, 20*time.Second, "the deleted sink's series to go", func() bool {
		_, ok := metricValue(t, scrape(), `walhook_backlog_messages{sink="s",state="pending"}`)
		return !ok
	})
}
