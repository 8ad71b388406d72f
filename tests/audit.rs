//! The audit log of reads of patient data (issue #6): every REST route and control-socket
//! request that sends patient data writes exactly one entry naming the user, the read, the
//! record and the peer address; a failed audit write fails the read closed; and the
//! administrator's `GET /api/v1/audit` filters, pages, refuses clinicians and never shows
//! another organization's entries.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::ws::{self, Ws};
use support::{error_code, next_control_json, Client, TestServer};
use tandem::ai::Command;
use tandem::store::{AuditEntry, AuditQuery, DocumentKind, NewMessage, SenderType, UserRole};

const WAIT: Duration = Duration::from_secs(5);

/// A clinician with one conversation holding a message, an action and a summary.
struct Visit {
    user: Client,
    org: String,
    conversation: String,
    patient: String,
    action: String,
}

async fn visit(srv: &TestServer, username: &str, last_name: &str) -> Visit {
    let user = srv.new_user(username).await;
    let created = user
        .create_conversation("Ana", last_name, "1980-04-02")
        .await;
    let conversation = created["id"].as_str().expect("id").to_owned();
    let patient = created["patientId"].as_str().expect("patientId").to_owned();
    srv.store
        .insert_message(NewMessage::utterance(
            &conversation,
            SenderType::Patient,
            "es",
            "Me duele el pecho.",
        ))
        .await
        .expect("message");
    srv.store
        .upsert_document(
            DocumentKind::Summary,
            &conversation,
            "Chest pain for three days.",
        )
        .await
        .expect("summary");
    let action = support::voice_action(
        srv,
        &conversation,
        &Command::TakeNote {
            content: "chest pain".into(),
        },
    )
    .await;
    let org = srv.organization_of(&user).await;
    Visit {
        user,
        org,
        conversation,
        patient,
        action,
    }
}

/// The entries of `user` with `action`, newest first.
async fn entries(srv: &TestServer, v: &Visit, action: &str) -> Vec<AuditEntry> {
    srv.store
        .search_audit(
            &v.org,
            &AuditQuery {
                user_id: Some(v.user.user_id.clone()),
                action: Some(action.to_owned()),
                ..AuditQuery::default()
            },
        )
        .await
        .expect("search audit")
}

/// Runs `read` and returns the one entry it added under `action` (failing if it added none
/// or several).
async fn audited<F: std::future::Future<Output = ()>>(
    srv: &TestServer,
    v: &Visit,
    action: &str,
    read: F,
) -> AuditEntry {
    let before = entries(srv, v, action).await.len();
    read.await;
    let mut after = entries(srv, v, action).await;
    assert_eq!(after.len(), before + 1, "{action}: exactly one new entry");
    let entry = after.remove(0);
    assert_eq!(entry.user_id.as_deref(), Some(v.user.user_id.as_str()));
    assert_eq!(entry.organization_id, v.org);
    assert_eq!(entry.remote_addr.as_deref(), Some("127.0.0.1"), "{action}");
    entry
}

async fn get_ok(user: &Client, path: &str) -> String {
    let res = user.get(path).send().await.expect("request");
    assert_eq!(res.status(), 200, "GET {path}");
    res.text().await.expect("body")
}

#[tokio::test]
async fn every_rest_read_of_patient_data_writes_one_entry() {
    let srv = support::start().await;
    let v = visit(&srv, "dr_reads", "Lopez").await;
    let (c, p, a) = (&v.conversation, &v.patient, &v.action);
    let conv = |suffix: &str| format!("/conversations/{c}{suffix}");

    // Reads of one conversation: the record is the conversation, its patient rides along.
    for (action, path) in [
        ("conversation.read", conv("")),
        ("conversation.messages.read", conv("/messages")),
        ("conversation.actions.read", conv("/actions")),
        ("conversation.summary.read", conv("/summary")),
        (
            "conversation.medical_history.read",
            conv("/medical-history"),
        ),
        ("conversation.export", conv("/export?format=markdown")),
    ] {
        let e = audited(&srv, &v, action, async {
            get_ok(&v.user, &path).await;
        })
        .await;
        assert_eq!(
            (e.entity_type.as_str(), e.entity_id.as_str()),
            ("conversation", c.as_str()),
            "{action}"
        );
        assert_eq!(e.record_ids, [p.as_str()], "{action}");
    }

    let e = audited(&srv, &v, "patient.read", async {
        get_ok(&v.user, &format!("/patients/{p}")).await;
    })
    .await;
    assert_eq!(
        (e.entity_type.as_str(), e.entity_id.as_str()),
        ("patient", p.as_str())
    );

    // A listing is one entry whose record ids are the rows it returned.
    let e = audited(&srv, &v, "patient.list", async {
        get_ok(&v.user, "/patients").await;
    })
    .await;
    assert_eq!(
        (e.entity_id.as_str(), e.record_ids.clone()),
        ("*", vec![p.clone()])
    );
    let e = audited(&srv, &v, "conversation.list", async {
        get_ok(&v.user, "/conversations").await;
    })
    .await;
    assert_eq!(e.entity_id, "*");
    assert_eq!(e.record_ids, [c.clone(), p.clone()]);

    for (action, path) in [
        ("action.read", format!("/actions/{a}")),
        ("action.deliveries.read", format!("/actions/{a}/deliveries")),
    ] {
        let e = audited(&srv, &v, action, async {
            get_ok(&v.user, &path).await;
        })
        .await;
        assert_eq!(
            (e.entity_type.as_str(), e.entity_id.as_str()),
            ("action", a.as_str())
        );
        assert_eq!(e.record_ids, [c.as_str()], "{action}");
    }
    let e = audited(&srv, &v, "webhook_delivery.list", async {
        get_ok(&v.user, "/webhook-deliveries").await;
    })
    .await;
    assert!(e.record_ids.is_empty(), "no deliveries were queued");

    // The trail names records, never their content.
    let all = srv.store.list_audit(&v.org, 0).await.unwrap();
    let trail = format!("{all:?}");
    for phi in [
        "Ana",
        "Lopez",
        "1980-04-02",
        "pecho",
        "Chest pain",
        "chest pain",
    ] {
        assert!(!trail.contains(phi), "{phi:?} in the audit trail");
    }
    // Reads of a missing or foreign record are refused before anything is read or logged.
    let before = all.len();
    let res = v.user.get("/patients/nope").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    assert_eq!(srv.store.list_audit(&v.org, 0).await.unwrap().len(), before);
}

async fn control(srv: &TestServer, user: &Client) -> Ws {
    let mut socket = ws::connect(format!("ws://{}/ws?token={}", srv.addr, user.access_token)).await;
    assert_eq!(next_control_json(&mut socket, WAIT).await["type"], "system");
    socket
}

async fn ask(socket: &mut Ws, kind: &str, conversation: &str) -> Value {
    ws::send(
        socket,
        json!({"type": kind, "payload": {"conversationId": conversation}}),
    )
    .await;
    next_control_json(socket, WAIT).await
}

#[tokio::test]
async fn every_control_socket_read_writes_one_entry() {
    let srv = support::start().await;
    let v = visit(&srv, "dr_socket", "Ruiz").await;
    // The new conversation's history is generated in the background and pushed when ready;
    // wait for it, so the socket's only `medical_history_data` is the reply to its request.
    for _ in 0..100 {
        let history = srv
            .store
            .get_document(DocumentKind::MedicalHistory, &v.conversation)
            .await
            .unwrap();
        if history.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut socket = control(&srv, &v.user).await;
    for (request, reply, action) in [
        (
            "select_conversation",
            "conversation_selected",
            "conversation.select",
        ),
        ("get_messages", "message_list", "conversation.messages.read"),
        ("get_actions", "action_list", "conversation.actions.read"),
        ("get_summary", "summary_data", "conversation.summary.read"),
        (
            "get_medical_history",
            "medical_history_data",
            "conversation.medical_history.read",
        ),
    ] {
        let e = audited(&srv, &v, action, async {
            let event = if request == "get_medical_history" {
                ws::send(
                    &mut socket,
                    json!({"type": request, "payload": {"conversationId": v.conversation}}),
                )
                .await;
                ws::next_event(&mut socket, WAIT).await
            } else {
                ask(&mut socket, request, &v.conversation).await
            };
            assert_eq!(event["type"], reply, "{request}: {event}");
        })
        .await;
        assert_eq!(e.entity_id, v.conversation, "{request}");
        assert_eq!(e.record_ids, [v.patient.as_str()], "{request}");
    }
    // Another organization's conversation is refused, and nothing is logged for it.
    let stranger = srv.user_in_new_org("Elsewhere", "dr_stranger").await;
    let mut theirs = control(&srv, &stranger).await;
    let event = ask(&mut theirs, "get_messages", &v.conversation).await;
    assert_eq!(event["type"], "error");
    assert_eq!(event["code"], "not_found", "{event}");
}

/// Makes every audit insert fail, as a full disk or a broken audit table would.
fn refuse_audit_writes(srv: &TestServer) {
    let db = rusqlite::Connection::open(&srv.db_path).expect("open db");
    db.execute_batch(
        "CREATE TRIGGER audit_refused BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
    )
    .expect("trigger");
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_read_closed() {
    let srv = support::start().await;
    let v = visit(&srv, "dr_closed", "Vega").await;
    let mut socket = control(&srv, &v.user).await;
    refuse_audit_writes(&srv);

    let c = &v.conversation;
    for path in [
        format!("/patients/{}", v.patient),
        "/patients".to_owned(),
        "/conversations".to_owned(),
        format!("/conversations/{c}"),
        format!("/conversations/{c}/messages"),
        format!("/conversations/{c}/summary"),
        format!("/conversations/{c}/export"),
        format!("/actions/{}", v.action),
    ] {
        let res = v.user.get(&path).send().await.unwrap();
        assert_eq!(res.status(), 503, "{path}");
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("Vega") && !body.contains("pecho"),
            "{path}: {body}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "store_unavailable", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("audit log"),
            "{path}: {body}"
        );
    }
    for request in ["select_conversation", "get_messages", "get_summary"] {
        let event = ask(&mut socket, request, c).await;
        assert_eq!(event["type"], "error", "{request}: {event}");
        assert_eq!(event["code"], "store_unavailable", "{request}");
    }
    assert!(
        srv.store
            .list_audit(&v.org, 0)
            .await
            .unwrap()
            .iter()
            .all(|e| e.action == "create"),
        "nothing was logged (or sent) after the audit table refused writes"
    );
}

/// `GET /audit` as `user`, expecting 200.
async fn audit_page(user: &Client, query: &str) -> Value {
    user.get_json(&format!("/audit{query}"), 200).await
}

fn actions(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect()
}

#[tokio::test]
async fn admins_search_their_organizations_log_only() {
    let srv = support::start().await;
    let v = visit(&srv, "dr_audited", "Diaz").await;
    let admin = srv.user_with_role(&v.org, "auditor", UserRole::Admin).await;
    get_ok(&v.user, &format!("/patients/{}", v.patient)).await;
    get_ok(
        &v.user,
        &format!("/conversations/{}/messages", v.conversation),
    )
    .await;
    get_ok(&v.user, "/patients").await;

    // Clinicians may not read the log.
    let res = v.user.get("/audit").send().await.unwrap();
    assert_eq!(error_code(res, 403).await, "forbidden");

    let mine = audit_page(&admin, &format!("?userId={}", v.user.user_id)).await;
    assert_eq!(
        actions(&mine)[..3],
        ["patient.list", "conversation.messages.read", "patient.read"]
    );
    let first = &mine["entries"][2];
    assert_eq!(first["userId"], v.user.user_id.as_str());
    assert_eq!(first["entityType"], "patient");
    assert_eq!(first["entityId"], v.patient.as_str());
    assert_eq!(first["remoteAddr"], "127.0.0.1");
    assert!(first["at"].as_str().unwrap().ends_with('Z'));

    // recordId finds every read that carried the patient: direct, via a conversation, listed.
    let patient = audit_page(
        &admin,
        &format!("?recordId={}&userId={}", v.patient, v.user.user_id),
    )
    .await;
    assert_eq!(
        actions(&patient),
        [
            "patient.list",
            "conversation.messages.read",
            "patient.read",
            "create" // the patient's creation, by the first visit
        ]
    );
    let one = audit_page(&admin, "?action=patient.read").await;
    assert_eq!(actions(&one), ["patient.read"]);

    // Cursor paging walks everything once, newest first.
    let everything = audit_page(&admin, "?limit=500").await;
    assert!(everything["nextCursor"].is_null());
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit_page(&admin, &query).await;
        paged.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(Value::from(paged), everything["entries"]);
    let res = admin.get("/audit?before=unknown").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    let res = admin.get("/audit?limit=many").send().await.unwrap();
    assert_eq!(error_code(res, 422).await, "invalid_field");

    // Another organization's admin sees none of it, even asking by id.
    let outsider = srv
        .user_in_new_org_as("Other clinic", "other_admin", UserRole::Admin)
        .await;
    for query in [
        String::new(),
        format!("?userId={}", v.user.user_id),
        format!("?recordId={}", v.patient),
    ] {
        let page = audit_page(&outsider, &query).await.to_string();
        assert!(
            !page.contains(&v.user.user_id) && !page.contains(&v.patient),
            "{query}: {page}"
        );
    }
    let cursor = everything["entries"][0]["id"].as_str().unwrap();
    let res = outsider
        .get(&format!("/audit?before={cursor}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
}
