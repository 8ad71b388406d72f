//! Turns what the simulated browsers and the fake provider saw into latencies.
//!
//! Key decision: both sides report into one channel read by one task, which owns every map.
//! A browser reports a chunk *before* writing it and the fake reports a transcript *before*
//! sending it, so on that single channel each cause is queued before its effect and matching
//! needs no locks, no clock shared with the server and no reordering.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::testing::fake_openai::realtime::Probe;

/// Capacity of the observation channel; a full channel loses the observation, and the count
/// of lost ones is reported (a run with losses is not a valid measurement).
const CAPACITY: usize = 1 << 16;

/// One thing that happened, from the browsers' side or the provider's.
#[derive(Debug)]
pub enum Observation {
    /// From the fake provider.
    Fake(Probe),
    /// Conversation `conversation`'s audio socket reported `openai_connected`: its STT
    /// connection is the oldest one not yet claimed (conversations attach one at a time).
    Attached { conversation: usize },
    /// A chunk is about to be written; `lag` is how late that is against its schedule.
    Sent {
        conversation: usize,
        pcm_total: Option<u64>,
        at: Instant,
        lag: Duration,
    },
    /// `new_message` for an original utterance.
    Original {
        item_id: String,
        message_id: String,
        at: Instant,
    },
    /// `new_message` for a translation of `original_id`.
    Translation { original_id: String, at: Instant },
    /// `tts_audio` for `original_id`.
    Tts { original_id: String, at: Instant },
    /// The browsers are about to close their sockets: transcripts from here on (the final
    /// turn the close commits) have no socket left to reach.
    Closing,
    /// Something that should not happen in a healthy run, as a short label.
    Error(String),
}

/// The sending side, cloned into every task; never blocks.
#[derive(Clone)]
pub struct Observer {
    tx: mpsc::Sender<Observation>,
    lost: Arc<AtomicU64>,
}

impl Observer {
    pub fn send(&self, observation: Observation) {
        if self.tx.try_send(observation).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn error(&self, label: impl Into<String>) {
        self.send(Observation::Error(label.into()));
    }
}

/// Where the fake provider's probes go: install [`ProbeTap::hook`] on the fake once; each run
/// points it at its own collector while it lasts.
#[derive(Clone, Default)]
pub struct ProbeTap {
    current: Arc<Mutex<Option<Observer>>>,
}

impl ProbeTap {
    pub fn new() -> ProbeTap {
        ProbeTap::default()
    }

    /// The hook for [`crate::testing::fake_openai::realtime::State::with_probe`].
    pub fn hook(&self) -> impl Fn(Probe) + Send + Sync + 'static {
        let current = Arc::clone(&self.current);
        move |probe| {
            let observer = current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(observer) = observer {
                observer.send(Observation::Fake(probe));
            }
        }
    }

    pub(super) fn connect(&self, observer: Option<Observer>) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = observer;
    }
}

/// Everything measured, once the run is over.
#[derive(Debug, Default)]
pub struct Measurements {
    /// Chunk written → its last PCM sample read by the provider.
    pub chunk: Vec<Duration>,
    /// Chunks whose PCM never fully arrived before the end of the run.
    pub chunks_unmatched: u64,
    /// Chunks written.
    pub chunks_sent: u64,
    /// How late chunks were written against their real-time schedule (load generator health).
    pub send_lag: Vec<Duration>,
    /// Transcript sent by the provider → `new_message` (original) at the browser.
    pub new_message: Vec<Duration>,
    /// Transcript → `new_message` (translation).
    pub translation: Vec<Duration>,
    /// Transcript → `tts_audio`.
    pub tts_audio: Vec<Duration>,
    /// Non-empty transcripts the provider sent while the browsers were connected.
    pub transcripts: u64,
    /// Non-empty transcripts sent after the browsers began closing (not timed).
    pub transcripts_after_close: u64,
    /// Error labels and how often each occurred.
    pub errors: BTreeMap<String, u64>,
    /// Observations dropped because the channel was full.
    pub lost: u64,
}

/// The receiving side: owns the matching state.
pub struct Collector {
    rx: mpsc::Receiver<Observation>,
    lost: Arc<AtomicU64>,
    /// Provider connections not yet claimed by a conversation, oldest first.
    unclaimed: VecDeque<usize>,
    conversation_of: HashMap<usize, usize>,
    /// Per conversation: chunks written whose PCM has not fully arrived (total, written at).
    pending: Vec<VecDeque<(u64, Instant)>>,
    /// Transcript sent at, by item id, until its `new_message` arrives.
    transcript_at: HashMap<String, Instant>,
    /// Transcript sent at, by original message id, until its `tts_audio` arrives.
    spoken_at: HashMap<String, Instant>,
    /// Connections that carried audio without being claimed (reported once each).
    stray: std::collections::HashSet<usize>,
    closing: bool,
    m: Measurements,
}

/// A new observation channel for `conversations` conversations.
pub fn channel(conversations: usize) -> (Observer, Collector) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let lost = Arc::new(AtomicU64::new(0));
    (
        Observer {
            tx,
            lost: Arc::clone(&lost),
        },
        Collector {
            rx,
            lost,
            unclaimed: VecDeque::new(),
            conversation_of: HashMap::new(),
            pending: vec![VecDeque::new(); conversations],
            transcript_at: HashMap::new(),
            spoken_at: HashMap::new(),
            stray: Default::default(),
            closing: false,
            m: Measurements::default(),
        },
    )
}

impl Collector {
    /// Processes observations until every [`Observer`] is dropped.
    pub async fn run(mut self) -> Measurements {
        while let Some(observation) = self.rx.recv().await {
            self.observe(observation);
        }
        self.m.chunks_unmatched = self.pending.iter().map(|p| p.len() as u64).sum();
        self.m.lost = self.lost.load(Ordering::Relaxed);
        self.m
    }

    fn error(&mut self, label: String) {
        *self.m.errors.entry(label).or_default() += 1;
    }

    fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::Fake(Probe::Connected { connection }) => {
                self.unclaimed.push_back(connection);
            }
            Observation::Attached { conversation } => {
                if self.unclaimed.len() > 1 {
                    self.error("provider connections outnumber conversations (a reconnect during the ramp?)".into());
                }
                match self.unclaimed.pop_front() {
                    Some(connection) => {
                        self.conversation_of.insert(connection, conversation);
                    }
                    None => {
                        self.error("a conversation went live without a provider connection".into())
                    }
                }
            }
            Observation::Sent {
                conversation,
                pcm_total,
                at,
                lag,
            } => {
                self.m.chunks_sent += 1;
                self.m.send_lag.push(lag);
                if let (Some(total), Some(pending)) =
                    (pcm_total, self.pending.get_mut(conversation))
                {
                    pending.push_back((total, at));
                }
            }
            Observation::Fake(Probe::Audio {
                connection,
                samples,
                at,
            }) => match self.conversation_of.get(&connection) {
                Some(&conversation) => {
                    let pending = &mut self.pending[conversation];
                    while pending.front().is_some_and(|(total, _)| *total <= samples) {
                        if let Some((_, sent)) = pending.pop_front() {
                            self.m.chunk.push(at.saturating_duration_since(sent));
                        }
                    }
                }
                None => {
                    if self.stray.insert(connection) {
                        self.error("audio on a provider connection no conversation claimed (an STT reconnect?)".into());
                    }
                }
            },
            Observation::Fake(Probe::Completed { item_id, at, .. }) => {
                if self.closing {
                    self.m.transcripts_after_close += 1;
                } else {
                    self.m.transcripts += 1;
                    self.transcript_at.insert(item_id, at);
                }
            }
            Observation::Closing => self.closing = true,
            Observation::Original {
                item_id,
                message_id,
                at,
            } => match self.transcript_at.remove(&item_id) {
                Some(sent) => {
                    self.m.new_message.push(at.saturating_duration_since(sent));
                    self.spoken_at.insert(message_id, sent);
                }
                None => self.error("new_message for a transcript the provider did not send".into()),
            },
            Observation::Translation { original_id, at } => {
                if let Some(sent) = self.spoken_at.get(&original_id) {
                    self.m.translation.push(at.saturating_duration_since(*sent));
                }
            }
            Observation::Tts { original_id, at } => {
                if let Some(sent) = self.spoken_at.remove(&original_id) {
                    self.m.tts_audio.push(at.saturating_duration_since(sent));
                }
            }
            Observation::Error(label) => self.error(label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_and_transcripts_are_matched_in_order() {
        let (observer, collector) = channel(2);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        for (connection, conversation) in [(7, 0), (8, 1)] {
            observer.send(Observation::Fake(Probe::Connected { connection }));
            observer.send(Observation::Attached { conversation });
        }
        let sent = |conversation, total, at| Observation::Sent {
            conversation,
            pcm_total: total,
            at,
            lag: Duration::ZERO,
        };
        observer.send(sent(0, Some(1000), ms(0)));
        observer.send(sent(1, Some(1000), ms(1)));
        observer.send(sent(0, None, ms(2)));
        observer.send(sent(0, Some(2000), ms(3)));
        let audio = |connection, samples, at| {
            Observation::Fake(Probe::Audio {
                connection,
                samples,
                at,
            })
        };
        observer.send(audio(7, 500, ms(4)));
        observer.send(audio(7, 2000, ms(10))); // completes both of conversation 0's chunks
        observer.send(audio(8, 1200, ms(21))); // conversation 1's chunk
        observer.send(audio(9, 100, ms(22))); // nobody's
        observer.send(Observation::Fake(Probe::Completed {
            connection: 7,
            item_id: "i1".into(),
            at: ms(100),
        }));
        observer.send(Observation::Original {
            item_id: "i1".into(),
            message_id: "m1".into(),
            at: ms(130),
        });
        observer.send(Observation::Translation {
            original_id: "m1".into(),
            at: ms(150),
        });
        observer.send(Observation::Tts {
            original_id: "m1".into(),
            at: ms(190),
        });
        observer.send(sent(1, Some(5000), ms(200)));
        observer.send(Observation::Closing);
        observer.send(Observation::Fake(Probe::Completed {
            connection: 8,
            item_id: "i2".into(),
            at: ms(300),
        }));
        drop(observer);
        let m = collector.run().await;
        assert_eq!(
            m.chunk,
            [10, 7, 20].map(Duration::from_millis).to_vec(),
            "chunk latencies in arrival order"
        );
        assert_eq!(m.chunks_sent, 5);
        assert_eq!(m.chunks_unmatched, 1);
        assert_eq!(m.new_message, vec![Duration::from_millis(30)]);
        assert_eq!(m.translation, vec![Duration::from_millis(50)]);
        assert_eq!(m.tts_audio, vec![Duration::from_millis(90)]);
        assert_eq!((m.transcripts, m.transcripts_after_close), (1, 1));
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert_eq!(m.lost, 0);
    }
}
