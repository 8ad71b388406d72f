//! Mono sample-rate conversion to 24 kHz for PCM and AAC input (Opus decodes at 24 kHz itself).
//!
//! Design decision: a thin wrapper over rubato's synchronous FFT resampler (`FftFixedIn`), which
//! wants fixed-size input chunks. The wrapper buffers arbitrary push sizes, reuses pre-allocated
//! buffers (`process_into_buffer`), hides rubato's constant output delay, and on `flush` pads
//! with silence and trims so that N seconds in give N seconds out (to the sample).

use rubato::{FftFixedIn, Resampler as _};

use super::{Error, Result};

/// Input chunk: 20 ms. Longer FFTs filter more sharply but add latency (about half a chunk).
const CHUNK_MS: u32 = 20;

/// A mono resampler between two fixed rates.
pub struct Resampler {
    core: Core,
    in_rate: u32,
    out_rate: u32,
    /// Input not yet consumed by a whole chunk.
    pending: Vec<f32>,
    total_in: u64,
}

/// rubato and its output side, apart from `pending` so a chunk can borrow the latter.
struct Core {
    inner: FftFixedIn<f32>,
    /// rubato's output buffer (one channel), sized once to `output_frames_max`.
    out_buf: Vec<Vec<f32>>,
    /// Output samples still to drop: rubato's constant delay.
    delay_left: usize,
    total_out: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("in_rate", &self.in_rate)
            .field("out_rate", &self.out_rate)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// # Errors
    /// [`Error::Unsupported`] when rubato rejects the rates (zero, or an absurd ratio).
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self> {
        let chunk = (in_rate * CHUNK_MS / 1000).max(1) as usize;
        let inner = FftFixedIn::<f32>::new(in_rate as usize, out_rate as usize, chunk, 1, 1)
            .map_err(|_| Error::Unsupported("resampling ratio"))?;
        let out_buf = vec![vec![0.0; inner.output_frames_max()]];
        let delay_left = inner.output_delay();
        Ok(Resampler {
            pending: Vec::with_capacity(inner.input_frames_max() * 2),
            core: Core {
                inner,
                out_buf,
                delay_left,
                total_out: 0,
            },
            in_rate,
            out_rate,
            total_in: 0,
        })
    }

    /// Resamples `input`, appending whatever whole chunks yield to `out`; the remainder waits
    /// for the next call or [`Resampler::flush`].
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.total_in += input.len() as u64;
        self.pending.extend_from_slice(input);
        let mut used = 0;
        while self.pending.len() - used >= self.core.inner.input_frames_next() {
            let n = self.core.inner.input_frames_next();
            used += self.core.run(&self.pending[used..used + n], out);
        }
        self.pending.drain(..used);
    }

    /// Ends the stream: pushes the buffered input and rubato's delay line out, padded with
    /// silence, and trims so the total output is the input duration at the output rate.
    /// The resampler is then ready for a new stream.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let expected = (self.total_in * u64::from(self.out_rate) + u64::from(self.in_rate) / 2)
            / u64::from(self.in_rate);
        let start = out.len();
        while self.core.total_out < expected {
            let n = self.core.inner.input_frames_next();
            if self.pending.len() < n {
                self.pending.resize(n, 0.0);
            }
            let used = self.core.run(&self.pending[..n], out);
            self.pending.drain(..used);
        }
        let excess = (self.core.total_out - expected) as usize;
        out.truncate(out.len() - excess.min(out.len() - start));
        self.core.inner.reset();
        self.core.delay_left = self.core.inner.output_delay();
        self.core.total_out = 0;
        self.pending.clear();
        self.total_in = 0;
    }
}

impl Core {
    /// Runs one chunk; returns the input frames consumed.
    fn run(&mut self, chunk: &[f32], out: &mut Vec<f32>) -> usize {
        // The buffers are sized from rubato's own `input_frames_next`/`output_frames_max`,
        // so the only error it documents (wrong buffer sizes) cannot happen.
        let Ok((used, produced)) =
            self.inner
                .process_into_buffer(&[chunk], &mut self.out_buf, None)
        else {
            return chunk.len();
        };
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        out.extend_from_slice(&self.out_buf[0][skip..produced]);
        self.total_out += (produced - skip) as u64;
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, secs: f32, hz: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (i as f32 * hz * std::f32::consts::TAU / rate as f32).sin())
            .collect()
    }

    #[test]
    fn lengths_hold_for_any_push_size() {
        for rate in [16_000, 44_100, 48_000, 8_000] {
            let input = tone(rate, 1.37, 440.0);
            for push in [1usize, 100, 441, 5000, input.len()] {
                let mut r = Resampler::new(rate, 24_000).unwrap();
                let mut out = Vec::new();
                for c in input.chunks(push) {
                    r.process(c, &mut out);
                }
                r.flush(&mut out);
                let want = (input.len() as u64 * 24_000 + u64::from(rate) / 2) / u64::from(rate);
                assert_eq!(out.len() as u64, want, "rate {rate} push {push}");
            }
        }
    }

    #[test]
    fn aligned_and_reusable_after_flush() {
        let input = tone(48_000, 0.5, 300.0);
        let expect = tone(24_000, 0.5, 300.0);
        let mut r = Resampler::new(48_000, 24_000).unwrap();
        for _ in 0..2 {
            let mut out = Vec::new();
            r.process(&input, &mut out);
            r.flush(&mut out);
            // Delay compensated: the output lines up with the ideal tone (away from the edges).
            let err: f32 = out[2000..10_000]
                .iter()
                .zip(&expect[2000..10_000])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 0.01, "max error {err}");
            // The tail is flushed, not dropped: the last 10 ms still carry the tone.
            let tail: f32 = out[out.len() - 240..].iter().map(|s| s.abs()).sum();
            assert!(tail > 50.0, "tail energy {tail}");
        }
    }
}
