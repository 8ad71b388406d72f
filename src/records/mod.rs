//! What a clinic keeps after a visit: the end-of-visit summary (clinical and take-home), the
//! synthetic medical history, and exports of the whole record.
//!
//! Design decision: this module reads the store, calls the models and writes the results; it
//! never publishes events or spawns tasks. The pipeline decides *when* (after the drain, on a
//! voice command, in the background at conversation start) and whom to tell, so the logic here
//! is callable from REST handlers, voice commands and tests alike.
//!
//! Writers of one document are serialized per key ([`KeyedLocks`]): an interim summary and the
//! final one of a conversation never interleave, and two conversations of one patient started
//! together generate the patient's medical history once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ai::{self, MedicalHistoryGenerator, Summarizer};
use crate::store::{self, Store};

pub mod export;
pub mod history;
mod markdown;
pub mod summary;

pub use history::HistoryOrigin;
pub use summary::{SummaryRecord, SummaryStage, SummaryView};

/// Failures of record keeping.
///
/// `Store` failures are transient or bugs (see [`store::Error`]); `Provider` failures leave
/// nothing written and may be retried (the conversation is marked `ended_error` for a final
/// summary); `Ended` means an interim summary was asked for after the visit ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the model provider failed: {0}")]
    Provider(#[from] ai::Error),
    #[error("the visit has ended; its final summary replaces interim ones")]
    Ended,
}

impl Error {
    /// Stable snake_case code for HTTP bodies and WebSocket `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Store(e) => e.code(),
            Error::Provider(e) => e.code(),
            Error::Ended => "conversation_ended",
        }
    }
}

/// The record keeper: the store and the two models it writes with.
pub struct Records {
    store: Arc<dyn Store>,
    summarizer: Arc<dyn Summarizer>,
    history: Arc<dyn MedicalHistoryGenerator>,
    locks: KeyedLocks,
}

impl Records {
    pub fn new(
        store: Arc<dyn Store>,
        summarizer: Arc<dyn Summarizer>,
        history: Arc<dyn MedicalHistoryGenerator>,
    ) -> Records {
        Records {
            store,
            summarizer,
            history,
            locks: KeyedLocks::default(),
        }
    }
}

/// Async mutexes by key, created on first use and removed when nobody holds or awaits them,
/// so the map stays as small as the work in flight.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key's lock; releasing it drops the key's entry if no one else wants it.
struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        // Only clones and removals of Arcs happen under this lock: nothing is left half-done.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn lock(&self, key: String) -> KeyGuard<'_> {
        let mutex = Arc::clone(self.map().entry(key.clone()).or_default());
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Only the map's own reference left: no holder, no waiter (waiters hold a clone).
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialize_one_key_and_forget_it_afterwards() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("a".into()).await;
        let other_key = locks.lock("b".into()).await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _second = locks.lock("a".into()).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(first);
        waiter.await.unwrap();
        drop(other_key);
        assert!(locks.map().is_empty(), "unused keys are removed");
    }
}
