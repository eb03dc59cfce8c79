// Package backfill copies the rows of a sink's tables into its outbox as `read`
// messages (docs/reference.md#6-backfills-retention-and-the-slot), and replays
// retained changes.
//
// A backfill pages through each table in primary-key order (keyset pages
// whose size follows a query-time budget) on the leader, the process that
// streams the slot, because every page must meet the stream: it is read
// between two watermarks written into the WAL, and capture (outbox,
// backfill_hook.go) drops the rows that changed meanwhile and writes the
// rest, with the backfill's new position, in the same state transaction
// as the stream around them. The backfill pauses while its sink's backlog
// is large, so a huge table never floods the outbox.
//
// The functions here (Create, List, Get, Cancel, Replay) are what the
// HTTP API and `start: beginning` call; any process may call them. Runner
// does the work on the leader.
package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/sink"
)

// States of a backfill.
const (
	Running   = "running"
	Done      = "done"
	Cancelled = "cancelled"
	Failed    = "failed"
)

// ErrInvalid marks a request that cannot be carried out as asked (a table
// the sink does not subscribe to, a column without a from value, ...).
// The API answers it with 400.
var ErrInvalid = errors.New("invalid backfill")

// Backfill is a backfill as the API shows it.
type Backfill struct {
	ID    int64  `json:"id"`
	Sink  string `json:"sink"`
	State string `json:"state"`
	// Tables are the tables to copy, in order; until the leader resolves
	// them, the tables asked for (empty: all of the sink's).
	Tables []string `json:"tables"`
	// Table is the table being copied (running backfills only).
	Table         string    `json:"table,omitempty"`
	Column        string    `json:"column,omitempty"`
	From          *string   `json:"from,omitempty"`
	RowsProcessed int64     `json:"rows_processed"`
	RowsTotal     int64     `json:"rows_total"`
	Error         string    `json:"error,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`

	sinkID   int64
	tableIdx int
	resolved bool
	cursor   []string
}

// Request is the body of POST /api/sinks/{name}/backfills. Every field is
// optional: no tables means all of the sink's tables. Column and From go
// together: a partial backfill copies the rows where column >= from.
type Request struct {
	Tables []string `json:"tables,omitempty"`
	Column string   `json:"column,omitempty"`
	// From is a JSON string, number or boolean; it is compared as the
	// column's type (its text is cast).
	From json.RawMessage `json:"from,omitempty"`
}

// fromText turns the JSON from value into the text cast to the column's
// type; nil when absent.
func (r Request) fromText() (*string, error) {
	raw := strings.TrimSpace(string(r.From))
	if raw == "" || raw == "null" {
		return nil, nil
	}
	var v any
	d := json.NewDecoder(strings.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: from: %v", ErrInvalid, err)
	}
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case json.Number:
		s = x.String()
	case bool:
		s = fmt.Sprint(x)
	default:
		return nil, fmt.Errorf("%w: from must be a string, a number or a boolean", ErrInvalid)
	}
	return &s, nil
}

// fromRow shapes a stored backfill for the API.
func fromRow(r *outbox.BackfillRow) *Backfill {
	b := &Backfill{
		ID: r.ID, Sink: r.Sink, State: r.State, Tables: r.Tables, Column: r.Column, From: r.From,
		RowsProcessed: r.RowsProcessed, RowsTotal: r.RowsTotal, Error: r.Error, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		sinkID: r.SinkID, tableIdx: r.TableIdx, resolved: r.Resolved, cursor: r.Cursor,
	}
	if b.resolved && b.State == Running && b.tableIdx < len(b.Tables) {
		b.Table = b.Tables[b.tableIdx]
	}
	if b.Tables == nil {
		b.Tables = []string{}
	}
	return b
}

// Create starts a backfill of a sink. source, when not nil, is the source
// database: the tables are then resolved and checked now (existence,
// primary key, the partial column), so mistakes are reported to the
// caller; without it the leader resolves them and fails the backfill on
// a mistake. Errors wrap outbox.ErrNotFound (no such sink) or ErrInvalid.
func Create(ctx context.Context, store *outbox.Store, source *pgxpool.Pool, sinkName string, req Request) (*Backfill, error) {
	s, err := store.GetSink(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	from, err := req.fromText()
	if err != nil {
		return nil, err
	}
	if (req.Column == "") != (from == nil) {
		return nil, fmt.Errorf("%w: column and from go together (a partial backfill copies the rows where column >= from)", ErrInvalid)
	}
	for _, t := range req.Tables {
		schema, table, ok := config.SplitTable(t)
		if !ok {
			return nil, fmt.Errorf("%w: table %q: want schema.table", ErrInvalid, t)
		}
		if !slices.ContainsFunc(s.Config.Tables, func(p string) bool { return config.MatchTable(p, schema, table) }) {
			return nil, fmt.Errorf("%w: table %s is not one of sink %s's tables (%s)", ErrInvalid, t, s.Name, strings.Join(s.Config.Tables, ", "))
		}
	}
	if len(s.Config.Tables) == 0 {
		return nil, fmt.Errorf("%w: sink %s has no tables", ErrInvalid, s.Name)
	}
	var tables []string
	var total int64
	resolved := false
	if source != nil {
		if tables, total, err = resolve(ctx, source, store.Schema, s.Sink.Config, req.Tables, req.Column); err != nil {
			return nil, err
		}
		resolved = true
	} else {
		tables = req.Tables
	}
	id, err := store.CreateBackfill(ctx, outbox.NewBackfill{
		SinkID: s.ID, Tables: tables, Resolved: resolved, Column: req.Column, From: from, RowsTotal: total,
	})
	if err != nil {
		return nil, fmt.Errorf("create backfill of sink %s: %w", s.Name, err)
	}
	return Get(ctx, store, sinkName, id)
}

// resolve expands the asked tables (all of the sink's that exist when
// none) into existing tables with a primary key, checks the partial column exists in
// each, and estimates their rows.
func resolve(ctx context.Context, source *pgxpool.Pool, stateSchema string, sk config.Sink, asked []string, column string) ([]string, int64, error) {
	if len(asked) > 0 {
		sk.Tables = asked
	}
	sk.GroupBy = nil // a backfill needs a primary key even where group_by would do
	res, err := replication.ResolveTables(ctx, source, []*sink.Sink{{Name: sk.Name, Config: sk}}, stateSchema)
	if err != nil {
		return nil, 0, err
	}
	if err := res.Err(); err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// A table the sink names that does not exist yet has no rows to read:
	// a backfill of all the sink's tables (start: beginning, say) skips
	// it; one asked for by name is an error.
	if len(res.Missing) > 0 && len(asked) > 0 {
		return nil, 0, fmt.Errorf("%w: table %s does not exist", ErrInvalid, strings.Join(res.Missing, ", "))
	}
	var names []string
	var total int64
	for _, t := range res.Tables {
		if column != "" {
			info, err := describe(ctx, source, t.Schema, t.Name)
			if err != nil {
				return nil, 0, fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			if _, ok := info.types[column]; !ok {
				return nil, 0, fmt.Errorf("%w: column %s does not exist in table %s", ErrInvalid, column, t)
			}
		}
		n, err := estimateRows(ctx, source, t.Schema, t.Name)
		if err != nil {
			return nil, 0, err
		}
		names = append(names, t.String())
		total += n
	}
	if len(names) == 0 {
		return nil, 0, fmt.Errorf("%w: no table to backfill (the sink's tables: %s)", ErrInvalid, strings.Join(sk.Tables, ", "))
	}
	return names, total, nil
}

// estimateRows is the planner's row estimate of a table (its partitions
// summed); a table never analyzed is counted, for at most a few seconds.
func estimateRows(ctx context.Context, source *pgxpool.Pool, schema, table string) (int64, error) {
	ident := pgx.Identifier{schema, table}.Sanitize()
	var est float64
	err := source.QueryRow(ctx, `
		SELECT COALESCE(sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), -1)
		FROM pg_partition_tree($1::regclass) pt JOIN pg_class c ON c.oid = pt.relid
		WHERE pt.isleaf`, ident).Scan(&est)
	if err != nil {
		return 0, fmt.Errorf("estimate rows of %s.%s: %w", schema, table, err)
	}
	if est >= 0 {
		return int64(est), nil
	}
	var n int64
	err = pgx.BeginFunc(ctx, source, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '3s'`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM `+ident).Scan(&n)
	})
	if err != nil {
		return 0, nil // an estimate only: progress shows rows processed anyway
	}
	return n, nil
}

// List returns a sink's backfills, newest first.
func List(ctx context.Context, store *outbox.Store, sinkName string) ([]*Backfill, error) {
	if _, err := store.GetSink(ctx, sinkName); err != nil {
		return nil, err
	}
	rows, err := store.ListBackfills(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	out := make([]*Backfill, len(rows))
	for i, r := range rows {
		out[i] = fromRow(r)
	}
	return out, nil
}

// Get returns one backfill of a sink, or an error wrapping
// outbox.ErrNotFound.
func Get(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Backfill, error) {
	r, err := store.GetBackfill(ctx, sinkName, id)
	if err != nil {
		return nil, err
	}
	return fromRow(r), nil
}

// Cancel stops a running backfill; the leader stops it within a page.
// Cancelling a backfill that has ended changes nothing. It returns the
// backfill as it is now.
func Cancel(ctx context.Context, store *outbox.Store, sinkName string, id int64) (*Backfill, error) {
	if err := store.CancelBackfill(ctx, sinkName, id); err != nil {
		return nil, err
	}
	return Get(ctx, store, sinkName, id)
}
