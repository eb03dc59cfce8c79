package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/pgdial"
	"github.com/walhook/walhook/secrets"
)

// Store is the state schema. Every statement on it goes through Store's
// methods: the pool stays unexported so the compiler keeps the queries,
// and the invariants of outbox/doc.go, in this package.
type Store struct {
	pool   *pgxpool.Pool
	Schema string
	// Box seals sinks' signing secrets (and opens them on read). Without
	// a key they are stored in clear, as before encryption_key existed.
	Box *secrets.Box
	// freshSkips counts, per sink, the claims left to make with claimSQL
	// alone after claimFreshSQL last did not apply (claim_fresh.go).
	freshSkips sync.Map // int64 -> *atomic.Int32
}

// idleInTransactionTimeout ends the session of a process frozen inside a
// transaction (see Open).
const idleInTransactionTimeout = "30s"

// Open connects to the state database with search_path set to schema, so
// every query here is unqualified.
func Open(ctx context.Context, url, schema string, maxConns int32) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse state url: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["application_name"] = "walhook"
	// No JIT: these are short OLTP statements, and a generic plan of the
	// claim (its LIMIT unknown) looks costly enough to be compiled, which
	// takes fifty times longer than running it. No sequential scans where
	// an index serves: the queue tables look nearly empty to the planner
	// most of the time, and a scan per group of a full outbox stalls
	// capture and delivery (see groupOrder in claim.go).
	cfg.ConnConfig.RuntimeParams["jit"] = "off"
	cfg.ConnConfig.RuntimeParams["enable_seqscan"] = "off"
	// A process frozen inside a transaction (SIGSTOP, a paused VM) keeps
	// its row locks; the server ends such a session after this, so a
	// leader frozen mid-flush cannot block its successor for good.
	cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = idleInTransactionTimeout
	pgdial.Configure(&cfg.ConnConfig.Config)
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	// Connections are opened ahead and warmed (warm), so that a burst
	// finds them ready: a claim on a new connection otherwise waits for
	// the backend to start, load its catalog caches and plan the claim,
	// 30–45 ms, and delivery stalls that long behind it.
	cfg.MinConns = min(minConns, cfg.MaxConns)
	cfg.AfterConnect = warm
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to state database: %w", err)
	}
	return &Store{pool: pool, Schema: schema}, nil
}

// minConns is how many connections the pool keeps open: capture,
// claims, acks, the history writer and housekeeping each hold one at
// times, at once.
const minConns = 6

// warm runs the claim, ack and promote statements once on a new
// connection, for a sink that does not exist (ids start at 1), so that
// their prepared statements and generic plans are cached before the
// first real claim needs them. Best effort: on a schema not migrated yet
// it fails, caches nothing, and the connection is used as it is. It gives
// up at once on a locked table (a migration, VACUUM FULL): a connection
// is wanted now, not warm.
func warm(ctx context.Context, conn *pgx.Conn) error {
	if err := conn.PgConn().Exec(ctx, `SET lock_timeout = '100ms'; SET statement_timeout = '2s'`).Close(); err != nil {
		return nil // the connection's first use reports what is wrong
	}
	defer func() { _ = conn.PgConn().Exec(ctx, `RESET lock_timeout; RESET statement_timeout`).Close() }()
	b := &pgx.Batch{}
	b.Queue(claimLockPlanSQL, 0)
	queueClaimSQL(b, claimFreshSQL, ClaimRequest{BatchSize: 1, MaxAckPending: 1, Lease: time.Second}, &claimed{})
	queueClaimSQL(b, claimSQL, ClaimRequest{BatchSize: 1, MaxAckPending: 1, Lease: time.Second}, &claimed{})
	b.Queue(ackSQL, []int64{})
	b.Queue(promoteSQL, 0, []string{})
	_ = conn.SendBatch(ctx, b).Close()
	return nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the state database answers, for health checks.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping state database: %w", err)
	}
	return nil
}

// Channel is the LISTEN/NOTIFY channel on which capture announces new
// messages; the payload is a comma-separated list of sink ids.
func (s *Store) Channel() string { return "walhook_" + s.Schema }

// ErrNotFound is returned when a named object does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when creating an object whose name is taken.
var ErrExists = errors.New("already exists")

// IsUniqueViolation reports a unique_violation from Postgres.
func IsUniqueViolation(err error) bool { return pgErrCode(err) == "23505" }

func pgErrCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// isRetryable reports serialization failures and deadlocks, which a
// transaction may simply try again.
func isRetryable(err error) bool {
	code := pgErrCode(err)
	return code == "40001" || code == "40P01"
}

// inTx runs fn in a transaction, retrying it on deadlock or serialization
// failure.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return retry(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// batch sends the statements fill queues as one pipeline: one round trip
// and one implicit transaction (a failing statement rolls back the rest).
// It retries on deadlock or serialization failure.
func (s *Store) batch(ctx context.Context, fill func(b *pgx.Batch)) error {
	return retry(ctx, func() error {
		b := &pgx.Batch{}
		fill(b)
		return s.pool.SendBatch(ctx, b).Close()
	})
}

// retry runs a transaction again, up to five times, while it fails with a
// deadlock or a serialization failure.
func retry(ctx context.Context, run func() error) error {
	for attempt := 0; ; attempt++ {
		err := run()
		if err == nil || !isRetryable(err) || attempt >= 5 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 5 * time.Millisecond):
		}
	}
}

func joinIDs(ids []int64) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}
