//! What every simulated browser streams: a fixture's chunks as ready-made
//! `input_audio_buffer.append` frames, and for each send the PCM total Tandem has passed to
//! speech-to-text once it has decoded that chunk.
//!
//! Key decision: the PCM totals come from running Tandem's own [`Transcoder`] over the exact
//! sequence of chunks a conversation sends (the recording repeated back to back, each repeat
//! starting with its container header, as a new MediaRecorder on the same socket would). The
//! server decodes the same bytes with the same code, so "the chunk's PCM has reached the
//! provider" is "the provider has received this many samples on the conversation's socket",
//! with no marker in the audio and no clock shared with the server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Error;
use crate::audio::transcoder::Transcoder;

/// A fixture folder turned into the frames of a run.
#[derive(Debug)]
pub struct Recording {
    /// The chunk bytes, for computing the PCM totals.
    chunks: Vec<Vec<u8>>,
    /// One `input_audio_buffer.append` text frame per chunk (cheap to clone).
    frames: Vec<Utf8Bytes>,
    /// Audio carried by one chunk: the recording's duration over its chunk count.
    pub chunk_audio: Duration,
}

/// One send of a conversation's run.
#[derive(Debug, Clone)]
pub struct Send {
    pub frame: Utf8Bytes,
    /// Total samples (24 kHz) the provider has received from this socket once this chunk's
    /// PCM is through; `None` when decoding the chunk yields no new samples (nothing to time).
    pub pcm_total: Option<u64>,
}

impl Recording {
    /// Loads `dir` (a fixture folder with `meta.json` and `chunk-NNN.bin`). With `timeslice`,
    /// the folder's `all.*` byte stream is re-cut into pieces of about that much audio, at
    /// arbitrary byte positions as a MediaRecorder's cuts fall; without it the browser's own
    /// chunks are sent.
    ///
    /// # Errors
    /// The folder is missing, incomplete or not decodable.
    pub fn load(dir: &Path, timeslice: Option<Duration>) -> Result<Recording, Error> {
        let fixture = |what: &str| Error::Fixture(format!("{}: {what}", dir.display()));
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("meta.json")).map_err(|e| fixture(&e.to_string()))?,
        )
        .map_err(|e| fixture(&format!("meta.json: {e}")))?;
        let duration_ms = meta["duration_ms"]
            .as_f64()
            .filter(|d| *d > 0.0)
            .ok_or_else(|| fixture("meta.json has no duration_ms"))?;
        let chunks = match timeslice {
            None => (0..)
                .map_while(|i| std::fs::read(dir.join(format!("chunk-{i:03}.bin"))).ok())
                .collect::<Vec<_>>(),
            Some(slice) => {
                let file = meta["file"]
                    .as_str()
                    .ok_or_else(|| fixture("meta.json has no file"))?;
                let all = std::fs::read(dir.join(file)).map_err(|e| fixture(&e.to_string()))?;
                let pieces = ((duration_ms / slice.as_secs_f64() / 1000.0).round() as usize)
                    .clamp(1, all.len().max(1));
                (0..pieces)
                    .map(|i| all[i * all.len() / pieces..(i + 1) * all.len() / pieces].to_vec())
                    .collect()
            }
        };
        if chunks.is_empty() {
            return Err(fixture("no chunk-000.bin"));
        }
        let frames = chunks
            .iter()
            .map(|chunk| {
                let audio = base64::engine::general_purpose::STANDARD.encode(chunk);
                let frame =
                    serde_json::json!({"type": "input_audio_buffer.append", "audio": audio});
                Utf8Bytes::from(frame.to_string())
            })
            .collect::<Vec<_>>();
        let chunk_audio = Duration::from_secs_f64(duration_ms / 1000.0 / frames.len() as f64);
        let recording = Recording {
            chunks,
            frames,
            chunk_audio,
        };
        // Fail now, not in the middle of a run, if the server could not decode it either.
        recording.sends(recording.frames.len())?;
        Ok(recording)
    }

    /// The default fixture: Chrome's 31.2 s WebM/Opus recording at a 1 s timeslice.
    pub fn default_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chrome-webm-opus-31s")
    }

    /// Number of chunks in one pass of the recording.
    pub fn chunk_count(&self) -> usize {
        self.frames.len()
    }

    /// The first `count` sends of a conversation: the recording looped, with the PCM total
    /// after each chunk.
    ///
    /// # Errors
    /// The transcoder rejected the fixture.
    pub fn sends(&self, count: usize) -> Result<Vec<Send>, Error> {
        let mut transcoder = Transcoder::new(None);
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut sends = Vec::with_capacity(count);
        let passes = self.chunks.iter().zip(&self.frames).cycle().take(count);
        for (chunk, frame) in passes {
            out.clear();
            transcoder
                .push(chunk, &mut out)
                .map_err(|e| Error::Fixture(format!("the transcoder rejects the fixture: {e}")))?;
            let added: u64 = out.iter().map(|f| f.samples.len() as u64).sum();
            total += added;
            sends.push(Send {
                frame: frame.clone(),
                pcm_total: (added > 0).then_some(total),
            });
        }
        Ok(sends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_31s_fixture_loops_with_growing_pcm_totals() {
        let rec = Recording::load(&Recording::default_dir(), None).expect("fixture");
        assert_eq!(rec.chunk_count(), 31);
        let sends = rec.sends(2 * rec.chunk_count() + 1).expect("sends");
        let totals: Vec<u64> = sends.iter().filter_map(|s| s.pcm_total).collect();
        assert!(totals.windows(2).all(|w| w[0] < w[1]), "strictly growing");
        // By its last chunk one pass has decoded to the whole recording: 520 Opus packets of
        // 60 ms at 24 kHz, the length of the libopus reference in its meta.json.
        let first_pass = sends[rec.chunk_count() - 1].pcm_total.expect("samples");
        assert_eq!(first_pass, 748_800);
        // The repeat starts with its own header (a new recording) and decodes to as much again.
        let second_pass = sends[2 * rec.chunk_count() - 1].pcm_total.expect("samples");
        assert_eq!(second_pass, 2 * first_pass);
    }

    #[test]
    fn a_timeslice_recuts_the_byte_stream() {
        let rec = Recording::load(&Recording::default_dir(), Some(Duration::from_millis(250)))
            .expect("fixture");
        assert_eq!(rec.chunk_count(), 125);
        assert!((rec.chunk_audio.as_secs_f64() - 0.2496).abs() < 1e-3);
    }
}
