//! Load generator: N concurrent live conversations against a Tandem server, each a simulated
//! browser streaming a real Chrome recording at real-time pace over the original protocol;
//! prints latencies, server CPU and memory, and errors per level (see `docs/performance.md`).
//!
//! ```sh
//! cargo build --release --bin tandem
//! # a fresh server process per level (spawned with a temp database, pointed at the fake):
//! cargo run --release --example loadgen -- --conversations 50,100,200 --audio-secs 60
//! # or against a server you started yourself, pointed at the fake's fixed address:
//! TANDEM_OPENAI_BASE_URL=http://127.0.0.1:18099/v1 target/release/tandem serve &
//! cargo run --release --example loadgen -- --server http://127.0.0.1:8080 \
//!     --server-pid $! --fake-listen 127.0.0.1:18099 --conversations 100
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use tandem::testing::fake_openai::FakeOpenAi;
use tandem::testing::loadgen::{self, recording::Recording, LoadConfig, ProbeTap, Report, Target};
use url::Url;

#[derive(Parser, Debug)]
#[command(
    about = "Concurrent live conversations against a Tandem server, with the fake provider in this process"
)]
struct Args {
    /// Load levels to run, one after the other (concurrent conversations).
    #[arg(long, value_delimiter = ',', default_value = "10")]
    conversations: Vec<usize>,
    /// Seconds of audio each conversation streams (the recording loops).
    #[arg(long, default_value_t = 60)]
    audio_secs: u64,
    /// Fixture folder to stream (default: fixtures/chrome-webm-opus-31s, 1 s chunks).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Re-cut the recording to this timeslice (e.g. 250); default: the browser's own chunks.
    #[arg(long)]
    timeslice_ms: Option<u64>,
    /// Clinician accounts the conversations are spread over.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Seconds to wait after the last chunk for trailing transcripts.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// A running server to load (otherwise one is spawned per level from --server-bin).
    #[arg(long)]
    server: Option<Url>,
    /// The running server's pid, for CPU and memory readings.
    #[arg(long, requires = "server")]
    server_pid: Option<u32>,
    /// Where the fake provider listens; the running server's TANDEM_OPENAI_BASE_URL must be
    /// http://ADDR/v1. Default with --server: 127.0.0.1:18099; when spawning: any free port.
    #[arg(long)]
    fake_listen: Option<SocketAddr>,
    /// Server binary to spawn per level (default: target/release/tandem).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra KEY=VALUE environment for spawned servers (e.g. TANDEM_DSP_THREADS=2).
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tap = ProbeTap::new();
    let (realtime, http) = loadgen::fake_provider(&tap);
    let fake_addr = match (args.fake_listen, &args.server) {
        (Some(addr), _) => addr,
        (None, Some(_)) => SocketAddr::from(([127, 0, 0, 1], 18099)),
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let fake = FakeOpenAi::start_at(fake_addr, realtime, http)
        .await
        .with_context(|| format!("cannot listen on {fake_addr} for the fake provider"))?;
    println!("fake provider: {}", fake.base_url());

    let mut results = Vec::new();
    for &n in &args.conversations {
        let config = LoadConfig {
            conversations: n,
            audio: Duration::from_secs(args.audio_secs),
            fixture: args.fixture.clone().unwrap_or_else(Recording::default_dir),
            timeslice: args.timeslice_ms.map(Duration::from_millis),
            users: args.users,
            drain: Duration::from_secs(args.drain_secs),
            ..LoadConfig::default()
        };
        println!("\n=== {n} conversations ===");
        let report = match &args.server {
            Some(url) => {
                let target = Target {
                    base_url: url.clone(),
                    pid: args.server_pid,
                };
                loadgen::run(&config, &target, &tap).await?
            }
            None => {
                let server = Spawned::start(&args, &fake.base_url()).await?;
                let report = loadgen::run(&config, &server.target, &tap).await;
                server.stop().await;
                report?
            }
        };
        println!("{report}");
        results.push(report);
    }
    println!("\n{}", table(&results));
    Ok(())
}

/// A server process started for one level, on a temp database; killed with the level.
struct Spawned {
    child: tokio::process::Child,
    target: Target,
    _dir: tempfile::TempDir,
}

impl Spawned {
    async fn start(args: &Args, provider: &Url) -> anyhow::Result<Spawned> {
        let bin = args.server_bin.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tandem")
        });
        if !bin.exists() {
            bail!(
                "{} does not exist: run `cargo build --release --bin tandem` first",
                bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let secret = format!("loadgen-{}", uuid::Uuid::new_v4().simple());
        let mut command = tokio::process::Command::new(&bin);
        command
            .arg("serve")
            .env("TANDEM_LISTEN", format!("127.0.0.1:{port}"))
            .env("TANDEM_DATABASE", dir.path().join("tandem.db"))
            .env("TANDEM_JWT_SECRET", secret)
            .env("TANDEM_OPENAI_BASE_URL", provider.as_str())
            .env("TANDEM_LOG", "warn")
            .env_remove("TANDEM_OPENAI_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &args.server_env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let base_url = Url::parse(&format!("http://127.0.0.1:{port}"))?;
        let health = format!("{base_url}healthz");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if tokio::time::Instant::now() > deadline {
                bail!("the spawned server did not answer {health} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Spawned {
            child,
            target: Target { base_url, pid },
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One markdown row per level.
fn table(results: &[Report]) -> String {
    let mut out = String::from(
        "| N | live | chunk→PCM p50 / p99 / max ms | →new_message p50 / p99 ms | →tts_audio p50 / p99 ms | server CPU ms per audio s | server cores | RSS per conversation KiB | loadgen+fake cores | others cores | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let (cpu, cores, rss) = r.server.map_or(("–".into(), "–".into(), "–".into()), |s| {
            (
                format!("{:.2}", s.cpu_per_audio_second * 1000.0),
                format!("{:.2}", s.cores),
                format!("{:.0}", s.rss_per_conversation_kib),
            )
        });
        out.push_str(&format!(
            "| {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {cpu} | {cores} | {rss} | {:.2} | {} | {} |\n",
            r.conversations,
            r.live,
            r.chunk.p50,
            r.chunk.p99,
            r.chunk.max,
            r.new_message.p50,
            r.new_message.p99,
            r.tts_audio.p50,
            r.tts_audio.p99,
            r.loadgen_cores,
            r.others_cores.map_or("–".into(), |c| format!("{c:.2}")),
            r.error_count(),
        ));
    }
    out
}
