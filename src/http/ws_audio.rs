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
use super::ws::{self, close, Problem};
use crate::audio::{sniff, InputFormat};
use crate::auth::Principal;
use crate::pipeline::event::ServerEvent;
use crate::pipeline::speaker::Role;
use crate::pipeline::{cluster, AudioInput, Error};
use crate::server::AppState;
use crate::store::{self, Conversation, ConversationStatus};

/// A JSON text frame as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    audio: Option<String>,
    mime_type: Option<String>,
    sample_rate: Option<u32>,
    role: Option<String>,
    tts_streaming: Option<bool>,
}

/// What a text frame asks the audio socket to do, parsed and checked before any of it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Recording bytes (a base64 text frame or `input_audio_buffer.append`).
    Audio(Vec<u8>),
    /// `input_audio_buffer.finalize` (or `.commit`): transcribe what is buffered now.
    Finalize,
    /// `input_audio_buffer.pause` (`true`) / `.resume` (`false`).
    Paused(bool),
    /// `start`: a TTS streaming preference and/or the declared input format. `format` is
    /// `None` only when the message set the TTS preference alone.
    Start {
        tts_streaming: Option<bool>,
        format: Option<InputFormat>,
    },
    /// `speaker`: push-to-talk role, `None` for automatic.
    Speaker(Option<Role>),
}

/// Parses one text frame. Pure, so the fuzz target `audio_message` runs exactly this.
///
/// # Errors
/// A [`Problem`] coded `bad_json`, `invalid_field`, `invalid_base64`, `unknown_message_type`
/// or the audio layer's code for an unsupported declared format.
pub fn parse_text(text: &str) -> Result<Command, Problem> {
    if !text.trim_start().starts_with('{') {
        return decode_base64(text).map(Command::Audio);
    }
    let frame: Frame = ws::parse_frame(text)?;
    Ok(match frame.kind.as_str() {
        "input_audio_buffer.append" => {
            let audio = frame.audio.ok_or_else(|| {
                Problem::new("invalid_field", "input_audio_buffer.append needs `audio`.")
            })?;
            Command::Audio(decode_base64(&audio)?)
        }
        "input_audio_buffer.finalize" | "input_audio_buffer.commit" => Command::Finalize,
        "input_audio_buffer.pause" => Command::Paused(true),
        "input_audio_buffer.resume" => Command::Paused(false),
        "start" => {
            let format = if frame.tts_streaming.is_some() && frame.mime_type.is_none() {
                None
            } else {
                let mime = frame.mime_type.unwrap_or_default();
                let format = sniff::parse_mime(&mime, frame.sample_rate)
                    .map_err(|e| Problem::new(e.code(), format!("{e}: {}", ws::quote(&mime))))?;
                Some(format)
            };
            Command::Start {
                tts_streaming: frame.tts_streaming,
                format,
            }
        }
        "speaker" => Command::Speaker(match frame.role.as_deref() {
            None | Some("auto") => None,
            Some(r) => Some(Role::parse(r).ok_or_else(|| {
                Problem::new("invalid_field", "role must be clinician, patient or auto.")
            })?),
        }),
        other => {
            return Err(Problem::new(
                "unknown_message_type",
                format!("Unknown message type {}.", ws::quote(other)),
            ))
        }
    })
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
        Err(Error::Cluster(cluster::Error::Busy)) => {
            tracing::info!(%conversation_id, "audio refused: the conversation is driven by another instance");
            out.send(&ServerEvent::error(
                cluster::Error::Busy.code(),
                "This conversation is being recorded through another connection; close it \
                 (or wait until it drops) and reconnect.",
            ));
            out.finish(Some((close::TRY_AGAIN_LATER, "Conversation busy")))
                .await;
            return;
        }
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
                closing = out.report_read_error(&e);
                break;
            }
        };
        if message.is_close() {
            break;
        }
        let outcome = if message.is_binary() {
            input
                .push(message.into_bytes().to_vec())
                .await
                .map_err(Problem::from)
        } else if let Ok(text) = message.to_str() {
            match parse_text(text) {
                Ok(command) => run(&mut input, command).await,
                Err(problem) => Err(problem),
            }
        } else {
            Ok(()) // ping/pong
        };
        if let Err(problem) = outcome {
            let fatal = matches!(problem.code, "shutting_down" | "session_ended");
            out.send(&problem.event());
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
    let principal = ws::authenticate(&state.auth, headers, query).map_err(|e| {
        refusal(
            close::UNAUTHORIZED,
            "Invalid or missing token",
            Some(ServerEvent::error(e.code(), e.to_string())),
        )
    })?;
    let conversation_id = query_param(query, "conversationId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            refusal(
                close::POLICY,
                "conversationId is required",
                Some(ServerEvent::error(
                    "invalid_field",
                    "conversationId is required.",
                )),
            )
        })?;
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

impl From<crate::pipeline::Error> for Problem {
    fn from(e: crate::pipeline::Error) -> Self {
        Problem::new(e.code(), e.to_string())
    }
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

async fn run(input: &mut AudioInput, command: Command) -> Result<(), Problem> {
    match command {
        Command::Audio(bytes) => Ok(input.push(bytes).await?),
        Command::Finalize => Ok(input.finalize().await?),
        Command::Paused(paused) => {
            input.set_paused(paused);
            Ok(())
        }
        Command::Start {
            tts_streaming,
            format,
        } => {
            if let Some(on) = tts_streaming {
                input.set_tts_streaming(on);
            }
            match format {
                Some(format) => Ok(input.declare(format).await?),
                None => Ok(()),
            }
        }
        Command::Speaker(role) => {
            input.set_speaker(role);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_parse_into_commands() {
        assert_eq!(parse_text("AAEC"), Ok(Command::Audio(vec![0, 1, 2])));
        assert_eq!(
            parse_text("data:audio/webm;base64,AAEC"),
            Ok(Command::Audio(vec![0, 1, 2]))
        );
        assert_eq!(
            parse_text(r#"{"type":"input_audio_buffer.append","audio":"AAEC"}"#),
            Ok(Command::Audio(vec![0, 1, 2]))
        );
        assert_eq!(
            parse_text(r#"{"type":"input_audio_buffer.commit"}"#),
            Ok(Command::Finalize)
        );
        assert_eq!(
            parse_text(r#"{"type":"start","ttsStreaming":true}"#),
            Ok(Command::Start {
                tts_streaming: Some(true),
                format: None
            })
        );
        assert_eq!(
            parse_text(r#"{"type":"start","mimeType":"audio/webm;codecs=opus"}"#),
            Ok(Command::Start {
                tts_streaming: None,
                format: Some(InputFormat::WebM)
            })
        );
        assert_eq!(
            parse_text(r#"{"type":"speaker","role":"patient"}"#),
            Ok(Command::Speaker(Some(Role::Patient)))
        );
        assert_eq!(
            parse_text(r#"{"type":"speaker","role":"auto"}"#),
            Ok(Command::Speaker(None))
        );
    }

    #[test]
    fn bad_text_frames_get_stable_codes() {
        let code = |text: &str| parse_text(text).unwrap_err().code;
        assert_eq!(code("%%% not base64"), "invalid_base64");
        assert_eq!(code(&"[".repeat(100_000)), "invalid_base64");
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(
            code(&format!("{{\"a\":{}", "[".repeat(100_000))),
            "bad_json"
        );
        assert_eq!(
            code(r#"{"type":"input_audio_buffer.append","audio":5}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"input_audio_buffer.append"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"type":"input_audio_buffer.append","audio":"@@"}"#),
            "invalid_base64"
        );
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_message_type");
        assert_eq!(code(r#"{"type":"start"}"#), "audio_unsupported");
        assert_eq!(
            code(r#"{"type":"start","mimeType":"audio/webm;codecs=vorbis"}"#),
            "audio_unsupported"
        );
        assert_eq!(
            code(r#"{"type":"speaker","role":"nurse"}"#),
            "invalid_field"
        );
    }
}
