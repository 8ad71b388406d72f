//! Incremental WebM (Matroska/EBML) demuxer for what browsers' MediaRecorder writes.
//!
//! Chrome writes a live stream: the Segment and every Cluster have unknown size, there are no
//! Cues or SeekHead, and socket chunks cut elements anywhere. Design decision: a flat loop over
//! element headers with a stack of open masters, instead of a tree parser. Masters we need to
//! look inside (Segment, Cluster, BlockGroup) are entered header-only, so their size may be
//! unknown and their bytes are never buffered; an unknown-size master ends when an element that
//! cannot be its child appears. Small header elements (EBML, Info, Tracks) and blocks are read
//! whole under size limits; everything else of known size is skipped by counting bytes.

use std::collections::VecDeque;

use super::{parse_opus_head, Demuxer};
use crate::audio::{Codec, Error, Packet, Result, TrackInfo};

/// Largest block we buffer: Opus packets are < 1.3 KiB, 10 ms of float PCM stereo at 96 kHz
/// is 7.5 KiB. Anything near this is hostile or not audio.
pub const MAX_BLOCK: u64 = 1 << 20;
/// Largest header element (EBML header, Info, Tracks) we buffer.
pub const MAX_HEADER_ELEMENT: u64 = 64 << 10;

mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const BIT_DEPTH: u32 = 0x6264;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const TAGS: u32 = 0x1254_C367;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const ATTACHMENTS: u32 = 0x1941_A469;
}

const TRACK_TYPE_AUDIO: u64 = 2;

/// Elements that may appear directly in a Segment: they close an unknown-size Cluster.
fn is_segment_level(i: u32) -> bool {
    matches!(
        i,
        id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::CUES
            | id::TAGS
            | id::CHAPTERS
            | id::ATTACHMENTS
            | id::SEGMENT
            | id::EBML
    )
}

/// An open master element; `end` is its absolute end offset, `None` for unknown size.
#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    end: Option<u64>,
}

/// Push-based WebM demuxer. Memory: the bytes of at most one incomplete element (bounded by
/// [`MAX_BLOCK`]) plus the unparsed rest of the last push.
#[derive(Debug, Default)]
pub struct WebmDemuxer {
    buf: Vec<u8>,
    /// Read index into `buf`; bytes before it are consumed and dropped on the next push.
    pos: usize,
    /// Absolute stream offset of `buf[0]`.
    base: u64,
    /// Bytes of a skipped element not yet received; while > 0, `buf` holds nothing unread.
    skip: u64,
    stack: Vec<Open>,
    header_seen: bool,
    track: Option<TrackInfo>,
    track_number: u64,
    timecode_scale: u64,
    cluster_timecode: u64,
    packets: VecDeque<Packet>,
    failed: Option<Error>,
}

/// How a step of the parse loop ended.
enum Step {
    Progress,
    NeedMore,
}

impl WebmDemuxer {
    pub fn new() -> Self {
        WebmDemuxer {
            timecode_scale: 1_000_000,
            ..Default::default()
        }
    }

    fn abs(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Forgets the recording but keeps the unread bytes (which start with its successor).
    fn restart(&mut self) {
        self.stack.clear();
        self.header_seen = false;
        self.track = None;
        self.track_number = 0;
        self.timecode_scale = 1_000_000;
        self.cluster_timecode = 0;
    }

    fn step(&mut self) -> Result<Step> {
        if self.skip > 0 {
            return Ok(Step::NeedMore);
        }
        let cur = self.abs();
        while self.stack.last().is_some_and(|o| o.end == Some(cur)) {
            self.stack.pop();
        }
        let Some((eid, size, hlen)) = read_element_header(&self.buf[self.pos..])? else {
            return Ok(Step::NeedMore);
        };
        if eid == id::EBML && self.header_seen {
            self.restart();
            return Err(Error::ResetRequired);
        }
        if !self.header_seen && eid != id::EBML {
            return Err(Error::Malformed("missing EBML header"));
        }
        // An unknown-size master ends where an element that cannot be its child begins.
        while let Some(top) = self.stack.last() {
            let closes = top.end.is_none()
                && match top.id {
                    id::CLUSTER => is_segment_level(eid),
                    id::BLOCK_GROUP => is_segment_level(eid) || is_cluster_child(eid),
                    id::SEGMENT => eid == id::SEGMENT,
                    _ => false,
                };
            if !closes {
                break;
            }
            self.stack.pop();
        }
        let body_start = cur + hlen as u64;
        let end = size.map(|s| body_start + s);
        if let (Some(end), Some(parent_end)) = (end, self.stack.last().and_then(|o| o.end)) {
            if end > parent_end {
                return Err(Error::Malformed("element overflows its parent"));
            }
        }
        match eid {
            id::SEGMENT | id::CLUSTER | id::BLOCK_GROUP => {
                if eid == id::CLUSTER {
                    if self.track.is_none() {
                        return Err(Error::Malformed("cluster before tracks"));
                    }
                    self.cluster_timecode = 0;
                }
                self.pos += hlen;
                self.stack.push(Open { id: eid, end });
                Ok(Step::Progress)
            }
            id::EBML | id::INFO | id::TRACKS | id::TIMECODE => {
                self.read_whole(hlen, size, MAX_HEADER_ELEMENT, |d, body| match eid {
                    id::EBML => d.on_ebml_header(body),
                    id::INFO => d.on_info(body),
                    id::TRACKS => d.on_tracks(body),
                    _ => {
                        d.cluster_timecode = read_uint(body)?;
                        Ok(())
                    }
                })
            }
            id::SIMPLE_BLOCK | id::BLOCK => {
                self.read_whole(hlen, size, MAX_BLOCK, |d, body| d.on_block(body))
            }
            _ => {
                let size = size.ok_or(Error::Malformed("unknown-size element"))?;
                let avail = (self.buf.len() - self.pos - hlen) as u64;
                if avail >= size {
                    // Fits in usize: it is at most the buffered length.
                    self.pos += hlen + size as usize;
                } else {
                    self.pos = self.buf.len();
                    self.skip = size - avail;
                }
                Ok(Step::Progress)
            }
        }
    }

    fn read_whole(
        &mut self,
        hlen: usize,
        size: Option<u64>,
        limit: u64,
        f: impl FnOnce(&mut Self, &[u8]) -> Result<()>,
    ) -> Result<Step> {
        let size = size.ok_or(Error::Malformed("unknown-size element"))?;
        if size > limit {
            return Err(Error::Limit("webm element size"));
        }
        // `size <= limit`, so the cast cannot truncate.
        let total = hlen + size as usize;
        if self.buf.len() - self.pos < total {
            return Ok(Step::NeedMore);
        }
        let body = std::mem::take(&mut self.buf);
        let r = f(self, &body[self.pos + hlen..self.pos + total]);
        self.buf = body;
        self.pos += total;
        r.map(|()| Step::Progress)
    }

    fn on_ebml_header(&mut self, body: &[u8]) -> Result<()> {
        for child in Children::new(body) {
            let (cid, data) = child?;
            if cid == id::DOC_TYPE {
                let doc = data.split(|&b| b == 0).next().unwrap_or_default();
                if doc != b"webm" && doc != b"matroska" {
                    return Err(Error::Unsupported("EBML doctype"));
                }
            }
        }
        self.header_seen = true;
        Ok(())
    }

    fn on_info(&mut self, body: &[u8]) -> Result<()> {
        for child in Children::new(body) {
            let (cid, data) = child?;
            if cid == id::TIMECODE_SCALE {
                self.timecode_scale = read_uint(data)?;
                if self.timecode_scale == 0 {
                    return Err(Error::Malformed("zero timecode scale"));
                }
            }
        }
        Ok(())
    }

    fn on_tracks(&mut self, body: &[u8]) -> Result<()> {
        if self.track.is_some() {
            // A second Tracks element in one segment: keep the first decision.
            return Ok(());
        }
        let mut saw_track = false;
        for child in Children::new(body) {
            let (cid, entry) = child?;
            if cid != id::TRACK_ENTRY {
                continue;
            }
            saw_track = true;
            let t = TrackEntry::parse(entry)?;
            if t.track_type == TRACK_TYPE_AUDIO {
                self.track = Some(t.track_info()?);
                self.track_number = t.number;
                return Ok(());
            }
        }
        Err(if saw_track {
            Error::Unsupported("no audio track")
        } else {
            Error::Malformed("no tracks")
        })
    }

    fn on_block(&mut self, body: &[u8]) -> Result<()> {
        let Some(track) = &self.track else {
            return Err(Error::Malformed("block before tracks"));
        };
        let (number, n) = read_vint(body)?.ok_or(Error::Malformed("block track number"))?;
        if number != self.track_number {
            return Ok(()); // another track (video, a second audio track): not ours
        }
        let rest = &body[n..];
        if rest.len() < 3 {
            return Err(Error::Malformed("short block"));
        }
        let rel = i16::from_be_bytes([rest[0], rest[1]]);
        let flags = rest[2];
        let data = &rest[3..];
        let ticks = (self.cluster_timecode as i64).saturating_add(i64::from(rel));
        let pts = u64::try_from(ticks).ok().map(|t| {
            let ns = u128::from(t) * u128::from(self.timecode_scale);
            (ns * u128::from(track.sample_rate) / 1_000_000_000) as u64
        });
        let before = self.packets.len();
        for_each_laced_frame(flags, data, |frame| {
            self.packets.push_back(Packet {
                data: frame.to_vec(),
                pts: None,
            })
        })?;
        if let Some(first) = self.packets.get_mut(before) {
            first.pts = pts;
        }
        Ok(())
    }
}

fn is_cluster_child(i: u32) -> bool {
    matches!(i, id::TIMECODE | id::SIMPLE_BLOCK | id::BLOCK_GROUP)
}

impl Demuxer for WebmDemuxer {
    fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        if self.skip > 0 {
            let n = self.skip.min(bytes.len() as u64);
            self.skip -= n;
            self.base += n;
            // `n <= bytes.len()`.
            bytes = &bytes[n as usize..];
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
            match self.step() {
                Ok(Step::Progress) => {}
                Ok(Step::NeedMore) => return Ok(None),
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
        if self.packets.is_empty() && self.pos < self.buf.len() {
            self.failed = Some(Error::Malformed("stream ends inside an element"));
            return Err(Error::Malformed("stream ends inside an element"));
        }
        Ok(self.packets.pop_front())
    }
}

/// The fields of a TrackEntry we use.
#[derive(Default)]
struct TrackEntry<'a> {
    number: u64,
    track_type: u64,
    codec_id: &'a [u8],
    codec_private: Option<&'a [u8]>,
    codec_delay_ns: u64,
    sampling_frequency: f64,
    channels: u64,
    bit_depth: u64,
}

impl<'a> TrackEntry<'a> {
    fn parse(entry: &'a [u8]) -> Result<Self> {
        let mut t = TrackEntry {
            sampling_frequency: 8000.0,
            channels: 1,
            ..Default::default()
        };
        for child in Children::new(entry) {
            let (cid, data) = child?;
            match cid {
                id::TRACK_NUMBER => t.number = read_uint(data)?,
                id::TRACK_TYPE => t.track_type = read_uint(data)?,
                id::CODEC_ID => t.codec_id = data.split(|&b| b == 0).next().unwrap_or_default(),
                id::CODEC_PRIVATE => t.codec_private = Some(data),
                id::CODEC_DELAY => t.codec_delay_ns = read_uint(data)?,
                id::AUDIO => {
                    for a in Children::new(data) {
                        let (aid, adata) = a?;
                        match aid {
                            id::SAMPLING_FREQUENCY => t.sampling_frequency = read_float(adata)?,
                            id::CHANNELS => t.channels = read_uint(adata)?,
                            id::BIT_DEPTH => t.bit_depth = read_uint(adata)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(t)
    }

    fn track_info(&self) -> Result<TrackInfo> {
        let channels = u16::try_from(self.channels)
            .ok()
            .filter(|c| (1..=2).contains(c))
            .ok_or(Error::Unsupported("channel count"))?;
        let rate = self.sampling_frequency;
        if !(rate.is_finite() && (8_000.0..=192_000.0).contains(&rate)) {
            return Err(Error::Unsupported("sample rate"));
        }
        let sample_rate = rate.round() as u32;
        match self.codec_id {
            b"A_OPUS" => match self.codec_private {
                Some(head) => parse_opus_head(head),
                None => Ok(TrackInfo {
                    codec: Codec::Opus {
                        channels,
                        pre_skip: u16::try_from(self.codec_delay_ns * 48 / 1_000_000)
                            .map_err(|_| Error::Malformed("codec delay"))?,
                    },
                    sample_rate: 48_000,
                    channels,
                }),
            },
            b"A_PCM/FLOAT/IEEE" if self.bit_depth == 32 || self.bit_depth == 0 => Ok(TrackInfo {
                codec: Codec::PcmF32 {
                    sample_rate,
                    channels,
                },
                sample_rate,
                channels,
            }),
            b"A_PCM/INT/LIT" if self.bit_depth == 16 => Ok(TrackInfo {
                codec: Codec::PcmS16 {
                    sample_rate,
                    channels,
                },
                sample_rate,
                channels,
            }),
            b"A_PCM/FLOAT/IEEE" | b"A_PCM/INT/LIT" => Err(Error::Unsupported("pcm bit depth")),
            b"A_VORBIS" => Err(Error::Unsupported("vorbis")),
            _ => Err(Error::Unsupported("audio codec")),
        }
    }
}

/// Calls `f` for each frame of a (possibly laced) block payload.
fn for_each_laced_frame(flags: u8, data: &[u8], mut f: impl FnMut(&[u8])) -> Result<()> {
    let lacing = (flags >> 1) & 3;
    if lacing == 0 {
        f(data);
        return Ok(());
    }
    let (&count, mut rest) = data.split_first().ok_or(Error::Malformed("laced block"))?;
    let frames = usize::from(count) + 1;
    let mut sizes = [0usize; 256];
    match lacing {
        1 => {
            // Xiph: each size is a run of 255s plus a final byte.
            for size in sizes.iter_mut().take(frames - 1) {
                loop {
                    let (&b, r) = rest.split_first().ok_or(Error::Malformed("xiph lace"))?;
                    rest = r;
                    *size += usize::from(b);
                    if b != 255 {
                        break;
                    }
                }
            }
        }
        3 => {
            // EBML: first size unsigned, the others signed differences from the previous.
            let mut prev = 0i64;
            for (i, size) in sizes.iter_mut().take(frames - 1).enumerate() {
                let (v, n) = read_vint(rest)?.ok_or(Error::Malformed("ebml lace"))?;
                rest = &rest[n..];
                let v = v as i64;
                let cur = if i == 0 {
                    v
                } else {
                    let bias = (1i64 << (7 * n - 1)) - 1;
                    prev + v - bias
                };
                *size = usize::try_from(cur).map_err(|_| Error::Malformed("ebml lace"))?;
                prev = cur;
            }
        }
        _ => {
            // Fixed: equal sizes.
            if rest.len() % frames != 0 {
                return Err(Error::Malformed("fixed lace"));
            }
            sizes[..frames - 1].fill(rest.len() / frames);
        }
    }
    let laced: usize = sizes[..frames - 1].iter().sum();
    if laced > rest.len() {
        return Err(Error::Malformed("lace sizes exceed block"));
    }
    sizes[frames - 1] = rest.len() - laced;
    for &size in &sizes[..frames] {
        let (frame, r) = rest.split_at(size);
        f(frame);
        rest = r;
    }
    Ok(())
}

/// Reads an element header: `Ok(None)` if incomplete; size `None` means unknown.
fn read_element_header(b: &[u8]) -> Result<Option<(u32, Option<u64>, usize)>> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    let idlen = first.leading_zeros() as usize + 1;
    if idlen > 4 {
        return Err(Error::Malformed("element id"));
    }
    if b.len() < idlen {
        return Ok(None);
    }
    let eid = b[..idlen]
        .iter()
        .fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    let Some((size, slen)) = read_vint(&b[idlen..])? else {
        return Ok(None);
    };
    let unknown = size == (1u64 << (7 * slen)) - 1;
    Ok(Some((eid, (!unknown).then_some(size), idlen + slen)))
}

/// Reads a variable-length integer with its length marker removed: `Ok(None)` if incomplete.
fn read_vint(b: &[u8]) -> Result<Option<(u64, usize)>> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return Err(Error::Malformed("vint"));
    }
    if b.len() < len {
        return Ok(None);
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let v = b[1..len]
        .iter()
        .fold(u64::from(first & mask), |acc, &x| (acc << 8) | u64::from(x));
    Ok(Some((v, len)))
}

fn read_uint(b: &[u8]) -> Result<u64> {
    if b.len() > 8 {
        return Err(Error::Malformed("uint element"));
    }
    Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

fn read_float(b: &[u8]) -> Result<f64> {
    match b.len() {
        0 => Ok(0.0),
        4 => Ok(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        8 => Ok(f64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])),
        _ => Err(Error::Malformed("float element")),
    }
}

/// Iterates the children of a complete master element's body.
struct Children<'a> {
    rest: &'a [u8],
}

impl<'a> Children<'a> {
    fn new(body: &'a [u8]) -> Self {
        Children { rest: body }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = match read_element_header(self.rest) {
            Ok(Some((eid, Some(size), hlen))) if (self.rest.len() - hlen) as u64 >= size => {
                // `size` fits: it is at most the remaining length.
                let (data, rest) = self.rest[hlen..].split_at(size as usize);
                self.rest = rest;
                Ok((eid, data))
            }
            Ok(_) => Err(Error::Malformed("truncated child element")),
            Err(e) => Err(e),
        };
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes an element with a minimal-length known size (or unknown if `None`).
    pub(crate) fn el(eid: u32, body: &[u8], known: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let idb = eid.to_be_bytes();
        let skip = idb.iter().take_while(|&&b| b == 0).count();
        v.extend_from_slice(&idb[skip..]);
        if known {
            let len = body.len() as u64;
            v.push(0x01); // 8-byte size
            v.extend_from_slice(&len.to_be_bytes()[1..]);
        } else {
            v.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        v.extend_from_slice(body);
        v
    }

    fn uint_el(eid: u32, v: u64) -> Vec<u8> {
        el(eid, &v.to_be_bytes(), true)
    }

    pub(crate) fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.push(1);
        h.push(channels);
        h.extend_from_slice(&pre_skip.to_le_bytes());
        h.extend_from_slice(&48_000u32.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0]);
        h
    }

    pub(crate) fn header(codec: &[u8], private: Option<&[u8]>, track_type: u64) -> Vec<u8> {
        let mut out = el(id::EBML, &el(id::DOC_TYPE, b"webm", true), true);
        out.extend(el(id::SEGMENT, &[], false));
        out.extend(el(id::INFO, &uint_el(id::TIMECODE_SCALE, 1_000_000), true));
        let mut entry = uint_el(id::TRACK_NUMBER, 1);
        entry.extend(uint_el(id::TRACK_TYPE, track_type));
        entry.extend(el(id::CODEC_ID, codec, true));
        if let Some(p) = private {
            entry.extend(el(id::CODEC_PRIVATE, p, true));
        }
        let mut audio = el(id::SAMPLING_FREQUENCY, &48_000f64.to_be_bytes(), true);
        audio.extend(uint_el(id::CHANNELS, 1));
        audio.extend(uint_el(id::BIT_DEPTH, 32));
        entry.extend(el(id::AUDIO, &audio, true));
        out.extend(el(id::TRACKS, &el(id::TRACK_ENTRY, &entry, true), true));
        out
    }

    pub(crate) fn cluster(tc: u64, blocks: &[&[u8]]) -> Vec<u8> {
        let mut out = el(id::CLUSTER, &[], false);
        out.extend(uint_el(id::TIMECODE, tc));
        for (i, b) in blocks.iter().enumerate() {
            let mut body = vec![0x81, 0, (i * 20) as u8, 0x80];
            body.extend_from_slice(b);
            out.extend(el(id::SIMPLE_BLOCK, &body, true));
        }
        out
    }

    fn drain(d: &mut WebmDemuxer) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(p) = d.next_packet()? {
            out.push(p.data);
        }
        Ok(out)
    }

    fn stream() -> Vec<u8> {
        let mut s = header(b"A_OPUS", Some(&opus_head(1, 312)), 2);
        s.extend(el(0xEC, &[0; 300], true)); // Void
        s.extend(cluster(0, &[b"aaa", b"bbbb"]));
        s.extend(el(id::CUES, &[1, 2, 3], true));
        s.extend(cluster(1000, &[b"c"]));
        s
    }

    #[test]
    fn parses_unknown_size_clusters_at_every_split() {
        let s = stream();
        let want: Vec<Vec<u8>> = vec![b"aaa".to_vec(), b"bbbb".to_vec(), b"c".to_vec()];
        for step in [1, 2, 3, 7, 64, s.len()] {
            let mut d = WebmDemuxer::new();
            let mut got = Vec::new();
            for chunk in s.chunks(step) {
                d.push(chunk).unwrap();
                got.extend(drain(&mut d).unwrap());
            }
            assert!(d.finish().unwrap().is_none());
            assert_eq!(got, want, "step {step}");
            assert_eq!(
                d.track().unwrap().codec,
                Codec::Opus {
                    channels: 1,
                    pre_skip: 312
                }
            );
        }
    }

    #[test]
    fn skips_without_buffering() {
        let mut s = header(b"A_OPUS", Some(&opus_head(1, 0)), 2);
        s.extend(el(id::TAGS, &vec![7; 200_000], true));
        let mut d = WebmDemuxer::new();
        for chunk in s.chunks(1000) {
            d.push(chunk).unwrap();
            drain(&mut d).unwrap();
            assert!(d.buf.len() < 2000);
        }
    }

    #[test]
    fn lacing() {
        let mut got = Vec::new();
        // Xiph: 3 frames of 2, 256, rest.
        let mut data = vec![2, 2, 255, 1];
        data.extend(vec![1; 2]);
        data.extend(vec![2; 256]);
        data.extend(vec![3; 5]);
        for_each_laced_frame(0x02, &data, |f| got.push(f.len())).unwrap();
        assert_eq!(got, [2, 256, 5]);
        got.clear();
        // EBML: sizes 3, 5 (diff +2), rest.
        let mut data = vec![2, 0x83, 0x80 | (63 + 2)];
        data.extend(vec![0; 3 + 5 + 4]);
        for_each_laced_frame(0x06, &data, |f| got.push(f.len())).unwrap();
        assert_eq!(got, [3, 5, 4]);
        got.clear();
        for_each_laced_frame(0x04, &[1, 9, 9, 8, 8], |f| got.push(f.len())).unwrap();
        assert_eq!(got, [2, 2]);
        assert!(for_each_laced_frame(0x04, &[1, 9, 9, 8], |_| {}).is_err());
        assert!(for_each_laced_frame(0x02, &[1, 255, 255], |_| {}).is_err());
    }

    #[test]
    fn rejects_unsupported_and_hostile_input() {
        let check = |s: Vec<u8>| {
            let mut d = WebmDemuxer::new();
            d.push(&s).unwrap();
            drain(&mut d).unwrap_err()
        };
        assert_eq!(
            check(header(b"A_VORBIS", None, 2)),
            Error::Unsupported("vorbis")
        );
        assert_eq!(
            check(header(b"V_VP8", None, 1)),
            Error::Unsupported("no audio track")
        );
        let mut huge = header(b"A_OPUS", Some(&opus_head(1, 0)), 2);
        huge.extend(el(id::CLUSTER, &[], false));
        huge.extend([0xA3, 0x01, 0, 0, 0, 0x10, 0, 0, 0]); // 256 MiB SimpleBlock
        assert_eq!(check(huge), Error::Limit("webm element size"));
        assert_eq!(
            check(b"\x1A\x45\xDF\xA3\x01\xFF\xFF\xFF\xFF\xFF\xFF\xFF".to_vec()),
            Error::Malformed("unknown-size element")
        );
        assert_eq!(check(vec![0; 16]), Error::Malformed("element id"));
    }

    #[test]
    fn new_ebml_header_signals_reset() {
        let mut s = stream();
        s.extend(header(b"A_OPUS", Some(&opus_head(2, 0)), 2));
        s.extend(cluster(0, &[b"d"]));
        let mut d = WebmDemuxer::new();
        d.push(&s).unwrap();
        assert_eq!(drain(&mut d).unwrap_err(), Error::ResetRequired);
        assert!(d.track().is_none());
        assert_eq!(drain(&mut d).unwrap(), vec![b"d".to_vec()]);
        assert_eq!(d.track().unwrap().channels, 2);
    }
}
