//! The mock medical history the original product showed: generated once per patient from name
//! and approximate age, marked synthetic, and attached to each of the patient's conversations.
//!
//! Design decision: the patient's first history is the patient's history. A later conversation
//! gets a copy of it (so `GET …/medical-history` stays a per-conversation read), and a patient
//! is only ever sent to the model once: writers are serialized per patient, and a writer that
//! waited finds the history its predecessor stored.

use time::macros::format_description;

use super::{Error, Records};
use crate::ai::SYNTHETIC_HISTORY_HEADER;
use crate::store::{ConversationWithPatient, Document, DocumentKind};

/// Where a conversation's medical history came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOrigin {
    /// The conversation already had one.
    Existing,
    /// Copied from another conversation of the same patient.
    Copied,
    /// Generated now: the patient had none.
    Generated,
}

impl Records {
    /// The conversation's medical history, attaching the patient's existing one or generating
    /// it when the patient has none.
    ///
    /// # Errors
    /// [`Error::Provider`] when generation fails (nothing is stored, a later call tries again),
    /// [`Error::Store`].
    pub async fn medical_history(
        &self,
        conversation: &ConversationWithPatient,
    ) -> Result<(Document, HistoryOrigin), Error> {
        let kind = DocumentKind::MedicalHistory;
        let c = &conversation.conversation;
        let patient = &conversation.patient;
        let _writer = self.locks.lock(format!("history:{}", patient.id)).await;
        if let Some(doc) = self.store.get_document(kind, &c.id).await? {
            return Ok((doc, HistoryOrigin::Existing));
        }
        if let Some(first) = self
            .store
            .first_patient_document(kind, &c.organization_id, &patient.id)
            .await?
        {
            let copy = self
                .store
                .upsert_document(kind, &c.id, &first.content)
                .await?;
            return Ok((copy, HistoryOrigin::Copied));
        }
        let today = time::OffsetDateTime::now_utc().date();
        let age = approximate_age(&patient.date_of_birth, today);
        let text = self
            .history
            .generate(&patient.first_name, &patient.last_name, age)
            .await?;
        let doc = self
            .store
            .upsert_document(kind, &c.id, &marked_synthetic(&text))
            .await?;
        Ok((doc, HistoryOrigin::Generated))
    }
}

/// Pure: the text with [`SYNTHETIC_HISTORY_HEADER`] first, whatever the generator returned
/// (the OpenAI generator adds it; this keeps the marking for any other implementation).
fn marked_synthetic(text: &str) -> String {
    if text.starts_with(SYNTHETIC_HISTORY_HEADER) {
        text.to_owned()
    } else {
        format!("{SYNTHETIC_HISTORY_HEADER}\n\n{}", text.trim_start())
    }
}

/// Pure: whole years from a `YYYY-MM-DD` date of birth to `today`; `None` for an unparsable or
/// future date.
fn approximate_age(dob: &str, today: time::Date) -> Option<u32> {
    let born = time::Date::parse(dob, format_description!("[year]-[month]-[day]")).ok()?;
    let mut years = today.year() - born.year();
    if (today.month() as u8, today.day()) < (born.month() as u8, born.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn ages_count_whole_years() {
        let today = date!(2026 - 11 - 25);
        assert_eq!(approximate_age("1980-04-02", today), Some(46));
        assert_eq!(
            approximate_age("1980-11-26", today),
            Some(45),
            "birthday not yet"
        );
        assert_eq!(
            approximate_age("1980-11-25", today),
            Some(46),
            "birthday today"
        );
        assert_eq!(approximate_age("2027-01-01", today), None, "future");
        assert_eq!(approximate_age("not a date", today), None);
    }

    #[test]
    fn histories_are_always_marked_synthetic() {
        let marked = marked_synthetic("Allergies: none.");
        assert!(marked.starts_with(SYNTHETIC_HISTORY_HEADER));
        assert!(marked.ends_with("Allergies: none."));
        assert_eq!(marked_synthetic(&marked), marked, "marked once");
    }
}
