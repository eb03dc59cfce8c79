package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/sink"
)

// Emitter prefixes of subscriptions.
const (
	TableEmitter   = "table:"
	WebhookEmitter = "webhook:"
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

func scanSink(row pgx.Row) (*SinkRow, error) {
	var s sink.Sink
	var r SinkRow
	var raw []byte
	var emitters []string
	if err := row.Scan(&s.ID, &s.UUID, &s.Name, &raw, &s.Paused, &r.CreatedAt, &r.UpdatedAt, &emitters); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &s.Config); err != nil {
		return nil, fmt.Errorf("sink %s: stored config: %w", s.Name, err)
	}
	s.Config.Name = s.Name
	if s.Config.Kind == "" {
		// Stored before sinks had kinds: every one of them was a webhook.
		s.Config.Kind = config.KindWebhook
	}
	s.Config.Tables, s.Config.WebhookSources = nil, nil
	for _, e := range emitters {
		if t, ok := strings.CutPrefix(e, TableEmitter); ok {
			s.Config.Tables = append(s.Config.Tables, t)
		} else if w, ok := strings.CutPrefix(e, WebhookEmitter); ok {
			s.Config.WebhookSources = append(s.Config.WebhookSources, w)
		}
	}
	r.Sink = &s
	return &r, nil
}

// Sinks lists every sink, by name.
func (s *Store) Sinks(ctx context.Context) ([]*SinkRow, error) {
	rows, err := s.pool.Query(ctx, sinkSelect+` ORDER BY s.name`)
	if err != nil {
		return nil, fmt.Errorf("list sinks: %w", err)
	}
	defer rows.Close()
	var out []*SinkRow
	for rows.Next() {
		r, err := scanSink(rows)
		if err != nil {
			return nil, fmt.Errorf("list sinks: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Sink returns one sink by name, or ErrNotFound.
func (s *Store) Sink(ctx context.Context, name string) (*SinkRow, error) {
	r, err := scanSink(s.pool.QueryRow(ctx, sinkSelect+` WHERE s.name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w", name, err)
	}
	return r, nil
}

// SinkModels returns the sinks as the router and delivery use them.
func (s *Store) SinkModels(ctx context.Context) ([]*sink.Sink, error) {
	rows, err := s.Sinks(ctx)
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
	settings := cfg
	settings.Tables, settings.WebhookSources = nil, nil
	raw, err := json.Marshal(settings)
	if err != nil {
		return false, fmt.Errorf("sink %s: encode: %w", cfg.Name, err)
	}
	var emitters []string
	for _, t := range cfg.Tables {
		emitters = append(emitters, TableEmitter+t)
	}
	for _, w := range cfg.WebhookSources {
		emitters = append(emitters, WebhookEmitter+w)
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

// Endpoint is an HTTP endpoint as stored: encrypted headers stay sealed
// here; only the delivery path opens them.
type Endpoint struct {
	ID                   int64
	Name                 string
	URL                  string
	Headers              map[string]string
	EncryptedHeaders     []byte
	EncryptedHeaderNames []string
	CreatedAt, UpdatedAt time.Time
}

const endpointSelect = `SELECT id, name, url, headers, encrypted_headers, encrypted_header_names, created_at, updated_at FROM http_endpoints`

func scanEndpoint(row pgx.Row) (*Endpoint, error) {
	var e Endpoint
	err := row.Scan(&e.ID, &e.Name, &e.URL, &e.Headers, &e.EncryptedHeaders, &e.EncryptedHeaderNames, &e.CreatedAt, &e.UpdatedAt)
	return &e, err
}

// Endpoints lists endpoints by name.
func (s *Store) Endpoints(ctx context.Context) ([]*Endpoint, error) {
	rows, err := s.pool.Query(ctx, endpointSelect+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list http endpoints: %w", err)
	}
	defer rows.Close()
	var out []*Endpoint
	for rows.Next() {
		e, err := scanEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("list http endpoints: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Endpoint returns one endpoint by name, or ErrNotFound.
func (s *Store) Endpoint(ctx context.Context, name string) (*Endpoint, error) {
	e, err := scanEndpoint(s.pool.QueryRow(ctx, endpointSelect+` WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("http endpoint %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("http endpoint %q: %w", name, err)
	}
	return e, nil
}

// PutEndpoint creates or replaces an endpoint. sealed is the encrypted
// headers (nil when there are none).
func (s *Store) PutEndpoint(ctx context.Context, e *Endpoint) error {
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	if e.EncryptedHeaderNames == nil {
		e.EncryptedHeaderNames = []string{}
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO http_endpoints (name, url, headers, encrypted_headers, encrypted_header_names) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, headers = EXCLUDED.headers,
			encrypted_headers = EXCLUDED.encrypted_headers, encrypted_header_names = EXCLUDED.encrypted_header_names, updated_at = now()`,
		e.Name, e.URL, e.Headers, e.EncryptedHeaders, e.EncryptedHeaderNames)
	if err != nil {
		return fmt.Errorf("save http endpoint %s: %w", e.Name, err)
	}
	return nil
}

// PutWebhookSource creates or updates a webhook source.
func (s *Store) PutWebhookSource(ctx context.Context, w config.WebhookSource) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO webhook_sources (name, max_body_bytes) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET max_body_bytes = EXCLUDED.max_body_bytes`, w.Name, w.MaxBodyBytes)
	if err != nil {
		return fmt.Errorf("save webhook source %s: %w", w.Name, err)
	}
	return nil
}
