package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// clock is the database's clock, between two commits.
func clock(t *testing.T, b *testBundle) time.Time {
	t.Helper()
	var now time.Time
	if err := b.db.QueryRow(context.Background(), `SELECT clock_timestamp()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// Every change of a retained table is kept; a replay of a window
// delivers that window's messages again, byte for byte (so with their
// idempotency keys), in their original order, and nothing outside it.
func TestReplayWindow(t *testing.T) {
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY, status text);
		CREATE TABLE audit (id serial PRIMARY KEY, note text);`, "public.orders")
	b.cfg.Retention = config.Retention{Tables: []string{"public.orders", "public.audit"}, Keep: config.Duration(time.Hour)}
	b.cfg.Sinks[0].BatchSize = 10
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()

	b.exec(t, `INSERT INTO orders SELECT i, 'new' FROM generate_series(1, 5) i`)
	b.exec(t, `UPDATE orders SET status = 'paid' WHERE id = 3`)
	before := b.recv.waitCount(t, 6, 20*time.Second)
	from := clock(t, b)
	b.exec(t, `INSERT INTO orders SELECT i, 'new' FROM generate_series(6, 10) i`)
	b.exec(t, `UPDATE orders SET status = 'shipped' WHERE id IN (1, 7)`)
	b.exec(t, `INSERT INTO audit (note) VALUES ('not a table of the sink')`)
	b.exec(t, `DELETE FROM orders WHERE id = 2`)
	window := b.recv.waitCount(t, 6+8, 20*time.Second)[len(before):]
	to := clock(t, b)
	b.exec(t, `INSERT INTO orders VALUES (11, 'after')`)
	all := b.recv.waitCount(t, 6+8+1, 20*time.Second)

	var retained int
	if err := b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.retained_changes`).Scan(&retained); err != nil {
		t.Fatal(err)
	}
	if retained != 6+8+1+1 { // the audit insert too
		t.Fatalf("%d retained changes, want 16", retained)
	}

	res := runReplay(t, st, from, to)
	if res.ChangesProcessed != 9 || res.ChangesTotal != 9 || res.Messages != 8 {
		t.Fatalf("replay: %+v, want 9 changes, 8 messages", res)
	}
	replayed := b.recv.waitCount(t, len(all)+8, 20*time.Second)[len(all):]
	// The replay is done, so all it queued is in the outbox: once that is
	// empty, nothing more is on its way.
	b.waitDrained(t, 20*time.Second)
	if n := b.recv.count(); n != len(all)+8 {
		t.Fatalf("%d messages after the replay, want %d", n, len(all)+8)
	}
	// Delivery order across groups is free; per row it is commit order.
	// Compare per row, in order.
	byRow := func(msgs []message) map[float64][]string {
		out := map[float64][]string{}
		for _, m := range msgs {
			id := m.Record["id"].(float64)
			out[id] = append(out[id], string(m.Raw))
		}
		return out
	}
	want, got := byRow(window), byRow(replayed)
	if len(got) != len(want) {
		t.Fatalf("replayed rows %v, want %v", got, want)
	}
	for id, w := range want {
		g := got[id]
		if len(g) != len(w) {
			t.Fatalf("row %v: replayed %d messages, want %d", id, len(g), len(w))
		}
		for i := range w {
			if g[i] != w[i] {
				t.Errorf("row %v message %d:\nreplayed %s\noriginal %s", id, i, g[i], w[i])
			}
		}
	}

	// Bad windows are refused.
	if _, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: to, To: &from}, ""); err == nil {
		t.Error("a window ending before it starts was accepted")
	}
	if _, _, err := backfill.CreateReplay(ctx, st, "nope", backfill.ReplayRequest{From: from, To: &to}, ""); err == nil {
		t.Error("an unknown sink was accepted")
	}
}

// runReplay starts a replay of [from, to) for sink "s" and waits until it
// is done.
func runReplay(t *testing.T, st *outbox.Store, from, to time.Time) *backfill.Replay {
	t.Helper()
	r, created, err := backfill.CreateReplay(context.Background(), st, "s", backfill.ReplayRequest{From: from, To: &to}, "")
	if err != nil || !created {
		t.Fatalf("create replay: %v (created %v)", err, created)
	}
	r = waitReplay(t, st, "s", r.ID, "the replay to end", func(r *backfill.Replay) bool { return r.State != backfill.Running })
	if r.State != backfill.Done {
		t.Fatalf("replay %+v", r)
	}
	return r
}

// Retained changes older than keep are pruned in the background; newer
// ones stay.
func TestRetentionPruning(t *testing.T) {
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY);
		CREATE TABLE kept (id int PRIMARY KEY);`, "public.orders")
	b.cfg.Retention = config.Retention{Tables: []string{"public.kept"}, Keep: config.Duration(2 * time.Second)}
	b.start(t)
	ctx := context.Background()
	count := func() int {
		var n int
		if err := b.db.QueryRow(ctx, `SELECT count(*) FROM walhook.retained_changes`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	b.exec(t, `INSERT INTO kept SELECT generate_series(1, 12000)`) // more than one prune batch
	b.exec(t, `INSERT INTO orders VALUES (1)`)                     // not retained
	waitFor(t, 20*time.Second, "changes retained", func() bool { return count() == 12000 })
	waitFor(t, 20*time.Second, "old changes pruned", func() bool { return count() == 0 })
	b.exec(t, `INSERT INTO kept VALUES (0)`)
	waitFor(t, 20*time.Second, "a new change retained", func() bool { return count() == 1 })
}

// A replay survives a restart of walhook and resumes after the last chunk
// it recorded: every change of the window is queued once, none twice. A
// request for the window of a running replay gets that replay.
func TestReplayResumesAfterRestart(t *testing.T) {
	const rows = 12000 // three chunks
	w := retainedWindow(t, rows, 500)
	b, st, from, to, stop := w.b, w.st, w.from, w.to, w.stop
	ctx := context.Background()

	// The second chunk's commit fails until the gate is dropped: the
	// replay is held running after its first chunk.
	b.exec(t, `CREATE FUNCTION public.replay_gate() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'test gate: held after the first chunk'; END $$`)
	b.exec(t, `CREATE TRIGGER gate BEFORE UPDATE ON walhook.replays FOR EACH ROW
		WHEN (OLD.changes_processed > 0 AND NEW.changes_processed > OLD.changes_processed) EXECUTE FUNCTION public.replay_gate()`)
	req := backfill.ReplayRequest{From: from, To: &to}
	r, created, err := backfill.CreateReplay(ctx, st, "s", req, "")
	if err != nil || !created {
		t.Fatalf("create replay: %v (created %v)", err, created)
	}
	r = waitReplay(t, st, "s", r.ID, "the first chunk", func(r *backfill.Replay) bool { return r.ChangesProcessed > 0 })
	if r.State != backfill.Running || r.ChangesTotal != rows || r.ChangesProcessed != 5000 || r.Messages != 5000 {
		t.Fatalf("after the first chunk: %+v", r)
	}
	// A retried request (same window, with or without a key) gets it.
	again, created, err := backfill.CreateReplay(ctx, st, "s", req, "retry-1")
	if err != nil || created || again.ID != r.ID {
		t.Fatalf("the same window again: %+v created %v, %v; want replay %d", again, created, err, r.ID)
	}
	stop()

	b.exec(t, `DROP TRIGGER gate ON walhook.replays`)
	b.start(t)
	r = waitReplay(t, st, "s", r.ID, "the replay to end", func(r *backfill.Replay) bool { return r.State != backfill.Running })
	if r.State != backfill.Done || r.ChangesProcessed != rows || r.Messages != rows {
		t.Fatalf("after the restart: %+v", r)
	}
	// The key the retry carried answers the ended replay too.
	if again, created, err := backfill.CreateReplay(ctx, st, "s", req, "retry-1"); err != nil || created || again.ID != r.ID {
		t.Fatalf("the key after the end: %+v created %v, %v; want replay %d", again, created, err, r.ID)
	}
	if _, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: from}, "retry-1"); !errors.Is(err, backfill.ErrKeyReused) {
		t.Fatalf("the key for another window: %v, want ErrKeyReused", err)
	}
	msgs := b.recv.waitCount(t, 2*rows, 60*time.Second)
	seen := map[string]int{}
	for _, m := range msgs {
		seen[m.Metadata.IdempotencyKey]++
	}
	for k, n := range seen {
		if n != 2 {
			t.Fatalf("message %s delivered %d times, want twice (once live, once replayed)", k, n)
		}
	}
	if len(seen) != rows {
		t.Fatalf("%d distinct messages, want %d", len(seen), rows)
	}
}

// A large replay waits while its sink's backlog is large, as a backfill
// does: with the sink paused it stops short of the window, and it
// finishes once the sink drains.
func TestReplayWaitsForBacklog(t *testing.T) {
	const rows = 12000 // three chunks; the bound is 10,000 waiting
	w := retainedWindow(t, rows, 50)
	b, st, from, to := w.b, w.st, w.from, w.to
	ctx := context.Background()

	if err := st.SetSinkPaused(ctx, "s", true); err != nil {
		t.Fatal(err)
	}
	r, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: from, To: &to}, "")
	if err != nil {
		t.Fatal(err)
	}
	r = waitReplay(t, st, "s", r.ID, "the replay to wait for the backlog", func(r *backfill.Replay) bool {
		return r.WaitingFor == backfill.WaitBacklog || r.State != backfill.Running
	})
	counts, err := st.CountSinkMessages(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var waiting int64
	for _, c := range counts {
		waiting += c.Pending
	}
	if r.State != backfill.Running || r.ChangesProcessed != 10000 || waiting != 10000 {
		t.Fatalf("with the sink paused: %+v, %d waiting; want it running at 10000 of %d", r, waiting, rows)
	}

	// A waiting replay holds up no other sink's replay.
	s2 := config.Sink{Name: "s2", Endpoint: "recv", Path: "/hook2", Tables: []string{"public.t"}, BatchSize: 100}
	s2.ApplyDefaults()
	if _, err := st.PutSink(ctx, s2); err != nil {
		t.Fatal(err)
	}
	r2, _, err := backfill.CreateReplay(ctx, st, "s2", backfill.ReplayRequest{From: from, To: &to}, "")
	if err != nil {
		t.Fatal(err)
	}
	r2 = waitReplay(t, st, "s2", r2.ID, "the other sink's replay to end", func(r *backfill.Replay) bool { return r.State != backfill.Running })
	if r2.State != backfill.Done || r2.Messages != rows {
		t.Fatalf("the other sink's replay: %+v", r2)
	}
	if r, err = backfill.GetReplay(ctx, st, "s", r.ID); err != nil || r.State != backfill.Running || r.WaitingFor != backfill.WaitBacklog {
		t.Fatalf("the paused sink's replay meanwhile: %+v, %v", r, err)
	}

	// A waiting replay can be cancelled; it queues nothing more.
	earlier := to.Add(-time.Millisecond)
	r3, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: from, To: &earlier}, "")
	if err != nil {
		t.Fatal(err)
	}
	waitReplay(t, st, "s", r3.ID, "the second replay to wait", func(r *backfill.Replay) bool { return r.WaitingFor == backfill.WaitBacklog })
	if r3, err = backfill.CancelReplay(ctx, st, "s", r3.ID); err != nil || r3.State != backfill.Cancelled || r3.Messages != 0 || r3.WaitingFor != "" {
		t.Fatalf("cancel a waiting replay: %+v, %v", r3, err)
	}

	if err := st.SetSinkPaused(ctx, "s", false); err != nil {
		t.Fatal(err)
	}
	b.recv.waitCount(t, 3*rows, 60*time.Second)
	r = waitReplay(t, st, "s", r.ID, "the replay to end", func(r *backfill.Replay) bool { return r.State != backfill.Running })
	if r.State != backfill.Done || r.Messages != rows || r.WaitingFor != "" {
		t.Fatalf("after the sink drained: %+v", r)
	}
	if r3, err = backfill.GetReplay(ctx, st, "s", r3.ID); err != nil || r3.State != backfill.Cancelled || r3.Messages != 0 {
		t.Fatalf("the cancelled replay after the sink drained: %+v, %v", r3, err)
	}
}

// replayWindow is a running service with a sink "s" on table t, whose
// changes are retained, and the window [from, to) holding the insert of
// rows rows, delivered once.
type replayWindow struct {
	b        *testBundle
	st       *outbox.Store
	from, to time.Time
	stop     func()
}

func retainedWindow(t *testing.T, rows, batchSize int) replayWindow {
	t.Helper()
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Retention = config.Retention{Tables: []string{"public.t"}, Keep: config.Duration(time.Hour)}
	b.cfg.Sinks[0].BatchSize = batchSize
	w := replayWindow{b: b, stop: b.start(t), st: stateStore(t, b.url)}
	w.from = clock(t, b)
	b.exec(t, `INSERT INTO t SELECT generate_series(1, $1)`, rows)
	b.recv.waitCount(t, rows, 60*time.Second)
	w.to = clock(t, b)
	return w
}

// waitReplay polls replay id of a sink until done holds, and returns it.
func waitReplay(t *testing.T, st *outbox.Store, sinkName string, id int64, what string, done func(*backfill.Replay) bool) *backfill.Replay {
	t.Helper()
	var r *backfill.Replay
	waitFor(t, 30*time.Second, what, func() bool {
		var err error
		if r, err = backfill.GetReplay(context.Background(), st, sinkName, id); err != nil {
			t.Fatal(err)
		}
		return done(r)
	})
	return r
}

// A replay up to now includes a change committed just before it was
// asked for, even while capture lags: it bounds its window only once the
// stream has captured past the request.
func TestReplayWaitsForCapture(t *testing.T) {
	w := retainedWindow(t, 3, 10)
	b, st := w.b, w.st
	ctx := context.Background()

	// Capture cannot commit while the stream position is locked.
	lock, err := b.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background()) //nolint:errcheck // committed below
	if _, err := lock.Exec(ctx, `LOCK TABLE walhook.replication_state IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO t VALUES (100)`)
	r, _, err := backfill.CreateReplay(ctx, st, "s", backfill.ReplayRequest{From: w.to}, "")
	if err != nil {
		t.Fatal(err)
	}
	r = waitReplay(t, st, "s", r.ID, "the replay to wait for capture", func(r *backfill.Replay) bool {
		return r.WaitingFor == backfill.WaitCapture || r.State != backfill.Running
	})
	if r.State != backfill.Running || r.ChangesTotal != 0 {
		t.Fatalf("while capture lags: %+v", r)
	}
	if err := lock.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r = waitReplay(t, st, "s", r.ID, "the replay to end", func(r *backfill.Replay) bool { return r.State != backfill.Running })
	if r.State != backfill.Done || r.ChangesTotal != 1 || r.Messages != 1 || r.WaitingFor != "" {
		t.Fatalf("after capture caught up: %+v", r)
	}
	msgs := b.recv.waitCount(t, 3+2, 20*time.Second)
	if n := len(msgs); n != 5 || msgs[3].Record["id"] != float64(100) || msgs[4].Record["id"] != float64(100) {
		t.Errorf("deliveries: %d, want the 3 first rows, then row 100 live and replayed", n)
	}
}
