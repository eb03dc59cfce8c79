package outbox

import (
	"context"
	"fmt"
	"time"
)

// OldestWaiting returns, per sink id with messages waiting (failed ones
// excluded), how long ago its oldest one was queued, measured on the
// state database's clock.
func (s *Store) OldestWaiting(ctx context.Context) (map[int64]time.Duration, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT sink_id, EXTRACT(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE failed_at IS NULL GROUP BY sink_id`)
	if err != nil {
		return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
	}
	defer rows.Close()
	out := map[int64]time.Duration{}
	for rows.Next() {
		var id int64
		var secs float64
		if err := rows.Scan(&id, &secs); err != nil {
			return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
		}
		out[id] = time.Duration(max(secs, 0) * float64(time.Second))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("age of the oldest waiting messages: %w", err)
	}
	return out, nil
}
