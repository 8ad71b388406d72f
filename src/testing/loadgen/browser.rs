//! One simulated browser tab, speaking the original frontend's protocol: log in over REST,
//! create a conversation, open the control socket (`/ws`, `select_conversation`) and the audio
//! socket (`/transcription`), then send the recording's chunks as
//! `input_audio_buffer.append` at real-time pace while reading every event.
//!
//! Key decision: one task per tab owns both sockets and `select!`s over the next chunk's
//! deadline, both sockets' reads and the stop signal, so a tab is one schedule and its
//! closing handshake is ordered after its last chunk.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::collector::{Observation, Observer};
use super::recording::Send;
use super::Error;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// REST access to the server under load.
#[derive(Clone)]
pub struct Api {
    base: Url,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: Url) -> Api {
        Api {
            base,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    fn ws_url(&self, path: &str, query: &str) -> String {
        let mut url = self.base.clone();
        // Both schemes are known to be valid here.
        let _ = url.set_scheme(if url.scheme() == "https" { "wss" } else { "ws" });
        url.set_path(path);
        url.set_query(Some(query));
        url.to_string()
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), Error> {
        let res = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .map_err(|e| Error::setup("health check", e))?;
        expect_status(res, 200, "health check").await.map(drop)
    }

    /// Registers `username` (an existing account is fine) and logs in; returns the access
    /// token.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, Error> {
        let credentials = json!({"username": username, "password": password});
        let res = self
            .http
            .post(self.url("/api/v1/auth/register"))
            .json(&credentials)
            .send()
            .await
            .map_err(|e| Error::setup("register", e))?;
        if res.status() != 409 {
            expect_status(res, 201, "register").await?;
        }
        let res = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&credentials)
            .send()
            .await
            .map_err(|e| Error::setup("login", e))?;
        let body = expect_status(res, 200, "login").await?;
        body["accessToken"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::setup("login", "no accessToken in the reply"))
    }

    /// `POST /api/v1/conversations` as the original form sends it; returns the id.
    pub async fn create_conversation(&self, token: &str, n: usize) -> Result<String, Error> {
        let res = self
            .http
            .post(self.url("/api/v1/conversations"))
            .bearer_auth(token)
            .json(&json!({
                "firstName": "Load",
                "lastName": format!("Patient {n}"),
                "dob": "1970-01-01",
                "patientLanguage": "es",
            }))
            .send()
            .await
            .map_err(|e| Error::setup("create conversation", e))?;
        let body = expect_status(res, 201, "create conversation").await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::setup("create conversation", "no id in the reply"))
    }
}

async fn expect_status(
    res: reqwest::Response,
    status: u16,
    what: &'static str,
) -> Result<Value, Error> {
    let got = res.status();
    let text = res.text().await.unwrap_or_default();
    if got != status {
        return Err(Error::setup(what, format!("HTTP {got}: {text}")));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A tab whose sockets are open and whose conversation is live.
pub struct Tab {
    conversation: usize,
    control: Ws,
    audio: Ws,
}

async fn connect(url: &str) -> Result<Ws, String> {
    // Browsers disable Nagle's algorithm on WebSockets; so does this client.
    tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Reads text frames until one of type `kind`; other frames are handed to `other`.
async fn until(ws: &mut Ws, kind: &str, mut other: impl FnMut(&Value)) -> Result<(), String> {
    while let Some(message) = ws.next().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                if value["type"] == kind {
                    return Ok(());
                }
                other(&value);
            }
            Message::Close(frame) => {
                return Err(format!(
                    "closed before {kind}: {}",
                    frame.map_or("no code".into(), |f| format!("{} {}", f.code, f.reason))
                ))
            }
            _ => {}
        }
    }
    Err(format!("ended before {kind}"))
}

impl Tab {
    /// Opens the control socket and selects the conversation, then opens the audio socket and
    /// waits for the conversation to go live (`openai_connected`).
    ///
    /// # Errors
    /// A socket failed, closed or stayed silent for `within`; the text says which.
    pub async fn open(
        api: &Api,
        token: &str,
        conversation: usize,
        conversation_id: &str,
        within: Duration,
        observer: &Observer,
    ) -> Result<Tab, String> {
        let open = async {
            let mut control = connect(&api.ws_url("/ws", &format!("token={token}"))).await?;
            until(&mut control, "system", |_| {}).await?;
            let select = json!({"type": "select_conversation", "payload": {"conversationId": conversation_id}});
            control
                .send(Message::text(select.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            until(&mut control, "conversation_selected", |v| {
                report_error("control", v, observer);
            })
            .await?;
            let query = format!("conversationId={conversation_id}&token={token}");
            let mut audio = connect(&api.ws_url("/transcription", &query)).await?;
            until(&mut audio, "openai_connected", |v| {
                report_error("audio", v, observer);
            })
            .await?;
            Ok(Tab {
                conversation,
                control,
                audio,
            })
        };
        tokio::time::timeout(within, open)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
    }

    /// Streams `sends` starting at `start`, one every `pace`, reading both sockets throughout;
    /// after `stop` fires, closes both sockets and waits (at most `linger`) for the server's
    /// close.
    pub async fn run(
        mut self,
        sends: Arc<[Send]>,
        start: Instant,
        pace: Duration,
        stop: CancellationToken,
        linger: Duration,
        observer: Observer,
    ) {
        let mut next = 0usize;
        let mut audio_open = true;
        let mut control_open = true;
        let mut closing = false;
        let mut deadline = None;
        while audio_open || control_open {
            let due = start + pace * u32::try_from(next).unwrap_or(u32::MAX);
            tokio::select! {
                () = tokio::time::sleep_until(due), if !closing && next < sends.len() => {
                    let send = &sends[next];
                    next += 1;
                    let now = Instant::now();
                    observer.send(Observation::Sent {
                        conversation: self.conversation,
                        pcm_total: send.pcm_total,
                        at: now.into_std(),
                        lag: now.saturating_duration_since(due),
                    });
                    if let Err(e) = self.audio.send(Message::Text(send.frame.clone())).await {
                        observer.error(format!("audio socket write failed: {e}"));
                        audio_open = false;
                    }
                }
                message = self.audio.next(), if audio_open => {
                    audio_open = on_audio(message, closing, &observer);
                }
                message = self.control.next(), if control_open => {
                    control_open = on_control(message, closing, &observer);
                }
                () = stop.cancelled(), if !closing => {
                    closing = true;
                    deadline = Some(Instant::now() + linger);
                    let bye = || Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                    audio_open &= self.audio.send(bye()).await.is_ok();
                    control_open &= self.control.send(bye()).await.is_ok();
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(due)), if deadline.is_some() => {
                    observer.error("server did not complete the closing handshake");
                    break;
                }
            }
        }
    }
}

/// An `error` event, counted by socket and code.
fn report_error(socket: &str, event: &Value, observer: &Observer) {
    if event["type"] == "error" {
        let code = event["code"].as_str().unwrap_or("no code");
        observer.error(format!("{socket} socket: error event {code}"));
    }
}

/// A close the client did not ask for, or a close code other than normal.
fn report_close(socket: &str, frame: Option<&CloseFrame>, closing: bool, observer: &Observer) {
    let code = frame.map(|f| f.code);
    let normal = matches!(code, None | Some(CloseCode::Normal));
    if !closing || !normal {
        let code = code.map_or("no code".into(), |c| u16::from(c).to_string());
        observer.error(format!("{socket} socket closed by the server: {code}"));
    }
}

type Read = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Handles one read from the audio socket; false once it is closed.
fn on_audio(message: Read, closing: bool, observer: &Observer) -> bool {
    let text = match message {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(frame))) => {
            report_close("audio", frame.as_ref(), closing, observer);
            return false;
        }
        Some(Ok(_)) => return true,
        Some(Err(e)) => {
            observer.error(format!("audio socket read failed: {e}"));
            return false;
        }
        None => {
            if !closing {
                observer.error("audio socket ended without a close");
            }
            return false;
        }
    };
    let at = std::time::Instant::now();
    let event: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
    let payload = &event["payload"];
    let string = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match event["type"].as_str().unwrap_or_default() {
        "new_message" if payload["originalMessageId"].is_null() => {
            observer.send(Observation::Original {
                item_id: string(&payload["sttItemId"]),
                message_id: string(&payload["id"]),
                at,
            });
        }
        "new_message" => observer.send(Observation::Translation {
            original_id: string(&payload["originalMessageId"]),
            at,
        }),
        "tts_audio" => observer.send(Observation::Tts {
            original_id: string(&payload["originalMessageId"]),
            at,
        }),
        "openai_disconnected" => observer.error("audio socket: openai_disconnected"),
        _ => report_error("audio", &event, observer),
    }
    true
}

/// Handles one read from the control socket; false once it is closed.
fn on_control(message: Read, closing: bool, observer: &Observer) -> bool {
    match message {
        Some(Ok(Message::Text(text))) => {
            let event: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            report_error("control", &event, observer);
            true
        }
        Some(Ok(Message::Close(frame))) => {
            report_close("control", frame.as_ref(), closing, observer);
            false
        }
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            observer.error(format!("control socket read failed: {e}"));
            false
        }
        None => {
            if !closing {
                observer.error("control socket ended without a close");
            }
            false
        }
    }
}
