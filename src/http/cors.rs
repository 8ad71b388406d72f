//! CORS for the original frontend, which runs on its own origin and preflights every call.
//!
//! Design decision: hand-rolled instead of `warp::cors()`, because warp's wrapper adds no
//! headers to rejected requests (so error bodies would be unreadable to the browser) and
//! rejects disallowed origins outright. Here the preflight is answered before routing, and
//! `Access-Control-Allow-Origin` is added to *every* response, errors included, when the
//! request's origin is allowed. A disallowed origin is never echoed.

use std::collections::HashSet;
use std::sync::Arc;

use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

const ALLOW_HEADERS: &str = "authorization,content-type";
const ALLOW_METHODS: &str = "GET,POST,PATCH,DELETE,OPTIONS";
const MAX_AGE_SECS: &str = "600";

/// The allowed origins. `*` allows any origin (its value is still echoed, not `*`).
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Arc<HashSet<String>>,
    any: bool,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: Arc::new(
                origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_owned())
                    .collect(),
            ),
        }
    }

    /// The request's `Origin` if it is allowed.
    fn allowed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        (self.any || self.origins.contains(s)).then_some(origin)
    }

    /// Is this a CORS preflight (`OPTIONS` with `Origin`)? Such requests never reach routing.
    pub fn is_preflight(method: &warp::http::Method, headers: &HeaderMap) -> bool {
        method == warp::http::Method::OPTIONS && headers.contains_key(header::ORIGIN)
    }

    /// The preflight answer: 204 with the allow headers for an allowed origin, 403 otherwise.
    pub fn preflight(&self, headers: &HeaderMap) -> Response {
        match self.allowed(headers) {
            Some(origin) => {
                let mut res = Response::new(Default::default());
                *res.status_mut() = StatusCode::NO_CONTENT;
                let h = res.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOW_HEADERS),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOW_METHODS),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(MAX_AGE_SECS),
                );
                h.insert(header::VARY, HeaderValue::from_static("origin"));
                res
            }
            None => super::error::error_response(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "origin not allowed",
            ),
        }
    }

    /// Adds `Access-Control-Allow-Origin` (and `Vary: Origin`) to a response.
    pub fn decorate(&self, headers: &HeaderMap, mut res: Response) -> Response {
        if let Some(origin) = self.allowed(headers) {
            res.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            res.headers_mut()
                .append(header::VARY, HeaderValue::from_static("origin"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h
    }

    #[test]
    fn allowed_origin_preflight_and_echo() {
        let cors = Cors::new(&["http://localhost:5173".into()]);
        let res = cors.preflight(&headers("http://localhost:5173"));
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://localhost:5173"
        );
        assert_eq!(
            res.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            ALLOW_HEADERS
        );
        let res = cors.decorate(&headers("http://localhost:5173"), Response::default());
        assert_eq!(
            res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://localhost:5173"
        );
    }

    #[test]
    fn disallowed_origin_not_echoed() {
        let cors = Cors::new(&["http://localhost:5173".into()]);
        let res = cors.preflight(&headers("http://evil.example"));
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(!res
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let res = cors.decorate(&headers("http://evil.example"), Response::default());
        assert!(!res
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn wildcard_echoes_origin() {
        let cors = Cors::new(&["*".into()]);
        let res = cors.decorate(&headers("http://a.example"), Response::default());
        assert_eq!(
            res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://a.example"
        );
    }
}
