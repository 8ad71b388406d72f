//! Rows of the outbound webhook: an organization's endpoint, the durable outbox of events to
//! deliver to it, and the log of every delivery attempt.
//!
//! Design decision: an outbox row is written in the same transaction as the change it
//! announces ([`super::Store::update_action`]), so a crash can delay a delivery but never lose
//! it. Workers *lease* rows ([`super::Store::claim_deliveries`]) instead of locking them: a
//! worker that dies mid-attempt simply lets its lease run out and the row becomes due again.

use super::Millis;

/// An organization's webhook endpoint. One per organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub organization_id: String,
    /// `http` or `https` URL the events are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key the bodies are signed with. Never sent back to clients after the PUT
    /// that created it.
    pub secret: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first or next attempt (possibly leased by a worker right now).
    Pending,
    /// A 2xx was received; never sent again.
    Delivered,
    /// Gave up after the maximum number of attempts, or the webhook was removed; an admin may
    /// retry it.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event to deliver (an outbox row).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Also the `deliveryId` in the body.
    pub id: String,
    pub organization_id: String,
    pub action_id: String,
    /// `action.confirmed`, `action.cancelled`.
    pub event: String,
    /// Stable per (action, event): the receiver's de-duplication key, identical on every
    /// attempt.
    pub idempotency_key: String,
    /// The event body without the per-attempt fields (`deliveryId`, `attempt`), as queued.
    pub payload: serde_json::Value,
    pub status: DeliveryStatus,
    /// Attempts started so far (a claim counts, even if its worker died before finishing).
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// What [`super::Store::update_action`] queues alongside the change.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub event: String,
    pub idempotency_key: String,
    pub payload: serde_json::Value,
}

impl NewDelivery {
    /// The outbox row, due now.
    pub(crate) fn into_row(self, organization_id: &str, action_id: &str) -> Delivery {
        let now = super::now_millis();
        Delivery {
            id: super::new_id(),
            organization_id: organization_id.to_owned(),
            action_id: action_id.to_owned(),
            event: self.event,
            idempotency_key: self.idempotency_key,
            payload: self.payload,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            created_at: now,
            updated_at: now,
            delivered_at: None,
        }
    }
}

/// A delivery leased to a worker, with where to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// As after the claim: `attempts` already counts this attempt.
    pub delivery: Delivery,
    /// Proves the lease when the outcome is recorded; a worker whose lease ran out and was
    /// re-claimed by another cannot overwrite the newer attempt's bookkeeping.
    pub lease_token: String,
    pub url: String,
    pub secret: String,
}

/// How one attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// 2xx: the row becomes `delivered`, whoever holds the lease and even if it was failed
    /// meanwhile (e.g. its webhook was removed while the request was in flight).
    Delivered,
    /// Try again at `next_attempt_at`.
    Retry { next_attempt_at: Millis },
    /// No more attempts: the row becomes `failed`.
    GiveUp,
}

/// One finished attempt, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub id: String,
    pub delivery_id: String,
    /// 1-based; restarts after an admin retry.
    pub attempt: u32,
    pub started_at: Millis,
    pub duration_ms: u32,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed (`HTTP 500`, `timed out after 10 s`, `connection refused`), `None` on 2xx.
    pub error: Option<String>,
}

/// An attempt to record with [`super::Store::record_delivery_attempt`].
#[derive(Debug, Clone)]
pub struct NewDeliveryAttempt {
    pub delivery_id: String,
    pub lease_token: String,
    pub attempt: u32,
    pub started_at: Millis,
    pub duration_ms: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub outcome: DeliveryOutcome,
}

impl NewDeliveryAttempt {
    pub(crate) fn log_row(&self) -> DeliveryAttempt {
        DeliveryAttempt {
            id: super::new_id(),
            delivery_id: self.delivery_id.clone(),
            attempt: self.attempt,
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            status_code: self.status_code,
            error: self.error.clone(),
        }
    }
}
