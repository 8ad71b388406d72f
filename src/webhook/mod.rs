//! Outbound delivery of action events to a clinic's own system: an organization configures
//! one webhook, and confirmed (or later cancelled) actions are POSTed to it as signed JSON.
//!
//! Design decision: the request never talks to the receiver. Confirming an action writes an
//! outbox row in the same transaction as the status change ([`crate::store::Store::update_action`]);
//! the [`worker::DeliveryWorker`] leases due rows, sends them, and records every attempt. So a
//! crash or a down receiver delays an event but never loses it, and the `Idempotency-Key`
//! header (stable per action event) lets the receiver drop the duplicates an at-least-once
//! outbox can produce (a worker that dies after the receiver answered but before the 2xx was
//! recorded).
//!
//! Signature: `X-Tandem-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! with the Unix-seconds `X-Tandem-Timestamp`, so a receiver can reject replays of old bodies.

use std::num::NonZeroU32;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::store::{Action, Delivery, NewDelivery};
use crate::wire::ActionView;

pub mod worker;

/// Signature header: `sha256=<lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-tandem-signature";
/// Unix seconds the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-tandem-timestamp";
/// The event name (`action.confirmed`), also in the body.
pub const EVENT_HEADER: &str = "x-tandem-event";
/// The delivery (outbox row) id, also in the body.
pub const DELIVERY_HEADER: &str = "x-tandem-delivery";
/// Identical on every attempt of one action event.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Delivery settings. Plain data so tests build it without the CLI.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How often the worker looks for due deliveries when the last look found none.
    pub poll_interval: Duration,
    /// Limit for one POST, from connecting to the response headers; a receiver slower than
    /// this counts as a failed attempt.
    pub timeout: Duration,
    /// Attempts before a delivery is `failed` (an admin can retry it).
    pub max_attempts: NonZeroU32,
    /// Wait after the first failed attempt; doubles per attempt (with jitter) up to
    /// [`WebhookConfig::backoff_max`].
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for WebhookConfig {
    /// Poll every second, 10 s per request, 12 attempts spread over about four hours (5 s
    /// doubling, capped at one hour).
    fn default() -> Self {
        WebhookConfig {
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            max_attempts: NonZeroU32::new(12).unwrap_or(NonZeroU32::MIN),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
        }
    }
}

impl WebhookConfig {
    /// How long a claimed delivery stays leased: long enough for the request and the
    /// bookkeeping after it, short enough that a crashed worker's rows come back soon.
    pub fn lease(&self) -> Duration {
        self.timeout.saturating_mul(2) + Duration::from_secs(1)
    }

    /// The wait after failed attempt number `attempt` (1-based): `base * 2^(attempt-1)`,
    /// capped, then scaled into `[1/2, 1]` by `jitter` (in `[0, 1)`) so receivers that come
    /// back up are not hit by every delayed delivery at the same instant.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A new random signing secret (256 bits, base64url).
pub fn generate_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Checks a webhook URL: absolute `http` or `https` with a host, no credentials, at most
/// 2048 bytes.
///
/// # Errors
/// A message saying what is wrong, for a 422.
pub fn validate_url(raw: &str) -> Result<url::Url, String> {
    if raw.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("url is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("url must be an http or https URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not contain credentials; use the signing secret".into());
    }
    Ok(url)
}

/// The outbox entry announcing `event` for `action` (just changed) of `organization_id`.
/// The key is the same for every attempt and every worker, so the receiver can de-duplicate.
pub fn delivery_for(event: &str, organization_id: &str, action: &Action) -> NewDelivery {
    NewDelivery {
        event: event.to_owned(),
        idempotency_key: format!("{}:{event}", action.id),
        payload: json!({
            "event": event,
            "organizationId": organization_id,
            "conversationId": action.conversation_id,
            "occurredAt": crate::wire::iso_millis(action.updated_at),
            "action": ActionView::from(action),
        }),
    }
}

/// The JSON body of one attempt: the queued payload plus `deliveryId` and `attempt`.
pub fn body(delivery: &Delivery, attempt: u32) -> Vec<u8> {
    let mut body = match &delivery.payload {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("payload".into(), other.clone());
            map
        }
    };
    body.insert("deliveryId".into(), Value::from(delivery.id.clone()));
    body.insert("attempt".into(), Value::from(attempt));
    // Serializing a `Value` cannot fail.
    Value::Object(body).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "sha256=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let cfg = WebhookConfig {
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(60),
            ..WebhookConfig::default()
        };
        assert_eq!(cfg.backoff(1, 0.999_999).as_secs(), 4);
        assert_eq!(cfg.backoff(1, 1.0), Duration::from_secs(5));
        assert_eq!(cfg.backoff(1, 0.0), Duration::from_millis(2500));
        assert_eq!(cfg.backoff(3, 1.0), Duration::from_secs(20));
        assert_eq!(cfg.backoff(5, 1.0), Duration::from_secs(60), "capped");
        assert_eq!(
            cfg.backoff(200, 1.0),
            Duration::from_secs(60),
            "no overflow"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(validate_url("https://clinic.example/hooks/tandem?x=1").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/").is_ok());
        for (bad, needle) in [
            ("ftp://clinic.example/", "http or https"),
            ("not a url", "not a valid URL"),
            ("https://user:pw@clinic.example/", "credentials"),
            ("file:///etc/passwd", "http or https"),
        ] {
            let err = validate_url(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(validate_url(&format!("https://a.example/{}", "x".repeat(2100))).is_err());
    }

    #[test]
    fn secrets_are_random_and_long() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() >= 48);
    }
}
