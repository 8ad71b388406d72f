//! Wire shapes of the REST API: request bodies, query strings and the JSON views of store rows.
//!
//! Names are the original backend's (camelCase); timestamps are ISO-8601 UTC instants with
//! milliseconds and a `Z` (`2026-11-25T10:40:11.727Z`), which the original frontend compares to
//! its own clock. Request bodies tolerate unknown fields because the original frontend sends a
//! few Tandem does not use.

use serde::{Deserialize, Serialize};

use crate::store::User;
pub use crate::wire::*;

// ---------- requests ----------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    pub preferred_language: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversationRequest {
    pub first_name: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    #[serde(alias = "dateOfBirth")]
    pub dob: String,
    /// Defaults to `es`, as the original frontend always sends.
    pub patient_language: Option<String>,
    /// Defaults to the clinician's preferred language.
    pub clinician_language: Option<String>,
}

/// `PATCH /patients/:id`: absent fields stay unchanged.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePatientRequest {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(alias = "dateOfBirth")]
    pub dob: Option<String>,
    pub preferred_language: Option<String>,
}

/// `?limit=&after=` keyset pagination.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// `GET /patients?q=&limit=&after=`.
#[derive(Debug, Default, Deserialize)]
pub struct PatientQuery {
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

// ---------- responses ----------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResponse {
    pub access_token: String,
    pub refresh_token: String,
}

/// `GET /auth/me`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeView {
    pub id: String,
    pub username: String,
    pub organization_id: String,
    pub preferred_language: String,
    pub role: &'static str,
}

impl From<&User> for MeView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            organization_id: u.organization_id.clone(),
            preferred_language: u.preferred_language.clone(),
            role: u.role.as_str(),
        }
    }
}

/// One page of a keyset-paginated list. `nextCursor` is the id to pass as `after=` for the
/// next page, or `null` on the last page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

/// See [`MessagePage`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientPage {
    pub patients: Vec<PatientView>,
    pub next_cursor: Option<String>,
}
