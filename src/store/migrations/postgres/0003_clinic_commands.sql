-- Clinic-defined voice commands and per-clinician command settings (PostgreSQL dialect).
-- Keep in step with ../sqlite/0003_clinic_commands.sql.

CREATE TABLE clinic_commands (
    id               TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             TEXT COLLATE "C" NOT NULL,
    description      TEXT NOT NULL,
    examples         TEXT NOT NULL, -- JSON array of strings
    parameters       TEXT NOT NULL, -- JSON Schema object
    produces_kind    TEXT NOT NULL CHECK (produces_kind IN ('action', 'webhook')),
    action_type      TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    -- An action type is set exactly when the command produces an action.
    CHECK ((produces_kind = 'action') = (action_type IS NOT NULL))
);
-- Names are ASCII; the model must never see two that differ only in case.
CREATE UNIQUE INDEX clinic_commands_org_name ON clinic_commands (organization_id, lower(name));

-- A user without a row has the defaults (built-in commands on, no wake phrase).
CREATE TABLE user_settings (
    user_id           TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    builtin_commands  BOOLEAN NOT NULL,
    wake_phrase       TEXT,
    updated_at        BIGINT NOT NULL
);
