//! Speech synthesis through `POST /audio/speech`.
//!
//! Design decision: the provider caps `input` at 4096 characters. Longer text is split at
//! sentence boundaries and the pieces synthesized in order and joined, for formats whose
//! encoded pieces can be concatenated (mp3, aac, pcm); for the others (wav, opus, flac, which
//! carry a header) only the first piece is voiced and a warning logged — the full text is still
//! shown as the translation.
//!
//! Streaming ([`TextToSpeech::synthesize_stream`]) reads each piece's body as it arrives and
//! forwards its chunks in order; the pieces are requested one after another. Retries happen
//! only before a piece's first body byte; a body that breaks off later ends the stream with an
//! error item, since the listener already heard the start of the audio.

use async_trait::async_trait;

use super::client::StreamingResponse;
use super::wire::{SpeechRequest, MAX_SPEECH_INPUT_CHARS};
use super::{OpenAiClient, AUDIO_SPEECH};
use crate::ai::{
    language_name, AudioFormat, Error, Result, Speaker, SpeechAudio, SpeechStream, TextToSpeech,
};

/// [`TextToSpeech`] backed by the speech endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiTts {
    client: OpenAiClient,
}

impl OpenAiTts {
    pub fn new(client: OpenAiClient) -> OpenAiTts {
        OpenAiTts { client }
    }
}

/// Pure: splits `text` into pieces of at most `max_chars` characters, cutting after the last
/// sentence end in range, else the last space, else hard.
pub(crate) fn split_text(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    let max_chars = max_chars.max(1);
    while !rest.is_empty() {
        let Some((limit, _)) = rest.char_indices().nth(max_chars) else {
            pieces.push(rest);
            break;
        };
        let window = &rest[..limit];
        let sentence_end = window
            .char_indices()
            .rev()
            .find(|(_, c)| matches!(c, '.' | '!' | '?' | '\n' | '。' | '！' | '？' | ';'))
            .map(|(i, c)| i + c.len_utf8());
        let cut = sentence_end
            .or_else(|| window.rfind(char::is_whitespace))
            .filter(|cut| *cut > 0)
            .unwrap_or(limit);
        let (piece, tail) = rest.split_at(cut);
        if !piece.trim().is_empty() {
            pieces.push(piece.trim());
        }
        rest = tail.trim_start();
    }
    pieces
}

/// Voice direction for models that take it; `tts-1` and `tts-1-hd` reject `instructions`.
fn instructions(model: &str, language: &str) -> Option<String> {
    if model.starts_with("tts-1") {
        return None;
    }
    let language = language_name(language).unwrap_or("the language of the text");
    Some(format!(
        "Speak in {language}, clearly and at a calm, moderate pace, with a warm, professional \
         clinical tone. Pronounce numbers, doses and drug names carefully."
    ))
}

impl OpenAiTts {
    /// The requests that voice `text`: one per piece under the provider's input limit (only
    /// the first for formats that do not concatenate).
    fn requests(
        &self,
        text: &str,
        language: &str,
        speaker: Speaker,
        format: AudioFormat,
    ) -> Vec<SpeechRequest> {
        let config = self.client.config();
        let mut pieces = split_text(text, MAX_SPEECH_INPUT_CHARS);
        if pieces.len() > 1 && !format.concatenates() {
            tracing::warn!(
                format = format.as_str(),
                pieces = pieces.len(),
                "speech input over the provider limit; voicing the first part only"
            );
            pieces.truncate(1);
        }
        let voice = match speaker {
            Speaker::Clinician => &config.voices.clinician,
            Speaker::Patient => &config.voices.patient,
        };
        pieces
            .into_iter()
            .map(|piece| SpeechRequest {
                model: config.tts_model.clone(),
                input: piece.to_owned(),
                voice: voice.clone(),
                response_format: format.as_str(),
                instructions: instructions(&config.tts_model, language),
            })
            .collect()
    }

    /// Starts one piece's streamed answer (retrying up to its first body byte).
    async fn open_piece(&self, request: &SpeechRequest) -> Result<StreamingResponse> {
        let response = self
            .client
            .post_stream(AUDIO_SPEECH, request, self.client.config().tts_timeout)
            .await?;
        check_audio(response.content_type.as_deref())?;
        Ok(response)
    }
}

/// A text or JSON answer is an error body in disguise, not audio.
fn check_audio(content_type: Option<&str>) -> Result<()> {
    if content_type.is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/")) {
        return Err(Error::Malformed(
            "speech endpoint answered with text, not audio".to_owned(),
        ));
    }
    Ok(())
}

#[async_trait]
impl TextToSpeech for OpenAiTts {
    /// Empty text gives empty audio without a call.
    async fn synthesize(
        &self,
        text: &str,
        language: &str,
        speaker: Speaker,
        format: AudioFormat,
    ) -> Result<SpeechAudio> {
        let config = self.client.config();
        let mut audio = Vec::new();
        for request in self.requests(text, language, speaker, format) {
            let raw = self
                .client
                .post_raw(AUDIO_SPEECH, &request, config.tts_timeout)
                .await?;
            check_audio(raw.content_type.as_deref())?;
            audio.extend_from_slice(&raw.body);
        }
        Ok(SpeechAudio {
            bytes: audio.into(),
            format,
        })
    }

    /// Returns once the first piece's audio started arriving (errors up to then are returned
    /// here); a task forwards the rest. Empty text gives an empty stream without a call.
    async fn synthesize_stream(
        &self,
        text: &str,
        language: &str,
        speaker: Speaker,
        format: AudioFormat,
    ) -> Result<SpeechStream> {
        let mut requests = self.requests(text, language, speaker, format).into_iter();
        let (tx, stream) = SpeechStream::channel();
        let Some(first) = requests.next() else {
            return Ok(stream);
        };
        let mut current = self.open_piece(&first).await?;
        let tts = self.clone();
        tokio::spawn(async move {
            loop {
                match current.chunk().await {
                    Ok(Some(chunk)) => {
                        if chunk.is_empty() {
                            continue;
                        }
                        if tx.send(Ok(chunk)).await.is_err() {
                            return; // The reader went away.
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                // This piece is complete; start the next, if any.
                let Some(request) = requests.next() else {
                    return;
                };
                if tx.is_closed() {
                    return;
                }
                match tts.open_piece(&request).await {
                    Ok(next) => current = next,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_text("  Hola.  ", 4096), ["Hola."]);
        assert!(split_text("   ", 4096).is_empty());
    }

    #[test]
    fn splits_at_sentence_ends_within_the_limit() {
        let text = "One two. Three four five. Six.";
        assert_eq!(
            split_text(text, 12),
            ["One two.", "Three four", "five. Six."]
        );
        for piece in split_text(&"Sentence number one. ".repeat(500), 4096) {
            assert!(piece.chars().count() <= 4096);
            assert!(piece.ends_with('.'));
        }
    }

    #[test]
    fn hard_cut_without_boundaries_and_multibyte_safe() {
        assert_eq!(split_text("ñññññ", 2), ["ññ", "ññ", "ñ"]);
    }

    #[test]
    fn no_instructions_for_tts_1() {
        assert_eq!(instructions("tts-1", "es"), None);
        assert_eq!(instructions("tts-1-hd", "es"), None);
        assert!(instructions("gpt-4o-mini-tts", "es")
            .unwrap()
            .contains("Spanish"));
    }
}
