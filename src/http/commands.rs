//! REST for voice-command configuration: the organization's clinic-defined commands
//! (`/api/v1/commands`) and the clinician's own switches (`/api/v1/users/me/settings`).
//!
//! Design decisions: any clinician of the organization may read its commands (they are what
//! their voice can trigger), only its admins may change them; another organization's command
//! is 404, as everywhere. `PUT` replaces a definition whole, so what an admin sends is exactly
//! what the model is offered on the next utterance.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{self, Reply, Response};
use warp::Filter;

use super::error::ApiError;
use super::filters::{json_body, with_auth, with_state};
use super::handlers::{audit, not_found, respond};
use crate::auth::Principal;
use crate::commands::{clinic, wake};
use crate::server::AppState;
use crate::store::{
    self, ClinicCommand, CommandDefinition, CommandProduces, UserRole, UserSettings,
};
use crate::wire::iso_millis;

type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// The routes of this module, for [`super::routes`].
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let limit = state.http.max_body_bytes;
    let st = || with_state(state.clone());
    let auth = || with_auth(state.clone());
    let commands = warp::path!("api" / "v1" / "commands");
    let command = || warp::path!("api" / "v1" / "commands" / String);

    let list = commands
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(list_commands)
        .map(respond);
    let create = commands
        .and(warp::post())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(create_command)
        .map(respond);
    let get = command()
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(|id, state, p| get_command(state, p, id))
        .map(respond);
    let replace = command()
        .and(warp::put())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(|id, state, p, body| replace_command(state, p, id, body))
        .map(respond);
    let delete = command()
        .and(warp::delete())
        .and(st())
        .and(auth())
        .then(|id, state, p| delete_command(state, p, id))
        .map(respond);
    let settings = || warp::path!("api" / "v1" / "users" / "me" / "settings");
    let get_settings = settings()
        .and(warp::get())
        .and(st())
        .and(auth())
        .then(get_settings)
        .map(respond);
    let patch_settings = settings()
        .and(warp::patch())
        .and(st())
        .and(auth())
        .and(json_body(limit))
        .then(patch_settings)
        .map(respond);
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(replace)
        .unify()
        .or(delete)
        .unify()
        .or(get_settings)
        .unify()
        .or(patch_settings)
        .unify()
        .boxed()
}

// ---------- wire shapes ----------

/// `produces`: `{"kind":"action","actionType":"referral"}` or `{"kind":"webhook"}`. A flat
/// struct rather than a tagged enum because serde ignores unknown fields next to a unit variant,
/// and a mistyped field here must be an error, not silently dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProducesBody {
    pub kind: ProducesKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProducesKind {
    Action,
    Webhook,
}

impl TryFrom<ProducesBody> for CommandProduces {
    type Error = ApiError;

    fn try_from(p: ProducesBody) -> Result<Self, ApiError> {
        match (p.kind, p.action_type) {
            (ProducesKind::Action, Some(action_type)) => {
                Ok(CommandProduces::Action { action_type })
            }
            (ProducesKind::Action, None) => Err(ApiError::InvalidField(
                "produces.actionType is required when kind is \"action\"".into(),
            )),
            (ProducesKind::Webhook, None) => Ok(CommandProduces::Webhook),
            (ProducesKind::Webhook, Some(_)) => Err(ApiError::InvalidField(
                "produces.actionType applies only when kind is \"action\"".into(),
            )),
        }
    }
}

impl From<&CommandProduces> for ProducesBody {
    fn from(p: &CommandProduces) -> Self {
        match p {
            CommandProduces::Action { action_type } => ProducesBody {
                kind: ProducesKind::Action,
                action_type: Some(action_type.clone()),
            },
            CommandProduces::Webhook => ProducesBody {
                kind: ProducesKind::Webhook,
                action_type: None,
            },
        }
    }
}

/// `POST /commands` and `PUT /commands/:id` (a whole definition).
#[derive(Debug, Deserialize)]
pub struct CommandRequest {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub examples: Vec<String>,
    pub parameters: Value,
    pub produces: ProducesBody,
}

impl CommandRequest {
    /// The definition, once it meets every rule that does not need the store (public so the
    /// `rest_body` fuzz target runs the same checks as the handler).
    ///
    /// # Errors
    /// [`ApiError::InvalidField`] naming the first rule the definition breaks.
    pub fn into_definition(self) -> Result<CommandDefinition> {
        let definition = CommandDefinition {
            name: self.name,
            description: self.description,
            examples: self.examples,
            parameters: self.parameters,
            produces: self.produces.try_into()?,
        };
        clinic::validate(&definition).map_err(|e| ApiError::InvalidField(e.to_string()))?;
        Ok(definition)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub examples: Vec<String>,
    pub parameters: Value,
    pub produces: ProducesBody,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&ClinicCommand> for CommandView {
    fn from(c: &ClinicCommand) -> Self {
        let d = &c.definition;
        CommandView {
            id: c.id.clone(),
            name: d.name.clone(),
            description: d.description.clone(),
            examples: d.examples.clone(),
            parameters: d.parameters.clone(),
            produces: (&d.produces).into(),
            created_at: iso_millis(c.created_at),
            updated_at: iso_millis(c.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    pub builtin_commands: bool,
    pub wake_phrase: Option<String>,
}

/// `PATCH /users/me/settings`: absent fields stay; `"wakePhrase": null` removes the phrase.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    pub builtin_commands: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub wake_phrase: Option<Option<String>>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

// ---------- handlers ----------

fn require_admin(p: &Principal) -> Result<()> {
    if p.role == UserRole::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an organization admin may create, change or delete voice commands",
        ))
    }
}

/// Store errors of a command write: the name taken, or the command gone (or foreign).
fn write_error(name: &str) -> impl Fn(store::Error) -> ApiError + '_ {
    move |e| match e {
        store::Error::Conflict(_) => ApiError::CommandExists(name.to_owned()),
        store::Error::NotFound => ApiError::NotFound("Command"),
        e => e.into(),
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    reply::json(value).into_response()
}

pub async fn list_commands(state: AppState, p: Principal) -> Result {
    let rows = state.store.list_commands(&p.organization_id).await?;
    Ok(json(
        &rows.iter().map(CommandView::from).collect::<Vec<_>>(),
    ))
}

pub async fn create_command(state: AppState, p: Principal, body: CommandRequest) -> Result {
    require_admin(&p)?;
    let definition = body.into_definition()?;
    // Checked before the insert: two concurrent creates may pass it together, which costs one
    // command over the cap, not a request the provider refuses (its limit is higher).
    let existing = state.store.list_commands(&p.organization_id).await?.len();
    if existing >= clinic::MAX_COMMANDS {
        return Err(ApiError::InvalidField(format!(
            "an organization may define at most {} commands",
            clinic::MAX_COMMANDS
        )));
    }
    let name = definition.name.clone();
    let command = state
        .store
        .create_command(&p.organization_id, definition)
        .await
        .map_err(write_error(&name))?;
    audit(&state, &p, "create", "command", &command.id).await?;
    tracing::info!(command_id = %command.id, organization_id = %p.organization_id, "clinic command created");
    Ok(reply::with_status(json(&CommandView::from(&command)), StatusCode::CREATED).into_response())
}

pub async fn get_command(state: AppState, p: Principal, id: String) -> Result {
    let command = state
        .store
        .get_command(&p.organization_id, &id)
        .await
        .map_err(not_found("Command"))?;
    Ok(json(&CommandView::from(&command)))
}

pub async fn replace_command(
    state: AppState,
    p: Principal,
    id: String,
    body: CommandRequest,
) -> Result {
    require_admin(&p)?;
    let definition = body.into_definition()?;
    let name = definition.name.clone();
    let command = state
        .store
        .update_command(&p.organization_id, &id, definition)
        .await
        .map_err(write_error(&name))?;
    audit(&state, &p, "update", "command", &id).await?;
    Ok(json(&CommandView::from(&command)))
}

pub async fn delete_command(state: AppState, p: Principal, id: String) -> Result {
    require_admin(&p)?;
    state
        .store
        .delete_command(&p.organization_id, &id)
        .await
        .map_err(not_found("Command"))?;
    audit(&state, &p, "delete", "command", &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn settings_view(s: &UserSettings) -> SettingsView {
    SettingsView {
        builtin_commands: s.builtin_commands,
        wake_phrase: s.wake_phrase.clone(),
    }
}

pub async fn get_settings(state: AppState, p: Principal) -> Result {
    let settings = state.store.user_settings(&p.user_id).await?;
    Ok(json(&settings_view(&settings)))
}

pub async fn patch_settings(state: AppState, p: Principal, body: SettingsPatch) -> Result {
    let mut settings = state.store.user_settings(&p.user_id).await?;
    if let Some(on) = body.builtin_commands {
        settings.builtin_commands = on;
    }
    if let Some(phrase) = body.wake_phrase {
        settings.wake_phrase = match phrase {
            None => None,
            Some(raw) => Some(wake::normalize(&raw).ok_or_else(|| {
                ApiError::InvalidField(format!(
                    "wakePhrase must be 1 to {} letters, spaces or apostrophes (or null for none)",
                    wake::MAX_CHARS
                ))
            })?),
        };
    }
    state
        .store
        .set_user_settings(&p.user_id, &settings)
        .await
        .map_err(|e| match e {
            // A valid token for a deleted user: the session is over.
            store::Error::NotFound => ApiError::Auth(crate::auth::Error::InvalidToken),
            e => e.into(),
        })?;
    audit(&state, &p, "update", "user_settings", &p.user_id).await?;
    Ok(json(&settings_view(&settings)))
}
