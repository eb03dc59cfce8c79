// Package migrations holds walhook's state schema as embedded SQL and applies
// it with goose. The SQL is unqualified; Up runs it with search_path set to
// the configured schema.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed sql/*.sql
var files embed.FS

// Up creates the schema if needed and applies every pending migration. It
// holds a Postgres advisory lock for the whole run, so processes starting
// together migrate one after the other instead of failing.
func Up(ctx context.Context, url, schema string) (applied int, err error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return 0, fmt.Errorf("migrate: parse state url: %w", err)
	}
	cfg.RuntimeParams["search_path"] = schema
	db := stdlib.OpenDB(*cfg)
	defer db.Close()

	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: connect to state database: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(hashtext('walhook.migrate'), hashtext($1))`, schema); err != nil {
		return 0, fmt.Errorf("migrate: take lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('walhook.migrate'), hashtext($1))`, schema) //nolint:errcheck // the session ends right after

	if _, err := conn.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()); err != nil {
		return 0, fmt.Errorf("migrate: create schema %q: %w", schema, err)
	}
	res, err := provider(db)
	if err != nil {
		return 0, err
	}
	results, err := res.Up(ctx)
	if err != nil {
		return len(results), fmt.Errorf("migrate schema %q: %w", schema, err)
	}
	return len(results), nil
}

func provider(db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		return nil, fmt.Errorf("migrate: embedded files: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	return p, nil
}
