//! Integration-test harness: the real server on `127.0.0.1:0` over a temp SQLite file, plus
//! helpers to create accounts and make authorized requests over loopback.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)] // shared by several test binaries, each using a subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tandem::ai::openai::OpenAiConfig;
use tandem::audio::pool::PoolConfig;
use tandem::auth::{Argon2Config, AuthConfig};
use tandem::pipeline::PipelineConfig;
use tandem::retention::RetentionConfig;
use tandem::server::{self, AppState, HttpConfig, PipelineSetup};
use tandem::store::sqlite::SqliteStore;
use tandem::store::{NewUser, Store, UserRole};
use tandem::stt::realtime::RealtimeConfig;
use tandem::testing::fake_openai::{http as fake_http, realtime, FakeOpenAi};
use tandem::webhook::WebhookConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the speech in `fixtures/chrome-webm-opus-1000ms` says: the clinician in English, then
/// the patient in Spanish.
pub const CLINICIAN: &str =
    "Take a note: the patient reports chest pain for three days. Schedule a follow-up in two weeks.";
pub const PATIENT: &str =
    "Me duele el pecho desde hace tres días y tomo metformina dos veces al día.";

/// The fake provider's answers to that recording's two utterances, with their languages.
pub fn speech_script() -> realtime::State {
    realtime::State::new([
        realtime::ScriptLine {
            text: CLINICIAN.into(),
            languages: vec!["en".into()],
        },
        realtime::ScriptLine {
            text: PATIENT.into(),
            languages: vec!["es".into()],
        },
    ])
}

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;
pub mod ws;

/// The HS256 secret every test server uses, so tests can mint their own tokens.
pub const SECRET: &[u8] = b"tandem-integration-test-secret-0123456789";
pub const PASSWORD: &str = "correct horse battery";
/// The provider API key every test server is configured with (the fake accepts any), so
/// tests can check it never leaks.
pub const API_KEY: &str = "sk-tandem-test-0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Auth config for tests: the fixed secret and a cheap argon2 cost (hashes stay argon2id PHC).
pub fn auth_config() -> AuthConfig {
    let mut cfg = AuthConfig::new(SECRET.to_vec());
    cfg.argon2 = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    cfg
}

/// A running server. Dropping it without [`TestServer::stop`] aborts the server task.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub store: Arc<dyn Store>,
    /// The SQLite file (unused when [`Tuning::store`] put another store in).
    pub db_path: PathBuf,
    /// Keeps the temp directory (and the database) alive as long as the server handle.
    pub dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    /// The fake provider the server's pipeline talks to.
    pub fake: FakeOpenAi,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a server with default HTTP settings on a fresh temp database.
pub async fn start() -> TestServer {
    start_with(HttpConfig::default()).await
}

pub async fn start_with(http: HttpConfig) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let path = dir.path().join("tandem.db");
    start_on(dir, &path, http).await
}

/// Starts a server on an existing database file (restart tests).
pub async fn start_on(dir: Arc<tempfile::TempDir>, db_path: &Path, http: HttpConfig) -> TestServer {
    start_full(dir, db_path, http, realtime::State::new(Vec::<&str>::new())).await
}

/// Starts a server whose providers are a loopback fake OpenAI answering utterances with
/// `script`.
pub async fn start_scripted(script: realtime::State) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let path = dir.path().join("tandem.db");
    start_full(dir, &path, HttpConfig::default(), script).await
}

pub async fn start_full(
    dir: Arc<tempfile::TempDir>,
    db_path: &Path,
    http: HttpConfig,
    script: realtime::State,
) -> TestServer {
    start_tuned(dir, db_path, http, script, |_| {}).await
}

/// [`start_full`] with webhook delivery settings (tests use short timeouts and backoff).
pub async fn start_with_webhook(
    dir: Arc<tempfile::TempDir>,
    db_path: &Path,
    http: HttpConfig,
    script: realtime::State,
    webhook: WebhookConfig,
) -> TestServer {
    start_tuned(dir, db_path, http, script, |t| t.webhook = webhook).await
}

/// Settings a fault test shortens (timeouts, retries), applied over the test defaults.
pub struct Tuning {
    pub ai: OpenAiConfig,
    pub stt: RealtimeConfig,
    /// How long SQLite waits for another connection's lock.
    pub sqlite_busy_timeout: Duration,
    /// Serve this store instead of the SQLite file (the Postgres fault tests).
    pub store: Option<Arc<dyn Store>>,
    pub webhook: WebhookConfig,
    /// Pipeline settings (stored audio).
    pub pipeline: PipelineConfig,
    pub retention: RetentionConfig,
}

/// Like [`start_full`], with `tune` adjusting the settings.
pub async fn start_tuned(
    dir: Arc<tempfile::TempDir>,
    db_path: &Path,
    http: HttpConfig,
    script: realtime::State,
    tune: impl FnOnce(&mut Tuning),
) -> TestServer {
    let fake = FakeOpenAi::start(script, fake_http::State::default()).await;
    let mut ai = OpenAiConfig::new(fake.base_url(), Some(API_KEY.to_owned()));
    ai.initial_backoff = Duration::from_millis(5);
    ai.max_backoff = Duration::from_millis(20);
    let mut stt = RealtimeConfig::new(fake.base_url());
    stt.api_key = Some(API_KEY.to_owned());
    let mut tuning = Tuning {
        ai,
        stt,
        sqlite_busy_timeout: Duration::from_secs(5),
        store: None,
        webhook: WebhookConfig::default(),
        pipeline: PipelineConfig::default(),
        retention: RetentionConfig::default(),
    };
    tune(&mut tuning);
    let Tuning {
        ai,
        stt,
        sqlite_busy_timeout,
        store,
        webhook,
        pipeline,
        retention,
    } = tuning;
    let providers = server::openai_providers(ai, stt).expect("providers");
    let setup = PipelineSetup {
        providers,
        config: pipeline,
        pool: PoolConfig::default(),
    };
    let store = store.unwrap_or_else(|| {
        Arc::new(
            SqliteStore::open_with_busy_timeout(db_path, sqlite_busy_timeout).expect("open sqlite"),
        )
    });
    let state = AppState::new(store.clone(), auth_config(), http, setup)
        .expect("app state")
        .with_webhook(webhook)
        .with_retention(retention);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        state,
        store,
        db_path: db_path.to_owned(),
        dir,
        http: reqwest::Client::new(),
        fake,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    /// The organization `user` belongs to.
    pub async fn organization_of(&self, user: &Client) -> String {
        self.store
            .user_by_id(&user.user_id)
            .await
            .expect("the user exists")
            .organization_id
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `/api/v1` + `path`.
    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/api/v1{path}"))
    }

    /// Graceful stop: signals shutdown and waits for the server to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops within the drain deadline")
                .expect("server task");
        }
    }

    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.api("/auth/register"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("register request")
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.api("/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("login request")
    }

    /// Registers `username` over HTTP (default organization) and logs in.
    pub async fn new_user(&self, username: &str) -> Client {
        let res = self.register(username, PASSWORD).await;
        assert_eq!(res.status(), 201, "register {username}");
        self.logged_in(username).await
    }

    /// Creates a new organization with one clinician directly in the store, then logs in
    /// over HTTP.
    pub async fn user_in_new_org(&self, org_name: &str, username: &str) -> Client {
        self.user_in_new_org_as(org_name, username, UserRole::Clinician)
            .await
    }

    /// Like [`TestServer::user_in_new_org`], with the given role.
    pub async fn user_in_new_org_as(
        &self,
        org_name: &str,
        username: &str,
        role: UserRole,
    ) -> Client {
        let org = self
            .store
            .create_organization(org_name)
            .await
            .expect("create org");
        self.user_with_role(&org.id, username, role).await
    }

    /// Creates a user with `role` in an existing organization directly in the store (REST
    /// creates clinicians only), then logs in over HTTP.
    pub async fn user_with_role(
        &self,
        organization_id: &str,
        username: &str,
        role: UserRole,
    ) -> Client {
        let hash = self.state.auth.hash_password(PASSWORD).await.expect("hash");
        self.store
            .create_user(NewUser {
                organization_id: organization_id.to_owned(),
                username: username.to_owned(),
                password_hash: hash,
                preferred_language: "en".into(),
                role,
            })
            .await
            .expect("create user");
        self.logged_in(username).await
    }

    pub async fn logged_in(&self, username: &str) -> Client {
        let res = self.login(username, PASSWORD).await;
        assert_eq!(res.status(), 200, "login {username}");
        let body: Value = res.json().await.expect("login json");
        Client {
            base: self.api(""),
            http: self.http.clone(),
            user_id: body["userId"].as_str().expect("userId").to_owned(),
            access_token: body["accessToken"]
                .as_str()
                .expect("accessToken")
                .to_owned(),
            refresh_token: body["refreshToken"]
                .as_str()
                .expect("refreshToken")
                .to_owned(),
        }
    }
}

/// A logged-in user: REST calls with `Authorization: Bearer`.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl Client {
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
    }

    /// The same user talking to another server on the same database (restart tests): the
    /// token stays valid because every test server signs with [`SECRET`].
    pub fn on(&self, server: &TestServer) -> Client {
        Client {
            base: server.api(""),
            ..self.clone()
        }
    }

    /// `GET` expecting `status`; returns the JSON body.
    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        let res = self.get(path).send().await.expect("request");
        assert_eq!(res.status(), status, "GET {path}");
        res.json().await.expect("json body")
    }

    /// Creates a conversation (and its patient) and returns the 201 body.
    pub async fn create_conversation(&self, first: &str, last: &str, dob: &str) -> Value {
        let res = self
            .post("/conversations")
            .json(&json!({
                "firstName": first,
                "lastName": last,
                "dob": dob,
                "patientLanguage": "es",
            }))
            .send()
            .await
            .expect("create conversation");
        assert_eq!(res.status(), 201, "create conversation");
        res.json().await.expect("json")
    }
}

/// Polls the stored messages until `count` rows exist (or gives up after ~20 s).
pub async fn stored_messages(user: &Client, conversation_id: &str, count: usize) -> Vec<Value> {
    let mut stored = Vec::new();
    for _ in 0..100 {
        let page = user
            .get_json(&format!("/conversations/{conversation_id}/messages"), 200)
            .await;
        stored = page["messages"].as_array().expect("messages").clone();
        if stored.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stored
}

/// Asserts the JSON error shape and returns its code.
pub async fn error_code(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.expect("error body is JSON");
    let code = body["code"].as_str().expect("top-level code").to_owned();
    assert_eq!(body["error"]["code"], code.as_str());
    assert!(body["message"].is_string(), "top-level message: {body}");
    assert_eq!(body["error"]["message"], body["message"]);
    code
}

pub use ws::Ws;

/// Stores the action a built-in voice command produces, as the pipeline would, and returns
/// its id (tests of the review and delivery that follow).
pub async fn voice_action(
    srv: &TestServer,
    conversation_id: &str,
    command: &tandem::ai::Command,
) -> String {
    let planned = tandem::commands::action_for(command, tandem::store::now_millis())
        .expect("an action command");
    srv.store
        .insert_action(tandem::store::NewAction {
            conversation_id: conversation_id.to_owned(),
            kind: planned.kind,
            status: planned.status.to_owned(),
            data: planned.data,
        })
        .await
        .expect("stored")
        .id
}

/// The next control-socket frame other than the medical-history push, which the creator's
/// sockets receive whenever its background generation finishes (tests/records.rs covers it).
pub async fn next_control_json(ws: &mut Ws, within: Duration) -> Value {
    loop {
        let event = ws::next_event(ws, within).await;
        if event["type"] != "medical_history_data" {
            return event;
        }
    }
}

/// A control socket of `user` that has selected `conversation_id`, so it receives the
/// conversation's pushes; the greeting and the selection reply are consumed.
pub async fn control_socket(srv: &TestServer, user: &Client, conversation_id: &str) -> Ws {
    control_socket_at(srv.addr, user, conversation_id).await
}

/// [`control_socket`] on the server at `addr` (a child process, another instance).
pub async fn control_socket_at(addr: SocketAddr, user: &Client, conversation_id: &str) -> Ws {
    use futures_util::SinkExt as _;
    let url = format!("ws://{addr}/ws?token={}", user.access_token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("control socket");
    assert_eq!(
        next_control_json(&mut ws, Duration::from_secs(5)).await["type"],
        "system"
    );
    let select =
        json!({"type": "select_conversation", "payload": {"conversationId": conversation_id}});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        select.to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        next_control_json(&mut ws, Duration::from_secs(5)).await["type"],
        "conversation_selected"
    );
    ws
}
