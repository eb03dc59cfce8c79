package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Housekeeping's cleanup of the state schema: what no request waits for
// and the leader or delivery runs now and then. The queue's own upkeep
// (PruneDelivered, VacuumQueues, ReapClaims) stays with the claim in
// claim.go, whose invariants it shares.

// purgeChunk bounds one delete of a deleted sink's messages: a long
// statement would hold back the xmin horizon that the queue tables'
// vacuum depends on.
const purgeChunk = 10_000

// deletedSinksSQL lists the sink ids that still have outbox rows but no
// sink, with a skip scan over the two partial indexes that lead with
// sink_id (one probe per distinct sink, not a scan of the outbox).
const deletedSinksSQL = `
WITH RECURSIVE live(id) AS (
	SELECT min(sink_id) FROM outbox WHERE failed_at IS NULL
	UNION ALL
	SELECT (SELECT min(sink_id) FROM outbox WHERE failed_at IS NULL AND sink_id > live.id) FROM live WHERE live.id IS NOT NULL
), dead(id) AS (
	SELECT min(sink_id) FROM outbox WHERE failed_at IS NOT NULL
	UNION ALL
	SELECT (SELECT min(sink_id) FROM outbox WHERE failed_at IS NOT NULL AND sink_id > dead.id) FROM dead WHERE dead.id IS NOT NULL
)
SELECT id FROM live WHERE id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sinks s WHERE s.id = live.id)
UNION
SELECT id FROM dead WHERE id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sinks s WHERE s.id = dead.id)`

// PurgeDeletedSinks deletes the messages of sinks that no longer exist.
// Deleting a sink deletes its messages, but capture routes a transaction
// with the sinks it knew when the transaction began, and a replay or
// backfill page may be writing for the sink just then: such rows arrive
// after the delete. Housekeeping calls this, so none stay forever.
func (s *Store) PurgeDeletedSinks(ctx context.Context) (int64, error) {
	rows, err := s.pool.Query(ctx, deletedSinksSQL)
	if err != nil {
		return 0, fmt.Errorf("find messages of deleted sinks: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("find messages of deleted sinks: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find messages of deleted sinks: %w", err)
	}
	var total int64
	for _, id := range ids {
		for {
			// The sink is checked again in the statement: ids are never
			// reused, so a sink that exists now is not a deleted one.
			tag, err := s.pool.Exec(ctx, `
				DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sink_id = $1 LIMIT $2)
					AND NOT EXISTS (SELECT 1 FROM sinks WHERE id = $1)`, id, purgeChunk)
			if err != nil {
				return total, fmt.Errorf("purge messages of deleted sink %d: %w", id, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < purgeChunk {
				break
			}
		}
	}
	return total, nil
}

// PruneRetained deletes up to batch retained changes committed more than
// keep ago, oldest first, and returns how many it deleted. One short
// statement: callers loop.
func (s *Store) PruneRetained(ctx context.Context, keep time.Duration, batch int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM retained_changes WHERE id IN (
			SELECT id FROM retained_changes WHERE commit_timestamp < now() - make_interval(secs => $1::float8)
			ORDER BY commit_timestamp LIMIT $2)`, keep.Seconds(), batch)
	if err != nil {
		return 0, fmt.Errorf("prune retained changes: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Delivered is one acknowledged message for the recent-delivery history.
type Delivered struct {
	SinkID       int64
	Message      Message
	DeliverCount int32
	Status       int // 0: no HTTP status (acked by a pull consumer)
	At           time.Time
}

// RecordDelivered appends to the recent-delivery history, a debugging aid
// trimmed by PruneDelivered; it is not part of the delivery guarantee.
// Rows of sinks deleted meanwhile are dropped. The rows are copied
// (COPY), which costs the server about half what an INSERT of the same
// rows does: every delivered message passes here.
func (s *Store) RecordDelivered(ctx context.Context, rows []Delivered) error {
	if len(rows) == 0 {
		return nil
	}
	var ids []int64
	for _, r := range rows {
		if !slices.Contains(ids, r.SinkID) {
			ids = append(ids, r.SinkID)
		}
	}
	var live []int64
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(array_agg(id), '{}') FROM sinks WHERE id = ANY($1)`, ids).Scan(&live); err != nil {
		return fmt.Errorf("record %d delivered messages: %w", len(rows), err)
	}
	if len(live) < len(ids) {
		kept := make([]Delivered, 0, len(rows))
		for _, r := range rows {
			if slices.Contains(live, r.SinkID) {
				kept = append(kept, r)
			}
		}
		rows = kept
	}
	_, err := s.pool.CopyFrom(ctx, pgx.Identifier{"delivered"},
		[]string{"id", "sink_id", "group_key", "commit_lsn", "commit_idx", "payload", "deliver_count", "last_status", "delivered_at"},
		&deliveredSource{rows: rows, i: -1})
	if err != nil {
		return fmt.Errorf("record %d delivered messages: %w", len(rows), err)
	}
	return nil
}

// deliveredSource feeds the history's rows to COPY without building
// [][]any.
type deliveredSource struct {
	rows []Delivered
	i    int
	vals [9]any
}

func (d *deliveredSource) Next() bool { d.i++; return d.i < len(d.rows) }
func (d *deliveredSource) Values() ([]any, error) {
	r := &d.rows[d.i]
	var status *int32
	if r.Status != 0 {
		st := int32(r.Status)
		status = &st
	}
	d.vals = [9]any{r.Message.ID, r.SinkID, r.Message.Group, r.Message.CommitLSN, r.Message.CommitIdx, r.Message.Payload,
		r.DeliverCount, status, r.At}
	return d.vals[:], nil
}
func (d *deliveredSource) Err() error { return nil }

// queueTables are the tables every delivered message churns: a row in,
// a row out. Their dead rows must be vacuumed within seconds, not at
// autovacuum's next visit (autovacuum_naptime, a minute by default),
// or they grow by everything delivered in between.
var queueTables = []string{"outbox", "claims", "delivered"}

// VacuumQueues vacuums the queue tables that hold at least minDead dead
// rows, and at least as many dead rows as live ones (a vacuum reads the
// whole table: while a backlog drains, once per backlog is enough),
// skipping any another process (or autovacuum) is vacuuming now. It
// returns the tables it vacuumed.
func (s *Store) VacuumQueues(ctx context.Context, minDead int64) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT relname FROM pg_stat_user_tables
		WHERE schemaname = current_schema() AND relname = ANY($1) AND n_dead_tup >= $2 AND n_dead_tup >= n_live_tup`, queueTables, minDead)
	if err != nil {
		return nil, fmt.Errorf("vacuum queue tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("vacuum queue tables: %w", err)
	}
	for _, t := range tables {
		// VACUUM cannot run in a transaction: the simple protocol sends
		// it alone. No truncation: see migration 00003.
		if _, err := s.pool.Exec(ctx, `VACUUM (SKIP_LOCKED, TRUNCATE false, INDEX_CLEANUP on) `+pgx.Identifier{t}.Sanitize(), pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	return tables, nil
}

// Hold makes a whole sink wait (a receiver's Retry-After).
func (s *Store) Hold(ctx context.Context, sinkID int64, until time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE sinks SET hold_until = GREATEST(COALESCE(hold_until, $2), $2) WHERE id = $1`, sinkID, until)
	if err != nil {
		return fmt.Errorf("hold sink %d: %w", sinkID, err)
	}
	return nil
}

// PruneDelivered keeps the newest keep delivered messages per sink, and
// none of sinks that no longer exist. It deletes in short statements: a long one would hold back the xmin
// horizon, and every queue table here depends on vacuum keeping up.
func (s *Store) PruneDelivered(ctx context.Context, keep int) (int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM sinks`)
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	sinkIDs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM delivered d WHERE NOT EXISTS (SELECT 1 FROM sinks s WHERE s.id = d.sink_id)`)
	if err != nil {
		return 0, fmt.Errorf("prune delivered history: %w", err)
	}
	total := tag.RowsAffected()
	for _, id := range sinkIDs {
		var cut int64
		err := s.pool.QueryRow(ctx, `SELECT id FROM delivered WHERE sink_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1`, id, keep).Scan(&cut)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return total, fmt.Errorf("prune delivered history of sink %d: %w", id, err)
		}
		for {
			tag, err := s.pool.Exec(ctx, `DELETE FROM delivered WHERE ctid = ANY (ARRAY(
				SELECT ctid FROM delivered WHERE sink_id = $1 AND id <= $2 LIMIT 10000))`, id, cut)
			if err != nil {
				return total, fmt.Errorf("prune delivered history of sink %d: %w", id, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < 10000 {
				break
			}
		}
	}
	return total, nil
}
