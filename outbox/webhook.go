package outbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// WebhookMessage is an inbound webhook rendered for one subscribed sink.
type WebhookMessage struct {
	SinkID int64
	// Key is "{source}.{SHA256 hex}": the message's group, its dedupe key
	// and its idempotency key.
	Key     string
	Payload []byte
}

// IngestWebhook queues one inbound webhook for its sinks in one
// transaction, with the same protocol as capture (outbox rows, then their
// groups in (sink, key) order, then a NOTIFY), so webhook messages get the
// same delivery guarantees as changes. A message whose key is still in a
// sink's outbox is not queued twice: the waiting one stands. It returns
// the ids of the sinks that got a new message.
func (s *Store) IngestWebhook(ctx context.Context, msgs []WebhookMessage) ([]int64, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	msgs = slices.Clone(msgs)
	slices.SortFunc(msgs, func(a, b WebhookMessage) int {
		return cmp.Or(cmp.Compare(a.SinkID, b.SinkID), cmp.Compare(a.Key, b.Key))
	})
	sinks := make([]int64, len(msgs))
	keys := make([]string, len(msgs))
	payloads := make([]string, len(msgs))
	for i, m := range msgs {
		sinks[i], keys[i], payloads[i] = m.SinkID, m.Key, string(m.Payload)
	}
	var queued []int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		queued = nil
		rows, err := tx.Query(ctx, `
			INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, dedupe_key, payload)
			SELECT s, k, 0, 0, k, p FROM unnest($1::bigint[], $2::text[], $3::text[]) WITH ORDINALITY AS u(s, k, p, n) ORDER BY n
			ON CONFLICT (sink_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
			RETURNING sink_id, group_key`, sinks, keys, payloads)
		if err != nil {
			return fmt.Errorf("insert into outbox: %w", err)
		}
		var gs []int64
		var gk []string
		for rows.Next() {
			var id int64
			var key string
			if err := rows.Scan(&id, &key); err != nil {
				rows.Close()
				return fmt.Errorf("insert into outbox: %w", err)
			}
			gs, gk = append(gs, id), append(gk, key)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("insert into outbox: %w", err)
		}
		if len(gs) == 0 {
			return nil
		}
		queued = slices.Compact(slices.Sorted(slices.Values(gs)))
		// Only newly queued messages count in their group; the upsert
		// sorts, so locks are taken in (sink, key) order.
		b := &pgx.Batch{}
		b.Queue(`
			INSERT INTO outbox_groups (sink_id, group_key, pending)
			SELECT s, k, 1 FROM unnest($1::bigint[], $2::text[]) AS u(s, k) ORDER BY s, k
			ON CONFLICT (sink_id, group_key) DO UPDATE SET pending = outbox_groups.pending + EXCLUDED.pending`, gs, gk)
		b.Queue(`SELECT pg_notify($1, $2)`, s.Channel(), joinIDs(queued))
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("queue groups: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue webhook %s: %w", msgs[0].Key, err)
	}
	return queued, nil
}
