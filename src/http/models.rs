//! Wire shapes of the REST API: request bodies, query strings and the JSON views of store rows.
//!
//! Names are the original backend's (camelCase); timestamps are ISO-8601 UTC instants with
//! milliseconds and a `Z` (`2026-11-25T10:40:11.727Z`), which the original frontend compares to
//! its own clock. Request bodies tolerate unknown fields because the original frontend sends a
//! few Tandem does not use.

use serde::{Deserialize, Serialize};

use crate::store::User;
pub use crate::wire::*;

// ---------- requests ----------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    pub preferred_language: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversationRequest {
    pub first_name: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    #[serde(alias = "dateOfBirth")]
    pub dob: String,
    /// Defaults to `es`, as the original frontend always sends.
    pub patient_language: Option<String>,
    /// Defaults to the clinician's preferred language.
    pub clinician_language: Option<String>,
}

/// `PATCH /patients/:id`: absent fields stay unchanged.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePatientRequest {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(alias = "dateOfBirth")]
    pub dob: Option<String>,
    pub preferred_language: Option<String>,
}

/// `?limit=&after=` keyset pagination.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// `GET /patients?q=&limit=&after=`.
#[derive(Debug, Default, Deserialize)]
pub struct PatientQuery {
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

// ---------- responses ----------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResponse {
    pub access_token: String,
    pub refresh_token: String,
}

/// `GET /auth/me`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeView {
    pub id: String,
    pub username: String,
    pub organization_id: String,
    pub preferred_language: String,
    pub role: &'static str,
}

impl From<&User> for MeView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            organization_id: u.organization_id.clone(),
            preferred_language: u.preferred_language.clone(),
            role: u.role.as_str(),
        }
    }
}

/// One page of a keyset-paginated list. `nextCursor` is the id to pass as `after=` for the
/// next page, or `null` on the last page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

/// See [`MessagePage`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientPage {
    pub patients: Vec<PatientView>,
    pub next_cursor: Option<String>,
}

// ---------- actions under review, webhook and deliveries ----------

/// `PATCH /actions/:id`: the `data` fields to change (validated per action type).
#[derive(Debug, Deserialize)]
pub struct EditActionRequest {
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// `PUT /organization/webhook`.
#[derive(Debug, Deserialize)]
pub struct PutWebhookRequest {
    pub url: String,
    /// Generated (and returned once) when absent.
    pub secret: Option<String>,
}

/// The webhook as any member of the organization may see it: never the secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub url: String,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the reply to a `PUT` that generated it; shown once, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&crate::store::Webhook> for WebhookView {
    fn from(w: &crate::store::Webhook) -> Self {
        Self {
            url: w.url.clone(),
            created_at: iso_millis(w.created_at),
            updated_at: iso_millis(w.updated_at),
            secret: None,
        }
    }
}

/// One delivery (outbox row) and its attempt log.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub action_id: String,
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub status: &'static str,
    pub attempts: u32,
    /// When the next attempt is due; `null` unless pending.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub idempotency_key: String,
    pub created_at: String,
    pub updated_at: String,
    pub delivered_at: Option<String>,
    pub attempt_log: Vec<AttemptView>,
}

impl DeliveryView {
    pub fn new(d: &crate::store::Delivery, log: Vec<AttemptView>) -> Self {
        Self {
            id: d.id.clone(),
            action_id: d.action_id.clone(),
            event: d.event.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            next_attempt_at: (d.status == crate::store::DeliveryStatus::Pending)
                .then(|| iso_millis(d.next_attempt_at)),
            last_error: d.last_error.clone(),
            idempotency_key: d.idempotency_key.clone(),
            created_at: iso_millis(d.created_at),
            updated_at: iso_millis(d.updated_at),
            delivered_at: d.delivered_at.map(iso_millis),
            attempt_log: log,
        }
    }
}

/// One finished attempt.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: String,
    pub duration_ms: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

impl From<&crate::store::DeliveryAttempt> for AttemptView {
    fn from(a: &crate::store::DeliveryAttempt) -> Self {
        Self {
            attempt: a.attempt,
            started_at: iso_millis(a.started_at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error.clone(),
        }
    }
}

/// See [`MessagePage`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}
