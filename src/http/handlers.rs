//! REST handlers: validate input, call the store or the authenticator, shape the reply.
//!
//! Design decisions:
//! - Tenant scoping comes from the store: every clinical read passes the caller's
//!   organization, so another organization's row is `NotFound` → 404, never 403 (which would
//!   confirm it exists).
//! - Reads and changes of conversations and patients are written to the audit log *before*
//!   the data is returned; if the audit write fails, the request fails (no unaudited access
//!   to patient data).
//! - Strings are stored verbatim (no trimming, no escaping): validation only rejects.

use std::net::IpAddr;

use serde::Serialize;
use time::macros::format_description;
use warp::http::StatusCode;
use warp::reply::{self, Reply, Response};

use super::audit_log;
use super::error::ApiError;
use super::models::*;
use crate::audit::{distinct, PhiRead};
use crate::auth::{self, Principal};
use crate::server::AppState;
use crate::store::{
    self, DocumentKind, NewAuditEntry, NewConversation, NewPatient, NewUser, Page, PatientUpdate,
    UserRole,
};

type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// Default and maximum page sizes for paginated lists.
pub(super) const DEFAULT_PAGE: u32 = 100;
pub(super) const MAX_PAGE: u32 = 500;
/// `GET /conversations` returns a plain array (the original frontend's shape) of at most this
/// many, newest first.
const MAX_CONVERSATIONS: u32 = 1000;
const NAME_MAX: usize = 200;

pub(super) fn json<T: Serialize>(value: &T) -> Response {
    reply::json(value).into_response()
}

fn created<T: Serialize>(value: &T) -> Response {
    reply::with_status(reply::json(value), StatusCode::CREATED).into_response()
}

/// Turns a handler's outcome into a response; used by the route table.
pub fn respond(result: Result) -> Response {
    result.unwrap_or_else(|e| e.to_response())
}

// ---------- health ----------

pub async fn health() -> Result {
    Ok("OK".into_response())
}

pub async fn readyz(state: AppState) -> Result {
    match state.store.ping().await {
        Ok(()) => Ok("ready".into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Ok(super::error::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "store unreachable",
            ))
        }
    }
}

pub async fn metrics(state: AppState) -> Result {
    Ok(reply::with_header(
        state.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response())
}

// ---------- auth ----------

pub async fn register(state: AppState, body: RegisterRequest) -> Result {
    if !state.http.registration_open {
        return Err(ApiError::RegistrationClosed);
    }
    check_len("username", &body.username, auth::USERNAME_LEN)?;
    if body.username.chars().any(char::is_control) {
        return Err(ApiError::InvalidField(
            "username must not contain control characters".into(),
        ));
    }
    check_len("password", &body.password, auth::PASSWORD_LEN)?;
    let language = match body.preferred_language {
        Some(l) => check_language("preferredLanguage", l)?,
        None => "en".to_owned(),
    };
    let password_hash = state.auth.hash_password(&body.password).await?;
    let org = state.store.default_organization().await?;
    let user = state
        .store
        .create_user(NewUser {
            organization_id: org.id,
            username: body.username,
            password_hash,
            preferred_language: language,
            role: UserRole::Clinician,
        })
        .await
        .map_err(|e| match e {
            store::Error::Conflict(_) => ApiError::UsernameTaken,
            e => e.into(),
        })?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok(created(&RegisterResponse {
        user_id: user.id,
        username: user.username,
    }))
}

pub async fn login(state: AppState, ip: Option<IpAddr>, body: LoginRequest) -> Result {
    let session = state
        .auth
        .login(state.store.as_ref(), &body.username, &body.password, ip)
        .await?;
    Ok(json(&LoginResponse {
        access_token: session.access_token,
        refresh_token: session.refresh_token,
        user_id: session.user.id,
        username: session.user.username,
    }))
}

pub async fn refresh(state: AppState, body: RefreshRequest) -> Result {
    let session = state
        .auth
        .refresh(state.store.as_ref(), &body.refresh_token)
        .await?;
    Ok(json(&RefreshResponse {
        access_token: session.access_token,
        refresh_token: session.refresh_token,
    }))
}

pub async fn me(state: AppState, p: Principal) -> Result {
    let user = state
        .store
        .user_by_id(&p.user_id)
        .await
        .map_err(|e| match e {
            // A valid token for a deleted user: the session is over.
            store::Error::NotFound => ApiError::Auth(crate::auth::Error::InvalidToken),
            e => e.into(),
        })?;
    Ok(json(&MeView::from(&user)))
}

// ---------- conversations ----------

pub async fn list_conversations(state: AppState, p: Principal, q: PageQuery) -> Result {
    let page = Page {
        after: q.after,
        limit: q
            .limit
            .unwrap_or(MAX_CONVERSATIONS)
            .clamp(1, MAX_CONVERSATIONS),
    };
    let rows = state
        .store
        .list_conversations(&p.organization_id, &page)
        .await?;
    let ids = rows
        .iter()
        .flat_map(|c| [c.conversation.id.clone(), c.patient.id.clone()]);
    audit_log::read(&state, &p, PhiRead::ConversationList, "*", distinct(ids)).await?;
    let views: Vec<ConversationView> = rows.iter().map(ConversationView::from).collect();
    Ok(json(&views))
}

pub async fn create_conversation(
    state: AppState,
    p: Principal,
    body: CreateConversationRequest,
) -> Result {
    check_name("firstName", &body.first_name)?;
    check_name("lastName", &body.last_name)?;
    let dob = check_date("dob", &body.dob)?;
    let patient_language = match body.patient_language {
        Some(l) => check_language("patientLanguage", l)?,
        None => "es".to_owned(),
    };
    let clinician_language = match body.clinician_language {
        Some(l) => check_language("clinicianLanguage", l)?,
        None => state.store.user_by_id(&p.user_id).await?.preferred_language,
    };
    let (patient, patient_created) = state
        .store
        .find_or_create_patient(NewPatient {
            organization_id: p.organization_id.clone(),
            first_name: body.first_name,
            last_name: body.last_name,
            date_of_birth: dob,
            preferred_language: patient_language.clone(),
        })
        .await?;
    if patient_created {
        audit(&state, &p, "create", "patient", &patient.id).await?;
    }
    let conversation = state
        .store
        .create_conversation(NewConversation {
            organization_id: p.organization_id.clone(),
            user_id: p.user_id.clone(),
            patient_id: patient.id.clone(),
            clinician_language,
            patient_language,
        })
        .await?;
    audit(&state, &p, "create", "conversation", &conversation.id).await?;
    let view = ConversationView::new(&conversation, &patient);
    // The creator will want its pushes (the medical history) before asking about it.
    state
        .pipelines
        .hub()
        .mark_interest(&conversation.id, &p.user_id);
    state
        .pipelines
        .prepare_medical_history(store::ConversationWithPatient {
            conversation,
            patient,
        });
    Ok(created(&view))
}

pub async fn get_conversation(state: AppState, p: Principal, id: String) -> Result {
    let c = conversation(&state, &p, &id).await?;
    audit_log::read(&state, &p, PhiRead::Conversation, &id, patient_of(&c)).await?;
    Ok(json(&ConversationView::from(&c)))
}

pub async fn list_messages(state: AppState, p: Principal, id: String, q: PageQuery) -> Result {
    let c = conversation(&state, &p, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = state
        .store
        .list_messages(
            &id,
            &Page {
                after: q.after,
                limit: limit + 1,
            },
        )
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |m| m.id.clone());
    audit_log::read(&state, &p, PhiRead::Messages, &id, patient_of(&c)).await?;
    Ok(json(&MessagePage {
        messages: rows.iter().map(MessageView::from).collect(),
        next_cursor,
    }))
}

pub async fn list_actions(state: AppState, p: Principal, id: String) -> Result {
    let c = conversation(&state, &p, &id).await?;
    let rows = state.store.list_actions(&id).await?;
    audit_log::read(&state, &p, PhiRead::Actions, &id, patient_of(&c)).await?;
    let views: Vec<ActionView> = rows.iter().map(ActionView::from).collect();
    Ok(json(&views))
}

/// The conversation's medical history row (the original `{content, …}`), or `null` while it
/// is being prepared.
pub async fn medical_history(state: AppState, p: Principal, id: String) -> Result {
    let c = conversation(&state, &p, &id).await?;
    let doc = state
        .store
        .get_document(DocumentKind::MedicalHistory, &id)
        .await?;
    audit_log::read(&state, &p, PhiRead::MedicalHistory, &id, patient_of(&c)).await?;
    Ok(json(&doc.as_ref().map(DocumentView::from)))
}

// ---------- patients ----------

pub async fn list_patients(state: AppState, p: Principal, q: PatientQuery) -> Result {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let query = q.q.as_deref().filter(|s| !s.is_empty());
    let rows = state
        .store
        .list_patients(
            &p.organization_id,
            query,
            &Page {
                after: q.after,
                limit: limit + 1,
            },
        )
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |r| r.id.clone());
    let ids = rows.iter().map(|r| r.id.clone()).collect();
    audit_log::read(&state, &p, PhiRead::PatientList, "*", ids).await?;
    Ok(json(&PatientPage {
        patients: rows.iter().map(PatientView::from).collect(),
        next_cursor,
    }))
}

pub async fn get_patient(state: AppState, p: Principal, id: String) -> Result {
    let patient = state
        .store
        .get_patient(&p.organization_id, &id)
        .await
        .map_err(not_found("Patient"))?;
    audit_log::read(&state, &p, PhiRead::Patient, &id, Vec::new()).await?;
    Ok(json(&PatientView::from(&patient)))
}

pub async fn update_patient(
    state: AppState,
    p: Principal,
    id: String,
    body: UpdatePatientRequest,
) -> Result {
    if let Some(n) = &body.first_name {
        check_name("firstName", n)?;
    }
    if let Some(n) = &body.last_name {
        check_name("lastName", n)?;
    }
    let update = PatientUpdate {
        date_of_birth: body
            .dob
            .as_deref()
            .map(|d| check_date("dob", d))
            .transpose()?,
        preferred_language: body
            .preferred_language
            .map(|l| check_language("preferredLanguage", l))
            .transpose()?,
        first_name: body.first_name,
        last_name: body.last_name,
    };
    let patient = state
        .store
        .update_patient(&p.organization_id, &id, update)
        .await
        .map_err(not_found("Patient"))?;
    audit(&state, &p, "update", "patient", &id).await?;
    Ok(json(&PatientView::from(&patient)))
}

// ---------- helpers ----------

pub(super) async fn conversation(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<store::ConversationWithPatient> {
    state
        .store
        .get_conversation(&p.organization_id, id)
        .await
        .map_err(not_found("Conversation"))
}

pub(super) fn not_found(what: &'static str) -> impl Fn(store::Error) -> ApiError {
    move |e| match e {
        store::Error::NotFound => ApiError::NotFound(what),
        e => e.into(),
    }
}

/// The patient of a conversation read, as the entry's `record_ids`: a conversation's
/// responses carry its patient's name and date of birth.
pub(super) fn patient_of(c: &store::ConversationWithPatient) -> Vec<String> {
    vec![c.patient.id.clone()]
}

/// Audits a change (`create`, `update`, `delete`...; reads go through [`audit_log::read`]). Fails
/// closed like a read: the change may already be stored, but its answer is not sent unaudited.
pub(super) async fn audit(
    state: &AppState,
    p: &Principal,
    action: &str,
    entity_type: &str,
    entity_id: &str,
) -> Result<()> {
    let entry = NewAuditEntry {
        organization_id: p.organization_id.clone(),
        user_id: Some(p.user_id.clone()),
        action: action.to_owned(),
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        record_ids: Vec::new(),
        remote_addr: p.remote.map(|ip| ip.to_string()),
    };
    audit_log::record(state, entry).await
}

/// Given up to `limit + 1` rows, keeps `limit` and returns the cursor of the last kept row
/// when there is more.
pub(super) fn split_page<T>(
    mut rows: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = limit as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let cursor = rows.last().map(id);
        (rows, cursor)
    } else {
        (rows, None)
    }
}

fn check_len(field: &str, value: &str, range: std::ops::RangeInclusive<usize>) -> Result<()> {
    let n = value.chars().count();
    if range.contains(&n) {
        Ok(())
    } else {
        Err(ApiError::InvalidField(format!(
            "{field} must be {} to {} characters",
            range.start(),
            range.end()
        )))
    }
}

fn check_name(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(ApiError::InvalidField(format!("{field} must not be empty")));
    }
    check_len(field, value, 1..=NAME_MAX)
}

/// Accepts `YYYY-MM-DD` that is a real calendar date, not in the future.
fn check_date(field: &str, value: &str) -> Result<String> {
    let fmt = format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(value, &fmt)
        .map_err(|_| ApiError::InvalidField(format!("{field} must be a date as YYYY-MM-DD")))?;
    if date > time::OffsetDateTime::now_utc().date() {
        return Err(ApiError::InvalidField(format!(
            "{field} must not be in the future"
        )));
    }
    Ok(value.to_owned())
}

/// A BCP-47-ish language tag: `es`, `pt-BR`, `zh-Hant` (letters, digits and `-`, 2-16 chars).
fn check_language(field: &str, value: String) -> Result<String> {
    let ok = (2..=16).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(value)
    } else {
        Err(ApiError::InvalidField(format!(
            "{field} must be a language code like \"es\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_languages() {
        assert!(check_date("dob", "1980-02-29").is_ok());
        assert!(check_date("dob", "1981-02-29").is_err());
        assert!(check_date("dob", "1980-2-1").is_err());
        assert!(check_date("dob", "3000-01-01").is_err());
        assert!(check_language("l", "es".into()).is_ok());
        assert!(check_language("l", "pt-BR".into()).is_ok());
        assert!(check_language("l", "e".into()).is_err());
        assert!(check_language("l", "es'; --".into()).is_err());
    }

    #[test]
    fn pages_split_with_cursor() {
        let (rows, cur) = split_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(cur.as_deref(), Some("2"));
        let (rows, cur) = split_page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(cur, None);
    }
}
