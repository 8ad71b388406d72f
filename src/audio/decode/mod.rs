//! Packet decoders: compressed packets in, interleaved f32 samples out.
//!
//! Design decision: a decoder owns codec-specific timing (Opus pre-skip, output rate choice)
//! so the transcoder only sees "samples at `output_rate()`", whatever the codec.

use super::{Codec, Error, Result, TrackInfo};

pub mod aac;
pub mod opus;

/// A per-track packet decoder.
///
/// # For implementations
/// `decode` appends `n × channels()` interleaved samples at `output_rate()` to `out` and
/// never clears it. An error is about that packet only ([`Error::Malformed`]): the caller counts
/// it and goes on with the next packet, so a decoder must stay usable after returning one.
/// `reset` returns to the just-constructed state (the stream is discontinuous).
pub trait PacketDecoder: Send {
    /// Decodes one packet, appending its samples to `out`.
    ///
    /// # Errors
    /// [`Error::Malformed`] for a packet the codec rejects; nothing is appended then.
    fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<()>;
    /// Forgets all inter-packet state.
    fn reset(&mut self);
    /// Rate of the samples `decode` appends (a decoder may pick the one closest to 24 kHz).
    fn output_rate(&self) -> u32;
    /// Interleaved channel count of the samples `decode` appends.
    fn channels(&self) -> u16;
}

/// Builds the decoder for a demuxed track.
///
/// # Errors
/// [`Error::Unsupported`] for codecs without a built-in decoder.
pub fn for_track(track: &TrackInfo) -> Result<Box<dyn PacketDecoder>> {
    match track.codec {
        Codec::Opus { channels, pre_skip } => {
            Ok(Box::new(opus::OpusDecoder::new(channels, pre_skip)?))
        }
        Codec::PcmF32 {
            sample_rate,
            channels,
        } => Ok(Box::new(PcmDecoder::new(
            PcmKind::F32,
            sample_rate,
            channels,
        ))),
        Codec::PcmS16 {
            sample_rate,
            channels,
        } => Ok(Box::new(PcmDecoder::new(
            PcmKind::S16,
            sample_rate,
            channels,
        ))),
        Codec::Aac { ref config } => Ok(Box::new(aac::AacDecoder::new(config)?)),
    }
}

/// Sample layout of raw PCM packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcmKind {
    /// 32-bit IEEE float, little-endian (Chrome `audio/webm;codecs=pcm`).
    F32,
    /// 16-bit signed integer, little-endian (AudioWorklet streams).
    S16,
}

/// Raw PCM "decoder": converts little-endian samples to f32. Stateless.
#[derive(Debug)]
pub struct PcmDecoder {
    kind: PcmKind,
    sample_rate: u32,
    channels: u16,
}

impl PcmDecoder {
    pub fn new(kind: PcmKind, sample_rate: u32, channels: u16) -> Self {
        PcmDecoder {
            kind,
            sample_rate,
            channels,
        }
    }

    /// Bytes per interleaved frame (one sample of every channel).
    pub fn frame_bytes(&self) -> usize {
        let width = match self.kind {
            PcmKind::F32 => 4,
            PcmKind::S16 => 2,
        };
        width * usize::from(self.channels)
    }
}

impl PacketDecoder for PcmDecoder {
    fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<()> {
        if packet.len() % self.frame_bytes() != 0 {
            return Err(Error::Malformed("pcm packet is not whole frames"));
        }
        match self.kind {
            PcmKind::F32 => out.extend(packet.chunks_exact(4).map(|b| {
                let s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                // NaN, inf and huge values from a hostile client must not reach the resampler
                // (its FFT overflows to NaN and rubato panics). Full scale is ±1; anything
                // beyond would clip in the PCM16 output anyway.
                if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            })),
            PcmKind::S16 => out.extend(
                packet
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
            ),
        }
        Ok(())
    }

    fn reset(&mut self) {}

    fn output_rate(&self) -> u32 {
        self.sample_rate
    }

    fn channels(&self) -> u16 {
        self.channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_conversion() {
        let mut d = PcmDecoder::new(PcmKind::S16, 16_000, 1);
        let mut out = Vec::new();
        d.decode(&[0x00, 0x80, 0xFF, 0x7F], &mut out).unwrap();
        assert_eq!(out, [-1.0, 32767.0 / 32768.0]);
        assert!(d.decode(&[1], &mut out).is_err());
        let mut d = PcmDecoder::new(PcmKind::F32, 48_000, 2);
        out.clear();
        let mut p = 0.5f32.to_le_bytes().to_vec();
        p.extend(f32::NAN.to_le_bytes());
        d.decode(&p, &mut out).unwrap();
        assert_eq!(out, [0.5, 0.0]);
        assert!(d.decode(&p[..4], &mut out).is_err());
    }
}
