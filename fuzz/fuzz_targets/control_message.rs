//! A control-socket text frame through the parser the socket uses (`ws_control::parse_request`):
//! a typed request or a `Problem` with a stable code, never a panic. The parse is pure, so
//! everything a client controls before a store lookup is covered here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::http::ws_control::parse_request;

fuzz_target!(|data: &[u8]| {
    // The socket layer hands over text frames only after UTF-8 validation.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_request(text);
    }
});
