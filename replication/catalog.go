package replication

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/replication/pgtext"
)

// knownTypes are the OIDs pgtype registers by default; pgtext.AppendJSON
// renders them directly.
var knownTypes = func() map[uint32]bool {
	m := pgtype.NewMap()
	known := map[uint32]bool{}
	for oid := uint32(1); oid < 10000; oid++ {
		if _, ok := m.TypeForOID(oid); ok {
			known[oid] = true
		}
	}
	return known
}()

// pgCatalog reads the source database's catalog, caching type answers.
type pgCatalog struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	types map[uint32]TypeRender
}

func newCatalog(pool *pgxpool.Pool) *pgCatalog {
	return &pgCatalog{pool: pool, types: map[uint32]TypeRender{}}
}

func (c *pgCatalog) primaryKey(ctx context.Context, relID uint32) ([]string, error) {
	rows, err := c.pool.Query(ctx, `
		SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary
		ORDER BY array_position(i.indkey::int2[], a.attnum)`, relID)
	if err != nil {
		return nil, fmt.Errorf("query primary key: %w", err)
	}
	var cols []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		cols = append(cols, name)
	}
	return cols, rows.Err()
}

// renderTypes resolves types, caching the answers per OID.
func (c *pgCatalog) renderTypes(ctx context.Context, oids []uint32) ([]TypeRender, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []uint32
	for _, oid := range oids {
		if _, ok := c.types[oid]; !ok {
			missing = append(missing, oid)
		}
	}
	if len(missing) > 0 {
		found, err := ResolveTypes(ctx, c.pool, missing)
		if err != nil {
			return nil, err
		}
		for i, oid := range missing {
			c.types[oid] = found[i]
		}
	}
	out := make([]TypeRender, len(oids))
	for i, oid := range oids {
		out[i] = c.types[oid]
	}
	return out, nil
}

// TypeRender says how a column's text becomes JSON: by pgtext.AppendJSON
// with OID, or, for an array of a type pgtype does not know, by
// pgtext.AppendArrayJSON with ArrayOf. Backfills use it too, so a read renders byte for byte like
// a live change of the same row.
type TypeRender struct {
	OID     uint32 // the OID pgtext.AppendJSON knows (a domain's base type)
	ArrayOf uint32 // non-zero: an array of this element type
}

// Append renders one column value given in Postgres text format.
func (r TypeRender) Append(dst, text []byte) []byte {
	if r.ArrayOf != 0 {
		return pgtext.AppendArrayJSON(dst, r.ArrayOf, text)
	}
	return pgtext.AppendJSON(dst, r.OID, text)
}

// ResolveTypes resolves domains to their base type and finds the element
// type of arrays pgtype does not know (arrays of enums, say). Other
// unknown types render as strings.
func ResolveTypes(ctx context.Context, pool *pgxpool.Pool, oids []uint32) ([]TypeRender, error) {
	out := make([]TypeRender, len(oids))
	var missing []uint32
	for i, oid := range oids {
		out[i] = TypeRender{OID: oid}
		if !knownTypes[oid] {
			missing = append(missing, oid)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	rows, err := pool.Query(ctx, `
		SELECT t.oid, t.typtype::text, t.typcategory::text, t.typelem,
		       COALESCE(b.oid, 0), COALESCE(b.typelem, 0), COALESCE(b.typcategory::text, '')
		FROM pg_type t LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
		WHERE t.oid = ANY($1)`, missing)
	if err != nil {
		return nil, fmt.Errorf("query pg_type: %w", err)
	}
	defer rows.Close()
	found := map[uint32]TypeRender{}
	for rows.Next() {
		var oid, elem, base, baseElem uint32
		var typtype, cat, baseCat string
		if err := rows.Scan(&oid, &typtype, &cat, &elem, &base, &baseElem, &baseCat); err != nil {
			return nil, fmt.Errorf("scan pg_type: %w", err)
		}
		switch {
		case typtype == "d" && baseCat == "A":
			found[oid] = TypeRender{ArrayOf: baseElem}
		case typtype == "d":
			found[oid] = TypeRender{OID: base}
		case cat == "A" && elem != 0:
			found[oid] = TypeRender{ArrayOf: elem}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query pg_type: %w", err)
	}
	for i, oid := range oids {
		if r, ok := found[oid]; ok {
			out[i] = r
		}
	}
	return out, nil
}
