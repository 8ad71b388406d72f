//! The audio socket (`/transcription?conversationId=…&token=…`): browser audio in, the
//! conversation's live events out.
//!
//! Accepts the original frontend's messages (`input_audio_buffer.append|finalize|pause|
//! resume`), plain base64 text frames, binary frames, an optional `start` declaring the MIME
//! type (and, with `ttsStreaming: true`, asking for chunked `tts_audio`, as does
//! `?ttsStreaming=true` on the URL), and `speaker` for push-to-talk. Design decision: the reader awaits each chunk's
//! admission into the pipeline before reading the next frame, so a full pipeline stops the
//! reads and TCP pushes back on the browser; memory never grows with a fast sender. Closing
//! the socket is the end of input (the original frontend never sends `finalize`): everything
//! received is still decoded, transcribed and processed.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use warp::http::HeaderMap;
use warp::ws::WebSocket;

use super::filters::query_param;
use super::ws::{self, close};
use crate::audio::sniff;
use crate::auth::Principal;
use crate::pipeline::event::ServerEvent;
use crate::pipeline::speaker::Role;
use crate::pipeline::AudioInput;
use crate::server::AppState;
use crate::store::{self, Conversation, ConversationStatus};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    audio: Option<String>,
    mime_type: Option<String>,
    sample_rate: Option<u32>,
    role: Option<String>,
    tts_streaming: Option<bool>,
}

/// Serves one audio socket until it closes.
pub async fn serve(socket: WebSocket, state: AppState, headers: HeaderMap, query: String) {
    let hub = state.pipelines.hub().clone();
    let (mut stream, out) = ws::split(socket, &hub, Duration::ZERO, &state.sockets);
    let (principal, conversation) = match admit(&state, &headers, &query).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if let Some(event) = &refusal.event {
                out.send(event);
            }
            out.finish(Some((refusal.code, refusal.reason))).await;
            return;
        }
    };
    let conversation_id = conversation.id.clone();
    hub.subscribe_audio(&conversation_id, &principal.user_id, &out.client);
    out.send(&ServerEvent::BackendConnected {
        message: "Connected to backend service.",
        status: state.pipelines.stt_status(&conversation_id),
    });
    let mut input = match state
        .pipelines
        .attach(&conversation, out.client.clone())
        .await
    {
        Ok(input) => input,
        Err(e) => {
            tracing::warn!(%conversation_id, code = e.code(), error = %e, "cannot start transcription");
            out.send(&ServerEvent::error(
                e.code(),
                format!("Transcription is unavailable: {e}"),
            ));
            out.finish(Some((close::SERVER_ERROR, "Transcription unavailable")))
                .await;
            return;
        }
    };
    // `POST …/end` may have run between admission and attachment (it writes the status before
    // stopping the audio), in which case this socket must not keep a new session open.
    let ended = matches!(
        state
            .store
            .get_conversation(&principal.organization_id, &conversation_id)
            .await,
        Ok(c) if c.conversation.status != ConversationStatus::Active
    );
    if ended {
        out.send(&ServerEvent::error(
            "conversation_ended",
            "This conversation has ended; start a new one to record.",
        ));
        input.close().await;
        out.finish(Some((close::POLICY, "Conversation has ended")))
            .await;
        return;
    }
    if let Some(on) = query_param(&query, "ttsStreaming").and_then(|v| parse_flag(&v)) {
        input.set_tts_streaming(on);
    }
    state.ws_connections.add(&[("socket", "audio")], 1);
    tracing::info!(%conversation_id, user_id = %principal.user_id, "audio socket attached");

    let mut closing = None;
    loop {
        let message = tokio::select! {
            message = out.next_message(&mut stream) => message,
            // The visit ended: stop reading; closing below drains what was received.
            () = input.ended() => {
                closing = Some((close::NORMAL, "Conversation ended"));
                break;
            }
        };
        let Some(message) = message else { break };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                // tungstenite reports an over-limit frame as a capacity error.
                let too_big = e.to_string().to_ascii_lowercase().contains("too long")
                    || e.to_string().to_ascii_lowercase().contains("capacity");
                if too_big {
                    out.send(&ServerEvent::error(
                        "frame_too_large",
                        "An audio frame exceeded the size limit.",
                    ));
                    closing = Some((close::TOO_BIG, "Frame too large"));
                } else {
                    tracing::debug!(error = %e, "audio socket read failed");
                }
                break;
            }
        };
        if message.is_close() {
            break;
        }
        let outcome = if message.is_binary() {
            push(&mut input, message.into_bytes().to_vec()).await
        } else if let Ok(text) = message.to_str() {
            handle_text(&mut input, text).await
        } else {
            Ok(()) // ping/pong
        };
        if let Err(problem) = outcome {
            let fatal = matches!(problem.code, "shutting_down" | "session_ended");
            out.send(&ServerEvent::error(problem.code, problem.message));
            if fatal {
                closing = Some((close::GOING_AWAY, "Transcription ended"));
                break;
            }
        }
    }
    input.close().await;
    tracing::info!(%conversation_id, "audio socket closed");
    state.ws_connections.add(&[("socket", "audio")], -1);
    out.finish(closing).await;
}

/// Why a socket is closed before it starts.
struct Refusal {
    code: u16,
    reason: &'static str,
    /// An `error` event sent before the close, for clients that only read messages.
    event: Option<ServerEvent>,
}

/// Authenticates the socket and loads its conversation, which must be the caller's
/// organization's and still active.
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query: &str,
) -> Result<(Principal, Conversation), Refusal> {
    let refusal = |code, reason, event| Refusal {
        code,
        reason,
        event,
    };
    let principal = ws::authenticate(&state.auth, headers, query)
        .ok_or_else(|| refusal(close::UNAUTHORIZED, "Invalid or missing token", None))?;
    let conversation_id = query_param(query, "conversationId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refusal(close::POLICY, "conversationId is required", None))?;
    match state
        .store
        .get_conversation(&principal.organization_id, &conversation_id)
        .await
    {
        Ok(c) if c.conversation.status == ConversationStatus::Active => {
            Ok((principal, c.conversation))
        }
        Ok(_) => Err(refusal(
            close::POLICY,
            "Conversation has ended",
            Some(ServerEvent::error(
                "conversation_ended",
                "This conversation has ended; start a new one to record.",
            )),
        )),
        Err(store::Error::NotFound) => Err(refusal(
            close::POLICY,
            "Conversation not found",
            Some(ServerEvent::error("not_found", "Conversation not found")),
        )),
        Err(e) => {
            tracing::error!(error = %e, "audio socket: conversation lookup failed");
            Err(refusal(
                close::SERVER_ERROR,
                "Server error",
                Some(ServerEvent::error(
                    e.code(),
                    "The conversation could not be loaded.",
                )),
            ))
        }
    }
}

/// A message the socket could not act on; sent back as an `error` event.
struct Problem {
    code: &'static str,
    message: String,
}

impl Problem {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
        }
    }
}

async fn push(input: &mut AudioInput, chunk: Vec<u8>) -> Result<(), Problem> {
    input
        .push(chunk)
        .await
        .map_err(|e| Problem::new(e.code(), e.to_string()))
}

fn decode_base64(text: &str) -> Result<Vec<u8>, Problem> {
    // Tolerate a data-URL prefix, which a FileReader produces before the frontend strips it.
    let payload = text.rsplit_once("base64,").map_or(text, |(_, b)| b).trim();
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| Problem::new("invalid_base64", "Audio must be base64-encoded."))
}

/// A boolean query value (`true|false|1|0`).
fn parse_flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

async fn handle_text(input: &mut AudioInput, text: &str) -> Result<(), Problem> {
    if !text.trim_start().starts_with('{') {
        return push(input, decode_base64(text)?).await;
    }
    let message: ClientMessage = serde_json::from_str(text)
        .map_err(|_| Problem::new("bad_json", "Messages must be JSON objects with a type."))?;
    match message.kind.as_str() {
        "input_audio_buffer.append" => {
            let audio = message.audio.ok_or_else(|| {
                Problem::new("invalid_field", "input_audio_buffer.append needs `audio`.")
            })?;
            push(input, decode_base64(&audio)?).await
        }
        "input_audio_buffer.finalize" | "input_audio_buffer.commit" => input
            .finalize()
            .await
            .map_err(|e| Problem::new(e.code(), e.to_string())),
        "input_audio_buffer.pause" => {
            input.set_paused(true);
            Ok(())
        }
        "input_audio_buffer.resume" => {
            input.set_paused(false);
            Ok(())
        }
        "start" => {
            if let Some(on) = message.tts_streaming {
                input.set_tts_streaming(on);
                if message.mime_type.is_none() {
                    // Only the TTS preference: the input format stays as it was.
                    return Ok(());
                }
            }
            let mime = message.mime_type.unwrap_or_default();
            let format = sniff::parse_mime(&mime, message.sample_rate)
                .map_err(|e| Problem::new(e.code(), format!("{e}: {mime:?}")))?;
            input
                .declare(format)
                .await
                .map_err(|e| Problem::new(e.code(), e.to_string()))
        }
        "speaker" => {
            let role = match message.role.as_deref() {
                None | Some("auto") => None,
                Some(r) => Some(Role::parse(r).ok_or_else(|| {
                    Problem::new("invalid_field", "role must be clinician, patient or auto.")
                })?),
            };
            input.set_speaker(role);
            Ok(())
        }
        other => Err(Problem::new(
            "unknown_message_type",
            format!("Unknown message type {other:?}."),
        )),
    }
}
