package replication

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// knownTypes are the OIDs pgtype registers by default; AppendValue renders
// them directly.
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
	types map[uint32]typeRender
}

func newCatalog(pool *pgxpool.Pool) *pgCatalog {
	return &pgCatalog{pool: pool, types: map[uint32]typeRender{}}
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

// renderTypes resolves domains to their base type and finds the element
// type of arrays pgtype does not know (arrays of enums, say). Other
// unknown types render as strings.
func (c *pgCatalog) renderTypes(ctx context.Context, oids []uint32) ([]typeRender, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []uint32
	for _, oid := range oids {
		if _, ok := c.types[oid]; !ok && !knownTypes[oid] {
			missing = append(missing, oid)
		}
	}
	if len(missing) > 0 {
		rows, err := c.pool.Query(ctx, `
			SELECT t.oid, t.typtype::text, t.typcategory::text, t.typelem,
			       COALESCE(b.oid, 0), COALESCE(b.typelem, 0), COALESCE(b.typcategory::text, '')
			FROM pg_type t LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
			WHERE t.oid = ANY($1)`, missing)
		if err != nil {
			return nil, fmt.Errorf("query pg_type: %w", err)
		}
		for rows.Next() {
			var oid, elem, base, baseElem uint32
			var typtype, cat, baseCat string
			if err := rows.Scan(&oid, &typtype, &cat, &elem, &base, &baseElem, &baseCat); err != nil {
				return nil, fmt.Errorf("scan pg_type: %w", err)
			}
			r := typeRender{oid: oid}
			switch {
			case typtype == "d" && baseCat == "A":
				r = typeRender{arrayOf: baseElem}
			case typtype == "d":
				r = typeRender{oid: base}
			case cat == "A" && elem != 0:
				r = typeRender{arrayOf: elem}
			}
			c.types[oid] = r
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("query pg_type: %w", err)
		}
	}
	out := make([]typeRender, len(oids))
	for i, oid := range oids {
		if r, ok := c.types[oid]; ok {
			out[i] = r
		} else {
			out[i] = typeRender{oid: oid}
		}
	}
	return out, nil
}
