//! REST handlers for reviewing actions (`/actions/:id`, edit, confirm, cancel), the
//! organization's webhook, and the webhook delivery log.
//!
//! Design decisions:
//! - The rules live in [`crate::actions`]; a handler reads the row, computes the new one, and
//!   writes it with the store's compare-and-set, so two concurrent reviews cannot both apply
//!   (the loser gets 409 and reloads).
//! - Every change is audited and then pushed as `action_updated`, exactly like `action_created`.
//! - A confirmation only *queues* its webhook event (in the same transaction as the status
//!   change); the [`crate::webhook::worker`] sends it, so the clinician never waits on the
//!   clinic's system.

use warp::reply::{Reply as _, Response};

use super::audit_log;
use super::error::ApiError;
use super::handlers::{audit, json, not_found, split_page, DEFAULT_PAGE, MAX_PAGE};
use super::models::*;
use crate::actions::{self, Review};
use crate::audit::{distinct, PhiRead};
use crate::auth::Principal;
use crate::pipeline::event::ServerEvent;
use crate::server::AppState;
use crate::store::{self, next_updated_at, Action, ActionChange, Delivery, Page, UserRole};
use crate::webhook;

type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// Accepted length of a caller-chosen signing secret, in characters.
const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

impl From<actions::Error> for ApiError {
    fn from(e: actions::Error) -> Self {
        match e {
            actions::Error::Invalid(m) => ApiError::InvalidField(m),
            actions::Error::Conflict(m) => ApiError::Conflict(m),
        }
    }
}

async fn action(state: &AppState, p: &Principal, id: &str) -> Result<Action> {
    state
        .store
        .get_action(&p.organization_id, id)
        .await
        .map_err(not_found("Action"))
}

pub async fn get_action(state: AppState, p: Principal, id: String) -> Result {
    let action = action(&state, &p, &id).await?;
    let conversation = vec![action.conversation_id.clone()];
    audit_log::read(&state, &p, PhiRead::Action, &id, conversation).await?;
    Ok(json(&ActionView::from(&action)))
}

pub async fn edit_action(
    state: AppState,
    p: Principal,
    id: String,
    body: EditActionRequest,
) -> Result {
    let current = action(&state, &p, &id).await?;
    let data = actions::edit(
        &current.kind,
        &current.status,
        &current.data,
        &body.data,
        current.created_at,
    )?;
    let status = current.status.clone();
    apply(&state, &p, &current, status, data, None, "update").await
}

pub async fn confirm_action(state: AppState, p: Principal, id: String) -> Result {
    review(state, p, id, Review::Confirm).await
}

pub async fn cancel_action(state: AppState, p: Principal, id: String) -> Result {
    review(state, p, id, Review::Cancel).await
}

async fn review(state: AppState, p: Principal, id: String, review: Review) -> Result {
    let current = action(&state, &p, &id).await?;
    let change = actions::review(&current.status, review)?;
    let verb = match review {
        Review::Confirm => "confirm",
        Review::Cancel => "cancel",
    };
    let data = current.data.clone();
    apply(
        &state,
        &p,
        &current,
        change.status.to_owned(),
        data,
        change.event,
        verb,
    )
    .await
}

/// Writes the reviewed row (queueing `event` for the webhook), audits it as `verb`, and
/// pushes `action_updated`.
async fn apply(
    state: &AppState,
    p: &Principal,
    current: &Action,
    status: String,
    data: serde_json::Value,
    event: Option<&str>,
    verb: &str,
) -> Result {
    let next = Action {
        status,
        data,
        updated_at: next_updated_at(current.updated_at),
        ..current.clone()
    };
    let delivery = event.map(|e| webhook::delivery_for(e, &p.organization_id, &next));
    let (saved, queued) = state
        .store
        .update_action(
            &p.organization_id,
            &current.id,
            ActionChange {
                expected_updated_at: current.updated_at,
                status: next.status,
                data: next.data,
                updated_at: next.updated_at,
                delivery,
            },
        )
        .await
        .map_err(|e| match e {
            store::Error::NotFound => ApiError::NotFound("Action"),
            store::Error::Conflict(_) => ApiError::Conflict(
                "the action was changed by another request; reload it and try again".into(),
            ),
            e => e.into(),
        })?;
    audit(state, p, verb, "action", &saved.id).await?;
    if let Some(d) = &queued {
        tracing::info!(action_id = %saved.id, delivery_id = %d.id, event = %d.event, "webhook delivery queued");
    }
    let view = ActionView::from(&saved);
    state.pipelines.publish_action(
        &saved.conversation_id,
        &ServerEvent::ActionUpdated {
            payload: view.clone(),
        },
    );
    Ok(json(&view))
}

// ---------- webhook ----------

fn require_admin(p: &Principal) -> Result<()> {
    if p.role == UserRole::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an administrator of the organization may change its webhook",
        ))
    }
}

pub async fn get_webhook(state: AppState, p: Principal) -> Result {
    let hook = state
        .store
        .get_webhook(&p.organization_id)
        .await
        .map_err(not_found("Webhook"))?;
    Ok(json(&WebhookView::from(&hook)))
}

pub async fn put_webhook(state: AppState, p: Principal, body: PutWebhookRequest) -> Result {
    require_admin(&p)?;
    let url = webhook::validate_url(&body.url).map_err(ApiError::InvalidField)?;
    let generated = body.secret.is_none();
    let secret = match body.secret {
        Some(s) => {
            let n = s.chars().count();
            if !SECRET_LEN.contains(&n) || s.chars().any(char::is_control) {
                return Err(ApiError::InvalidField(format!(
                    "secret must be {} to {} characters without control characters",
                    SECRET_LEN.start(),
                    SECRET_LEN.end()
                )));
            }
            s
        }
        None => webhook::generate_secret(),
    };
    let hook = state
        .store
        .put_webhook(&p.organization_id, url.as_str(), &secret)
        .await?;
    audit(&state, &p, "update", "webhook", &p.organization_id).await?;
    let mut view = WebhookView::from(&hook);
    if generated {
        view.secret = Some(secret);
    }
    Ok(json(&view))
}

pub async fn delete_webhook(state: AppState, p: Principal) -> Result {
    require_admin(&p)?;
    state
        .store
        .delete_webhook(&p.organization_id)
        .await
        .map_err(not_found("Webhook"))?;
    audit(&state, &p, "delete", "webhook", &p.organization_id).await?;
    Ok(warp::reply::with_status(warp::reply(), warp::http::StatusCode::NO_CONTENT).into_response())
}

// ---------- delivery log ----------

/// Views of `deliveries` with their attempt logs (one query for all of them).
async fn with_logs(
    state: &AppState,
    p: &Principal,
    deliveries: &[Delivery],
) -> Result<Vec<DeliveryView>> {
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    let log = state
        .store
        .list_delivery_attempts(&p.organization_id, &ids)
        .await?;
    Ok(deliveries
        .iter()
        .map(|d| {
            let attempts = log
                .iter()
                .filter(|a| a.delivery_id == d.id)
                .map(AttemptView::from)
                .collect();
            DeliveryView::new(d, attempts)
        })
        .collect())
}

pub async fn action_deliveries(state: AppState, p: Principal, id: String) -> Result {
    let action = action(&state, &p, &id).await?;
    let rows = state
        .store
        .list_deliveries(&p.organization_id, Some(&id), &Page::default())
        .await?;
    let conversation = vec![action.conversation_id.clone()];
    audit_log::read(&state, &p, PhiRead::ActionDeliveries, &id, conversation).await?;
    Ok(json(&with_logs(&state, &p, &rows).await?))
}

pub async fn list_deliveries(state: AppState, p: Principal, q: PageQuery) -> Result {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = state
        .store
        .list_deliveries(
            &p.organization_id,
            None,
            &Page {
                after: q.after,
                limit: limit + 1,
            },
        )
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |d| d.id.clone());
    let ids = rows
        .iter()
        .flat_map(|d| [d.id.clone(), d.action_id.clone()]);
    audit_log::read(&state, &p, PhiRead::DeliveryList, "*", distinct(ids)).await?;
    Ok(json(&DeliveryPage {
        deliveries: with_logs(&state, &p, &rows).await?,
        next_cursor,
    }))
}

/// Admin: a `failed` delivery is queued again now, with a fresh attempt budget.
pub async fn retry_delivery(state: AppState, p: Principal, id: String) -> Result {
    require_admin(&p)?;
    let delivery = state
        .store
        .retry_delivery(&p.organization_id, &id, store::now_millis())
        .await
        .map_err(|e| match e {
            store::Error::NotFound => ApiError::NotFound("Delivery"),
            store::Error::Conflict(_) => {
                ApiError::Conflict("only a failed delivery can be retried".into())
            }
            e => e.into(),
        })?;
    audit(&state, &p, "retry", "webhook_delivery", &id).await?;
    let log = state
        .store
        .list_delivery_attempts(&p.organization_id, std::slice::from_ref(&delivery.id))
        .await?;
    Ok(json(&DeliveryView::new(
        &delivery,
        log.iter().map(AttemptView::from).collect(),
    )))
}
