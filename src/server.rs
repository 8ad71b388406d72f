//! The composition root: [`AppState`] (what every request can reach) and [`run`], which serves
//! the routes on a listener until a shutdown signal, then drains with a deadline.
//!
//! Design decision (mini-redis): the caller binds the listener and passes the shutdown signal
//! in as a future, so `main` owns ports and signals, and tests run the real server on port 0
//! and stop it with a oneshot.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::ai::openai::{
    OpenAiClient, OpenAiCommandDetector, OpenAiConfig, OpenAiHistoryGenerator,
    OpenAiLanguageDetector, OpenAiSummarizer, OpenAiTranslator, OpenAiTts,
};
use crate::ai::{self, LanguageDetector, LocalLanguageDetector};
use crate::audio::pool::{DspPool, PoolConfig};
use crate::auth::{self, AuthConfig, Authenticator};
use crate::metrics::Gauge;
use crate::pipeline::cluster::{Cluster, Standalone};
use crate::pipeline::hub::Hub;
use crate::pipeline::{PipelineConfig, Pipelines, Providers};
use crate::retention::RetentionConfig;
use crate::stt::realtime::{RealtimeConfig, RealtimeStt};
use crate::webhook::worker::DeliveryWorker;
use crate::webhook::WebhookConfig;
use tokio_util::sync::CancellationToken;

/// Why the server could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid authentication configuration: {0}")]
    Auth(auth::Error),
    #[error("cannot start the DSP threads: {0}")]
    DspPool(std::io::Error),
}
pub use crate::http::HttpConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared, cheaply clonable state handed to every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub http: Arc<HttpConfig>,
    /// The process's metric registry; other modules register their families on it.
    pub metrics: Arc<Metrics>,
    /// Live conversations and the hub their events go through.
    pub pipelines: Arc<Pipelines>,
    /// `tandem_ws_connections{socket}`: open control and audio sockets.
    pub ws_connections: Gauge,
    /// Settings of the webhook delivery worker [`run`] starts.
    pub webhook: Arc<WebhookConfig>,
    /// Settings of the retention sweeper [`run`] starts.
    pub retention: Arc<RetentionConfig>,
    /// Closes the open sockets at shutdown, after the pipeline drained.
    pub sockets: crate::http::ws::SocketShutdown,
}

/// What the live pipeline is built from: providers (real or fake), its settings, and the
/// DSP pool's size.
pub struct PipelineSetup {
    pub providers: Providers,
    pub config: PipelineConfig,
    pub pool: PoolConfig,
}

/// The production providers: the OpenAI-compatible HTTP API for language fallback,
/// translation, commands, speech, summaries and medical histories, and the Realtime WebSocket
/// for transcription.
///
/// # Errors
/// The HTTP client cannot be built (a TLS backend failure).
pub fn openai_providers(ai: OpenAiConfig, stt: RealtimeConfig) -> Result<Providers, ai::Error> {
    let client = OpenAiClient::new(ai)?;
    let llm_language: Arc<dyn LanguageDetector> =
        Arc::new(OpenAiLanguageDetector::new(client.clone()));
    Ok(Providers {
        stt: Arc::new(RealtimeStt::new(stt)),
        language: Arc::new(LocalLanguageDetector::new(Some(llm_language))),
        translator: Arc::new(OpenAiTranslator::new(client.clone())),
        commands: Arc::new(OpenAiCommandDetector::new(client.clone())),
        summarizer: Arc::new(OpenAiSummarizer::new(client.clone())),
        history: Arc::new(OpenAiHistoryGenerator::new(client.clone())),
        tts: Arc::new(OpenAiTts::new(client)),
    })
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("auth", &self.auth)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state around an opened (and migrated) store, and starts the DSP pool.
    ///
    /// # Errors
    /// [`StartError::Auth`] when the auth configuration is invalid (secret shorter than
    /// [`auth::MIN_SECRET_BYTES`], empty issuer/audience, bad argon2 cost);
    /// [`StartError::DspPool`] when the OS refuses the DSP threads.
    pub fn new(
        store: Arc<dyn Store>,
        auth: AuthConfig,
        http: HttpConfig,
        pipeline: PipelineSetup,
    ) -> Result<Self, StartError> {
        let hub = Arc::new(Hub::new());
        let cluster = Arc::new(Standalone::new(Arc::clone(&hub)));
        Self::in_cluster(store, auth, http, pipeline, hub, cluster)
    }

    /// Like [`new`](Self::new), for one of several instances: `cluster` (built on `hub`)
    /// relays events to the others and claims conversations (see [`crate::pipeline::cluster::for_database`]).
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn in_cluster(
        store: Arc<dyn Store>,
        auth: AuthConfig,
        http: HttpConfig,
        pipeline: PipelineSetup,
        hub: Arc<Hub>,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let pool = DspPool::new(&pipeline.pool).map_err(StartError::DspPool)?;
        let pipelines = Pipelines::new(
            store.clone(),
            hub,
            cluster,
            pipeline.providers,
            pool,
            pipeline.config,
            &metrics,
        );
        let ws_connections = metrics.gauge(
            "tandem_ws_connections",
            "Open WebSocket connections by socket kind (control, audio).",
        );
        Ok(Self {
            store,
            auth: Arc::new(Authenticator::new(auth).map_err(StartError::Auth)?),
            http: Arc::new(http),
            metrics,
            pipelines,
            ws_connections,
            webhook: Arc::new(WebhookConfig::default()),
            retention: Arc::new(RetentionConfig::default()),
            sockets: crate::http::ws::SocketShutdown::default(),
        })
    }

    /// The same state with other webhook delivery settings (the default is
    /// [`WebhookConfig::default`]).
    #[must_use]
    pub fn with_webhook(mut self, config: WebhookConfig) -> Self {
        self.webhook = Arc::new(config);
        self
    }

    /// The same state with a retention period (the default keeps everything).
    #[must_use]
    pub fn with_retention(mut self, config: RetentionConfig) -> Self {
        self.retention = Arc::new(config);
        self
    }
}

/// Aborts a spawned task when dropped, so a server future that is dropped (the runtime shuts
/// down, a test aborts it) takes its background worker with it, as a crash would.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the webhook delivery worker; `None` (logged) if its HTTP client cannot be built,
/// in which case deliveries wait in the outbox for a process that can send them.
fn start_delivery_worker(state: &AppState, stop: CancellationToken) -> Option<AbortOnDrop> {
    match DeliveryWorker::new(
        state.store.clone(),
        (*state.webhook).clone(),
        &state.metrics,
    ) {
        Ok(worker) => Some(AbortOnDrop(tokio::spawn(worker.run(stop)))),
        Err(e) => {
            tracing::error!(error = %e, "cannot start webhook delivery; deliveries stay queued");
            None
        }
    }
}

/// Serves HTTP (REST, ops and the WebSockets) on `listener`, and runs the webhook delivery
/// worker, the retention sweeper and the recovery of summaries cut off by a stop, until `shutdown` completes. Then it stops accepting, lets in-flight requests finish
/// and the live conversations drain for up to [`HttpConfig::drain_timeout`], then closes every
/// socket (each flushes its queued events and sends 1001, again within the deadline), and
/// returns; work still running after the deadlines is abandoned (the runtime's shutdown drops
/// it).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let drain_timeout = state.http.drain_timeout;
    let pipelines = state.pipelines.clone();
    let stop_workers = CancellationToken::new();
    let deliveries = start_delivery_worker(&state, stop_workers.clone());
    let sweeper = AbortOnDrop(tokio::spawn(crate::retention::run(
        (*state.retention).clone(),
        pipelines.clone(),
        stop_workers.clone(),
    )));
    let recovery = AbortOnDrop(tokio::spawn(
        pipelines.clone().recover_summaries(stop_workers.clone()),
    ));
    let sockets = state.sockets.clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown signal received; draining connections");
        let _ = signalled_tx.send(());
    };
    let server = warp::serve(crate::http::routes(state))
        .incoming(listener)
        .graceful(signal)
        .run();
    tokio::pin!(server);
    // The signal future runs inside warp's, so warp can see it and finish its graceful
    // shutdown (nothing in flight) in the very poll that fired it: a finished server is a
    // shutdown to drain whenever the signal was sent, not only when the signal branch wins.
    let server_done = tokio::select! {
        biased;
        _ = &mut signalled_rx => false,
        () = &mut server => true,
    };
    if server_done && signalled_rx.try_recv().is_err() {
        return;
    }
    // Upgraded WebSockets are not connections warp waits for, so the live conversations are
    // drained alongside the HTTP requests: each STT session commits, delivers its last
    // transcript, and that utterance is processed before the deadline.
    let http = async {
        if !server_done && tokio::time::timeout(drain_timeout, server).await.is_err() {
            tracing::warn!(
                ?drain_timeout,
                "drain deadline passed; abandoning open connections"
            );
        }
    };
    // The delivery worker finishes the attempts in flight (each bounded by its timeout); one
    // cut off by the deadline keeps its lease and is retried after the restart. The
    // retention sweeper stops with it.
    stop_workers.cancel();
    let worker = async {
        if let Some(mut task) = deliveries {
            if tokio::time::timeout(drain_timeout, &mut task.0)
                .await
                .is_err()
            {
                tracing::warn!("drain deadline passed; abandoning webhook attempts in flight");
            }
        }
    };
    // A sweep cut off by the deadline has deleted whole batches only; the rest waits. A
    // recovered summary cut off leaves its conversation `ended` for the next start.
    let (mut sweeper, mut recovery) = (sweeper, recovery);
    let sweep = async {
        let both = async { tokio::join!(&mut sweeper.0, &mut recovery.0) };
        if tokio::time::timeout(drain_timeout, both).await.is_err() {
            tracing::warn!(
                "drain deadline passed; abandoning the retention sweep or summary recovery"
            );
        }
    };
    tokio::join!(http, pipelines.shutdown(drain_timeout), worker, sweep);
    // Last: the drained utterances' events are queued; each socket flushes them and closes.
    sockets.close_all(drain_timeout).await;
    tracing::info!("server drained");
}
