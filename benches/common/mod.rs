//! Fixtures shared by the audio benches: the real browser recordings in `fixtures/`, cut the
//! way each format arrives on the socket.
//!
//! Included with `#[path]` by each bench target (each is its own crate), so a helper one bench
//! does not call would be dead code there.
#![allow(dead_code)] // shared by several bench crates; each uses a subset

use std::path::{Path, PathBuf};

use tandem::audio::transcoder::Transcoder;
use tandem::audio::InputFormat;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `chunk-NNN.bin` of a fixture folder, in order (empty when the folder is missing).
pub fn chunks(name: &str) -> Vec<Vec<u8>> {
    let dir = fixtures().join(name);
    (0..)
        .map_while(|i| std::fs::read(dir.join(format!("chunk-{i:03}.bin"))).ok())
        .collect()
}

/// Cuts `bytes` into `n` pieces of (almost) equal size, at arbitrary byte positions, as a
/// MediaRecorder with a shorter timeslice would (its cuts fall mid-element too).
pub fn split_even(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let n = n.max(1);
    (0..n)
        .map(|i| bytes[i * bytes.len() / n..(i + 1) * bytes.len() / n].to_vec())
        .collect()
}

/// The 31.2 s Chrome WebM/Opus recording re-cut into ≈250 ms chunks (125 pieces of its
/// 128 kbit/s byte stream), for real-time-pace load runs with a 250 ms timeslice.
pub fn long_250ms() -> Vec<Vec<u8>> {
    let all = std::fs::read(fixtures().join("chrome-webm-opus-31s/all.webm")).unwrap_or_default();
    if all.is_empty() {
        return Vec::new();
    }
    split_even(&all, 125)
}

/// Audio length of the 31 s recording (520 packets × 60 ms).
pub const LONG_SECONDS: f64 = 31.2;

/// One input format as a browser (or an AudioWorklet) delivers it.
pub struct Format {
    /// Short name used as the bench id.
    pub name: &'static str,
    pub chunks: Vec<Vec<u8>>,
    /// What a `start` message would declare (only headerless PCM needs it).
    pub declared: Option<InputFormat>,
    /// Audio length of all chunks together.
    pub seconds: f64,
    /// Index of the representative "later" chunk (mid-recording).
    pub later: usize,
}

impl Format {
    /// Audio length of one average chunk.
    pub fn chunk_ms(&self) -> f64 {
        self.seconds * 1000.0 / self.chunks.len() as f64
    }
}

/// Every supported input, each in its own chunks: Chrome WebM/Opus (250 ms timeslice), Ogg/Opus
/// (Firefox-like, ~1 s pages), Chrome MP4/Opus (~1 s fragments), MP4/AAC-LC at 48 and 44.1 kHz
/// (Safari-like, ~1 s fragments), Chrome WebM/PCM (250 ms), and raw PCM16 at 48 kHz cut into
/// 250 ms posts. Formats whose fixture is missing are left out.
pub fn formats() -> Vec<Format> {
    let pcm48 = std::fs::read(fixtures().join("pcm16-48000.raw")).unwrap_or_default();
    let list = vec![
        (
            "webm_opus_250ms",
            chunks("chrome-webm-opus-250ms"),
            None,
            5.88,
        ),
        ("ogg_opus", chunks("ogg-opus"), None, 3.0065),
        ("mp4_opus", chunks("chrome-mp4-opus"), None, 5.841),
        ("mp4_aac_48k", chunks("mp4-aac-48000"), None, 3.0213),
        ("mp4_aac_44k", chunks("mp4-aac-44100"), None, 3.0232),
        ("webm_pcm_f32", chunks("chrome-webm-pcm"), None, 2.008),
        (
            "pcm16_48k",
            // 250 ms = 12 000 samples = 24 000 bytes per post.
            pcm48.chunks(24_000).map(<[u8]>::to_vec).collect(),
            Some(InputFormat::Pcm16 {
                sample_rate: 48_000,
                channels: 1,
            }),
            3.0,
        ),
    ];
    list.into_iter()
        .filter(|(_, c, _, _)| !c.is_empty())
        .map(|(name, chunks, declared, seconds)| {
            let later = chunks.len() / 2;
            Format {
                name,
                chunks,
                declared,
                seconds,
                later,
            }
        })
        .collect()
}

/// Samples (24 kHz) the transcoder has emitted after each chunk: how much PCM a consumer can
/// have once chunk `k` is in.
pub fn cumulative_samples(chunks: &[Vec<u8>], declared: Option<InputFormat>) -> Vec<u64> {
    let mut t = Transcoder::new(declared);
    let mut frames = Vec::new();
    let mut total = 0u64;
    chunks
        .iter()
        .map(|c| {
            frames.clear();
            t.push(c, &mut frames).expect("fixture chunk decodes");
            total += frames.iter().map(|f| f.samples.len() as u64).sum::<u64>();
            total
        })
        .collect()
}
