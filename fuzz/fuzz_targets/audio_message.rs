//! An audio-socket text frame through the parser the socket uses (`ws_audio::parse_text`):
//! base64 audio, JSON commands, declared MIME types. Binary frames go straight to the
//! transcoder, which has its own target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::http::ws_audio::parse_text;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_text(text);
    }
});
