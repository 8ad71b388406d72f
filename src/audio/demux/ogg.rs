//! Incremental Ogg demuxer for Ogg Opus (Firefox's `audio/ogg;codecs=opus`, opusenc).
//!
//! Design decision: pages are the unit of buffering. An Ogg page is at most 65 307 bytes by
//! construction, so buffering one whole page before checking its CRC bounds memory without any
//! limit of our own; only packets spanning pages need a limit ([`MAX_PACKET`]). The first
//! logical stream is demuxed and any other is skipped; a BOS page after data pages starts a new
//! (chained) recording.

use std::collections::VecDeque;

use super::{parse_opus_head, Demuxer};
use crate::audio::{Error, Packet, Result, TrackInfo};

/// Largest packet reassembled across pages. An Opus packet is at most 1275 bytes × 48 frames.
pub const MAX_PACKET: usize = 64 << 10;

const HEADER_LEN: usize = 27;
const FLAG_CONTINUED: u8 = 0x01;
const FLAG_BOS: u8 = 0x02;

/// Which packet of the logical stream comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Expect {
    #[default]
    OpusHead,
    OpusTags,
    Audio,
}

/// Push-based Ogg demuxer.
#[derive(Debug, Default)]
pub struct OggDemuxer {
    buf: Vec<u8>,
    pos: usize,
    serial: Option<u32>,
    /// A data (non-BOS) page has been read: a later BOS page is a new recording.
    seen_data: bool,
    expect: Expect,
    track: Option<TrackInfo>,
    /// The packet being reassembled across pages.
    partial: Vec<u8>,
    /// Drop continuation bytes until the next packet boundary (we missed the packet's start).
    discard_continuation: bool,
    packets: VecDeque<Packet>,
    failed: Option<Error>,
}

impl OggDemuxer {
    pub fn new() -> Self {
        OggDemuxer::default()
    }

    fn restart(&mut self) {
        self.serial = None;
        self.seen_data = false;
        self.expect = Expect::OpusHead;
        self.track = None;
        self.partial.clear();
        self.discard_continuation = false;
    }

    /// Parses one page if complete: `Ok(false)` when more bytes are needed.
    fn page(&mut self) -> Result<bool> {
        let b = &self.buf[self.pos..];
        let n = b.len().min(4);
        if b[..n] != b"OggS"[..n] {
            return Err(Error::Malformed("ogg capture pattern"));
        }
        if b.len() < HEADER_LEN {
            return Ok(false);
        }
        if b[4] != 0 {
            return Err(Error::Unsupported("ogg version"));
        }
        let segments = usize::from(b[26]);
        if b.len() < HEADER_LEN + segments {
            return Ok(false);
        }
        let lacing = &b[HEADER_LEN..HEADER_LEN + segments];
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let total = HEADER_LEN + segments + body_len;
        if b.len() < total {
            return Ok(false);
        }
        let page = &b[..total];
        let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
        if crc32(page) != stored {
            return Err(Error::Malformed("ogg page crc"));
        }
        let flags = page[5];
        let serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
        if flags & FLAG_BOS != 0 {
            if self.seen_data {
                self.restart();
                return Err(Error::ResetRequired);
            }
            self.serial.get_or_insert(serial);
        } else if self.serial.is_none() {
            return Err(Error::Malformed("ogg stream without BOS page"));
        } else {
            self.seen_data = true;
        }
        if Some(serial) != self.serial {
            self.pos += total;
            return Ok(true);
        }

        let page = std::mem::take(&mut self.buf);
        let r = self.packets_of(&page[self.pos..self.pos + total], segments);
        self.buf = page;
        self.pos += total;
        r.map(|()| true)
    }

    fn packets_of(&mut self, page: &[u8], segments: usize) -> Result<()> {
        if page[5] & FLAG_CONTINUED == 0 {
            // A packet left open by the previous page was never finished: its tail was lost.
            self.partial.clear();
            self.discard_continuation = false;
        } else if self.partial.is_empty() {
            self.discard_continuation = true;
        }
        let lacing = &page[HEADER_LEN..HEADER_LEN + segments];
        let mut body = &page[HEADER_LEN + segments..];
        for &l in lacing {
            let (seg, rest) = body.split_at(usize::from(l));
            body = rest;
            if !self.discard_continuation {
                if self.partial.len() + seg.len() > MAX_PACKET {
                    return Err(Error::Limit("ogg packet size"));
                }
                self.partial.extend_from_slice(seg);
            }
            if l < 255 {
                if self.discard_continuation {
                    self.discard_continuation = false;
                } else {
                    let packet = std::mem::take(&mut self.partial);
                    self.on_packet(packet)?;
                }
            }
        }
        Ok(())
    }

    fn on_packet(&mut self, data: Vec<u8>) -> Result<()> {
        match self.expect {
            Expect::OpusHead => {
                if data.starts_with(b"\x01vorbis") {
                    return Err(Error::Unsupported("vorbis"));
                }
                if !data.starts_with(b"OpusHead") {
                    return Err(Error::Unsupported("ogg codec"));
                }
                self.track = Some(parse_opus_head(&data)?);
                self.expect = Expect::OpusTags;
            }
            Expect::OpusTags => {
                if !data.starts_with(b"OpusTags") {
                    return Err(Error::Malformed("missing OpusTags"));
                }
                self.expect = Expect::Audio;
            }
            Expect::Audio => self.packets.push_back(Packet { data, pts: None }),
        }
        Ok(())
    }
}

impl Demuxer for OggDemuxer {
    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn track(&self) -> Option<&TrackInfo> {
        self.track.as_ref()
    }

    fn next_packet(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(p) = self.packets.pop_front() {
                return Ok(Some(p));
            }
            if let Some(e) = self.failed {
                return Err(e);
            }
            if self.pos == self.buf.len() {
                return Ok(None);
            }
            match self.page() {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(Error::ResetRequired) => return Err(Error::ResetRequired),
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
            }
        }
    }

    fn finish(&mut self) -> Result<Option<Packet>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.packets.is_empty() && (self.pos < self.buf.len() || !self.partial.is_empty()) {
            let e = Error::Malformed("stream ends inside a page or packet");
            self.failed = Some(e);
            return Err(e);
        }
        Ok(self.packets.pop_front())
    }
}

/// Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, zero init, no final xor, computed with
/// the CRC field (bytes 22..26) taken as zero.
fn crc32(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for (i, &b) in page.iter().enumerate() {
        let b = if (22..26).contains(&i) { 0 } else { b };
        crc = (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)];
    }
    crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut j = 0;
        while j < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04C1_1DB7
            } else {
                r << 1
            };
            j += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audio::demux::webm::tests::opus_head;

    /// Builds one page holding `packets`; the last one is left open if `open_last`.
    pub(crate) fn page(
        serial: u32,
        seq: u32,
        flags: u8,
        packets: &[&[u8]],
        open_last: bool,
    ) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let mut n = p.len();
            while n >= 255 {
                lacing.push(255);
                n -= 255;
            }
            if open_last && i == packets.len() - 1 {
                assert_eq!(n, 0, "an open packet fills whole 255-byte segments");
            } else {
                lacing.push(n as u8);
            }
            body.extend_from_slice(p);
        }
        let mut out = b"OggS".to_vec();
        out.push(0);
        out.push(flags);
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(lacing.len() as u8);
        out.extend(lacing);
        out.extend(body);
        let crc = crc32(&out);
        out[22..26].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn headers(serial: u32) -> Vec<u8> {
        let mut s = page(serial, 0, FLAG_BOS, &[&opus_head(1, 312)], false);
        s.extend(page(serial, 1, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"], false));
        s
    }

    fn drain(d: &mut OggDemuxer) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(p) = d.next_packet()? {
            out.push(p.data);
        }
        Ok(out)
    }

    #[test]
    fn crc_matches_known_vector() {
        // CRC-32/MPEG-2 style without final xor: check value for "123456789" is 0x89A1897F.
        assert_eq!(crc32(b"123456789"), 0x89A1_897F);
    }

    #[test]
    fn packets_span_pages_at_every_split() {
        let big = vec![5u8; 600];
        // A second logical stream (its BOS page grouped with ours) is skipped.
        let mut s = page(7, 0, FLAG_BOS, &[&opus_head(1, 312)], false);
        s.extend(page(9, 0, FLAG_BOS, &[b"OpusHead-other-stream"], false));
        s.extend(page(7, 1, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"], false));
        s.extend(page(7, 2, 0, &[b"one", &big[..510]], true));
        s.extend(page(9, 1, 0, &[b"zzz"], false));
        s.extend(page(7, 3, FLAG_CONTINUED, &[&big[510..], b"two"], false));
        for step in [1, 5, 28, 100, s.len()] {
            let mut d = OggDemuxer::new();
            let mut got = Vec::new();
            for c in s.chunks(step) {
                d.push(c).unwrap();
                got.extend(drain(&mut d).unwrap());
            }
            assert!(d.finish().unwrap().is_none());
            assert_eq!(got, vec![b"one".to_vec(), big.clone(), b"two".to_vec()]);
            assert_eq!(d.track().unwrap().sample_rate, 48_000);
        }
    }

    #[test]
    fn errors() {
        let run = |s: &[u8]| {
            let mut d = OggDemuxer::new();
            d.push(s).unwrap();
            drain(&mut d)
        };
        let mut bad = headers(1);
        bad[30] ^= 0xFF;
        assert_eq!(run(&bad), Err(Error::Malformed("ogg page crc")));
        let vorbis = page(1, 0, FLAG_BOS, &[b"\x01vorbis\0\0\0\0"], false);
        assert_eq!(run(&vorbis), Err(Error::Unsupported("vorbis")));
        assert_eq!(
            run(b"RIFF1234"),
            Err(Error::Malformed("ogg capture pattern"))
        );
        let mut d = OggDemuxer::new();
        d.push(&headers(1)[..40]).unwrap();
        drain(&mut d).unwrap();
        assert!(d.finish().is_err());
    }

    #[test]
    fn chained_stream_signals_reset() {
        let mut s = headers(1);
        s.extend(page(1, 2, 0x04, &[b"a"], false));
        s.extend(headers(2));
        s.extend(page(2, 2, 0, &[b"b"], false));
        let mut d = OggDemuxer::new();
        d.push(&s).unwrap();
        assert_eq!(d.next_packet().unwrap().unwrap().data, b"a");
        assert_eq!(d.next_packet(), Err(Error::ResetRequired));
        assert_eq!(drain(&mut d).unwrap(), vec![b"b".to_vec()]);
    }
}
