//! The Realtime transcription session as a pure state machine: no sockets, no clocks of its own.
//!
//! Inputs are audio frames, commits, close, server events, connection changes and the current
//! time; outputs are [`Action`]s (client events to send, [`SttEvent`]s to emit). It owns:
//!
//! - **The replay ring.** Audio is indexed by its absolute sample position in the conversation.
//!   The ring keeps every sample that may still need transcribing: the audio of committed turns
//!   whose transcript has not arrived, and the uncommitted audio. Idle audio (no speech by the
//!   local VAD, none reported by the server, no commit in flight) is trimmed to the last
//!   `idle_keep`. A turn's audio is zeroed when its transcript arrives, so a replay re-sends
//!   silence there and positions stay linear. Beyond `ring_samples` the oldest audio is dropped
//!   with one `stt_audio_dropped` warning per episode: memory is bounded, always.
//! - **Replay.** After a reconnect everything still in the ring is uncommitted again and is
//!   re-appended from its start, with a commit at each turn end we had committed by hand.
//! - **Exactly once.** Transcripts are keyed by `item_id`; a bounded set of seen ids drops
//!   duplicates, and zeroing makes sure replayed audio never yields a second transcript of a
//!   turn we already have.
//! - **Order.** Turns are queued in `committed` order (the provider's `previous_item_id` chain on
//!   one socket). A transcript is emitted once every earlier turn has its transcript, failed, or
//!   was skipped. Rule for a missing predecessor: once a later transcript has waited
//!   `final_hold`, the predecessor is skipped and its transcript, if it ever arrives, is emitted
//!   late instead of dropped. A reconnect abandons the turns the old session never transcribed
//!   (their audio is replayed and they come back as new turns) and releases the held ones, so
//!   across a reconnect a turn may come after a later one; it is never lost or duplicated.
//! - **Turn boundaries** for proactive session rotation, and whether anything awaits a server
//!   answer (for the watchdog).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use tokio::time::Instant;

use super::protocol::{self, ClientEvent, ServerEvent};
use super::RealtimeConfig;
use crate::stt::vad::{Vad, VadConfig, VadEvent, SAMPLE_RATE};
use crate::stt::SttEvent;

/// Samples per millisecond.
const PER_MS: u64 = SAMPLE_RATE as u64 / 1000;
/// The provider rejects commits of less than 100 ms of audio.
const MIN_COMMIT: u64 = 100 * PER_MS;
/// Replay is appended in chunks of at most one second, so the provider's VAD stays responsive.
const REPLAY_CHUNK: usize = SAMPLE_RATE as usize;
/// Seen item ids remembered for dedup.
const SEEN_CAP: usize = 1024;

/// Tuning of [`Session`], derived from [`RealtimeConfig`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The provider decides turns; otherwise the local VAD commits each utterance.
    pub server_vad: bool,
    pub vad: VadConfig,
    /// Hard bound on the replay ring.
    pub ring_samples: usize,
    /// Idle audio kept before speech (covers provider prefix padding and VAD lag).
    pub idle_keep_samples: u64,
    pub final_hold: Duration,
}

impl SessionConfig {
    /// The session tuning for a client configuration.
    pub fn from_config(cfg: &RealtimeConfig) -> SessionConfig {
        SessionConfig {
            server_vad: cfg.turn_detection.is_some(),
            vad: cfg.local_vad.clone(),
            ring_samples: (cfg.ring_buffer.as_millis() as usize).saturating_mul(PER_MS as usize),
            idle_keep_samples: 2 * u64::from(SAMPLE_RATE),
            final_hold: cfg.final_hold,
        }
    }
}

/// One output of the state machine, to be carried out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(ClientEvent),
    Emit(SttEvent),
}

/// What the socket task must do after a server event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The provider ended the session (`session_expired`): reconnect.
    Reconnect,
}

#[derive(Debug)]
struct Pending {
    item_id: String,
    previous_item_id: Option<String>,
    /// Absolute sample span of the turn's audio.
    start: u64,
    end: u64,
    /// Its transcript, held until its predecessors are out; `None` = transcript skipped (empty).
    done: Option<(Instant, Option<SttEvent>)>,
    /// Passed over by the ordering rule; emitted late if its transcript arrives.
    skipped: bool,
}

/// Bounded FIFO set of item ids already transcribed.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > SEEN_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    vad: Vad,
    ring: VecDeque<i16>,
    /// Absolute position of `ring[0]`.
    ring_start: u64,
    /// Absolute position after the last sample received (`ring_start + ring.len()`).
    written: u64,
    /// Start of the audio not covered by any `committed` yet.
    uncommitted_from: u64,
    /// Absolute position of the current provider session's 0 ms.
    origin: u64,
    connected: bool,
    closing: bool,
    overflowing: bool,
    server_speech: bool,
    /// Local speech onsets not yet covered by a commit (oldest first).
    speech_starts: VecDeque<u64>,
    /// Our commits (their end positions) still awaiting `committed`.
    manual_cuts: VecDeque<u64>,
    /// Turn ends reported by the provider's `speech_stopped`, by item.
    vad_stops: HashMap<String, u64>,
    pending: VecDeque<Pending>,
    deltas: HashMap<String, String>,
    seen: Seen,
}

impl Session {
    /// A fresh, disconnected session.
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            vad: Vad::new(cfg.vad.clone()),
            cfg,
            ring: VecDeque::new(),
            ring_start: 0,
            written: 0,
            uncommitted_from: 0,
            origin: 0,
            connected: false,
            closing: false,
            overflowing: false,
            server_speech: false,
            speech_starts: VecDeque::new(),
            manual_cuts: VecDeque::new(),
            vad_stops: HashMap::new(),
            pending: VecDeque::new(),
            deltas: HashMap::new(),
            seen: Seen::default(),
        }
    }

    /// Audio in: buffered, appended when connected, and run through the local VAD.
    pub fn on_audio(&mut self, frame: &[i16], out: &mut Vec<Action>) {
        if frame.is_empty() {
            return;
        }
        self.ring.extend(frame.iter().copied());
        self.written += frame.len() as u64;
        if self.connected {
            out.push(Action::Send(append(frame)));
        }
        for event in self.vad.push(frame) {
            self.on_vad(event, out);
        }
        self.trim(out);
    }

    fn on_vad(&mut self, event: VadEvent, out: &mut Vec<Action>) {
        match event {
            VadEvent::SpeechStart { at } => self.speech_starts.push_back(at),
            VadEvent::SpeechEnd { .. } => {
                if !self.cfg.server_vad {
                    self.commit(out);
                }
            }
        }
    }

    /// An explicit end of turn (push-to-talk).
    pub fn on_commit(&mut self, out: &mut Vec<Action>) {
        self.commit(out);
    }

    fn commit(&mut self, out: &mut Vec<Action>) {
        let last = self
            .manual_cuts
            .back()
            .copied()
            .unwrap_or(0)
            .max(self.uncommitted_from);
        if self.written.saturating_sub(last) < MIN_COMMIT {
            return;
        }
        self.manual_cuts.push_back(self.written);
        if self.connected {
            out.push(Action::Send(ClientEvent::Commit));
        }
    }

    /// Graceful end of input: commits the speech still open; then wait for [`Session::is_drained`].
    pub fn on_close(&mut self, out: &mut Vec<Action>) {
        if self.closing {
            return;
        }
        self.closing = true;
        let open_local = self.vad.finish().is_some();
        self.prune_speech_starts();
        let covered = self
            .manual_cuts
            .back()
            .copied()
            .unwrap_or(0)
            .max(self.uncommitted_from);
        let uncommitted_speech = self.speech_starts.iter().any(|s| *s >= covered);
        if self.server_speech || open_local || uncommitted_speech {
            self.commit(out);
        }
    }

    /// Close was requested and nothing awaits the provider any more.
    pub fn is_drained(&self) -> bool {
        self.closing && self.manual_cuts.is_empty() && self.pending.is_empty()
    }

    /// Whether close was requested.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// No turn in progress or in flight: a safe moment to switch provider sessions.
    ///
    /// Speech the local VAD heard but no `committed` covers yet counts as in flight: the
    /// provider may be about to commit and transcribe it on the old socket.
    pub fn at_turn_boundary(&self) -> bool {
        !self.server_speech
            && !self.vad.in_speech()
            && self
                .speech_starts
                .iter()
                .all(|s| *s < self.uncommitted_from)
            && self.manual_cuts.is_empty()
            && self.pending.is_empty()
    }

    /// Something awaits a server answer (a commit or a transcript): the watchdog is armed.
    pub fn awaiting_server(&self) -> bool {
        !self.manual_cuts.is_empty() || self.pending.iter().any(|p| p.done.is_none())
    }

    /// Samples currently held for replay.
    pub fn buffered_samples(&self) -> usize {
        self.ring.len()
    }

    /// When [`Session::on_tick`] must run next (the ordering hold), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.blocker()?;
        self.pending
            .iter()
            .filter_map(|p| p.done.as_ref().map(|(at, _)| *at + self.cfg.final_hold))
            .min()
    }

    /// Applies the ordering timeout.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(i) = self.blocker() {
            let expired = self
                .pending
                .iter()
                .skip(i + 1)
                .filter_map(|p| p.done.as_ref().map(|(at, _)| *at))
                .any(|at| now >= at + self.cfg.final_hold);
            if !expired {
                break;
            }
            tracing::warn!(item_id = %self.pending[i].item_id, "transcript overdue; emitting later turns first");
            self.pending[i].skipped = true;
            self.release(out);
        }
    }

    /// Index of the first turn that holds back later transcripts.
    fn blocker(&self) -> Option<usize> {
        let i = self
            .pending
            .iter()
            .position(|p| p.done.is_none() && !p.skipped)?;
        self.pending
            .iter()
            .skip(i + 1)
            .any(|p| p.done.is_some())
            .then_some(i)
    }

    /// The socket dropped: abandon what the old provider session never transcribed.
    pub fn on_disconnected(&mut self, out: &mut Vec<Action>) {
        self.connected = false;
        self.server_speech = false;
        self.vad_stops.clear();
        let mut cuts: Vec<u64> = self.manual_cuts.drain(..).collect();
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        for mut p in pending {
            if p.done.is_some() {
                p.skipped = true;
                self.pending.push_back(p);
            } else {
                self.deltas.remove(&p.item_id);
                if !self.cfg.server_vad {
                    cuts.push(p.end);
                }
            }
        }
        self.release(out);
        cuts.retain(|c| *c > self.ring_start);
        cuts.sort_unstable();
        cuts.dedup();
        self.manual_cuts = cuts.into();
        self.uncommitted_from = self.ring_start;
        self.prune_speech_starts();
    }

    /// A provider session is up (the session update was sent): replay the ring.
    pub fn on_connected(&mut self, out: &mut Vec<Action>) {
        self.connected = true;
        self.origin = self.ring_start;
        let cuts: Vec<u64> = self.manual_cuts.drain(..).collect();
        let mut pos = self.ring_start;
        let mut last_commit = self.ring_start;
        let mut cuts = cuts.into_iter().peekable();
        while pos < self.written {
            let next_cut = cuts.peek().copied().filter(|c| *c <= self.written);
            let end = (pos + REPLAY_CHUNK as u64)
                .min(self.written)
                .min(next_cut.unwrap_or(u64::MAX));
            let (a, b) = (
                (pos - self.ring_start) as usize,
                (end - self.ring_start) as usize,
            );
            let chunk: Vec<i16> = self.ring.range(a..b).copied().collect();
            out.push(Action::Send(append(&chunk)));
            pos = end;
            if next_cut == Some(end) {
                cuts.next();
                if end - last_commit >= MIN_COMMIT {
                    self.manual_cuts.push_back(end);
                    out.push(Action::Send(ClientEvent::Commit));
                    last_commit = end;
                }
            }
        }
    }

    /// A server event.
    pub fn on_server(&mut self, event: ServerEvent, now: Instant, out: &mut Vec<Action>) -> Flow {
        match event {
            ServerEvent::SessionCreated { .. }
            | ServerEvent::SessionUpdated { .. }
            | ServerEvent::Cleared
            | ServerEvent::Unknown => {}
            ServerEvent::SpeechStarted { item_id, .. } => {
                self.server_speech = true;
                out.push(Action::Emit(SttEvent::SpeechStarted { item_id }));
            }
            ServerEvent::SpeechStopped {
                item_id,
                audio_end_ms,
            } => {
                self.server_speech = false;
                let end = (self.origin + audio_end_ms * PER_MS).min(self.written);
                self.vad_stops.insert(item_id.clone(), end);
                out.push(Action::Emit(SttEvent::SpeechStopped {
                    item_id,
                    audio_end_ms: end / PER_MS,
                }));
            }
            ServerEvent::Committed {
                item_id,
                previous_item_id,
            } => self.on_committed(item_id, previous_item_id, out),
            ServerEvent::TranscriptionDelta { item_id, delta } => {
                if !self.seen.contains(&item_id) && !delta.is_empty() {
                    self.deltas
                        .entry(item_id.clone())
                        .or_default()
                        .push_str(&delta);
                    out.push(Action::Emit(SttEvent::Delta { item_id, delta }));
                }
            }
            ServerEvent::TranscriptionCompleted {
                item_id,
                transcript,
                logprobs,
                languages,
            } => {
                if self.seen.contains(&item_id) {
                    tracing::debug!(%item_id, "duplicate transcript dropped");
                    return Flow::Continue;
                }
                let partial = self.deltas.remove(&item_id).unwrap_or_default();
                let text = if transcript.trim().is_empty() {
                    partial
                } else {
                    transcript
                };
                let confidence = logprobs.as_deref().and_then(protocol::confidence);
                let languages = languages
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| l.code)
                    .collect();
                self.finish_item(&item_id, now, out, |previous_item_id| {
                    (!text.trim().is_empty()).then(|| SttEvent::Final {
                        item_id: item_id.clone(),
                        previous_item_id,
                        text,
                        languages,
                        confidence,
                    })
                });
            }
            ServerEvent::TranscriptionFailed { item_id, error } => {
                if self.seen.contains(&item_id) {
                    return Flow::Continue;
                }
                self.deltas.remove(&item_id);
                let code = error
                    .code
                    .unwrap_or_else(|| "transcription_failed".to_string());
                self.finish_item(&item_id, now, out, |_| {
                    Some(SttEvent::Failed {
                        item_id: Some(item_id.clone()),
                        code,
                        message: error.message,
                    })
                });
            }
            ServerEvent::Error { error } => match error.code.as_deref() {
                Some(protocol::SESSION_EXPIRED) => return Flow::Reconnect,
                Some(protocol::COMMIT_EMPTY) => {
                    // Our commit raced the provider's VAD, which had committed everything.
                    self.manual_cuts.pop_front();
                    self.trim(out);
                }
                code => out.push(Action::Emit(SttEvent::Warning {
                    code: code.unwrap_or("provider_error").to_string(),
                    message: error.message,
                })),
            },
        }
        Flow::Continue
    }

    fn on_committed(
        &mut self,
        item_id: String,
        previous_item_id: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if self.seen.contains(&item_id) || self.pending.iter().any(|p| p.item_id == item_id) {
            return;
        }
        let end = match self.vad_stops.remove(&item_id) {
            Some(end) => end,
            None => self.manual_cuts.pop_front().unwrap_or(self.written),
        };
        let end = end.max(self.uncommitted_from);
        self.pending.push_back(Pending {
            item_id: item_id.clone(),
            previous_item_id: previous_item_id.clone(),
            start: self.uncommitted_from,
            end,
            done: None,
            skipped: false,
        });
        self.uncommitted_from = end;
        self.prune_speech_starts();
        self.trim(out);
        out.push(Action::Emit(SttEvent::Committed {
            item_id,
            previous_item_id,
        }));
    }

    /// Records a turn's outcome, zeroes its audio, and emits what the order now allows.
    fn finish_item(
        &mut self,
        item_id: &str,
        now: Instant,
        out: &mut Vec<Action>,
        event: impl FnOnce(Option<String>) -> Option<SttEvent>,
    ) {
        self.seen.insert(item_id);
        let index = match self.pending.iter().position(|p| p.item_id == item_id) {
            Some(i) => i,
            None => {
                // Never saw its commit (or it belongs to an abandoned session): order it last.
                self.pending.push_back(Pending {
                    item_id: item_id.to_string(),
                    previous_item_id: None,
                    start: self.uncommitted_from,
                    end: self.uncommitted_from,
                    done: None,
                    skipped: false,
                });
                self.pending.len() - 1
            }
        };
        let (start, end) = (self.pending[index].start, self.pending[index].end);
        self.zero(start, end);
        let previous = self.pending[index].previous_item_id.clone();
        self.pending[index].done = Some((now, event(previous)));
        self.release(out);
        self.trim(out);
    }

    fn zero(&mut self, start: u64, end: u64) {
        let a = start.max(self.ring_start);
        let b = end.min(self.written);
        if a < b {
            let (a, b) = (
                (a - self.ring_start) as usize,
                (b - self.ring_start) as usize,
            );
            self.ring.range_mut(a..b).for_each(|s| *s = 0);
        }
    }

    /// Emits held transcripts whose predecessors are all out (or skipped).
    fn release(&mut self, out: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].done.is_some() {
                if let Some(p) = self.pending.remove(i) {
                    if let Some((_, Some(event))) = p.done {
                        out.push(Action::Emit(event));
                    }
                }
            } else if self.pending[i].skipped {
                i += 1;
            } else {
                break;
            }
        }
    }

    fn prune_speech_starts(&mut self) {
        let from = self.uncommitted_from;
        // A start just before the commit point belongs to the committed turn.
        self.speech_starts.retain(|s| *s >= from);
    }

    /// Drops audio nobody can need again, then enforces the hard bound.
    fn trim(&mut self, out: &mut Vec<Action>) {
        let idle = self.written.saturating_sub(self.cfg.idle_keep_samples);
        let busy = self.server_speech || self.vad.in_speech() || !self.manual_cuts.is_empty();
        let mut keep_from = if busy { self.uncommitted_from } else { idle };
        if let Some(first) = self.speech_starts.front() {
            keep_from = keep_from.min(first.saturating_sub(self.cfg.idle_keep_samples));
        }
        keep_from = keep_from.max(self.uncommitted_from);
        for p in self.pending.iter().filter(|p| p.done.is_none()) {
            keep_from = keep_from.min(p.start);
        }
        self.drop_before(keep_from);
        if self.ring.len() > self.cfg.ring_samples {
            let excess = (self.ring.len() - self.cfg.ring_samples) as u64;
            self.drop_before(self.ring_start + excess);
            self.uncommitted_from = self.uncommitted_from.max(self.ring_start);
            if !self.overflowing {
                self.overflowing = true;
                out.push(Action::Emit(SttEvent::Warning {
                    code: "stt_audio_dropped".into(),
                    message: "the transcription provider is behind; the oldest buffered audio was dropped".into(),
                }));
            }
        } else if self.ring.len() + (SAMPLE_RATE as usize) < self.cfg.ring_samples {
            self.overflowing = false;
        }
    }

    fn drop_before(&mut self, pos: u64) {
        if pos > self.ring_start {
            let n = ((pos - self.ring_start) as usize).min(self.ring.len());
            self.ring.drain(..n);
            self.ring_start += n as u64;
        }
    }
}

fn append(samples: &[i16]) -> ClientEvent {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    ClientEvent::Append {
        audio: base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

/// Decodes an `append` payload back into samples (used by the fake provider and tests).
pub fn decode_append(audio: &str) -> Option<Vec<i16>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(audio)
        .ok()?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
