//! Arbitrary bytes, cut into chunks at positions taken from the input itself, through the
//! webm demuxer: it must return packets or a clean error, never panic or grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::audio::demux::webm::WebmDemuxer;
use tandem::audio::demux::Demuxer;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut d = WebmDemuxer::new();
    for chunk in rest.chunks(usize::from(step).max(1)) {
        if d.push(chunk).is_err() {
            return;
        }
        loop {
            match d.next_packet() {
                Ok(Some(_)) | Err(tandem::audio::Error::ResetRequired) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = d.finish();
});
