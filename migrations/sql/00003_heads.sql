-- Claims without a per-group table. Unqualified, like 00001: search_path
-- is the state schema.
--
-- 00001 kept one outbox_groups row per (sink, group) with messages
-- waiting: written at capture, at claim and at ack, three extra row writes
-- per message when most groups hold one message. Now the outbox row that
-- starts its group carries the group's place in the queue:
--
--   head      the row may be its group's oldest waiting message. Every group
--             with waiting messages has its oldest one flagged; a flag on
--             a younger row is harmless (a claim takes a head only while no
--             older message of its group waits) and rare.
--   ready_at  when the head may be claimed: its creation, then the end of
--             its backoff. Claims take heads oldest ready first.
--
-- What is in flight is a claims row per batch, not a write per message.

-- +goose Up
-- Group and dedupe keys are compared byte-wise: they are identifiers, and
-- the database's collation made every index probe on them several times
-- slower (C.UTF-8 is not "C" to Postgres before 17).
ALTER TABLE outbox
    ALTER COLUMN group_key TYPE text COLLATE "C",
    ALTER COLUMN dedupe_key TYPE text COLLATE "C",
    ADD COLUMN head boolean NOT NULL DEFAULT false,
    ADD COLUMN ready_at timestamptz NOT NULL DEFAULT now();

UPDATE outbox o SET ready_at = COALESCE(o.not_before, o.created_at),
    head = o.failed_at IS NULL AND NOT EXISTS (
        SELECT 1 FROM outbox p WHERE p.sink_id = o.sink_id AND p.group_key = o.group_key
            AND p.failed_at IS NULL AND p.id < o.id);

CREATE INDEX outbox_ready_idx ON outbox (sink_id, ready_at, id) WHERE head AND failed_at IS NULL;

-- The queue tables are vacuumed every few seconds (outbox.VacuumQueues);
-- giving their empty tail pages back to the OS would take an exclusive
-- lock that stalls capture and delivery, for space the next seconds
-- reuse anyway.
ALTER TABLE outbox SET (vacuum_truncate = false);
ALTER TABLE delivered SET (vacuum_truncate = false);

-- One row per batch in flight: its messages (their groups are taken while
-- until is ahead: a claim never starts a group whose oldest message is in
-- flight) and how many of them had never been attempted (for
-- max_ack_pending). An ack deletes the row in the transaction that deletes
-- the messages; a crashed worker's row simply expires, and housekeeping
-- deletes it.
CREATE TABLE claims (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id bigint NOT NULL,
    worker  text NOT NULL,
    until   timestamptz NOT NULL,
    fresh   integer NOT NULL,
    ids     bigint[] NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.01, vacuum_truncate = false);
CREATE INDEX claims_sink_idx ON claims (sink_id, until);

-- In-flight claims of the old protocol are forgotten: those messages are
-- delivered again (at least once).
DROP TABLE outbox_groups;

-- +goose Down
CREATE TABLE outbox_groups (
    sink_id        bigint NOT NULL,
    group_key      text NOT NULL,
    pending        integer NOT NULL,
    ready_at       timestamptz NOT NULL DEFAULT now(),
    claimed_until  timestamptz,
    claimed_by     text,
    claimed_count  integer NOT NULL DEFAULT 0,
    claimed_max_id bigint,
    PRIMARY KEY (sink_id, group_key)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01);
CREATE INDEX outbox_groups_ready_idx ON outbox_groups (sink_id, ready_at) WHERE claimed_until IS NULL;
CREATE INDEX outbox_groups_claimed_idx ON outbox_groups (sink_id, claimed_until) WHERE claimed_until IS NOT NULL;
INSERT INTO outbox_groups (sink_id, group_key, pending)
SELECT sink_id, group_key, count(*) FROM outbox WHERE failed_at IS NULL GROUP BY sink_id, group_key;
DROP TABLE claims;
ALTER TABLE delivered RESET (vacuum_truncate);
ALTER TABLE outbox RESET (vacuum_truncate);
DROP INDEX outbox_ready_idx;
ALTER TABLE outbox DROP COLUMN head, DROP COLUMN ready_at,
    ALTER COLUMN group_key TYPE text COLLATE "default",
    ALTER COLUMN dedupe_key TYPE text COLLATE "default";
