//! The composition root: [`AppState`] (what every request can reach) and [`run`], which serves
//! the routes on a listener until a shutdown signal, then drains with a deadline.
//!
//! Design decision (mini-redis): the caller binds the listener and passes the shutdown signal
//! in as a future, so `main` owns ports and signals, and tests run the real server on port 0
//! and stop it with a oneshot.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::{self, AuthConfig, Authenticator};
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
    /// Builds the state around an opened (and migrated) store.
    ///
    /// # Errors
    /// [`auth::Error::Config`] when the auth configuration is invalid (secret shorter than
    /// [`auth::MIN_SECRET_BYTES`], empty issuer/audience, bad argon2 cost).
    pub fn new(
        store: Arc<dyn Store>,
        auth: AuthConfig,
        http: HttpConfig,
    ) -> Result<Self, auth::Error> {
        Ok(Self {
            store,
            auth: Arc::new(Authenticator::new(auth)?),
            http: Arc::new(http),
            metrics: Arc::new(Metrics::new()),
        })
    }
}

/// Serves HTTP (REST, ops and, later, the WebSockets) on `listener` until `shutdown`
/// completes. Then it stops accepting, lets in-flight requests finish for up to
/// [`HttpConfig::drain_timeout`], and returns; requests still running after the deadline are
/// abandoned (the runtime's shutdown drops them).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let drain_timeout = state.http.drain_timeout;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
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
    tokio::select! {
        () = &mut server => return,
        _ = signalled_rx => {}
    }
    if tokio::time::timeout(drain_timeout, server).await.is_err() {
        tracing::warn!(
            ?drain_timeout,
            "drain deadline passed; abandoning open connections"
        );
    } else {
        tracing::info!("server drained");
    }
}
