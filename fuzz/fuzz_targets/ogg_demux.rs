//! The ogg demuxer on arbitrary chunked bytes (see `tandem_fuzz::drive`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::audio::demux::ogg::OggDemuxer;

fuzz_target!(|data: &[u8]| tandem_fuzz::drive(&mut OggDemuxer::new(), data));
