//! How this process shares live conversations with other Tandem instances: where an event
//! goes beyond the local sockets, and which instance may drive a conversation's pipeline.
//!
//! Design decision: the pipeline publishes and claims only through [`Cluster`]. A single
//! instance ([`Standalone`], SQLite or one process on Postgres) delivers to its own [`Hub`]
//! and grants every claim, which is exactly the behaviour before scale-out existed. Several
//! instances on one Postgres ([`postgres::PostgresCluster`]) deliver locally first and relay
//! through `LISTEN/NOTIFY`, and claim a conversation with a session-level advisory lock that
//! dies with the instance's connection.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::hub::{Audience, Hub};

#[cfg(feature = "postgres")]
pub mod postgres;

/// Why a conversation could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another instance drives the conversation (its audio socket is connected there).
    /// Expected; the client may retry once that socket closed or that instance died.
    #[error("the conversation is being recorded through another Tandem instance")]
    Busy,
    /// The coordination database could not be asked; transient.
    #[error("the instance coordination database is unavailable")]
    Unavailable,
}

impl Error {
    /// Stable code for the client's `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Busy => "conversation_busy",
            Error::Unavailable => "cluster_unavailable",
        }
    }
}

/// Event delivery and conversation ownership across the instances serving one database.
///
/// # For Implementations
/// `publish` never waits (the pipeline never waits on a client) and delivers each event
/// exactly once to every subscribed socket on every instance, local ones included; events
/// published by one instance keep their order everywhere. `claim` succeeds for at most one
/// instance at a time per conversation, is counted (claims from the same instance nest, each
/// undone by one `release`), and a dead instance's claims lapse by themselves.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Sends a serialized event to the conversation's sockets of `audience`, on every instance.
    fn publish(&self, conversation_id: &str, audience: Audience, frame: Arc<str>);

    /// Takes the right to run the conversation's pipeline on this instance.
    ///
    /// # Errors
    /// [`Error::Busy`] if another instance holds it; [`Error::Unavailable`] if that cannot be
    /// decided now.
    async fn claim(&self, conversation_id: &str) -> Result<(), Error>;

    /// Gives back one [`claim`](Self::claim); the last one frees the conversation for others.
    async fn release(&self, conversation_id: &str);

    /// Asks the other instances to stop the conversation's audio, as the visit was ended
    /// through this one (the one driving it ends its audio sockets and drains).
    fn stop_audio_elsewhere(&self, conversation_id: &str);

    /// Conversations whose audio other instances asked this one to stop; `None` when there
    /// are no other instances.
    fn stop_requests(&self) -> Option<broadcast::Receiver<String>>;
}

/// The only instance: local delivery, every claim granted (the live-conversation registry
/// already keeps one runtime per conversation inside a process).
pub struct Standalone {
    hub: Arc<Hub>,
}

impl Standalone {
    pub fn new(hub: Arc<Hub>) -> Self {
        Standalone { hub }
    }
}

#[async_trait]
impl Cluster for Standalone {
    fn publish(&self, conversation_id: &str, audience: Audience, frame: Arc<str>) {
        self.hub.publish(conversation_id, audience, frame);
    }

    async fn claim(&self, _conversation_id: &str) -> Result<(), Error> {
        Ok(())
    }

    async fn release(&self, _conversation_id: &str) {}

    fn stop_audio_elsewhere(&self, _conversation_id: &str) {}

    fn stop_requests(&self) -> Option<broadcast::Receiver<String>> {
        None
    }
}

/// The cluster a database setting calls for: several-instance coordination over a
/// `postgres://` URL (with the `postgres` feature), otherwise [`Standalone`]. `keys` are the
/// store's data keys, which seal the event payloads relayed by reference.
///
/// # Errors
/// The Postgres coordination connections cannot be opened.
pub async fn for_database(
    database: &str,
    keys: Option<Arc<crate::store::Keyring>>,
    hub: Arc<Hub>,
) -> Result<Arc<dyn Cluster>, Error> {
    #[cfg(feature = "postgres")]
    if crate::store::is_postgres_url(database) {
        // The Postgres store refuses to open without configured keys, so they are here.
        let Some(keys) = keys else {
            tracing::error!("several-instance mode needs TANDEM_DATA_KEYS");
            return Err(Error::Unavailable);
        };
        return Ok(Arc::new(
            postgres::PostgresCluster::start(database, hub, keys).await?,
        ));
    }
    // Only a Postgres URL (with the feature) selects another cluster, which needs the keys.
    let _ = (database, keys);
    Ok(Arc::new(Standalone::new(hub)))
}
