//! Several instances on one Postgres (issue #7): events relayed between instances arrive once
//! and in order, a conversation is driven by one instance at a time, and a dead instance's
//! conversation moves to another.
//!
//! Needs `--features postgres` and `TANDEM_TEST_DATABASE_URL` (`eval "$(.ci/postgres.sh
//! start)"`); every test gets a fresh schema. Without the feature this binary is empty.
#![cfg(feature = "postgres")]
// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use support::process::Process;
use support::ws::{self as wsx, Ws};
use support::{speech_script, CLINICIAN};
use tandem::pipeline::cluster::postgres::{PostgresCluster, MISSED_INTERVAL, NOTIFY_INLINE_LIMIT};
use tandem::pipeline::cluster::{self, Cluster};
use tandem::pipeline::hub::{Audience, Hub};
use tandem::testing::fake_openai::{http as fake_http, FakeOpenAi};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound on waiting for one event; nothing asserts on time.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// A URL whose sessions work in a fresh, migrated schema of the test database.
async fn schema_url() -> String {
    let (_, schema) = support::postgres::fresh_store("scale").await;
    let url = support::postgres::database_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Drains `rx` until nothing arrives for `idle`.
async fn drain(rx: &mut tandem::pipeline::hub::ClientRx, idle: Duration) -> Vec<String> {
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(idle, rx.frames.recv()).await {
        frames.push(frame.to_string());
    }
    frames
}

/// Each frame's `seq` and length: enough to compare, short enough to print.
fn digest(frames: &[String]) -> Vec<(u64, usize)> {
    frames
        .iter()
        .map(|f| {
            let v: Value = serde_json::from_str(f).unwrap();
            (v["seq"].as_u64().unwrap(), f.len())
        })
        .collect()
}

/// Two instances on `url`, each with its hub, sharing the data keys.
async fn two_instances(url: &str) -> ([PostgresCluster; 2], [Arc<Hub>; 2]) {
    let hubs = [Arc::new(Hub::new()), Arc::new(Hub::new())];
    let keys = Arc::new(
        tandem::store::Keyring::parse(&tandem::store::Keyring::generate_entry("k1").unwrap())
            .unwrap(),
    );
    let a = PostgresCluster::start(url, Arc::clone(&hubs[0]), Arc::clone(&keys))
        .await
        .unwrap();
    let b = PostgresCluster::start(url, Arc::clone(&hubs[1]), keys)
        .await
        .unwrap();
    ([a, b], hubs)
}

/// A control socket's queue on `hub`, of a user who asked about `conversation_id`.
fn watch(hub: &Hub, user_id: &str, conversation_id: &str) -> tandem::pipeline::hub::ClientRx {
    let (_, tx, client) = hub.client();
    hub.register_control(user_id, &tx);
    hub.mark_interest(conversation_id, user_id);
    client
}

/// The next frame of `rx`, parsed; panics if none comes in time.
async fn next_frame(rx: &mut tandem::pipeline::hub::ClientRx) -> Value {
    let frame = tokio::time::timeout(EVENT_WAIT, rx.frames.recv())
        .await
        .expect("relayed in time")
        .expect("queue open");
    serde_json::from_str(&frame).unwrap()
}

/// A plain session on the test schema, for what no instance would do.
async fn raw_session(url: &str) -> tokio_postgres::Client {
    let (raw, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relayed_events_arrive_once_in_order_and_claims_exclude() {
    let url = schema_url().await;
    let ([a, b], hubs) = two_instances(&url).await;
    let mut rx: Vec<_> = hubs.iter().map(|hub| watch(hub, "u", "c")).collect();
    // Every fourth event is too large for a notification and goes by reference.
    let sent: Vec<String> = (0..40)
        .map(|i| {
            let filler = if i % 4 == 3 {
                "x".repeat(NOTIFY_INLINE_LIMIT + 1000)
            } else {
                String::new()
            };
            json!({"type": "action_updated", "seq": i, "filler": filler, "note": "relayed-secret"})
                .to_string()
        })
        .collect();
    for frame in &sent {
        a.publish("c", Audience::Control, Arc::from(frame.as_str()));
    }
    let mut on_b = Vec::new();
    while on_b.len() < sent.len() {
        let frame = tokio::time::timeout(EVENT_WAIT, rx[1].frames.recv())
            .await
            .expect("relayed in time")
            .expect("queue open");
        on_b.push(frame.to_string());
    }
    // Nothing comes twice: not to B, and not back to A's own sockets through the relay.
    on_b.extend(drain(&mut rx[1], Duration::from_millis(500)).await);
    let on_a = drain(&mut rx[0], Duration::from_millis(100)).await;
    assert_eq!(
        digest(&on_b),
        digest(&sent),
        "every event once, in publish order"
    );
    assert!(on_b == sent, "large events arrive whole");
    assert_eq!(
        digest(&on_a),
        digest(&sent),
        "local sockets get each event once"
    );
    // The payloads relayed by reference are sealed at rest, like the rows they come from.
    let raw = raw_session(&url).await;
    let bodies: Vec<String> = raw
        .query("SELECT body FROM event_payloads", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        bodies.len(),
        10,
        "every fourth of 40 events went by reference"
    );
    for body in &bodies {
        assert!(body.starts_with("tdm1:k1:") && !body.contains("relayed-secret"));
    }
    // Any account on the database may NOTIFY: an event it forges, plain or under a made-up
    // envelope, reaches no socket.
    for event in [
        json!({"type": "action_updated", "forged": true}).to_string(),
        "tdm1:k1:AAAA".to_owned(),
    ] {
        let forged = json!({
            "instance": "forger", "conversation": "c", "audience": Audience::Control,
            "seq": 1, "event": event,
        });
        raw.execute(
            "SELECT pg_notify('tandem_events_' || left(md5(current_schema()), 16), $1)",
            &[&forged.to_string()],
        )
        .await
        .unwrap();
    }
    a.publish(
        "c",
        Audience::Control,
        Arc::from("{\"type\":\"after_forgery\"}"),
    );
    let after = tokio::time::timeout(EVENT_WAIT, rx[1].frames.recv())
        .await
        .expect("relayed in time")
        .expect("queue open");
    assert_eq!(
        &*after, "{\"type\":\"after_forgery\"}",
        "the forgeries were dropped"
    );

    // Claims: one instance at a time; they nest; the last release frees the conversation.
    a.claim("c").await.unwrap();
    assert!(matches!(b.claim("c").await, Err(cluster::Error::Busy)));
    a.claim("c").await.unwrap();
    a.release("c").await;
    assert!(matches!(b.claim("c").await, Err(cluster::Error::Busy)));
    a.release("c").await;
    b.claim("c").await.unwrap();
    b.claim("other").await.unwrap();
    assert!(matches!(a.claim("other").await, Err(cluster::Error::Busy)));
    // A dropped instance's claims lapse with its connection.
    drop(b);
    let mut claimed = false;
    for _ in 0..100 {
        if a.claim("c").await.is_ok() {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(claimed, "the claim of a dropped instance lapsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_event_the_server_refuses_is_dropped_and_the_later_ones_still_arrive() {
    let url = schema_url().await;
    let ([a, _b], hubs) = two_instances(&url).await;
    let mut on_b = watch(&hubs[1], "u", "c");
    // The server refuses (check violation, the same every time) a by-reference payload over
    // this size, while smaller ones still go by reference.
    raw_session(&url)
        .await
        .batch_execute(
            "ALTER TABLE event_payloads ADD CONSTRAINT refuse_huge CHECK (length(body) < 20000)",
        )
        .await
        .unwrap();
    let event = |i: usize, filler: usize| {
        json!({"type": "action_updated", "seq": i, "filler": "x".repeat(filler)}).to_string()
    };
    let sent = [
        event(0, 0),
        event(1, 30_000),
        event(2, NOTIFY_INLINE_LIMIT + 1000),
        event(3, 0),
    ];
    for frame in &sent {
        a.publish("c", Audience::Control, Arc::from(frame.as_str()));
    }
    assert_eq!(next_frame(&mut on_b).await["seq"], 0);
    // The refused event is missing on B, and B's watching sockets are told.
    let missed = next_frame(&mut on_b).await;
    assert_eq!(
        (&missed["type"], &missed["code"], &missed["conversationId"]),
        (&json!("error"), &json!("events_missed"), &json!("c")),
        "{missed}"
    );
    let later = next_frame(&mut on_b).await;
    assert_eq!(
        later,
        serde_json::from_str::<Value>(&sent[2]).unwrap(),
        "whole, by reference"
    );
    assert_eq!(next_frame(&mut on_b).await["seq"], 3);
    assert!(drain(&mut on_b, Duration::from_millis(500))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_full_notify_queue_is_waited_out_not_dropped() {
    let url = schema_url().await;
    let ([a, _b], hubs) = two_instances(&url).await;
    let mut on_b = watch(&hubs[1], "u", "c");
    // What Postgres raises while a listener idle in a transaction holds the notification
    // queue full (filling the real 8 GB queue is out of reach), on the by-reference path;
    // each try is counted in a sequence, which a failed statement does not roll back.
    let raw = raw_session(&url).await;
    raw.batch_execute(
        "CREATE SEQUENCE notify_full_tries; \
         CREATE FUNCTION notify_queue_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           PERFORM nextval('notify_full_tries'); \
           RAISE EXCEPTION 'too many notifications in the NOTIFY queue' \
             USING ERRCODE = 'program_limit_exceeded'; \
         END $$; \
         CREATE TRIGGER notify_queue_full BEFORE INSERT ON event_payloads \
           FOR EACH ROW EXECUTE FUNCTION notify_queue_full();",
    )
    .await
    .unwrap();
    let big =
        json!({"type": "action_updated", "seq": 1, "filler": "x".repeat(NOTIFY_INLINE_LIMIT)});
    a.publish("c", Audience::Control, Arc::from(big.to_string()));
    a.publish(
        "c",
        Audience::Control,
        Arc::from(json!({"type": "action_updated", "seq": 2}).to_string()),
    );
    // More tries than a refused event gets (three), then the queue drains.
    let mut tries: i64 = 0;
    while tries <= 4 {
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(50), on_b.frames.recv()).await
        {
            panic!("delivered or told while the queue was full (dropped?): {frame:?}");
        }
        tries = raw
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM notify_full_tries",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    }
    raw.batch_execute("DROP TRIGGER notify_queue_full ON event_payloads")
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut on_b).await,
        big,
        "sent once the queue had room"
    );
    assert_eq!(next_frame(&mut on_b).await["seq"], 2);
    assert!(
        drain(&mut on_b, Duration::from_millis(500))
            .await
            .is_empty(),
        "no events_missed: nothing was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_are_told_when_the_listen_connection_was_lost_and_events_flow_again() {
    let url = schema_url().await;
    let ([a, _b], hubs) = two_instances(&url).await;
    let mut watching = watch(&hubs[1], "u", "c");
    let mut elsewhere = watch(&hubs[1], "v", "unrelated");
    let mut idle = {
        let (_, tx, client) = hubs[1].client();
        hubs[1].register_control("w", &tx);
        client
    };
    let frame = |stage: &str, i: usize| json!({"type": "action_updated", "stage": stage, "seq": i});
    a.publish(
        "c",
        Audience::Control,
        Arc::from(frame("before", 0).to_string()),
    );
    assert_eq!(next_frame(&mut watching).await, frame("before", 0));

    // The server ends both instances' listening sessions (an admin, a failover, a proxy
    // timeout); A publishes meanwhile.
    let raw = raw_session(&url).await;
    let channel: String = raw
        .query_one(
            "SELECT 'tandem_events_' || left(md5(current_schema()), 16)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ended: i64 = raw
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = $1 AND pid <> pg_backend_pid()) t",
            &[&format!("LISTEN \"{channel}\"")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 2, "both listening sessions ended");
    for i in 1..=5 {
        a.publish(
            "c",
            Audience::Control,
            Arc::from(frame("during", i).to_string()),
        );
    }

    // Whatever of those B got before its session ended, the socket watching the
    // conversation is told to re-fetch it.
    let mut during = Vec::new();
    let missed = loop {
        let next = next_frame(&mut watching).await;
        if next["type"] == "error" {
            break next;
        }
        assert_eq!(next["stage"], "during", "{next}");
        during.push(next["seq"].as_u64().unwrap());
    };
    assert_eq!(missed["code"], "events_missed", "{missed}");
    assert_eq!(missed["conversationId"], "c");
    assert_eq!(missed["message"], missed["text"]);
    // So is one watching another conversation (a lost notification names none); a control
    // socket watching nothing is not.
    let other = next_frame(&mut elsewhere).await;
    assert_eq!(
        (&other["code"], &other["conversationId"]),
        (&json!("events_missed"), &json!("unrelated"))
    );
    // Events flow again, once. B got a prefix of the "during" events on its old session;
    // unless that was all of them, the next event shows a gap, which B cannot tell from a
    // loss after its reconnect notice: it is told again, but only once the notice interval
    // since the reconnect has passed (coalesced), and once.
    a.publish(
        "c",
        Audience::Control,
        Arc::from(frame("after", 6).to_string()),
    );
    let mut told_again = Vec::new();
    loop {
        let next = next_frame(&mut watching).await;
        if next == frame("after", 6) {
            break;
        }
        told_again.push(next);
    }
    told_again.extend(
        drain(&mut watching, MISSED_INTERVAL * 2)
            .await
            .iter()
            .map(|f| serde_json::from_str::<Value>(f).unwrap()),
    );
    assert!(
        during.iter().copied().eq(1..=during.len() as u64),
        "in order, no repeats: {during:?}"
    );
    let gap_told = usize::from(during.len() < 5);
    assert_eq!(told_again.len(), gap_told, "{during:?} then {told_again:?}");
    for again in &told_again {
        assert_eq!(
            (&again["code"], &again["conversationId"]),
            (&json!("events_missed"), &json!("c"))
        );
    }
    assert!(drain(&mut idle, Duration::from_millis(100))
        .await
        .is_empty());
}

/// Reads a socket in the background so nothing queues up on the server while the test
/// streams; every event goes into the returned channel.
fn read_events(ws: futures_util::stream::SplitStream<Ws>) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ws = ws;
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(text) = frame {
                if tx.send(serde_json::from_str(&text).unwrap()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Events of one socket, collected as they arrive.
struct Seen {
    rx: mpsc::UnboundedReceiver<Value>,
    events: Vec<Value>,
}

impl Seen {
    fn new(rx: mpsc::UnboundedReceiver<Value>) -> Seen {
        Seen {
            rx,
            events: Vec::new(),
        }
    }

    /// The next event; panics if none arrives in time.
    async fn next(&mut self, what: &str) -> Value {
        let e = tokio::time::timeout(EVENT_WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} in time; saw {:?}", self.types()))
            .unwrap_or_else(|| panic!("socket closed before {what}; saw {:?}", self.types()));
        self.events.push(e.clone());
        e
    }

    /// Reads until an event matches `pred` (also among those already read); returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        loop {
            let e = self.next(what).await;
            if pred(&e) {
                return e;
            }
        }
    }

    fn count(&self, ty: &str) -> usize {
        self.events.iter().filter(|e| e["type"] == ty).count()
    }

    async fn until_completed(&mut self, n: usize) {
        while self.count("processing_completed") < n {
            self.next("processing_completed").await;
        }
    }

    /// Reads whatever else arrives until the socket is quiet for `idle`.
    async fn settle(&mut self, idle: Duration) {
        while let Ok(Some(e)) = tokio::time::timeout(idle, self.rx.recv()).await {
            self.events.push(e);
        }
    }

    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The pushes every socket of the conversation gets (actions, summaries), as
    /// `type:id-or-content`, in arrival order.
    fn pushes(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| {
                matches!(
                    e["type"].as_str(),
                    Some("action_created" | "action_updated" | "summary_ready")
                )
            })
            .map(|e| {
                format!(
                    "{}:{}:{}",
                    e["type"], e["payload"]["id"], e["payload"]["updatedAt"]
                )
            })
            .collect()
    }
}

/// An audio socket on `addr`: its sending half and its events, after the conversation went
/// live there (`openai_connected`: the instance holds the conversation).
async fn open_audio(
    addr: std::net::SocketAddr,
    user: &support::Client,
    conversation_id: &str,
) -> (futures_util::stream::SplitSink<Ws, Message>, Seen) {
    let ws = wsx::connect(format!(
        "ws://{addr}/transcription?conversationId={conversation_id}&token={}",
        user.access_token
    ))
    .await;
    let (sink, stream) = ws.split();
    let mut seen = Seen::new(read_events(stream));
    seen.until("openai_connected", |e| e["type"] == "openai_connected")
        .await;
    (sink, seen)
}

/// Streams the fixture recording (faster than real time; the fake's VAD counts samples), then
/// `finalize`.
async fn stream(sink: &mut futures_util::stream::SplitSink<Ws, Message>) {
    use base64::Engine as _;
    for chunk in wsx::recording_chunks() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&chunk);
        let append = json!({"type": "input_audio_buffer.append", "audio": b64});
        sink.send(Message::text(append.to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let finalize = json!({"type": "input_audio_buffer.finalize"});
    sink.send(Message::text(finalize.to_string()))
        .await
        .unwrap();
}

/// Edits a note through `user`'s instance; returns the updated action.
async fn edit_note(user: &support::Client, action_id: &str, content: &str) -> Value {
    let res = user
        .patch(&format!("/actions/{action_id}"))
        .json(&json!({"data": {"content": content}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_share_a_conversation_one_takes_over_when_the_other_dies_and_a_third_ends_it(
) {
    let url = schema_url().await;
    let fake = FakeOpenAi::start(
        speech_script().script_per_connection(),
        fake_http::State::default(),
    )
    .await;
    let a = Process::start(&url, &fake);
    let b = Process::start(&url, &fake);
    let on_a = a.user("dr_scale").await;
    let on_b = support::Client {
        base: format!("http://{}/api/v1", b.addr),
        ..on_a.clone()
    };
    let created = on_a
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // Control socket on B, audio socket on A.
    let control = support::control_socket_at(b.addr, &on_b, &id).await;
    let (mut control_tx, control_rx) = control.split();
    let mut control = Seen::new(read_events(control_rx));
    let (mut audio_tx, mut audio) = open_audio(a.addr, &on_a, &id).await;

    // A drives the conversation: an audio socket on B is refused, clearly.
    let mut refused = wsx::connect(format!(
        "ws://{}/transcription?conversationId={id}&token={}",
        b.addr, on_b.access_token
    ))
    .await;
    let error = wsx::next_error(&mut refused, EVENT_WAIT).await;
    assert_eq!(error["code"], "conversation_busy", "{error}");
    assert_eq!(wsx::close_code(&mut refused, EVENT_WAIT).await, Some(1013));

    stream(&mut audio_tx).await;
    audio.until_completed(2).await;
    let note = audio
        .until("action_created", |e| e["type"] == "action_created")
        .await;
    let note_id = note["payload"]["id"].as_str().unwrap().to_owned();
    // The pipeline on A announced the note; B's control socket has it.
    control
        .until("the note on B", |e| {
            e["type"] == "action_created" && e["payload"]["id"] == note_id.as_str()
        })
        .await;

    // Edits through either instance reach the sockets on the other, large ones by reference.
    let long = "Chest pain for three days. ".repeat(NOTIFY_INLINE_LIMIT / 20);
    let edited_on_b = edit_note(&on_b, &note_id, &long).await;
    let relayed = audio
        .until("the edit from B on A", |e| {
            e["type"] == "action_updated" && e["payload"]["updatedAt"] == edited_on_b["updatedAt"]
        })
        .await;
    assert_eq!(relayed["payload"]["data"]["content"], long.as_str());
    let edited_on_a = edit_note(&on_a, &note_id, "Chest pain, three days.").await;
    control
        .until("the edit from A on B", |e| {
            e["type"] == "action_updated" && e["payload"]["updatedAt"] == edited_on_a["updatedAt"]
        })
        .await;

    // Every push the audio socket on A saw reached the control socket on B once, in order.
    audio.settle(Duration::from_millis(500)).await;
    control.settle(Duration::from_millis(500)).await;
    assert!(audio.pushes().len() >= 3, "{:?}", audio.types());
    assert_eq!(control.pushes(), audio.pushes());
    let mut counts: HashMap<&Value, usize> = HashMap::new();
    for e in control.events.iter().chain(&audio.events) {
        if e["type"] == "new_message" {
            *counts.entry(&e["payload"]["id"]).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 4, "two originals, two translations");
    assert!(
        counts.values().all(|&n| n == 1),
        "each message once: {counts:?}"
    );
    let seen_on_a: Vec<Value> = audio
        .events
        .iter()
        .filter(|e| e["type"] == "new_message")
        .map(|e| e["payload"]["id"].clone())
        .collect();

    // A dies mid-conversation, its audio socket still open: its claim dies with it.
    a.signal(libc::SIGKILL);
    drop(a);
    drop(audio_tx);
    let (mut audio_tx, mut audio) = {
        let mut taken = None;
        for _ in 0..100 {
            let ws = wsx::connect(format!(
                "ws://{}/transcription?conversationId={id}&token={}",
                b.addr, on_b.access_token
            ))
            .await;
            let (sink, stream) = ws.split();
            let mut seen = Seen::new(read_events(stream));
            let first = seen
                .until("live or busy", |e| {
                    e["type"] == "openai_connected" || e["code"] == "conversation_busy"
                })
                .await;
            if first["type"] == "openai_connected" {
                taken = Some((sink, seen));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        taken.expect("B takes the conversation over once A is dead")
    };
    stream(&mut audio_tx).await;
    audio.until_completed(2).await;
    let resumed = audio
        .until("the clinician again", |e| {
            e["type"] == "new_message" && e["payload"]["originalText"] == CLINICIAN
        })
        .await;
    assert!(
        !seen_on_a.contains(&resumed["payload"]["id"]),
        "a new message"
    );
    // B's own pipeline announces to B's control socket too (locally, once).
    let second_note = audio
        .until("a second note", |e| {
            e["type"] == "action_created" && e["payload"]["id"] != note_id.as_str()
        })
        .await;
    control
        .until("the second note on B", |e| {
            e["type"] == "action_created" && e["payload"]["id"] == second_note["payload"]["id"]
        })
        .await;
    control.settle(Duration::from_millis(500)).await;
    let creations = control
        .pushes()
        .iter()
        .filter(|p| p.starts_with("\"action_created\""))
        .count();
    assert_eq!(creations, 2, "{:?}", control.pushes());

    // A third instance joins, and the visit is ended through it while B drives the audio: B's
    // audio socket is told and closed, and the summary, written once B drained, reaches the
    // control socket on B.
    let c = Process::start(&url, &fake);
    let on_c = support::Client {
        base: format!("http://{}/api/v1", c.addr),
        ..on_a.clone()
    };
    let res = on_c
        .post(&format!("/conversations/{id}/end"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    audio
        .until("conversation_ended on B", |e| {
            e["type"] == "conversation_ended"
        })
        .await;
    let summary = control
        .until("the summary on B", |e| e["type"] == "summary_ready")
        .await;
    assert_eq!(summary["payload"]["status"], "summarized", "{summary}");

    // Everything both instances announced is stored.
    let page = on_b
        .get_json(&format!("/conversations/{id}/messages"), 200)
        .await;
    let stored: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    for e in &audio.events {
        if e["type"] == "new_message" {
            assert!(stored.contains(&&e["payload"]["id"]));
        }
    }
    for m in &seen_on_a {
        assert!(stored.contains(&m), "{m} stored before A died");
    }
    let _ = control_tx.close().await;
    let _ = audio_tx.close().await;
}
