// Package sink is walhook's message model: what a captured change looks
// like, which sinks it goes to (tables, actions, filters), which group it
// belongs to, and the JSON each sink receives. It does no I/O, so the
// decoder, backfills and replays all produce messages the same way.
package sink

import (
	"encoding/base64"
	"strconv"
	"time"
)

// Action is what happened to a row. Read is a backfill's copy of a row.
type Action string

// The actions of docs/reference.md#41-change-message-message-change.
const (
	Insert Action = "insert"
	Update Action = "update"
	Delete Action = "delete"
	Read   Action = "read"
)

// UnchangedToast is the value of a TOASTed column that an update did not
// touch and whose old value Postgres did not send.
var UnchangedToast = []byte(`"__unchanged_toast"`)

// Column describes one column of a relation.
type Column struct {
	Name    string
	TypeOID uint32
	// Key marks the columns of the replica identity (the primary key by
	// default), used for grouping and for delete records.
	Key bool
}

// Relation is a table as the decoder last saw it. Changes point at it, so
// the many changes of one table share one column list.
type Relation struct {
	Schema  string
	Table   string
	Columns []Column
	// FullIdentity is true with REPLICA IDENTITY FULL: old rows come whole.
	FullIdentity bool
}

// QualifiedName is "schema.table", the name sinks subscribe with.
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Table }

// ColumnIndex returns the position of a column, or -1.
func (r *Relation) ColumnIndex(name string) int {
	for i, c := range r.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// Change is one row change with its values already rendered as JSON, so
// routing, filtering and rendering never go back to Postgres types.
//
// New and Old are indexed like Relation.Columns. A nil value means the
// column was not sent (for example non-key columns of an old row without
// REPLICA IDENTITY FULL); SQL NULL is the JSON literal null.
type Change struct {
	Rel    *Relation
	Action Action
	New    [][]byte
	Old    [][]byte

	CommitLSN  uint64
	CommitIdx  int
	CommitTime time.Time
}

// Record is the row the message carries: the new row, or the old one for a
// delete.
func (c *Change) Record() [][]byte {
	if c.Action == Delete {
		return c.Old
	}
	return c.New
}

// IdempotencyKey is stable across every attempt and replay of a change:
// base64 of "commit_lsn:commit_idx".
func (c *Change) IdempotencyKey() string {
	var b [48]byte
	s := strconv.AppendUint(b[:0], c.CommitLSN, 10)
	s = append(s, ':')
	s = strconv.AppendInt(s, int64(c.CommitIdx), 10)
	return base64.StdEncoding.EncodeToString(s)
}

// Value returns the JSON of a column in the record, or nil when absent.
func (c *Change) Value(col int) []byte {
	rec := c.Record()
	if col < 0 || col >= len(rec) {
		return nil
	}
	return rec[col]
}

// Changed reports whether an update changed a column: its old value is
// known and differs from the new one.
func (c *Change) Changed(col int) bool {
	if c.Action != Update || c.Old == nil || col < 0 || col >= len(c.Old) || c.Old[col] == nil {
		return false
	}
	return string(c.Old[col]) != string(c.New[col])
}
