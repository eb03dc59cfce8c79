package replication

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/sink"
)

// catalog answers the questions pgoutput's Relation message leaves open:
// the primary key (REPLICA IDENTITY FULL flags every column as key) and how
// to render types pgtype does not know.
type catalog interface {
	primaryKey(ctx context.Context, relID uint32) ([]string, error)
	renderTypes(ctx context.Context, oids []uint32) ([]TypeRender, error)
}

type relInfo struct {
	rel    *sink.Relation
	render []TypeRender
}

// decoder turns pgoutput messages into Handler calls. It owns the
// relation cache and reuses one buffer for every change's values.
type decoder struct {
	h    Handler
	cat  catalog
	rels map[uint32]*relInfo

	inTx       bool
	skip       bool // transaction already durable (replayed after a crash)
	commitLSN  uint64
	commitTime time.Time
	idx        int

	arena   []byte
	newV    [][]byte
	oldV    [][]byte
	oldEnds [][2]int // column ranges in arena, reused per change
	newEnds [][2]int
	change  sink.Change

	durableCommit uint64
}

func newDecoder(h Handler, cat catalog, durableCommit uint64) *decoder {
	return &decoder{h: h, cat: cat, rels: map[uint32]*relInfo{}, durableCommit: durableCommit}
}

func (d *decoder) handle(ctx context.Context, walStart uint64, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parse pgoutput message at %s: %w", pglogrepl.LSN(walStart), err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.inTx = true
		d.commitLSN = uint64(m.FinalLSN)
		d.commitTime = m.CommitTime
		d.idx = 0
		d.skip = d.commitLSN <= d.durableCommit
		if d.skip {
			return nil
		}
		return d.h.Begin(ctx, d.commitLSN, d.commitTime)
	case *pglogrepl.CommitMessage:
		d.inTx = false
		if d.skip {
			d.skip = false
			return nil
		}
		d.durableCommit = max(d.durableCommit, uint64(m.CommitLSN))
		return d.h.Commit(ctx, uint64(m.CommitLSN), uint64(m.TransactionEndLSN))
	case *pglogrepl.RelationMessage:
		return d.relation(ctx, m)
	case *pglogrepl.InsertMessage:
		return d.row(ctx, m.RelationID, sink.Insert, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return d.row(ctx, m.RelationID, sink.Update, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return d.row(ctx, m.RelationID, sink.Delete, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		if d.skip {
			return nil
		}
		var rels []*sink.Relation
		for _, id := range m.RelationIDs {
			if ri, ok := d.rels[id]; ok {
				rels = append(rels, ri.rel)
			}
		}
		return d.h.Truncate(ctx, rels)
	case *pglogrepl.LogicalDecodingMessage:
		if d.skip && m.Transactional {
			return nil
		}
		return d.h.Message(ctx, uint64(m.LSN), m.Transactional, m.Prefix, m.Content)
	}
	return nil // Type and Origin messages carry nothing we need
}

// relation caches a table's shape. A new *sink.Relation is made each time,
// so changes already routed keep the shape they were decoded with.
func (d *decoder) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	rel := &sink.Relation{Schema: m.Namespace, Table: m.RelationName, FullIdentity: m.ReplicaIdentity == 'f'}
	oids := make([]uint32, len(m.Columns))
	for i, c := range m.Columns {
		rel.Columns = append(rel.Columns, sink.Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 == 1})
		oids[i] = c.DataType
	}
	if rel.FullIdentity {
		pk, err := d.cat.primaryKey(ctx, m.RelationID)
		if err != nil {
			return fmt.Errorf("primary key of %s: %w", rel.QualifiedName(), err)
		}
		for i := range rel.Columns {
			rel.Columns[i].Key = false
			for _, name := range pk {
				if rel.Columns[i].Name == name {
					rel.Columns[i].Key = true
				}
			}
		}
	}
	render, err := d.cat.renderTypes(ctx, oids)
	if err != nil {
		return fmt.Errorf("column types of %s: %w", rel.QualifiedName(), err)
	}
	// A table dropped and created again, or swapped in by a rename, has
	// a new OID under an old name: forget the old relation, whose OID no
	// change refers to any more, so the cache holds one entry per name.
	for id, ri := range d.rels {
		if id != m.RelationID && ri.rel.Schema == rel.Schema && ri.rel.Table == rel.Table {
			delete(d.rels, id)
		}
	}
	d.rels[m.RelationID] = &relInfo{rel: rel, render: render}
	return nil
}

func (d *decoder) row(ctx context.Context, relID uint32, action sink.Action, oldT, newT *pglogrepl.TupleData) error {
	if d.skip {
		return nil
	}
	ri, ok := d.rels[relID]
	if !ok {
		return fmt.Errorf("%s for unknown relation %d (no Relation message)", action, relID)
	}
	d.arena = d.arena[:0]
	d.oldV = d.oldV[:0]
	d.newV = d.newV[:0]
	// Values are appended to the arena first and sliced after, since the
	// arena may move while it grows.
	var oldEnds, newEnds [][2]int
	if oldT != nil {
		d.oldEnds = d.appendTuple(d.oldEnds, ri, oldT, nil, !ri.rel.FullIdentity)
		oldEnds = d.oldEnds
	}
	if newT != nil {
		d.newEnds = d.appendTuple(d.newEnds, ri, newT, oldEnds, false)
		newEnds = d.newEnds
	}
	d.oldV = d.slices(d.oldV, oldEnds)
	d.newV = d.slices(d.newV, newEnds)

	c := &d.change
	*c = sink.Change{Rel: ri.rel, Action: action, CommitLSN: d.commitLSN, CommitIdx: d.idx, CommitTime: d.commitTime}
	if newT != nil {
		c.New = d.newV
	}
	if oldT != nil {
		c.Old = d.oldV
	}
	d.idx++
	return d.h.Change(ctx, c)
}

// Marks in the value ranges: a column not sent, or an unchanged TOAST
// value without an old value to copy.
const (
	absent    = -1
	toastMark = -2
)

// appendTuple renders a tuple's values into the arena and returns each
// column's [start, end) range, in ends (reused). Unchanged TOAST values are
// copied from the old tuple's range when there is one. keyOnly keeps the
// replica identity columns only: Postgres sends the others of a key tuple
// as NULLs.
func (d *decoder) appendTuple(ends [][2]int, ri *relInfo, t *pglogrepl.TupleData, old [][2]int, keyOnly bool) [][2]int {
	ends = slices.Grow(ends[:0], len(ri.rel.Columns))[:len(ri.rel.Columns)]
	for i := range ends {
		ends[i] = [2]int{absent, absent}
		if i >= len(t.Columns) || (keyOnly && !ri.rel.Columns[i].Key) {
			continue
		}
		col := t.Columns[i]
		start := len(d.arena)
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
			d.arena = append(d.arena, "null"...)
		case pglogrepl.TupleDataTypeToast:
			if old != nil && old[i][0] >= 0 {
				ends[i] = old[i]
				continue
			}
			ends[i] = [2]int{toastMark, toastMark}
			continue
		case pglogrepl.TupleDataTypeText:
			d.arena = ri.render[i].Append(d.arena, col.Data)
		default: // binary format is never requested
			d.arena = sink.AppendJSONString(d.arena, col.Data)
		}
		ends[i] = [2]int{start, len(d.arena)}
	}
	return ends
}

func (d *decoder) slices(dst [][]byte, ends [][2]int) [][]byte {
	for _, e := range ends {
		switch e[0] {
		case absent:
			dst = append(dst, nil)
		case toastMark:
			dst = append(dst, sink.UnchangedToast)
		default:
			dst = append(dst, d.arena[e[0]:e[1]:e[1]])
		}
	}
	return dst
}
