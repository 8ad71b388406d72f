//! The whole chain (sniff, demux, decode, resample, framing) on arbitrary chunked bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::audio::transcoder::Transcoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut t = Transcoder::new(None);
    let mut frames = Vec::new();
    for chunk in rest.chunks(usize::from(step).max(1)) {
        let _ = t.push(chunk, &mut frames);
    }
    let _ = t.finish(&mut frames);
});
