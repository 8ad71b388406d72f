//! A conversation's record as one file: transcript (originals paired with their
//! translations, speakers, ISO timestamps), actions, summary and the synthetic medical history,
//! as JSON or Markdown.
//!
//! Design decision: [`Export`] is built once from stored rows and both renderings are pure
//! functions of it, so the two formats cannot disagree about what the record contains.

use serde::Serialize;

use super::markdown::{block_lines, code_block, code_span, inline};
use super::summary::{action_line, SummaryView};
use crate::ai::SYNTHETIC_HISTORY_HEADER;
use crate::store::{Action, ConversationWithPatient, Document, Message, SenderType};
use crate::wire::{iso_millis, ActionView, ConversationView};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Markdown,
}

impl Format {
    /// Parses `?format=`: `json` or `markdown` (also `md`).
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "markdown" | "md" => Some(Format::Markdown),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Markdown => "text/markdown; charset=utf-8",
        }
    }

    /// The download name for a conversation's export.
    pub fn file_name(self, conversation_id: &str) -> String {
        let ext = match self {
            Format::Json => "json",
            Format::Markdown => "md",
        };
        format!("conversation-{conversation_id}.{ext}")
    }
}

/// One utterance: the original and, when it was interpreted, its translation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptEntry {
    pub message_id: String,
    /// `clinician` or `patient`.
    pub speaker: &'static str,
    pub timestamp: String,
    pub language: String,
    pub text: String,
    pub translation: Option<Translation>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    pub message_id: String,
    pub timestamp: String,
    /// The target language.
    pub language: String,
    pub text: String,
}

/// The medical history, flagged synthetic in the data as well as in its text.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryExport {
    pub synthetic: bool,
    pub content: String,
    pub updated_at: String,
}

/// Everything an export contains.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    pub exported_at: String,
    pub conversation: ConversationView,
    pub transcript: Vec<TranscriptEntry>,
    /// Oldest first.
    pub actions: Vec<ActionView>,
    pub summary: Option<SummaryView>,
    pub medical_history: Option<HistoryExport>,
    /// Action lines as the Markdown shows them; not part of the JSON.
    #[serde(skip)]
    action_lines: Vec<String>,
}

impl Export {
    /// Assembles an export from stored rows: `messages` in stored order, `actions` newest
    /// first (as the store lists them).
    pub fn new(
        conversation: &ConversationWithPatient,
        messages: &[Message],
        actions: &[Action],
        summary: Option<&Document>,
        history: Option<&Document>,
        now: crate::store::Millis,
    ) -> Export {
        let transcript = messages
            .iter()
            .filter(|m| m.sender_type != SenderType::Translation)
            .map(|m| TranscriptEntry {
                message_id: m.id.clone(),
                speaker: match m.sender_type {
                    SenderType::Patient => "patient",
                    _ => "clinician",
                },
                timestamp: iso_millis(m.timestamp),
                language: m.language.clone(),
                text: m.original_text.clone(),
                translation: messages
                    .iter()
                    .find(|t| {
                        t.sender_type == SenderType::Translation
                            && t.original_message_id.as_deref() == Some(m.id.as_str())
                    })
                    .map(|t| Translation {
                        message_id: t.id.clone(),
                        timestamp: iso_millis(t.timestamp),
                        language: t.language.clone(),
                        text: t.original_text.clone(),
                    }),
            })
            .collect();
        Export {
            exported_at: iso_millis(now),
            conversation: ConversationView::from(conversation),
            transcript,
            actions: actions.iter().rev().map(ActionView::from).collect(),
            action_lines: actions.iter().rev().map(action_line).collect(),
            summary: summary.map(SummaryView::from),
            medical_history: history.map(|h| HistoryExport {
                synthetic: true,
                content: h.content.clone(),
                updated_at: iso_millis(h.updated_at),
            }),
        }
    }

    /// Pure: the Markdown rendering. Everything the export did not write itself (names, what
    /// was said, summaries, action fields, languages) is escaped, so it reads as literal text
    /// and cannot change the document's structure; ids and times are the server's own.
    pub fn to_markdown(&self) -> String {
        let c = &self.conversation;
        let name = format!(
            "{} {}",
            inline(&c.patient.first_name),
            inline(&c.patient.last_name)
        );
        let mut md = format!(
            "# Visit record: {name}\n\n\
             - Conversation: `{}`\n\
             - Patient: {name}, born {}\n\
             - Languages: clinician {}, patient {}\n\
             - Started: {}\n\
             - Ended: {}\n\
             - Status: {}\n\
             - Exported: {}\n",
            c.id,
            inline(&c.patient.date_of_birth),
            code_span(&c.clinician_language),
            code_span(&c.patient_language),
            c.start_time,
            c.end_time.as_deref().unwrap_or("not ended"),
            c.status,
            self.exported_at,
        );

        md.push_str("\n## Transcript\n");
        if self.transcript.is_empty() {
            md.push_str("\nNothing was said.\n");
        }
        for entry in &self.transcript {
            let who = if entry.speaker == "patient" {
                "Patient"
            } else {
                "Clinician"
            };
            md.push_str(&format!(
                "\n**{who}** ({}) · {} · `msg:{}`\n\n{}\n",
                inline(&entry.language),
                entry.timestamp,
                entry.message_id,
                quoted(&entry.text)
            ));
            if let Some(t) = &entry.translation {
                md.push_str(&format!(
                    "\n*Translation* ({}) · `msg:{}`\n\n{}\n",
                    inline(&t.language),
                    t.message_id,
                    quoted(&t.text)
                ));
            }
        }

        md.push_str("\n## Actions\n\n");
        if self.action_lines.is_empty() {
            md.push_str("None.\n");
        }
        for (line, action) in self.action_lines.iter().zip(&self.actions) {
            md.push_str(&format!("- {} · {}\n", inline(line), action.created_at));
        }

        md.push_str("\n## Summary\n");
        match &self.summary {
            None => md.push_str("\nNo summary has been written.\n"),
            Some(s) => {
                let interim = if s.record.interim {
                    " (interim, written during the visit)"
                } else {
                    ""
                };
                md.push_str(&format!(
                    "\n### Clinical summary{interim}\n\n{}\n\n### Take-home summary\n\n{}\n\n\
                     Generated {}.\n",
                    block_lines(&s.record.clinical).join("\n"),
                    block_lines(&s.record.take_home).join("\n"),
                    s.record.generated_at
                ));
            }
        }

        md.push_str("\n## Medical history (synthetic)\n\n");
        match &self.medical_history {
            None => md.push_str("None.\n"),
            Some(h) => {
                // The stored text starts with the marking; an export says it even if edited out.
                if !h.content.starts_with(SYNTHETIC_HISTORY_HEADER) {
                    md.push_str(&format!("{SYNTHETIC_HISTORY_HEADER}\n\n"));
                }
                md.push_str(&code_block(h.content.trim()));
                md.push('\n');
            }
        }
        md
    }
}

/// Pure: text as a Markdown block quote, every line escaped and prefixed.
fn quoted(text: &str) -> String {
    block_lines(text)
        .iter()
        .map(|l| {
            if l.is_empty() {
                ">".to_owned()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Conversation, ConversationStatus, Patient};

    fn message(
        id: &str,
        ts: i64,
        sender: SenderType,
        lang: &str,
        text: &str,
        of: Option<&str>,
    ) -> Message {
        Message {
            id: id.into(),
            conversation_id: "c1".into(),
            timestamp: ts,
            sender_type: sender,
            original_text: text.into(),
            translated_text: None,
            language: lang.into(),
            is_final: true,
            original_message_id: of.map(str::to_owned),
            stt_item_id: None,
            speaker_source: None,
            speaker_confidence: None,
            timings: None,
        }
    }

    fn visit() -> ConversationWithPatient {
        ConversationWithPatient {
            conversation: Conversation {
                id: "c1".into(),
                organization_id: "o".into(),
                user_id: "u".into(),
                patient_id: "p".into(),
                clinician_language: "en".into(),
                patient_language: "es".into(),
                status: ConversationStatus::Ended,
                start_time: 0,
                end_time: Some(60_000),
                created_at: 0,
                updated_at: 0,
            },
            patient: Patient {
                id: "p".into(),
                organization_id: "o".into(),
                first_name: "Ana".into(),
                last_name: "García".into(),
                date_of_birth: "1980-04-02".into(),
                preferred_language: "es".into(),
                created_at: 0,
                updated_at: 0,
            },
        }
    }

    #[test]
    fn originals_pair_with_their_translations_in_order() {
        let messages = [
            message(
                "m1",
                1_000,
                SenderType::Clinician,
                "en",
                "How are you?",
                None,
            ),
            message(
                "t1",
                1_500,
                SenderType::Translation,
                "es",
                "¿Cómo está?",
                Some("m1"),
            ),
            message(
                "m2",
                2_000,
                SenderType::Patient,
                "es",
                "Me duele\nel pecho",
                None,
            ),
        ];
        let history = Document {
            id: "h".into(),
            conversation_id: "c1".into(),
            content: "Allergies: none".into(),
            created_at: 0,
            updated_at: 0,
        };
        let export = Export::new(&visit(), &messages, &[], None, Some(&history), 90_000);
        let json = serde_json::to_value(&export).unwrap();
        assert_eq!(json["transcript"][0]["speaker"], "clinician");
        assert_eq!(
            json["transcript"][0]["timestamp"],
            "1970-01-01T00:00:01.000Z"
        );
        assert_eq!(json["transcript"][0]["translation"]["text"], "¿Cómo está?");
        assert_eq!(
            json["transcript"][1]["translation"],
            serde_json::Value::Null
        );
        assert_eq!(json["medicalHistory"]["synthetic"], true);
        assert!(json.get("actionLines").is_none());

        let md = export.to_markdown();
        let first = md.find("> How are you?").unwrap();
        let translated = md.find("> ¿Cómo está?").unwrap();
        let second = md.find("> Me duele\\\n> el pecho").unwrap();
        assert!(first < translated && translated < second, "{md}");
        assert!(md.contains("No summary has been written."));
        assert!(
            md.contains(SYNTHETIC_HISTORY_HEADER),
            "marked even if the text lost it"
        );
        assert_eq!(Format::parse("MD"), Some(Format::Markdown));
        assert_eq!(Format::parse("pdf"), None);
    }

    #[test]
    fn hostile_text_cannot_change_the_document_structure() {
        let mut visit = visit();
        visit.patient.first_name = "<img src=x onerror=alert(1)>".into();
        visit.patient.last_name = "García\n# Not a heading #".into();
        let messages = [
            message(
                "m1",
                1_000,
                SenderType::Patient,
                "es",
                "# Emergency\n- item\n> quoted\n[click](http://evil.example)\n![x](http://evil.example/p.png)\n```\n<script>alert(1)</script>",
                None,
            ),
            message(
                "t1",
                1_500,
                SenderType::Translation,
                "en`\n\n# x",
                "1. first | cell\n    code\n---",
                Some("m1"),
            ),
        ];
        let action = Action {
            id: "a1".into(),
            conversation_id: "c1".into(),
            kind: "# note".into(),
            status: "created".into(),
            data: serde_json::json!({"content": "line one\n- injected item | x"}),
            created_at: 2_000,
            updated_at: 2_000,
        };
        let summary = Document {
            id: "s".into(),
            conversation_id: "c1".into(),
            content: serde_json::json!({
                "clinical": "## Plan\n- rest **now**\n<b>bold</b>",
                "takeHome": "Descanse & beba agua.\n\n\n=====",
                "references": [],
                "generatedAt": "1970-01-01T00:01:05.000Z",
            })
            .to_string(),
            created_at: 0,
            updated_at: 0,
        };
        let history = Document {
            id: "h".into(),
            conversation_id: "c1".into(),
            content: format!("{SYNTHETIC_HISTORY_HEADER}\n\n```\n# Allergies"),
            created_at: 0,
            updated_at: 0,
        };
        let export = Export::new(
            &visit,
            &messages,
            &[action],
            Some(&summary),
            Some(&history),
            90_000,
        );
        let expected = format!(
            "# Visit record: &lt;img src=x onerror=alert(1)> García \\# Not a heading \\#\n\
             \n\
             - Conversation: `c1`\n\
             - Patient: &lt;img src=x onerror=alert(1)> García \\# Not a heading \\#, born 1980-04-02\n\
             - Languages: clinician `en`, patient `es`\n\
             - Started: 1970-01-01T00:00:00.000Z\n\
             - Ended: 1970-01-01T00:01:00.000Z\n\
             - Status: ended\n\
             - Exported: 1970-01-01T00:01:30.000Z\n\
             \n\
             ## Transcript\n\
             \n\
             **Patient** (es) · 1970-01-01T00:00:01.000Z · `msg:m1`\n\
             \n\
             > \\# Emergency\\\n\
             > \\- item\\\n\
             > \\> quoted\\\n\
             > `[click](http://evil.example)`\\\n\
             > `![x](http://evil.example/p.png)`\\\n\
             > \\`\\`\\`\\\n\
             > &lt;script>alert(1)&lt;/script>\n\
             \n\
             *Translation* (en\\` \\# x) · `msg:t1`\n\
             \n\
             > 1\\. first \\| cell\\\n\
             > code\\\n\
             > \\---\n\
             \n\
             ## Actions\n\
             \n\
             - \\# note (created): content: line one - injected item \\| x · 1970-01-01T00:00:02.000Z\n\
             \n\
             ## Summary\n\
             \n\
             ### Clinical summary\n\
             \n\
             \\## Plan\\\n\
             \\- rest \\*\\*now\\*\\*\\\n\
             &lt;b>bold&lt;/b>\n\
             \n\
             ### Take-home summary\n\
             \n\
             Descanse &amp; beba agua.\n\
             \n\
             \\=====\n\
             \n\
             Generated 1970-01-01T00:01:05.000Z.\n\
             \n\
             ## Medical history (synthetic)\n\
             \n\
             ````\n\
             {SYNTHETIC_HISTORY_HEADER}\n\
             \n\
             ```\n\
             # Allergies\n\
             ````\n"
        );
        assert_eq!(export.to_markdown(), expected);
    }
}
