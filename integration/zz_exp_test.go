package integration

import (
	"context"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
)

func TestZZDelivery(t *testing.T) {
	b := setup(t, benchDDL+`; INSERT INTO orders (id, customer_id, status, total) SELECT g, g % 1000, 'new', (g % 997) * 1.25 FROM generate_series(1, 15000) g;`, "public.orders")
	b.cfg.Sinks[0].BatchSize = 100
	b.start(t)
	st := stateStore(t, b.url)
	ctx := context.Background()
	b.exec(t, `UPDATE walhook.sinks SET status = 'paused'`)
	bf, err := backfill.Create(ctx, st, nil, "s", backfill.Request{})
	if err != nil {
		t.Fatal(err)
	}
	bf = waitBackfill(t, st, "s", bf.ID, 5*time.Minute)
	start := time.Now()
	b.exec(t, `UPDATE walhook.sinks SET status = 'active'`)
	b.recv.waitCount(t, 15000, 5*time.Minute)
	d := time.Since(start)
	t.Logf("%s: delivered 15000 in %s: %.0f rows/s", bf.State, d, 15000/d.Seconds())
}
