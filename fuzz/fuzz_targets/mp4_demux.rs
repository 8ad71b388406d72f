//! The mp4 demuxer on arbitrary chunked bytes (see `tandem_fuzz::drive`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::audio::demux::mp4::Mp4Demuxer;

fuzz_target!(|data: &[u8]| tandem_fuzz::drive(&mut Mp4Demuxer::new(), data));
