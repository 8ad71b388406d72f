//! Opus decoding straight to 24 kHz.
//!
//! Design decision: two decoders that build with cargo alone (the C `opus` crate needs cmake),
//! chosen by cargo feature:
//! - default (`opus-c2rust`): `unsafe-libopus`, libopus 1.3.1 transpiled to Rust by c2rust. It
//!   is libopus's own algorithm, so it matches libopus within ±1 LSB (checked at 48 kHz against
//!   `opusdec`), and on Chrome's 128 kbit/s CELT packets it costs ≈17 % fewer instructions and
//!   ≈13 % less CPU than opus-rs (callgrind: 4.25 M vs 5.13 M instructions per 250 ms of
//!   audio; `docs/performance.md`). The price is `unsafe` calls over a raw decoder state, kept
//!   to the three blocks of [`backend`]; a panic inside it (its `assert!`s) still costs only the
//!   packet (see [`OpusDecoder::decode`]).
//! - `opus-rs`: a pure-Rust port of libopus 1.6 with a safe API, for deployments that want no
//!   `unsafe` in the decode path. It wins over the default when both features are on.
//!
//! Both match the libopus reference decodes of our fixtures far above the 40 dB bar (see
//! `tests/audio_ingest.rs`). Decoding at 24 kHz directly skips a resampler.
//!
//! Not here: C libopus itself. It decodes Chrome's packets in ≈22 % fewer instructions (≈10 %
//! less CPU on a busy machine), mostly because c2rust turned its stack scratch arrays into
//! heap allocations, but every published crate that builds it needs cmake (or a system
//! libopus); the `mimalloc` feature recovers part of that allocation cost instead
//! (`docs/performance.md`, "Decode speed").

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::PacketDecoder;
use crate::audio::{Error, Result, OUTPUT_RATE};

#[cfg(not(any(feature = "opus-c2rust", feature = "opus-rs")))]
compile_error!("enable an Opus decoder: the `opus-c2rust` (default) or `opus-rs` feature");

/// Output rate: 24 kHz is a native Opus decode rate and the STT input rate.
const RATE: u32 = OUTPUT_RATE;
/// The longest Opus packet is 120 ms.
const MAX_FRAME: usize = RATE as usize * 120 / 1000;

/// Opus decoder with pre-skip trimming.
pub struct OpusDecoder {
    inner: backend::Backend,
    channels: u16,
    /// Pre-skip converted to output samples per channel.
    pre_skip: usize,
    /// Pre-skip still to drop.
    skip_left: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("channels", &self.channels)
            .field("pre_skip", &self.pre_skip)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// `pre_skip` is in 48 kHz samples, as OpusHead states it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a channel count other than 1 or 2.
    pub fn new(channels: u16, pre_skip: u16) -> Result<Self> {
        let inner =
            backend::Backend::new(channels).ok_or(Error::Unsupported("opus channel count"))?;
        let pre_skip = usize::from(pre_skip) * RATE as usize / 48_000;
        Ok(OpusDecoder {
            inner,
            channels,
            pre_skip,
            skip_left: pre_skip,
        })
    }
}

impl PacketDecoder for OpusDecoder {
    fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<()> {
        if packet.is_empty() {
            // An empty packet asks the decoder for concealment; a container never means that.
            return Err(Error::Malformed("empty opus packet"));
        }
        let ch = usize::from(self.channels);
        let start = out.len();
        out.resize(start + MAX_FRAME * ch, 0.0);
        // The decoder is a port of C code fed with client bytes; a panic on a hostile packet
        // must cost one packet, not the DSP worker. The state is reset after one.
        let inner = &mut self.inner;
        let r = catch_unwind(AssertUnwindSafe(|| inner.decode(packet, &mut out[start..])));
        let n = match r {
            Ok(Some(n)) => n,
            Ok(None) => {
                out.truncate(start);
                return Err(Error::Malformed("opus packet"));
            }
            Err(_) => {
                out.truncate(start);
                self.reset_decoder();
                return Err(Error::Malformed("opus packet"));
            }
        };
        out.truncate(start + n * ch);
        if self.skip_left > 0 {
            let k = self.skip_left.min(n);
            out.drain(start..start + k * ch);
            self.skip_left -= k;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.reset_decoder();
        self.skip_left = self.pre_skip;
    }

    fn output_rate(&self) -> u32 {
        RATE
    }

    fn channels(&self) -> u16 {
        self.channels
    }
}

impl OpusDecoder {
    fn reset_decoder(&mut self) {
        if let Some(d) = backend::Backend::new(self.channels) {
            self.inner = d;
        }
    }
}

/// libopus 1.3.1 as transpiled by c2rust (`unsafe-libopus`).
#[cfg(all(feature = "opus-c2rust", not(feature = "opus-rs")))]
mod backend {
    use std::ptr::NonNull;

    use super::RATE;

    /// A libopus decoder state: one heap block, owned here and freed on drop.
    pub(super) struct Backend {
        state: NonNull<unsafe_libopus::OpusDecoder>,
        channels: usize,
    }

    // SAFETY: the state is plain memory owned by this value with no thread affinity; `&mut self`
    // on `decode` serializes every use of it.
    unsafe impl Send for Backend {}

    impl Backend {
        /// `None` for a channel count libopus rejects (it accepts 1 and 2).
        pub(super) fn new(channels: u16) -> Option<Self> {
            let mut err = unsafe_libopus::OPUS_OK;
            // SAFETY: plain values and a valid `err` pointer; libopus validates the rate and the
            // channel count and returns null (nothing allocated) when it rejects them.
            let state = unsafe {
                unsafe_libopus::opus_decoder_create(RATE as i32, i32::from(channels), &mut err)
            };
            let state = NonNull::new(state)?;
            Some(Backend {
                state,
                channels: usize::from(channels),
            })
        }

        /// Decodes `packet` into `out` (interleaved); the samples per channel, or `None` for
        /// a packet libopus rejects.
        pub(super) fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Option<usize> {
            let len = i32::try_from(packet.len()).ok()?;
            let frame = i32::try_from(out.len() / self.channels).ok()?;
            // SAFETY: `state` is a live decoder from `opus_decoder_create`; `packet` is readable
            // for `len` bytes; libopus writes at most `frame × channels` floats, which is within
            // `out`, and reads nothing outside these two buffers and its state.
            let n = unsafe {
                unsafe_libopus::opus_decode_float(
                    self.state.as_ptr(),
                    packet.as_ptr(),
                    len,
                    out.as_mut_ptr(),
                    frame,
                    0,
                )
            };
            usize::try_from(n).ok()
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            // SAFETY: `state` came from `opus_decoder_create` and is freed exactly once, here.
            unsafe { unsafe_libopus::opus_decoder_destroy(self.state.as_ptr()) }
        }
    }
}

/// The pure-Rust opus-rs port, safe API.
#[cfg(feature = "opus-rs")]
mod backend {
    use super::RATE;

    pub(super) struct Backend {
        inner: opus_rs::OpusDecoder,
        channels: usize,
    }

    impl Backend {
        pub(super) fn new(channels: u16) -> Option<Self> {
            let inner = opus_rs::OpusDecoder::new(RATE as i32, usize::from(channels)).ok()?;
            Some(Backend {
                inner,
                channels: usize::from(channels),
            })
        }

        pub(super) fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Option<usize> {
            self.inner
                .decode(packet, out.len() / self.channels, out)
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::demux::ogg::OggDemuxer;
    use crate::audio::demux::Demuxer;

    /// The packets of `fixtures/ogg-opus` (opusenc, mono, 151 packets of 20 ms, pre-skip 312).
    fn fixture_packets() -> Vec<Vec<u8>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ogg-opus/all.ogg");
        let bytes = std::fs::read(path).expect("fixtures/ogg-opus/all.ogg");
        let mut d = OggDemuxer::new();
        d.push(&bytes).unwrap();
        let mut packets = Vec::new();
        while let Some(p) = d.next_packet().unwrap() {
            packets.push(p.data);
        }
        packets.extend(d.finish().unwrap().map(|p| p.data));
        packets
    }

    #[test]
    fn decodes_at_24k_with_pre_skip() {
        let packets = fixture_packets();
        assert_eq!(packets.len(), 151);
        let mut d = OpusDecoder::new(1, 312).unwrap();
        let mut out = Vec::new();
        for p in &packets {
            d.decode(p, &mut out).unwrap();
        }
        // 151 × 20 ms at 24 kHz, less the pre-skip (312 at 48 kHz = 156 here).
        assert_eq!(out.len(), 151 * 480 - 156);
        let rms = (out.iter().map(|s| s * s).sum::<f32>() / out.len() as f32).sqrt();
        assert!(rms > 0.01, "rms {rms}");
        d.reset();
        let mut again = Vec::new();
        for p in &packets {
            d.decode(p, &mut again).unwrap();
        }
        assert_eq!(again, out);
    }

    #[test]
    fn bad_packets_are_per_packet_errors() {
        let mut d = OpusDecoder::new(1, 0).unwrap();
        let mut out = Vec::new();
        assert!(d.decode(&[], &mut out).is_err());
        let mut rng = 0x1234_5678u32;
        for len in 1..300 {
            let p: Vec<u8> = (0..len)
                .map(|_| {
                    rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (rng >> 24) as u8
                })
                .collect();
            let before = out.len();
            if d.decode(&p, &mut out).is_err() {
                assert_eq!(out.len(), before);
            }
        }
        // Still a working decoder afterwards.
        for p in fixture_packets() {
            d.decode(&p, &mut out).unwrap();
        }
    }

    #[test]
    fn rejects_channel_counts_opus_does_not_decode() {
        assert!(OpusDecoder::new(0, 0).is_err());
        assert!(OpusDecoder::new(3, 0).is_err());
        assert!(OpusDecoder::new(2, 0).is_ok());
    }
}
