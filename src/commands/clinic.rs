//! Clinic-defined voice commands: the rules a definition must meet before it is stored, the
//! tool the model is offered for it, and the action executing it writes.
//!
//! Design decision: a definition is checked once, when an admin writes it ([`validate`]), so
//! the pipeline can offer stored commands as they are. Executing one never does more than
//! record an action: an `action` command writes a `pending_review` action of its type for the
//! clinician to review; a `webhook` command writes one under its own name and announces it to
//! the organization's webhook at once (event `command.executed`, through the outbox), since
//! saying it is the clinician's explicit request.

use serde_json::Value;

use super::schema::{self, SchemaError};
use super::PlannedAction;
use crate::ai::{CommandContext, CustomTool, BUILTIN_TOOL_NAMES};
use crate::store::{self, ClinicCommand, CommandDefinition, CommandProduces, Store};

/// The webhook event a `webhook` command's execution is announced with.
pub const COMMAND_EVENT: &str = "command.executed";

/// Longest description, in characters.
pub const DESCRIPTION_MAX: usize = 1000;
/// Most example phrases per command.
pub const MAX_EXAMPLES: usize = 20;
/// Longest example phrase, in characters.
pub const EXAMPLE_MAX: usize = 200;
/// Most commands per organization: every one is sent with every clinician utterance, and the
/// provider caps a request at 128 tools (the built-ins take six).
pub const MAX_COMMANDS: usize = 100;

/// Action types of the built-in commands; a clinic command writing one of them would produce
/// rows the frontend renders with the wrong fields.
const BUILTIN_ACTION_TYPES: &[&str] = &["note", "followup", "prescription", "lab_order"];

/// Why a definition was refused; the message is shown to the admin as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("name must be 1 to 64 letters, digits, '_' or '-'")]
    Name,
    #[error("name {0:?} is a built-in command; choose another name")]
    Reserved(String),
    #[error("description must be 1 to {DESCRIPTION_MAX} characters and not blank")]
    Description,
    #[error(
        "examples must be at most {MAX_EXAMPLES} phrases, each 1 to {EXAMPLE_MAX} characters, \
         not blank, without control characters"
    )]
    Examples,
    #[error(
        "produces.actionType must be snake_case: a lowercase letter, then up to 63 lowercase \
         letters, digits or '_'"
    )]
    ActionType,
    #[error("produces.actionType {0:?} belongs to a built-in command; choose another type")]
    BuiltinActionType(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Checks everything about a definition that does not need the store (uniqueness does).
///
/// # Errors
/// The first rule the definition breaks.
pub fn validate(definition: &CommandDefinition) -> Result<(), DefinitionError> {
    let name = &definition.name;
    if !(1..=64).contains(&name.len())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(DefinitionError::Name);
    }
    if BUILTIN_TOOL_NAMES
        .iter()
        .any(|b| b.eq_ignore_ascii_case(name))
    {
        return Err(DefinitionError::Reserved(name.clone()));
    }
    let description = &definition.description;
    if description.trim().is_empty() || description.chars().count() > DESCRIPTION_MAX {
        return Err(DefinitionError::Description);
    }
    let example_ok = |e: &String| {
        !e.trim().is_empty() && e.chars().count() <= EXAMPLE_MAX && !e.chars().any(char::is_control)
    };
    if definition.examples.len() > MAX_EXAMPLES || !definition.examples.iter().all(example_ok) {
        return Err(DefinitionError::Examples);
    }
    if let CommandProduces::Action { action_type } = &definition.produces {
        let snake = action_type.len() <= 64
            && action_type.starts_with(|c: char| c.is_ascii_lowercase())
            && action_type
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !snake {
            return Err(DefinitionError::ActionType);
        }
        if BUILTIN_ACTION_TYPES.contains(&action_type.as_str()) {
            return Err(DefinitionError::BuiltinActionType(action_type.clone()));
        }
    }
    schema::validate(&definition.parameters)?;
    Ok(())
}

/// The tool offered to the model: the description followed by the example phrases, which is
/// how the model learns the clinic's wording.
pub fn tool(command: &ClinicCommand) -> CustomTool {
    let d = &command.definition;
    let mut description = d.description.trim().to_owned();
    if !d.examples.is_empty() {
        let quoted: Vec<String> = d
            .examples
            .iter()
            .map(|e| format!("\"{}\"", e.trim()))
            .collect();
        description.push_str("\nThe clinician may say it like: ");
        description.push_str(&quoted.join("; "));
    }
    CustomTool {
        name: d.name.clone(),
        description,
        parameters: d.parameters.clone(),
    }
}

/// Everything command detection needs for one clinician utterance: the clinician's switches
/// and the organization's commands, read from the store each time so a change made over REST
/// applies to the very next utterance (two indexed reads, run concurrently). The commands are
/// returned too, to execute whichever one the model picks from exactly this list.
///
/// # Errors
/// A store failure; the caller skips detection for this utterance rather than guess the
/// clinician's settings.
pub async fn context(
    store: &dyn Store,
    clinician_id: &str,
    organization_id: &str,
    clinician_language: &str,
) -> Result<(CommandContext, Vec<ClinicCommand>), store::Error> {
    let (settings, commands) = tokio::join!(
        store.user_settings(clinician_id),
        store.list_commands(organization_id)
    );
    let (settings, commands) = (settings?, commands?);
    let ctx = CommandContext {
        clinician_language: clinician_language.to_owned(),
        builtin_enabled: settings.builtin_commands,
        wake_phrase: settings.wake_phrase,
        custom_tools: commands.iter().map(tool).collect(),
    };
    Ok((ctx, commands))
}

/// What executing the command with the model's `arguments` writes.
pub fn action_for(definition: &CommandDefinition, arguments: &Value) -> PlannedAction {
    let (kind, announce, message) = match &definition.produces {
        CommandProduces::Action { action_type } => (
            action_type.clone(),
            None,
            format!("{} recorded for review.", definition.name),
        ),
        CommandProduces::Webhook => (
            definition.name.clone(),
            Some(COMMAND_EVENT),
            format!("{} sent to the clinic system.", definition.name),
        ),
    };
    PlannedAction {
        kind,
        status: "pending_review",
        data: arguments.clone(),
        message,
        announce,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn referral() -> CommandDefinition {
        CommandDefinition {
            name: "refer_patient".into(),
            description: "Refer the patient to a specialist.".into(),
            examples: vec![
                "refer to cardiology".into(),
                "send a referral to derm".into(),
            ],
            parameters: json!({"type": "object", "properties": {"specialty": {"type": "string"}},
                "required": ["specialty"]}),
            produces: CommandProduces::Action {
                action_type: "referral".into(),
            },
        }
    }

    #[test]
    fn definitions_are_checked_rule_by_rule() {
        assert_eq!(validate(&referral()), Ok(()));
        let broken = |f: &dyn Fn(&mut CommandDefinition)| {
            let mut d = referral();
            f(&mut d);
            validate(&d).unwrap_err()
        };
        assert_eq!(
            broken(&|d| d.name = "refer patient".into()),
            DefinitionError::Name
        );
        assert_eq!(broken(&|d| d.name = String::new()), DefinitionError::Name);
        assert_eq!(broken(&|d| d.name = "x".repeat(65)), DefinitionError::Name);
        assert_eq!(
            broken(&|d| d.name = "Take_Note".into()),
            DefinitionError::Reserved("Take_Note".into())
        );
        assert_eq!(
            broken(&|d| d.description = "  ".into()),
            DefinitionError::Description
        );
        assert_eq!(
            broken(&|d| d.examples = vec!["ok".into(), "".into()]),
            DefinitionError::Examples
        );
        assert_eq!(
            broken(&|d| d.examples = vec!["line\nbreak".into()]),
            DefinitionError::Examples
        );
        assert_eq!(
            broken(&|d| d.examples = vec!["x".into(); MAX_EXAMPLES + 1]),
            DefinitionError::Examples
        );
        for bad in ["Referral", "1st", "refer-al", ""] {
            assert_eq!(
                broken(&|d| {
                    d.produces = CommandProduces::Action {
                        action_type: bad.into(),
                    }
                }),
                DefinitionError::ActionType,
                "{bad}"
            );
        }
        assert_eq!(
            broken(&|d| {
                d.produces = CommandProduces::Action {
                    action_type: "prescription".into(),
                }
            }),
            DefinitionError::BuiltinActionType("prescription".into())
        );
        assert!(matches!(
            broken(&|d| d.parameters = json!({"type": "string"})),
            DefinitionError::Schema(_)
        ));
    }

    #[test]
    fn the_tool_teaches_the_examples() {
        let command = ClinicCommand {
            id: "c1".into(),
            organization_id: "o1".into(),
            definition: referral(),
            created_at: 0,
            updated_at: 0,
        };
        let tool = tool(&command);
        assert_eq!(tool.name, "refer_patient");
        assert_eq!(
            tool.description,
            "Refer the patient to a specialist.\nThe clinician may say it like: \
             \"refer to cardiology\"; \"send a referral to derm\""
        );
        assert_eq!(tool.parameters, command.definition.parameters);
    }

    #[test]
    fn both_kinds_record_an_action_for_review() {
        let args = json!({"specialty": "cardiology"});
        let planned = action_for(&referral(), &args);
        assert_eq!(planned.kind, "referral");
        assert_eq!(planned.status, "pending_review");
        assert_eq!(planned.data, args);
        assert_eq!(planned.message, "refer_patient recorded for review.");

        let mut hook = referral();
        hook.name = "notify-billing".into();
        hook.produces = CommandProduces::Webhook;
        let planned = action_for(&hook, &args);
        assert_eq!(planned.kind, "notify-billing");
        assert_eq!(planned.status, "pending_review");
        assert_eq!(planned.data, args);
        assert_eq!(planned.announce, Some(COMMAND_EVENT));
    }

    /// Executing a `webhook` command against a real SQLite store: with no webhook the action
    /// waits for review; with one it is confirmed and its delivery queued in the outbox.
    #[tokio::test]
    async fn a_webhook_command_is_announced_through_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let (org, user) = store::contract::tenant(&store).await;
        let conversation = store::contract::conversation(&store, &org, &user).await;
        let mut hook = referral();
        hook.name = "notify_billing".into();
        hook.produces = CommandProduces::Webhook;
        let planned = action_for(&hook, &json!({"specialty": "cardiology"}));

        let unannounced = super::super::execute(&store, &org.id, &conversation, &planned)
            .await
            .unwrap();
        assert!(!unannounced.announced);
        assert_eq!(unannounced.action.status, "pending_review");

        store
            .put_webhook(&org.id, "https://clinic.example/hook", "secret")
            .await
            .unwrap();
        let sent = super::super::execute(&store, &org.id, &conversation, &planned)
            .await
            .unwrap();
        assert!(sent.announced);
        assert_eq!(sent.action.status, crate::actions::CONFIRMED);
        let queued = store
            .list_deliveries(&org.id, Some(&sent.action.id), &store::Page::default())
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].event, COMMAND_EVENT);
        assert_eq!(queued[0].payload["action"]["type"], "notify_billing");
        assert_eq!(
            queued[0].payload["action"]["data"],
            json!({"specialty": "cardiology"})
        );
        assert!(store
            .list_deliveries(
                &org.id,
                Some(&unannounced.action.id),
                &store::Page::default()
            )
            .await
            .unwrap()
            .is_empty());
    }
}
