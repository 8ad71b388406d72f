//! What the two WebSockets share: authentication after the upgrade (so a bad token gets the
//! original's close code 4001 instead of a bare HTTP error the browser cannot read), the
//! writer task that drains a client's hub queue onto the socket, and how a bad client frame is
//! answered ([`Problem`] for a frame the socket can read but not act on, [`ReadFailure`] for one
//! the protocol layer refused).

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::http::HeaderMap;
use warp::ws::{Message, WebSocket};

use super::filters::{bearer, query_param};
use crate::auth::{self, Authenticator, Principal};
use crate::pipeline::event::ServerEvent;
use crate::pipeline::hub::{ClientId, ClientRx, ClientTx, Hub, MAX_DROPPED};

/// Close codes of the original protocol, plus the RFC 6455 ones we use.
pub mod close {
    /// Normal closure: the visit ended.
    pub const NORMAL: u16 = 1000;
    /// Missing or invalid token (original backend).
    pub const UNAUTHORIZED: u16 = 4001;
    /// A text frame that is not UTF-8 (RFC 6455 "invalid frame payload data").
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Missing `conversationId`, unknown or ended conversation (policy violation).
    pub const POLICY: u16 = 1008;
    /// A frame over the configured size.
    pub const TOO_BIG: u16 = 1009;
    /// Server error.
    pub const SERVER_ERROR: u16 = 1011;
    /// The client fell too far behind; it should reconnect and reload.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// The token from `Authorization: Bearer` or, as browsers must send it on a WebSocket
/// handshake, `?token=` (REST does not accept the query form). The header wins. A refused
/// socket gets an `error` event with the error's code before the close 4001, so a client can
/// tell an expired token (refresh and reconnect) from a bad one.
///
/// # Errors
/// [`auth::Error::InvalidToken`] when there is no token or it is bad,
/// [`auth::Error::TokenExpired`] when it expired (the client should refresh and reconnect).
pub fn authenticate(
    auth: &Authenticator,
    headers: &HeaderMap,
    query: &str,
) -> Result<Principal, auth::Error> {
    let token = bearer(headers)
        .map(str::to_owned)
        .or_else(|| query_param(query, "token"))
        .ok_or(auth::Error::InvalidToken)?;
    auth.authenticate(&token).inspect_err(|e| {
        tracing::info!(code = e.code(), "websocket authentication failed");
    })
}

/// A close code and its reason.
pub type CloseRequest = (u16, &'static str);

/// What server shutdown needs from the open sockets: warp does not wait for upgraded
/// connections, so without this the process could exit with events (a drained utterance's
/// translation) still queued for a client. Shutdown first drains the pipeline, then asks every
/// socket to close: each flushes its queue and sends 1001, and shutdown waits for the writers.
#[derive(Clone, Default)]
pub struct SocketShutdown {
    /// Cancelled once: every socket reader stops and its socket closes gracefully.
    closing: CancellationToken,
    /// Every socket's writer task, so shutdown can wait for the flushes.
    writers: TaskTracker,
}

impl SocketShutdown {
    /// Closes every socket and waits up to `deadline` for their queues to be written out.
    pub async fn close_all(&self, deadline: Duration) {
        self.closing.cancel();
        self.writers.close();
        if tokio::time::timeout(deadline, self.writers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.writers.len(),
                "sockets still flushing at the drain deadline"
            );
        }
    }
}
/// A client frame the socket read but cannot act on; answered with an `error` event and the
/// socket stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stable snake_case code, as in REST error bodies.
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
        }
    }

    pub fn event(&self) -> ServerEvent {
        ServerEvent::error(self.code, self.message.clone())
    }
}

/// Parses a JSON text frame with REST's classification: broken JSON (syntax, truncation,
/// nesting past serde_json's recursion limit) is `bad_json`; a valid document of the wrong
/// shape (missing `type`, wrong field type) is `invalid_field`.
///
/// # Errors
/// A [`Problem`] with one of those two codes.
pub fn parse_frame<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::new("invalid_field", e.to_string()),
        _ => Problem::new("bad_json", "Messages must be JSON objects with a type."),
    })
}

/// How much of a client-chosen string an error message quotes back.
const ECHO_CHARS: usize = 64;

/// `value` quoted for an error message, cut to [`ECHO_CHARS`] so a huge bogus `type` is not
/// mirrored back in full.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A read the WebSocket layer refused: the socket is closed with `close` after an `error`
/// event with `code`, so a client learns why instead of seeing a bare disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailure {
    pub code: &'static str,
    pub message: &'static str,
    pub close: CloseRequest,
}

/// Classifies a socket read error. `None` means the connection itself is gone (reset,
/// protocol violation after which nothing can be sent): there is no one left to tell.
pub fn read_failure(error: &warp::Error) -> Option<ReadFailure> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = std::error::Error::source(error)?.downcast_ref::<WsError>()?;
    match inner {
        WsError::Capacity(_) => Some(ReadFailure {
            code: "frame_too_large",
            message: "A frame exceeded the size limit.",
            close: (close::TOO_BIG, "Frame too large"),
        }),
        WsError::Utf8(_) => Some(ReadFailure {
            code: "invalid_utf8",
            message: "Text frames must be valid UTF-8.",
            close: (close::INVALID_PAYLOAD, "Invalid UTF-8"),
        }),
        _ => None,
    }
}

/// The outgoing half of a socket: its hub queue and the task writing that queue to the socket.
pub struct Outgoing {
    /// The socket's queue: for direct replies and for subscribing it to events.
    pub client: ClientTx,
    id: ClientId,
    hub: Arc<Hub>,
    close: oneshot::Sender<CloseRequest>,
    writer: JoinHandle<()>,
    /// Server shutdown: stop reading and close.
    closing: CancellationToken,
}

/// Splits an upgraded socket into its incoming stream and a hub-fed [`Outgoing`] half.
pub fn split(
    socket: WebSocket,
    hub: &Arc<Hub>,
    pacing: Duration,
    shutdown: &SocketShutdown,
) -> (SplitStream<WebSocket>, Outgoing) {
    let (sink, stream) = socket.split();
    let (id, client, client_rx) = hub.client();
    let (close, close_rx) = oneshot::channel();
    let writer = shutdown
        .writers
        .spawn(write_frames(sink, client_rx, pacing, close_rx));
    let outgoing = Outgoing {
        client,
        id,
        hub: Arc::clone(hub),
        close,
        writer,
        closing: shutdown.closing.clone(),
    };
    (stream, outgoing)
}

impl Outgoing {
    /// Queues an event for this socket only.
    pub fn send(&self, event: &ServerEvent) {
        self.client.send(event.to_frame());
    }

    /// The client's next message; `None` once the socket closed, the server is shutting down,
    /// or the client was evicted for lagging (so the reader stops too and the connection is
    /// released).
    pub async fn next_message(
        &self,
        stream: &mut SplitStream<WebSocket>,
    ) -> Option<Result<Message, warp::Error>> {
        tokio::select! {
            message = stream.next() => message,
            () = self.closing.cancelled() => None,
            () = self.client.evicted() => {
                tracing::info!("dropping a websocket client that stopped reading");
                None
            }
        }
    }

    /// Answers a failed read: tells the client why when it still can (see [`read_failure`])
    /// and returns the close to send; a connection that is simply gone is only logged.
    pub fn report_read_error(&self, error: &warp::Error) -> Option<CloseRequest> {
        match read_failure(error) {
            Some(failure) => {
                self.send(&ServerEvent::error(failure.code, failure.message));
                Some(failure.close)
            }
            None => {
                tracing::debug!(%error, "socket read failed");
                None
            }
        }
    }

    /// Leaves the hub, flushes what is queued, sends the close frame if one is given, and
    /// waits for the writer to finish.
    pub async fn finish(self, close: Option<CloseRequest>) {
        self.hub.unsubscribe_all(self.id);
        if let Some(request) = close {
            let _ = self.close.send(request);
        } else {
            drop(self.close);
        }
        drop(self.client);
        let _ = self.writer.await;
    }
}

/// Sends one message unless the client is evicted while the send waits (a peer that stopped
/// reading blocks it forever); a send that can complete at once still goes out, so a client
/// that reads still gets its `lagged` error and close. `false` when the socket is gone or the
/// client evicted.
async fn send_unless_evicted(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    client: &ClientRx,
) -> bool {
    tokio::select! {
        biased;
        sent = sink.send(message) => sent.is_ok(),
        () = client.state.evicted() => false,
    }
}

/// Drains a client's queue onto the socket until the queue closes, a close is requested or
/// the client is evicted. `pacing` spaces frames out for the original frontend, which keeps
/// only the latest frame per socket and loses one that arrives a few milliseconds after
/// another.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut client: ClientRx,
    pacing: Duration,
    mut close: oneshot::Receiver<CloseRequest>,
) {
    let mut reported = 0u32;
    loop {
        let frame = tokio::select! {
            biased;
            request = &mut close => {
                // Frames queued before the close (e.g. the error explaining it) go first.
                while let Ok(frame) = client.frames.try_recv() {
                    if !send_unless_evicted(&mut sink, Message::text(frame.to_string()), &client).await {
                        break;
                    }
                }
                let (code, reason) = request.unwrap_or((close::GOING_AWAY, "closing"));
                send_unless_evicted(&mut sink, Message::close_with(code, reason), &client).await;
                break;
            }
            frame = client.frames.recv() => frame,
        };
        let Some(frame) = frame else { break };
        let lost = client.state.take_unreported_drops();
        if lost > 0 {
            reported = reported.saturating_add(lost);
            let lagged = ServerEvent::error(
                "lagged",
                format!("{lost} events were dropped because this client is reading too slowly."),
            );
            if !send_unless_evicted(
                &mut sink,
                Message::text(lagged.to_frame().to_string()),
                &client,
            )
            .await
            {
                break;
            }
            if reported > MAX_DROPPED {
                let too_slow = Message::close_with(close::TRY_AGAIN_LATER, "client too slow");
                send_unless_evicted(&mut sink, too_slow, &client).await;
                break;
            }
        }
        if !send_unless_evicted(&mut sink, Message::text(frame.to_string()), &client).await {
            break;
        }
        if !pacing.is_zero() {
            tokio::time::sleep(pacing).await;
        }
    }
    // An evicted peer does not read, so a close handshake would never finish: just drop.
    tokio::select! {
        biased;
        _ = sink.close() => {}
        () = client.state.evicted() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;

    #[test]
    fn sockets_take_the_token_from_the_header_or_the_query() {
        let auth = Authenticator::new(AuthConfig::new(vec![3; 32])).unwrap();
        let user = crate::store::User {
            id: "u1".into(),
            organization_id: "o1".into(),
            username: "ws".into(),
            password_hash: String::new(),
            preferred_language: "en".into(),
            role: crate::store::UserRole::Clinician,
            created_at: 0,
            updated_at: 0,
        };
        let token = auth.issue_access(&user);
        let none = HeaderMap::new();
        let from_query = authenticate(&auth, &none, &format!("conversationId=c1&token={token}"));
        assert_eq!(from_query.unwrap().user_id, "u1");
        let mut headers = HeaderMap::new();
        headers.insert(
            warp::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let from_header = authenticate(&auth, &headers, "token=forged");
        assert_eq!(
            from_header.unwrap().organization_id,
            "o1",
            "the header wins"
        );
        assert!(matches!(
            authenticate(&auth, &none, "token=forged"),
            Err(auth::Error::InvalidToken)
        ));
        assert!(matches!(
            authenticate(&auth, &none, "conversationId=c1"),
            Err(auth::Error::InvalidToken)
        ));
    }
}
