package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// reapSQL ends the sink's claims whose lease has run out or that were
// revoked (their worker died), and promotes their groups (rule R). A pull
// claim whose lapse lapseSQL has not recorded yet is left for the next
// reap (it ended between the two statements). It answers how many claims
// it ended.
var reapSQL = `
WITH gone AS (
	DELETE FROM claims WHERE sink_id = $1 AND until <= clock_timestamp() AND lapse_max_age IS NULL RETURNING groups
), promoted AS (
	UPDATE outbox SET head = true
	WHERE id = ANY (ARRAY(SELECT ` + fmt.Sprintf(firstOfGroupSQL, "g.k") + ` FROM (SELECT DISTINCT unnest(groups) AS k FROM gone) g))
	AND head IS NOT TRUE
)
SELECT count(*)::int FROM gone`

// Reaped is what ReapClaims did to one sink's claims: the caller logs
// and counts it, since a pull consumer's lapse past retry.max_age fails
// messages as a push nack does, and deserves the same alert.
type Reaped struct {
	SinkID   int64
	SinkName string
	// Ended are the claims ended, lapsed pull claims included.
	Ended int
	// LapsedClaims are the pull claims whose visibility timeout passed
	// with messages still held; Lapsed are those messages (an attempt
	// recorded on each), Failed the ones of them past retry.max_age.
	LapsedClaims, Lapsed, Failed int
}

// ReapClaims ends every sink's claims whose lease ran out or that were
// revoked, promoting their groups (rule R). Every delivering process runs
// it each second; until then such a claim is simply not live. It returns
// what it did per sink whose claims it ended, so their workers can be
// woken and lapses reported; with an error, what it did before it.
func (s *Store) ReapClaims(ctx context.Context) ([]Reaped, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT c.sink_id, COALESCE(s.name, '') FROM claims c LEFT JOIN sinks s ON s.id = c.sink_id
		WHERE c.until <= clock_timestamp()`)
	if err != nil {
		return nil, fmt.Errorf("find ended claims: %w", err)
	}
	sinks, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Reaped, error) {
		var r Reaped
		return r, row.Scan(&r.SinkID, &r.SinkName)
	})
	if err != nil {
		return nil, fmt.Errorf("find ended claims: %w", err)
	}
	reaped := make([]Reaped, 0, len(sinks))
	for _, r := range sinks {
		id := r.SinkID
		err := s.batch(ctx, func(pb *pgx.Batch) {
			pb.Queue(claimLockSQL, id)
			pb.Queue(lapseSQL, id).QueryRow(func(row pgx.Row) error { return row.Scan(&r.LapsedClaims, &r.Lapsed, &r.Failed) })
			pb.Queue(reapSQL, id).QueryRow(func(row pgx.Row) error { return row.Scan(&r.Ended) })
			pb.Queue(`SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(id))
		})
		if err != nil {
			// What the sinks before this one committed stands: report it.
			return reaped, fmt.Errorf("reap ended claims of sink %d: %w", id, err)
		}
		reaped = append(reaped, r)
	}
	return reaped, nil
}
