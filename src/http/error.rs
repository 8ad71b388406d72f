//! The REST error model: [`ApiError`] (status + stable code + human message) and
//! [`handle_rejection`], which turns every warp rejection into the same JSON body.
//!
//! Body shape: `{"error":{"code","message"},"code","message"}`. The nested form is Tandem's;
//! the top-level `message` is what the original frontend reads. Internal causes (database,
//! hashing) are logged here with `tracing` and replaced by a generic message on the wire.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reject::Reject;
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::{auth, records, store};

/// Everything a REST handler or filter can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (syntax error, truncated).
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// The JSON or query is well-formed but a field is missing, of the wrong type, an unknown
    /// value, or fails validation.
    #[error("{0}")]
    InvalidField(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error(transparent)]
    Auth(#[from] auth::Error),
    /// Open registration is switched off by configuration.
    #[error("registration is closed; ask an administrator for an account")]
    RegistrationClosed,
    /// The resource does not exist *or belongs to another organization* (indistinguishable on
    /// purpose). The argument names the resource: `Conversation not found`.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("Username already exists")]
    UsernameTaken,
    /// The request is valid but the resource's state does not allow it (e.g. confirming a
    /// cancelled action, or a change that raced another one); the message says which.
    #[error("{0}")]
    Conflict(String),
    /// Authenticated, but the caller's role may not do this; the message says who may.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A clinic command's name is taken in the organization (names are case-insensitive).
    #[error("a command named {0:?} already exists in this organization")]
    CommandExists(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A query parameter has an unknown value (e.g. `?format=pdf`).
    #[error("{0}")]
    InvalidQuery(String),
    /// The operation needs an ended conversation (a summary is written after the visit).
    #[error("the conversation is still active; end it first")]
    ConversationActive,
    /// The audit-log entry of a read or change could not be written, so the request fails
    /// instead of touching patient data unaudited (fail closed). 503 `store_unavailable`: the
    /// same client retry applies as for any store outage.
    #[error(
        "the access could not be recorded in the audit log, so nothing was returned; try again"
    )]
    AuditUnavailable(store::Error),
    /// Writing a summary or medical history failed (the provider, or the store).
    #[error(transparent)]
    Records(records::Error),
}

impl From<records::Error> for ApiError {
    fn from(e: records::Error) -> Self {
        match e {
            records::Error::Store(e) => ApiError::Store(e),
            e => ApiError::Records(e),
        }
    }
}

impl Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Auth(e) => match e {
                auth::Error::InvalidToken
                | auth::Error::TokenExpired
                | auth::Error::InvalidCredentials => StatusCode::UNAUTHORIZED,
                auth::Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
                // The original backend answers a bad refresh token with 403.
                auth::Error::InvalidRefreshToken | auth::Error::RefreshTokenReused => {
                    StatusCode::FORBIDDEN
                }
                auth::Error::Store(e) => store_status(e),
                auth::Error::Config(_) | auth::Error::Hash(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::RegistrationClosed | ApiError::OriginNotAllowed | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UsernameTaken | ApiError::Conflict(_) | ApiError::CommandExists(_) => {
                StatusCode::CONFLICT
            }
            ApiError::Store(e) => store_status(e),
            ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::ConversationActive => StatusCode::CONFLICT,
            ApiError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Records(e) => match e {
                records::Error::Store(e) => store_status(e),
                records::Error::Provider(_) => StatusCode::BAD_GATEWAY,
                records::Error::Ended => StatusCode::CONFLICT,
            },
        }
    }

    /// Stable snake_case code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) => "bad_json",
            ApiError::InvalidField(_) => "invalid_field",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Auth(e) => e.code(),
            ApiError::RegistrationClosed => "registration_closed",
            ApiError::NotFound(_) => "not_found",
            ApiError::UsernameTaken => "username_taken",
            ApiError::Conflict(_) => "conflict",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::CommandExists(_) => "command_exists",
            ApiError::Store(e) => e.code(),
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::ConversationActive => "conversation_active",
            ApiError::AuditUnavailable(_) => "store_unavailable",
            ApiError::Records(e) => e.code(),
        }
    }

    /// The message sent to the client: `Display`, except for internal failures, whose cause
    /// stays in the logs.
    pub(crate) fn public_message(&self) -> String {
        if let ApiError::AuditUnavailable(_) = self {
            return self.to_string();
        }
        match self.status() {
            StatusCode::INTERNAL_SERVER_ERROR => "internal server error".to_owned(),
            StatusCode::SERVICE_UNAVAILABLE => "service temporarily unavailable".to_owned(),
            _ => match self {
                ApiError::Store(store::Error::NotFound) => "not found".to_owned(),
                ApiError::Store(store::Error::Conflict(_)) => "conflict".to_owned(),
                // Transport errors name the provider's address: keep them in the logs.
                ApiError::Records(records::Error::Provider(_)) => {
                    "the model provider failed; try again later".to_owned()
                }
                _ => self.to_string(),
            },
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Auth(auth::Error::Throttled { retry_after }) => Some(*retry_after),
            _ => None,
        }
    }
}

fn store_status(e: &store::Error) -> StatusCode {
    match e {
        store::Error::NotFound => StatusCode::NOT_FOUND,
        store::Error::Conflict(_) => StatusCode::CONFLICT,
        store::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        store::Error::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The JSON error response; server errors are logged with their cause first.
    pub fn to_response(&self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        }
        let mut res = error_response(status, self.code(), &self.public_message());
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

/// The one JSON error body, for errors that are not an [`ApiError`] (warp rejections).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": { "code": code, "message": message },
        "code": code,
        "message": message,
    });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Maps every rejection to the JSON error body. Custom [`ApiError`]s win; then warp's own
/// rejections by their meaning; an unknown rejection is a 500 and is logged.
///
/// # Errors
/// Never: the `Result` is what `Filter::recover` expects.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject as r;
    if let Some(e) = rejection.find::<ApiError>() {
        return Ok(e.to_response());
    }
    let (status, code, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found", "route not found")
    } else if rejection.find::<r::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        )
    } else if rejection.find::<r::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        )
    } else if rejection.find::<r::InvalidQuery>().is_some() {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "invalid query parameter",
        )
    } else if rejection.find::<r::MissingHeader>().is_some()
        || rejection.find::<r::InvalidHeader>().is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing or invalid header",
        )
    } else if rejection.find::<r::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "content-length required",
        )
    } else if rejection.find::<r::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "unsupported content type",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    };
    Ok(error_response(status, code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_sent() {
        let e = ApiError::Store(store::Error::Backend("SELECT secret FROM x".into()));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code(), "internal");
        assert_eq!(e.public_message(), "internal server error");
    }

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadJson("x".into()), 400, "bad_json"),
            (ApiError::InvalidField("x".into()), 422, "invalid_field"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (auth::Error::InvalidToken.into(), 401, "unauthorized"),
            (
                auth::Error::RefreshTokenReused.into(),
                403,
                "refresh_token_reused",
            ),
            (ApiError::NotFound("Conversation"), 404, "not_found"),
            (ApiError::UsernameTaken, 409, "username_taken"),
            (ApiError::RegistrationClosed, 403, "registration_closed"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::Forbidden("admins only"), 403, "forbidden"),
            (ApiError::CommandExists("x".into()), 409, "command_exists"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            ApiError::NotFound("Conversation").to_string(),
            "Conversation not found"
        );
    }
}
