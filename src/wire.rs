//! JSON shapes of stored rows, shared by the REST API and the WebSocket events.
//!
//! Names are the original backend's (camelCase); timestamps are ISO-8601 UTC instants with
//! milliseconds and a `Z` (`2026-11-25T10:40:11.727Z`), which the original frontend compares to
//! its own clock. Lives outside `http` because the pipeline sends the same shapes on sockets.

use serde::Serialize;
use time::macros::format_description;

use crate::store::{
    Action, Conversation, ConversationWithPatient, Document, Message, Millis, Patient,
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

/// The original's `AggregatedAction`: `type` is `note`, `followup`, `prescription` or a newer
/// kind; `data` holds that type's fields.
#[derive(Debug, Clone, Serialize)]
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
