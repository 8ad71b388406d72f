//! Actions as first-class records over REST: read, edit, confirm, cancel; tenancy, audit, the
//! `action_updated` push; the organization webhook and the delivery log routes.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{error_code, Client, TestServer};
use tandem::ai::{Command, FollowUpUnit, LabUrgency};

use tandem::store::UserRole;

/// Stores the actions the pipeline would create for these commands, as the pipeline does.
async fn pipeline_actions(srv: &TestServer, conversation_id: &str) -> Vec<Value> {
    let commands = [
        Command::TakeNote {
            content: "chest pain for three days".into(),
        },
        Command::ScheduleFollowUp {
            duration: 2,
            unit: FollowUpUnit::Week,
            details: None,
        },
        Command::WritePrescription {
            medication_name: "metformin".into(),
            dosage: "500 mg".into(),
            frequency: "twice a day".into(),
            details: None,
        },
        Command::OrderLab {
            test_name: "lipid panel".into(),
            details: None,
            urgency: Some(LabUrgency::Routine),
        },
    ];
    let mut ids = Vec::new();
    for command in &commands {
        ids.push(support::voice_action(srv, conversation_id, command).await);
    }
    ids.into_iter().map(Value::from).collect()
}

async fn setup(srv: &TestServer) -> (Client, String, Vec<String>) {
    let user = srv.user_in_new_org("North Clinic", "dr_north").await;
    let conversation = user
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let ids = pipeline_actions(srv, &cid)
        .await
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (user, cid, ids)
}

async fn patch(user: &Client, id: &str, body: Value) -> reqwest::Response {
    user.patch(&format!("/actions/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post(user: &Client, path: &str) -> reqwest::Response {
    user.post(path).send().await.unwrap()
}

/// Asserts a 422 whose message contains `needle`.
async fn invalid(res: reqwest::Response, needle: &str) {
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_field");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn actions_are_read_edited_confirmed_and_cancelled() {
    let srv = support::start().await;
    let (user, cid, ids) = setup(&srv).await;
    let [note, followup, rx, lab] = [&ids[0], &ids[1], &ids[2], &ids[3]];

    let listed = user
        .get_json(&format!("/conversations/{cid}/actions"), 200)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 4);

    let got = user.get_json(&format!("/actions/{rx}"), 200).await;
    assert_eq!(got["type"], "prescription");
    assert_eq!(got["status"], "pending_review");
    assert_eq!(got["conversationId"], cid.as_str());
    assert_eq!(got["data"]["dosage"], "500 mg");
    let unknown = user.get("/actions/nope").send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await, "not_found");

    // Edit: fields merge; updatedAt moves.
    let res = patch(
        &user,
        rx,
        json!({"data": {"dosage": "850 mg", "details": "with meals"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let edited: Value = res.json().await.unwrap();
    assert_eq!(
        edited["data"],
        json!({"medicationName": "metformin", "dosage": "850 mg", "frequency": "twice a day", "details": "with meals"})
    );
    assert_ne!(edited["updatedAt"], got["updatedAt"]);
    assert_eq!(user.get_json(&format!("/actions/{rx}"), 200).await, edited);

    // A follow-up's date is recomputed from its new duration and unit.
    let before = user.get_json(&format!("/actions/{followup}"), 200).await;
    let res = patch(&user, followup, json!({"data": {"duration": 3}})).await;
    assert_eq!(res.status(), 200);
    let after: Value = res.json().await.unwrap();
    assert_eq!(after["data"]["duration"], 3);
    assert_eq!(after["data"]["unit"], "week");
    let when = |v: &Value| {
        time::OffsetDateTime::parse(
            v["data"]["scheduledFor"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(when(&after) - when(&before), time::Duration::weeks(1));

    // Bad edits: clear 422s; nothing changes.
    invalid(
        patch(&user, followup, json!({"data": {"duration": 0}})).await,
        "duration must be a whole number greater than 0",
    )
    .await;
    invalid(
        patch(&user, followup, json!({"data": {"unit": "fortnight"}})).await,
        "unit must be",
    )
    .await;
    invalid(
        patch(
            &user,
            followup,
            json!({"data": {"scheduledFor": "2030-01-01T00:00:00.000Z"}}),
        )
        .await,
        "computed from duration and unit",
    )
    .await;
    invalid(
        patch(&user, note, json!({"data": {"content": 42}})).await,
        "content must be a non-empty string",
    )
    .await;
    invalid(
        patch(&user, note, json!({"data": {"text": "x"}})).await,
        "\"text\" is not an editable field of a note action",
    )
    .await;
    invalid(
        patch(&user, lab, json!({"data": {"urgency": "whenever"}})).await,
        "urgency must be",
    )
    .await;
    invalid(
        patch(&user, note, json!({"data": {}})).await,
        "at least one field",
    )
    .await;
    invalid(
        patch(&user, note, json!({"data": 5})).await,
        "expected a map",
    )
    .await;
    invalid(
        patch(&user, note, json!({"content": "x"})).await,
        "missing field `data`",
    )
    .await;
    let broken = user
        .patch(&format!("/actions/{note}"))
        .header("content-type", "application/json")
        .body("{\"data\":")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(broken, 400).await, "bad_json");
    assert_eq!(
        user.get_json(&format!("/actions/{followup}"), 200).await,
        after
    );

    // Confirm, then the transitions a confirmed action no longer allows.
    let confirmed: Value = post(&user, &format!("/actions/{rx}/confirm"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(confirmed["data"], edited["data"]);
    let again = post(&user, &format!("/actions/{rx}/confirm")).await;
    assert_eq!(error_code(again, 409).await, "conflict");
    let edit_confirmed = patch(&user, rx, json!({"data": {"dosage": "1 g"}})).await;
    assert_eq!(error_code(edit_confirmed, 409).await, "conflict");
    // A confirmed action can still be withdrawn; then it is final.
    let cancelled: Value = post(&user, &format!("/actions/{rx}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    for res in [
        patch(&user, rx, json!({"data": {"dosage": "1 g"}})).await,
        post(&user, &format!("/actions/{rx}/confirm")).await,
        post(&user, &format!("/actions/{rx}/cancel")).await,
    ] {
        assert_eq!(error_code(res, 409).await, "conflict");
    }
    let note_cancelled: Value = post(&user, &format!("/actions/{note}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(note_cancelled["status"], "cancelled");
    let res = patch(&user, note, json!({"data": {"content": "changed"}})).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "a cancelled action cannot be edited");

    // Every change is in the audit log, attributed to the user.
    let org = srv.organization_of(&user).await;
    let audit = srv.store.list_audit(&org, 200).await.unwrap();
    let logged = |verb: &str, id: &str| {
        audit.iter().any(|a| {
            a.action == verb
                && a.entity_type == "action"
                && a.entity_id == id
                && a.user_id.as_deref() == Some(user.user_id.as_str())
        })
    };
    assert!(logged("update", rx) && logged("update", followup));
    assert!(logged("confirm", rx) && logged("cancel", rx) && logged("cancel", note));
    assert!(logged("action.read", rx));
    assert!(
        !logged("confirm", note),
        "refused changes are not audited as done"
    );
}

#[tokio::test]
async fn another_organizations_action_is_not_found() {
    let srv = support::start().await;
    let (_, _, ids) = setup(&srv).await;
    let intruder = srv.user_in_new_org("Other Clinic", "intruder").await;
    let id = &ids[2];
    let attempts = [
        intruder
            .get(&format!("/actions/{id}"))
            .send()
            .await
            .unwrap(),
        intruder
            .get(&format!("/actions/{id}/deliveries"))
            .send()
            .await
            .unwrap(),
        patch(&intruder, id, json!({"data": {"dosage": "1 g"}})).await,
        post(&intruder, &format!("/actions/{id}/confirm")).await,
        post(&intruder, &format!("/actions/{id}/cancel")).await,
    ];
    for res in attempts {
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "not_found", "{body}");
        assert_eq!(body["message"], "Action not found");
    }
    let unchanged = srv
        .store
        .list_actions(
            &srv.store
                .get_action(
                    &srv.store
                        .user_by_username("dr_north")
                        .await
                        .unwrap()
                        .organization_id,
                    id,
                )
                .await
                .unwrap()
                .conversation_id,
        )
        .await
        .unwrap();
    assert!(unchanged
        .iter()
        .all(|a| a.status != "confirmed" && a.status != "cancelled"));
    let anonymous = srv
        .http
        .get(srv.api(&format!("/actions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(anonymous, 401).await, "unauthorized");
}

#[tokio::test]
async fn changes_are_pushed_as_action_updated_on_control_sockets() {
    let srv = support::start().await;
    let (user, cid, ids) = setup(&srv).await;
    let mut control = support::control_socket(&srv, &user, &cid).await;

    let res = patch(
        &user,
        &ids[0],
        json!({"data": {"content": "chest pain, worse on stairs"}}),
    )
    .await;
    let edited: Value = res.json().await.unwrap();
    let pushed = support::next_control_json(&mut control, Duration::from_secs(5)).await;
    assert_eq!(pushed, json!({"type": "action_updated", "payload": edited}));

    let confirmed: Value = post(&user, &format!("/actions/{}/confirm", ids[0]))
        .await
        .json()
        .await
        .unwrap();
    let pushed = support::next_control_json(&mut control, Duration::from_secs(5)).await;
    assert_eq!(pushed["type"], "action_updated");
    assert_eq!(pushed["payload"], confirmed);
    assert_eq!(pushed["payload"]["status"], "confirmed");
}

#[tokio::test]
async fn webhook_configuration_is_admin_only_and_never_shows_the_secret() {
    let srv = support::start().await;
    let admin = srv
        .user_in_new_org_as("Clinic", "admin", UserRole::Admin)
        .await;
    let org = srv.organization_of(&admin).await;
    // A clinician of the same organization.
    let hash = srv
        .state
        .auth
        .hash_password(support::PASSWORD)
        .await
        .unwrap();
    srv.store
        .create_user(tandem::store::NewUser {
            organization_id: org.clone(),
            username: "clinician".into(),
            password_hash: hash,
            preferred_language: "en".into(),
            role: UserRole::Clinician,
        })
        .await
        .unwrap();
    let clinician = srv.logged_in("clinician").await;

    let res = admin.get("/organization/webhook").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    let put = |who: &Client, body: Value| {
        let req = who.put("/organization/webhook").json(&body);
        async move { req.send().await.unwrap() }
    };
    let res = put(&clinician, json!({"url": "https://clinic.example/hook"})).await;
    assert_eq!(error_code(res, 403).await, "forbidden");
    invalid(
        put(&admin, json!({"url": "ftp://clinic.example/hook"})).await,
        "http or https",
    )
    .await;
    invalid(
        put(&admin, json!({"url": "https://u:p@clinic.example/"})).await,
        "credentials",
    )
    .await;
    invalid(
        put(
            &admin,
            json!({"url": "https://clinic.example/", "secret": "short"}),
        )
        .await,
        "secret must be 16 to 256 characters",
    )
    .await;
    invalid(
        put(&admin, json!({"secret": "x".repeat(20)})).await,
        "missing field `url`",
    )
    .await;

    let res = put(&admin, json!({"url": "https://clinic.example/hook"})).await;
    assert_eq!(res.status(), 200);
    let created: Value = res.json().await.unwrap();
    let secret = created["secret"]
        .as_str()
        .expect("a generated secret, shown once");
    assert!(secret.len() >= 40);
    assert_eq!(srv.store.get_webhook(&org).await.unwrap().secret, secret);
    for who in [&admin, &clinician] {
        let shown = who.get_json("/organization/webhook", 200).await;
        assert_eq!(shown["url"], "https://clinic.example/hook");
        assert!(
            shown.get("secret").is_none(),
            "GET never returns the secret: {shown}"
        );
    }
    // A caller-chosen secret is stored and not echoed.
    let res = put(
        &admin,
        json!({"url": "https://clinic.example/v2", "secret": "a-long-enough-secret"}),
    )
    .await;
    let replaced: Value = res.json().await.unwrap();
    assert!(replaced.get("secret").is_none());
    assert_eq!(
        srv.store.get_webhook(&org).await.unwrap().secret,
        "a-long-enough-secret"
    );

    // Other organizations see nothing.
    let outsider = srv
        .user_in_new_org_as("Elsewhere", "outsider", UserRole::Admin)
        .await;
    let res = outsider.get("/organization/webhook").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");

    let res = clinician
        .delete("/organization/webhook")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 403).await, "forbidden");
    let res = admin.delete("/organization/webhook").send().await.unwrap();
    assert_eq!(res.status(), 204);
    let res = admin.delete("/organization/webhook").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");

    let audit = srv.store.list_audit(&org, 100).await.unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "update" && a.entity_type == "webhook"));
    assert!(audit
        .iter()
        .any(|a| a.action == "delete" && a.entity_type == "webhook"));
}

#[tokio::test]
async fn confirmations_queue_deliveries_visible_in_the_log() {
    let srv = support::start().await;
    let (user, _, ids) = setup(&srv).await;
    let org = srv.organization_of(&user).await;
    // Nothing listens on port 9 (discard) of loopback: attempts fail and are logged.
    srv.store
        .put_webhook(&org, "http://127.0.0.1:9/hook", "a-long-enough-secret")
        .await
        .unwrap();

    // Without a confirmation there is nothing to deliver; editing queues nothing either.
    assert_eq!(
        user.get_json(&format!("/actions/{}/deliveries", ids[2]), 200)
            .await,
        json!([])
    );
    patch(&user, &ids[2], json!({"data": {"dosage": "850 mg"}})).await;
    let res = post(&user, &format!("/actions/{}/confirm", ids[2])).await;
    assert_eq!(res.status(), 200);
    // Cancelling an unconfirmed action is not announced.
    post(&user, &format!("/actions/{}/cancel", ids[0])).await;

    let deliveries = user
        .get_json(&format!("/actions/{}/deliveries", ids[2]), 200)
        .await;
    let d = &deliveries.as_array().unwrap()[..];
    assert_eq!(d.len(), 1, "{deliveries}");
    assert_eq!(d[0]["event"], "action.confirmed");
    assert_eq!(d[0]["actionId"], ids[2].as_str());
    assert_eq!(
        d[0]["idempotencyKey"],
        format!("{}:action.confirmed", ids[2])
    );
    assert!(d[0]["attemptLog"].is_array());
    assert!(
        user.get_json(&format!("/actions/{}/deliveries", ids[0]), 200)
            .await
            == json!([])
    );

    let page = user.get_json("/webhook-deliveries?limit=10", 200).await;
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(page["deliveries"][0]["id"], d[0]["id"]);
    assert_eq!(page["nextCursor"], Value::Null);
    let outsider = srv.user_in_new_org("Elsewhere", "outsider").await;
    let theirs = outsider.get_json("/webhook-deliveries", 200).await;
    assert_eq!(theirs["deliveries"], json!([]));

    // Retrying is for admins, and only for failed deliveries.
    let res = post(
        &user,
        &format!("/webhook-deliveries/{}/retry", d[0]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(error_code(res, 403).await, "forbidden");
}
