package outbox

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// workerLockKey is the session lock a worker holds for as long as its
// process lives (doc.go, rule W). Its key is the worker's id within the
// state schema.
const workerLockKey = `hashtext('walhook.worker.' || current_schema()), $1::int`

// Worker is a delivering process as the state schema knows it. Its
// claims live as long as its Postgres session does: when the process dies
// (kill -9, crash, OOM kill) the session ends, its lock is freed, and any
// other process revokes its claims within a second or two instead of
// waiting out their leases.
type Worker struct {
	ID   int64
	Name string

	mu   sync.Mutex
	conn *pgx.Conn
}

// RegisterWorker records a worker and takes its session lock on a
// connection of its own, before the row is visible to anyone: a reaper
// that sees the row finds the lock held.
func (s *Store) RegisterWorker(ctx context.Context, name string) (*Worker, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("register worker %s: connect: %w", name, err)
	}
	w := &Worker{Name: name, conn: conn}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO workers (name) VALUES ($1) RETURNING id`, name).Scan(&w.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_advisory_lock(`+workerLockKey+`)`, w.ID)
		return err
	})
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("register worker %s: %w", name, err)
	}
	return w, nil
}

// Alive checks that the worker's session still holds its lock. When it
// fails the session may be gone, and the worker's claims with it: the
// caller registers a new worker.
func (w *Worker) Alive(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil {
		return fmt.Errorf("worker %d: closed", w.ID)
	}
	if err := w.conn.Ping(ctx); err != nil {
		return fmt.Errorf("worker %d: session lost: %w", w.ID, err)
	}
	return nil
}

// Close revokes the worker's remaining claims (a graceful stop gives its
// groups back at once), forgets it and ends its session.
func (w *Worker) Close(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil {
		return nil
	}
	defer func() {
		_ = w.conn.Close(context.WithoutCancel(ctx))
		w.conn = nil
	}()
	b := &pgx.Batch{}
	b.Queue(`UPDATE claims SET until = '-infinity' WHERE worker_id = $1`, w.ID)
	b.Queue(`DELETE FROM workers WHERE id = $1`, w.ID)
	if err := w.conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("worker %d: release claims: %w", w.ID, err)
	}
	return nil
}

// kill ends the worker's session without releasing anything, as a crash
// would (tests).
func (w *Worker) kill(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		_ = w.conn.PgConn().Conn().Close()
		_ = w.conn.Close(ctx)
		w.conn = nil
	}
}

// reapWorkersSQL finds workers whose session lock is free (their process
// is gone: taking the lock for this transaction succeeds), revokes their
// claims and forgets them. The claims are ended with their groups
// promoted by the next claim or ReapClaims (rule R).
const reapWorkersSQL = `
WITH dead AS (
	SELECT id FROM workers WHERE id <> $1 AND pg_try_advisory_xact_lock(` + "hashtext('walhook.worker.' || current_schema()), id::int" + `)
), r AS (
	UPDATE claims SET until = '-infinity' WHERE worker_id IN (SELECT id FROM dead) RETURNING sink_id
), d AS (
	DELETE FROM workers WHERE id IN (SELECT id FROM dead) RETURNING id
)
SELECT (SELECT count(*) FROM d), COALESCE((SELECT array_agg(DISTINCT sink_id) FROM r), '{}')`

// ReapDeadWorkers revokes the claims of workers whose process died,
// ends them (ReapClaims, whose report it returns) and wakes the delivery
// of their sinks. self is the caller's worker id (0 for none). It returns
// how many workers it found dead.
func (s *Store) ReapDeadWorkers(ctx context.Context, self int64) (int, []Reaped, error) {
	var n int
	var sinks []int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, reapWorkersSQL, self).Scan(&n, &sinks); err != nil {
			return err
		}
		if len(sinks) > 0 {
			_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), joinIDs(sinks))
			return err
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("reap dead workers: %w", err)
	}
	if len(sinks) == 0 {
		return n, nil, nil
	}
	reaped, err := s.ReapClaims(ctx)
	return n, reaped, err
}
