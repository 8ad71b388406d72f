//! The DSP pool: a fixed set of threads that run every conversation's [`Transcoder`].
//!
//! Design decision: streams are sharded by a hash of their conversation key onto one worker
//! each, so a transcoder is only ever touched by one thread and its chunks stay in order with
//! no locks. Bounds come from two semaphores, so no channel send ever blocks or fails for lack
//! of room:
//! - per shard, `slots` permits = the job queue's capacity: `submit` awaits a slot, then
//!   `try_send` cannot find the queue full; the worker frees the slot when it dequeues the job.
//!   Each open stream keeps one slot for its `Close`, sent from `Drop` (which cannot await).
//! - per stream, `credits` permits = its result channel's capacity: a chunk takes a credit that
//!   travels with its [`Output`] and returns when the consumer drops that output. The worker's
//!   `try_send` therefore never finds the channel full (no `blocking_send`, so a worker never
//!   waits on a slow consumer and other conversations are unaffected). When credits run out,
//!   [`AudioStream::push`] waits, the socket reader stops reading, and TCP pushes back on the
//!   browser.
//!
//! Only the semaphores and the result channel are tokio types; the workers are plain threads.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel as cb;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::transcoder::{Stats, Transcoder};
use super::{Error, InputFormat, Pcm16Frame, Result};

/// Pool sizing. The defaults suit one process per machine.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads; default: the number of cores.
    pub workers: NonZeroUsize,
    /// Job queue capacity per worker. Every open stream holds one slot (for its close), so
    /// this also caps the streams per worker.
    pub queue_capacity: usize,
    /// Chunks a stream may have in flight (queued, decoding, or decoded but not consumed).
    pub credits_per_stream: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            queue_capacity: 4096,
            credits_per_stream: 8,
        }
    }
}

/// The pool has shut down (its workers are gone); nothing more can be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the DSP pool is closed")]
pub struct PoolClosed;

/// What a worker sends back for each pushed chunk and for `finish`.
#[derive(Debug)]
pub struct Output {
    /// Frames decoded from the chunk (also when `result` is an error: audio before the error).
    pub frames: Vec<Pcm16Frame>,
    /// The chunk's outcome; see [`Transcoder::push`] for which errors are fatal.
    pub result: Result<()>,
    /// True for the reply to [`AudioStream::finish`].
    pub end_of_input: bool,
    /// The stream's counters after this job (per-packet errors show up here).
    pub stats: Stats,
    /// The chunk's credit: dropping this output gives it back to the stream.
    _credit: OwnedSemaphorePermit,
}

enum Op {
    Open {
        format: Option<InputFormat>,
        /// Capacity = the stream's credits, so `try_send` never finds it full.
        results: mpsc::Sender<Output>,
    },
    Push(Vec<u8>, OwnedSemaphorePermit),
    Finish(OwnedSemaphorePermit),
    Close,
}

struct Job {
    stream: u64,
    op: Op,
    /// This job's place in the queue, freed when a worker dequeues it.
    _slot: OwnedSemaphorePermit,
}

struct Shard {
    /// Bounded to `queue_capacity`; never full on `try_send` thanks to `slots`.
    jobs: cb::Sender<Job>,
    slots: Arc<Semaphore>,
}

/// A fixed-size pool of DSP threads.
pub struct DspPool {
    shards: Vec<Arc<Shard>>,
    credits: usize,
    next_id: AtomicU64,
}

impl std::fmt::Debug for DspPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DspPool")
            .field("workers", &self.shards.len())
            .field("credits", &self.credits)
            .finish_non_exhaustive()
    }
}

impl DspPool {
    /// Starts the worker threads. They exit once the pool and every stream handle are dropped.
    ///
    /// # Errors
    /// The OS refused to spawn a thread.
    pub fn new(config: &PoolConfig) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.max(2);
        let mut shards = Vec::with_capacity(config.workers.get());
        for i in 0..config.workers.get() {
            let (tx, rx) = cb::bounded(capacity);
            std::thread::Builder::new()
                .name(format!("tandem-dsp-{i}"))
                .spawn(move || worker(rx))?;
            shards.push(Arc::new(Shard {
                jobs: tx,
                slots: Arc::new(Semaphore::new(capacity)),
            }));
        }
        Ok(DspPool {
            shards,
            credits: config.credits_per_stream.max(1),
            next_id: AtomicU64::new(0),
        })
    }

    /// Opens a stream on the worker that owns `key` (a conversation id): every stream of one
    /// conversation lands on the same thread. Returns the submit handle and the results.
    ///
    /// # Errors
    /// [`PoolClosed`] if the workers are gone.
    pub async fn open(
        &self,
        key: impl Hash,
        format: Option<InputFormat>,
    ) -> Result<(AudioStream, mpsc::Receiver<Output>), PoolClosed> {
        // SipHash with fixed keys: stable for the life of the process, which is all sharding
        // needs.
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let shard = Arc::clone(&self.shards[(h.finish() % self.shards.len() as u64) as usize]);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close_slot = acquire(&shard.slots).await?;
        let (tx, rx) = mpsc::channel(self.credits);
        submit(
            &shard,
            Job {
                stream: id,
                op: Op::Open {
                    format,
                    results: tx,
                },
                _slot: acquire(&shard.slots).await?,
            },
        )?;
        let stream = AudioStream {
            id,
            shard,
            credits: Arc::new(Semaphore::new(self.credits)),
            close_slot: Some(close_slot),
        };
        Ok((stream, rx))
    }
}

/// The async side's handle on one stream: submit chunks in order; dropping it closes the
/// stream on its worker.
pub struct AudioStream {
    id: u64,
    shard: Arc<Shard>,
    /// Per-stream credits: a chunk's permit returns when its [`Output`] is dropped.
    credits: Arc<Semaphore>,
    /// The queue slot reserved at open for the `Close` job sent from `Drop`.
    close_slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream").field("id", &self.id).finish()
    }
}

impl AudioStream {
    /// Queues a chunk. Waits (without blocking the runtime) while the stream has no credit or
    /// its worker's queue is full: this is the backpressure the socket reader relies on.
    ///
    /// # Errors
    /// [`PoolClosed`] if the workers are gone.
    pub async fn push(&self, chunk: Vec<u8>) -> Result<(), PoolClosed> {
        let credit = acquire(&self.credits).await?;
        let slot = acquire(&self.shard.slots).await?;
        submit(
            &self.shard,
            Job {
                stream: self.id,
                op: Op::Push(chunk, credit),
                _slot: slot,
            },
        )
    }

    /// Ends the input: the worker drains the decoder and replies with `end_of_input`.
    ///
    /// # Errors
    /// [`PoolClosed`] if the workers are gone.
    pub async fn finish(&self) -> Result<(), PoolClosed> {
        let credit = acquire(&self.credits).await?;
        let slot = acquire(&self.shard.slots).await?;
        submit(
            &self.shard,
            Job {
                stream: self.id,
                op: Op::Finish(credit),
                _slot: slot,
            },
        )
    }
}

impl Drop for AudioStream {
    fn drop(&mut self) {
        if let Some(slot) = self.close_slot.take() {
            // The reserved slot guarantees room; if the pool is gone there is nothing to close.
            let _ = submit(
                &self.shard,
                Job {
                    stream: self.id,
                    op: Op::Close,
                    _slot: slot,
                },
            );
        }
    }
}

async fn acquire(sem: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, PoolClosed> {
    Arc::clone(sem)
        .acquire_owned()
        .await
        .map_err(|_| PoolClosed)
}

fn submit(shard: &Shard, job: Job) -> Result<(), PoolClosed> {
    // Full is impossible (a slot permit is held for every queued job); only Disconnected.
    shard.jobs.try_send(job).map_err(|_| PoolClosed)
}

struct Entry {
    transcoder: Transcoder,
    results: mpsc::Sender<Output>,
}

fn worker(jobs: cb::Receiver<Job>) {
    let mut streams: HashMap<u64, Entry> = HashMap::new();
    while let Ok(Job { stream, op, _slot }) = jobs.recv() {
        drop(_slot);
        let (credit, chunk) = match op {
            Op::Open { format, results } => {
                streams.insert(
                    stream,
                    Entry {
                        transcoder: Transcoder::new(format),
                        results,
                    },
                );
                continue;
            }
            Op::Close => {
                streams.remove(&stream);
                continue;
            }
            Op::Push(chunk, credit) => (credit, Some(chunk)),
            Op::Finish(credit) => (credit, None),
        };
        let Some(entry) = streams.get_mut(&stream) else {
            continue;
        };
        let mut frames = Vec::new();
        // A bug in a transcoder must cost its own stream, not the worker's other streams.
        let result = catch_unwind(AssertUnwindSafe(|| match &chunk {
            Some(bytes) => entry.transcoder.push(bytes, &mut frames),
            None => entry.transcoder.finish(&mut frames),
        }))
        .unwrap_or_else(|_| {
            tracing::error!(stream, "audio transcoder panicked; stream reset");
            entry.transcoder = Transcoder::new(None);
            Err(Error::Malformed("internal decoder failure"))
        });
        let output = Output {
            frames,
            result,
            end_of_input: chunk.is_none(),
            stats: entry.transcoder.stats(),
            _credit: credit,
        };
        // Never full: capacity = credits and this output holds one. Closed: the consumer left,
        // so the stream is dropped.
        if entry.results.try_send(output).is_err() {
            streams.remove(&stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn config(workers: usize, credits: usize) -> PoolConfig {
        PoolConfig {
            workers: NonZeroUsize::new(workers).unwrap(),
            queue_capacity: 64,
            credits_per_stream: credits,
        }
    }

    /// Raw PCM16 at 24 kHz whose samples encode the stream and position.
    fn pcm(stream: u16, n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((stream as i32 * 100 + (i % 97) as i32) as i16).to_le_bytes())
            .collect()
    }

    const PCM24: Option<InputFormat> = Some(InputFormat::Pcm16 {
        sample_rate: 24_000,
        channels: 1,
    });

    async fn collect(rx: &mut mpsc::Receiver<Output>) -> Vec<i16> {
        let mut samples = Vec::new();
        while let Some(out) = rx.recv().await {
            out.result.unwrap();
            samples.extend(out.frames.iter().flat_map(|f| f.samples.iter().copied()));
            if out.end_of_input {
                break;
            }
        }
        samples
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_streams_stay_ordered() {
        let pool = Arc::new(DspPool::new(&config(2, 4)).unwrap());
        let mut tasks = Vec::new();
        for s in 0..40u16 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(async move {
                let (stream, mut rx) = pool.open(s, PCM24).await.unwrap();
                let bytes = pcm(s, 24_000);
                let consumer = tokio::spawn(async move { collect(&mut rx).await });
                // Odd chunk sizes cut samples in half: order matters for every byte.
                for c in bytes.chunks(777) {
                    stream.push(c.to_vec()).await.unwrap();
                }
                stream.finish().await.unwrap();
                let got = consumer.await.unwrap();
                let want: Vec<i16> = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                assert!(got == want, "stream {s} out of order");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn credits_push_back_until_outputs_are_consumed() {
        let pool = DspPool::new(&config(1, 2)).unwrap();
        let (stream, mut rx) = pool.open("conv", PCM24).await.unwrap();
        stream.push(pcm(1, 480)).await.unwrap();
        stream.push(pcm(1, 480)).await.unwrap();
        // Both credits are held by outputs nobody consumed: the third chunk must wait.
        assert!(stream.push(pcm(1, 480)).now_or_never().is_none());
        let first = rx.recv().await.unwrap();
        assert_eq!(first.frames[0].samples.len(), 480);
        drop(first);
        stream.push(pcm(1, 480)).await.unwrap();
        drop(stream);
        // Close drops the worker's sender once the queue drains: the receiver ends.
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn errors_reach_their_stream_only() {
        let pool = DspPool::new(&config(1, 4)).unwrap();
        let (bad, mut bad_rx) = pool.open(1, None).await.unwrap();
        let (good, mut good_rx) = pool.open(2, PCM24).await.unwrap();
        bad.push(b"not audio at all".to_vec()).await.unwrap();
        good.push(pcm(2, 960)).await.unwrap();
        good.finish().await.unwrap();
        let e = bad_rx.recv().await.unwrap().result.unwrap_err();
        assert_eq!(e.code(), "audio_unsupported");
        assert_eq!(collect(&mut good_rx).await.len(), 960);
    }
}
