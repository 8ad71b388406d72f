//! Push-based container demuxers: feed bytes as they arrive, pull packets when complete.
//!
//! Design decision: demuxers never read from an I/O source. The socket task owns the bytes and
//! pushes them in; a demuxer buffers at most one incomplete element (bounded by its limits), so
//! a slow or hostile client costs a bounded amount of memory and no thread ever waits.

use super::{Codec, Error, InputFormat, Packet, Result, TrackInfo};

/// An incremental demuxer.
///
/// # For implementations
/// `push` only buffers (bounded: a declared element larger than the limit is
/// [`Error::Limit`], never an allocation). `next_packet` returns `Ok(None)` when it needs
/// more bytes; it never blocks. `finish` is called at end of input and may release a final
/// packet held back for lack of a terminator.
///
/// Errors: [`Error::ResetRequired`] from `next_packet` is a signal, returned once, when a new
/// recording header (EBML, a new Ogg BOS page, `ftyp`) begins at the current position: the
/// demuxer has already restarted itself on it (its bytes stay buffered, `track()` is `None`
/// until the new header is read), and the caller drains/resets its decoder and keeps calling.
/// Every other error is fatal for the recording: the demuxer keeps returning it.
pub trait Demuxer: Send {
    /// Buffers `bytes`; bytes inside an element being skipped are counted, not stored.
    ///
    /// # Errors
    /// A demuxer that already failed may return its error again.
    fn push(&mut self, bytes: &[u8]) -> Result<()>;
    /// The audio track, once the header has been read.
    fn track(&self) -> Option<&TrackInfo>;
    /// The next complete packet of the audio track, or `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// See the trait docs: `ResetRequired` is a restart signal, the rest are fatal.
    fn next_packet(&mut self) -> Result<Option<Packet>>;
    /// End of input: returns a packet held back for lack of a terminator, if any.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the input ends inside an element that carried audio.
    fn finish(&mut self) -> Result<Option<Packet>>;
}

/// Builds the demuxer for a container format.
///
/// # Errors
/// [`Error::Unsupported`] for headerless PCM (the transcoder frames it itself) and for formats
/// whose demuxer is not built in.
pub fn for_format(format: InputFormat) -> Result<Box<dyn Demuxer>> {
    match format {
        InputFormat::WebM => Ok(Box::new(webm::WebmDemuxer::new())),
        InputFormat::Ogg => Ok(Box::new(ogg::OggDemuxer::new())),
        InputFormat::Mp4 => Ok(Box::new(mp4::Mp4Demuxer::new())),
        InputFormat::Pcm16 { .. } => Err(Error::Unsupported("pcm has no container")),
    }
}

/// Parses an `OpusHead` identification header (RFC 7845 §5.1), as found in Ogg and in WebM's
/// CodecPrivate. (MP4's `dOps` box has a different, big-endian layout and is not read here.)
///
/// # Errors
/// [`Error::Malformed`] for a short or mis-tagged header; [`Error::Unsupported`] for more than
/// two channels (multistream mapping families).
pub fn parse_opus_head(head: &[u8]) -> Result<TrackInfo> {
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return Err(Error::Malformed("OpusHead"));
    }
    if head[8] >> 4 != 0 {
        return Err(Error::Unsupported("OpusHead version"));
    }
    let channels = u16::from(head[9]);
    let pre_skip = u16::from_le_bytes([head[10], head[11]]);
    let family = head[18];
    if channels == 0 {
        return Err(Error::Malformed("OpusHead channel count"));
    }
    if channels > 2 || family > 1 {
        return Err(Error::Unsupported("multichannel opus"));
    }
    Ok(TrackInfo {
        codec: Codec::Opus { channels, pre_skip },
        // Opus timestamps and pre-skip are always in 48 kHz units, whatever the input rate.
        sample_rate: 48_000,
        channels,
    })
}

pub mod mp4;
pub mod ogg;
pub mod webm;
