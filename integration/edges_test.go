package integration

import (
	"context"
	"net/http"
	"testing"
	"time"
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
