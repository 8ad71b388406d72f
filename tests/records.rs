//! What a visit leaves behind, end to end over loopback against the fake OpenAI: ending a
//! visit (audio closed and drained, then the summary with checked citations), summary failure
//! and retry, the synthetic medical history once per patient, voice requests for an interim
//! summary and the history, and exports in both formats.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tandem::ai::SYNTHETIC_HISTORY_HEADER;
use tandem::store::{AuditQuery, NewMessage, SenderType};
use tandem::testing::fake_openai::http::{Fault, ScriptedReply, CHAT_PATH};
use tandem::testing::fake_openai::realtime::{ScriptLine, State};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CLINICIAN: &str =
    "Take a note: the patient reports chest pain for three days. Schedule a follow-up in two weeks.";
const PATIENT: &str = "Me duele el pecho desde hace tres días y tomo metformina dos veces al día.";

fn script(lines: [(&str, &str); 2]) -> State {
    State::new(lines.map(|(text, language)| ScriptLine {
        text: text.into(),
        languages: vec![language.into()],
    }))
}

async fn connect(url: String) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string())).await.unwrap();
}

/// The next JSON event of type `kind`, skipping others; panics after `within`.
async fn until_type(ws: &mut Ws, kind: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event in time"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// The next event whose type is one of `kinds`, within 20 s.
async fn until_any(ws: &mut Ws, kinds: &[&str]) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap_or_else(|_| panic!("none of {kinds:?} in time"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            let event: Value = serde_json::from_str(&text).unwrap();
            if kinds.iter().any(|k| event["type"] == *k) {
                return event;
            }
        }
    }
}

/// A control socket of `user`, past its greeting.
async fn control(srv: &support::TestServer, user: &support::Client) -> Ws {
    let mut ws = connect(format!("ws://{}/ws?token={}", srv.addr, user.access_token)).await;
    until_type(&mut ws, "system", Duration::from_secs(5)).await;
    ws
}

async fn open_audio(srv: &support::TestServer, user: &support::Client, id: &str) -> Ws {
    let mut ws = connect(format!(
        "ws://{}/transcription?conversationId={id}&token={}",
        srv.addr, user.access_token
    ))
    .await;
    until_type(&mut ws, "backend_connected", Duration::from_secs(5)).await;
    ws
}

/// A scripted server, a user with a control socket, and a new conversation whose background
/// medical history was already pushed (so later chat requests are the test's own).
async fn visit(
    lines: [(&str, &str); 2],
    username: &str,
) -> (support::TestServer, support::Client, Ws, String) {
    let srv = support::start_scripted(script(lines)).await;
    let user = srv.new_user(username).await;
    let mut ctl = control(&srv, &user).await;
    let id = create(&user, "Ana", "García").await;
    until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    (srv, user, ctl, id)
}

/// `POST path` (no body), expecting `status`; the JSON body.
async fn post(user: &support::Client, path: &str, status: u16) -> Value {
    let res = user.post(path).send().await.unwrap();
    assert_eq!(res.status(), status, "POST {path}");
    res.json().await.unwrap()
}

async fn create(user: &support::Client, first: &str, last: &str) -> String {
    let conversation = user.create_conversation(first, last, "1980-04-02").await;
    conversation["id"].as_str().unwrap().to_owned()
}

async fn messages(user: &support::Client, id: &str) -> Vec<Value> {
    let page = user
        .get_json(&format!("/conversations/{id}/messages"), 200)
        .await;
    page["messages"].as_array().unwrap().clone()
}

/// Chat requests the fake received for medical histories.
fn history_requests(srv: &support::TestServer) -> usize {
    srv.fake
        .http
        .requests_to(CHAT_PATH)
        .iter()
        .filter(|r| r.body.to_string().contains("synthetic medical history"))
        .count()
}

/// Chat requests the fake received for summaries, as their user messages.
fn summary_prompts(srv: &support::TestServer) -> Vec<String> {
    srv.fake
        .http
        .requests_to(CHAT_PATH)
        .iter()
        .filter(|r| r.body.to_string().contains("You write visit summaries"))
        .map(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_visit_drains_the_audio_then_summarizes_with_real_citations() {
    let (srv, user, mut ctl, id) = visit([(CLINICIAN, "en"), (PATIENT, "es")], "dr_end").await;
    let mut audio = open_audio(&srv, &user, &id).await;
    // Slow model answers keep the last utterance in flight when the visit ends: it must be
    // processed (its translation stored) before the summary is written.
    srv.fake.http.set_delay(CHAT_PATH, Duration::from_secs(3));
    support::ws::stream_recording(&mut audio).await;
    let ended = post(&user, &format!("/conversations/{id}/end"), 200).await;
    assert_eq!(ended["status"], "ended", "answered before the summary");

    // The audio socket is told, then closed normally.
    until_type(&mut audio, "conversation_ended", Duration::from_secs(10)).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), audio.next())
            .await
            .expect("the server closes the audio socket")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1000);

    let ready = until_type(&mut ctl, "summary_ready", Duration::from_secs(30)).await;
    let data = until_type(&mut ctl, "summary_data", Duration::from_secs(5)).await;
    let payload = &ready["payload"];
    assert_eq!(payload["conversationId"], id.as_str());
    assert_eq!(payload["status"], "summarized");
    let summary = &payload["summary"];
    assert_eq!(summary["interim"], false);
    assert_eq!(data["payload"]["summary"], summary["clinical"], "a string");
    assert_eq!(summary["content"], summary["clinical"]);
    assert!(!summary["takeHome"].as_str().unwrap().is_empty());
    assert!(
        !summary["takeHome"].as_str().unwrap().contains("[msg:"),
        "the patient's version carries no ids"
    );

    // Every utterance was stored before the summary was written, and its citations are the
    // conversation's messages: all of them, since the fake cites every line it was given.
    let stored = messages(&user, &id).await;
    let texts: Vec<&str> = stored
        .iter()
        .filter(|m| m["senderType"] != "translation")
        .map(|m| m["originalText"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [CLINICIAN, PATIENT]);
    let ids: HashSet<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let cited: HashSet<&str> = summary["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(cited, ids, "references: {summary}");
    assert_eq!(summary["unresolvedReferences"], json!([]));
    for reference in &cited {
        assert!(summary["clinical"]
            .as_str()
            .unwrap()
            .contains(&format!("[msg:{reference}]")));
    }

    // The summary was written from the transcript and the visit's action.
    let actions = user
        .get_json(&format!("/conversations/{id}/actions"), 200)
        .await;
    assert_eq!(actions.as_array().unwrap().len(), 1);
    assert_eq!(actions[0]["type"], "note");
    let prompts = summary_prompts(&srv);
    assert_eq!(prompts.len(), 2, "clinical and take-home");
    for prompt in &prompts {
        assert!(prompt.contains(PATIENT), "{prompt}");
        assert!(prompt.contains("- note (created): content: "), "{prompt}");
    }

    // Stored and readable in the original shapes.
    let got = user.get_json(&format!("/conversations/{id}"), 200).await;
    assert_eq!(got["status"], "summarized");
    let rest = user
        .get_json(&format!("/conversations/{id}/summary"), 200)
        .await;
    assert_eq!(rest["content"], summary["clinical"]);
    assert_eq!(rest["references"], summary["references"]);
    send(
        &mut ctl,
        json!({"type": "get_summary", "payload": {"conversationId": id}}),
    )
    .await;
    let asked = until_type(&mut ctl, "summary_data", Duration::from_secs(5)).await;
    assert!(asked["payload"]["summary"].is_string());

    // Ending again changes nothing and writes no new summary.
    let again = post(&user, &format!("/conversations/{id}/end"), 200).await;
    assert_eq!(again["status"], "summarized");
    assert_eq!(again["endTime"], ended["endTime"]);
    assert_eq!(summary_prompts(&srv).len(), 2);
    // No recording into an ended visit.
    let mut late = connect(format!(
        "ws://{}/transcription?conversationId={id}&token={}",
        srv.addr, user.access_token
    ))
    .await;
    let refused = until_type(&mut late, "error", Duration::from_secs(5)).await;
    assert_eq!(refused["code"], "conversation_ended");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_summary_ends_in_error_and_a_retry_succeeds() {
    let srv = support::start().await;
    let user = srv.new_user("dr_retry").await;
    let mut ctl = control(&srv, &user).await;
    let id = create(&user, "Luis", "Pérez").await;
    // Let the background medical history finish, so the faults below hit the summary calls.
    until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;

    let res = user
        .post(&format!("/conversations/{id}/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        support::error_code(res, 409).await,
        "conversation_active",
        "a summary needs an ended visit"
    );

    // A malformed answer is not retried by the client: one per summary call.
    srv.fake.http.fail_next(CHAT_PATH, 2, Fault::Malformed);
    let ended = post(&user, &format!("/conversations/{id}/end?wait=true"), 200).await;
    assert_eq!(ended["status"], "ended_error");
    let failed = until_type(&mut ctl, "error", Duration::from_secs(5)).await;
    assert_eq!(failed["code"], "summary_failed");
    assert!(
        !failed["message"].as_str().unwrap().contains("127.0.0.1"),
        "no provider details: {failed}"
    );
    assert!(user
        .get_json(&format!("/conversations/{id}/summary"), 200)
        .await
        .is_null());

    // The retry's answers cite one real message and one id that is not in the conversation.
    let said = srv
        .store
        .insert_message(NewMessage::utterance(
            &id,
            SenderType::Patient,
            "es",
            "Tengo fiebre.",
        ))
        .await
        .unwrap()
        .into_inner();
    let answer = format!("Fever [msg:{}]. Cough [msg:invented-id].", said.id);
    for _ in 0..2 {
        srv.fake
            .http
            .script_chat(ScriptedReply::Text(answer.clone()));
    }
    let summary = post(&user, &format!("/conversations/{id}/summary"), 200).await;
    assert_eq!(summary["interim"], false);
    assert_eq!(
        summary["content"],
        format!("Fever [msg:{}]. Cough.", said.id),
        "the unknown citation is cut"
    );
    assert_eq!(summary["references"], json!([said.id]));
    assert_eq!(summary["unresolvedReferences"], json!(["invented-id"]));
    assert_eq!(summary["takeHome"], "Fever. Cough.");
    let ready = until_type(&mut ctl, "summary_ready", Duration::from_secs(5)).await;
    assert_eq!(ready["payload"]["status"], "summarized");
    let got = user.get_json(&format!("/conversations/{id}"), 200).await;
    assert_eq!(got["status"], "summarized");
    assert_eq!(got["endTime"], ended["endTime"], "not ended again");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_medical_history_is_generated_once_per_patient_and_pushed() {
    let srv = support::start().await;
    let user = srv.new_user("dr_history").await;
    let mut ctl = control(&srv, &user).await;

    let first = create(&user, "Eva", "Soto").await;
    let pushed = until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    assert_eq!(pushed["payload"]["conversationId"], first.as_str());
    let text = pushed["payload"]["medicalHistory"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.starts_with(SYNTHETIC_HISTORY_HEADER), "{text}");
    assert_eq!(pushed["payload"]["history"], text.as_str());
    let prompt = srv
        .fake
        .http
        .requests_to(CHAT_PATH)
        .last()
        .unwrap()
        .body
        .to_string();
    assert!(prompt.contains("Eva Soto"), "generated from the name");
    assert!(prompt.contains("years old"), "and the approximate age");

    // The same patient again: the history is attached, not generated again.
    let second = create(&user, "Eva", "Soto").await;
    let pushed = until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    assert_eq!(pushed["payload"]["conversationId"], second.as_str());
    assert_eq!(pushed["payload"]["medicalHistory"], text.as_str());
    let rest = user
        .get_json(&format!("/conversations/{second}/medical-history"), 200)
        .await;
    assert_eq!(rest["content"], text.as_str());
    assert_eq!(rest["conversationId"], second.as_str());
    assert_eq!(history_requests(&srv), 1);

    // Two visits of a new patient started at once still generate one history.
    let (a, b) = tokio::join!(create(&user, "Iván", "Ruiz"), create(&user, "Iván", "Ruiz"));
    for _ in 0..2 {
        until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    }
    let ha = user
        .get_json(&format!("/conversations/{a}/medical-history"), 200)
        .await;
    let hb = user
        .get_json(&format!("/conversations/{b}/medical-history"), 200)
        .await;
    assert_eq!(ha["content"], hb["content"]);
    assert_eq!(history_requests(&srv), 2);

    // A provider failure never fails the conversation; it is reported, and the patient's next
    // conversation tries again.
    srv.fake.http.fail_next(CHAT_PATH, 1, Fault::Malformed);
    let failed_conv = create(&user, "Olga", "Vidal").await;
    let failed = until_type(&mut ctl, "error", Duration::from_secs(10)).await;
    assert_eq!(failed["code"], "medical_history_failed");
    assert!(user
        .get_json(
            &format!("/conversations/{failed_conv}/medical-history"),
            200
        )
        .await
        .is_null());
    create(&user, "Olga", "Vidal").await;
    let pushed = until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    assert!(pushed["payload"]["medicalHistory"]
        .as_str()
        .unwrap()
        .starts_with(SYNTHETIC_HISTORY_HEADER));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_requests_give_an_interim_summary_and_the_medical_history() {
    let (srv, user, mut ctl, id) = visit(
        [
            ("Please give me a summary of the visit so far.", "en"),
            ("Show me the medical history of this patient.", "en"),
        ],
        "dr_voice",
    )
    .await;

    let mut audio = open_audio(&srv, &user, &id).await;
    support::ws::stream_recording(&mut audio).await;
    send(&mut audio, json!({"type": "input_audio_buffer.finalize"})).await;

    let summary_ack = until_type(&mut audio, "command_executed", Duration::from_secs(20)).await;
    assert_eq!(summary_ack["payload"]["name"], "request_summary");
    assert_eq!(summary_ack["payload"]["status"], "success");
    let history_ack = until_type(&mut audio, "command_executed", Duration::from_secs(20)).await;
    assert_eq!(history_ack["payload"]["name"], "request_medical_history");
    assert!(history_ack["payload"]["data"]["medicalHistory"]
        .as_str()
        .unwrap()
        .starts_with(SYNTHETIC_HISTORY_HEADER));
    // The spoken request is an audited read, attributed to the visit's clinician (it comes
    // from the pipeline, so it has no peer address).
    let org = srv.organization_of(&user).await;
    let reads = srv
        .store
        .search_audit(
            &org,
            &AuditQuery {
                user_id: Some(user.user_id.clone()),
                action: Some("conversation.medical_history.read".into()),
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].entity_id, id);
    assert_eq!(reads[0].remote_addr, None);

    // The interim summary (written in the background) and the history push arrive in either
    // order.
    let (mut ready, mut pushed) = (None, None);
    while ready.is_none() || pushed.is_none() {
        let event = until_any(&mut ctl, &["summary_ready", "medical_history_data"]).await;
        if event["type"] == "summary_ready" {
            ready = Some(event);
        } else {
            pushed = Some(event);
        }
    }
    let (ready, pushed) = (ready.unwrap(), pushed.unwrap());
    assert_eq!(ready["payload"]["status"], "active", "the visit goes on");
    assert_eq!(ready["payload"]["summary"]["interim"], true);
    let stored = user
        .get_json(&format!("/conversations/{id}/summary"), 200)
        .await;
    assert_eq!(stored["interim"], true);
    let ids: HashSet<String> = messages(&user, &id)
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    for reference in stored["references"].as_array().unwrap() {
        assert!(ids.contains(reference.as_str().unwrap()), "{reference}");
    }
    // The history request pushed the history to the control socket too.
    assert_eq!(pushed["payload"]["conversationId"], id.as_str());
    let got = user.get_json(&format!("/conversations/{id}"), 200).await;
    assert_eq!(got["status"], "active");
    assert_eq!(
        history_requests(&srv),
        1,
        "the request reused the stored history"
    );

    // The final summary replaces the interim one.
    audio.close(None).await.unwrap();
    let ended = post(&user, &format!("/conversations/{id}/end?wait=true"), 200).await;
    assert_eq!(ended["status"], "summarized");
    let stored = user
        .get_json(&format!("/conversations/{id}/summary"), 200)
        .await;
    assert_eq!(stored["interim"], false);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_carry_the_transcript_in_order_in_both_languages() {
    let (srv, user, _ctl, id) = visit([(CLINICIAN, "en"), (PATIENT, "es")], "dr_export").await;
    let mut audio = open_audio(&srv, &user, &id).await;
    support::ws::stream_recording(&mut audio).await;
    let ended = post(&user, &format!("/conversations/{id}/end?wait=true"), 200).await;
    assert_eq!(ended["status"], "summarized");
    let stored = messages(&user, &id).await;
    assert_eq!(stored.len(), 4);
    let (m1, t1, m2, t2) = (&stored[0], &stored[1], &stored[2], &stored[3]);
    assert_eq!(t1["originalMessageId"], m1["id"]);
    assert_eq!(t2["originalMessageId"], m2["id"]);

    // JSON (the default).
    let res = user
        .get(&format!("/conversations/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"conversation-{id}.json\"")
    );
    let export: Value = res.json().await.unwrap();
    let transcript = export["transcript"].as_array().unwrap();
    assert_eq!(transcript.len(), 2);
    for (entry, (original, translation, speaker)) in transcript
        .iter()
        .zip([(m1, t1, "clinician"), (m2, t2, "patient")])
    {
        assert_eq!(entry["messageId"], original["id"]);
        assert_eq!(entry["speaker"], speaker);
        assert_eq!(entry["text"], original["originalText"]);
        assert_eq!(entry["language"], original["language"]);
        assert_eq!(entry["timestamp"], original["timestamp"]);
        assert!(entry["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(entry["translation"]["text"], translation["originalText"]);
        assert_eq!(entry["translation"]["language"], translation["language"]);
    }
    assert_eq!(transcript[0]["language"], "en");
    assert_eq!(transcript[0]["translation"]["language"], "es");
    assert_eq!(export["actions"][0]["type"], "note");
    assert!(export["summary"]["clinical"].is_string());
    assert!(export["summary"]["takeHome"].is_string());
    assert_eq!(export["medicalHistory"]["synthetic"], true);
    assert_eq!(export["conversation"]["patient"]["lastName"], "García");

    // Markdown.
    let res = user
        .get(&format!("/conversations/{id}/export?format=markdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .ends_with(&format!("conversation-{id}.md\"")));
    let md = res.text().await.unwrap();
    let at = |needle: &str| {
        md.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{md}"))
    };
    let order = [
        at(&format!("> {}", m1["originalText"].as_str().unwrap())),
        // The fake's translations start "[es] …": brackets are escaped, never a link.
        at(&format!(
            "> {}",
            t1["originalText"]
                .as_str()
                .unwrap()
                .replacen("[es]", "\\[es\\]", 1)
        )),
        at(&format!("> {}", m2["originalText"].as_str().unwrap())),
        at(&format!(
            "> {}",
            t2["originalText"]
                .as_str()
                .unwrap()
                .replacen("[en]", "\\[en\\]", 1)
        )),
        at("## Actions"),
        at("## Summary"),
        at("### Take-home summary"),
        at(SYNTHETIC_HISTORY_HEADER),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{md}");

    // Bad formats are refused; every export is audited.
    let res = user
        .get(&format!("/conversations/{id}/export?format=pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(support::error_code(res, 400).await, "invalid_query");
    let org = srv.organization_of(&user).await;
    let exports = srv
        .store
        .list_audit(&org, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "conversation.export" && a.entity_id == id)
        .count();
    assert_eq!(exports, 2);

    // Another organization cannot export it.
    let stranger = srv.user_in_new_org("Other clinic", "dr_other").await;
    let res = stranger
        .get(&format!("/conversations/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ends_summarize_once() {
    let srv = support::start().await;
    let user = srv.new_user("dr_twice").await;
    let mut ctl = control(&srv, &user).await;
    let id = create(&user, "Tomás", "León").await;
    until_type(&mut ctl, "medical_history_data", Duration::from_secs(10)).await;
    let path = format!("/conversations/{id}/end?wait=true");
    let (a, b) = tokio::join!(post(&user, &path, 200), post(&user, &path, 200));
    let statuses = [a["status"].as_str().unwrap(), b["status"].as_str().unwrap()];
    assert!(statuses.contains(&"summarized"), "{statuses:?}");
    until_type(&mut ctl, "summary_ready", Duration::from_secs(10)).await;
    let got = user.get_json(&format!("/conversations/{id}"), 200).await;
    assert_eq!(got["status"], "summarized");
    assert_eq!(
        summary_prompts(&srv).len(),
        2,
        "one clinical and one take-home call"
    );
    srv.stop().await;
}

/// One stored conversation left `status`, ended `ago`, with one patient utterance.
async fn left_ended(
    store: &dyn tandem::store::Store,
    org: &str,
    user: &str,
    status: tandem::store::ConversationStatus,
    ago: Duration,
) -> String {
    let (patient, _) = store
        .find_or_create_patient(tandem::store::NewPatient {
            organization_id: org.to_owned(),
            first_name: "Ana".into(),
            last_name: format!("Left {status:?}"),
            date_of_birth: "1980-04-02".into(),
            preferred_language: "es".into(),
        })
        .await
        .unwrap();
    let conversation = store
        .create_conversation(tandem::store::NewConversation {
            organization_id: org.to_owned(),
            user_id: user.to_owned(),
            patient_id: patient.id,
            clinician_language: "en".into(),
            patient_language: "es".into(),
        })
        .await
        .unwrap();
    store
        .insert_message(NewMessage::utterance(
            &conversation.id,
            SenderType::Patient,
            "es",
            "Me duele el pecho.",
        ))
        .await
        .unwrap();
    let ended_at = tandem::store::now_millis() - i64::try_from(ago.as_millis()).unwrap();
    store
        .set_conversation_status(org, &conversation.id, status, Some(ended_at))
        .await
        .unwrap();
    conversation.id
}

/// Polls until the conversation is no longer `ended` (or gives up after ~20 s).
async fn settled_status(
    store: &dyn tandem::store::Store,
    org: &str,
    id: &str,
) -> tandem::store::ConversationStatus {
    let mut status = tandem::store::ConversationStatus::Ended;
    for _ in 0..200 {
        status = store
            .get_conversation(org, id)
            .await
            .unwrap()
            .conversation
            .status;
        if status != tandem::store::ConversationStatus::Ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// A final summary cut off by a stop leaves the conversation `ended` without one. The next
/// start of the real binary writes it in the background, once, and marks it `summarized`; a
/// recorded failure (`ended_error`) and a visit older than the recovery window are left alone,
/// and a later start does not write a recovered summary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_cut_off_by_a_stop_is_written_at_the_next_start() {
    use tandem::pipeline::{RECOVERY_GRACE, RECOVERY_WINDOW};
    use tandem::store::{ConversationStatus, DocumentKind, Keyring};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tandem.db");
    let keys = Keyring::parse(support::process::DATA_KEYS).unwrap();
    let store = tandem::store::open(db.to_str().unwrap(), Some(std::sync::Arc::new(keys)), None)
        .await
        .unwrap();
    let org = store.create_organization("clinic").await.unwrap().id;
    let user = store
        .create_user(tandem::store::NewUser {
            organization_id: org.clone(),
            username: "dr_cut".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$salt$hash".into(),
            preferred_language: "en".into(),
            role: tandem::store::UserRole::Clinician,
        })
        .await
        .unwrap()
        .id;
    // Ended long enough ago that no other instance can still be writing it.
    let past_grace = RECOVERY_GRACE + Duration::from_secs(60);
    let cut_off = left_ended(&*store, &org, &user, ConversationStatus::Ended, past_grace).await;
    let failed = left_ended(
        &*store,
        &org,
        &user,
        ConversationStatus::EndedError,
        past_grace,
    )
    .await;
    let too_old = RECOVERY_WINDOW + Duration::from_secs(3600);
    let too_old = left_ended(&*store, &org, &user, ConversationStatus::Ended, too_old).await;

    let fake = tandem::testing::fake_openai::FakeOpenAi::start(
        State::default(),
        tandem::testing::fake_openai::http::State::default(),
    )
    .await;
    let mut process = support::process::Process::start(&db, &fake);
    assert_eq!(
        settled_status(&*store, &org, &cut_off).await,
        ConversationStatus::Summarized
    );
    let summary = store
        .get_document(DocumentKind::Summary, &cut_off)
        .await
        .unwrap()
        .expect("the summary is stored");
    let record = tandem::records::SummaryRecord::from_document(&summary);
    assert!(
        record
            .clinical
            .starts_with("FAKE SUMMARY of 1 transcript lines"),
        "{}",
        record.clinical
    );
    assert!(!record.interim);
    process.signal(libc::SIGTERM);
    assert!(process.exit_status(Duration::from_secs(20)).await.success());

    // Another visit is cut off; the next start writes that one, and only that one.
    let second = left_ended(&*store, &org, &user, ConversationStatus::Ended, past_grace).await;
    let _process = support::process::Process::start(&db, &fake);
    assert_eq!(
        settled_status(&*store, &org, &second).await,
        ConversationStatus::Summarized
    );
    // Each summary is one attempt: its clinical and take-home versions, one call each.
    assert_eq!(fake.http.requests_to(CHAT_PATH).len(), 4);
    let again = store
        .get_document(DocumentKind::Summary, &cut_off)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.updated_at, summary.updated_at, "not written again");
    for (id, left) in [
        (&failed, ConversationStatus::EndedError),
        (&too_old, ConversationStatus::Ended),
    ] {
        let c = store.get_conversation(&org, id).await.unwrap().conversation;
        assert_eq!(c.status, left);
        assert!(store
            .get_document(DocumentKind::Summary, id)
            .await
            .unwrap()
            .is_none());
    }
}
