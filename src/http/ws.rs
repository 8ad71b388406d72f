//! What the two WebSockets share: authentication after the upgrade (so a bad token gets the
//! original's close code 4001 instead of a bare HTTP error the browser cannot read) and the
//! writer task that drains a client's hub queue onto the socket.

use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::SinkExt as _;
use tokio::sync::oneshot;
use warp::http::HeaderMap;
use warp::ws::{Message, WebSocket};

use super::filters::{bearer, query_param};
use crate::auth::{Authenticator, Principal};
use crate::pipeline::event::ServerEvent;
use crate::pipeline::hub::{ClientRx, MAX_DROPPED};

/// Close codes of the original protocol, plus the RFC 6455 ones we use.
pub mod close {
    /// Missing or invalid token (original backend).
    pub const UNAUTHORIZED: u16 = 4001;
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
/// handshake, `?token=` (REST does not accept the query form). The header wins.
pub fn authenticate(auth: &Authenticator, headers: &HeaderMap, query: &str) -> Option<Principal> {
    let token = bearer(headers)
        .map(str::to_owned)
        .or_else(|| query_param(query, "token"))?;
    match auth.authenticate(&token) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::info!(code = e.code(), "websocket authentication failed");
            None
        }
    }
}

/// Asks the writer to send a close frame and stop.
pub type CloseTx = oneshot::Sender<(u16, &'static str)>;

/// Drains a client's queue onto the socket until the queue closes or a close is requested.
/// `pacing` spaces frames out for the original frontend, which keeps only the latest frame per
/// socket and loses one that arrives a few milliseconds after another.
pub async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut client: ClientRx,
    pacing: Duration,
    mut close: oneshot::Receiver<(u16, &'static str)>,
) {
    let mut reported = 0u32;
    loop {
        let frame = tokio::select! {
            biased;
            request = &mut close => {
                // Frames queued before the close (e.g. the error explaining it) go first.
                while let Ok(frame) = client.frames.try_recv() {
                    if sink.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                let (code, reason) = request.unwrap_or((close::GOING_AWAY, "closing"));
                let _ = sink.send(Message::close_with(code, reason)).await;
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
            if sink
                .send(Message::text(lagged.to_frame().to_string()))
                .await
                .is_err()
            {
                break;
            }
            if reported > MAX_DROPPED {
                let _ = sink
                    .send(Message::close_with(
                        close::TRY_AGAIN_LATER,
                        "client too slow",
                    ))
                    .await;
                break;
            }
        }
        if sink.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
        if !pacing.is_zero() {
            tokio::time::sleep(pacing).await;
        }
    }
    let _ = sink.close().await;
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
        assert!(authenticate(&auth, &none, "token=forged").is_none());
        assert!(authenticate(&auth, &none, "conversationId=c1").is_none());
    }
}
