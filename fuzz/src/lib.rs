//! What every demuxer fuzz target does: arbitrary bytes, cut into chunks at a size taken from
//! the first input byte, pushed through a demuxer that must return packets or a clean error —
//! never panic, hang or grow without bound.

use tandem::audio::demux::Demuxer;
use tandem::audio::Error;

/// Feeds `data` to `demuxer` as the fuzz targets do.
pub fn drive(demuxer: &mut dyn Demuxer, data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    for chunk in rest.chunks(usize::from(step).max(1)) {
        if demuxer.push(chunk).is_err() {
            return;
        }
        loop {
            match demuxer.next_packet() {
                Ok(Some(_)) | Err(Error::ResetRequired) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = demuxer.finish();
}
