//! Audio ingest cost on a real 31 s Chrome WebM/Opus recording (`fixtures/chrome-webm-opus-31s`):
//! the bare Opus decoder, the whole Transcoder (demux + decode + framing), the same with base64
//! decoding of each chunk as the WebSocket path does, and one 250 ms chunk's latency. When
//! `ffmpeg` is installed, the original approach in the same run: one ffmpeg process fed the
//! same 31 chunks (start included, as every conversation paid it).
//!
//! Per format (`format/*`): the first chunk, a mid-recording chunk and the whole recording, each
//! fed in the format's own chunks (see `common::formats`).
//!
//! Cost per audio second = reported time / audio length (31.2 s here; per format in
//! `docs/performance.md`, which `benches/ingest_load.rs` also prints directly).
// Bench setup: a panic is the report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use tandem::audio::decode::opus::OpusDecoder;
use tandem::audio::decode::PacketDecoder;
use tandem::audio::demux::webm::WebmDemuxer;
use tandem::audio::demux::Demuxer;
use tandem::audio::transcoder::Transcoder;

#[path = "common/mod.rs"]
mod common;
use common::chunks;

fn packets(chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut d = WebmDemuxer::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c).unwrap();
        while let Some(p) = d.next_packet().unwrap() {
            out.push(p.data);
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let long = chunks("chrome-webm-opus-31s");
    let short = chunks("chrome-webm-opus-250ms");
    if long.is_empty() || short.is_empty() {
        eprintln!("fixtures missing; nothing to bench");
        return;
    }
    let pkts = packets(&long);
    let b64: Vec<String> = long
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();

    let mut g = c.benchmark_group("31s_recording");
    g.sample_size(20);
    g.bench_function("opus_decoder_bare", |b| {
        let mut pcm = Vec::with_capacity(24_000 * 32);
        b.iter(|| {
            let mut d = OpusDecoder::new(1, 0).unwrap();
            pcm.clear();
            for p in &pkts {
                d.decode(p, &mut pcm).unwrap();
            }
            black_box(pcm.len())
        })
    });
    g.bench_function("transcoder_whole", |b| {
        let mut frames = Vec::new();
        b.iter(|| {
            let mut t = Transcoder::new(None);
            frames.clear();
            for c in &long {
                t.push(c, &mut frames).unwrap();
            }
            t.finish(&mut frames).unwrap();
            black_box(frames.len())
        })
    });
    g.bench_function("transcoder_whole_with_base64", |b| {
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        b.iter(|| {
            let mut t = Transcoder::new(None);
            frames.clear();
            for s in &b64 {
                buf.clear();
                base64::engine::general_purpose::STANDARD
                    .decode_vec(s, &mut buf)
                    .unwrap();
                t.push(&buf, &mut frames).unwrap();
            }
            t.finish(&mut frames).unwrap();
            black_box(frames.len())
        })
    });
    if ffmpeg_available() {
        g.sample_size(10);
        g.bench_function("ffmpeg_process_whole", |b| {
            b.iter(|| black_box(ffmpeg_whole(&long)))
        });
    } else {
        eprintln!("note: ffmpeg not installed; skipping 31s_recording/ffmpeg_process_whole");
    }
    g.finish();

    let mut g = c.benchmark_group("chunk_latency");
    g.bench_function("first_chunk_250ms_webm_opus", |b| {
        b.iter_batched(
            Vec::new,
            |mut frames| {
                let mut t = Transcoder::new(None);
                t.push(&short[0], &mut frames).unwrap();
                (t, frames)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("later_chunk_250ms_webm_opus", |b| {
        b.iter_batched(
            || {
                let mut t = Transcoder::new(None);
                let mut frames = Vec::new();
                for c in &short[..5] {
                    t.push(c, &mut frames).unwrap();
                }
                frames.clear();
                (t, frames)
            },
            |(mut t, mut frames)| {
                t.push(&short[5], &mut frames).unwrap();
                (t, frames)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// First chunk, a mid-recording chunk and the whole recording for every input format.
fn per_format(c: &mut Criterion) {
    for f in common::formats() {
        let mut g = c.benchmark_group(format!("format/{}", f.name));
        g.sample_size(30);
        g.bench_function("first_chunk", |b| {
            b.iter_batched(
                Vec::new,
                |mut frames| {
                    let mut t = Transcoder::new(f.declared);
                    t.push(&f.chunks[0], &mut frames).unwrap();
                    (t, frames)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("later_chunk", |b| {
            b.iter_batched(
                || {
                    let mut t = Transcoder::new(f.declared);
                    let mut frames = Vec::new();
                    for c in &f.chunks[..f.later] {
                        t.push(c, &mut frames).unwrap();
                    }
                    frames.clear();
                    (t, frames)
                },
                |(mut t, mut frames)| {
                    t.push(&f.chunks[f.later], &mut frames).unwrap();
                    (t, frames)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("whole", |b| {
            let mut frames = Vec::new();
            b.iter(|| {
                let mut t = Transcoder::new(f.declared);
                frames.clear();
                for c in &f.chunks {
                    t.push(c, &mut frames).unwrap();
                }
                t.finish(&mut frames).unwrap();
                black_box(frames.len())
            })
        });
        g.finish();
    }
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The original approach for one conversation: start ffmpeg, write the chunks from one thread,
/// read all PCM from this one. Returns the PCM byte count.
fn ffmpeg_whole(chunks: &[Vec<u8>]) -> usize {
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i", "pipe:0"])
        .args(["-f", "s16le", "-ar", "24000", "-ac", "1", "pipe:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let owned: Vec<Vec<u8>> = chunks.to_vec();
    let writer = std::thread::spawn(move || {
        for c in &owned {
            stdin.write_all(c).expect("write to ffmpeg");
        }
    });
    let mut pcm = Vec::with_capacity(1 << 21);
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut pcm)
        .expect("read ffmpeg output");
    writer.join().expect("writer thread");
    assert!(
        child.wait().expect("wait ffmpeg").success(),
        "ffmpeg failed"
    );
    pcm.len()
}

criterion_group!(benches, bench, per_format);
criterion_main!(benches);
