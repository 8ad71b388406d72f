//! Column lists shared by both SQL dialects, so a row reader and its `SELECT` cannot drift
//! apart between backends.

pub(super) const ORG_COLS: &str = "id, name, created_at";
pub(super) const USER_COLS: &str =
    "id, organization_id, username, password_hash, preferred_language, role, created_at, updated_at";
pub(super) const TOKEN_COLS: &str =
    "token_hash, user_id, family_id, expires_at, used_at, created_at";
pub(super) const PATIENT_COLS: &str = "id, organization_id, first_name, last_name, date_of_birth, \
     preferred_language, created_at, updated_at";
/// [`PATIENT_COLS`] qualified for joins (RETURNING clauses take the unqualified form).
pub(super) const P_PATIENT_COLS: &str = "p.id, p.organization_id, p.first_name, p.last_name, \
     p.date_of_birth, p.preferred_language, p.created_at, p.updated_at";
pub(super) const CONV_COLS: &str = "id, organization_id, user_id, patient_id, clinician_language, \
     patient_language, status, start_time, end_time, created_at, updated_at";
pub(super) const C_CONV_COLS: &str = "c.id, c.organization_id, c.user_id, c.patient_id, \
     c.clinician_language, c.patient_language, c.status, c.start_time, c.end_time, c.created_at, \
     c.updated_at";
/// Number of columns in [`C_CONV_COLS`]; the patient columns follow in joined selects.
pub(super) const CONV_NCOLS: usize = 11;
pub(super) const MSG_COLS: &str = "id, conversation_id, timestamp, sender_type, original_text, \
     translated_text, language, is_final, original_message_id, stt_item_id, speaker_source, \
     speaker_confidence, timings";
pub(super) const ACTION_COLS: &str =
    "id, conversation_id, kind, status, data, created_at, updated_at";
/// [`ACTION_COLS`] qualified for joins.
pub(super) const A_ACTION_COLS: &str =
    "a.id, a.conversation_id, a.kind, a.status, a.data, a.created_at, a.updated_at";
pub(super) const DOC_COLS: &str = "id, conversation_id, content, created_at, updated_at";
/// [`DOC_COLS`] qualified for joins.
pub(super) const D_DOC_COLS: &str =
    "d.id, d.conversation_id, d.content, d.created_at, d.updated_at";
pub(super) const AUDIT_COLS: &str =
    "id, organization_id, user_id, action, entity_type, entity_id, record_ids, remote_addr, at";
pub(super) const WEBHOOK_COLS: &str = "organization_id, url, secret, created_at, updated_at";
pub(super) const DELIVERY_COLS: &str = "id, organization_id, action_id, event, idempotency_key, \
     payload, status, attempts, next_attempt_at, last_error, created_at, updated_at, delivered_at";
/// [`DELIVERY_COLS`] qualified for joins.
pub(super) const O_DELIVERY_COLS: &str = "o.id, o.organization_id, o.action_id, o.event, \
     o.idempotency_key, o.payload, o.status, o.attempts, o.next_attempt_at, o.last_error, \
     o.created_at, o.updated_at, o.delivered_at";
/// Number of columns in [`DELIVERY_COLS`]; claims select the lease token, URL and secret after.
pub(super) const DELIVERY_NCOLS: usize = 13;
pub(super) const ATTEMPT_COLS: &str =
    "id, delivery_id, attempt, started_at, duration_ms, status_code, error";
pub(super) const COMMAND_COLS: &str = "id, organization_id, name, description, examples, \
     parameters, produces_kind, action_type, created_at, updated_at";
