//! The HTTP surface: the REST API under `/api/v1`, the ops endpoints (`/healthz`, `/readyz`,
//! `/metrics`), the web console (`/app`), CORS, the access log and HTTP metrics.
//!
//! [`routes`] only assembles filters; the work is in [`handlers`], the reusable filters in
//! [`filters`], the wire shapes in [`models`] and the error model in [`error`].
//!
//! Design decision: the route table is recovered *inside* the CORS/logging wrapper, so every
//! response — success, handler error or warp rejection — gets the same JSON error shape, the
//! CORS header, an access-log line and a metrics sample. CORS preflights are answered before
//! routing, so they need no route of their own.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Reply as _};

pub mod actions;
pub mod audit_log;
pub mod commands;
pub mod console;
pub mod cors;
pub mod error;
pub mod filters;
pub mod handlers;
pub mod models;
pub mod records;
pub mod ws;
pub mod ws_audio;
pub mod ws_control;

use crate::server::AppState;
use filters::{client_ip, json_body, raw_query, with_auth, with_state};
use handlers::respond;

/// HTTP settings. Plain data so tests build it without the CLI.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Origins allowed to call the API from a browser (exact match, e.g.
    /// `http://localhost:5173`; `*` allows any).
    pub cors_origins: Vec<String>,
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: u64,
    /// Whether `POST /api/v1/auth/register` creates accounts (403 otherwise).
    pub registration_open: bool,
    /// After the shutdown signal, how long in-flight requests may take before the server
    /// stops waiting for them.
    pub drain_timeout: Duration,
    /// Minimum spacing between frames on a control socket. The original frontend keeps only
    /// the latest frame per socket, so two frames a few milliseconds apart can lose the first;
    /// zero turns pacing off for clients that read every frame.
    pub control_pacing: Duration,
    /// Largest audio-socket message; a larger one gets a `frame_too_large` event and closes
    /// the socket with 1009.
    pub max_audio_message_bytes: usize,
}

impl Default for HttpConfig {
    /// The original frontend's development origins, 1 MiB bodies, open registration, 10 s
    /// drain.
    fn default() -> Self {
        Self {
            cors_origins: vec![
                "http://localhost:5173".to_owned(),
                "http://localhost:3000".to_owned(),
            ],
            max_body_bytes: 1024 * 1024,
            registration_open: true,
            drain_timeout: Duration::from_secs(10),
            control_pacing: Duration::from_millis(60),
            max_audio_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Every route of the server, wrapped in CORS, the access log and HTTP metrics. Never
/// rejects: failures are already JSON responses.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let app = ops(state.clone())
        .or(api(state.clone()))
        .unify()
        .or(action_api(state.clone()))
        .unify()
        .or(sockets(state.clone()))
        .unify()
        .or(console::route())
        .unify()
        .recover(error::handle_rejection)
        .unify();
    let cors = cors::Cors::new(&state.http.cors_origins);
    let preflight_cors = cors.clone();
    let preflight = warp::method().and(warp::header::headers_cloned()).and_then(
        move |method: Method, headers: HeaderMap| {
            let cors = preflight_cors.clone();
            async move {
                if cors::Cors::is_preflight(&method, &headers) {
                    Ok(cors.preflight(&headers))
                } else {
                    Err(warp::reject::not_found())
                }
            }
        },
    );
    let metrics = state.metrics.clone();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(preflight.or(app).unify())
        .map(
            move |start: Instant,
                  method: Method,
                  path: FullPath,
                  query: String,
                  headers: HeaderMap,
                  res: Response| {
                let res = cors.decorate(&headers, res);
                let elapsed = start.elapsed();
                let route = route_label(path.as_str());
                let status = res.status();
                metrics.http_requests.inc(&[
                    ("method", method.as_str()),
                    ("route", &route),
                    ("status", status.as_str()),
                ]);
                metrics
                    .http_duration
                    .observe_duration(&[("method", method.as_str()), ("route", &route)], elapsed);
                tracing::info!(
                    target: "tandem::access",
                    method = %method,
                    path = path.as_str(),
                    query = %redact_query(&query),
                    status = status.as_u16(),
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    "request"
                );
                res
            },
        )
}

/// `/healthz`, `/readyz`, `/metrics`: unauthenticated, for load balancers and Prometheus.
fn ops(state: AppState) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .then(handlers::health)
        .map(respond);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(handlers::readyz)
        .map(respond);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(handlers::metrics)
        .map(respond);
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}

/// Largest control-socket message; requests are small JSON objects.
const CONTROL_MESSAGE_BYTES: usize = 64 * 1024;

/// The WebSockets: audio on `/transcription`, control on `/ws` and `/` (the original frontend
/// uses `/ws`; the original backend served every other path). Authentication happens after the
/// upgrade so refusals carry the original close codes.
fn sockets(state: AppState) -> BoxedFilter<(Response,)> {
    let upgrade = || {
        warp::ws()
            .and(with_state(state.clone()))
            .and(warp::header::headers_cloned())
            .and(raw_query())
    };
    let audio = warp::path!("transcription").and(upgrade()).map(
        |ws: warp::ws::Ws, state: AppState, headers: HeaderMap, query: String| {
            let limit = state.http.max_audio_message_bytes;
            // A frame up to twice the limit is read to its end before it is refused, so the
            // `frame_too_large` event and the 1009 close reach the client: refusing at the
            // header leaves the payload unread, and closing over unread input resets the
            // connection, which can destroy both. Larger frames are refused at the header.
            ws.max_message_size(limit)
                .max_frame_size(limit.saturating_mul(2))
                .on_upgrade(move |socket| ws_audio::serve(socket, state, headers, query))
                .into_response()
        },
    );
    let control = warp::path!("ws")
        .or(warp::path::end())
        .unify()
        .and(upgrade())
        .and(client_ip())
        .map(
            |ws: warp::ws::Ws,
             state: AppState,
             headers: HeaderMap,
             query: String,
             remote: Option<std::net::IpAddr>| {
                ws.max_message_size(CONTROL_MESSAGE_BYTES)
                    .max_frame_size(CONTROL_MESSAGE_BYTES * 2)
                    .on_upgrade(move |socket| {
                        ws_control::serve(socket, state, headers, query, remote)
                    })
                    .into_response()
            },
        );
    audio.or(control).unify().boxed()
}

/// The REST API under `/api/v1`.
fn api(state: AppState) -> BoxedFilter<(Response,)> {
    let limit = state.http.max_body_bytes;
    let st = || with_state(state.clone());
    let auth = || with_auth(state.clone());

    let health = warp::path!("api" / "v1" / "health")
        .and(warp::get())
        .then(handlers::health)
        .map(respond)
        .boxed();
    let register = warp::path!("api" / "v1" / "auth" / "register")
        .and(warp::post())
        .and(st())
        .and(json_body(limit))
        .then(handlers::register)
        .map(respond)
        .boxed();
    let login = warp::path!("api" / "v1" / "auth" / "login")
        .and(warp::post())
        .and(st())
        .and(client_ip())
        .and(json_body(limit))
        .then(handlers::login)
        .map(respond)
        .boxed();
    let refresh = warp::path!("api" / "v1" / "auth" / "refresh")
        .and(warp::post())
        .and(st())
        .and(json_body(limit))
        .then(handlers::refresh)
        .map(respond)
        .boxed();
    let me = warp::path!("api" / "v1" / "auth" / "me")
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(handlers::me)
        .map(respond)
        .boxed();

    let conversations = warp::path!("api" / "v1" / "conversations");
    let list_conversations = conversations
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(handlers::list_conversations)
        .map(respond)
        .boxed();
    let create_conversation = conversations
        .and(warp::post())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(handlers::create_conversation)
        .map(respond)
        .boxed();
    let get_conversation = warp::path!("api" / "v1" / "conversations" / String)
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| handlers::get_conversation(state, p, id))
        .map(respond)
        .boxed();
    let messages = warp::path!("api" / "v1" / "conversations" / String / "messages")
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(|id, state, p, q| handlers::list_messages(state, p, id, q))
        .map(respond)
        .boxed();
    let actions = warp::path!("api" / "v1" / "conversations" / String / "actions")
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| handlers::list_actions(state, p, id))
        .map(respond)
        .boxed();
    let history = warp::path!("api" / "v1" / "conversations" / String / "medical-history")
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| handlers::medical_history(state, p, id))
        .map(respond)
        .boxed();
    let summary = warp::path!("api" / "v1" / "conversations" / String / "summary")
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| records::get_summary(state, p, id))
        .map(respond)
        .boxed();
    let resummarize = warp::path!("api" / "v1" / "conversations" / String / "summary")
        .and(warp::post())
        .and(st())
        .and(auth())
        .then(|id, state, p| records::regenerate_summary(state, p, id))
        .map(respond)
        .boxed();
    let end = warp::path!("api" / "v1" / "conversations" / String / "end")
        .and(warp::post())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(|id, state, p, q| records::end_conversation(state, p, id, q))
        .map(respond)
        .boxed();
    let export = warp::path!("api" / "v1" / "conversations" / String / "export")
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(|id, state, p, q| records::export(state, p, id, q))
        .map(respond)
        .boxed();

    let list_patients = warp::path!("api" / "v1" / "patients")
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(handlers::list_patients)
        .map(respond)
        .boxed();
    let get_patient = warp::path!("api" / "v1" / "patients" / String)
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| handlers::get_patient(state, p, id))
        .map(respond)
        .boxed();
    let update_patient = warp::path!("api" / "v1" / "patients" / String)
        .and(warp::patch())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(|id, state, p, body| handlers::update_patient(state, p, id, body))
        .map(respond)
        .boxed();

    [
        register,
        login,
        refresh,
        me,
        list_conversations,
        create_conversation,
        get_conversation,
        messages,
        actions,
        history,
        summary,
        resummarize,
        end,
        export,
        list_patients,
        get_patient,
        update_patient,
        commands::routes(state.clone()),
    ]
    .into_iter()
    .fold(health, |acc, route| acc.or(route).unify().boxed())
}

/// Action review (`/actions/:id`, edit, confirm, cancel, deliveries), the organization's
/// webhook, the delivery log and the audit log.
fn action_api(state: AppState) -> BoxedFilter<(Response,)> {
    let limit = state.http.max_body_bytes;
    let st = || with_state(state.clone());
    let auth = || with_auth(state.clone());

    let get_action = warp::path!("api" / "v1" / "actions" / String)
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| actions::get_action(state, p, id))
        .map(respond)
        .boxed();
    let edit_action = warp::path!("api" / "v1" / "actions" / String)
        .and(warp::patch())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(|id, state, p, body| actions::edit_action(state, p, id, body))
        .map(respond)
        .boxed();
    let confirm = warp::path!("api" / "v1" / "actions" / String / "confirm")
        .and(warp::post())
        .and(st())
        .and(auth())
        .then(|id, state, p| actions::confirm_action(state, p, id))
        .map(respond)
        .boxed();
    let cancel = warp::path!("api" / "v1" / "actions" / String / "cancel")
        .and(warp::post())
        .and(st())
        .and(auth())
        .then(|id, state, p| actions::cancel_action(state, p, id))
        .map(respond)
        .boxed();
    let action_deliveries = warp::path!("api" / "v1" / "actions" / String / "deliveries")
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| actions::action_deliveries(state, p, id))
        .map(respond)
        .boxed();

    let webhook = || warp::path!("api" / "v1" / "organization" / "webhook");
    let get_webhook = webhook()
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(actions::get_webhook)
        .map(respond)
        .boxed();
    let put_webhook = webhook()
        .and(warp::put())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(actions::put_webhook)
        .map(respond)
        .boxed();
    let delete_webhook = webhook()
        .and(warp::delete())
        .and(st())
        .and(auth())
        .then(actions::delete_webhook)
        .map(respond)
        .boxed();
    let deliveries = warp::path!("api" / "v1" / "webhook-deliveries")
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(actions::list_deliveries)
        .map(respond)
        .boxed();
    let retry = warp::path!("api" / "v1" / "webhook-deliveries" / String / "retry")
        .and(warp::post())
        .and(st())
        .and(auth())
        .then(|id, state, p| actions::retry_delivery(state, p, id))
        .map(respond)
        .boxed();

    let audit = warp::path!("api" / "v1" / "audit")
        .and(warp::get())
        .and(st())
        .and(auth())
        .and(warp::query())
        .then(audit_log::list)
        .map(respond)
        .boxed();

    [
        edit_action,
        confirm,
        cancel,
        action_deliveries,
        get_webhook,
        put_webhook,
        delete_webhook,
        deliveries,
        retry,
        audit,
    ]
    .into_iter()
    .fold(get_action, |acc, route| acc.or(route).unify().boxed())
}

/// A bounded-cardinality label for metrics: known path words kept, anything else (ids,
/// junk from scanners) becomes `:id`.
fn route_label(path: &str) -> String {
    const WORDS: &[&str] = &[
        "api",
        "v1",
        "health",
        "auth",
        "register",
        "login",
        "refresh",
        "me",
        "conversations",
        "patients",
        "messages",
        "actions",
        "medical-history",
        "summary",
        "end",
        "export",
        "confirm",
        "cancel",
        "deliveries",
        "organization",
        "webhook",
        "webhook-deliveries",
        "retry",
        "audit",
        "commands",
        "users",
        "settings",
        "healthz",
        "readyz",
        "metrics",
        "ws",
        "transcription",
        "app",
    ];
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(if WORDS.contains(&seg) { seg } else { ":id" });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The query string with the values of credential parameters replaced, for the access log.
pub fn redact_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let decoded = url::form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.to_ascii_lowercase())
                .unwrap_or_default();
            if matches!(
                decoded.as_str(),
                "token" | "access_token" | "accesstoken" | "refresh_token" | "refreshtoken"
            ) {
                format!("{key}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_hide_ids() {
        assert_eq!(
            route_label("/api/v1/conversations/0190-abc/messages"),
            "/api/v1/conversations/:id/messages"
        );
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/wp-admin.php"), "/:id");
    }

    #[test]
    fn tokens_redacted_from_queries() {
        assert_eq!(
            redact_query("conversationId=c1&token=eyJabc.def"),
            "conversationId=c1&token=REDACTED"
        );
        assert_eq!(redact_query("TOKEN=x"), "TOKEN=REDACTED");
        assert_eq!(redact_query("to%6Ben=x"), "to%6Ben=REDACTED");
        assert_eq!(redact_query("limit=5"), "limit=5");
        assert_eq!(redact_query(""), "");
    }
}
