//! A fake OpenAI-compatible provider on 127.0.0.1: the Realtime transcription WebSocket
//! ([`realtime`]) and the HTTP API ([`http`]) on one port, so Tandem is pointed at it through its
//! base URL exactly as it would be at a self-hosted server. No test needs a key or the network.

use std::net::SocketAddr;
use std::sync::Arc;

use warp::Filter as _;

pub mod http;
pub mod realtime;

/// A running fake provider. Dropping it stops the server.
pub struct FakeOpenAi {
    addr: SocketAddr,
    /// Script, fault switches and request log of the Realtime socket.
    pub realtime: Arc<realtime::State>,
    /// Script, fault switches and request log of the HTTP endpoints.
    pub http: Arc<http::State>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeOpenAi {
    /// Starts the fake on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind a loopback port (a broken test machine).
    pub async fn start(realtime: realtime::State, http: http::State) -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port for the fake OpenAI server");
        Self::serve(listener, realtime, http)
    }

    /// Starts the fake on `addr`, for a server started separately with a fixed
    /// `TANDEM_OPENAI_BASE_URL`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start_at(
        addr: SocketAddr,
        realtime: realtime::State,
        http: http::State,
    ) -> std::io::Result<FakeOpenAi> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, realtime, http))
    }

    fn serve(
        listener: tokio::net::TcpListener,
        realtime: realtime::State,
        http: http::State,
    ) -> FakeOpenAi {
        let realtime = Arc::new(realtime);
        let http = Arc::new(http);
        let routes = realtime::route(realtime.clone()).or(http::routes(http.clone()));
        let addr = listener
            .local_addr()
            .expect("local address of a bound socket");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
        FakeOpenAi {
            addr,
            realtime,
            http,
            _stop: stop,
        }
    }

    /// The base URL to configure Tandem with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/v1", self.addr)).expect("a valid loopback URL")
    }
}
