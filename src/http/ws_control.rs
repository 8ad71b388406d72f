//! The control socket (`/ws` and `/`, `?token=`): the original frontend's request/reply
//! channel (`select_conversation`, `get_messages`, `get_actions`, `get_summary`,
//! `get_medical_history`) and the pushes for conversations its user asked about.
//!
//! Design decision: replies go only to the socket that asked (the frontend opens five per tab
//! and each waits for its own answer), while asking about a conversation subscribes *all* of
//! the user's control sockets to its pushes ([`crate::pipeline::hub::Hub::mark_interest`]).

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;
use warp::http::HeaderMap;
use warp::ws::WebSocket;

use super::audit_log;
use super::error::ApiError;
use super::handlers;
use super::ws::{self, close, Problem};
use crate::audit::PhiRead;
use crate::auth::Principal;
use crate::pipeline::event::{self, ServerEvent};
use crate::records::{SummaryRecord, SummaryView};
use crate::server::AppState;
use crate::store::{self, ConversationStatus, DocumentKind, Page};
use crate::wire::{ActionView, MessageView};

/// A client frame as sent: `{"type": "...", "payload": {"conversationId": "..."}}`.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

/// A control-socket request, parsed and checked before anything is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The original's echo: `chat_message` is answered with `message_received`.
    Chat { text: String },
    /// A read about one conversation; asking also subscribes the user to its pushes.
    Query {
        kind: QueryKind,
        conversation_id: String,
    },
}

/// The conversation reads the original frontend asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    SelectConversation,
    GetMessages,
    GetActions,
    GetSummary,
    GetMedicalHistory,
}

impl QueryKind {
    fn from_wire(kind: &str) -> Option<Self> {
        Some(match kind {
            "select_conversation" => QueryKind::SelectConversation,
            "get_messages" => QueryKind::GetMessages,
            "get_actions" => QueryKind::GetActions,
            "get_summary" => QueryKind::GetSummary,
            "get_medical_history" => QueryKind::GetMedicalHistory,
            _ => return None,
        })
    }

    /// The audit-log read each request is (see [`PhiRead`]).
    fn audited_as(self) -> PhiRead {
        match self {
            QueryKind::SelectConversation => PhiRead::ConversationSelect,
            QueryKind::GetMessages => PhiRead::Messages,
            QueryKind::GetActions => PhiRead::Actions,
            QueryKind::GetSummary => PhiRead::Summary,
            QueryKind::GetMedicalHistory => PhiRead::MedicalHistory,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            QueryKind::SelectConversation => "select_conversation",
            QueryKind::GetMessages => "get_messages",
            QueryKind::GetActions => "get_actions",
            QueryKind::GetSummary => "get_summary",
            QueryKind::GetMedicalHistory => "get_medical_history",
        }
    }
}

/// Parses one text frame. Pure, so the fuzz target `control_message` runs exactly this.
///
/// # Errors
/// A [`Problem`] coded `bad_json`, `invalid_field` (wrong shape, missing or empty
/// `payload.conversationId`) or `unknown_message_type`.
pub fn parse_request(text: &str) -> Result<Request, Problem> {
    let frame: Frame = ws::parse_frame(text)?;
    if frame.kind == "chat_message" {
        let text = frame.payload["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return Ok(Request::Chat { text });
    }
    let kind = QueryKind::from_wire(&frame.kind).ok_or_else(|| {
        Problem::new(
            "unknown_message_type",
            format!("Unknown message type {}.", ws::quote(&frame.kind)),
        )
    })?;
    match frame.payload["conversationId"].as_str() {
        Some(id) if !id.is_empty() => Ok(Request::Query {
            kind,
            conversation_id: id.to_owned(),
        }),
        _ => Err(Problem::new(
            "invalid_field",
            "payload.conversationId is required.",
        )),
    }
}

/// Serves one control socket until it closes; `remote` is the peer, for the audit log.
pub async fn serve(
    socket: WebSocket,
    state: AppState,
    headers: HeaderMap,
    query: String,
    remote: Option<IpAddr>,
) {
    let hub = state.pipelines.hub().clone();
    let (mut stream, out) = ws::split(socket, &hub, state.http.control_pacing, &state.sockets);
    let principal = match ws::authenticate(&state.auth, &headers, &query) {
        Ok(p) => Principal { remote, ..p },
        Err(e) => {
            out.send(&ServerEvent::error(e.code(), e.to_string()));
            out.finish(Some((close::UNAUTHORIZED, "Invalid or missing token")))
                .await;
            return;
        }
    };
    state.ws_connections.add(&[("socket", "control")], 1);
    hub.register_control(&principal.user_id, &out.client);
    out.send(&ServerEvent::System {
        text: format!(
            "Welcome! You are connected to Tandem as {}.",
            principal.username
        ),
    });
    let mut closing = None;
    while let Some(message) = out.next_message(&mut stream).await {
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                closing = out.report_read_error(&e);
                break;
            }
        };
        if message.is_close() {
            break;
        }
        if message.is_binary() {
            out.send(&ServerEvent::error(
                "unsupported_frame",
                "The control socket takes JSON text frames only.",
            ));
            continue;
        }
        let Ok(text) = message.to_str() else {
            continue; // pings and pongs carry no requests
        };
        let reply = match parse_request(text) {
            Ok(request) => handle(&state, &principal, request).await,
            Err(problem) => problem.event(),
        };
        out.send(&reply);
    }
    state.ws_connections.add(&[("socket", "control")], -1);
    out.finish(closing).await;
}

async fn handle(state: &AppState, p: &Principal, request: Request) -> ServerEvent {
    let (kind, conversation_id) = match request {
        Request::Chat { text } => {
            return ServerEvent::MessageReceived {
                id: store::now_millis().to_string(),
                text,
            }
        }
        Request::Query {
            kind,
            conversation_id,
        } => (kind, conversation_id),
    };
    match answer(state, p, kind, &conversation_id).await {
        Ok(event) => event,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(error = %e, request = kind.as_str(), "control request failed");
            }
            ServerEvent::error(e.code(), e.public_message())
        }
    }
}

async fn answer(
    state: &AppState,
    p: &Principal,
    kind: QueryKind,
    conversation_id: &str,
) -> Result<ServerEvent, ApiError> {
    let conversation = handlers::conversation(state, p, conversation_id).await?;
    // Before anything is read: a failed audit write answers `store_unavailable` and the
    // socket gets no patient data (nor the conversation's pushes).
    let patient = handlers::patient_of(&conversation);
    audit_log::read(state, p, kind.audited_as(), conversation_id, patient).await?;
    state
        .pipelines
        .hub()
        .mark_interest(conversation_id, &p.user_id);
    let store = &state.store;
    let id = conversation_id.to_owned();
    Ok(match kind {
        QueryKind::SelectConversation => {
            let c = &conversation.conversation;
            let summary = store.get_document(DocumentKind::Summary, &id).await?;
            ServerEvent::ConversationSelected {
                payload: event::ConversationSelected {
                    conversation_id: id,
                    is_active: c.status == ConversationStatus::Active,
                    status: c.status.as_str(),
                    summary: summary
                        .map(|d| serde_json::to_value(SummaryView::from(&d)))
                        .transpose()
                        .map_err(|e| ApiError::Store(store::Error::Backend(e.to_string())))?,
                    patient_language: c.patient_language.clone(),
                },
            }
        }
        QueryKind::GetMessages => {
            let messages = store.list_messages(&id, &Page::default()).await?;
            ServerEvent::MessageList {
                payload: event::MessageList {
                    conversation_id: id,
                    messages: messages.iter().map(MessageView::from).collect(),
                },
            }
        }
        QueryKind::GetActions => {
            let actions = store.list_actions(&id).await?;
            ServerEvent::ActionList {
                payload: event::ActionList {
                    conversation_id: id,
                    actions: actions.iter().map(ActionView::from).collect(),
                },
            }
        }
        QueryKind::GetSummary => {
            let summary = store.get_document(DocumentKind::Summary, &id).await?;
            ServerEvent::SummaryData {
                payload: event::SummaryData {
                    conversation_id: id,
                    // A string, as the original frontend renders it: the clinical text.
                    summary: summary.map(|d| SummaryRecord::from_document(&d).clinical),
                },
            }
        }
        QueryKind::GetMedicalHistory => {
            let history = store
                .get_document(DocumentKind::MedicalHistory, &id)
                .await?;
            ServerEvent::MedicalHistoryData {
                payload: event::MedicalHistoryData::new(id, history.map(|d| d.content)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_typed_values() {
        assert_eq!(
            parse_request(r#"{"type":"get_messages","payload":{"conversationId":"c1"}}"#),
            Ok(Request::Query {
                kind: QueryKind::GetMessages,
                conversation_id: "c1".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"type":"chat_message","payload":{"text":"hi"}}"#),
            Ok(Request::Chat { text: "hi".into() })
        );
        let code = |text: &str| parse_request(text).unwrap_err().code;
        assert_eq!(code("{not json"), "bad_json");
        let deep = format!(
            r#"{{"type":"get_messages","payload":{}"#,
            "[".repeat(10_000)
        );
        assert_eq!(code(&deep), "bad_json", "nesting limit");
        assert_eq!(code(&"[".repeat(10_000)), "invalid_field", "not an object");
        assert_eq!(code(r#"{"type":5}"#), "invalid_field");
        assert_eq!(code(r#"{"payload":{}}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_message_type");
        assert_eq!(code(r#"{"type":"get_summary"}"#), "invalid_field");
        assert_eq!(
            code(r#"{"type":"get_summary","payload":{"conversationId":7}}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"get_summary","payload":{"conversationId":""}}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"get_summary","payload":[1,2]}"#),
            "invalid_field"
        );
    }

    #[test]
    fn a_huge_unknown_type_is_not_echoed_in_full() {
        let kind = "x".repeat(10_000);
        let problem = parse_request(&format!(r#"{{"type":"{kind}"}}"#)).unwrap_err();
        assert_eq!(problem.code, "unknown_message_type");
        assert!(problem.message.len() < 100, "{}", problem.message);
    }
}
