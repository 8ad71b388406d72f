//! The socket side of a Realtime transcription session: dial, serve, reconnect, rotate.
//!
//! [`RealtimeStt::open`] dials once (so bad credentials fail the call), then spawns one task per
//! session that `select!`s over the input channel, the socket and the session's timers, and feeds
//! everything through the pure [`Session`]. Key decision: the task never stops consuming input
//! while the provider is away; audio keeps flowing into the bounded replay ring during backoff,
//! so the browser is not throttled by a provider blip and nothing is lost within the ring's bound.
//!
//! Recoverable: close codes 1001/1005/1006/1011/1012/1013/1015, transport errors, a closed
//! socket, `session_expired`, the watchdog, handshake timeouts and HTTP 408/429/5xx. Fatal:
//! HTTP 401/403 (and other 4xx), other close codes, exhausted retries, and a provider that
//! accepts every connection but trips the watchdog more than `max_retries` times in a row with
//! no transcript in between (a successful dial alone is not progress, or a hung provider would
//! be redialled forever); they end the session with `Failed { item_id: None, .. }`,
//! `Status(Disconnected)` and `Closed`.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::protocol::ServerEvent;
use super::session::{Action, Flow, Session, SessionConfig};
use super::{Dialect, RealtimeConfig};
use crate::stt::{
    ConnectionStatus, Error, SpeechToText, SttEvent, SttInput, SttOptions, SttSession,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Capacity of [`SttSession::audio`]: about 2–10 s of 20–100 ms frames.
const INPUT_CAPACITY: usize = 100;
/// Capacity of [`SttSession::events`].
const EVENT_CAPACITY: usize = 256;
/// Close codes after which a new session is worth trying (the openai-python list).
const RECOVERABLE_CLOSE: [u16; 7] = [1001, 1005, 1006, 1011, 1012, 1013, 1015];
/// Rotation is forced this long after `max_session_age` even mid-turn, before the provider's cap.
const ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The OpenAI Realtime transcription client (GA, beta or speaches, by config).
#[derive(Debug, Clone)]
pub struct RealtimeStt {
    cfg: Arc<RealtimeConfig>,
}

impl RealtimeStt {
    /// A client for the configured provider; nothing is dialled until [`SpeechToText::open`].
    pub fn new(cfg: RealtimeConfig) -> RealtimeStt {
        RealtimeStt { cfg: Arc::new(cfg) }
    }
}

#[async_trait::async_trait]
impl SpeechToText for RealtimeStt {
    async fn open(&self, options: SttOptions) -> Result<SttSession, Error> {
        let url = self.cfg.ws_url()?;
        let update = serde_json::to_string(&self.cfg.session_update(&options))
            .map_err(|e| Error::Config(format!("session update: {e}")))?;
        let mut dialer = Dialer {
            cfg: self.cfg.clone(),
            url: url.to_string(),
            update,
        };
        let socket = match dialer.dial().await {
            Ok(s) => s,
            Err(DialError::Fatal(e)) => return Err(e),
            Err(DialError::Retry(reason)) => {
                return Err(Error::Unavailable {
                    attempts: 1,
                    reason,
                })
            }
        };
        let (audio, input) = mpsc::channel(INPUT_CAPACITY);
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let driver = Driver {
            session: Session::new(SessionConfig::from_config(&self.cfg)),
            cfg: self.cfg.clone(),
            dialer,
            input,
            input_open: true,
            events: events_tx,
            close_deadline: None,
            watchdog_trips: 0,
        };
        tokio::spawn(driver.run(socket));
        Ok(SttSession { audio, events })
    }
}

enum DialError {
    Fatal(Error),
    Retry(String),
}

struct Dialer {
    cfg: Arc<RealtimeConfig>,
    url: String,
    /// The serialized session update, re-sent on every connection.
    update: String,
}

impl Dialer {
    async fn dial(&mut self) -> Result<Socket, DialError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| DialError::Fatal(Error::Config(format!("realtime URL: {e}"))))?;
        let headers = request.headers_mut();
        if let Some(key) = &self.cfg.api_key {
            let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                DialError::Fatal(Error::Config("API key is not a valid header".into()))
            })?;
            headers.insert("Authorization", value);
        }
        if self.cfg.dialect == Dialect::Beta {
            headers.insert("OpenAI-Beta", HeaderValue::from_static("realtime=v1"));
        }
        // Nagle off: appends are small and frequent, and Nagle holding one back until the
        // provider's delayed ACK added ≈40 ms to the tail of chunk → PCM latency under load.
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (mut socket, _) = match timeout(self.cfg.handshake_timeout, connect).await {
            Err(_) => return Err(DialError::Retry("handshake timed out".into())),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                return Err(match status {
                    401 | 403 => DialError::Fatal(Error::Unauthorized { status }),
                    408 | 429 | 500..=599 => DialError::Retry(format!("HTTP {status}")),
                    _ => DialError::Fatal(Error::Rejected { status }),
                });
            }
            Ok(Err(tungstenite::Error::Url(e))) => {
                return Err(DialError::Fatal(Error::Config(format!(
                    "realtime URL: {e}"
                ))))
            }
            Ok(Err(e)) => return Err(DialError::Retry(e.to_string())),
            Ok(Ok(pair)) => pair,
        };
        socket
            .send(Message::text(self.update.clone()))
            .await
            .map_err(|e| DialError::Retry(e.to_string()))?;
        Ok(socket)
    }
}

/// Why [`Driver::serve`] returned.
enum Ended {
    /// Graceful close completed.
    Closed,
    /// The consumer dropped the events receiver.
    ConsumerGone,
    /// The connection is gone; reconnect.
    Lost(String),
    /// Unrecoverable.
    Fatal(Error),
}

struct Driver {
    cfg: Arc<RealtimeConfig>,
    session: Session,
    dialer: Dialer,
    /// Bounded input; see [`SttSession::audio`].
    input: mpsc::Receiver<SttInput>,
    input_open: bool,
    /// Bounded output; sends wait when full (see [`SttSession::events`]).
    events: mpsc::Sender<SttEvent>,
    /// After close: give up waiting for the last transcripts at this instant.
    close_deadline: Option<Instant>,
    /// Watchdog trips since the last transcript; over `reconnect.max_retries` is fatal.
    watchdog_trips: u32,
}

impl Driver {
    async fn run(mut self, first: Socket) {
        let mut socket = first;
        loop {
            let mut out = Vec::new();
            self.session.on_connected(&mut out);
            if !self
                .emit(SttEvent::Status(ConnectionStatus::Connected))
                .await
            {
                return;
            }
            let ended = self.serve(&mut socket, out).await;
            match ended {
                Ended::Closed => {
                    let _ = socket
                        .close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        }))
                        .await;
                    let _ = self
                        .emit(SttEvent::Status(ConnectionStatus::Disconnected))
                        .await;
                    let _ = self.emit(SttEvent::Closed).await;
                    return;
                }
                Ended::ConsumerGone => {
                    let _ = socket.close(None).await;
                    return;
                }
                Ended::Fatal(e) => return self.fail(e).await,
                Ended::Lost(reason) => {
                    tracing::warn!(%reason, "realtime transcription connection lost");
                    drop(socket);
                    match self.reconnect().await {
                        Ok(Some(s)) => socket = s,
                        Ok(None) => return,
                        Err(e) => return self.fail(e).await,
                    }
                }
            }
        }
    }

    async fn fail(&mut self, e: Error) {
        tracing::error!(code = e.code(), error = %e, "realtime transcription session failed");
        let _ = self
            .emit(SttEvent::Failed {
                item_id: None,
                code: e.code().to_string(),
                message: e.to_string(),
            })
            .await;
        let _ = self
            .emit(SttEvent::Status(ConnectionStatus::Disconnected))
            .await;
        let _ = self.emit(SttEvent::Closed).await;
    }

    /// Backoff and redial, buffering input meanwhile. `Ok(None)`: the consumer is gone, or the
    /// session closed with nothing left to transcribe.
    async fn reconnect(&mut self) -> Result<Option<Socket>, Error> {
        let mut out = Vec::new();
        self.session.on_disconnected(&mut out);
        if !self.carry_out(None, out).await {
            return Ok(None);
        }
        let mut reason = String::new();
        for attempt in 1..=self.cfg.reconnect.max_retries {
            if self.session.is_drained() {
                let _ = self
                    .emit(SttEvent::Status(ConnectionStatus::Disconnected))
                    .await;
                let _ = self.emit(SttEvent::Closed).await;
                return Ok(None);
            }
            if !self
                .emit(SttEvent::Status(ConnectionStatus::Reconnecting { attempt }))
                .await
            {
                return Ok(None);
            }
            let wait = self
                .cfg
                .reconnect
                .delay(attempt, rand::rng().random::<f64>());
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = sleep_until(until) => break,
                    input = self.input.recv(), if self.input_open => {
                        let mut out = Vec::new();
                        self.on_input(input, &mut out);
                        if !self.carry_out(None, out).await {
                            return Ok(None);
                        }
                    }
                }
            }
            match self.dialer.dial().await {
                Ok(socket) => return Ok(Some(socket)),
                Err(DialError::Fatal(e)) => return Err(e),
                Err(DialError::Retry(r)) => {
                    tracing::warn!(attempt, reason = %r, "realtime transcription reconnect failed");
                    reason = r;
                }
            }
        }
        Err(Error::Unavailable {
            attempts: self.cfg.reconnect.max_retries,
            reason,
        })
    }

    fn on_input(&mut self, input: Option<SttInput>, out: &mut Vec<Action>) {
        match input {
            Some(SttInput::Audio(frame)) => self.session.on_audio(&frame, out),
            Some(SttInput::Commit) => self.session.on_commit(out),
            Some(SttInput::Close) | None => {
                if input.is_none() {
                    self.input_open = false;
                }
                if !self.session.is_closing() {
                    self.close_deadline = Some(Instant::now() + self.cfg.watchdog * 2);
                }
                self.session.on_close(out);
            }
        }
    }

    async fn serve(&mut self, socket: &mut Socket, first: Vec<Action>) -> Ended {
        if !self.carry_out(Some(socket), first).await {
            return Ended::ConsumerGone;
        }
        let mut connected_at = Instant::now();
        // The watchdog counts from the later of the provider's last message and the moment we
        // began waiting for one: a commit sent after a long quiet spell (a browser that stopped
        // sending, then closed) gets the full period for its answer, not none.
        let mut last_server = Instant::now();
        let mut was_awaiting = self.session.awaiting_server();
        loop {
            if self.session.is_drained() {
                return Ended::Closed;
            }
            let now = Instant::now();
            let awaiting = self.session.awaiting_server();
            if awaiting && !was_awaiting {
                last_server = last_server.max(now);
            }
            was_awaiting = awaiting;
            let age = now.duration_since(connected_at);
            if age >= self.cfg.max_session_age
                && (self.session.at_turn_boundary()
                    || age >= self.cfg.max_session_age + ROTATION_GRACE)
            {
                if let Some(ended) = self.rotate(socket).await {
                    return ended;
                }
                let mut out = Vec::new();
                self.session.on_connected(&mut out);
                if !self.carry_out(Some(socket), out).await {
                    return Ended::ConsumerGone;
                }
                connected_at = Instant::now();
                last_server = connected_at;
                continue;
            }
            let mut deadline = connected_at + self.cfg.max_session_age;
            if awaiting {
                deadline = deadline.min(last_server + self.cfg.watchdog);
            }
            if let Some(d) = self.session.next_deadline() {
                deadline = deadline.min(d);
            }
            if let Some(d) = self.close_deadline {
                deadline = deadline.min(d);
            }
            let mut out = Vec::new();
            let reading_input = self.input_open && !self.session.is_closing();
            tokio::select! {
                message = socket.next() => {
                    last_server = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<ServerEvent>(text.as_str()) {
                                Ok(event) => {
                                    if self.session.on_server(event, last_server, &mut out) == Flow::Reconnect {
                                        if !self.carry_out(None, out).await {
                                            return Ended::ConsumerGone;
                                        }
                                        return Ended::Lost("provider session expired".into());
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "malformed realtime event ignored");
                                    out.push(Action::Emit(SttEvent::Warning {
                                        code: "stt_malformed_event".into(),
                                        message: format!("ignored a malformed provider event: {e}"),
                                    }));
                                }
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            if RECOVERABLE_CLOSE.contains(&code) {
                                return Ended::Lost(format!("closed with {code} {reason}"));
                            }
                            return Ended::Fatal(Error::ClosedByProvider { code, reason });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("connection closed".into()),
                    }
                }
                input = self.input.recv(), if reading_input => self.on_input(input, &mut out),
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if self.close_deadline.is_some_and(|d| now >= d) {
                        out.push(Action::Emit(SttEvent::Warning {
                            code: "stt_drain_timeout".into(),
                            message: "closed before the last transcripts arrived".into(),
                        }));
                        if !self.carry_out(None, out).await {
                            return Ended::ConsumerGone;
                        }
                        return Ended::Closed;
                    }
                    if self.session.awaiting_server() && now >= last_server + self.cfg.watchdog {
                        self.watchdog_trips += 1;
                        if self.watchdog_trips > self.cfg.reconnect.max_retries {
                            return Ended::Fatal(Error::Unavailable {
                                attempts: self.watchdog_trips,
                                reason: "the provider accepts connections but stops answering"
                                    .into(),
                            });
                        }
                        return Ended::Lost("watchdog: no answer from the provider".into());
                    }
                    self.session.on_tick(now, &mut out);
                }
            }
            if !self.carry_out(Some(socket), out).await {
                return Ended::ConsumerGone;
            }
        }
    }

    /// Opens the next provider session and swaps it in. `None` = swapped; `Some` = stop serving.
    async fn rotate(&mut self, socket: &mut Socket) -> Option<Ended> {
        tracing::info!("rotating the realtime transcription session before its maximum age");
        match self.dialer.dial().await {
            Ok(new) => {
                let mut old = std::mem::replace(socket, new);
                let _ = old.close(None).await;
                let mut out = Vec::new();
                self.session.on_disconnected(&mut out);
                if !self.carry_out(None, out).await {
                    return Some(Ended::ConsumerGone);
                }
                None
            }
            Err(DialError::Fatal(e)) => Some(Ended::Fatal(e)),
            Err(DialError::Retry(r)) => Some(Ended::Lost(format!("rotation failed: {r}"))),
        }
    }

    /// Carries out actions in order. Emits always happen; sends stop at the first socket error
    /// (the ring replays that audio). `false` when the consumer is gone.
    async fn carry_out(&mut self, mut socket: Option<&mut Socket>, actions: Vec<Action>) -> bool {
        for action in actions {
            match action {
                Action::Emit(event) => {
                    if matches!(event, SttEvent::Final { .. }) {
                        self.watchdog_trips = 0;
                    }
                    if !self.emit(event).await {
                        return false;
                    }
                }
                Action::Send(event) => {
                    if let Some(s) = socket.as_deref_mut() {
                        let text = match serde_json::to_string(&event) {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::error!(error = %e, "client event not serializable");
                                continue;
                            }
                        };
                        if let Err(e) = s.send(Message::text(text)).await {
                            tracing::warn!(error = %e, "realtime send failed; will replay after reconnect");
                            socket = None;
                        }
                    }
                }
            }
        }
        true
    }

    async fn emit(&self, event: SttEvent) -> bool {
        self.events.send(event).await.is_ok()
    }
}
