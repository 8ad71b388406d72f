//! The one HTTP client every OpenAI-backed implementation shares: base URL, bearer key,
//! per-request timeout, bounded retries, and the mapping of HTTP outcomes to [`ai::Error`].
//!
//! Design decision: retries live here, once, with a bounded attempt count and capped backoff, and
//! a provider's `Retry-After` is honoured only up to [`OpenAiConfig::max_retry_wait`]; beyond that
//! the error surfaces at once, because a live interpretation gains nothing from a reply that
//! comes a minute late. Request and response bodies carry PHI and are never logged; the key is
//! redacted from `Debug`. Streamed answers (`post_stream`) go through the
//! same retry loop, which for them ends at the first body byte: after that the caller has
//! already used part of the answer, so a broken body is reported, not retried.
//!
//! [`ai::Error`]: crate::ai::Error

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ai::{Error, Result};

/// Voice names per speaker (provider voice ids such as `ash`, `coral`, `marin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voices {
    /// Voice that speaks the clinician's words (translated) to the patient.
    pub clinician: String,
    /// Voice that speaks the patient's words (translated) to the clinician.
    pub patient: String,
}

impl Default for Voices {
    /// Two voices every TTS model (including `tts-1`) accepts, distinct so the listener can
    /// tell who is speaking.
    fn default() -> Self {
        Voices {
            clinician: "ash".to_owned(),
            patient: "coral".to_owned(),
        }
    }
}

/// Settings for the OpenAI (or OpenAI-compatible) HTTP API. Plain struct: `config.rs` composes
/// it and tests build it directly.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// API root including the version, e.g. `https://api.openai.com/v1` or the fake's
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: url::Url,
    /// Sent as `Authorization: Bearer`; `None` for self-hosted servers without auth.
    pub api_key: Option<String>,
    /// Model for translation, detection, commands, summaries and histories.
    pub chat_model: String,
    /// Model for `/audio/speech`. `gpt-4o-mini-tts` follows voice `instructions`; `tts-1` (the
    /// original's choice, and what many self-hosted servers mimic) is the fallback and gets no
    /// `instructions`.
    pub tts_model: String,
    pub voices: Voices,
    /// Per attempt, from connect to the last body byte, for chat calls.
    pub request_timeout: Duration,
    /// Per attempt for speech synthesis (audio takes longer than text).
    pub tts_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt, for 429, 5xx, timeouts and transport errors.
    pub max_retries: u32,
    /// First backoff; doubles per retry up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the call with `RateLimited`.
    pub max_retry_wait: Duration,
}

impl OpenAiConfig {
    /// Defaults for everything but the endpoint and key.
    pub fn new(base_url: url::Url, api_key: Option<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url,
            api_key,
            chat_model: "gpt-4o-mini".to_owned(),
            tts_model: "gpt-4o-mini-tts".to_owned(),
            voices: Voices::default(),
            request_timeout: Duration::from_secs(20),
            tts_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 2,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            max_retry_wait: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("chat_model", &self.chat_model)
            .field("tts_model", &self.tts_model)
            .field("voices", &self.voices)
            .field("request_timeout", &self.request_timeout)
            .field("tts_timeout", &self.tts_timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// How long the longest error-body excerpt kept for logs is.
const BODY_EXCERPT: usize = 512;

/// A response that succeeded: body bytes plus its content type.
pub(crate) struct RawResponse {
    pub body: bytes::Bytes,
    pub content_type: Option<String>,
}

/// Shared, cheaply cloneable HTTP client for the OpenAI API.
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    config: Arc<OpenAiConfig>,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    /// # Errors
    /// [`Error::Transport`] if the TLS backend cannot be initialised.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(OpenAiClient {
            http,
            config: Arc::new(config),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// POSTs `body` as JSON to `path` (relative to the base URL) and decodes a JSON answer.
    ///
    /// # Errors
    /// See [`OpenAiClient::post_raw`]; [`Error::Malformed`] if the answer is not the expected JSON.
    pub(crate) async fn post_json<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let raw = self
            .post_raw(path, body, self.config.request_timeout)
            .await?;
        serde_json::from_slice(&raw.body)
            .map_err(|e| Error::Malformed(format!("{path}: invalid JSON answer: {e}")))
    }

    /// POSTs `body` as JSON with retries and returns the successful body.
    ///
    /// # Errors
    /// [`Error::Status`] for a non-retryable status or 5xx after the retries,
    /// [`Error::RateLimited`], [`Error::Timeout`], [`Error::Transport`].
    pub(crate) async fn post_raw<B: Serialize + Sync>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<RawResponse> {
        let url = self.url(path);
        let payload = encode(body)?;
        let (url, payload) = (url.as_str(), payload.as_slice());
        self.with_retries(path, move || async move {
            let response = self.send(url, payload, timeout).await?;
            let content_type = content_type(&response);
            let body = response.bytes().await.map_err(transport_error)?;
            Ok(RawResponse { body, content_type })
        })
        .await
    }

    /// POSTs `body` as JSON and returns once the answer's first body bytes arrived, for
    /// reading the rest as it comes. Retries (as [`OpenAiClient::post_raw`]) happen only up to
    /// the first body byte; `timeout` covers the whole attempt, including the streamed body.
    ///
    /// # Errors
    /// As [`OpenAiClient::post_raw`].
    pub(crate) async fn post_stream<B: Serialize + Sync>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<StreamingResponse> {
        let url = self.url(path);
        let payload = encode(body)?;
        let (url, payload) = (url.as_str(), payload.as_slice());
        self.with_retries(path, move || async move {
            let mut response = self.send(url, payload, timeout).await?;
            let content_type = content_type(&response);
            let first = response.chunk().await.map_err(transport_error)?;
            let more = first.is_some();
            Ok(StreamingResponse {
                first,
                response: more.then_some(response),
                content_type,
            })
        })
        .await
    }

    /// The one retry loop: runs `attempt_once` until it succeeds, fails fatally, or the retries
    /// (bounded, with backoff or the provider's short `Retry-After`) are spent.
    async fn with_retries<T, F, Fut>(&self, path: &str, mut attempt_once: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
    {
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let outcome = attempt_once().await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let (error, wait) = match outcome {
                Ok(value) => {
                    tracing::debug!(path, attempt, latency_ms, "provider call ok");
                    return Ok(value);
                }
                Err(Attempt::Fatal(error)) => {
                    tracing::warn!(
                        path,
                        attempt,
                        latency_ms,
                        code = error.code(),
                        "provider call failed"
                    );
                    return Err(error);
                }
                Err(Attempt::Retryable { error, retry_after }) => (error, retry_after),
            };
            if attempt >= self.config.max_retries {
                tracing::warn!(
                    path,
                    attempt,
                    latency_ms,
                    code = error.code(),
                    "provider call failed after retries"
                );
                return Err(error);
            }
            let wait = match wait {
                Some(wait) if wait > self.config.max_retry_wait => {
                    tracing::warn!(
                        path,
                        attempt,
                        retry_after_ms = wait.as_millis() as u64,
                        "provider asked to wait too long"
                    );
                    return Err(error);
                }
                Some(wait) => wait,
                None => backoff(
                    attempt,
                    self.config.initial_backoff,
                    self.config.max_backoff,
                    rand::random::<f64>(),
                ),
            };
            tracing::debug!(
                path,
                attempt,
                latency_ms,
                code = error.code(),
                wait_ms = wait.as_millis() as u64,
                "retrying provider call"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.config.base_url.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    /// One request up to its status line: a success hands back the response with its body
    /// unread; anything else is read and classified.
    async fn send(
        &self,
        url: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> std::result::Result<reqwest::Response, Attempt> {
        let mut request = self
            .http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_vec());
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(transport_error)?;
        Err(classify_failure(status, retry_after, &body))
    }
}

fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::Malformed(format!("request: {e}")))
}

fn content_type(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A successful answer whose body is read as it arrives.
pub(crate) struct StreamingResponse {
    /// The first body chunk, read before the call counted as started (`None`: empty body).
    first: Option<bytes::Bytes>,
    /// The rest of the body; `None` once it ended.
    response: Option<reqwest::Response>,
    pub content_type: Option<String>,
}

impl StreamingResponse {
    /// The next body chunk in order; `Ok(None)` at the end.
    ///
    /// # Errors
    /// [`Error::Timeout`] or [`Error::Transport`] when the body breaks off.
    pub(crate) async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        let Some(response) = &mut self.response else {
            return Ok(None);
        };
        match response.chunk().await {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                self.response = None;
                Ok(None)
            }
            Err(e) => {
                self.response = None;
                Err(match transport_error(e) {
                    Attempt::Retryable { error, .. } | Attempt::Fatal(error) => error,
                })
            }
        }
    }
}

/// One attempt's failure, before the retry decision.
enum Attempt {
    Retryable {
        error: Error,
        retry_after: Option<Duration>,
    },
    Fatal(Error),
}

fn transport_error(e: reqwest::Error) -> Attempt {
    let error = if e.is_timeout() {
        Error::Timeout
    } else {
        // Without the URL: it is ours and adds nothing; the source chain says what failed.
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Error::Transport(msg)
    };
    Attempt::Retryable {
        error,
        retry_after: None,
    }
}

/// Pure: a failed status → retry decision.
fn classify_failure(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Attempt {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Attempt::Retryable {
            error: Error::RateLimited { retry_after },
            retry_after,
        };
    }
    let error = Error::Status {
        status: status.as_u16(),
        body: excerpt(body),
    };
    if status.is_server_error() {
        Attempt::Retryable { error, retry_after }
    } else {
        Attempt::Fatal(error)
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// `retry-after-ms` (OpenAI's precise form) or `Retry-After` in seconds; HTTP dates are
/// ignored (providers send seconds).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return secs(ms / 1000.0);
    }
    value(RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(secs)
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Exponential backoff capped at `max`, scaled by a jitter factor in 0.75..=1.0 (`unit` is a
/// uniform sample in 0..1), so clients that failed together do not retry together.
fn backoff(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let base = initial
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(max);
    base.mul_f64(0.75 + 0.25 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(200);
        let m = Duration::from_secs(2);
        assert_eq!(backoff(0, i, m, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(2, i, m, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(10, i, m, 1.0), m);
        assert_eq!(backoff(40, i, m, 0.0), m.mul_f64(0.75));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn statuses_classify() {
        let b = b"{}";
        assert!(matches!(
            classify_failure(StatusCode::TOO_MANY_REQUESTS, None, b),
            Attempt::Retryable {
                error: Error::RateLimited { .. },
                ..
            }
        ));
        assert!(matches!(
            classify_failure(StatusCode::BAD_GATEWAY, None, b),
            Attempt::Retryable { .. }
        ));
        assert!(matches!(
            classify_failure(StatusCode::UNAUTHORIZED, None, b),
            Attempt::Fatal(Error::Status { status: 401, .. })
        ));
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = "é".repeat(2000);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), BODY_EXCERPT + 1);
    }

    #[test]
    fn debug_redacts_key() {
        let cfg = OpenAiConfig::new(
            url::Url::parse("http://127.0.0.1:1/v1").unwrap(),
            Some("sk-secret".into()),
        );
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-secret"));
        assert!(shown.contains("redacted"));
    }
}
