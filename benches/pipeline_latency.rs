//! Tandem's own per-utterance overhead in the live pipeline.
//!
//! The real [`Pipelines`] runs over a real SQLite store (temp dir) and the real hub, with fake
//! providers of fixed latency (`tokio::time::sleep`) behind the real traits. Language detection
//! is the real local detector (in-process trigram statistics, no fallback): it is Tandem's code,
//! so its cost is overhead. A scripted STT fake lets the bench inject one `SttEvent::Final`
//! (the provider's `completed`) per iteration; the iteration ends when a hub client subscribed
//! to the conversation's audio audience receives `processing_completed`, the last event of an
//! utterance. Each iteration is one utterance, so criterion's time is the utterance total.
//!
//! After criterion, a summary table prints the overhead explicitly:
//! - `nom` (over nominal) = total − the configured critical path, max(translate + TTS, commands);
//! - `meas` (over measured) = total − the same max computed from what each fake actually slept
//!   (timer granularity rounds a 40 ms sleep up to the next millisecond tick; that is the
//!   fake's latency, not Tandem's).
//!
//! Then one line per clinician scenario says whether the total follows max(branches) or their
//! sum, and a verdict on the goal: mean overhead over nominal provider latency < 5 ms.
//!
//! Run: `cargo bench --bench pipeline_latency`.
// Bench setup: a panic is the report.
#![allow(clippy::unwrap_used)]

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, SamplingMode};
use tandem::ai::{
    self, AudioFormat, Command, CommandContext, CommandDetector, CommandOutcome, GlossaryEntry,
    LocalLanguageDetector, MedicalHistoryGenerator, SpeechAudio, Summarizer, SummaryRequest,
    TextToSpeech, Translator,
};
use tandem::audio::pool::{DspPool, PoolConfig};
use tandem::metrics::Metrics;
use tandem::pipeline::cluster::Standalone;
use tandem::pipeline::hub::{ClientRx, Hub};
use tandem::pipeline::{AudioInput, PipelineConfig, Pipelines, Providers};
use tandem::store::sqlite::SqliteStore;
use tandem::store::{NewConversation, NewPatient, NewUser, Store, UserRole};
use tandem::stt::{self, SpeechToText, SttEvent, SttInput, SttOptions, SttSession};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const CLINICIAN_TEXT: &str =
    "Take a note: the patient reports chest pain for three days and shortness of breath when climbing stairs.";
const CLINICIAN_TRANSLATION: &str =
    "Tomar nota: el paciente refiere dolor en el pecho desde hace tres días y falta de aire al subir escaleras.";
const PATIENT_TEXT: &str =
    "Me duele el pecho desde hace tres días y tomo metformina dos veces al día.";
const PATIENT_TRANSLATION: &str =
    "My chest has hurt for three days and I take metformin twice a day.";
/// About 3 s of 128 kbit/s MP3: base64-encoding it into `tts_audio` is Tandem's work.
const TTS_BYTES: usize = 48_000;

/// Fixed provider latencies of one scenario.
#[derive(Debug, Clone, Copy)]
struct Latencies {
    translate: Duration,
    tts: Duration,
    commands: Duration,
}

impl Latencies {
    const fn ms(translate: u64, tts: u64, commands: u64) -> Latencies {
        Latencies {
            translate: Duration::from_millis(translate),
            tts: Duration::from_millis(tts),
            commands: Duration::from_millis(commands),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// English: both branches (translation → TTS, and command detection → execution).
    Clinician,
    /// Spanish: translation → TTS only.
    Patient,
}

struct Scenario {
    name: &'static str,
    who: Who,
    latencies: Latencies,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "clinician_tr40_tts60_cmd80",
        who: Who::Clinician,
        latencies: Latencies::ms(40, 60, 80),
    },
    Scenario {
        name: "clinician_tr40_tts60_cmd150",
        who: Who::Clinician,
        latencies: Latencies::ms(40, 60, 150),
    },
    Scenario {
        name: "patient_tr40_tts60",
        who: Who::Patient,
        latencies: Latencies::ms(40, 60, 80),
    },
    Scenario {
        name: "clinician_zero_latency",
        who: Who::Clinician,
        latencies: Latencies::ms(0, 0, 0),
    },
    Scenario {
        name: "patient_zero_latency",
        who: Who::Patient,
        latencies: Latencies::ms(0, 0, 0),
    },
];

// ---------------------------------------------------------------------------------------------
// Fake providers

/// A fixed delay that records how long the provider call really took (nanoseconds).
struct Delay {
    latency: Duration,
    last_ns: AtomicU64,
}

impl Delay {
    fn new(latency: Duration) -> Delay {
        Delay {
            latency,
            last_ns: AtomicU64::new(0),
        }
    }

    async fn wait(&self) {
        let start = Instant::now();
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.last_ns
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn take(&self) -> Duration {
        Duration::from_nanos(self.last_ns.swap(0, Ordering::Relaxed))
    }
}

struct FakeTranslator(Delay);

#[async_trait]
impl Translator for FakeTranslator {
    async fn translate(
        &self,
        _text: &str,
        from: &str,
        _to: &str,
        _glossary: &[GlossaryEntry],
    ) -> ai::Result<String> {
        self.0.wait().await;
        Ok(if from == "en" {
            CLINICIAN_TRANSLATION
        } else {
            PATIENT_TRANSLATION
        }
        .to_owned())
    }
}

struct FakeTts {
    delay: Delay,
    audio: bytes::Bytes,
}

#[async_trait]
impl TextToSpeech for FakeTts {
    async fn synthesize(
        &self,
        _text: &str,
        _language: &str,
        _speaker: ai::Speaker,
        format: AudioFormat,
    ) -> ai::Result<SpeechAudio> {
        self.delay.wait().await;
        Ok(SpeechAudio {
            bytes: self.audio.clone(),
            format,
        })
    }
}

/// Always finds a `take_note`, so the command branch also writes an action row.
struct FakeCommands(Delay);

#[async_trait]
impl CommandDetector for FakeCommands {
    async fn detect(&self, text: &str, _ctx: &CommandContext) -> ai::Result<CommandOutcome> {
        self.0.wait().await;
        Ok(CommandOutcome::Command(Command::TakeNote {
            content: text.to_owned(),
        }))
    }
}

/// Summaries and medical histories are not on the measured path (no conversation is created
/// over REST, no summary is asked for); this answers both with an error if ever called.
struct NotMeasured;

#[async_trait]
impl Summarizer for NotMeasured {
    async fn summarize(&self, _request: &SummaryRequest) -> ai::Result<String> {
        Err(ai::Error::Malformed(
            "summaries are not part of this bench".into(),
        ))
    }
}

#[async_trait]
impl MedicalHistoryGenerator for NotMeasured {
    async fn generate(&self, _first: &str, _last: &str, _age: Option<u32>) -> ai::Result<String> {
        Err(ai::Error::Malformed(
            "histories are not part of this bench".into(),
        ))
    }
}

/// STT whose sessions emit what the bench sends: `open` hands the events sender to the bench.
struct ScriptedStt {
    sessions: mpsc::UnboundedSender<mpsc::Sender<SttEvent>>,
    /// Audio inputs of opened sessions, kept open so the pipeline's sends never fail.
    inputs: Mutex<Vec<mpsc::Receiver<SttInput>>>,
}

#[async_trait]
impl SpeechToText for ScriptedStt {
    async fn open(&self, _options: SttOptions) -> Result<SttSession, stt::Error> {
        let (audio, input) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(64);
        self.inputs.lock().expect("inputs lock").push(input);
        self.sessions
            .send(events_tx)
            .map_err(|_| stt::Error::Config("bench gone".into()))?;
        Ok(SttSession { audio, events })
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: one live conversation per scenario

struct Fakes {
    translate: Arc<FakeTranslator>,
    tts: Arc<FakeTts>,
    commands: Arc<FakeCommands>,
}

struct Rig {
    pipelines: Arc<Pipelines>,
    stt: mpsc::Sender<SttEvent>,
    client: ClientRx,
    input: Option<AudioInput>,
    fakes: Fakes,
    who: Who,
    next_item: u64,
    _dir: tempfile::TempDir,
}

/// One utterance's measurements.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// `Final` injected → `processing_completed` received.
    total: Duration,
    /// `Final` injected → the original's `new_message` received (detect + store + publish).
    first_message: Duration,
    /// max(translate + TTS, commands) as the fakes measured it.
    providers: Duration,
}

impl Rig {
    async fn new(who: Who, latencies: Latencies) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("bench.db")).expect("open sqlite"));
        let org = store
            .create_organization("Bench Clinic")
            .await
            .expect("org");
        let user = store
            .create_user(NewUser {
                organization_id: org.id.clone(),
                username: "dr-bench".into(),
                password_hash: "not-a-login".into(),
                preferred_language: "en".into(),
                role: UserRole::Clinician,
            })
            .await
            .expect("user");
        let (patient, _) = store
            .find_or_create_patient(NewPatient {
                organization_id: org.id.clone(),
                first_name: "Ana".into(),
                last_name: "García".into(),
                date_of_birth: "1970-01-01".into(),
                preferred_language: "es".into(),
            })
            .await
            .expect("patient");
        let conversation = store
            .create_conversation(NewConversation {
                organization_id: org.id.clone(),
                user_id: user.id.clone(),
                patient_id: patient.id.clone(),
                clinician_language: "en".into(),
                patient_language: "es".into(),
            })
            .await
            .expect("conversation");

        let (sessions_tx, mut sessions) = mpsc::unbounded_channel();
        let fakes = Fakes {
            translate: Arc::new(FakeTranslator(Delay::new(latencies.translate))),
            tts: Arc::new(FakeTts {
                delay: Delay::new(latencies.tts),
                audio: bytes::Bytes::from(vec![0x5a; TTS_BYTES]),
            }),
            commands: Arc::new(FakeCommands(Delay::new(latencies.commands))),
        };
        let providers = Providers {
            stt: Arc::new(ScriptedStt {
                sessions: sessions_tx,
                inputs: Mutex::new(Vec::new()),
            }),
            language: Arc::new(LocalLanguageDetector::new(None)),
            translator: fakes.translate.clone(),
            commands: fakes.commands.clone(),
            tts: fakes.tts.clone(),
            summarizer: Arc::new(NotMeasured),
            history: Arc::new(NotMeasured),
        };
        let pool = DspPool::new(&PoolConfig {
            workers: NonZeroUsize::MIN,
            ..PoolConfig::default()
        })
        .expect("dsp pool");
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new());
        let pipelines = Pipelines::new(
            store,
            Arc::clone(&hub),
            Arc::new(Standalone::new(hub)),
            providers,
            pool,
            PipelineConfig::default(),
            &metrics,
        );
        let hub = pipelines.hub().clone();
        let (_, tx, mut client) = hub.client();
        hub.subscribe_audio(&conversation.id, &user.id, &tx);
        let input = pipelines.attach(&conversation, tx).await.expect("attach");
        let stt = sessions.recv().await.expect("an STT session was opened");
        // `openai_connected` from going live.
        while client.frames.try_recv().is_ok() {}
        Rig {
            pipelines,
            stt,
            client,
            input: Some(input),
            fakes,
            who,
            next_item: 0,
            _dir: dir,
        }
    }

    /// One utterance: inject `Final`, wait for `processing_completed`.
    async fn utterance(&mut self) -> Sample {
        self.next_item += 1;
        let text = match self.who {
            Who::Clinician => CLINICIAN_TEXT,
            Who::Patient => PATIENT_TEXT,
        };
        let event = SttEvent::Final {
            item_id: format!("item-{}", self.next_item),
            previous_item_id: None,
            text: text.to_owned(),
            languages: Vec::new(),
            confidence: None,
        };
        let mut seen = Seen::default();
        let t0 = Instant::now();
        self.stt
            .send(event)
            .await
            .expect("pipeline reads STT events");
        let mut first_message = None;
        let total = loop {
            let frame = self.client.frames.recv().await.expect("hub client open");
            let kind = frame_type(&frame);
            match kind {
                "processing_completed" => break t0.elapsed(),
                "new_message" => {
                    first_message.get_or_insert_with(|| t0.elapsed());
                    seen.new_message += 1;
                }
                "tts_audio" => seen.tts_audio += 1,
                "command_executed" => seen.command_executed += 1,
                "action_created" => {}
                _ => panic!("unexpected frame in the bench: {frame}"),
            }
        };
        seen.check(self.who);
        let tr = self.fakes.translate.0.take();
        let tts = self.fakes.tts.delay.take();
        let cmd = self.fakes.commands.0.take();
        Sample {
            total,
            first_message: first_message.expect("new_message before processing_completed"),
            providers: (tr + tts).max(cmd),
        }
    }

    async fn close(mut self) {
        if let Some(input) = self.input.take() {
            input.close().await;
        }
        drop(self.stt);
        self.pipelines.shutdown(Duration::from_secs(5)).await;
    }
}

#[derive(Default)]
struct Seen {
    new_message: u32,
    tts_audio: u32,
    command_executed: u32,
}

impl Seen {
    fn check(&self, who: Who) {
        let commands = u32::from(who == Who::Clinician);
        assert!(
            self.new_message == 2 && self.tts_audio == 1 && self.command_executed == commands,
            "an utterance of {who:?} must produce the original and translation rows, one \
             tts_audio and {commands} command_executed; saw {} / {} / {}",
            self.new_message,
            self.tts_audio,
            self.command_executed
        );
    }
}

/// The `type` of a hub frame; serde writes the internal tag first.
fn frame_type(frame: &str) -> &str {
    frame
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
}

// ---------------------------------------------------------------------------------------------
// Criterion and the summary

fn bench(c: &mut Criterion, rt: &Runtime, results: &mut Vec<(&'static Scenario, Vec<Sample>)>) {
    let mut group = c.benchmark_group("pipeline_utterance");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for scenario in SCENARIOS {
        let mut rig = rt.block_on(Rig::new(scenario.who, scenario.latencies));
        let mut samples = Vec::new();
        group.bench_function(scenario.name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let s = rig.utterance().await;
                        total += s.total;
                        samples.push(s);
                    }
                    total
                })
            })
        });
        rt.block_on(rig.close());
        results.push((scenario, samples));
    }
    group.finish();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Stats {
    median: f64,
    mean: f64,
    p95: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        median: percentile(&v, 0.5),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p95: percentile(&v, 0.95),
        max: v[v.len() - 1],
    }
}

fn summary(results: &[(&'static Scenario, Vec<Sample>)]) {
    println!();
    println!(
        "Pipeline overhead per utterance (ms; Final injected → processing_completed received)"
    );
    println!(
        "{:<28} {:>5} {:>6} {:>5} | {:>7} {:>7} {:>7} | {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7}",
        "scenario",
        "n",
        "crit",
        "sum",
        "tot p50",
        "tot avg",
        "tot p95",
        "nom p50",
        "nom avg",
        "meas p50",
        "meas p95",
        "meas max",
        "1st msg"
    );
    let mut worst_mean: f64 = 0.0;
    let mut worst_p95: f64 = 0.0;
    let mut parallel = Vec::new();
    let mut measured_any = false;
    for (scenario, samples) in results {
        // The first utterances warm the database file and the runtime's blocking pool.
        let samples: Vec<Sample> = samples.iter().skip(5).copied().collect();
        if samples.is_empty() {
            println!("{:<28} (no samples: test mode)", scenario.name);
            continue;
        }
        let l = scenario.latencies;
        let (crit, sum) = match scenario.who {
            Who::Clinician => (
                (l.translate + l.tts).max(l.commands),
                l.translate + l.tts + l.commands,
            ),
            Who::Patient => (l.translate + l.tts, l.translate + l.tts),
        };
        let total = stats(samples.iter().map(|s| ms(s.total)).collect());
        let nominal = stats(samples.iter().map(|s| ms(s.total) - ms(crit)).collect());
        let measured = stats(
            samples
                .iter()
                .map(|s| ms(s.total) - ms(s.providers))
                .collect(),
        );
        let first = stats(samples.iter().map(|s| ms(s.first_message)).collect());
        measured_any = true;
        worst_mean = worst_mean.max(nominal.mean);
        worst_p95 = worst_p95.max(measured.p95);
        if scenario.who == Who::Clinician && sum > crit {
            parallel.push((scenario.name, total.mean, ms(crit), ms(sum)));
        }
        println!(
            "{:<28} {:>5} {:>6.0} {:>5.0} | {:>7.2} {:>7.2} {:>7.2} | {:>8.2} {:>8.2} | {:>8.2} {:>8.2} {:>8.2} | {:>7.2}",
            scenario.name,
            samples.len(),
            ms(crit),
            ms(sum),
            total.median,
            total.mean,
            total.p95,
            nominal.median,
            nominal.mean,
            measured.median,
            measured.p95,
            measured.max,
            first.median,
        );
    }
    println!(
        "crit = max(translate+TTS, commands), sum = all provider latencies; nom = total − crit; \
         meas = total − max(translate+TTS, commands) as the fakes actually slept; 1st msg = \
         the original's new_message."
    );
    if !measured_any {
        return;
    }
    for (name, mean, crit, sum) in parallel {
        // Halfway between max and sum: a total below it cannot be a sequential sum.
        let verdict = if mean < (crit + sum) / 2.0 {
            "max, not sum"
        } else {
            "SUM (branches not parallel)"
        };
        println!("{name}: mean {mean:.1} ms vs max {crit:.0} / sum {sum:.0} ms → {verdict}");
    }
    println!(
        "goal: mean overhead over nominal provider latency < 5 ms in every scenario: {} \
         (worst mean {worst_mean:.2} ms)",
        if worst_mean < 5.0 { "met" } else { "NOT met" }
    );
    println!(
        "tail (informational, load-sensitive): worst p95 over measured provider time \
         {worst_p95:.2} ms"
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    let mut results = Vec::new();
    bench(&mut c, &rt, &mut results);
    c.final_summary();
    summary(&results);
}
