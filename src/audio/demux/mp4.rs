//! Push-based ISO-BMFF (MP4) demuxer for browser MediaRecorder output: Chrome's Opus-in-MP4
//! and Safari's AAC-in-MP4, both *fragmented* (`ftyp`+`moov`, then `moof`+`mdat` pairs).
//!
//! Design decision: only header boxes (`moov`, `moof`) are buffered whole, and they are bounded
//! by [`MAX_HEADER_BOX`]. Each `moof` is turned into a queue of samples with *absolute* stream
//! offsets; the following `mdat` is then streamed and sliced into packets as its bytes arrive,
//! so at most one sample is held beyond what the caller has just pushed. Everything else (`free`,
//! `sidx`, unknown boxes) is skipped without being stored.
//!
//! Timestamps come from `tfdt` plus the durations of the preceding samples of the same fragment:
//! Chrome writes a wrong duration for the last sample of every `trun` (1008 instead of 2880), so
//! a fragment's end time is never carried into the next one when a `tfdt` is present.
//!
//! A non-fragmented file is supported when its `moov` comes before its `mdat` ("fast start"):
//! the sample tables (`stsz`/`stsc`/`stco`/`stts`) become the same sample queue. An `mdat`
//! before the `moov` would need the whole file buffered and is `Unsupported`.

use std::collections::VecDeque;

use super::Demuxer;
use crate::audio::decode::aac::AudioSpecificConfig;
use crate::audio::{Codec, Error, Packet, Result, TrackInfo};

/// Largest `moov` or `moof` buffered whole. Browsers write a few hundred bytes; a larger
/// declared size is an attack or a non-browser file and is refused as `Error::Limit`.
pub const MAX_HEADER_BOX: u64 = 1 << 20;
/// Largest single sample (compressed audio frames are a few KiB at most).
pub const MAX_SAMPLE: u32 = 1 << 20;
/// Most samples one `moof` may describe (a 1 s browser fragment has about 50).
pub const MAX_FRAGMENT_SAMPLES: usize = 1 << 13;
/// Most samples a non-fragmented `moov` may describe (about 100 minutes of AAC at 44.1 kHz);
/// bounds the queue built from its sample tables.
pub const MAX_TABLE_SAMPLES: usize = 1 << 18;

/// Opus always decodes at 48 kHz; dOps pre-skip and our pts are in these units.
const OPUS_RATE: u32 = 48_000;

/// A sample to slice out of an `mdat`: absolute stream offset, size, pts in sample-rate units.
#[derive(Debug, Clone, Copy)]
struct Sample {
    offset: u64,
    size: u32,
    pts: u64,
}

/// The selected audio track, from `moov`.
#[derive(Debug, Clone)]
struct Track {
    info: TrackInfo,
    id: u32,
    timescale: u32,
    /// `trex` defaults, used when neither `tfhd` nor `trun` carries a value.
    default_duration: u32,
    default_size: u32,
}

impl Track {
    /// Converts a media time in track timescale units to sample-rate units.
    fn scale(&self, t: u64) -> u64 {
        if self.timescale == self.info.sample_rate {
            t
        } else {
            let v = u128::from(t) * u128::from(self.info.sample_rate) / u128::from(self.timescale);
            u64::try_from(v).unwrap_or(u64::MAX)
        }
    }
}

/// Where the parser is in the top-level box sequence.
#[derive(Debug, Clone, Copy)]
enum State {
    /// The next byte starts a top-level box header.
    Header,
    /// Discarding a box we do not need, up to an absolute offset (`None`: to end of stream).
    Skip { end: Option<u64> },
    /// Inside an `mdat` payload, slicing queued samples out of it.
    Mdat { end: Option<u64> },
}

/// Outcome of one parsing step.
enum Step {
    Packet(Packet),
    /// Progress was made; step again.
    Progress,
    NeedMore,
    /// A per-sample (recoverable) error.
    BadSample(Error),
}

/// Incremental fragmented-MP4 demuxer. See the module docs.
pub struct Mp4Demuxer {
    /// Pushed bytes; `buf[head..]` is not consumed yet.
    buf: Vec<u8>,
    head: usize,
    /// Absolute stream offset of `buf[head]`.
    pos: u64,
    state: State,
    /// Whether a first box header was accepted: random bytes are refused right there.
    seen_box: bool,
    track: Option<Track>,
    samples: VecDeque<Sample>,
    /// End of the last fragment in track timescale units, for a `traf` without `tfdt`.
    next_time: u64,
    /// A recoverable error found while parsing a header, reported by the next `next_packet`.
    pending_error: Option<Error>,
    /// A fatal error: every later call returns it.
    failed: Option<Error>,
}

impl Default for Mp4Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mp4Demuxer {
    /// A demuxer expecting the start of a recording (`ftyp`, then `moov`).
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            head: 0,
            pos: 0,
            state: State::Header,
            seen_box: false,
            track: None,
            samples: VecDeque::new(),
            next_time: 0,
            pending_error: None,
            failed: None,
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        self.pos += n as u64;
    }

    /// Bytes available beyond `pos`, but at most up to `end`.
    fn available_until(&self, end: Option<u64>) -> usize {
        let avail = self.available().len();
        match end {
            Some(end) => avail.min(usize::try_from(end.saturating_sub(self.pos)).unwrap_or(avail)),
            None => avail,
        }
    }

    fn step(&mut self) -> Result<Step> {
        if let Some(e) = self.pending_error.take() {
            return Ok(Step::BadSample(e));
        }
        match self.state {
            State::Header => self.step_header(),
            State::Skip { end } => {
                let n = self.available_until(end);
                self.consume(n);
                if Some(self.pos) == end {
                    self.state = State::Header;
                    Ok(Step::Progress)
                } else {
                    Ok(Step::NeedMore)
                }
            }
            State::Mdat { end } => self.step_mdat(end),
        }
    }

    fn step_mdat(&mut self, end: Option<u64>) -> Result<Step> {
        let limit = end.unwrap_or(u64::MAX);
        let Some(&sample) = self.samples.front() else {
            return self.finish_mdat(end);
        };
        if sample.offset >= limit {
            // Belongs to a later mdat (non-fragmented files may have several).
            return self.finish_mdat(end);
        }
        let sample_end = sample.offset.saturating_add(u64::from(sample.size));
        if sample.offset < self.pos || sample_end > limit {
            self.samples.pop_front();
            return Ok(Step::BadSample(Error::Malformed(
                "mp4 sample outside its mdat",
            )));
        }
        let gap = self.available_until(Some(sample.offset));
        self.consume(gap);
        if self.pos < sample.offset {
            return Ok(Step::NeedMore);
        }
        let size = sample.size as usize;
        if self.available().len() < size {
            return Ok(Step::NeedMore);
        }
        let data = self.available()[..size].to_vec();
        self.consume(size);
        self.samples.pop_front();
        Ok(Step::Packet(Packet {
            data,
            pts: Some(sample.pts),
        }))
    }

    /// No more queued samples in this mdat: skip the rest of it.
    fn finish_mdat(&mut self, end: Option<u64>) -> Result<Step> {
        self.state = State::Skip { end };
        Ok(Step::Progress)
    }

    fn step_header(&mut self) -> Result<Step> {
        let Some(header) = BoxHeader::parse(self.available())? else {
            return Ok(Step::NeedMore);
        };
        let start = self.pos;
        // Checked lazily: a moov/moof with an absurd size must be a `Limit`, not an overflow.
        let end = || match header.size {
            Some(size) => start
                .checked_add(size)
                .map(Some)
                .ok_or(Error::Malformed("mp4 box size overflows")),
            None => Ok(None),
        };
        if !self.seen_box {
            // Browsers start with ftyp; a moof here is reported as "moof before moov" below.
            if !matches!(
                &header.kind,
                b"ftyp" | b"styp" | b"moov" | b"moof" | b"free" | b"skip" | b"wide"
            ) {
                return Err(Error::Malformed("mp4 stream does not start with ftyp"));
            }
            self.seen_box = true;
        }
        match &header.kind {
            b"moov" | b"moof" => {
                if header.kind == *b"moof" && self.track.is_none() {
                    return Err(Error::Malformed("mp4 moof before moov"));
                }
                let size = header
                    .size
                    .ok_or(Error::Malformed("mp4 moov/moof without a size"))?;
                if size > MAX_HEADER_BOX {
                    return Err(Error::Limit("mp4 moov/moof larger than 1 MiB"));
                }
                // size <= 1 MiB, so it fits in usize.
                let size = size as usize;
                if self.available().len() < size {
                    return Ok(Step::NeedMore);
                }
                let payload = &self.buf[self.head + header.header_len..self.head + size];
                if header.kind == *b"moov" {
                    let (track, samples) = parse_moov(payload)?;
                    self.track = Some(track);
                    self.samples = samples;
                    self.next_time = 0;
                } else {
                    let track = self
                        .track
                        .as_ref()
                        .ok_or(Error::Malformed("mp4 moof before moov"))?;
                    let (samples, next_time) = parse_moof(track, self.next_time, start, payload)?;
                    self.next_time = next_time;
                    if !self.samples.is_empty() {
                        self.pending_error =
                            Some(Error::Malformed("mp4 fragment samples missing from mdat"));
                    }
                    self.samples = samples;
                }
                self.consume(size);
            }
            b"mdat" => {
                if self.track.is_none() {
                    return Err(Error::Unsupported(
                        "mp4 with mdat before moov (not fast-start)",
                    ));
                }
                let end = end()?;
                self.consume(header.header_len);
                self.state = State::Mdat { end };
            }
            _ => {
                let end = end()?;
                self.consume(header.header_len);
                self.state = State::Skip { end };
            }
        }
        Ok(Step::Progress)
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e);
        e
    }
}

/// Turns a `moof` into the queue of `track`'s samples; also returns the fragment's end time
/// (track timescale), used only if the next fragment lacks a `tfdt`.
fn parse_moof(
    track: &Track,
    mut next_time: u64,
    moof_start: u64,
    payload: &[u8],
) -> Result<(VecDeque<Sample>, u64)> {
    let mut samples = VecDeque::new();
    for child in Boxes::new(payload) {
        let (kind, traf) = child?;
        if kind != *b"traf" {
            continue;
        }
        let mut tfhd = None;
        let mut time = None;
        for child in Boxes::new(traf) {
            let (kind, body) = child?;
            match &kind {
                b"tfhd" => tfhd = Some(Tfhd::parse(body)?),
                b"tfdt" => {
                    let mut r = Reader::new(body);
                    let version = r.u8()?;
                    r.skip(3)?;
                    time = Some(if version == 1 {
                        r.u64()?
                    } else {
                        u64::from(r.u32()?)
                    });
                }
                _ => {}
            }
        }
        let tfhd = tfhd.ok_or(Error::Malformed("mp4 traf without tfhd"))?;
        if tfhd.track_id != track.id {
            continue;
        }
        let base = tfhd.base_data_offset.unwrap_or(moof_start);
        let default_duration = tfhd.default_duration.unwrap_or(track.default_duration);
        let default_size = tfhd.default_size.unwrap_or(track.default_size);
        let mut t = time.unwrap_or(next_time);
        let mut data = base;
        for child in Boxes::new(traf) {
            let (kind, body) = child?;
            if kind != *b"trun" {
                continue;
            }
            let mut r = Reader::new(body);
            let flags = r.u32()? & 0x00ff_ffff;
            let count = r.u32()? as usize;
            if flags & 0x1 != 0 {
                let offset = i64::from(r.u32()? as i32);
                data = base
                    .checked_add_signed(offset)
                    .ok_or(Error::Malformed("mp4 trun data offset out of range"))?;
            }
            if flags & 0x4 != 0 {
                r.skip(4)?; // first_sample_flags
            }
            let fields = [0x100, 0x200, 0x400, 0x800]
                .iter()
                .filter(|&&f| flags & f != 0)
                .count();
            if samples.len() + count > MAX_FRAGMENT_SAMPLES {
                return Err(Error::Limit("mp4 fragment with too many samples"));
            }
            if count * fields * 4 > r.remaining() {
                return Err(Error::Malformed("mp4 trun shorter than its sample count"));
            }
            for _ in 0..count {
                let duration = if flags & 0x100 != 0 {
                    r.u32()?
                } else {
                    default_duration
                };
                let size = if flags & 0x200 != 0 {
                    r.u32()?
                } else {
                    default_size
                };
                if flags & 0x400 != 0 {
                    r.skip(4)?;
                }
                if flags & 0x800 != 0 {
                    r.skip(4)?;
                }
                push_sample(&mut samples, track, data, size, t)?;
                data = data.saturating_add(u64::from(size));
                t = t.saturating_add(u64::from(duration));
            }
        }
        next_time = t;
    }
    Ok((samples, next_time))
}

/// Queues a sample unless it is empty (an empty sample carries no audio).
fn push_sample(
    samples: &mut VecDeque<Sample>,
    track: &Track,
    offset: u64,
    size: u32,
    time: u64,
) -> Result<()> {
    if size > MAX_SAMPLE {
        return Err(Error::Limit("mp4 sample larger than 1 MiB"));
    }
    if size > 0 {
        samples.push_back(Sample {
            offset,
            size,
            pts: track.scale(time),
        });
    }
    Ok(())
}

impl Demuxer for Mp4Demuxer {
    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn track(&self) -> Option<&TrackInfo> {
        self.track.as_ref().map(|t| &t.info)
    }

    fn next_packet(&mut self) -> Result<Option<Packet>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        loop {
            match self.step() {
                Ok(Step::Packet(p)) => return Ok(Some(p)),
                Ok(Step::Progress) => {}
                Ok(Step::NeedMore) => return Ok(None),
                Ok(Step::BadSample(e)) => return Err(e),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn finish(&mut self) -> Result<Option<Packet>> {
        if let Some(p) = self.next_packet()? {
            return Ok(Some(p));
        }
        if !self.seen_box {
            // Nothing but (possibly) a partial first header: an empty stream is not an error.
            return if self.available().is_empty() {
                Ok(None)
            } else {
                Err(self.fail(Error::Malformed("truncated mp4 box header")))
            };
        }
        let truncated = match self.state {
            State::Header => !self.available().is_empty(),
            State::Skip { end } | State::Mdat { end } => end.is_some_and(|end| end > self.pos),
        };
        if truncated {
            return Err(self.fail(Error::Malformed("truncated mp4 box")));
        }
        if self.track.is_none() {
            return Err(self.fail(Error::Malformed("mp4 ended without a moov")));
        }
        if !self.samples.is_empty() {
            self.samples.clear();
            return Err(Error::Malformed("mp4 ended before all samples arrived"));
        }
        Ok(None)
    }
}

/// A parsed box header.
struct BoxHeader {
    kind: [u8; 4],
    /// Total box size including the header; `None` means "to the end of the stream".
    size: Option<u64>,
    header_len: usize,
}

impl BoxHeader {
    /// `Ok(None)` when `data` does not yet hold the whole header.
    fn parse(data: &[u8]) -> Result<Option<Self>> {
        if data.len() < 8 {
            return Ok(None);
        }
        let size32 = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let kind = [data[4], data[5], data[6], data[7]];
        // Real box types are printable four-character codes; this rejects random bytes early.
        if !kind
            .iter()
            .all(|&b| b.is_ascii_graphic() || b == b' ' || b == 0xa9)
        {
            return Err(Error::Malformed("not an mp4 box header"));
        }
        let (size, header_len) = match size32 {
            0 => (None, 8),
            1 => {
                if data.len() < 16 {
                    return Ok(None);
                }
                let mut large = [0u8; 8];
                large.copy_from_slice(&data[8..16]);
                (Some(u64::from_be_bytes(large)), 16)
            }
            n => (Some(u64::from(n)), 8),
        };
        if size.is_some_and(|s| s < header_len as u64) {
            return Err(Error::Malformed("mp4 box size smaller than its header"));
        }
        Ok(Some(Self {
            kind,
            size,
            header_len,
        }))
    }
}

/// Iterates over the child boxes of a fully buffered parent payload.
struct Boxes<'a> {
    data: &'a [u8],
}

impl<'a> Boxes<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Boxes<'a> {
    type Item = Result<([u8; 4], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let result = match BoxHeader::parse(self.data) {
            Ok(Some(h)) => {
                let size = match h.size {
                    None => Some(self.data.len()),
                    Some(s) => usize::try_from(s).ok().filter(|&s| s <= self.data.len()),
                };
                match size {
                    Some(size) => {
                        let body = &self.data[h.header_len..size];
                        self.data = &self.data[size..];
                        Ok((h.kind, body))
                    }
                    None => Err(Error::Malformed("mp4 child box overruns its parent")),
                }
            }
            Ok(None) => Err(Error::Malformed("mp4 child box header truncated")),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.data = &[];
        }
        Some(result)
    }
}

/// Finds the first child box of a kind.
fn find_child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>> {
    for child in Boxes::new(data) {
        let (k, body) = child?;
        if k == *kind {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

/// Big-endian cursor over a buffered box body; running past the end is `Malformed`.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn remaining(&self) -> usize {
        self.data.len()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::Malformed("mp4 box truncated"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.bytes(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// The fields of a `tfhd` we use.
struct Tfhd {
    track_id: u32,
    base_data_offset: Option<u64>,
    default_duration: Option<u32>,
    default_size: Option<u32>,
}

impl Tfhd {
    fn parse(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let flags = r.u32()? & 0x00ff_ffff;
        let track_id = r.u32()?;
        let base_data_offset = if flags & 0x1 != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        if flags & 0x2 != 0 {
            r.skip(4)?; // sample_description_index
        }
        let default_duration = if flags & 0x8 != 0 {
            Some(r.u32()?)
        } else {
            None
        };
        let default_size = if flags & 0x10 != 0 {
            Some(r.u32()?)
        } else {
            None
        };
        Ok(Self {
            track_id,
            base_data_offset,
            default_duration,
            default_size,
        })
    }
}

/// What `parse_trak` learned about one track.
struct Trak<'a> {
    id: u32,
    timescale: u32,
    handler: [u8; 4],
    stbl: Option<&'a [u8]>,
}

fn parse_trak(trak: &[u8]) -> Result<Trak<'_>> {
    let mut out = Trak {
        id: 0,
        timescale: 0,
        handler: [0; 4],
        stbl: None,
    };
    for child in Boxes::new(trak) {
        let (kind, body) = child?;
        match &kind {
            b"tkhd" => {
                let mut r = Reader::new(body);
                let version = r.u8()?;
                r.skip(3)?;
                r.skip(if version == 1 { 16 } else { 8 })?;
                out.id = r.u32()?;
            }
            b"mdia" => {
                for child in Boxes::new(body) {
                    let (kind, body) = child?;
                    match &kind {
                        b"mdhd" => {
                            let mut r = Reader::new(body);
                            let version = r.u8()?;
                            r.skip(3)?;
                            r.skip(if version == 1 { 16 } else { 8 })?;
                            out.timescale = r.u32()?;
                        }
                        b"hdlr" => {
                            let mut r = Reader::new(body);
                            r.skip(8)?; // version, flags, pre_defined
                            out.handler.copy_from_slice(r.bytes(4)?);
                        }
                        b"minf" => out.stbl = find_child(body, b"stbl")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Parses `moov`: picks the first sound track and, for a non-fragmented file, queues its
/// samples from the sample tables.
fn parse_moov(moov: &[u8]) -> Result<(Track, VecDeque<Sample>)> {
    let mut audio = None;
    let mut trex = Vec::new();
    for child in Boxes::new(moov) {
        let (kind, body) = child?;
        match &kind {
            b"trak" => {
                let trak = parse_trak(body)?;
                if audio.is_none() && trak.handler == *b"soun" {
                    audio = Some(trak);
                }
            }
            b"mvex" => {
                for child in Boxes::new(body) {
                    let (kind, body) = child?;
                    if kind == *b"trex" {
                        let mut r = Reader::new(body);
                        r.skip(4)?;
                        let id = r.u32()?;
                        r.skip(4)?; // default_sample_description_index
                        trex.push((id, r.u32()?, r.u32()?));
                    }
                }
            }
            _ => {}
        }
    }
    let trak = audio.ok_or(Error::Unsupported("mp4 without an audio track"))?;
    if trak.timescale == 0 {
        return Err(Error::Malformed("mp4 audio track with timescale 0"));
    }
    let stbl = trak
        .stbl
        .ok_or(Error::Malformed("mp4 audio track without stbl"))?;
    let stsd =
        find_child(stbl, b"stsd")?.ok_or(Error::Malformed("mp4 audio track without stsd"))?;
    let info = parse_stsd(stsd)?;
    let (default_duration, default_size) = trex
        .iter()
        .find(|t| t.0 == trak.id)
        .map_or((0, 0), |t| (t.1, t.2));
    let track = Track {
        info,
        id: trak.id,
        timescale: trak.timescale,
        default_duration,
        default_size,
    };
    let samples = table_samples(&track, stbl)?;
    Ok((track, samples))
}

/// Reads the first sample entry of `stsd` into the track's codec parameters.
fn parse_stsd(stsd: &[u8]) -> Result<TrackInfo> {
    let mut r = Reader::new(stsd);
    r.skip(8)?; // version, flags, entry_count
    let (kind, entry) = Boxes::new(r.data)
        .next()
        .ok_or(Error::Malformed("mp4 stsd without a sample entry"))??;
    if kind != *b"Opus" && kind != *b"mp4a" {
        return Err(Error::Unsupported("mp4 audio codec other than Opus or AAC"));
    }
    // AudioSampleEntry: 6 reserved + data_reference_index, then the (QuickTime) sound
    // description version that decides how many fields follow.
    let mut r = Reader::new(entry);
    r.skip(8)?;
    let version = r.u16()?;
    r.skip(6)?; // revision, vendor
    let mut channels = r.u16()?;
    r.skip(6)?; // sample size, compression id, packet size
    let mut sample_rate = r.u32()? >> 16;
    match version {
        0 => {}
        1 => r.skip(16)?,
        2 => {
            r.skip(4)?; // sizeOfStructOnly
            let rate = f64::from_bits(r.u64()?);
            channels = u16::try_from(r.u32()?).unwrap_or(0);
            r.skip(20)?;
            if rate.is_finite() && rate >= 1.0 && rate <= f64::from(u32::MAX) {
                sample_rate = rate as u32;
            }
        }
        _ => return Err(Error::Unsupported("mp4 sound description version")),
    }
    let children = r.data;
    if kind == *b"Opus" {
        let dops = find_child(children, b"dOps")?
            .ok_or(Error::Malformed("mp4 Opus entry without dOps"))?;
        // dOps (Opus-in-ISOBMFF §4.3.2) is big-endian and laid out unlike OpusHead.
        let mut r = Reader::new(dops);
        let version = r.u8()?;
        if version != 0 {
            return Err(Error::Unsupported("mp4 dOps version"));
        }
        let channels = u16::from(r.u8()?);
        let pre_skip = r.u16()?;
        if channels == 0 {
            return Err(Error::Malformed("mp4 dOps with 0 channels"));
        }
        return Ok(TrackInfo {
            codec: Codec::Opus { channels, pre_skip },
            sample_rate: OPUS_RATE,
            channels,
        });
    }
    let esds = match find_child(children, b"esds")? {
        Some(esds) => esds,
        // QuickTime v1 entries nest it in a `wave` box.
        None => find_child(children, b"wave")?
            .map(|wave| find_child(wave, b"esds"))
            .transpose()?
            .flatten()
            .ok_or(Error::Malformed("mp4 mp4a entry without esds"))?,
    };
    let config = parse_esds(esds)?;
    let asc = AudioSpecificConfig::parse(config)?;
    if asc.sample_rate > 0 {
        sample_rate = asc.sample_rate;
    }
    if asc.channels > 0 {
        channels = asc.channels;
    }
    if sample_rate == 0 || channels == 0 {
        return Err(Error::Malformed("mp4 audio track without rate or channels"));
    }
    Ok(TrackInfo {
        codec: Codec::Aac {
            config: config.to_vec(),
        },
        sample_rate,
        channels,
    })
}

/// Walks `esds`: ES_Descriptor → DecoderConfigDescriptor → DecoderSpecificInfo, and returns the
/// AudioSpecificConfig bytes.
fn parse_esds(esds: &[u8]) -> Result<&[u8]> {
    let mut r = Reader::new(esds);
    r.skip(4)?; // version, flags
    let es = descriptor(&mut r, 0x03)?;
    let mut r = Reader::new(es);
    r.skip(2)?; // ES_ID
    let flags = r.u8()?;
    if flags & 0x80 != 0 {
        r.skip(2)?; // dependsOn_ES_ID
    }
    if flags & 0x40 != 0 {
        let len = r.u8()?;
        r.skip(usize::from(len))?; // URL
    }
    if flags & 0x20 != 0 {
        r.skip(2)?; // OCR_ES_Id
    }
    let dcd = descriptor(&mut r, 0x04)?;
    let mut r = Reader::new(dcd);
    let object_type = r.u8()?;
    // 0x40: MPEG-4 audio; 0x66..=0x68: MPEG-2 AAC profiles. Others are MP3, etc.
    if !matches!(object_type, 0x40 | 0x66..=0x68) {
        return Err(Error::Unsupported("mp4a object type other than AAC"));
    }
    r.skip(12)?; // streamType, bufferSizeDB, maxBitrate, avgBitrate
    descriptor(&mut r, 0x05)
}

/// Reads one MPEG-4 descriptor of the expected tag (variable-length size) and returns its body.
fn descriptor<'a>(r: &mut Reader<'a>, tag: u8) -> Result<&'a [u8]> {
    if r.u8()? != tag {
        return Err(Error::Malformed("mp4 esds descriptor out of order"));
    }
    let mut len = 0usize;
    for _ in 0..4 {
        let b = r.u8()?;
        len = (len << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    r.bytes(len)
}

/// Builds the sample queue of a non-fragmented file from `stsz`/`stsc`/`stco`/`co64`/`stts`.
/// Returns an empty queue for a fragmented file (its tables are empty).
fn table_samples(track: &Track, stbl: &[u8]) -> Result<VecDeque<Sample>> {
    let Some(stsz) = find_child(stbl, b"stsz")? else {
        return Ok(VecDeque::new());
    };
    let mut sizes = Reader::new(stsz);
    sizes.skip(4)?;
    let constant_size = sizes.u32()?;
    let count = sizes.u32()? as usize;
    if count == 0 {
        return Ok(VecDeque::new());
    }
    if count > MAX_TABLE_SAMPLES {
        return Err(Error::Limit("mp4 sample table too large"));
    }
    if constant_size == 0 && sizes.remaining() < count * 4 {
        return Err(Error::Malformed("mp4 stsz shorter than its sample count"));
    }
    let (chunk_data, wide) = match find_child(stbl, b"stco")? {
        Some(stco) => (stco, false),
        None => (
            find_child(stbl, b"co64")?.ok_or(Error::Malformed("mp4 sample table without stco"))?,
            true,
        ),
    };
    let mut chunks = Reader::new(chunk_data);
    chunks.skip(4)?;
    let chunk_count = chunks.u32()?;
    let mut stsc = Reader::new(find_child(stbl, b"stsc")?.ok_or(Error::Malformed("mp4 no stsc"))?);
    stsc.skip(4)?;
    let mut stsc_left = stsc.u32()?;
    let mut stts = Reader::new(find_child(stbl, b"stts")?.ok_or(Error::Malformed("mp4 no stts"))?);
    stts.skip(4)?;
    let mut stts_left = stts.u32()?;
    let (mut run_count, mut delta) = (0u32, 0u32);

    // stsc runs: (first_chunk, samples_per_chunk), each applying until the next run's first.
    let mut read_run = |stsc_left: &mut u32| -> Result<Option<(u32, u32)>> {
        if *stsc_left == 0 {
            return Ok(None);
        }
        *stsc_left -= 1;
        let first = stsc.u32()?;
        let per = stsc.u32()?;
        stsc.skip(4)?; // sample_description_index
        Ok(Some((first, per)))
    };
    let mut next_run = read_run(&mut stsc_left)?;
    let mut per_chunk = 0u32;
    let mut samples = VecDeque::with_capacity(count);
    let mut seen = 0usize;
    let mut time = 0u64;
    for chunk in 1..=chunk_count {
        if seen == count {
            break;
        }
        while let Some((_, per)) = next_run.filter(|&(first, _)| first <= chunk) {
            per_chunk = per;
            next_run = read_run(&mut stsc_left)?;
        }
        let mut offset = if wide {
            chunks.u64()?
        } else {
            u64::from(chunks.u32()?)
        };
        for _ in 0..per_chunk {
            if seen == count {
                break;
            }
            seen += 1;
            let size = if constant_size != 0 {
                constant_size
            } else {
                sizes.u32()?
            };
            while run_count == 0 && stts_left > 0 {
                stts_left -= 1;
                run_count = stts.u32()?;
                delta = stts.u32()?;
            }
            run_count = run_count.saturating_sub(1);
            push_sample(&mut samples, track, offset, size, time)?;
            offset = offset.saturating_add(u64::from(size));
            time = time.saturating_add(u64::from(delta));
        }
    }
    if seen < count {
        return Err(Error::Malformed(
            "mp4 stsc/stco describe fewer samples than stsz",
        ));
    }
    samples.make_contiguous().sort_by_key(|s| s.offset);
    Ok(samples)
}

#[cfg(test)]
pub(crate) mod tests;
