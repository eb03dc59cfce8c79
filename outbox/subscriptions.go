package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Emitter prefixes of subscriptions.
const (
	TableEmitter   = "table:"
	WebhookEmitter = "webhook:"
)

// Subscription attaches an emitter to a listener sink.
type Subscription struct {
	ID        int64
	Emitter   string
	Listener  string
	CreatedAt time.Time
}

const subscriptionSelect = `SELECT x.id, x.emitter, s.name, x.created_at FROM subscriptions x JOIN sinks s ON s.id = x.sink_id`

// ListSubscriptions lists subscriptions, optionally only those of one sink.
func (s *Store) ListSubscriptions(ctx context.Context, listener string) ([]Subscription, error) {
	rows, err := s.pool.Query(ctx, subscriptionSelect+` WHERE $1 = '' OR s.name = $1 ORDER BY x.id`, listener)
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Subscription, error) {
		var x Subscription
		err := r.Scan(&x.ID, &x.Emitter, &x.Listener, &x.CreatedAt)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	return out, nil
}

// GetSubscription returns one subscription, or ErrNotFound.
func (s *Store) GetSubscription(ctx context.Context, id int64) (*Subscription, error) {
	var x Subscription
	err := s.pool.QueryRow(ctx, subscriptionSelect+` WHERE x.id = $1`, id).Scan(&x.ID, &x.Emitter, &x.Listener, &x.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("subscription %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("subscription %d: %w", id, err)
	}
	return &x, nil
}

// AddSubscription attaches an emitter to a sink (ErrExists when it is
// attached already, ErrNotFound when the sink does not exist).
func (s *Store) AddSubscription(ctx context.Context, listener, emitter string) (*Subscription, error) {
	var x Subscription
	err := s.pool.QueryRow(ctx, `
		WITH i AS (
			INSERT INTO subscriptions (sink_id, emitter) SELECT id, $2 FROM sinks WHERE name = $1
			RETURNING id, emitter, created_at
		) SELECT id, emitter, created_at FROM i`, listener, emitter).Scan(&x.ID, &x.Emitter, &x.CreatedAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("sink %q: %w", listener, ErrNotFound)
	case IsUniqueViolation(err):
		return nil, fmt.Errorf("subscription of %s to %s: %w", listener, emitter, ErrExists)
	case err != nil:
		return nil, fmt.Errorf("add subscription of %s to %s: %w", listener, emitter, err)
	}
	x.Listener = listener
	return &x, nil
}

// RemoveSubscription detaches one subscription. Messages it already
// queued stay queued.
func (s *Store) RemoveSubscription(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM subscriptions WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove subscription %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("subscription %d: %w", id, ErrNotFound)
	}
	return nil
}

// ListSinksSubscribedTo names the sinks listening to an emitter
// ("webhook:NAME" or "table:SCHEMA.TABLE").
func (s *Store) ListSinksSubscribedTo(ctx context.Context, emitter string) ([]string, error) {
	return s.names(ctx, `SELECT s.name FROM subscriptions x JOIN sinks s ON s.id = x.sink_id WHERE x.emitter = $1 ORDER BY s.name`, emitter)
}
