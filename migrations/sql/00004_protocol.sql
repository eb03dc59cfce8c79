-- The claim protocol of outbox/doc.go: head flags that only claims,
-- acks, nacks and redeliveries (all under a sink's claim lock) may clear,
-- commit order within a group, claims tied to a live worker session, and
-- a leadership lease with a fencing token. Unqualified, like 00001:
-- search_path is the state schema.

-- +goose Up

-- Claims of the old protocol are forgotten: those messages are delivered
-- again (at least once).
DELETE FROM claims;

-- head: NULL = not sorted yet (a writer queued it and did not know whether
-- an older message of its group waits: it may be the head); true = the
-- oldest waiting message of its group, as of the last ack, nack or
-- redelivery; false = queued behind an older waiting message, or behind a
-- claim. Only holders of the sink's claim lock set false.
ALTER TABLE outbox ALTER COLUMN head DROP NOT NULL, ALTER COLUMN head DROP DEFAULT;
UPDATE outbox SET head = NULL WHERE failed_at IS NULL AND NOT head;

-- A group's messages leave in commit order (commit LSN, position in the
-- transaction), whatever order their rows were inserted in.
DROP INDEX outbox_group_idx;
CREATE INDEX outbox_group_idx ON outbox (sink_id, group_key, commit_lsn, commit_idx, id) INCLUDE (deliver_count) WHERE failed_at IS NULL;
DROP INDEX outbox_ready_idx;
CREATE INDEX outbox_ready_idx ON outbox (sink_id, ready_at, id) WHERE head IS NOT FALSE AND failed_at IS NULL;
-- Retries apart: when max_ack_pending is full only they may go, and a
-- claim must find them without reading the ready backlog.
CREATE INDEX outbox_retry_idx ON outbox (sink_id, ready_at, id) WHERE head IS NOT FALSE AND failed_at IS NULL AND deliver_count > 0;

-- A claim names its groups (never two live claims of one group) and the
-- worker whose session it lives with.
ALTER TABLE claims
    ADD COLUMN groups text[] COLLATE "C" NOT NULL DEFAULT '{}',
    ADD COLUMN worker_id bigint;
CREATE INDEX claims_worker_idx ON claims (worker_id);

-- Delivering processes. Each holds a session advisory lock keyed by its
-- id for as long as it lives; a row whose lock is free belongs to a
-- process that died, and its claims are revoked at once.
CREATE TABLE workers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- Leadership leases: one row per job (streaming a slot). token grows with
-- every new term; the leader's writes check it (fencing), and a leader
-- that stops renewing loses the lease when until passes.
CREATE TABLE leases (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    token  bigint NOT NULL,
    until  timestamptz NOT NULL
);

-- +goose Down
DROP INDEX outbox_retry_idx;
DROP TABLE leases;
DROP TABLE workers;
DROP INDEX claims_worker_idx;
ALTER TABLE claims DROP COLUMN worker_id, DROP COLUMN groups;
DROP INDEX outbox_ready_idx;
CREATE INDEX outbox_ready_idx ON outbox (sink_id, ready_at, id) WHERE head AND failed_at IS NULL;
DROP INDEX outbox_group_idx;
CREATE INDEX outbox_group_idx ON outbox (sink_id, group_key, id) INCLUDE (deliver_count) WHERE failed_at IS NULL;
UPDATE outbox SET head = true WHERE head IS NULL;
ALTER TABLE outbox ALTER COLUMN head SET DEFAULT false, ALTER COLUMN head SET NOT NULL;
