//! The control socket (`/ws` and `/`, `?token=`): the original frontend's request/reply
//! channel (`select_conversation`, `get_messages`, `get_actions`, `get_summary`,
//! `get_medical_history`) and the pushes for conversations its user asked about.
//!
//! Design decision: replies go only to the socket that asked (the frontend opens five per tab
//! and each waits for its own answer), while asking about a conversation subscribes *all* of
//! the user's control sockets to its pushes ([`crate::pipeline::hub::Hub::mark_interest`]).

use serde::Deserialize;
use serde_json::Value;
use warp::http::HeaderMap;
use warp::ws::WebSocket;

use super::error::ApiError;
use super::handlers;
use super::ws::{self, close};
use crate::auth::Principal;
use crate::pipeline::event::{self, ServerEvent};
use crate::records::{SummaryRecord, SummaryView};
use crate::server::AppState;
use crate::store::{self, ConversationStatus, DocumentKind, Page};
use crate::wire::{ActionView, MessageView};

/// A client request: `{"type": "...", "payload": {"conversationId": "..."}}`.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

/// Serves one control socket until it closes.
pub async fn serve(socket: WebSocket, state: AppState, headers: HeaderMap, query: String) {
    let hub = state.pipelines.hub().clone();
    let (mut stream, out) = ws::split(socket, &hub, state.http.control_pacing, &state.sockets);
    let Some(principal) = ws::authenticate(&state.auth, &headers, &query) else {
        out.finish(Some((close::UNAUTHORIZED, "Invalid or missing token")))
            .await;
        return;
    };
    state.ws_connections.add(&[("socket", "control")], 1);
    hub.register_control(&principal.user_id, &out.client);
    out.send(&ServerEvent::System {
        text: format!(
            "Welcome! You are connected to Tandem as {}.",
            principal.username
        ),
    });
    while let Some(message) = out.next_message(&mut stream).await {
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "control socket read failed");
                break;
            }
        };
        if message.is_close() {
            break;
        }
        let Ok(text) = message.to_str() else {
            continue; // pings, pongs and binary frames carry no requests
        };
        let reply = match serde_json::from_str::<Request>(text) {
            Ok(request) => handle(&state, &principal, request).await,
            Err(_) => ServerEvent::error("bad_json", "Messages must be JSON objects with a type."),
        };
        out.send(&reply);
    }
    state.ws_connections.add(&[("socket", "control")], -1);
    out.finish(None).await;
}

async fn handle(state: &AppState, p: &Principal, request: Request) -> ServerEvent {
    if request.kind == "chat_message" {
        let text = request.payload["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return ServerEvent::MessageReceived {
            id: store::now_millis().to_string(),
            text,
        };
    }
    if !matches!(
        request.kind.as_str(),
        "select_conversation"
            | "get_messages"
            | "get_actions"
            | "get_summary"
            | "get_medical_history"
    ) {
        return ServerEvent::error(
            "unknown_message_type",
            format!("Unknown message type {:?}.", request.kind),
        );
    }
    let Some(conversation_id) = request.payload["conversationId"].as_str() else {
        return ServerEvent::error("invalid_field", "payload.conversationId is required.");
    };
    match answer(state, p, &request.kind, conversation_id).await {
        Ok(event) => event,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(error = %e, request = %request.kind, "control request failed");
            }
            ServerEvent::error(e.code(), e.public_message())
        }
    }
}

async fn answer(
    state: &AppState,
    p: &Principal,
    kind: &str,
    conversation_id: &str,
) -> Result<ServerEvent, ApiError> {
    let conversation = handlers::conversation(state, p, conversation_id).await?;
    handlers::audit(state, p, "read", "conversation", conversation_id).await?;
    state
        .pipelines
        .hub()
        .mark_interest(conversation_id, &p.user_id);
    let store = &state.store;
    let id = conversation_id.to_owned();
    Ok(match kind {
        "select_conversation" => {
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
        "get_messages" => {
            let messages = store.list_messages(&id, &Page::default()).await?;
            ServerEvent::MessageList {
                payload: event::MessageList {
                    conversation_id: id,
                    messages: messages.iter().map(MessageView::from).collect(),
                },
            }
        }
        "get_actions" => {
            let actions = store.list_actions(&id).await?;
            ServerEvent::ActionList {
                payload: event::ActionList {
                    conversation_id: id,
                    actions: actions.iter().map(ActionView::from).collect(),
                },
            }
        }
        "get_summary" => {
            let summary = store.get_document(DocumentKind::Summary, &id).await?;
            ServerEvent::SummaryData {
                payload: event::SummaryData {
                    conversation_id: id,
                    // A string, as the original frontend renders it: the clinical text.
                    summary: summary.map(|d| SummaryRecord::from_document(&d).clinical),
                },
            }
        }
        _ => {
            let history = store
                .get_document(DocumentKind::MedicalHistory, &id)
                .await?;
            ServerEvent::MedicalHistoryData {
                payload: event::MedicalHistoryData::new(id, history.map(|d| d.content)),
            }
        }
    })
}
