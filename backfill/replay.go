package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/sink"
)

// replayChunk is how many retained changes one replay transaction
// enqueues: big windows go in pieces, each committed (and announced to
// delivery) on its own, so none holds locks or memory for long.
const replayChunk = 5000

// ReplayRequest is the body of POST /api/sinks/{name}/replays: the window
// [from, to) of commit times; no to means up to now.
type ReplayRequest struct {
	From time.Time  `json:"from"`
	To   *time.Time `json:"to,omitempty"`
}

// ReplayResult is what a replay enqueued.
type ReplayResult struct {
	Sink string     `json:"sink"`
	From time.Time  `json:"from"`
	To   *time.Time `json:"to,omitempty"`
	// Changes is how many retained changes the window holds; Messages how
	// many of them the sink took (its tables, actions and filters).
	Changes  int64 `json:"changes"`
	Messages int64 `json:"messages"`
}

// Replay enqueues again, for one sink, the retained changes committed in
// [from, to) (to zero: up to now), in their original commit order and
// with their original commit_lsn and commit_idx, hence idempotency keys.
// The sink's current settings decide which changes it takes and how they
// render. Errors wrap outbox.ErrNotFound (no such sink) or ErrInvalid.
func Replay(ctx context.Context, store *outbox.Store, sinkName string, from, to time.Time) (*ReplayResult, error) {
	s, err := store.Sink(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	if from.IsZero() {
		return nil, fmt.Errorf("%w: replay needs a from time", ErrInvalid)
	}
	res := &ReplayResult{Sink: s.Name, From: from}
	var upper *time.Time
	if !to.IsZero() {
		if !to.After(from) {
			return nil, fmt.Errorf("%w: replay window: to (%s) must be after from (%s)", ErrInvalid, to.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano))
		}
		upper = &to
		res.To = upper
	}
	router := sink.NewRouter([]*sink.Sink{s.Sink})

	// Capture writes retained changes in commit order, so id order is
	// commit order; the window's ids are bounded first (through the time
	// index) and then walked in id order.
	var lo, hi *int64
	err = store.Pool.QueryRow(ctx, `SELECT min(id), max(id) FROM retained_changes
		WHERE commit_timestamp >= $1 AND ($2::timestamptz IS NULL OR commit_timestamp < $2)`, from, upper).Scan(&lo, &hi)
	if err != nil {
		return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
	}
	if lo == nil {
		return res, nil
	}
	rels := map[string]*sink.Relation{}
	last := *lo - 1
	for {
		chunk, lastID, n, err := readRetained(ctx, store, router, rels, last, *hi, from, upper)
		if err != nil {
			return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
		}
		if n == 0 {
			return res, nil
		}
		res.Changes += int64(n)
		if err := store.Enqueue(ctx, chunk); err != nil {
			return nil, fmt.Errorf("replay for sink %s: %w", s.Name, err)
		}
		res.Messages += int64(len(chunk))
		last = lastID
		if n < replayChunk {
			return res, nil
		}
	}
}

// readRetained reads the next chunk of the window after id last and
// renders the sink's messages for it.
func readRetained(ctx context.Context, store *outbox.Store, router *sink.Router, rels map[string]*sink.Relation,
	last, hi int64, from time.Time, to *time.Time) ([]outbox.NewMessage, int64, int, error) {
	rows, err := store.Pool.Query(ctx, `
		SELECT id, table_schema, table_name, commit_lsn, commit_idx, commit_timestamp, action, columns, new_values, old_values, full_identity
		FROM retained_changes
		WHERE id > $1 AND id <= $2 AND commit_timestamp >= $3 AND ($4::timestamptz IS NULL OR commit_timestamp < $4)
		ORDER BY id LIMIT $5`, last, hi, from, to, replayChunk)
	if err != nil {
		return nil, 0, 0, err
	}
	defer rows.Close()
	var out []outbox.NewMessage
	n := 0
	var arena []byte
	for rows.Next() {
		var id, lsn int64
		var idx int32
		var schema, table, action string
		var ts time.Time
		var cols, newV, oldV []byte
		var full bool
		if err := rows.Scan(&id, &schema, &table, &lsn, &idx, &ts, &action, &cols, &newV, &oldV, &full); err != nil {
			return nil, 0, 0, err
		}
		n++
		last = id
		routes := router.ForTable(schema, table)
		if len(routes) == 0 {
			continue
		}
		rel, err := relationOf(rels, schema, table, full, cols)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		ch := sink.Change{Rel: rel, Action: sink.Action(action), CommitLSN: uint64(lsn), CommitIdx: int(idx), CommitTime: ts}
		if ch.New, err = outbox.ParseValuesJSON(newV); err != nil {
			return nil, 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		if ch.Old, err = outbox.ParseValuesJSON(oldV); err != nil {
			return nil, 0, 0, fmt.Errorf("retained change %d: %w", id, err)
		}
		for _, rt := range routes {
			if !rt.Match(&ch) {
				continue
			}
			arena = rt.Render(arena[:0], &ch)
			out = append(out, outbox.NewMessage{SinkID: rt.Sink.ID, Group: rt.GroupKey(&ch), CommitLSN: uint64(lsn), CommitIdx: int(idx), Payload: slices.Clone(arena)})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, err
	}
	return out, last, n, nil
}

// relationOf rebuilds a retained change's relation, one per distinct
// shape, so routes cache their column positions once.
func relationOf(rels map[string]*sink.Relation, schema, table string, full bool, cols []byte) (*sink.Relation, error) {
	key := schema + "." + table + "\x00" + fmt.Sprint(full) + "\x00" + string(cols)
	if r, ok := rels[key]; ok {
		return r, nil
	}
	var rc []outbox.RetainedColumn
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

// pruneBatch is how many retained changes one DELETE removes: small
// enough that no statement holds its locks for long.
const pruneBatch = 5000

// Prune deletes retained changes committed more than keep ago, in small
// batches. It returns how many it deleted.
func Prune(ctx context.Context, store *outbox.Store, keep time.Duration) (int64, error) {
	if keep <= 0 {
		return 0, nil
	}
	var total int64
	for {
		tag, err := store.Pool.Exec(ctx, `
			DELETE FROM retained_changes WHERE id IN (
				SELECT id FROM retained_changes WHERE commit_timestamp < now() - make_interval(secs => $1::float8)
				ORDER BY commit_timestamp LIMIT $2)`, keep.Seconds(), pruneBatch)
		if err != nil {
			return total, fmt.Errorf("prune retained changes: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			return total, nil
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil { // let others at the table between batches
			return total, err
		}
	}
}

// pruneLoop prunes retained changes on the leader, every tenth of keep
// (between a second and a minute).
func (r *Runner) pruneLoop(ctx context.Context) {
	every := min(max(r.cfg.RetentionKeep/10, time.Second), time.Minute)
	for {
		n, err := Prune(ctx, r.cfg.Store, r.cfg.RetentionKeep)
		switch {
		case err != nil && ctx.Err() == nil:
			r.cfg.Log.Error().Err(err).Msg("prune retained changes")
		case n > 0:
			r.cfg.Log.Debug().Int64("deleted", n).Msg("pruned retained changes")
		}
		if sleep(ctx, every) != nil {
			return
		}
	}
}

// ParseTime reads a replay bound: RFC 3339, or a duration ago ("2h" is
// two hours ago), for the CLI.
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, errors.New("want an RFC 3339 time (2024-03-20T15:30:00Z) or a duration ago (90m)")
}
