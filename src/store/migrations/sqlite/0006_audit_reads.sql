-- Audit log of every read of patient data (SQLite dialect).
-- Keep in step with ../postgres/0006_audit_reads.sql.

-- The other records a response carried (a conversation's patient, a listing's rows), as a JSON
-- array of ids; searched with json_each, so no id needs escaping.
ALTER TABLE audit_log ADD COLUMN record_ids TEXT NOT NULL DEFAULT '[]';
-- The peer address of the request or socket, when known.
ALTER TABLE audit_log ADD COLUMN remote_addr TEXT;
-- "What did this user look at" is the common audit question; the other filters narrow an
-- organization's (org, at) range.
CREATE INDEX audit_log_org_user_at ON audit_log (organization_id, user_id, at, id);
