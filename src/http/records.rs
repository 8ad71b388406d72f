//! REST handlers for what a visit leaves behind: ending it, its summary, and exports.
//!
//! Design decision: `POST …/end` answers as soon as the conversation is marked `ended`; the
//! drain and the summary continue in the background (tracked, so shutdown waits for them) and
//! are announced with `summary_ready`/`summary_data`. The original frontend ignores the body of
//! `/end`, and a model call must not hold an HTTP request open for seconds; `?wait=true` keeps
//! the original's behaviour of answering with the final status for scripts and tests.

use serde::Deserialize;
use warp::http::{header, HeaderValue};
use warp::reply::{self, Reply, Response};

use super::audit_log;
use super::error::ApiError;
use super::handlers::{audit, conversation, patient_of};
use crate::audit::PhiRead;
use crate::auth::Principal;
use crate::records::export::{Export, Format};
use crate::records::SummaryView;
use crate::server::AppState;
use crate::store::{now_millis, ConversationStatus, DocumentKind, Page};
use crate::wire::ConversationView;

type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// `?wait=true|false` on `POST …/end`.
#[derive(Debug, Default, Deserialize)]
pub struct EndQuery {
    #[serde(default)]
    pub wait: bool,
}

/// `?format=json|markdown` on `GET …/export`.
#[derive(Debug, Default, Deserialize)]
pub struct ExportQuery {
    pub format: Option<String>,
}

/// Ends a visit: marks it `ended`, then (in the background) stops its audio, drains the
/// pipeline and writes the final summary. Idempotent: a conversation that already ended is
/// returned as it is (a failed summary is retried with `POST …/summary`, not by ending again).
pub async fn end_conversation(state: AppState, p: Principal, id: String, q: EndQuery) -> Result {
    let c = conversation(&state, &p, &id).await?;
    let claim = match state.pipelines.claim_end(&id) {
        Some(claim) if c.conversation.status == ConversationStatus::Active => claim,
        // Already ended, or being ended by a concurrent request.
        _ => return Ok(reply::json(&ConversationView::from(&c)).into_response()),
    };
    // Read again under the claim: a request that ended it may have finished meanwhile.
    let c = conversation(&state, &p, &id).await?;
    if c.conversation.status != ConversationStatus::Active {
        return Ok(reply::json(&ConversationView::from(&c)).into_response());
    }
    let ended = state
        .store
        .set_conversation_status(
            &p.organization_id,
            &id,
            ConversationStatus::Ended,
            Some(now_millis()),
        )
        .await?;
    audit(&state, &p, "update", "conversation", &id).await?;
    let finishing = state
        .pipelines
        .finish_visit(claim, p.organization_id.clone());
    if !q.wait {
        return Ok(reply::json(&ConversationView::new(&ended, &c.patient)).into_response());
    }
    if let Err(e) = finishing.await {
        // The task panicked or was cancelled by shutdown; the status says where it stopped.
        tracing::error!(conversation_id = %id, error = %e, "end-of-visit task did not finish");
    }
    let now = conversation(&state, &p, &id).await?;
    Ok(reply::json(&ConversationView::from(&now)).into_response())
}

/// `GET …/summary`: the summary row (`content` is the clinical text) with its structured
/// fields, or `null`.
pub async fn get_summary(state: AppState, p: Principal, id: String) -> Result {
    let c = conversation(&state, &p, &id).await?;
    let doc = state.store.get_document(DocumentKind::Summary, &id).await?;
    audit_log::read(&state, &p, PhiRead::Summary, &id, patient_of(&c)).await?;
    Ok(reply::json(&doc.as_ref().map(SummaryView::from)).into_response())
}

/// `POST …/summary`: writes the final summary again (after `ended_error`, or to regenerate)
/// and answers with it. 409 while the conversation is active.
pub async fn regenerate_summary(state: AppState, p: Principal, id: String) -> Result {
    let c = conversation(&state, &p, &id).await?;
    if c.conversation.status == ConversationStatus::Active {
        return Err(ApiError::ConversationActive);
    }
    audit(&state, &p, "update", "conversation", &id).await?;
    let doc = state.pipelines.resummarize(&p.organization_id, &id).await?;
    Ok(reply::json(&SummaryView::from(&doc)).into_response())
}

/// `GET …/export?format=json|markdown`: the whole record as a download; audited as
/// `conversation.export`.
pub async fn export(state: AppState, p: Principal, id: String, q: ExportQuery) -> Result {
    let format = match q.format.as_deref() {
        None => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::InvalidQuery(format!(
                "format must be json or markdown, not {:?}",
                f.chars().take(32).collect::<String>()
            ))
        })?,
    };
    let c = conversation(&state, &p, &id).await?;
    let store = &state.store;
    let messages = store.list_messages(&id, &Page::default()).await?;
    let actions = store.list_actions(&id).await?;
    let summary = store.get_document(DocumentKind::Summary, &id).await?;
    let history = store
        .get_document(DocumentKind::MedicalHistory, &id)
        .await?;
    audit_log::read(&state, &p, PhiRead::Export, &id, patient_of(&c)).await?;
    let record = Export::new(
        &c,
        &messages,
        &actions,
        summary.as_ref(),
        history.as_ref(),
        now_millis(),
    );
    let mut res = match format {
        Format::Json => reply::json(&record).into_response(),
        Format::Markdown => record.to_markdown().into_response(),
    };
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // Conversation ids are UUIDs: nothing in the file name needs quoting.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        format.file_name(&id)
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}
