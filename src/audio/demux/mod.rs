//! Push-based container demuxers: feed bytes as they arrive, pull packets when complete.

use super::{Packet, Result, TrackInfo};

/// An incremental demuxer.
///
/// # For implementations
/// `push` only buffers (bounded: a declared element larger than the limit is
/// [`super::Error::Limit`], never an allocation). `next_packet` returns `Ok(None)` when it needs
/// more bytes; it never blocks. `finish` is called at end of input and may release a final
/// packet held back for lack of a terminator.
pub trait Demuxer: Send {
    fn push(&mut self, bytes: &[u8]) -> Result<()>;
    /// The audio track, once the header has been read.
    fn track(&self) -> Option<&TrackInfo>;
    fn next_packet(&mut self) -> Result<Option<Packet>>;
    fn finish(&mut self) -> Result<Option<Packet>>;
}

pub mod mp4;
pub mod ogg;
pub mod webm;
