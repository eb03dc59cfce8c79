// Package leader elects one process among those sharing a state schema to
// do a job only one may do at a time (streaming the replication slot).
//
// Leadership is a lease with a heartbeat and a fencing token (see
// outbox/doc.go, rule T), not a lock held by a connection: a process that
// is frozen (SIGSTOP, a paused VM) or cut off keeps its connections, and
// with them any lock, for as long as TCP lets it. A lease instead runs out
// on the server's clock unless its holder renews it, and every term has a
// new token that the leader's writes check, so a leader that wakes up
// after losing its term finds out before it writes anything.
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Leases is where terms are kept (outbox.Store).
type Leases interface {
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (token int64, ok bool, err error)
	RenewLease(ctx context.Context, name string, token int64, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name string, token int64) error
}

// DefaultTTL is how long a term lasts without a renewal: a frozen leader
// is replaced after at most this long.
const DefaultTTL = 15 * time.Second

// Elector campaigns for one lease.
type Elector struct {
	Leases Leases
	// Name identifies the job, e.g. "stream:<schema>.<slot>".
	Name string
	// Holder identifies this process in the lease, for operators.
	Holder string
	// TTL is how long a term lasts without renewal. Default DefaultTTL.
	// It is renewed every TTL/3.
	TTL time.Duration
	// Retry is how often a follower tries to take over. Default 1s.
	Retry time.Duration
	// OnChange, when set, is told when this process gains or loses the lead.
	OnChange func(leading bool)
	// OnError, when set, is told why a term ended (or could not start).
	OnError func(err error)
}

// ErrLost ends a term whose lease could not be renewed in time.
var ErrLost = errors.New("leadership lease lost")

// Run calls lead, with the term's fencing token, whenever this process
// holds the lease, and cancels its context as soon as the lease may have
// run out. It returns when ctx ends. lead's errors end one term; the lease
// is released and campaigned for again after Retry, so a failing leader
// gives others a chance.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context, token int64) error) error {
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

func (e *Elector) ttl() time.Duration {
	if e.TTL > 0 {
		return e.TTL
	}
	return DefaultTTL
}

func (e *Elector) term(ctx context.Context, lead func(ctx context.Context, token int64) error) error {
	ttl := e.ttl()
	start := time.Now()
	token, ok, err := e.Leases.AcquireLease(ctx, e.Name, e.Holder, ttl)
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	if !ok {
		return errNotLeader
	}
	if e.OnChange != nil {
		e.OnChange(true)
		defer e.OnChange(false)
	}
	termCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		e.renew(termCtx, cancel, token, start.Add(ttl))
	}()
	err = lead(termCtx, token)
	cancel(nil)
	<-renewed
	if cause := context.Cause(termCtx); errors.Is(cause, ErrLost) {
		err = errors.Join(cause, err)
	} else if rerr := e.Leases.ReleaseLease(context.WithoutCancel(ctx), e.Name, token); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

// renew pushes the lease forward every ttl/3. deadline is when the lease
// may have run out as far as this process can tell: the local time a
// successful renewal was sent, plus the TTL. Past it, or when a renewal
// says the term is over, the term ends (ErrLost) before the server could
// have let another process in.
func (e *Elector) renew(ctx context.Context, cancel context.CancelCauseFunc, token int64, deadline time.Time) {
	ttl := e.ttl()
	next := ttl / 3
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			cancel(fmt.Errorf("%w: no renewal within %s", ErrLost, ttl))
			return
		}
		t := time.NewTimer(min(next, wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if time.Until(deadline) <= 0 {
			continue
		}
		sent := time.Now()
		rctx, rcancel := context.WithDeadline(ctx, deadline)
		ok, err := e.Leases.RenewLease(rctx, e.Name, token, ttl)
		rcancel()
		switch {
		case err == nil && ok:
			deadline, next = sent.Add(ttl), ttl/3
		case err == nil:
			cancel(fmt.Errorf("%w: another process holds it", ErrLost))
			return
		case ctx.Err() != nil:
			return
		default:
			// Tried again soon, until the deadline.
			next = min(ttl/3, time.Second)
		}
	}
}
