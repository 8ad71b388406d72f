//! Reusable warp filters: state injection, authentication, bounded JSON bodies, client IP.
//!
//! Design decision: filters reject with an [`ApiError`] (a custom rejection) so the one
//! rejection handler renders every failure the same way; handlers never see an unauthenticated
//! request or an unparsed body.

use std::convert::Infallible;
use std::net::IpAddr;

use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use warp::http::HeaderMap;
use warp::{Filter, Rejection};

use super::error::ApiError;
use crate::auth::{self, Principal};
use crate::server::AppState;

/// Hands a clone of the state to the handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Requires `Authorization: Bearer <access token>`. For REST routes: tokens in URLs end up in
/// proxy logs and browser history, so REST does not accept `?token=`. The principal carries
/// the peer address for the audit log.
pub fn with_auth(
    state: AppState,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and(client_ip()).and_then(
        move |headers: HeaderMap, remote: Option<IpAddr>| {
            let state = state.clone();
            async move {
                let token = bearer(&headers).ok_or(ApiError::Auth(auth::Error::InvalidToken))?;
                let principal = state
                    .auth
                    .authenticate(token)
                    .map_err(|e| warp::reject::custom(ApiError::Auth(e)))?;
                Ok::<_, Rejection>(Principal {
                    remote,
                    ..principal
                })
            }
        },
    )
}

/// The raw query string, empty when there is none (warp's own filter rejects that case).
pub fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// The value of the first `name=` pair of a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(warp::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The peer address, for per-IP login throttling and the audit log. Proxies are not trusted:
/// behind one, all clients share the proxy's IP (and its login limit).
pub fn client_ip() -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    warp::addr::remote().map(|addr: Option<std::net::SocketAddr>| addr.map(|a| a.ip()))
}

/// A JSON body of at most `limit` bytes, whether or not the client sent `Content-Length`.
///
/// Rejects with 413 `payload_too_large` (checked on the header first, then while streaming),
/// 400 `bad_json` for malformed JSON, and 422 `invalid_field` for well-formed JSON of the
/// wrong shape (missing field, wrong type, unknown value).
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared, body| read_json(declared, body, limit))
}

async fn read_json<T, S, B>(declared: Option<u64>, body: S, limit: u64) -> Result<T, Rejection>
where
    T: DeserializeOwned,
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = std::pin::pin!(body);
    if declared.is_some_and(|n| n > limit) {
        drain(body, cap).await;
        return Err(warp::reject::custom(ApiError::PayloadTooLarge));
    }
    let initial = declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(cap);
    let mut buf = Vec::with_capacity(initial);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| warp::reject::custom(ApiError::BadJson(format!("reading body: {e}"))))?;
        if buf.len() + chunk.remaining() > cap {
            drain(body, cap).await;
            return Err(warp::reject::custom(ApiError::PayloadTooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    parse_json(&buf).map_err(warp::reject::custom)
}

/// How long a rejected body is read on before the 413 goes out anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards the rest of a rejected body, at most `cap` bytes and [`DRAIN_TIMEOUT`],
/// before the 413 is sent. Closing a connection with unread input makes the kernel answer with
/// a reset, which can destroy the 413 before the client reads it; a client still uploading a
/// body up to twice the limit thus gets its answer. Beyond that, the connection is closed.
async fn drain<S, B>(mut body: std::pin::Pin<&mut S>, cap: usize)
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    let mut left = cap;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.remaining());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Classifies serde errors: syntax and truncation are the client's JSON being broken (400);
/// data errors are a valid document with a bad field (422). The whole body must be UTF-8
/// (RFC 8259): serde_json alone does not check strings of fields it skips.
///
/// # Errors
/// [`ApiError::BadJson`] or [`ApiError::InvalidField`] as described.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::BadJson(format!("body is not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidField(e.to_string()),
        _ => ApiError::BadJson(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[allow(dead_code)] // only its presence and type matter here
        n: u32,
    }

    #[test]
    fn json_errors_are_classified() {
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::BadJson(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"nope"),
            Err(ApiError::BadJson(_))
        ));
        assert!(matches!(
            parse_json::<Body>(br#"{"n":"x"}"#),
            Err(ApiError::InvalidField(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{}"),
            Err(ApiError::InvalidField(_))
        ));
        assert!(parse_json::<Body>(br#"{"n":1}"#).is_ok());
        assert!(matches!(
            parse_json::<Body>(b"{\"n\":1,\"skipped\":\"\xff\"}"),
            Err(ApiError::BadJson(_))
        ));
    }

    #[test]
    fn bearer_and_query_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(
            query_param("conversationId=1&token=a%2Bb", "token").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param("", "token"), None);
    }
}
