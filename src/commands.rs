//! Executing the clinician's voice commands: a detected [`Command`] becomes an action row.
//!
//! Design decision: the mapping from command to row ([`action_for`]) is a pure function of the
//! command and the clock, so it is table-tested; the executor only adds the store write. Action
//! `data` uses the original AggregatedAction field names (`content`, `duration`/`unit`/
//! `scheduledFor`/`details`, `medicationName`/`dosage`/`frequency`/`details`).

use serde_json::json;

use crate::ai::{Command, FollowUpUnit};
use crate::store::{self, Action, ClinicCommand, Millis, NewAction, Store};

pub mod clinic;
pub mod schema;
pub mod wake;

/// What an action-producing command writes, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    pub kind: String,
    pub status: &'static str,
    pub data: serde_json::Value,
    /// The human acknowledgement sent in `command_executed.message`.
    pub message: String,
    /// Webhook event that announces the action as soon as it is stored (a clinic's
    /// `webhook` command); `None` leaves it for the clinician's review.
    pub announce: Option<&'static str>,
}

/// The action a command produces, or `None` for commands that only ask for something
/// (summary, medical history) or are clinic-defined (executed by their own definition).
pub fn action_for(command: &Command, now: Millis) -> Option<PlannedAction> {
    match command {
        Command::TakeNote { content } => Some(PlannedAction {
            kind: "note".to_owned(),
            status: "created",
            data: json!({ "content": content }),
            message: "Note saved.".to_owned(),
            announce: None,
        }),
        Command::ScheduleFollowUp {
            duration,
            unit,
            details,
        } => {
            let scheduled_for = follow_up_date(now, *duration, *unit);
            Some(PlannedAction {
                kind: "followup".to_owned(),
                status: "scheduled",
                data: json!({
                    "duration": duration,
                    "unit": unit.as_str(),
                    "scheduledFor": scheduled_for.map(crate::wire::iso_millis),
                    "details": details,
                }),
                message: format!(
                    "Follow-up scheduled in {duration} {}{}.",
                    unit.as_str(),
                    if *duration == 1 { "" } else { "s" }
                ),
                announce: None,
            })
        }
        Command::WritePrescription {
            medication_name,
            dosage,
            frequency,
            details,
        } => Some(PlannedAction {
            kind: "prescription".to_owned(),
            // A prescription is a draft until the clinician reviews it.
            status: "pending_review",
            data: json!({
                "medicationName": medication_name,
                "dosage": dosage,
                "frequency": frequency,
                "details": details,
            }),
            message: format!("Prescription for {medication_name} drafted for review."),
            announce: None,
        }),
        Command::OrderLab {
            test_name,
            details,
            urgency,
        } => Some(PlannedAction {
            kind: "lab_order".to_owned(),
            status: "pending_review",
            data: json!({
                "testName": test_name,
                "details": details,
                "urgency": urgency.map(|u| u.as_str()),
            }),
            message: format!("Lab order for {test_name} drafted for review."),
            announce: None,
        }),
        Command::RequestSummary | Command::RequestMedicalHistory | Command::Custom { .. } => None,
    }
}

/// The action any command produces: built-ins by [`action_for`], clinic commands by their
/// definition in `clinic` (the same list the command was detected against).
pub fn plan(command: &Command, now: Millis, clinic: &[ClinicCommand]) -> Option<PlannedAction> {
    match command {
        Command::Custom { name, arguments } => clinic
            .iter()
            .find(|c| c.definition.name == *name)
            .map(|c| clinic::action_for(&c.definition, arguments)),
        builtin => action_for(builtin, now),
    }
}

/// `now` plus the follow-up delay; calendar months keep the day of month (clamped to the
/// month's last day), as a receptionist would book it.
pub(crate) fn follow_up_date(now: Millis, duration: u32, unit: FollowUpUnit) -> Option<Millis> {
    let start =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000).ok()?;
    let due = match unit {
        FollowUpUnit::Day => start.checked_add(time::Duration::days(i64::from(duration)))?,
        FollowUpUnit::Week => start.checked_add(time::Duration::weeks(i64::from(duration)))?,
        FollowUpUnit::Month => {
            let months = i64::from(start.month() as u8) - 1 + i64::from(duration);
            let year = i32::try_from(i64::from(start.year()) + months.div_euclid(12)).ok()?;
            let month =
                time::Month::try_from(u8::try_from(months.rem_euclid(12) + 1).ok()?).ok()?;
            let day = start.day().min(month.length(year));
            start.replace_date(time::Date::from_calendar_date(year, month, day).ok()?)
        }
    };
    i64::try_from(due.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What [`execute`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    pub action: Action,
    /// The planned webhook announcement was queued in the outbox (the action is then
    /// `confirmed`); `false` when none was planned or the organization has no webhook, in
    /// which case the action waits for review.
    pub announced: bool,
}

/// Stores the action a command produces and, for a command that announces it, confirms it and
/// queues the webhook delivery in the same store transaction as the confirmation.
///
/// A crash between the insert and the confirmation leaves the action `pending_review`, so a
/// clinician can still confirm it (which delivers it): nothing is lost or sent twice.
///
/// # Errors
/// Storing the action failed; the caller reports it as a failed command. (A failure to
/// announce an action already stored leaves it for review instead.)
pub async fn execute(
    store: &dyn Store,
    organization_id: &str,
    conversation_id: &str,
    planned: &PlannedAction,
) -> Result<Executed, store::Error> {
    let action = store
        .insert_action(NewAction {
            conversation_id: conversation_id.to_owned(),
            kind: planned.kind.clone(),
            status: planned.status.to_owned(),
            data: planned.data.clone(),
        })
        .await?;
    let Some(event) = planned.announce else {
        return Ok(Executed {
            action,
            announced: false,
        });
    };
    match announce(store, organization_id, &action, event).await {
        Ok(executed) => Ok(executed),
        // The action is stored: report it (pending review) rather than lose it to the client.
        Err(e) => {
            tracing::warn!(action_id = %action.id, error = %e, "could not announce a webhook command; left for review");
            Ok(Executed {
                action,
                announced: false,
            })
        }
    }
}

/// Confirms `action` and queues its `event` delivery in one transaction; without a webhook
/// the action is left as it was.
async fn announce(
    store: &dyn Store,
    organization_id: &str,
    action: &Action,
    event: &'static str,
) -> Result<Executed, store::Error> {
    match store.get_webhook(organization_id).await {
        Ok(_) => {}
        Err(store::Error::NotFound) => {
            tracing::warn!(action_id = %action.id, "a webhook command ran but the organization has no webhook; left for review");
            return Ok(Executed {
                action: action.clone(),
                announced: false,
            });
        }
        Err(e) => return Err(e),
    }
    let confirmed = Action {
        status: crate::actions::CONFIRMED.to_owned(),
        updated_at: store::next_updated_at(action.updated_at),
        ..action.clone()
    };
    let delivery = crate::webhook::delivery_for(event, organization_id, &confirmed);
    let (saved, queued) = store
        .update_action(
            organization_id,
            &action.id,
            store::ActionChange {
                expected_updated_at: action.updated_at,
                status: confirmed.status,
                data: confirmed.data,
                updated_at: confirmed.updated_at,
                delivery: Some(delivery),
            },
        )
        .await?;
    Ok(Executed {
        action: saved,
        announced: queued.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::LabUrgency;

    /// 2026-01-31T10:00:00Z
    const JAN_31: Millis = 1_769_853_600_000;

    #[test]
    fn commands_map_to_the_original_action_shapes() {
        let note = action_for(
            &Command::TakeNote {
                content: "chest pain for three days".into(),
            },
            JAN_31,
        )
        .unwrap();
        assert_eq!(
            (note.kind.as_str(), note.status),
            ("note", "created"),
            "original Note status"
        );
        assert_eq!(note.data, json!({"content": "chest pain for three days"}));

        let rx = action_for(
            &Command::WritePrescription {
                medication_name: "metformin".into(),
                dosage: "500 mg".into(),
                frequency: "twice a day".into(),
                details: None,
            },
            JAN_31,
        )
        .unwrap();
        assert_eq!(
            (rx.kind.as_str(), rx.status),
            ("prescription", "pending_review")
        );
        assert_eq!(
            rx.data,
            json!({"medicationName": "metformin", "dosage": "500 mg", "frequency": "twice a day", "details": null})
        );

        let lab = action_for(
            &Command::OrderLab {
                test_name: "lipid panel".into(),
                details: None,
                urgency: Some(LabUrgency::Routine),
            },
            JAN_31,
        )
        .unwrap();
        assert_eq!(lab.kind, "lab_order");
        assert_eq!(lab.data["testName"], "lipid panel");

        assert!(action_for(&Command::RequestSummary, JAN_31).is_none());
        assert!(action_for(&Command::RequestMedicalHistory, JAN_31).is_none());
    }

    #[test]
    fn follow_up_dates_use_calendar_units() {
        let cases = [
            (2, FollowUpUnit::Week, "2026-02-14T10:00:00.000Z"),
            (3, FollowUpUnit::Day, "2026-02-03T10:00:00.000Z"),
            // Jan 31 + 1 month clamps to the end of February.
            (1, FollowUpUnit::Month, "2026-02-28T10:00:00.000Z"),
            (12, FollowUpUnit::Month, "2027-01-31T10:00:00.000Z"),
        ];
        for (duration, unit, expected) in cases {
            let planned = action_for(
                &Command::ScheduleFollowUp {
                    duration,
                    unit,
                    details: Some("bring lab results".into()),
                },
                JAN_31,
            )
            .unwrap();
            assert_eq!(planned.kind, "followup");
            assert_eq!(planned.status, "scheduled");
            assert_eq!(
                planned.data["scheduledFor"], expected,
                "{duration} {unit:?}"
            );
            assert_eq!(planned.data["unit"], unit.as_str());
        }
    }
}
