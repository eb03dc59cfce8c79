package integration

import (
	"context"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
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

	res, err := backfill.Replay(ctx, st, "s", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changes != 9 || res.Messages != 8 {
		t.Fatalf("replay: %+v, want 9 changes, 8 messages", res)
	}
	replayed := b.recv.waitCount(t, len(all)+8, 20*time.Second)[len(all):]
	time.Sleep(300 * time.Millisecond)
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
	if _, err := backfill.Replay(ctx, st, "s", to, from); err == nil {
		t.Error("a window ending before it starts was accepted")
	}
	if _, err := backfill.Replay(ctx, st, "nope", from, to); err == nil {
		t.Error("an unknown sink was accepted")
	}
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
