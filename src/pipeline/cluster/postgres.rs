//! Several Tandem instances on one Postgres: events relayed with `LISTEN/NOTIFY`, conversations
//! claimed with session-level advisory locks.
//!
//! Design decisions:
//! - An event is delivered to this instance's sockets directly and relayed to the others;
//!   every instance ignores notifications it sent itself, so each socket gets it once.
//! - Each instance publishes through one connection, in publish order, so its events arrive
//!   everywhere in that order. Envelopes carry a per-instance sequence number: a receiver drops
//!   a repeat (a NOTIFY retried after a lost reply) and sees a gap (events dropped by the
//!   sender: outgoing queue full, or refused by the database). Events sent while a receiver's
//!   listening connection is down are lost for it too; their gap would show only with the
//!   sender's next event, so a reconnect counts as a possible loss at once. That sender's next
//!   gap is still told: it cannot say whether its events were lost in the outage or dropped
//!   by the sender after the reconnect notice, and one notice too many costs little.
//! - A possible loss is told to the clients, not only logged: every control socket of this
//!   instance watching a conversation gets `error` [`EVENTS_MISSED`] and re-fetches it over
//!   REST (`LISTEN` cannot replay; the store has everything). At most once per
//!   [`MISSED_INTERVAL`] ([`Notices`]): under overload most envelopes show a gap, and a notice
//!   for each (up to [`MAX_WARNINGS`](crate::pipeline::hub::MAX_WARNINGS) frames per socket)
//!   would fill the clients' queues, drop real events and evict sockets just when the system
//!   is degraded. A loss seen inside the interval is told when it ends.
//! - The publisher retries an envelope while the failure is the connection's or the server's
//!   state (closed, I/O, timeouts, shutdown, serialization failures, out of resources, a
//!   read-only standby, a full `NOTIFY` queue): the event goes out once the database is back.
//!   One the server refuses for what it says (anything else [`transient_state`] does not
//!   name, e.g. a violated constraint) would be refused every time and hold up every later
//!   event, so it is dropped after [`REFUSED_TRIES`] tries and logged as an error.
//! - A notification carries at most [`NOTIFY_INLINE_LIMIT`] bytes (Postgres refuses payloads
//!   of 8000 bytes or more); a larger event (TTS audio, long summaries) is written to
//!   `event_payloads` and the notification carries its row id. Rows are swept after
//!   [`PAYLOAD_TTL`].
//! - Every notification's body is sealed with the data keys (XChaCha20-Poly1305, bound to the
//!   channel, sender, number, conversation and kind): `LISTEN`/`NOTIFY` need no privilege, so
//!   any account on the database could otherwise read events (notes, summaries) or forge
//!   them. A notification that does not open is ignored, before its number is looked at.
//! - A claim is `pg_try_advisory_lock` on a connection used for nothing else: when the
//!   instance dies, the server ends its session and the locks are free at once.
//! - Ending a visit through an instance that does not drive it sends a stop request the same
//!   way; the driving instance ends its audio, and the requester knows it drained when it can
//!   claim the conversation itself.
//! - Channel and lock keys include `current_schema()`, so installs (and tests) sharing a
//!   database in separate schemas do not see each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Cluster, Error};
use crate::pipeline::event::ServerEvent;
use crate::pipeline::hub::{Audience, Hub};
use crate::store::{new_id, now_millis, Keyring};

/// Largest notification sent inline; bigger events go by reference. Below the server's
/// 8000-byte limit with room for the channel name.
pub const NOTIFY_INLINE_LIMIT: usize = 7000;

/// Tries of an envelope the server refuses before it is dropped: a few, so a refusal that is
/// really a transient state missing from [`transient_state`] still gets a chance.
const REFUSED_TRIES: u32 = 3;

/// The `error` code sent to control sockets when relayed events may have been lost.
pub const EVENTS_MISSED: &str = "events_missed";

/// Shortest time between two [`EVENTS_MISSED`] notices of one instance: long enough that a
/// gap in every envelope costs a client a few frames a second, short enough that a re-fetch
/// follows the loss promptly.
pub const MISSED_INTERVAL: Duration = Duration::from_secs(1);

const EVENTS_MISSED_MESSAGE: &str = "Some live updates for this conversation may have been \
missed; re-fetch it (messages, actions, summary) over the REST API.";

/// [`EVENTS_MISSED_MESSAGE`] for a socket watching too many conversations to name each.
const EVENTS_MISSED_ALL_MESSAGE: &str = "Some live updates may have been missed; re-fetch \
the conversations you show (messages, actions, summary) over the REST API.";

/// How long a by-reference payload is kept for receivers to fetch.
const PAYLOAD_TTL: Duration = Duration::from_secs(60);

/// Events waiting for the publisher connection. Full (Postgres slow or away for long): the
/// event is dropped for other instances and logged; local sockets already have it, and its
/// sequence number is skipped so the receivers see the gap.
const OUTGOING_CAPACITY: usize = 4096;

/// At most this many publishing instances are tracked for ordering; past it the table starts
/// over (instance ids change on every restart, so old ones pile up in a long-lived process).
const MAX_TRACKED_INSTANCES: usize = 1024;

/// How often the claim connection is checked, so claims lost with it are taken again.
const LEASE_CHECK: Duration = Duration::from_secs(2);

/// Stop requests waiting for the pipeline; a burst of ended visits is far smaller. Lagging
/// (dropped) requests are logged; those visits drain at their next audio socket close.
const STOP_REQUESTS: usize = 64;

/// The key a conversation's advisory lock is taken on.
const LOCK_KEY: &str =
    "hashtextextended('tandem.conversation.' || current_schema() || '.' || $1, 0)";

/// One relayed event, as a notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    instance: String,
    conversation: String,
    audience: Audience,
    seq: u64,
    /// The serialized event (sealed with the data keys once on the wire, see [`notify`]), when
    /// it fits in a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    /// Otherwise the `event_payloads` row holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_id: Option<i64>,
    /// No event: a request to stop the conversation's audio.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    stop_audio: bool,
}

/// [`Cluster`] over Postgres. Its background tasks stop when it is dropped.
pub struct PostgresCluster {
    instance: String,
    hub: Arc<Hub>,
    /// To the publisher task; see [`OUTGOING_CAPACITY`] for the full policy.
    outgoing: mpsc::Sender<Envelope>,
    /// Envelopes dropped at a full queue since the publisher last numbered one.
    skipped: Arc<AtomicU64>,
    leases: Arc<Leases>,
    /// Stop requests from other instances, to the pipeline; see [`STOP_REQUESTS`].
    stops: broadcast::Sender<String>,
    _stop: DropGuard,
}

impl PostgresCluster {
    /// Opens the coordination connections (publish, listen, claims) and starts relaying.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (the cause is logged) if the URL is invalid or a connection or
    /// the `LISTEN` fails.
    ///
    /// `keys` seal the payloads stored in `event_payloads` (summaries, action fields: the
    /// visit's text, encrypted at rest like the rows they come from).
    pub async fn start(
        url: &str,
        hub: Arc<Hub>,
        keys: Arc<Keyring>,
    ) -> Result<PostgresCluster, Error> {
        let instance = new_id();
        let mut config: Config = url.parse().map_err(|e| {
            tracing::error!(error = %e, "invalid postgres url for instance coordination");
            Error::Unavailable
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name(format!("tandem-cluster-{instance}"));
        let mut publisher = Conn::new(config.clone(), "publish");
        let channel: String = publisher
            .get()
            .await
            .map_err(unavailable)?
            .0
            .query_one(
                "SELECT 'tandem_events_' || left(md5(current_schema()), 16)",
                &[],
            )
            .await
            .map_err(unavailable)?
            .try_get(0)
            .map_err(unavailable)?;
        let stop = CancellationToken::new();
        let (outgoing, rx) = mpsc::channel(OUTGOING_CAPACITY);
        let skipped = Arc::new(AtomicU64::new(0));
        let (stops, _) = broadcast::channel(STOP_REQUESTS);
        let listener = Listener {
            config: config.clone(),
            channel: channel.clone(),
            instance: instance.clone(),
            hub: Arc::clone(&hub),
            fetch: Conn::new(config.clone(), "fetch"),
            keys: Arc::clone(&keys),
            last_seq: HashMap::new(),
            notices: Notices::default(),
            stops: stops.clone(),
        };
        // Listening before the first publish, so no event of this instance's start is missed.
        let (client, connection) = listener.listen().await.map_err(unavailable)?;
        let leases = Arc::new(Leases {
            state: tokio::sync::Mutex::new(LeaseState {
                conn: Conn::new(config, "claims"),
                held: HashMap::new(),
            }),
        });
        leases.check().await.map_err(unavailable)?;
        tokio::spawn(publish(
            publisher,
            keys,
            channel.clone(),
            Queue {
                rx,
                skipped: Arc::clone(&skipped),
            },
            stop.clone(),
        ));
        tokio::spawn(listener.run(client, connection, stop.clone()));
        tokio::spawn(Arc::clone(&leases).keep(stop.clone()));
        tracing::info!(%instance, %channel, "several-instance mode: events relayed through postgres");
        Ok(PostgresCluster {
            instance,
            hub,
            outgoing,
            skipped,
            leases,
            stops,
            _stop: stop.drop_guard(),
        })
    }
}

fn unavailable(e: tokio_postgres::Error) -> Error {
    tracing::error!(error = %e, "instance coordination database unavailable");
    Error::Unavailable
}

#[async_trait]
impl Cluster for PostgresCluster {
    fn publish(&self, conversation_id: &str, audience: Audience, frame: Arc<str>) {
        self.hub
            .publish(conversation_id, audience, Arc::clone(&frame));
        self.relay(conversation_id, audience, Some(frame.to_string()));
    }

    async fn claim(&self, conversation_id: &str) -> Result<(), Error> {
        self.leases.claim(conversation_id).await
    }

    async fn release(&self, conversation_id: &str) {
        self.leases.release(conversation_id).await;
    }

    fn stop_audio_elsewhere(&self, conversation_id: &str) {
        self.relay(conversation_id, Audience::Audio, None);
    }

    fn stop_requests(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.stops.subscribe())
    }
}

impl PostgresCluster {
    /// Queues an envelope for the other instances: an event, or (`None`) a stop request.
    fn relay(&self, conversation_id: &str, audience: Audience, event: Option<String>) {
        let envelope = Envelope {
            instance: self.instance.clone(),
            conversation: conversation_id.to_owned(),
            audience,
            // Numbered by the publisher task as it sends, so numbers follow the wire order even
            // when several threads relay at once.
            seq: 0,
            stop_audio: event.is_none(),
            event,
            payload_id: None,
        };
        if self.outgoing.try_send(envelope).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conversation_id,
                "event relay queue full; other instances miss this event"
            );
        }
    }
}

/// A connection that redials on the next use after it closed.
struct Conn {
    config: Config,
    purpose: &'static str,
    client: Option<Client>,
}

impl Conn {
    fn new(config: Config, purpose: &'static str) -> Self {
        Conn {
            config,
            purpose,
            client: None,
        }
    }

    /// The live client, and whether it was dialed just now.
    async fn get(&mut self) -> Result<(&Client, bool), tokio_postgres::Error> {
        let (client, fresh) = match self.client.take().filter(|c| !c.is_closed()) {
            Some(client) => (client, false),
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                let purpose = self.purpose;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(purpose, error = %e, "coordination connection lost");
                    }
                });
                (client, true)
            }
        };
        Ok((self.client.insert(client), fresh))
    }
}

/// Delay before the `attempt`-th reconnect: doubling from 100 ms, capped at 5 s.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5))
}

/// The publisher's end of the outgoing queue.
struct Queue {
    rx: mpsc::Receiver<Envelope>,
    /// See [`PostgresCluster::skipped`].
    skipped: Arc<AtomicU64>,
}

/// Sends queued envelopes in order (see the module doc for which failures are retried) and
/// sweeps old payloads.
async fn publish(
    mut conn: Conn,
    keys: Arc<Keyring>,
    channel: String,
    queue: Queue,
    stop: CancellationToken,
) {
    let Queue { mut rx, skipped } = queue;
    let mut sweep = tokio::time::interval(PAYLOAD_TTL);
    let mut seq = 0u64;
    loop {
        let mut envelope = tokio::select! {
            () = stop.cancelled() => return,
            envelope = rx.recv() => match envelope {
                Some(envelope) => envelope,
                None => return,
            },
            _ = sweep.tick() => {
                let cutoff = now_millis() - i64::try_from(PAYLOAD_TTL.as_millis()).unwrap_or(0);
                if let Ok((client, _)) = conn.get().await {
                    if let Err(e) = client
                        .execute("DELETE FROM event_payloads WHERE created_at < $1", &[&cutoff])
                        .await
                    {
                        tracing::warn!(error = %e, "sweeping relayed event payloads failed");
                    }
                }
                continue;
            }
        };
        seq += 1 + skipped.swap(0, Ordering::Relaxed);
        envelope.seq = seq;
        let mut attempt = 0;
        let mut refusals = 0;
        while let Err(e) = notify(&mut conn, &keys, &channel, &envelope).await {
            let cause = Cause(&e);
            if cause.refused() {
                refusals += 1;
                if refusals >= REFUSED_TRIES {
                    tracing::error!(
                        conversation_id = %envelope.conversation,
                        kind = %envelope.kind(),
                        seq = envelope.seq,
                        error = %cause,
                        "the database refuses this relayed event; other instances miss it"
                    );
                    break;
                }
            }
            tracing::warn!(error = %cause, attempt, "relaying an event failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry_delay(attempt)) => {}
            }
            attempt += 1;
        }
    }
}

/// A publish failure, as logged and classified.
struct Cause<'a>(&'a tokio_postgres::Error);

impl Cause<'_> {
    /// Whether the server refused the statement for what it says, so it will every time.
    fn refused(&self) -> bool {
        self.0
            .as_db_error()
            .is_some_and(|db| !transient_state(db.code(), db.message()))
    }
}

impl std::fmt::Display for Cause<'_> {
    /// A server error as its SQLSTATE and message only: its detail can quote the row, and so
    /// the (sealed) event.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
            None => std::fmt::Display::fmt(self.0, f),
        }
    }
}

/// Server errors (SQLSTATE and message) that blame the connection or the server's state
/// rather than the statement: the same envelope can succeed later.
fn transient_state(code: &SqlState, message: &str) -> bool {
    // A full notification queue (a listener idle in a transaction holds it) shares its code
    // with statements too big to ever run; the `NOTIFY` in its message tells them apart (an
    // SQL keyword, so it stays in a translated message).
    if *code == SqlState::PROGRAM_LIMIT_EXCEEDED {
        return message.contains("NOTIFY");
    }
    let code = code.code();
    // Connection exception; insufficient resources (too many connections, out of memory or
    // disk); system error (I/O).
    ["08", "53", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::IDLE_SESSION_TIMEOUT,
            // A standby (mid-failover) refuses NOTIFY and writes until the redial reaches the
            // new primary.
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .iter()
        .any(|transient| transient.code() == code)
}

async fn notify(
    conn: &mut Conn,
    keys: &Keyring,
    channel: &str,
    envelope: &Envelope,
) -> Result<(), tokio_postgres::Error> {
    let (client, _) = conn.get().await?;
    // Every envelope carries a sealed body, stop requests too: LISTEN and NOTIFY need no
    // privilege, so any account on the database could read or forge plaintext ones.
    let sealed = keys.seal(
        envelope.event.as_deref().unwrap_or(STOP_BODY),
        &associated_data(channel, envelope),
    );
    let mut wire = Envelope {
        instance: envelope.instance.clone(),
        conversation: envelope.conversation.clone(),
        audience: envelope.audience,
        seq: envelope.seq,
        event: Some(sealed),
        payload_id: None,
        stop_audio: envelope.stop_audio,
    };
    let mut payload = json(&wire);
    if payload.len() > NOTIFY_INLINE_LIMIT {
        let row = client
            .query_one(
                "INSERT INTO event_payloads (created_at, body) VALUES ($1, $2) RETURNING id",
                &[&now_millis(), &wire.event.take()],
            )
            .await?;
        wire.payload_id = Some(row.try_get(0)?);
        payload = json(&wire);
    }
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}

impl Envelope {
    /// The relayed event's `type` (or `stop_audio`), to name it in logs without its content.
    fn kind(&self) -> String {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: String,
        }
        if self.stop_audio {
            return "stop_audio".to_owned();
        }
        self.event
            .as_deref()
            .and_then(|event| serde_json::from_str::<Kind>(event).ok())
            .map_or_else(|| "unknown".to_owned(), |k| k.kind)
    }
}

fn json(envelope: &Envelope) -> String {
    // Strings, integers and a unit enum: serialization cannot fail.
    serde_json::to_string(envelope).unwrap_or_default()
}

/// Receives other instances' events and hands them to the local hub.
struct Listener {
    config: Config,
    channel: String,
    instance: String,
    hub: Arc<Hub>,
    /// Reads by-reference payloads; separate from the listening connection, whose messages
    /// are not polled while one is handled.
    fetch: Conn,
    /// Last sequence number seen per publishing instance.
    last_seq: HashMap<String, u64>,
    /// When possible losses are told.
    notices: Notices,
    /// To the pipeline (no receiver: nothing to stop).
    stops: broadcast::Sender<String>,
    /// Open (authenticate) every notification's body.
    keys: Arc<Keyring>,
}

/// An envelope's number against the last one seen from its sender.
#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    Next,
    /// New, but the sender's earlier events were lost for this instance.
    Gap,
    /// Already delivered (a retried NOTIFY): dropped.
    Repeat,
}

/// Coalesces [`EVENTS_MISSED`] notices: at most one per [`MISSED_INTERVAL`], and a loss seen
/// inside the interval is told when it ends. The clock is passed in, so this is pure.
#[derive(Debug, Default)]
struct Notices {
    /// When the clients were last told.
    told: Option<Instant>,
    /// A loss seen since then, not yet told.
    pending: bool,
}

impl Notices {
    /// A possible loss seen at `now` (or a pending one come [`Notices::due`]): whether to tell
    /// the clients now. If not, it is pending until [`Notices::due`].
    fn loss(&mut self, now: Instant) -> bool {
        if self.told.is_some_and(|told| now < told + MISSED_INTERVAL) {
            self.pending = true;
            return false;
        }
        self.told = Some(now);
        self.pending = false;
        true
    }

    /// When a pending loss is to be told, if there is one.
    fn due(&self) -> Option<Instant> {
        self.told
            .filter(|_| self.pending)
            .map(|told| told + MISSED_INTERVAL)
    }
}

/// What a stop request's sealed body says; only its authenticity matters.
const STOP_BODY: &str = "stop";

/// Binds a sealed body to everything else its notification says (channel, sender, number,
/// conversation, audience, kind), so none of it can be altered or replayed elsewhere, and a
/// stored payload cannot stand in for another event.
fn associated_data(channel: &str, envelope: &Envelope) -> String {
    format!(
        "tdm1|relay|{channel}|{}|{}|{}|{}|{}",
        envelope.instance,
        envelope.seq,
        envelope.conversation,
        json_audience(envelope.audience),
        envelope.stop_audio
    )
}

fn json_audience(audience: Audience) -> String {
    // A unit enum: serialization cannot fail.
    serde_json::to_string(&audience).unwrap_or_default()
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

impl Listener {
    /// Dials and subscribes; the connection must be polled for the notifications.
    async fn listen(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let listen = format!("LISTEN \"{}\"", self.channel);
        {
            let subscribe = client.batch_execute(&listen);
            tokio::pin!(subscribe);
            // The command's reply arrives through the connection, so poll both.
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    result = &mut subscribe => {
                        result?;
                        break;
                    }
                    message = messages.next() => match message {
                        Some(Err(e)) => return Err(e),
                        None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        }
        Ok((client, connection))
    }

    async fn run(mut self, client: Client, connection: Connection, stop: CancellationToken) {
        let mut current = Some((client, connection));
        let mut attempt = 0;
        loop {
            if let Some((client, mut connection)) = current.take() {
                attempt = 0;
                let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
                loop {
                    let due = self.notices.due();
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => message,
                        () = sleep_until(due) => {
                            self.possible_loss(Instant::now());
                            continue;
                        }
                    };
                    match message {
                        Some(Ok(AsyncMessage::Notification(n))) => self.receive(&n).await,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "event relay connection lost; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!("event relay connection closed; reconnecting");
                            break;
                        }
                    }
                }
                drop(client);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry_delay(attempt)) => {}
            }
            attempt += 1;
            match self.listen().await {
                Ok(pair) => {
                    tracing::info!(attempt, "event relay listening again");
                    current = Some(pair);
                    // Told once listening again, so nothing sent after the clients re-fetch is
                    // lost as well.
                    self.possible_loss(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, attempt, "event relay reconnect failed"),
            }
        }
    }

    async fn receive(&mut self, notification: &Notification) {
        let envelope: Envelope = match serde_json::from_str(notification.payload()) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed event notification");
                return;
            }
        };
        if envelope.instance == self.instance {
            return;
        }
        let sealed = match (&envelope.event, envelope.payload_id) {
            (Some(event), _) => event.clone(),
            (None, Some(id)) => match self.fetch(id).await {
                Some(body) => body,
                None => return,
            },
            (None, None) => return,
        };
        // Authenticated before anything else, ordering included: a forged sequence number
        // must not make the real ones look like repeats.
        let frame = match self
            .keys
            .open(&sealed, &associated_data(&self.channel, &envelope))
        {
            // `open` passes unsealed text through (rows older than encryption); here it is
            // a forgery.
            Ok(frame) if sealed.starts_with(crate::store::crypto::ENVELOPE_PREFIX) => frame,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    from = %envelope.instance,
                    "ignoring an event notification that is not sealed with this instance's data keys"
                );
                return;
            }
        };
        match self.in_order(&envelope) {
            Sequence::Next => {}
            Sequence::Gap => self.possible_loss(Instant::now()),
            Sequence::Repeat => return,
        }
        if envelope.stop_audio {
            let _ = self.stops.send(envelope.conversation);
            return;
        }
        self.hub
            .publish(&envelope.conversation, envelope.audience, Arc::from(frame));
    }

    /// Where the envelope stands in its sender's numbering.
    fn in_order(&mut self, envelope: &Envelope) -> Sequence {
        if self.last_seq.len() >= MAX_TRACKED_INSTANCES
            && !self.last_seq.contains_key(&envelope.instance)
        {
            self.last_seq.clear();
        }
        let last = self.last_seq.entry(envelope.instance.clone()).or_insert(0);
        if envelope.seq <= *last {
            return Sequence::Repeat;
        }
        let gap = *last != 0 && envelope.seq > *last + 1;
        if gap {
            tracing::warn!(
                from = %envelope.instance,
                missed = envelope.seq - *last - 1,
                "events from another instance were lost"
            );
        }
        *last = envelope.seq;
        if gap {
            Sequence::Gap
        } else {
            Sequence::Next
        }
    }

    /// Tells the clients about a possible loss seen at `now`, or later (see [`Notices`]).
    fn possible_loss(&mut self, now: Instant) {
        if self.notices.loss(now) {
            self.tell_missed();
        }
    }

    /// Warns every control socket watching a conversation: any of them may have missed
    /// events (a lost notification does not say which conversation it was for).
    fn tell_missed(&self) {
        self.hub.warn_control(|conversation_id| {
            match conversation_id {
                Some(id) => {
                    ServerEvent::conversation_error(EVENTS_MISSED, EVENTS_MISSED_MESSAGE, id)
                }
                None => ServerEvent::error(EVENTS_MISSED, EVENTS_MISSED_ALL_MESSAGE),
            }
            .to_frame()
        });
    }

    async fn fetch(&mut self, id: i64) -> Option<String> {
        let result = match self.fetch.get().await {
            Ok((client, _)) => {
                client
                    .query_opt("SELECT body FROM event_payloads WHERE id = $1", &[&id])
                    .await
            }
            Err(e) => Err(e),
        };
        match result.map(|row| row.map(|r| r.try_get::<_, String>(0))) {
            Ok(Some(Ok(body))) => Some(body),
            Ok(None) => {
                tracing::warn!(payload_id = id, "relayed event payload already swept");
                None
            }
            Ok(Some(Err(e))) | Err(e) => {
                tracing::warn!(payload_id = id, error = %e, "fetching a relayed event failed");
                None
            }
        }
    }
}

/// This instance's claims, on one connection kept for them.
struct Leases {
    state: tokio::sync::Mutex<LeaseState>,
}

struct LeaseState {
    conn: Conn,
    /// Claimed conversations and how many claims each has.
    held: HashMap<String, u32>,
}

impl Leases {
    async fn claim(&self, conversation_id: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if let Some(count) = state.held.get_mut(conversation_id) {
            *count += 1;
            return Ok(());
        }
        let client = state.reclaim_if_redialed().await.map_err(unavailable)?;
        let locked: bool = client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
                &[&conversation_id],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(unavailable)?;
        if !locked {
            return Err(Error::Busy);
        }
        state.held.insert(conversation_id.to_owned(), 1);
        Ok(())
    }

    async fn release(&self, conversation_id: &str) {
        let mut state = self.state.lock().await;
        let Some(count) = state.held.get_mut(conversation_id) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.held.remove(conversation_id);
        // A closed connection took the lock with it: nothing to undo.
        if let Some(client) = state.conn.client.as_ref().filter(|c| !c.is_closed()) {
            if let Err(e) = client
                .query_one(
                    &format!("SELECT pg_advisory_unlock({LOCK_KEY})"),
                    &[&conversation_id],
                )
                .await
            {
                tracing::warn!(%conversation_id, error = %e, "releasing a conversation failed");
            }
        }
    }

    /// Makes sure the claim connection is up (re-taking held claims after a redial).
    async fn check(&self) -> Result<(), tokio_postgres::Error> {
        self.state
            .lock()
            .await
            .reclaim_if_redialed()
            .await
            .map(|_| ())
    }

    /// Notices a lost claim connection within [`LEASE_CHECK`] and takes the claims again.
    async fn keep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(LEASE_CHECK) => {}
            }
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "claim connection unavailable; retrying");
            }
        }
    }
}

impl LeaseState {
    /// The claim connection; when it had to be dialed again, the claims died with the old
    /// session and are taken again (one now held elsewhere is logged: two instances may be
    /// driving that conversation until this one's audio socket closes).
    async fn reclaim_if_redialed(&mut self) -> Result<&Client, tokio_postgres::Error> {
        let (client, fresh) = self.conn.get().await?;
        if fresh {
            for conversation_id in self.held.keys() {
                let locked: bool = client
                    .query_one(
                        &format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
                        &[conversation_id],
                    )
                    .await?
                    .try_get(0)?;
                if !locked {
                    tracing::error!(
                        %conversation_id,
                        "claim lost with the coordination connection and taken by another instance"
                    );
                }
            }
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::hub::MAX_WARNINGS;

    fn envelope(instance: &str, seq: u64) -> Envelope {
        Envelope {
            instance: instance.into(),
            conversation: "c".into(),
            audience: Audience::Control,
            seq,
            event: Some("{}".into()),
            payload_id: None,
            stop_audio: false,
        }
    }

    fn listener(hub: Arc<Hub>) -> Listener {
        Listener {
            config: Config::new(),
            channel: "ch".into(),
            instance: "me".into(),
            hub,
            fetch: Conn::new(Config::new(), "fetch"),
            last_seq: HashMap::new(),
            notices: Notices::default(),
            stops: broadcast::channel(1).0,
            keys: Arc::new(Keyring::parse(&Keyring::generate_entry("k").unwrap()).unwrap()),
        }
    }

    #[test]
    fn repeats_are_dropped_and_each_instance_is_ordered_on_its_own() {
        let mut listener = listener(Arc::new(Hub::new()));
        let mut order = |instance, seq| listener.in_order(&envelope(instance, seq));
        assert_eq!(order("a", 1), Sequence::Next);
        assert_eq!(order("b", 7), Sequence::Next, "first seen: any start");
        assert_eq!(order("a", 1), Sequence::Repeat, "a retried notify");
        assert_eq!(order("a", 2), Sequence::Next);
        assert_eq!(order("a", 5), Sequence::Gap, "a gap is told, not fatal");
        assert_eq!(order("a", 4), Sequence::Repeat);
        assert_eq!(order("b", 8), Sequence::Next);
    }

    fn watched(hub: &Hub) -> crate::pipeline::hub::ClientRx {
        let (_, tx, watching) = hub.client();
        hub.register_control("u", &tx);
        hub.mark_interest("c", "u");
        watching
    }

    #[test]
    fn losses_in_a_row_are_told_once_per_interval_and_the_last_one_when_it_ends() {
        let start = Instant::now();
        let mut notices = Notices::default();
        let mut told = 0;
        // A gap in every envelope, 1000 a second for 10 s.
        for ms in 0..10_000 {
            let now = start + Duration::from_millis(ms);
            if notices.due().is_some_and(|due| due <= now) {
                assert!(notices.loss(now), "a pending loss is told when due");
                told += 1;
            }
            told += usize::from(notices.loss(now));
        }
        assert_eq!(told, 10, "one per interval, not one per gap");
        let due = notices.due().expect("the last gaps are still to be told");
        assert_eq!(due, start + Duration::from_millis(9000) + MISSED_INTERVAL);
        assert!(!notices.loss(due - Duration::from_millis(1)));
        assert!(notices.loss(due));
        assert_eq!(notices.due(), None, "nothing left pending");
        assert!(
            notices.loss(due + MISSED_INTERVAL),
            "a loss after a quiet interval is told at once"
        );
    }

    #[test]
    fn a_gap_after_a_reconnect_notice_is_still_told_when_the_interval_ends() {
        let hub = Arc::new(Hub::new());
        let mut watching = watched(&hub);
        let mut listener = listener(Arc::clone(&hub));
        let start = Instant::now();
        assert_eq!(listener.in_order(&envelope("a", 1)), Sequence::Next);
        // What the reconnect does.
        listener.possible_loss(start);
        let told: serde_json::Value =
            serde_json::from_str(&watching.frames.try_recv().unwrap()).unwrap();
        assert_eq!(
            (&told["type"], &told["code"], &told["conversationId"]),
            (&"error".into(), &EVENTS_MISSED.into(), &"c".into())
        );
        assert_eq!(told["message"], told["text"]);
        // The sender may have dropped these after the notice: told again, coalesced.
        assert_eq!(listener.in_order(&envelope("a", 4)), Sequence::Gap);
        listener.possible_loss(start + Duration::from_millis(10));
        assert_eq!(listener.in_order(&envelope("a", 6)), Sequence::Gap);
        listener.possible_loss(start + Duration::from_millis(20));
        assert!(
            watching.frames.try_recv().is_err(),
            "not inside the interval"
        );
        let due = listener.notices.due().expect("pending");
        assert_eq!(due, start + MISSED_INTERVAL);
        // What the listener's timer does.
        listener.possible_loss(due);
        let again: serde_json::Value =
            serde_json::from_str(&watching.frames.try_recv().unwrap()).unwrap();
        assert_eq!(again["code"], EVENTS_MISSED);
        assert!(watching.frames.try_recv().is_err(), "once for both gaps");
    }

    #[test]
    fn a_flood_of_gaps_leaves_room_in_a_watching_socket_for_real_events() {
        let hub = Arc::new(Hub::new());
        let mut watching = watched(&hub);
        // The socket also watches more conversations, so every notice is MAX_WARNINGS frames.
        for i in 1..MAX_WARNINGS {
            hub.mark_interest(&format!("other{i}"), "u");
        }
        let mut listener = listener(Arc::clone(&hub));
        let start = Instant::now();
        for seq in 1..=500u64 {
            // Every other event of the sender dropped, all within 0.5 s.
            if listener.in_order(&envelope("a", seq * 2)) == Sequence::Gap {
                listener.possible_loss(start + Duration::from_millis(seq));
            }
        }
        let mut frames = 0;
        while watching.frames.try_recv().is_ok() {
            frames += 1;
        }
        assert_eq!(frames, MAX_WARNINGS, "one notice, not 499");
        assert_eq!(watching.state.take_unreported_drops(), 0);
    }

    #[test]
    fn connection_and_server_state_errors_are_retried_statement_errors_are_not() {
        for transient in [
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::IO_ERROR,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(transient_state(&transient, "any"), "{}", transient.code());
        }
        for refused in [
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::CHECK_VIOLATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::SYNTAX_ERROR,
        ] {
            assert!(!transient_state(&refused, "any"), "{}", refused.code());
        }
        // One code, two causes: the server's notification queue is full (a listener idle in
        // a transaction), or the statement itself is too big.
        assert!(transient_state(
            &SqlState::PROGRAM_LIMIT_EXCEEDED,
            "too many notifications in the NOTIFY queue"
        ));
        assert!(!transient_state(
            &SqlState::PROGRAM_LIMIT_EXCEEDED,
            "target lists can have at most 1664 entries"
        ));
        assert!(!transient_state(
            &SqlState::PROGRAM_LIMIT_EXCEEDED,
            "index row size 9000 exceeds btree version 4 maximum 2704"
        ));
    }

    #[test]
    fn an_event_is_named_by_its_kind_never_its_content() {
        let mut e = envelope("a", 1);
        e.event = Some(r#"{"type":"action_updated","payload":{"note":"secret"}}"#.into());
        assert_eq!(e.kind(), "action_updated");
        e.event = Some("not json".into());
        assert_eq!(e.kind(), "unknown");
        e.stop_audio = true;
        assert_eq!(e.kind(), "stop_audio");
    }

    #[test]
    fn envelopes_round_trip_and_reconnects_back_off_to_a_cap() {
        let text = json(&envelope("a", 3));
        assert!(!text.contains("payload_id") && !text.contains("stop_audio"));
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!((back.seq, back.audience), (3, Audience::Control));
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(400));
        assert_eq!(retry_delay(40), Duration::from_secs(5));
    }
}
