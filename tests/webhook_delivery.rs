//! Outbound webhook delivery end to end: a receiver on loopback that fails, times out and
//! recovers, across server restarts on the same database, and a worker that dies mid-attempt.
//!
//! Settings are short (400 ms timeout, 300 ms backoff base) so the scenario runs in seconds;
//! waits poll for a state with a generous deadline and never assert how fast it came.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};
use sha2::Sha256;
use support::{Client, TestServer};
use tandem::ai::Command;

use tandem::server::HttpConfig;
use tandem::store::{now_millis, UserRole};
use tandem::testing::fake_openai::realtime;
use tandem::webhook::WebhookConfig;
use warp::http::{HeaderMap, StatusCode};
use warp::Filter as _;

const SECRET: &str = "receiver-shared-secret-0123456789";

fn config() -> WebhookConfig {
    WebhookConfig {
        poll_interval: Duration::from_millis(50),
        timeout: Duration::from_millis(400),
        max_attempts: NonZeroU32::new(6).unwrap(),
        backoff_base: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
    }
}

async fn start(dir: &Arc<tempfile::TempDir>, path: &Path) -> TestServer {
    support::start_with_webhook(
        dir.clone(),
        path,
        HttpConfig::default(),
        realtime::State::new(Vec::<&str>::new()),
        config(),
    )
    .await
}

/// What the receiver does with its `n`th request (1-based, across all keys).
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Answer 200, but only after this long (longer than Tandem's timeout).
    Late(Duration),
}

struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A clinic system: records every request, processes each idempotency key once.
#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<Received>>,
    /// Action ids processed, once per idempotency key.
    processed: Mutex<Vec<(String, String)>>,
}

impl Receiver {
    async fn start(script: fn(usize) -> Reply) -> (SocketAddr, Arc<Receiver>) {
        let receiver = Arc::new(Receiver::default());
        let rcv = receiver.clone();
        let route = warp::post()
            .and(warp::path("hook"))
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: HeaderMap, body: bytes::Bytes| {
                let rcv = rcv.clone();
                async move { rcv.handle(headers, body.to_vec(), script).await }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (addr, receiver)
    }

    async fn handle(
        &self,
        headers: HeaderMap,
        body: Vec<u8>,
        script: fn(usize) -> Reply,
    ) -> warp::reply::WithStatus<&'static str> {
        let key = header(&headers, "idempotency-key");
        let n = {
            let mut requests = self.requests.lock().unwrap();
            requests.push(Received {
                headers,
                body: body.clone(),
            });
            requests.len()
        };
        let status = match script(n) {
            Reply::Status(code) => code,
            Reply::Late(wait) => {
                tokio::time::sleep(wait).await;
                200
            }
        };
        if status == 200 {
            let action_id = serde_json::from_slice::<Value>(&body).unwrap()["action"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut processed = self.processed.lock().unwrap();
            if !processed.iter().any(|(k, _)| *k == key) {
                processed.push((key, action_id));
            }
        }
        warp::reply::with_status("", StatusCode::from_u16(status).unwrap())
    }

    /// The bodies received with this idempotency key, in arrival order, each checked for a
    /// valid signature over its timestamp and body.
    fn verified_bodies(&self, key: &str) -> Vec<Value> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| header(&r.headers, "idempotency-key") == key)
            .map(|r| {
                let timestamp = header(&r.headers, "x-tandem-timestamp");
                let age = now_millis() / 1000 - timestamp.parse::<i64>().unwrap();
                assert!((0..300).contains(&age), "a fresh timestamp: {timestamp}");
                let mut mac = <Hmac<Sha256>>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("{timestamp}.").as_bytes());
                mac.update(&r.body);
                let expected: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(
                    header(&r.headers, "x-tandem-signature"),
                    format!("sha256={expected}"),
                    "the receiver verifies the HMAC itself"
                );
                assert_eq!(header(&r.headers, "content-type"), "application/json");
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(header(&r.headers, "x-tandem-delivery"), body["deliveryId"]);
                assert_eq!(header(&r.headers, "x-tandem-event"), body["event"]);
                body
            })
            .collect()
    }

    fn processed(&self) -> Vec<(String, String)> {
        self.processed.lock().unwrap().clone()
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Polls `check` until it holds; panics with `what` after 30 s (a hang guard, not a speed
/// assertion).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An admin with a webhook pointing at the receiver, and a conversation.
async fn clinic(srv: &TestServer, receiver: SocketAddr) -> (Client, String) {
    let admin = srv
        .user_in_new_org_as("North Clinic", "admin", UserRole::Admin)
        .await;
    let res = admin
        .put("/organization/webhook")
        .json(&json!({"url": format!("http://{receiver}/hook"), "secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let conversation = admin
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    (admin, conversation["id"].as_str().unwrap().to_owned())
}

fn prescription() -> Command {
    Command::WritePrescription {
        medication_name: "metformin".into(),
        dosage: "500 mg".into(),
        frequency: "twice a day".into(),
        details: None,
    }
}

/// A server on a fresh database whose clinic sends to the receiver at `receiver`, with a
/// prescription confirmed (so its delivery is queued).
struct Visit {
    dir: Arc<tempfile::TempDir>,
    path: std::path::PathBuf,
    server: TestServer,
    admin: Client,
    conversation: String,
    action: String,
}

async fn confirmed_prescription(receiver: SocketAddr) -> Visit {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("tandem.db");
    let server = start(&dir, &path).await;
    let (admin, conversation) = clinic(&server, receiver).await;
    let action = support::voice_action(&server, &conversation, &prescription()).await;
    confirm(&admin, &action).await;
    Visit {
        dir,
        path,
        server,
        admin,
        conversation,
        action,
    }
}

async fn confirm(user: &Client, action_id: &str) {
    let res = user
        .post(&format!("/actions/{action_id}/confirm"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn deliveries(user: &Client, action_id: &str) -> Vec<Value> {
    user.get_json(&format!("/actions/{action_id}/deliveries"), 200)
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn logged_attempts(user: &Client, action_id: &str) -> usize {
    deliveries(user, action_id)
        .await
        .first()
        .map_or(0, |d| d["attemptLog"].as_array().unwrap().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_failures_a_timeout_and_restarts_exactly_once() {
    let (addr, receiver) = Receiver::start(|n| match n {
        1 | 2 => Reply::Status(500),
        3 => Reply::Late(Duration::from_secs(2)),
        _ => Reply::Status(200),
    })
    .await;
    // First server: the receiver fails twice.
    let Visit {
        dir,
        path,
        server: first,
        admin,
        conversation,
        action,
    } = confirmed_prescription(addr).await;
    eventually("two failed attempts logged", || async {
        logged_attempts(&admin, &action).await >= 2
    })
    .await;
    first.stop().await;

    // Second server on the same database: the receiver times out once, then recovers.
    let second = start(&dir, &path).await;
    let admin = admin.on(&second);
    eventually("the delivery to succeed", || async {
        deliveries(&admin, &action).await[0]["status"] == "delivered"
    })
    .await;
    let delivery = deliveries(&admin, &action).await.remove(0);
    let log = delivery["attemptLog"].as_array().unwrap();
    let attempts: Vec<u64> = log.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3, 4], "{delivery}");
    let codes: Vec<Value> = log.iter().map(|a| a["statusCode"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), Value::Null, json!(200)]);
    assert_eq!(log[0]["error"], "HTTP 500");
    assert!(
        log[2]["error"].as_str().unwrap().contains("timed out"),
        "{}",
        log[2]
    );
    assert_eq!(log[3]["error"], Value::Null);
    assert!(log
        .iter()
        .all(|a| a["durationMs"].is_u64() && a["startedAt"].is_string()));
    assert_eq!(delivery["attempts"], 4);
    assert_eq!(delivery["lastError"], Value::Null);
    assert!(delivery["deliveredAt"].is_string());
    assert_eq!(delivery["nextAttemptAt"], Value::Null);
    let key = format!("{action}:action.confirmed");
    assert_eq!(delivery["idempotencyKey"], key.as_str());

    // The receiver saw every attempt with the same key and a valid signature, and
    // processed the action once (if the timed-out attempt's handler ran on after Tandem hung
    // up, its key was already processed or is by the next attempt: a duplicate either way).
    let bodies = receiver.verified_bodies(&key);
    assert_eq!(bodies.len(), 4);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body["attempt"], i + 1);
        assert_eq!(body["event"], "action.confirmed");
        assert_eq!(body["deliveryId"], delivery["id"]);
        assert_eq!(body["conversationId"], conversation.as_str());
        assert_eq!(body["action"]["id"], action.as_str());
        assert_eq!(body["action"]["status"], "confirmed");
        assert_eq!(body["action"]["data"]["medicationName"], "metformin");
        assert!(body["organizationId"].is_string());
    }
    assert_eq!(receiver.processed(), [(key.clone(), action.clone())]);

    // After another restart a new confirmation is delivered; the acknowledged one never again.
    second.stop().await;
    let third = start(&dir, &path).await;
    let admin = admin.on(&third);
    let note = support::voice_action(
        &third,
        &conversation,
        &Command::TakeNote {
            content: "BP 120/80".into(),
        },
    )
    .await;
    confirm(&admin, &note).await;
    eventually("the note to be delivered", || async {
        deliveries(&admin, &note).await[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.verified_bodies(&key).len(), 4, "never sent again");
    assert_eq!(
        receiver.processed(),
        [
            (key, action.clone()),
            (format!("{note}:action.confirmed"), note.clone())
        ]
    );
    let page = admin.get_json("/webhook-deliveries", 200).await;
    let listed: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["actionId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [note.as_str(), action.as_str()], "newest first");
    let metrics = third
        .http
        .get(third.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_webhook_attempts_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_by_a_crashed_worker_is_retried_after_restart() {
    let (addr, receiver) = Receiver::start(|n| match n {
        1 => Reply::Late(Duration::from_secs(3)),
        _ => Reply::Status(204),
    })
    .await;
    let Visit {
        dir,
        path,
        server: first,
        admin,
        action,
        ..
    } = confirmed_prescription(addr).await;
    eventually("the first attempt to reach the receiver", || async {
        !receiver.requests.lock().unwrap().is_empty()
    })
    .await;
    // A crash: the server task is aborted mid-attempt, nothing is recorded.
    drop(first);

    let second = start(&dir, &path).await;
    let admin = admin.on(&second);
    eventually(
        "the lease to run out and the delivery to succeed",
        || async { deliveries(&admin, &action).await[0]["status"] == "delivered" },
    )
    .await;
    let delivery = deliveries(&admin, &action).await.remove(0);
    assert_eq!(
        delivery["attempts"], 2,
        "the crashed claim counts as an attempt"
    );
    let log = delivery["attemptLog"].as_array().unwrap();
    assert_eq!(
        log.len(),
        1,
        "only the finished attempt is logged: {delivery}"
    );
    assert_eq!(log[0]["attempt"], 2);
    assert_eq!(log[0]["statusCode"], 204);
    let bodies = receiver.verified_bodies(&format!("{action}:action.confirmed"));
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["deliveryId"], bodies[1]["deliveryId"]);
    second.stop().await;
}
