//! The live interpretation pipeline: per-conversation runtime from browser audio to
//! interpreted speech, and the fan-out of its events to WebSocket clients.
//!
//! Design decision: a conversation is *live* while at least one `/transcription` socket is
//! attached. Its runtime ([`Live`]) owns one speech-to-text session and one ordered lane of
//! utterances; every audio socket gets its own decoder stream on the DSP pool (a socket is a
//! recording) whose PCM goes into that one session. The last socket to leave ends the session
//! gracefully: flush the decoder, commit, wait for the last transcript, process it.
//!
//! Data flow and the full-buffer policy of each hop:
//! socket reader → [`AudioInput::push`] (awaits a DSP credit: **Block**, so TCP pushes back on
//! the browser) → DSP worker → per-socket forwarder → STT session input (**Block**) → STT
//! events (**Block**, read promptly) → utterance lane (**Block**, bounded) → hub (per-client
//! queues, **drop and tell** the lagging client).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ai::{
    AudioFormat, CommandDetector, GlossaryEntry, LanguageDetector, MedicalHistoryGenerator,
    SpeechAudio, Summarizer, TextToSpeech, Translator,
};
use crate::audio::pool::{AudioStream, DspPool, Output, PoolClosed};
use crate::audio::InputFormat;
use crate::metrics::{Histogram, Metrics};
use crate::recordings::{Recorder, RecordingConfig, Recordings};
use crate::records::Records;
use crate::store::{Conversation, Store};
use crate::stt::{ConnectionStatus, SpeechToText, SttEvent, SttInput, SttOptions};

pub mod cluster;
pub mod event;
pub mod hub;
pub mod speaker;
mod transcript;
mod visit;

pub use visit::{EndClaim, RECOVERY_GRACE, RECOVERY_WINDOW};

use cluster::Cluster;
use event::ServerEvent;
use hub::{Audience, ClientTx, Hub};
use speaker::Role;

/// The providers the pipeline calls, as trait objects so tests and benches swap in fakes.
#[derive(Clone)]
pub struct Providers {
    pub stt: Arc<dyn SpeechToText>,
    pub language: Arc<dyn LanguageDetector>,
    pub translator: Arc<dyn Translator>,
    pub commands: Arc<dyn CommandDetector>,
    pub tts: Arc<dyn TextToSpeech>,
    /// End-of-visit and interim summaries.
    pub summarizer: Arc<dyn Summarizer>,
    /// Synthetic medical histories for new patients.
    pub history: Arc<dyn MedicalHistoryGenerator>,
}

/// Pipeline settings a clinic may change.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// TTS encoding sent in `tts_audio` (mp3 is what the original frontend plays).
    pub tts_format: AudioFormat,
    /// Terms translations must keep or render a fixed way; also sent to STT as keywords.
    pub glossary: Vec<GlossaryEntry>,
    /// Free-text STT prompt (context for the transcription model).
    pub stt_prompt: Option<String>,
    /// How long a transcript waits for an unavailable store (a database restart or failover)
    /// before it is reported unsaved. Later utterances of the conversation queue behind it, so
    /// this bounds how stale their events can get.
    pub store_retry_window: Duration,
    /// Whether and where the ingested audio of each conversation is stored.
    pub recordings: RecordingConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            tts_format: AudioFormat::Mp3,
            glossary: Vec::new(),
            stt_prompt: None,
            store_retry_window: Duration::from_secs(60),
            recordings: RecordingConfig::default(),
        }
    }
}

/// Pipeline failures a client is told about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Stt(#[from] crate::stt::Error),
    #[error("the audio decoder pool has shut down")]
    PoolClosed,
    #[error("the conversation's transcription session has ended")]
    SessionEnded,
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Stt(e) => e.code(),
            Error::PoolClosed => "shutting_down",
            Error::SessionEnded => "session_ended",
            Error::Cluster(e) => e.code(),
        }
    }
}

impl From<PoolClosed> for Error {
    fn from(_: PoolClosed) -> Self {
        Error::PoolClosed
    }
}

/// Utterances waiting for their turn in a conversation's lane. Small: STT produces a few per
/// minute; when full, the STT event reader waits (Block) and the STT session buffers audio.
const LANE_CAPACITY: usize = 16;

/// Histograms of per-utterance stage latencies.
#[derive(Clone)]
pub(crate) struct StageMetrics {
    /// `tandem_pipeline_stage_seconds{stage}`, measured from the moment the transcript arrived
    /// (or, for `transcript`, from the end of speech).
    stage: Histogram,
}

/// The registry of live conversations and everything they share.
pub struct Pipelines {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// Relays events published outside a conversation's runtime (actions, summaries, medical
    /// histories) to the other instances, and decides which instance runs a conversation.
    cluster: Arc<dyn Cluster>,
    providers: Providers,
    pool: DspPool,
    config: PipelineConfig,
    metrics: StageMetrics,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Every conversation task, and every background records task (summaries, medical
    /// histories), so shutdown can wait for them to drain.
    tasks: TaskTracker,
    /// Summaries, medical histories and exports, written from the same store and providers.
    records: Arc<Records>,
    /// Stored conversation audio (nothing is stored unless enabled).
    recordings: Arc<Recordings>,
    /// Conversations whose end is being processed by this process: two concurrent `/end`
    /// requests end (and summarize) a visit once. Entries live as long as their
    /// [`visit::EndClaim`].
    ending: Mutex<std::collections::HashSet<String>>,
}

/// STT connection state, for `backend_connected.status`.
const STATUS_CONNECTING: u8 = 0;
const STATUS_CONNECTED: u8 = 1;
const STATUS_DISCONNECTED: u8 = 2;

/// One live conversation.
pub(crate) struct Live {
    conversation_id: String,
    organization_id: String,
    /// The clinician who started the conversation; their settings shape command detection.
    clinician_id: String,
    /// Input of the conversation's STT session; shared by its audio sockets. Bounded (Block).
    stt: mpsc::Sender<SttInput>,
    /// Attached audio sockets; guarded by the registry lock. At 0 the session is closed.
    sockets: Mutex<usize>,
    /// Set once the session was told to close; a new socket then starts a fresh runtime.
    closing: AtomicBool,
    status: AtomicU8,
    /// Clinician and patient languages; the patient's changes when the patient switches.
    languages: Mutex<(String, String)>,
    /// A role the client stated (push-to-talk); overrides language-based speaker detection.
    speaker_override: Mutex<Option<Role>>,
    /// Where the conversation's audio is stored, when storing audio is on. Each socket's
    /// forwarder holds a clone; the file is finished when the runtime and its sockets are gone.
    recorder: Option<Recorder>,
    /// The clinician's last spoken translation, replayed when the patient asks to repeat.
    last_clinician_audio: Mutex<Option<(String, SpeechAudio)>>,
    /// A client asked for streamed TTS (`ttsStreaming`): `tts_audio` goes out in chunks.
    /// Conversation-wide, like the events; off until an audio socket turns it on.
    tts_streaming: AtomicBool,
    /// Cancelled when the visit ends (`POST …/end`): every audio socket is told, stops
    /// reading and closes, which drains its audio and lets the session end gracefully.
    ended: CancellationToken,
    /// Cancelled once the utterance lane has processed its last transcript: nothing spoken
    /// in this runtime is still in flight.
    drained: CancellationToken,
}

impl Live {
    fn languages(&self) -> (String, String) {
        lock(&self.languages).clone()
    }
    fn status_name(&self) -> &'static str {
        match self.status.load(Ordering::Relaxed) {
            STATUS_CONNECTED => "openai_connected",
            STATUS_DISCONNECTED => "openai_disconnected",
            _ => "openai_connecting",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every value behind these locks is replaced whole, so a panicking holder leaves no torn
    // state behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pipelines {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        cluster: Arc<dyn Cluster>,
        providers: Providers,
        pool: DspPool,
        config: PipelineConfig,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let stage = metrics.histogram(
            "tandem_pipeline_stage_seconds",
            "Per-utterance pipeline latency by stage: transcript (end of speech to transcript), \
             stored, translated, tts_first_byte, sent (each from transcript arrival).",
            crate::metrics::LATENCY_BUCKETS,
        );
        let records = Arc::new(Records::new(
            store.clone(),
            providers.summarizer.clone(),
            providers.history.clone(),
        ));
        let recordings = Arc::new(Recordings::new(config.recordings.clone()));
        let stop_requests = cluster.stop_requests();
        let pipelines = Arc::new(Pipelines {
            store,
            hub,
            cluster,
            records,
            recordings,
            ending: Mutex::default(),
            providers,
            pool,
            config,
            metrics: StageMetrics { stage },
            live: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        });
        if let Some(requests) = stop_requests {
            tokio::spawn(stop_on_request(Arc::downgrade(&pipelines), requests));
        }
        pipelines
    }

    /// The hub the pipeline publishes on (sockets subscribe to it).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The store the pipeline writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Number of live conversations.
    pub fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// The ids of the conversations live in this process (retention must not delete them).
    pub fn live_ids(&self) -> Vec<String> {
        lock(&self.live).keys().cloned().collect()
    }

    /// The stored conversation audio.
    pub fn recordings(&self) -> &Arc<Recordings> {
        &self.recordings
    }

    /// Attaches an audio socket to a conversation, starting its runtime (and STT session) if
    /// it is not live. `client` receives this socket's own errors (decode failures).
    ///
    /// # Errors
    /// The STT session could not be opened.
    pub async fn attach(
        self: &Arc<Self>,
        conversation: &Conversation,
        client: ClientTx,
    ) -> Result<AudioInput, Error> {
        let live = self.live_for(conversation).await?;
        Ok(AudioInput {
            live,
            pipelines: Arc::clone(self),
            client,
            declared: None,
            stream: None,
            paused: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The `backend_connected.status` for a conversation (`openai_connecting` if not live).
    pub fn stt_status(&self, conversation_id: &str) -> &'static str {
        lock(&self.live)
            .get(conversation_id)
            .map_or("openai_connecting", |l| l.status_name())
    }

    async fn live_for(self: &Arc<Self>, conversation: &Conversation) -> Result<Arc<Live>, Error> {
        if let Some(live) = self.join_existing(&conversation.id) {
            return Ok(live);
        }
        // Held for as long as this runtime lives; released once its lane drained.
        self.cluster.claim(&conversation.id).await?;
        match self.start_live(conversation).await {
            Ok((live, true)) => Ok(live),
            Ok((live, false)) => {
                self.cluster.release(&conversation.id).await;
                Ok(live)
            }
            Err(e) => {
                self.cluster.release(&conversation.id).await;
                Err(e)
            }
        }
    }

    /// Opens the STT session and registers the runtime; `false` with the runtime another
    /// socket registered meanwhile.
    async fn start_live(
        self: &Arc<Self>,
        conversation: &Conversation,
    ) -> Result<(Arc<Live>, bool), Error> {
        let options = SttOptions {
            languages: vec![
                conversation.clinician_language.clone(),
                conversation.patient_language.clone(),
            ],
            prompt: self.config.stt_prompt.clone(),
            keywords: self
                .config
                .glossary
                .iter()
                .map(|g| g.term.clone())
                .collect(),
        };
        let session = self.providers.stt.open(options).await?;
        let live = Arc::new(Live {
            conversation_id: conversation.id.clone(),
            organization_id: conversation.organization_id.clone(),
            clinician_id: conversation.user_id.clone(),
            stt: session.audio,
            sockets: Mutex::new(1),
            closing: AtomicBool::new(false),
            status: AtomicU8::new(STATUS_CONNECTED),
            languages: Mutex::new((
                conversation.clinician_language.clone(),
                conversation.patient_language.clone(),
            )),
            speaker_override: Mutex::new(None),
            recorder: self.recordings.start(&conversation.id),
            last_clinician_audio: Mutex::new(None),
            tts_streaming: AtomicBool::new(false),
            ended: CancellationToken::new(),
            drained: CancellationToken::new(),
        });
        // Another socket may have started the conversation while we dialed; both sessions
        // work, but the conversation must have one. Keep the first, close ours.
        {
            let mut map = lock(&self.live);
            if let Some(existing) = map.get(&conversation.id) {
                if !existing.closing.load(Ordering::Acquire) {
                    *lock(&existing.sockets) += 1;
                    return Ok((Arc::clone(existing), false));
                }
            }
            map.insert(conversation.id.clone(), Arc::clone(&live));
        }
        tracing::info!(conversation_id = %conversation.id, "conversation live");
        self.hub.publish(
            &conversation.id,
            Audience::Audio,
            ServerEvent::SttConnected {
                message: "Ready for audio",
            }
            .to_frame(),
        );
        let (lane_tx, lane_rx) = mpsc::channel(LANE_CAPACITY);
        self.tasks.spawn(read_stt_events(
            Arc::clone(self),
            Arc::clone(&live),
            session.events,
            lane_tx,
        ));
        let pipelines = Arc::clone(self);
        let lane_live = Arc::clone(&live);
        self.tasks.spawn(async move {
            transcript::run_lane(Arc::clone(&pipelines), Arc::clone(&lane_live), lane_rx).await;
            // Retired only now, not when the STT session closed, so that a visit ending
            // meanwhile still finds this runtime and waits for its last utterances.
            pipelines.retire(&lane_live);
            pipelines.cluster.release(&lane_live.conversation_id).await;
            lane_live.drained.cancel();
        });
        Ok((live, true))
    }

    fn join_existing(&self, conversation_id: &str) -> Option<Arc<Live>> {
        let map = lock(&self.live);
        let live = map.get(conversation_id)?;
        if live.closing.load(Ordering::Acquire) {
            return None;
        }
        *lock(&live.sockets) += 1;
        Some(Arc::clone(live))
    }

    /// A socket left. The last one closes the STT session, which drains: the final transcript
    /// is still processed and published.
    async fn detach(&self, live: &Arc<Live>) {
        let last = {
            let _map = lock(&self.live);
            let mut sockets = lock(&live.sockets);
            *sockets = sockets.saturating_sub(1);
            if *sockets == 0 {
                live.closing.store(true, Ordering::Release);
            }
            *sockets == 0
        };
        let input = if last {
            SttInput::Close
        } else {
            SttInput::Commit
        };
        // A closed session has nothing left to commit.
        let _ = live.stt.send(input).await;
    }

    fn retire(&self, live: &Arc<Live>) {
        let mut map = lock(&self.live);
        if map
            .get(&live.conversation_id)
            .is_some_and(|current| Arc::ptr_eq(current, live))
        {
            map.remove(&live.conversation_id);
        }
    }

    /// Graceful shutdown: closes every conversation's STT session (each drains its last
    /// transcript), then waits up to `deadline` for all pipeline tasks.
    pub async fn shutdown(&self, deadline: Duration) {
        let lives: Vec<Arc<Live>> = lock(&self.live).values().cloned().collect();
        for live in &lives {
            live.closing.store(true, Ordering::Release);
            let _ = live.stt.try_send(SttInput::Close);
        }
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                live = lives.len(),
                ?deadline,
                "pipeline drain deadline passed; abandoning in-flight utterances"
            );
        }
    }

    /// Announces an action's creation or change: to the control sockets of users who asked
    /// about the conversation, then to its audio sockets (if it is live).
    /// Changes may be made through any instance, so this goes through the cluster.
    pub fn publish_action(&self, conversation_id: &str, event: &ServerEvent) {
        let frame = event.to_frame();
        self.cluster
            .publish(conversation_id, Audience::Control, frame.clone());
        self.cluster
            .publish(conversation_id, Audience::Audio, frame);
    }

    /// Publishes a runtime's own event to this instance's sockets only: a conversation's audio
    /// sockets are all on the instance that claimed it, so nothing else needs captions or
    /// speech.
    fn publish(&self, conversation_id: &str, audience: Audience, event: &ServerEvent) {
        self.hub
            .publish(conversation_id, audience, event.to_frame());
    }
}

/// Ends the audio of conversations whose visit was ended through another instance. Lives as
/// long as the pipelines (it holds them weakly) or the cluster's request channel.
async fn stop_on_request(pipelines: Weak<Pipelines>, mut requests: broadcast::Receiver<String>) {
    loop {
        let conversation_id = match requests.recv().await {
            Ok(id) => id,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "requests to stop audio from other instances were missed"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(pipelines) = pipelines.upgrade() else {
            return;
        };
        if pipelines.end_live_audio(&conversation_id).is_some() {
            tracing::info!(%conversation_id, "visit ended through another instance; stopping its audio");
        }
    }
}

/// One audio socket's input into a live conversation.
pub struct AudioInput {
    live: Arc<Live>,
    pipelines: Arc<Pipelines>,
    /// This socket's queue, for errors that concern only its audio.
    client: ClientTx,
    /// The format the client declared (`start`), for input without magic bytes (raw PCM).
    declared: Option<InputFormat>,
    /// The decoder stream, opened on the first chunk so a `start` message can precede it.
    stream: Option<OpenStream>,
    paused: Arc<AtomicBool>,
}

struct OpenStream {
    stream: AudioStream,
    /// One message per completed `finish`, after its PCM was forwarded.
    end_of_input: mpsc::Receiver<()>,
}

impl AudioInput {
    /// Queues a chunk of container bytes for decoding. Waits while the pipeline is full.
    ///
    /// # Errors
    /// The DSP pool has shut down.
    pub async fn push(&mut self, chunk: Vec<u8>) -> Result<(), Error> {
        if self.stream.is_none() {
            let (stream, outputs) = self
                .pipelines
                .pool
                .open(&self.live.conversation_id, self.declared)
                .await?;
            let (ack_tx, end_of_input) = mpsc::channel(1);
            self.pipelines.tasks.spawn(forward(
                outputs,
                self.live.stt.clone(),
                self.live.recorder.clone(),
                self.paused.clone(),
                self.client.clone(),
                ack_tx,
            ));
            self.stream = Some(OpenStream {
                stream,
                end_of_input,
            });
        }
        match &self.stream {
            Some(open) => Ok(open.stream.push(chunk).await?),
            None => Err(Error::PoolClosed),
        }
    }

    /// Declares the format of the next recording (`start`). Audio already sent is decoded to
    /// its end first, so nothing is lost when a client switches formats mid-socket.
    ///
    /// # Errors
    /// The DSP pool has shut down.
    pub async fn declare(&mut self, format: InputFormat) -> Result<(), Error> {
        self.drain().await?;
        self.stream = None;
        self.declared = Some(format);
        Ok(())
    }

    /// The recorder stopped (`input_audio_buffer.finalize`): flush the decoder and commit the
    /// turn. Later audio starts a new recording on the same socket.
    ///
    /// # Errors
    /// The DSP pool or the STT session has shut down.
    pub async fn finalize(&mut self) -> Result<(), Error> {
        self.drain().await?;
        self.live
            .stt
            .send(SttInput::Commit)
            .await
            .map_err(|_| Error::SessionEnded)
    }

    /// Resolves when the visit has ended (`POST …/end`): the socket must stop reading and
    /// close so its audio drains.
    pub async fn ended(&self) {
        self.live.ended.cancelled().await;
    }

    /// While paused, decoded audio is discarded (the original's `pause`).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// The client states who is speaking (push-to-talk); `None` returns to detection.
    pub fn set_speaker(&self, role: Option<Role>) {
        *lock(&self.live.speaker_override) = role;
    }

    /// The client asked for (or, with `false`, stopped asking for) chunked `tts_audio`; applies
    /// to the whole conversation's later utterances.
    pub fn set_tts_streaming(&self, on: bool) {
        self.live.tts_streaming.store(on, Ordering::Relaxed);
    }

    /// The socket closed: everything it sent is decoded and forwarded, then the conversation
    /// is detached (the last socket ends the STT session, which still delivers the final
    /// transcript).
    pub async fn close(mut self) {
        if let Err(e) = self.drain().await {
            tracing::warn!(conversation_id = %self.live.conversation_id, error = %e, "audio drain failed");
        }
        self.pipelines.detach(&self.live).await;
    }

    async fn drain(&mut self) -> Result<(), Error> {
        let Some(open) = &mut self.stream else {
            return Ok(());
        };
        open.stream.finish().await?;
        open.end_of_input.recv().await.ok_or(Error::PoolClosed)
    }
}

/// Moves one socket's decoded PCM into the conversation's STT session, in order. Holding each
/// [`Output`] until its frames are accepted keeps the chunk's DSP credit taken, which is what
/// makes a slow STT session push back on the socket. Ends with the socket's stream or with the
/// session: an idle socket must not keep a finished conversation's task alive (shutdown waits
/// for these tasks).
async fn forward(
    mut outputs: mpsc::Receiver<Output>,
    stt: mpsc::Sender<SttInput>,
    mut recorder: Option<Recorder>,
    paused: Arc<AtomicBool>,
    client: ClientTx,
    end_of_input: mpsc::Sender<()>,
) {
    loop {
        let mut output = tokio::select! {
            output = outputs.recv() => match output {
                Some(output) => output,
                None => return,
            },
            () = stt.closed() => return tell_session_ended(&client),
        };
        if let Err(e) = &output.result {
            tracing::info!(code = e.code(), error = %e, "audio chunk rejected");
            client.send(ServerEvent::error(e.code(), e.to_string()).to_frame());
        }
        // The frames move on; `output` (and its credit) lives until they are accepted.
        let frames = std::mem::take(&mut output.frames);
        if !paused.load(Ordering::Relaxed) {
            for frame in frames {
                if let Some(r) = &recorder {
                    // Exactly what is transcribed is stored: paused audio is in neither.
                    if !r.write(frame.samples.clone()).await {
                        recorder = None;
                    }
                }
                if stt.send(SttInput::Audio(frame.samples)).await.is_err() {
                    return tell_session_ended(&client);
                }
            }
        }
        if output.end_of_input {
            let _ = end_of_input.send(()).await;
        }
    }
}

/// The session ended (gave up, or the server is shutting down; its reason was already
/// published): say that this socket's audio is no longer transcribed instead of dropping it
/// silently.
fn tell_session_ended(client: &ClientTx) {
    client.send(
        ServerEvent::error(
            Error::SessionEnded.code(),
            "Transcription has stopped; audio is no longer being transcribed. \
             Reconnect the microphone to start a new session.",
        )
        .to_frame(),
    );
}

/// Reads a conversation's STT events: captions and status go to clients, transcripts into
/// the lane. Ends (and retires the conversation) when the session closes.
async fn read_stt_events(
    pipelines: Arc<Pipelines>,
    live: Arc<Live>,
    mut events: mpsc::Receiver<SttEvent>,
    lane: mpsc::Sender<transcript::Utterance>,
) {
    let id = live.conversation_id.clone();
    // End-of-speech instants by item, for the transcript latency; bounded by pruning on Final.
    let mut speech_stopped: HashMap<String, Instant> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            SttEvent::SpeechStarted { .. } | SttEvent::Committed { .. } => {}
            SttEvent::SpeechStopped { item_id, .. } => {
                if speech_stopped.len() < 64 {
                    speech_stopped.insert(item_id, Instant::now());
                }
            }
            SttEvent::Delta { item_id, delta } => {
                pipelines.publish(
                    &id,
                    Audience::Audio,
                    &ServerEvent::CaptionDelta {
                        item_id: item_id.clone(),
                        delta: delta.clone(),
                    },
                );
                pipelines.publish(
                    &id,
                    Audience::Audio,
                    &ServerEvent::TranscriptDelta {
                        payload: event::TranscriptDelta {
                            conversation_id: id.clone(),
                            item_id,
                            delta,
                        },
                    },
                );
            }
            SttEvent::Final {
                item_id,
                text,
                languages,
                ..
            } => {
                let utterance = transcript::Utterance {
                    speech_stopped: speech_stopped.remove(&item_id),
                    item_id,
                    text,
                    languages,
                    received: Instant::now(),
                };
                if lane.send(utterance).await.is_err() {
                    break;
                }
            }
            SttEvent::Failed {
                item_id,
                code,
                message,
            } => {
                if let Some(item) = &item_id {
                    speech_stopped.remove(item);
                }
                tracing::warn!(conversation_id = %id, ?item_id, %code, %message, "transcription failed");
                let code = if item_id.is_some() {
                    "transcription_failed"
                } else {
                    "stt_failed"
                };
                pipelines.publish(
                    &id,
                    Audience::Audio,
                    &ServerEvent::error(code, format!("Transcription failed: {message}")),
                );
            }
            SttEvent::Status(status) => {
                let (value, event) = match status {
                    ConnectionStatus::Connected => (
                        STATUS_CONNECTED,
                        ServerEvent::SttConnected {
                            message: "Ready for audio",
                        },
                    ),
                    ConnectionStatus::Reconnecting { .. } => (
                        STATUS_CONNECTING,
                        ServerEvent::error(
                            "stt_reconnecting",
                            "OpenAI connection lost. Retrying...",
                        ),
                    ),
                    ConnectionStatus::Disconnected => (
                        STATUS_DISCONNECTED,
                        ServerEvent::SttDisconnected {
                            message: "OpenAI connection closed.",
                        },
                    ),
                };
                live.status.store(value, Ordering::Relaxed);
                pipelines.publish(&id, Audience::Audio, &event);
            }
            SttEvent::Warning { code, message } => {
                tracing::warn!(conversation_id = %id, %code, %message, "speech-to-text warning");
                pipelines.publish(
                    &id,
                    Audience::Audio,
                    &ServerEvent::error("stt_warning", message),
                );
            }
            SttEvent::Closed => break,
        }
    }
    live.closing.store(true, Ordering::Release);
    live.status.store(STATUS_DISCONNECTED, Ordering::Relaxed);
    tracing::info!(conversation_id = %id, "transcription session ended");
}
