//! End-of-visit (and interim) summaries: a structured clinical summary in the clinician's
//! language citing the messages it came from as `[msg:<id>]`, and a plain-language take-home
//! version in the patient's language.
//!
//! Design decision: citations are checked against the conversation's stored message ids
//! before anything is stored. A cited id that is not a message of this conversation is cut
//! from the text and listed in `unresolvedReferences`, so a stored reference always resolves.
//! The document is stored as JSON in the summary row's `content` (no schema change); readers go
//! through [`SummaryRecord::from_document`], which also accepts the plain text older rows hold.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Error, KeyGuard, Records};
use crate::ai::{LineSpeaker, SummaryKind, SummaryRequest, TranscriptLine};
use crate::store::{
    Action, Conversation, ConversationStatus, Document, DocumentKind, Message, Page, SenderType,
};
use crate::wire::iso_millis;

/// Whether a summary closes the visit or was asked for during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryStage {
    /// Requested by voice during the visit; stored marked `interim`, replaced by the final one.
    Interim,
    /// Written after the visit ended; moves the conversation to `summarized` or `ended_error`.
    Final,
}

/// The stored summary document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRecord {
    /// Structured clinical summary, clinician's language, with validated `[msg:<id>]` citations.
    pub clinical: String,
    /// Plain-language version for the patient, in the patient's language, without citations.
    pub take_home: String,
    /// Message ids the clinical summary cites, in order of first citation; all exist.
    pub references: Vec<String>,
    /// Ids the model cited that are not messages of the conversation (removed from the text).
    #[serde(default)]
    pub unresolved_references: Vec<String>,
    /// ISO-8601 instant the summary was written.
    pub generated_at: String,
    #[serde(default)]
    pub interim: bool,
}

impl SummaryRecord {
    /// Reads a stored summary; a row that is not a JSON summary (plain text written before
    /// structured summaries) reads as clinical text without citations.
    pub fn from_document(doc: &Document) -> SummaryRecord {
        serde_json::from_str(&doc.content).unwrap_or_else(|_| SummaryRecord {
            clinical: doc.content.clone(),
            take_home: String::new(),
            references: Vec::new(),
            unresolved_references: Vec::new(),
            generated_at: iso_millis(doc.updated_at),
            interim: false,
        })
    }
}

/// The summary as REST and `summary_ready` show it: the original Summary row (`content` is the
/// clinical text, a string, as the original frontend renders it) plus the structured fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryView {
    pub id: String,
    pub conversation_id: String,
    pub content: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub record: SummaryRecord,
}

impl From<&Document> for SummaryView {
    fn from(doc: &Document) -> Self {
        let record = SummaryRecord::from_document(doc);
        SummaryView {
            id: doc.id.clone(),
            conversation_id: doc.conversation_id.clone(),
            content: record.clinical.clone(),
            created_at: iso_millis(doc.created_at),
            updated_at: iso_millis(doc.updated_at),
            record,
        }
    }
}

impl Records {
    /// Writes and stores the conversation's summary from everything stored so far. A final
    /// summary sets the status to `summarized`, or `ended_error` when it fails; an interim one
    /// leaves the status alone and is refused ([`Error::Ended`]) once the visit has ended, since
    /// the final summary is then on its way.
    ///
    /// # Errors
    /// [`Error::Provider`] when either model call fails (nothing is stored), [`Error::Store`],
    /// [`Error::Ended`].
    pub async fn summarize(
        &self,
        organization_id: &str,
        conversation_id: &str,
        stage: SummaryStage,
    ) -> Result<Document, Error> {
        let (_writer, current) = self.lock_summary(organization_id, conversation_id).await?;
        if stage == SummaryStage::Interim && current.status != ConversationStatus::Active {
            return Err(Error::Ended);
        }
        self.write_and_settle(&current, stage).await
    }

    /// Writes the final summary of a conversation that is still `ended` (its summary neither
    /// written nor failed, e.g. cut off by a shutdown) and sets the status as
    /// [`summarize`](Self::summarize) does; `Ok(None)` without a model call when the status
    /// moved on meanwhile (another writer finished first).
    ///
    /// # Errors
    /// As [`summarize`](Self::summarize) with [`SummaryStage::Final`].
    pub async fn summarize_unsummarized(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> Result<Option<Document>, Error> {
        let (_writer, current) = self.lock_summary(organization_id, conversation_id).await?;
        if current.status != ConversationStatus::Ended {
            return Ok(None);
        }
        self.write_and_settle(&current, SummaryStage::Final)
            .await
            .map(Some)
    }

    /// Takes the conversation's summary-writer lock and reads the conversation under it: the
    /// visit may have ended (or the patient's language changed) while this writer waited.
    async fn lock_summary(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> Result<(KeyGuard<'_>, Conversation), Error> {
        let writer = self.locks.lock(format!("summary:{conversation_id}")).await;
        let current = self
            .store
            .get_conversation(organization_id, conversation_id)
            .await?
            .conversation;
        Ok((writer, current))
    }

    /// Writes the summary; a final one then moves the status to `summarized`, or to
    /// `ended_error` when it failed, so a failure is recorded and not retried by itself.
    async fn write_and_settle(
        &self,
        current: &Conversation,
        stage: SummaryStage,
    ) -> Result<Document, Error> {
        let written = self.write_summary(current, stage).await;
        if stage == SummaryStage::Final {
            let status = match &written {
                Ok(_) => ConversationStatus::Summarized,
                Err(_) => ConversationStatus::EndedError,
            };
            self.store
                .set_conversation_status(
                    &current.organization_id,
                    &current.id,
                    status,
                    current.end_time,
                )
                .await?;
        }
        written
    }

    async fn write_summary(
        &self,
        conversation: &Conversation,
        stage: SummaryStage,
    ) -> Result<Document, Error> {
        let messages = self
            .store
            .list_messages(&conversation.id, &Page::default())
            .await?;
        let actions = self.store.list_actions(&conversation.id).await?;
        let request = |kind, language: &str| SummaryRequest {
            lines: transcript_lines(&messages),
            actions: actions.iter().rev().map(action_line).collect(),
            language: language.to_owned(),
            kind,
        };
        let clinical_request = request(SummaryKind::Clinical, &conversation.clinician_language);
        let take_home_request = request(SummaryKind::TakeHome, &conversation.patient_language);
        // Both calls run to the end even if one fails, so each request is made exactly once
        // per attempt (no call cancelled half-way, which retries would otherwise repeat).
        let (clinical, take_home) = tokio::join!(
            self.summarizer.summarize(&clinical_request),
            self.summarizer.summarize(&take_home_request),
        );
        let (clinical, take_home) = (clinical?, take_home?);
        let known: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let cited = validate_references(&clinical, &known);
        if !cited.unresolved.is_empty() {
            tracing::warn!(
                conversation_id = %conversation.id,
                unresolved = cited.unresolved.len(),
                "summary cited message ids that are not in the conversation; removed"
            );
        }
        let record = SummaryRecord {
            clinical: cited.text,
            take_home: strip_references(&take_home),
            references: cited.references,
            unresolved_references: cited.unresolved,
            generated_at: iso_millis(crate::store::now_millis()),
            interim: stage == SummaryStage::Interim,
        };
        let content = serde_json::to_string(&record)
            .map_err(|e| crate::store::Error::Backend(format!("summary encoding: {e}")))?;
        Ok(self
            .store
            .upsert_document(DocumentKind::Summary, &conversation.id, &content)
            .await?)
    }
}

/// Pure: stored messages as the summarizer's labelled lines, in stored order.
fn transcript_lines(messages: &[Message]) -> Vec<TranscriptLine> {
    messages
        .iter()
        .map(|m| TranscriptLine {
            message_id: m.id.clone(),
            speaker: match m.sender_type {
                SenderType::Clinician => LineSpeaker::Clinician,
                SenderType::Patient => LineSpeaker::Patient,
                SenderType::Translation => LineSpeaker::Translation,
            },
            language: m.language.clone(),
            text: m.original_text.clone(),
        })
        .collect()
}

/// Pure: one human-readable line per action, for the summary prompt and the Markdown export:
/// `prescription (pending_review): medicationName: metformin; dosage: 500 mg`. Generic over the
/// `data` object so clinic-defined action kinds read as well as built-in ones.
pub(crate) fn action_line(action: &Action) -> String {
    let fields = match &action.data {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    format!("{} ({}): {fields}", action.kind, action.status)
}

/// The outcome of checking a text's citations.
#[derive(Debug, PartialEq)]
pub(crate) struct Cited {
    /// The text with unknown ids removed (a citation left empty is removed whole).
    pub text: String,
    /// Known ids, unique, in order of first citation.
    pub references: Vec<String>,
    /// Unknown ids, unique, in order of first citation.
    pub unresolved: Vec<String>,
}

const OPEN: &str = "[msg:";

/// Pure: finds `[msg:<id>]` citations (also `[msg:a, msg:b]` and `[msg:a, b]`) and keeps only
/// ids in `known`. Kept citations are rewritten as `[msg:a] [msg:b]`.
pub(crate) fn validate_references(text: &str, known: &HashSet<&str>) -> Cited {
    let mut out = String::with_capacity(text.len());
    let mut references: Vec<String> = Vec::new();
    let mut unresolved: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let Some(len) = rest[start..].find(']') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + OPEN.len()..start + len];
        let mut kept = Vec::new();
        for id in inner
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|part| part.trim().trim_start_matches("msg:"))
            .filter(|id| !id.is_empty())
        {
            if known.contains(id) {
                kept.push(format!("[msg:{id}]"));
                if !references.iter().any(|r| r == id) {
                    references.push(id.to_owned());
                }
            } else if !unresolved.iter().any(|r| r == id) {
                unresolved.push(id.to_owned());
            }
        }
        if kept.is_empty() {
            // Drop the space that separated the citation from the sentence.
            if out.ends_with(' ') {
                out.pop();
            }
        } else {
            out.push_str(&kept.join(" "));
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Cited {
        text: out,
        references,
        unresolved,
    }
}

/// Pure: the text without any `[msg:…]` citation (the take-home version is for the patient).
fn strip_references(text: &str) -> String {
    validate_references(text, &HashSet::new()).text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_citations_are_cut_and_reported() {
        let known: HashSet<&str> = ["m1", "m2"].into_iter().collect();
        let cited = validate_references(
            "Chest pain [msg:m1]. Fever [msg:zz]. Plan [msg:m2, msg:m1, zz2]. Done [msg:m2]",
            &known,
        );
        assert_eq!(
            cited.text,
            "Chest pain [msg:m1]. Fever. Plan [msg:m2] [msg:m1]. Done [msg:m2]"
        );
        assert_eq!(cited.references, ["m1", "m2"]);
        assert_eq!(cited.unresolved, ["zz", "zz2"]);
        assert_eq!(strip_references("Rest well [msg:m1]."), "Rest well.");
        let unterminated = validate_references("text [msg:m1", &known);
        assert_eq!(unterminated.text, "text [msg:m1");
        assert!(unterminated.references.is_empty());
    }

    #[test]
    fn action_lines_name_kind_status_and_fields() {
        let action = Action {
            id: "a".into(),
            conversation_id: "c".into(),
            kind: "prescription".into(),
            status: "pending_review".into(),
            data: serde_json::json!({"medicationName": "metformin", "dosage": "500 mg", "details": null}),
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(
            action_line(&action),
            "prescription (pending_review): dosage: 500 mg; medicationName: metformin"
        );
    }

    #[test]
    fn plain_text_rows_read_as_clinical_text() {
        let doc = Document {
            id: "d".into(),
            conversation_id: "c".into(),
            content: "Patient well.".into(),
            created_at: 0,
            updated_at: 0,
        };
        let view = SummaryView::from(&doc);
        assert_eq!(view.content, "Patient well.");
        assert!(!view.record.interim);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["content"], "Patient well.");
        assert_eq!(json["takeHome"], "");
        assert_eq!(json["references"], serde_json::json!([]));
    }
}
