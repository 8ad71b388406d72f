//! Stored conversation audio: when a clinic switches it on, the ingested PCM16 mono 24 kHz of
//! each conversation is kept as one WAV file, `<dir>/<conversation id>.wav`; otherwise no audio
//! is written anywhere.
//!
//! Design decision: one writer task per recorded conversation, fed through a bounded channel
//! whose full policy is **Block** (a slow disk pushes back on the audio path as a slow STT
//! session does, instead of growing memory), doing its file I/O in `spawn_blocking` so no
//! runtime worker ever waits on the disk. The header's sizes are rewritten from the file's
//! length when the writer ends; a crash leaves a header that undercounts but intact samples,
//! and the next writer for the conversation (it appends) repairs it.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audio::wav;

/// Where and whether conversation audio is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    /// Off by default: audio is the most identifying data a visit produces.
    pub enabled: bool,
    /// Directory of the WAV files (created on first use).
    pub dir: PathBuf,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: PathBuf::from("audio"),
        }
    }
}

/// Batches of samples waiting for the disk, per conversation: about two seconds of audio at
/// the pipeline's usual 20–100 ms frames. When full, the audio forwarder waits (Block).
const CHANNEL_CAPACITY: usize = 64;

/// Where a conversation's audio goes while it is live; cheap to clone (one per audio socket).
/// The file is finished when the last clone is dropped.
#[derive(Clone)]
pub struct Recorder(mpsc::Sender<Vec<i16>>);

impl Recorder {
    /// Queues samples for the file; waits while the writer is behind. Returns `false` when the
    /// writer has stopped (its file could not be written, already logged): the caller keeps
    /// transcribing and stops recording.
    pub async fn write(&self, samples: Vec<i16>) -> bool {
        self.0.send(samples).await.is_ok()
    }
}

/// The live writer of one conversation's file.
struct Writer {
    /// Tells this writer's entry from a later one's for the same conversation.
    generation: u64,
    tx: mpsc::WeakSender<Vec<i16>>,
    /// Cancelled once the writer closed its file, so a later writer of the same file waits
    /// for it instead of interleaving headers.
    finished: CancellationToken,
}

/// The stored audio of every conversation.
pub struct Recordings {
    config: RecordingConfig,
    /// Writers by conversation id; an entry leaves when its writer finishes.
    writers: Arc<Mutex<HashMap<String, Writer>>>,
    generations: AtomicU64,
}

impl Recordings {
    pub fn new(config: RecordingConfig) -> Self {
        Recordings {
            config,
            writers: Arc::default(),
            generations: AtomicU64::new(0),
        }
    }

    /// The file of a conversation; `None` for an id that is not a plain file name (ids are
    /// UUIDs, so this only refuses what could escape the directory).
    pub fn path(&self, conversation_id: &str) -> Option<PathBuf> {
        let plain = !conversation_id.is_empty()
            && conversation_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        plain.then(|| self.config.dir.join(format!("{conversation_id}.wav")))
    }

    /// A recorder for a conversation going live, appending to its file; `None` when storing
    /// audio is off. A conversation live twice at once (a socket reconnecting while the old
    /// runtime drains) shares one writer. Must be called inside the tokio runtime.
    pub fn start(&self, conversation_id: &str) -> Option<Recorder> {
        if !self.config.enabled {
            return None;
        }
        let path = self.path(conversation_id)?;
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = match writers.get(conversation_id) {
            Some(w) => match w.tx.upgrade() {
                Some(tx) => return Some(Recorder(tx)),
                None => Some(w.finished.clone()),
            },
            None => None,
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let finished = CancellationToken::new();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        writers.insert(
            conversation_id.to_owned(),
            Writer {
                generation,
                tx: tx.downgrade(),
                finished: finished.clone(),
            },
        );
        tokio::spawn(write_file(
            path,
            rx,
            previous,
            finished,
            Arc::clone(&self.writers),
            generation,
            conversation_id.to_owned(),
        ));
        Some(Recorder(tx))
    }

    /// Deletes the stored audio of these conversations, whether or not storing is on now (it
    /// may have been on before). Returns how many files existed. A file still being written is
    /// unlinked at once; its writer finishes into the unlinked file, which then disappears.
    ///
    /// # Errors
    /// A file exists but cannot be removed (permissions); the others are still tried.
    pub async fn delete(&self, conversation_ids: &[String]) -> std::io::Result<usize> {
        let paths: Vec<PathBuf> = conversation_ids
            .iter()
            .filter_map(|id| self.path(id))
            .collect();
        tokio::task::spawn_blocking(move || {
            let (mut removed, mut failure) = (0, None);
            for path in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => failure = Some(e),
                }
            }
            failure.map_or(Ok(removed), Err)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// One conversation's writer: waits for the previous writer of the file, appends every batch
/// it receives, then rewrites the header's sizes and leaves the registry.
async fn write_file(
    path: PathBuf,
    mut rx: mpsc::Receiver<Vec<i16>>,
    previous: Option<CancellationToken>,
    finished: CancellationToken,
    writers: Arc<Mutex<HashMap<String, Writer>>>,
    generation: u64,
    conversation_id: String,
) {
    if let Some(previous) = previous {
        previous.cancelled().await;
    }
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || open_for_append(&path)).await
    };
    let mut file = match opened {
        Ok(Ok(file)) => Some(file),
        Ok(Err(e)) => {
            tracing::warn!(%conversation_id, path = %path.display(), error = %e, "cannot store conversation audio");
            None
        }
        Err(e) => {
            tracing::warn!(%conversation_id, error = %e, "audio writer task failed");
            None
        }
    };
    let mut batch = Vec::new();
    while let Some(mut out) = file.take() {
        if rx.recv_many(&mut batch, CHANNEL_CAPACITY).await == 0 {
            file = Some(out);
            break;
        }
        let samples = std::mem::take(&mut batch);
        let written = tokio::task::spawn_blocking(move || {
            let bytes: Vec<u8> = samples
                .iter()
                .flatten()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            out.write_all(&bytes).map(|()| out)
        })
        .await;
        match written {
            Ok(Ok(out)) => file = Some(out),
            Ok(Err(e)) => {
                tracing::warn!(%conversation_id, error = %e, "cannot write conversation audio; recording stops");
            }
            Err(e) => tracing::warn!(%conversation_id, error = %e, "audio writer task failed"),
        }
    }
    // Dropping the receiver tells the recorders to stop sending (their writes return false).
    drop(rx);
    if let Some(out) = file {
        let closed = tokio::task::spawn_blocking(move || finish(out)).await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::warn!(%conversation_id, "cannot finish the conversation audio file header");
        }
    }
    {
        let mut writers = writers.lock().unwrap_or_else(PoisonError::into_inner);
        if writers
            .get(&conversation_id)
            .is_some_and(|w| w.generation == generation)
        {
            writers.remove(&conversation_id);
        }
    }
    finished.cancel();
}

/// Opens the file positioned at its end, writing a fresh header if it is new or too short to
/// hold one (a crash during creation).
fn open_for_append(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    // Identifiable patient speech: readable by the service's user only, like the data key.
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    let len = file.metadata()?.len();
    if len < wav::HEADER_LEN {
        file.set_len(0)?;
        file.write_all(&wav::header(0))?;
    } else {
        // An odd length is a torn last sample: drop its byte so samples stay aligned.
        let aligned = len - (len - wav::HEADER_LEN) % 2;
        file.set_len(aligned)?;
        file.seek(SeekFrom::End(0))?;
    }
    Ok(std::io::BufWriter::new(file))
}

/// Flushes the samples and rewrites the header's sizes from the file's length.
fn finish(out: std::io::BufWriter<std::fs::File>) -> std::io::Result<()> {
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&wav::header(len.saturating_sub(wav::HEADER_LEN)))?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recordings(dir: &Path, enabled: bool) -> Recordings {
        Recordings::new(RecordingConfig {
            enabled,
            dir: dir.join("audio"),
        })
    }

    /// Waits until the conversation's writer has finished its file.
    async fn finished(r: &Recordings, id: &str) {
        let token = r
            .writers
            .lock()
            .unwrap()
            .get(id)
            .map(|w| w.finished.clone());
        if let Some(token) = token {
            token.cancelled().await;
        }
    }

    fn stored_samples(path: &Path) -> Vec<i16> {
        let bytes = std::fs::read(path).unwrap();
        let declared = wav::data_len(&bytes).unwrap() as usize;
        assert_eq!(declared, bytes.len() - 44, "header matches the file");
        bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[tokio::test]
    async fn disabled_recordings_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = recordings(dir.path(), false);
        assert!(r.start("c1").is_none());
        assert!(!dir.path().join("audio").exists());
    }

    #[tokio::test]
    async fn a_conversation_live_twice_appends_to_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = recordings(dir.path(), true);
        let first = r.start("c1").unwrap();
        let shared = r.start("c1").unwrap();
        assert!(first.write(vec![1, 2]).await);
        assert!(shared.write(vec![3]).await);
        drop((first, shared));
        finished(&r, "c1").await;
        let path = r.path("c1").unwrap();
        assert_eq!(stored_samples(&path), [1, 2, 3]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600, "the service's user only");
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }

        // Live again later: appended, header updated.
        let again = r.start("c1").unwrap();
        assert!(again.write(vec![4, 5]).await);
        drop(again);
        finished(&r, "c1").await;
        assert_eq!(stored_samples(&path), [1, 2, 3, 4, 5]);

        assert_eq!(r.delete(&["c1".into(), "c2".into()]).await.unwrap(), 1);
        assert!(!path.exists());
    }

    #[test]
    fn ids_that_are_not_plain_names_have_no_file() {
        let r = Recordings::new(RecordingConfig::default());
        assert!(r.path("../etc/passwd").is_none());
        assert!(r.path("").is_none());
        assert_eq!(
            r.path("0192-ab").unwrap(),
            Path::new("audio").join("0192-ab.wav")
        );
    }
}
