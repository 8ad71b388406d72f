//! Wire shapes of the REST API: request bodies, query strings and the JSON views of store rows.
//!
//! Names are the original backend's (camelCase); timestamps are ISO-8601 UTC instants with
//! milliseconds and a `Z` (`2026-11-25T10:40:11.727Z`), which the original frontend compares to
//! its own clock. Request bodies tolerate unknown fields because the original frontend sends a
//! few Tandem does not use.

use serde::{Deserialize, Serialize};
use time::macros::format_description;

use crate::store::{
    Action, Conversation, ConversationWithPatient, Document, Message, Millis, Patient, User,
};

/// Renders store milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso_millis(ms: Millis) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientView {
    pub id: String,
    pub organization_id: String,
    pub first_name: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
    pub preferred_language: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Patient> for PatientView {
    fn from(p: &Patient) -> Self {
        Self {
            id: p.id.clone(),
            organization_id: p.organization_id.clone(),
            first_name: p.first_name.clone(),
            last_name: p.last_name.clone(),
            date_of_birth: p.date_of_birth.clone(),
            preferred_language: p.preferred_language.clone(),
            created_at: iso_millis(p.created_at),
            updated_at: iso_millis(p.updated_at),
        }
    }
}

/// A conversation with its `patient`, the shape every conversation route returns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: String,
    pub user_id: String,
    pub patient_id: String,
    pub organization_id: String,
    pub start_time: String,
    pub end_time: Option<String>,
    /// `active`, `ended`, `summarized` or `ended_error`.
    pub status: &'static str,
    pub patient_language: String,
    pub clinician_language: String,
    pub created_at: String,
    pub updated_at: String,
    pub patient: PatientView,
}

impl ConversationView {
    pub fn new(c: &Conversation, patient: &Patient) -> Self {
        Self {
            id: c.id.clone(),
            user_id: c.user_id.clone(),
            patient_id: c.patient_id.clone(),
            organization_id: c.organization_id.clone(),
            start_time: iso_millis(c.start_time),
            end_time: c.end_time.map(iso_millis),
            status: c.status.as_str(),
            patient_language: c.patient_language.clone(),
            clinician_language: c.clinician_language.clone(),
            created_at: iso_millis(c.created_at),
            updated_at: iso_millis(c.updated_at),
            patient: PatientView::from(patient),
        }
    }
}

impl From<&ConversationWithPatient> for ConversationView {
    fn from(c: &ConversationWithPatient) -> Self {
        Self::new(&c.conversation, &c.patient)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: String,
    pub conversation_id: String,
    pub timestamp: String,
    /// `user` (clinician), `patient` or `translation`.
    pub sender_type: &'static str,
    pub original_text: String,
    pub translated_text: Option<String>,
    /// For a translation row, the target language.
    pub language: String,
    pub is_final: bool,
    pub original_message_id: Option<String>,
    pub stt_item_id: Option<String>,
    pub speaker_source: Option<String>,
    pub speaker_confidence: Option<f64>,
    pub timings: Option<serde_json::Value>,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        Self {
            id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            timestamp: iso_millis(m.timestamp),
            sender_type: m.sender_type.as_str(),
            original_text: m.original_text.clone(),
            translated_text: m.translated_text.clone(),
            language: m.language.clone(),
            is_final: m.is_final,
            original_message_id: m.original_message_id.clone(),
            stt_item_id: m.stt_item_id.clone(),
            speaker_source: m.speaker_source.clone(),
            speaker_confidence: m.speaker_confidence,
            timings: m.timings.clone(),
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

/// The original's `AggregatedAction`: `type` is `note`, `followup`, `prescription` or a newer
/// kind; `data` holds that type's fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    pub id: String,
    pub conversation_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub data: serde_json::Value,
}

impl From<&Action> for ActionView {
    fn from(a: &Action) -> Self {
        Self {
            id: a.id.clone(),
            conversation_id: a.conversation_id.clone(),
            kind: a.kind.clone(),
            status: a.status.clone(),
            created_at: iso_millis(a.created_at),
            updated_at: iso_millis(a.updated_at),
            data: a.data.clone(),
        }
    }
}

/// A summary or medical-history row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentView {
    pub id: String,
    pub conversation_id: String,
    pub content: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Document> for DocumentView {
    fn from(d: &Document) -> Self {
        Self {
            id: d.id.clone(),
            conversation_id: d.conversation_id.clone(),
            content: d.content.clone(),
            created_at: iso_millis(d.created_at),
            updated_at: iso_millis(d.updated_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_is_utc_with_millis_and_z() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_795_603_211_727), "2026-11-25T10:40:11.727Z");
    }
}
