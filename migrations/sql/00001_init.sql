-- walhook's state schema. Every statement is unqualified: the migrator sets
-- search_path to the configured state schema, so one database can hold
-- several walhook installations side by side.

-- +goose Up

-- Receivers. Encrypted header values are one AES-GCM sealed JSON object;
-- only their names are kept in clear, for display.
CREATE TABLE http_endpoints (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                   text NOT NULL UNIQUE,
    url                    text NOT NULL,
    headers                jsonb NOT NULL DEFAULT '{}',
    encrypted_headers      bytea,
    encrypted_header_names text[] NOT NULL DEFAULT '{}',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Sinks. config holds the sink's settings (config.Sink as JSON) except its
-- emitters, which live in subscriptions. hold_until is a sink-wide pause
-- asked for by a receiver (Retry-After).
CREATE TABLE sinks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid       uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE,
    config     jsonb NOT NULL,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    hold_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_sources (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    max_body_bytes bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- What a sink listens to: 'table:public.orders', 'table:public.*' or
-- 'webhook:my_webhook'. A sink's tables and webhook_sources are read from here.
CREATE TABLE subscriptions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id    bigint NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    emitter    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sink_id, emitter)
);

-- The outbox: one row per message per sink, payload rendered at capture
-- time (the whole message JSON, consumer included) so delivery only
-- concatenates. Rows leave on acknowledgement. failed_at marks messages
-- that passed retry.max_age: kept, out of their group's queue.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id          bigint NOT NULL,
    group_key        text NOT NULL,
    commit_lsn       bigint NOT NULL,
    commit_idx       integer NOT NULL,
    dedupe_key       text,
    payload          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deliver_count    integer NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    not_before       timestamptz,
    last_status      integer,
    last_error       text,
    failed_at        timestamptz
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.02);

CREATE INDEX outbox_group_idx ON outbox (sink_id, group_key, id) INCLUDE (deliver_count) WHERE failed_at IS NULL;
CREATE INDEX outbox_retrying_idx ON outbox (sink_id) WHERE deliver_count > 0 AND failed_at IS NULL;
CREATE INDEX outbox_failed_idx ON outbox (sink_id, id) WHERE failed_at IS NOT NULL;
CREATE UNIQUE INDEX outbox_dedupe_idx ON outbox (sink_id, dedupe_key) WHERE dedupe_key IS NOT NULL;

-- One row per (sink, group) with messages waiting. Claims pick groups
-- here (FOR UPDATE SKIP LOCKED, oldest ready_at first), so claim cost does
-- not grow with the backlog. pending counts the group's unfailed messages;
-- capture increments it and acks decrement it under the row lock, and the
-- row is deleted when it reaches zero.
CREATE TABLE outbox_groups (
    sink_id       bigint NOT NULL,
    group_key     text NOT NULL,
    pending       integer NOT NULL,
    ready_at      timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    claimed_by    text,
    -- claimed_count: fresh (never attempted) messages of the claim, for
    -- max_ack_pending; claimed_max_id: the claim's last message, so the
    -- API can tell in-flight messages from those queued behind them.
    claimed_count  integer NOT NULL DEFAULT 0,
    claimed_max_id bigint,
    PRIMARY KEY (sink_id, group_key)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01);

CREATE INDEX outbox_groups_ready_idx ON outbox_groups (sink_id, ready_at) WHERE claimed_until IS NULL;
CREATE INDEX outbox_groups_claimed_idx ON outbox_groups (sink_id, claimed_until) WHERE claimed_until IS NOT NULL;

-- A bounded recent history of delivered messages, for the API. Unlogged:
-- it is a debugging aid, not part of the delivery guarantee.
-- No primary key: an outbox row is deleted once, so it enters the history
-- once, and one index less is one write less per delivered message.
CREATE UNLOGGED TABLE delivered (
    id            bigint NOT NULL,
    sink_id       bigint NOT NULL,
    group_key     text NOT NULL,
    commit_lsn    bigint NOT NULL,
    commit_idx    integer NOT NULL,
    payload       text NOT NULL,
    deliver_count integer NOT NULL,
    last_status   integer,
    delivered_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivered_sink_idx ON delivered (sink_id, id);

-- The stream position: the last source transaction whose messages are all
-- in the outbox. Written in the same transaction as those messages.
CREATE TABLE replication_state (
    slot       text PRIMARY KEY,
    commit_lsn bigint NOT NULL DEFAULT 0,
    end_lsn    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- TRUNCATEs are not delivered; they are counted here per table.
CREATE TABLE truncates (
    table_name text PRIMARY KEY,
    count      bigint NOT NULL DEFAULT 0,
    last_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE truncates;
DROP TABLE replication_state;
DROP TABLE delivered;
DROP TABLE outbox_groups;
DROP TABLE outbox;
DROP TABLE subscriptions;
DROP TABLE webhook_sources;
DROP TABLE sinks;
DROP TABLE http_endpoints;
