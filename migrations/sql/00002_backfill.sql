-- Backfills and change retention (SPEC §1, §5, §6). Unqualified, like
-- 00001: search_path is the state schema.

-- +goose Up

-- A backfill copies the rows of some of a sink's tables into its outbox as
-- `read` messages, one keyset page at a time, in primary-key order. The
-- leader runs it; its position is written in the same state transaction
-- as each page's outbox rows, so a restart resumes after the last page
-- written and never writes a page twice.
--
-- tables: the tables to copy, in order: as asked ('{}' for all of the
-- sink's, "schema.*" allowed) until the leader resolves them into a fixed
-- list and sets resolved; table_idx: the one being copied; cursor: the
-- last key written in that table (a JSON array of its primary-key values
-- in text form, null before the first page); column_name/from_value: a
-- partial backfill copies only rows with column >= from_value (text, cast
-- to the column's type). rows_total is an estimate (pg_class.reltuples).
CREATE TABLE backfills (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id        bigint NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    state          text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    tables         text[] NOT NULL DEFAULT '{}',
    resolved       boolean NOT NULL DEFAULT false,
    table_idx      integer NOT NULL DEFAULT 0,
    cursor         jsonb,
    column_name    text,
    from_value     text,
    rows_processed bigint NOT NULL DEFAULT 0,
    rows_total     bigint NOT NULL DEFAULT 0,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX backfills_sink_idx ON backfills (sink_id, id);
CREATE INDEX backfills_running_idx ON backfills (id) WHERE state = 'running';

-- A sink's `start` applies once, when it is created (SPEC §2): the leader
-- applies it to sinks where start_applied is false (a backfill of all its
-- tables for `start: beginning`) and sets it, in one transaction, so it
-- happens exactly once however the sink was made (config file or API)
-- and whatever crashes in between. Sinks that exist already have started.
ALTER TABLE sinks ADD COLUMN start_applied boolean NOT NULL DEFAULT false;
UPDATE sinks SET start_applied = true;

-- Every captured change of the tables named in `retention`, kept for
-- `keep` so a replay can enqueue a window again with the original commit
-- order and idempotency keys. Rows are written by capture in commit order,
-- so id order is commit order. columns describes the relation as it was
-- ([{"name", "type", "key"}]); new_values and old_values are arrays indexed
-- like columns whose elements are the JSON rendering of each value as a
-- string, or null when the column was not sent. Pruned in small batches
-- by commit_timestamp.
CREATE TABLE retained_changes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    commit_lsn       bigint NOT NULL,
    commit_idx       integer NOT NULL,
    commit_timestamp timestamptz NOT NULL,
    action           text NOT NULL,
    columns          jsonb NOT NULL,
    new_values       jsonb,
    old_values       jsonb,
    full_identity    boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

CREATE INDEX retained_changes_time_idx ON retained_changes (commit_timestamp);

-- +goose Down
ALTER TABLE sinks DROP COLUMN start_applied;
DROP TABLE retained_changes;
DROP TABLE backfills;
