-- Pull sinks (SPEC §5): consumers receive, ack and nack over HTTP, on the
-- same claims as push delivery. Unqualified, like 00001.

-- +goose Up

-- claimed_at: when the claim was made (server clock), the start of the
-- attempt it stands for. lapse_max_age: set on a pull consumer's claims
-- only: a lease that ends without an outcome counts as a failed attempt
-- (the consumer had the messages), and the sink's retry.max_age (in
-- microseconds, 0 = forever) then fails them as a nack would. The reap
-- records that attempt and clears the column (outbox/pull.go).
ALTER TABLE claims
    ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN lapse_max_age bigint;

-- +goose Down
ALTER TABLE claims DROP COLUMN lapse_max_age, DROP COLUMN claimed_at;
