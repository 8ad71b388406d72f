-- Tandem schema v7 (PostgreSQL dialect): events too large for a NOTIFY payload, relayed
-- between instances by reference (src/pipeline/cluster/postgres.rs). Rows are read within
-- moments of being written and swept after a minute. ../sqlite/0007_event_payloads.sql is
-- empty: one SQLite file serves one instance, which relays nothing.
CREATE TABLE event_payloads (
    id          BIGSERIAL PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX event_payloads_created_at ON event_payloads (created_at);
