//! Local energy-based voice activity detection for PCM16 mono 24 kHz.
//!
//! Used when the provider has no server VAD (turn detection `null`) so each utterance still gets
//! its own `commit`, and by the Realtime session to tell speech from idle audio when it trims its
//! replay buffer. Built from arithmetic alone (no model download). Key decision: a speech decision
//! needs the frame energy to clear both an absolute floor and an adaptive noise floor by a margin;
//! the noise floor drops instantly to quieter frames and rises slowly, so a steady fan or
//! room tone is learned within seconds while a talker never is.

use std::time::Duration;

/// Samples per second of the audio this detector is fed.
pub const SAMPLE_RATE: u32 = 24_000;
/// Analysis frame: 20 ms.
const FRAME: usize = (SAMPLE_RATE / 50) as usize;

/// Tuning of [`Vad`]. The defaults suit a close or room microphone at normal speaking level.
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// How far above the adaptive noise floor a frame must be to count as speech.
    pub margin_db: f32,
    /// Frames quieter than this are never speech, whatever the noise floor.
    pub min_speech_dbfs: f32,
    /// Noise floor assumed before any audio was seen.
    pub initial_floor_dbfs: f32,
    /// How fast the noise floor rises towards louder sustained audio.
    pub floor_rise_db_per_s: f32,
    /// Speech must last this long before a start is reported (filters clicks).
    pub min_speech: Duration,
    /// Silence must last this long before a stop is reported (the hangover between words).
    pub min_silence: Duration,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            margin_db: 15.0,
            min_speech_dbfs: -55.0,
            initial_floor_dbfs: -65.0,
            floor_rise_db_per_s: 3.0,
            min_speech: Duration::from_millis(100),
            min_silence: Duration::from_millis(500),
        }
    }
}

/// A speech boundary, positioned in samples since the detector was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began at this sample (the first loud frame, not the moment it was confirmed).
    SpeechStart { at: u64 },
    /// Speech ended at this sample (the end of the last loud frame).
    SpeechEnd { at: u64 },
}

/// Streaming detector: push frames of any length, get boundaries back.
#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    /// Incomplete analysis frame carried to the next push.
    partial: Vec<i16>,
    /// Samples analysed so far (complete frames only).
    pos: u64,
    floor_db: f32,
    in_speech: bool,
    /// Consecutive loud frames while not in speech, and where the run began.
    loud_run: usize,
    loud_start: u64,
    /// Consecutive quiet frames while in speech, and where speech was last heard.
    quiet_run: usize,
    last_loud_end: u64,
}

impl Vad {
    /// A detector with the given tuning.
    pub fn new(cfg: VadConfig) -> Vad {
        Vad {
            floor_db: cfg.initial_floor_dbfs,
            cfg,
            partial: Vec::with_capacity(FRAME),
            pos: 0,
            in_speech: false,
            loud_run: 0,
            loud_start: 0,
            quiet_run: 0,
            last_loud_end: 0,
        }
    }

    /// Whether the detector currently considers the input to be speech.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Feeds samples; returns the boundaries they complete, in order.
    pub fn push(&mut self, samples: &[i16]) -> Vec<VadEvent> {
        let mut events = Vec::new();
        let mut rest = samples;
        if !self.partial.is_empty() {
            let need = FRAME - self.partial.len();
            let take = need.min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == FRAME {
                let frame = std::mem::take(&mut self.partial);
                self.frame(&frame, &mut events);
                self.partial = frame;
                self.partial.clear();
            }
        }
        let mut chunks = rest.chunks_exact(FRAME);
        for frame in &mut chunks {
            self.frame(frame, &mut events);
        }
        self.partial.extend_from_slice(chunks.remainder());
        events
    }

    /// Ends the stream: an utterance still open is closed at the last loud frame.
    pub fn finish(&mut self) -> Option<VadEvent> {
        self.partial.clear();
        if self.in_speech {
            self.in_speech = false;
            self.quiet_run = 0;
            Some(VadEvent::SpeechEnd {
                at: self.last_loud_end,
            })
        } else {
            None
        }
    }

    fn frames(&self, d: Duration) -> usize {
        ((d.as_secs_f64() * f64::from(SAMPLE_RATE)) / FRAME as f64).ceil() as usize
    }

    fn frame(&mut self, frame: &[i16], events: &mut Vec<VadEvent>) {
        let db = frame_dbfs(frame);
        let start = self.pos;
        self.pos += frame.len() as u64;
        let loud = db > self.cfg.min_speech_dbfs && db > self.floor_db + self.cfg.margin_db;
        self.track_floor(db);
        if self.in_speech {
            if loud {
                self.quiet_run = 0;
                self.last_loud_end = self.pos;
            } else {
                self.quiet_run += 1;
                if self.quiet_run >= self.frames(self.cfg.min_silence).max(1) {
                    self.in_speech = false;
                    self.quiet_run = 0;
                    events.push(VadEvent::SpeechEnd {
                        at: self.last_loud_end,
                    });
                }
            }
        } else if loud {
            if self.loud_run == 0 {
                self.loud_start = start;
            }
            self.loud_run += 1;
            if self.loud_run >= self.frames(self.cfg.min_speech).max(1) {
                self.in_speech = true;
                self.loud_run = 0;
                self.last_loud_end = self.pos;
                events.push(VadEvent::SpeechStart {
                    at: self.loud_start,
                });
            }
        } else {
            self.loud_run = 0;
        }
    }

    fn track_floor(&mut self, db: f32) {
        if db < self.floor_db {
            self.floor_db = db.max(-100.0);
        } else {
            let step = self.cfg.floor_rise_db_per_s * FRAME as f32 / SAMPLE_RATE as f32;
            self.floor_db = (self.floor_db + step).min(db);
        }
    }
}

/// RMS level of a frame in dB relative to full scale (a full-scale square wave is 0 dBFS).
pub fn frame_dbfs(frame: &[i16]) -> f32 {
    if frame.is_empty() {
        return -100.0;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let mean = sum / frame.len() as f64 / (32768.0 * 32768.0);
    if mean <= 1e-10 {
        -100.0
    } else {
        (10.0 * mean.log10()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: usize = SAMPLE_RATE as usize;

    /// Deterministic pseudo-noise of the given peak amplitude.
    fn noise(len: usize, amp: i16, seed: &mut u32) -> Vec<i16> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (*seed >> 16) as i32 % (2 * i32::from(amp) + 1) - i32::from(amp);
                u as i16
            })
            .collect()
    }

    fn tone(len: usize, peak_dbfs: f32, seed: &mut u32) -> Vec<i16> {
        let amp = 32767.0 * 10f32.powf(peak_dbfs / 20.0);
        let n = noise(len, 30, seed);
        (0..len)
            .map(|i| {
                let t = i as f32 / SR as f32;
                let s = amp * (2.0 * std::f32::consts::PI * 300.0 * t).sin();
                (s as i32 + i32::from(n[i])) as i16
            })
            .collect()
    }

    fn run(vad: &mut Vad, audio: &[i16], chunk: usize) -> Vec<VadEvent> {
        audio.chunks(chunk).flat_map(|c| vad.push(c)).collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            audio: Vec<i16>,
            /// Expected (start, end) in milliseconds, within one frame of tolerance.
            expect: Vec<(u64, u64)>,
        }
        let mut seed = 7;
        let s = |ms: usize, seed: &mut u32| noise(ms * SR / 1000, 10, seed);
        let mut cases = vec![Case {
            name: "silence",
            audio: s(3000, &mut seed),
            expect: vec![],
        }];
        let mut two = s(500, &mut seed);
        two.extend(tone(SR, -20.0, &mut seed));
        two.extend(s(1000, &mut seed));
        two.extend(tone(SR, -20.0, &mut seed));
        two.extend(s(1000, &mut seed));
        cases.push(Case {
            name: "two tone bursts",
            audio: two,
            expect: vec![(500, 1500), (2500, 3500)],
        });
        let mut click = s(500, &mut seed);
        click.extend(tone(SR / 50, -10.0, &mut seed));
        click.extend(s(1000, &mut seed));
        cases.push(Case {
            name: "a 20 ms click is not speech",
            audio: click,
            expect: vec![],
        });
        let mut gap = s(500, &mut seed);
        gap.extend(tone(SR / 2, -20.0, &mut seed));
        gap.extend(s(200, &mut seed));
        gap.extend(tone(SR / 2, -20.0, &mut seed));
        gap.extend(s(1000, &mut seed));
        cases.push(Case {
            name: "a pause shorter than min_silence keeps one utterance",
            audio: gap,
            expect: vec![(500, 1700)],
        });
        let mut quiet = s(500, &mut seed);
        quiet.extend(tone(SR, -62.0, &mut seed));
        cases.push(Case {
            name: "below the absolute floor",
            audio: quiet,
            expect: vec![],
        });

        for case in cases {
            for chunk in [480, 960, 777, 2400] {
                let mut vad = Vad::new(VadConfig::default());
                let mut events = run(&mut vad, &case.audio, chunk);
                events.extend(vad.finish());
                let ms = |at: u64| at * 1000 / SR as u64;
                let got: Vec<(u64, u64)> = events
                    .chunks(2)
                    .map(|p| match p {
                        [VadEvent::SpeechStart { at: a }, VadEvent::SpeechEnd { at: b }] => {
                            (ms(*a), ms(*b))
                        }
                        other => panic!("{}: unpaired events {other:?}", case.name),
                    })
                    .collect();
                assert_eq!(
                    got.len(),
                    case.expect.len(),
                    "{} ({chunk}): {got:?}",
                    case.name
                );
                for (g, e) in got.iter().zip(&case.expect) {
                    assert!(
                        g.0.abs_diff(e.0) <= 20,
                        "{}: start {g:?} vs {e:?}",
                        case.name
                    );
                    assert!(g.1.abs_diff(e.1) <= 20, "{}: end {g:?} vs {e:?}", case.name);
                }
            }
        }
    }

    #[test]
    fn steady_noise_is_learned() {
        let mut seed = 3;
        // Loud steady noise (about -40 dBFS RMS) for 20 s: it may trigger at first, but the
        // floor adapts, and the last 5 s are not speech.
        let audio = noise(20 * SR, 600, &mut seed);
        let mut vad = Vad::new(VadConfig::default());
        run(&mut vad, &audio[..15 * SR], 960);
        let late = run(&mut vad, &audio[15 * SR..], 960);
        assert!(!vad.in_speech());
        assert!(late.is_empty(), "{late:?}");
        // A talker 20 dB above that noise is still heard.
        let mut speech = tone(SR, -17.0, &mut seed);
        for (s, n) in speech.iter_mut().zip(noise(SR, 600, &mut seed)) {
            *s = s.saturating_add(n);
        }
        let events = run(&mut vad, &speech, 960);
        assert!(matches!(events.first(), Some(VadEvent::SpeechStart { .. })));
    }

    #[test]
    fn finish_closes_an_open_utterance() {
        let mut seed = 1;
        let mut vad = Vad::new(VadConfig::default());
        let events = run(&mut vad, &tone(SR, -20.0, &mut seed), 960);
        assert_eq!(events, vec![VadEvent::SpeechStart { at: 0 }]);
        assert_eq!(vad.finish(), Some(VadEvent::SpeechEnd { at: SR as u64 }));
        assert_eq!(vad.finish(), None);
    }
}
