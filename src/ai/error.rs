//! `ai::Error`: what can go wrong talking to a model provider, with recoverability stated per
//! variant so callers (the HTTP client's retry loop, the pipeline's per-stage policy) decide
//! from the variant, never from message text.

use std::time::Duration;

/// Result alias for the `ai` layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A provider call failed.
///
/// Retryable (see [`Error::is_retryable`]): `Timeout`, `Transport`, `RateLimited` and `Status`
/// with a 5xx code. The OpenAI client has already retried these a bounded number of times
/// before returning them, so callers normally report rather than retry again.
/// Not retryable: `Status` 4xx (bad request, bad key, unknown model: configuration problems)
/// and `Malformed` (the same request would get the same answer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider answered with a non-success status.
    #[error("provider answered HTTP {status}")]
    Status {
        status: u16,
        /// First bytes of the error body, for logs only: never sent to clients.
        body: String,
    },
    /// No complete answer within the configured per-request timeout.
    #[error("provider did not answer in time")]
    Timeout,
    /// Connection refused or reset, DNS, TLS: the request may not have reached the provider.
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// HTTP 429 after the retries, or with a `Retry-After` longer than the client waits.
    #[error("provider rate limit reached")]
    RateLimited {
        /// What the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// The answer did not have the expected shape (bad JSON, no choices, empty or truncated
    /// text, an unknown tool).
    #[error("unexpected provider answer: {0}")]
    Malformed(String),
}

impl Error {
    /// Stable snake_case code for HTTP bodies and WS `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Status { .. } => "provider_status",
            Error::Timeout => "provider_timeout",
            Error::Transport(_) => "provider_unreachable",
            Error::RateLimited { .. } => "provider_rate_limited",
            Error::Malformed(_) => "provider_malformed",
        }
    }

    /// Whether the same request may succeed later (see the type docs).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status >= 500,
            Error::Timeout | Error::Transport(_) | Error::RateLimited { .. } => true,
            Error::Malformed(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retryability() {
        let s500 = Error::Status {
            status: 500,
            body: String::new(),
        };
        let s401 = Error::Status {
            status: 401,
            body: String::new(),
        };
        assert_eq!(s500.code(), "provider_status");
        assert!(s500.is_retryable());
        assert!(!s401.is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert_eq!(Error::Timeout.code(), "provider_timeout");
        assert!(!Error::Malformed("x".into()).is_retryable());
        assert_eq!(
            Error::RateLimited { retry_after: None }.code(),
            "provider_rate_limited"
        );
    }
}
