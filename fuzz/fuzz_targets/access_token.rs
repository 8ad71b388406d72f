//! What a client controls in authentication: the access token (`Authenticator::authenticate`:
//! JWT header, base64, claims JSON, signature) and the query string a socket token travels in
//! (`query_param`, and the access log's `redact_query`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem::auth::{AuthConfig, Authenticator};
use tandem::http::filters::query_param;
use tandem::http::redact_query;

fuzz_target!(|data: &[u8]| {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        Authenticator::new(AuthConfig::new(
            b"fuzz-secret-fuzz-secret-fuzz-secret!".to_vec(),
        ))
        .expect("valid auth config")
    });
    let text = String::from_utf8_lossy(data);
    // A forged token must never authenticate: the fuzzer cannot produce an HMAC.
    assert!(auth.authenticate(&text).is_err());
    let _ = redact_query(&text);
    if let Some(token) = query_param(&text, "token") {
        assert!(auth.authenticate(&token).is_err());
    }
});
