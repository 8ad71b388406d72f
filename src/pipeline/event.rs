//! Every frame Tandem sends on its WebSockets, with the original system's wire names.
//!
//! Design decision: one `#[serde(tag = "type")]` enum, so a wire name exists in exactly one
//! place and the JSON shapes are snapshot-tested below. Where the original backend and frontend
//! disagreed, the event carries both shapes (`command_executed`, `error`, medical history).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::records::SummaryView;
use crate::wire::{ActionView, MessageView};

/// A frame for a client, serialized once with [`ServerEvent::to_frame`].
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    /// Control socket greeting.
    #[serde(rename = "system")]
    System { text: String },
    /// Audio socket greeting; `status` is the STT connection state.
    #[serde(rename = "backend_connected")]
    BackendConnected {
        message: &'static str,
        status: &'static str,
    },
    #[serde(rename = "openai_connected")]
    SttConnected { message: &'static str },
    #[serde(rename = "openai_disconnected")]
    SttDisconnected { message: &'static str },
    /// Live caption, under the OpenAI event name the original frontend renders.
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    CaptionDelta { item_id: String, delta: String },
    /// Tandem's own caption event with the conversation id, for new clients.
    #[serde(rename = "transcript_delta")]
    TranscriptDelta { payload: TranscriptDelta },
    #[serde(rename = "new_message")]
    NewMessage { payload: MessageView },
    #[serde(rename = "tts_audio")]
    TtsAudio { payload: TtsAudio },
    #[serde(rename = "command_executed")]
    CommandExecuted { payload: CommandExecuted },
    #[serde(rename = "action_created")]
    ActionCreated { payload: ActionView },
    /// An action was edited, confirmed or cancelled over REST.
    #[serde(rename = "action_updated")]
    ActionUpdated { payload: ActionView },
    /// End of one utterance's processing.
    #[serde(rename = "processing_completed")]
    ProcessingCompleted { payload: ProcessingCompleted },
    #[serde(rename = "conversation_selected")]
    ConversationSelected { payload: ConversationSelected },
    #[serde(rename = "message_list")]
    MessageList { payload: MessageList },
    #[serde(rename = "action_list")]
    ActionList { payload: ActionList },
    #[serde(rename = "summary_data")]
    SummaryData { payload: SummaryData },
    #[serde(rename = "medical_history_data")]
    MedicalHistoryData { payload: MedicalHistoryData },
    /// Echo of `chat_message` (the original's stub; `id` is a millisecond timestamp).
    #[serde(rename = "message_received")]
    MessageReceived { id: String, text: String },
    /// Errors carry `message` and `text` (the original used both keys) and a stable `code`.
    #[serde(rename = "error")]
    Error {
        code: &'static str,
        message: String,
        text: String,
        /// A transcript the store could not save, handed to the client so it is not lost.
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<UnsavedTranscript>,
        /// The conversation the error is about, on control sockets, which may watch several.
        #[serde(rename = "conversationId", skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// A summary (interim or final) was written; the structured form of `summary_data`.
    #[serde(rename = "summary_ready")]
    SummaryReady { payload: SummaryReady },
    /// The visit ended (`POST …/end`); sent on audio sockets just before they are closed.
    #[serde(rename = "conversation_ended")]
    ConversationEnded { payload: ConversationEnded },
}

/// What was said in an utterance whose row could not be stored (`error` `store_unavailable`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsavedTranscript {
    pub conversation_id: String,
    /// The speech-to-text item, so a client (or a retry) can tell utterances apart.
    pub stt_item_id: Option<String>,
    pub sender_type: crate::store::SenderType,
    pub original_text: String,
    pub language: String,
}

impl ServerEvent {
    /// An `error` event; `message` is shown to users, so it never holds internal causes.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::error_with(code, message.into(), None, None)
    }

    /// An `error` event about one conversation, for control sockets (they may watch several).
    pub fn conversation_error(
        code: &'static str,
        message: impl Into<String>,
        conversation_id: &str,
    ) -> Self {
        Self::error_with(code, message.into(), None, Some(conversation_id.to_owned()))
    }

    /// An `error` event that carries the transcript the store could not save.
    pub fn unsaved(
        code: &'static str,
        message: impl Into<String>,
        transcript: UnsavedTranscript,
    ) -> Self {
        Self::error_with(code, message.into(), Some(transcript), None)
    }

    fn error_with(
        code: &'static str,
        message: String,
        payload: Option<UnsavedTranscript>,
        conversation_id: Option<String>,
    ) -> Self {
        ServerEvent::Error {
            code,
            text: message.clone(),
            message,
            payload,
            conversation_id,
        }
    }

    /// Serializes the event once for fan-out.
    pub fn to_frame(&self) -> Arc<str> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible Serialize impls.
        Arc::from(serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "event serialization failed");
            r#"{"type":"error","code":"internal","message":"internal error","text":"internal error"}"#
                .to_owned()
        }))
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptDelta {
    pub conversation_id: String,
    pub item_id: String,
    pub delta: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TtsAudio {
    pub audio_base64: String,
    /// MIME type, e.g. `audio/mpeg`.
    pub format: String,
    pub original_message_id: String,
    /// With streamed TTS: the chunk's index and whether it is the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<TtsChunk>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TtsChunk {
    pub index: u32,
    pub last: bool,
}

/// `command_executed` in both shapes: the original backend's `data.{note|followUp|
/// prescription}` and the original frontend's `payload.{type, data}`.
#[derive(Debug, Serialize)]
pub struct CommandExecuted {
    /// `success`, `error`, `not_found` or `incomplete`.
    pub status: &'static str,
    pub name: String,
    pub message: String,
    pub data: Value,
    pub payload: Option<Value>,
}

impl CommandExecuted {
    /// A command that produced an action. The entity is the action's `data` fields plus its
    /// id, conversation, status and timestamps, as the original entity rows had them.
    pub fn success(name: &str, message: String, action: &ActionView) -> Self {
        let mut entity = Map::new();
        entity.insert("id".into(), Value::from(action.id.clone()));
        entity.insert(
            "conversationId".into(),
            Value::from(action.conversation_id.clone()),
        );
        entity.insert("status".into(), Value::from(action.status.clone()));
        entity.insert("createdAt".into(), Value::from(action.created_at.clone()));
        entity.insert("updatedAt".into(), Value::from(action.updated_at.clone()));
        if let Value::Object(fields) = &action.data {
            for (k, v) in fields {
                entity.insert(k.clone(), v.clone());
            }
        }
        let entity = Value::Object(entity);
        let backend_key = match action.kind.as_str() {
            "note" => "note",
            "followup" => "followUp",
            "prescription" => "prescription",
            "lab_order" => "labOrder",
            other => other,
        };
        let mut data = Map::new();
        data.insert(backend_key.to_owned(), entity.clone());
        CommandExecuted {
            status: "success",
            name: name.to_owned(),
            message,
            data: Value::Object(data),
            payload: Some(serde_json::json!({ "type": action.kind, "data": entity })),
        }
    }

    /// A command that did not produce an action (acknowledged, incomplete or failed).
    pub fn without_action(status: &'static str, name: &str, message: String, data: Value) -> Self {
        CommandExecuted {
            status,
            name: name.to_owned(),
            message,
            data,
            payload: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingCompleted {
    pub conversation_id: String,
    /// The original message this utterance stored.
    pub message_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSelected {
    pub conversation_id: String,
    pub is_active: bool,
    pub status: &'static str,
    /// The summary row, or null (the original sent the Summary object here).
    pub summary: Option<Value>,
    pub patient_language: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageList {
    pub conversation_id: String,
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionList {
    pub conversation_id: String,
    pub actions: Vec<ActionView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryData {
    pub conversation_id: String,
    /// Always a string or null: the frontend renders it as text.
    pub summary: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryReady {
    pub conversation_id: String,
    /// The conversation's status after the summary: `summarized` for a final one, unchanged
    /// (`active`) for an interim one.
    pub status: &'static str,
    pub summary: SummaryView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationEnded {
    pub conversation_id: String,
    pub message: &'static str,
}

/// The reply to `get_medical_history` used `history`; the original push used
/// `medicalHistory`. Both are sent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MedicalHistoryData {
    pub conversation_id: String,
    pub history: Option<String>,
    pub medical_history: Option<String>,
}

impl MedicalHistoryData {
    pub fn new(conversation_id: String, history: Option<String>) -> Self {
        MedicalHistoryData {
            conversation_id,
            medical_history: history.clone(),
            history,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(e: &ServerEvent) -> Value {
        serde_json::from_str(&e.to_frame()).unwrap()
    }

    fn note_action() -> ActionView {
        ActionView {
            id: "a1".into(),
            conversation_id: "c1".into(),
            kind: "note".into(),
            status: "created".into(),
            created_at: "2026-11-25T10:40:11.727Z".into(),
            updated_at: "2026-11-25T10:40:11.727Z".into(),
            data: json!({"content": "chest pain for three days"}),
        }
    }

    #[test]
    fn command_executed_carries_both_original_shapes() {
        let e = ServerEvent::CommandExecuted {
            payload: CommandExecuted::success("take_note", "Note saved".into(), &note_action()),
        };
        let entity = json!({
            "id": "a1", "conversationId": "c1", "status": "created",
            "createdAt": "2026-11-25T10:40:11.727Z", "updatedAt": "2026-11-25T10:40:11.727Z",
            "content": "chest pain for three days"
        });
        assert_eq!(
            json_of(&e),
            json!({"type": "command_executed", "payload": {
                "status": "success", "name": "take_note", "message": "Note saved",
                "data": {"note": entity.clone()},
                "payload": {"type": "note", "data": entity}
            }})
        );
    }

    #[test]
    fn wire_names_are_the_originals() {
        let cases = [
            (
                ServerEvent::error("lagged", "You fell behind"),
                json!({"type": "error", "code": "lagged", "message": "You fell behind", "text": "You fell behind"}),
            ),
            (
                ServerEvent::conversation_error("events_missed", "Reload", "c1"),
                json!({"type": "error", "code": "events_missed", "message": "Reload", "text": "Reload", "conversationId": "c1"}),
            ),
            (
                ServerEvent::CaptionDelta {
                    item_id: "i1".into(),
                    delta: "Hel".into(),
                },
                json!({"type": "conversation.item.input_audio_transcription.delta", "item_id": "i1", "delta": "Hel"}),
            ),
            (
                ServerEvent::BackendConnected {
                    message: "Connected to backend service.",
                    status: "openai_connecting",
                },
                json!({"type": "backend_connected", "message": "Connected to backend service.", "status": "openai_connecting"}),
            ),
            (
                ServerEvent::TtsAudio {
                    payload: TtsAudio {
                        audio_base64: "AAA=".into(),
                        format: "audio/mpeg".into(),
                        original_message_id: "m1".into(),
                        chunk: None,
                    },
                },
                json!({"type": "tts_audio", "payload": {"audioBase64": "AAA=", "format": "audio/mpeg", "originalMessageId": "m1"}}),
            ),
            (
                ServerEvent::MedicalHistoryData {
                    payload: MedicalHistoryData::new("c1".into(), Some("Allergies: none".into())),
                },
                json!({"type": "medical_history_data", "payload": {"conversationId": "c1", "history": "Allergies: none", "medicalHistory": "Allergies: none"}}),
            ),
            (
                ServerEvent::SummaryData {
                    payload: SummaryData {
                        conversation_id: "c1".into(),
                        summary: None,
                    },
                },
                json!({"type": "summary_data", "payload": {"conversationId": "c1", "summary": null}}),
            ),
            (
                ServerEvent::ConversationEnded {
                    payload: ConversationEnded {
                        conversation_id: "c1".into(),
                        message: "The visit has ended; recording is closed.",
                    },
                },
                json!({"type": "conversation_ended", "payload": {"conversationId": "c1", "message": "The visit has ended; recording is closed."}}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(json_of(&event), expected);
        }
    }
}
