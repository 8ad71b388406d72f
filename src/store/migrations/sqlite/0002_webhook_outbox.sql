-- Tandem schema v2 (SQLite dialect): organization webhooks, the delivery outbox and its
-- attempt log. Keep in step with ../postgres/0002_webhook_outbox.sql.

-- One endpoint per organization. The secret is the HMAC key bodies are signed with.
CREATE TABLE webhooks (
    organization_id  TEXT PRIMARY KEY NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

-- Events to deliver, written in the same transaction as the action change they announce.
-- A worker leases a row (lease_until, lease_token); a lease that runs out makes it due again.
CREATE TABLE webhook_outbox (
    id               TEXT PRIMARY KEY NOT NULL,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    action_id        TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    event            TEXT NOT NULL,
    -- One row per (action, event): the receiver de-duplicates on it.
    idempotency_key  TEXT NOT NULL UNIQUE,
    payload          TEXT NOT NULL, -- JSON body without the per-attempt fields
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER,
    lease_token      TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_at);
CREATE INDEX webhook_outbox_org ON webhook_outbox (organization_id, created_at, id);
CREATE INDEX webhook_outbox_action ON webhook_outbox (action_id);

-- Every finished attempt, for the delivery log.
CREATE TABLE webhook_attempts (
    id           TEXT PRIMARY KEY NOT NULL,
    delivery_id  TEXT NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, started_at, id);
