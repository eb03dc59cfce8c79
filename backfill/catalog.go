package backfill

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/sink"
)

// tableInfo is what a backfill needs to know of a table: its columns as
// pgoutput sends them (so read messages have the shape of live changes),
// how each renders, and its primary key, which orders the pages.
type tableInfo struct {
	schema, name string
	rel          *sink.Relation
	render       []replication.TypeRender
	// pk are the primary-key columns in key order: their positions in
	// rel.Columns (-1 for a key column pgoutput does not send) and their
	// names and types (format_type, no typmod) for the keyset condition.
	pk      []int
	pkNames []string
	pkTypes []string
	// types are the column types (format_type) by name, for a partial
	// backfill's `from` cast.
	types map[string]string
}

// errNoPrimaryKey is a table a backfill cannot page through.
var errNoPrimaryKey = errors.New("has no primary key; a backfill pages through a table in primary-key order")

// describe reads a table's columns, keys and rendering from the source
// catalog. Key flags follow the decoder: the replica identity's columns,
// or the primary key with REPLICA IDENTITY FULL or DEFAULT, so read
// messages group exactly like the table's live changes.
func describe(ctx context.Context, pool *pgxpool.Pool, schema, table string) (*tableInfo, error) {
	qualified := schema + "." + table
	var relid uint32
	var ident string
	err := pool.QueryRow(ctx, `
		SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, schema, table).Scan(&relid, &ident)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: table %s does not exist", ErrInvalid, qualified)
	}
	if err != nil {
		return nil, fmt.Errorf("describe %s: %w", qualified, err)
	}
	// Columns as pgoutput sends them: not dropped, not generated.
	rows, err := pool.Query(ctx, `
		SELECT a.attname, a.atttypid, format_type(a.atttypid, NULL), a.attgenerated <> '',
			COALESCE(array_position(pk.indkey::int2[], a.attnum) - array_lower(pk.indkey::int2[], 1) + 1, 0),
			COALESCE(a.attnum = ANY(ri.indkey::int2[]), false)
		FROM pg_attribute a
		LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
		LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, relid)
	if err != nil {
		return nil, fmt.Errorf("describe %s: columns: %w", qualified, err)
	}
	info := &tableInfo{schema: schema, name: table, rel: &sink.Relation{Schema: schema, Table: table, FullIdentity: ident == "f"}, types: map[string]string{}}
	type pkCol struct {
		pos  int
		name string
		typ  string
	}
	var pks []pkCol
	var oids []uint32
	for rows.Next() {
		var name, typ string
		var oid uint32
		var generated, inRI bool
		var pkPos int
		if err := rows.Scan(&name, &oid, &typ, &generated, &pkPos, &inRI); err != nil {
			rows.Close()
			return nil, fmt.Errorf("describe %s: columns: %w", qualified, err)
		}
		info.types[name] = typ
		if !generated {
			key := pkPos > 0
			if ident == "i" {
				key = inRI
			} else if ident == "n" {
				key = false
			}
			info.rel.Columns = append(info.rel.Columns, sink.Column{Name: name, TypeOID: oid, Key: key})
			oids = append(oids, oid)
		}
		if pkPos > 0 {
			pks = append(pks, pkCol{pos: pkPos, name: name, typ: typ})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe %s: columns: %w", qualified, err)
	}
	if len(pks) == 0 {
		return nil, fmt.Errorf("table %s %w", qualified, errNoPrimaryKey)
	}
	// Key order is the index's, not the table's.
	info.pk = make([]int, len(pks))
	info.pkNames = make([]string, len(pks))
	info.pkTypes = make([]string, len(pks))
	for _, k := range pks {
		info.pkNames[k.pos-1] = k.name
		info.pkTypes[k.pos-1] = k.typ
		info.pk[k.pos-1] = info.rel.ColumnIndex(k.name)
	}
	if info.render, err = replication.ResolveTypes(ctx, pool, oids); err != nil {
		return nil, fmt.Errorf("describe %s: %w", qualified, err)
	}
	return info, nil
}

// splitTable splits "schema.table".
func splitTable(name string) (schema, table string) {
	schema, table, _ = strings.Cut(name, ".")
	return schema, table
}
