//! The clinician web console at `/app`: hand-written HTML, CSS and JavaScript modules from
//! `console/`, embedded in the binary so a fresh install serves it with no Node build.
//!
//! Design decisions:
//! - The console is a client of the public API only (REST + `/ws` + `/transcription`); this
//!   module serves bytes and nothing else, so it has no access to state.
//! - A path whose last segment has a dot is a file: served if embedded, else 404. Any other
//!   path under `/app` is a screen of the single-page app and gets `index.html`, so deep links
//!   and reloads work.
//! - File names carry no content hash, so every response is `no-cache` with a strong ETag: the
//!   browser revalidates (a 304 costs one round trip) and never runs a stale script after an
//!   upgrade.
//! - A strict Content-Security-Policy (no inline script or style, no third-party origins)
//!   limits what an injected string could do on a page that shows patient data.

use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::path::Tail;
use warp::reply::Response;
use warp::Filter;

use super::error::error_response;

/// One embedded file.
struct Asset {
    /// Path below `/app/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &str = "index.html";

/// An [`Asset`] from `console/<path>`.
macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("recorder.js", JS),
    asset!("pcm-worklet.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Strong ETags of [`ASSETS`], same order; hashed once on first use.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// `GET /app`, `/app/` and everything below.
pub fn route() -> BoxedFilter<(Response,)> {
    warp::path("app")
        .and(warp::get())
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("host"))
        .and(warp::header::optional::<String>("if-none-match"))
        .map(
            |tail: Tail, host: Option<String>, if_none_match: Option<String>| {
                serve(tail.as_str(), host.as_deref(), if_none_match.as_deref())
            },
        )
        .boxed()
}

/// The response for `/app/<path>`; pure, so it is tested without a server.
fn serve(path: &str, host: Option<&str>, if_none_match: Option<&str>) -> Response {
    let Some(index) = resolve(path) else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "route not found");
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        let mut res = Response::new(Vec::new().into());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        Response::new(asset.body.into())
    };
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_security_policy(host)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Index into [`ASSETS`] for a path below `/app/`, or `None` for an unknown file.
fn resolve(path: &str) -> Option<usize> {
    let last = path.rsplit('/').next().unwrap_or_default();
    if !last.contains('.') {
        return ASSETS.iter().position(|a| a.path == INDEX);
    }
    ASSETS.iter().position(|a| a.path == path)
}

/// The policy: everything from this origin only. The sockets are named with the request's own
/// host because older browsers do not let `'self'` cover `ws:`/`wss:`; a host with characters a
/// host name cannot have is left out rather than echoed.
fn content_security_policy(host: Option<&str>) -> String {
    let sockets = host
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob: data:; connect-src 'self'{sockets}; worker-src 'self'; \
         manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(res: &'a Response, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn screens_get_the_app_shell() {
        for path in [
            "",
            "login",
            "conversations/0193f1c2-5a7e/summary",
            "patients/",
        ] {
            let res = serve(path, Some("127.0.0.1:8080"), None);
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
        }
    }

    #[test]
    fn files_get_their_type_and_unknown_files_404() {
        let res = serve("app.js", None, None);
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(serve("console.css", None, None).status(), 200);
        assert_eq!(serve("missing.js", None, None).status(), 404);
        assert_eq!(serve("conversations/app.js", None, None).status(), 404);
        assert_eq!(serve("../Cargo.toml", None, None).status(), 404);
    }

    #[test]
    fn etag_revalidation_answers_304() {
        let first = serve("app.js", None, None);
        let etag = header(&first, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
        assert_eq!(header(&first, "cache-control"), "no-cache");
        let again = serve("app.js", None, Some(&format!("\"x\", {etag}")));
        assert_eq!(again.status(), 304);
        assert_eq!(serve("app.js", None, Some("\"stale\"")).status(), 200);
    }

    #[test]
    fn csp_names_the_sockets_of_a_sane_host_only() {
        let res = serve("", Some("clinic.example:8443"), None);
        let csp = header(&res, "content-security-policy");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws://clinic.example:8443 wss://clinic.example:8443;"),
            "{csp}"
        );
        let odd = content_security_policy(Some("evil; script-src *"));
        assert!(odd.contains("connect-src 'self';"), "{odd}");
        assert!(!odd.contains("evil"));
    }
}
