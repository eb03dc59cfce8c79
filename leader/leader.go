// Package leader elects one process among those sharing a state schema to
// do a job only one may do at a time (streaming the replication slot). It
// uses a session-level Postgres advisory lock: the lock dies with its
// connection, so a crashed leader is replaced within one retry interval.
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Elector campaigns for one named lock.
type Elector struct {
	Pool *pgxpool.Pool
	// Name identifies the job, e.g. "walhook.stream.<schema>.<slot>".
	Name string
	// Retry is how often a follower tries to take over. Default 1s.
	Retry time.Duration
	// OnChange, when set, is told when this process gains or loses the lead.
	OnChange func(leading bool)
	// OnError, when set, is told why a term ended (or could not start).
	OnError func(err error)
}

// Run calls lead whenever this process holds the lock, cancelling its
// context when the lock's connection is lost. It returns when ctx ends.
// lead's errors end one term; the lock is released and campaigned for
// again after Retry, so a failing leader gives others a chance.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context) error) error {
	retry := e.Retry
	if retry <= 0 {
		retry = time.Second
	}
	for {
		if err := e.term(ctx, lead); err != nil && !errors.Is(err, errNotLeader) && ctx.Err() == nil && e.OnError != nil {
			e.OnError(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
	}
}

var errNotLeader = errors.New("not leader")

func (e *Elector) term(ctx context.Context, lead func(ctx context.Context) error) error {
	conn, err := e.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("leader: connect: %w", err)
	}
	// The session holding the lock must end with the term, so the
	// connection is closed rather than returned to the pool.
	defer func() {
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
	}()
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('walhook.leader'), hashtext($1))`, e.Name).Scan(&got); err != nil {
		return fmt.Errorf("leader: try lock: %w", err)
	}
	if !got {
		return errNotLeader
	}
	if e.OnChange != nil {
		e.OnChange(true)
		defer e.OnChange(false)
	}
	termCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan error, 1)
	go func() { lost <- watch(termCtx, conn.Conn(), cancel) }()
	err = lead(termCtx)
	cancel()
	<-lost
	return err
}

// watch pings the lock's connection; if it fails the lock is gone and the
// term ends.
func watch(ctx context.Context, conn *pgx.Conn, cancel context.CancelFunc) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.Ping(pctx)
		pcancel()
		if err != nil && ctx.Err() == nil {
			cancel()
			return fmt.Errorf("leader: lock connection lost: %w", err)
		}
	}
}
