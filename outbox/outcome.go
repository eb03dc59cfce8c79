package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// promoteSQL flags the first message of each of the groups $2 of sink $1
// as head (doc.go, rule P). Flagging a group's first message is always
// safe, so it runs after every change that may have removed a group's
// head, whether or not the change took effect.
var promoteSQL = `
UPDATE outbox SET head = true
WHERE id = ANY (ARRAY(SELECT ` + fmt.Sprintf(firstOfGroupSQL, "g.k") + ` FROM unnest($2::text[]) AS g(k)))
AND head IS NOT TRUE`

// ErrClaimEnded is returned by Ack and Nack when the batch's claim is no
// longer live: its lease ran out or it was revoked, and its messages may
// be another worker's by now. Nothing was changed (doc.go, rule F).
var ErrClaimEnded = errors.New("claim ended before the outcome was recorded")

// IsClaimEnded reports whether err is ErrClaimEnded.
func IsClaimEnded(err error) bool { return errors.Is(err, ErrClaimEnded) }

// ackSQL deletes the live claims among $1 and, only with them, their
// messages. It returns the claims that were live.
const ackSQL = `
WITH c AS (
	DELETE FROM claims WHERE id = ANY($1) AND until > clock_timestamp() RETURNING id, ids
), d AS (
	DELETE FROM outbox WHERE id = ANY (ARRAY(SELECT unnest(ids) FROM c))
)
SELECT COALESCE(array_agg(id), '{}') FROM c`

// Ack removes delivered messages, ends the claim and hands each group on
// to its next message. It returns ErrClaimEnded, and changes nothing,
// when the claim is not live. The recent-delivery history is written
// apart (RecordDelivered), off this path.
func (s *Store) Ack(ctx context.Context, b *Batch) error {
	ended, err := s.AckAll(ctx, b.SinkID, []*Batch{b})
	if err != nil {
		return err
	}
	if len(ended) > 0 {
		return fmt.Errorf("ack %d messages of sink %d (claim %d): %w", len(b.Messages), b.SinkID, b.ClaimID, ErrClaimEnded)
	}
	return nil
}

// AckAll acknowledges several batches of one sink at once (group commit):
// one round trip and one turn of the claim lock for all of them. It
// returns the batches whose claim had ended (rule F): nothing of theirs
// was changed.
func (s *Store) AckAll(ctx context.Context, sinkID int64, batches []*Batch) (ended []*Batch, err error) {
	ids := make([]int64, len(batches))
	seen := map[string]bool{}
	var groups []string
	n := 0
	for i, b := range batches {
		ids[i] = b.ClaimID
		n += len(b.Messages)
		for _, m := range b.Messages {
			if !seen[m.Group] {
				seen[m.Group] = true
				groups = append(groups, m.Group)
			}
		}
	}
	var live []int64
	err = s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(claimLockPlanSQL, sinkID)
		pb.Queue(ackSQL, ids).QueryRow(func(row pgx.Row) error { return row.Scan(&live) })
		pb.Queue(promoteSQL, sinkID, groups)
	})
	if err != nil {
		return nil, fmt.Errorf("ack %d messages of sink %d: %w", n, sinkID, err)
	}
	for _, b := range batches {
		if !slices.Contains(live, b.ClaimID) {
			ended = append(ended, b)
		}
	}
	return ended, nil
}

// Failure describes a failed delivery attempt.
type Failure struct {
	AttemptStart time.Time
	Status       int // 0 when there was no response
	Error        string
	// Backoff is how long the messages wait before their next attempt,
	// from the nack, on the server's clock (as leases are): the claim that
	// retries them compares with that clock, and a worker's timer for the
	// retry, started when the nack returns, then never fires before it,
	// whatever the two clocks say.
	Backoff time.Duration
	// MaxAge, when set, fails messages first attempted longer ago.
	MaxAge time.Duration
}

// nackSQL records the attempt on the claim's messages if the claim is
// live, and ends it.
const nackSQL = `
WITH nb AS MATERIALIZED (
	SELECT clock_timestamp() + make_interval(secs => $5::bigint / 1e6::float8) AS at
), c AS (
	DELETE FROM claims WHERE id = $1 AND until > clock_timestamp() RETURNING ids
), o AS (
	-- An attempted message is a retry: its flag is reset (rule Q) and
	-- no claim clears it again (rule C).
	UPDATE outbox SET deliver_count = deliver_count + 1, head = NULL,
		first_attempt_at = COALESCE(first_attempt_at, $2),
		last_attempt_at = $2, last_status = $3, last_error = $4, not_before = (SELECT at FROM nb), ready_at = (SELECT at FROM nb),
		failed_at = CASE WHEN $6::bigint > 0 AND COALESCE(first_attempt_at, $2) + make_interval(secs => $6::bigint / 1e6::float8) <= clock_timestamp() THEN clock_timestamp() END
	WHERE id = ANY ((SELECT ids FROM c)::bigint[]) AND failed_at IS NULL
	RETURNING failed_at IS NOT NULL AS failed
)
SELECT (SELECT count(*) FROM c)::int, count(*) FILTER (WHERE failed)::int FROM o`

// Nack records a failed attempt and ends the claim: the messages back off
// for Backoff (their groups with them), or become failed once MaxAge
// has passed since their first attempt, leaving their group's queue to
// the messages behind them. It returns how many became failed, or
// ErrClaimEnded, having changed nothing, when the claim is not live.
func (s *Store) Nack(ctx context.Context, b *Batch, f Failure) (failed int, err error) {
	var status *int
	if f.Status != 0 {
		status = &f.Status
	}
	var live int
	err = s.batch(ctx, func(pb *pgx.Batch) {
		pb.Queue(claimLockPlanSQL, b.SinkID)
		pb.Queue(nackSQL, b.ClaimID, f.AttemptStart, status, f.Error, f.Backoff.Microseconds(), f.MaxAge.Microseconds()).QueryRow(func(row pgx.Row) error {
			return row.Scan(&live, &failed)
		})
		pb.Queue(promoteSQL, b.SinkID, b.groups())
	})
	if err != nil {
		return 0, fmt.Errorf("record failed delivery of %d messages of sink %d: %w", len(b.Messages), b.SinkID, err)
	}
	if live == 0 {
		return 0, fmt.Errorf("record failed delivery of %d messages of sink %d (claim %d): %w", len(b.Messages), b.SinkID, b.ClaimID, ErrClaimEnded)
	}
	return failed, nil
}
