package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/config"
)

// The states of an outbox message as the API shows them. They are derived,
// not stored: in flight means named by a live claims row.
const (
	StatePending    = "pending"     // never attempted, waiting its turn
	StateInFlight   = "in_flight"   // part of a claimed batch
	StateBackingOff = "backing_off" // attempted, failed, waiting to retry
	StateFailed     = "failed"      // passed retry.max_age; kept until redelivered
	StateDelivered  = "delivered"   // acknowledged; from the bounded history
)

// States lists the message states in the order a message moves through
// them, for validation and help texts.
var States = []string{StatePending, StateInFlight, StateBackingOff, StateFailed, StateDelivered}

// CreateSink inserts a new sink with its subscriptions. Unlike PutSink it
// never replaces an existing sink: creating through the API must not
// silently overwrite one (ErrExists).
func (s *Store) CreateSink(ctx context.Context, cfg config.Sink) error {
	raw, emitters, err := sinkSettings(cfg)
	if err != nil {
		return err
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ($1, $2) RETURNING id`, cfg.Name, raw).Scan(&id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO subscriptions (sink_id, emitter) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, id, emitters)
		return err
	})
	if IsUniqueViolation(err) {
		return fmt.Errorf("sink %q: %w", cfg.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create sink %s: %w", cfg.Name, err)
	}
	return nil
}

// sinkSettings splits a sink into its stored settings and its emitters,
// the way PutSink stores them.
func sinkSettings(cfg config.Sink) ([]byte, []string, error) {
	settings := cfg
	settings.Tables, settings.WebhookSources = nil, nil
	raw, err := json.Marshal(settings)
	if err != nil {
		return nil, nil, fmt.Errorf("sink %s: encode: %w", cfg.Name, err)
	}
	emitters := []string{}
	for _, t := range cfg.Tables {
		emitters = append(emitters, TableEmitter+t)
	}
	for _, w := range cfg.WebhookSources {
		emitters = append(emitters, WebhookEmitter+w)
	}
	return raw, emitters, nil
}

// DeleteSink removes a sink with everything queued for it: its outbox,
// its claims and its delivered history go in the same transaction, so no
// worker can claim a message of a sink that no longer exists. Messages
// written for it later are left to PurgeDeletedSinks. It returns the
// sink's id.
func (s *Store) DeleteSink(ctx context.Context, name string) (int64, error) {
	var id int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT id FROM sinks WHERE name = $1 FOR UPDATE`, name).Scan(&id); err != nil {
			return err
		}
		return purgeSink(ctx, tx, id)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("delete sink %s: %w", name, err)
	}
	return id, nil
}

func purgeSink(ctx context.Context, tx pgx.Tx, id int64) error {
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM claims WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM outbox WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM delivered WHERE sink_id = $1`, id)
	b.Queue(`DELETE FROM sinks WHERE id = $1`, id)
	return tx.SendBatch(ctx, b).Close()
}

// SetSinkPaused pauses or resumes delivery of a sink. Capture goes on
// while paused; workers see the status at their next claim. Resuming wakes
// them at once.
func (s *Store) SetSinkPaused(ctx context.Context, name string, paused bool) error {
	status := "active"
	if paused {
		status = "paused"
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var id int64
		// Resuming also ends a Retry-After hold: the operator says go.
		err := tx.QueryRow(ctx, `UPDATE sinks SET status = $2, updated_at = now(),
			hold_until = CASE WHEN $2 = 'active' THEN NULL ELSE hold_until END WHERE name = $1 RETURNING id`, name, status).Scan(&id)
		if err != nil {
			return err
		}
		if !paused {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(id))
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("sink %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("set sink %s %s: %w", name, status, err)
	}
	return nil
}

// Counts are a sink's messages by state. Delivered counts the bounded
// recent history, not every message ever delivered.
type Counts struct {
	Pending, InFlight, BackingOff, Failed, Delivered int64
}

// countsSQL derives the states the way messageStateSQL does, but counts
// through the partial indexes so the cost follows the small states
// (in flight, retrying, failed) except for one count of the backlog.
const countsSQL = `
SELECT s.id,
	COALESCE(o.unfailed, 0), COALESCE(o.failed, 0), COALESCE(o.retrying, 0),
	COALESCE(f.in_flight, 0), COALESCE(f.in_flight_retrying, 0), COALESCE(d.delivered, 0)
FROM sinks s
LEFT JOIN (
	SELECT sink_id, count(*) FILTER (WHERE failed_at IS NULL) AS unfailed,
		count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
		count(*) FILTER (WHERE deliver_count > 0 AND failed_at IS NULL) AS retrying
	FROM outbox WHERE $1::bigint IS NULL OR sink_id = $1 GROUP BY sink_id
) o ON o.sink_id = s.id
LEFT JOIN (
	SELECT c.sink_id, count(*) AS in_flight, count(*) FILTER (WHERE o.deliver_count > 0) AS in_flight_retrying
	FROM claims c CROSS JOIN LATERAL unnest(c.ids) AS i(id)
	JOIN outbox o ON o.id = i.id AND o.failed_at IS NULL
	WHERE c.until > clock_timestamp() AND ($1::bigint IS NULL OR c.sink_id = $1)
	GROUP BY c.sink_id
) f ON f.sink_id = s.id
LEFT JOIN (
	SELECT sink_id, count(*) AS delivered FROM delivered WHERE $1::bigint IS NULL OR sink_id = $1 GROUP BY sink_id
) d ON d.sink_id = s.id
WHERE $1::bigint IS NULL OR s.id = $1`

// SinkCounts returns message counts per sink id; sinkID 0 means every
// sink.
func (s *Store) SinkCounts(ctx context.Context, sinkID int64) (map[int64]Counts, error) {
	var arg *int64
	if sinkID != 0 {
		arg = &sinkID
	}
	rows, err := s.pool.Query(ctx, countsSQL, arg)
	if err != nil {
		return nil, fmt.Errorf("count messages: %w", err)
	}
	defer rows.Close()
	out := map[int64]Counts{}
	for rows.Next() {
		var id, unfailed, failed, retrying, inFlight, inFlightRetrying, delivered int64
		if err := rows.Scan(&id, &unfailed, &failed, &retrying, &inFlight, &inFlightRetrying, &delivered); err != nil {
			return nil, fmt.Errorf("count messages: %w", err)
		}
		backingOff := retrying - inFlightRetrying
		out[id] = Counts{
			Pending:    max(unfailed-inFlight-backingOff, 0),
			InFlight:   inFlight,
			BackingOff: max(backingOff, 0),
			Failed:     failed,
			Delivered:  delivered,
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count messages: %w", err)
	}
	return out, nil
}

// CreateEndpoint inserts a new endpoint (ErrExists when the name is
// taken); PutEndpoint is the upsert that config-as-code uses.
func (s *Store) CreateEndpoint(ctx context.Context, e *Endpoint) error {
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	if e.EncryptedHeaderNames == nil {
		e.EncryptedHeaderNames = []string{}
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO http_endpoints (name, url, headers, encrypted_headers, encrypted_header_names) VALUES ($1, $2, $3, $4, $5)`,
		e.Name, e.URL, e.Headers, e.EncryptedHeaders, e.EncryptedHeaderNames)
	if IsUniqueViolation(err) {
		return fmt.Errorf("http endpoint %q: %w", e.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create http endpoint %s: %w", e.Name, err)
	}
	return nil
}

// DeleteEndpoint removes an endpoint. The caller checks first that no
// sink uses it (SinksUsingEndpoint): a sink without its endpoint stops
// delivering.
func (s *Store) DeleteEndpoint(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM http_endpoints WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete http endpoint %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("http endpoint %q: %w", name, ErrNotFound)
	}
	return nil
}

// SinksUsingEndpoint names the sinks that deliver to an endpoint.
func (s *Store) SinksUsingEndpoint(ctx context.Context, endpoint string) ([]string, error) {
	return s.names(ctx, `SELECT name FROM sinks WHERE config->>'endpoint' = $1 ORDER BY name`, endpoint)
}

// SinksSubscribedTo names the sinks listening to an emitter
// ("webhook:NAME" or "table:SCHEMA.TABLE").
func (s *Store) SinksSubscribedTo(ctx context.Context, emitter string) ([]string, error) {
	return s.names(ctx, `SELECT s.name FROM subscriptions x JOIN sinks s ON s.id = x.sink_id WHERE x.emitter = $1 ORDER BY s.name`, emitter)
}

func (s *Store) names(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sink names: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list sink names: %w", err)
	}
	return out, nil
}

// WebhookSourceRow is a webhook source as stored.
type WebhookSourceRow struct {
	ID           int64
	Name         string
	MaxBodyBytes int64
	CreatedAt    time.Time
	// Sinks are the names of the sinks subscribed to it.
	Sinks []string
}

const sourceSelect = `
	SELECT w.id, w.name, w.max_body_bytes, w.created_at,
		COALESCE((SELECT array_agg(s.name ORDER BY s.name) FROM subscriptions x JOIN sinks s ON s.id = x.sink_id
			WHERE x.emitter = 'webhook:' || w.name), '{}')
	FROM webhook_sources w`

func scanSource(row pgx.Row) (*WebhookSourceRow, error) {
	var w WebhookSourceRow
	err := row.Scan(&w.ID, &w.Name, &w.MaxBodyBytes, &w.CreatedAt, &w.Sinks)
	return &w, err
}

// WebhookSources lists webhook sources by name.
func (s *Store) WebhookSources(ctx context.Context) ([]*WebhookSourceRow, error) {
	rows, err := s.pool.Query(ctx, sourceSelect+` ORDER BY w.name`)
	if err != nil {
		return nil, fmt.Errorf("list webhook sources: %w", err)
	}
	defer rows.Close()
	var out []*WebhookSourceRow
	for rows.Next() {
		w, err := scanSource(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhook sources: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// WebhookSource returns one webhook source by name, or ErrNotFound, with
// the sinks subscribed to it (a subquery over subscriptions). The ingest
// path needs only the size limit: WebhookSourceLimit.
func (s *Store) WebhookSource(ctx context.Context, name string) (*WebhookSourceRow, error) {
	w, err := scanSource(s.pool.QueryRow(ctx, sourceSelect+` WHERE w.name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("webhook source %q: %w", name, err)
	}
	return w, nil
}

// WebhookSourceLimit returns a webhook source's max_body_bytes, or
// ErrNotFound. The ingest path calls it on every request: it is one index
// lookup.
func (s *Store) WebhookSourceLimit(ctx context.Context, name string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT max_body_bytes FROM webhook_sources WHERE name = $1`, name).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("webhook source %q: %w", name, err)
	}
	return n, nil
}

// CreateWebhookSource inserts a new webhook source (ErrExists when the
// name is taken); PutWebhookSource is the config-as-code upsert.
func (s *Store) CreateWebhookSource(ctx context.Context, w config.WebhookSource) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO webhook_sources (name, max_body_bytes) VALUES ($1, $2)`, w.Name, w.MaxBodyBytes)
	if IsUniqueViolation(err) {
		return fmt.Errorf("webhook source %q: %w", w.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create webhook source %s: %w", w.Name, err)
	}
	return nil
}

// DeleteWebhookSource removes a webhook source. The caller checks first
// that no sink is subscribed to it. Messages already queued stay queued.
func (s *Store) DeleteWebhookSource(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM webhook_sources WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete webhook source %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("webhook source %q: %w", name, ErrNotFound)
	}
	return nil
}

// SourceCounts are the messages of one webhook source per subscribed
// sink, still in the outbox.
type SourceCounts struct {
	Sink           string
	Queued, Failed int64
	// Delivered counts the sink's bounded delivered history.
	Delivered      int64
	LastReceivedAt *time.Time
}

// WebhookSourceCounts counts a webhook source's queued messages per
// subscribed sink. Webhook messages are recognised by their key: group and
// dedupe key are both "{source}.{hash}" and their commit LSN is 0 (change
// groups always contain a ':').
func (s *Store) WebhookSourceCounts(ctx context.Context, name string) ([]SourceCounts, error) {
	pattern := likeEscape(name) + `.%`
	rows, err := s.pool.Query(ctx, `
		SELECT s.name,
			(SELECT count(*) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2 AND o.failed_at IS NULL),
			(SELECT count(*) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2 AND o.failed_at IS NOT NULL),
			(SELECT max(o.created_at) FROM outbox o WHERE o.sink_id = s.id AND o.commit_lsn = 0 AND o.dedupe_key = o.group_key
				AND o.dedupe_key LIKE $2),
			(SELECT count(*) FROM delivered d WHERE d.sink_id = s.id AND d.commit_lsn = 0 AND d.group_key LIKE $2
				AND position(':' in d.group_key) = 0)
		FROM subscriptions x JOIN sinks s ON s.id = x.sink_id
		WHERE x.emitter = $1
		ORDER BY s.name`, WebhookEmitter+name, pattern)
	if err != nil {
		return nil, fmt.Errorf("count messages of webhook source %s: %w", name, err)
	}
	defer rows.Close()
	var out []SourceCounts
	for rows.Next() {
		var c SourceCounts
		if err := rows.Scan(&c.Sink, &c.Queued, &c.Failed, &c.LastReceivedAt, &c.Delivered); err != nil {
			return nil, fmt.Errorf("count messages of webhook source %s: %w", name, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func likeEscape(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '%' || c == '_' || c == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// Subscription attaches an emitter to a listener sink.
type Subscription struct {
	ID        int64
	Emitter   string
	Listener  string
	CreatedAt time.Time
}

const subscriptionSelect = `SELECT x.id, x.emitter, s.name, x.created_at FROM subscriptions x JOIN sinks s ON s.id = x.sink_id`

// Subscriptions lists subscriptions, optionally only those of one sink.
func (s *Store) Subscriptions(ctx context.Context, listener string) ([]Subscription, error) {
	rows, err := s.pool.Query(ctx, subscriptionSelect+` WHERE $1 = '' OR s.name = $1 ORDER BY x.id`, listener)
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Subscription, error) {
		var x Subscription
		err := r.Scan(&x.ID, &x.Emitter, &x.Listener, &x.CreatedAt)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	return out, nil
}

// GetSubscription returns one subscription, or ErrNotFound.
func (s *Store) GetSubscription(ctx context.Context, id int64) (*Subscription, error) {
	var x Subscription
	err := s.pool.QueryRow(ctx, subscriptionSelect+` WHERE x.id = $1`, id).Scan(&x.ID, &x.Emitter, &x.Listener, &x.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("subscription %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("subscription %d: %w", id, err)
	}
	return &x, nil
}

// AddSubscription attaches an emitter to a sink (ErrExists when it is
// attached already, ErrNotFound when the sink does not exist).
func (s *Store) AddSubscription(ctx context.Context, listener, emitter string) (*Subscription, error) {
	var x Subscription
	err := s.pool.QueryRow(ctx, `
		WITH i AS (
			INSERT INTO subscriptions (sink_id, emitter) SELECT id, $2 FROM sinks WHERE name = $1
			RETURNING id, emitter, created_at
		) SELECT id, emitter, created_at FROM i`, listener, emitter).Scan(&x.ID, &x.Emitter, &x.CreatedAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("sink %q: %w", listener, ErrNotFound)
	case IsUniqueViolation(err):
		return nil, fmt.Errorf("subscription of %s to %s: %w", listener, emitter, ErrExists)
	case err != nil:
		return nil, fmt.Errorf("add subscription of %s to %s: %w", listener, emitter, err)
	}
	x.Listener = listener
	return &x, nil
}

// RemoveSubscription detaches one subscription. Messages it already
// queued stay queued.
func (s *Store) RemoveSubscription(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM subscriptions WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove subscription %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("subscription %d: %w", id, ErrNotFound)
	}
	return nil
}

// MessageRow is one message of a sink as the API shows it.
type MessageRow struct {
	ID             int64
	Group          string
	State          string
	DeliverCount   int32
	LastError      *string
	LastStatus     *int32
	NotBefore      *time.Time
	CommitLSN      int64
	CommitIdx      int32
	Payload        []byte
	CreatedAt      *time.Time
	FirstAttemptAt *time.Time
	LastAttemptAt  *time.Time
	FailedAt       *time.Time
	DeliveredAt    *time.Time
}

// MessageQuery selects messages of one sink.
type MessageQuery struct {
	SinkID int64
	// State is one of States, or "" for every message still in the outbox.
	State string
	// After pages: only messages with a greater id (smaller for delivered,
	// which lists newest first).
	After int64
	Limit int
}

// inFlightSQL: a live claim names outbox row o. liveClaimedSQL lists the
// messages live claims of sink $1 name.
const (
	inFlightSQL    = `EXISTS (SELECT 1 FROM claims c WHERE c.sink_id = o.sink_id AND c.until > clock_timestamp() AND o.id = ANY(c.ids))`
	liveClaimedSQL = `SELECT unnest(ids) FROM claims WHERE sink_id = $1 AND until > clock_timestamp()`
)

// messageStateSQL is the derived state of an outbox row o.
const messageStateSQL = `CASE
	WHEN o.failed_at IS NOT NULL THEN 'failed'
	WHEN ` + inFlightSQL + ` THEN 'in_flight'
	WHEN o.deliver_count > 0 THEN 'backing_off'
	ELSE 'pending' END`

const outboxMessageSelect = `
	SELECT o.id, o.group_key, ` + messageStateSQL + `, o.deliver_count, o.last_error, o.last_status, o.not_before,
		o.commit_lsn, o.commit_idx, o.payload, o.created_at, o.first_attempt_at, o.last_attempt_at, o.failed_at, NULL::timestamptz
	FROM outbox o`

const deliveredMessageSelect = `
	SELECT d.id, d.group_key, 'delivered', d.deliver_count, NULL::text, d.last_status, NULL::timestamptz,
		d.commit_lsn, d.commit_idx, d.payload, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, d.delivered_at
	FROM delivered d`

func scanMessage(row pgx.Row) (*MessageRow, error) {
	var m MessageRow
	err := row.Scan(&m.ID, &m.Group, &m.State, &m.DeliverCount, &m.LastError, &m.LastStatus, &m.NotBefore,
		&m.CommitLSN, &m.CommitIdx, &m.Payload, &m.CreatedAt, &m.FirstAttemptAt, &m.LastAttemptAt, &m.FailedAt, &m.DeliveredAt)
	return &m, err
}

// Messages lists a sink's messages: outbox states oldest first (the
// order they will be delivered in), delivered ones newest first.
func (s *Store) Messages(ctx context.Context, q MessageQuery) ([]*MessageRow, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	var sql string
	args := []any{q.SinkID, q.After, q.Limit}
	switch q.State {
	case StateDelivered:
		sql = deliveredMessageSelect + ` WHERE d.sink_id = $1 AND ($2::bigint = 0 OR d.id < $2::bigint) ORDER BY d.id DESC LIMIT $3`
	case "":
		sql = outboxMessageSelect + ` WHERE o.sink_id = $1 AND o.id > $2 ORDER BY o.id LIMIT $3`
	case StatePending, StateInFlight, StateBackingOff, StateFailed:
		// The plain predicates let the partial indexes help; the derived
		// state decides.
		pre := map[string]string{
			StatePending:    `o.deliver_count = 0 AND o.failed_at IS NULL`,
			StateInFlight:   `o.id IN (` + liveClaimedSQL + `)`,
			StateBackingOff: `o.deliver_count > 0 AND o.failed_at IS NULL`,
			StateFailed:     `o.failed_at IS NOT NULL`,
		}[q.State]
		sql = outboxMessageSelect + ` WHERE o.sink_id = $1 AND o.id > $2 AND ` + pre +
			` AND ` + messageStateSQL + ` = $4 ORDER BY o.id LIMIT $3`
		args = append(args, q.State)
	default:
		return nil, fmt.Errorf("list messages: unknown state %q", q.State)
	}
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
	}
	defer rows.Close()
	out := []*MessageRow{}
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list messages of sink %d: %w", q.SinkID, err)
	}
	return out, nil
}

// Message returns one message of a sink from the outbox or, once
// delivered, from the history; ErrNotFound when it is in neither.
func (s *Store) Message(ctx context.Context, sinkID, id int64) (*MessageRow, error) {
	m, err := scanMessage(s.pool.QueryRow(ctx, outboxMessageSelect+` WHERE o.sink_id = $1 AND o.id = $2
		UNION ALL `+deliveredMessageSelect+` WHERE d.sink_id = $1 AND d.id = $2 LIMIT 1`, sinkID, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("message %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return m, nil
}

// Redeliver makes failed and backing-off messages of a sink deliverable
// now: failed ones rejoin their group's queue (first attempt forgotten,
// so max_age counts afresh), backing-off ones lose their wait, and a
// Retry-After hold on the sink ends. ids restricts it to some messages;
// nil means every one. It returns how many messages it changed.
func (s *Store) Redeliver(ctx context.Context, sinkID int64, ids []int64) (int, error) {
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		n = 0
		// Under the claim lock (doc.go, rule L): a batch in flight keeps
		// its backoff, its outcome decides.
		if _, err := tx.Exec(ctx, claimLockSQL, sinkID); err != nil {
			return fmt.Errorf("lock claims: %w", err)
		}
		// Backing-off first: revived messages would match it too.
		hurried, err := tx.Exec(ctx, `
			UPDATE outbox o SET not_before = NULL, ready_at = LEAST(o.ready_at, now())
			WHERE o.sink_id = $1 AND o.failed_at IS NULL AND o.deliver_count > 0 AND ($2::bigint[] IS NULL OR o.id = ANY($2))
				AND NOT `+inFlightSQL, sinkID, ids)
		if err != nil {
			return fmt.Errorf("clear backoff: %w", err)
		}
		// A revived message is queued unsorted (rule Q): it may now be
		// its group's first, and a claim sorts it out.
		revived, err := tx.Exec(ctx, `
			UPDATE outbox o SET failed_at = NULL, first_attempt_at = NULL, not_before = NULL, ready_at = now(), head = NULL
			WHERE o.sink_id = $1 AND o.failed_at IS NOT NULL AND ($2::bigint[] IS NULL OR o.id = ANY($2))`, sinkID, ids)
		if err != nil {
			return fmt.Errorf("revive failed messages: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE sinks SET hold_until = NULL WHERE id = $1 AND hold_until IS NOT NULL`, sinkID); err != nil {
			return fmt.Errorf("end hold: %w", err)
		}
		n = int(revived.RowsAffected() + hurried.RowsAffected())
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.Channel(), fmt.Sprint(sinkID)); err != nil {
			return fmt.Errorf("notify: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redeliver messages of sink %d: %w", sinkID, err)
	}
	return n, nil
}
