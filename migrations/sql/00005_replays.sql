-- Replays as jobs (SPEC §5). Unqualified, like 00001: search_path is the
-- state schema.

-- +goose Up

-- A replay enqueues again, for one sink, the retained changes committed in
-- [from_time, to_time). The leader runs it in chunks of retained changes;
-- each chunk's outbox rows and the replay's new position are written in
-- one transaction, so a restart resumes after the last chunk written and
-- never queues one twice.
--
-- to_asked: the end as asked (NULL: up to now); to_time fixes it when the
-- replay is created, so a resumed replay covers the same window.
-- resolved: the leader has bounded the window's retained changes to the
-- ids (last_id, hi_id] and counted them (changes_total); last_id then
-- advances with each chunk. waiting_for: what a running replay waits for:
-- 'capture' (the stream to have captured every change committed before
-- to_time, before the window is bounded), 'backlog' (its sink's backlog
-- to drain before the next chunk), NULL. idempotency_key: from the request's
-- Idempotency-Key header; a retried request with the same key gets the
-- same replay. A request identical to a running replay (same sink, from
-- and to as asked) gets that replay too: replays_same_running_idx.
CREATE TABLE replays (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id           bigint NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    state             text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    from_time         timestamptz NOT NULL,
    to_time           timestamptz NOT NULL,
    to_asked          timestamptz,
    idempotency_key   text,
    resolved          boolean NOT NULL DEFAULT false,
    last_id           bigint NOT NULL DEFAULT 0,
    hi_id             bigint NOT NULL DEFAULT 0,
    changes_processed bigint NOT NULL DEFAULT 0,
    changes_total     bigint NOT NULL DEFAULT 0,
    messages          bigint NOT NULL DEFAULT 0,
    waiting_for       text CHECK (waiting_for IN ('capture', 'backlog')),
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX replays_sink_idx ON replays (sink_id, id);
CREATE INDEX replays_running_idx ON replays (id) WHERE state = 'running';
CREATE UNIQUE INDEX replays_key_idx ON replays (sink_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX replays_same_running_idx ON replays (sink_id, from_time, COALESCE(to_asked, 'infinity'::timestamptz))
    WHERE state = 'running';

-- +goose Down
DROP TABLE replays;
