//! One utterance, from its final transcript to everything it causes.
//!
//! Design decision: the original message is stored before anything that can fail slowly (it
//! is the record of what was said), then the two independent branches run concurrently —
//! translation → translation row → TTS, and (clinician only) command detection → execution —
//! so an utterance costs the longer branch, not the sum. A failing branch sends an `error`
//! event and never undoes the stored row. Utterances of one conversation are processed one
//! after another, so their events keep the order they were spoken in.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::event::{self, CommandExecuted, ServerEvent, UnsavedTranscript};
use super::hub::Audience;
use super::speaker::{self, Role, Speaker};
use super::{lock, Live, Pipelines};
use crate::ai::{self, CommandOutcome};
use crate::commands;
use crate::store::{self, Inserted, Message, NewMessage, SenderType};
use crate::wire::{ActionView, MessageView};

/// A final transcript waiting to be processed.
pub(crate) struct Utterance {
    pub item_id: String,
    pub text: String,
    /// Languages the STT provider detected, if it said.
    pub languages: Vec<String>,
    /// When the provider reported the end of speech for this item.
    pub speech_stopped: Option<Instant>,
    /// When the transcript arrived.
    pub received: Instant,
}

/// Failed attempts that pass silently: a lock held for a moment is not worth an alarm.
const QUIET_STORE_ATTEMPTS: u32 = 3;
/// The first pause after an unavailable store; it doubles up to [`MAX_STORE_BACKOFF`].
const FIRST_STORE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts, so a store that comes back is used within seconds.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(2);

/// Processes a conversation's utterances in order until the STT side ends.
pub(crate) async fn run_lane(
    pipelines: Arc<Pipelines>,
    live: Arc<Live>,
    mut lane: mpsc::Receiver<Utterance>,
) {
    while let Some(utterance) = lane.recv().await {
        process(&pipelines, &live, utterance).await;
    }
}

/// Stage timestamps of one utterance, in milliseconds from the transcript's arrival.
#[derive(Default)]
struct Timings(Map<String, Value>);

impl Timings {
    fn mark(&mut self, pipelines: &Pipelines, stage: &'static str, since: Instant) {
        let elapsed = since.elapsed();
        pipelines
            .metrics
            .stage
            .observe_duration(&[("stage", stage)], elapsed);
        self.0.insert(
            format!("{stage}_ms"),
            json!((elapsed.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
        );
    }
}

async fn process(pipelines: &Pipelines, live: &Live, u: Utterance) {
    let text = u.text.trim();
    if text.is_empty() {
        return;
    }
    let id = &live.conversation_id;
    let mut timings = Timings::default();
    if let Some(stopped) = u.speech_stopped {
        let transcript = u.received.saturating_duration_since(stopped);
        pipelines
            .metrics
            .stage
            .observe_duration(&[("stage", "transcript")], transcript);
        timings.0.insert(
            "transcript_ms".into(),
            json!(transcript.as_secs_f64() * 1000.0),
        );
    }

    let (clinician_lang, patient_lang) = live.languages();
    let speaker = decide_speaker(
        pipelines,
        live,
        text,
        &u.languages,
        &clinician_lang,
        &patient_lang,
    )
    .await;

    let message = NewMessage {
        conversation_id: id.clone(),
        sender_type: speaker.role.sender_type(),
        original_text: text.to_owned(),
        translated_text: None,
        language: speaker.language.clone(),
        is_final: true,
        original_message_id: None,
        stt_item_id: Some(u.item_id.clone()),
        speaker_source: Some(speaker.source.as_str().to_owned()),
        speaker_confidence: Some(speaker.confidence),
        timings: None,
    };
    let original = match store_message(pipelines, &message).await {
        Ok(Inserted::New(m)) => m,
        Ok(Inserted::Existing(_)) => {
            tracing::debug!(conversation_id = %id, item_id = %u.item_id, "transcript already processed");
            return;
        }
        Err(e) => {
            tracing::error!(
                conversation_id = %id,
                item_id = %u.item_id,
                error = %e,
                "TRANSCRIPT NOT STORED: the store refused it or stayed unavailable past the retry window"
            );
            // The row is lost to the store, not to the clinician: the words go out with the
            // error, so the client can still show (and keep) them.
            pipelines.publish(
                id,
                Audience::Audio,
                &ServerEvent::unsaved(
                    e.code(),
                    "The transcript could not be saved; its text is attached.",
                    unsaved(&message),
                ),
            );
            return;
        }
    };
    timings.mark(pipelines, "stored", u.received);
    pipelines.publish(
        id,
        Audience::Audio,
        &ServerEvent::NewMessage {
            payload: MessageView::from(&original),
        },
    );

    if speaker.role == Role::Patient && speaker.source == speaker::Source::Language {
        follow_patient_language(pipelines, live, &speaker.language, &patient_lang).await;
    }
    let target = match speaker.role {
        Role::Clinician => patient_lang,
        Role::Patient => clinician_lang.clone(),
    };

    let interpret = interpret(pipelines, live, &original, &speaker, &target, u.received);
    let command = async {
        if speaker.role == Role::Clinician {
            run_command(pipelines, live, &original, &clinician_lang).await;
        }
    };
    let (branch_timings, ()) = tokio::join!(interpret, command);
    timings.0.extend(branch_timings.0);
    timings.mark(pipelines, "sent", u.received);

    if let Err(e) = pipelines
        .store
        .set_message_timings(&original.id, &Value::Object(timings.0))
        .await
    {
        tracing::warn!(conversation_id = %id, error = %e, "could not store utterance timings");
    }
    pipelines.publish(
        id,
        Audience::Audio,
        &ServerEvent::ProcessingCompleted {
            payload: event::ProcessingCompleted {
                conversation_id: id.clone(),
                message_id: original.id,
            },
        },
    );
}

async fn decide_speaker(
    pipelines: &Pipelines,
    live: &Live,
    text: &str,
    stt_languages: &[String],
    clinician_lang: &str,
    patient_lang: &str,
) -> Speaker {
    let hint: Vec<&str> = stt_languages.iter().map(String::as_str).collect();
    let detected = match pipelines
        .providers
        .language
        .detect(text, &[clinician_lang, patient_lang], &hint)
        .await
    {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(conversation_id = %live.conversation_id, code = e.code(), "language detection failed");
            None
        }
    };
    let client_role = *lock(&live.speaker_override);
    speaker::decide(
        detected
            .as_ref()
            .map(|d| (d.language.as_str(), f64::from(d.confidence))),
        client_role,
        clinician_lang,
        patient_lang,
    )
}

/// The patient answered in another language than the conversation's: follow them, as the
/// original did, so translations and TTS go to the language they now speak.
async fn follow_patient_language(pipelines: &Pipelines, live: &Live, spoken: &str, current: &str) {
    if spoken == current {
        return;
    }
    match pipelines
        .store
        .set_patient_language(&live.organization_id, &live.conversation_id, spoken)
        .await
    {
        Ok(_) => lock(&live.languages).1 = spoken.to_owned(),
        Err(e) => {
            tracing::warn!(conversation_id = %live.conversation_id, error = %e, "cannot update the patient language")
        }
    }
}

/// Stores the transcript, waiting out an unavailable store (a database restart) with capped
/// exponential backoff for up to [`super::PipelineConfig::store_retry_window`]. The message is
/// held in memory meanwhile; once the wait is more than a blip the client is told with a
/// `transcript_pending` error carrying the text, and `new_message` follows when it is stored.
async fn store_message(
    pipelines: &Pipelines,
    message: &NewMessage,
) -> Result<Inserted<Message>, store::Error> {
    let started = Instant::now();
    let window = pipelines.config.store_retry_window;
    let mut backoff = FIRST_STORE_BACKOFF;
    let mut failures = 0;
    let mut held = Held(None);
    loop {
        let attempt = pipelines.store.insert_message(message.clone()).await;
        match attempt {
            Err(store::Error::Unavailable(reason)) if started.elapsed() + backoff <= window => {
                failures += 1;
                held.0 = Some(message);
                tracing::warn!(conversation_id = %message.conversation_id, failures, %reason, "store unavailable; the transcript is held and retried");
                if failures == QUIET_STORE_ATTEMPTS {
                    pipelines.publish(
                        &message.conversation_id,
                        Audience::Audio,
                        &ServerEvent::unsaved(
                            "transcript_pending",
                            "The database is unavailable; the transcript is kept and will be \
                             saved when it is back.",
                            unsaved(message),
                        ),
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
            }
            settled => {
                held.0 = None;
                if failures == 0 {
                    return settled;
                }
                tracing::info!(conversation_id = %message.conversation_id, failures, ok = settled.is_ok(), "store answered after retries");
                // An attempt whose answer was lost with the connection may have committed:
                // that row is this utterance's, stored once, and must go on to be interpreted.
                return settled.map(|row| Inserted::New(row.into_inner()));
            }
        }
    }
}

/// A transcript waiting for the store. Dropped while still set, it was abandoned unsaved (the
/// server stopped past its drain deadline during an outage), which must not pass quietly.
struct Held<'a>(Option<&'a NewMessage>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            tracing::error!(
                conversation_id = %m.conversation_id,
                item_id = ?m.stt_item_id,
                "TRANSCRIPT NOT STORED: abandoned at shutdown while the store was unavailable"
            );
        }
    }
}

/// What was said, for an `error` event about a transcript not (yet) stored.
fn unsaved(message: &NewMessage) -> UnsavedTranscript {
    UnsavedTranscript {
        conversation_id: message.conversation_id.clone(),
        stt_item_id: message.stt_item_id.clone(),
        sender_type: message.sender_type,
        original_text: message.original_text.clone(),
        language: message.language.clone(),
    }
}

/// Translation branch: translate, store the translation row, speak it.
async fn interpret(
    pipelines: &Pipelines,
    live: &Live,
    original: &Message,
    speaker: &Speaker,
    target: &str,
    since: Instant,
) -> Timings {
    let mut timings = Timings::default();
    let id = &live.conversation_id;
    let streaming = live.tts_streaming.load(Ordering::Relaxed);
    if speaker.role == Role::Patient && asks_to_repeat(&original.original_text) {
        let cached = lock(&live.last_clinician_audio).clone();
        if let Some((message_id, audio)) = cached {
            if streaming {
                // A streaming client gets every tts_audio chunked: the replay is one frame.
                send_tts_chunk(
                    pipelines,
                    id,
                    &message_id,
                    audio.format,
                    &audio.bytes,
                    0,
                    true,
                );
            } else {
                send_tts(pipelines, id, &message_id, &audio);
            }
            timings.mark(pipelines, "tts_first_byte", since);
            return timings;
        }
    }
    if speaker.language == target {
        // Both sides speak this language: nothing to interpret.
        return timings;
    }
    let spoken_text = match pipelines
        .providers
        .translator
        .translate(
            &original.original_text,
            &speaker.language,
            target,
            &pipelines.config.glossary,
        )
        .await
    {
        Ok(translated) => {
            timings.mark(pipelines, "translated", since);
            store_translation(pipelines, original, &translated, target).await;
            translated
        }
        Err(e) => {
            tracing::warn!(conversation_id = %id, code = e.code(), "translation failed");
            pipelines.publish(
                id,
                Audience::Audio,
                &ServerEvent::error(
                    e.code(),
                    format!("Translation failed: {}", provider_message(&e)),
                ),
            );
            // Speak the original rather than nothing, as the original system did.
            original.original_text.clone()
        }
    };
    let voice = match speaker.role {
        Role::Clinician => ai::Speaker::Clinician,
        Role::Patient => ai::Speaker::Patient,
    };
    let audio = if streaming {
        speak_streamed(
            pipelines,
            original,
            &spoken_text,
            target,
            voice,
            since,
            &mut timings,
        )
        .await
    } else {
        match pipelines
            .providers
            .tts
            .synthesize(&spoken_text, target, voice, pipelines.config.tts_format)
            .await
        {
            Ok(audio) => {
                timings.mark(pipelines, "tts_first_byte", since);
                send_tts(pipelines, id, &original.id, &audio);
                Some(audio)
            }
            Err(e) => {
                tts_failed(pipelines, id, &e);
                None
            }
        }
    };
    if let Some(audio) = audio {
        if speaker.role == Role::Clinician {
            *lock(&live.last_clinician_audio) = Some((original.id.clone(), audio));
        }
    }
    timings
}

fn tts_failed(pipelines: &Pipelines, conversation_id: &str, e: &ai::Error) {
    tracing::warn!(%conversation_id, code = e.code(), "speech synthesis failed");
    pipelines.publish(
        conversation_id,
        Audience::Audio,
        &ServerEvent::error(
            e.code(),
            format!("Speech synthesis failed: {}", provider_message(e)),
        ),
    );
}

/// Streamed TTS: one `tts_audio` per chunk as it arrives (indexes from 0, `last: false`),
/// then an empty frame with `last: true` once the provider finished. Returns the whole audio
/// for the repeat-that cache, or `None` after an error (sent as an `error` event; no further
/// frames for this message).
async fn speak_streamed(
    pipelines: &Pipelines,
    original: &Message,
    text: &str,
    target: &str,
    voice: ai::Speaker,
    since: Instant,
    timings: &mut Timings,
) -> Option<ai::SpeechAudio> {
    let id = &original.conversation_id;
    let format = pipelines.config.tts_format;
    let mut stream = match pipelines
        .providers
        .tts
        .synthesize_stream(text, target, voice, format)
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            tts_failed(pipelines, id, &e);
            return None;
        }
    };
    let mut whole = Vec::new();
    let mut index: u32 = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if index == 0 {
                    timings.mark(pipelines, "tts_first_byte", since);
                }
                send_tts_chunk(pipelines, id, &original.id, format, &bytes, index, false);
                whole.extend_from_slice(&bytes);
                index += 1;
            }
            Err(e) => {
                tts_failed(pipelines, id, &e);
                return None;
            }
        }
    }
    if index == 0 {
        timings.mark(pipelines, "tts_first_byte", since);
    }
    send_tts_chunk(pipelines, id, &original.id, format, &[], index, true);
    Some(ai::SpeechAudio {
        bytes: whole.into(),
        format,
    })
}

fn send_tts_chunk(
    pipelines: &Pipelines,
    conversation_id: &str,
    message_id: &str,
    format: ai::AudioFormat,
    bytes: &[u8],
    index: u32,
    last: bool,
) {
    pipelines.publish(
        conversation_id,
        Audience::Audio,
        &ServerEvent::TtsAudio {
            payload: event::TtsAudio {
                audio_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
                format: format.mime().to_owned(),
                original_message_id: message_id.to_owned(),
                chunk: Some(event::TtsChunk { index, last }),
            },
        },
    );
}

async fn store_translation(
    pipelines: &Pipelines,
    original: &Message,
    translated: &str,
    target: &str,
) {
    let id = &original.conversation_id;
    let row = store_message(
        pipelines,
        &NewMessage {
            conversation_id: id.clone(),
            sender_type: SenderType::Translation,
            original_text: translated.to_owned(),
            translated_text: None,
            // The UI places bubbles by language, so a translation carries its target.
            language: target.to_owned(),
            is_final: true,
            original_message_id: Some(original.id.clone()),
            stt_item_id: original.stt_item_id.clone(),
            speaker_source: None,
            speaker_confidence: None,
            timings: None,
        },
    )
    .await;
    match row {
        Ok(row) => pipelines.publish(
            id,
            Audience::Audio,
            &ServerEvent::NewMessage {
                payload: MessageView::from(&row.into_inner()),
            },
        ),
        Err(e) => {
            tracing::error!(conversation_id = %id, error = %e, "could not store a translation");
            pipelines.publish(
                id,
                Audience::Audio,
                &ServerEvent::error(e.code(), "The translation could not be saved."),
            );
        }
    }
}

fn send_tts(
    pipelines: &Pipelines,
    conversation_id: &str,
    message_id: &str,
    audio: &ai::SpeechAudio,
) {
    pipelines.publish(
        conversation_id,
        Audience::Audio,
        &ServerEvent::TtsAudio {
            payload: event::TtsAudio {
                audio_base64: base64::engine::general_purpose::STANDARD.encode(&audio.bytes),
                format: audio.format.mime().to_owned(),
                original_message_id: message_id.to_owned(),
                chunk: None,
            },
        },
    );
}

/// Command branch: detect a voice command in a clinician utterance and execute it.
async fn run_command(pipelines: &Pipelines, live: &Live, original: &Message, clinician_lang: &str) {
    let id = &live.conversation_id;
    let (ctx, clinic) = match commands::clinic::context(
        pipelines.store.as_ref(),
        &live.clinician_id,
        &live.organization_id,
        clinician_lang,
    )
    .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(conversation_id = %id, error = %e, "cannot read command settings");
            pipelines.publish(
                id,
                Audience::Audio,
                &ServerEvent::error(
                    e.code(),
                    "Voice commands were not checked for this utterance: settings are unavailable.",
                ),
            );
            return;
        }
    };
    let outcome = match pipelines
        .providers
        .commands
        .detect(&original.original_text, &ctx)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(conversation_id = %id, code = e.code(), "command detection failed");
            pipelines.publish(
                id,
                Audience::Audio,
                &ServerEvent::error(
                    e.code(),
                    format!("Command detection failed: {}", provider_message(&e)),
                ),
            );
            return;
        }
    };
    let payload = match outcome {
        CommandOutcome::None => return,
        CommandOutcome::Incomplete { name, missing } => CommandExecuted::without_action(
            "incomplete",
            &name,
            format!("The command needs: {}.", missing.join(", ")),
            json!({ "missing": missing }),
        ),
        CommandOutcome::Command(ai::Command::RequestSummary) => {
            super::visit::request_summary(pipelines, live)
        }
        CommandOutcome::Command(ai::Command::RequestMedicalHistory) => {
            super::visit::request_medical_history(pipelines, live).await
        }
        CommandOutcome::Command(command) => {
            match commands::plan(&command, store::now_millis(), &clinic) {
                None => CommandExecuted::without_action(
                    "success",
                    command.name(),
                    "Request received.".to_owned(),
                    json!({}),
                ),
                Some(planned) => {
                    match commands::execute(
                        pipelines.store.as_ref(),
                        &live.organization_id,
                        id,
                        &planned,
                    )
                    .await
                    {
                        Ok(commands::Executed { action, announced }) => {
                            let view = ActionView::from(&action);
                            let message = if planned.announce.is_some() && !announced {
                                format!(
                                    "{} recorded for review: no clinic webhook is configured.",
                                    command.name()
                                )
                            } else {
                                planned.message
                            };
                            let executed = CommandExecuted::success(command.name(), message, &view);
                            let created = ServerEvent::ActionCreated { payload: view };
                            pipelines.publish_action(id, &created);
                            executed
                        }
                        Err(e) => {
                            tracing::error!(conversation_id = %id, error = %e, "could not store an action");
                            CommandExecuted::without_action(
                                "error",
                                command.name(),
                                "The command could not be saved.".to_owned(),
                                json!({}),
                            )
                        }
                    }
                }
            }
        }
    };
    pipelines.publish(
        id,
        Audience::Audio,
        &ServerEvent::CommandExecuted { payload },
    );
}

/// A short, user-facing description of a provider failure (no bodies, no internals).
pub(super) fn provider_message(e: &ai::Error) -> &'static str {
    match e {
        ai::Error::Timeout => "the provider timed out",
        ai::Error::RateLimited { .. } => "the provider is rate limiting requests",
        ai::Error::Transport(_) => "the provider is unreachable",
        _ => "the provider returned an error",
    }
}

/// Whether a patient utterance asks to hear the clinician's last sentence again
/// ("repeat that", "¿puede repetir?").
pub(crate) fn asks_to_repeat(text: &str) -> bool {
    const PHRASES: &[&str] = &[
        "repeat that",
        "repeat please",
        "please repeat",
        "can you repeat",
        "could you repeat",
        "say that again",
        "say it again",
        "puede repetir",
        "podria repetir",
        "repita",
        "repitalo",
        "repite",
        "repitelo",
        "otra vez por favor",
    ];
    let folded: String = text
        .chars()
        .map(|c| match c {
            'á' | 'Á' => 'a',
            'é' | 'É' => 'e',
            'í' | 'Í' => 'i',
            'ó' | 'Ó' => 'o',
            'ú' | 'Ú' | 'ü' => 'u',
            c if c.is_alphanumeric() => c.to_ascii_lowercase(),
            _ => ' ',
        })
        .collect();
    let words: Vec<&str> = folded.split_whitespace().collect();
    if words.len() > 8 {
        return false;
    }
    let normalized = words.join(" ");
    PHRASES.iter().any(|p| {
        normalized == *p
            || normalized.starts_with(&format!("{p} "))
            || normalized.ends_with(&format!(" {p}"))
            || normalized.contains(&format!(" {p} "))
    })
}

#[cfg(test)]
mod tests {
    use super::asks_to_repeat;

    #[test]
    fn repeat_requests_are_recognised_in_both_languages() {
        for yes in [
            "Repeat that?",
            "Can you repeat that, please?",
            "¿Puede repetir?",
            "Perdón, ¿podría repetir?",
            "Repítalo, por favor.",
            "Sorry, say that again",
        ] {
            assert!(asks_to_repeat(yes), "{yes}");
        }
        for no in [
            "I repeatedly feel dizzy",
            "The pain repeats every morning and I take ibuprofen three times a day",
            "Me duele la cabeza",
            "",
        ] {
            assert!(!asks_to_repeat(no), "{no}");
        }
    }
}
