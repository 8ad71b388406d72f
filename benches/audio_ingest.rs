//! Audio ingest cost on a real 31 s Chrome WebM/Opus recording (`fixtures/chrome-webm-opus-31s`):
//! the bare Opus decoder, the whole Transcoder (demux + decode + framing), the same with base64
//! decoding of each chunk as the WebSocket path does, and one 250 ms chunk's latency.
//!
//! Cost per audio second = reported time / 31.2 (the recording's length).
// Bench setup: a panic is the report.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use tandem::audio::decode::opus::OpusDecoder;
use tandem::audio::decode::PacketDecoder;
use tandem::audio::demux::webm::WebmDemuxer;
use tandem::audio::demux::Demuxer;
use tandem::audio::transcoder::Transcoder;

fn chunks(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    (0..)
        .map_while(|i| std::fs::read(dir.join(format!("chunk-{i:03}.bin"))).ok())
        .collect()
}

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

criterion_group!(benches, bench);
criterion_main!(benches);
