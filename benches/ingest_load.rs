//! Load-style audio ingest measurements that criterion's `iter` cannot express: memory per live
//! stream, per-format chunk latency and CPU cost, N concurrent real-time streams on the
//! `DspPool`, 200 conversations starting within one second, and the original approach (one
//! `ffmpeg` process per stream) measured the same way in the same run. Prints tables.
//!
//! ```text
//! CARGO_TARGET_DIR=target cargo bench --bench ingest_load                 # everything, ~4 min
//! CARGO_TARGET_DIR=target cargo bench --bench ingest_load -- concurrency  # sections by name
//! ```
//! Sections: `memory`, `formats`, `ratio`, `single`, `floor`, `burst`, `concurrency`, `ffmpeg`.
//! Environment: `TANDEM_LOAD_LEVELS` (default `300,600,900,1200,1500`), `TANDEM_FFMPEG_LEVELS`
//! (default `300,600`), `TANDEM_LOAD_SECONDS` (audio per stream in the concurrency runs,
//! default 10), `TANDEM_MEM_STREAMS` (default 1000). The ffmpeg sections are skipped, with a
//! note, when `ffmpeg` is not installed.
//!
//! Load runs feed the real 31 s Chrome recording re-cut into ≈250 ms chunks (a 250 ms
//! timeslice), one chunk per stream every 250 ms (real-time pace); stream start phases are
//! spread evenly over one interval. Latency is wall time from just before a chunk is handed over
//! (`AudioStream::push`, or the write to ffmpeg's stdin) to its PCM arriving at the consumer.
//! Nothing here asserts a time limit: the numbers are reported, judged in `docs/performance.md`.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use tandem::audio::decode::opus::OpusDecoder;
use tandem::audio::decode::PacketDecoder;
use tandem::audio::demux::webm::WebmDemuxer;
use tandem::audio::demux::Demuxer;
use tandem::audio::pool::{DspPool, PoolConfig};
use tandem::audio::transcoder::Transcoder;
use tandem::audio::{InputFormat, OUTPUT_RATE};

const INTERVAL: Duration = Duration::from_millis(250);
/// Audio per chunk of `common::long_250ms()`.
const CHUNK_SECONDS: f64 = common::LONG_SECONDS / 125.0;
/// The issue's bar for a real-time stream's chunk latency.
const P99_BAR_MS: f64 = 20.0;
/// A sweep stops once p99 passes this: the system has collapsed, more streams tell nothing.
const COLLAPSED_MS: f64 = 2_000.0;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the bench started: comparable across threads.
fn now_ns() -> u64 {
    ns_at(Instant::now())
}

fn ns_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50 / p99 / max of a sample, in ms.
#[derive(Debug, Clone, Copy, Default)]
struct Pct {
    p50: f64,
    p99: f64,
    max: f64,
}

/// The column heads over rows printed as `{label:<44} {pct}`.
fn print_pct_header(label: &str) {
    println!(
        "{label:<44} {:>9} {:>9} {:>9}",
        "p50 ms", "p99 ms", "max ms"
    );
}

fn pct(mut v: Vec<u64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_unstable();
    let at = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]);
    Pct {
        p50: at(0.50),
        p99: at(0.99),
        max: ms(v[v.len() - 1]),
    }
}

impl std::fmt::Display for Pct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:9.3} {:9.3} {:9.3}", self.p50, self.p99, self.max)
    }
}

// ---- process accounting --------------------------------------------------------------------

fn rusage_ns(who: libc::c_int) -> u64 {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(who, &mut r) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// CPU time of this process (all threads, live and exited).
fn self_cpu_ns() -> u64 {
    rusage_ns(libc::RUSAGE_SELF)
}

/// CPU time of reaped child processes.
fn children_cpu_ns() -> u64 {
    rusage_ns(libc::RUSAGE_CHILDREN)
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime only writes the timespec we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Resident set size of this process, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm resident field");
    pages * page_size()
}

/// (busy, total) jiffies of all CPUs from `/proc/stat`: busy includes every tenant, and
/// steal time (a hypervisor's other guests).
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Share of the machine's CPU used between two `machine_jiffies` readings.
fn busy_share(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `sum_exec_runtime` (ns) of each task of `pid` whose name passes `keep`, by task id.
fn tasks_cpu(pid: &str, keep: impl Fn(&str) -> bool) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let p = task.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !keep(comm.trim()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(p.join("schedstat")) else {
            continue; // the task exited meanwhile
        };
        let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
        out.push((task.file_name().to_string_lossy().into_owned(), ns));
    }
    Some(out)
}

/// Total CPU (ns) of the live tasks of `pid`.
fn tasks_cpu_ns(pid: &str) -> Option<u64> {
    tasks_cpu(pid, |_| true).map(|v| v.iter().map(|t| t.1).sum())
}

/// CPU of this process's DSP pool workers (threads named `tandem-dsp-*`), by thread id: a
/// previous pool's workers may still be exiting when the next run starts.
fn dsp_cpu() -> Vec<(String, u64)> {
    tasks_cpu("self", |c| c.starts_with("tandem-dsp")).unwrap_or_default()
}

/// DSP CPU (ns) spent between two `dsp_cpu` readings, over the threads alive at the end.
fn dsp_cpu_since(before: &[(String, u64)]) -> u64 {
    dsp_cpu()
        .iter()
        .map(|(tid, ns)| {
            let b = before.iter().find(|t| &t.0 == tid).map_or(0, |t| t.1);
            ns.saturating_sub(b)
        })
        .sum()
}

/// Whether a child has exec'd ffmpeg and all its threads sleep (waiting on stdin).
fn ffmpeg_sleeping(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ffmpeg" {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('S'))
            })
            .unwrap_or(false)
    })
}

/// (Private_Clean + Private_Dirty, Rss, Pss) of a process in KiB, from `smaps_rollup`.
fn smaps_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some((
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Rss:"),
        field("Pss:"),
    ))
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cores} cores, {cpu}, MemAvailable {} MiB",
        mem_available_mib()
    );
    println!("load average at start: {}", loadavg());
}

// ---- the comparison, filled in as sections run ----------------------------------------------

/// One row of the closing Tandem-vs-ffmpeg table.
#[derive(Default)]
struct Side {
    start_cpu_ms: Option<f64>,
    first_pcm: Option<Pct>,
    later_chunk: Option<Pct>,
    cpu_per_audio_s_batch_ms: Option<f64>,
    cpu_per_audio_s_rt_ms: Option<f64>,
    mem_per_stream_kib: Option<f64>,
    /// Largest N tried with p99 under the bar, and the smallest with it over.
    capacity: Option<(Option<usize>, Option<usize>)>,
    burst_first_pcm: Option<Pct>,
}

#[derive(Default)]
struct Summary {
    tandem: Side,
    ffmpeg: Side,
}

fn main() {
    epoch();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| filters.is_empty() || filters.iter().any(|f| s.contains(f.as_str()));
    machine();
    let long = common::long_250ms();
    if long.is_empty() {
        println!("note: fixtures/chrome-webm-opus-31s missing; nothing to measure");
        return;
    }
    let long = Arc::new(long);
    let cum = Arc::new(common::cumulative_samples(&long, None));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut sum = Summary::default();

    // First, while the heap is fresh.
    if want("memory") {
        memory(&rt, &long, &mut sum);
    }
    if want("formats") {
        formats();
    }
    if want("ratio") {
        ratio(&mut sum);
    }
    if want("single") {
        single(&rt, &long, &mut sum);
    }
    if want("floor") {
        floor(&rt, &long);
    }
    if want("burst") {
        let r = tandem_run(&rt, &long, 200, 12, Duration::from_secs(1));
        println!("\n## tandem: 200 conversations starting within one second (3 s of audio each)");
        print_run_header();
        print_run(200, &r);
        sum.tandem.burst_first_pcm = Some(r.first);
    }
    if want("concurrency") {
        concurrency(&rt, &long, &mut sum);
    }
    let ffmpeg = ffmpeg_available();
    if want("ffmpeg") {
        if ffmpeg {
            ffmpeg_sections(&long, &cum, &mut sum);
        } else {
            println!("\nnote: ffmpeg is not installed: the ffmpeg comparison is skipped");
        }
    }
    print_summary(&sum);
    println!("\nload average at end: {}", loadavg());
}

// ---- memory ------------------------------------------------------------------------------

fn memory(rt: &tokio::runtime::Runtime, long: &Arc<Vec<Vec<u8>>>, sum: &mut Summary) {
    let n = env_usize("TANDEM_MEM_STREAMS", 1000);
    println!("\n## tandem: memory per live stream (RSS growth / N, mid-stream after 1 s of audio)");
    // Bare transcoders.
    let mut frames = Vec::new();
    let before = rss_bytes();
    let mut live = Vec::with_capacity(n);
    for _ in 0..n {
        let mut t = Transcoder::new(None);
        for c in &long[..4] {
            frames.clear();
            t.push(c, &mut frames).expect("fixture decodes");
        }
        live.push(t);
    }
    let per_transcoder = (rss_bytes().saturating_sub(before)) as f64 / n as f64 / 1024.0;
    println!("Transcoder, {n} live: {per_transcoder:8.1} KiB per stream");
    drop(live);

    // Pool streams: transcoder on its worker + result channel + credits + handle.
    let per_stream = rt.block_on(async {
        let pool = DspPool::new(&PoolConfig::default()).expect("dsp pool");
        let before = rss_bytes();
        let mut live = Vec::with_capacity(n);
        for i in 0..n {
            let (stream, mut rx) = pool.open(i, None).await.expect("open");
            for c in &long[..4] {
                stream.push(c.clone()).await.expect("push");
            }
            for _ in 0..4 {
                let out = rx.recv().await.expect("output");
                out.result.expect("decodes");
            }
            live.push((stream, rx));
        }
        let per = (rss_bytes().saturating_sub(before)) as f64 / n as f64 / 1024.0;
        drop(live);
        per
    });
    println!("DspPool stream, {n} live: {per_stream:8.1} KiB per stream (goal < 1024 KiB)");
    sum.tandem.mem_per_stream_kib = Some(per_stream.max(per_transcoder));
}

// ---- per format --------------------------------------------------------------------------

fn formats() {
    println!("\n## tandem: per format, single thread, Transcoder::push (wall ms; CPU per audio s)");
    println!(
        "{:<16} {:>8} {:>10} {:>9} {:>9} {:>9} {:>14}",
        "format", "chunk ms", "first p50", "later p50", "later p99", "later max", "CPU µs/audio s"
    );
    for f in common::formats() {
        let reps = (20.0 / f.seconds).ceil() as usize;
        let mut first = Vec::new();
        let mut later = Vec::new();
        let mut frames = Vec::new();
        let cpu0 = thread_cpu_ns();
        for _ in 0..reps {
            let mut t = Transcoder::new(f.declared);
            for (k, c) in f.chunks.iter().enumerate() {
                frames.clear();
                let t0 = Instant::now();
                t.push(c, &mut frames).expect("fixture decodes");
                let dt = t0.elapsed().as_nanos() as u64;
                if k == 0 { &mut first } else { &mut later }.push(dt);
            }
            frames.clear();
            t.finish(&mut frames).expect("fixture ends cleanly");
        }
        let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e3 / (reps as f64 * f.seconds);
        let (first, later) = (pct(first), pct(later));
        println!(
            "{:<16} {:>8.0} {:>10.3} {:>9.3} {:>9.3} {:>9.3} {:>14.0}",
            f.name,
            f.chunk_ms(),
            first.p50,
            later.p50,
            later.p99,
            later.max,
            cpu
        );
    }
}

// ---- whole ingest vs bare decoder ----------------------------------------------------------

fn ratio(sum: &mut Summary) {
    let long = common::chunks("chrome-webm-opus-31s");
    if long.is_empty() {
        return;
    }
    let mut d = WebmDemuxer::new();
    let mut pkts = Vec::new();
    for c in &long {
        d.push(c).expect("demux");
        while let Some(p) = d.next_packet().expect("demux") {
            pkts.push(p.data);
        }
    }
    let b64: Vec<String> = long
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();
    let (mut bare, mut whole) = (Vec::new(), Vec::new());
    let mut pcm = Vec::with_capacity(24_000 * 32);
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    // Interleaved, so load changes on the shared machine hit both sides alike.
    for _ in 0..15 {
        let c0 = thread_cpu_ns();
        let mut dec = OpusDecoder::new(1, 0).expect("decoder");
        pcm.clear();
        for p in &pkts {
            dec.decode(p, &mut pcm).expect("decode");
        }
        std::hint::black_box(pcm.len());
        let c1 = thread_cpu_ns();
        let mut t = Transcoder::new(None);
        frames.clear();
        for s in &b64 {
            buf.clear();
            base64::engine::general_purpose::STANDARD
                .decode_vec(s, &mut buf)
                .expect("base64");
            t.push(&buf, &mut frames).expect("decode");
        }
        t.finish(&mut frames).expect("finish");
        std::hint::black_box(frames.len());
        let c2 = thread_cpu_ns();
        bare.push(c1 - c0);
        whole.push(c2 - c1);
    }
    let per_s = |v: Vec<u64>| pct(v).p50 / common::LONG_SECONDS;
    let (bare, whole) = (per_s(bare), per_s(whole));
    println!("\n## tandem: whole ingest of the 31 s conversation vs the bare Opus decoder (thread CPU, median of 15)");
    println!("bare Opus decoder          {bare:7.3} ms CPU per audio s");
    println!("base64+demux+decode+frames {whole:7.3} ms CPU per audio s");
    println!(
        "ratio                      {:7.3}× (goal ≤ 1.3×)",
        whole / bare
    );
    sum.tandem.cpu_per_audio_s_batch_ms = Some(whole);
}

// ---- through the pool, one conversation at a time -------------------------------------------

fn single(rt: &tokio::runtime::Runtime, long: &Arc<Vec<Vec<u8>>>, sum: &mut Summary) {
    let (first, later) = rt.block_on(async {
        let pool = DspPool::new(&PoolConfig::default()).expect("dsp pool");
        let (mut first, mut later) = (Vec::new(), Vec::new());
        for i in 0..100 {
            let t0 = Instant::now();
            let (stream, mut rx) = pool.open(i, None).await.expect("open");
            for (k, c) in long[..8].iter().enumerate() {
                let t = Instant::now();
                stream.push(c.clone()).await.expect("push");
                let out = rx.recv().await.expect("output");
                out.result.expect("decodes");
                if k == 0 {
                    assert!(!out.frames.is_empty(), "first chunk gives PCM");
                    first.push(t0.elapsed().as_nanos() as u64);
                } else {
                    later.push(t.elapsed().as_nanos() as u64);
                }
            }
        }
        (pct(first), pct(later))
    });
    println!("\n## tandem: one conversation at a time through the DspPool (100 conversations, 8 chunks of 250 ms)");
    print_pct_header("");
    println!(
        "{:<44} {first}",
        "first PCM (open + first chunk → first frames)"
    );
    println!("{:<44} {later}", "later chunk (push → its frames)");
    sum.tandem.first_pcm = Some(first);
    sum.tandem.later_chunk = Some(later);
}

// ---- where a later chunk's time goes: decode alone, and the pool's hand-offs ----------------

/// Splits `single`'s later-chunk latency into its two parts. First the same chunks decoded on
/// this thread with no pool, grouped by the audio each completes (four or five 60 ms packets):
/// the decode floor. Then the pool's round trip (tokio → crossbeam → worker → tokio mpsc) for a
/// chunk that needs no decoding, one PCM16 sample at the output rate, back to back and after
/// the idle gaps a real-time stream has between chunks: the hand-off floor, which on a VM
/// includes waking a halted virtual CPU.
fn floor(rt: &tokio::runtime::Runtime, long: &Arc<Vec<Vec<u8>>>) {
    let mut by_audio: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut frames = Vec::new();
    for _ in 0..100 {
        let mut t = Transcoder::new(None);
        for (k, c) in long[..8].iter().enumerate() {
            frames.clear();
            let t0 = Instant::now();
            t.push(c, &mut frames).expect("decodes");
            let dt = t0.elapsed().as_nanos() as u64;
            if k > 0 {
                let samples: usize = frames.iter().map(|f| f.samples.len()).sum();
                let audio_ms = samples * 1000 / OUTPUT_RATE as usize;
                by_audio.entry(audio_ms).or_default().push(dt);
            }
        }
    }
    println!(
        "\n## tandem: later chunks of `single` decoded on this thread, no pool (100 × 7 chunks)"
    );
    print_pct_header("audio completed by the chunk");
    for (audio_ms, v) in by_audio {
        let n = v.len();
        println!("{:<44} {}", format!("{audio_ms} ms ({n} chunks)"), pct(v));
    }

    let pcm = InputFormat::Pcm16 {
        sample_rate: OUTPUT_RATE,
        channels: 1,
    };
    let rows = rt.block_on(async {
        let pool = DspPool::new(&PoolConfig::default()).expect("dsp pool");
        let (stream, mut rx) = pool.open(0, Some(pcm)).await.expect("open");
        let mut rows = Vec::new();
        for (gap_ms, n) in [(0u64, 2000), (5, 1000), (50, 200)] {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t0 = Instant::now();
                stream.push(vec![0, 0]).await.expect("push");
                rx.recv().await.expect("output").result.expect("pcm");
                v.push(t0.elapsed().as_nanos() as u64);
                if gap_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                }
            }
            rows.push((gap_ms, n, pct(v)));
        }
        rows
    });
    println!("\n## tandem: the pool's round trip for a chunk with nothing to decode (one sample)");
    print_pct_header("idle before each chunk");
    for (gap_ms, n, p) in rows {
        println!("{:<44} {p}", format!("{gap_ms} ms ({n} chunks)"));
    }
}

// ---- concurrent real-time streams on the pool ------------------------------------------------

/// What one load run measured.
struct Run {
    first: Pct,
    later: Pct,
    /// How late chunks were handed over against their schedule (feeder overload).
    lag: Pct,
    /// CPU (ms) per second of audio: whole process, and the DSP workers alone.
    cpu_per_audio_s: f64,
    dsp_per_audio_s: f64,
    /// Share of all cores the process used during the run.
    utilisation: f64,
    /// Share of all cores busy during the run, this process included (the rest is noise from
    /// other tenants of the machine).
    machine_busy: f64,
    wall: Duration,
}

struct StreamLat {
    first: Option<u64>,
    later: Vec<u64>,
    lag: Vec<u64>,
}

/// `n` streams, starts spread evenly over `spread`, each feeding `k` chunks every 250 ms.
fn tandem_run(
    rt: &tokio::runtime::Runtime,
    chunks: &Arc<Vec<Vec<u8>>>,
    n: usize,
    k: usize,
    spread: Duration,
) -> Run {
    rt.block_on(async {
        let pool = Arc::new(DspPool::new(&PoolConfig::default()).expect("dsp pool"));
        let (cpu0, dsp0, t0, m0) = (self_cpu_ns(), dsp_cpu(), Instant::now(), machine_jiffies());
        let start = Instant::now() + Duration::from_millis(100);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let at = start + spread.mul_f64(i as f64 / n as f64);
                tokio::spawn(tandem_stream(
                    Arc::clone(&pool),
                    i,
                    Arc::clone(chunks),
                    k,
                    at,
                ))
            })
            .collect();
        let (mut first, mut later, mut lag) = (Vec::new(), Vec::new(), Vec::new());
        for t in tasks {
            let s = t.await.expect("stream task");
            first.extend(s.first);
            later.extend(s.later);
            lag.extend(s.lag);
        }
        let wall = t0.elapsed();
        let (cpu, dsp) = (self_cpu_ns() - cpu0, dsp_cpu_since(&dsp0));
        let audio_s = n as f64 * k as f64 * CHUNK_SECONDS;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Run {
            first: pct(first),
            later: pct(later),
            lag: pct(lag),
            cpu_per_audio_s: ms(cpu) / audio_s,
            dsp_per_audio_s: ms(dsp) / audio_s,
            utilisation: cpu as f64 / (wall.as_nanos() as f64 * cores as f64),
            machine_busy: busy_share(m0, machine_jiffies()),
            wall,
        }
    })
}

async fn tandem_stream(
    pool: Arc<DspPool>,
    key: usize,
    chunks: Arc<Vec<Vec<u8>>>,
    k: usize,
    start: Instant,
) -> StreamLat {
    tokio::time::sleep_until(start.into()).await;
    let opened = now_ns();
    let (stream, mut rx) = pool.open(key, None).await.expect("pool open");
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
    let sent_c = Arc::clone(&sent);
    let consumer = tokio::spawn(async move {
        let mut first = None;
        let mut later = Vec::with_capacity(k);
        for i in 0..k {
            let out = rx.recv().await.expect("one output per chunk");
            let t = now_ns();
            out.result.expect("chunk decodes");
            if first.is_none() && !out.frames.is_empty() {
                first = Some(t - opened);
            }
            if i > 0 {
                later.push(t.saturating_sub(sent_c[i].load(Ordering::Acquire)));
            }
        }
        (first, later)
    });
    let mut lag = Vec::with_capacity(k);
    for (i, c) in chunks.iter().take(k).enumerate() {
        let due = start + INTERVAL * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let t = now_ns();
        lag.push(t.saturating_sub(ns_at(due)));
        sent[i].store(t, Ordering::Release);
        stream.push(c.clone()).await.expect("pool push");
    }
    let (first, later) = consumer.await.expect("consumer task");
    StreamLat { first, later, lag }
}

fn print_run_header() {
    println!(
        "{:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8} {:>8} | {:>10} {:>10} {:>6} {:>6} {:>6}",
        "N",
        "chunk p50",
        "p99",
        "max",
        "1st PCM50",
        "p99",
        "max",
        "lag p99",
        "lag max",
        "CPU ms/aus",
        "DSP ms/aus",
        "util",
        "others",
        "wall s"
    );
}

fn print_run(n: usize, r: &Run) {
    println!(
        "{:>6} | {} | {} | {:>8.2} {:>8.2} | {:>10.3} {:>10.3} {:>5.0}% {:>5.0}% {:>6.1}",
        n,
        r.later,
        r.first,
        r.lag.p99,
        r.lag.max,
        r.cpu_per_audio_s,
        r.dsp_per_audio_s,
        r.utilisation * 100.0,
        (r.machine_busy - r.utilisation).max(0.0) * 100.0,
        r.wall.as_secs_f64()
    );
}

fn concurrency(rt: &tokio::runtime::Runtime, long: &Arc<Vec<Vec<u8>>>, sum: &mut Summary) {
    let levels = env_list("TANDEM_LOAD_LEVELS", &[300, 600, 900, 1200, 1500]);
    let k = (env_usize("TANDEM_LOAD_SECONDS", 10) * 4).clamp(2, long.len());
    println!(
        "\n## tandem: N concurrent real-time streams on the DspPool ({} s of audio each, 250 ms chunks; ms; CPU per audio s)",
        k / 4
    );
    println!("load average before: {}", loadavg());
    print_run_header();
    let (mut ok, mut over) = (None, None);
    for n in levels {
        let r = tandem_run(rt, long, n, k, INTERVAL);
        print_run(n, &r);
        if r.later.p99 < P99_BAR_MS {
            ok = Some(n);
        } else if over.is_none() {
            over = Some(n);
        }
        if sum.tandem.cpu_per_audio_s_rt_ms.is_none() {
            sum.tandem.cpu_per_audio_s_rt_ms = Some(r.cpu_per_audio_s);
        }
        if r.later.p99 > COLLAPSED_MS {
            println!("(collapsed: stopping the sweep)");
            break;
        }
    }
    println!("load average after: {}", loadavg());
    sum.tandem.capacity = Some((ok, over));
}

// ---- ffmpeg, the original approach ------------------------------------------------------------

/// One `ffmpeg` process per stream, with a writer thread (stdin) and a reader thread (stdout).
struct Ff {
    child: Child,
    pid: u32,
    spawned: u64,
    go: std_mpsc::Sender<Instant>,
    /// Returns (hand-over time, lag) per chunk written.
    writer: JoinHandle<Vec<(u64, u64)>>,
    /// Returns (time, cumulative PCM bytes) per read.
    reader: JoinHandle<Vec<(u64, u64)>>,
}

fn ff_spawn(chunks: &Arc<Vec<Vec<u8>>>, k: usize, interval: Duration) -> Ff {
    let spawned = now_ns();
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i", "pipe:0"])
        .args(["-f", "s16le", "-ar", "24000", "-ac", "1", "pipe:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (go, start_rx) = std_mpsc::channel::<Instant>();
    let chunks = Arc::clone(chunks);
    let writer = std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            let Ok(start) = start_rx.recv() else {
                return Vec::new();
            };
            let mut times = Vec::with_capacity(k);
            for (i, c) in chunks.iter().take(k).enumerate() {
                let due = start + interval * i as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let t = now_ns();
                times.push((t, t.saturating_sub(ns_at(due))));
                if stdin.write_all(c).is_err() {
                    break;
                }
            }
            times // dropping stdin: EOF, ffmpeg drains and exits
        })
        .expect("writer thread");
    let reader = std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let (mut total, mut events) = (0u64, Vec::new());
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
                events.push((now_ns(), total));
            }
            events
        })
        .expect("reader thread");
    Ff {
        child,
        pid,
        spawned,
        go,
        writer,
        reader,
    }
}

/// Waits until every process has exec'd ffmpeg and sleeps on its stdin, CPU steady; returns
/// each one's CPU so far (its start cost) in ns.
fn ff_wait_idle(procs: &[Ff]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let cpu = |p: &Ff| tasks_cpu_ns(&p.pid.to_string()).unwrap_or(0);
    let mut last: Vec<Option<u64>> = vec![None; procs.len()];
    let mut stable = vec![0u8; procs.len()];
    while Instant::now() < deadline {
        for (i, p) in procs.iter().enumerate() {
            if stable[i] >= 2 {
                continue;
            }
            let c = cpu(p);
            if ffmpeg_sleeping(p.pid) && last[i] == Some(c) {
                stable[i] += 1;
            } else {
                stable[i] = 0;
            }
            last[i] = Some(c);
        }
        if stable.iter().all(|&s| s >= 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    procs.iter().map(cpu).collect()
}

struct FfRun {
    /// From the first chunk's write (processes already started).
    first_from_write: Pct,
    /// From spawning the process (the conversation's start).
    first_from_spawn: Pct,
    later: Pct,
    lag: Pct,
    start_cpu: Option<Pct>,
    /// Child CPU (ms) per audio second, start cost subtracted when it was measured.
    cpu_per_audio_s: f64,
    private_kib: Option<Pct>,
    rss_kib: f64,
    /// Share of all cores busy during the run (ffmpeg, this process and other tenants).
    machine_busy: f64,
    wall: Duration,
}

/// `n` ffmpeg streams fed `k` chunks each, every `interval`, starts spread over `spread`.
/// `prespawn`: start every process first and wait for it to idle (measures start cost apart);
/// otherwise spawn each at its start time, as a conversation would.
fn ff_run(
    chunks: &Arc<Vec<Vec<u8>>>,
    cum: &[u64],
    n: usize,
    k: usize,
    interval: Duration,
    spread: Duration,
    prespawn: bool,
) -> FfRun {
    let children0 = children_cpu_ns();
    let (t0, m0) = (Instant::now(), machine_jiffies());
    let mut procs = Vec::with_capacity(n);
    let mut start_cpu = None;
    let start;
    if prespawn {
        for _ in 0..n {
            procs.push(ff_spawn(chunks, k, interval));
        }
        start_cpu = Some(ff_wait_idle(&procs));
        start = Instant::now() + Duration::from_millis(100);
        for (i, p) in procs.iter().enumerate() {
            let _ = p.go.send(start + spread.mul_f64(i as f64 / n as f64));
        }
    } else {
        start = Instant::now();
        for i in 0..n {
            let at = start + spread.mul_f64(i as f64 / n as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let p = ff_spawn(chunks, k, interval);
            let _ = p.go.send(Instant::now());
            procs.push(p);
        }
    }
    // Private memory mid-stream, on up to 20 processes.
    let mid = start + spread + interval * (k as u32 / 2);
    let now = Instant::now();
    if mid > now {
        std::thread::sleep(mid - now);
    }
    let mem: Vec<(u64, u64, u64)> = procs
        .iter()
        .take(20)
        .filter_map(|p| smaps_kib(p.pid))
        .collect();
    let (mut first_w, mut first_s, mut later, mut lag) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in procs.iter_mut() {
        let _ = p.child.wait();
    }
    for p in procs {
        let writes = p.writer.join().expect("writer thread");
        let reads = p.reader.join().expect("reader thread");
        lag.extend(writes.iter().map(|w| w.1));
        let Some(&(t_first, _)) = reads.first() else {
            continue;
        };
        if let Some(&(w0, _)) = writes.first() {
            first_w.push(t_first.saturating_sub(w0));
        }
        first_s.push(t_first.saturating_sub(p.spawned));
        // Chunk i is out once ffmpeg's output covers what that chunk completes, less 20 ms
        // (ffmpeg's resampler holds back a few samples, and it writes in its own frame sizes).
        for (i, &(w, _)) in writes.iter().enumerate().skip(1) {
            let need = cum[i].saturating_sub(480).max(cum[i - 1] + 1) * 2;
            if let Some(&(t, _)) = reads.iter().find(|&&(_, total)| total >= need) {
                later.push(t.saturating_sub(w));
            }
        }
    }
    let wall = t0.elapsed();
    let start_total: u64 = start_cpu.as_ref().map_or(0, |v| v.iter().sum());
    let audio_s = n as f64 * k.min(chunks.len()) as f64 * CHUNK_SECONDS;
    let cpu = (children_cpu_ns() - children0).saturating_sub(start_total);
    FfRun {
        first_from_write: pct(first_w),
        first_from_spawn: pct(first_s),
        later: pct(later),
        lag: pct(lag),
        start_cpu: start_cpu.map(pct),
        cpu_per_audio_s: ms(cpu) / audio_s,
        // pct() reports ns as ms; scale so it reports KiB as KiB.
        private_kib: (!mem.is_empty()).then(|| pct(mem.iter().map(|m| m.0 * 1_000_000).collect())),
        rss_kib: mem.iter().map(|m| m.1).sum::<u64>() as f64 / mem.len().max(1) as f64,
        machine_busy: busy_share(m0, machine_jiffies()),
        wall,
    }
}

fn ffmpeg_sections(long: &Arc<Vec<Vec<u8>>>, cum: &[u64], sum: &mut Summary) {
    println!("\n## ffmpeg (one process per stream: -i pipe:0 -f s16le -ar 24000 -ac 1 pipe:1)");
    println!("{}", ffmpeg_version());
    println!("load average before: {}", loadavg());

    // One stream's life, 10 streams side by side with staggered phases.
    let r = ff_run(long, cum, 10, 12, INTERVAL, INTERVAL, true);
    let start = r.start_cpu.unwrap_or_default();
    let private = r.private_kib.unwrap_or_default();
    println!("10 pre-started processes, 3 s of 250 ms chunks at real-time pace:");
    println!(
        "  process start CPU           p50 {:8.1} ms  max {:8.1} ms",
        start.p50, start.max
    );
    println!(
        "  first PCM after 1st chunk   p50 {:8.1} ms  p99 {:8.1} ms (process already running)",
        r.first_from_write.p50, r.first_from_write.p99
    );
    println!(
        "  later chunk → its PCM       p50 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms",
        r.later.p50, r.later.p99, r.later.max
    );
    println!(
        "  CPU per audio s (RT pace)   {:8.3} ms (start cost excluded; 3 s streams, exit cost included)",
        r.cpu_per_audio_s
    );
    println!(
        "  private memory mid-stream   p50 {:8.0} KiB (Private_Clean+Private_Dirty; Rss avg {:.0} KiB)",
        private.p50,
        r.rss_kib
    );
    sum.ffmpeg.start_cpu_ms = Some(start.p50);
    sum.ffmpeg.later_chunk = Some(r.later);
    sum.ffmpeg.mem_per_stream_kib = Some(private.p50);

    // Cold start as a conversation pays it: spawn, write the first chunk at once.
    let r = ff_run(long, cum, 10, 2, INTERVAL, Duration::from_secs(2), false);
    println!(
        "  first PCM after spawn+1st chunk, 10 starts 200 ms apart: p50 {:.1} ms  p99 {:.1} ms",
        r.first_from_spawn.p50, r.first_from_spawn.p99
    );
    sum.ffmpeg.first_pcm = Some(r.first_from_spawn);

    // Batch: the 31 s recording in its own 1 s chunks, written as fast as ffmpeg reads.
    let native = Arc::new(common::chunks("chrome-webm-opus-31s"));
    let native_cum = common::cumulative_samples(&native, None);
    let mut per_s = Vec::new();
    for _ in 0..5 {
        let r = ff_run(
            &native,
            &native_cum,
            1,
            native.len(),
            Duration::ZERO,
            Duration::ZERO,
            true,
        );
        // ff_run counts CHUNK_SECONDS per chunk; these chunks are ~1 s each.
        per_s
            .push(r.cpu_per_audio_s * (native.len() as f64 * CHUNK_SECONDS) / common::LONG_SECONDS);
    }
    per_s.sort_by(f64::total_cmp);
    println!("  batch, whole 31 s recording: CPU per audio s median {:.3} ms (start cost excluded, 5 runs)", per_s[2]);
    sum.ffmpeg.cpu_per_audio_s_batch_ms = Some(per_s[2]);

    // 200 conversations starting within one second.
    let r = ff_run(long, cum, 200, 12, INTERVAL, Duration::from_secs(1), false);
    println!(
        "\n## ffmpeg: 200 conversations starting within one second (first PCM from spawn, ms)"
    );
    println!(
        "first PCM p50 {:.1}  p99 {:.1}  max {:.1}; later chunk p50 {:.2} p99 {:.2}; wall {:.1} s",
        r.first_from_spawn.p50,
        r.first_from_spawn.p99,
        r.first_from_spawn.max,
        r.later.p50,
        r.later.p99,
        r.wall.as_secs_f64()
    );
    sum.ffmpeg.burst_first_pcm = Some(r.first_from_spawn);

    // Concurrent real-time streams.
    let levels = env_list("TANDEM_FFMPEG_LEVELS", &[300, 600]);
    let k = (env_usize("TANDEM_LOAD_SECONDS", 10) * 4).clamp(2, long.len());
    println!(
        "\n## ffmpeg: N concurrent real-time streams ({} s of audio each, 250 ms chunks; processes started first)",
        k / 4
    );
    println!(
        "{:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} | {:>10} {:>10} {:>6} {:>7}",
        "N",
        "chunk p50",
        "p99",
        "max",
        "start p50",
        "1stPCM99",
        "lag p99",
        "lag max",
        "CPU ms/aus",
        "priv KiB",
        "busy",
        "wall s"
    );
    let (mut ok, mut over) = (None, None);
    for n in levels {
        let need_mib = n as u64 * 25;
        if mem_available_mib() < need_mib {
            println!(
                "{n:>6} | skipped: MemAvailable {} MiB < {need_mib} MiB",
                mem_available_mib()
            );
            break;
        }
        let r = ff_run(long, cum, n, k, INTERVAL, INTERVAL, true);
        println!(
            "{:>6} | {} | {:>9.1} {:>9.1} | {:>8.2} {:>8.2} | {:>10.3} {:>10.0} {:>5.0}% {:>7.1}",
            n,
            r.later,
            r.start_cpu.unwrap_or_default().p50,
            r.first_from_write.p99,
            r.lag.p99,
            r.lag.max,
            r.cpu_per_audio_s,
            r.private_kib.unwrap_or_default().p50,
            r.machine_busy * 100.0,
            r.wall.as_secs_f64()
        );
        if r.later.p99 < P99_BAR_MS {
            ok = Some(n);
        } else if over.is_none() {
            over = Some(n);
        }
        if sum.ffmpeg.cpu_per_audio_s_rt_ms.is_none() {
            // The first level's 10 s streams: start cost excluded, exit cost amortised.
            sum.ffmpeg.cpu_per_audio_s_rt_ms = Some(r.cpu_per_audio_s);
        }
        if r.later.p99 > COLLAPSED_MS {
            println!("(collapsed: stopping the sweep)");
            break;
        }
    }
    println!("load average after: {}", loadavg());
    sum.ffmpeg.capacity = Some((ok, over));
}

fn ffmpeg_version() -> String {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

// ---- closing table ---------------------------------------------------------------------------

fn print_summary(sum: &Summary) {
    fn f(v: Option<f64>) -> String {
        v.map_or("–".into(), |v| format!("{v:.3}"))
    }
    fn p(v: Option<Pct>, q: fn(&Pct) -> f64) -> Option<f64> {
        v.as_ref().map(q)
    }
    fn ratio(ff: Option<f64>, t: Option<f64>) -> String {
        match (ff, t) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "–".into(),
        }
    }
    fn cap(c: Option<(Option<usize>, Option<usize>)>) -> String {
        match c {
            Some((ok, over)) => format!(
                "ok ≤{} / over at {}",
                ok.map_or("–".into(), |n| n.to_string()),
                over.map_or("–".into(), |n| n.to_string())
            ),
            None => "–".into(),
        }
    }
    let (t, x) = (&sum.tandem, &sum.ffmpeg);
    println!("\n## summary (this run; ffmpeg ÷ tandem)");
    println!(
        "{:<40} {:>14} {:>14} {:>10}",
        "", "tandem", "ffmpeg", "ratio"
    );
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = vec![
        ("stream start CPU ms", None, x.start_cpu_ms),
        (
            "first PCM p50 ms",
            p(t.first_pcm, |q| q.p50),
            p(x.first_pcm, |q| q.p50),
        ),
        (
            "first PCM p99 ms",
            p(t.first_pcm, |q| q.p99),
            p(x.first_pcm, |q| q.p99),
        ),
        (
            "later chunk p50 ms",
            p(t.later_chunk, |q| q.p50),
            p(x.later_chunk, |q| q.p50),
        ),
        (
            "later chunk p99 ms",
            p(t.later_chunk, |q| q.p99),
            p(x.later_chunk, |q| q.p99),
        ),
        (
            "CPU ms per audio s, batch",
            t.cpu_per_audio_s_batch_ms,
            x.cpu_per_audio_s_batch_ms,
        ),
        (
            "CPU ms per audio s, real-time pace",
            t.cpu_per_audio_s_rt_ms,
            x.cpu_per_audio_s_rt_ms,
        ),
        (
            "memory KiB per live stream",
            t.mem_per_stream_kib,
            x.mem_per_stream_kib,
        ),
        (
            "200 starts in 1 s: first PCM p99 ms",
            p(t.burst_first_pcm, |q| q.p99),
            p(x.burst_first_pcm, |q| q.p99),
        ),
    ];
    for (name, a, b) in rows {
        println!("{name:<40} {:>14} {:>14} {:>10}", f(a), f(b), ratio(b, a));
    }
    println!(
        "{:<40} {:>14} {:>14}",
        "streams at p99 < 20 ms",
        cap(t.capacity),
        cap(x.capacity)
    );
}
