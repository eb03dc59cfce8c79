-- Claim ids that are never handed out twice. Claims commit asynchronously
-- (outbox/doc.go, "Durability"): a claim lost in a Postgres crash would
-- give its sequence value back, the next claim would get the same id, and
-- a late ack or nack of the lost claim (its worker never knew) would then
-- act on the new claim's messages. Random ids do not come back. Positive
-- and odd: 62 random bits. Unqualified, like 00001.

-- +goose Up
ALTER TABLE claims ALTER COLUMN id DROP IDENTITY;
ALTER TABLE claims ALTER COLUMN id SET DEFAULT
    ((('x' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16))::bit(64)::bigint & 9223372036854775807) | 1);

-- +goose Down
ALTER TABLE claims ALTER COLUMN id DROP DEFAULT;
ALTER TABLE claims ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
