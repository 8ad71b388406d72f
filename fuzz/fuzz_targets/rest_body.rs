//! A REST request body through `filters::parse_json`, the function every JSON route's body
//! filter calls, into each request type in turn. Raw bytes, invalid UTF-8 included, as a
//! client can send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::http::filters::parse_json;
use tandem::http::models::{
    CreateConversationRequest, LoginRequest, RefreshRequest, RegisterRequest,
    UpdatePatientRequest,
};

fuzz_target!(|body: &[u8]| {
    let _ = parse_json::<RegisterRequest>(body);
    let _ = parse_json::<LoginRequest>(body);
    let _ = parse_json::<RefreshRequest>(body);
    let _ = parse_json::<CreateConversationRequest>(body);
    let _ = parse_json::<UpdatePatientRequest>(body);
});
