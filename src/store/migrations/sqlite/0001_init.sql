-- Tandem schema v1 (SQLite dialect). Keep in step with ../postgres/0001_init.sql.
-- Applied in one transaction by the runner in sqlite.rs, which owns `schema_migrations`.
-- Timestamps are INTEGER UTC milliseconds; ids are TEXT (UUIDv7); booleans are 0/1.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    -- Exactly one row may be the organization open registration uses.
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX organizations_one_default ON organizations (is_default) WHERE is_default = 1;

CREATE TABLE users (
    id                  TEXT PRIMARY KEY NOT NULL,
    organization_id     TEXT NOT NULL REFERENCES organizations (id),
    username            TEXT NOT NULL UNIQUE,
    password_hash       TEXT NOT NULL,
    preferred_language  TEXT NOT NULL,
    role                TEXT NOT NULL CHECK (role IN ('clinician', 'admin')),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX users_organization ON users (organization_id);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE patients (
    id                  TEXT PRIMARY KEY NOT NULL,
    organization_id     TEXT NOT NULL REFERENCES organizations (id),
    first_name          TEXT NOT NULL,
    last_name           TEXT NOT NULL,
    date_of_birth       TEXT NOT NULL, -- YYYY-MM-DD
    preferred_language  TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
-- Unique: find_or_create_patient is an INSERT .. ON CONFLICT DO NOTHING, race-free.
CREATE UNIQUE INDEX patients_identity
    ON patients (organization_id, last_name, first_name, date_of_birth);

CREATE TABLE conversations (
    id                  TEXT PRIMARY KEY NOT NULL,
    organization_id     TEXT NOT NULL REFERENCES organizations (id),
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    patient_id          TEXT NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    clinician_language  TEXT NOT NULL,
    patient_language    TEXT NOT NULL,
    status              TEXT NOT NULL
        CHECK (status IN ('active', 'ended', 'summarized', 'ended_error')),
    start_time          INTEGER NOT NULL,
    end_time            INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX conversations_org_start ON conversations (organization_id, start_time, id);
CREATE INDEX conversations_user ON conversations (user_id);
CREATE INDEX conversations_patient ON conversations (patient_id);

CREATE TABLE messages (
    id                   TEXT PRIMARY KEY NOT NULL,
    conversation_id      TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    timestamp            INTEGER NOT NULL,
    sender_type          TEXT NOT NULL CHECK (sender_type IN ('user', 'patient', 'translation')),
    original_text        TEXT NOT NULL,
    translated_text      TEXT,
    language             TEXT NOT NULL,
    is_final             INTEGER NOT NULL CHECK (is_final IN (0, 1)),
    original_message_id  TEXT REFERENCES messages (id) ON DELETE CASCADE,
    stt_item_id          TEXT,
    speaker_source       TEXT,
    speaker_confidence   REAL,
    timings              TEXT -- JSON object
);
CREATE INDEX messages_conversation_time ON messages (conversation_id, timestamp, id);
CREATE INDEX messages_original ON messages (original_message_id);
-- A replayed STT item is stored once as an original and once as a translation, never twice.
CREATE UNIQUE INDEX messages_stt_item
    ON messages (conversation_id, stt_item_id, (sender_type = 'translation'))
    WHERE stt_item_id IS NOT NULL;

CREATE TABLE actions (
    id               TEXT PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    data             TEXT NOT NULL, -- JSON
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX actions_conversation ON actions (conversation_id, created_at, id);

-- Summaries and medical histories: one document per (conversation, kind), upserted.
CREATE TABLE documents (
    id               TEXT PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('summary', 'medical_history')),
    content          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (conversation_id, kind)
);

-- No foreign key on user_id: the trail outlives the user it mentions.
CREATE TABLE audit_log (
    id               TEXT PRIMARY KEY NOT NULL,
    organization_id  TEXT NOT NULL REFERENCES organizations (id),
    user_id          TEXT,
    action           TEXT NOT NULL,
    entity_type      TEXT NOT NULL,
    entity_id        TEXT NOT NULL,
    at               INTEGER NOT NULL
);
CREATE INDEX audit_log_org_at ON audit_log (organization_id, at, id);
