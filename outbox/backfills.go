package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackfillRow is a backfill as stored; package backfill shapes it for the
// API and runs it.
type BackfillRow struct {
	ID     int64
	SinkID int64
	Sink   string
	State  string
	// Tables are the tables to copy, in order; until Resolved, the tables
	// asked for (empty: all of the sink's).
	Tables   []string
	Resolved bool
	// TableIdx is the table being copied; Cursor the primary key of its
	// last row copied (nil: from its start).
	TableIdx      int
	Cursor        []string
	Column        string
	From          *string
	RowsProcessed int64
	RowsTotal     int64
	Error         string
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// NewBackfill is what CreateBackfill stores: a running backfill at its
// start.
type NewBackfill struct {
	SinkID   int64
	Tables   []string
	Resolved bool
	// Column and From, when Column is set, make a partial backfill of the
	// rows where column >= from.
	Column    string
	From      *string
	RowsTotal int64
}

// BackfillPosition is where a backfill stands after a page. Capture
// records it in the transaction that writes the page's rows (see
// backfill_hook.go), so the rows and the position commit together.
type BackfillPosition struct {
	BackfillID int64
	// TableIdx is the table to copy next; Cursor the primary key of the
	// last row copied in it (nil: from its start).
	TableIdx int
	Cursor   []string
	// FromTableIdx and FromCursor are where the page started. The
	// position is recorded only over that one: a page whose predecessor
	// never committed (it failed, or an asynchronous commit was lost in a
	// crash) fails, rows and all, and the backfill reads on from what is
	// recorded, so no position ever passes rows that were not written.
	FromTableIdx int
	FromCursor   []string
	// Rows are the rows the page processed (written, dropped or filtered).
	Rows int64
	// Done says the page was the backfill's last.
	Done bool
}

// ErrPagePositionMoved is a page whose start is no longer the backfill's
// recorded position: a page before it was not written.
var ErrPagePositionMoved = errors.New("the backfill's recorded position is not where the page started: an earlier page was not written")

// positionSQL records a page's position over its start (a compare and
// set), and says whether the page may commit: when it was recorded, or
// when the backfill is no longer running (a backfill cancelled meanwhile
// keeps its state; its last page is written anyway).
const positionSQL = `
WITH u AS (
	UPDATE backfills SET table_idx = $2, cursor = $3, rows_processed = rows_processed + $4,
		state = CASE WHEN $5 THEN 'done' ELSE state END,
		rows_total = CASE WHEN $5 THEN rows_processed + $4 ELSE GREATEST(rows_total, rows_processed + $4) END,
		updated_at = now()
	WHERE id = $1 AND state = 'running' AND table_idx = $6 AND cursor IS NOT DISTINCT FROM $7::jsonb
	RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM u) OR NOT EXISTS (SELECT 1 FROM backfills WHERE id = $1 AND state = 'running')`

// queue adds the statement that records the position to the page's
// batch; ok says whether it was recorded over the page's start.
func (p *BackfillPosition) queue(b *pgx.Batch, ok *bool) {
	b.Queue(positionSQL, p.BackfillID, p.TableIdx, cursorJSON(p.Cursor), p.Rows, p.Done, p.FromTableIdx, cursorJSON(p.FromCursor)).
		QueryRow(func(row pgx.Row) error { return row.Scan(ok) })
}

func cursorJSON(c []string) []byte {
	if c == nil {
		return nil
	}
	raw, _ := json.Marshal(c) // strings always marshal
	return raw
}

const backfillSelect = `
	SELECT b.id, b.sink_id, s.name, b.state, b.tables, b.resolved, b.table_idx, b.cursor, b.column_name, b.from_value,
		b.rows_processed, b.rows_total, COALESCE(b.error, ''), b.created_at, b.updated_at
	FROM backfills b JOIN sinks s ON s.id = b.sink_id`

func scanBackfill(row pgx.Row) (*BackfillRow, error) {
	var b BackfillRow
	var column *string
	var cursor []byte
	if err := row.Scan(&b.ID, &b.SinkID, &b.Sink, &b.State, &b.Tables, &b.Resolved, &b.TableIdx, &cursor, &column, &b.From,
		&b.RowsProcessed, &b.RowsTotal, &b.Error, &b.CreatedAt, &b.UpdatedAt); err != nil {
		return nil, err
	}
	if column != nil {
		b.Column = *column
	}
	if len(cursor) > 0 && string(cursor) != "null" {
		if err := json.Unmarshal(cursor, &b.Cursor); err != nil {
			return nil, fmt.Errorf("backfill %d: stored cursor: %w", b.ID, err)
		}
	}
	return &b, nil
}

// CreateBackfill stores a new running backfill and returns its id.
func (s *Store) CreateBackfill(ctx context.Context, nb NewBackfill) (int64, error) {
	tables := nb.Tables
	if tables == nil {
		tables = []string{}
	}
	var column *string
	if nb.Column != "" {
		column = &nb.Column
	}
	var id int64
	err := s.pool.QueryRow(ctx, `
		INSERT INTO backfills (sink_id, tables, resolved, column_name, from_value, rows_total) VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING id`, nb.SinkID, tables, nb.Resolved, column, nb.From, nb.RowsTotal).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert backfill: %w", err)
	}
	return id, nil
}

// ListBackfills returns a sink's backfills, newest first.
func (s *Store) ListBackfills(ctx context.Context, sinkName string) ([]*BackfillRow, error) {
	rows, err := s.pool.Query(ctx, backfillSelect+` WHERE s.name = $1 ORDER BY b.id DESC`, sinkName)
	if err != nil {
		return nil, fmt.Errorf("list backfills of sink %s: %w", sinkName, err)
	}
	defer rows.Close()
	out := []*BackfillRow{}
	for rows.Next() {
		b, err := scanBackfill(rows)
		if err != nil {
			return nil, fmt.Errorf("list backfills of sink %s: %w", sinkName, err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list backfills of sink %s: %w", sinkName, err)
	}
	return out, nil
}

// GetBackfill returns one backfill of a sink, or an error wrapping
// ErrNotFound.
func (s *Store) GetBackfill(ctx context.Context, sinkName string, id int64) (*BackfillRow, error) {
	b, err := scanBackfill(s.pool.QueryRow(ctx, backfillSelect+` WHERE s.name = $1 AND b.id = $2`, sinkName, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("backfill %d of sink %q: %w", id, sinkName, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("backfill %d of sink %q: %w", id, sinkName, err)
	}
	return b, nil
}

// GetBackfillByID returns a backfill whatever its sink (the runner knows
// only ids), or an error wrapping ErrNotFound.
func (s *Store) GetBackfillByID(ctx context.Context, id int64) (*BackfillRow, error) {
	b, err := scanBackfill(s.pool.QueryRow(ctx, backfillSelect+` WHERE b.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("backfill %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("backfill %d: %w", id, err)
	}
	return b, nil
}

// GetBackfillState returns a backfill's state, or an error wrapping
// ErrNotFound (its sink was deleted). The runner checks it between pages.
func (s *Store) GetBackfillState(ctx context.Context, id int64) (string, error) {
	var state string
	err := s.pool.QueryRow(ctx, `SELECT state FROM backfills WHERE id = $1`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("backfill %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("backfill %d: read state: %w", id, err)
	}
	return state, nil
}

// ListRunningBackfills returns the ids of the running backfills, oldest
// first.
func (s *Store) ListRunningBackfills(ctx context.Context) ([]int64, error) {
	return s.ids(ctx, "list running backfills", `SELECT id FROM backfills WHERE state = 'running' ORDER BY id`)
}

// CancelBackfill marks a running backfill of a sink cancelled; one that
// has ended stays as it is.
func (s *Store) CancelBackfill(ctx context.Context, sinkName string, id int64) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE backfills b SET state = 'cancelled', updated_at = now()
		FROM sinks s WHERE s.id = b.sink_id AND s.name = $1 AND b.id = $2 AND b.state = 'running'`, sinkName, id)
	if err != nil {
		return fmt.Errorf("cancel backfill %d of sink %q: %w", id, sinkName, err)
	}
	return nil
}

// FailBackfill marks a running backfill failed with its cause.
func (s *Store) FailBackfill(ctx context.Context, id int64, cause string) error {
	_, err := s.pool.Exec(ctx, `UPDATE backfills SET state = 'failed', error = $2, updated_at = now() WHERE id = $1 AND state = 'running'`,
		id, cause)
	if err != nil {
		return fmt.Errorf("backfill %d: record failure: %w", id, err)
	}
	return nil
}

// ResolveBackfill records the tables a running backfill copies, as the
// leader resolved them, and their estimated rows. It reports false when
// the backfill is no longer running.
func (s *Store) ResolveBackfill(ctx context.Context, id int64, tables []string, rowsTotal int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE backfills SET tables = $2, resolved = true, rows_total = $3, updated_at = now() WHERE id = $1 AND state = 'running'`,
		id, tables, rowsTotal)
	if err != nil {
		return false, fmt.Errorf("backfill %d: record tables: %w", id, err)
	}
	return tag.RowsAffected() > 0, nil
}

// ApplySinkStarts applies the `start` of sinks created since it last ran
// (SPEC §2: once, when the sink is created): `start: beginning` gets a
// backfill of all the sink's tables. Marking the sink and creating the
// backfill are one statement, so a start applies exactly once whichever
// way the sink was made and whatever crashes.
func (s *Store) ApplySinkStarts(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `
		WITH s AS (
			UPDATE sinks SET start_applied = true WHERE NOT start_applied
			RETURNING id, config->>'start' AS start
		)
		INSERT INTO backfills (sink_id)
		SELECT id FROM s WHERE start = 'beginning'
			AND EXISTS (SELECT 1 FROM subscriptions WHERE sink_id = s.id AND emitter LIKE '`+TableEmitter+`%')`)
	if err != nil {
		return fmt.Errorf("apply sink starts: %w", err)
	}
	return nil
}

// ids runs a query of one bigint column.
func (s *Store) ids(ctx context.Context, what, q string, args ...any) ([]int64, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ids, nil
}
