//! A load generator: N simulated browsers, each streaming a real browser recording at
//! real-time pace into its own live conversation on a running Tandem server whose provider is
//! the in-process fake ([`fake_provider`]), measured from both ends.
//!
//! What it measures, and how:
//! - **chunk → PCM at the provider**: from just before a browser writes a chunk to when the
//!   fake provider reads the append that completes that chunk's PCM (totals from
//!   [`recording`]). It covers the whole server path: socket read, base64, demux, decode,
//!   resample, the STT session and its socket write, plus both loopback hops.
//! - **transcript → `new_message` / translation / `tts_audio`**: from just before the fake
//!   sends `completed` to when the browser reads each event.
//! - **server CPU per audio second and RSS per live conversation**, from `/proc/<pid>` when
//!   the server's pid is known ([`usage`]); the load generator's own CPU (the fake provider
//!   included) and the rest of the machine's are reported beside it.
//! - **errors**: every `error` event, unexpected close, failed socket or HTTP call.
//!
//! Design decision: the fake provider runs in this process, so both ends of every latency are
//! read on one clock and the server needs no instrumentation; its cost is reported as the
//! load generator's CPU, apart from the server's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::testing::fake_openai::{http, realtime};

mod browser;
mod collector;
pub mod recording;
pub mod usage;

pub use collector::ProbeTap;
use collector::{Measurements, Observer};
use recording::Recording;

/// Why a run could not be carried out (failures during the run are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fixture: {0}")]
    Fixture(String),
    #[error("{what} failed: {detail}")]
    Setup { what: &'static str, detail: String },
}

impl Error {
    fn setup(what: &'static str, detail: impl fmt::Display) -> Error {
        Error::Setup {
            what,
            detail: detail.to_string(),
        }
    }
}

/// The dialogue the fake transcribes each conversation's utterances as, in turn: the words
/// spoken in `fixtures/chrome-webm-opus-31s` (English clinician, Spanish patient).
pub const DIALOGUE: [&str; 2] = [
    "Take a note: the patient reports chest pain for three days. Schedule a follow-up in two weeks.",
    "Me duele el pecho desde hace tres días y tomo metformina dos veces al día.",
];

/// The fake provider's configuration for load runs: every connection gets the whole
/// dialogue (cycling), nothing is logged, and `tap` sees every arrival.
pub fn fake_provider(tap: &ProbeTap) -> (realtime::State, http::State) {
    (
        realtime::State::new(DIALOGUE)
            .script_per_connection()
            .unrecorded()
            .with_probe(tap.hook()),
        http::State::unrecorded(),
    )
}

/// One load level.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Concurrent live conversations.
    pub conversations: usize,
    /// Audio each conversation streams (the recording is looped).
    pub audio: Duration,
    /// Fixture folder (see [`Recording::load`]).
    pub fixture: PathBuf,
    /// Re-cut the recording to this timeslice; `None` sends the browser's own chunks.
    pub timeslice: Option<Duration>,
    /// Clinician accounts the conversations are spread over (each login costs an argon2 hash).
    pub users: usize,
    /// Wait after the last chunk for trailing transcripts before closing the sockets.
    pub drain: Duration,
    /// Longest a conversation may take to go live.
    pub connect_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            conversations: 10,
            audio: Duration::from_secs(60),
            fixture: Recording::default_dir(),
            timeslice: None,
            users: 10,
            drain: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(20),
        }
    }
}

/// The server under load.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `http://127.0.0.1:8080`.
    pub base_url: Url,
    /// Its process, for CPU and memory; `None` when it is not a separate local process.
    pub pid: Option<u32>,
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    fn of(samples: &mut [Duration]) -> Summary {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest rank: the smallest sample with at least q of the samples at or below it.
        let rank = |q: f64| {
            let i = (q * samples.len() as f64).ceil() as usize;
            ms(samples[i.clamp(1, samples.len()) - 1])
        };
        match samples.last() {
            None => Summary::default(),
            Some(&max) => Summary {
                count: samples.len(),
                p50: rank(0.5),
                p99: rank(0.99),
                max: ms(max),
            },
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
            self.p50, self.p99, self.max, self.count
        )
    }
}

/// What the server cost, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerUsage {
    /// Server CPU seconds per second of audio streamed, over the streaming period.
    pub cpu_per_audio_second: f64,
    /// Server CPU over the streaming period, in cores (1.0 = one core busy).
    pub cores: f64,
    /// RSS before any conversation went live, KiB.
    pub rss_baseline_kib: u64,
    /// Highest RSS while every conversation was live, KiB.
    pub rss_live_kib: u64,
    /// `(rss_live − rss_baseline) / live conversations`, KiB.
    pub rss_per_conversation_kib: f64,
}

/// The result of one load level.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Conversations asked for / that went live.
    pub conversations: usize,
    pub live: usize,
    /// Time to bring all conversations live, one after the other.
    pub ramp: Duration,
    /// Audio each conversation streamed.
    pub audio_per_conversation: Duration,
    pub chunk_audio: Duration,
    pub chunks_sent: u64,
    /// Chunks whose PCM had not fully reached the provider when the run ended.
    pub chunks_unmatched: u64,
    pub chunk: Summary,
    pub new_message: Summary,
    pub translation: Summary,
    pub tts_audio: Summary,
    /// Non-empty transcripts the provider sent while the browsers were connected (each should
    /// reach them as `new_message`).
    pub transcripts: u64,
    /// Transcripts of the final turns, committed when the browsers closed (not timed).
    pub transcripts_after_close: u64,
    /// How late browsers wrote chunks against real time (the load generator's own health).
    pub send_lag: Summary,
    pub server: Option<ServerUsage>,
    /// This process (browsers and fake provider) over the streaming period, in cores.
    pub loadgen_cores: f64,
    /// Everything else on the machine over the streaming period, in cores.
    pub others_cores: Option<f64>,
    pub cores: usize,
    pub load_before: String,
    pub load_after: String,
    pub errors: BTreeMap<String, u64>,
    /// Observations lost to a full channel (must be 0 for the numbers to be complete).
    pub observations_lost: u64,
}

impl Report {
    /// Total count of errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conversations: {} live of {} (ramp {:.1} s), {:.0} s of audio each in {:.0} ms chunks",
            self.live,
            self.conversations,
            self.ramp.as_secs_f64(),
            self.audio_per_conversation.as_secs_f64(),
            self.chunk_audio.as_secs_f64() * 1000.0
        )?;
        writeln!(
            f,
            "chunk -> PCM at provider: {} ({} chunks sent, {} without PCM at the end)",
            self.chunk, self.chunks_sent, self.chunks_unmatched
        )?;
        writeln!(
            f,
            "transcript -> new_message: {} ({} transcripts, {} more after closing)",
            self.new_message, self.transcripts, self.transcripts_after_close
        )?;
        writeln!(f, "transcript -> translation: {}", self.translation)?;
        writeln!(f, "transcript -> tts_audio: {}", self.tts_audio)?;
        writeln!(f, "send lag (load generator): {}", self.send_lag)?;
        match &self.server {
            Some(s) => writeln!(
                f,
                "server: {:.2} ms CPU per audio s, {:.2} cores; RSS {} -> {} KiB = {:.0} KiB per live conversation",
                s.cpu_per_audio_second * 1000.0,
                s.cores,
                s.rss_baseline_kib,
                s.rss_live_kib,
                s.rss_per_conversation_kib
            )?,
            None => writeln!(f, "server: not measured (no pid)")?,
        }
        writeln!(
            f,
            "load generator + fake provider: {:.2} cores; rest of the machine: {}; {} cores; load average {} -> {}",
            self.loadgen_cores,
            self.others_cores
                .map_or("unknown".into(), |c| format!("{c:.2} cores")),
            self.cores,
            self.load_before,
            self.load_after
        )?;
        if self.observations_lost > 0 {
            writeln!(f, "OBSERVATIONS LOST: {}", self.observations_lost)?;
        }
        if self.errors.is_empty() {
            write!(f, "errors: none")
        } else {
            write!(f, "errors: {}", self.error_count())?;
            for (label, n) in &self.errors {
                write!(f, "\n  {n} × {label}")?;
            }
            Ok(())
        }
    }
}

/// CPU readings at one instant.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    server: Option<Duration>,
    this: Option<Duration>,
    machine: Option<(Duration, usize)>,
    at: Instant,
}

impl CpuSnapshot {
    fn take(pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            server: pid.and_then(|p| usage::process_cpu(p).ok()),
            this: usage::process_cpu(std::process::id()).ok(),
            machine: usage::machine_busy().ok(),
            at: Instant::now(),
        }
    }
}

/// Runs one load level against `target`, whose provider must be a fake started with
/// [`fake_provider`]`(tap)`.
///
/// # Errors
/// The fixture cannot be loaded, or the server fails before any conversation starts (health,
/// accounts, conversations). Failures once conversations stream are counted in the report.
pub async fn run(config: &LoadConfig, target: &Target, tap: &ProbeTap) -> Result<Report, Error> {
    let n = config.conversations.max(1);
    let recording = Recording::load(&config.fixture, config.timeslice)?;
    let pace = recording.chunk_audio;
    let count = (config.audio.as_secs_f64() / pace.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let sends: Arc<[recording::Send]> = recording.sends(count)?.into();

    let api = browser::Api::new(target.base_url.clone());
    api.health().await?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let password = format!("loadgen-{tag}");
    let mut tokens = Vec::new();
    for u in 0..config.users.clamp(1, n) {
        tokens.push(
            api.login(&format!("loadgen-{}-{u}", &tag[..8]), &password)
                .await?,
        );
    }
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            api.create_conversation(&tokens[i % tokens.len()], i)
                .await?,
        );
    }

    let (observer, collector) = collector::channel(n);
    tap.connect(Some(observer.clone()));
    let collecting = tokio::spawn(collector.run());
    let outcome = stream(config, target, &api, &tokens, &ids, sends, pace, &observer).await;
    tap.connect(None);
    drop(observer);
    let measurements = collecting.await.unwrap_or_else(|_| Measurements::default());
    Ok(outcome.into_report(config, n, pace, measurements))
}

/// What [`stream`] saw outside the collector.
struct Streamed {
    live: usize,
    ramp: Duration,
    load_before: String,
    rss_baseline: Option<u64>,
    rss_live: Option<u64>,
    start: CpuSnapshot,
    end: CpuSnapshot,
    /// Seconds of audio written by all browsers between `start` and `end`.
    audio_seconds: f64,
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn stream(
    config: &LoadConfig,
    target: &Target,
    api: &browser::Api,
    tokens: &[String],
    ids: &[String],
    sends: Arc<[recording::Send]>,
    pace: Duration,
    observer: &Observer,
) -> Streamed {
    let n = ids.len();
    let rss = || target.pid.and_then(|p| usage::process_rss_kib(p).ok());
    let load_before = usage::load_average();
    let rss_baseline = rss();
    let stop = CancellationToken::new();
    let linger = Duration::from_secs(10);
    let mut tasks = tokio::task::JoinSet::new();
    let ramp_start = Instant::now();
    let start = CpuSnapshot::take(target.pid);
    let mut first_start: Option<Instant> = None;
    let mut last_start = ramp_start;
    for (i, id) in ids.iter().enumerate() {
        let token = &tokens[i % tokens.len()];
        match browser::Tab::open(api, token, i, id, config.connect_timeout, observer).await {
            Ok(tab) => {
                observer.send(collector::Observation::Attached { conversation: i });
                // Phases spread evenly over one chunk period, whatever the ramp's speed.
                let phase = ramp_start + pace.mul_f64(i as f64 / n as f64);
                let behind = Instant::now().saturating_duration_since(phase);
                let periods = (behind.as_secs_f64() / pace.as_secs_f64()).ceil();
                let begin = phase + pace.mul_f64(periods);
                first_start.get_or_insert(begin);
                last_start = last_start.max(begin);
                tasks.spawn(tab.run(
                    Arc::clone(&sends),
                    begin,
                    pace,
                    stop.clone(),
                    linger,
                    observer.clone(),
                ));
            }
            Err(e) => observer.error(format!("conversation did not go live: {e}")),
        }
    }
    let live = tasks.len();
    let ramp = ramp_start.elapsed();
    // Every live conversation streams from its start to start + audio; the first to finish
    // bounds the period in which all of them were live.
    let span = pace.mul_f64(sends.len().saturating_sub(1) as f64);
    let all_live_until = first_start.unwrap_or(ramp_start) + span;
    let streaming_until = last_start + span;
    let mut rss_live = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < streaming_until {
        tick.tick().await;
        let now = Instant::now();
        if now >= last_start && now <= all_live_until {
            rss_live = rss_live.max(rss());
        }
    }
    // Sampled once more if the all-live period was shorter than a tick.
    if rss_live.is_none() {
        rss_live = rss();
    }
    let end = CpuSnapshot::take(target.pid);
    let audio_seconds = live as f64 * sends.len() as f64 * pace.as_secs_f64();
    tokio::time::sleep(config.drain).await;
    observer.send(collector::Observation::Closing);
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Streamed {
        live,
        ramp,
        load_before,
        rss_baseline,
        rss_live,
        start,
        end,
        audio_seconds,
    }
}

impl Streamed {
    fn into_report(
        self,
        config: &LoadConfig,
        conversations: usize,
        pace: Duration,
        mut m: Measurements,
    ) -> Report {
        let wall = self
            .end
            .at
            .duration_since(self.start.at)
            .as_secs_f64()
            .max(1e-3);
        let diff = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        let server_cpu = diff(self.start.server, self.end.server);
        let this_cpu = diff(self.start.this, self.end.this).unwrap_or_default();
        let (machine_cpu, cores) = match (self.start.machine, self.end.machine) {
            (Some((a, cores)), Some((b, _))) => (Some(b.saturating_sub(a).as_secs_f64()), cores),
            _ => (None, 1),
        };
        let server = match (server_cpu, self.rss_baseline, self.rss_live) {
            (Some(cpu), Some(base), Some(live)) => Some(ServerUsage {
                cpu_per_audio_second: cpu / self.audio_seconds.max(1e-9),
                cores: cpu / wall,
                rss_baseline_kib: base,
                rss_live_kib: live,
                rss_per_conversation_kib: live.saturating_sub(base) as f64
                    / self.live.max(1) as f64,
            }),
            _ => None,
        };
        let others_cores = machine_cpu
            .map(|busy| (busy - this_cpu - server_cpu.unwrap_or_default()).max(0.0) / wall);
        Report {
            conversations,
            live: self.live,
            ramp: self.ramp,
            audio_per_conversation: config.audio,
            chunk_audio: pace,
            chunks_sent: m.chunks_sent,
            chunks_unmatched: m.chunks_unmatched,
            chunk: Summary::of(&mut m.chunk),
            new_message: Summary::of(&mut m.new_message),
            translation: Summary::of(&mut m.translation),
            tts_audio: Summary::of(&mut m.tts_audio),
            transcripts: m.transcripts,
            transcripts_after_close: m.transcripts_after_close,
            send_lag: Summary::of(&mut m.send_lag),
            server,
            loadgen_cores: this_cpu / wall,
            others_cores,
            cores,
            load_before: self.load_before,
            load_after: usage::load_average(),
            errors: m.errors,
            observations_lost: m.lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=200).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut samples);
        assert_eq!((s.count, s.p50, s.p99, s.max), (200, 100.0, 198.0, 200.0));
        let one = Summary::of(&mut [Duration::from_millis(3)]);
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        assert_eq!(Summary::of(&mut []), Summary::default());
    }
}
