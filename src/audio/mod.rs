//! In-process audio ingest: browser MediaRecorder bytes in, PCM16 mono 24 kHz out.
//!
//! Synchronous and free of tokio: everything here is pure computation driven by pushes of
//! bytes, so it runs on the DSP pool and is tested without sockets. Containers are demuxed
//! incrementally (push bytes, pull packets); no call ever waits for more bytes.

pub mod decode;
pub mod demux;
pub mod pool;
pub mod resample;
pub mod sniff;
pub mod transcoder;

/// The sample rate every output frame has: what the Realtime STT `pcm16` format requires.
pub const OUTPUT_RATE: u32 = 24_000;

/// What a stream was recognised as, from its first bytes or a declared MIME type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Matroska/WebM (EBML magic `1A 45 DF A3`).
    WebM,
    /// Ogg (`OggS`).
    Ogg,
    /// ISO BMFF / MP4 (`ftyp` box first).
    Mp4,
    /// Headerless PCM16 little-endian from an AudioWorklet, at a declared rate and channel count.
    Pcm16 { sample_rate: u32, channels: u16 },
}

/// The codec of a demuxed track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// Opus; `pre_skip` in 48 kHz samples, from OpusHead or dOps.
    Opus { channels: u16, pre_skip: u16 },
    /// AAC with its AudioSpecificConfig.
    Aac { config: Vec<u8> },
    /// Interleaved 32-bit float PCM (Chrome's `audio/webm;codecs=pcm`).
    PcmF32 { sample_rate: u32, channels: u16 },
}

/// Track parameters a demuxer reports once it has read the container header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u16,
}

/// One compressed (or raw) access unit of the audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub data: Vec<u8>,
    /// Presentation time in the track's sample-rate units, when the container says.
    pub pts: Option<u64>,
}

/// Audio ingest errors. Cheap to create (no allocation) because they occur on the hot path.
///
/// Recoverability: `Malformed` on a single packet is recoverable (skip it, count it, go on);
/// `Malformed` in a container header, `Unsupported` and `Limit` are fatal for the stream until a
/// new recording header arrives; `ResetRequired` means the caller must start a new demuxer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed audio: {0}")]
    Malformed(&'static str),
    #[error("unsupported audio: {0}")]
    Unsupported(&'static str),
    #[error("audio limit exceeded: {0}")]
    Limit(&'static str),
    #[error("audio stream must be restarted")]
    ResetRequired,
}

impl Error {
    /// Stable snake_case code for WebSocket `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "audio_malformed",
            Error::Unsupported(_) => "audio_unsupported",
            Error::Limit(_) => "audio_limit",
            Error::ResetRequired => "audio_reset_required",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
