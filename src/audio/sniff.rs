//! Recognising a stream's format: magic bytes first, declared MIME type second.
//!
//! Design decision: bytes win over declarations. Browsers label the same bytes differently
//! (`video/webm` for audio-only WebM, `audio/mp4` for Opus or AAC), while the first bytes of a
//! container are unambiguous. Headerless PCM has no magic, so it is only ever declared.

use super::{Error, InputFormat, Result};

/// EBML magic, the first element ID of every WebM/Matroska file.
const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];
const OGG_MAGIC: [u8; 4] = *b"OggS";
/// Bytes needed to decide: an MP4 `ftyp` box type sits at offset 4.
pub const SNIFF_LEN: usize = 8;

/// Recognises a container from the first bytes of a recording.
///
/// Returns `Ok(None)` when `head` is a prefix of a magic but too short to decide (a chunk may be
/// cut anywhere, even inside the first 8 bytes), so the caller keeps it and asks again.
///
/// # Errors
/// [`Error::Unsupported`] when the bytes match no container we demux.
pub fn sniff(head: &[u8]) -> Result<Option<InputFormat>> {
    let n = head.len().min(4);
    if head[..n] == EBML_MAGIC[..n] || head[..n] == OGG_MAGIC[..n] {
        if head.len() < 4 {
            return Ok(None);
        }
        return Ok(Some(if head[..4] == EBML_MAGIC {
            InputFormat::WebM
        } else {
            InputFormat::Ogg
        }));
    }
    if head.len() < SNIFF_LEN {
        // An MP4 box size is arbitrary, so any short prefix could still become `....ftyp`.
        return Ok(None);
    }
    if &head[4..8] == b"ftyp" {
        return Ok(Some(InputFormat::Mp4));
    }
    Err(Error::Unsupported("unrecognised container"))
}

/// Whether a chunk starts a new recording: an EBML header, an Ogg page with the BOS flag
/// (every Ogg page starts with `OggS`, and Firefox chunks often start on a page), or `ftyp`
/// (later MP4 chunks start with `moof`).
pub fn is_recording_start(head: &[u8]) -> bool {
    head.starts_with(&EBML_MAGIC)
        || (head.len() >= 6 && head.starts_with(&OGG_MAGIC) && head[5] & 0x02 != 0)
        || (head.len() >= SNIFF_LEN && &head[4..8] == b"ftyp")
}

/// Parses a declared MIME type (from a `start` message or a `Content-Type`).
///
/// `sample_rate` is the separately declared rate (the `start` message's `sampleRate`); a
/// `rate=` parameter in the MIME type takes precedence. Headerless PCM needs one of them,
/// except `audio/pcm` which defaults to [`super::OUTPUT_RATE`] (the Realtime API's own format).
///
/// # Errors
/// [`Error::Unsupported`] for any other type, a codec we do not decode, or a PCM rate outside
/// 8–96 kHz or channel count outside 1–2.
pub fn parse_mime(mime: &str, sample_rate: Option<u32>) -> Result<InputFormat> {
    let mut parts = mime.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut codecs = String::new();
    let mut rate = None;
    let mut channels = 1u16;
    for param in parts {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_ascii_lowercase();
        match k.trim().to_ascii_lowercase().as_str() {
            "codecs" => codecs = v,
            "rate" => rate = Some(v.parse().map_err(|_| Error::Unsupported("pcm rate"))?),
            "channels" => channels = v.parse().map_err(|_| Error::Unsupported("pcm channels"))?,
            _ => {}
        }
    }
    let codec_ok = |allowed: &[&str]| {
        codecs.is_empty()
            || codecs
                .split(',')
                .all(|c| allowed.iter().any(|a| c.trim().starts_with(a)))
    };
    match essence.as_str() {
        "audio/webm" | "video/webm" if codec_ok(&["opus", "pcm"]) => Ok(InputFormat::WebM),
        "audio/ogg" | "application/ogg" if codec_ok(&["opus"]) => Ok(InputFormat::Ogg),
        "audio/mp4" | "video/mp4" if codec_ok(&["opus", "mp4a.40"]) => Ok(InputFormat::Mp4),
        "audio/pcm" | "audio/l16" | "audio/x-raw" => {
            let default = (essence == "audio/pcm").then_some(super::OUTPUT_RATE);
            let sample_rate = rate
                .or(sample_rate)
                .or(default)
                .ok_or(Error::Unsupported("pcm without a sample rate"))?;
            if !(8_000..=96_000).contains(&sample_rate) {
                return Err(Error::Unsupported("pcm rate"));
            }
            if !(1..=2).contains(&channels) {
                return Err(Error::Unsupported("pcm channels"));
            }
            Ok(InputFormat::Pcm16 {
                sample_rate,
                channels,
            })
        }
        "audio/webm" | "video/webm" | "audio/ogg" | "application/ogg" | "audio/mp4"
        | "video/mp4" => Err(Error::Unsupported("codec")),
        _ => Err(Error::Unsupported("mime type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(
            sniff(&[0x1A, 0x45, 0xDF, 0xA3, 1]).unwrap(),
            Some(InputFormat::WebM)
        );
        assert_eq!(sniff(b"OggS\0\x02").unwrap(), Some(InputFormat::Ogg));
        assert_eq!(
            sniff(b"\0\0\0\x1cftypiso6").unwrap(),
            Some(InputFormat::Mp4)
        );
        assert_eq!(sniff(&[0x1A, 0x45]).unwrap(), None);
        assert_eq!(sniff(b"Og").unwrap(), None);
        assert_eq!(sniff(b"").unwrap(), None);
        assert_eq!(sniff(b"\0\0\0\x1cft").unwrap(), None);
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WAVE").unwrap_err(),
            Error::Unsupported("unrecognised container")
        );
        assert!(is_recording_start(b"OggS\0\x02"));
        assert!(!is_recording_start(b"OggS\0\x00"));
        assert!(!is_recording_start(b"Ogg"));
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            parse_mime("audio/webm;codecs=opus", None),
            Ok(InputFormat::WebM)
        );
        assert_eq!(
            parse_mime("audio/webm; codecs=\"pcm\"", None),
            Ok(InputFormat::WebM)
        );
        assert_eq!(parse_mime("audio/ogg", None), Ok(InputFormat::Ogg));
        assert_eq!(
            parse_mime("audio/mp4;codecs=mp4a.40.2", None),
            Ok(InputFormat::Mp4)
        );
        assert_eq!(
            parse_mime("audio/pcm;rate=16000", None),
            Ok(InputFormat::Pcm16 {
                sample_rate: 16_000,
                channels: 1
            })
        );
        assert_eq!(
            parse_mime("audio/L16", Some(44_100)),
            Ok(InputFormat::Pcm16 {
                sample_rate: 44_100,
                channels: 1
            })
        );
        assert_eq!(
            parse_mime("audio/pcm", None),
            Ok(InputFormat::Pcm16 {
                sample_rate: 24_000,
                channels: 1
            })
        );
        assert!(parse_mime("audio/l16", None).is_err());
        assert_eq!(
            parse_mime("audio/webm;codecs=vorbis", None),
            Err(Error::Unsupported("codec"))
        );
        assert_eq!(
            parse_mime("audio/mpeg", None),
            Err(Error::Unsupported("mime type"))
        );
        assert!(parse_mime("audio/pcm;rate=1000", None).is_err());
    }
}
