package outbox

import (
	"context"
	"fmt"
	"time"
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
