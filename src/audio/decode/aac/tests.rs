use crate::audio::decode::PacketDecoder as _;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::audio::demux::mp4::tests::{demux, fixture_chunks, fixture_dir, random_split};
use crate::audio::Codec;

#[test]
fn audio_specific_config_fields() {
    // 00010 0100 0001 000: AAC-LC, 44.1 kHz, mono.
    assert_eq!(
        AudioSpecificConfig::parse(&[0x12, 0x08]),
        Ok(AudioSpecificConfig {
            object_type: 2,
            sample_rate: 44_100,
            channels: 1
        })
    );
    // AAC-LC, 48 kHz, stereo.
    assert_eq!(
        AudioSpecificConfig::parse(&[0x11, 0x90]).map(|a| (a.sample_rate, a.channels)),
        Ok((48_000, 2))
    );
    // Escaped object type (31 → 32 + 6 bits) and explicit 24-bit rate.
    let asc = AudioSpecificConfig::parse(&[0xf8, 0x1f, 0x80, 0x3e, 0x81, 0x00]).unwrap();
    assert_eq!(asc.object_type, 32);
    assert_eq!(
        AudioSpecificConfig::parse(&[0x12]),
        Err(Error::Malformed("aac config truncated"))
    );
    assert_eq!(
        AudioSpecificConfig::parse(&[]),
        Err(Error::Malformed("aac config truncated"))
    );
}

#[test]
fn unsupported_configs_are_refused_before_symphonia() {
    // Channel configuration 0 (program config element) would panic inside symphonia 0.5.
    assert_eq!(
        AacDecoder::new(&[0x12, 0x00]).err(),
        Some(Error::Unsupported(
            "aac channel configuration other than mono or stereo"
        ))
    );
    // HE-AAC (object type 5).
    assert_eq!(
        AacDecoder::new(&[0x2b, 0x92, 0x08, 0x00]).err(),
        Some(Error::Unsupported("aac object type other than AAC-LC"))
    );
    // 7350 Hz (index 12) and an explicit rate.
    assert_eq!(
        AacDecoder::new(&[0x16, 0x08]).err(),
        Some(Error::Unsupported("aac sampling rate"))
    );
    assert!(AacDecoder::new(&[0x17, 0x80, 0x3e, 0x81, 0x00]).is_err());
    assert_eq!(
        AacDecoder::new(&[0x12]).err(),
        Some(Error::Malformed("aac config truncated"))
    );
    let d = AacDecoder::new(&[0x11, 0x90]).unwrap();
    assert_eq!((d.output_rate(), d.channels()), (48_000, 2));
}

#[test]
fn random_packets_are_errors_or_audio_never_panics() {
    let mut rng = StdRng::seed_from_u64(5);
    for config in [[0x12u8, 0x08], [0x11, 0x90]] {
        let mut d = AacDecoder::new(&config).unwrap();
        let channels = usize::from(d.channels());
        let mut out = Vec::new();
        for _ in 0..2000 {
            let mut packet = vec![0u8; rng.random_range(0..600)];
            rng.fill(&mut packet[..]);
            out.clear();
            match d.decode(&packet, &mut out) {
                Ok(()) => assert_eq!(out.len(), FRAME_LEN * channels),
                Err(e) => {
                    assert!(
                        matches!(e, Error::Malformed(_) | Error::Unsupported(_)),
                        "{e:?}"
                    );
                    assert!(out.is_empty());
                }
            }
        }
    }
}

/// Demuxes a fixture chunk by chunk and decodes every packet.
fn decode_fixture(name: &str) -> (Vec<f32>, usize, u32) {
    let chunks = fixture_chunks(name);
    let out = demux(chunks.iter().map(Vec::as_slice));
    assert_eq!(out.errors, []);
    let track = out.track.unwrap();
    let Codec::Aac { config } = &track.codec else {
        panic!("{name}: not AAC: {:?}", track.codec)
    };
    let mut d = AacDecoder::new(config).unwrap();
    assert_eq!(d.output_rate(), track.sample_rate);
    assert_eq!(d.channels(), 1);
    let mut pcm = Vec::new();
    for p in &out.packets {
        d.decode(&p.data, &mut pcm).unwrap();
    }
    (pcm, out.packets.len(), track.sample_rate)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn meta(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("meta.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// SNR in dB of `ours` against `reference` over their common length.
fn snr_db(ours: &[f32], reference: &[f32]) -> f64 {
    let n = ours.len().min(reference.len());
    let (mut signal, mut noise) = (0f64, 0f64);
    for (a, b) in ours[..n].iter().zip(&reference[..n]) {
        signal += f64::from(*b).powi(2);
        noise += f64::from(a - b).powi(2);
    }
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// Packet counts and last pts from
/// `ffprobe -v error -count_packets -show_entries stream=nb_read_packets all.mp4` and
/// `ffprobe -show_packets` (sizes summed); durations come from the fixture's meta.json.
fn check_aac_fixture(name: &str, packets: usize, last_pts: u64, bytes: usize) {
    let chunks = fixture_chunks(name);
    let demuxed = demux(chunks.iter().map(Vec::as_slice));
    assert_eq!(demuxed.packets.len(), packets);
    assert_eq!(demuxed.packets.last().unwrap().pts, Some(last_pts));
    assert_eq!(
        demuxed.packets.iter().map(|p| p.data.len()).sum::<usize>(),
        bytes
    );
    let all = chunks.concat();
    for seed in 0..10 {
        assert_eq!(demux(random_split(&all, seed)).packets, demuxed.packets);
    }

    let meta = meta(name);
    let (pcm, n, rate) = decode_fixture(name);
    assert_eq!(pcm.len(), n * FRAME_LEN);
    assert_eq!(u64::from(rate), meta["sample_rate"].as_u64().unwrap());
    // Our output is whole AAC frames; ffprobe's duration trims the last one.
    let ours_ms = pcm.len() as f64 * 1000.0 / f64::from(rate);
    let input_ms = meta["duration_ms"].as_f64().unwrap();
    let frame_ms = FRAME_LEN as f64 * 1000.0 / f64::from(rate);
    assert!(
        (ours_ms - input_ms).abs() <= frame_ms,
        "{ours_ms} vs {input_ms}"
    );

    // Naive energy check against the 24 kHz PCM16 reference (resampling keeps the RMS).
    let reference: Vec<f32> = std::fs::read(fixture_dir(name).join("ref-24k.pcm"))
        .unwrap()
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let ratio_db = 20.0 * (rms(&pcm) / rms(&reference)).log10();
    assert!(
        ratio_db.abs() < 0.2,
        "{name}: energy differs by {ratio_db:.3} dB"
    );

    // Full comparison at the native rate against ffmpeg's own AAC decoder, when installed.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("native.f32");
    let ran = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(fixture_dir(name).join("all.mp4"))
        .args(["-f", "f32le", "-ac", "1"])
        .arg(&raw)
        .status();
    match ran {
        Ok(status) if status.success() => {
            let native: Vec<f32> = std::fs::read(&raw)
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(
                native.len(),
                pcm.len(),
                "ffmpeg keeps every frame (no edit list)"
            );
            let snr = snr_db(&pcm, &native);
            eprintln!(
                "{name}: SNR vs ffmpeg native decode {snr:.1} dB, energy vs ref {ratio_db:.3} dB"
            );
            assert!(snr > 40.0, "{name}: SNR {snr:.1} dB");
        }
        _ => eprintln!("{name}: ffmpeg not installed, native SNR comparison skipped"),
    }
}

#[test]
fn aac_44100_fixture_decodes_to_reference() {
    check_aac_fixture("mp4-aac-44100", 131, 133_120, 29_832);
}

#[test]
fn aac_48000_fixture_decodes_to_reference() {
    // Its last fragment's trun has no per-sample sizes: the tfhd default size applies.
    check_aac_fixture("mp4-aac-48000", 142, 144_384, 28_751);
}

#[test]
fn decoder_can_move_to_a_dsp_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<AacDecoder>();
}
