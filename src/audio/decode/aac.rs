//! AAC-LC decoding (Safari's `audio/mp4`) through symphonia's pure-Rust AAC decoder.
//!
//! Owns the AudioSpecificConfig parser (the MP4 demuxer reuses it to fill in `TrackInfo`) and a
//! thin decoder wrapper. Design decision: the ASC is validated here *before* it reaches
//! symphonia, because symphonia 0.5 panics on some configs it does not support (e.g. channel
//! configuration 0, which needs a program config element); anything that is not plain AAC-LC,
//! mono or stereo, at a standard rate is rejected as `Unsupported` up front. symphonia 0.5 also
//! panics on some corrupt packets (an index out of bounds in the ICS parser, found by our random
//! packet test), so each decode runs under `catch_unwind` and a panic becomes a recoverable
//! `Malformed` with the inner decoder rebuilt; this relies on the crate keeping the default
//! `panic = "unwind"`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use symphonia::core::audio::{AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{CodecParameters, Decoder, DecoderOptions, CODEC_TYPE_AAC};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::Packet as SymPacket;
use symphonia::default::codecs::AacDecoder as SymAacDecoder;

use super::PacketDecoder;
use crate::audio::{Error, Result};

/// Samples per channel in one AAC-LC access unit.
pub const FRAME_LEN: usize = 1024;

/// MPEG-4 audio object type of AAC-LC.
const AOT_AAC_LC: u8 = 2;

/// Sampling-frequency-index table of ISO/IEC 14496-3 (indices 0..=12).
const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// The fields of an MPEG-4 AudioSpecificConfig that decide whether and how we can decode.
///
/// Exists so the demuxer can report the real sample rate and channel count of an `mp4a` track
/// (the sample entry's own fields are often placeholders) without a second parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type (2 = AAC-LC, 5 = SBR/HE-AAC, 29 = PS/HE-AACv2).
    pub object_type: u8,
    /// Core sampling rate in Hz.
    pub sample_rate: u32,
    /// Channel configuration (0 = defined by a program config element).
    pub channels: u16,
}

impl AudioSpecificConfig {
    /// Parses the leading fields of an AudioSpecificConfig.
    ///
    /// # Errors
    /// `Malformed` when the config is shorter than its fields.
    pub fn parse(asc: &[u8]) -> Result<Self> {
        let mut bits = BitReader::new(asc);
        let mut object_type = bits.read(5)?;
        if object_type == 31 {
            object_type = 32 + bits.read(6)?;
        }
        let freq_index = bits.read(4)?;
        let sample_rate = if freq_index == 15 {
            bits.read(24)?
        } else {
            SAMPLE_RATES
                .get(freq_index as usize)
                .copied()
                .ok_or(Error::Malformed(
                    "aac config: reserved sampling frequency index",
                ))?
        };
        let channels = bits.read(4)? as u16;
        Ok(Self {
            // At most 32 + 63, so it fits.
            object_type: object_type as u8,
            sample_rate,
            channels,
        })
    }
}

/// Minimal MSB-first bit reader for the AudioSpecificConfig.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, bit: 0 }
    }

    fn read(&mut self, n: u32) -> Result<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self
                .data
                .get(self.bit / 8)
                .ok_or(Error::Malformed("aac config truncated"))?;
            v = (v << 1) | u32::from((byte >> (7 - self.bit % 8)) & 1);
            self.bit += 1;
        }
        Ok(v)
    }
}

/// Decodes raw AAC-LC access units (as stored in MP4 samples, no ADTS header) to interleaved
/// f32 at the stream's own rate; resampling to 24 kHz happens downstream.
pub struct AacDecoder {
    inner: SymAacDecoder,
    /// Kept to rebuild `inner` after it panicked mid-packet (its state is then unknown).
    params: CodecParameters,
    config: AudioSpecificConfig,
}

impl AacDecoder {
    /// Builds a decoder from the AudioSpecificConfig found in the MP4 `esds` box.
    ///
    /// # Errors
    /// `Malformed` for a truncated config; `Unsupported` for anything but AAC-LC, mono or
    /// stereo, at one of the standard sampling rates (HE-AAC, 5.1, PCE layouts, ...).
    pub fn new(config: &[u8]) -> Result<Self> {
        let asc = AudioSpecificConfig::parse(config)?;
        if asc.object_type != AOT_AAC_LC {
            return Err(Error::Unsupported("aac object type other than AAC-LC"));
        }
        let channels = match asc.channels {
            1 => Channels::FRONT_LEFT,
            2 => Channels::FRONT_LEFT | Channels::FRONT_RIGHT,
            _ => {
                return Err(Error::Unsupported(
                    "aac channel configuration other than mono or stereo",
                ))
            }
        };
        // symphonia reads an explicit (index 15) rate wrongly and has no band tables for
        // non-standard rates; 7350 Hz has none either.
        if !SAMPLE_RATES[..12].contains(&asc.sample_rate) {
            return Err(Error::Unsupported("aac sampling rate"));
        }
        let mut params = CodecParameters::new();
        params
            .for_codec(CODEC_TYPE_AAC)
            .with_sample_rate(asc.sample_rate)
            .with_channels(channels)
            .with_extra_data(config.into());
        let inner =
            SymAacDecoder::try_new(&params, &DecoderOptions::default()).map_err(map_error)?;
        Ok(Self {
            inner,
            params,
            config: asc,
        })
    }
}

impl PacketDecoder for AacDecoder {
    /// The AAC core rate (no SBR is supported); the transcoder resamples it.
    fn output_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// 1 or 2; `decode` interleaves this many channels.
    fn channels(&self) -> u16 {
        self.config.channels
    }

    /// Decodes one access unit and appends its samples, interleaved, to `out`.
    ///
    /// # Errors
    /// `Malformed` for a corrupt packet: recoverable, the next packet decodes normally (the
    /// failed packet appends nothing). `Unsupported` for a stream feature symphonia lacks.
    fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<()> {
        let start = out.len();
        let inner = &mut self.inner;
        let result = catch_unwind(AssertUnwindSafe(|| decode_into(inner, packet, out)));
        match result {
            Ok(result) => result,
            Err(_panic) => {
                out.truncate(start);
                // Rebuilding with parameters that already worked once cannot fail in practice;
                // if it did, the old decoder is kept and the next packet will tell.
                if let Ok(fresh) = SymAacDecoder::try_new(&self.params, &DecoderOptions::default())
                {
                    self.inner = fresh;
                }
                Err(Error::Malformed("aac packet crashed the decoder"))
            }
        }
    }

    /// Forgets inter-frame state (overlap-add windows), e.g. after a gap in the stream.
    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Decodes one packet with symphonia and appends it, interleaved, to `out`.
fn decode_into(inner: &mut SymAacDecoder, packet: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let packet = SymPacket::new_from_slice(0, 0, FRAME_LEN as u64, packet);
    let decoded = inner.decode(&packet).map_err(map_error)?;
    let AudioBufferRef::F32(buf) = decoded else {
        // symphonia's AAC decoder always produces f32; anything else is a library change.
        return Err(Error::Unsupported("aac decoder output format"));
    };
    let frames = buf.frames();
    let channels = buf.spec().channels.count();
    out.reserve(frames * channels);
    if channels == 1 {
        out.extend_from_slice(buf.chan(0));
    } else {
        for i in 0..frames {
            for c in 0..channels {
                out.push(buf.chan(c)[i]);
            }
        }
    }
    Ok(())
}

/// Maps symphonia's errors onto our cheap, recoverability-documented ones.
fn map_error(e: SymError) -> Error {
    match e {
        // Bit-reader underrun inside a packet: the packet is truncated or corrupt.
        SymError::IoError(_) => Error::Malformed("aac packet truncated"),
        SymError::DecodeError(_) => Error::Malformed("aac packet corrupt"),
        SymError::SeekError(_) => Error::Malformed("aac seek"),
        SymError::Unsupported(_) => Error::Unsupported("aac stream feature"),
        SymError::LimitError(_) => Error::Limit("aac decoder limit"),
        SymError::ResetRequired => Error::ResetRequired,
    }
}

#[cfg(test)]
mod tests;
