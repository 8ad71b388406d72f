use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// `fixtures/<name>` of the crate.
pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The `chunk-NNN.bin` files of a fixture, in order, exactly as the browser delivered them.
pub(crate) fn fixture_chunks(name: &str) -> Vec<Vec<u8>> {
    let dir = fixture_dir(name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixture {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("chunk-") && n.ends_with(".bin"))
        })
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no chunks in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Everything a demuxer produced for some input.
#[derive(Debug)]
pub(crate) struct Demuxed {
    pub track: Option<TrackInfo>,
    pub packets: Vec<Packet>,
    pub errors: Vec<Error>,
}

/// Feeds the chunks in order, draining packets after each, then finishes. Stops at the first
/// fatal error.
pub(crate) fn demux<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Demuxed {
    let mut d = Mp4Demuxer::new();
    let mut out = Demuxed {
        track: None,
        packets: Vec::new(),
        errors: Vec::new(),
    };
    for chunk in chunks {
        if let Err(e) = d.push(chunk) {
            out.errors.push(e);
            return out;
        }
        loop {
            match d.next_packet() {
                Ok(Some(p)) => out.packets.push(p),
                Ok(None) => break,
                Err(e) => {
                    out.errors.push(e);
                    if d.failed.is_some() {
                        out.track = d.track().cloned();
                        return out;
                    }
                }
            }
        }
    }
    loop {
        match d.finish() {
            Ok(Some(p)) => out.packets.push(p),
            Ok(None) => break,
            Err(e) => {
                out.errors.push(e);
                break;
            }
        }
    }
    out.track = d.track().cloned();
    out
}

/// Splits `data` at random boundaries (including empty pieces) with a fixed seed.
pub(crate) fn random_split(data: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let max = if rng.random_bool(0.5) { 16 } else { 5000 };
        let n = rng.random_range(0..=max).min(rest.len());
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces
}

// Expected numbers for chrome-mp4-opus, from
// `ffprobe -v error -count_packets -show_entries stream=nb_read_packets,duration_ts all.mp4`
// (98 packets, duration_ts 280368 = last pts 279360 + Chrome's wrong last duration 1008) and
// `ffprobe -show_packets` (pts 0, 2880, ...; the 98 sizes sum to 94472).
const CHROME_PACKETS: usize = 98;
const CHROME_LAST_PTS: u64 = 279_360;
const CHROME_BYTES: usize = 94_472;

#[test]
fn chrome_opus_chunks_demux_with_dops_pre_skip() {
    let chunks = fixture_chunks("chrome-mp4-opus");
    let out = demux(chunks.iter().map(Vec::as_slice));
    assert_eq!(out.errors, []);
    let track = out.track.unwrap();
    assert_eq!(
        track.codec,
        Codec::Opus {
            channels: 1,
            pre_skip: 3840
        }
    );
    assert_eq!((track.sample_rate, track.channels), (48_000, 1));
    // meta.json records the dOps fields as read by the fixture tool.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("chrome-mp4-opus").join("meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["opus_header_in_file"]["pre_skip"], 3840);
    assert_eq!(meta["chunk_count"], chunks.len());
    assert_eq!(out.packets.len(), CHROME_PACKETS);
    // ffprobe's duration (5.841 s) is the last pts plus Chrome's wrong 1008-sample duration.
    assert_eq!(
        meta["duration_ms"].as_f64().unwrap(),
        (CHROME_LAST_PTS + 1008) as f64 / 48.0
    );
    assert_eq!(
        out.packets.iter().map(|p| p.data.len()).sum::<usize>(),
        CHROME_BYTES
    );
    let pts: Vec<u64> = out.packets.iter().map(|p| p.pts.unwrap()).collect();
    assert_eq!(pts[0], 0);
    assert_eq!(*pts.last().unwrap(), CHROME_LAST_PTS);
    // 60 ms packets; Chrome's tfdt drifts by a sample at most between fragments, and the wrong
    // last trun duration (1008) must not leak into the next fragment's pts.
    for w in pts.windows(2) {
        assert!((2879..=2881).contains(&(w[1] - w[0])), "{pts:?}");
    }
    // The first chunk is only ftyp+moov.
    let first = demux([chunks[0].as_slice()]);
    assert!(first.packets.is_empty() && first.errors.is_empty());
    assert!(first.track.is_some());
}

#[test]
fn chrome_opus_random_splits_and_whole_file_give_identical_packets() {
    let chunks = fixture_chunks("chrome-mp4-opus");
    let expected = demux(chunks.iter().map(Vec::as_slice)).packets;
    let all = chunks.concat();
    assert_eq!(
        all,
        std::fs::read(fixture_dir("chrome-mp4-opus").join("all.mp4")).unwrap()
    );
    assert_eq!(demux([all.as_slice()]).packets, expected);
    for seed in 0..20 {
        let out = demux(random_split(&all, seed));
        assert_eq!(out.errors, [], "seed {seed}");
        assert_eq!(out.packets, expected, "seed {seed}");
    }
    // A trailing 0-byte chunk, as MediaRecorder delivers on stop.
    let mut with_empty: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    with_empty.push(&[]);
    assert_eq!(demux(with_empty).packets, expected);
}

#[test]
fn chrome_opus_corruptions_never_panic() {
    let all = fixture_chunks("chrome-mp4-opus").concat();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..300 {
        let mut bytes = all.clone();
        // Corrupt the headers more often than the audio, since that is where parsing happens.
        for _ in 0..rng.random_range(1..8) {
            let i = if rng.random_bool(0.7) {
                rng.random_range(0..1200)
            } else {
                rng.random_range(0..bytes.len())
            };
            bytes[i] = rng.random();
        }
        let cut = rng.random_range(0..=bytes.len());
        let _ = demux(random_split(&bytes[..cut], rng.random()));
    }
}

// ---- synthetic files -------------------------------------------------------------------

fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(payload);
    v
}

fn full(kind: &[u8; 4], flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = flags.to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    bx(kind, &v)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn ftyp() -> Vec<u8> {
    bx(b"ftyp", b"iso6\0\0\0\0iso6mp41")
}

fn audio_entry(kind: &[u8; 4], channels: u16, rate: u32, child: Vec<u8>) -> Vec<u8> {
    let mut e = vec![0u8; 6];
    e.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
    e.extend_from_slice(&[0; 8]); // version, revision, vendor
    e.extend_from_slice(&channels.to_be_bytes());
    e.extend_from_slice(&16u16.to_be_bytes());
    e.extend_from_slice(&[0; 4]);
    e.extend_from_slice(&(rate << 16).to_be_bytes());
    e.extend_from_slice(&bx(b"btrt", &[0; 12]));
    e.extend_from_slice(&child);
    bx(kind, &e)
}

fn dops(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut v = vec![0, channels];
    v.extend_from_slice(&pre_skip.to_be_bytes());
    v.extend_from_slice(&48_000u32.to_be_bytes());
    v.extend_from_slice(&0i16.to_be_bytes());
    v.push(0);
    bx(b"dOps", &v)
}

fn esds(object_type: u8, asc: &[u8]) -> Vec<u8> {
    let dsi = [&[0x05, asc.len() as u8][..], asc].concat();
    let mut dcd = vec![object_type, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    dcd.extend_from_slice(&dsi);
    // The long (0x80 0x80 0x80 n) length form, as ffmpeg writes it.
    let dcd = [&[0x04, 0x80, 0x80, 0x80, dcd.len() as u8][..], &dcd].concat();
    let es = [&[0, 1, 0][..], &dcd, &[0x06, 1, 2]].concat();
    let es = [&[0x03, es.len() as u8][..], &es].concat();
    full(b"esds", 0, &es)
}

/// A `trak` with a sample entry and, for a non-fragmented file, sample tables.
fn trak(id: u32, handler: &[u8; 4], timescale: u32, entry: Vec<u8>, tables: &[Vec<u8>]) -> Vec<u8> {
    let mut tkhd = vec![0u8; 8];
    tkhd.extend_from_slice(&id.to_be_bytes());
    tkhd.extend_from_slice(&[0; 72]);
    let mut mdhd = vec![0u8; 8];
    mdhd.extend_from_slice(&timescale.to_be_bytes());
    mdhd.extend_from_slice(&[0; 8]);
    let mut hdlr = vec![0u8; 4];
    hdlr.extend_from_slice(handler);
    hdlr.extend_from_slice(&[0; 13]);
    let stsd = full(b"stsd", 0, &[&1u32.to_be_bytes()[..], &entry].concat());
    let empty_tables = [
        full(b"stts", 0, &[0; 4]),
        full(b"stsc", 0, &[0; 4]),
        full(b"stsz", 0, &[0; 8]),
        full(b"stco", 0, &[0; 4]),
    ];
    let tables = if tables.is_empty() {
        &empty_tables[..]
    } else {
        tables
    };
    let stbl = bx(b"stbl", &cat(&[&[stsd][..], tables].concat()));
    let minf = bx(b"minf", &stbl);
    let mdia = bx(
        b"mdia",
        &cat(&[full(b"mdhd", 0, &mdhd), full(b"hdlr", 0, &hdlr), minf]),
    );
    bx(b"trak", &cat(&[full(b"tkhd", 3, &tkhd), mdia]))
}

fn trex(id: u32, duration: u32, size: u32) -> Vec<u8> {
    let v = [id, 1, duration, size, 0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect::<Vec<u8>>();
    full(b"trex", 0, &v)
}

fn moov(traks: &[Vec<u8>], mvex: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![full(b"mvhd", 0, &[0; 96])];
    parts.extend_from_slice(traks);
    if !mvex.is_empty() {
        parts.push(bx(b"mvex", &cat(mvex)));
    }
    bx(b"moov", &cat(&parts))
}

/// One `traf` of a synthetic fragment: track id, tfdt, sample payloads.
type Traf = (u32, Option<u64>, Vec<Vec<u8>>);

/// A moof+mdat pair: sizes go in the trun, durations default to `trex`, data offsets are
/// relative to the moof (default-base-is-moof).
fn fragment(trafs: &[Traf]) -> Vec<u8> {
    // Two passes: the trun data offsets depend on the moof size.
    let build = |moof_len: u32| {
        let mut data_pos = moof_len + 8;
        let mut out = Vec::new();
        for (id, tfdt, samples) in trafs {
            let tfhd = full(b"tfhd", 0x02_0000, &id.to_be_bytes());
            let mut trun = (samples.len() as u32).to_be_bytes().to_vec();
            trun.extend_from_slice(&data_pos.to_be_bytes());
            for s in samples {
                trun.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data_pos += s.len() as u32;
            }
            let mut parts = vec![tfhd];
            if let Some(t) = tfdt {
                parts.push(full(b"tfdt", 0x0100_0000, &t.to_be_bytes()));
            }
            parts.push(full(b"trun", 0x201, &trun));
            out.push(bx(b"traf", &cat(&parts)));
        }
        bx(
            b"moof",
            &cat(&[&[full(b"mfhd", 0, &1u32.to_be_bytes())][..], &out].concat()),
        )
    };
    let moof = build(build(0).len() as u32);
    let payload: Vec<u8> = trafs.iter().flat_map(|t| t.2.concat()).collect();
    cat(&[moof, bx(b"mdat", &payload)])
}

fn aac_header() -> Vec<u8> {
    cat(&[
        ftyp(),
        moov(
            &[
                trak(2, b"vide", 90_000, bx(b"avc1", &[0; 78]), &[]),
                trak(
                    1,
                    b"soun",
                    44_100,
                    audio_entry(b"mp4a", 2, 44_100, esds(0x40, &[0x12, 0x08])),
                    &[],
                ),
            ],
            &[trex(1, 1024, 0), trex(2, 3000, 0)],
        ),
    ])
}

fn samples(n: usize, base: u8) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![base + i as u8; 10 + i]).collect()
}

#[test]
fn synthetic_aac_fragments_with_other_track_interleaved() {
    let file = cat(&[
        aac_header(),
        fragment(&[(2, Some(0), samples(2, 200)), (1, Some(0), samples(3, 1))]),
        fragment(&[(1, Some(5000), samples(2, 50))]),
        // No tfdt: continues from the previous fragment's end (5000 + 2 * 1024).
        fragment(&[(1, None, samples(1, 90))]),
    ]);
    let out = demux([file.as_slice()]);
    assert_eq!(out.errors, []);
    let track = out.track.unwrap();
    assert_eq!(
        track.codec,
        Codec::Aac {
            config: vec![0x12, 0x08]
        }
    );
    // Channels and rate come from the AudioSpecificConfig (mono), not the sample entry (2).
    assert_eq!((track.sample_rate, track.channels), (44_100, 1));
    let got: Vec<(Vec<u8>, u64)> = out
        .packets
        .iter()
        .map(|p| (p.data.clone(), p.pts.unwrap()))
        .collect();
    let want: Vec<(Vec<u8>, u64)> = samples(3, 1)
        .into_iter()
        .zip([0, 1024, 2048])
        .chain(samples(2, 50).into_iter().zip([5000, 6024]))
        .chain(samples(1, 90).into_iter().zip([7048]))
        .collect();
    assert_eq!(got, want);
    for seed in 0..10 {
        assert_eq!(demux(random_split(&file, seed)).packets, out.packets);
    }
}

#[test]
fn pts_is_rescaled_when_timescale_differs_from_sample_rate() {
    let file = cat(&[
        ftyp(),
        moov(
            &[trak(
                1,
                b"soun",
                1000,
                audio_entry(b"mp4a", 1, 48_000, esds(0x40, &[0x11, 0x88])),
                &[],
            )],
            &[trex(1, 20, 0)],
        ),
        fragment(&[(1, Some(1000), samples(2, 1))]),
    ]);
    let pts: Vec<u64> = demux([file.as_slice()])
        .packets
        .iter()
        .map(|p| p.pts.unwrap())
        .collect();
    assert_eq!(pts, [48_000, 48_960]);
}

#[test]
fn dops_is_read_big_endian_not_as_opus_head() {
    let file = cat(&[
        ftyp(),
        moov(
            &[trak(
                1,
                b"soun",
                48_000,
                audio_entry(b"Opus", 2, 48_000, dops(2, 3840)),
                &[],
            )],
            &[trex(1, 960, 0)],
        ),
    ]);
    let track = demux([file.as_slice()]).track.unwrap();
    assert_eq!(
        track.codec,
        Codec::Opus {
            channels: 2,
            pre_skip: 3840
        }
    );
}

#[test]
fn non_fragmented_fast_start_file_uses_sample_tables() {
    // Three samples in two chunks (2 + 1), placed right after the moov.
    let data = samples(3, 7);
    let build = |mdat_start: u32| {
        let stsz = full(
            b"stsz",
            0,
            &[0u32, 3, 10, 11, 12]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        let stsc = full(
            b"stsc",
            0,
            &[2u32, 1, 2, 1, 2, 1, 1]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        let stco = full(
            b"stco",
            0,
            &[2u32, mdat_start + 8, mdat_start + 8 + 21]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        let stts = full(
            b"stts",
            0,
            &[1u32, 3, 1024]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        cat(&[
            ftyp(),
            moov(
                &[trak(
                    1,
                    b"soun",
                    48_000,
                    audio_entry(b"mp4a", 1, 48_000, esds(0x40, &[0x11, 0x88])),
                    &[stsz, stsc, stco, stts],
                )],
                &[],
            ),
            bx(b"free", &[0; 5]),
        ])
    };
    let header = build(build(0).len() as u32);
    let file = cat(&[header, bx(b"mdat", &data.concat())]);
    let out = demux([file.as_slice()]);
    assert_eq!(out.errors, []);
    let got: Vec<(Vec<u8>, u64)> = out
        .packets
        .iter()
        .map(|p| (p.data.clone(), p.pts.unwrap()))
        .collect();
    assert_eq!(
        got,
        data.into_iter().zip([0, 1024, 2048]).collect::<Vec<_>>()
    );
    for seed in 0..5 {
        assert_eq!(demux(random_split(&file, seed)).packets, out.packets);
    }
}

#[test]
fn mdat_before_moov_is_unsupported() {
    let file = cat(&[ftyp(), bx(b"mdat", &[1, 2, 3]), aac_header()]);
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Unsupported(
            "mp4 with mdat before moov (not fast-start)"
        )]
    );
}

#[test]
fn moof_before_moov_is_malformed() {
    let frag = fragment(&[(1, Some(0), samples(1, 1))]);
    assert_eq!(
        demux([frag.as_slice()]).errors,
        [Error::Malformed("mp4 moof before moov")]
    );
    let file = cat(&[ftyp(), frag]);
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Malformed("mp4 moof before moov")]
    );
}

#[test]
fn huge_declared_sizes_are_limits_without_allocation() {
    // A 4 GiB moov is refused as soon as its 8-byte header is seen.
    let mut d = Mp4Demuxer::new();
    d.push(&cat(&[
        ftyp(),
        0xffff_fff0u32.to_be_bytes().to_vec(),
        b"moov".to_vec(),
    ]))
    .unwrap();
    assert_eq!(
        d.next_packet(),
        Err(Error::Limit("mp4 moov/moof larger than 1 MiB"))
    );
    assert!(d.buf.capacity() < 4096);
    // The error is sticky.
    assert_eq!(
        d.push(&[0; 8]),
        Err(Error::Limit("mp4 moov/moof larger than 1 MiB"))
    );

    // A 64-bit largesize moof.
    let mut file = aac_header();
    file.extend_from_slice(&1u32.to_be_bytes());
    file.extend_from_slice(b"moof");
    file.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Limit("mp4 moov/moof larger than 1 MiB")]
    );

    // A huge sample count with default sizes (no per-sample bytes) in a tiny trun.
    let mut trun = u32::MAX.to_be_bytes().to_vec();
    trun.extend_from_slice(&0u32.to_be_bytes());
    let traf = bx(
        b"traf",
        &cat(&[
            full(b"tfhd", 0x02_0010, &[0, 0, 0, 1, 0, 0, 0, 9]),
            full(b"trun", 0x1, &trun),
        ]),
    );
    let file = cat(&[aac_header(), bx(b"moof", &traf)]);
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Limit("mp4 fragment with too many samples")]
    );

    // A huge sample size.
    let traf = bx(
        b"traf",
        &cat(&[
            full(b"tfhd", 0x02_0010, &[0, 0, 0, 1, 0x7f, 0, 0, 0]),
            full(b"trun", 0x1, &[0, 0, 0, 1, 0, 0, 0, 0]),
        ]),
    );
    let file = cat(&[aac_header(), bx(b"moof", &traf)]);
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Limit("mp4 sample larger than 1 MiB")]
    );
}

#[test]
fn truncated_moov_is_malformed_at_finish() {
    let header = aac_header();
    let out = demux([&header[..header.len() - 10]]);
    assert_eq!(out.errors, [Error::Malformed("truncated mp4 box")]);
    assert!(out.track.is_none());
    // A moov whose size is right but whose children overrun it.
    let mut broken = moov(
        &[trak(
            1,
            b"soun",
            48_000,
            audio_entry(b"Opus", 1, 48_000, dops(1, 312)),
            &[],
        )],
        &[],
    );
    let at = broken.len() - 30;
    broken[at..at + 4].copy_from_slice(&0x7fu32.to_be_bytes());
    let file = cat(&[ftyp(), broken]);
    assert!(matches!(
        demux([file.as_slice()]).errors[..],
        [Error::Malformed(_)]
    ));
}

#[test]
fn truncated_mdat_is_malformed_at_finish() {
    let file = cat(&[aac_header(), fragment(&[(1, Some(0), samples(3, 1))])]);
    let out = demux([&file[..file.len() - 5]]);
    assert_eq!(out.packets.len(), 2);
    assert_eq!(out.errors, [Error::Malformed("truncated mp4 box")]);
}

#[test]
fn video_only_and_other_codecs_are_unsupported() {
    let video = cat(&[
        ftyp(),
        moov(&[trak(1, b"vide", 90_000, bx(b"avc1", &[0; 78]), &[])], &[]),
    ]);
    assert_eq!(
        demux([video.as_slice()]).errors,
        [Error::Unsupported("mp4 without an audio track")]
    );
    let alac = cat(&[
        ftyp(),
        moov(
            &[trak(
                1,
                b"soun",
                44_100,
                audio_entry(b"alac", 2, 44_100, bx(b"alac", &[0; 28])),
                &[],
            )],
            &[],
        ),
    ]);
    assert_eq!(
        demux([alac.as_slice()]).errors,
        [Error::Unsupported("mp4 audio codec other than Opus or AAC")]
    );
    // MP3 in an mp4a entry (object type 0x6B).
    let mp3 = cat(&[
        ftyp(),
        moov(
            &[trak(
                1,
                b"soun",
                44_100,
                audio_entry(b"mp4a", 2, 44_100, esds(0x6b, &[])),
                &[],
            )],
            &[],
        ),
    ]);
    assert_eq!(
        demux([mp3.as_slice()]).errors,
        [Error::Unsupported("mp4a object type other than AAC")]
    );
}

#[test]
fn random_bytes_are_clean_errors() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..500 {
        let len = rng.random_range(0..3000);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        let out = demux(random_split(&bytes, rng.random()));
        assert!(out.packets.is_empty());
        assert!(len < 8 || !out.errors.is_empty(), "{len} bytes accepted");
    }
    assert_eq!(
        demux([b"\x00\x00\x00\x10\x01\x02\x03\x04 binary".as_slice()]).errors,
        [Error::Malformed("not an mp4 box header")]
    );
    assert_eq!(
        demux([b"not an mp4 at all".as_slice()]).errors,
        [Error::Malformed("mp4 stream does not start with ftyp")]
    );
}

#[test]
fn empty_input_is_not_an_error() {
    let out = demux([&[][..]]);
    assert!(out.errors.is_empty() && out.packets.is_empty() && out.track.is_none());
}

#[test]
fn ffmpeg_remuxed_non_fragmented_files() {
    let dir = fixture_dir("mp4-aac-48000");
    let fragmented = demux([std::fs::read(dir.join("all.mp4")).unwrap().as_slice()]).packets;

    // moov first: same packets as the fragmented original, from stsz/stsc/stco/stts.
    let bytes = std::fs::read(dir.join("faststart.mp4")).unwrap();
    let out = demux(random_split(&bytes, 1));
    assert_eq!(out.errors, []);
    assert_eq!(out.packets, fragmented);
    // ffmpeg's default layout puts mdat first, which would need the whole file buffered.
    let bytes = std::fs::read(dir.join("plain.mp4")).unwrap();
    assert_eq!(
        demux([bytes.as_slice()]).errors,
        [Error::Unsupported(
            "mp4 with mdat before moov (not fast-start)"
        )]
    );
}

#[test]
fn absurd_offsets_are_per_sample_errors_not_overflows() {
    // tfhd with an explicit base_data_offset near u64::MAX and default sizes.
    let mut tfhd = 1u32.to_be_bytes().to_vec();
    tfhd.extend_from_slice(&(u64::MAX - 4).to_be_bytes());
    tfhd.extend_from_slice(&100u32.to_be_bytes());
    let traf = bx(
        b"traf",
        &cat(&[full(b"tfhd", 0x11, &tfhd), full(b"trun", 0, &[0, 0, 0, 3])]),
    );
    let file = cat(&[aac_header(), bx(b"moof", &traf), bx(b"mdat", &[0; 300])]);
    let out = demux([file.as_slice()]);
    assert!(out.packets.is_empty());
    // The samples lie beyond this mdat, so they are reported missing at the end.
    assert_eq!(
        out.errors,
        [Error::Malformed("mp4 ended before all samples arrived")]
    );
    // A data offset pointing back into the moof: each sample is a recoverable error.
    let traf = bx(
        b"traf",
        &cat(&[
            full(b"tfhd", 0x02_0010, &[0, 0, 0, 1, 0, 0, 0, 4]),
            full(b"trun", 0x1, &[0, 0, 0, 2, 0, 0, 0, 0]),
        ]),
    );
    let file = cat(&[aac_header(), bx(b"moof", &traf), bx(b"mdat", &[0; 8])]);
    assert_eq!(
        demux([file.as_slice()]).errors,
        [Error::Malformed("mp4 sample outside its mdat"); 2]
    );
}
