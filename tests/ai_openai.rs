//! The OpenAI implementations of the `ai` traits against the loopback fake provider: requests
//! as sent (store:false, strict tools, bearer key), answers as parsed, retries and failures.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tandem::ai::openai::{
    OpenAiClient, OpenAiCommandDetector, OpenAiConfig, OpenAiHistoryGenerator,
    OpenAiLanguageDetector, OpenAiSummarizer, OpenAiTranslator, OpenAiTts,
};
use tandem::ai::{
    AudioFormat, Command, CommandContext, CommandDetector, CommandOutcome, DetectionSource, Error,
    FollowUpUnit, GlossaryEntry, LabUrgency, LanguageDetector, LineSpeaker, LocalLanguageDetector,
    MedicalHistoryGenerator, Speaker, Summarizer, SummaryKind, SummaryRequest, TextToSpeech,
    TranscriptLine, Translator, SYNTHETIC_HISTORY_HEADER,
};
use tandem::testing::fake_openai::http::{Fault, ScriptedReply, State, CHAT_PATH, SPEECH_PATH};
use tandem::testing::fake_openai::{realtime, FakeOpenAi};

async fn fake() -> FakeOpenAi {
    FakeOpenAi::start(realtime::State::default(), State::default()).await
}

fn config(fake: &FakeOpenAi) -> OpenAiConfig {
    let mut cfg = OpenAiConfig::new(fake.base_url(), None);
    cfg.initial_backoff = Duration::from_millis(5);
    cfg.max_backoff = Duration::from_millis(20);
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

fn client(fake: &FakeOpenAi) -> OpenAiClient {
    OpenAiClient::new(config(fake)).expect("client builds")
}

async fn command(fake: &FakeOpenAi, text: &str) -> CommandOutcome {
    OpenAiCommandDetector::new(client(fake))
        .detect(text, &CommandContext::new("en"))
        .await
        .expect("command detection succeeds")
}

#[tokio::test]
async fn translation_sends_an_interpreter_prompt_and_returns_the_text() {
    let fake = fake().await;
    let translator = OpenAiTranslator::new(client(&fake));
    let glossary = [GlossaryEntry {
        term: "metformin".into(),
        rendering: None,
    }];
    let out = translator
        .translate("Take metformin 500 mg twice a day.", "en", "es", &glossary)
        .await
        .unwrap();
    assert_eq!(out, "[es] Take metformin 500 mg twice a day.");

    let sent = fake.http.requests_to(CHAT_PATH);
    assert_eq!(sent.len(), 1);
    let body = &sent[0].body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["store"], json!(false));
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("Never answer questions"));
    assert!(system.contains("metformin"));
    assert_eq!(
        body["messages"][1]["content"],
        "Take metformin 500 mg twice a day."
    );
    assert_eq!(sent[0].authorization, None, "no key configured, no header");
}

#[tokio::test]
async fn every_builtin_command_is_parsed() {
    let fake = fake().await;
    assert_eq!(
        command(&fake, "Take a note: patient reports chest pain on exertion").await,
        CommandOutcome::Command(Command::TakeNote {
            content: "patient reports chest pain on exertion".into()
        })
    );
    assert_eq!(
        command(&fake, "Schedule a follow-up in 3 months").await,
        CommandOutcome::Command(Command::ScheduleFollowUp {
            duration: 3,
            unit: FollowUpUnit::Month,
            details: None
        })
    );
    assert_eq!(
        command(&fake, "Prescribe lisinopril 10 mg once daily").await,
        CommandOutcome::Command(Command::WritePrescription {
            medication_name: "lisinopril".into(),
            dosage: "10 mg".into(),
            frequency: "once daily".into(),
            details: None
        })
    );
    assert_eq!(
        command(&fake, "Order a lipid panel, urgent").await,
        CommandOutcome::Command(Command::OrderLab {
            test_name: "lipid panel".into(),
            details: None,
            urgency: Some(LabUrgency::Urgent)
        })
    );
    assert_eq!(
        command(&fake, "Give me a summary please").await,
        CommandOutcome::Command(Command::RequestSummary)
    );
    assert_eq!(
        command(&fake, "Pull up the medical history").await,
        CommandOutcome::Command(Command::RequestMedicalHistory)
    );
    assert_eq!(
        command(&fake, "How long have you had the cough?").await,
        CommandOutcome::None
    );
}

#[tokio::test]
async fn incomplete_commands_are_reported_not_executed() {
    let fake = fake().await;
    assert_eq!(
        command(&fake, "Prescribe ibuprofen").await,
        CommandOutcome::Incomplete {
            name: "write_prescription".into(),
            missing: vec!["dosage".into(), "frequency".into()]
        }
    );
    assert_eq!(
        command(&fake, "Schedule a follow-up").await,
        CommandOutcome::Incomplete {
            name: "schedule_follow_up".into(),
            missing: vec!["duration".into(), "unit".into()]
        }
    );
    fake.http.script_chat(ScriptedReply::ToolCall {
        name: "order_lab".into(),
        arguments: json!({"test_name": "", "details": null, "urgency": null}),
    });
    assert_eq!(
        command(&fake, "Order the usual labs").await,
        CommandOutcome::Incomplete {
            name: "order_lab".into(),
            missing: vec!["test_name".into()]
        }
    );
}

#[tokio::test]
async fn short_text_makes_no_call_and_tools_are_strict() {
    let fake = fake().await;
    assert_eq!(command(&fake, "okay").await, CommandOutcome::None);
    assert!(fake.http.requests().is_empty());

    command(&fake, "Take a note: afebrile").await;
    let sent = fake.http.requests_to(CHAT_PATH);
    let body = &sent[0].body;
    assert_eq!(body["store"], json!(false));
    assert_eq!(body["tool_choice"], "auto");
    let tools = body["tools"].as_array().unwrap();
    let names: Vec<&str> = tools
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "take_note",
            "schedule_follow_up",
            "write_prescription",
            "order_lab",
            "request_summary",
            "request_medical_history"
        ]
    );
    for tool in tools {
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["strict"], json!(true));
        let params = &tool["function"]["parameters"];
        assert_eq!(params["additionalProperties"], json!(false));
        let props = params["properties"].as_object().unwrap();
        let required = params["required"].as_array().unwrap();
        assert_eq!(props.len(), required.len());
    }
    let prescription = &tools[2]["function"]["parameters"];
    assert_eq!(
        prescription["properties"]["details"]["type"],
        json!(["string", "null"])
    );
}

#[tokio::test]
async fn tts_returns_the_audio_bytes_with_voice_per_role() {
    let fake = fake().await;
    let tts = OpenAiTts::new(client(&fake));
    let audio = tts
        .synthesize(
            "Hola, ¿cómo está?",
            "es",
            Speaker::Clinician,
            AudioFormat::Mp3,
        )
        .await
        .unwrap();
    assert_eq!(&audio.bytes[..], "FAKE-MP3:Hola, ¿cómo está?".as_bytes());
    assert_eq!(audio.format.mime(), "audio/mpeg");
    let opus = tts
        .synthesize("Hello", "en", Speaker::Patient, AudioFormat::Opus)
        .await
        .unwrap();
    assert_eq!(&opus.bytes[..], b"FAKE-OPUS:Hello");

    let sent = fake.http.requests_to(SPEECH_PATH);
    assert_eq!(sent[0].body["model"], "gpt-4o-mini-tts");
    assert_eq!(sent[0].body["voice"], "ash");
    assert_eq!(sent[1].body["voice"], "coral");
    assert_eq!(sent[1].body["response_format"], "opus");
    assert!(sent[0].body["instructions"]
        .as_str()
        .unwrap()
        .contains("Spanish"));
}

#[tokio::test]
async fn tts_splits_long_text_and_tts_1_gets_no_instructions() {
    let fake = fake().await;
    let mut cfg = config(&fake);
    cfg.tts_model = "tts-1".into();
    let tts = OpenAiTts::new(OpenAiClient::new(cfg).unwrap());
    let text = "This is one sentence of the answer. ".repeat(200);
    let audio = tts
        .synthesize(&text, "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap();
    let sent = fake.http.requests_to(SPEECH_PATH);
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert!(r.body["input"].as_str().unwrap().chars().count() <= 4096);
        assert!(r.body.get("instructions").is_none());
    }
    assert!(audio.bytes.starts_with(b"FAKE-MP3:This is one"));
}

#[tokio::test]
async fn rate_limit_then_success_is_retried() {
    let fake = fake().await;
    fake.http.fail_next(CHAT_PATH, 2, Fault::RateLimited);
    let out = OpenAiTranslator::new(client(&fake))
        .translate("Hello", "en", "es", &[])
        .await
        .unwrap();
    assert_eq!(out, "[es] Hello");
    assert_eq!(fake.http.requests_to(CHAT_PATH).len(), 3);
}

#[tokio::test]
async fn server_errors_exhaust_the_retries_into_a_status_error() {
    let fake = fake().await;
    fake.http.fail_next(CHAT_PATH, 10, Fault::ServerError);
    let err = OpenAiTranslator::new(client(&fake))
        .translate("Hello", "en", "es", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err:?}");
    assert_eq!(err.code(), "provider_status");
    assert!(err.is_retryable());
    // One attempt plus the default two retries.
    assert_eq!(fake.http.requests_to(CHAT_PATH).len(), 3);
}

#[tokio::test]
async fn rate_limit_exhausted_is_rate_limited() {
    let fake = fake().await;
    fake.http.fail_next(SPEECH_PATH, 10, Fault::RateLimited);
    let err = OpenAiTts::new(client(&fake))
        .synthesize("Hello", "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d) } if d.is_zero()),
        "{err:?}"
    );
    assert_eq!(err.code(), "provider_rate_limited");
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let fake = fake().await;
    fake.http.set_delay(CHAT_PATH, Duration::from_secs(2));
    let mut cfg = config(&fake);
    cfg.request_timeout = Duration::from_millis(150);
    cfg.max_retries = 1;
    let err = OpenAiTranslator::new(OpenAiClient::new(cfg).unwrap())
        .translate("Hello", "en", "es", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert_eq!(err.code(), "provider_timeout");
    assert_eq!(fake.http.requests_to(CHAT_PATH).len(), 2);
}

#[tokio::test]
async fn a_malformed_body_is_malformed_and_not_retried() {
    let fake = fake().await;
    fake.http.fail_next(CHAT_PATH, 1, Fault::Malformed);
    let translator = OpenAiTranslator::new(client(&fake));
    let err = translator
        .translate("Hello", "en", "es", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    assert_eq!(fake.http.requests_to(CHAT_PATH).len(), 1);
    // Once only: the next call is answered normally.
    assert_eq!(
        translator
            .translate("Hello", "en", "es", &[])
            .await
            .unwrap(),
        "[es] Hello"
    );
}

#[tokio::test]
async fn the_api_key_is_sent_as_bearer() {
    let fake = fake().await;
    let mut cfg = config(&fake);
    cfg.api_key = Some("sk-test-123".into());
    let client = OpenAiClient::new(cfg).unwrap();
    OpenAiTranslator::new(client.clone())
        .translate("Hello", "en", "es", &[])
        .await
        .unwrap();
    OpenAiTts::new(client)
        .synthesize("Hello", "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap();
    for r in fake.http.requests() {
        assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test-123"));
    }
}

#[tokio::test]
async fn language_detection_is_local_first_with_llm_fallback() {
    let fake = fake().await;
    let llm = Arc::new(OpenAiLanguageDetector::new(client(&fake)));
    let detector = LocalLanguageDetector::new(Some(llm));

    let clear = detector
        .detect(
            "Me duele mucho la espalda desde la semana pasada",
            &["en", "es"],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(clear.language, "es");
    assert_eq!(clear.source, DetectionSource::Local);
    assert!(fake.http.requests().is_empty(), "no call for clear text");

    let hinted = detector.detect("sí", &["en", "es"], &["es"]).await.unwrap();
    assert_eq!(hinted.source, DetectionSource::SttHint);
    assert!(fake.http.requests().is_empty());

    let short = detector.detect("tengo", &["en", "es"], &[]).await.unwrap();
    assert_eq!(short.language, "es");
    assert_eq!(short.source, DetectionSource::Llm);
    let sent = fake.http.requests_to(CHAT_PATH);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["store"], json!(false));
    assert_eq!(sent[0].body["max_completion_tokens"], 5);
}

#[tokio::test]
async fn summary_and_history_shapes() {
    let fake = fake().await;
    let summary = OpenAiSummarizer::new(client(&fake))
        .summarize(&SummaryRequest {
            lines: vec![
                TranscriptLine {
                    message_id: "m1".into(),
                    speaker: LineSpeaker::Clinician,
                    language: "en".into(),
                    text: "What brings you in?".into(),
                },
                TranscriptLine {
                    message_id: "m2".into(),
                    speaker: LineSpeaker::Patient,
                    language: "es".into(),
                    text: "Me duele la cabeza.".into(),
                },
            ],
            actions: vec!["Note: headache".into()],
            language: "en".into(),
            kind: SummaryKind::Clinical,
        })
        .await
        .unwrap();
    assert!(summary.contains("[msg:m1]") && summary.contains("[msg:m2]"));

    let history = OpenAiHistoryGenerator::new(client(&fake))
        .generate("Ana", "García", Some(52))
        .await
        .unwrap();
    assert!(history.starts_with(SYNTHETIC_HISTORY_HEADER));
    assert!(history.contains("Allergies"));
    for r in fake.http.requests_to(CHAT_PATH) {
        assert_eq!(r.body["store"], json!(false));
    }
}

/// Drains a speech stream: the `Ok` chunks in order, then the error that ended it, if any.
async fn drain(mut stream: tandem::ai::SpeechStream) -> (Vec<bytes::Bytes>, Option<Error>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => return (chunks, Some(e)),
        }
    }
    (chunks, None)
}

#[tokio::test]
async fn tts_streams_the_fakes_chunks_in_order_after_retrying_a_500() {
    let fake = fake().await;
    fake.http.set_speech_chunk_size(Some(4));
    fake.http.fail_next(SPEECH_PATH, 1, Fault::ServerError);
    let tts = OpenAiTts::new(client(&fake));
    let stream = tts
        .synthesize_stream(
            "Hola, ¿cómo está?",
            "es",
            Speaker::Clinician,
            AudioFormat::Mp3,
        )
        .await
        .unwrap();
    let (chunks, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert!(chunks.len() > 3, "streamed in several chunks: {chunks:?}");
    let whole: Vec<u8> = chunks.concat();
    assert_eq!(whole, "FAKE-MP3:Hola, ¿cómo está?".as_bytes());
    assert_eq!(
        fake.http.requests_to(SPEECH_PATH).len(),
        2,
        "the 500 was retried before the first byte"
    );
}

#[tokio::test]
async fn tts_streams_long_text_piece_after_piece() {
    let fake = fake().await;
    fake.http.set_speech_chunk_size(Some(1024));
    let tts = OpenAiTts::new(client(&fake));
    let text = "This is one sentence of the answer. ".repeat(200);
    let stream = tts
        .synthesize_stream(&text, "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap();
    let (chunks, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    let sent = fake.http.requests_to(SPEECH_PATH);
    assert_eq!(sent.len(), 2);
    let expected: String = sent
        .iter()
        .map(|r| format!("FAKE-MP3:{}", r.body["input"].as_str().unwrap()))
        .collect();
    assert_eq!(chunks.concat(), expected.as_bytes());

    // Empty text: an empty stream, no call.
    let (chunks, error) = drain(
        tts.synthesize_stream("  ", "en", Speaker::Clinician, AudioFormat::Mp3)
            .await
            .unwrap(),
    )
    .await;
    assert!(chunks.is_empty() && error.is_none());
    assert_eq!(fake.http.requests_to(SPEECH_PATH).len(), 2);
}

#[tokio::test]
async fn a_speech_stream_cut_mid_body_ends_with_an_error_item_and_no_retry() {
    let fake = fake().await;
    fake.http.set_speech_chunk_size(Some(4));
    fake.http.fail_next(SPEECH_PATH, 1, Fault::CutStream);
    let stream = OpenAiTts::new(client(&fake))
        .synthesize_stream("Hello there", "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap();
    let (chunks, error) = drain(stream).await;
    assert_eq!(chunks.concat(), b"FAKE");
    let error = error.expect("the cut is reported");
    assert!(
        matches!(error, Error::Transport(_) | Error::Timeout),
        "{error:?}"
    );
    assert_eq!(
        fake.http.requests_to(SPEECH_PATH).len(),
        1,
        "no retry once streaming"
    );
}

#[tokio::test]
async fn a_speech_stream_error_before_the_first_byte_is_returned() {
    let fake = fake().await;
    fake.http.fail_next(SPEECH_PATH, 10, Fault::ServerError);
    let err = OpenAiTts::new(client(&fake))
        .synthesize_stream("Hello", "en", Speaker::Clinician, AudioFormat::Mp3)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err:?}");
    assert_eq!(fake.http.requests_to(SPEECH_PATH).len(), 3);
}
