package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Leases are leadership terms (doc.go, rule T): one row per job. A term
// has a token that only grows, and an end on the server's clock that the
// holder pushes forward while it lives. The leader package campaigns with
// these; capture checks the token before it writes (Capture.SetLease).

// AcquireLease starts a new term for holder if the lease is free (never
// taken, released, or run out). It returns the term's token, or ok false
// while another holder's term lasts.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (token int64, ok bool, err error) {
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		// A flush of the previous leader holds the row (FOR SHARE) until
		// it commits; waiting longer than that means it is frozen
		// mid-flush, and the campaign tries again later.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO leases (name, holder, token, until) VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3::float8))
			ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, token = leases.token + 1, until = EXCLUDED.until
			WHERE leases.until <= clock_timestamp()
			RETURNING token`, name, holder, ttl.Seconds()).Scan(&token)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		ok = err == nil
		return err
	})
	if isLockTimeout(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return token, ok, nil
}

// RenewLease pushes the end of a live term forward. It returns false when
// the term is over (run out, or another holder's now): the holder must
// stop at once.
func (s *Store) RenewLease(ctx context.Context, name string, token int64, ttl time.Duration) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE leases SET until = clock_timestamp() + make_interval(secs => $3::float8)
		WHERE name = $1 AND token = $2 AND until > clock_timestamp()`, name, token, ttl.Seconds())
	if err != nil {
		return false, fmt.Errorf("renew lease %s: %w", name, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ReleaseLease ends a term now, so another process takes over without
// waiting for it to run out.
func (s *Store) ReleaseLease(ctx context.Context, name string, token int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE leases SET until = clock_timestamp() WHERE name = $1 AND token = $2 AND until > clock_timestamp()`, name, token)
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}

// fenceSQL holds the leader's term, if it is still live, until the
// transaction that writes for it commits: a new term cannot start in
// between (AcquireLease's update waits for the row).
const fenceSQL = `SELECT 1 FROM leases WHERE name = $1 AND token = $2 AND until > clock_timestamp() FOR SHARE`

// fenceOrFailSQL is fenceSQL for a pipeline that commits at its end with
// no round trip in between (a small capture flush): it fails when the
// term is over, division by zero being the error plain SQL can raise at
// run time, and the failure rolls back the whole pipeline.
const fenceOrFailSQL = `SELECT 1 / count(*)::int FROM (` + fenceSQL + `) held`

// isFenceFailed reports whether err is fenceOrFailSQL's failure.
func isFenceFailed(err error) bool { return pgErrCode(err) == "22012" }

// ErrLostLease is returned by a write of a leader whose term is over. The
// write was rolled back.
var ErrLostLease = errors.New("leadership lease lost")

func isLockTimeout(err error) bool {
	return pgErrCode(err) == "55P03"
}
