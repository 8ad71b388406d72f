//! Serde types for the two endpoints Tandem calls over HTTP: `POST /chat/completions` (plain
//! text answers and function tools) and `POST /audio/speech`. Field names follow the OpenAI API
//! reference; only fields Tandem sends or reads are modelled, unknown response fields are
//! ignored so OpenAI-compatible servers with extras still parse.

use serde::{Deserialize, Serialize};

use crate::ai::{Error, Result};

/// Chat completion request. `store` is always serialized: every call carries PHI and must not be
/// retained for the provider's dashboards/evals.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<&'static str>,
    /// Only meaningful with tools; Tandem executes at most one command per utterance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    pub store: bool,
}

impl ChatRequest {
    /// A request with `store: false` and no tools: a system instruction plus the user text.
    pub fn new(model: &str, system: String, user: String) -> ChatRequest {
        ChatRequest {
            model: model.to_owned(),
            messages: vec![ChatMessage::system(system), ChatMessage::user(user)],
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            temperature: None,
            max_completion_tokens: None,
            store: false,
        }
    }
}

/// One input message (`system` or `user`; Tandem never continues tool conversations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: String) -> ChatMessage {
        ChatMessage {
            role: "system".to_owned(),
            content,
        }
    }

    pub fn user(content: String) -> ChatMessage {
        ChatMessage {
            role: "user".to_owned(),
            content,
        }
    }
}

/// `{"type":"function","function":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDef,
}

impl Tool {
    pub fn function(function: FunctionDef) -> Tool {
        Tool {
            kind: "function",
            function,
        }
    }
}

/// A function tool. With `strict: true` the schema must list every property in `required`
/// and set `additionalProperties: false`; optional values are typed as nullable instead.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
    pub strict: bool,
}

/// Chat completion response (the parts Tandem reads).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub choices: Vec<Choice>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    #[serde(default)]
    pub id: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object encoded as a string, as the API sends it.
    pub arguments: String,
}

impl ChatResponse {
    /// The first choice.
    ///
    /// # Errors
    /// [`Error::Malformed`] when there is none.
    pub fn first_choice(&self) -> Result<&Choice> {
        self.choices
            .first()
            .ok_or_else(|| Error::Malformed("chat answer without choices".to_owned()))
    }

    /// The first choice's text, trimmed, for plain (tool-less) calls.
    ///
    /// # Errors
    /// [`Error::Malformed`] when it is missing, empty, a refusal, or cut off by the token limit
    /// (a truncated translation or summary must not pass as complete).
    pub fn text(&self) -> Result<String> {
        let choice = self.first_choice()?;
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(Error::Malformed(
                "answer cut off at the token limit".to_owned(),
            ));
        }
        if choice
            .message
            .refusal
            .as_deref()
            .is_some_and(|r| !r.is_empty())
        {
            return Err(Error::Malformed("the model refused".to_owned()));
        }
        let text = choice.message.content.as_deref().unwrap_or("").trim();
        if text.is_empty() {
            return Err(Error::Malformed("empty answer".to_owned()));
        }
        Ok(text.to_owned())
    }
}

/// `POST /audio/speech` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeechRequest {
    pub model: String,
    /// At most [`MAX_SPEECH_INPUT_CHARS`] characters.
    pub input: String,
    pub voice: String,
    pub response_format: &'static str,
    /// Voice direction; omitted for `tts-1`/`tts-1-hd`, which reject it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// The provider's limit on `input` length, in characters.
pub const MAX_SPEECH_INPUT_CHARS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_always_carries_store_false_and_omits_empty_tools() {
        let req = ChatRequest::new("gpt-4o-mini", "sys".into(), "hi".into());
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["store"], serde_json::json!(false));
        assert!(v.get("tools").is_none());
        assert!(v.get("temperature").is_none());
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["content"], "hi");
    }

    #[test]
    fn parses_a_recorded_text_answer() {
        let raw = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",
          "choices":[{"index":0,"message":{"role":"assistant","content":" Hola, ¿cómo está? ","refusal":null},
          "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let resp: ChatResponse = serde_json::from_str(raw).unwrap();
        assert_eq!(resp.text().unwrap(), "Hola, ¿cómo está?");
    }

    #[test]
    fn truncated_empty_and_missing_answers_are_malformed() {
        let cut: ChatResponse = serde_json::from_str(
            r#"{"choices":[{"message":{"content":"Hola"},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert!(matches!(cut.text(), Err(Error::Malformed(_))));
        let empty: ChatResponse =
            serde_json::from_str(r#"{"choices":[{"message":{"content":"  "}}]}"#).unwrap();
        assert!(empty.text().is_err());
        let none: ChatResponse = serde_json::from_str(r#"{"choices":[]}"#).unwrap();
        assert!(none.text().is_err());
    }

    #[test]
    fn speech_request_omits_instructions_when_none() {
        let req = SpeechRequest {
            model: "tts-1".into(),
            input: "hi".into(),
            voice: "ash".into(),
            response_format: "mp3",
            instructions: None,
        };
        let v = serde_json::to_value(&req).unwrap();
        assert!(v.get("instructions").is_none());
        assert_eq!(v["response_format"], "mp3");
    }
}
