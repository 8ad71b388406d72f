//! OpenAI (and OpenAI-compatible server) implementations of the `ai` traits.
//!
//! One thin type per trait, each holding a clone of the shared [`OpenAiClient`]; prompts and
//! answer parsing live next to each type, parsing as pure functions unit-tested on recorded
//! answers. Every chat request is sent with `store: false` (PHI).

pub mod client;
mod commands;
mod history;
mod language;
mod summary;
mod translate;
mod tts;
pub mod wire;

pub use client::{OpenAiClient, OpenAiConfig, Voices};
pub use commands::OpenAiCommandDetector;
pub use history::OpenAiHistoryGenerator;
pub use language::OpenAiLanguageDetector;
pub use summary::OpenAiSummarizer;
pub use translate::OpenAiTranslator;
pub use tts::OpenAiTts;

/// Path of the chat completions endpoint, relative to the base URL.
pub const CHAT_COMPLETIONS: &str = "chat/completions";
/// Path of the speech endpoint, relative to the base URL.
pub const AUDIO_SPEECH: &str = "audio/speech";

/// Phrases that identify each prompt, shared with the fake server so it answers by task
/// without guessing at wording.
pub(crate) mod markers {
    pub const DETECT_LANGUAGE: &str = "Identify the language of the text";
    pub const TRANSLATE_TARGET: &str = "Target language:";
    pub const SUMMARY: &str = "You write visit summaries";
    pub const HISTORY: &str = "synthetic medical history";
}
