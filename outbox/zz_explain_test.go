package outbox

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestZZExplain(t *testing.T) {
	if os.Getenv("ZZ") == "" {
		t.Skip()
	}
	b := setup(t)
	ctx := t.Context()
	const n = 20000
	rows := make([]NewMessage, n)
	for i := range rows {
		rows[i] = NewMessage{SinkID: b.sinkID, Group: fmt.Sprint("g", i%5000), CommitLSN: uint64(i), CommitIdx: 0, Payload: []byte(`{"a":1,"b":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)}
	}
	if err := b.store.Enqueue(ctx, rows); err != nil {
		t.Fatal(err)
	}
	b.store.Pool.Exec(ctx, `ANALYZE outbox`)
	for _, c := range []struct{ size, k int }{{1, 1}, {1, 16}, {100, 1}, {100, 4}} {
		req := ClaimRequest{SinkID: b.sinkID, BatchSize: c.size, MaxAckPending: 100000, Lease: time.Minute, Worker: "w", Batches: c.k}
		// some live claims, as under load
		var held []*Batch
		for range 4 {
			bs, _ := b.store.ClaimBatches(ctx, req)
			held = append(held, bs...)
		}
		start := time.Now()
		for range 20 {
			bs, err := b.store.ClaimBatches(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.store.AckAll(ctx, b.sinkID, bs); err != nil {
				t.Fatal(err)
			}
		}
		el := time.Since(start) / 20
		t0 := time.Now()
		var more []*Batch
		for range 20 {
			bs, _ := b.store.ClaimBatches(ctx, req)
			more = append(more, bs...)
		}
		cl := time.Since(t0) / 20
		t1 := time.Now()
		for _, h := range more {
			b.store.AckAll(ctx, b.sinkID, []*Batch{h})
		}
		ak := time.Since(t1) / time.Duration(max(len(more), 1))
		fmt.Printf("size %d k %d: claim+ack %s; claim %s; ack per batch %s\n", c.size, c.k, el, cl, ak)
		_, plan := b.explainClaim(t, req)
		os.WriteFile(fmt.Sprintf("/tmp/plan-%d-%d.json", c.size, c.k), []byte(plan), 0o644)
		if _, err := b.store.AckAll(ctx, b.sinkID, held); err != nil {
			t.Fatal(err)
		}
	}
}
