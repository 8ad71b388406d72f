//! WebSocket helpers: connect like a browser, read events, stream a real recording at
//! real-time pace the way the original frontend does.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(url: String) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect")
        .0
}

/// The next JSON text frame, skipping binary and control frames; panics after `within`.
pub async fn next_event(ws: &mut Ws, within: Duration) -> Value {
    loop {
        let frame = tokio::time::timeout(within, ws.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON event");
        }
    }
}

/// The next `error` event, skipping any other event; panics after `within`.
pub async fn next_error(ws: &mut Ws, within: Duration) -> Value {
    loop {
        let e = next_event(ws, within).await;
        if e["type"] == "error" {
            return e;
        }
    }
}

pub async fn send(ws: &mut Ws, event: Value) {
    ws.send(Message::text(event.to_string()))
        .await
        .expect("send");
}

/// Reads until the server's close frame and returns its code (`None` if the connection ended
/// without one); panics after `within`.
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the socket closes in time")
}

/// The MediaRecorder chunks of the 1 s-timeslice Chromium fixture.
pub fn recording_chunks() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chrome-webm-opus-1000ms");
    (0..)
        .map_while(|i| std::fs::read(dir.join(format!("chunk-{i:03}.bin"))).ok())
        .collect()
}

/// Streams the fixture's chunks as the original frontend does: one base64 `append` per
/// MediaRecorder chunk, one per second.
pub async fn stream_recording(audio: &mut Ws) {
    send_recording(audio, Duration::from_millis(1000)).await;
}

/// The fixture's chunks as base64 `append`s, `pause` apart (zero: as fast as the server's
/// credit backpressure takes them).
pub async fn send_recording(audio: &mut Ws, pause: Duration) {
    for chunk in recording_chunks() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&chunk);
        send(
            audio,
            json!({"type": "input_audio_buffer.append", "audio": b64}),
        )
        .await;
        tokio::time::sleep(pause).await;
    }
}

/// Every event until `utterances` `processing_completed` events arrived (each within `within`).
pub async fn until_completed(ws: &mut Ws, utterances: usize, within: Duration) -> Vec<Value> {
    let mut events = Vec::new();
    let mut completed = 0;
    while completed < utterances {
        let e = next_event(ws, within).await;
        completed += usize::from(e["type"] == "processing_completed");
        events.push(e);
    }
    events
}
