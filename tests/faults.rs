//! Faults, end to end over loopback (issue #6): the real server, a real browser recording and
//! the fake provider with fault injection. The rule every test checks: nothing transcribed is
//! lost. Stored messages are complete, the client is told with an `error` event carrying a
//! stable code, and the next utterance works.
//!
//! Audio is streamed faster than real time (the fake's VAD counts samples, not seconds), and a
//! fault is switched off only between utterances: [`Call::stream_until_utterance`] stops
//! sending as soon as the first utterance's captions arrive, so the second is not spoken until
//! the test has checked the first and changed the fake.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;
use support::{speech_script as script, CLINICIAN, PATIENT};

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tandem::pipeline::PipelineConfig;
use tandem::server::HttpConfig;
use tandem::testing::fake_openai::http::{Fault, CHAT_PATH, SPEECH_PATH};
use tandem::testing::fake_openai::realtime::State;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound on waiting for one event; nothing asserts on time.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// Pause between chunks: faster than the recording's 1 s, slow enough that each chunk's events
/// arrive before the next chunk is sent.
const CHUNK_GAP: Duration = Duration::from_millis(150);

async fn connect(url: String) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect")
        .0
}

/// The next JSON text frame; `None` once the socket closed or after `within`.
async fn next_event(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(within, ws.next()).await.ok()?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                return Some(serde_json::from_str(&text).expect("JSON event"))
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string()))
        .await
        .expect("send");
}

fn is_error(e: &Value, code: &str) -> bool {
    e["type"] == "error" && e["code"] == code
}

fn originals(stored: &[Value]) -> Vec<&str> {
    stored
        .iter()
        .filter(|m| m["senderType"] != "translation")
        .map(|m| m["originalText"].as_str().unwrap())
        .collect()
}

/// A logged-in clinician with one active conversation (patient language `es`).
struct Visit {
    addr: std::net::SocketAddr,
    user: support::Client,
    id: String,
}

impl Visit {
    async fn start(srv: &support::TestServer) -> Visit {
        let user = srv.new_user("dr_fault").await;
        Visit::create(srv.addr, user).await
    }

    async fn create(addr: std::net::SocketAddr, user: support::Client) -> Visit {
        let c = user
            .create_conversation("Ana", "García", "1980-04-02")
            .await;
        let id = c["id"].as_str().unwrap().to_owned();
        // A new patient's synthetic medical history is generated in the background with a
        // chat call; let it finish so faults installed next hit only the pipeline's calls.
        for _ in 0..200 {
            let history = user
                .get_json(&format!("/conversations/{id}/medical-history"), 200)
                .await;
            if !history.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Visit { addr, user, id }
    }

    /// Opens an audio socket and waits for its greeting.
    async fn open_audio(&self) -> Call {
        let mut ws = connect(format!(
            "ws://{}/transcription?conversationId={}&token={}",
            self.addr, self.id, self.user.access_token
        ))
        .await;
        let hello = next_event(&mut ws, EVENT_WAIT).await.expect("a greeting");
        assert_eq!(hello["type"], "backend_connected", "{hello}");
        Call {
            ws,
            chunks: support::ws::recording_chunks(),
            sent: 0,
            events: Vec::new(),
        }
    }

    /// Polls the stored messages until `count` rows exist (or ~20 s passed).
    async fn stored(&self, count: usize) -> Vec<Value> {
        let mut stored = Vec::new();
        for _ in 0..100 {
            let page = self
                .user
                .get_json(&format!("/conversations/{}/messages", self.id), 200)
                .await;
            stored = page["messages"].as_array().unwrap().clone();
            if stored.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stored
    }
}

/// One audio socket streaming the recording, with every event it received.
struct Call {
    ws: Ws,
    chunks: Vec<Vec<u8>>,
    /// Chunks sent so far.
    sent: usize,
    events: Vec<Value>,
}

impl Call {
    async fn send_chunk(&mut self) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.chunks[self.sent]);
        send(
            &mut self.ws,
            json!({"type": "input_audio_buffer.append", "audio": b64}),
        )
        .await;
        self.sent += 1;
    }

    /// Sends the first chunk again (more audio after the end of the recording).
    async fn send_chunk_again(&mut self) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.chunks[0]);
        send(
            &mut self.ws,
            json!({"type": "input_audio_buffer.append", "audio": b64}),
        )
        .await;
    }

    /// Collects events until none arrives for `idle`.
    async fn collect_idle(&mut self, idle: Duration) {
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, self.ws.next()).await {
            if let Message::Text(text) = frame {
                self.events.push(serde_json::from_str(&text).unwrap());
            }
        }
    }

    /// Streams chunks until a new utterance's first caption arrives (the provider committed
    /// it), then returns without sending more.
    async fn stream_until_utterance(&mut self) {
        let seen = self.captions();
        while self.sent < self.chunks.len() {
            self.send_chunk().await;
            self.collect_idle(CHUNK_GAP).await;
            if self.captions() > seen {
                return;
            }
        }
        panic!("no new utterance in the recording");
    }

    /// Streams the rest of the recording, then `finalize`.
    async fn stream_rest(&mut self) {
        while self.sent < self.chunks.len() {
            self.send_chunk().await;
            self.collect_idle(Duration::from_millis(20)).await;
        }
        send(&mut self.ws, json!({"type": "input_audio_buffer.finalize"})).await;
    }

    fn captions(&self) -> usize {
        self.events
            .iter()
            .filter(|e| e["type"] == "transcript_delta")
            .map(|e| e["payload"]["itemId"].as_str().unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    fn count(&self, ty: &str) -> usize {
        self.events.iter().filter(|e| e["type"] == ty).count()
    }

    /// Reads until `n` `processing_completed` events arrived in total.
    async fn until_completed(&mut self, n: usize) {
        while self.count("processing_completed") < n {
            match next_event(&mut self.ws, EVENT_WAIT).await {
                Some(e) => self.events.push(e),
                None => panic!("socket closed or silent; events: {:?}", self.types()),
            }
        }
    }

    /// Reads until an event matches `pred`; returns it.
    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        loop {
            match next_event(&mut self.ws, EVENT_WAIT).await {
                Some(e) => {
                    self.events.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                None => panic!("socket closed or silent; events: {:?}", self.types()),
            }
        }
    }

    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match e["code"].as_str() {
                Some(code) => format!("error:{code}"),
                None => e["type"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Events from index `from` on.
    fn since(&self, from: usize) -> &[Value] {
        &self.events[from..]
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

async fn start_scripted_tuned(
    state: State,
    tune: impl FnOnce(&mut support::Tuning),
) -> support::TestServer {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("tandem.db");
    support::start_tuned(dir, &path, HttpConfig::default(), state, tune).await
}

// ---------------------------------------------------------------------------------------------
// HTTP providers: 429, 500 and timeouts on every call an utterance makes.

/// Utterance 1 meets `fault` on every chat call (translation, command detection) and every
/// speech call; utterance 2 meets a healthy provider.
async fn provider_failure_case(fault: Fault, code: &str) {
    let srv = support::start_scripted(script()).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    // The medical history's chat call came before the faults.
    let chat_before = srv.fake.http.requests_to(CHAT_PATH).len();
    srv.fake.http.fail_next(CHAT_PATH, 1000, fault);
    srv.fake.http.fail_next(SPEECH_PATH, 1000, fault);

    call.stream_until_utterance().await;
    call.until_completed(1).await;
    let stored = call
        .events
        .iter()
        .find(|e| e["type"] == "new_message")
        .expect("the transcript was stored and sent")["payload"]
        .clone();
    assert_eq!(stored["originalText"], CLINICIAN);
    for stage in [
        "Translation failed",
        "Command detection failed",
        "Speech synthesis failed",
    ] {
        let told = call
            .events
            .iter()
            .find(|e| e["type"] == "error" && e["message"].as_str().unwrap().starts_with(stage))
            .unwrap_or_else(|| panic!("{stage}: not told; {:?}", call.types()));
        assert_eq!(told["code"], code, "{told}");
    }
    assert_eq!(call.count("tts_audio"), 0);
    assert_eq!(call.count("new_message"), 1, "no translation row");
    // Every call was retried (1 + max_retries = 3 attempts): two chat calls, one speech call.
    assert_eq!(srv.fake.http.requests_to(CHAT_PATH).len() - chat_before, 6);
    assert_eq!(srv.fake.http.requests_to(SPEECH_PATH).len(), 3);

    srv.fake.http.clear_faults();
    let mark = call.events.len();
    call.stream_rest().await;
    call.until_completed(2).await;
    let next = call.since(mark);
    assert!(
        !next.iter().any(|e| e["type"] == "error"),
        "the next utterance is clean: {:?}",
        call.types()
    );
    assert!(next
        .iter()
        .any(|e| e["type"] == "new_message" && e["payload"]["senderType"] == "translation"));
    assert!(next.iter().any(|e| e["type"] == "tts_audio"));

    let rows = visit.stored(3).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT]);
    assert_eq!(rows.len(), 3, "both originals and the second's translation");
    call.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_429_on_every_http_call_is_reported_and_the_next_utterance_works() {
    provider_failure_case(Fault::RateLimited, "provider_rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_500_on_every_http_call_is_reported_and_the_next_utterance_works() {
    provider_failure_case(Fault::ServerError, "provider_status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_providers_time_out_and_the_next_utterance_works() {
    let srv = start_scripted_tuned(script(), |t| {
        t.ai.request_timeout = Duration::from_millis(300);
        t.ai.tts_timeout = Duration::from_millis(300);
        t.ai.max_retries = 1;
    })
    .await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    srv.fake.http.set_delay(CHAT_PATH, Duration::from_secs(3));
    srv.fake.http.set_delay(SPEECH_PATH, Duration::from_secs(3));

    call.stream_until_utterance().await;
    call.until_completed(1).await;
    assert_eq!(
        call.events
            .iter()
            .find(|e| e["type"] == "new_message")
            .unwrap()["payload"]["originalText"],
        CLINICIAN
    );
    let timeouts = call
        .events
        .iter()
        .filter(|e| is_error(e, "provider_timeout"))
        .count();
    assert_eq!(
        timeouts,
        3,
        "translation, commands and speech: {:?}",
        call.types()
    );

    srv.fake.http.set_delay(CHAT_PATH, Duration::ZERO);
    srv.fake.http.set_delay(SPEECH_PATH, Duration::ZERO);
    let mark = call.events.len();
    call.stream_rest().await;
    call.until_completed(2).await;
    assert!(!call.since(mark).iter().any(|e| e["type"] == "error"));
    assert!(call.since(mark).iter().any(|e| e["type"] == "tts_audio"));
    let rows = visit.stored(3).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT]);
    call.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_language_fallback_keeps_the_local_guess() {
    // "Sí." with no provider hint is too short to decide locally: the LLM fallback is asked,
    // fails, and the local guess decides. The transcript is stored either way.
    let srv = support::start_scripted(State::new(["Sí.", PATIENT])).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    let chat_before = srv.fake.http.requests_to(CHAT_PATH).len();
    srv.fake.http.fail_next(CHAT_PATH, 3, Fault::ServerError);
    call.stream_until_utterance().await;
    call.until_completed(1).await;
    let requests = srv.fake.http.requests_to(CHAT_PATH)[chat_before..].to_vec();
    assert!(
        requests.len() > 3 && requests[..3].iter().all(|r| r.body == requests[0].body),
        "three attempts of the detection call, then the rest"
    );
    let message = call.until(|e| e["type"] == "new_message").await;
    assert_eq!(message["payload"]["originalText"], "Sí.");
    assert_eq!(message["payload"]["senderType"], "patient");
    let mark = call.events.len();
    call.stream_rest().await;
    call.until_completed(2).await;
    assert!(!call.since(mark).iter().any(|e| e["type"] == "error"));
    assert_eq!(originals(&visit.stored(4).await), ["Sí.", PATIENT]);
    call.close().await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The speech-to-text socket.

fn fast_stt(stt: &mut tandem::stt::realtime::RealtimeConfig) {
    stt.watchdog = Duration::from_millis(400);
    stt.reconnect.initial_delay = Duration::from_millis(10);
    stt.reconnect.max_delay = Duration::from_millis(40);
    stt.reconnect.max_retries = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expired_and_malformed_frames_lose_nothing() {
    let srv = start_scripted_tuned(
        script()
            .malformed_frame_once()
            .session_expired_after_appends(30),
        |t| fast_stt(&mut t.stt),
    )
    .await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    call.stream_rest().await;
    call.until_completed(2).await;
    assert_eq!(
        srv.fake.realtime.faults_fired(),
        ["malformed_frame", "session_expired"]
    );
    assert!(call.events.iter().any(|e| is_error(e, "stt_warning")));
    assert!(call.events.iter().any(|e| is_error(e, "stt_reconnecting")));
    let rows = visit.stored(4).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT], "each exactly once");
    assert_eq!(rows.len(), 4);
    call.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_provider_trips_the_watchdog_and_the_replay_transcribes_everything() {
    // The first connection goes mute a few frames into the recording: no events, no close.
    let srv = start_scripted_tuned(script().stall_after_appends(3), |t| fast_stt(&mut t.stt)).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    call.stream_rest().await;
    call.until_completed(2).await;
    assert_eq!(srv.fake.realtime.faults_fired(), ["stall"]);
    assert!(
        srv.fake.realtime.connection_count() >= 2,
        "the watchdog reconnected"
    );
    assert!(call.events.iter().any(|e| is_error(e, "stt_reconnecting")));
    let rows = visit.stored(4).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT]);
    assert_eq!(rows.len(), 4);
    call.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_gives_up_tells_the_client_and_a_new_socket_recovers() {
    let srv = start_scripted_tuned(script(), |t| fast_stt(&mut t.stt)).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    call.stream_until_utterance().await;
    call.until_completed(1).await;

    // The provider goes away: the open connection is hung and new ones are refused.
    srv.fake.realtime.set_refusing(true);
    srv.fake.realtime.set_stall_always(true);
    call.stream_rest().await;
    let failed = call.until(|e| is_error(e, "stt_failed")).await;
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .starts_with("Transcription failed"));
    call.until(|e| e["type"] == "openai_disconnected").await;
    assert!(srv.fake.realtime.faults_fired().contains(&"refused"));
    // More audio on this socket is refused with a reason, not dropped silently.
    call.send_chunk_again().await;
    call.until(|e| is_error(e, "session_ended")).await;
    assert_eq!(originals(&visit.stored(2).await), [CLINICIAN]);
    call.close().await;

    // The provider is back: a new socket starts a new session and transcribes.
    srv.fake.realtime.set_refusing(false);
    srv.fake.realtime.set_stall_always(false);
    let mut again = visit.open_audio().await;
    again.stream_rest().await;
    again.until_completed(1).await;
    let rows = visit.stored(4).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT]);
    again.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_accepts_but_never_answers_is_given_up_on() {
    let srv = start_scripted_tuned(script(), |t| fast_stt(&mut t.stt)).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    call.stream_until_utterance().await;
    call.until_completed(1).await;

    // Every connection, the open one and each reconnect, is accepted and then hangs.
    srv.fake.realtime.set_stall_always(true);
    call.stream_rest().await;
    call.until(|e| is_error(e, "stt_failed")).await;
    let reconnects = call
        .events
        .iter()
        .filter(|e| is_error(e, "stt_reconnecting"))
        .count();
    assert!(
        (1..=4).contains(&reconnects),
        "bounded by the retry policy: {reconnects}"
    );
    assert_eq!(originals(&visit.stored(2).await), [CLINICIAN]);
    call.close().await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Client sockets.

fn long_script() -> State {
    State::new([
        CLINICIAN,
        PATIENT,
        "Any allergies to medication?",
        "No, ninguna alergia.",
        "Take a deep breath, please.",
        "Muy bien, gracias.",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_socket_closed_and_reopened_mid_recording_loses_nothing() {
    let srv = support::start_scripted(long_script()).await;
    let visit = Visit::start(&srv).await;
    let mut first = visit.open_audio().await;
    first.stream_until_utterance().await;
    first.until_completed(1).await;
    // Into the second utterance, then the connection is gone (no finalize, as the original
    // frontend on a network change).
    for _ in 0..2 {
        first.send_chunk().await;
    }
    first.close().await;

    // The browser reconnects at once and its new MediaRecorder starts a new recording.
    let mut second = visit.open_audio().await;
    second.stream_rest().await;

    // Both recordings' speech: the first socket's (its last turn cut short by the close) and
    // the second's. Poll until the fake's answers and the stored rows agree.
    let (mut stored, mut expected) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        expected = srv.fake.realtime.transcribed();
        let rows = visit.stored(0).await;
        stored = originals(&rows).into_iter().map(str::to_owned).collect();
        if expected.len() >= 4 && stored.len() == expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        expected.len() >= 4,
        "the first socket's speech and the second's: {expected:?}"
    );
    stored.sort_unstable();
    expected.sort_unstable();
    assert_eq!(stored, expected, "every transcript stored exactly once");
    second.close().await;
    srv.stop().await;
}

/// A control socket with a tiny receive buffer, so the server's writes to it block as soon as
/// the kernel buffers fill.
async fn sluggish_control(srv: &support::TestServer, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(srv.addr).await.unwrap();
    let url = format!("ws://{}/ws?token={token}", srv.addr);
    tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_socket_that_never_reads_is_dropped_and_blocks_nobody() {
    let srv = support::start_scripted(script()).await;
    let visit = Visit::start(&srv).await;
    // A long conversation makes every `message_list` reply large (~200 KB).
    for i in 0..200 {
        srv.store
            .insert_message(tandem::store::NewMessage::utterance(
                &visit.id,
                tandem::store::SenderType::Clinician,
                "en",
                format!("{i}: {}", "lorem ipsum dolor sit amet ".repeat(40)),
            ))
            .await
            .unwrap();
    }
    let control =
        |srv: &support::TestServer| srv.state.ws_connections.get(&[("socket", "control")]);
    let mut lagging = sluggish_control(&srv, &visit.user.access_token).await;
    let ask = json!({"type": "get_messages", "payload": {"conversationId": visit.id}});
    for _ in 0..300 {
        lagging.send(Message::text(ask.to_string())).await.unwrap();
    }

    // Meanwhile another client is served and the pipeline runs.
    let mut healthy = connect(format!(
        "ws://{}/ws?token={}",
        srv.addr, visit.user.access_token
    ))
    .await;
    assert_eq!(
        next_event(&mut healthy, EVENT_WAIT).await.unwrap()["type"],
        "system"
    );
    send(&mut healthy, ask.clone()).await;
    let list = next_event(&mut healthy, EVENT_WAIT).await.unwrap();
    assert_eq!(list["type"], "message_list");
    let mut call = visit.open_audio().await;
    call.stream_rest().await;
    call.until_completed(2).await;

    // The lagging socket is dropped per the hub policy: its connection is closed. The bound is
    // a hang guard, not a speed check: on a loaded CI machine the server takes ~20 s to build
    // the 300 large replies that fill the socket's queue.
    let mut waited = 0;
    while control(&srv) > 1 && waited < 600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(control(&srv), 1, "only the healthy control socket is left");
    // What the lagging client finally reads ends (a close or a reset), never hangs.
    let mut frames = 0;
    loop {
        match tokio::time::timeout(EVENT_WAIT, lagging.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the lagging socket was never closed ({frames} frames read)"),
        }
    }
    assert!(
        frames < 300,
        "replies were dropped, not all queued: {frames}"
    );
    call.close().await;
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The process: SIGTERM drains, SIGKILL loses nothing that was reported.

use support::process::Process;

/// `PRAGMA integrity_check` plus the invariants of complete rows: every message has text and a
/// language, and every translation points at a stored original. Returns the message ids.
fn consistent_store(db: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM messages t WHERE t.original_message_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.id = t.original_message_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "translations without their original");
    let incomplete: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE original_text = '' OR language = ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(incomplete, 0, "half-written messages");
    let mut ids = conn.prepare("SELECT id FROM messages").unwrap();
    let ids = ids
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    ids
}

async fn process_fake() -> tandem::testing::fake_openai::FakeOpenAi {
    tandem::testing::fake_openai::FakeOpenAi::start(
        script(),
        tandem::testing::fake_openai::http::State::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_utterance_finishes_it_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tandem.db");
    let fake = process_fake().await;
    // Translation and speech take a while, so the utterance is mid-flight at the signal.
    fake.http.set_delay(CHAT_PATH, Duration::from_millis(800));
    fake.http.set_delay(SPEECH_PATH, Duration::from_millis(300));
    let mut process = Process::start(&db, &fake);
    let user = process.user("dr_term").await;
    let visit = Visit::create(process.addr, user).await;
    let mut call = visit.open_audio().await;
    call.stream_until_utterance().await;
    let original = call.until(|e| e["type"] == "new_message").await["payload"].clone();

    process.signal(libc::SIGTERM);
    let status = process.exit_status(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");

    // Every utterance in flight finished before the exit (the drain also commits audio the
    // provider had not answered yet, so a slow machine may see the second one too): each was
    // translated, completed and delivered, and its row got its timings (written last).
    call.collect_idle(Duration::from_millis(200)).await;
    let originals: Vec<&Value> = call
        .events
        .iter()
        .filter(|e| e["type"] == "new_message" && e["payload"]["originalMessageId"].is_null())
        .map(|e| &e["payload"])
        .collect();
    assert_eq!(originals[0]["id"], original["id"]);
    for m in &originals {
        assert!(
            call.events.iter().any(|e| e["type"] == "new_message"
                && e["payload"]["originalMessageId"] == m["id"]),
            "translation of {} delivered: {:?}",
            m["originalText"],
            call.types()
        );
    }
    assert_eq!(
        call.count("processing_completed"),
        originals.len(),
        "{:?}",
        call.types()
    );
    let ids = consistent_store(&db);
    assert_eq!(ids.len(), 2 * originals.len(), "originals and translations");
    let conn = rusqlite::Connection::open(&db).unwrap();
    for m in &originals {
        let timings: Option<String> = conn
            .query_row(
                "SELECT timings FROM messages WHERE id = ?1",
                [m["id"].as_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(timings.is_some_and(|t| t.contains("sent_ms")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_keeps_every_message_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tandem.db");
    let fake = process_fake().await;
    fake.http.set_delay(CHAT_PATH, Duration::from_millis(300));
    let process = Process::start(&db, &fake);
    let user = process.user("dr_kill").await;
    let visit = Visit::create(process.addr, user).await;
    let mut call = visit.open_audio().await;
    call.stream_until_utterance().await;
    call.until_completed(1).await;
    call.stream_until_utterance().await;
    call.until(|e| e["type"] == "new_message" && e["payload"]["originalText"] == PATIENT)
        .await;

    process.signal(libc::SIGKILL);
    drop(process);
    let seen: Vec<String> = call
        .events
        .iter()
        .filter(|e| e["type"] == "new_message")
        .map(|e| e["payload"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(seen.len() >= 3, "both originals and the first translation");

    let stored = consistent_store(&db);
    for id in &seen {
        assert!(stored.contains(id), "message {id} was reported but lost");
    }
    // The store opens again (migrations, WAL recovery) and serves the conversation.
    let restarted = Process::start(&db, &fake);
    let user = restarted.user("dr_kill").await;
    let page = user
        .get_json(&format!("/conversations/{}/messages", visit.id), 200)
        .await;
    let listed: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in &seen {
        assert!(listed.contains(&id.as_str()), "{id} listed after restart");
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

/// Another process holding SQLite's write lock (a backup tool, the CLI in a transaction).
fn take_write_lock(db: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// A server whose transcripts wait up to `retry_window` for the store, and a call whose first
/// utterance was spoken (its captions arrived) while another connection holds SQLite's write
/// lock, which is returned.
async fn first_utterance_into_a_locked_store(
    retry_window: Duration,
) -> (support::TestServer, Visit, Call, rusqlite::Connection) {
    let srv = start_scripted_tuned(script(), |t| {
        t.sqlite_busy_timeout = Duration::from_millis(50);
        t.pipeline.store_retry_window = retry_window;
    })
    .await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    let lock = take_write_lock(&srv.db_path);
    call.stream_until_utterance().await;
    (srv, visit, call, lock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_retries_then_hands_the_transcript_to_the_client() {
    // Locked for the whole retry window: the transcript cannot be stored. The client hears
    // first that it is held, then that the wait is over and it is not stored.
    let (srv, visit, mut call, lock) =
        first_utterance_into_a_locked_store(Duration::from_secs(1)).await;
    let pending = call.until(|e| is_error(e, "transcript_pending")).await;
    let unsaved = call.until(|e| is_error(e, "store_unavailable")).await;
    assert_eq!(pending["payload"], unsaved["payload"]);
    assert_eq!(unsaved["payload"]["originalText"], CLINICIAN, "{unsaved}");
    assert_eq!(unsaved["payload"]["senderType"], "user");
    assert_eq!(unsaved["payload"]["language"], "en");
    assert_eq!(unsaved["payload"]["conversationId"], visit.id.as_str());
    assert!(unsaved["payload"]["sttItemId"].is_string());
    assert_eq!(call.count("new_message"), 0, "nothing claims to be stored");
    drop(lock);

    // The lock is gone: the next utterance is stored and interpreted as usual.
    let mark = call.events.len();
    call.stream_rest().await;
    call.until(|e| e["type"] == "processing_completed").await;
    assert!(
        !call.since(mark).iter().any(|e| e["type"] == "error"),
        "{:?}",
        call.types()
    );
    let rows = visit.stored(2).await;
    assert_eq!(originals(&rows), [PATIENT]);
    call.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_briefly_locked_store_is_retried_and_nothing_is_reported_lost() {
    let (srv, visit, mut call, lock) =
        first_utterance_into_a_locked_store(PipelineConfig::default().store_retry_window).await;
    // Released well inside the retry window.
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(lock);
    call.until_completed(1).await;
    assert!(
        !call.events.iter().any(|e| is_error(e, "store_unavailable")),
        "{:?}",
        call.types()
    );
    assert_eq!(
        call.events
            .iter()
            .find(|e| e["type"] == "new_message")
            .unwrap()["payload"]["originalText"],
        CLINICIAN
    );
    assert_eq!(originals(&visit.stored(1).await), [CLINICIAN]);
    call.close().await;
    srv.stop().await;
}

/// The store stays unavailable longer than a blip but comes back inside the window: the
/// client is told the transcript is held, then gets it as an ordinary `new_message`, and the
/// row is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_back_within_the_window_gets_the_held_transcript_once() {
    let (srv, visit, mut call, lock) =
        first_utterance_into_a_locked_store(PipelineConfig::default().store_retry_window).await;
    held_then_stored(&mut call, &visit, || drop(lock)).await;
    call.close().await;
    srv.stop().await;
}

/// Waits for the `transcript_pending` error of the first utterance, checks nothing claims to
/// be stored, calls `recover`, then checks the transcript arrives as `new_message`, is
/// interpreted as usual and is stored exactly once.
async fn held_then_stored(call: &mut Call, visit: &Visit, recover: impl FnOnce()) {
    let pending = call.until(|e| is_error(e, "transcript_pending")).await;
    assert_eq!(pending["payload"]["originalText"], CLINICIAN, "{pending}");
    assert_eq!(pending["payload"]["conversationId"], visit.id.as_str());
    let item = pending["payload"]["sttItemId"].as_str().unwrap().to_owned();
    assert_eq!(call.count("new_message"), 0, "nothing claims to be stored");
    recover();
    let stored = call.until(|e| e["type"] == "new_message").await;
    assert_eq!(stored["payload"]["originalText"], CLINICIAN, "{stored}");
    call.until_completed(1).await;
    assert!(
        !call.events.iter().any(|e| is_error(e, "store_unavailable")),
        "never reported lost: {:?}",
        call.types()
    );
    let rows = visit.stored(2).await;
    assert_eq!(originals(&rows), [CLINICIAN], "stored once: {rows:?}");
    let original = rows
        .iter()
        .find(|m| m["senderType"] != "translation")
        .unwrap();
    assert_eq!(original["id"], stored["payload"]["id"]);
    assert_eq!(
        rows.iter()
            .filter(|m| m["senderType"] == "translation")
            .count(),
        1,
        "interpreted once: {rows:?}"
    );
    assert_eq!(
        original["sttItemId"],
        item.as_str(),
        "the held utterance's row"
    );
}

/// Postgres stopped and started again mid-test (`pg_ctl` through `.ci/postgres.sh`): requests
/// during the outage get 503 `store_unavailable`, and the store reconnects by itself.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_is_503_during_the_outage_then_reconnects() {
    let _cluster = POSTGRES_CLUSTER.lock().await;
    let store = postgres_store().await;
    let srv = start_scripted_tuned(script(), |t| t.store = Some(store)).await;
    let user = srv.new_user("dr_pg").await;
    let created = user
        .create_conversation("Ana", "García", "1980-04-02")
        .await;
    let ctl = postgres_ctl;

    ctl("halt");
    let res = user.get("/conversations").send().await.unwrap();
    assert_eq!(
        support::error_code(res, 503).await,
        "store_unavailable",
        "a clear error during the outage"
    );
    let ready = srv.http.get(srv.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    ctl("resume");
    // The next calls reconnect; no restart of Tandem.
    let mut listed = Value::Null;
    for _ in 0..50 {
        let res = user.get("/conversations").send().await.unwrap();
        if res.status() == 200 {
            listed = res.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        listed.to_string().contains(created["id"].as_str().unwrap()),
        "the conversation from before the restart: {listed}"
    );
    srv.stop().await;
}

/// The cluster is one for the whole binary and the `postgres_` tests stop and start it: each
/// holds this for its whole run, so one's outage never lands in another's.
#[cfg(feature = "postgres")]
static POSTGRES_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Postgres store in a fresh schema of the cluster `.ci/postgres.sh start` runs.
#[cfg(feature = "postgres")]
async fn postgres_store() -> Arc<dyn tandem::store::Store> {
    Arc::new(support::postgres::fresh_store("faults").await.0)
}

/// `.ci/postgres.sh halt|resume`: stops the cluster keeping its data, or starts it again.
#[cfg(feature = "postgres")]
fn postgres_ctl(action: &str) {
    let status = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/postgres.sh"),
    )
    .arg(action)
    .status()
    .unwrap();
    assert!(status.success(), ".ci/postgres.sh {action}");
}

/// Postgres goes down while the clinician is speaking, so the utterance's transcript arrives
/// during the outage, and comes back a while later: the transcript is held and retried, the
/// client is told, and after the restart it is stored exactly once and interpreted as usual.
/// Then the next utterance works.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_during_a_live_utterance_holds_the_transcript_until_it_is_stored() {
    let _cluster = POSTGRES_CLUSTER.lock().await;
    let store = postgres_store().await;
    let srv = start_scripted_tuned(script(), |t| t.store = Some(store)).await;
    let visit = Visit::start(&srv).await;
    let mut call = visit.open_audio().await;
    // The utterance has begun (audio reached the provider, no transcript yet) when the
    // database stops.
    call.send_chunk().await;
    call.collect_idle(CHUNK_GAP).await;
    assert_eq!(call.captions(), 0, "{:?}", call.types());
    tokio::task::spawn_blocking(|| postgres_ctl("halt"))
        .await
        .unwrap();
    call.stream_until_utterance().await;
    held_then_stored(&mut call, &visit, || postgres_ctl("resume")).await;

    let mark = call.events.len();
    call.stream_rest().await;
    call.until_completed(2).await;
    assert!(
        !call.since(mark).iter().any(|e| e["type"] == "error"),
        "{:?}",
        call.types()
    );
    let rows = visit.stored(4).await;
    assert_eq!(originals(&rows), [CLINICIAN, PATIENT]);
    call.close().await;
    srv.stop().await;
}
