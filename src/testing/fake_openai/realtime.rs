//! The fake Realtime transcription socket: `GET /v1/realtime` (GA, beta and speaches dialects).
//!
//! It runs Tandem's own energy VAD ([`crate::stt::vad`]) over the PCM16 24 kHz it receives and,
//! per detected utterance (or per explicit commit), answers like OpenAI: `speech_started`,
//! `speech_stopped`, `committed` with a `previous_item_id` chain, a few `delta`s and `completed`
//! with the next line of the script. Key decision: the script and fault switches live in a
//! [`State`] shared by all connections, so a test scripts a conversation, not a socket, and a
//! reconnecting client continues where the last connection left off. Load runs, where every
//! connection is another conversation, switch to a per-connection cycling script
//! ([`State::script_per_connection`]), turn the request log off ([`State::unrecorded`]) and
//! watch arrivals through a [`Probe`] hook ([`State::with_probe`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::ws::{Message, WebSocket};
use warp::{Filter, Rejection, Reply};

use crate::stt::realtime::protocol::{
    ClientEvent, DetectedLanguage, ErrorBody, ServerEvent, SessionConfig, TurnDetection,
};
use crate::stt::realtime::session::decode_append;
use crate::stt::vad::{Vad, VadConfig, VadEvent};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLine {
    pub text: String,
    /// Sent as `languages: [{code}]` when not empty.
    pub languages: Vec<String>,
}

impl From<&str> for ScriptLine {
    fn from(text: &str) -> ScriptLine {
        ScriptLine {
            text: text.into(),
            languages: vec![],
        }
    }
}

/// What one handshake looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub authorization: Option<String>,
    pub openai_beta: Option<String>,
    pub query: HashMap<String, String>,
}

/// What the fake saw, reported as it happens to the hook given to [`State::with_probe`]; a
/// load generator times Tandem's output with it on the fake's own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A handshake was accepted (reported before the upgrade is answered, so before the
    /// client's dial returns). `connection` names the socket in later probes.
    Connected { connection: usize },
    /// An `input_audio_buffer.append` was read: `samples` is the total received on this
    /// connection so far, `at` when the frame was read.
    Audio {
        connection: usize,
        samples: u64,
        at: Instant,
    },
    /// A non-empty transcript is about to be sent as `completed` for `item_id`.
    Completed {
        connection: usize,
        item_id: String,
        at: Instant,
    },
}

/// The hook [`Probe`]s go to. Called on the connection's task, so it must not block.
pub type ProbeHook = Arc<dyn Fn(Probe) + Send + Sync>;

/// Script, fault switches and request log. Configure with the builder methods before
/// `FakeOpenAi::start`; read the log from `FakeOpenAi::realtime` afterwards.
#[derive(Default)]
pub struct State {
    script: Mutex<VecDeque<ScriptLine>>,
    /// Every connection answers from its own copy of `script`, cycling (load runs).
    per_connection: bool,
    /// Keep the request log and handshakes (tests read them); off for long load runs, where
    /// every append would be kept.
    unrecorded: bool,
    probe: Option<ProbeHook>,
    /// Required bearer token; `None` accepts any (or none).
    api_key: Option<String>,
    /// speaches behaviour: no `delta` events.
    completed_only: bool,
    /// Wait this long before each `completed`.
    completed_delay: Duration,
    /// Drop the TCP connection (no close frame) once, 300 ms into an utterance.
    drop_mid_utterance: AtomicBool,
    /// Drop the TCP connection once after this many appends (counted over all connections).
    drop_after_appends: Option<usize>,
    /// Send `error{code:"session_expired"}` and close with 1001 once after this many appends.
    expire_after_appends: Option<usize>,
    /// Send a malformed frame (and an unknown event type) once, after the session update.
    malformed_once: AtomicBool,
    /// The connection that receives this many appends (counted over all connections) goes
    /// mute: it keeps reading but never answers again, as a hung provider would.
    stall_after_appends: Option<usize>,
    /// While set, every connection reads and never answers.
    stall_always: AtomicBool,
    /// Refuse handshakes with HTTP 503 (a provider outage) while set.
    refusing: AtomicBool,
    faults_fired: Mutex<Vec<&'static str>>,
    /// Non-empty transcripts sent in `completed` events, over all connections.
    transcribed: Mutex<Vec<String>>,
    appends: AtomicUsize,
    log: Mutex<Vec<Value>>,
    handshakes: Mutex<Vec<Handshake>>,
    connections: AtomicUsize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("script", &self.script)
            .field("per_connection", &self.per_connection)
            .field("unrecorded", &self.unrecorded)
            .field("probe", &self.probe.is_some())
            .field("faults_fired", &self.faults_fired)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test thread that panicked while holding the lock already failed the test.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// A fake that answers utterances with `lines`, in order (then with empty transcripts).
    pub fn new<L: Into<ScriptLine>>(lines: impl IntoIterator<Item = L>) -> State {
        State {
            script: Mutex::new(lines.into_iter().map(Into::into).collect()),
            ..State::default()
        }
    }

    /// Rejects handshakes without `Authorization: Bearer <key>` (HTTP 401).
    pub fn require_key(mut self, key: &str) -> State {
        self.api_key = Some(key.into());
        self
    }

    /// Behave like speaches: completed events only.
    pub fn completed_only(mut self) -> State {
        self.completed_only = true;
        self
    }

    /// Delay every `completed`.
    pub fn completed_delay(mut self, delay: Duration) -> State {
        self.completed_delay = delay;
        self
    }

    /// Drop the socket once, in the middle of the first utterance long enough.
    pub fn drop_mid_utterance_once(self) -> State {
        self.drop_mid_utterance.store(true, Ordering::SeqCst);
        self
    }

    /// Drop the socket once after `n` appends.
    pub fn drop_after_appends(mut self, n: usize) -> State {
        self.drop_after_appends = Some(n);
        self
    }

    /// Expire the session once after `n` appends.
    pub fn session_expired_after_appends(mut self, n: usize) -> State {
        self.expire_after_appends = Some(n);
        self
    }

    /// Send one malformed frame after the session update.
    pub fn malformed_frame_once(self) -> State {
        self.malformed_once.store(true, Ordering::SeqCst);
        self
    }

    /// Each connection answers from the start of the script and cycles through it, instead of
    /// all connections sharing one script that then runs dry: a load run's conversations each
    /// get the whole dialogue, for as long as they speak.
    pub fn script_per_connection(mut self) -> State {
        self.per_connection = true;
        self
    }

    /// Keeps no request log ([`State::received`] stays empty, handshakes are only counted), so
    /// memory does not grow with every append of a long run.
    pub fn unrecorded(mut self) -> State {
        self.unrecorded = true;
        self
    }

    /// Reports every accepted connection, append and transcript to `hook`.
    pub fn with_probe(mut self, hook: impl Fn(Probe) + Send + Sync + 'static) -> State {
        self.probe = Some(Arc::new(hook));
        self
    }

    /// Go mute (read, never answer) on the connection that receives the `n`th append.
    pub fn stall_after_appends(mut self, n: usize) -> State {
        self.stall_after_appends = Some(n);
        self
    }

    /// Every connection, present and future, stops answering (until [`State::set_stall_always`]
    /// turns it off again).
    pub fn set_stall_always(&self, on: bool) {
        self.stall_always.store(on, Ordering::SeqCst);
    }

    /// While `on`, handshakes are refused with HTTP 503 (a provider outage).
    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Every client event received, as JSON, in order (over all connections).
    pub fn received(&self) -> Vec<Value> {
        lock(&self.log).clone()
    }

    /// The `type` of every client event received, except appends.
    pub fn received_types(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|v| v["type"].as_str().map(str::to_string))
            .filter(|t| t != "input_audio_buffer.append")
            .collect()
    }

    /// Every accepted or refused handshake.
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.handshakes).clone()
    }

    /// Number of WebSocket handshakes (accepted or refused).
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every non-empty transcript sent, in order: what a client must find stored.
    pub fn transcribed(&self) -> Vec<String> {
        lock(&self.transcribed).clone()
    }

    /// Which faults fired, in order.
    pub fn faults_fired(&self) -> Vec<&'static str> {
        lock(&self.faults_fired).clone()
    }

    fn fire(&self, fault: &'static str) {
        lock(&self.faults_fired).push(fault);
    }

    /// The answer to a connection's `turn`-th utterance (0-based).
    fn next_line(&self, turn: usize) -> ScriptLine {
        let mut script = lock(&self.script);
        let line = if self.per_connection {
            script.get(turn % script.len().max(1)).cloned()
        } else {
            script.pop_front()
        };
        line.unwrap_or(ScriptLine {
            text: String::new(),
            languages: vec![],
        })
    }

    fn probe(&self, probe: impl FnOnce() -> Probe) {
        if let Some(hook) = &self.probe {
            hook(probe());
        }
    }
}

/// `GET /v1/realtime` upgraded to the fake transcription socket.
pub fn route(state: Arc<State>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "realtime")
        .and(warp::get())
        .and(warp::ws())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("openai-beta"))
        .map(
            move |ws: warp::ws::Ws,
                  query,
                  authorization: Option<String>,
                  openai_beta: Option<String>| {
                let state = state.clone();
                let handshake = Handshake {
                    authorization,
                    openai_beta,
                    query,
                };
                let authorized = state.api_key.as_ref().is_none_or(|k| {
                    handshake.authorization.as_deref() == Some(&format!("Bearer {k}"))
                });
                let beta = handshake.openai_beta.is_some();
                state.connections.fetch_add(1, Ordering::SeqCst);
                let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                if !state.unrecorded {
                    lock(&state.handshakes).push(handshake);
                }
                if !authorized {
                    return warp::reply::with_status("invalid api key", StatusCode::UNAUTHORIZED)
                        .into_response();
                }
                if state.refusing.load(Ordering::SeqCst) {
                    state.fire("refused");
                    return warp::reply::with_status(
                        "upstream unavailable",
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response();
                }
                state.probe(|| Probe::Connected { connection: id });
                ws.on_upgrade(move |socket| async move {
                    Connection::new(state, beta, id).run(socket).await;
                })
                .into_response()
            },
        )
}

/// Per-connection protocol state.
struct Connection {
    state: Arc<State>,
    beta: bool,
    server_vad: bool,
    vad: Vad,
    /// Samples received on this connection / in the uncommitted buffer.
    received: u64,
    buffered: u64,
    speech_in_buffer: bool,
    speech_started_at: Option<u64>,
    current_item: Option<String>,
    previous_item: Option<String>,
    items: usize,
    /// Non-empty utterances answered on this connection (the per-connection script position).
    turns: usize,
    id: usize,
    /// A stall fault hit this connection: it reads and never answers.
    mute: bool,
}

/// Connection ids are unique in the process, so item ids never repeat across fakes (Tandem
/// ignores a transcript whose item id it already stored).
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

enum Next {
    Continue,
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Close with this code.
    Close(u16),
}

impl Connection {
    fn new(state: Arc<State>, beta: bool, id: usize) -> Connection {
        Connection {
            state,
            beta,
            server_vad: true,
            vad: Vad::new(VadConfig::default()),
            received: 0,
            buffered: 0,
            speech_in_buffer: false,
            speech_started_at: None,
            current_item: None,
            previous_item: None,
            items: 0,
            turns: 0,
            id,
            mute: false,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let created = if self.beta {
            json!({"type":"transcription_session.created","session":{"object":"realtime.transcription_session"}})
        } else {
            json!({"type":"session.created","session":{"type":"transcription"}})
        };
        if socket
            .send(Message::text(created.to_string()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                return;
            }
            let read_at = Instant::now();
            let Ok(text) = message.to_str() else { continue };
            let mut out = Vec::new();
            let parsed = if self.state.unrecorded {
                serde_json::from_str::<ClientEvent>(text).map_err(|e| e.to_string())
            } else {
                let raw: Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                lock(&self.state.log).push(raw.clone());
                serde_json::from_value::<ClientEvent>(raw).map_err(|e| e.to_string())
            };
            if self.mute || self.state.stall_always.load(Ordering::SeqCst) {
                continue;
            }
            let next = match parsed {
                Ok(event) => self.on_event(event, read_at, &mut out).await,
                Err(e) => {
                    out.push(error_event("invalid_request_error", "invalid_event", &e));
                    Next::Continue
                }
            };
            for frame in out {
                if socket.send(frame).await.is_err() {
                    return;
                }
            }
            match next {
                Next::Continue => {}
                Next::Drop => {
                    // Read what the client already sent before dropping: closing a socket with
                    // unread input makes the kernel send RST, which would discard events the
                    // client has not read yet and make the test depend on timing. The drained
                    // events are not processed: the provider "forgot" them, as on a real drop.
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_millis(100), socket.next()).await
                    {
                    }
                    return;
                }
                Next::Close(code) => {
                    let _ = socket.send(Message::close_with(code, "going away")).await;
                    return;
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        event: ClientEvent,
        read_at: Instant,
        out: &mut Vec<Message>,
    ) -> Next {
        match event {
            ClientEvent::SessionUpdate { session } => {
                let td = match &session {
                    SessionConfig::Ga(s) => s.audio.input.turn_detection.clone(),
                    SessionConfig::Beta(s) => s.turn_detection.clone(),
                };
                self.configure(td);
                out.push(event_msg(&ServerEvent::SessionUpdated {
                    session: serde_json::to_value(&session).unwrap_or_default(),
                }));
                self.maybe_malformed(out);
            }
            ClientEvent::TranscriptionSessionUpdate { session } => {
                self.configure(session.turn_detection.clone());
                out.push(Message::text(
                    json!({"type":"transcription_session.updated","session": session}).to_string(),
                ));
                self.maybe_malformed(out);
            }
            ClientEvent::Append { audio } => return self.on_append(&audio, read_at, out).await,
            ClientEvent::Commit => {
                if self.buffered < 2400 {
                    out.push(error_event(
                        "invalid_request_error",
                        "input_audio_buffer_commit_empty",
                        "buffer too small. Expected at least 100ms of audio",
                    ));
                } else {
                    self.commit(None, out).await;
                }
            }
            ClientEvent::Clear => {
                self.buffered = 0;
                self.speech_in_buffer = false;
                out.push(Message::text(
                    json!({"type":"input_audio_buffer.cleared"}).to_string(),
                ));
            }
        }
        Next::Continue
    }

    fn configure(&mut self, turn_detection: Option<TurnDetection>) {
        self.server_vad = turn_detection.is_some();
        if let Some(TurnDetection::ServerVad {
            silence_duration_ms: Some(ms),
            ..
        }) = turn_detection
        {
            self.vad = Vad::new(VadConfig {
                min_silence: Duration::from_millis(u64::from(ms)),
                ..VadConfig::default()
            });
        }
    }

    fn maybe_malformed(&self, out: &mut Vec<Message>) {
        if self.state.malformed_once.swap(false, Ordering::SeqCst) {
            self.state.fire("malformed_frame");
            out.push(Message::text(
                "{\"type\": \"input_audio_buffer.committed\", \"item_id\": 7",
            ));
            out.push(Message::text(
                json!({"type":"rate_limits.updated","rate_limits":[]}).to_string(),
            ));
        }
    }

    async fn on_append(&mut self, audio: &str, read_at: Instant, out: &mut Vec<Message>) -> Next {
        let Some(samples) = decode_append(audio) else {
            out.push(error_event(
                "invalid_request_error",
                "invalid_audio",
                "audio is not base64",
            ));
            return Next::Continue;
        };
        let appends = self.state.appends.fetch_add(1, Ordering::SeqCst) + 1;
        if self.state.drop_after_appends == Some(appends) {
            self.state.fire("drop_after_appends");
            return Next::Drop;
        }
        if self.state.stall_after_appends == Some(appends) {
            self.state.fire("stall");
            self.mute = true;
            return Next::Continue;
        }
        if self.state.expire_after_appends == Some(appends) {
            self.state.fire("session_expired");
            out.push(error_event(
                "invalid_request_error",
                "session_expired",
                "Your session hit the maximum duration of 60 minutes.",
            ));
            return Next::Close(1001);
        }
        let base = self.received;
        self.received += samples.len() as u64;
        self.buffered += samples.len() as u64;
        let (connection, received) = (self.id, self.received);
        self.state.probe(|| Probe::Audio {
            connection,
            samples: received,
            at: read_at,
        });
        for event in self.vad.push(&samples) {
            match event {
                VadEvent::SpeechStart { at } => {
                    self.speech_in_buffer = true;
                    self.speech_started_at = Some(at);
                    if self.server_vad {
                        let item = self.new_item();
                        self.current_item = Some(item.clone());
                        out.push(event_msg(&ServerEvent::SpeechStarted {
                            item_id: item,
                            audio_start_ms: at / 24,
                        }));
                    }
                }
                VadEvent::SpeechEnd { at } => {
                    self.speech_started_at = None;
                    if self.server_vad {
                        let item = self.current_item.take().unwrap_or_else(|| self.new_item());
                        out.push(event_msg(&ServerEvent::SpeechStopped {
                            item_id: item.clone(),
                            audio_end_ms: at / 24,
                        }));
                        self.commit(Some(item), out).await;
                    }
                }
            }
        }
        if let Some(start) = self.speech_started_at {
            let end = base + samples.len() as u64;
            if end.saturating_sub(start) >= 300 * 24
                && self.state.drop_mid_utterance.swap(false, Ordering::SeqCst)
            {
                self.state.fire("drop_mid_utterance");
                return Next::Drop;
            }
        }
        Next::Continue
    }

    fn new_item(&mut self) -> String {
        self.items += 1;
        format!("item_c{}_{}", self.id, self.items)
    }

    async fn commit(&mut self, item: Option<String>, out: &mut Vec<Message>) {
        let item_id = item
            .or_else(|| self.current_item.take())
            .unwrap_or_else(|| self.new_item());
        out.push(event_msg(&ServerEvent::Committed {
            item_id: item_id.clone(),
            previous_item_id: self.previous_item.replace(item_id.clone()),
        }));
        let line = if self.speech_in_buffer {
            self.turns += 1;
            self.state.next_line(self.turns - 1)
        } else {
            ScriptLine {
                text: String::new(),
                languages: vec![],
            }
        };
        self.buffered = 0;
        self.speech_in_buffer = self.vad.in_speech();
        if !self.state.completed_only {
            let words: Vec<&str> = line.text.split_inclusive(' ').collect();
            for word in words {
                out.push(event_msg(&ServerEvent::TranscriptionDelta {
                    item_id: item_id.clone(),
                    delta: word.to_string(),
                }));
            }
        }
        if !self.state.completed_delay.is_zero() {
            tokio::time::sleep(self.state.completed_delay).await;
        }
        if !line.text.is_empty() {
            let connection = self.id;
            self.state.probe(|| Probe::Completed {
                connection,
                item_id: item_id.clone(),
                at: Instant::now(),
            });
            lock(&self.state.transcribed).push(line.text.clone());
        }
        out.push(event_msg(&ServerEvent::TranscriptionCompleted {
            item_id,
            transcript: line.text,
            logprobs: None,
            languages: (!line.languages.is_empty()).then(|| {
                line.languages
                    .into_iter()
                    .map(|code| DetectedLanguage { code })
                    .collect()
            }),
        }));
    }
}

fn event_msg(event: &ServerEvent) -> Message {
    Message::text(serde_json::to_string(event).unwrap_or_default())
}

fn error_event(kind: &str, code: &str, message: &str) -> Message {
    event_msg(&ServerEvent::Error {
        error: ErrorBody {
            kind: Some(kind.into()),
            code: Some(code.into()),
            message: message.into(),
        },
    })
}
