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
use tandem::server::{self, AppState, HttpConfig, PipelineSetup};
use tandem::store::sqlite::SqliteStore;
use tandem::store::{NewUser, Store, UserRole};
use tandem::stt::realtime::RealtimeConfig;
use tandem::testing::fake_openai::{http as fake_http, realtime, FakeOpenAi};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    pub store: Arc<SqliteStore>,
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
    let fake = FakeOpenAi::start(script, fake_http::State::default()).await;
    let mut ai = OpenAiConfig::new(fake.base_url(), Some(API_KEY.to_owned()));
    ai.initial_backoff = Duration::from_millis(5);
    ai.max_backoff = Duration::from_millis(20);
    let mut stt = RealtimeConfig::new(fake.base_url());
    stt.api_key = Some(API_KEY.to_owned());
    let providers = server::openai_providers(ai, stt).expect("providers");
    let setup = PipelineSetup {
        providers,
        config: PipelineConfig::default(),
        pool: PoolConfig::default(),
    };
    let store = Arc::new(SqliteStore::open(db_path).expect("open sqlite"));
    let state = AppState::new(store.clone(), auth_config(), http, setup).expect("app state");
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
        let org = self
            .store
            .create_organization(org_name)
            .await
            .expect("create org");
        let hash = self.state.auth.hash_password(PASSWORD).await.expect("hash");
        self.store
            .create_user(NewUser {
                organization_id: org.id,
                username: username.to_owned(),
                password_hash: hash,
                preferred_language: "en".into(),
                role: UserRole::Clinician,
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

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.access_token)
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
