//! Reviewing actions after a voice command created them: which fields each type lets a
//! clinician edit, and which status changes are allowed.
//!
//! Design decision: pure functions of the stored row and the request, so the rules are
//! table-tested without a database; the HTTP layer applies the result with the store's
//! compare-and-set ([`crate::store::Store::update_action`]).
//!
//! Lifecycle: every type starts in its own review status (`note` `created`, `followup`
//! `scheduled`, `prescription` and `lab_order` `pending_review`); from there it is edited, then
//! `confirmed` or `cancelled`. A confirmed action has been announced to the clinic's systems,
//! so it is no longer edited; it can still be cancelled, which is announced too. A cancelled
//! action is final.

use serde_json::{Map, Value};

use crate::ai::{FollowUpUnit, LabUrgency};
use crate::store::Millis;

/// The status of an action the clinician approved.
pub const CONFIRMED: &str = "confirmed";
/// The status of an action the clinician withdrew; final.
pub const CANCELLED: &str = "cancelled";

/// Longest text accepted for an edited field, in characters.
const TEXT_MAX: usize = 10_000;

/// Why a review request cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The edit names an unknown field or carries a bad value; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The action's status does not allow the request (e.g. editing a cancelled action).
    #[error("{0}")]
    Conflict(String),
}

/// A status change a clinician asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Confirm,
    Cancel,
}

/// The outcome of a [`Review`]: the new status and the webhook event that announces it, if
/// the clinic's systems need to hear about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    pub status: &'static str,
    pub event: Option<&'static str>,
}

/// Applies `review` to an action in `status`.
///
/// # Errors
/// [`Error::Conflict`] for a cancelled action, and for confirming a confirmed one.
pub fn review(status: &str, review: Review) -> Result<StatusChange, Error> {
    match (status, review) {
        (CANCELLED, _) => Err(Error::Conflict("the action is cancelled".into())),
        (CONFIRMED, Review::Confirm) => {
            Err(Error::Conflict("the action is already confirmed".into()))
        }
        // The clinic's systems were told about the confirmation, so they hear of this too.
        (CONFIRMED, Review::Cancel) => Ok(StatusChange {
            status: CANCELLED,
            event: Some("action.cancelled"),
        }),
        (_, Review::Confirm) => Ok(StatusChange {
            status: CONFIRMED,
            event: Some("action.confirmed"),
        }),
        // Never announced, so nothing to retract.
        (_, Review::Cancel) => Ok(StatusChange {
            status: CANCELLED,
            event: None,
        }),
    }
}

/// What an editable field accepts.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A non-blank string.
    Text,
    /// A string or `null`.
    OptionalText,
    /// A whole number above zero.
    Positive,
    /// `day`, `week` or `month`.
    Unit,
    /// `routine`, `urgent`, `stat` or `null`.
    Urgency,
}

/// The fields a clinician may edit per action type, in the pipeline's `data` names
/// (`commands::action_for`).
fn editable(kind: &str) -> Option<&'static [(&'static str, Field)]> {
    Some(match kind {
        "note" => &[("content", Field::Text)],
        "followup" => &[
            ("duration", Field::Positive),
            ("unit", Field::Unit),
            ("details", Field::OptionalText),
        ],
        "prescription" => &[
            ("medicationName", Field::Text),
            ("dosage", Field::Text),
            ("frequency", Field::Text),
            ("details", Field::OptionalText),
        ],
        "lab_order" => &[
            ("testName", Field::Text),
            ("details", Field::OptionalText),
            ("urgency", Field::Urgency),
        ],
        _ => return None,
    })
}

fn check(name: &str, field: Field, value: &Value) -> Result<(), Error> {
    let invalid = |what: &str| Err(Error::Invalid(format!("{name} must be {what}")));
    let text_ok = |s: &str| !s.trim().is_empty() && s.chars().count() <= TEXT_MAX;
    match (field, value) {
        (Field::Text, Value::String(s)) if text_ok(s) => Ok(()),
        (Field::Text, _) => invalid(&format!(
            "a non-empty string of at most {TEXT_MAX} characters"
        )),
        (Field::OptionalText, Value::Null) => Ok(()),
        (Field::OptionalText, Value::String(s)) if s.chars().count() <= TEXT_MAX => Ok(()),
        (Field::OptionalText, _) => invalid(&format!(
            "a string of at most {TEXT_MAX} characters, or null"
        )),
        (Field::Positive, Value::Number(n))
            if n.as_u64()
                .is_some_and(|n| n > 0 && u32::try_from(n).is_ok()) =>
        {
            Ok(())
        }
        (Field::Positive, _) => invalid("a whole number greater than 0"),
        (Field::Unit, Value::String(s)) if FollowUpUnit::parse(s).is_some() => Ok(()),
        (Field::Unit, _) => invalid("\"day\", \"week\" or \"month\""),
        (Field::Urgency, Value::Null) => Ok(()),
        (Field::Urgency, Value::String(s)) if LabUrgency::parse(s).is_some() => Ok(()),
        (Field::Urgency, _) => invalid("\"routine\", \"urgent\", \"stat\" or null"),
    }
}

/// The action's `data` after `changes`, for an action of `kind` in `status` created at
/// `created_at`. A follow-up's `scheduledFor` is recomputed from its (new) duration and unit,
/// counted from when the action was created, i.e. from the visit.
///
/// # Errors
/// [`Error::Conflict`] unless the action is still under review (neither confirmed nor
/// cancelled); [`Error::Invalid`] for a type without editable fields, an empty change, an
/// unknown field or a bad value.
pub fn edit(
    kind: &str,
    status: &str,
    data: &Value,
    changes: &Map<String, Value>,
    created_at: Millis,
) -> Result<Value, Error> {
    match status {
        CANCELLED => {
            return Err(Error::Conflict(
                "a cancelled action cannot be edited".into(),
            ))
        }
        CONFIRMED => {
            return Err(Error::Conflict(
                "a confirmed action cannot be edited; cancel it instead".into(),
            ))
        }
        _ => {}
    }
    let fields = editable(kind).ok_or_else(|| {
        Error::Invalid(format!("actions of type {kind:?} have no editable fields"))
    })?;
    if changes.is_empty() {
        return Err(Error::Invalid(
            "data must name at least one field to change".into(),
        ));
    }
    let mut merged = data.as_object().cloned().unwrap_or_default();
    for (name, value) in changes {
        let Some(&(_, field)) = fields.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
            let hint = if kind == "followup" && name == "scheduledFor" {
                " (scheduledFor is computed from duration and unit)"
            } else {
                ""
            };
            return Err(Error::Invalid(format!(
                "{name:?} is not an editable field of a {kind} action{hint}; editable: {}",
                names.join(", ")
            )));
        };
        check(name, field, value)?;
        merged.insert(name.clone(), value.clone());
    }
    if kind == "followup" {
        let duration = merged
            .get("duration")
            .and_then(Value::as_u64)
            .and_then(|d| u32::try_from(d).ok());
        let unit = merged
            .get("unit")
            .and_then(Value::as_str)
            .and_then(FollowUpUnit::parse);
        let (Some(duration), Some(unit)) = (duration, unit) else {
            return Err(Error::Invalid(
                "the follow-up needs both duration and unit".into(),
            ));
        };
        let due = crate::commands::follow_up_date(created_at, duration, unit)
            .ok_or_else(|| Error::Invalid("duration is too large".into()))?;
        merged.insert(
            "scheduledFor".into(),
            Value::from(crate::wire::iso_millis(due)),
        );
    }
    Ok(Value::Object(merged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-01-31T10:00:00Z
    const JAN_31: Millis = 1_769_853_600_000;

    fn changes(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn status_changes() {
        let ok = |status, event| Ok(StatusChange { status, event });
        let cases = [
            (
                "pending_review",
                Review::Confirm,
                ok(CONFIRMED, Some("action.confirmed")),
            ),
            (
                "created",
                Review::Confirm,
                ok(CONFIRMED, Some("action.confirmed")),
            ),
            ("scheduled", Review::Cancel, ok(CANCELLED, None)),
            (
                CONFIRMED,
                Review::Cancel,
                ok(CANCELLED, Some("action.cancelled")),
            ),
        ];
        for (status, r, expected) in cases {
            assert_eq!(review(status, r), expected, "{status} {r:?}");
        }
        for (status, r) in [
            (CONFIRMED, Review::Confirm),
            (CANCELLED, Review::Confirm),
            (CANCELLED, Review::Cancel),
        ] {
            assert!(
                matches!(review(status, r), Err(Error::Conflict(_))),
                "{status} {r:?}"
            );
        }
    }

    #[test]
    fn edits_merge_validated_fields() {
        let rx = json!({"medicationName": "metformin", "dosage": "500 mg", "frequency": "twice a day", "details": null});
        let out = edit(
            "prescription",
            "pending_review",
            &rx,
            &changes(json!({"dosage": "850 mg", "details": "with meals"})),
            JAN_31,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"medicationName": "metformin", "dosage": "850 mg", "frequency": "twice a day", "details": "with meals"})
        );
        let lab = json!({"testName": "lipid panel", "details": null, "urgency": null});
        let out = edit(
            "lab_order",
            "pending_review",
            &lab,
            &changes(json!({"urgency": "stat"})),
            JAN_31,
        )
        .unwrap();
        assert_eq!(out["urgency"], "stat");
        let note = edit(
            "note",
            "created",
            &json!({"content": "a"}),
            &changes(json!({"content": "b"})),
            JAN_31,
        )
        .unwrap();
        assert_eq!(note, json!({"content": "b"}));
    }

    #[test]
    fn follow_up_edits_recompute_the_date_from_the_visit() {
        let f = json!({"duration": 2, "unit": "week", "scheduledFor": "2026-02-14T10:00:00.000Z", "details": null});
        let out = edit(
            "followup",
            "scheduled",
            &f,
            &changes(json!({"unit": "month"})),
            JAN_31,
        )
        .unwrap();
        assert_eq!(out["scheduledFor"], "2026-03-31T10:00:00.000Z");
        let out = edit(
            "followup",
            "scheduled",
            &f,
            &changes(json!({"duration": 3, "unit": "day"})),
            JAN_31,
        )
        .unwrap();
        assert_eq!(out["scheduledFor"], "2026-02-03T10:00:00.000Z");
        assert_eq!(out["duration"], 3);
    }

    #[test]
    fn bad_edits_say_what_is_wrong() {
        let f = json!({"duration": 2, "unit": "week", "scheduledFor": "x", "details": null});
        let invalid = |kind: &str, data: &Value, c: Value, needle: &str| match edit(
            kind,
            "pending_review",
            data,
            &changes(c.clone()),
            JAN_31,
        ) {
            Err(Error::Invalid(m)) => assert!(m.contains(needle), "{c}: {m}"),
            other => panic!("{c}: expected Invalid, got {other:?}"),
        };
        invalid(
            "followup",
            &f,
            json!({"duration": 0}),
            "duration must be a whole number greater than 0",
        );
        invalid("followup", &f, json!({"duration": -1}), "greater than 0");
        invalid("followup", &f, json!({"duration": 1.5}), "whole number");
        invalid("followup", &f, json!({"duration": "2"}), "whole number");
        invalid(
            "followup",
            &f,
            json!({"unit": "year"}),
            "\"day\", \"week\" or \"month\"",
        );
        invalid(
            "followup",
            &f,
            json!({"scheduledFor": "2030-01-01"}),
            "computed from duration and unit",
        );
        invalid(
            "followup",
            &f,
            json!({"duration": 4_000_000_000u64}),
            "too large",
        );
        invalid(
            "note",
            &json!({}),
            json!({"content": "  "}),
            "content must be a non-empty string",
        );
        invalid("note", &json!({}), json!({"content": 5}), "content must be");
        invalid(
            "note",
            &json!({}),
            json!({"text": "x"}),
            "\"text\" is not an editable field of a note action; editable: content",
        );
        invalid("note", &json!({}), json!({}), "at least one field");
        invalid(
            "prescription",
            &json!({}),
            json!({"details": 3}),
            "details must be a string",
        );
        invalid(
            "lab_order",
            &json!({}),
            json!({"urgency": "asap"}),
            "\"routine\", \"urgent\", \"stat\" or null",
        );
        invalid(
            "referral",
            &json!({}),
            json!({"to": "x"}),
            "actions of type \"referral\" have no editable fields",
        );
    }

    #[test]
    fn only_actions_under_review_are_edited() {
        for status in [CONFIRMED, CANCELLED] {
            assert!(matches!(
                edit(
                    "note",
                    status,
                    &json!({"content": "a"}),
                    &changes(json!({"content": "b"})),
                    JAN_31
                ),
                Err(Error::Conflict(_))
            ));
        }
    }
}
