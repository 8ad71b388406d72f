//! Language work done by models: language detection, translation, voice-command detection,
//! text-to-speech, visit summaries and synthetic medical histories.
//!
//! Each capability is a trait taken as `Arc<dyn Trait>` by the pipeline, so tests and benches
//! swap in fakes (or point the OpenAI implementations at the loopback fake server) without
//! touching orchestration. The traits speak in domain types ([`Command`], [`Detection`],
//! [`SpeechAudio`]); provider JSON never leaves [`openai`].
//!
//! Languages are ISO 639-1 codes (`"en"`, `"es"`) in plain strings: they come from the store and
//! the wire as strings, and a closed enum would reject a clinic's language pair for no gain.

use std::fmt;

use async_trait::async_trait;

mod error;
pub mod language;
pub mod openai;

pub use error::{Error, Result};
pub use language::{language_name, LocalLanguageDetector};

/// Where a language decision came from; stored with the message for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectionSource {
    /// Trigram statistics over the transcript, restricted to the conversation's languages.
    Local,
    /// A chat-model call, used only when the local guess was ambiguous.
    Llm,
    /// The speech-to-text provider's `languages[]` on the completed transcript.
    SttHint,
}

impl DetectionSource {
    /// Stable snake_case name for storage and events.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionSource::Local => "local",
            DetectionSource::Llm => "llm",
            DetectionSource::SttHint => "stt_hint",
        }
    }
}

/// A language decision for one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// ISO 639-1 code, one of the candidates.
    pub language: String,
    /// 0..=1. Local scores come from the detector; hints and model answers carry no score of
    /// their own and get the nominal values documented on [`LocalLanguageDetector`].
    pub confidence: f32,
    pub source: DetectionSource,
}

/// Decides which of the conversation's languages an utterance is in.
#[async_trait]
pub trait LanguageDetector: Send + Sync {
    /// `candidates` are the conversation's languages (clinician's first); `stt_hint` is the STT
    /// provider's `languages[]` for this utterance, empty when it gave none. Implementations
    /// answer with one of the candidates when candidates are given.
    ///
    /// # Errors
    /// A provider [`Error`] when a model call was needed and failed.
    async fn detect(&self, text: &str, candidates: &[&str], stt_hint: &[&str])
        -> Result<Detection>;
}

/// A clinic glossary entry: how a term must be rendered in translations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlossaryEntry {
    /// The term as it may appear in the source text (a drug name, a local procedure name).
    pub term: String,
    /// Its required rendering in the target language; `None` keeps the term unchanged.
    pub rendering: Option<String>,
}

/// Translates utterances between the conversation's languages.
#[async_trait]
pub trait Translator: Send + Sync {
    /// Returns only the translated text of `text` from `from` to `to` (ISO 639-1).
    ///
    /// # Errors
    /// A provider [`Error`]; [`Error::Malformed`] when the answer is empty or was cut short.
    async fn translate(
        &self,
        text: &str,
        from: &str,
        to: &str,
        glossary: &[GlossaryEntry],
    ) -> Result<String>;
}

/// Unit of a follow-up delay, as the original `schedule_follow_up` tool spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUpUnit {
    Day,
    Week,
    Month,
}

impl FollowUpUnit {
    /// Wire name (`day|week|month`), also the stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            FollowUpUnit::Day => "day",
            FollowUpUnit::Week => "week",
            FollowUpUnit::Month => "month",
        }
    }

    /// Parses the wire name, tolerating case and a plural `s`.
    pub fn parse(s: &str) -> Option<FollowUpUnit> {
        let s = s.trim().to_ascii_lowercase();
        match s.strip_suffix('s').unwrap_or(&s) {
            "day" => Some(FollowUpUnit::Day),
            "week" => Some(FollowUpUnit::Week),
            "month" => Some(FollowUpUnit::Month),
            _ => None,
        }
    }
}

/// How soon a lab order is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabUrgency {
    Routine,
    Urgent,
    Stat,
}

impl LabUrgency {
    /// Wire name (`routine|urgent|stat`).
    pub fn as_str(self) -> &'static str {
        match self {
            LabUrgency::Routine => "routine",
            LabUrgency::Urgent => "urgent",
            LabUrgency::Stat => "stat",
        }
    }

    /// Parses the wire name, case-insensitively.
    pub fn parse(s: &str) -> Option<LabUrgency> {
        match s.trim().to_ascii_lowercase().as_str() {
            "routine" => Some(LabUrgency::Routine),
            "urgent" => Some(LabUrgency::Urgent),
            "stat" => Some(LabUrgency::Stat),
            _ => None,
        }
    }
}

/// A voice command the clinician gave, with every required field present and non-empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    TakeNote {
        content: String,
    },
    ScheduleFollowUp {
        duration: u32,
        unit: FollowUpUnit,
        details: Option<String>,
    },
    WritePrescription {
        medication_name: String,
        dosage: String,
        frequency: String,
        details: Option<String>,
    },
    OrderLab {
        test_name: String,
        details: Option<String>,
        urgency: Option<LabUrgency>,
    },
    RequestSummary,
    RequestMedicalHistory,
    /// A clinic-defined command ([`CustomTool`]); `arguments` is the model's JSON object.
    Custom {
        name: String,
        arguments: serde_json::Value,
    },
}

impl Command {
    /// The tool name, as in the original backend's `command_executed.name`.
    pub fn name(&self) -> &str {
        match self {
            Command::TakeNote { .. } => "take_note",
            Command::ScheduleFollowUp { .. } => "schedule_follow_up",
            Command::WritePrescription { .. } => "write_prescription",
            Command::OrderLab { .. } => "order_lab",
            Command::RequestSummary => "request_summary",
            Command::RequestMedicalHistory => "request_medical_history",
            Command::Custom { name, .. } => name,
        }
    }
}

/// What command detection found in one clinician utterance.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Ordinary speech: nothing to execute.
    None,
    Command(Command),
    /// The clinician asked for a command but left out required values; it must be reported,
    /// never executed with guesses.
    Incomplete {
        /// Tool name.
        name: String,
        /// Names of the missing or empty parameters (wire names, e.g. `dosage`).
        missing: Vec<String>,
    },
}

/// Names of the built-in command tools, as sent to the model; clinic-defined commands may not
/// take them (compared case-insensitively, so the model never sees two near-identical names).
pub const BUILTIN_TOOL_NAMES: &[&str] = &[
    "take_note",
    "schedule_follow_up",
    "write_prescription",
    "order_lab",
    "request_summary",
    "request_medical_history",
];

/// A clinic-defined voice command offered to the model next to the built-in tools.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomTool {
    /// Function name (`^[a-zA-Z0-9_-]{1,64}$`); must not clash with a built-in tool.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object. Its `required` list decides what makes the command
    /// [`CommandOutcome::Incomplete`]. Sent with `strict: false`, since clinic schemas need not
    /// meet strict mode's rules.
    pub parameters: serde_json::Value,
}

/// Per-utterance settings for command detection.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// The clinician's language (ISO 639-1), named in the prompt.
    pub clinician_language: String,
    /// When false only [`CommandContext::custom_tools`] are offered.
    pub builtin_enabled: bool,
    /// When set (e.g. `"hey tandem"`), an utterance that does not start with it is not a
    /// command and costs no model call.
    pub wake_phrase: Option<String>,
    pub custom_tools: Vec<CustomTool>,
}

impl CommandContext {
    /// Built-in tools on, no wake phrase, no clinic commands.
    pub fn new(clinician_language: impl Into<String>) -> CommandContext {
        CommandContext {
            clinician_language: clinician_language.into(),
            builtin_enabled: true,
            wake_phrase: None,
            custom_tools: Vec::new(),
        }
    }

    /// The part of `text` that may hold a command: without a wake phrase, the whole text;
    /// with one, what follows it when the utterance starts with it, else `None`. Words are
    /// compared case-insensitively and punctuation between them is ignored, so `"Hey, Tandem:
    /// take a note"` matches `"hey tandem"` and yields `"take a note"`; a wake phrase must end
    /// on a word boundary (`"hey tandemonium"` does not match).
    pub fn command_text<'t>(&self, text: &'t str) -> Option<&'t str> {
        let Some(wake) = &self.wake_phrase else {
            return Some(text.trim());
        };
        let mut rest = text;
        for wake_word in wake.split(|c: char| !c.is_alphanumeric()) {
            if wake_word.is_empty() {
                continue;
            }
            let start = rest.find(char::is_alphanumeric)?;
            let word_len = rest[start..]
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(rest.len() - start);
            let word = &rest[start..start + word_len];
            if !word.to_lowercase().eq(&wake_word.to_lowercase()) {
                return None;
            }
            rest = &rest[start + word_len..];
        }
        Some(
            rest.trim_start_matches(|c: char| !c.is_alphanumeric())
                .trim_end(),
        )
    }
}

/// Finds voice commands in clinician utterances.
#[async_trait]
pub trait CommandDetector: Send + Sync {
    /// # Errors
    /// A provider [`Error`]; [`Error::Malformed`] when the tool call cannot be parsed at all
    /// (an unknown tool name, arguments that are not a JSON object).
    async fn detect(&self, text: &str, ctx: &CommandContext) -> Result<CommandOutcome>;
}

/// Who spoke the utterance being voiced; each side gets its own configured voice so listeners
/// can tell the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Clinician,
    Patient,
}

/// Audio container/encoding of synthesized speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioFormat {
    /// What the original frontend plays.
    #[default]
    Mp3,
    /// Ogg Opus: small, streams well to browsers.
    Opus,
    Aac,
    Flac,
    Wav,
    /// Raw PCM16 LE mono 24 kHz, no header: no decoder latency.
    Pcm,
}

impl AudioFormat {
    /// The provider's `response_format` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Opus => "opus",
            AudioFormat::Aac => "aac",
            AudioFormat::Flac => "flac",
            AudioFormat::Wav => "wav",
            AudioFormat::Pcm => "pcm",
        }
    }

    /// Parses a `response_format` value.
    pub fn parse(s: &str) -> Option<AudioFormat> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "mp3" => AudioFormat::Mp3,
            "opus" => AudioFormat::Opus,
            "aac" => AudioFormat::Aac,
            "flac" => AudioFormat::Flac,
            "wav" => AudioFormat::Wav,
            "pcm" => AudioFormat::Pcm,
            _ => return None,
        })
    }

    /// MIME type for the `tts_audio.format` field (`audio/mpeg` for mp3, as the original sent).
    pub fn mime(self) -> &'static str {
        match self {
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Opus => "audio/ogg",
            AudioFormat::Aac => "audio/aac",
            AudioFormat::Flac => "audio/flac",
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Pcm => "audio/pcm;rate=24000;channels=1",
        }
    }

    /// Whether two encoded pieces can be joined by byte concatenation and still play (frame-
    /// based formats without a file header); decides if long text is split or truncated.
    pub fn concatenates(self) -> bool {
        matches!(self, AudioFormat::Mp3 | AudioFormat::Aac | AudioFormat::Pcm)
    }
}

/// Synthesized speech, whole.
#[derive(Clone, PartialEq)]
pub struct SpeechAudio {
    pub bytes: bytes::Bytes,
    pub format: AudioFormat,
}

impl fmt::Debug for SpeechAudio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpeechAudio")
            .field("len", &self.bytes.len())
            .field("format", &self.format)
            .finish()
    }
}

/// How many chunks a [`SpeechStream`] buffers ahead of its reader.
pub const SPEECH_STREAM_CAPACITY: usize = 8;

/// Synthesized speech as it is produced: encoded chunks in order, to be concatenated. An
/// `Err` item ends the stream (nothing follows it); the end of the stream after only `Ok`
/// items means the audio is complete.
#[derive(Debug)]
pub struct SpeechStream {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
}

impl SpeechStream {
    /// A bounded channel (capacity [`SPEECH_STREAM_CAPACITY`]): the producer sends chunks into
    /// the sender and stops when a send fails (the reader went away).
    pub fn channel() -> (
        tokio::sync::mpsc::Sender<Result<bytes::Bytes>>,
        SpeechStream,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(SPEECH_STREAM_CAPACITY);
        (tx, SpeechStream { rx })
    }

    /// A stream of one chunk (none for empty audio).
    pub fn whole(bytes: bytes::Bytes) -> SpeechStream {
        let (tx, stream) = SpeechStream::channel();
        if !bytes.is_empty() {
            // Capacity is at least one and the receiver is alive: this cannot fail.
            let _ = tx.try_send(Ok(bytes));
        }
        stream
    }

    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<bytes::Bytes>> {
        self.rx.recv().await
    }
}

/// Turns translated text into speech.
#[async_trait]
pub trait TextToSpeech: Send + Sync {
    /// Speaks `text` (in `language`, ISO 639-1) with the voice configured for `speaker`.
    ///
    /// # Errors
    /// A provider [`Error`].
    async fn synthesize(
        &self,
        text: &str,
        language: &str,
        speaker: Speaker,
        format: AudioFormat,
    ) -> Result<SpeechAudio>;

    /// As [`TextToSpeech::synthesize`], but hands out the audio in chunks as they are
    /// produced. The default synthesizes whole and yields it as one chunk; implementations
    /// that can stream override it.
    ///
    /// # Errors
    /// A provider [`Error`] before any audio was produced; later failures arrive as an `Err`
    /// item of the stream.
    async fn synthesize_stream(
        &self,
        text: &str,
        language: &str,
        speaker: Speaker,
        format: AudioFormat,
    ) -> Result<SpeechStream> {
        let audio = self.synthesize(text, language, speaker, format).await?;
        Ok(SpeechStream::whole(audio.bytes))
    }
}

/// Who a transcript line is from, as the summary prompt labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineSpeaker {
    Clinician,
    Patient,
    Translation,
}

/// One stored message given to the summarizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptLine {
    /// Store id; the summary cites it as `[msg:<id>]` so every statement can be traced back.
    pub message_id: String,
    pub speaker: LineSpeaker,
    pub language: String,
    pub text: String,
}

/// Which summary to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryKind {
    /// Structured clinical summary for the clinician: chief complaint, history of present
    /// illness, assessment, plan, medications, follow-ups, open questions; cites message ids.
    Clinical,
    /// Plain-language take-home version for the patient.
    TakeHome,
}

/// Everything a summary is written from.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRequest {
    pub lines: Vec<TranscriptLine>,
    /// Actions taken during the visit, one human-readable line each ("Prescription: ...").
    pub actions: Vec<String>,
    /// Language to write in (ISO 639-1): the clinician's for [`SummaryKind::Clinical`], the
    /// patient's for [`SummaryKind::TakeHome`].
    pub language: String,
    pub kind: SummaryKind,
}

/// Writes end-of-visit (or interim) summaries.
#[async_trait]
pub trait Summarizer: Send + Sync {
    /// # Errors
    /// A provider [`Error`]; [`Error::Malformed`] on an empty answer.
    async fn summarize(&self, request: &SummaryRequest) -> Result<String>;
}

/// Header that starts every generated medical history, added by Tandem rather than asked of
/// the model, so the marking cannot be lost.
pub const SYNTHETIC_HISTORY_HEADER: &str =
    "SYNTHETIC MEDICAL HISTORY (generated for demonstration; not a real patient record)";

/// Generates the mock medical history the original product showed for new patients.
#[async_trait]
pub trait MedicalHistoryGenerator: Send + Sync {
    /// Returns plain text starting with [`SYNTHETIC_HISTORY_HEADER`].
    ///
    /// # Errors
    /// A provider [`Error`]; [`Error::Malformed`] on an empty answer.
    async fn generate(&self, first_name: &str, last_name: &str, age: Option<u32>)
        -> Result<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Implements only `synthesize`, so `synthesize_stream` is the default.
    struct Whole;

    #[async_trait]
    impl TextToSpeech for Whole {
        async fn synthesize(
            &self,
            text: &str,
            _language: &str,
            _speaker: Speaker,
            format: AudioFormat,
        ) -> Result<SpeechAudio> {
            if text == "fail" {
                return Err(Error::Timeout);
            }
            Ok(SpeechAudio {
                bytes: bytes::Bytes::from(format!("AUDIO:{text}")),
                format,
            })
        }
    }

    #[tokio::test]
    async fn the_default_stream_is_the_whole_audio_as_one_chunk() {
        let mut stream = Whole
            .synthesize_stream("hola", "es", Speaker::Clinician, AudioFormat::Mp3)
            .await
            .unwrap();
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"AUDIO:hola");
        assert!(stream.next().await.is_none());

        let err = Whole
            .synthesize_stream("fail", "es", Speaker::Clinician, AudioFormat::Mp3)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout));

        assert!(SpeechStream::whole(bytes::Bytes::new())
            .next()
            .await
            .is_none());
    }
}
