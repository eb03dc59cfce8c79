package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/sink"
)

const sinkSelect = `
	SELECT s.id, s.uuid::text, s.name, s.config, s.status = 'paused', s.created_at, s.updated_at,
		COALESCE((SELECT array_agg(emitter ORDER BY id) FROM subscriptions WHERE sink_id = s.id), '{}')
	FROM sinks s`

// SinkRow is a sink with its bookkeeping times.
type SinkRow struct {
	*sink.Sink
	CreatedAt, UpdatedAt time.Time
}

func (s *Store) scanSink(row pgx.Row) (*SinkRow, error) {
	var sk sink.Sink
	var r SinkRow
	var raw []byte
	var emitters []string
	if err := row.Scan(&sk.ID, &sk.UUID, &sk.Name, &raw, &sk.Paused, &r.CreatedAt, &r.UpdatedAt, &emitters); err != nil {
		return nil, err
	}
	cfg, err := s.readSinkSettings(sk.Name, raw)
	if err != nil {
		return nil, err
	}
	sk.Config = cfg
	sk.Config.Name = sk.Name
	if sk.Config.Kind == "" {
		// Stored before sinks had kinds: every one of them was a webhook.
		sk.Config.Kind = config.KindWebhook
	}
	for _, e := range emitters {
		if t, ok := strings.CutPrefix(e, TableEmitter); ok {
			sk.Config.Tables = append(sk.Config.Tables, t)
		} else if w, ok := strings.CutPrefix(e, WebhookEmitter); ok {
			sk.Config.WebhookSources = append(sk.Config.WebhookSources, w)
		}
	}
	r.Sink = &sk
	return &r, nil
}

// ListSinks lists every sink, by name.
func (s *Store) ListSinks(ctx context.Context) ([]*SinkRow, error) {
	rows, err := s.pool.Query(ctx, sinkSelect+` ORDER BY s.name`)
	if err != nil {
		return nil, fmt.Errorf("list sinks: %w", err)
	}
	defer rows.Close()
	var out []*SinkRow
	for rows.Next() {
		r, err := s.scanSink(rows)
		if err != nil {
			return nil, fmt.Errorf("list sinks: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// GetSink returns one sink by name, or ErrNotFound.
func (s *Store) GetSink(ctx context.Context, name string) (*SinkRow, error) {
	r, err := s.scanSink(s.pool.QueryRow(ctx, sinkSelect+` WHERE s.name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w", name, err)
	}
	return r, nil
}

// ListSinkModels returns the sinks as the router and delivery use them.
func (s *Store) ListSinkModels(ctx context.Context) ([]*sink.Sink, error) {
	rows, err := s.ListSinks(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*sink.Sink, len(rows))
	for i, r := range rows {
		out[i] = r.Sink
	}
	return out, nil
}

// PutSink creates or replaces a sink's settings and subscriptions. It
// reports whether the sink is new (its `start` applies only then).
func (s *Store) PutSink(ctx context.Context, cfg config.Sink) (created bool, err error) {
	raw, emitters, err := s.sinkSettings(cfg)
	if err != nil {
		return false, err
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, `
			INSERT INTO sinks (name, config) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, updated_at = now()
			RETURNING id, xmax = 0`, cfg.Name, raw).Scan(&id, &created)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM subscriptions WHERE sink_id = $1 AND NOT (emitter = ANY($2))`, id, emitters); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO subscriptions (sink_id, emitter) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, id, emitters)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("save sink %s: %w", cfg.Name, err)
	}
	return created, nil
}

// CreateSink inserts a new sink with its subscriptions. Unlike PutSink it
// never replaces an existing sink: creating through the API must not
// silently overwrite one (ErrExists).
func (s *Store) CreateSink(ctx context.Context, cfg config.Sink) error {
	raw, emitters, err := s.sinkSettings(cfg)
	if err != nil {
		return err
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ($1, $2) RETURNING id`, cfg.Name, raw).Scan(&id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO subscriptions (sink_id, emitter) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, id, emitters)
		return err
	})
	if IsUniqueViolation(err) {
		return fmt.Errorf("sink %q: %w", cfg.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create sink %s: %w", cfg.Name, err)
	}
	return nil
}

// DeleteSink removes a sink with everything queued for it: its outbox,
// its claims and its delivered history go in the same transaction, so no
// worker can claim a message of a sink that no longer exists. Messages
// written for it later are left to PurgeDeletedSinks. It returns the
// sink's id.
func (s *Store) DeleteSink(ctx context.Context, name string) (int64, error) {
	var id int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT id FROM sinks WHERE name = $1 FOR UPDATE`, name).Scan(&id); err != nil {
			return err
		}
		return purgeSink(ctx, tx, id)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("delete sink %s: %w", name, err)
	}
	return id, nil
}

func purgeSink(ctx context.Context, tx pgx.Tx, id int64) error {
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM claims WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM outbox WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM delivered WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM sinks WHERE id = $1`, id)
	return tx.SendBatch(ctx, b).Close()
}

// SetSinkPaused pauses or resumes delivery of a sink. Capture goes on
// while paused; workers see the status at their next claim. Resuming wakes
// them at once.
func (s *Store) SetSinkPaused(ctx context.Context, name string, paused bool) error {
	status := "active"
	if paused {
		status = "paused"
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		// Resuming also ends a Retry-After hold: the operator says go.
		err := tx.QueryRow(ctx, `UPDATE sinks SET status = $2, updated_at = now(),
			hold_until = CASE WHEN $2 = 'active' THEN NULL ELSE hold_until END WHERE name = $1 RETURNING id`, name, status).Scan(&id)
		if err != nil {
			return err
		}
		if !paused {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(id))
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("set sink %s %s: %w", name, status, err)
	}
	return nil
}

// ListSinksUsingEndpoint names the sinks that deliver to an endpoint.
func (s *Store) ListSinksUsingEndpoint(ctx context.Context, endpoint string) ([]string, error) {
	return s.names(ctx, `SELECT name FROM sinks WHERE config->>'endpoint' = $1 ORDER BY name`, endpoint)
}

func (s *Store) names(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sink names: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list sink names: %w", err)
	}
	return out, nil
}
