//! Fan-out of live events to WebSocket clients.
//!
//! Design decision: every client has its own small bounded queue and the hub only ever
//! `try_send`s into it. A slow client loses frames (and is told so, then dropped if it keeps
//! lagging); it never slows the pipeline or the other clients. Dropping is an eviction the
//! socket's tasks wait on ([`ClientTx::evicted`]), because a peer that stopped reading leaves
//! the writer stuck in a send that never completes and would otherwise be held forever. Frames
//! are serialized once and shared as `Arc<str>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

/// Frames a client may have queued before it counts as lagging. Large enough for a burst of
/// one utterance's events (original, translation, TTS, command, completion) many times over.
pub const CLIENT_QUEUE: usize = 64;

/// After this many dropped frames a client is disconnected: it is too far behind to show a
/// coherent conversation, and reconnecting (then `get_messages`) repairs it.
pub const MAX_DROPPED: u32 = 32;

/// Most warnings about separate conversations one control socket gets at once (see
/// [`Hub::warn_control`]); well inside [`CLIENT_QUEUE`].
pub const MAX_WARNINGS: usize = 8;

/// Which sockets of a conversation an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The conversation's `/transcription` sockets (the original sent pipeline results there).
    Audio,
    /// Control sockets (`/ws`, `/`) of users who asked about the conversation.
    Control,
}

/// The receiving half a socket writer task drains.
pub struct ClientRx {
    pub frames: mpsc::Receiver<Arc<str>>,
    /// Shared with the hub's sender; the writer reads it to report lag to its client.
    pub state: Arc<ClientState>,
}

/// Lag bookkeeping shared between the hub (which counts drops) and the socket writer (which
/// reports them).
#[derive(Debug, Default)]
pub struct ClientState {
    dropped: AtomicU32,
    reported: AtomicU32,
    /// Woken when `dropped` passes [`MAX_DROPPED`]: the client is evicted.
    eviction: Notify,
}

impl ClientState {
    /// Counts a frame the client lost; past [`MAX_DROPPED`] it is evicted. Returns the count.
    fn count_drop(&self) -> u32 {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped > MAX_DROPPED {
            self.eviction.notify_waiters();
        }
        dropped
    }

    fn is_evicted(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) > MAX_DROPPED
    }

    /// Resolves once the client is evicted (never, for a client that keeps up).
    pub async fn evicted(&self) {
        loop {
            let woken = self.eviction.notified();
            tokio::pin!(woken);
            // Registered before the check, so an eviction between the two is not missed.
            woken.as_mut().enable();
            if self.is_evicted() {
                return;
            }
            woken.await;
        }
    }

    /// Frames dropped since the last call, so the writer can send one `lagged` error for them.
    pub fn take_unreported_drops(&self) -> u32 {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let reported = self.reported.swap(dropped, Ordering::Relaxed);
        dropped.saturating_sub(reported)
    }
}

struct Client {
    id: u64,
    user_id: String,
    tx: mpsc::Sender<Arc<str>>,
    state: Arc<ClientState>,
}

/// Handle a socket keeps to unsubscribe on disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(u64);

#[derive(Default)]
struct Subscriptions {
    /// Conversation → its `/transcription` sockets.
    audio: HashMap<String, Vec<Client>>,
    /// Every control socket, whatever it asked about.
    control: Vec<Client>,
    /// Conversation → users who asked about it on any control socket. Pushes go to *all* of
    /// those users' control sockets: the original frontend opens five per tab and only some
    /// of them ask.
    interested: HashMap<String, Vec<String>>,
}

/// Routes serialized events to the clients subscribed to a conversation.
#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    subs: Mutex<Subscriptions>,
}

/// Counts of one publish, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: usize,
    pub dropped: usize,
    pub disconnected: usize,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new client queue; the socket task keeps the [`ClientRx`] and registers with the id.
    pub fn client(&self) -> (ClientId, ClientTx, ClientRx) {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let state = Arc::new(ClientState::default());
        let id = ClientId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let tx = ClientTx {
            id,
            tx,
            state: state.clone(),
        };
        (id, tx, ClientRx { frames: rx, state })
    }

    /// Subscribes an audio socket to its conversation's events.
    pub fn subscribe_audio(&self, conversation_id: &str, user_id: &str, tx: &ClientTx) {
        let mut subs = self.lock();
        let clients = subs.audio.entry(conversation_id.to_owned()).or_default();
        if clients.iter().all(|c| c.id != tx.id.0) {
            clients.push(tx.to_client(user_id));
        }
    }

    /// Registers a control socket; it receives pushes for conversations its user asked about.
    pub fn register_control(&self, user_id: &str, tx: &ClientTx) {
        let mut subs = self.lock();
        if subs.control.iter().all(|c| c.id != tx.id.0) {
            subs.control.push(tx.to_client(user_id));
        }
    }

    /// Records that a user asked about a conversation (any `get_*` or `select_conversation`).
    pub fn mark_interest(&self, conversation_id: &str, user_id: &str) {
        let mut subs = self.lock();
        let users = subs
            .interested
            .entry(conversation_id.to_owned())
            .or_default();
        if !users.iter().any(|u| u == user_id) {
            users.push(user_id.to_owned());
        }
    }

    /// Removes a client everywhere (socket closed).
    pub fn unsubscribe_all(&self, id: ClientId) {
        let mut subs = self.lock();
        subs.audio.retain(|_, clients| {
            clients.retain(|c| c.id != id.0);
            !clients.is_empty()
        });
        subs.control.retain(|c| c.id != id.0);
    }

    /// Number of clients a publish for this conversation and audience would reach.
    pub fn subscriber_count(&self, conversation_id: &str, audience: Audience) -> usize {
        let subs = self.lock();
        match audience {
            Audience::Audio => subs.audio.get(conversation_id).map_or(0, Vec::len),
            Audience::Control => {
                let Some(users) = subs.interested.get(conversation_id) else {
                    return 0;
                };
                subs.control
                    .iter()
                    .filter(|c| users.contains(&c.user_id))
                    .count()
            }
        }
    }

    /// Warns every control socket about each conversation it gets pushes for, with
    /// `frame(Some(conversation_id))`; a socket that would get more than [`MAX_WARNINGS`] gets
    /// one `frame(None)` for all of them instead, so a warning never overflows its queue (a
    /// user's interests are never forgotten while the process runs).
    pub fn warn_control(&self, frame: impl Fn(Option<&str>) -> Arc<str>) -> Delivery {
        let mut delivery = Delivery::default();
        let mut guard = self.lock();
        let subs = &mut *guard;
        // User → watched conversations, built once: scanning every interest for each socket
        // would be sockets × interests under the hub's lock.
        let mut watched: HashMap<&str, Vec<&str>> = HashMap::new();
        for (conversation_id, users) in &subs.interested {
            for user_id in users {
                watched
                    .entry(user_id.as_str())
                    .or_default()
                    .push(conversation_id.as_str());
            }
        }
        subs.control.retain(|c| {
            let Some(watched) = watched.get(c.user_id.as_str()) else {
                return true;
            };
            if watched.len() > MAX_WARNINGS {
                return deliver(c, &frame(None), "(all watched)", &mut delivery);
            }
            watched
                .iter()
                .all(|id| deliver(c, &frame(Some(id)), id, &mut delivery))
        });
        delivery
    }

    /// Sends a frame to every client of the audience without waiting. A full queue drops the
    /// frame for that client; a client over [`MAX_DROPPED`] or whose socket is gone is removed.
    pub fn publish(&self, conversation_id: &str, audience: Audience, frame: Arc<str>) -> Delivery {
        let mut delivery = Delivery::default();
        let mut guard = self.lock();
        let subs = &mut *guard;
        match audience {
            Audience::Audio => {
                if let Some(clients) = subs.audio.get_mut(conversation_id) {
                    clients.retain(|c| deliver(c, &frame, conversation_id, &mut delivery));
                    if clients.is_empty() {
                        subs.audio.remove(conversation_id);
                    }
                }
            }
            Audience::Control => {
                let Some(users) = subs.interested.get(conversation_id) else {
                    return delivery;
                };
                subs.control.retain(|c| {
                    !users.contains(&c.user_id)
                        || deliver(c, &frame, conversation_id, &mut delivery)
                });
            }
        }
        delivery
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        // A panic while holding this lock leaves plain collections behind, still consistent.
        self.subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tries one client; returns whether it stays subscribed.
fn deliver(client: &Client, frame: &Arc<str>, conversation_id: &str, d: &mut Delivery) -> bool {
    match client.tx.try_send(frame.clone()) {
        Ok(()) => {
            d.delivered += 1;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            d.dropped += 1;
            let dropped = client.state.count_drop();
            if dropped > MAX_DROPPED {
                tracing::warn!(
                    conversation_id,
                    user_id = %client.user_id,
                    dropped,
                    "disconnecting a client that keeps lagging"
                );
                d.disconnected += 1;
                false
            } else {
                true
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The sending half of a client's queue, used to subscribe it and to reply to it directly.
#[derive(Clone)]
pub struct ClientTx {
    id: ClientId,
    tx: mpsc::Sender<Arc<str>>,
    state: Arc<ClientState>,
}

impl ClientTx {
    fn to_client(&self, user_id: &str) -> Client {
        Client {
            id: self.id.0,
            user_id: user_id.to_owned(),
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }

    /// Queues a direct reply (e.g. `message_list`); a full queue counts as a drop, like a
    /// publish, and can evict the client.
    pub fn send(&self, frame: Arc<str>) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(_) => {
                self.state.count_drop();
                false
            }
        }
    }

    /// Resolves once the client lost more than [`MAX_DROPPED`] frames: its socket must close.
    pub async fn evicted(&self) {
        self.state.evicted().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn publishes_only_to_the_topic() {
        let hub = Hub::new();
        let (_, a_tx, mut a_rx) = hub.client();
        let (_, b_tx, mut b_rx) = hub.client();
        hub.subscribe_audio("c1", "u1", &a_tx);
        hub.register_control("u1", &b_tx);
        hub.mark_interest("c1", "u1");
        let d = hub.publish("c1", Audience::Audio, frame("x"));
        assert_eq!(d.delivered, 1);
        assert_eq!(a_rx.frames.recv().await.as_deref(), Some("x"));
        assert!(b_rx.frames.try_recv().is_err());
        assert_eq!(
            hub.publish("c1", Audience::Control, frame("p")).delivered,
            1
        );
        assert_eq!(b_rx.frames.recv().await.as_deref(), Some("p"));
        assert_eq!(hub.publish("c2", Audience::Audio, frame("y")).delivered, 0);
    }

    #[tokio::test]
    async fn a_slow_client_loses_frames_then_is_dropped_without_blocking_others() {
        let hub = Hub::new();
        let (_, slow_tx, slow_rx) = hub.client();
        let (_, fast_tx, mut fast_rx) = hub.client();
        hub.subscribe_audio("c", "u", &slow_tx);
        hub.subscribe_audio("c", "u", &fast_tx);
        let total = CLIENT_QUEUE + MAX_DROPPED as usize + 1;
        let mut received = 0;
        for i in 0..total {
            hub.publish("c", Audience::Audio, frame(&i.to_string()));
            while fast_rx.frames.try_recv().is_ok() {
                received += 1;
            }
        }
        assert_eq!(received, total, "the fast client got every frame");
        assert_eq!(hub.subscriber_count("c", Audience::Audio), 1);
        assert_eq!(slow_rx.state.take_unreported_drops(), MAX_DROPPED + 1);
        assert_eq!(slow_rx.state.take_unreported_drops(), 0);
        // The eviction is observable, also by a waiter that arrives late.
        tokio::time::timeout(std::time::Duration::from_secs(5), slow_tx.evicted())
            .await
            .expect("evicted");
    }

    #[tokio::test]
    async fn direct_replies_to_a_full_queue_evict_the_client() {
        let hub = Hub::new();
        let (_, tx, _rx) = hub.client();
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.evicted().await })
        };
        for _ in 0..CLIENT_QUEUE {
            assert!(tx.send(frame("x")));
        }
        for _ in 0..=MAX_DROPPED {
            assert!(!tx.send(frame("x")));
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .expect("waiter task");
    }

    #[tokio::test]
    async fn control_pushes_reach_every_socket_of_an_interested_user_only() {
        let hub = Hub::new();
        let (_, asked_tx, mut asked) = hub.client();
        let (_, sibling_tx, mut sibling) = hub.client();
        let (_, other_tx, mut other) = hub.client();
        hub.register_control("alice", &asked_tx);
        hub.register_control("alice", &sibling_tx);
        hub.register_control("bob", &other_tx);
        hub.mark_interest("c", "alice");
        assert_eq!(hub.publish("c", Audience::Control, frame("x")).delivered, 2);
        assert!(asked.frames.try_recv().is_ok());
        assert!(sibling.frames.try_recv().is_ok());
        assert!(other.frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn warnings_name_each_watched_conversation_up_to_a_cap_then_one_covers_all() {
        let hub = Hub::new();
        let (_, few_tx, mut few) = hub.client();
        let (_, many_tx, mut many) = hub.client();
        let (_, none_tx, mut none) = hub.client();
        hub.register_control("alice", &few_tx);
        hub.register_control("bob", &many_tx);
        hub.register_control("carol", &none_tx);
        hub.mark_interest("c1", "alice");
        hub.mark_interest("c2", "alice");
        for i in 0..=MAX_WARNINGS {
            hub.mark_interest(&format!("b{i}"), "bob");
        }
        hub.mark_interest("nobody-connected", "dave");
        let d = hub.warn_control(|id| frame(id.unwrap_or("all")));
        assert_eq!(d.delivered, 3);
        let mut told = vec![few.frames.recv().await, few.frames.recv().await];
        told.sort();
        assert_eq!(told, vec![Some(frame("c1")), Some(frame("c2"))]);
        assert!(few.frames.try_recv().is_err());
        assert_eq!(many.frames.recv().await.as_deref(), Some("all"));
        assert!(many.frames.try_recv().is_err());
        assert!(none.frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn closed_clients_are_pruned_and_subscribe_is_idempotent() {
        let hub = Hub::new();
        let (_, a_tx, a_rx) = hub.client();
        hub.register_control("u", &a_tx);
        hub.register_control("u", &a_tx);
        assert_eq!(
            hub.subscriber_count("c", Audience::Control),
            0,
            "no interest yet"
        );
        hub.mark_interest("c", "u");
        hub.mark_interest("c", "u");
        assert_eq!(hub.subscriber_count("c", Audience::Control), 1);
        drop(a_rx);
        assert_eq!(hub.publish("c", Audience::Control, frame("x")).delivered, 0);
        assert_eq!(hub.subscriber_count("c", Audience::Control), 0);
        let (b, b_tx, _b_rx) = hub.client();
        hub.subscribe_audio("c", "u", &b_tx);
        hub.unsubscribe_all(b);
        assert_eq!(hub.subscriber_count("c", Audience::Audio), 0);
    }
}
