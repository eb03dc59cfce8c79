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

// Resolution is what the sinks' table patterns mean in the source
// database at one moment. Tables come and go while walhook runs, so only
// a named table that exists without a way to group its rows is an error
// (the user can fix it now); a missing table is a warning, and the table
// is picked up once it exists.
type Resolution struct {
	// Tables are the capturable tables, sorted by name.
	Tables []Table
	// Schemas are the schemas a sink takes whole ("schema.*") in which
	// every table is capturable, sorted. Only these may be published with
	// FOR TABLES IN SCHEMA: Postgres refuses UPDATE and DELETE on a
	// published table without a replica identity, so a schema holding
	// such a table is published table by table instead.
	Schemas []string
	// Warnings are per sink name: tables that do not exist (yet), and
	// tables a "schema.*" pattern matched that have no primary key.
	Warnings map[string][]string
	// Missing are the named tables that do not exist, as the sinks name them.
	Missing []string
	// Errors are named tables that exist without a primary key and without
	// group_by: refused when a sink is created or walhook starts.
	Errors []error
}

// Err joins the resolution's errors, or is nil.
func (r *Resolution) Err() error { return errors.Join(r.Errors...) }

// Names returns the tables as "schema.table".
func (r *Resolution) Names() []string {
	out := make([]string, len(r.Tables))
	for i, t := range r.Tables {
		out[i] = t.String()
	}
	return out
}

// ResolveTables expands the sinks' tables ("schema.*" included, the state
// schema excluded) into the tables that exist and have a primary key (or
// group_by in the sink). Problems are reported in the resolution, each
// naming the sink and the table; the error is only for failed queries.
func ResolveTables(ctx context.Context, pool *pgxpool.Pool, sinks []*sink.Sink, stateSchema string) (*Resolution, error) {
	res := &Resolution{Warnings: map[string][]string{}}
	seen := map[string]Table{}
	wild := map[string][]catalogTable{} // schemas taken whole, with their tables
	warn := func(s *sink.Sink, format string, args ...any) {
		res.Warnings[s.Name] = append(res.Warnings[s.Name], fmt.Sprintf(format, args...))
	}
	byPattern, err := lookupTables(ctx, pool, sinks, stateSchema)
	if err != nil {
		return nil, fmt.Errorf("resolve the sinks' tables: %w", err)
	}
	for _, s := range sinks {
		for _, name := range s.Config.Tables {
			schema, table, _ := strings.Cut(name, ".")
			found := byPattern[name]
			if table == "*" && schema != stateSchema {
				wild[schema] = found
			}
			if len(found) == 0 && table != "*" {
				res.Missing = append(res.Missing, name)
				warn(s, "table %s does not exist (yet); it is captured once it is created", name)
			}
			for _, t := range found {
				_, grouped := s.Config.GroupBy[t.String()]
				switch {
				case t.hasPK || grouped:
					seen[t.String()] = t.Table
				case table == "*":
					warn(s, "table %s has no primary key and is not captured; add one or set group_by for it", t)
				default:
					res.Errors = append(res.Errors, fmt.Errorf("sink %s: table %s has no primary key; add one or set group_by for it", s.Name, t))
				}
			}
		}
	}
	for _, t := range seen {
		res.Tables = append(res.Tables, t)
	}
	slices.SortFunc(res.Tables, func(a, b Table) int { return strings.Compare(a.String(), b.String()) })
	for schema, tables := range wild {
		if !slices.ContainsFunc(tables, func(t catalogTable) bool { _, ok := seen[t.String()]; return !ok }) {
			res.Schemas = append(res.Schemas, schema)
		}
	}
	slices.Sort(res.Schemas)
	return res, nil
}

// catalogTable is a table as lookupTables finds it.
type catalogTable struct {
	Table
	hasPK bool
}

// lookupTables finds, in one query whatever the number of sinks, the
// tables (not partitions) each pattern ("schema.table" or "schema.*")
// names, keyed by the pattern. A "schema.*" leaves out unlogged tables,
// which Postgres cannot publish.
func lookupTables(ctx context.Context, pool *pgxpool.Pool, sinks []*sink.Sink, stateSchema string) (map[string][]catalogTable, error) {
	var schemas, names []string
	seen := map[string]bool{}
	for _, s := range sinks {
		for _, p := range s.Config.Tables {
			if seen[p] {
				continue
			}
			seen[p] = true
			schema, table, _ := strings.Cut(p, ".")
			schemas, names = append(schemas, schema), append(names, table)
		}
	}
	out := map[string][]catalogTable{}
	if len(schemas) == 0 {
		return out, nil
	}
	rows, err := pool.Query(ctx, `SELECT p.schema || '.' || p.name, n.nspname, c.relname, c.relkind = 'p',
		EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
		FROM unnest($1::text[], $2::text[]) AS p(schema, name)
		JOIN pg_namespace n ON n.nspname = p.schema
		JOIN pg_class c ON c.relnamespace = n.oid
		WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> $3
		  AND (p.name = '*' OR c.relname = p.name)
		  AND (p.name <> '*' OR c.relpersistence = 'p')
		ORDER BY 1, c.relname`, schemas, names, stateSchema)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var pattern string
		var t catalogTable
		if err := rows.Scan(&pattern, &t.Schema, &t.Name, &t.Partitioned, &t.hasPK); err != nil {
			return nil, err
		}
		out[pattern] = append(out[pattern], t)
	}
	return out, rows.Err()
}

// PublishesSchemas reports whether the publication can take whole schemas
// (FOR TABLES IN SCHEMA): Postgres 15 or later, and a superuser, which
// Postgres requires for it. Otherwise tables are published one by one.
func PublishesSchemas(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var ok bool
	err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int >= 150000
		AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("database: check publication features: %w", err)
	}
	return ok, nil
}

// SyncPublication creates the publication if missing and makes it publish
// exactly schemas (whole, FOR TABLES IN SCHEMA) and, one by one, the
// tables outside them, in one transaction, so no change falls between an
// old and a new membership. A table in a schema published whole is
// streamed from its creation on; a table published by name only once a
// sync after its creation added it. publish_via_partition_root is set so
// partitioned tables arrive under their root's name. schemas must be empty
// unless PublishesSchemas.
func SyncPublication(ctx context.Context, pool *pgxpool.Pool, publication string, tables []Table, schemas []string) error {
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
	curTables, err := publicationMembers(ctx, pool, publication, `
		SELECT n.nspname, c.relname FROM pg_publication p
		JOIN pg_publication_rel pr ON pr.prpubid = p.oid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1`)
	if err != nil {
		return err
	}
	curSchemas := map[string]bool{}
	var hasSchemas bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL`).Scan(&hasSchemas); err != nil {
		return fmt.Errorf("publication %s: %w", publication, err)
	}
	if hasSchemas {
		if curSchemas, err = publicationMembers(ctx, pool, publication, `
			SELECT n.nspname, '' FROM pg_publication p
			JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid
			JOIN pg_namespace n ON n.oid = pn.pnnspid
			WHERE p.pubname = $1`); err != nil {
			return err
		}
	}
	wantSchemas := map[string]bool{}
	for _, s := range schemas {
		wantSchemas[pgx.Identifier{s}.Sanitize()] = true
	}
	wantTables := map[string]bool{}
	for _, t := range tables {
		if !slices.Contains(schemas, t.Schema) {
			wantTables[pgx.Identifier{t.Schema, t.Name}.Sanitize()] = true
		}
	}
	var stmts []string
	if drop := missingFrom(curTables, wantTables); len(drop) > 0 {
		stmts = append(stmts, `ALTER PUBLICATION `+pub+` DROP TABLE `+strings.Join(drop, ", "))
	}
	if drop := missingFrom(curSchemas, wantSchemas); len(drop) > 0 {
		stmts = append(stmts, `ALTER PUBLICATION `+pub+` DROP TABLES IN SCHEMA `+strings.Join(drop, ", "))
	}
	if add := missingFrom(wantSchemas, curSchemas); len(add) > 0 {
		stmts = append(stmts, `ALTER PUBLICATION `+pub+` ADD TABLES IN SCHEMA `+strings.Join(add, ", "))
	}
	if add := missingFrom(wantTables, curTables); len(add) > 0 {
		stmts = append(stmts, `ALTER PUBLICATION `+pub+` ADD TABLE `+strings.Join(add, ", "))
	}
	if len(stmts) == 0 {
		return nil
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("publication %s: %w", publication, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("publication %s: %s: %w", publication, strings.TrimPrefix(q, "ALTER PUBLICATION "+pub+" "), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("publication %s: commit: %w", publication, err)
	}
	return nil
}

// PublishedTables returns the tables the publication streams now, as
// "schema.table", those of schemas published whole included: a table is
// captured only once it is published, so callers wait for it here.
func PublishedTables(ctx context.Context, pool *pgxpool.Pool, publication string) (map[string]bool, error) {
	rows, err := pool.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("publication %s: list tables: %w", publication, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("publication %s: list tables: %w", publication, err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// publicationMembers runs a membership query of publication whose rows
// are (schema, table) and returns the quoted names ("schema" alone when
// table is empty).
func publicationMembers(ctx context.Context, pool *pgxpool.Pool, publication, q string) (map[string]bool, error) {
	rows, err := pool.Query(ctx, q, publication)
	if err != nil {
		return nil, fmt.Errorf("publication %s: list members: %w", publication, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var s, t string
		if err := rows.Scan(&s, &t); err != nil {
			return nil, fmt.Errorf("publication %s: list members: %w", publication, err)
		}
		if t == "" {
			out[pgx.Identifier{s}.Sanitize()] = true
		} else {
			out[pgx.Identifier{s, t}.Sanitize()] = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("publication %s: list members: %w", publication, err)
	}
	return out, nil
}

// missingFrom returns the keys of a that b lacks, sorted.
func missingFrom(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
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
