//! Hostile input on every REST route and both WebSockets, as tables: each row is one bad
//! request and the exact error it must get (status + JSON error body, or a WebSocket `error`
//! event with a stable code, or a close code). After each table the server must still answer
//! `/healthz` and an ordinary request.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt as _;
use reqwest::Method;
use serde_json::{json, Value};
use support::ws::{close_code, connect, next_error, next_event, send, Ws};
use support::{Client, TestServer};
use tandem::server::HttpConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
/// The body limit of the table's server.
const BODY_LIMIT: u64 = 64 * 1024;
/// The audio-socket message limit of the table's server (the control socket's is 64 KiB).
const AUDIO_LIMIT: usize = 64 * 1024;

fn config() -> HttpConfig {
    HttpConfig {
        max_body_bytes: BODY_LIMIT,
        max_audio_message_bytes: AUDIO_LIMIT,
        control_pacing: Duration::ZERO,
        ..HttpConfig::default()
    }
}

// ---------------------------------------------------------------- REST

/// A table's server and a user with one conversation: (server, user, conversation id,
/// patient id).
async fn table_server(username: &str) -> (TestServer, Client, String, String) {
    let srv = support::start_with(config()).await;
    let user = srv.new_user(username).await;
    let conversation = user.create_conversation("Tab", "Le", "1980-01-01").await;
    let c = conversation["id"].as_str().unwrap().to_owned();
    let p = conversation["patientId"].as_str().unwrap().to_owned();
    (srv, user, c, p)
}

/// What goes in the `Authorization` header.
#[derive(Clone)]
enum Auth {
    None,
    /// `Bearer <the user's valid access token>`.
    Valid,
    /// This exact header value.
    Header(String),
}

#[derive(Clone)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Sent without `Content-Length`, in 8 KiB chunks.
    Chunked(Vec<u8>),
}

/// One row: a request and the status and error code it must get.
struct Case {
    what: String,
    method: Method,
    path: String,
    auth: Auth,
    body: Body,
    status: u16,
    code: &'static str,
}

/// A route of the REST API. `{c}` / `{p}` stand for a conversation / patient id.
struct Route {
    method: Method,
    path: &'static str,
    authed: bool,
    json_body: bool,
    /// A method the route does not accept.
    wrong_method: Method,
}

fn routes() -> Vec<Route> {
    let r = |method: Method, path, authed, json_body, wrong_method: Method| Route {
        method,
        path,
        authed,
        json_body,
        wrong_method,
    };
    use Method as M;
    vec![
        r(M::GET, "/healthz", false, false, M::POST),
        r(M::GET, "/readyz", false, false, M::DELETE),
        r(M::GET, "/metrics", false, false, M::PUT),
        r(M::GET, "/api/v1/health", false, false, M::POST),
        r(M::POST, "/api/v1/auth/register", false, true, M::PUT),
        r(M::POST, "/api/v1/auth/login", false, true, M::GET),
        r(M::POST, "/api/v1/auth/refresh", false, true, M::GET),
        r(M::GET, "/api/v1/auth/me", true, false, M::POST),
        r(M::GET, "/api/v1/conversations", true, false, M::DELETE),
        r(M::POST, "/api/v1/conversations", true, true, M::PUT),
        r(M::GET, "/api/v1/conversations/{c}", true, false, M::PUT),
        r(
            M::GET,
            "/api/v1/conversations/{c}/messages",
            true,
            false,
            M::POST,
        ),
        r(
            M::GET,
            "/api/v1/conversations/{c}/actions",
            true,
            false,
            M::DELETE,
        ),
        r(
            M::GET,
            "/api/v1/conversations/{c}/medical-history",
            true,
            false,
            M::PUT,
        ),
        r(
            M::GET,
            "/api/v1/conversations/{c}/summary",
            true,
            false,
            M::DELETE,
        ),
        r(
            M::POST,
            "/api/v1/conversations/{c}/end",
            true,
            false,
            M::GET,
        ),
        r(M::GET, "/api/v1/patients", true, false, M::POST),
        r(M::GET, "/api/v1/patients/{p}", true, false, M::PUT),
        r(M::PATCH, "/api/v1/patients/{p}", true, true, M::PUT),
        r(M::DELETE, "/api/v1/patients/{p}", true, false, M::POST),
    ]
}

/// Ids a client can put in a path segment, as sent on the wire (percent-encoded or not).
fn odd_ids() -> Vec<String> {
    vec![
        "..".into(),
        "%2e%2e".into(),
        "%2E%2E".into(),
        "..%2F..%2Fetc%2Fpasswd".into(),
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "..%5C..%5Cwindows".into(),
        "%00".into(),
        "a%00b".into(),
        "%ff%fe".into(),
        "%27%3B%20DROP%20TABLE%20conversations%3B--".into(),
        "a".repeat(10_000),
    ]
}

/// Bodies that are not a valid request of any route, with their status and code.
fn bad_bodies() -> Vec<(&'static str, Body, u16, &'static str)> {
    let big = |n: u64| {
        // Over the limit but within what the server drains, so the 413 is always readable.
        let mut b = br#"{"username":""#.to_vec();
        b.resize(usize::try_from(n).unwrap(), b'a');
        b.extend_from_slice(br#""}"#);
        b
    };
    let bytes = |b: &[u8]| Body::Bytes(b.to_vec());
    let mut deep = br#"{"zzz":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 50_000));
    vec![
        ("empty body", Body::Empty, 400, "bad_json"),
        ("truncated JSON", bytes(br#"{"username": "#), 400, "bad_json"),
        ("not JSON", bytes(b"username=a&password=b"), 400, "bad_json"),
        (
            "invalid UTF-8 in a string",
            bytes(b"{\"username\":\"\xff\xfe\",\"password\":\"\xc3\x28\",\"firstName\":\"\xed\xa0\x80\"}"),
            400,
            "bad_json",
        ),
        ("50k nested arrays", Body::Bytes(deep), 400, "bad_json"),
        (
            "a top-level array 50k deep",
            Body::Bytes(vec![b'['; 50_000]),
            422,
            "invalid_field",
        ),
        (
            "wrong types",
            bytes(
                br#"{"username":1,"password":[],"refreshToken":{},"firstName":true,"lastName":2,"dob":3,"preferredLanguage":4}"#,
            ),
            422,
            "invalid_field",
        ),
        ("null", bytes(b"null"), 422, "invalid_field"),
        ("a string", bytes(br#""hello""#), 422, "invalid_field"),
        (
            "half again the size limit",
            Body::Bytes(big(BODY_LIMIT * 3 / 2)),
            413,
            "payload_too_large",
        ),
        (
            "half again the size limit, chunked",
            Body::Chunked(big(BODY_LIMIT * 3 / 2)),
            413,
            "payload_too_large",
        ),
    ]
}

fn rest_table(c: &str, p: &str, token: &str) -> Vec<Case> {
    let fill = |path: &str, c: &str, p: &str| path.replace("{c}", c).replace("{p}", p);
    let mut cases = Vec::new();
    for route in routes() {
        let path = fill(route.path, c, p);
        let auth = if route.authed {
            Auth::Valid
        } else {
            Auth::None
        };
        let minimal_body = || {
            if route.json_body {
                Body::Bytes(b"{}".to_vec())
            } else {
                Body::Empty
            }
        };
        cases.push(Case {
            what: format!("{} {} wrong method", route.wrong_method, route.path),
            method: route.wrong_method.clone(),
            path: path.clone(),
            auth: auth.clone(),
            body: Body::Empty,
            status: 405,
            code: "method_not_allowed",
        });
        if route.json_body {
            for (what, body, status, code) in bad_bodies() {
                cases.push(Case {
                    what: format!("{} {}: {what}", route.method, route.path),
                    method: route.method.clone(),
                    path: path.clone(),
                    auth: auth.clone(),
                    body,
                    status,
                    code,
                });
            }
        }
        if route.authed {
            let wrong_places = [
                ("no token", Auth::None, String::new()),
                (
                    "scheme missing",
                    Auth::Header(token.to_owned()),
                    String::new(),
                ),
                (
                    "Basic scheme",
                    Auth::Header(format!("Basic {token}")),
                    String::new(),
                ),
                (
                    "empty Bearer",
                    Auth::Header("Bearer ".into()),
                    String::new(),
                ),
                (
                    "token plus junk",
                    Auth::Header(format!("Bearer {token} x")),
                    String::new(),
                ),
                ("only ?token=", Auth::None, format!("?token={token}")),
                (
                    "forged header, valid ?token=",
                    Auth::Header("Bearer forged".into()),
                    format!("?token={token}"),
                ),
            ];
            for (what, auth, query) in wrong_places {
                cases.push(Case {
                    what: format!("{} {}: {what}", route.method, route.path),
                    method: route.method.clone(),
                    path: format!("{path}{query}"),
                    auth,
                    body: minimal_body(),
                    status: 401,
                    code: "unauthorized",
                });
            }
            cases.push(Case {
                what: format!("{} {}: token in the body", route.method, route.path),
                method: route.method.clone(),
                path: path.clone(),
                auth: Auth::None,
                body: Body::Bytes(
                    json!({"token": token, "accessToken": token, "authorization": format!("Bearer {token}")})
                        .to_string()
                        .into_bytes(),
                ),
                status: 401,
                code: "unauthorized",
            });
        }
        if route.path.contains("{c}") || route.path.contains("{p}") {
            for id in odd_ids() {
                let shown: String = id.chars().take(40).collect();
                cases.push(Case {
                    what: format!("{} {} with id {shown}", route.method, route.path),
                    method: route.method.clone(),
                    path: fill(route.path, &id, &id),
                    auth: Auth::Valid,
                    body: minimal_body(),
                    status: 404,
                    code: "not_found",
                });
            }
        }
    }
    for path in [
        "/api/v1/../../etc/passwd",
        "/api/v1/%2e%2e/%2e%2e/etc/passwd",
        "/api/v2/conversations",
        "/api/v1/conversations/x/y/z",
        "/.env",
    ] {
        cases.push(Case {
            what: format!("GET {path}"),
            method: Method::GET,
            path: path.into(),
            auth: Auth::Valid,
            body: Body::Empty,
            status: 404,
            code: "not_found",
        });
    }
    cases
}

/// Whether `path` has a dot segment an HTTP client library would normalise away before
/// sending (`..`, `%2e%2e`): those go out over a raw socket.
fn has_dot_segment(path: &str) -> bool {
    path.split(['/', '?']).any(|s| {
        let s = s.to_ascii_lowercase();
        s == ".." || s == "%2e%2e" || s == "." || s == "%2e"
    })
}

/// Sends a request byte for byte and returns the status and the body.
async fn raw_request(
    addr: SocketAddr,
    method: &Method,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, response[split + 4..].to_vec())
}

async fn run_case(srv: &TestServer, user: &Client, case: &Case) {
    let auth_value = match &case.auth {
        Auth::None => None,
        Auth::Valid => Some(format!("Bearer {}", user.access_token)),
        Auth::Header(h) => Some(h.clone()),
    };
    let (status, body) = if has_dot_segment(&case.path) {
        let body = match &case.body {
            Body::Empty => &[][..],
            Body::Bytes(b) => b,
            Body::Chunked(_) => panic!("{}: raw requests are not chunked", case.what),
        };
        raw_request(
            srv.addr,
            &case.method,
            &case.path,
            auth_value.as_deref(),
            body,
        )
        .await
    } else {
        let mut req = srv.http.request(case.method.clone(), srv.url(&case.path));
        if let Some(a) = &auth_value {
            req = req.header("authorization", a);
        }
        req = match &case.body {
            Body::Empty => req,
            Body::Bytes(b) => req
                .header("content-type", "application/json")
                .body(b.clone()),
            Body::Chunked(b) => {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    b.chunks(8192).map(|c| Ok(c.to_vec())).collect();
                req.header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks,
                    )))
            }
        };
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        let status = res.status().as_u16();
        (status, res.bytes().await.unwrap().to_vec())
    };
    assert_eq!(
        status,
        case.status,
        "{}: {}",
        case.what,
        String::from_utf8_lossy(&body)
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "{}: JSON error body, got {:?}",
            case.what,
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(body["code"], case.code, "{}: {body}", case.what);
    assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}: a message: {body}",
        case.what
    );
}

/// The server still serves: `/healthz`, and the user's own data.
async fn assert_healthy(srv: &TestServer, user: &Client, conversation_id: &str) {
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let conversation = user
        .get_json(&format!("/conversations/{conversation_id}"), 200)
        .await;
    assert_eq!(conversation["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_answers_bad_input_with_a_json_error() {
    let (srv, user, c, p) = table_server("table").await;
    let cases = rest_table(&c, &p, &user.access_token);
    assert!(cases.len() > 250, "{} cases", cases.len());
    for case in &cases {
        run_case(&srv, &user, case).await;
    }
    assert_healthy(&srv, &user, &c).await;
    // Nothing in the table created an account or changed the patient.
    let patient = user.get_json(&format!("/patients/{p}"), 200).await;
    assert_eq!(patient["firstName"], "Tab");
    srv.stop().await;
}

// ---------------------------------------------------------------- WebSockets

/// An `error` event's code for a message on an open socket, which must stay open.
async fn error_for(ws: &mut Ws, message: Message) -> String {
    ws.send(message).await.unwrap();
    let e = next_error(ws, WAIT).await;
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["text"].is_string(),
        "{e}"
    );
    e["code"].as_str().unwrap().to_owned()
}

/// A text frame whose payload is not UTF-8 (tungstenite's `Message::Text` cannot hold one).
fn invalid_utf8_text() -> Message {
    Message::Frame(Frame::message(
        b"{\"type\":\"\xff\xfe\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    ))
}

/// Nested JSON deep enough to pass serde_json's recursion limit, yet under both sockets' size
/// limits.
fn deep_json(kind: &str) -> String {
    format!(r#"{{"type":"{kind}","payload":{}"#, "[".repeat(50_000))
}

/// Connects with an `Authorization` header (browsers cannot, other clients may).
async fn connect_with_header(url: &str, authorization: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", authorization.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Opens a socket, waits for its greeting, sends a frame the protocol layer must refuse, and
/// returns the `error` code and the close code that follow.
async fn refused_frame(url: &str, greeting: &str, message: Message) -> (String, Option<u16>) {
    let mut ws = connect(url.to_owned()).await;
    assert_eq!(next_event(&mut ws, WAIT).await["type"], greeting);
    let _ = ws.send(message).await;
    let code = next_error(&mut ws, WAIT).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    (code, close_code(&mut ws, WAIT).await)
}

/// Opens a socket that must be refused: returns the `error` event's code (if one came before
/// the close) and the close code.
async fn refusal(mut ws: Ws) -> (Option<String>, Option<u16>) {
    let mut code = None;
    let close = tokio::time::timeout(WAIT, async {
        use futures_util::StreamExt as _;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let e: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(e["type"], "error", "only an error before a refusal: {e}");
                    code = e["code"].as_str().map(str::to_owned);
                }
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the refusal arrives in time");
    (code, close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audio_socket_answers_bad_frames_and_stays_up() {
    let (srv, user, c, _) = table_server("audio_table").await;
    let base = format!("ws://{}/transcription", srv.addr);
    let url = format!("{base}?conversationId={c}&token={}", user.access_token);

    // Bad frames on one socket: each gets its error event and the socket stays open.
    let mut audio = connect(url.clone()).await;
    assert_eq!(
        next_event(&mut audio, WAIT).await["type"],
        "backend_connected"
    );
    let text = |s: &str| Message::text(s.to_owned());
    let table: Vec<(&str, Message, &str)> = vec![
        ("base64 junk", text("%%% not base64 %%%"), "invalid_base64"),
        (
            "50k brackets as base64",
            text(&"[".repeat(50_000)),
            "invalid_base64",
        ),
        (
            "append with bad base64",
            text(r#"{"type":"input_audio_buffer.append","audio":"@@@@"}"#),
            "invalid_base64",
        ),
        (
            "append with a number",
            text(r#"{"type":"input_audio_buffer.append","audio":5}"#),
            "invalid_field",
        ),
        (
            "append without audio",
            text(r#"{"type":"input_audio_buffer.append"}"#),
            "invalid_field",
        ),
        ("type is a number", text(r#"{"type":5}"#), "invalid_field"),
        ("no type", text(r#"{"audio":"AAAA"}"#), "invalid_field"),
        (
            "unknown type",
            text(r#"{"type":"dance"}"#),
            "unknown_message_type",
        ),
        (
            "a huge unknown type",
            text(&format!(r#"{{"type":"{}"}}"#, "x".repeat(40_000))),
            "unknown_message_type",
        ),
        ("broken JSON", text("{not json"), "bad_json"),
        ("50k nested arrays", text(&deep_json("start")), "bad_json"),
        (
            "unsupported codec",
            text(r#"{"type":"start","mimeType":"audio/webm;codecs=vorbis"}"#),
            "audio_unsupported",
        ),
        (
            "sample rate as a string",
            text(r#"{"type":"start","mimeType":"audio/pcm","sampleRate":"fast"}"#),
            "invalid_field",
        ),
        (
            "unknown speaker",
            text(r#"{"type":"speaker","role":"nurse"}"#),
            "invalid_field",
        ),
        (
            "binary that is no container",
            Message::binary(vec![0x5a_u8; 4096]),
            "audio_unsupported",
        ),
    ];
    for (what, message, code) in table {
        assert_eq!(error_for(&mut audio, message).await, code, "{what}");
    }

    // Frames the protocol layer refuses: an error event, then the matching close code.
    let terminal: Vec<(&str, Message, &str, u16)> = vec![
        (
            "text over the limit",
            Message::text("A".repeat(AUDIO_LIMIT + 1)),
            "frame_too_large",
            1009,
        ),
        (
            "binary over the limit",
            Message::binary(vec![0u8; AUDIO_LIMIT * 3 / 2]),
            "frame_too_large",
            1009,
        ),
        (
            "invalid UTF-8 text",
            invalid_utf8_text(),
            "invalid_utf8",
            1007,
        ),
    ];
    for (what, message, code, close) in terminal {
        let refused = refused_frame(&url, "backend_connected", message).await;
        assert_eq!(refused, (code.to_owned(), Some(close)), "{what}");
    }

    // Odd conversation ids and misplaced tokens are refused at the door.
    let token = &user.access_token;
    for id in odd_ids() {
        let ws = connect(format!("{base}?conversationId={id}&token={token}")).await;
        let (code, close) = refusal(ws).await;
        assert_eq!(code.as_deref(), Some("not_found"), "id {id:.40}");
        assert_eq!(close, Some(1008), "id {id:.40}");
    }
    for query in [
        format!("token={token}"),
        format!("conversationId=&token={token}"),
    ] {
        let refused = refusal(connect(format!("{base}?{query}")).await).await;
        assert_eq!(
            refused,
            (Some("invalid_field".into()), Some(1008)),
            "{query}"
        );
    }
    for (what, header, query) in [
        (
            "scheme missing",
            token.clone(),
            format!("conversationId={c}"),
        ),
        (
            "Basic scheme",
            format!("Basic {token}"),
            format!("conversationId={c}"),
        ),
        (
            "forged header wins over a valid ?token=",
            "Bearer forged".into(),
            format!("conversationId={c}&token={token}"),
        ),
    ] {
        let ws = connect_with_header(&format!("{base}?{query}"), &header).await;
        let refused = refusal(ws).await;
        assert_eq!(refused, (Some("unauthorized".into()), Some(4001)), "{what}");
    }
    // A token sent as the first message instead of on the URL.
    let mut ws = connect(format!("{base}?conversationId={c}")).await;
    let _ = ws
        .send(Message::text(json!({"token": token}).to_string()))
        .await;
    assert_eq!(refusal(ws).await, (Some("unauthorized".into()), Some(4001)));

    // A valid header with a forged ?token=: the header wins, the socket works.
    let mut ws = connect_with_header(
        &format!("{base}?conversationId={c}&token=forged"),
        &format!("Bearer {token}"),
    )
    .await;
    assert_eq!(next_event(&mut ws, WAIT).await["type"], "backend_connected");
    drop(ws);

    // Still healthy: the first socket still answers, REST still serves.
    assert_eq!(
        error_for(&mut audio, text(r#"{"type":"dance"}"#)).await,
        "unknown_message_type"
    );
    assert_healthy(&srv, &user, &c).await;
    audio.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_bad_frames_and_stays_up() {
    let (srv, user, c, _) = table_server("control_table").await;
    let token = user.access_token.clone();

    for path in ["/ws", "/"] {
        let url = format!("ws://{}{path}?token={token}", srv.addr);
        let mut control = connect(url.clone()).await;
        assert_eq!(
            support::next_control_json(&mut control, WAIT).await["type"],
            "system"
        );
        let text = |s: String| Message::text(s);
        let mut table: Vec<(String, Message, &str)> = vec![
            ("broken JSON".into(), text("{not json".into()), "bad_json"),
            (
                "type is a number".into(),
                text(r#"{"type":5}"#.into()),
                "invalid_field",
            ),
            (
                "no type".into(),
                text(r#"{"payload":{}}"#.into()),
                "invalid_field",
            ),
            ("an array".into(), text("[".repeat(50_000)), "invalid_field"),
            (
                "unknown type".into(),
                text(r#"{"type":"dance"}"#.into()),
                "unknown_message_type",
            ),
            (
                "a huge unknown type".into(),
                text(format!(r#"{{"type":"{}"}}"#, "x".repeat(40_000))),
                "unknown_message_type",
            ),
            (
                "50k nested arrays".into(),
                text(deep_json("get_messages")),
                "bad_json",
            ),
            (
                "binary frame".into(),
                Message::binary(b"{\"type\":\"get_messages\"}".to_vec()),
                "unsupported_frame",
            ),
        ];
        for kind in [
            "select_conversation",
            "get_messages",
            "get_actions",
            "get_summary",
            "get_medical_history",
        ] {
            table.push((
                format!("{kind} without a conversation"),
                text(json!({"type": kind}).to_string()),
                "invalid_field",
            ));
            table.push((
                format!("{kind} with a numeric id"),
                text(json!({"type": kind, "payload": {"conversationId": 7}}).to_string()),
                "invalid_field",
            ));
            for id in [
                "..".to_owned(),
                "../../etc/passwd".into(),
                "..\\..\\windows".into(),
                "\0".into(),
                "a\0b".into(),
                "\u{fffd}".into(),
                "'; DROP TABLE conversations;--".into(),
                "a".repeat(10_000),
            ] {
                table.push((
                    format!("{kind} for id {id:.40}"),
                    text(json!({"type": kind, "payload": {"conversationId": id}}).to_string()),
                    "not_found",
                ));
            }
        }
        for (what, message, code) in table {
            assert_eq!(
                error_for(&mut control, message).await,
                code,
                "{path}: {what}"
            );
        }

        for (what, message, code, close) in [
            (
                "text over 64 KiB",
                Message::text("A".repeat(64 * 1024 + 1)),
                "frame_too_large",
                1009,
            ),
            (
                "invalid UTF-8 text",
                invalid_utf8_text(),
                "invalid_utf8",
                1007,
            ),
        ] {
            let refused = refused_frame(&url, "system", message).await;
            assert_eq!(refused, (code.to_owned(), Some(close)), "{path}: {what}");
        }

        let base = format!("ws://{}{path}", srv.addr);
        for (what, header, query) in [
            ("scheme missing", token.clone(), String::new()),
            ("Basic scheme", format!("Basic {token}"), String::new()),
            (
                "forged header wins",
                "Bearer forged".into(),
                format!("?token={token}"),
            ),
        ] {
            let ws = connect_with_header(&format!("{base}{query}"), &header).await;
            let refused = refusal(ws).await;
            assert_eq!(
                refused,
                (Some("unauthorized".into()), Some(4001)),
                "{path}: {what}"
            );
        }
        let mut ws = connect(base.clone()).await;
        let _ = ws
            .send(Message::text(json!({"token": token}).to_string()))
            .await;
        let refused = refusal(ws).await;
        assert_eq!(
            refused,
            (Some("unauthorized".into()), Some(4001)),
            "{path}: token in a message"
        );
        let mut ws =
            connect_with_header(&format!("{base}?token=forged"), &format!("Bearer {token}")).await;
        assert_eq!(
            next_event(&mut ws, WAIT).await["type"],
            "system",
            "{path}: header wins"
        );

        // The first socket still answers real requests.
        send(
            &mut control,
            json!({"type": "select_conversation", "payload": {"conversationId": c}}),
        )
        .await;
        let selected = support::next_control_json(&mut control, WAIT).await;
        assert_eq!(selected["type"], "conversation_selected", "{selected}");
        assert_eq!(selected["payload"]["conversationId"], c.as_str());
    }
    assert_healthy(&srv, &user, &c).await;
    srv.stop().await;
}

// ---------------------------------------------------------------- authentication

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Access tokens that must all be refused, with the code each gets, for `user` in `org`.
/// `good` is a correctly minted token, to show the minting itself is right.
fn bad_tokens(user_id: &str, org: &str) -> (String, Vec<(&'static str, String, &'static str)>) {
    let claims = |iss: &str, aud: &str, exp: u64| {
        json!({
            "sub": user_id, "id": user_id, "username": "victim", "org": org,
            "role": "clinician", "iss": iss, "aud": aud, "exp": exp,
            "iat": now_secs() - 10, "jti": "j1",
        })
    };
    let fresh = now_secs() + 600;
    let good = mint(support::SECRET, &claims("tandem", "tandem-api", fresh));
    let mut parts = good.split('.');
    let (header, payload, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    // The signed payload with another organization: the signature no longer matches.
    let mut other_org = claims("tandem", "tandem-api", fresh);
    other_org["org"] = json!("another-org");
    let tampered = format!(
        "{header}.{}.{signature}",
        b64(other_org.to_string().as_bytes())
    );
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let alg_none_signed = format!("{}.{payload}.{signature}", b64(br#"{"alg":"none"}"#));
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims("tandem", "tandem-api", fresh),
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET),
    )
    .unwrap();
    let bad = vec![
        (
            "expired",
            mint(
                support::SECRET,
                &claims("tandem", "tandem-api", now_secs() - 600),
            ),
            "token_expired",
        ),
        ("tampered payload", tampered, "unauthorized"),
        ("alg none, unsigned", alg_none, "unauthorized"),
        ("alg none, old signature", alg_none_signed, "unauthorized"),
        ("HS512 instead of HS256", hs512, "unauthorized"),
        (
            "wrong key",
            mint(
                b"another-secret-that-is-long-enough-0123456789",
                &claims("tandem", "tandem-api", fresh),
            ),
            "unauthorized",
        ),
        (
            "wrong audience",
            mint(support::SECRET, &claims("tandem", "other-api", fresh)),
            "unauthorized",
        ),
        (
            "wrong issuer",
            mint(support::SECRET, &claims("evil", "tandem-api", fresh)),
            "unauthorized",
        ),
        ("garbage", "not.a.jwt".into(), "unauthorized"),
    ];
    (good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_on_every_route_and_both_sockets() {
    let (srv, user, c, p) = table_server("victim").await;
    let org = srv
        .store
        .user_by_id(&user.user_id)
        .await
        .unwrap()
        .organization_id;
    let (good, bad) = bad_tokens(&user.user_id, &org);
    let minted = Client {
        access_token: good.clone(),
        ..user.clone()
    };
    assert_eq!(
        minted.get_json("/auth/me", 200).await["id"],
        user.user_id.as_str()
    );

    let authed: Vec<Route> = routes().into_iter().filter(|r| r.authed).collect();
    for (what, token, code) in &bad {
        for route in &authed {
            let case = Case {
                what: format!("{} {} with a token {what}", route.method, route.path),
                method: route.method.clone(),
                path: route.path.replace("{c}", &c).replace("{p}", &p),
                auth: Auth::Header(format!("Bearer {token}")),
                body: if route.json_body {
                    Body::Bytes(b"{}".to_vec())
                } else {
                    Body::Empty
                },
                status: 401,
                code,
            };
            run_case(&srv, &user, &case).await;
        }
        let sockets = [
            format!("ws://{}/transcription?conversationId={c}", srv.addr),
            format!("ws://{}/ws?x=1", srv.addr),
            format!("ws://{}/?x=1", srv.addr),
        ];
        for url in &sockets {
            let by_query = connect(format!("{url}&token={token}")).await;
            let by_header = connect_with_header(url, &format!("Bearer {token}")).await;
            for ws in [by_query, by_header] {
                let refused = refusal(ws).await;
                assert_eq!(refused, (Some((*code).into()), Some(4001)), "{url}: {what}");
            }
        }
    }
    // The real token still works everywhere.
    assert_healthy(&srv, &user, &c).await;
    let mut control = connect(format!("ws://{}/ws?token={good}", srv.addr)).await;
    assert_eq!(
        support::next_control_json(&mut control, WAIT).await["type"],
        "system"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organization_gets_nothing_over_either_socket() {
    use tandem::pipeline::hub::Audience;
    let srv = support::start_with(config()).await;
    let owner = srv.new_user("owner").await;
    let conversation = owner
        .create_conversation("Secret", "Patient", "1970-01-01")
        .await;
    let c = conversation["id"].as_str().unwrap().to_owned();
    let intruder = srv.user_in_new_org("Other Clinic", "intruder").await;
    let control = |token: &str| connect(format!("ws://{}/ws?token={token}", srv.addr));

    let mut theirs = control(&intruder.access_token).await;
    assert_eq!(
        support::next_control_json(&mut theirs, WAIT).await["type"],
        "system"
    );
    for kind in [
        "select_conversation",
        "get_messages",
        "get_actions",
        "get_summary",
        "get_medical_history",
    ] {
        send(
            &mut theirs,
            json!({"type": kind, "payload": {"conversationId": c}}),
        )
        .await;
        let refused = support::next_control_json(&mut theirs, WAIT).await;
        assert_eq!(refused["type"], "error", "{kind}: {refused}");
        assert_eq!(refused["code"], "not_found", "{kind}");
        assert!(!refused.to_string().contains("Secret"), "{refused}");
    }

    // Pushes for the conversation reach the owner who asked about it, never the intruder.
    let mut mine = control(&owner.access_token).await;
    assert_eq!(
        support::next_control_json(&mut mine, WAIT).await["type"],
        "system"
    );
    send(
        &mut mine,
        json!({"type": "get_messages", "payload": {"conversationId": c}}),
    )
    .await;
    assert_eq!(
        support::next_control_json(&mut mine, WAIT).await["type"],
        "message_list"
    );
    let push = json!({"type": "summary_data", "payload": {"conversationId": c, "summary": "PHI"}});
    for audience in [Audience::Control, Audience::Audio] {
        srv.state
            .pipelines
            .hub()
            .publish(&c, audience, push.to_string().into());
    }
    assert_eq!(support::next_control_json(&mut mine, WAIT).await, push);
    send(&mut theirs, json!({"type": "dance"})).await;
    let next = support::next_control_json(&mut theirs, WAIT).await;
    assert_eq!(
        next["code"], "unknown_message_type",
        "no push before it: {next}"
    );

    // The audio socket of another organization's conversation is refused at the door.
    let audio = connect(format!(
        "ws://{}/transcription?conversationId={c}&token={}",
        srv.addr, intruder.access_token
    ))
    .await;
    assert_eq!(refusal(audio).await, (Some("not_found".into()), Some(1008)));
    srv.stop().await;
}

#[tokio::test]
async fn login_is_throttled_per_ip_across_usernames() {
    let srv = support::start().await;
    srv.new_user("bystander").await;
    // 20 failures from this IP, each on a different username (a spray, not a guess).
    for i in 0..20 {
        let res = srv.login(&format!("sprayed{i}"), "wrong-password").await;
        assert_eq!(support::error_code(res, 401).await, "invalid_credentials");
    }
    // Now even a right password for an untouched account is refused from this IP.
    let res = srv.login("bystander", support::PASSWORD).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(support::error_code(res, 429).await, "too_many_attempts");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reuse_of_a_refresh_token_revokes_the_whole_family() {
    let srv = support::start().await;
    let user = srv.new_user("racer").await;
    let refresh = |token: String| {
        let http = srv.http.clone();
        let url = srv.api("/auth/refresh");
        async move {
            let res = http
                .post(url)
                .json(&json!({ "refreshToken": token }))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    // A thief and the user present the same token at once.
    let results =
        futures_util::future::join_all((0..2).map(|_| refresh(user.refresh_token.clone()))).await;
    let winners: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    // When the reuse lands before the winner's new token is stored, the winner is refused
    // too; either way at most one gets through and every other is told of the reuse.
    assert!(winners.len() <= 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(
            (*status, body["code"].as_str()),
            (403, Some("refresh_token_reused"))
        );
    }
    // A refresh token handed out in the race belongs to the revoked family: dead too.
    for winner in winners {
        let next = winner["refreshToken"].as_str().unwrap().to_owned();
        let (status, body) = refresh(next).await;
        assert_eq!(status, 403, "{body}");
    }
    // The user logs in again and gets a working family.
    let again = srv.logged_in("racer").await;
    assert_eq!(refresh(again.refresh_token).await.0, 200);
    srv.stop().await;
}

// ---------------------------------------------------------------- fuzz inputs

/// The inputs kept for a fuzz target: its seeds and any crash found (`fuzz/regressions/`).
fn fuzz_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            inputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    inputs
}

/// Replays the JSON fuzz targets' kept inputs through the same functions the targets (and the
/// server) call: each is parsed or refused with one of the documented codes, never a panic.
#[test]
fn kept_fuzz_inputs_parse_or_get_a_documented_code() {
    use tandem::http::filters::parse_json;
    use tandem::http::models::{
        CreateConversationRequest, LoginRequest, RefreshRequest, RegisterRequest,
        UpdatePatientRequest,
    };
    let control = fuzz_inputs("control_message");
    assert!(control.len() >= 5, "seeds are committed");
    for (name, bytes) in control {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue; // the socket layer closes with 1007 before parsing
        };
        if let Err(p) = tandem::http::ws_control::parse_request(text) {
            assert!(
                ["bad_json", "invalid_field", "unknown_message_type"].contains(&p.code),
                "{name} → {p:?}"
            );
        }
    }
    let audio = fuzz_inputs("audio_message");
    assert!(audio.len() >= 5, "seeds are committed");
    for (name, bytes) in audio {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Err(p) = tandem::http::ws_audio::parse_text(text) {
            assert!(
                [
                    "bad_json",
                    "invalid_field",
                    "invalid_base64",
                    "unknown_message_type",
                    "audio_unsupported"
                ]
                .contains(&p.code),
                "{name} → {p:?}"
            );
        }
    }
    let bodies = fuzz_inputs("rest_body");
    assert!(bodies.len() >= 5, "seeds are committed");
    for (name, body) in bodies {
        let codes = [
            parse_json::<RegisterRequest>(&body).err(),
            parse_json::<LoginRequest>(&body).err(),
            parse_json::<RefreshRequest>(&body).err(),
            parse_json::<CreateConversationRequest>(&body).err(),
            parse_json::<UpdatePatientRequest>(&body).err(),
        ];
        if name.contains("/seeds/") {
            assert!(
                codes.iter().any(Option::is_none),
                "{name}: a seed is a valid body of some route"
            );
        }
        for e in codes.into_iter().flatten() {
            assert!(
                ["bad_json", "invalid_field"].contains(&e.code()),
                "{name} → {e:?}"
            );
        }
    }
    let auth = tandem::auth::Authenticator::new(support::auth_config()).unwrap();
    let tokens = fuzz_inputs("access_token");
    assert!(!tokens.is_empty(), "seeds are committed");
    for (name, bytes) in tokens {
        let text = String::from_utf8_lossy(&bytes);
        assert!(auth.authenticate(&text).is_err(), "{name}");
        assert!(
            !tandem::http::redact_query(&text).contains("token=eyJ"),
            "{name}"
        );
    }
}
