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
// transaction with a NOTIFY, so webhook messages get the same delivery
// guarantees as changes. A message whose key is still waiting in a sink's
// outbox is not queued twice: the waiting one stands. A failed one (past
// retry.max_age) does not count as waiting: the sender sent the body
// again, so it is queued afresh in place of the failed message, which it
// replaces (one message per key and sink, the unique dedupe index). The
// key is the group too, so a group never holds more than one message and
// each message heads its group. It returns the ids of the sinks that got
// a new message.
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
		if _, err := tx.Exec(ctx, `
			DELETE FROM outbox o USING unnest($1::bigint[], $2::text[]) AS u(s, k)
			WHERE o.sink_id = u.s AND o.dedupe_key = u.k AND o.failed_at IS NOT NULL`, sinks, keys); err != nil {
			return fmt.Errorf("replace failed duplicates: %w", err)
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, dedupe_key, payload, head)
			SELECT s, k, 0, 0, k, p, true FROM unnest($1::bigint[], $2::text[], $3::text[]) WITH ORDINALITY AS u(s, k, p, n) ORDER BY n
			ON CONFLICT (sink_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
			RETURNING sink_id`, sinks, keys, payloads)
		if err != nil {
			return fmt.Errorf("insert into outbox: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("insert into outbox: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		queued = slices.Compact(slices.Sorted(slices.Values(ids)))
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), joinIDs(queued)); err != nil {
			return fmt.Errorf("notify delivery: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue webhook %s: %w", msgs[0].Key, err)
	}
	return queued, nil
}
