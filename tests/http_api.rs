//! The REST API over real HTTP on loopback, against a temp SQLite file.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{error_code, start, start_on, start_with, PASSWORD};
use tandem::server::HttpConfig;
use tandem::store::{NewAction, NewMessage, SenderType};

#[tokio::test]
async fn health_endpoints() {
    let srv = start().await;
    let res = srv.http.get(srv.api("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "OK");
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = srv.http.get(srv.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn register_login_me_refresh() {
    let srv = start().await;
    let res = srv.register("alice", PASSWORD).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let user_id = body["userId"].as_str().unwrap().to_owned();

    // Duplicate username: 409 with the original's message.
    let res = srv.register("alice", PASSWORD).await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Username already exists");
    assert_eq!(body["code"], "username_taken");

    // Validation.
    assert_eq!(
        error_code(srv.register("al", PASSWORD).await, 422).await,
        "invalid_field"
    );
    assert_eq!(
        error_code(srv.register("bob", "short").await, 422).await,
        "invalid_field"
    );

    // Login shape.
    let res = srv.login("alice", PASSWORD).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["userId"], user_id.as_str());
    assert_eq!(body["username"], "alice");
    let access = body["accessToken"].as_str().unwrap().to_owned();
    let refresh = body["refreshToken"].as_str().unwrap().to_owned();

    // Wrong password / unknown user: 401, same code.
    let code = error_code(srv.login("alice", "wrong password").await, 401).await;
    assert_eq!(code, "invalid_credentials");
    let code = error_code(srv.login("nobody", PASSWORD).await, 401).await;
    assert_eq!(code, "invalid_credentials");

    // me
    let res = srv
        .http
        .get(srv.api("/auth/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["username"], "alice");

    // refresh → new pair that works
    let res = srv
        .http
        .post(srv.api("/auth/refresh"))
        .json(&json!({ "refreshToken": refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let access2 = body["accessToken"].as_str().unwrap();
    assert_ne!(body["refreshToken"].as_str().unwrap(), refresh);
    let res = srv
        .http
        .get(srv.api("/auth/me"))
        .bearer_auth(access2)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn refresh_rotation_and_reuse_detection() {
    let srv = start().await;
    let user = srv.new_user("rotator").await;
    let refresh = |token: String| {
        let srv_http = srv.http.clone();
        let url = srv.api("/auth/refresh");
        async move {
            srv_http
                .post(url)
                .json(&json!({ "refreshToken": token }))
                .send()
                .await
                .unwrap()
        }
    };
    let r1 = user.refresh_token.clone();
    let res = refresh(r1.clone()).await;
    assert_eq!(res.status(), 200);
    let r2 = res.json::<Value>().await.unwrap()["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = refresh(r2.clone()).await;
    assert_eq!(res.status(), 200);
    let r3 = res.json::<Value>().await.unwrap()["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // Reusing the rotated r1 is detected (403) and revokes the whole family, r3 included.
    assert_eq!(
        error_code(refresh(r1).await, 403).await,
        "refresh_token_reused"
    );
    assert_eq!(
        error_code(refresh(r3).await, 403).await,
        "refresh_token_reused"
    );
    // Unknown token: 403 as the original.
    assert_eq!(
        error_code(refresh("not-a-token".into()).await, 403).await,
        "invalid_refresh_token"
    );
    // A fresh login starts a new family and still works.
    let again = srv.logged_in("rotator").await;
    assert_eq!(refresh(again.refresh_token).await.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn login_is_throttled() {
    let srv = start().await;
    srv.new_user("victim").await;
    for _ in 0..5 {
        assert_eq!(srv.login("victim", "wrong-password").await.status(), 401);
    }
    let res = srv.login("victim", PASSWORD).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_code(res, 429).await, "too_many_attempts");
    srv.stop().await;
}

#[tokio::test]
async fn conversation_lifecycle() {
    let srv = start().await;
    let user = srv.new_user("doc").await;
    let conv = user
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    let id = conv["id"].as_str().unwrap().to_owned();
    assert_eq!(conv["status"], "active");
    assert_eq!(conv["patientLanguage"], "es");
    assert_eq!(conv["clinicianLanguage"], "en");
    assert_eq!(conv["userId"], user.user_id.as_str());
    assert_eq!(conv["patient"]["firstName"], "Ana");
    assert_eq!(conv["patient"]["lastName"], "García");
    assert_eq!(conv["patient"]["dateOfBirth"], "1980-04-02");
    assert!(conv["endTime"].is_null());
    let start_time = conv["startTime"].as_str().unwrap();
    assert!(
        start_time.ends_with('Z') && start_time.len() == 24,
        "{start_time}"
    );
    let started =
        time::OffsetDateTime::parse(start_time, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(
        (time::OffsetDateTime::now_utc() - started)
            .whole_seconds()
            .abs()
            < 10
    );

    // Same patient again is found, not duplicated; a newer conversation lists first.
    let conv2 = user
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    assert_eq!(conv2["patientId"], conv["patientId"]);
    let list = user.get_json("/conversations", 200).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], conv2["id"]);
    assert_eq!(list[1]["patient"]["firstName"], "Ana");

    let got = user.get_json(&format!("/conversations/{id}"), 200).await;
    assert_eq!(got["id"], id.as_str());
    assert!(user
        .get_json(&format!("/conversations/{id}/summary"), 200)
        .await
        .is_null());
    // The synthetic medical history is prepared in the background (tests/records.rs covers
    // it); wait for it so the write below is not overtaken by it.
    let mut history = Value::Null;
    for _ in 0..200 {
        history = user
            .get_json(&format!("/conversations/{id}/medical-history"), 200)
            .await;
        if !history.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(history["content"].is_string(), "{history}");

    // Actions in the AggregatedAction shape, newest first.
    srv.store
        .insert_action(NewAction {
            conversation_id: id.clone(),
            kind: "note".into(),
            status: "created".into(),
            data: json!({ "content": "BP 120/80" }),
        })
        .await
        .unwrap();
    let actions = user
        .get_json(&format!("/conversations/{id}/actions"), 200)
        .await;
    assert_eq!(actions[0]["type"], "note");
    assert_eq!(actions[0]["conversationId"], id.as_str());
    assert_eq!(actions[0]["data"]["content"], "BP 120/80");
    assert!(actions[0]["createdAt"].as_str().unwrap().ends_with('Z'));

    srv.store
        .upsert_document(
            tandem::store::DocumentKind::MedicalHistory,
            &id,
            "Allergies: none",
        )
        .await
        .unwrap();
    let history = user
        .get_json(&format!("/conversations/{id}/medical-history"), 200)
        .await;
    assert_eq!(history["content"], "Allergies: none");
    assert_eq!(history["conversationId"], id.as_str());

    // End: status ended with an end time; idempotent.
    let res = user
        .post(&format!("/conversations/{id}/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ended: Value = res.json().await.unwrap();
    assert_eq!(ended["status"], "ended");
    assert!(ended["endTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ended["patient"]["lastName"], "García");
    let again: Value = user
        .post(&format!("/conversations/{id}/end"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["endTime"], ended["endTime"]);

    // Unknown id: 404 with the original's message.
    let res = user
        .get("/conversations/does-not-exist")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Conversation not found");

    // Audit trail recorded reads and changes.
    let org = srv.organization_of(&user).await;
    let audit = srv.store.list_audit(&org, 100).await.unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "create" && a.entity_type == "conversation" && a.entity_id == id));
    assert!(audit.iter().any(|a| a.action == "conversation.read"
        && a.entity_type == "conversation"
        && a.entity_id == id));
    assert!(audit
        .iter()
        .any(|a| a.action == "update" && a.entity_type == "conversation" && a.entity_id == id));
    srv.stop().await;
}

#[tokio::test]
async fn create_conversation_validation() {
    let srv = start().await;
    let user = srv.new_user("val").await;
    for body in [
        json!({ "firstName": "A", "lastName": "B", "dob": "02/04/1980" }),
        json!({ "firstName": "A", "lastName": "B", "dob": "1980-02-30" }),
        json!({ "firstName": "", "lastName": "B", "dob": "1980-02-03" }),
        json!({ "firstName": "A", "lastName": "B", "dob": "1980-02-03", "patientLanguage": "x y" }),
        json!({ "firstName": "A", "lastName": "B" }),
    ] {
        let res = user
            .post("/conversations")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(res, 422).await, "invalid_field", "{body}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn cross_organization_access_is_refused_everywhere() {
    let srv = start().await;
    let owner = srv.new_user("owner").await;
    let conv = owner
        .create_conversation("Secret", "Patient", "1970-01-01")
        .await;
    let cid = conv["id"].as_str().unwrap();
    let pid = conv["patientId"].as_str().unwrap();
    let intruder = srv.user_in_new_org("Other Clinic", "intruder").await;

    for path in [
        format!("/conversations/{cid}"),
        format!("/conversations/{cid}/messages"),
        format!("/conversations/{cid}/actions"),
        format!("/conversations/{cid}/medical-history"),
        format!("/conversations/{cid}/summary"),
        format!("/patients/{pid}"),
    ] {
        let res = intruder.get(&path).send().await.unwrap();
        assert_eq!(error_code(res, 404).await, "not_found", "GET {path}");
    }
    let res = intruder
        .post(&format!("/conversations/{cid}/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    let res = intruder
        .patch(&format!("/patients/{pid}"))
        .json(&json!({ "firstName": "Hacked" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");

    // Lists show nothing of the other organization.
    assert_eq!(intruder.get_json("/conversations", 200).await, json!([]));
    let patients = intruder.get_json("/patients", 200).await;
    assert_eq!(patients["patients"], json!([]));

    // And nothing changed for the owner.
    let c = owner.get_json(&format!("/conversations/{cid}"), 200).await;
    assert_eq!(c["status"], "active");
    assert_eq!(c["patient"]["firstName"], "Secret");
    srv.stop().await;
}

#[tokio::test]
async fn messages_are_paginated() {
    let srv = start().await;
    let user = srv.new_user("pager").await;
    let conv = user
        .create_conversation("Page", "Patient", "1990-05-05")
        .await;
    let cid = conv["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = srv
            .store
            .insert_message(NewMessage {
                conversation_id: cid.clone(),
                sender_type: if i % 2 == 0 {
                    SenderType::Clinician
                } else {
                    SenderType::Patient
                },
                original_text: format!("message {i}"),
                translated_text: None,
                language: if i % 2 == 0 { "en" } else { "es" }.into(),
                is_final: true,
                original_message_id: None,
                stt_item_id: Some(format!("item_{i}")),
                speaker_source: Some("language".into()),
                speaker_confidence: Some(0.9),
                timings: Some(json!({ "transcript_ms": 120 })),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(m.id);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/conversations/{cid}/messages?limit=2&after={a}"),
            None => format!("/conversations/{cid}/messages?limit=2"),
        };
        let page = user.get_json(&path, 200).await;
        pages += 1;
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let page = user
        .get_json(&format!("/conversations/{cid}/messages"), 200)
        .await;
    let first = &page["messages"][0];
    assert_eq!(first["senderType"], "user");
    assert_eq!(first["originalText"], "message 0");
    assert_eq!(first["language"], "en");
    assert_eq!(first["isFinal"], true);
    assert_eq!(first["sttItemId"], "item_0");
    assert_eq!(first["timings"]["transcript_ms"], 120);
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(page["nextCursor"].is_null());

    // A bad limit is a 422, not a 500.
    let res = user
        .get(&format!("/conversations/{cid}/messages?limit=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 422).await, "invalid_field");
    srv.stop().await;
}

#[tokio::test]
async fn patients_list_get_update_and_paginate() {
    let srv = start().await;
    let user = srv.new_user("registrar").await;
    for (first, last) in [("Ana", "Alvarez"), ("Bea", "Blanco"), ("Carla", "Castro")] {
        user.create_conversation(first, last, "1985-01-01").await;
    }
    let page1 = user.get_json("/patients?limit=2", 200).await;
    assert_eq!(page1["patients"].as_array().unwrap().len(), 2);
    let cursor = page1["nextCursor"].as_str().unwrap();
    let page2 = user
        .get_json(&format!("/patients?limit=2&after={cursor}"), 200)
        .await;
    assert_eq!(page2["patients"].as_array().unwrap().len(), 1);
    assert!(page2["nextCursor"].is_null());
    let names: Vec<&str> = page1["patients"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["patients"].as_array().unwrap())
        .map(|p| p["lastName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Alvarez", "Blanco", "Castro"]);

    let found = user.get_json("/patients?q=blan", 200).await;
    assert_eq!(found["patients"].as_array().unwrap().len(), 1);
    let pid = found["patients"][0]["id"].as_str().unwrap().to_owned();

    let res = user
        .patch(&format!("/patients/{pid}"))
        .json(&json!({ "lastName": "Blanco-Ruiz", "preferredLanguage": "pt", "dob": "1985-02-02" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["lastName"], "Blanco-Ruiz");
    assert_eq!(p["firstName"], "Bea");
    assert_eq!(p["preferredLanguage"], "pt");
    assert_eq!(p["dateOfBirth"], "1985-02-02");
    let got = user.get_json(&format!("/patients/{pid}"), 200).await;
    assert_eq!(got["lastName"], "Blanco-Ruiz");

    let res = user
        .patch(&format!("/patients/{pid}"))
        .json(&json!({ "dob": "yesterday" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 422).await, "invalid_field");
    srv.stop().await;
}

#[tokio::test]
async fn malformed_wrong_typed_and_oversized_bodies() {
    let srv = start_with(HttpConfig {
        max_body_bytes: 4096,
        ..HttpConfig::default()
    })
    .await;
    let user = srv.new_user("bodies").await;
    let send = |body: reqwest::Body| {
        user.post("/conversations")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let res = send("{\"firstName\": ".into()).await.unwrap();
    assert_eq!(error_code(res, 400).await, "bad_json");
    let res = send("not json at all".into()).await.unwrap();
    assert_eq!(error_code(res, 400).await, "bad_json");
    let res = send(r#"{"firstName": 123, "lastName": "B", "dob": "1980-01-01"}"#.into())
        .await
        .unwrap();
    assert_eq!(error_code(res, 422).await, "invalid_field");

    let big = format!(
        r#"{{"firstName": "{}", "lastName": "B", "dob": "1980-01-01"}}"#,
        "a".repeat(10_000)
    );
    let res = send(big.clone().into()).await.unwrap();
    assert_eq!(error_code(res, 413).await, "payload_too_large");
    // Without Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let res = send(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .await
    .unwrap();
    assert_eq!(error_code(res, 413).await, "payload_too_large");

    // Unknown route and wrong method are JSON errors too.
    let res = user.get("/nope").send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    let res = user
        .http
        .delete(format!("{}/conversations", user.base))
        .bearer_auth(&user.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 405).await, "method_not_allowed");
    srv.stop().await;
}

#[tokio::test]
async fn injection_looking_strings_are_stored_verbatim() {
    let srv = start().await;
    let user = srv.new_user("bobby").await;
    let first = "Robert'); DROP TABLE patients;--";
    let last = "\"; SELECT * FROM users WHERE '1'='1 /* <script>alert(1)</script>";
    let conv = user.create_conversation(first, last, "2001-09-09").await;
    assert_eq!(conv["patient"]["firstName"], first);
    assert_eq!(conv["patient"]["lastName"], last);
    let list = user.get_json("/conversations", 200).await;
    assert_eq!(list[0]["patient"]["firstName"], first);
    assert_eq!(list[0]["patient"]["lastName"], last);
    let found = user
        .get_json(&format!("/patients?q={}", urlencode("DROP TABLE")), 200)
        .await;
    assert_eq!(found["patients"][0]["firstName"], first);
    let found = user.get_json("/patients?q=%25", 200).await;
    assert_eq!(found["patients"].as_array().unwrap().len(), 0);
    srv.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn restart_keeps_data() {
    let srv = start().await;
    let user = srv.new_user("persistent").await;
    let conv = user.create_conversation("Keep", "Me", "1975-07-07").await;
    let cid = conv["id"].as_str().unwrap().to_owned();
    let (dir, path) = (srv.dir.clone(), srv.db_path.clone());
    srv.stop().await;

    let srv = start_on(dir, &path, HttpConfig::default()).await;
    // Same secret: the old access token is still valid, and the password still works.
    let client = support::Client {
        base: srv.api(""),
        ..user.clone()
    };
    let got = client.get_json(&format!("/conversations/{cid}"), 200).await;
    assert_eq!(got["patient"]["firstName"], "Keep");
    let relogged = srv.logged_in("persistent").await;
    let list = relogged.get_json("/conversations", 200).await;
    assert_eq!(list[0]["id"], cid.as_str());
    srv.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let srv = start().await;
    let preflight = |origin: &'static str| {
        srv.http
            .request(reqwest::Method::OPTIONS, srv.api("/conversations"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let res = preflight("http://localhost:5173").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    let allow_headers = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allow_headers.contains("authorization") && allow_headers.contains("content-type"));
    let allow_methods = h["access-control-allow-methods"].to_str().unwrap();
    for m in ["GET", "POST", "PATCH", "DELETE", "OPTIONS"] {
        assert!(allow_methods.contains(m), "{allow_methods}");
    }

    let res = preflight("http://evil.example").await.unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    // ACAO on normal and error responses for an allowed origin, never for others.
    let res = srv
        .http
        .get(srv.api("/health"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let res = srv
        .http
        .get(srv.api("/conversations"))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let res = srv
        .http
        .get(srv.api("/health"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    srv.stop().await;
}

#[tokio::test]
async fn metrics_count_requests() {
    let srv = start().await;
    let user = srv.new_user("metered").await;
    user.get_json("/conversations", 200).await;
    let res = srv.http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    assert!(text.contains("# TYPE tandem_http_requests_total counter"));
    assert!(text.contains(
        r#"tandem_http_requests_total{method="POST",route="/api/v1/auth/login",status="200"} 1"#
    ));
    assert!(text.contains(r#"route="/api/v1/conversations",status="200"} 1"#));
    assert!(text.contains("tandem_http_request_duration_seconds_bucket"));
    srv.stop().await;
}

#[tokio::test]
async fn registration_can_be_closed() {
    let srv = start_with(HttpConfig {
        registration_open: false,
        ..HttpConfig::default()
    })
    .await;
    let res = srv.register("latecomer", PASSWORD).await;
    assert_eq!(error_code(res, 403).await, "registration_closed");
    // Accounts made by other means still log in.
    srv.user_in_new_org("Clinic", "admin-made").await;
    srv.stop().await;
}
