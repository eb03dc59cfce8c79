package outbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/pgtest"
)

// Second adversarial review (multi-batch claims, the pending rule's
// window, asynchronous commit, the pull ack rewrite). Each test is a
// sequence tried against I1–I5 (doc.go).

// r2Order is each group's unfailed messages of the sink in commit order,
// with whether each is ready, read just before a claim.
type r2Msg struct {
	id    int64
	ready bool
}

func (b *testBundle) r2Order(t *testing.T) map[string][]r2Msg {
	t.Helper()
	rows, err := b.store.Pool.Query(t.Context(), `SELECT group_key, id, ready_at <= clock_timestamp() FROM outbox
		WHERE sink_id = $1 AND failed_at IS NULL ORDER BY group_key, commit_lsn, commit_idx, id`, b.sinkID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]r2Msg{}
	for rows.Next() {
		var g string
		var m r2Msg
		if err := rows.Scan(&g, &m.id, &m.ready); err != nil {
			t.Fatal(err)
		}
		out[g] = append(out[g], m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// r2LiveGroups lists the groups named by live claims (as claimSQL counts
// them) and the claim naming each; a group named twice fails I1.
func (b *testBundle) r2LiveGroups(t *testing.T, margin time.Duration) map[string]int64 {
	t.Helper()
	// With a margin: live through what follows (a 30 ms lease may end
	// before the next claim runs on a loaded machine, and then its groups
	// are free to take).
	rows, err := b.store.Pool.Query(t.Context(), `SELECT id, unnest(groups) FROM claims
		WHERE sink_id = $1 AND (until > clock_timestamp() + make_interval(secs => $2) OR lapse_max_age IS NOT NULL)`, b.sinkID, margin.Seconds())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id int64
		var g string
		if err := rows.Scan(&id, &g); err != nil {
			t.Fatal(err)
		}
		if o, ok := out[g]; ok {
			t.Fatalf("I1: group %s named by live claims %d and %d", g, o, id)
		}
		out[g] = id
	}
	return out
}

// r2Claim claims and checks I1 and I2 against the state just before: no
// group of the new batches was named by a live claim, no group is in two
// of them, and each batch's messages of a group are a ready prefix of the
// group's unfailed messages in commit order, from first(g).
func (b *testBundle) r2Claim(t *testing.T, req ClaimRequest) []*Batch {
	t.Helper()
	req.SinkID = b.sinkID
	if req.Lease == 0 {
		req.Lease = time.Minute
	}
	if req.Worker == "" {
		req.Worker = "w"
	}
	before := b.r2Order(t)
	busy := b.r2LiveGroups(t, time.Second)
	bs, err := b.store.ClaimBatches(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) > max(req.Batches, 1) {
		t.Fatalf("%d batches for Batches %d", len(bs), req.Batches)
	}
	owner := map[string]int64{}
	for _, batch := range bs {
		if len(batch.Messages) == 0 || len(batch.Messages) > req.BatchSize {
			t.Fatalf("batch %d has %d messages (BatchSize %d)", batch.ClaimID, len(batch.Messages), req.BatchSize)
		}
		per := map[string][]int64{}
		for _, m := range batch.Messages {
			per[m.Group] = append(per[m.Group], m.ID)
		}
		for g, ids := range per {
			if c, ok := busy[g]; ok {
				t.Fatalf("I1: group %s claimed by %d while live claim %d names it", g, batch.ClaimID, c)
			}
			if c, ok := owner[g]; ok {
				t.Fatalf("I1: group %s in batches %d and %d of one claim", g, c, batch.ClaimID)
			}
			owner[g] = batch.ClaimID
			order := before[g]
			if len(ids) > len(order) {
				t.Fatalf("I2: batch %d has %v of group %s, which had %v", batch.ClaimID, ids, g, order)
			}
			for i, id := range ids {
				if order[i].id != id {
					t.Fatalf("I2: batch %d takes %v of group %s, not a prefix of %+v", batch.ClaimID, ids, g, order)
				}
			}
		}
	}
	b.r2LiveGroups(t, 0)
	// Claimed messages were ready (a claim does not change ready_at).
	var all []int64
	for _, batch := range bs {
		for _, m := range batch.Messages {
			all = append(all, m.ID)
		}
	}
	var early []int64
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT COALESCE(array_agg(id), '{}') FROM outbox WHERE id = ANY ($1) AND ready_at > clock_timestamp()`, all).Scan(&early); err != nil {
		t.Fatal(err)
	}
	if len(early) > 0 {
		t.Fatalf("claimed %v before their backoff ended", early)
	}
	return bs
}

// r2Reachable checks I3's structural form: every group with unfailed
// messages has its first message's flag not false, or a claims row
// naming it.
func (b *testBundle) r2Reachable(t *testing.T, when string) {
	t.Helper()
	var stuck []string
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT COALESCE(array_agg(group_key), '{}') FROM (
		SELECT DISTINCT ON (group_key) group_key, head FROM outbox WHERE sink_id = $1 AND failed_at IS NULL
		ORDER BY group_key, commit_lsn, commit_idx, id) f
		WHERE head IS FALSE AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.sink_id = $1 AND f.group_key = ANY (c.groups))`, b.sinkID).Scan(&stuck); err != nil {
		t.Fatal(err)
	}
	if len(stuck) > 0 {
		t.Fatalf("I3 after %s: groups %v have their first message behind (false) and no claim; heads %v", when, stuck, b.heads(t))
	}
}

// r2Drain claims (several batches at a time) and acks until the outbox is
// empty, reaping ended claims; it fails (I3) when nothing can be claimed
// for a while although messages wait. It returns the ids acked.
func (b *testBundle) r2Drain(t *testing.T, req ClaimRequest, d time.Duration) []int64 {
	t.Helper()
	var acked []int64
	deadline := time.Now().Add(d)
	for {
		var left int
		if err := b.store.Pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox WHERE sink_id = $1 AND failed_at IS NULL`, b.sinkID).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			return acked
		}
		if time.Now().After(deadline) {
			t.Fatalf("I3: %d messages left and nothing claimable; heads %v", left, b.heads(t))
		}
		if _, err := b.store.ReapClaims(t.Context()); err != nil {
			t.Fatal(err)
		}
		bs := b.r2Claim(t, req)
		if len(bs) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ended, err := b.store.AckAll(t.Context(), b.sinkID, bs)
		if err != nil {
			t.Fatal(err)
		}
		for _, batch := range bs {
			if slices.Contains(ended, batch) {
				continue
			}
			for _, m := range batch.Messages {
				acked = append(acked, m.ID)
			}
		}
	}
}

// Groups whose prefix straddles a batch boundary: a (3), b (3), c (1) with
// BatchSize 2 and Batches 3. Each goes whole into one batch (cut to a
// prefix), and the rest follows in order.
func TestReview2StraddlingGroups(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "a", 3)
	b.queueCommitted(t, "b", 3)
	b.queueCommitted(t, "c", 1)
	req := ClaimRequest{BatchSize: 2, MaxAckPending: 1000, Batches: 3}
	bs := b.r2Claim(t, req)
	if len(bs) == 0 {
		t.Fatal("nothing claimed")
	}
	var acked []int64
	for _, batch := range bs {
		for _, m := range batch.Messages {
			acked = append(acked, m.ID)
		}
	}
	if _, err := b.store.AckAll(t.Context(), b.sinkID, bs); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, b.r2Drain(t, req, 5*time.Second)...)
	if len(acked) != 7 {
		t.Fatalf("acked %d of 7", len(acked))
	}
}

// BatchSize 1 with Batches 50 and more batches than groups; and Batches
// far beyond the groups.
func TestReview2BatchSizeOneManyBatches(t *testing.T) {
	b := setup(t)
	for i := range 7 {
		b.queueCommitted(t, fmt.Sprint("g", i), 3)
	}
	req := ClaimRequest{BatchSize: 1, MaxAckPending: 1000, Batches: 50}
	bs := b.r2Claim(t, req)
	if len(bs) != 7 {
		t.Fatalf("%d batches for 7 groups", len(bs))
	}
	if more := b.r2Claim(t, req); len(more) != 0 {
		t.Fatalf("claimed %d more batches with every group in flight", len(more))
	}
	if _, err := b.store.AckAll(t.Context(), b.sinkID, bs); err != nil {
		t.Fatal(err)
	}
	if got := len(b.r2Drain(t, req, 5*time.Second)); got != 14 {
		t.Fatalf("drained %d of 14", got)
	}
}

// max_ack_pending small with several batches: the fresh messages fit the
// room once, whatever the number of batches.
func TestReview2MaxAckPendingAcrossBatches(t *testing.T) {
	b := setup(t)
	for i := range 5 {
		b.queueCommitted(t, fmt.Sprint("g", i), 2)
	}
	req := ClaimRequest{BatchSize: 2, MaxAckPending: 3, Batches: 5}
	bs := b.r2Claim(t, req)
	n := 0
	for _, batch := range bs {
		n += len(batch.Messages)
	}
	if n > 3 {
		t.Fatalf("claimed %d fresh messages with max_ack_pending 3", n)
	}
	if more := b.r2Claim(t, req); len(more) != 0 {
		t.Fatalf("claimed %d more batches with max_ack_pending full", len(more))
	}
	if _, err := b.store.AckAll(t.Context(), b.sinkID, bs); err != nil {
		t.Fatal(err)
	}
	if got := len(b.r2Drain(t, req, 5*time.Second)) + n; got != 10 {
		t.Fatalf("delivered %d of 10", got)
	}
}

// Retries and replays mixed with multi-batch claims: a retry behind a
// replay longer than a batch, with max_ack_pending full, next to fresh
// groups, claimed several batches at a time.
func TestReview2RetryBehindReplayMultiBatch(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	if _, err := b.store.Pool.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, head, deliver_count, ready_at)
		SELECT $1, 'r' || i, 100, 0, '{}', true, 1, now() - interval '1 second' FROM generate_series(1, 2) i`, b.sinkID); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"r1", "r2"} {
		for i := range 3 {
			b.enqueueAt(t, g, 10, i)
		}
	}
	b.queueCommitted(t, "f", 3)
	req := ClaimRequest{BatchSize: 2, MaxAckPending: 2, Batches: 4}
	if got := len(b.r2Drain(t, req, 10*time.Second)); got < 11 {
		t.Fatalf("delivered %d of 11", got)
	}
}

// Pull ack naming only messages it does not hold (a wrong claim id, a
// message of another claim, a duplicate): nothing changes, every ref is
// reported, and the statement after it (promote, reading the groups the
// ack left) does not fail on a connection that never set them.
func TestReview2PullAckNothingHeld(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	got := b.receive(t, 2, time.Minute, 0)
	if got == nil {
		t.Fatal("nothing received")
	}
	other := b.receive(t, 2, time.Minute, 0)
	if other == nil {
		t.Fatal("nothing received by the second consumer")
	}
	refs := []PullRef{
		{ClaimID: got.ClaimID + 1000, MessageID: got.Messages[0].ID}, // no such claim
		{ClaimID: got.ClaimID, MessageID: other.Messages[0].ID},      // another claim's message
		{ClaimID: other.ClaimID, MessageID: got.Messages[0].ID},      // and the reverse
	}
	// Several times: the pool's connections each get their turn.
	for range 10 {
		res, err := b.store.PullAck(t.Context(), b.sinkID, refs)
		if err != nil {
			t.Fatalf("ack of refs not held: %v", err)
		}
		if len(res.Acked) != 0 || len(res.NotHeld) != len(refs) {
			t.Fatalf("ack of refs not held: %+v", res)
		}
	}
	// Refs of another sink's number are not held either.
	res, err := b.store.PullAck(t.Context(), b.sinkID+1, refsOf(got, got.Messages...))
	if err != nil || len(res.Acked) != 0 || len(res.NotHeld) != len(got.Messages) {
		t.Fatalf("ack under another sink: %+v, %v", res, err)
	}
	// Duplicates and both claims' messages in one ack.
	refs = append(refsOf(got, got.Messages...), refsOf(other, other.Messages...)...)
	refs = append(refs, refs...)
	res, err = b.store.PullAck(t.Context(), b.sinkID, refs)
	if err != nil || len(res.Acked) != 3 || len(res.NotHeld) != 0 {
		t.Fatalf("ack of both claims with duplicates: acked %d, not held %v, %v", len(res.Acked), res.NotHeld, err)
	}
	var left int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM claims)`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("left %d rows (%v)", left, err)
	}
}

// A random walk: queue (fresh and replays at older positions), claim
// several batches with varying sizes and max_ack_pending, ack, nack,
// leases that end, pull receives with partial acks and nacks. Every claim
// is checked for I1 and I2, and at the end everything must drain (I3)
// and every message be acked (I5).
func TestReview2RandomWalk(t *testing.T) {
	for seed := range uint64(r2Seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { r2Walk(t, seed) })
	}
}

var r2Seeds, r2Steps = 40, 300

func r2Walk(t *testing.T, seed uint64) {
	b := setup(t)
	ctx := t.Context()
	rnd := rand.New(rand.NewPCG(seed, 7))
	groups := []string{"a", "b", "c", "d"}
	w := &r2Queue{b: b, rnd: rnd, groups: groups, lsn: 1000, queued: map[int64]bool{}}
	queued, queue := w.queued, func() { w.queue(t) }
	acked := map[int64]bool{}
	var held []*Batch
	var pulled []*Batch
	for step := range r2Steps {
		switch op := rnd.IntN(10); {
		case op < 3:
			queue()
		case op < 6:
			lease := time.Minute
			if rnd.IntN(6) == 0 {
				lease = 30 * time.Millisecond
			}
			req := ClaimRequest{BatchSize: 1 + rnd.IntN(3), MaxAckPending: 1 + rnd.IntN(6), Batches: 1 + rnd.IntN(4), Lease: lease}
			if rnd.IntN(4) == 0 {
				req.Pull, req.Worker = true, "receive"
				req.Batches = 1
				pulled = append(pulled, b.r2Claim(t, req)...)
			} else {
				held = append(held, b.r2Claim(t, req)...)
			}
		case op < 8 && len(held) > 0:
			i := rnd.IntN(len(held))
			batch := held[i]
			held = slices.Delete(held, i, i+1)
			if rnd.IntN(3) == 0 {
				_, err := b.store.Nack(ctx, batch, Failure{AttemptStart: time.Now(), Status: 500, Error: "x", Backoff: time.Duration(rnd.IntN(50)) * time.Millisecond})
				if err != nil && !IsClaimEnded(err) {
					t.Fatal(err)
				}
			} else {
				err := b.store.Ack(ctx, batch)
				if err != nil && !IsClaimEnded(err) {
					t.Fatal(err)
				}
				if err == nil {
					for _, m := range batch.Messages {
						acked[m.ID] = true
					}
				}
			}
		case op < 9 && len(pulled) > 0:
			i := rnd.IntN(len(pulled))
			batch := pulled[i]
			var refs []PullRef
			var keep []Message
			for _, m := range batch.Messages {
				if rnd.IntN(2) == 0 {
					refs = append(refs, PullRef{ClaimID: batch.ClaimID, MessageID: m.ID})
				} else {
					keep = append(keep, m)
				}
			}
			if rnd.IntN(3) == 0 {
				if _, err := b.store.PullNack(ctx, b.sinkID, refs, time.Now().Add(20*time.Millisecond), 0, "x"); err != nil {
					t.Fatal(err)
				}
			} else {
				res, err := b.store.PullAck(ctx, b.sinkID, refs)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range res.Acked {
					acked[m.ID] = true
				}
			}
			if len(keep) == 0 {
				pulled = slices.Delete(pulled, i, i+1)
			} else {
				batch.Messages = keep
			}
		default:
			if _, err := b.store.ReapClaims(ctx); err != nil {
				t.Fatal(err)
			}
		}
		b.r2Reachable(t, fmt.Sprint("step ", step))
	}
	b.r2Finish(t, held, pulled, queued, acked)
}

// r2Queue is a random walk's writer: each queue is 1–3 messages of a
// random group, a third of them at an older commit position (a replay),
// and it remembers every id queued.
type r2Queue struct {
	b      *testBundle
	rnd    *rand.Rand
	groups []string
	lsn    uint64
	maxID  int64
	queued map[int64]bool
}

func (w *r2Queue) queue(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	g := w.groups[w.rnd.IntN(len(w.groups))]
	rows, at := make([]NewMessage, 1+w.rnd.IntN(3)), w.lsn
	if w.rnd.IntN(3) == 0 {
		at = uint64(w.rnd.IntN(int(w.lsn))) // a replay: an older position
	} else {
		w.lsn += 10
	}
	for i := range rows {
		rows[i] = NewMessage{SinkID: w.b.sinkID, Group: g, CommitLSN: at, CommitIdx: i, Payload: []byte(`{}`)}
	}
	if err := pgx.BeginFunc(ctx, w.b.store.Pool, func(tx pgx.Tx) error { return queueRows(ctx, tx, rows) }); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	if err := w.b.store.Pool.QueryRow(ctx, `SELECT array_agg(id) FROM outbox WHERE id > $1`, w.maxID).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		w.queued[id] = true
		w.maxID = max(w.maxID, id)
	}
}

// r2Finish ends a random walk: everything in flight ends (push acks, pull
// acks of what is held), the rest is drained, and every message queued
// must have been acked (I5).
func (b *testBundle) r2Finish(t *testing.T, held, pulled []*Batch, queued, acked map[int64]bool) {
	t.Helper()
	ctx := t.Context()
	for _, batch := range held {
		if err := b.store.Ack(ctx, batch); err == nil {
			for _, m := range batch.Messages {
				acked[m.ID] = true
			}
		} else if !IsClaimEnded(err) {
			t.Fatal(err)
		}
	}
	for _, batch := range pulled {
		res, err := b.store.PullAck(ctx, b.sinkID, refsOf(batch, batch.Messages...))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.Acked {
			acked[m.ID] = true
		}
	}
	for _, id := range b.r2Drain(t, ClaimRequest{BatchSize: 2, MaxAckPending: 3, Batches: 3}, 10*time.Second) {
		acked[id] = true
	}
	for id := range queued {
		if !acked[id] {
			t.Fatalf("I5: message %d never acked", id)
		}
	}
}

// r2LoseClaim does to a claim what a Postgres crash does to a claim
// transaction committed with synchronous_commit off whose WAL was not
// flushed yet (doc.go, "Durability"): the row is gone, and so is the
// claims id sequence's advance (nextval's WAL record went with the
// transaction; the PostgreSQL manual on nextval: "if you wish to use a
// sequence value for persistent outside-the-database purposes, make sure
// that the nextval call has been committed before doing so"). The
// worker that received the batch outlives the crash with its claim id.
func (b *testBundle) r2LoseClaim(t *testing.T, batch *Batch) {
	t.Helper()
	if _, err := b.store.Pool.Exec(t.Context(), `DELETE FROM claims WHERE id = $1`, batch.ClaimID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Pool.Exec(t.Context(), `SELECT setval(pg_get_serial_sequence('claims', 'id'), $1, false)`, batch.ClaimID); err != nil {
		t.Fatal(err)
	}
}

// Found by review (fixed by random claim ids, migration 00007).
// Finding (I4, I5; change 3, asynchronous claims): a claim lost in a
// Postgres crash takes its id's sequence advance with it, so the next
// claim after the restart gets the same id. The worker that had the lost
// batch delivers it and acks it by claim id alone (ackSQL): the ack
// deletes the new claim and its messages, which that worker never
// delivered, and hands their groups on while the new claim's worker is
// still delivering them. If that delivery fails, its nack is fenced
// (ErrClaimEnded) and the message is gone: never delivered.
//
// Sequence: a1 queued; worker A claims {a1} (claim X, async, lost in
// the crash); b1 queued; worker B claims {a1, b1}, again claim X; A acks
// X: b1 is deleted; B's receiver fails b1, B's nack changes nothing.
func TestReview2LostClaimIDReusedAfterCrash(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 1)
	old := b.claim(t, 10) // worker A, claim X
	b.r2LoseClaim(t, old) // Postgres crashes before the claim's WAL is flushed
	b.queueCommitted(t, "b", 1)
	fresh := b.claim(t, 10) // worker B, after the restart
	if fresh == nil || len(fresh.Messages) != 2 {
		t.Fatalf("claim after the restart: %+v", fresh)
	}
	if fresh.ClaimID == old.ClaimID {
		t.Errorf("the lost claim's id %d was handed out again (claim ids must be random: migration 00007)", old.ClaimID)
	}
	// A delivered a1 and acks its lost claim.
	if err := b.store.Ack(ctx, old); !IsClaimEnded(err) {
		var left int
		if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		t.Errorf("I4: the ack of a claim lost in the crash took effect (err %v) on claim %d of another worker: %d of its 2 messages left, b1 deleted undelivered", err, fresh.ClaimID, left)
	}
	// B's receiver fails b1.
	if _, err := b.store.Nack(ctx, fresh, Failure{AttemptStart: time.Now(), Status: 500, Error: "boom"}); err != nil {
		t.Fatalf("I5: B's nack: %v; message b1 was never delivered and is gone", err)
	}
}

// The same with a real crash (immediate shutdown, as when any backend
// crashes and the postmaster reinitialises): a claim committed with
// synchronous_commit off, not yet written by the WAL writer (up to
// wal_writer_delay), is lost with its sequence advance, and the first
// claim after the restart gets its id. The old worker's ack then deletes
// the new claim's messages. Tried a few times: the WAL writer may write
// the claim before the kill.
func TestReview2LostClaimIDReusedAfterRealCrash(t *testing.T) {
	cluster := pgtest.Cluster(t)
	b := setup(t)
	ctx := t.Context()
	for try := range 5 {
		a, g := fmt.Sprint("a", try), fmt.Sprint("b", try)
		b.queueCommitted(t, a, 1)
		old := b.claim(t, 10) // worker A
		if old == nil {
			t.Fatal("nothing claimed")
		}
		if err := cluster.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		b.store.Pool.Reset()
		var kept bool
		for {
			err := b.store.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM claims WHERE id = $1)`, old.ClaimID).Scan(&kept)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if kept {
			// The claim reached the WAL: its lease holds. End it and try again.
			b.ack(t, old)
			continue
		}
		b.queueCommitted(t, g, 1)
		fresh := b.claim(t, 10) // worker B, after the restart
		if fresh == nil {
			t.Fatal("nothing claimed after the restart")
		}
		// The lost claim's id must not come back (claim ids are random,
		// migration 00007), and the old worker's ack must change nothing.
		err := b.store.Ack(ctx, old)
		if fresh.ClaimID == old.ClaimID || !IsClaimEnded(err) {
			var left int
			if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&left); err != nil {
				t.Fatal(err)
			}
			t.Fatalf("I4/I5: claim %d (%v) was lost in the crash; the new claim is %d %v; the old worker's ack returned %v, %d messages left in the outbox (%s must be)",
				old.ClaimID, old.Messages[0].Group, fresh.ClaimID, fresh.Messages, err, left, g)
		}
		b.ack(t, fresh)
		return
	}
	// The WAL writer saved the claim before every kill: nothing to check
	// here (TestReview2LostClaimIDReusedAfterCrash checks the same
	// deterministically).
	t.Log("no claim was lost in 5 crashes")
}

// One pull ack naming part of two claims (each keeps a message of the
// group it acked from, and a group it did not touch): the groups stay
// named while held (I1), only the messages named go, and a receive gets
// only what no claim names. An empty ack changes nothing and does not
// fail.
func TestReview2PullAckAcrossClaimsPartial(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	if res, err := b.store.PullAck(ctx, b.sinkID, nil); err != nil || len(res.Acked)+len(res.NotHeld) != 0 {
		t.Fatalf("empty ack: %+v, %v", res, err)
	}
	if res, err := b.store.PullNack(ctx, b.sinkID, nil, time.Time{}, 0, "x"); err != nil || res.Nacked+len(res.NotHeld) != 0 {
		t.Fatalf("empty nack: %+v, %v", res, err)
	}
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	x := b.receive(t, 3, time.Minute, 0) // a1 a2 b1
	b.queueCommitted(t, "c", 2)
	b.queueCommitted(t, "d", 1)
	y := b.receive(t, 3, time.Minute, 0) // c1 c2 d1
	if x == nil || y == nil || len(x.Messages) != 3 || len(y.Messages) != 3 {
		t.Fatalf("receives: %+v %+v", x, y)
	}
	b.queueCommitted(t, "a", 1)
	b.queueCommitted(t, "c", 1)
	b.queueCommitted(t, "b", 1)
	b.queueCommitted(t, "d", 1)
	refs := []PullRef{{x.ClaimID, x.Messages[0].ID}, {y.ClaimID, y.Messages[0].ID}, {x.ClaimID, y.Messages[1].ID}}
	res, err := b.store.PullAck(ctx, b.sinkID, refs)
	if err != nil || len(res.Acked) != 2 || len(res.NotHeld) != 1 || res.NotHeld[0] != refs[2] {
		t.Fatalf("ack: %+v, %v", res, err)
	}
	b.r2LiveGroups(t, 0)
	// a and c keep a held message each; b and d are held whole: nothing
	// of them may go.
	got := b.r2Claim(t, ClaimRequest{BatchSize: 10, MaxAckPending: 1000, Batches: 4, Pull: true, Worker: "receive"})
	if len(got) != 0 {
		t.Fatalf("received %+v while every group is held", got[0].Messages)
	}
	// The rest of x: group a and b go on.
	if res, err := b.store.PullAck(ctx, b.sinkID, refsOf(x, x.Messages[1:]...)); err != nil || len(res.Acked) != 2 {
		t.Fatalf("ack rest of x: %+v, %v", res, err)
	}
	got = b.r2Claim(t, ClaimRequest{BatchSize: 10, MaxAckPending: 1000, Batches: 4, Pull: true, Worker: "receive"})
	for _, batch := range got {
		for _, m := range batch.Messages {
			if m.Group != "a" && m.Group != "b" {
				t.Fatalf("received %s's message %d while y holds the group", m.Group, m.ID)
			}
		}
	}
}

// Found by review (fixed by random claim ids, migration 00007).
// The pull side of the reissued claim id (I1, I2): consumer 1's receive
// {a1} is lost in a crash; after the restart consumer 2's receive is
// {a1, b1} under the same claim id. Consumer 1 acks (X, a1): a1 leaves
// consumer 2's claim and group a is handed on while consumer 2 is still
// processing a1, so consumer 3 receives a2 and may deliver it before a1
// is done (work that began after the crash, not only work in flight at
// it, loses its exclusivity).
func TestReview2LostPullClaimIDReused(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.queueCommitted(t, "a", 1)
	old := b.receive(t, 10, time.Minute, 0) // consumer 1
	b.r2LoseClaim(t, old)
	b.queueCommitted(t, "b", 1)
	held := b.receive(t, 10, time.Minute, 0) // consumer 2, after the restart
	if held == nil {
		t.Fatal("nothing received after the restart")
	}
	if held.ClaimID == old.ClaimID {
		t.Errorf("the lost receive's claim id %d was handed out again (claim ids must be random: migration 00007)", old.ClaimID)
	}
	b.queueCommitted(t, "a", 1)
	res, err := b.store.PullAck(ctx, b.sinkID, refsOf(old, old.Messages...))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Acked) > 0 {
		third := b.receive(t, 10, time.Minute, 0)
		t.Errorf("I1: the ack of a receive lost in the crash took %d message(s) out of consumer 2's claim %d; then consumer 3 received %+v of group a while consumer 2 still has a1",
			len(res.Acked), held.ClaimID, third)
	}
}

// Several pull batches in one claim whose leases lapse together: each
// claims row records its own lapse (every message attempted once, none
// twice), and the groups come back in order.
func TestReview2MultiBatchPullLapse(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	for _, g := range []string{"a", "b", "c"} {
		b.queueCommitted(t, g, 3)
	}
	bs := b.r2Claim(t, ClaimRequest{BatchSize: 2, MaxAckPending: 1000, Batches: 5, Pull: true, Worker: "receive", Lease: 50 * time.Millisecond})
	if len(bs) != 3 {
		t.Fatalf("%d batches, want 3 (one per group: 2+1 would split a group)", len(bs))
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := b.store.ReapClaims(ctx); err != nil {
		t.Fatal(err)
	}
	var once, twice, claims int
	if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE deliver_count = 1), count(*) FILTER (WHERE deliver_count > 1), (SELECT count(*) FROM claims) FROM outbox`).Scan(&once, &twice, &claims); err != nil {
		t.Fatal(err)
	}
	if once != 6 || twice != 0 || claims != 0 {
		t.Fatalf("after the lapse: %d attempted once, %d more, %d claims left", once, twice, claims)
	}
	b.r2Reachable(t, "lapse")
	if got := len(b.r2Drain(t, ClaimRequest{BatchSize: 1, MaxAckPending: 1, Batches: 50}, 5*time.Second)); got != 9 {
		t.Fatalf("drained %d of 9", got)
	}
}
