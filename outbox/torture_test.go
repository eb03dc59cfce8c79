package outbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestTorture drives one sink's outbox with many concurrent actors on a
// real Postgres and checks the invariants of doc.go as it goes:
//
//   - never two batches of one group in flight (I1);
//   - a claimed batch starts at its group's first waiting message in
//     commit order, and is in commit order (I2);
//   - an ack after the lease changes nothing (I4);
//   - nothing rolled back is ever claimed, and everything committed is
//     acknowledged in the end (I5);
//   - nothing stalls: once failures stop, everything drains (I3).
//
// Actors: a capture that queues hot and cold groups in transactions that
// spill several chunks, carry backfill-sized pages, linger and sometimes
// roll back; replays that queue older commit positions into live groups
// and commit late; workers that claim, post, ack, nack (backoff, or past
// max_age into failed), ack after their lease, abandon batches, and
// crash (their session ends); pull consumers that ack parts of what they
// received, nack the rest or let it lapse, and claim ahead (prefetches,
// adopted, released or abandoned: torture_pull_test.go);
// redeliveries; pauses and resumes; a housekeeper that reaps dead
// workers and ended claims.
//
// WALHOOK_TORTURE_SEED replays a seed (each actor draws from its own
// generator seeded from it; the interleaving is the scheduler's), and
// WALHOOK_TORTURE_DURATION runs longer than the default 20 s chaos phase,
// e.g. WALHOOK_TORTURE_DURATION=10m for a soak.
func TestTorture(t *testing.T) {
	seed := uint64(20261127)
	if v := os.Getenv("WALHOOK_TORTURE_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("WALHOOK_TORTURE_SEED=%q: %v", v, err)
		}
		seed = s
	}
	chaos := 20 * time.Second
	if v := os.Getenv("WALHOOK_TORTURE_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WALHOOK_TORTURE_DURATION=%q: %v", v, err)
		}
		chaos = d
	}
	t.Logf("torture: seed %d, chaos %s (replay with WALHOOK_TORTURE_SEED=%d)", seed, chaos, seed)

	b := setup(t)
	tt := &torture{t: t, b: b, seed: seed, msgs: map[int64]*tmsg{}, inflight: map[string]string{}}
	tt.run(chaos)
}

// tmsg is the checker's model of one message.
type tmsg struct {
	n          int64
	group      string
	lsn        int64
	idx        int32
	rolledBack bool
	committed  int64 // event number when its commit returned; 0 before
	everFailed bool  // a nack that may have failed it returned
	outcomes   int   // ack or nack calls naming it that have not returned
	acked      bool
	history    []string // what happened to it, for a violation report
}

func (m *tmsg) before(o *tmsg) bool {
	return m.lsn < o.lsn || m.lsn == o.lsn && m.idx < o.idx
}

type torture struct {
	t    *testing.T
	b    *testBundle
	seed uint64

	clock   atomic.Int64 // event numbers: a total order of observed events
	ops     atomic.Int64
	pullOps atomic.Int64 // pull acks and nacks among ops
	adopted atomic.Int64 // prefetches adopted by a receive (rule A)

	mu         sync.Mutex
	msgs       map[int64]*tmsg
	byGroup    map[string][]*tmsg
	inflight   map[string]string   // group -> worker posting it
	violations map[string][]string // by kind: the first few of each
	counts     map[string]int
	nextN      int64
	nextLSN    int64

	chaos atomic.Bool // failures on
	stop  atomic.Bool // chaos actors stop
}

func (tt *torture) tick() int64 { return tt.clock.Add(1) }

func (tt *torture) violate(kind, format string, args ...any) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	tt.violateLocked(kind, format, args...)
}

// violateLocked records a violation; tt.mu is held.
func (tt *torture) violateLocked(kind, format string, args ...any) {
	if tt.violations == nil {
		tt.violations, tt.counts = map[string][]string{}, map[string]int{}
	}
	tt.counts[kind]++
	if len(tt.violations[kind]) < 5 {
		tt.violations[kind] = append(tt.violations[kind], fmt.Sprintf(format, args...))
	}
}

func (tt *torture) rng(actor uint64) *rand.Rand {
	return rand.New(rand.NewPCG(tt.seed, actor))
}

var (
	hotGroups  = []string{"h0", "h1", "h2", "h3"}
	coldGroups = func() []string {
		var g []string
		for i := range 40 {
			g = append(g, "c"+strconv.Itoa(i))
		}
		return g
	}()
)

// newMsgs models messages for the given groups with consecutive commit
// positions from lsn (idx from idx0), and renders them.
func (tt *torture) newMsgs(groups []string, lsn int64, idx0 int32) ([]*tmsg, []NewMessage) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.byGroup == nil {
		tt.byGroup = map[string][]*tmsg{}
	}
	ms := make([]*tmsg, len(groups))
	rows := make([]NewMessage, len(groups))
	for i, g := range groups {
		tt.nextN++
		m := &tmsg{n: tt.nextN, group: g, lsn: lsn, idx: idx0 + int32(i)}
		tt.msgs[m.n] = m
		tt.byGroup[g] = append(tt.byGroup[g], m)
		ms[i] = m
		rows[i] = NewMessage{SinkID: tt.b.sinkID, Group: g, CommitLSN: uint64(lsn), CommitIdx: int(m.idx), Payload: []byte(`{"n":` + strconv.FormatInt(m.n, 10) + `}`)}
	}
	return ms, rows
}

func (tt *torture) settle(ms []*tmsg, committed bool) {
	now := tt.tick()
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range ms {
		if committed {
			m.committed = now
		} else {
			m.rolledBack = true
		}
	}
}

func pick(r *rand.Rand, groups []string) string { return groups[r.IntN(len(groups))] }

// capture queues source transactions the way replication does: commit
// positions grow with commit order, a transaction may spill several
// chunks and carry a backfill page, may linger open, and may roll back.
func (tt *torture) capture(ctx context.Context) {
	r := tt.rng(1)
	for !tt.stop.Load() && ctx.Err() == nil {
		tt.mu.Lock()
		tt.nextLSN += 10
		lsn := tt.nextLSN
		tt.mu.Unlock()
		var all []*tmsg
		commit := r.IntN(10) != 0
		err := pgx.BeginFunc(ctx, tt.b.store.Pool, func(tx pgx.Tx) error {
			idx := int32(0)
			for range 1 + r.IntN(3) {
				var groups []string
				if r.IntN(8) == 0 { // a backfill page: many cold groups
					for range 20 + r.IntN(30) {
						groups = append(groups, pick(r, coldGroups))
					}
				} else {
					for range 1 + r.IntN(6) {
						if r.IntN(3) == 0 {
							groups = append(groups, pick(r, coldGroups))
						} else {
							groups = append(groups, pick(r, hotGroups))
						}
					}
				}
				ms, rows := tt.newMsgs(groups, lsn, idx)
				idx += int32(len(groups))
				all = append(all, ms...)
				if err := queueRows(ctx, tx, rows); err != nil {
					return err
				}
				if r.IntN(4) == 0 {
					time.Sleep(time.Duration(r.IntN(30)) * time.Millisecond)
				}
			}
			if !commit {
				tt.settle(all, false)
				return errRollback
			}
			return nil
		})
		tt.ops.Add(1)
		switch {
		case err == nil:
			tt.settle(all, true)
		case err == errRollback:
		case ctx.Err() != nil:
			return
		default:
			tt.violate("error", "capture: %v", err)
			return
		}
		// Bursts, then lulls in which delivery catches up: a backlog
		// hides nothing here that a lull does not show.
		if r.IntN(50) == 0 {
			time.Sleep(time.Duration(200+r.IntN(300)) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(r.IntN(4)) * time.Millisecond)
		}
	}
}

var errRollback = fmt.Errorf("rollback on purpose")

// replay queues older commit positions into live groups, sometimes
// holding its transaction open so it commits after newer captures.
func (tt *torture) replay(ctx context.Context) {
	r := tt.rng(2)
	seq := int32(1_000_000)
	for !tt.stop.Load() && ctx.Err() == nil {
		time.Sleep(time.Duration(20+r.IntN(80)) * time.Millisecond)
		tt.mu.Lock()
		old := 1 + r.Int64N(max(tt.nextLSN, 1))
		tt.mu.Unlock()
		// Mostly into groups in flight right now: the case where a late
		// commit with an older position must wait for the batch out.
		var groups []string
		tt.mu.Lock()
		busy := slices.Sorted(maps.Keys(tt.inflight))
		tt.mu.Unlock()
		for range 1 + r.IntN(4) {
			if len(busy) > 0 && r.IntN(4) != 0 {
				groups = append(groups, pick(r, busy))
			} else {
				groups = append(groups, pick(r, hotGroups))
			}
		}
		ms, rows := tt.newMsgs(groups, old, seq)
		seq += int32(len(groups))
		err := pgx.BeginFunc(ctx, tt.b.store.Pool, func(tx pgx.Tx) error {
			if err := queueRows(ctx, tx, rows); err != nil {
				return err
			}
			if r.IntN(2) == 0 {
				time.Sleep(time.Duration(r.IntN(60)) * time.Millisecond)
			}
			return nil
		})
		tt.ops.Add(1)
		if err != nil {
			if ctx.Err() == nil {
				tt.violate("error", "replay: %v", err)
			}
			return
		}
		tt.settle(ms, true)
	}
}

// worker claims, posts and records outcomes, with failures while chaos
// is on.
func (tt *torture) worker(ctx context.Context, id int) {
	r := tt.rng(uint64(100 + id))
	name := "w" + strconv.Itoa(id)
	w, err := tt.b.store.RegisterWorker(ctx, name)
	if err != nil {
		tt.violate("error", "%s: register: %v", name, err)
		return
	}
	defer func() { _ = w.Close(context.WithoutCancel(ctx)) }()
	for ctx.Err() == nil {
		lease := 10 * time.Second
		slow := tt.chaos.Load() && r.IntN(25) == 0
		if slow {
			lease = 200 * time.Millisecond
		}
		// A worker claims for several of its goroutines at once (as
		// delivery's dispatcher does) and handles the batches in turn; a
		// slow one takes one batch, so that only its lease runs out.
		n := 1 + r.IntN(3)
		if slow {
			n = 1
		}
		start := tt.tick()
		batches, err := tt.b.store.ClaimBatches(ctx, ClaimRequest{SinkID: tt.b.sinkID, BatchSize: 1 + r.IntN(6), MaxAckPending: 60,
			Lease: lease, Worker: name, WorkerID: w.ID, Batches: n})
		tt.ops.Add(1)
		if err != nil {
			if ctx.Err() == nil {
				tt.violate("error", "%s: claim: %v", name, err)
			}
			return
		}
		if len(batches) == 0 {
			time.Sleep(time.Duration(1+r.IntN(5)) * time.Millisecond)
			continue
		}
		if len(batches) > n {
			tt.violate("too many batches", "%s: asked for %d batches, got %d", name, n, len(batches))
		}
		end := tt.tick()
		claimedMs := make([][]*tmsg, len(batches))
		for i, b := range batches {
			claimedMs[i] = tt.checkClaim(name, b, start, end)
		}
		if !tt.handle(ctx, r, name, &w, batches, claimedMs, slow, lease) {
			return
		}
	}
}

// handle posts a worker's claimed batches one after another and records
// their outcomes. It returns false when the worker must stop.
func (tt *torture) handle(ctx context.Context, r *rand.Rand, name string, wp **Worker, batches []*Batch, claimedMs [][]*tmsg, slow bool, lease time.Duration) bool {
	w := *wp
	defer func() { *wp = w }()
	for bi, batch := range batches {
		if ctx.Err() != nil {
			return false // the run is over: the batches left are abandoned
		}
		ms := claimedMs[bi]
		claimed := time.Now()
		// The post. The batch is in flight, for certain, until the worker
		// records an outcome (or crashes); a slow worker's lease may run out
		// at any time, so it is not counted.
		if slow {
			tt.endPost(name, batch)
		} else if r.IntN(3) == 0 {
			time.Sleep(time.Duration(5+r.IntN(25)) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
		}

		chaos := tt.chaos.Load()
		if !slow {
			tt.endPost(name, batch)
		}
		switch {
		case slow:
			// Acks after its lease: must change nothing, whoever has
			// the batch now.
			time.Sleep(lease + 50*time.Millisecond - time.Since(claimed))
			tt.record(ms, func() error { return tt.b.store.Ack(ctx, batch) }, name, true)
		case chaos && r.IntN(40) == 0:
			// Crashes: its session ends, the batches it holds are
			// abandoned.
			tt.mu.Lock()
			for _, ms := range claimedMs[bi:] {
				for _, m := range ms {
					m.history = append(m.history, fmt.Sprintf("abandoned by %s at %d", name, tt.clock.Load()))
				}
			}
			tt.mu.Unlock()
			for _, b := range batches[bi+1:] {
				tt.endPost(name, b) // never posted: dead with the worker
			}
			w.kill(ctx)
			// A failed registration keeps the killed worker (closing it
			// does nothing); one as the run ends is no violation.
			nw, err := tt.b.store.RegisterWorker(ctx, name)
			if err != nil {
				if ctx.Err() == nil {
					tt.violate("error", "%s: register again: %v", name, err)
				}
				return false
			}
			w = nw
			return true
		case chaos && r.IntN(5) == 0:
			f := Failure{AttemptStart: time.Now(), Status: 500, Error: "boom", Backoff: time.Duration(r.IntN(40)) * time.Millisecond}
			if r.IntN(3) == 0 {
				f.AttemptStart, f.MaxAge = time.Now().Add(-time.Hour), time.Minute // fails them
			}
			nstart := tt.tick()
			tt.mu.Lock()
			for _, m := range ms {
				m.outcomes++
			}
			tt.mu.Unlock()
			failed, err := tt.b.store.Nack(ctx, batch, f)
			tt.ops.Add(1)
			if err != nil && ctx.Err() == nil {
				tt.violate("error", "%s: nack: %v", name, err)
			}
			tt.mu.Lock()
			for _, m := range ms {
				m.outcomes--
				m.history = append(m.history, fmt.Sprintf("nack by %s %d-%d: failed %d, %v", name, nstart, tt.clock.Load(), failed, err))
				if failed > 0 {
					m.everFailed = true
				}
			}
			tt.mu.Unlock()
		default:
			tt.record(ms, func() error { return tt.b.store.Ack(ctx, batch) }, name, false)
		}
	}
	return true
}

// record runs an ack of ms and models its outcome. A late ack must be
// refused.
func (tt *torture) record(ms []*tmsg, ack func() error, who string, late bool) {
	start := tt.tick()
	tt.mu.Lock()
	for _, m := range ms {
		m.outcomes++
	}
	tt.mu.Unlock()
	err := ack()
	tt.ops.Add(1)
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range ms {
		m.outcomes--
		m.history = append(m.history, fmt.Sprintf("ack by %s (late %v) %d-%d: %v", who, late, start, tt.clock.Load(), err))
	}
	switch {
	case err == nil && late:
		tt.violateLocked("late ack took effect", "%s: an ack after the lease took effect (messages %v)", who, nums(ms))
	case err == nil:
		for _, m := range ms {
			m.acked = true
		}
	case IsClaimEnded(err):
		if !late {
			tt.violateLocked("timely ack refused", "%s: a timely ack was refused: %v", who, err)
		}
	case errors.Is(err, context.Canceled):
		// The run is over (after the drain): the ack may or may not have
		// committed, and nothing is checked any more.
	default:
		tt.violateLocked("error", "%s: ack: %v", who, err)
	}
}

func nums(ms []*tmsg) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.n
	}
	return out
}

// checkClaim checks a batch against the model (I1, I2, I5) and marks its
// groups in flight.
func (tt *torture) checkClaim(who string, b *Batch, start, end int64) []*tmsg {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	var ms []*tmsg
	byGroup := map[string][]*tmsg{}
	for _, m := range b.Messages {
		s := strings.TrimSuffix(strings.TrimPrefix(string(m.Payload), `{"n":`), `}`)
		n, _ := strconv.ParseInt(s, 10, 64)
		tm := tt.msgs[n]
		if tm == nil {
			tt.violateLocked("unknown message", "%s: claimed unknown message %s", who, m.Payload)
			continue
		}
		if tm.rolledBack {
			tt.violateLocked("rolled back delivered", "%s: claimed message %d of a rolled-back transaction", who, n)
		}
		if tm.group != m.Group {
			tt.violateLocked("wrong group", "%s: message %d claimed as group %s, queued as %s", who, n, m.Group, tm.group)
		}
		tm.history = append(tm.history, fmt.Sprintf("claimed by %s in claim %d at %d-%d", who, b.ClaimID, start, end))
		ms = append(ms, tm)
		byGroup[tm.group] = append(byGroup[tm.group], tm)
	}
	for g, gm := range byGroup {
		if other, ok := tt.inflight[g]; ok {
			tt.violateLocked("two in flight", "%s: claimed group %s (messages %v) while %s has it in flight", who, g, nums(gm), other)
		}
		tt.inflight[g] = who
		for i := 1; i < len(gm); i++ {
			if !gm[i-1].before(gm[i]) {
				tt.violateLocked("batch out of order", "%s: batch of group %s out of commit order: %v", who, g, nums(gm))
			}
		}
		first := gm[0]
		for _, x := range tt.byGroup[g] {
			if slices.Contains(gm, x) || !x.before(first) {
				continue
			}
			// x is older than the batch: it must not have been waiting
			// for certain while the claim ran (committed before it began,
			// never failed, and no outcome that could have removed it has
			// returned or is under way).
			waiting := x.committed > 0 && x.committed < start && !x.everFailed && !x.acked && x.outcomes == 0
			if waiting {
				tt.violateLocked("older message waited", "%s: claimed group %s from message %d (lsn %d/%d) while older message %d (lsn %d/%d) waited; now:\n%s",
					who, g, first.n, first.lsn, first.idx, x.n, x.lsn, x.idx, tt.dump(g)+fmt.Sprintf("  claim %d-%d; older: committed %d history %q\n", start, end, x.committed, x.history))
			}
		}
	}
	return ms
}

func (tt *torture) endPost(who string, b *Batch) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range b.Messages {
		if tt.inflight[m.Group] == who {
			delete(tt.inflight, m.Group)
		}
	}
}

func (tt *torture) run(chaos time.Duration) {
	t := tt.t
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := tt.b.store
	tt.chaos.Store(true)
	var chaosActors, workers sync.WaitGroup
	chaosActors.Go(func() { tt.capture(ctx) })
	chaosActors.Go(func() { tt.replay(ctx) })
	chaosActors.Go(func() { // redeliveries, pauses and resumes
		r := tt.rng(3)
		for !tt.stop.Load() {
			time.Sleep(time.Duration(100+r.IntN(300)) * time.Millisecond)
			switch r.IntN(3) {
			case 0:
				_, err := store.Redeliver(ctx, tt.b.sinkID, nil)
				tt.check("redeliver", err)
			case 1:
				tt.check("pause", store.SetSinkPaused(ctx, "s", true))
				time.Sleep(time.Duration(r.IntN(150)) * time.Millisecond)
				tt.check("resume", store.SetSinkPaused(ctx, "s", false))
			default:
				var ids []int64
				err := store.Pool.QueryRow(ctx, `SELECT COALESCE(array_agg(id), '{}') FROM (SELECT id FROM outbox WHERE failed_at IS NOT NULL ORDER BY random() LIMIT 3) x`).Scan(&ids)
				tt.check("pick failed", err)
				if len(ids) > 0 {
					_, err := store.Redeliver(ctx, tt.b.sinkID, ids)
					tt.check("redeliver some", err)
				}
			}
			tt.ops.Add(1)
		}
	})
	var house sync.WaitGroup
	house.Go(func() { // the housekeeper every process runs
		for ctx.Err() == nil {
			time.Sleep(150 * time.Millisecond)
			if _, _, err := store.ReapDeadWorkers(ctx, 0); err != nil && ctx.Err() == nil {
				tt.violate("error", "reap workers: %v", err)
			}
			if _, err := store.ReapClaims(ctx); err != nil && ctx.Err() == nil {
				tt.violate("error", "reap claims: %v", err)
			}
		}
	})
	for i := range 6 {
		workers.Go(func() { tt.worker(ctx, i) })
	}
	for i := range 2 { // torture_pull_test.go
		workers.Go(func() { tt.puller(ctx, i) })
	}

	began := time.Now()
	time.Sleep(chaos)
	tt.stop.Store(true)
	chaosActors.Wait()
	tt.chaos.Store(false)
	if err := store.SetSinkPaused(ctx, "s", false); err != nil {
		t.Fatal(err)
	}

	// Drain: no more failures; failed messages are redelivered until
	// every committed message has been acknowledged.
	drainStart := time.Now()
	// Generous: a loaded CI machine drains in up to ~16 s; a stall never does.
	deadline := drainStart.Add(60 * time.Second)
	var left []*tmsg
	for {
		if _, err := store.Redeliver(ctx, tt.b.sinkID, nil); err != nil {
			t.Fatal(err)
		}
		left = left[:0]
		tt.mu.Lock()
		for _, m := range tt.msgs {
			if !m.rolledBack && !m.acked {
				left = append(left, m)
			}
		}
		tt.mu.Unlock()
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	drained := time.Since(drainStart)
	var live string
	if len(left) > 0 {
		live = tt.liveState(ctx)
	}
	cancel()
	workers.Wait()
	house.Wait()

	tt.mu.Lock()
	total, rolled := len(tt.msgs), 0
	for _, m := range tt.msgs {
		if m.rolledBack {
			rolled++
		}
	}
	violations, counts := tt.violations, tt.counts
	tt.mu.Unlock()
	elapsed := time.Since(began)
	t.Logf("torture: %d messages (%d rolled back), %d operations (%d pull acks and nacks, %d prefetches adopted) in %s (%.0f ops/s), drained in %s",
		total, rolled, tt.ops.Load(), tt.pullOps.Load(), tt.adopted.Load(), elapsed.Round(time.Millisecond), float64(tt.ops.Load())/elapsed.Seconds(), drained.Round(time.Millisecond))
	if tt.adopted.Load() == 0 {
		t.Errorf("seed %d: no receive adopted a prefetch: rule A went untested", tt.seed)
	}
	for _, kind := range slices.Sorted(maps.Keys(violations)) {
		t.Errorf("seed %d: %d× %s, e.g.:\n  %s", tt.seed, counts[kind], kind, strings.Join(violations[kind], "\n  "))
	}
	if len(left) > 0 {
		slices.SortFunc(left, func(a, b *tmsg) int { return int(a.n - b.n) })
		t.Errorf("seed %d: stalled: %d committed messages never acknowledged, e.g. %d (group %s, lsn %d/%d)\nwhile stalled:\n%s\nafter the actors stopped:\n%s",
			tt.seed, len(left), left[0].n, left[0].group, left[0].lsn, left[0].idx, live, tt.dump(left[0].group))
	}
}

func (tt *torture) check(what string, err error) {
	if err != nil && !tt.stop.Load() {
		tt.violate("error", "%s: %v", what, err)
	}
}

// dump shows a group's rows and the claims, for a stall report.
func (tt *torture) dump(group string) string {
	ctx := context.Background()
	var sb strings.Builder
	rows, err := tt.b.store.Pool.Query(ctx, `SELECT id, payload, commit_lsn, commit_idx, head, deliver_count, failed_at IS NOT NULL, ready_at > clock_timestamp()
		FROM outbox WHERE group_key = $1 ORDER BY commit_lsn, commit_idx, id`, group)
	if err != nil {
		return err.Error()
	}
	for rows.Next() {
		var id, lsn int64
		var idx, dc int32
		var payload string
		var head *bool
		var failed, future bool
		if err := rows.Scan(&id, &payload, &lsn, &idx, &head, &dc, &failed, &future); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&sb, "  row %d %s lsn %d/%d head %v deliver_count %d failed %v backing_off %v\n", id, payload, lsn, idx, fmtHead(head), dc, failed, future)
	}
	rows.Close()
	var claims, workers int
	_ = tt.b.store.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM workers)`).Scan(&claims, &workers)
	fmt.Fprintf(&sb, "  claims %d, workers %d\n", claims, workers)
	return sb.String()
}

// liveState describes a stall while the actors still run: the sink, its
// claims and workers, whether the actors make progress, what a claim
// finds, and what every session is doing.
func (tt *torture) liveState(ctx context.Context) string {
	var sb strings.Builder
	q := func(title, sql string, args ...any) {
		rows, err := tt.b.store.Pool.Query(ctx, sql, args...)
		if err != nil {
			fmt.Fprintf(&sb, "  %s: %v\n", title, err)
			return
		}
		defer rows.Close()
		fmt.Fprintf(&sb, "  %s:\n", title)
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				fmt.Fprintf(&sb, "    %v\n", err)
				return
			}
			fmt.Fprintf(&sb, "    %v\n", vals)
		}
		if err := rows.Err(); err != nil {
			fmt.Fprintf(&sb, "    %v\n", err)
		}
	}
	before := tt.ops.Load()
	time.Sleep(time.Second)
	fmt.Fprintf(&sb, "  operations in the last second: %d\n", tt.ops.Load()-before)
	q("sink", `SELECT status, hold_until, clock_timestamp() FROM sinks WHERE id = $1`, tt.b.sinkID)
	q("claims", `SELECT id, worker, worker_id, until - clock_timestamp(), lapse_max_age, cardinality(ids), groups FROM claims ORDER BY id`)
	q("workers", `SELECT * FROM workers`)
	q("waiting messages by flag, retry, ready", `SELECT head, deliver_count > 0, ready_at <= clock_timestamp(), count(*) FROM outbox
		WHERE failed_at IS NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`)
	q("sessions", `SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 80) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid`)
	b, err := tt.b.store.ClaimBatches(ctx, ClaimRequest{SinkID: tt.b.sinkID, BatchSize: 6, MaxAckPending: 60, Lease: time.Second, Worker: "probe", Batches: 3})
	fmt.Fprintf(&sb, "  a probe claim: %d batches, %v\n", len(b), err)
	return sb.String()
}

func fmtHead(h *bool) string {
	if h == nil {
		return "NULL"
	}
	return strconv.FormatBool(*h)
}
