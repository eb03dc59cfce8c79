package outbox

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func (b *testBundle) receive(t *testing.T, size int, lease time.Duration, maxAge time.Duration) *Batch {
	t.Helper()
	batch, err := b.store.Claim(t.Context(), ClaimRequest{SinkID: b.sinkID, BatchSize: size, MaxAckPending: 1000, Lease: lease, Worker: "receive", Pull: true, MaxAge: maxAge})
	if err != nil {
		t.Fatal(err)
	}
	return batch
}

func refsOf(b *Batch, ms ...Message) []PullRef {
	out := make([]PullRef, len(ms))
	for i, m := range ms {
		out[i] = PullRef{ClaimID: b.ClaimID, MessageID: m.ID}
	}
	return out
}

// A pull claim whose lease ends is reaped by ReapClaims too (nobody
// receives), and the lapse counts as an attempt.
func TestPullLapseByReapClaims(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	got := b.receive(t, 10, 50*time.Millisecond, 0)
	if got == nil || len(got.Messages) != 2 {
		t.Fatalf("receive: %+v", got)
	}
	var ended bool
	for !ended {
		if err := b.store.Pool.QueryRow(t.Context(), `SELECT until <= clock_timestamp() FROM claims`).Scan(&ended); err != nil {
			t.Fatal(err)
		}
	}
	reaped, err := b.store.ReapClaims(t.Context())
	if err != nil || len(reaped) != 1 {
		t.Fatalf("ReapClaims: %v %v", reaped, err)
	}
	if r := reaped[0]; r.SinkID != b.sinkID || r.SinkName != "s" || r.Ended != 1 || r.LapsedClaims != 1 || r.Lapsed != 2 || r.Failed != 0 {
		t.Errorf("ReapClaims reported %+v; want the sink's one claim ended, lapsed with 2 messages, none failed", r)
	}
	var claims, attempted int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM outbox WHERE deliver_count = 1)`).Scan(&claims, &attempted); err != nil {
		t.Fatal(err)
	}
	if claims != 0 || attempted != 2 {
		t.Errorf("after the reap: %d claims, %d messages attempted once", claims, attempted)
	}
}

// Partial ack: a group stays busy while a message of it remains in the
// claim, and is handed on once none does; other groups of the claim are
// handed on as soon as theirs leave.
func TestPullPartialAck(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	b.queueCommitted(t, "b", 1)
	got := b.receive(t, 10, time.Minute, 0)
	if got == nil || len(got.Messages) != 3 {
		t.Fatalf("receive: %+v", got)
	}
	b.queueCommitted(t, "a", 1)
	b.queueCommitted(t, "b", 1)
	var a1, a2, b1 Message
	for _, m := range got.Messages {
		switch {
		case m.Group == "a" && a1.ID == 0:
			a1 = m
		case m.Group == "a":
			a2 = m
		default:
			b1 = m
		}
	}
	res, err := b.store.PullAck(t.Context(), b.sinkID, refsOf(got, a1, b1))
	if err != nil || len(res.Acked) != 2 || len(res.NotHeld) != 0 {
		t.Fatalf("ack a1, b1: %+v %v", res, err)
	}
	// b is free, a is not (a2 is still held).
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 1 || next.Messages[0].Group != "b" {
		t.Fatalf("receive while a2 is held: %+v", next)
	}
	res, err = b.store.PullAck(t.Context(), b.sinkID, append(refsOf(got, a2, a1), PullRef{ClaimID: next.ClaimID + 100, MessageID: a2.ID}))
	if err != nil || len(res.Acked) != 1 || len(res.NotHeld) != 2 {
		t.Fatalf("ack a2 (and a1 again, and a forged claim): %+v %v", res, err)
	}
	last := b.receive(t, 10, time.Minute, 0)
	if last == nil || len(last.Messages) != 1 || last.Messages[0].Group != "a" {
		t.Fatalf("receive after a2 was acked: %+v", last)
	}
	var claims int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT count(*) FROM claims WHERE id = $1`, got.ClaimID).Scan(&claims); err != nil || claims != 0 {
		t.Errorf("the emptied claim is still there: %d %v", claims, err)
	}
}

// Partial nack: the nacked message backs off and its group is not handed
// on while another of its messages is held; max_age fails it instead.
func TestPullPartialNack(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	b.queueCommitted(t, "a", 2)
	got := b.receive(t, 10, time.Minute, 0)
	if got == nil || len(got.Messages) != 2 {
		t.Fatalf("receive: %+v", got)
	}
	res, err := b.store.PullNack(t.Context(), b.sinkID, refsOf(got, got.Messages[1]), time.Time{}, 0, "later")
	if err != nil || res.Nacked != 1 {
		t.Fatalf("nack: %+v %v", res, err)
	}
	if next := b.receive(t, 10, time.Minute, 0); next != nil {
		t.Fatalf("received a group with a message still held: %+v", next)
	}
	if _, err := b.store.PullAck(t.Context(), b.sinkID, refsOf(got, got.Messages[0])); err != nil {
		t.Fatal(err)
	}
	next := b.receive(t, 10, time.Minute, 0)
	if next == nil || len(next.Messages) != 1 || next.Messages[0].ID != got.Messages[1].ID || next.Messages[0].DeliverCount != 1 {
		t.Fatalf("receive after the ack: %+v", next)
	}
	res, err = b.store.PullNack(t.Context(), b.sinkID, refsOf(next, next.Messages[0]), time.Time{}, time.Microsecond, "again")
	if err != nil || res.Failed != 1 {
		t.Fatalf("nack past max_age: %+v %v", res, err)
	}
}

// Lapses past max_age fail the messages, through ReapClaims.
func TestPullLapsePastMaxAge(t *testing.T) {
	b := setup(t)
	b.queueCommitted(t, "g", 2)
	for round := range 2 {
		got := b.receive(t, 10, 100*time.Millisecond, 150*time.Millisecond)
		if got == nil || len(got.Messages) != 2 {
			t.Fatalf("receive %d: %+v", round, got)
		}
		var ended bool
		for !ended {
			if err := b.store.Pool.QueryRow(t.Context(), `SELECT until <= clock_timestamp() FROM claims`).Scan(&ended); err != nil {
				t.Fatal(err)
			}
		}
		reaped, err := b.store.ReapClaims(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		// The second lapse is past max_age: the caller alerts on it.
		if want := 2 * round; len(reaped) != 1 || reaped[0].Lapsed != 2 || reaped[0].Failed != want {
			t.Errorf("lapse %d: ReapClaims reported %+v; want 2 messages lapsed, %d failed", round, reaped, want)
		}
	}
	var claims, failed int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL)`).Scan(&claims, &failed); err != nil {
		t.Fatal(err)
	}
	if claims != 0 || failed != 2 {
		t.Errorf("after two lapses past max_age: %d claims, %d failed", claims, failed)
	}
}

// Found by the pull actors of the torture test: when max_ack_pending is
// full of retries and each of their groups has a fresh message in front
// (a replay queued an older commit position), the retries must still lead
// a claim to those fresh messages (rule C: retries keep their flags).
func TestFreshBeforeRetriesWithRoomFullDoesNotStall(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	q := func(g string, lsn uint64, n int) {
		rows := make([]NewMessage, n)
		for i := range rows {
			rows[i] = NewMessage{SinkID: b.sinkID, Group: g, CommitLSN: lsn, CommitIdx: i, Payload: []byte(`{}`)}
		}
		if err := pgx.BeginFunc(ctx, b.store.Pool, func(tx pgx.Tx) error { return queueRows(ctx, tx, rows) }); err != nil {
			t.Fatal(err)
		}
	}
	req := ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 4, Lease: time.Minute, Worker: "r", Pull: true}
	var held []PullRef
	for _, g := range []string{"a", "b"} {
		q(g, 10, 2)
		got, err := b.store.Claim(ctx, req)
		if err != nil || got == nil || len(got.Messages) != 2 {
			t.Fatalf("receive %s: %+v %v", g, got, err)
		}
		// The second becomes a retry behind the first, still held.
		if _, err := b.store.PullNack(ctx, b.sinkID, refsOf(got, got.Messages[1]), time.Time{}, 0, "later"); err != nil {
			t.Fatal(err)
		}
		held = append(held, refsOf(got, got.Messages[0])...)
		q(g, 1, 1) // a replay: older than both
	}
	req.MaxAckPending = 2 // the two retries fill it
	if _, err := b.store.PullAck(ctx, b.sinkID, held); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := b.store.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			return
		}
	}
	t.Fatalf("nothing claimable: max_ack_pending is full of retries that wait behind fresh messages")
}

// The whole-claim path of pullAckSQL (an ack naming every message of a
// live claim ends it as a push ack does) against what the general path
// alone does, on random states built directly: claims live, ended and
// lapsed-unrecorded, of this sink and of another, with their ids in
// order or not (the whole path then leaves them to the general one), and
// acks naming claims whole, whole with duplicates, whole with an id the
// claim does not hold (its own or another claim's message), in part, or
// with forged claim ids, several claims in one ack. Both statements, run
// with the promote after them on the same state, must return the same
// rows and leave the same outbox, claims and groups to hand on. Nacks are
// compared too (pullHeldSQL looks claims up by primary key now and keeps
// their ids in order).
func TestPullAckWholeClaimDifferential(t *testing.T) {
	states := 250
	if testing.Short() {
		states = 50
	}
	pullAckDifferential(t, 0, states)
}

// pullAckDifferential compares the ack and nack statements with the
// statements before the whole-claim path on states random states, drawn
// from seeds base, base+1, ...
func pullAckDifferential(t *testing.T, base uint64, states int) {
	b := setup(t)
	ctx := t.Context()
	var other int64
	if err := b.store.Pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s2', '{}') RETURNING id`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	whole, wholeKnown := 0, 0
	for i := range uint64(states) {
		seed := base + i
		rnd := rand.New(rand.NewPCG(seed, 41))
		if _, err := b.store.Pool.Exec(ctx, `DELETE FROM outbox; DELETE FROM claims`); err != nil {
			t.Fatal(err)
		}
		var claims [][]int64 // of this sink, then one of the other sink
		var known []*Batch   // the same claims, as Claim would have returned them
		var free []int64     // messages no claim holds
		for _, sink := range []int64{b.sinkID, other} {
			var ids []int64
			var gs []string
			for range 3 + rnd.IntN(25) {
				var id int64
				g := []string{"a", "b", "c", "d", "e"}[rnd.IntN(5)]
				if err := b.store.Pool.QueryRow(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head)
					VALUES ($1, $2, $3, $4, '{"p":1}', $5, $6) RETURNING id`,
					sink, g, rnd.IntN(4), rnd.IntN(3), rnd.IntN(3)/2, []any{nil, true, false}[rnd.IntN(3)]).Scan(&id); err != nil {
					t.Fatal(err)
				}
				ids, gs = append(ids, id), append(gs, g)
			}
			nc := 1
			if sink == b.sinkID {
				nc = 1 + rnd.IntN(4)
			}
			taken := map[int64]bool{}
			for range nc {
				var cids []int64
				cgs := map[string]bool{}
				for i, id := range ids {
					if !taken[id] && rnd.IntN(3) == 0 {
						taken[id] = true
						cids = append(cids, id)
						cgs[gs[i]] = true
					}
				}
				if len(cids) == 0 {
					continue
				}
				if rnd.IntN(5) == 0 { // not in order: left to the general path
					slices.Reverse(cids)
				}
				until, lapse := "1 hour", "0"
				switch rnd.IntN(6) {
				case 0:
					until, lapse = "-1 hour", "NULL" // ended
				case 1:
					until, lapse = "-1 hour", "0" // lapsed, not recorded yet
				case 2:
					lapse = "NULL" // a prefetch nobody adopted (rule A): never held
				}
				if sink == other {
					until, lapse = "1 hour", "0"
				}
				var id int64
				if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO claims (sink_id, worker, until, fresh, ids, groups, lapse_max_age)
					VALUES ($1, 'x', now() + interval '%s', $2, $3, $4, %s) RETURNING id`, until, lapse),
					sink, rnd.IntN(len(cids)+1), cids, slices.Sorted(maps.Keys(cgs))).Scan(&id); err != nil {
					t.Fatal(err)
				}
				claims = append(claims, append([]int64{id}, cids...))
				kb := &Batch{SinkID: sink, ClaimID: id}
				for _, id := range cids {
					m := Message{ID: id}
					var lsn int64
					var idx int32
					if err := b.store.Pool.QueryRow(ctx, `SELECT group_key, commit_lsn, commit_idx, payload, deliver_count, first_attempt_at, created_at FROM outbox WHERE id = $1`, id).
						Scan(&m.Group, &lsn, &idx, &m.Payload, &m.DeliverCount, &m.FirstAttemptAt, &m.CreatedAt); err != nil {
						t.Fatal(err)
					}
					m.CommitLSN, m.CommitIdx = lsn, idx
					kb.Messages = append(kb.Messages, m)
				}
				known = append(known, kb)
			}
			for _, id := range ids {
				if !taken[id] {
					free = append(free, id)
				}
			}
		}
		for round := range 4 {
			var refs []PullRef
			for _, c := range claims {
				id, cids := c[0], c[1:]
				switch rnd.IntN(7) {
				case 0: // not named
				case 1, 2: // whole
					for _, m := range cids {
						refs = append(refs, PullRef{id, m})
					}
					whole++
				case 3: // whole, some twice
					for _, m := range cids {
						refs = append(refs, PullRef{id, m})
						if rnd.IntN(2) == 0 {
							refs = append(refs, PullRef{id, m})
						}
					}
				case 4: // whole and one more
					for _, m := range cids {
						refs = append(refs, PullRef{id, m})
					}
					extra := claims[rnd.IntN(len(claims))][1:]
					if len(free) > 0 && rnd.IntN(2) == 0 {
						extra = free
					}
					refs = append(refs, PullRef{id, extra[rnd.IntN(len(extra))]})
				default: // a part
					for _, m := range cids {
						if rnd.IntN(2) == 0 {
							refs = append(refs, PullRef{id, m})
						}
					}
				}
			}
			if rnd.IntN(3) == 0 && len(free) > 0 { // a forged claim id
				refs = append(refs, PullRef{rnd.Int64N(1 << 62), free[rnd.IntN(len(free))]})
			}
			rnd.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
			if round%2 == 1 && len(refs) > 0 {
				// Another state: a part of each claim is acked first.
				half := refs[:rnd.IntN(len(refs))]
				if _, err := b.store.PullAck(ctx, b.sinkID, half); err != nil {
					t.Fatal(err)
				}
			}
			if rnd.IntN(4) == 0 && len(known) > 0 {
				// A known batch of the other sink said to be of this one:
				// pullWholeAckSQL still ends no claim of another sink.
				k := *known[len(known)-1]
				k.SinkID = b.sinkID
				known = append(known, &k)
			}
			o, _ := b.r9Digest(t, refs, nil)
			n, used := b.r9Digest(t, refs, known)
			if o != n {
				var kc []string
				for _, k := range known {
					kc = append(kc, fmt.Sprintf("%d of sink %d: %d messages", k.ClaimID, k.SinkID, len(k.Messages)))
				}
				t.Fatalf("seed %d round %d: PullAckKnown differs from PullAck for refs %v, known %v:\nPullAck:\n%s\nPullAckKnown:\n%s", seed, round, refs, kc, o, n)
			}
			if used {
				wholeKnown++
			}
			if o, n := b.pullDigest(t, prePullAckSQL, refs, false), b.pullDigest(t, pullAckSQL, refs, false); o != n {
				t.Fatalf("seed %d round %d: pullAckSQL differs from the general path alone for refs %v:\nbefore:\n%s\nnow:\n%s", seed, round, refs, o, n)
			}
			if o, n := b.pullDigest(t, prePullNackSQL, refs, true), b.pullDigest(t, pullNackSQL, refs, true); o != n {
				t.Fatalf("seed %d round %d: pullNackSQL differs from before for refs %v:\nbefore:\n%s\nnow:\n%s", seed, round, refs, o, n)
			}
		}
	}
	if whole < states || wholeKnown < states/4 {
		t.Fatalf("only %d whole-claim acks in %d states, %d by pullWholeAckSQL", whole, states, wholeKnown)
	}
}

// pullDigest runs the pull ack or nack sql for refs as pullOutcome does
// (claim lock, the statement, the promote), in a transaction it rolls
// back, and describes its rows and the state after it: the outbox, the
// claims (ids and groups as sets) and the groups handed on.
func (b *testBundle) pullDigest(t *testing.T, sql string, refs []PullRef, nack bool) string {
	t.Helper()
	ctx := t.Context()
	tx, rollback := b.lockedTx(t)
	defer rollback()
	claims, ids := splitRefs(refs)
	args := []any{b.sinkID, claims, ids}
	if nack {
		args = append(args, "nacked", nil, int64(0))
	}
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(v...))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	slices.Sort(out)
	return fmt.Sprintf("rows %s\n%s", strings.Join(out, "; "), b.promotedDigest(t, tx))
}

// lockedTx begins a transaction that holds the sink's claim lock, as an
// outcome's pipeline does; rollback ends it.
func (b *testBundle) lockedTx(t *testing.T) (tx pgx.Tx, rollback func()) {
	t.Helper()
	ctx := t.Context()
	tx, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, claimLockPlanSQL, b.sinkID); err != nil {
		_ = tx.Rollback(ctx)
		t.Fatal(err)
	}
	return tx, func() { _ = tx.Rollback(ctx) }
}

// promotedDigest runs pullPromoteSQL in tx, after an ack or nack, and
// describes the state: the groups handed on, the outbox and the claims
// (ids and groups as sets).
func (b *testBundle) promotedDigest(t *testing.T, tx pgx.Tx) string {
	t.Helper()
	ctx := t.Context()
	if _, err := tx.Exec(ctx, pullPromoteSQL, b.sinkID); err != nil {
		t.Fatal(err)
	}
	var left, outbox, claimRows string
	if err := tx.QueryRow(ctx, `SELECT
		(SELECT COALESCE(string_agg(g, ' ' ORDER BY g), '') FROM json_array_elements_text(current_setting('walhook.left_groups')::json) g),
		(SELECT string_agg(concat_ws(':', id, sink_id, head, deliver_count, failed_at IS NULL, last_error, not_before IS NULL), ' ' ORDER BY id) FROM outbox),
		(SELECT COALESCE(string_agg(concat_ws(':', id, sink_id, (SELECT array_agg(x ORDER BY x) FROM unnest(ids) x),
			(SELECT array_agg(x ORDER BY x) FROM unnest(groups) x), fresh, until > now(), lapse_max_age), ' ' ORDER BY id), '') FROM claims)`).Scan(&left, &outbox, &claimRows); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("handed on %s\noutbox %s\nclaims %s\n", left, outbox, claimRows)
}

// prePullHeldSQL, prePullAckSQL and prePullNackSQL are pullHeldSQL,
// pullAckSQL and pullNackSQL as they were before the whole-claim path:
// what TestPullAckWholeClaimDifferential compares them with.
const prePullHeldSQL = `
WITH req AS MATERIALIZED (
	SELECT DISTINCT r.claim_id, r.id FROM unnest($2::bigint[], $3::bigint[]) AS r(claim_id, id)
), c AS MATERIALIZED (
	SELECT c.id, c.ids, c.claimed_at FROM claims c
	WHERE c.id IN (SELECT claim_id FROM req) AND c.sink_id = $1 AND c.until > clock_timestamp()
		AND c.lapse_max_age IS NOT NULL -- since rule A: a prefetch is never held
), held AS MATERIALIZED (
	SELECT c.id AS claim_id, u.id, c.claimed_at FROM c, unnest(c.ids) AS u(id)
), hit AS MATERIALIZED (
	-- A join, not a search of each claim's ids per named message (a
	-- receive holds up to 1000).
	SELECT req.claim_id, req.id, held.claimed_at FROM req JOIN held ON held.claim_id = req.claim_id AND held.id = req.id
), k AS MATERIALIZED (
	SELECT c.id, ARRAY(SELECT unnest(c.ids) EXCEPT SELECT h.id FROM hit h WHERE h.claim_id = c.id) AS rest
	FROM c WHERE EXISTS (SELECT 1 FROM hit h WHERE h.claim_id = c.id)
), u AS (
	UPDATE claims cl SET ids = k.rest,
		groups = ARRAY(SELECT DISTINCT o.group_key FROM outbox o WHERE o.id = ANY (k.rest)),
		-- The held messages never attempted, except those before a held
		-- retry of their group (which holds their room, as in claimSQL).
		fresh = (SELECT count(*) FILTER (WHERE deliver_count = 0 AND NOT COALESCE(retry_after, false)) FROM (
			SELECT o.deliver_count, bool_or(o.deliver_count > 0) OVER (PARTITION BY o.group_key
				ORDER BY o.commit_lsn DESC, o.commit_idx DESC, o.id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS retry_after
			FROM outbox o WHERE o.id = ANY (k.rest)) w)
	FROM k WHERE cl.id = k.id AND cardinality(k.rest) > 0
), e AS (
	DELETE FROM claims WHERE id IN (SELECT id FROM k WHERE cardinality(rest) = 0)
)`

const prePullAckSQL = prePullHeldSQL + `, d AS (
	DELETE FROM outbox o WHERE o.id IN (SELECT id FROM hit) AND o.sink_id = $1
	RETURNING o.id, o.group_key, o.commit_lsn, o.commit_idx, o.payload, o.deliver_count, o.first_attempt_at, o.created_at
), gs AS (
	SELECT set_config('walhook.left_groups', COALESCE(array_to_json(array_agg(DISTINCT d.group_key))::text, '[]'), true) FROM d
)
-- The deleted messages, then the named ones not held (no join of the two:
-- a message is held by one claim at most).
SELECT 0::bigint, d.id, true, d.group_key, d.commit_lsn, d.commit_idx, d.payload, d.deliver_count, d.first_attempt_at, d.created_at
FROM (SELECT 1 FROM gs) one CROSS JOIN d
UNION ALL
SELECT req.claim_id, req.id, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM req WHERE NOT EXISTS (SELECT 1 FROM hit h WHERE h.claim_id = req.claim_id AND h.id = req.id)`

const prePullNackSQL = prePullHeldSQL + `, o AS (
	UPDATE outbox o SET deliver_count = o.deliver_count + 1, head = NULL,
		first_attempt_at = COALESCE(o.first_attempt_at, h.claimed_at),
		last_attempt_at = h.claimed_at, last_status = NULL, last_error = $4,
		not_before = COALESCE($5, clock_timestamp()), ready_at = COALESCE($5, clock_timestamp()),
		failed_at = CASE WHEN $6::bigint > 0 AND COALESCE(o.first_attempt_at, h.claimed_at) + make_interval(secs => $6::bigint / 1e6::float8) <= clock_timestamp() THEN clock_timestamp() END
	FROM hit h
	WHERE o.id = h.id AND o.sink_id = $1 AND o.failed_at IS NULL
	RETURNING o.id, o.group_key, o.failed_at IS NOT NULL AS failed
), gs AS (
	SELECT set_config('walhook.left_groups', COALESCE(array_to_json(array_agg(DISTINCT o.group_key))::text, '[]'), true) FROM o
)
SELECT req.claim_id, req.id, o.id IS NOT NULL, o.group_key, COALESCE(o.failed, false)
FROM (SELECT 1 FROM gs) one CROSS JOIN req LEFT JOIN hit h ON h.claim_id = req.claim_id AND h.id = req.id LEFT JOIN o ON o.id = h.id
ORDER BY req.claim_id, req.id`

// The whole-claim path alone (the general path given no claims) ends a
// claim named whole: its messages deleted and returned, the row gone,
// its group handed on (rule P: the message behind is flagged and
// received next); and it leaves alone a claim named in part, or named
// whole with its ids out of order.
func TestPullAckWholeClaimAlone(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	ctx := t.Context()
	const general = "SELECT id, ids, claimed_at FROM found WHERE live AND NOT whole"
	if strings.Count(pullAckSQL, general) != 1 {
		t.Fatal("pullAckSQL's general path is not found: update this test")
	}
	wholeOnly := strings.Replace(pullAckSQL, general, "SELECT id, ids, claimed_at FROM found WHERE false", 1)
	ack := func(refs []PullRef) *PullAckResult {
		t.Helper()
		res := &PullAckResult{}
		if err := b.store.pullOutcome(ctx, b.sinkID, wholeOnly, pullAckArgs(b.sinkID, refs), res.scan, nil); err != nil {
			t.Fatal(err)
		}
		return res
	}
	b.queueCommitted(t, "a", 3) // a2 and a3 behind a1 (flag false)
	got := b.receive(t, 1, time.Minute, 0)
	if got == nil || len(got.Messages) != 1 {
		t.Fatalf("receive: %+v", got)
	}
	res := ack(append(refsOf(got, got.Messages[0]), refsOf(got, got.Messages[0])...))
	if len(res.Acked) != 1 || res.Acked[0].ID != got.Messages[0].ID || string(res.Acked[0].Payload) != "{}" || len(res.NotHeld) != 0 {
		t.Fatalf("whole ack: %+v", res)
	}
	var claims int
	if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM claims`).Scan(&claims); err != nil || claims != 0 {
		t.Fatalf("the claim acked whole is still there: %d %v", claims, err)
	}
	next := b.receive(t, 2, time.Minute, 0)
	if next == nil || len(next.Messages) != 2 || next.Messages[0].ID == got.Messages[0].ID {
		t.Fatalf("receive after the whole ack (a2, a3 handed on): %+v", next)
	}
	// In part: nothing; whole but out of order: nothing (left to the
	// general path).
	if res := ack(refsOf(next, next.Messages[0])); len(res.Acked) != 0 || len(res.NotHeld) != 1 {
		t.Fatalf("a part acked by the whole path: %+v", res)
	}
	if _, err := b.store.Pool.Exec(ctx, `UPDATE claims SET ids = ARRAY[ids[2], ids[1]]`); err != nil {
		t.Fatal(err)
	}
	if res := ack(refsOf(next, next.Messages...)); len(res.Acked) != 0 || len(res.NotHeld) != 2 {
		t.Fatalf("a claim whose ids are out of order acked by the whole path: %+v", res)
	}
	// The general path takes it, and the receive in the ack's
	// transaction sees the group handed on.
	b.queueCommitted(t, "a", 1)
	res, more, err := b.store.PullAckClaim(ctx, refsOf(next, next.Messages...), ClaimRequest{SinkID: b.sinkID, BatchSize: 10, MaxAckPending: 1000, Lease: time.Minute, Worker: "receive", Pull: true})
	if err != nil || len(res.Acked) != 2 || len(res.NotHeld) != 0 || more == nil || len(more.Messages) != 1 {
		t.Fatalf("PullAckClaim of the claim out of order: %+v %+v %v", res, more, err)
	}
}

// A partial ack keeps the claim's ids in order, so the ack of the rest
// ends the claim whole.
func TestPullPartialAckKeepsIDsInOrder(t *testing.T) {
	t.Parallel() // no short lease or deadline: load cannot change its outcome
	b := setup(t)
	ctx := t.Context()
	for _, g := range []string{"a", "b", "c", "d", "e", "f"} {
		b.queueCommitted(t, g, 2)
	}
	got := b.receive(t, 12, time.Minute, 0)
	if got == nil || len(got.Messages) != 12 {
		t.Fatalf("receive: %+v", got)
	}
	rest := slices.Clone(got.Messages)
	for len(rest) > 0 {
		part := rest[:min(len(rest), 1+len(rest)/3)]
		rest = rest[len(part):]
		res, err := b.store.PullAck(ctx, b.sinkID, refsOf(got, part...))
		if err != nil || len(res.Acked) != len(part) || len(res.NotHeld) != 0 {
			t.Fatalf("ack %d: %+v %v", len(part), res, err)
		}
		var ids []int64
		err = b.store.Pool.QueryRow(ctx, `SELECT COALESCE((SELECT ids FROM claims WHERE id = $1), '{}')`, got.ClaimID).Scan(&ids)
		if err != nil || len(ids) != len(rest) || !slices.IsSorted(ids) {
			t.Fatalf("claim's ids after a partial ack: %v %v (%d held)", ids, err, len(rest))
		}
	}
}
