//! Visit summaries by a chat model: a structured clinical summary citing message ids, or a
//! plain-language take-home version. The transcript is sent as labelled lines in the user
//! message; the instruction pins the language, the sections and the rule to use only what was
//! said.

use async_trait::async_trait;

use super::markers;
use super::wire::{ChatRequest, ChatResponse};
use super::{OpenAiClient, CHAT_COMPLETIONS};
use crate::ai::{language_name, LineSpeaker, Result, Summarizer, SummaryKind, SummaryRequest};

/// [`Summarizer`] backed by chat completions.
#[derive(Debug, Clone)]
pub struct OpenAiSummarizer {
    client: OpenAiClient,
}

impl OpenAiSummarizer {
    pub fn new(client: OpenAiClient) -> OpenAiSummarizer {
        OpenAiSummarizer { client }
    }
}

fn system_prompt(kind: SummaryKind, language: &str) -> String {
    let language = match language_name(language) {
        Some(name) => format!("{name} ({language})"),
        None => language.to_owned(),
    };
    let body = match kind {
        SummaryKind::Clinical => {
            "Write a structured clinical summary for the clinician with these sections: Chief \
             complaint; History of present illness; Assessment; Plan; Medications; Follow-ups; \
             Open questions. After each statement cite the message ids it comes from as \
             [msg:<id>], using only ids present in the transcript."
        }
        SummaryKind::TakeHome => {
            "Write a short take-home summary for the patient in plain, friendly language a \
             non-specialist understands: what was found, what to do, medications and when to \
             come back. No message ids."
        }
    };
    format!(
        "{} of medical interpretation sessions. {body} Write in {language}. Use only what was \
         said in the transcript and the listed actions; never add diagnoses, advice or facts \
         that were not stated. Write \"not discussed\" for an empty section.",
        markers::SUMMARY
    )
}

/// Pure: the transcript and actions as the user message.
fn user_message(request: &SummaryRequest) -> String {
    let mut out = String::from("Transcript:\n");
    for line in &request.lines {
        let who = match line.speaker {
            LineSpeaker::Clinician => "Clinician",
            LineSpeaker::Patient => "Patient",
            LineSpeaker::Translation => "Translation",
        };
        out.push_str(&format!(
            "[msg:{}] {who} ({}): {}\n",
            line.message_id, line.language, line.text
        ));
    }
    out.push_str("\nActions:\n");
    if request.actions.is_empty() {
        out.push_str("(none)\n");
    }
    for action in &request.actions {
        out.push_str(&format!("- {action}\n"));
    }
    out
}

#[async_trait]
impl Summarizer for OpenAiSummarizer {
    async fn summarize(&self, request: &SummaryRequest) -> Result<String> {
        let mut chat = ChatRequest::new(
            &self.client.config().chat_model,
            system_prompt(request.kind, &request.language),
            user_message(request),
        );
        chat.temperature = Some(0.2);
        chat.max_completion_tokens = Some(1500);
        let response: ChatResponse = self.client.post_json(CHAT_COMPLETIONS, &chat).await?;
        response.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::TranscriptLine;

    #[test]
    fn transcript_lines_carry_ids_speakers_and_languages() {
        let req = SummaryRequest {
            lines: vec![TranscriptLine {
                message_id: "m1".into(),
                speaker: LineSpeaker::Patient,
                language: "es".into(),
                text: "Me duele la cabeza".into(),
            }],
            actions: vec!["Note: headache for 3 days".into()],
            language: "en".into(),
            kind: SummaryKind::Clinical,
        };
        let msg = user_message(&req);
        assert!(msg.contains("[msg:m1] Patient (es): Me duele la cabeza"));
        assert!(msg.contains("- Note: headache for 3 days"));
        assert!(system_prompt(SummaryKind::Clinical, "en").contains("English (en)"));
        assert!(system_prompt(SummaryKind::TakeHome, "es").contains("plain"));
    }
}
