package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// reapSQL ends the sink's claims whose lease has run out or that were
// revoked (their worker died), and promotes their groups (rule R). A pull
// claim whose lapse lapseSQL has not recorded yet is left for the next
// reap (it ended between the two statements).
var reapSQL = `
WITH gone AS (
	DELETE FROM claims WHERE sink_id = $1 AND until <= clock_timestamp() AND lapse_max_age IS NULL RETURNING groups
)
UPDATE outbox SET head = true
WHERE id = ANY (ARRAY(SELECT ` + fmt.Sprintf(firstOfGroupSQL, "g.k") + ` FROM (SELECT DISTINCT unnest(groups) AS k FROM gone) g))
AND head IS NOT TRUE`

// ReapClaims ends every sink's claims whose lease ran out or that were
// revoked, promoting their groups (rule R). Every delivering process runs
// it each second; until then such a claim is simply not live. It returns
// the sinks whose claims it ended, so their workers can be woken.
func (s *Store) ReapClaims(ctx context.Context) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT sink_id FROM claims WHERE until <= clock_timestamp()`)
	if err != nil {
		return nil, fmt.Errorf("find ended claims: %w", err)
	}
	sinks, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("find ended claims: %w", err)
	}
	for _, id := range sinks {
		err := s.batch(ctx, func(pb *pgx.Batch) {
			pb.Queue(claimLockSQL, id)
			pb.Queue(lapseSQL, id)
			pb.Queue(reapSQL, id)
			pb.Queue(`SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(id))
		})
		if err != nil {
			return nil, fmt.Errorf("reap ended claims of sink %d: %w", id, err)
		}
	}
	return sinks, nil
}
