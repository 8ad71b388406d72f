//! The audit trail's HTTP side: writing an entry for every read of patient data and every
//! change, and the administrator's `GET /api/v1/audit`.
//!
//! Design decision: auditing fails closed. A handler writes its entry after loading the data
//! and before answering; when the write fails the request fails with 503 `store_unavailable`
//! ([`ApiError::AuditUnavailable`]) and the data is never sent, so there is no access to
//! patient data the log does not show. The cost is one insert per request.

use serde::{Deserialize, Serialize};
use warp::reply::Response;

use super::error::ApiError;
use super::handlers::{json, split_page, DEFAULT_PAGE, MAX_PAGE};
use crate::audit::PhiRead;
use crate::auth::Principal;
use crate::server::AppState;
use crate::store::{AuditEntry, AuditQuery, NewAuditEntry, UserRole};
use crate::wire::iso_millis;

type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// Writes `entry`, or fails the request (see the module docs). The store's cause is logged
/// here because the client only learns that auditing failed.
pub(super) async fn record(state: &AppState, entry: NewAuditEntry) -> Result<()> {
    let action = entry.action.clone();
    state.store.record_audit(entry).await.map_err(|e| {
        tracing::error!(error = %e, %action, "audit write failed; the request is refused");
        ApiError::AuditUnavailable(e)
    })
}

/// Audits `read` of `entity_id` by the caller; `record_ids` are the other records the answer
/// carries (see [`PhiRead`]).
pub(super) async fn read(
    state: &AppState,
    p: &Principal,
    read: PhiRead,
    entity_id: &str,
    record_ids: Vec<String>,
) -> Result<()> {
    let entry = read.entry(
        &p.organization_id,
        &p.user_id,
        p.remote,
        entity_id,
        record_ids,
    );
    record(state, entry).await
}

/// `GET /audit?limit=&before=&userId=&recordId=&action=`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditParams {
    pub limit: Option<u32>,
    pub before: Option<String>,
    pub user_id: Option<String>,
    pub record_id: Option<String>,
    pub action: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryView {
    pub id: String,
    pub user_id: Option<String>,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    pub record_ids: Vec<String>,
    pub remote_addr: Option<String>,
    pub at: String,
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(e: &AuditEntry) -> Self {
        AuditEntryView {
            id: e.id.clone(),
            user_id: e.user_id.clone(),
            action: e.action.clone(),
            entity_type: e.entity_type.clone(),
            entity_id: e.entity_id.clone(),
            record_ids: e.record_ids.clone(),
            remote_addr: e.remote_addr.clone(),
            at: iso_millis(e.at),
        }
    }
}

/// A page of entries, newest first; pass `nextCursor` as `before` for the next (older) page.
/// An unknown cursor is 404 `not_found`, as for the other lists.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    pub next_cursor: Option<String>,
}

/// Admin only, own organization only. Reading the log is not itself audited: it holds ids,
/// not patient data, and auditing it would add an entry on every page an auditor turns.
pub async fn list(state: AppState, p: Principal, q: AuditParams) -> Result {
    if p.role != UserRole::Admin {
        return Err(ApiError::Forbidden(
            "only an administrator of the organization may read its audit log",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let rows = state
        .store
        .search_audit(
            &p.organization_id,
            &AuditQuery {
                user_id: nonempty(q.user_id),
                record_id: nonempty(q.record_id),
                action: nonempty(q.action),
                before: nonempty(q.before),
                limit: limit + 1,
            },
        )
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |e| e.id.clone());
    Ok(json(&AuditPage {
        entries: rows.iter().map(AuditEntryView::from).collect(),
        next_cursor,
    }))
}
