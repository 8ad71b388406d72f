//! Instruction-count harness for the Opus ingest path, to run under callgrind (instruction
//! counts repeat exactly on a shared, noisy machine where wall-clock time does not).
//!
//! Input: the 31.2 s Chrome WebM/Opus recording (`fixtures/chrome-webm-opus-31s`, 520 packets
//! of 60 ms, 128 kbit/s CELT). `bare` decodes its packets with the crate's `OpusDecoder`;
//! `transcoder` pushes the recording re-cut into 125 chunks of ≈250 ms through one
//! `Transcoder`, as `benches/ingest_load.rs` feeds it. Each is done `N` times; run with N = 0
//! (setup only) and N = 1 and divide the difference by 124.8 for the cost of 250 ms of audio:
//!
//! ```sh
//! cargo build --release --example ingest_instructions
//! for n in 0 1; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!   target/release/examples/ingest_instructions transcoder $n; done
//! ```
// A harness: a panic is the report.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tandem::audio::decode::opus::OpusDecoder;
use tandem::audio::decode::PacketDecoder;
use tandem::audio::demux::webm::WebmDemuxer;
use tandem::audio::demux::Demuxer;
use tandem::audio::transcoder::Transcoder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, n) = match args.as_slice() {
        [_, mode, n] => (mode.as_str(), n.parse::<usize>().unwrap()),
        _ => {
            eprintln!("usage: ingest_instructions bare|transcoder N");
            std::process::exit(2);
        }
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chrome-webm-opus-31s/all.webm");
    let all = std::fs::read(path).unwrap();
    let chunks: Vec<&[u8]> = (0..125)
        .map(|i| &all[i * all.len() / 125..(i + 1) * all.len() / 125])
        .collect();
    match mode {
        "bare" => {
            let mut d = WebmDemuxer::new();
            d.push(&all).unwrap();
            let mut packets = Vec::new();
            while let Some(p) = d.next_packet().unwrap() {
                packets.push(p.data);
            }
            let mut pcm = Vec::with_capacity(24_000 * 32);
            for _ in 0..n {
                let mut dec = OpusDecoder::new(1, 0).unwrap();
                pcm.clear();
                for p in &packets {
                    dec.decode(p, &mut pcm).unwrap();
                }
                std::hint::black_box(pcm.len());
            }
        }
        "transcoder" => {
            let mut frames = Vec::new();
            for _ in 0..n {
                let mut t = Transcoder::new(None);
                frames.clear();
                for c in &chunks {
                    t.push(c, &mut frames).unwrap();
                }
                t.finish(&mut frames).unwrap();
                std::hint::black_box(frames.len());
            }
        }
        _ => {
            eprintln!("unknown mode {mode}");
            std::process::exit(2);
        }
    }
}
