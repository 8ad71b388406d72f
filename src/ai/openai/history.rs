//! Mock medical histories, as the original product generated for new patients. The output is
//! demo data and is marked as such by Tandem itself (the header is prepended, not requested),
//! so the marking survives whatever the model writes.

use async_trait::async_trait;

use super::markers;
use super::wire::{ChatRequest, ChatResponse};
use super::{OpenAiClient, CHAT_COMPLETIONS};
use crate::ai::{MedicalHistoryGenerator, Result, SYNTHETIC_HISTORY_HEADER};

/// [`MedicalHistoryGenerator`] backed by chat completions.
#[derive(Debug, Clone)]
pub struct OpenAiHistoryGenerator {
    client: OpenAiClient,
}

impl OpenAiHistoryGenerator {
    pub fn new(client: OpenAiClient) -> OpenAiHistoryGenerator {
        OpenAiHistoryGenerator { client }
    }
}

fn prompt(first: &str, last: &str, age: Option<u32>) -> String {
    let age = match age {
        Some(age) => format!("about {age} years old"),
        None => "of unknown age".to_owned(),
    };
    format!(
        "Write a short, plausible, clearly fictional {} for a demo patient named {first} {last}, \
         {age}. Plain text with exactly these sections: Allergies; Current Medications; Past \
         Medical History. No preamble.",
        markers::HISTORY
    )
}

#[async_trait]
impl MedicalHistoryGenerator for OpenAiHistoryGenerator {
    async fn generate(
        &self,
        first_name: &str,
        last_name: &str,
        age: Option<u32>,
    ) -> Result<String> {
        let mut chat = ChatRequest::new(
            &self.client.config().chat_model,
            "You generate synthetic demo data for a medical software test environment.".to_owned(),
            prompt(first_name, last_name, age),
        );
        chat.temperature = Some(0.6);
        chat.max_completion_tokens = Some(400);
        let response: ChatResponse = self.client.post_json(CHAT_COMPLETIONS, &chat).await?;
        Ok(format!(
            "{SYNTHETIC_HISTORY_HEADER}\n\n{}",
            response.text()?
        ))
    }
}
