//! The delivery worker: leases due outbox rows, POSTs them, records each attempt.
//!
//! Design decision: one loop per process, stopped by a [`CancellationToken`]. It finishes the
//! batch in flight (each request is bounded by the timeout) and then returns; if the process
//! dies instead, the leases of the rows it held run out and any worker picks them up again.
//! Rows are leased in small batches and sent with bounded concurrency, so one slow receiver
//! delays a batch by at most one timeout rather than stalling every organization.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{
    body, sign, WebhookConfig, DELIVERY_HEADER, EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use crate::metrics::{Counter, Metrics};
use crate::store::{now_millis, ClaimedDelivery, DeliveryOutcome, NewDeliveryAttempt, Store};

/// Rows leased per look. Small, so rows a busy worker cannot start soon stay claimable by
/// other replicas.
const BATCH: u32 = 16;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

/// Sends the outbox; see the module docs.
pub struct DeliveryWorker {
    store: Arc<dyn Store>,
    config: WebhookConfig,
    client: reqwest::Client,
    /// `tandem_webhook_attempts_total{outcome}`: finished attempts by what they led to.
    attempts: Counter,
}

impl DeliveryWorker {
    /// # Errors
    /// The HTTP client cannot be built (TLS backend initialisation).
    pub fn new(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        metrics: &Metrics,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect is not an acknowledgement; it is retried like any other non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let attempts = metrics.counter(
            "tandem_webhook_attempts_total",
            "Finished webhook delivery attempts by outcome (delivered, retry, failed).",
        );
        Ok(DeliveryWorker {
            store,
            config,
            client,
            attempts,
        })
    }

    /// Delivers until `stop` is cancelled, then returns after the batch in flight.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let now = now_millis();
            let lease = i64::try_from(self.config.lease().as_millis()).unwrap_or(i64::MAX);
            let claimed = match self
                .store
                .claim_deliveries(now, now.saturating_add(lease), BATCH)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries; will retry");
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH as usize;
            futures_util::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |c| self.attempt(c))
                .await;
            if full {
                continue; // more may be due right now
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tracing::debug!("webhook delivery worker stopped");
    }

    async fn attempt(&self, claim: ClaimedDelivery) {
        let delivery = &claim.delivery;
        let attempt = delivery.attempts;
        let body = body(delivery, attempt);
        let timestamp = now_millis() / 1000;
        let signature = sign(&claim.secret, timestamp, &body);
        let started_at = now_millis();
        let clock = Instant::now();
        let sent = self
            .client
            .post(&claim.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(EVENT_HEADER, &delivery.event)
            .header(DELIVERY_HEADER, &delivery.id)
            .header(IDEMPOTENCY_HEADER, &delivery.idempotency_key)
            .body(body)
            .send()
            .await;
        let elapsed = clock.elapsed();
        let (status_code, error) = match sent {
            Ok(res) if res.status().is_success() => (Some(res.status().as_u16()), None),
            Ok(res) => (
                Some(res.status().as_u16()),
                Some(format!("HTTP {}", res.status().as_u16())),
            ),
            Err(e) => (None, Some(describe(e, self.config.timeout))),
        };
        let outcome = if error.is_none() {
            DeliveryOutcome::Delivered
        } else if attempt >= self.config.max_attempts.get() {
            DeliveryOutcome::GiveUp
        } else {
            let wait = self.config.backoff(attempt, rand::random::<f64>());
            let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            DeliveryOutcome::Retry {
                next_attempt_at: now_millis().saturating_add(wait),
            }
        };
        self.attempts.inc(&[("outcome", outcome_name(&outcome))]);
        tracing::info!(
            delivery_id = %delivery.id,
            organization_id = %delivery.organization_id,
            event = %delivery.event,
            attempt,
            status = status_code,
            error = error.as_deref(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            outcome = outcome_name(&outcome),
            "webhook delivery attempt"
        );
        let record = NewDeliveryAttempt {
            delivery_id: delivery.id.clone(),
            lease_token: claim.lease_token.clone(),
            attempt,
            started_at,
            duration_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
            status_code,
            error,
            outcome,
        };
        if let Err(e) = self.store.record_delivery_attempt(record).await {
            // The lease runs out and the row is attempted again: at least once, never lost.
            tracing::error!(delivery_id = %delivery.id, error = %e, "cannot record a webhook attempt");
        }
    }
}

fn outcome_name(outcome: &DeliveryOutcome) -> &'static str {
    match outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::Retry { .. } => "retry",
        DeliveryOutcome::GiveUp => "failed",
    }
}

/// A short cause for the delivery log, without the URL (it may carry a token).
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("timed out after {} ms", timeout.as_millis())
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        format!("request failed: {}", e.without_url())
    }
}
