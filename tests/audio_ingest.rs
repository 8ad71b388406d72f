//! The audio ingest on real browser recordings (`fixtures/`, see each `meta.json`): chunked and
//! randomly split input decode identically, durations hold, the decode matches the libopus
//! reference, and bad input gives a clean error.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tandem::audio::transcoder::{Transcoder, MAX_FRAME};
use tandem::audio::{sniff, Error, Pcm16Frame};

/// The fixtures are committed; a missing one is a broken checkout, so it fails the test.
fn fixture_dir(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(
        dir.join("chunk-000.bin").exists() || dir.join("meta.json").exists(),
        "fixture {name} is missing from fixtures/"
    );
    Some(dir)
}

struct Fixture {
    chunks: Vec<Vec<u8>>,
    reference: Option<Vec<i16>>,
    mime: String,
    duration_ms: f64,
}

fn load(name: &str) -> Option<Fixture> {
    let dir = fixture_dir(name)?;
    let mut chunks = Vec::new();
    for i in 0.. {
        let Ok(c) = std::fs::read(dir.join(format!("chunk-{i:03}.bin"))) else {
            break;
        };
        chunks.push(c);
    }
    let reference = std::fs::read(dir.join("ref-24k.pcm")).ok().map(|b| {
        b.chunks_exact(2)
            .map(|s| i16::from_le_bytes([s[0], s[1]]))
            .collect()
    });
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    Some(Fixture {
        chunks,
        reference,
        mime: meta["mime"].as_str().unwrap().to_string(),
        duration_ms: meta["duration_ms"].as_f64().unwrap(),
    })
}

/// Runs `chunks` through a fresh transcoder; checks frame invariants; returns the samples.
fn transcode(mime: &str, chunks: &[&[u8]]) -> (Vec<i16>, Vec<Pcm16Frame>) {
    let mut t = Transcoder::new(Some(sniff::parse_mime(mime, None).unwrap()));
    let mut frames = Vec::new();
    for c in chunks {
        t.push(c, &mut frames).unwrap();
    }
    t.finish(&mut frames).unwrap();
    let mut samples = Vec::new();
    for f in &frames {
        assert_eq!(f.start, samples.len() as u64, "frames are contiguous");
        assert!(f.samples.len() <= MAX_FRAME && !f.samples.is_empty());
        samples.extend_from_slice(&f.samples);
    }
    let stats = t.stats();
    assert_eq!(stats.packets_skipped, 0, "{stats:?}");
    (samples, frames)
}

fn random_split(bytes: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(3000));
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// SNR in dB of `got` against `reference` over their common length.
fn snr_db(got: &[i16], reference: &[i16]) -> f64 {
    let n = got.len().min(reference.len());
    let (mut sig, mut noise) = (0f64, 0f64);
    for i in 0..n {
        let r = f64::from(reference[i]);
        sig += r * r;
        let d = f64::from(got[i]) - r;
        noise += d * d;
    }
    10.0 * (sig / noise.max(1e-9)).log10()
}

/// Every fixture property for one recording.
fn check_fixture(name: &str, packet_ms: f64, min_snr: f64) {
    let Some(fx) = load(name) else { return };
    let chunk_refs: Vec<&[u8]> = fx.chunks.iter().map(Vec::as_slice).collect();
    let (by_chunk, frames) = transcode(&fx.mime, &chunk_refs);
    let whole: Vec<u8> = fx.chunks.concat();
    let (single, _) = transcode(&fx.mime, &[&whole]);
    assert!(
        by_chunk == single,
        "{name}: chunked decode differs from single-chunk decode"
    );
    for seed in 0..3 {
        let (split, _) = transcode(&fx.mime, &random_split(&whole, seed));
        assert!(
            split == single,
            "{name}: random split (seed {seed}) differs"
        );
    }
    // Frame sizes: 20–100 ms except the last one of the recording.
    for f in &frames[..frames.len() - 1] {
        assert!(f.samples.len() >= 480, "{name}: short frame mid-stream");
    }
    let got_ms = by_chunk.len() as f64 / 24.0;
    assert!(
        (got_ms - fx.duration_ms).abs() <= packet_ms,
        "{name}: duration {got_ms} ms vs {} ms",
        fx.duration_ms
    );
    if let Some(reference) = &fx.reference {
        let snr = snr_db(&by_chunk, reference);
        eprintln!(
            "{name}: {} samples (ref {}), SNR {snr:.1} dB",
            by_chunk.len(),
            reference.len()
        );
        assert!(snr > min_snr, "{name}: SNR {snr:.1} dB");
    }
}

#[test]
fn chrome_webm_opus_250ms() {
    check_fixture("chrome-webm-opus-250ms", 60.0, 40.0);
}

#[test]
fn chrome_webm_opus_1000ms() {
    check_fixture("chrome-webm-opus-1000ms", 60.0, 40.0);
}

#[test]
fn chrome_webm_opus_31s() {
    check_fixture("chrome-webm-opus-31s", 60.0, 40.0);
}

#[test]
fn chrome_mp4_opus() {
    // Chrome writes pre-skip 3840 in dOps; the reference applies it too.
    check_fixture("chrome-mp4-opus", 60.0, 40.0);
}

#[test]
fn safari_like_mp4_aac_44100() {
    // 1024-sample AAC frames at 44.1 kHz are 23.2 ms; the reference resampled with soxr.
    check_fixture("mp4-aac-44100", 23.3, 40.0);
}

#[test]
fn safari_like_mp4_aac_48000() {
    check_fixture("mp4-aac-48000", 21.4, 40.0);
}

#[test]
fn ogg_opus() {
    check_fixture("ogg-opus", 20.0, 40.0);
}

#[test]
fn chrome_webm_pcm() {
    // The reference went through ffmpeg's soxr resampler, ours through rubato: different
    // filters, yet they agree far above the bar (78.6 dB measured).
    check_fixture("chrome-webm-pcm", 10.0, 40.0);
}

#[test]
fn a_second_recording_on_the_same_stream_restarts_cleanly() {
    let Some(fx) = load("chrome-webm-opus-250ms") else {
        return;
    };
    let chunk_refs: Vec<&[u8]> = fx.chunks.iter().map(Vec::as_slice).collect();
    let (once, _) = transcode(&fx.mime, &chunk_refs);
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    for _ in 0..2 {
        for c in &fx.chunks {
            t.push(c, &mut frames).unwrap();
        }
        t.finish(&mut frames).unwrap();
    }
    // And a third recording without finish() in between (socket reused, recorder restarted).
    for c in &fx.chunks {
        t.push(c, &mut frames).unwrap();
    }
    t.finish(&mut frames).unwrap();
    for rec in 0..3 {
        let samples: Vec<i16> = frames
            .iter()
            .filter(|f| f.recording == rec)
            .flat_map(|f| f.samples.iter().copied())
            .collect();
        assert!(samples == once, "recording {rec} differs");
    }
}

#[test]
fn raw_pcm16_at_declared_rates() {
    for rate in [16_000u32, 24_000, 44_100, 48_000] {
        let n = rate as usize * 3 / 2; // 1.5 s
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| {
                let s = (8000.0 * (i as f32 * 300.0 * std::f32::consts::TAU / rate as f32).sin())
                    as i16;
                s.to_le_bytes()
            })
            .collect();
        let mime = format!("audio/pcm;rate={rate}");
        let (whole, _) = transcode(&mime, &[&bytes]);
        let (split, _) = transcode(&mime, &random_split(&bytes, 7));
        assert_eq!(whole.len(), 36_000, "rate {rate}");
        assert!(whole == split, "rate {rate}: split differs");
    }
}

fn expect_error(mime: Option<&str>, chunks: &[&[u8]]) -> Error {
    let mut t = Transcoder::new(mime.map(|m| sniff::parse_mime(m, None).unwrap()));
    let mut frames = Vec::new();
    for c in chunks {
        if let Err(e) = t.push(c, &mut frames) {
            return e;
        }
    }
    t.finish(&mut frames).unwrap_err()
}

#[test]
fn bad_fixtures_are_rejected_with_stable_codes() {
    let Some(dir) = fixture_dir("bad") else {
        return;
    };
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let cases = [
        ("random-4k.bin", "audio_unsupported"),
        ("vorbis.webm", "audio_unsupported"),
        ("vorbis.ogg", "audio_unsupported"),
    ];
    for (file, code) in cases {
        let e = expect_error(None, &[&read(file)]);
        assert_eq!(e.code(), code, "{file}: {e}");
    }
    // A file with a video track and an Opus track: the audio is decoded, the video skipped.
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    t.push(&read("video-vp8-opus.webm"), &mut frames).unwrap();
    t.finish(&mut frames).unwrap();
    let n: usize = frames.iter().map(|f| f.samples.len()).sum();
    assert!((23_000..=25_000).contains(&n), "{n} samples");
}

#[test]
fn truncated_corrupted_and_hostile_input_never_panics() {
    let Some(fx) = load("chrome-webm-opus-250ms") else {
        return;
    };
    let whole = fx.chunks.concat();
    // Truncated: audio before the cut comes out, then a clean error at finish.
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    t.push(&whole[..whole.len() / 2 + 7], &mut frames).unwrap();
    assert!(!frames.is_empty());
    assert_eq!(t.finish(&mut frames).unwrap_err().code(), "audio_malformed");
    // After a fatal error only a new header restarts the stream.
    assert_eq!(
        t.push(&whole[100..200], &mut frames),
        Err(Error::ResetRequired)
    );
    t.push(&whole, &mut frames).unwrap();
    t.finish(&mut frames).unwrap();

    // Corrupted bytes anywhere: Ok or a clean error, never a panic.
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..300 {
        let mut bad = whole.clone();
        for _ in 0..rng.random_range(1..20) {
            let i = rng.random_range(0..bad.len());
            bad[i] = rng.random();
        }
        let mut t = Transcoder::new(None);
        let mut frames = Vec::new();
        for c in random_split(&bad, rng.random()) {
            if t.push(c, &mut frames).is_err() {
                break;
            }
        }
        let _ = t.finish(&mut frames);
    }
    // Random bytes under a declared container type.
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let junk: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        let _ = expect_error(Some("audio/webm;codecs=opus"), &[&junk]);
        let mut ogg = b"OggS\0\x02".to_vec();
        ogg.extend(&junk);
        let _ = expect_error(Some("audio/ogg"), &[&ogg]);
    }
    // 0-byte chunks are fine anywhere.
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    t.push(&[], &mut frames).unwrap();
    t.push(&whole, &mut frames).unwrap();
    t.push(&[], &mut frames).unwrap();
    t.finish(&mut frames).unwrap();
    assert!(!frames.is_empty());
}

#[test]
fn huge_declared_element_is_a_limit_error() {
    let Some(fx) = load("chrome-webm-opus-250ms") else {
        return;
    };
    // Keep the header chunk up to the first Cluster, then declare a 256 MiB SimpleBlock.
    let first = &fx.chunks[0];
    let cluster = first
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .unwrap();
    let mut bytes = first[..cluster].to_vec();
    bytes.extend([
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    bytes.extend([0xA3, 0x01, 0, 0, 0, 0x10, 0, 0, 0, 0x81]);
    let e = expect_error(None, &[&bytes]);
    assert_eq!(e, Error::Limit("webm element size"));
    assert_eq!(e.code(), "audio_limit");
}

/// Feeds a saved libFuzzer input exactly as `fuzz/fuzz_targets/transcoder.rs` does.
fn replay_fuzz_input(name: &str) -> tandem::audio::transcoder::Stats {
    let dir = fixture_dir("bad").unwrap();
    let data = std::fs::read(dir.join(name)).unwrap();
    let (&step, rest) = data.split_first().unwrap();
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    for chunk in rest.chunks(usize::from(step).max(1)) {
        let _ = t.push(chunk, &mut frames);
    }
    let _ = t.finish(&mut frames);
    t.stats()
}

/// libFuzzer finds (transcoder target, stable toolchain, `-s none`), kept as regressions:
/// - WebM/PCM whose mutated float samples are huge but finite: the resampler's FFT overflowed
///   to NaN and rubato panicked (`synchro.rs` unwraps the inverse FFT);
/// - fragmented MP4/AAC with a corrupt packet on which symphonia's AAC decoder panics
///   (`ics/mod.rs`); the AAC wrapper contains it as one malformed packet.
#[test]
fn fuzz_regressions_do_not_panic() {
    let pcm = replay_fuzz_input("fuzz-crash-transcoder-rubato.bin");
    assert!(pcm.packets > 0, "the PCM blocks were decoded, not rejected");
    let aac = replay_fuzz_input("fuzz-crash-transcoder-aac.bin");
    assert!(aac.packets + aac.packets_skipped > 0, "{aac:?}");
}
