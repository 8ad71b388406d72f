//! Retention: a background sweeper that hard-deletes conversations whose last activity is
//! older than the configured period, with every row keyed by them and their stored audio.
//!
//! Design decision: the sweep is a plain function of (store, recordings, live ids, cutoff), so
//! tests run one sweep on a real database at a chosen instant; the server runs it
//! periodically next to the webhook worker and stops it the same way. Deletes go in batches so
//! one sweep never holds SQLite's write lock for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipelines;
use crate::recordings::Recordings;
use crate::store::{self, now_millis, Millis, Store};

/// How long conversations are kept, and how often the sweeper looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `None` keeps everything forever (the default: deleting clinical records is the
    /// clinic's decision, made explicitly).
    pub max_age: Option<Duration>,
    /// Time between sweeps; the first runs right after start.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: None,
            interval: Duration::from_secs(3600),
        }
    }
}

/// Conversations deleted per store call.
const BATCH: u32 = 100;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub conversations: usize,
    pub audio_files: usize,
}

/// Deletes every conversation last active before `cutoff`, except those in `live`, and their
/// stored audio.
///
/// # Errors
/// The store failed; conversations deleted by earlier batches stay deleted (and their audio
/// removed), the rest wait for the next sweep.
pub async fn sweep(
    store: &dyn Store,
    recordings: &Recordings,
    live: &[String],
    cutoff: Millis,
) -> Result<SweepReport, store::Error> {
    let mut report = SweepReport::default();
    loop {
        let deleted = store
            .delete_conversations_inactive_since(cutoff, live, BATCH)
            .await?;
        report.conversations += deleted.len();
        match recordings.delete(&deleted).await {
            Ok(n) => report.audio_files += n,
            // No later sweep finds these ids again: the files need an operator.
            Err(e) => tracing::error!(
                error = %e,
                conversation_ids = ?deleted,
                "retention: cannot delete stored audio of deleted conversations; remove their files by hand"
            ),
        }
        if deleted.len() < BATCH as usize {
            return Ok(report);
        }
    }
}

/// Runs [`sweep`] every [`RetentionConfig::interval`] until `stop`; returns at once when
/// retention is off.
pub async fn run(config: RetentionConfig, pipelines: Arc<Pipelines>, stop: CancellationToken) {
    let Some(max_age) = config.max_age else {
        return;
    };
    let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    while !stop.is_cancelled() {
        let cutoff = now_millis().saturating_sub(age);
        let live = pipelines.live_ids();
        match sweep(
            pipelines.store().as_ref(),
            pipelines.recordings(),
            &live,
            cutoff,
        )
        .await
        {
            Ok(r) if r.conversations > 0 => tracing::info!(
                conversations = r.conversations,
                audio_files = r.audio_files,
                "retention: deleted expired conversations"
            ),
            Ok(_) => tracing::debug!("retention: nothing expired"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}
