package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Pull consumers (docs/reference.md#57-pull-sinks) use the claim protocol as it is: a receive is a
// Claim (ClaimRequest.Pull) whose lease is the visibility timeout, and an
// ack or nack names single messages of such claims. What pull adds is that
// an outcome may cover part of a claim:
//
//   - Under the sink's claim lock (rule L), the messages named that a live
//     claim of the sink still holds take the outcome (rule F: a message of
//     an ended claim, of another sink's claim, or one its claim no longer
//     names changes nothing and is reported as not held).
//   - They leave the claims row's ids. The row's groups become the groups
//     of the messages it still holds, so a group stays busy while any of
//     its messages remains in the claim (I1), and a group whose messages
//     all left is handed on (rule P runs for the groups that left). A claim
//     left with no messages is deleted: it ended with its outcomes.
//   - fresh (the claim's share of max_ack_pending) becomes the number of
//     held messages never attempted, except those that stand before a held
//     retry of their group (they hold its room, as at the claim). It may
//     grow: a retry acked alone leaves the fresh messages before it
//     counted, not counted nowhere.
//
// An ack deletes its messages; a nack records an attempt on them as a push
// nack does (backoff until not_before, failed past retry.max_age). An ack
// that names exactly the messages a live claim holds (each at least once,
// nothing else of that claim) ends the claim as a push ack does: the row
// and its messages deleted in one statement, and P for the row's groups.
// By the rules above this is the same outcome (every message leaves, so
// the row empties and every group leaves), so pullAckSQL takes such
// claims by that shorter path (whole), and the rules above for the rest
// of what an ack names, in the same statement. A claim's ids are kept in
// order (claimSQL records them so, and a partial outcome keeps them so)
// for that comparison. A caller that knows what it handed out
// (PullAckKnown: the API keeps its receives' batches) needs no comparison
// in SQL: when the ack names exactly the messages of known batches, their
// claims end as a push ack ends one (pullWholeAckSQL), the same outcome
// for about the cost of a push ack. A claim
// whose lease ends first is reaped (rule R) after lapseSQL has recorded
// an attempt on what it still held.
//
// Order: a claim hands out a prefix of each group in commit order, as for
// push. A consumer that acks a later message of a group and nacks or
// abandons an earlier one has chosen to process them out of order; the
// earlier one is then delivered again on its own.

// PullRef names one received message: the claim that handed it out and
// the message's id.
type PullRef struct {
	ClaimID   int64
	MessageID int64
}

// lapseSQL records an attempt on the messages still held by the sink's
// pull claims whose lease (visibility timeout) ended, failing those past
// the sink's retry.max_age, and turns the claims into plain ended ones
// (lapse_max_age NULL) for reapSQL, which ReapClaims runs next under the
// same lock. Its own statement: reapSQL then promotes with a snapshot
// that sees the messages that failed here. Until then claimSQL counts
// such a claim as live, so nobody else holds its messages meanwhile. It
// answers how many claims lapsed, how many messages they still held, and
// how many of those failed (Reaped).
const lapseSQL = `
WITH e AS (
	-- RETURNING shows the new row: the old max_age comes from x.
	UPDATE claims c SET lapse_max_age = NULL
	FROM (SELECT id, lapse_max_age FROM claims
		WHERE sink_id = $1 AND until <= clock_timestamp() AND lapse_max_age IS NOT NULL) x
	WHERE c.id = x.id
	RETURNING c.ids, c.claimed_at, x.lapse_max_age AS max_age
), u AS (
	UPDATE outbox o SET deliver_count = o.deliver_count + 1, head = NULL,
		first_attempt_at = COALESCE(o.first_attempt_at, e.claimed_at),
		last_attempt_at = e.claimed_at, last_status = NULL,
		last_error = 'visibility timeout passed without an ack or nack',
		failed_at = CASE WHEN e.max_age > 0 AND COALESCE(o.first_attempt_at, e.claimed_at) + make_interval(secs => e.max_age / 1e6::float8) <= clock_timestamp() THEN clock_timestamp() END
	FROM e
	WHERE o.id = ANY (e.ids) AND o.failed_at IS NULL
	RETURNING o.failed_at
)
SELECT (SELECT count(*) FROM e)::int, count(*)::int, count(failed_at)::int FROM u`

// pullHeldSQL is the part of pull ack and nack that finds what is held and
// shrinks the claims: $1 the sink, $2/$3 the claim and message ids named.
// hit is each named message a live claim of the sink still holds.
var pullHeldSQL = fmt.Sprintf(pullHeldFmt, "false", "")

// pullHeldFmt is pullHeldSQL with room for pullAckSQL's whole-claim
// path: %[1]s says whether found is a claim to end whole, %[2]s are CTEs
// that do it (whole); c is then what is left to pullHeldSQL.
//
// found looks the named claims up by primary key, and checks their sink
// and lease after: on the sink's claims (claims_sink_idx, which the
// generic plan prefers) it would read every claims row the sink ended
// since the last vacuum, and a consumer ends one per receive.
const pullHeldFmt = `
WITH req AS MATERIALIZED (
	SELECT DISTINCT r.claim_id, r.id FROM unnest($2::bigint[], $3::bigint[]) AS r(claim_id, id)
), named AS MATERIALIZED (
	SELECT claim_id, array_agg(id ORDER BY id) AS ids FROM req GROUP BY claim_id
), found AS MATERIALIZED (
	-- A prefetch (lapse_max_age NULL) was never handed out (rule A).
	SELECT c.id, c.ids, c.claimed_at, c.sink_id = $1 AND c.until > clock_timestamp() AND c.lapse_max_age IS NOT NULL AS live, %[1]s AS whole
	FROM claims c JOIN named n ON n.claim_id = c.id
	WHERE c.id = ANY (ARRAY(SELECT claim_id FROM named))
)%[2]s, c AS MATERIALIZED (
	SELECT id, ids, claimed_at FROM found WHERE live AND NOT whole
), held AS MATERIALIZED (
	SELECT c.id AS claim_id, u.id, c.claimed_at FROM c, unnest(c.ids) AS u(id)
), hit AS MATERIALIZED (
	-- A join, not a search of each claim's ids per named message (a
	-- receive holds up to 1000).
	SELECT req.claim_id, req.id, held.claimed_at FROM req JOIN held ON held.claim_id = req.claim_id AND held.id = req.id
), k AS MATERIALIZED (
	-- In order, as claimSQL records ids (pullAckSQL's whole path needs it).
	SELECT c.id, ARRAY(SELECT x.id FROM (SELECT unnest(c.ids) EXCEPT SELECT h.id FROM hit h WHERE h.claim_id = c.id) AS x(id) ORDER BY x.id) AS rest
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

// pullWholeAckSQL ends whole the live claims of sink $1 among $2 (every
// message of which an ack names, PullAckKnown), as ackSQL ends a push
// claim: the claims row and the messages it still holds are deleted in one
// statement (rule F), and the groups they leave go to walhook.left_groups
// for pullPromoteSQL and pullNotifySQL, as pullAckSQL leaves them. One row
// per claim ended, with the ids it still held.
const pullWholeAckSQL = `
WITH c AS (
	DELETE FROM claims WHERE id = ANY ($2::bigint[]) AND sink_id = $1 AND until > clock_timestamp()
		AND lapse_max_age IS NOT NULL -- a prefetch nobody adopted is held by no consumer (rule A)
	RETURNING id, ids
), d AS (
	DELETE FROM outbox o WHERE o.id = ANY (ARRAY(SELECT unnest(ids) FROM c)) AND o.sink_id = $1
	RETURNING o.group_key
), gs AS (
	SELECT set_config('walhook.left_groups', COALESCE(array_to_json(array_agg(DISTINCT d.group_key))::text, '[]'), true) FROM d
)
SELECT c.id, c.ids FROM (SELECT 1 FROM gs) one CROSS JOIN c`

// pullAckSQL deletes the held messages among those named. One row per
// named message: whether it was held, and what was deleted.
//
// Most acks name every message of a claim, and nothing else of it: such
// a live claim ends whole, as a push ack ends its claim (ackSQL), without
// pullHeldSQL's search (whole). A claim's ids are in order (claimSQL
// records them so, and pullHeldSQL keeps them so), as named's are, so
// that is one comparison; a claim whose ids were not in order would be
// left to pullHeldSQL, which takes whatever whole does not.
var pullAckSQL = fmt.Sprintf(pullHeldFmt, "c.ids = n.ids", `, whole AS MATERIALIZED (
	-- Rule F in the statement that deletes: a claim that ended since
	-- found is not deleted, and its ids are then not held (c has left
	-- it out too).
	DELETE FROM claims WHERE id = ANY (ARRAY(SELECT id FROM found WHERE live AND whole)) AND until > clock_timestamp()
	RETURNING id, ids
)`) + `, d AS (
	DELETE FROM outbox o WHERE o.id = ANY (ARRAY(SELECT unnest(ids) FROM whole UNION ALL SELECT id FROM hit)) AND o.sink_id = $1
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
FROM req WHERE req.claim_id NOT IN (SELECT id FROM whole) AND NOT EXISTS (SELECT 1 FROM hit h WHERE h.claim_id = req.claim_id AND h.id = req.id)`

// pullNackSQL records a failed attempt on the held messages among those
// named, as nackSQL does for a whole claim: $4 the error, $5 not before
// (NULL: at once), $6 max_age in microseconds. The attempt started when
// the claim was made.
var pullNackSQL = pullHeldSQL + `, o AS (
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

// pullPromoteSQL is rule P for the groups whose messages the ack or nack
// before it (same pipeline, same transaction) took out of their claim:
// that statement leaves them in the transaction-local setting
// walhook.left_groups, so the whole outcome is one round trip and the
// claim lock is held for no longer than that.
var pullPromoteSQL = strings.Replace(promoteSQL, "unnest($2::text[])",
	"json_array_elements_text(COALESCE(NULLIF(current_setting('walhook.left_groups', true), ''), '[]')::json)", 1)

// pullNotifySQL wakes the sink's consumers when groups were handed on.
const pullNotifySQL = `SELECT pg_notify($1, $2) WHERE COALESCE(NULLIF(current_setting('walhook.left_groups', true), ''), '[]') <> '[]'`

// PullAckResult is what an ack of received messages did.
type PullAckResult struct {
	// Acked are the messages deleted, for the delivered history.
	Acked []Message
	// NotHeld are the refs that changed nothing: their claim ended (the
	// visibility timeout passed, or they were acked or nacked already),
	// or it never handed out that message for this sink.
	NotHeld []PullRef
}

// PullAck deletes the received messages refs names that a live pull
// claim of the sink still holds, and hands on the groups they leave.
func (s *Store) PullAck(ctx context.Context, sinkID int64, refs []PullRef) (*PullAckResult, error) {
	return s.PullAckKnown(ctx, sinkID, refs, nil)
}

// PullAckKnown is PullAck for a caller that knows batches it handed out
// (known, as Claim returned them): when refs name every message of each
// claim they name, and each of those claims is a known batch of the sink,
// the claims end whole, as a push ack ends its claim (pullWholeAckSQL),
// which costs about half of the search pullAckSQL makes per message. The
// outcome is the same (pull.go's rules: every message a claim still holds
// is named, so its row empties), and the acked messages are taken from
// known rather than read back. Otherwise, or with known nil, it is
// PullAck.
func (s *Store) PullAckKnown(ctx context.Context, sinkID int64, refs []PullRef, known []*Batch) (*PullAckResult, error) {
	a := pullAckOf(sinkID, refs, known)
	if err := s.pullOutcome(ctx, sinkID, a.sql, a.args, a.scan, nil); err != nil {
		return nil, fmt.Errorf("ack %d received messages of sink %d: %w", len(refs), sinkID, err)
	}
	return a.res, nil
}

// pullAck is one ack's statement, arguments and result.
type pullAck struct {
	sql  string
	args []any
	res  *PullAckResult
	scan func(pgx.Rows) error
}

// pullAckOf picks pullWholeAckSQL when refs name exactly the messages of
// known batches of the sink, claim by claim, else pullAckSQL.
func pullAckOf(sinkID int64, refs []PullRef, known []*Batch) *pullAck {
	a := &pullAck{res: &PullAckResult{}}
	if whole := wholeClaims(sinkID, refs, known); whole != nil {
		ids := make([]int64, len(whole))
		for i, b := range whole {
			ids[i] = b.ClaimID
		}
		a.sql, a.args = pullWholeAckSQL, []any{sinkID, ids}
		a.scan = func(rows pgx.Rows) error { return a.res.scanWhole(rows, refs, whole) }
		return a
	}
	a.sql, a.args, a.scan = pullAckSQL, pullAckArgs(sinkID, refs), a.res.scan
	return a
}

// wholeClaims returns the known batches refs name whole: nil unless every
// claim refs name is a known batch of the sink and refs name each of its
// messages, and nothing else of it. A claims row only loses ids (rule U),
// so the messages such a claim still holds are all named: ending it whole
// is what pullAckSQL would do.
func wholeClaims(sinkID int64, refs []PullRef, known []*Batch) []*Batch {
	if len(known) == 0 || len(refs) == 0 {
		return nil
	}
	named := make(map[int64]map[int64]bool, 1)
	for _, r := range refs {
		m := named[r.ClaimID]
		if m == nil {
			m = map[int64]bool{}
			named[r.ClaimID] = m
		}
		m[r.MessageID] = true
	}
	var whole []*Batch
	for _, b := range known {
		ids, ok := named[b.ClaimID]
		if !ok || b.SinkID != sinkID || len(ids) != len(b.Messages) || slices.ContainsFunc(whole, func(w *Batch) bool { return w.ClaimID == b.ClaimID }) {
			continue
		}
		if !slices.ContainsFunc(b.Messages, func(m Message) bool { return !ids[m.ID] }) {
			whole = append(whole, b)
		}
	}
	if len(whole) != len(named) {
		return nil
	}
	return whole
}

// scanWhole reads pullWholeAckSQL's rows: the messages of the claims it
// ended that they still held were acked; every other ref was not held,
// once. Both go by claim and message: a message a lapsed or nacked claim
// once held may be held by another named claim now, and only that one's
// ref was acked.
func (res *PullAckResult) scanWhole(rows pgx.Rows, refs []PullRef, whole []*Batch) error {
	*res = PullAckResult{}
	deleted := map[PullRef]bool{}
	for rows.Next() {
		var claim int64
		var ids []int64
		if err := rows.Scan(&claim, &ids); err != nil {
			return err
		}
		for _, id := range ids {
			deleted[PullRef{ClaimID: claim, MessageID: id}] = true
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, b := range whole {
		for _, m := range b.Messages {
			if deleted[PullRef{ClaimID: b.ClaimID, MessageID: m.ID}] {
				res.Acked = append(res.Acked, m)
			}
		}
	}
	seen := make(map[PullRef]bool, len(refs))
	for _, r := range refs {
		if !deleted[r] && !seen[r] {
			seen[r] = true
			res.NotHeld = append(res.NotHeld, r)
		}
	}
	return nil
}

// PullAckClaim is PullAck and then Claim(req) for the same sink, in one
// transaction and one turn of the claim lock: a consumer acknowledges
// what it handled and receives more in one round trip, and the claim
// sees the groups the ack handed on (a second look after the commit
// when the claim cleared flags or claimFreshSQL did not apply: doc.go,
// rule U). The batch is nil when there is nothing to take. A non-nil
// result says the acks took effect, even with an error (of a second
// look, after the transaction).
func (s *Store) PullAckClaim(ctx context.Context, refs []PullRef, req ClaimRequest) (*PullAckResult, *Batch, error) {
	return s.PullAckKnownClaim(ctx, refs, nil, req)
}

// PullAckKnownClaim is PullAckClaim with PullAckKnown's known batches.
func (s *Store) PullAckKnownClaim(ctx context.Context, refs []PullRef, known []*Batch, req ClaimRequest) (*PullAckResult, *Batch, error) {
	a := pullAckOf(req.SinkID, refs, known)
	res := a.res
	var c claimed
	err := s.pullOutcome(ctx, req.SinkID, a.sql, a.args, a.scan, func(pb *pgx.Batch) {
		s.queueClaim(pb, req, &c)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ack %d received messages of sink %d and receive more: %w", len(refs), req.SinkID, err)
	}
	if c.demoted == freshMissed {
		s.freshMiss(req.SinkID)
	}
	if len(c.batches) == 0 && c.demoted != 0 {
		// As ClaimBatches: look again, past the candidates it cleared,
		// or with claimSQL when claimFreshSQL did not apply.
		b, err := s.Claim(ctx, req)
		if err != nil {
			return res, nil, fmt.Errorf("claim again for a receive from sink %d: %w", req.SinkID, err)
		}
		return res, b, nil
	}
	if len(c.batches) == 0 {
		return res, nil, nil
	}
	return res, c.batches[0], nil
}

// Receive is a pull consumer's receive: it acks refs (when there are
// any; known as for PullAckKnown) and then hands out a batch for req, in
// one transaction and one turn of the claim lock (rule U): a consumer
// acknowledges what it handled and receives more in one round trip, and
// the batch is taken seeing the groups the ack handed on. The batch is
// pre adopted (rule A) when pre is set and still adoptable, else a claim
// (pre is then released first). It is nil when there is nothing to take.
// A non-nil result says the acks took effect, even with an error (of a
// second look, after the transaction).
func (s *Store) Receive(ctx context.Context, refs []PullRef, known []*Batch, req ClaimRequest, pre *Batch) (*PullAckResult, *Batch, error) {
	if pre == nil && len(refs) > 0 {
		return s.PullAckKnownClaim(ctx, refs, known, req)
	}
	if pre == nil {
		b, err := s.Claim(ctx, req)
		if err != nil {
			return nil, nil, fmt.Errorf("claim for a receive from sink %d: %w", req.SinkID, err)
		}
		return nil, b, nil
	}
	var res *PullAckResult
	adopted := false
	adopt := func(pb *pgx.Batch) { queueAdopt(pb, pre, req, &adopted) }
	var err error
	if len(refs) > 0 {
		a := pullAckOf(req.SinkID, refs, known)
		res = a.res
		err = s.pullOutcome(ctx, req.SinkID, a.sql, a.args, a.scan, adopt)
	} else {
		err = s.batch(ctx, func(pb *pgx.Batch) {
			pb.Queue(claimLockPlanSQL, req.SinkID)
			adopt(pb)
		})
	}
	if err != nil {
		if len(refs) == 0 {
			return nil, nil, fmt.Errorf("adopt a prefetched batch for a receive from sink %d: %w", req.SinkID, err)
		}
		return nil, nil, fmt.Errorf("ack %d received messages of sink %d and receive more: %w", len(refs), req.SinkID, err)
	}
	if adopted {
		return res, pre, nil
	}
	// Not adoptable (its lease ended, or the sink was paused): release
	// it, and claim, each under a turn of the lock of its own.
	if err := s.Release(ctx, pre); err != nil {
		return res, nil, err
	}
	b, err := s.Claim(ctx, req)
	if err != nil {
		return res, nil, fmt.Errorf("claim again for a receive from sink %d: %w", req.SinkID, err)
	}
	return res, b, nil
}

// adoptSQL makes prefetched claim $2 of sink $1 a receive's pull claim
// (rule A): its lease starts again at the visibility timeout ($3
// seconds) and lapses as a pull claim's (lapse_max_age $4), the attempt
// it stands for starts now. Only a prefetch still live, never adopted
// (lapse_max_age NULL, no worker), of a sink that may hand out messages
// (active, not holding: what claimSQL asks) is adopted.
const adoptSQL = `
UPDATE claims c SET until = clock_timestamp() + make_interval(secs => $3::float8), lapse_max_age = $4::bigint,
	worker = $5, claimed_at = clock_timestamp()
FROM sinks s
WHERE c.id = $2 AND c.sink_id = $1 AND c.until > clock_timestamp() AND c.lapse_max_age IS NULL AND c.worker_id IS NULL
	AND s.id = $1 AND s.status = 'active' AND (s.hold_until IS NULL OR s.hold_until <= clock_timestamp())
RETURNING c.id`

func queueAdopt(pb *pgx.Batch, pre *Batch, req ClaimRequest, adopted *bool) {
	pb.Queue(adoptSQL, req.SinkID, pre.ClaimID, req.Lease.Seconds(), max(req.MaxAge.Microseconds(), 0), req.Worker).Query(func(rows pgx.Rows) error {
		*adopted = rows.Next()
		rows.Close()
		return rows.Err()
	})
}

// releaseSQL ends prefetched claim $2 of sink $1 that no receive adopted
// (rule A), as R ends a claim: deleted, no attempt recorded (nobody had
// its messages); Release then promotes its groups (P). An adopted claim
// is a pull claim (lapse_max_age set) and is not touched; one whose
// lapse was recorded already is ended already, and this only reaps it
// early.
const releaseSQL = `DELETE FROM claims WHERE id = $2 AND sink_id = $1 AND lapse_max_age IS NULL AND worker_id IS NULL`

// Release ends a prefetched batch that no receive adopted (rule A): its
// messages wait again where they were, with no attempt counted, and the
// sink's waiting consumers are woken.
func (s *Store) Release(ctx context.Context, pre *Batch) error {
	err := s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(claimLockSQL, pre.SinkID)
		pb.Queue(releaseSQL, pre.SinkID, pre.ClaimID)
		pb.Queue(promoteSQL, pre.SinkID, pre.groups()) // always safe (P), released or not
		pb.Queue(`SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(pre.SinkID))
	})
	if err != nil {
		return fmt.Errorf("release prefetched batch of sink %d (claim %d): %w", pre.SinkID, pre.ClaimID, err)
	}
	return nil
}

func pullAckArgs(sinkID int64, refs []PullRef) []any {
	claims, ids := splitRefs(refs)
	return []any{sinkID, claims, ids}
}

// scan reads pullAckSQL's rows.
func (res *PullAckResult) scan(rows pgx.Rows) error {
	*res = PullAckResult{}
	for rows.Next() {
		var ref PullRef
		var held bool
		var m Message
		var group *string
		var lsn *int64
		var idx, count *int32
		var created *time.Time
		if err := rows.Scan(&ref.ClaimID, &ref.MessageID, &held, &group, &lsn, &idx, &m.Payload, &count, &m.FirstAttemptAt, &created); err != nil {
			return err
		}
		if !held || group == nil {
			res.NotHeld = append(res.NotHeld, ref)
			continue
		}
		m.ID, m.Group, m.CommitLSN, m.CommitIdx, m.DeliverCount, m.CreatedAt = ref.MessageID, *group, *lsn, *idx, *count, *created
		res.Acked = append(res.Acked, m)
	}
	return rows.Err()
}

// PullNackResult is what a nack of received messages did.
type PullNackResult struct {
	Nacked  int
	Failed  int // past retry.max_age: failed rather than backing off
	NotHeld []PullRef
}

// PullNack records a failed attempt on the received messages refs names
// that a live pull claim of the sink still holds: they wait until
// notBefore (zero: available at once), or become failed once maxAge has
// passed since their first attempt.
func (s *Store) PullNack(ctx context.Context, sinkID int64, refs []PullRef, notBefore time.Time, maxAge time.Duration, reason string) (*PullNackResult, error) {
	claims, ids := splitRefs(refs)
	var nb *time.Time
	if !notBefore.IsZero() {
		nb = &notBefore
	}
	res := &PullNackResult{}
	args := []any{sinkID, claims, ids, reason, nb, maxAge.Microseconds()}
	err := s.pullOutcome(ctx, sinkID, pullNackSQL, args, func(rows pgx.Rows) error {
		*res = PullNackResult{}
		for rows.Next() {
			var ref PullRef
			var held, failed bool
			var group *string
			if err := rows.Scan(&ref.ClaimID, &ref.MessageID, &held, &group, &failed); err != nil {
				return err
			}
			if !held || group == nil {
				res.NotHeld = append(res.NotHeld, ref)
				continue
			}
			res.Nacked++
			if failed {
				res.Failed++
			}
		}
		return rows.Err()
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("nack %d received messages of sink %d: %w", len(refs), sinkID, err)
	}
	return res, nil
}

// pullOutcome runs an ack or nack (sql with args, its rows read by scan)
// under the sink's claim lock (rule L), then rule P for the groups it
// took out of their claims, and wakes the sink's consumers when it did,
// then what then queues (when set) under the same lock: one pipeline, one
// implicit transaction, one round trip.
func (s *Store) pullOutcome(ctx context.Context, sinkID int64, sql string, args []any, scan func(pgx.Rows) error, then func(*pgx.Batch)) error {
	return s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(claimLockPlanSQL, sinkID)
		pb.Queue(sql, args...).Query(scan)
		pb.Queue(pullPromoteSQL, sinkID)
		pb.Queue(pullNotifySQL, s.Channel(), fmt.Sprint(sinkID))
		if then != nil {
			then(pb)
		}
	})
}

func splitRefs(refs []PullRef) (claims, ids []int64) {
	claims, ids = make([]int64, len(refs)), make([]int64, len(refs))
	for i, r := range refs {
		claims[i], ids[i] = r.ClaimID, r.MessageID
	}
	return claims, ids
}
