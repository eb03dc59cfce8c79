package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/sink"
)

// This file is capture's side of change retention
// (docs/reference.md#26-retention): every change of the retained tables is
// copied into retained_changes in the same state transaction as the outbox rows
// and the stream position, so the retained history has no gaps and no
// duplicates across crashes. Values are kept as capture rendered them, so a
// replay renders messages byte for byte as they were first sent.

// retention is the set of retained tables: "schema.table" names and
// schemas retained whole ("schema.*").
type retention struct {
	tables  map[string]bool
	schemas map[string]bool
}

func (r *retention) has(rel *sink.Relation) bool {
	return r.tables[rel.QualifiedName()] || r.schemas[rel.Schema]
}

// SetRetention sets the tables whose changes are retained (config
// retention.tables, "schema.*" allowed). Safe to call while streaming.
func (c *Capture) SetRetention(tables []string) {
	if len(tables) == 0 {
		c.ret.retain.Store(nil)
		return
	}
	r := &retention{tables: map[string]bool{}, schemas: map[string]bool{}}
	for _, t := range tables {
		if schema, ok := strings.CutSuffix(t, ".*"); ok {
			r.schemas[schema] = true
		} else {
			r.tables[t] = true
		}
	}
	c.ret.retain.Store(r)
}

// retainedRow is one buffered retained change. Its value arrays are
// ranges of the retention arena ([start, end), start < 0 when absent),
// since the arena may move while it grows.
type retainedRow struct {
	rel              *sink.Relation
	lsn              uint64
	idx              int
	time             time.Time
	action           sink.Action
	cols             []byte
	newStart, newEnd int
	oldStart, oldEnd int
}

// retentionState is the retention part of a Capture; only the stream
// goroutine touches it, but retain.
type retentionState struct {
	retain atomic.Pointer[retention]
	rows   []retainedRow
	arena  []byte
	// cols caches each relation's column description.
	cols map[*sink.Relation][]byte
}

func (r *retentionState) reset() {
	r.rows, r.arena = r.rows[:0], r.arena[:0]
}

// retainChange buffers a change of a retained table.
func (c *Capture) retainChange(ch *sink.Change) {
	r := c.ret.retain.Load()
	if r == nil || !r.has(ch.Rel) {
		return
	}
	st := &c.ret
	cols, ok := st.cols[ch.Rel]
	if !ok {
		cols = ColumnsJSON(ch.Rel)
		if st.cols == nil || len(st.cols) > 1000 { // relations are replaced on ALTER TABLE
			st.cols = map[*sink.Relation][]byte{}
		}
		st.cols[ch.Rel] = cols
	}
	row := retainedRow{rel: ch.Rel, lsn: ch.CommitLSN, idx: ch.CommitIdx, time: ch.CommitTime, action: ch.Action, cols: cols,
		newStart: -1, oldStart: -1}
	if ch.New != nil {
		row.newStart = len(st.arena)
		st.arena = AppendValuesJSON(st.arena, ch.New)
		row.newEnd = len(st.arena)
	}
	if ch.Old != nil {
		row.oldStart = len(st.arena)
		st.arena = AppendValuesJSON(st.arena, ch.Old)
		row.oldEnd = len(st.arena)
	}
	st.rows = append(st.rows, row)
}

// spillRetained copies the buffered retained changes into the open state
// transaction.
func (c *Capture) spillRetained(ctx context.Context) error {
	st := &c.ret
	if len(st.rows) == 0 {
		return nil
	}
	_, err := c.tx.CopyFrom(ctx, pgx.Identifier{"retained_changes"},
		[]string{"table_schema", "table_name", "commit_lsn", "commit_idx", "commit_timestamp", "action", "columns", "new_values", "old_values", "full_identity"},
		&retainedSource{st: st, i: -1})
	if err != nil {
		return fmt.Errorf("copy into retained_changes: %w", err)
	}
	st.reset()
	return nil
}

type retainedSource struct {
	st   *retentionState
	i    int
	vals [10]any
}

func (r *retainedSource) Next() bool { r.i++; return r.i < len(r.st.rows) }
func (r *retainedSource) Values() ([]any, error) {
	row := &r.st.rows[r.i]
	var newV, oldV []byte
	if row.newStart >= 0 {
		newV = r.st.arena[row.newStart:row.newEnd]
	}
	if row.oldStart >= 0 {
		oldV = r.st.arena[row.oldStart:row.oldEnd]
	}
	r.vals = [10]any{row.rel.Schema, row.rel.Table, int64(row.lsn), int32(row.idx), row.time, string(row.action), row.cols, newV, oldV, row.rel.FullIdentity}
	return r.vals[:], nil
}
func (r *retainedSource) Err() error { return nil }

// retainedColumn describes one column of a retained change's relation.
type retainedColumn struct {
	Name string `json:"name"`
	Type uint32 `json:"type"`
	Key  bool   `json:"key,omitempty"`
}

// ColumnsJSON describes a relation's columns for retained_changes.columns.
func ColumnsJSON(rel *sink.Relation) []byte {
	cols := make([]retainedColumn, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = retainedColumn{Name: c.Name, Type: c.TypeOID, Key: c.Key}
	}
	b, _ := json.Marshal(cols) // cannot fail
	return b
}

// AppendValuesJSON appends a change's values as a JSON array whose
// elements are each value's JSON as a string, or null for a column not
// sent: SQL NULL ("null") and an absent column stay distinct, and every
// value comes back byte for byte.
func AppendValuesJSON(dst []byte, vals [][]byte) []byte {
	dst = append(dst, '[')
	for i, v := range vals {
		if i > 0 {
			dst = append(dst, ',')
		}
		if v == nil {
			dst = append(dst, "null"...)
			continue
		}
		dst = sink.AppendJSONString(dst, v)
	}
	return append(dst, ']')
}

// parseValuesJSON is the inverse of AppendValuesJSON.
func parseValuesJSON(b []byte) ([][]byte, error) {
	if b == nil {
		return nil, nil
	}
	var raw []*string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("retained values: %w", err)
	}
	out := make([][]byte, len(raw))
	for i, s := range raw {
		if s != nil {
			out[i] = []byte(*s)
		}
	}
	return out, nil
}

// GetRetainedRange bounds the ids of the retained changes committed in
// [from, to) (to nil: up to now); ok is false when there are none. Capture
// writes retained changes in commit order, so id order is commit order.
func (s *Store) GetRetainedRange(ctx context.Context, from time.Time, to *time.Time) (lo, hi int64, ok bool, err error) {
	var l, h *int64
	err = s.pool.QueryRow(ctx, `SELECT min(id), max(id) FROM retained_changes
		WHERE commit_timestamp >= $1 AND ($2::timestamptz IS NULL OR commit_timestamp < $2)`, from, to).Scan(&l, &h)
	if err != nil {
		return 0, 0, false, fmt.Errorf("bound retained changes: %w", err)
	}
	if l == nil {
		return 0, 0, false, nil
	}
	return *l, *h, true, nil
}

// ReadRetainedChanges reads up to limit retained changes with ids in
// (after, hi] committed in [from, to), in commit order, and passes each,
// rebuilt as a change, to fn (which must not keep it). rels caches the
// rebuilt relations across calls. It returns the last id read and how many
// changes it read.
func (s *Store) ReadRetainedChanges(ctx context.Context, after, hi int64, from time.Time, to *time.Time, limit int,
	rels map[string]*sink.Relation, fn func(*sink.Change)) (last int64, n int, err error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, table_schema, table_name, commit_lsn, commit_idx, commit_timestamp, action, columns, new_values, old_values, full_identity
		FROM retained_changes
		WHERE id > $1 AND id <= $2 AND commit_timestamp >= $3 AND ($4::timestamptz IS NULL OR commit_timestamp < $4)
		ORDER BY id LIMIT $5`, after, hi, from, to, limit)
	if err != nil {
		return 0, 0, fmt.Errorf("read retained changes: %w", err)
	}
	defer rows.Close()
	last = after
	for rows.Next() {
		var id, lsn int64
		var idx int32
		var schema, table, action string
		var ts time.Time
		var cols, newV, oldV []byte
		var full bool
		if err := rows.Scan(&id, &schema, &table, &lsn, &idx, &ts, &action, &cols, &newV, &oldV, &full); err != nil {
			return 0, 0, fmt.Errorf("read retained changes: %w", err)
		}
		n++
		last = id
		rel, err := relationOf(rels, schema, table, full, cols)
		if err != nil {
			return 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		ch := sink.Change{Rel: rel, Action: sink.Action(action), CommitLSN: uint64(lsn), CommitIdx: int(idx), CommitTime: ts}
		if ch.New, err = parseValuesJSON(newV); err != nil {
			return 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		if ch.Old, err = parseValuesJSON(oldV); err != nil {
			return 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		fn(&ch)
	}
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("read retained changes: %w", err)
	}
	return last, n, nil
}

// relationOf rebuilds a retained change's relation, one per distinct
// shape, so routes cache their column positions once.
func relationOf(rels map[string]*sink.Relation, schema, table string, full bool, cols []byte) (*sink.Relation, error) {
	key := schema + "." + table + "\x00" + fmt.Sprint(full) + "\x00" + string(cols)
	if r, ok := rels[key]; ok {
		return r, nil
	}
	var rc []retainedColumn
	if err := json.Unmarshal(cols, &rc); err != nil {
		return nil, fmt.Errorf("columns: %w", err)
	}
	r := &sink.Relation{Schema: schema, Table: table, FullIdentity: full}
	for _, c := range rc {
		r.Columns = append(r.Columns, sink.Column{Name: c.Name, TypeOID: c.Type, Key: c.Key})
	}
	rels[key] = r
	return r, nil
}
