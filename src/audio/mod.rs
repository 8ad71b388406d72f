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
pub mod wav;

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
    /// Interleaved 16-bit little-endian PCM (AudioWorklet streams, WebM `A_PCM/INT/LIT`).
    PcmS16 { sample_rate: u32, channels: u16 },
}

/// Track parameters a demuxer reports once it has read the container header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u16,
}

/// A run of mono PCM16 samples at [`OUTPUT_RATE`]: what the speech-to-text stage consumes.
///
/// Frames carry their position so a consumer can tell a new recording (and detect any gap)
/// without trusting arrival order alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcm16Frame {
    /// Mono samples at [`OUTPUT_RATE`].
    pub samples: Vec<i16>,
    /// Index of the first sample, counted from the start of this recording.
    pub start: u64,
    /// Which recording on this stream produced the frame: 0, then +1 per new container header.
    pub recording: u32,
}

impl Pcm16Frame {
    /// Duration in milliseconds (rounded down).
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(OUTPUT_RATE)
    }

    /// The samples as little-endian bytes, the wire layout of `pcm16`.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }
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
/// Recoverability: `Malformed` from a [`decode::PacketDecoder`] is per packet (skip it, count
/// it, go on); `Malformed` from a demuxer, `Unsupported` and `Limit` are fatal for the stream
/// until a new recording header arrives. `ResetRequired` from a demuxer's `next_packet` is a
/// signal, not a failure: a new recording header begins here, the demuxer has restarted itself on
/// it, and the caller flushes and resets its decoder. From a [`transcoder::Transcoder`] it means
/// the stream failed earlier and only a new recording header can restart it.
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
