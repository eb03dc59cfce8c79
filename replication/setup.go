package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/sink"
)

// CheckSource verifies what logical replication needs before anything is
// created: wal_level=logical and a role with REPLICATION.
func CheckSource(ctx context.Context, pool *pgxpool.Pool) error {
	var walLevel string
	if err := pool.QueryRow(ctx, `SHOW wal_level`).Scan(&walLevel); err != nil {
		return fmt.Errorf("database: read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("database: wal_level is %q, walhook needs \"logical\" (set wal_level = logical in postgresql.conf and restart Postgres)", walLevel)
	}
	var ok bool
	var role string
	if err := pool.QueryRow(ctx, `SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&role, &ok); err != nil {
		return fmt.Errorf("database: read role: %w", err)
	}
	if !ok {
		return fmt.Errorf("database: role %q lacks the REPLICATION attribute (ALTER ROLE %s REPLICATION)", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// Table is a source table resolved from the sinks' subscriptions.
type Table struct {
	Schema, Name string
	Partitioned  bool
}

func (t Table) String() string { return t.Schema + "." + t.Name }

// ResolveTables expands the sinks' tables ("schema.*" included, the state
// schema excluded) and checks each exists and has a primary key unless
// the sink groups it with group_by. Every problem is reported, each
// naming the sink and the table.
func ResolveTables(ctx context.Context, pool *pgxpool.Pool, sinks []*sink.Sink, stateSchema string) ([]Table, error) {
	seen := map[string]Table{}
	var errs []error
	for _, s := range sinks {
		for _, name := range s.Config.Tables {
			schema, table, _ := strings.Cut(name, ".")
			var found []Table
			var hasPK []bool
			q := `SELECT n.nspname, c.relname, c.relkind = 'p',
				EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
				  AND ($2 = '*' OR c.relname = $2) AND n.nspname <> $3
				ORDER BY c.relname`
			rows, err := pool.Query(ctx, q, schema, table, stateSchema)
			if err != nil {
				return nil, fmt.Errorf("resolve tables of sink %s: %w", s.Name, err)
			}
			for rows.Next() {
				var t Table
				var pk bool
				if err := rows.Scan(&t.Schema, &t.Name, &t.Partitioned, &pk); err != nil {
					rows.Close()
					return nil, fmt.Errorf("resolve tables of sink %s: %w", s.Name, err)
				}
				found = append(found, t)
				hasPK = append(hasPK, pk)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("resolve tables of sink %s: %w", s.Name, err)
			}
			if len(found) == 0 && table != "*" {
				errs = append(errs, fmt.Errorf("sink %s: table %s does not exist", s.Name, name))
			}
			for i, t := range found {
				_, grouped := s.Config.GroupBy[t.String()]
				if !hasPK[i] && !grouped {
					errs = append(errs, fmt.Errorf("sink %s: table %s has no primary key; add one or set group_by for it", s.Name, t))
					continue
				}
				seen[t.String()] = t
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	out := make([]Table, 0, len(seen))
	for _, t := range seen {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Table) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// SyncPublication creates the publication if missing and makes its table
// list exactly tables. publish_via_partition_root is set so partitioned
// tables arrive under their root's name.
func SyncPublication(ctx context.Context, pool *pgxpool.Pool, publication string, tables []Table) error {
	pub := pgx.Identifier{publication}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return fmt.Errorf("publication %s: %w", publication, err)
	}
	if !exists {
		if _, err := pool.Exec(ctx, `CREATE PUBLICATION `+pub+` WITH (publish_via_partition_root = true)`); err != nil && !isDuplicate(err) {
			return fmt.Errorf("create publication %s: %w", publication, err)
		}
	}
	rows, err := pool.Query(ctx, `
		SELECT n.nspname, c.relname FROM pg_publication p
		JOIN pg_publication_rel pr ON pr.prpubid = p.oid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1`, publication)
	if err != nil {
		return fmt.Errorf("publication %s: list tables: %w", publication, err)
	}
	current := map[string]bool{}
	for rows.Next() {
		var s, t string
		if err := rows.Scan(&s, &t); err != nil {
			rows.Close()
			return fmt.Errorf("publication %s: list tables: %w", publication, err)
		}
		current[pgx.Identifier{s, t}.Sanitize()] = true
	}
	rows.Close()
	want := map[string]bool{}
	var add, drop []string
	for _, t := range tables {
		id := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		want[id] = true
		if !current[id] {
			add = append(add, id)
		}
	}
	for id := range current {
		if !want[id] {
			drop = append(drop, id)
		}
	}
	if len(add) > 0 {
		if _, err := pool.Exec(ctx, `ALTER PUBLICATION `+pub+` ADD TABLE `+strings.Join(add, ", ")); err != nil {
			return fmt.Errorf("publication %s: add %s: %w", publication, strings.Join(add, ", "), err)
		}
	}
	if len(drop) > 0 {
		if _, err := pool.Exec(ctx, `ALTER PUBLICATION `+pub+` DROP TABLE `+strings.Join(drop, ", ")); err != nil {
			return fmt.Errorf("publication %s: drop %s: %w", publication, strings.Join(drop, ", "), err)
		}
	}
	return nil
}

// EnsureSlot creates the pgoutput slot if missing, and refuses a slot of
// another plugin or database.
func EnsureSlot(ctx context.Context, pool *pgxpool.Pool, slot string) error {
	var plugin, db string
	err := pool.QueryRow(ctx, `SELECT COALESCE(plugin, ''), COALESCE(database, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &db)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil && !isDuplicate(err) {
			return fmt.Errorf("create replication slot %s: %w", slot, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("replication slot %s: %w", slot, err)
	}
	var cur string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&cur); err != nil {
		return fmt.Errorf("replication slot %s: %w", slot, err)
	}
	if plugin != "pgoutput" || db != cur {
		return fmt.Errorf("replication slot %s exists for plugin %q on database %q; walhook needs a pgoutput slot on %q (choose another database.slot)", slot, plugin, db, cur)
	}
	return nil
}
