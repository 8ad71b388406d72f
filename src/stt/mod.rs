//! Speech-to-text: PCM16 mono 24 kHz in, ordered utterance transcripts out.
//!
//! Owns the [`SpeechToText`] seam and its one production implementation, the OpenAI Realtime
//! transcription client in [`realtime`], plus the local voice-activity detector in [`vad`].
//! Key decision: a session is a pair of bounded channels ([`SttSession`]), not a big `async fn`;
//! the provider connection (reconnects, replay, rotation) lives in a task behind them, so the
//! pipeline sees one uninterrupted stream of [`SttEvent`]s per conversation.

use tokio::sync::mpsc;

pub mod realtime;
pub mod vad;

/// What the conversation needs from a transcription session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SttOptions {
    /// The conversation's languages (ISO-639-1, clinician's first), used as provider hints.
    pub languages: Vec<String>,
    /// Free-text prompt (style, context) for models that take one.
    pub prompt: Option<String>,
    /// Vocabulary hints, e.g. the clinic's medication glossary.
    pub keywords: Vec<String>,
}

/// Input to a session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttInput {
    /// PCM16 mono 24 kHz samples; any length, 20–100 ms is typical.
    Audio(Vec<i16>),
    /// End the current turn now (push-to-talk release).
    Commit,
    /// Graceful end of input: flush, commit, wait for the last transcript, then [`SttEvent::Closed`].
    Close,
}

/// Connection state, forwarded to clients as `openai_connected` / `openai_disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    Connected,
    /// The provider connection dropped; retry number `attempt` (from 1) is pending.
    Reconnecting {
        attempt: u32,
    },
    /// Gave up (or closed); no more transcripts will come.
    Disconnected,
}

/// Output of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SttEvent {
    /// The provider's VAD heard speech begin.
    SpeechStarted { item_id: String },
    /// The provider's VAD heard speech end; `audio_end_ms` counts from the start of the
    /// conversation's audio (not of the provider session, which restarts on reconnect).
    SpeechStopped { item_id: String, audio_end_ms: u64 },
    /// A turn was committed for transcription.
    Committed {
        item_id: String,
        previous_item_id: Option<String>,
    },
    /// Append-only partial text of a turn (live captions).
    Delta { item_id: String, delta: String },
    /// A turn's transcript. Emitted once per turn, in turn order (see `realtime::session`).
    Final {
        item_id: String,
        previous_item_id: Option<String>,
        text: String,
        /// Languages the provider detected (ISO-639-1); empty when it did not say.
        languages: Vec<String>,
        /// Mean token probability, when the provider sent log-probabilities.
        confidence: Option<f32>,
    },
    /// A turn (`item_id`) or the whole session (`None`, followed by `Closed`) failed.
    Failed {
        item_id: Option<String>,
        code: String,
        message: String,
    },
    /// Provider connection state changed.
    Status(ConnectionStatus),
    /// Something recoverable went wrong (malformed provider frame, dropped audio, provider error).
    Warning { code: String, message: String },
    /// The session ended; nothing follows.
    Closed,
}

/// A running transcription session.
#[derive(Debug)]
pub struct SttSession {
    /// Audio and control in. Bounded; when full the sender waits (Block): audio is never dropped
    /// here, the wait propagates back to the audio socket as credit backpressure. Dropping the
    /// sender is the same as [`SttInput::Close`].
    pub audio: mpsc::Sender<SttInput>,
    /// Events out. Bounded; when full the session task waits (Block), so the consumer must read
    /// promptly (the pipeline does; the session keeps buffering audio meanwhile). Dropping the
    /// receiver ends the session.
    pub events: mpsc::Receiver<SttEvent>,
}

/// A transcription provider.
///
/// # For Implementations
/// `open` returns once the provider accepted the connection, so bad credentials fail here and
/// not later. After that, every failure is reported as events and the stream ends with
/// [`SttEvent::Closed`].
#[async_trait::async_trait]
pub trait SpeechToText: Send + Sync {
    /// Opens one session for one conversation.
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable configuration, [`Error::Unauthorized`] or
    /// [`Error::Rejected`] when the provider refuses us, [`Error::Unavailable`] when it cannot be
    /// reached within the retry policy.
    async fn open(&self, options: SttOptions) -> Result<SttSession, Error>;
}

/// Speech-to-text errors; each maps to a stable [`code`](Error::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid speech-to-text configuration: {0}")]
    Config(String),
    #[error("the speech-to-text provider rejected the credentials (HTTP {status})")]
    Unauthorized { status: u16 },
    #[error("the speech-to-text provider refused the connection (HTTP {status})")]
    Rejected { status: u16 },
    #[error("the speech-to-text provider is unreachable after {attempts} attempts: {reason}")]
    Unavailable { attempts: u32, reason: String },
    #[error("the speech-to-text provider closed the session (code {code}): {reason}")]
    ClosedByProvider { code: u16, reason: String },
}

impl Error {
    /// Stable snake_case code for WebSocket `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "stt_config",
            Error::Unauthorized { .. } => "stt_unauthorized",
            Error::Rejected { .. } => "stt_rejected",
            Error::Unavailable { .. } => "stt_unavailable",
            Error::ClosedByProvider { .. } => "stt_closed",
        }
    }
}
