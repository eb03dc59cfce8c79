package replication

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/sink"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Fifth adversarial review: the quiet flush of 7a275c3 (flush once the
// slot has sent nothing for idleGap), on a real slot.

// r5Handler records what the stream does with it: flushes inside a
// transaction, the order of the rows, and how long each commit waited for
// its flush.
type r5Handler struct {
	mu         sync.Mutex
	inTx       bool
	violations []string
	ids        []int // every row's id, in the order received
	txRows     int
	buffered   int
	lastEnd    uint64
	durable    uint64
	waiting    []time.Time // commit times (local) of unflushed commits
	waits      []time.Duration
	flushes    int
	slowFlush  bool
}

func (h *r5Handler) Position(context.Context) (uint64, uint64, error) { return 0, 0, nil }

func (h *r5Handler) Begin(context.Context, uint64, time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inTx {
		h.violations = append(h.violations, "Begin inside a transaction")
	}
	h.inTx, h.txRows = true, 0
	return nil
}

func (h *r5Handler) Change(_ context.Context, c *sink.Change) error {
	id, err := strconv.Atoi(string(c.New[0]))
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.inTx {
		h.violations = append(h.violations, "Change outside a transaction")
	}
	h.ids = append(h.ids, id)
	h.buffered++
	return nil
}

func (h *r5Handler) Truncate(context.Context, []*sink.Relation) error { return nil }

func (h *r5Handler) Message(context.Context, uint64, bool, string, []byte) error { return nil }

func (h *r5Handler) Commit(_ context.Context, _, end uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inTx = false
	h.lastEnd = end
	h.waiting = append(h.waiting, time.Now())
	return nil
}

func (h *r5Handler) Flush(context.Context) (uint64, error) {
	h.mu.Lock()
	if h.inTx {
		h.violations = append(h.violations, "Flush inside a transaction")
	}
	now := time.Now()
	for _, w := range h.waiting {
		h.waits = append(h.waits, now.Sub(w))
	}
	h.waiting = h.waiting[:0]
	h.buffered = 0
	h.durable = h.lastEnd
	h.flushes++
	slow := h.slowFlush
	h.mu.Unlock()
	if slow {
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
	}
	return h.lastEnd, nil
}

func (h *r5Handler) Buffered() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buffered
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Bursts of small transactions with gaps around idleGap, big transactions
// whose messages stream for a while, and a quiet spell: no flush inside a
// transaction, every row once and in commit order, every commit flushed
// within FlushDelay (plus scheduling slack) and the slot confirmed to the
// end, and no busy loop while quiet.
func TestR5QuietFlush(t *testing.T) {
	ctx := t.Context()
	url := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t`); err != nil {
		t.Fatal(err)
	}
	if err := EnsureSlot(ctx, pool, "s"); err != nil {
		t.Fatal(err)
	}
	st := NewStream(Config{URL: url, Slot: "s", Publication: "p", Log: zerolog.Nop()}, pool)
	h := &r5Handler{slowFlush: true}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.Run(sctx, h) }()
	defer func() {
		stop()
		<-done
	}()
	select {
	case <-st.Started():
	case err := <-done:
		t.Fatal(err)
	}

	next := 0
	insert := func(n int) {
		t.Helper()
		var b strings.Builder
		b.WriteString(`INSERT INTO t (id, v) SELECT g, 'x' FROM generate_series(`)
		fmt.Fprintf(&b, "%d, %d) g", next, next+n-1)
		if _, err := pool.Exec(ctx, b.String()); err != nil {
			t.Fatal(err)
		}
		next += n
	}
	for i := range 400 {
		switch {
		case i%97 == 50:
			insert(20000) // decoded and sent over tens of milliseconds
		case i%5 == 0:
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			insert(1 + rand.IntN(5))
		default:
			insert(1 + rand.IntN(5))
		}
	}
	// Everything arrives and is flushed, with no help from later traffic.
	deadline := time.Now().Add(30 * time.Second)
	for {
		h.mu.Lock()
		got, waiting := len(h.ids), len(h.waiting)
		h.mu.Unlock()
		if got == next && waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %d of %d rows received, %d commits not flushed", got, next, waiting)
		}
		time.Sleep(time.Millisecond)
	}
	cpu0 := cpuTime()
	time.Sleep(time.Second)
	idleCPU := cpuTime() - cpu0

	h.mu.Lock()
	lastEnd := h.lastEnd
	defer h.mu.Unlock()
	if len(h.violations) > 0 {
		t.Fatalf("%d violations, first: %s", len(h.violations), h.violations[0])
	}
	for i, id := range h.ids {
		if id != i {
			t.Fatalf("row %d has id %d: lost, repeated or out of order", i, id)
		}
	}
	var worst, sum time.Duration
	for _, w := range h.waits {
		worst = max(worst, w)
		sum += w
	}
	t.Logf("%d commits, %d flushes; wait for flush: mean %s, worst %s; CPU while quiet: %s",
		len(h.waits), h.flushes, (sum / time.Duration(len(h.waits))).Round(time.Microsecond), worst.Round(time.Microsecond), idleCPU)
	if worst > 10*time.Millisecond+50*time.Millisecond {
		t.Errorf("a commit waited %s for its flush; FlushDelay is 10ms", worst)
	}
	if idleCPU > 200*time.Millisecond {
		t.Errorf("the stream used %s of CPU in a quiet second: a busy loop?", idleCPU)
	}
	// The slot is confirmed to the end (the handler's lock is not held: a
	// keepalive asks Buffered).
	h.mu.Unlock()
	defer h.mu.Lock()
	var confirmed bool
	for range 100 {
		if err := pool.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 's'`, lsnText(lastEnd)).Scan(&confirmed); err != nil {
			t.Fatal(err)
		}
		if confirmed {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !confirmed {
		t.Errorf("the slot was not confirmed to %s (the last commit's end)", lsnText(lastEnd))
	}
}

func lsnText(l uint64) string { return fmt.Sprintf("%X/%X", l>>32, uint32(l)) }
