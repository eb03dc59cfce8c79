package integration

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
)

// firstNewOrder checks that each row's versions are first delivered in
// increasing order: a redelivered batch may repeat versions already seen
// (at least once), but a version never arrives for the first time after
// a newer one.
func firstNewOrder(t *testing.T, msgs []message) map[float64][]float64 {
	t.Helper()
	seen := map[float64]map[float64]bool{}
	order := map[float64][]float64{}
	for _, m := range msgs {
		id, v := m.Record["id"].(float64), m.Record["v"].(float64)
		if seen[id] == nil {
			seen[id] = map[float64]bool{}
		}
		if seen[id][v] {
			continue
		}
		if prev := order[id]; len(prev) > 0 && v < prev[len(prev)-1] {
			t.Errorf("row %v: version %v first delivered after %v", id, v, prev[len(prev)-1])
		}
		seen[id][v] = true
		order[id] = append(order[id], v)
	}
	return order
}

// A failed message redelivered while a younger one of its group waits in
// a paused sink goes first once the sink resumes, and other groups flow.
func TestRedeliverIntoPausedSinkKeepsOrder(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(200 * time.Millisecond)
	var failing atomic.Bool
	failing.Store(true)
	b.recv.setRespond(func(r *request) int {
		if failing.Load() {
			return 500
		}
		return 200
	})
	b.start(t)
	st := stateStore(t, b.url)
	db := stateDB(t, b.url)
	ctx := context.Background()
	var sinkID int64
	if err := db.QueryRow(ctx, `SELECT id FROM sinks WHERE name = 's'`).Scan(&sinkID); err != nil {
		t.Fatal(err)
	}

	b.exec(t, `INSERT INTO t VALUES (1, 1)`)
	waitFor(t, 20*time.Second, "the first version to fail", func() bool {
		var n int
		mustScan(t, db.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL`), &n)
		return n == 1
	})
	if err := st.SetSinkPaused(ctx, "s", true); err != nil {
		t.Fatal(err)
	}
	failing.Store(false)
	b.exec(t, `UPDATE t SET v = 2 WHERE id = 1`)
	b.exec(t, `INSERT INTO t VALUES (2, 1)`)
	waitFor(t, 20*time.Second, "the younger version and another group queued", func() bool {
		var n int
		mustScan(t, db.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE failed_at IS NULL`), &n)
		return n == 2
	})
	if n, err := st.Redeliver(ctx, sinkID, nil); err != nil || n != 1 {
		t.Fatalf("redeliver: %d, %v", n, err)
	}
	if err := st.SetSinkPaused(ctx, "s", false); err != nil {
		t.Fatal(err)
	}
	msgs := b.recv.waitCount(t, 3, 20*time.Second)
	order := firstNewOrder(t, msgs)
	if got := order[1]; len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Errorf("row 1 delivered as %v, want versions 1 then 2", got)
	}
	if len(order[2]) != 1 {
		t.Errorf("the other group was not delivered: %v", order)
	}
}

// A replay while the same rows change live never puts one group in
// flight twice, and every live version still arrives in order.
func TestReplayWhileLiveNeverOverlaps(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.cfg.Retention = config.Retention{Tables: []string{"public.t"}, Keep: config.Duration(time.Hour)}
	b.cfg.Sinks[0].Concurrency = 8
	b.recv.setRespond(func(*request) int { time.Sleep(3 * time.Millisecond); return 200 })
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()

	const rows, versions = 10, 30
	from := clock(t, b)
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, $1::int) g`, rows)
	for v := 1; v <= versions/2; v++ {
		b.exec(t, `UPDATE t SET v = $1`, v)
	}
	to := clock(t, b)
	// The replay reads retained changes: wait until capture has kept the
	// whole window.
	waitFor(t, 20*time.Second, "the window retained", func() bool {
		var n int
		mustScan(t, b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.retained_changes`), &n)
		return n == rows*(versions/2+1)
	})
	done := make(chan error, 1)
	go func() {
		for v := versions/2 + 1; v <= versions; v++ {
			if _, err := b.db.Exec(ctx, `UPDATE t SET v = $1`, v); err != nil {
				done <- err
				return
			}
			time.Sleep(5 * time.Millisecond) // live versions interleave with the replays
		}
		done <- nil
	}()
	for i := range 3 {
		// Distinct windows, so each is a replay of its own.
		end := to.Add(time.Duration(i) * time.Microsecond)
		if _, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: from, To: &end}, ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // replays start at different points of the live updates
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	live := rows * (versions + 1)
	replayed := 3 * rows * (versions/2 + 1)
	deadline := time.Now().Add(60 * time.Second)
	for b.recv.count() < live+replayed && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := b.recv.count(); n < live+replayed {
		t.Fatalf("delivered %d of %d messages; left in the outbox:\n%s", n, live+replayed, dumpOutbox(t, b))
	}
	msgs := b.recv.acked()
	if o := b.recv.overlaps(); len(o) > 0 {
		t.Errorf("a group had two requests in flight at once: %v", o[:min(5, len(o))])
	}
	last := map[float64]float64{}
	for _, m := range msgs {
		last[m.Record["id"].(float64)] = max(last[m.Record["id"].(float64)], m.Record["v"].(float64))
	}
	for id := 1; id <= rows; id++ {
		if last[float64(id)] != versions {
			t.Errorf("row %d: newest version delivered %v, want %d", id, last[float64(id)], versions)
		}
	}
}

// dumpOutbox describes what is left in the outbox and the claims, for a
// stalled test.
func dumpOutbox(t *testing.T, b *testBundle) string {
	ctx := context.Background()
	rows, err := b.db.Query(ctx, `SELECT id, group_key, commit_lsn, commit_idx, COALESCE(head::text, 'NULL'), deliver_count, failed_at IS NOT NULL,
		ready_at > clock_timestamp(), (SELECT count(*) FROM walhook.claims c WHERE o.id = ANY(c.ids)) FROM walhook.outbox o ORDER BY group_key, commit_lsn, commit_idx, id LIMIT 50`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	out := ""
	for rows.Next() {
		var id, lsn, claims int64
		var idx, dc int32
		var group, head string
		var failed, waiting bool
		if err := rows.Scan(&id, &group, &lsn, &idx, &head, &dc, &failed, &waiting, &claims); err != nil {
			return err.Error()
		}
		out += fmt.Sprintf("  %d %s %d/%d head=%s dc=%d failed=%v backing_off=%v claims=%d\n", id, group, lsn, idx, head, dc, failed, waiting, claims)
	}
	var claims, workers int
	if err := b.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM walhook.claims), (SELECT count(*) FROM walhook.workers)`).Scan(&claims, &workers); err != nil {
		return out + "  claims and workers: " + err.Error() + "\n"
	}
	return out + fmt.Sprintf("  claims %d, workers %d\n", claims, workers)
}
