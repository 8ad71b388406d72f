//! What the server logs at info level during a whole visit never holds a secret or PHI:
//! no password, no access or refresh token, no provider API key, no transcript, translation,
//! note or patient name. Its own binary, because the capture is the process-wide subscriber.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::ws::{connect, next_event, send, stream_recording, until_completed};
use support::{API_KEY, PASSWORD};
use tandem::testing::fake_openai::realtime::{ScriptLine, State};
use tandem::testing::logs::CapturedLogs;

const WAIT: Duration = Duration::from_secs(20);
/// Distinctive words, so a match in the logs cannot be a coincidence.
const CLINICIAN: &str =
    "Take a note: the patient reports zebrastripe rash on both elbows. Schedule a follow-up in two weeks.";
const PATIENT: &str = "Tengo una erupción quetzalcoatl en los codos desde el martes.";
const FIRST_NAME: &str = "Anastasiaxyz";
const LAST_NAME: &str = "Quetzalverde";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_visit_logs_no_secret_and_no_phi_at_info() {
    // The global subscriber, installed before any server exists so no callsite is cached as
    // disabled: everything logged at info level and above.
    let logs = CapturedLogs::default();
    tracing::subscriber::set_global_default(logs.subscriber(tracing::Level::INFO)).unwrap();
    let srv = support::start_scripted(State::new([
        ScriptLine {
            text: CLINICIAN.into(),
            languages: vec!["en".into()],
        },
        ScriptLine {
            text: PATIENT.into(),
            languages: vec!["es".into()],
        },
    ]))
    .await;

    // Account, a failed login, a refresh: every credential crosses the server once.
    let user = srv.new_user("dr_hygiene").await;
    assert_eq!(
        srv.login("dr_hygiene", "wrong password!").await.status(),
        401
    );
    let res = srv
        .http
        .post(srv.api("/auth/refresh"))
        .json(&json!({ "refreshToken": user.refresh_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let conversation = user
        .create_conversation(FIRST_NAME, LAST_NAME, "1980-04-02")
        .await;
    let c = conversation["id"].as_str().unwrap().to_owned();

    // The original frontend's sockets, tokens in the URL.
    let ws_base = format!("ws://{}", srv.addr);
    let mut control = connect(format!("{ws_base}/ws?token={}", user.access_token)).await;
    assert_eq!(
        support::next_control_json(&mut control, WAIT).await["type"],
        "system"
    );
    send(
        &mut control,
        json!({"type": "select_conversation", "payload": {"conversationId": c}}),
    )
    .await;
    assert_eq!(
        support::next_control_json(&mut control, WAIT).await["type"],
        "conversation_selected"
    );
    let mut audio = connect(format!(
        "{ws_base}/transcription?conversationId={c}&token={}",
        user.access_token
    ))
    .await;
    assert_eq!(
        next_event(&mut audio, WAIT).await["type"],
        "backend_connected"
    );
    stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;
    let events = until_completed(&mut audio, 2, WAIT).await;
    let executed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "command_executed")
        .collect();
    assert!(!executed.is_empty(), "the note command ran: {events:?}");
    audio.close(None).await.unwrap();

    // A plain GET on a socket path (no upgrade): refused, and its token-bearing URL logged.
    let res = srv
        .http
        .get(srv.url(&format!(
            "/transcription?conversationId={c}&token={}",
            user.access_token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Reads of everything the visit produced, then the end.
    let messages = user
        .get_json(&format!("/conversations/{c}/messages"), 200)
        .await;
    let messages = messages["messages"].as_array().unwrap().clone();
    let actions = user
        .get_json(&format!("/conversations/{c}/actions"), 200)
        .await;
    let res = user
        .post(&format!("/conversations/{c}/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    srv.stop().await;

    // What must never be in the log, gathered from what the visit actually produced.
    let mut secrets: Vec<(String, String)> = vec![
        ("password".into(), PASSWORD.into()),
        ("wrong password".into(), "wrong password!".into()),
        ("access token".into(), user.access_token.clone()),
        ("refresh token".into(), user.refresh_token.clone()),
        (
            "rotated access token".into(),
            rotated["accessToken"].as_str().unwrap().into(),
        ),
        (
            "rotated refresh token".into(),
            rotated["refreshToken"].as_str().unwrap().into(),
        ),
        ("API key".into(), API_KEY.into()),
        ("patient first name".into(), FIRST_NAME.into()),
        ("patient last name".into(), LAST_NAME.into()),
        // Words of the transcripts, in case a log line quotes part of one.
        ("clinician transcript".into(), "zebrastripe".into()),
        ("patient transcript".into(), "quetzalcoatl".into()),
    ];
    assert_eq!(messages.len(), 4, "two utterances and their translations");
    for m in &messages {
        for field in ["originalText", "translatedText"] {
            if let Some(text) = m[field].as_str() {
                secrets.push((format!("message {field}"), text.to_owned()));
            }
        }
    }
    let notes = actions.as_array().unwrap();
    assert!(!notes.is_empty(), "the note was stored");
    for a in notes {
        for (key, value) in a["data"].as_object().unwrap() {
            if let Some(text) = value.as_str().filter(|t| t.len() > 12) {
                secrets.push((format!("action {key}"), text.to_owned()));
            }
        }
    }

    let text = logs.text();
    // The capture really saw the visit: the access log and the socket lifecycle.
    for expected in [
        "tandem::access",
        "audio socket attached",
        "audio socket closed",
    ] {
        assert!(text.contains(expected), "{expected:?} logged:\n{text}");
    }
    assert!(
        text.contains("token=REDACTED"),
        "socket URLs are logged redacted"
    );
    for (what, secret) in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "the {what} appears in the info log:\n{text}"
        );
    }
}
