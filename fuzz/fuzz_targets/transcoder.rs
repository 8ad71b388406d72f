//! The whole chain (sniff, demux, decode, resample, framing) on arbitrary chunked bytes.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use tandem::audio::transcoder::Transcoder;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, even one the decoders catch on
    // purpose (symphonia's AAC decoder panics on some corrupt packets; production contains it
    // and reports an error). A silent hook lets those be caught as in production; a panic that
    // escapes `Transcoder` still reaches libfuzzer-sys's `catch_unwind`, which aborts and
    // saves the input as a crash.
    static QUIET: Once = Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
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
