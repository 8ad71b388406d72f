//! Serde types for the OpenAI Realtime transcription protocol, both dialects; no I/O.
//!
//! Client events cover the GA `session.update` (`session.type = "transcription"`), the beta
//! `transcription_session.update`, and the audio buffer events. Server events are a tagged enum
//! whose `Unknown` variant swallows every type we do not act on (rate limits, item lifecycle,
//! segments), so a provider adding events never breaks a session. Both directions serialize and
//! deserialize: the fake provider in `testing` speaks the same types from the other side.

use serde::{Deserialize, Serialize};

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    /// GA configuration (also what speaches accepts, with a beta-shaped session).
    #[serde(rename = "session.update")]
    SessionUpdate { session: SessionConfig },
    /// Beta configuration (`OpenAI-Beta: realtime=v1`).
    #[serde(rename = "transcription_session.update")]
    TranscriptionSessionUpdate { session: BetaSession },
    /// Base64 PCM16 LE mono 24 kHz. The server never acknowledges it.
    #[serde(rename = "input_audio_buffer.append")]
    Append { audio: String },
    /// Ends the current turn; an error if the buffer holds under 100 ms.
    #[serde(rename = "input_audio_buffer.commit")]
    Commit,
    /// Discards the uncommitted buffer.
    #[serde(rename = "input_audio_buffer.clear")]
    Clear,
}

/// The `session` of a `session.update`: the GA shape, or the beta shape speaches expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SessionConfig {
    Ga(GaSession),
    Beta(BetaSession),
}

/// GA transcription session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaSession {
    /// Always `"transcription"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub audio: GaAudio,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaAudio {
    pub input: GaAudioInput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaAudioInput {
    pub format: AudioFormat,
    pub transcription: Transcription,
    /// Always serialized: `null` turns server VAD off.
    #[serde(default)]
    pub turn_detection: Option<TurnDetection>,
    #[serde(default)]
    pub noise_reduction: Option<NoiseReduction>,
}

/// GA audio format; `audio/pcm` supports only `rate: 24000`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

impl AudioFormat {
    /// PCM16 mono 24 kHz, the only format Tandem sends.
    pub fn pcm24k() -> AudioFormat {
        AudioFormat {
            kind: "audio/pcm".into(),
            rate: Some(24_000),
        }
    }
}

/// Transcription model settings (same field names in both dialects).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// GA, `gpt-transcribe` family only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// GA, `gpt-transcribe` family only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
}

/// Server-side turn detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_padding_ms: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        silence_duration_ms: Option<u32>,
    },
    SemanticVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eagerness: Option<String>,
    },
}

/// Provider-side noise reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseReduction {
    #[serde(rename = "type")]
    pub kind: NoiseReductionType,
}

/// `near_field` = headset; `far_field` = room or laptop microphone (an exam room).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReductionType {
    NearField,
    FarField,
}

/// Beta transcription session (and the speaches `session.update` body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BetaSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio_format: Option<String>,
    pub input_audio_transcription: Transcription,
    #[serde(default)]
    pub turn_detection: Option<TurnDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio_noise_reduction: Option<NoiseReduction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

/// What the server sends. Unlisted types deserialize to `Unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.created", alias = "transcription_session.created")]
    SessionCreated {
        #[serde(default)]
        session: serde_json::Value,
    },
    #[serde(rename = "session.updated", alias = "transcription_session.updated")]
    SessionUpdated {
        #[serde(default)]
        session: serde_json::Value,
    },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        item_id: String,
        #[serde(default)]
        audio_start_ms: u64,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped {
        item_id: String,
        #[serde(default)]
        audio_end_ms: u64,
    },
    #[serde(rename = "input_audio_buffer.committed")]
    Committed {
        item_id: String,
        #[serde(default)]
        previous_item_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.cleared")]
    Cleared,
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    TranscriptionDelta {
        item_id: String,
        #[serde(default)]
        delta: String,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    TranscriptionCompleted {
        item_id: String,
        #[serde(default)]
        transcript: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<Vec<LogProb>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        languages: Option<Vec<DetectedLanguage>>,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    TranscriptionFailed { item_id: String, error: ErrorBody },
    #[serde(rename = "error")]
    Error { error: ErrorBody },
    #[serde(other)]
    Unknown,
}

/// One token's log-probability (present when `include` asks for them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogProb {
    #[serde(default)]
    pub token: String,
    pub logprob: f64,
}

/// A language the provider detected (`gpt-transcribe` family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedLanguage {
    pub code: String,
}

/// The `error` object of `error` and `...failed` events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// The error `code` OpenAI sends before closing a session at its maximum length.
pub const SESSION_EXPIRED: &str = "session_expired";
/// The error `code` of a commit on an empty (or under 100 ms) buffer.
pub const COMMIT_EMPTY: &str = "input_audio_buffer_commit_empty";

/// Mean token probability (`exp` of the mean log-probability), a 0..=1 confidence.
pub fn confidence(logprobs: &[LogProb]) -> Option<f32> {
    if logprobs.is_empty() {
        return None;
    }
    let mean = logprobs.iter().map(|l| l.logprob).sum::<f64>() / logprobs.len() as f64;
    Some(mean.exp() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn round_trip_client(event: &ClientEvent, expected: Value) {
        let v = serde_json::to_value(event).unwrap();
        assert_eq!(v, expected);
        let back: ClientEvent = serde_json::from_value(expected).unwrap();
        assert_eq!(&back, event);
    }

    #[test]
    fn ga_session_update() {
        let event = ClientEvent::SessionUpdate {
            session: SessionConfig::Ga(GaSession {
                kind: "transcription".into(),
                audio: GaAudio {
                    input: GaAudioInput {
                        format: AudioFormat::pcm24k(),
                        transcription: Transcription {
                            model: "gpt-4o-transcribe".into(),
                            prompt: Some("metformin".into()),
                            ..Default::default()
                        },
                        turn_detection: Some(TurnDetection::ServerVad {
                            threshold: Some(0.5),
                            prefix_padding_ms: Some(300),
                            silence_duration_ms: Some(500),
                        }),
                        noise_reduction: Some(NoiseReduction {
                            kind: NoiseReductionType::FarField,
                        }),
                    },
                },
                include: vec!["item.input_audio_transcription.logprobs".into()],
            }),
        };
        round_trip_client(
            &event,
            json!({"type":"session.update","session":{
                "type":"transcription",
                "audio":{"input":{
                    "format":{"type":"audio/pcm","rate":24000},
                    "transcription":{"model":"gpt-4o-transcribe","prompt":"metformin"},
                    "turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":500},
                    "noise_reduction":{"type":"far_field"}}},
                "include":["item.input_audio_transcription.logprobs"]}}),
        );
    }

    #[test]
    fn beta_session_update_with_null_turn_detection() {
        let session = BetaSession {
            input_audio_format: Some("pcm16".into()),
            input_audio_transcription: Transcription {
                model: "whisper-1".into(),
                prompt: Some("Transcribe the input audio to text".into()),
                ..Default::default()
            },
            turn_detection: None,
            input_audio_noise_reduction: None,
            include: vec![],
        };
        round_trip_client(
            &ClientEvent::TranscriptionSessionUpdate {
                session: session.clone(),
            },
            json!({"type":"transcription_session.update","session":{
                "input_audio_format":"pcm16",
                "input_audio_transcription":{"model":"whisper-1","prompt":"Transcribe the input audio to text"},
                "turn_detection":null}}),
        );
        // speaches: the same body under `session.update` parses as the beta shape.
        let speaches: ClientEvent =
            serde_json::from_value(json!({"type":"session.update","session":{
            "input_audio_transcription":{"model":"whisper-1"},"turn_detection":null}}))
            .unwrap();
        assert!(matches!(
            speaches,
            ClientEvent::SessionUpdate {
                session: SessionConfig::Beta(_)
            }
        ));
    }

    #[test]
    fn buffer_events() {
        round_trip_client(
            &ClientEvent::Append {
                audio: "AAA=".into(),
            },
            json!({"type":"input_audio_buffer.append","audio":"AAA="}),
        );
        round_trip_client(
            &ClientEvent::Commit,
            json!({"type":"input_audio_buffer.commit"}),
        );
        round_trip_client(
            &ClientEvent::Clear,
            json!({"type":"input_audio_buffer.clear"}),
        );
    }

    #[test]
    fn server_events() {
        let cases: Vec<(Value, ServerEvent)> = vec![
            (
                json!({"type":"transcription_session.created","event_id":"e1","session":{"id":"s"}}),
                ServerEvent::SessionCreated {
                    session: json!({"id":"s"}),
                },
            ),
            (
                json!({"type":"input_audio_buffer.speech_started","event_id":"e","item_id":"i1","audio_start_ms":1000}),
                ServerEvent::SpeechStarted {
                    item_id: "i1".into(),
                    audio_start_ms: 1000,
                },
            ),
            (
                json!({"type":"input_audio_buffer.committed","event_id":"e","item_id":"i2","previous_item_id":null}),
                ServerEvent::Committed {
                    item_id: "i2".into(),
                    previous_item_id: None,
                },
            ),
            (
                json!({"type":"conversation.item.input_audio_transcription.delta","event_id":"e","item_id":"i2","content_index":0,"delta":"Hel"}),
                ServerEvent::TranscriptionDelta {
                    item_id: "i2".into(),
                    delta: "Hel".into(),
                },
            ),
            (
                json!({"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"i2",
                       "content_index":0,"transcript":"Hello.","usage":{"type":"duration","seconds":1.2},
                       "logprobs":[{"token":"Hello","logprob":-0.1,"bytes":[72]}],"languages":[{"code":"en"}]}),
                ServerEvent::TranscriptionCompleted {
                    item_id: "i2".into(),
                    transcript: "Hello.".into(),
                    logprobs: Some(vec![LogProb {
                        token: "Hello".into(),
                        logprob: -0.1,
                    }]),
                    languages: Some(vec![DetectedLanguage { code: "en".into() }]),
                },
            ),
            (
                json!({"type":"conversation.item.input_audio_transcription.failed","event_id":"e","item_id":"i3","content_index":0,
                       "error":{"type":"server_error","code":"audio_unintelligible","message":"no","param":null}}),
                ServerEvent::TranscriptionFailed {
                    item_id: "i3".into(),
                    error: ErrorBody {
                        kind: Some("server_error".into()),
                        code: Some("audio_unintelligible".into()),
                        message: "no".into(),
                    },
                },
            ),
            (
                json!({"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"session_expired",
                       "message":"Your session hit the maximum duration of 60 minutes."}}),
                ServerEvent::Error {
                    error: ErrorBody {
                        kind: Some("invalid_request_error".into()),
                        code: Some(SESSION_EXPIRED.into()),
                        message: "Your session hit the maximum duration of 60 minutes.".into(),
                    },
                },
            ),
            (
                json!({"type":"rate_limits.updated","rate_limits":[]}),
                ServerEvent::Unknown,
            ),
        ];
        for (json, expected) in cases {
            let got: ServerEvent = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(got, expected, "{json}");
            if expected != ServerEvent::Unknown {
                let again: ServerEvent =
                    serde_json::from_value(serde_json::to_value(&got).unwrap()).unwrap();
                assert_eq!(again, expected);
            }
        }
    }

    #[test]
    fn malformed_known_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<ServerEvent>(
            r#"{"type":"input_audio_buffer.committed","item_id":5}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ServerEvent>("{not json").is_err());
    }

    #[test]
    fn confidence_from_logprobs() {
        assert_eq!(confidence(&[]), None);
        let c = confidence(&[
            LogProb {
                token: "a".into(),
                logprob: 0.0,
            },
            LogProb {
                token: "b".into(),
                logprob: -0.2,
            },
        ])
        .unwrap();
        assert!((c - (-0.1f32).exp()).abs() < 1e-6);
    }
}
