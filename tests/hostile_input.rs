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
use tandem::store::UserRole;
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
    /// No `Authorization`; this `Cookie` header instead.
    Cookie(String),
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

/// A route of the REST API. `{c}` / `{p}` / `{a}` / `{d}` / `{k}` stand for a conversation /
/// patient / action / webhook delivery / clinic command id (see [`Ids`]).
struct Route {
    method: Method,
    path: &'static str,
    authed: bool,
    json_body: bool,
    /// A method the route does not accept.
    wrong_method: Method,
    /// Only an organization admin may call it; a clinician gets 403.
    admin: bool,
}

impl Route {
    /// A body the route accepts (so a row fails for the reason it is about), if it takes one.
    fn valid_body(&self) -> Body {
        if !self.json_body {
            return Body::Empty;
        }
        let body = match self.path {
            "/api/v1/actions/{a}" => json!({"data": {"dosage": "1 g"}}),
            "/api/v1/organization/webhook" => json!({"url": "https://ehr.example/hooks/tandem"}),
            "/api/v1/commands" | "/api/v1/commands/{k}" => referral_command(),
            "/api/v1/users/me/settings" => json!({"builtinCommands": true}),
            _ => json!({}),
        };
        Body::Bytes(body.to_string().into_bytes())
    }
}

/// A valid clinic-command definition.
fn referral_command() -> Value {
    json!({
        "name": "refer_patient",
        "description": "Refer the patient to a specialist.",
        "examples": ["refer to cardiology"],
        "parameters": {"type": "object", "properties": {"specialty": {"type": "string"}}, "required": ["specialty"]},
        "produces": {"kind": "action", "actionType": "referral"}
    })
}

fn routes() -> Vec<Route> {
    let r = |method: Method, path, authed, json_body, wrong_method: Method| Route {
        method,
        path,
        authed,
        json_body,
        wrong_method,
        admin: false,
    };
    let admin = |method: Method, path, json_body, wrong_method: Method| Route {
        admin: true,
        ..r(method, path, true, json_body, wrong_method)
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
        // Issue #5: records, actions, the webhook and its log, clinic commands, settings.
        r(
            M::POST,
            "/api/v1/conversations/{c}/summary",
            true,
            false,
            M::PUT,
        ),
        r(
            M::GET,
            "/api/v1/conversations/{c}/export",
            true,
            false,
            M::POST,
        ),
        r(M::GET, "/api/v1/actions/{a}", true, false, M::PUT),
        r(M::PATCH, "/api/v1/actions/{a}", true, true, M::DELETE),
        r(M::POST, "/api/v1/actions/{a}/confirm", true, false, M::GET),
        r(M::POST, "/api/v1/actions/{a}/cancel", true, false, M::PUT),
        r(
            M::GET,
            "/api/v1/actions/{a}/deliveries",
            true,
            false,
            M::POST,
        ),
        r(M::GET, "/api/v1/organization/webhook", true, false, M::POST),
        admin(M::PUT, "/api/v1/organization/webhook", true, M::PATCH),
        admin(M::DELETE, "/api/v1/organization/webhook", false, M::POST),
        r(M::GET, "/api/v1/webhook-deliveries", true, false, M::DELETE),
        admin(
            M::POST,
            "/api/v1/webhook-deliveries/{d}/retry",
            false,
            M::GET,
        ),
        r(M::GET, "/api/v1/commands", true, false, M::PATCH),
        admin(M::POST, "/api/v1/commands", true, M::PUT),
        r(M::GET, "/api/v1/commands/{k}", true, false, M::POST),
        admin(M::PUT, "/api/v1/commands/{k}", true, M::PATCH),
        admin(M::DELETE, "/api/v1/commands/{k}", false, M::POST),
        r(M::GET, "/api/v1/users/me/settings", true, false, M::POST),
        r(M::PATCH, "/api/v1/users/me/settings", true, true, M::PUT),
        r(M::DELETE, "/api/v1/patients/{p}", true, false, M::POST),
    ]
}

/// The ids a table fills into route paths: rows of the table user's organization.
struct Ids {
    c: String,
    p: String,
    /// An action under review.
    a: String,
    /// A failed webhook delivery.
    d: String,
    /// A clinic command.
    k: String,
}

impl Ids {
    fn fill(&self, path: &str) -> String {
        fill_with(path, |_| None, self)
    }
}

/// `path` with its placeholders replaced: by `odd(placeholder)` where that gives an id, by
/// the id in `ids` otherwise.
fn fill_with(path: &str, odd: impl Fn(&str) -> Option<String>, ids: &Ids) -> String {
    let mut out = path.to_owned();
    for (key, id) in [
        ("{c}", &ids.c),
        ("{p}", &ids.p),
        ("{a}", &ids.a),
        ("{d}", &ids.d),
        ("{k}", &ids.k),
    ] {
        out = out.replace(key, &odd(key).unwrap_or_else(|| id.clone()));
    }
    out
}

/// An admin of `user`'s organization and the ids of rows it owns besides the conversation:
/// an action under review, a failed webhook delivery (a confirmed action whose webhook was
/// then removed; a webhook is configured again after) and a clinic command.
async fn org_rows(srv: &TestServer, user: &Client, c: &str, p: &str) -> (Client, Ids) {
    use tandem::ai::Command;
    let org = srv.organization_of(user).await;
    let admin = srv
        .user_with_role(&org, &format!("{}_admin", user.user_id), UserRole::Admin)
        .await;
    let prescription = || Command::WritePrescription {
        medication_name: "metformin".into(),
        dosage: "500 mg".into(),
        frequency: "twice a day".into(),
        details: None,
    };
    let a = support::voice_action(srv, c, &prescription()).await;
    let confirmed = support::voice_action(srv, c, &prescription()).await;
    let put_webhook = || async {
        let res = admin
            .put("/organization/webhook")
            .json(&json!({"url": "http://127.0.0.1:9/hooks/tandem"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    };
    put_webhook().await;
    let res = admin
        .post(&format!("/actions/{confirmed}/confirm"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = admin.delete("/organization/webhook").send().await.unwrap();
    assert_eq!(res.status(), 204);
    put_webhook().await;
    let deliveries = admin
        .get_json(&format!("/actions/{confirmed}/deliveries"), 200)
        .await;
    assert_eq!(deliveries[0]["status"], "failed", "{deliveries}");
    let d = deliveries[0]["id"].as_str().unwrap().to_owned();
    let res = admin
        .post("/commands")
        .json(&referral_command())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let k = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ids = Ids {
        c: c.to_owned(),
        p: p.to_owned(),
        a,
        d,
        k,
    };
    (admin, ids)
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
        "%C3%A9t%C3%A9".into(),
        "%F0%9F%92%A9".into(),
        "%E2%80%AEdi".into(),
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
                br#"{"username":1,"password":[],"refreshToken":{},"firstName":true,"lastName":2,"dob":3,"preferredLanguage":4,"data":5,"url":6,"secret":7,"name":8,"description":9,"examples":10,"parameters":11,"produces":12,"builtinCommands":"yes","wakePhrase":13}"#,
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

fn rest_table(ids: &Ids, token: &str, admin_token: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for route in routes() {
        let path = ids.fill(route.path);
        let (auth, role_token) = match (route.authed, route.admin) {
            (false, _) => (Auth::None, token),
            (true, false) => (Auth::Valid, token),
            (true, true) => (Auth::Header(format!("Bearer {admin_token}")), admin_token),
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
                    Auth::Header(role_token.to_owned()),
                    String::new(),
                ),
                (
                    "Basic scheme",
                    Auth::Header(format!("Basic {role_token}")),
                    String::new(),
                ),
                (
                    "empty Bearer",
                    Auth::Header("Bearer ".into()),
                    String::new(),
                ),
                (
                    "token plus junk",
                    Auth::Header(format!("Bearer {role_token} x")),
                    String::new(),
                ),
                ("only ?token=", Auth::None, format!("?token={role_token}")),
                (
                    "only ?access_token=",
                    Auth::None,
                    format!("?access_token={role_token}"),
                ),
                (
                    "forged header, valid ?token=",
                    Auth::Header("Bearer forged".into()),
                    format!("?token={role_token}"),
                ),
                (
                    "token in a cookie",
                    Auth::Cookie(format!("token={role_token}")),
                    String::new(),
                ),
                (
                    "access_token cookie",
                    Auth::Cookie(format!("access_token={role_token}")),
                    String::new(),
                ),
                (
                    "Authorization cookie",
                    Auth::Cookie(format!("Authorization=Bearer {role_token}")),
                    String::new(),
                ),
            ];
            for (what, auth, query) in wrong_places {
                cases.push(Case {
                    what: format!("{} {}: {what}", route.method, route.path),
                    method: route.method.clone(),
                    path: format!("{path}{query}"),
                    auth,
                    body: route.valid_body(),
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
                    json!({"token": role_token, "accessToken": role_token, "authorization": format!("Bearer {role_token}")})
                        .to_string()
                        .into_bytes(),
                ),
                status: 401,
                code: "unauthorized",
            });
        }
        if route.admin {
            cases.push(Case {
                what: format!("{} {}: a clinician", route.method, route.path),
                method: route.method.clone(),
                path: path.clone(),
                auth: Auth::Valid,
                body: route.valid_body(),
                status: 403,
                code: "forbidden",
            });
        }
        if route.path.contains('{') {
            for id in odd_ids() {
                let shown: String = id.chars().take(40).collect();
                cases.push(Case {
                    what: format!("{} {} with id {shown}", route.method, route.path),
                    method: route.method.clone(),
                    path: fill_with(route.path, |_| Some(id.clone()), ids),
                    auth: auth.clone(),
                    body: route.valid_body(),
                    status: 404,
                    code: "not_found",
                });
            }
        }
    }
    cases.extend(invalid_values(ids, admin_token));
    for path in [
        "/api/v1/../../etc/passwd",
        "/api/v1/%2e%2e/%2e%2e/etc/passwd",
        "/api/v2/conversations",
        "/api/v1/conversations/x/y/z",
        "/api/v1/actions/x/confirm/y",
        "/api/v1/organization/webhook/x",
        "/api/v1/users/other/settings",
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

/// Well-formed JSON the #5 routes must refuse field by field (unknown fields where they are
/// refused, values out of range), and hostile query strings: each 422 `invalid_field` unless
/// noted.
fn invalid_values(ids: &Ids, admin_token: &str) -> Vec<Case> {
    let long = "x".repeat(10_001);
    let mut command_bodies: Vec<(&str, Value)> = Vec::new();
    let mut command = |what, edit: &dyn Fn(&mut Value)| {
        let mut body = referral_command();
        edit(&mut body);
        command_bodies.push((what, body));
    };
    command("an unknown field in produces", &|b| {
        b["produces"]["extra"] = json!(1)
    });
    command("an unknown produces kind", &|b| {
        b["produces"] = json!({"kind": "shell"})
    });
    command("a $ref in parameters", &|b| {
        b["parameters"]["properties"]["specialty"] = json!({"$ref": "#/x"})
    });
    command("a built-in name", &|b| b["name"] = json!("Take_Note"));
    command("a unicode name", &|b| b["name"] = json!("réferer"));
    command("a 65-character name", &|b| {
        b["name"] = json!("n".repeat(65))
    });
    command("a blank description", &|b| b["description"] = json!("  "));
    command("21 examples", &|b| b["examples"] = json!(vec!["refer"; 21]));
    command("a control character in an example", &|b| {
        b["examples"] = json!(["refer\u{0007}"])
    });
    command("parameters nested 7 deep", &|b| {
        let mut p = json!({"type": "string"});
        for _ in 0..6 {
            p = json!({"type": "object", "properties": {"x": p}});
        }
        b["parameters"] = p;
    });
    command("required naming an unknown property", &|b| {
        b["parameters"]["required"] = json!(["nope"])
    });
    command("a built-in action type", &|b| {
        b["produces"]["actionType"] = json!("prescription")
    });

    let mut rows: Vec<(Method, String, String, Value)> = Vec::new();
    for (what, body) in command_bodies {
        rows.push((
            Method::POST,
            "/api/v1/commands".into(),
            what.into(),
            body.clone(),
        ));
        rows.push((
            Method::PUT,
            ids.fill("/api/v1/commands/{k}"),
            what.into(),
            body,
        ));
    }
    let action = ids.fill("/api/v1/actions/{a}");
    for (what, body) in [
        ("an unknown data field", json!({"data": {"bogus": 1}})),
        (
            "scheduledFor on a prescription",
            json!({"data": {"scheduledFor": "2030-01-01"}}),
        ),
        ("no field to change", json!({"data": {}})),
        ("data as an array", json!({"data": [1]})),
        (
            "a number for a string field",
            json!({"data": {"dosage": 5}}),
        ),
        (
            "a blank medication",
            json!({"data": {"medicationName": " "}}),
        ),
        ("an over-long value", json!({"data": {"details": long}})),
    ] {
        rows.push((Method::PATCH, action.clone(), what.into(), body));
    }
    for (what, body) in [
        ("a javascript: URL", json!({"url": "javascript:alert(1)"})),
        ("a file: URL", json!({"url": "file:///etc/passwd"})),
        (
            "credentials in the URL",
            json!({"url": "https://user:pw@ehr.example/h"}),
        ),
        ("a relative URL", json!({"url": "/hooks/tandem"})),
        (
            "a 3000-character URL",
            json!({"url": format!("https://ehr.example/{}", "a".repeat(3000))}),
        ),
        (
            "a short secret",
            json!({"url": "https://ehr.example/h", "secret": "short"}),
        ),
        (
            "a control character in the secret",
            json!({"url": "https://ehr.example/h", "secret": "0123456789abcdef\u{0000}"}),
        ),
    ] {
        rows.push((
            Method::PUT,
            "/api/v1/organization/webhook".into(),
            what.into(),
            body,
        ));
    }
    for (what, body) in [
        ("a numeric wake phrase", json!({"wakePhrase": 5})),
        ("an empty wake phrase", json!({"wakePhrase": ""})),
        (
            "digits in the wake phrase",
            json!({"wakePhrase": "hey 123"}),
        ),
        (
            "a 41-letter wake phrase",
            json!({"wakePhrase": "a".repeat(41)}),
        ),
        (
            "an RTL override in the wake phrase",
            json!({"wakePhrase": "hey\u{202e}tandem"}),
        ),
        (
            "builtinCommands as a string",
            json!({"builtinCommands": "yes"}),
        ),
    ] {
        rows.push((
            Method::PATCH,
            "/api/v1/users/me/settings".into(),
            what.into(),
            body,
        ));
    }
    let mut cases: Vec<Case> = rows
        .into_iter()
        .map(|(method, path, what, body)| Case {
            what: format!("{method} {path}: {what}"),
            method,
            path,
            auth: Auth::Header(format!("Bearer {admin_token}")),
            body: Body::Bytes(body.to_string().into_bytes()),
            status: 422,
            code: "invalid_field",
        })
        .collect();
    let export = ids.fill("/api/v1/conversations/{c}/export");
    let end = ids.fill("/api/v1/conversations/{c}/end");
    for (method, path, status, code) in [
        (
            Method::GET,
            "/api/v1/webhook-deliveries?limit=abc".to_owned(),
            422,
            "invalid_field",
        ),
        (
            Method::GET,
            "/api/v1/webhook-deliveries?limit=-1".into(),
            422,
            "invalid_field",
        ),
        (
            Method::GET,
            "/api/v1/webhook-deliveries?limit=99999999999999999999".into(),
            422,
            "invalid_field",
        ),
        (
            Method::GET,
            "/api/v1/webhook-deliveries?after=..%2F..".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/webhook-deliveries?after=%F0%9F%92%A9".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("{export}?format=exe"),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            format!("{export}?format=%00"),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            format!("{export}?format=%ff"),
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            format!("{end}?wait=maybe"),
            422,
            "invalid_field",
        ),
    ] {
        cases.push(Case {
            what: format!("{method} {path}"),
            method,
            path,
            auth: Auth::Valid,
            body: Body::Empty,
            status,
            code,
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
    header: Option<(&str, &str)>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = header
        .map(|(name, value)| format!("{name}: {value}\r\n"))
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

/// Sends `case` and checks its status and JSON error body; returns the body.
async fn run_case(srv: &TestServer, user: &Client, case: &Case) -> Value {
    let header = match &case.auth {
        Auth::None => None,
        Auth::Valid => Some(("authorization", format!("Bearer {}", user.access_token))),
        Auth::Header(h) => Some(("authorization", h.clone())),
        Auth::Cookie(c) => Some(("cookie", c.clone())),
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
            header.as_ref().map(|(name, value)| (*name, value.as_str())),
            body,
        )
        .await
    } else {
        let mut req = srv.http.request(case.method.clone(), srv.url(&case.path));
        if let Some((name, value)) = &header {
            req = req.header(*name, value);
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
    body
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
    let (admin, ids) = org_rows(&srv, &user, &c, &p).await;
    let before = org_snapshot(&admin, &ids).await;
    let cases = rest_table(&ids, &user.access_token, &admin.access_token);
    assert!(cases.len() > 800, "{} cases", cases.len());
    for case in &cases {
        run_case(&srv, &user, case).await;
    }
    assert_healthy(&srv, &user, &c).await;
    // Nothing in the table created an account or changed a row of the organization.
    let patient = user.get_json(&format!("/patients/{p}"), 200).await;
    assert_eq!(patient["firstName"], "Tab");
    assert_eq!(org_snapshot(&admin, &ids).await, before);
    srv.stop().await;
}

/// Everything an organization's rows look like over REST, for before/after comparisons.
async fn org_snapshot(member: &Client, ids: &Ids) -> Value {
    let mut snapshot = serde_json::Map::new();
    for path in [
        "/conversations",
        "/conversations/{c}",
        "/conversations/{c}/messages",
        "/conversations/{c}/actions",
        "/conversations/{c}/summary",
        "/actions/{a}",
        "/actions/{a}/deliveries",
        "/patients",
        "/patients/{p}",
        "/organization/webhook",
        "/webhook-deliveries",
        "/commands",
        "/commands/{k}",
        "/users/me/settings",
    ] {
        let filled = ids.fill(path);
        snapshot.insert(path.into(), member.get_json(&filled, 200).await);
    }
    Value::Object(snapshot)
}

/// A user of organization B, admin or clinician, on every authenticated REST route with A's
/// ids: 404 where the route takes an id (403 first where B's clinician is not allowed at all),
/// and never A's data in any answer, nor a change to A's rows after any attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organization_is_refused_on_every_rest_route() {
    let (srv, owner, c, p) = table_server("owner").await;
    let (owner_admin, ids) = org_rows(&srv, &owner, &c, &p).await;
    let before = org_snapshot(&owner_admin, &ids).await;
    let marks = [
        ids.c.clone(),
        ids.p.clone(),
        ids.a.clone(),
        ids.d.clone(),
        ids.k.clone(),
        "127.0.0.1:9".to_owned(),
    ];
    let intruder_admin = srv
        .user_in_new_org_as("Other Clinic", "intruder_admin", UserRole::Admin)
        .await;
    let other = srv
        .store
        .organization_by_name("Other Clinic")
        .await
        .unwrap();
    let intruder = srv
        .user_with_role(&other.id, "intruder", UserRole::Clinician)
        .await;

    let mut attempts = 0;
    for (who, is_admin) in [(&intruder_admin, true), (&intruder, false)] {
        for route in routes().into_iter().filter(|r| r.authed) {
            let path = ids.fill(route.path);
            let what = format!("{} {} as {}", route.method, route.path, who.user_id);
            let body = if route.path.contains('{') {
                let (status, code) = if route.admin && !is_admin {
                    (403, "forbidden")
                } else {
                    (404, "not_found")
                };
                let case = Case {
                    what: what.clone(),
                    method: route.method.clone(),
                    path,
                    auth: Auth::Header(format!("Bearer {}", who.access_token)),
                    body: route.valid_body(),
                    status,
                    code,
                };
                run_case(&srv, who, &case).await.to_string()
            } else {
                // Organization-scoped routes act on B's own rows: whatever they answer, it is
                // not A's data.
                let mut req = srv
                    .http
                    .request(route.method.clone(), srv.url(&path))
                    .bearer_auth(&who.access_token);
                if let Body::Bytes(b) = route.valid_body() {
                    req = req.header("content-type", "application/json").body(b);
                }
                let res = req.send().await.unwrap();
                assert!(res.status().as_u16() < 500, "{what}: {}", res.status());
                res.text().await.unwrap()
            };
            for mark in &marks {
                assert!(
                    !body.contains(mark.as_str()),
                    "{what} shows A's {mark}: {body}"
                );
            }
            assert_eq!(
                org_snapshot(&owner_admin, &ids).await,
                before,
                "{what} changed A's rows"
            );
            attempts += 1;
        }
    }
    assert!(attempts >= 60, "{attempts} attempts");
    assert_healthy(&srv, &owner, &c).await;
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
    let (_, ids) = org_rows(&srv, &user, &c, &p).await;
    let org = srv.organization_of(&user).await;
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
                path: ids.fill(route.path),
                auth: Auth::Header(format!("Bearer {token}")),
                body: route.valid_body(),
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
    let audio = connect_with_header(
        &format!("ws://{}/transcription?conversationId={c}", srv.addr),
        &format!("Bearer {}", intruder.access_token),
    )
    .await;
    assert_eq!(refusal(audio).await, (Some("not_found".into()), Some(1008)));
    // Nothing reached A's conversation.
    assert_healthy(&srv, &owner, &c).await;
    let messages = owner
        .get_json(&format!("/conversations/{c}/messages"), 200)
        .await;
    assert_eq!(messages["messages"], json!([]));
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

/// Why `PATCH /actions/:id` refuses `body` for a prescription under review, if it does.
fn action_edit_refusal(body: &[u8]) -> Option<tandem::http::error::ApiError> {
    let edit =
        match tandem::http::filters::parse_json::<tandem::http::models::EditActionRequest>(body) {
            Ok(edit) => edit,
            Err(e) => return Some(e),
        };
    let data = json!({"medicationName": "metformin", "dosage": "500 mg", "frequency": "twice a day", "details": null});
    tandem::actions::edit("prescription", "pending_review", &data, &edit.data, 0)
        .err()
        .map(Into::into)
}

/// Why `PATCH /users/me/settings` refuses `body`, if it does; a patch naming no setting counts
/// as refused here (the route accepts it as a no-op, but it is no seed of that route).
fn settings_refusal(body: &[u8]) -> Option<tandem::http::error::ApiError> {
    use tandem::http::error::ApiError;
    let patch =
        match tandem::http::filters::parse_json::<tandem::http::commands::SettingsPatch>(body) {
            Ok(patch) => patch,
            Err(e) => return Some(e),
        };
    match patch.wake_phrase {
        Some(Some(phrase)) if tandem::commands::wake::normalize(&phrase).is_none() => {
            Some(ApiError::InvalidField("wakePhrase".into()))
        }
        None if patch.builtin_commands.is_none() => {
            Some(ApiError::InvalidField("no setting named".into()))
        }
        _ => None,
    }
}

/// Replays the JSON fuzz targets' kept inputs through the same functions the targets (and the
/// server) call: each is parsed or refused with one of the documented codes, never a panic.
#[test]
fn kept_fuzz_inputs_parse_or_get_a_documented_code() {
    use tandem::http::commands::CommandRequest;
    use tandem::http::filters::parse_json;
    use tandem::http::models::{
        CreateConversationRequest, LoginRequest, PutWebhookRequest, RefreshRequest,
        RegisterRequest, UpdatePatientRequest,
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
    assert!(bodies.len() >= 9, "seeds are committed, #5 bodies included");
    for (name, body) in bodies {
        let codes = [
            parse_json::<RegisterRequest>(&body).err(),
            parse_json::<LoginRequest>(&body).err(),
            parse_json::<RefreshRequest>(&body).err(),
            parse_json::<CreateConversationRequest>(&body).err(),
            parse_json::<UpdatePatientRequest>(&body).err(),
            action_edit_refusal(&body),
            parse_json::<PutWebhookRequest>(&body)
                .and_then(|h| {
                    tandem::webhook::validate_url(&h.url)
                        .map_err(tandem::http::error::ApiError::InvalidField)
                })
                .err(),
            parse_json::<CommandRequest>(&body)
                .and_then(CommandRequest::into_definition)
                .err(),
            settings_refusal(&body),
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
