package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
)

// WebhookSourceRow is a webhook source as stored.
type WebhookSourceRow struct {
	ID           int64
	Name         string
	MaxBodyBytes int64
	CreatedAt    time.Time
	// Sinks are the names of the sinks subscribed to it.
	Sinks []string
}

const sourceSelect = `
	SELECT w.id, w.name, w.max_body_bytes, w.created_at,
		COALESCE((SELECT array_agg(s.name ORDER BY s.name) FROM subscriptions x JOIN sinks s ON s.id = x.sink_id
			WHERE x.emitter = '` + WebhookEmitter + `' || w.name), '{}')
	FROM webhook_sources w`

func scanSource(row pgx.Row) (*WebhookSourceRow, error) {
	var w WebhookSourceRow
	err := row.Scan(&w.ID, &w.Name, &w.MaxBodyBytes, &w.CreatedAt, &w.Sinks)
	return &w, err
}

// ListWebhookSources lists webhook sources by name.
func (s *Store) ListWebhookSources(ctx context.Context) ([]*WebhookSourceRow, error) {
	rows, err := s.pool.Query(ctx, sourceSelect+` ORDER BY w.name`)
	if err != nil {
		return nil, fmt.Errorf("list webhook sources: %w", err)
	}
	defer rows.Close()
	var out []*WebhookSourceRow
	for rows.Next() {
		w, err := scanSource(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook sources: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// GetWebhookSource returns one webhook source by name, or ErrNotFound, with
// the sinks subscribed to it (a subquery over subscriptions). The ingest
// path needs only the size limit: GetWebhookSourceLimit.
func (s *Store) GetWebhookSource(ctx context.Context, name string) (*WebhookSourceRow, error) {
	w, err := scanSource(s.pool.QueryRow(ctx, sourceSelect+` WHERE w.name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("webhook source %q: %w", name, err)
	}
	return w, nil
}

// GetWebhookSourceLimit returns a webhook source's max_body_bytes, or
// ErrNotFound. The ingest path calls it on every request: it is one index
// lookup.
func (s *Store) GetWebhookSourceLimit(ctx context.Context, name string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT max_body_bytes FROM webhook_sources WHERE name = $1`, name).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("webhook source %q: %w", name, err)
	}
	return n, nil
}

// CreateWebhookSource inserts a new webhook source (ErrExists when the
// name is taken); PutWebhookSource is the config-as-code upsert.
func (s *Store) CreateWebhookSource(ctx context.Context, w config.WebhookSource) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO webhook_sources (name, max_body_bytes) VALUES ($1, $2)`, w.Name, w.MaxBodyBytes)
	if IsUniqueViolation(err) {
		return fmt.Errorf("webhook source %q: %w", w.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create webhook source %s: %w", w.Name, err)
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

// DeleteWebhookSource removes a webhook source. The caller checks first
// that no sink is subscribed to it. Messages already queued stay queued.
func (s *Store) DeleteWebhookSource(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM webhook_sources WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete webhook source %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	return nil
}

// SourceCounts are the messages of one webhook source per subscribed
// sink, still in the outbox.
type SourceCounts struct {
	Sink           string
	Queued, Failed int64
	// Delivered counts the sink's bounded delivered history.
	Delivered      int64
	LastReceivedAt *time.Time
}

// CountWebhookSourceMessages counts a webhook source's queued messages per
// subscribed sink. Webhook messages are recognised by their key: group and
// dedupe key are both "{source}.{hash}" and their commit LSN is 0 (change
// groups always contain a ':').
func (s *Store) CountWebhookSourceMessages(ctx context.Context, name string) ([]SourceCounts, error) {
	pattern := likeEscape(name) + `.%`
	rows, err := s.pool.Query(ctx, `
		SELECT s.name,
			(SELECT count(*) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2 AND o.failed_at IS NULL),
			(SELECT count(*) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2 AND o.failed_at IS NOT NULL),
			(SELECT max(o.created_at) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2),
			(SELECT count(*) FROM delivered d WHERE d.sink_id = s.id AND d.commit_lsn = 0 AND d.group_key LIKE $2
				AND position(':' in d.group_key) = 0)
		FROM subscriptions x JOIN sinks s ON s.id = x.sink_id
		WHERE x.emitter = $1
		ORDER BY s.name`, WebhookEmitter+name, pattern)
	if err != nil {
		return nil, fmt.Errorf("count messages of webhook source %s: %w", name, err)
	}
	defer rows.Close()
	var out []SourceCounts
	for rows.Next() {
		var c SourceCounts
		if err := rows.Scan(&c.Sink, &c.Queued, &c.Failed, &c.LastReceivedAt, &c.Delivered); err != nil {
			return nil, fmt.Errorf("count messages of webhook source %s: %w", name, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func likeEscape(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '%' || c == '_' || c == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}
