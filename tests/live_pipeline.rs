//! End to end, as the original frontend drives Tandem: REST login and conversation, the control
//! socket, and the audio socket streaming a real Chromium recording at real-time pace, against
//! the loopback fake OpenAI (Realtime STT with an energy VAD + chat + speech).

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use support::ws::{connect, next_event, send, stream_recording, until_completed, Ws};
use tandem::testing::fake_openai::realtime::{ScriptLine, State};
use tokio_tungstenite::tungstenite::Message;

use support::{speech_script as script, CLINICIAN, PATIENT};

async fn start_conversation(srv: &support::TestServer) -> (support::Client, String) {
    let user = srv.new_user("dr_lee").await;
    let res = user
        .post("/conversations")
        .json(&json!({"firstName": "Ana", "lastName": "García", "dob": "1980-04-02", "patientLanguage": "es"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let conversation: Value = res.json().await.unwrap();
    let id = conversation["id"].as_str().unwrap().to_owned();
    (user, id)
}

/// Opens the conversation's audio socket as the original frontend does (`extra` is appended
/// to the query, e.g. `&ttsStreaming=true`).
async fn open_audio(
    srv: &support::TestServer,
    user: &support::Client,
    id: &str,
    extra: &str,
) -> Ws {
    connect(format!(
        "ws://{}/transcription?conversationId={id}&token={}{extra}",
        srv.addr, user.access_token
    ))
    .await
}

/// Opens a control socket and selects the conversation, as the original frontend does;
/// returns the socket and the `conversation_selected` event.
async fn open_control(
    srv: &support::TestServer,
    user: &support::Client,
    conversation_id: &str,
) -> (Ws, Value) {
    let mut control = connect(format!("ws://{}/ws?token={}", srv.addr, user.access_token)).await;
    assert_eq!(
        support::next_control_json(&mut control, Duration::from_secs(5)).await["type"],
        "system"
    );
    send(
        &mut control,
        json!({"type": "select_conversation", "payload": {"conversationId": conversation_id}}),
    )
    .await;
    let selected = support::next_control_json(&mut control, Duration::from_secs(5)).await;
    assert_eq!(selected["type"], "conversation_selected");
    (control, selected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_is_transcribed_interpreted_and_stored() {
    let srv = support::start_scripted(script()).await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let (mut control, selected) = open_control(&srv, &user, &conversation_id).await;
    assert_eq!(selected["payload"]["isActive"], true);
    assert_eq!(selected["payload"]["patientLanguage"], "es");

    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    let hello = next_event(&mut audio, Duration::from_secs(5)).await;
    assert_eq!(hello["type"], "backend_connected");

    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;

    // Collect everything until both utterances completed.
    let events = until_completed(&mut audio, 2, Duration::from_secs(20)).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let position = |pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("missing event in {types:?}"))
    };
    assert!(
        types.contains(&"conversation.item.input_audio_transcription.delta"),
        "live captions: {types:?}"
    );

    // Utterance 1: the clinician, in English, with a voice command.
    let original_1 =
        position(&|e| e["type"] == "new_message" && e["payload"]["originalText"] == CLINICIAN);
    let m1 = &events[original_1]["payload"];
    assert_eq!(m1["senderType"], "user");
    assert_eq!(m1["language"], "en");
    let translation_1 =
        position(&|e| e["type"] == "new_message" && e["payload"]["originalMessageId"] == m1["id"]);
    assert_eq!(
        events[translation_1]["payload"]["senderType"],
        "translation"
    );
    assert_eq!(
        events[translation_1]["payload"]["language"], "es",
        "a translation carries its target"
    );
    let tts_1 =
        position(&|e| e["type"] == "tts_audio" && e["payload"]["originalMessageId"] == m1["id"]);
    assert_eq!(events[tts_1]["payload"]["format"], "audio/mpeg");
    let spoken = base64::engine::general_purpose::STANDARD
        .decode(events[tts_1]["payload"]["audioBase64"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&spoken).starts_with("FAKE-MP3:"),
        "the fake's speech bytes"
    );
    let command = position(&|e| e["type"] == "command_executed");
    let executed = &events[command]["payload"];
    assert_eq!(executed["status"], "success");
    assert_eq!(executed["name"], "take_note");
    assert_eq!(executed["payload"]["type"], "note", "the frontend's shape");
    assert_eq!(
        executed["data"]["note"]["id"], executed["payload"]["data"]["id"],
        "the backend's shape"
    );
    let done_1 = position(&|e| e["type"] == "processing_completed");
    assert!(
        original_1 < translation_1 && translation_1 < tts_1,
        "{types:?}"
    );
    assert!(command < done_1 && tts_1 < done_1, "{types:?}");

    // Utterance 2: the patient, in Spanish, no command.
    let original_2 =
        position(&|e| e["type"] == "new_message" && e["payload"]["originalText"] == PATIENT);
    let m2 = &events[original_2]["payload"];
    assert_eq!(m2["senderType"], "patient");
    assert_eq!(m2["language"], "es");
    assert!(
        original_2 > done_1,
        "utterances keep their order: {types:?}"
    );
    let translation_2 =
        position(&|e| e["type"] == "new_message" && e["payload"]["originalMessageId"] == m2["id"]);
    assert_eq!(events[translation_2]["payload"]["language"], "en");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "command_executed")
            .count(),
        1,
        "patients give no commands"
    );

    // The control socket got the action push for the conversation it selected.
    let pushed = support::next_control_json(&mut control, Duration::from_secs(5)).await;
    assert_eq!(pushed["type"], "action_created");
    assert_eq!(pushed["payload"]["type"], "note");
    assert!(!pushed["payload"]["data"]["content"]
        .as_str()
        .unwrap()
        .is_empty());

    // Stored rows, as the REST API and get_messages return them.
    let page = user
        .get_json(&format!("/conversations/{conversation_id}/messages"), 200)
        .await;
    let messages = page["messages"].as_array().unwrap();
    let rows: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["senderType"].as_str().unwrap(),
                m["language"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("user", "en"),
            ("translation", "es"),
            ("patient", "es"),
            ("translation", "en")
        ]
    );
    assert!(
        messages[0]["timings"]["stored_ms"].is_number(),
        "timings recorded: {}",
        messages[0]
    );
    assert!(messages[0]["sttItemId"].is_string());
    let actions = user
        .get_json(&format!("/conversations/{conversation_id}/actions"), 200)
        .await;
    assert_eq!(actions.as_array().unwrap().len(), 1);
    assert_eq!(actions[0]["type"], "note");

    send(
        &mut control,
        json!({"type": "get_messages", "payload": {"conversationId": conversation_id}}),
    )
    .await;
    let list = support::next_control_json(&mut control, Duration::from_secs(5)).await;
    assert_eq!(list["type"], "message_list");
    assert_eq!(list["payload"]["messages"].as_array().unwrap().len(), 4);

    // Stage latencies are exported for Prometheus.
    let metrics = srv
        .http
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for stage in ["stored", "translated", "tts_first_byte", "sent"] {
        assert!(
            metrics.contains(&format!(
                "tandem_pipeline_stage_seconds_count{{stage=\"{stage}\"}} 2"
            )),
            "{stage} observed for both utterances:\n{metrics}"
        );
    }

    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_audio_socket_ends_input_and_loses_nothing() {
    // The original frontend never sends `finalize`: "End Session" just closes /transcription.
    let srv = support::start_scripted(script()).await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    stream_recording(&mut audio).await;
    audio.close(None).await.unwrap();

    // Results reach the client later through the stored messages.
    let stored = support::stored_messages(&user, &conversation_id, 4).await;
    let texts: Vec<&str> = stored
        .iter()
        .filter(|m| m["senderType"] != "translation")
        .map(|m| m["originalText"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [CLINICIAN, PATIENT], "both utterances, once each");
    assert_eq!(stored.len(), 4);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_socket_drop_mid_utterance_loses_and_duplicates_nothing() {
    let srv = support::start_scripted(script().drop_mid_utterance_once()).await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;
    let events = until_completed(&mut audio, 2, Duration::from_secs(30)).await;
    let saw_reconnect = events.iter().any(|e| e["code"] == "stt_reconnecting");
    assert!(
        srv.fake
            .realtime
            .faults_fired()
            .contains(&"drop_mid_utterance"),
        "the fault fired: {:?}",
        srv.fake.realtime.faults_fired()
    );
    assert!(
        srv.fake.realtime.connection_count() >= 2,
        "Tandem reconnected"
    );
    assert!(saw_reconnect, "the client was told about the reconnect");
    let stored = support::stored_messages(&user, &conversation_id, 4).await;
    let originals: Vec<&str> = stored
        .iter()
        .filter(|m| m["senderType"] != "translation")
        .map(|m| m["originalText"].as_str().unwrap())
        .collect();
    assert_eq!(
        originals,
        [CLINICIAN, PATIENT],
        "each utterance exactly once"
    );
    assert_eq!(stored.len(), 4);
    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audio_gets_error_events_and_leaves_other_conversations_alone() {
    let srv = support::start_scripted(script()).await;
    let (user, bad_id) = start_conversation(&srv).await;
    let good = user
        .create_conversation("Luis", "Pérez", "1975-01-09")
        .await;
    let good_id = good["id"].as_str().unwrap().to_owned();
    let mut bad = open_audio(&srv, &user, &bad_id, "").await;
    let mut good = open_audio(&srv, &user, &good_id, "").await;
    assert_eq!(
        next_event(&mut bad, Duration::from_secs(5)).await["type"],
        "backend_connected"
    );
    assert_eq!(
        next_event(&mut good, Duration::from_secs(5)).await["type"],
        "backend_connected"
    );

    for (message, code) in [
        (
            Message::text(r#"{"type":"input_audio_buffer.append","audio":"%%%not base64"}"#),
            "invalid_base64",
        ),
        (Message::text("{not json"), "bad_json"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_message_type"),
        (
            Message::text(r#"{"type":"start","mimeType":"audio/webm;codecs=vorbis"}"#),
            "audio_unsupported",
        ),
        (
            Message::text(r#"{"type":"speaker","role":"nurse"}"#),
            "invalid_field",
        ),
        (Message::binary(vec![0x5a_u8; 4096]), "audio_unsupported"),
    ] {
        bad.send(message).await.unwrap();
        let e = loop {
            let e = next_event(&mut bad, Duration::from_secs(5)).await;
            if e["type"] == "error" {
                break e;
            }
        };
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].is_string() && e["text"].is_string());
    }

    // The other conversation decodes and transcribes normally meanwhile.
    stream_recording(&mut good).await;
    send(&mut good, json!({"type": "input_audio_buffer.finalize"})).await;
    for e in until_completed(&mut good, 2, Duration::from_secs(20)).await {
        assert_ne!(e["type"], "error", "{e}");
    }

    // An over-limit frame closes the socket with 1009.
    let huge = "A".repeat(5 * 1024 * 1024);
    let _ = bad.send(Message::text(huge)).await;
    let close = loop {
        match bad.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1009);
    good.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_speaker_overrides_language_detection() {
    let srv = support::start_scripted(script()).await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    // Push-to-talk: everything on this socket is the patient's, whatever the language.
    send(&mut audio, json!({"type": "speaker", "role": "patient"})).await;
    stream_recording(&mut audio).await;
    audio.close(None).await.unwrap();
    let stored = support::stored_messages(&user, &conversation_id, 4).await;
    let english = stored
        .iter()
        .find(|m| m["originalText"] == CLINICIAN)
        .expect("the English utterance");
    assert_eq!(english["senderType"], "patient");
    assert_eq!(english["speakerSource"], "client");
    let actions = user
        .get_json(&format!("/conversations/{conversation_id}/actions"), 200)
        .await;
    assert_eq!(
        actions.as_array().unwrap().len(),
        0,
        "patients give no commands"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_asking_to_repeat_hears_the_cached_audio_again() {
    let srv = support::start_scripted(State::new([
        ScriptLine {
            text: CLINICIAN.into(),
            languages: vec!["en".into()],
        },
        ScriptLine {
            text: "¿Puede repetir, por favor?".into(),
            languages: vec!["es".into()],
        },
    ]))
    .await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;
    let tts: Vec<Value> = until_completed(&mut audio, 2, Duration::from_secs(20))
        .await
        .into_iter()
        .filter(|e| e["type"] == "tts_audio")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(tts.len(), 2, "spoken once, replayed once");
    assert_eq!(
        tts[0], tts[1],
        "the replay is the same audio for the same message"
    );
    let speech_calls = srv
        .fake
        .http
        .requests_to(tandem::testing::fake_openai::http::SPEECH_PATH)
        .len();
    assert_eq!(speech_calls, 1, "the replay generated nothing new");
    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn sockets_refuse_bad_tokens_and_foreign_conversations() {
    let srv = support::start().await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let other = srv.user_in_new_org("Other Clinic", "dr_other").await;
    let ws_base = format!("ws://{}", srv.addr);

    for url in [
        format!("{ws_base}/ws?token=forged"),
        format!("{ws_base}/?token=forged"),
        format!("{ws_base}/transcription?conversationId={conversation_id}&token=forged"),
        format!("{ws_base}/transcription?conversationId={conversation_id}"),
    ] {
        let mut ws = connect(url.clone()).await;
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{url}: expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(u16::from(close.expect("close frame").code), 4001, "{url}");
    }

    let mut missing = connect(format!(
        "{ws_base}/transcription?token={}",
        user.access_token
    ))
    .await;
    let close = loop {
        if let Some(Ok(Message::Close(frame))) = missing.next().await {
            break frame;
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1008);

    // Another organization's conversation: an error event, then 1008.
    let mut foreign = connect(format!(
        "{ws_base}/transcription?conversationId={conversation_id}&token={}",
        other.access_token
    ))
    .await;
    let error = next_event(&mut foreign, Duration::from_secs(5)).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "not_found");
    let mut control = connect(format!("{ws_base}/ws?token={}", other.access_token)).await;
    next_event(&mut control, Duration::from_secs(5)).await;
    send(
        &mut control,
        json!({"type": "get_messages", "payload": {"conversationId": conversation_id}}),
    )
    .await;
    let refused = next_event(&mut control, Duration::from_secs(5)).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "not_found");
    assert!(refused["message"].is_string() && refused["text"].is_string());
    send(&mut control, json!({"type": "no_such_thing"})).await;
    assert_eq!(
        next_event(&mut control, Duration::from_secs(5)).await["code"],
        "unknown_message_type"
    );
    control.send(Message::text("{not json")).await.unwrap();
    assert_eq!(
        next_event(&mut control, Duration::from_secs(5)).await["code"],
        "bad_json"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_streaming_sends_the_audio_in_indexed_chunks() {
    let srv = support::start_scripted(script()).await;
    srv.fake.http.set_speech_chunk_size(Some(16));
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "&ttsStreaming=true").await;
    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;
    let events = until_completed(&mut audio, 2, Duration::from_secs(20)).await;
    let translations: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "new_message" && e["payload"]["senderType"] == "translation")
        .map(|e| &e["payload"])
        .collect();
    assert_eq!(translations.len(), 2);
    for translation in translations {
        let message_id = &translation["originalMessageId"];
        let frames: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["type"] == "tts_audio" && &e["payload"]["originalMessageId"] == message_id
            })
            .map(|e| &e["payload"])
            .collect();
        assert!(frames.len() > 2, "several chunks: {frames:?}");
        let mut spoken = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame["chunk"]["index"], json!(i), "in order");
            assert_eq!(frame["chunk"]["last"], json!(i + 1 == frames.len()));
            assert_eq!(frame["format"], "audio/mpeg");
            spoken.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(frame["audioBase64"].as_str().unwrap())
                    .unwrap(),
            );
        }
        assert_eq!(
            String::from_utf8(spoken).unwrap(),
            format!("FAKE-MP3:{}", translation["originalText"].as_str().unwrap())
        );
    }
    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tts_stream_cut_mid_way_sends_an_error_and_no_last_frame() {
    use tandem::testing::fake_openai::http::{Fault, SPEECH_PATH};
    let srv = support::start_scripted(script()).await;
    srv.fake.http.set_speech_chunk_size(Some(16));
    // The clinician's speech (the first synthesis) breaks off after its first chunk.
    srv.fake.http.fail_next(SPEECH_PATH, 1, Fault::CutStream);
    let (user, conversation_id) = start_conversation(&srv).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    // Asked for with `start` this time, without changing the input format.
    send(&mut audio, json!({"type": "start", "ttsStreaming": true})).await;
    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;
    let events = until_completed(&mut audio, 2, Duration::from_secs(20)).await;
    let id_of = |text: &str| {
        events
            .iter()
            .find(|e| e["type"] == "new_message" && e["payload"]["originalText"] == text)
            .map(|e| e["payload"]["id"].clone())
            .expect("the original message")
    };
    let frames_of = |id: &Value| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == "tts_audio" && &e["payload"]["originalMessageId"] == id)
            .map(|e| e["payload"].clone())
            .collect()
    };
    let cut = frames_of(&id_of(CLINICIAN));
    assert_eq!(cut.len(), 1, "only the chunk before the cut: {cut:?}");
    assert_eq!(cut[0]["chunk"], json!({"index": 0, "last": false}));
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("the cut is reported");
    assert_eq!(error["code"], "provider_unreachable", "{error}");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Speech synthesis failed"));
    let whole = frames_of(&id_of(PATIENT));
    assert!(whole.len() > 2);
    assert_eq!(whole.last().unwrap()["chunk"]["last"], true);
    assert_eq!(
        srv.fake.http.requests_to(SPEECH_PATH).len(),
        2,
        "no retry once audio was sent"
    );
    audio.close(None).await.unwrap();
    srv.stop().await;
}

/// The command-detection requests the fake received: chat calls that offered tools.
fn command_requests(srv: &support::TestServer) -> Vec<Value> {
    srv.fake
        .http
        .requests_to(tandem::testing::fake_openai::http::CHAT_PATH)
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["tools"].as_array().is_some_and(|t| !t.is_empty()))
        .collect()
}

fn tool_names(request: &Value) -> Vec<&str> {
    request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect()
}

/// What the clinician said, as the command detector sent it to the model.
fn spoken(request: &Value) -> &str {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap()
}

fn referral_command() -> Value {
    json!({
        "name": "refer_patient",
        "description": "Refer the patient to a specialist.",
        "examples": ["refer to cardiology"],
        "parameters": {"type": "object", "properties": {
            "specialty": {"type": "string"}, "reason": {"type": "string"}},
            "required": ["specialty"]},
        "produces": {"kind": "action", "actionType": "referral"}
    })
}

async fn admin_of(srv: &support::TestServer) -> support::Client {
    let org = srv.store.default_organization().await.unwrap();
    srv.user_with_role(&org.id, "admin_kim", tandem::store::UserRole::Admin)
        .await
}

/// Streams the fixture (two utterances), finalizes, and returns the events up to the second
/// `processing_completed`.
async fn one_pass(audio: &mut Ws) -> Vec<Value> {
    stream_recording(audio).await;
    send(audio, json!({"type": "input_audio_buffer.finalize"})).await;
    until_completed(audio, 2, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_defined_over_rest_is_offered_and_executed_on_the_next_utterance() {
    const REFER: &str = "Refer patient, specialty cardiology, reason chest pain.";
    const REFER_NO_SPECIALTY: &str = "Please refer patient, reason chest pain.";
    let english = |text: &str| ScriptLine {
        text: text.into(),
        languages: vec!["en".into()],
    };
    let srv = support::start_scripted(State::new([
        english(REFER),
        ScriptLine {
            text: PATIENT.into(),
            languages: vec!["es".into()],
        },
        english(REFER),
        english(REFER_NO_SPECIALTY),
    ]))
    .await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let admin = admin_of(&srv).await;
    let (mut control, _) = open_control(&srv, &user, &conversation_id).await;
    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;

    // Before the command exists: the model is offered the built-ins only, nothing happens.
    let first = one_pass(&mut audio).await;
    let before = command_requests(&srv);
    assert_eq!(before.len(), 1, "one clinician utterance");
    assert_eq!(tool_names(&before[0]), tandem::ai::BUILTIN_TOOL_NAMES);
    assert!(!first.iter().any(|e| e["type"] == "command_executed"));

    // Defined over REST while the conversation is live...
    let res = admin
        .post("/commands")
        .json(&referral_command())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // ...and offered on the very next utterance, then executed.
    let second = one_pass(&mut audio).await;
    let after = command_requests(&srv);
    assert_eq!(after.len(), 3);
    let offered = &after[1];
    assert_eq!(spoken(offered), REFER);
    let names = tool_names(offered);
    assert_eq!(names.last(), Some(&"refer_patient"), "{names:?}");
    let tool = offered["tools"].as_array().unwrap().last().unwrap();
    assert_eq!(tool["function"]["strict"], false);
    assert_eq!(
        tool["function"]["parameters"],
        referral_command()["parameters"]
    );
    assert!(tool["function"]["description"]
        .as_str()
        .unwrap()
        .contains("\"refer to cardiology\""));

    let executed: Vec<&Value> = second
        .iter()
        .filter(|e| e["type"] == "command_executed")
        .map(|e| &e["payload"])
        .collect();
    assert_eq!(executed.len(), 2, "{executed:?}");
    assert_eq!(executed[0]["status"], "success");
    assert_eq!(executed[0]["name"], "refer_patient");
    assert_eq!(executed[0]["payload"]["type"], "referral");
    assert_eq!(executed[0]["payload"]["data"]["specialty"], "cardiology");
    // A required value left out is reported, never executed with a guess.
    assert_eq!(executed[1]["status"], "incomplete");
    assert_eq!(executed[1]["name"], "refer_patient");
    assert_eq!(executed[1]["data"]["missing"], json!(["specialty"]));

    let pushed = next_event(&mut control, Duration::from_secs(5)).await;
    assert_eq!(pushed["type"], "action_created");
    assert_eq!(pushed["payload"]["type"], "referral");
    assert_eq!(pushed["payload"]["status"], "pending_review");
    assert_eq!(
        pushed["payload"]["data"],
        json!({"specialty": "cardiology", "reason": "chest pain"})
    );
    let actions = user
        .get_json(&format!("/conversations/{conversation_id}/actions"), 200)
        .await;
    assert_eq!(actions.as_array().unwrap().len(), 1);
    assert_eq!(actions[0], pushed["payload"]);

    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wake_phrase_gates_detection_and_the_builtin_switch_removes_builtins() {
    const NO_WAKE: &str = "Take a note: the patient reports chest pain for three days.";
    const WOKEN: &str = "Hey, Tandem: refer patient, specialty dermatology.";
    let english = |text: &str| ScriptLine {
        text: text.into(),
        languages: vec!["en".into()],
    };
    let srv = support::start_scripted(State::new([english(NO_WAKE), english(WOKEN)])).await;
    let (user, conversation_id) = start_conversation(&srv).await;
    let admin = admin_of(&srv).await;
    let res = admin
        .post("/commands")
        .json(&referral_command())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = user
        .patch("/users/me/settings")
        .json(&json!({"builtinCommands": false, "wakePhrase": "Hey Tandem"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let mut audio = open_audio(&srv, &user, &conversation_id, "").await;
    let events = one_pass(&mut audio).await;

    // Without the wake phrase there was no model call at all; with it, the phrase is stripped
    // and only the clinic's command is offered.
    let requests = command_requests(&srv);
    assert_eq!(requests.len(), 1, "only the woken utterance was checked");
    assert_eq!(
        spoken(&requests[0]),
        "refer patient, specialty dermatology."
    );
    assert_eq!(tool_names(&requests[0]), ["refer_patient"]);
    let executed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "command_executed")
        .map(|e| &e["payload"])
        .collect();
    assert_eq!(executed.len(), 1, "{executed:?}");
    assert_eq!(executed[0]["name"], "refer_patient");
    assert_eq!(executed[0]["payload"]["data"]["specialty"], "dermatology");
    let actions = user
        .get_json(&format!("/conversations/{conversation_id}/actions"), 200)
        .await;
    let types: Vec<&str> = actions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["referral"], "no note without the wake phrase");

    audio.close(None).await.unwrap();
    srv.stop().await;
}
