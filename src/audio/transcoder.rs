//! One conversation's audio chain: sniff → demux → decode → downmix → resample → PCM16 frames.
//!
//! Design decision: output goes into a caller-provided `Vec` and errors come back beside it, so a
//! chunk whose tail is broken still delivers the audio decoded before the break: nothing is
//! dropped silently. Per-packet decode errors are counted and skipped ([`Stats`]); container
//! errors stop the recording until a new container header (a new MediaRecorder) arrives.

use super::decode::{self, PacketDecoder, PcmDecoder, PcmKind};
use super::demux::{self, Demuxer};
use super::resample::Resampler;
use super::sniff::{self, SNIFF_LEN};
use super::{Error, InputFormat, Pcm16Frame, Result, OUTPUT_RATE};

/// Largest frame handed downstream: 100 ms.
pub const MAX_FRAME: usize = OUTPUT_RATE as usize / 10;
/// Smallest frame handed downstream before `finish`: 20 ms (shorter tails wait for more audio).
pub const MIN_FRAME: usize = OUTPUT_RATE as usize / 50;

/// Counters a caller can surface as warnings or metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets decoded.
    pub packets: u64,
    /// Packets the decoder rejected and that were skipped (per-packet errors).
    pub packets_skipped: u64,
    /// The last per-packet error, for a warning event.
    pub last_packet_error: Option<Error>,
    /// Output samples produced over all recordings.
    pub samples_out: u64,
    /// Recordings started on this stream.
    pub recordings: u32,
}

/// Where packets come from.
enum Source {
    Demux(Box<dyn Demuxer>),
    /// Headerless PCM16: whole sample frames go straight to the decoder.
    Raw {
        decoder: PcmDecoder,
        /// Bytes of an incomplete sample frame cut by a chunk boundary.
        partial: Vec<u8>,
    },
}

/// The per-recording chain.
struct Chain {
    source: Source,
    /// Built once the demuxer has read the track header.
    decoder: Option<Box<dyn PacketDecoder>>,
    /// Present when the decoder's rate is not [`OUTPUT_RATE`].
    resampler: Option<Resampler>,
}

enum State {
    /// Waiting for the first bytes of a recording; `head` holds a prefix too short to sniff.
    Idle {
        head: Vec<u8>,
    },
    Running(Box<Chain>),
    /// A container error ended the recording; only a new header restarts the stream.
    Failed,
}

/// Converts one conversation's browser audio to PCM16 mono 24 kHz frames.
///
/// One per stream, touched by one thread at a time (the DSP pool shards by conversation).
pub struct Transcoder {
    declared: Option<InputFormat>,
    state: State,
    recording: u32,
    /// Samples emitted in the current recording (the next frame's `start`).
    position: u64,
    sink: Sink,
    stats: Stats,
}

/// Reused sample buffers, apart from `state` so a decoder borrowed from the chain can write
/// into them.
#[derive(Default)]
struct Sink {
    decoded: Vec<f32>,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    /// Output not yet framed (fewer than [`MIN_FRAME`] between calls).
    pending: Vec<i16>,
}

impl Sink {
    /// Decodes one packet into `decoded`; a per-packet error is counted, not returned.
    fn decode(&mut self, decoder: &mut dyn PacketDecoder, packet: &[u8], stats: &mut Stats) {
        match decoder.decode(packet, &mut self.decoded) {
            Ok(()) => stats.packets += 1,
            Err(e) => {
                stats.packets_skipped += 1;
                stats.last_packet_error = Some(e);
            }
        }
    }

    /// Downmixes and resamples `decoded` into `pending` as PCM16.
    fn convert(&mut self, channels: u16, resampler: Option<&mut Resampler>) {
        let ch = usize::from(channels.max(1));
        let mono: &[f32] = if ch == 1 {
            &self.decoded
        } else {
            self.mono.clear();
            let scale = 1.0 / ch as f32;
            self.mono.extend(
                self.decoded
                    .chunks_exact(ch)
                    .map(|f| f.iter().sum::<f32>() * scale),
            );
            &self.mono
        };
        let samples: &[f32] = match resampler {
            Some(r) => {
                self.resampled.clear();
                r.process(mono, &mut self.resampled);
                &self.resampled
            }
            None => mono,
        };
        self.pending.extend(samples.iter().map(|&s| to_i16(s)));
        self.decoded.clear();
    }

    /// Pushes a resampler's tail into `pending`.
    fn flush(&mut self, resampler: &mut Resampler) {
        self.resampled.clear();
        resampler.flush(&mut self.resampled);
        self.pending
            .extend(self.resampled.iter().map(|&s| to_i16(s)));
    }
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("declared", &self.declared)
            .field("recording", &self.recording)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// `declared` is the format from a `start` message or MIME type, if any. Containers are
    /// still recognised from their bytes; headerless PCM can only be declared.
    pub fn new(declared: Option<InputFormat>) -> Self {
        Transcoder {
            declared,
            state: State::Idle { head: Vec::new() },
            recording: 0,
            position: 0,
            sink: Sink::default(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Feeds one socket chunk, appending every complete frame to `out`.
    ///
    /// # Errors
    /// A container error ([`Error::Malformed`], [`Error::Unsupported`], [`Error::Limit`]) ends
    /// the recording; frames decoded before it are still in `out`. Later chunks then give
    /// [`Error::ResetRequired`] until one starts with a new container header.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Pcm16Frame>) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        if sniff::is_recording_start(chunk) {
            // A new MediaRecorder on the same socket. The old recording ends here; if it was cut
            // short, that is worth a log line but must not cost the new recording its chunk.
            if let State::Running(_) = self.state {
                if let Err(e) = self.end_recording(out) {
                    tracing::warn!(code = e.code(), error = %e, "audio recording cut short by a new one");
                }
            }
            self.state = State::Idle { head: Vec::new() };
        } else if let State::Failed = self.state {
            return Err(Error::ResetRequired);
        }
        let r = self.push_inner(chunk, out);
        if let Err(e) = r {
            self.fail(out);
            return Err(e);
        }
        self.emit(out, false);
        r
    }

    /// End of input (the recorder stopped or the socket closed): drains the demuxer, the
    /// decoder and the resampler tail, and emits every remaining sample.
    ///
    /// The stream stays usable: a chunk starting with a container header begins a new
    /// recording, and a chunk without one continues the old stream (nothing is dropped).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the input ended inside a container element or PCM sample
    /// (what was complete is in `out`).
    pub fn finish(&mut self, out: &mut Vec<Pcm16Frame>) -> Result<()> {
        let r = match &mut self.state {
            State::Idle { head } if !head.is_empty() => {
                head.clear();
                Err(Error::Malformed("stream ends inside its header"))
            }
            State::Running(_) => self.end_recording(out),
            _ => Ok(()),
        };
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn push_inner(&mut self, chunk: &[u8], out: &mut Vec<Pcm16Frame>) -> Result<()> {
        if let State::Idle { head } = &mut self.state {
            let raw = match self.declared {
                Some(InputFormat::Pcm16 {
                    sample_rate,
                    channels,
                }) if head.is_empty() && !sniff::is_recording_start(chunk) => {
                    Some((sample_rate, channels))
                }
                _ => None,
            };
            let chain = if let Some((sample_rate, channels)) = raw {
                Chain {
                    source: Source::Raw {
                        decoder: PcmDecoder::new(PcmKind::S16, sample_rate, channels),
                        partial: Vec::new(),
                    },
                    decoder: None,
                    resampler: resampler_for(sample_rate)?,
                }
            } else {
                let take = SNIFF_LEN.saturating_sub(head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                let Some(format) = sniff::sniff(head)? else {
                    return Ok(()); // head holds < 8 bytes; decide on the next chunk
                };
                let mut demuxer = demux::for_format(format)?;
                demuxer.push(head)?;
                let chain = Chain {
                    source: Source::Demux(demuxer),
                    decoder: None,
                    resampler: None,
                };
                self.state = State::Running(Box::new(chain));
                self.start_recording();
                return self.feed(&chunk[take..], out);
            };
            self.state = State::Running(Box::new(chain));
            self.start_recording();
        }
        self.feed(chunk, out)
    }

    fn start_recording(&mut self) {
        if self.stats.recordings > 0 {
            self.recording += 1;
        }
        self.stats.recordings += 1;
        self.position = 0;
    }

    /// Pushes bytes into the running chain and decodes every packet they complete.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Pcm16Frame>) -> Result<()> {
        let State::Running(chain) = &mut self.state else {
            return Ok(());
        };
        let (sink, stats) = (&mut self.sink, &mut self.stats);
        match &mut chain.source {
            Source::Raw { decoder, partial } => {
                let fb = decoder.frame_bytes();
                let mut bytes = bytes;
                if !partial.is_empty() {
                    let take = (fb - partial.len()).min(bytes.len());
                    partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if partial.len() < fb {
                        return Ok(());
                    }
                    let whole = std::mem::take(partial);
                    sink.decode(decoder, &whole, stats);
                }
                let whole = bytes.len() - bytes.len() % fb;
                partial.extend_from_slice(&bytes[whole..]);
                sink.decode(decoder, &bytes[..whole], stats);
                sink.convert(decoder.channels(), chain.resampler.as_mut());
                Ok(())
            }
            Source::Demux(demuxer) => {
                demuxer.push(bytes)?;
                self.drain_demuxer(out)
            }
        }
    }

    fn drain_demuxer(&mut self, out: &mut Vec<Pcm16Frame>) -> Result<()> {
        loop {
            let State::Running(chain) = &mut self.state else {
                return Ok(());
            };
            let Source::Demux(demuxer) = &mut chain.source else {
                return Ok(());
            };
            match demuxer.next_packet() {
                Ok(Some(packet)) => {
                    if chain.decoder.is_none() {
                        let track = demuxer
                            .track()
                            .ok_or(Error::Malformed("packet before track header"))?;
                        let decoder = decode::for_track(track)?;
                        chain.resampler = resampler_for(decoder.output_rate())?;
                        chain.decoder = Some(decoder);
                    }
                    if let Some(decoder) = chain.decoder.as_mut() {
                        self.sink
                            .decode(decoder.as_mut(), &packet.data, &mut self.stats);
                        self.sink
                            .convert(decoder.channels(), chain.resampler.as_mut());
                    }
                }
                Ok(None) => return Ok(()),
                Err(Error::ResetRequired) => {
                    // A new recording inside the same container stream: flush this one and
                    // keep the demuxer, which has restarted itself on the new header.
                    self.flush_tail(out);
                    if let State::Running(chain) = &mut self.state {
                        chain.decoder = None;
                        chain.resampler = None;
                    }
                    self.start_recording();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Flushes the resampler tail of the current recording and emits every pending sample.
    fn flush_tail(&mut self, out: &mut Vec<Pcm16Frame>) {
        if let State::Running(chain) = &mut self.state {
            if let Some(r) = chain.resampler.as_mut() {
                self.sink.flush(r);
            }
        }
        self.emit(out, true);
    }

    /// Ends the running recording: demuxer end, resampler tail, all pending samples.
    fn end_recording(&mut self, out: &mut Vec<Pcm16Frame>) -> Result<()> {
        let mut result = Ok(());
        if let State::Running(chain) = &mut self.state {
            match &mut chain.source {
                Source::Demux(demuxer) => match demuxer.finish() {
                    Ok(Some(packet)) => {
                        if let Some(decoder) = chain.decoder.as_mut() {
                            self.sink
                                .decode(decoder.as_mut(), &packet.data, &mut self.stats);
                            self.sink
                                .convert(decoder.channels(), chain.resampler.as_mut());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => result = Err(e),
                },
                Source::Raw { partial, .. } => {
                    if !partial.is_empty() {
                        partial.clear();
                        result = Err(Error::Malformed("pcm ends inside a sample"));
                    }
                }
            }
        }
        self.flush_tail(out);
        result
    }

    /// A fatal error: emit what was decoded, then wait for a new header.
    fn fail(&mut self, out: &mut Vec<Pcm16Frame>) {
        self.flush_tail(out);
        self.state = State::Failed;
    }

    /// Moves `pending` into frames of at most [`MAX_FRAME`]; a remainder shorter than
    /// [`MIN_FRAME`] waits unless `all`.
    fn emit(&mut self, out: &mut Vec<Pcm16Frame>, all: bool) {
        let mut taken = 0;
        while self.sink.pending.len() - taken >= MIN_FRAME
            || (all && taken < self.sink.pending.len())
        {
            let n = (self.sink.pending.len() - taken).min(MAX_FRAME);
            out.push(Pcm16Frame {
                samples: self.sink.pending[taken..taken + n].to_vec(),
                start: self.position,
                recording: self.recording,
            });
            self.position += n as u64;
            self.stats.samples_out += n as u64;
            taken += n;
        }
        self.sink.pending.drain(..taken);
    }
}

fn resampler_for(rate: u32) -> Result<Option<Resampler>> {
    if rate == OUTPUT_RATE {
        Ok(None)
    } else {
        Resampler::new(rate, OUTPUT_RATE).map(Some)
    }
}

/// f32 in [-1, 1) to PCM16, rounding to nearest (halves away from zero) and clipping (libopus
/// `opus_decode` does the same, without dither); NaN gives 0.
///
/// Not `f32::round`: on baseline x86-64 (no SSE4.1 `roundss`) it is a call into the software
/// `roundf`, ≈3 % of a chunk's instructions for what this does in a few. Clipping first keeps
/// |y| < 2^15, where the truncating cast and `y - t` are exact, so the result is bit-identical
/// to `round` then clamp (`to_i16_matches_round_then_clamp`).
fn to_i16(s: f32) -> i16 {
    let y = (s * 32768.0).clamp(-32768.0, 32767.0);
    let t = y as i16;
    let frac = y - f32::from(t);
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::demux::webm::tests::{cluster, header};

    /// A hand-built Chrome-like `audio/webm;codecs=pcm` stream: 48 kHz float, 10 ms blocks.
    fn webm_pcm(blocks: usize) -> Vec<u8> {
        let mut s = header(b"A_PCM/FLOAT/IEEE", None, 2);
        let block: Vec<u8> = (0..480)
            .flat_map(|i| (0.25 * (i as f32 * 0.05).sin()).to_le_bytes())
            .collect();
        let refs: Vec<&[u8]> = (0..blocks).map(|_| block.as_slice()).collect();
        for c in refs.chunks(10) {
            s.extend(cluster(0, c));
        }
        s
    }

    #[test]
    fn to_i16_matches_round_then_clamp() {
        let reference = |s: f32| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        // Every half-sample step across full scale and beyond it (ties included), then the
        // values around each tie, then the odd ones.
        for k in -140_000..140_000 {
            let s = k as f32 / 131_072.0;
            assert_eq!(to_i16(s), reference(s), "{s}");
            for near in [s * (1.0 - f32::EPSILON), s * (1.0 + f32::EPSILON)] {
                assert_eq!(to_i16(near), reference(near), "{near}");
            }
        }
        for s in [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-30,
            -1e-30,
        ] {
            assert_eq!(to_i16(s), reference(s), "{s}");
        }
    }

    #[test]
    fn byte_by_byte_equals_one_chunk() {
        let s = webm_pcm(50);
        let run = |step: usize| {
            let mut t = Transcoder::new(None);
            let mut out = Vec::new();
            for c in s.chunks(step) {
                t.push(c, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            out.iter()
                .flat_map(|f| f.samples.iter().copied())
                .collect::<Vec<i16>>()
        };
        let whole = run(s.len());
        assert_eq!(whole.len(), 50 * 240); // 0.5 s at 24 kHz, resampler tail included
        assert_eq!(run(1), whole);
        assert_eq!(run(13), whole);
    }

    #[test]
    fn frames_are_20_to_100_ms_and_positioned() {
        let mut t = Transcoder::new(None);
        let mut out = Vec::new();
        t.push(&webm_pcm(100), &mut out).unwrap();
        assert!(out
            .iter()
            .all(|f| (MIN_FRAME..=MAX_FRAME).contains(&f.samples.len())));
        t.finish(&mut out).unwrap();
        let mut pos = 0;
        for f in &out {
            assert_eq!(f.start, pos);
            pos += f.samples.len() as u64;
        }
        assert_eq!(pos, 24_000);
        assert_eq!(t.stats().packets, 100);
    }

    #[test]
    fn undecided_header_and_pcm_tail_errors() {
        let mut t = Transcoder::new(None);
        let mut out = Vec::new();
        t.push(&[0x1A, 0x45], &mut out).unwrap();
        assert_eq!(
            t.finish(&mut out),
            Err(Error::Malformed("stream ends inside its header"))
        );
        let mut t = Transcoder::new(Some(InputFormat::Pcm16 {
            sample_rate: 24_000,
            channels: 1,
        }));
        t.push(&[1, 0, 2], &mut out).unwrap();
        assert_eq!(
            t.finish(&mut out),
            Err(Error::Malformed("pcm ends inside a sample"))
        );
        assert_eq!(out.last().unwrap().samples, [1]);
    }
}
