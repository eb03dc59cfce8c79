package outbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/secrets"
)

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

// ListEndpoints lists endpoints by name.
func (s *Store) ListEndpoints(ctx context.Context) ([]*Endpoint, error) {
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

// GetEndpoint returns one endpoint by name, or ErrNotFound.
func (s *Store) GetEndpoint(ctx context.Context, name string) (*Endpoint, error) {
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

// CreateEndpoint inserts a new endpoint (ErrExists when the name is
// taken); PutEndpoint is the upsert that config-as-code uses.
func (s *Store) CreateEndpoint(ctx context.Context, e *Endpoint) error {
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	if e.EncryptedHeaderNames == nil {
		e.EncryptedHeaderNames = []string{}
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO http_endpoints (name, url, headers, encrypted_headers, encrypted_header_names) VALUES ($1, $2, $3, $4, $5)`,
		e.Name, e.URL, e.Headers, e.EncryptedHeaders, e.EncryptedHeaderNames)
	if IsUniqueViolation(err) {
		return fmt.Errorf("http endpoint %q: %w", e.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create http endpoint %s: %w", e.Name, err)
	}
	return nil
}

// DeleteEndpoint removes an endpoint. The caller checks first that no
// sink uses it (ListSinksUsingEndpoint): a sink without its endpoint stops
// delivering.
func (s *Store) DeleteEndpoint(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM http_endpoints WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete http endpoint %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("http endpoint %q: %w", name, ErrNotFound)
	}
	return nil
}

// SealEndpoint is the one way a configured endpoint becomes its stored
// form, from the config file and the API alike: encrypted headers sealed
// with box, their names kept in clear so the API can list them masked.
func SealEndpoint(box *secrets.Box, e config.HTTPEndpoint) (*Endpoint, error) {
	sealed, err := box.SealMap(e.EncryptedHeaders)
	if err != nil {
		return nil, fmt.Errorf("seal encrypted headers: %w", err)
	}
	return &Endpoint{
		Name: e.Name, URL: e.URL, Headers: e.Headers, EncryptedHeaders: sealed,
		EncryptedHeaderNames: slices.Sorted(maps.Keys(e.EncryptedHeaders)),
	}, nil
}
