//! Voice-command detection by chat-completions tool calling.
//!
//! The built-in tools keep the original backend's names and parameters (`take_note`,
//! `schedule_follow_up`, `write_prescription`, `request_summary`, `request_medical_history`)
//! plus `order_lab`, all with `strict: true` schemas: every property is listed in `required`
//! and `additionalProperties` is false. Values a command cannot do without but the clinician
//! may not have said are either strings the model leaves empty or nullable (`duration`, `unit`),
//! so absence is representable and never papered over with a guess.
//!
//! Design decision: parsing ([`parse_response`], [`parse_tool_call`]) is pure and separate from
//! the call; a command with a missing or empty required value becomes
//! [`CommandOutcome::Incomplete`] and is never executed. Only the first tool call counts.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::wire::{ChatRequest, ChatResponse, FunctionDef, Tool};
use super::{OpenAiClient, CHAT_COMPLETIONS};
use crate::ai::{
    language_name, Command, CommandContext, CommandDetector, CommandOutcome, CustomTool, Error,
    FollowUpUnit, LabUrgency, Result,
};

/// Utterances shorter than this (in characters, trimmed) are never commands; no call is made.
pub const MIN_COMMAND_CHARS: usize = 5;

/// [`CommandDetector`] backed by chat completions with function tools.
#[derive(Debug, Clone)]
pub struct OpenAiCommandDetector {
    client: OpenAiClient,
}

impl OpenAiCommandDetector {
    pub fn new(client: OpenAiClient) -> OpenAiCommandDetector {
        OpenAiCommandDetector { client }
    }
}

fn strict_tool(name: &str, description: &str, properties: Value) -> Tool {
    let required: Vec<Value> = properties
        .as_object()
        .map(|p| p.keys().map(|k| Value::String(k.clone())).collect())
        .unwrap_or_default();
    Tool::function(FunctionDef {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
        strict: true,
    })
}

/// The built-in tools, exactly as sent.
pub fn builtin_tools() -> Vec<Tool> {
    let optional_text = |d: &str| json!({"type": ["string", "null"], "description": d});
    vec![
        strict_tool(
            "take_note",
            "Record a clinical note the clinician explicitly dictates (\"take a note ...\").",
            json!({"note_content": {"type": "string",
                "description": "The note, in the clinician's words; empty if none was dictated."}}),
        ),
        strict_tool(
            "schedule_follow_up",
            "Schedule a follow-up visit the clinician explicitly requests.",
            json!({
                "duration": {"type": ["integer", "null"],
                    "description": "How many units from today, e.g. 2 for 'in two weeks'; null if not said."},
                "unit": {"type": ["string", "null"], "enum": ["day", "week", "month", null],
                    "description": "Unit of the duration; null if not said."},
                "details": optional_text("Reason or other details; null if none."),
            }),
        ),
        strict_tool(
            "write_prescription",
            "Write a prescription the clinician explicitly orders (\"prescribe ...\").",
            json!({
                "medication_name": {"type": "string", "description": "Drug name as said; empty if not said."},
                "dosage": {"type": "string", "description": "Dose with unit, e.g. '500 mg'; empty if not said."},
                "frequency": {"type": "string", "description": "How often, e.g. 'twice a day'; empty if not said."},
                "details": optional_text("Duration, route or other instructions; null if none."),
            }),
        ),
        strict_tool(
            "order_lab",
            "Order a laboratory test the clinician explicitly requests (\"order a CBC\").",
            json!({
                "test_name": {"type": "string", "description": "The test or panel as said; empty if not said."},
                "details": optional_text("Reason, fasting or other instructions; null if none."),
                "urgency": {"type": ["string", "null"], "enum": ["routine", "urgent", "stat", null],
                    "description": "Only if the clinician said it; otherwise null."},
            }),
        ),
        strict_tool(
            "request_summary",
            "The clinician asks for a summary of the visit so far.",
            json!({}),
        ),
        strict_tool(
            "request_medical_history",
            "The clinician asks to see the patient's medical history.",
            json!({}),
        ),
    ]
}

fn custom_tool(tool: &CustomTool) -> Tool {
    Tool::function(FunctionDef {
        name: tool.name.clone(),
        description: tool.description.clone(),
        parameters: tool.parameters.clone(),
        strict: false,
    })
}

fn system_prompt(ctx: &CommandContext) -> String {
    let language = language_name(&ctx.clinician_language).unwrap_or("their own language");
    format!(
        "You detect voice commands that a clinician gives to the assistant during a medical \
         visit. The clinician speaks {language}. Call a function only when the clinician clearly \
         and explicitly asks the assistant for that action, for example \"take a note ...\", \
         \"schedule a follow-up in two weeks\", \"prescribe ...\", \"order a CBC\", \"give me a \
         summary\". Ordinary conversation with the patient (questions, explanations, discussing \
         medications or tests) is not a command: call no function. Fill values only with what \
         the clinician said, in their words; never invent or infer a value. If a value was not \
         said, use an empty string, or null where allowed."
    )
}

/// Pure pre-filter: the text to ask the model about (wake phrase removed), or `None` when it
/// cannot be a command (no wake phrase, or too short).
fn worth_asking<'t>(text: &'t str, ctx: &CommandContext) -> Option<&'t str> {
    ctx.command_text(text)
        .filter(|rest| rest.chars().count() >= MIN_COMMAND_CHARS)
}

/// Pure: the response → outcome; only the first tool call counts.
///
/// # Errors
/// See [`parse_tool_call`]; [`Error::Malformed`] without choices.
pub fn parse_response(response: &ChatResponse, custom: &[CustomTool]) -> Result<CommandOutcome> {
    let choice = response.first_choice()?;
    match choice.message.tool_calls.first() {
        Some(call) => parse_tool_call(&call.function.name, &call.function.arguments, custom),
        None => Ok(CommandOutcome::None),
    }
}

/// Pure: one tool call → outcome.
///
/// # Errors
/// [`Error::Malformed`] for an unknown tool or arguments that are not a JSON object.
pub fn parse_tool_call(
    name: &str,
    arguments: &str,
    custom: &[CustomTool],
) -> Result<CommandOutcome> {
    let args: Map<String, Value> = if arguments.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str(arguments) {
            Ok(Value::Object(map)) => map,
            Ok(_) | Err(_) => {
                return Err(Error::Malformed(format!(
                    "{name}: arguments are not a JSON object"
                )))
            }
        }
    };
    let mut missing = Vec::new();
    let command = match name {
        "take_note" => Command::TakeNote {
            content: required_text(&args, "note_content", &mut missing),
        },
        "schedule_follow_up" => {
            let duration = positive_int(args.get("duration"));
            let unit = args
                .get("unit")
                .and_then(Value::as_str)
                .and_then(FollowUpUnit::parse);
            if duration.is_none() {
                missing.push("duration".to_owned());
            }
            if unit.is_none() {
                missing.push("unit".to_owned());
            }
            match (duration, unit) {
                (Some(duration), Some(unit)) => Command::ScheduleFollowUp {
                    duration,
                    unit,
                    details: optional_text(&args, "details"),
                },
                _ => return Ok(incomplete(name, missing)),
            }
        }
        "write_prescription" => Command::WritePrescription {
            medication_name: required_text(&args, "medication_name", &mut missing),
            dosage: required_text(&args, "dosage", &mut missing),
            frequency: required_text(&args, "frequency", &mut missing),
            details: optional_text(&args, "details"),
        },
        "order_lab" => Command::OrderLab {
            test_name: required_text(&args, "test_name", &mut missing),
            details: optional_text(&args, "details"),
            urgency: args
                .get("urgency")
                .and_then(Value::as_str)
                .and_then(LabUrgency::parse),
        },
        "request_summary" => Command::RequestSummary,
        "request_medical_history" => Command::RequestMedicalHistory,
        other => {
            let Some(tool) = custom.iter().find(|t| t.name == other) else {
                return Err(Error::Malformed(format!("unknown tool {other:?}")));
            };
            let required = tool.parameters.get("required").and_then(Value::as_array);
            for key in required.into_iter().flatten().filter_map(Value::as_str) {
                if is_blank(args.get(key)) {
                    missing.push(key.to_owned());
                }
            }
            Command::Custom {
                name: other.to_owned(),
                arguments: Value::Object(args),
            }
        }
    };
    if missing.is_empty() {
        Ok(CommandOutcome::Command(command))
    } else {
        Ok(incomplete(name, missing))
    }
}

fn incomplete(name: &str, missing: Vec<String>) -> CommandOutcome {
    CommandOutcome::Incomplete {
        name: name.to_owned(),
        missing,
    }
}

fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

fn required_text(args: &Map<String, Value>, key: &str, missing: &mut Vec<String>) -> String {
    match optional_text(args, key) {
        Some(text) => text,
        None => {
            missing.push(key.to_owned());
            String::new()
        }
    }
}

fn optional_text(args: &Map<String, Value>, key: &str) -> Option<String> {
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A count ≥ 1, from an integer, a whole float (`2.0`) or a digit string.
fn positive_int(value: Option<&Value>) -> Option<u32> {
    let n = match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })?,
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok().filter(|n| *n >= 1)
}

#[async_trait]
impl CommandDetector for OpenAiCommandDetector {
    async fn detect(&self, text: &str, ctx: &CommandContext) -> Result<CommandOutcome> {
        let Some(text) = worth_asking(text, ctx) else {
            return Ok(CommandOutcome::None);
        };
        let mut tools = if ctx.builtin_enabled {
            builtin_tools()
        } else {
            Vec::new()
        };
        tools.extend(ctx.custom_tools.iter().map(custom_tool));
        if tools.is_empty() {
            return Ok(CommandOutcome::None);
        }
        let mut request = ChatRequest::new(
            &self.client.config().chat_model,
            system_prompt(ctx),
            text.to_owned(),
        );
        request.tools = tools;
        request.tool_choice = Some("auto");
        request.parallel_tool_calls = Some(false);
        request.temperature = Some(0.0);
        request.max_completion_tokens = Some(300);
        let response: ChatResponse = self.client.post_json(CHAT_COMPLETIONS, &request).await?;
        parse_response(&response, &ctx.custom_tools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(raw: &str) -> ChatResponse {
        serde_json::from_str(raw).unwrap()
    }

    /// A tool-call answer as the API records it.
    fn recorded(name: &str, arguments: &str) -> ChatResponse {
        response(&format!(
            r#"{{"id":"chatcmpl-9","object":"chat.completion","model":"gpt-4o-mini-2024-07-18",
              "choices":[{{"index":0,"message":{{"role":"assistant","content":null,"refusal":null,
              "tool_calls":[{{"id":"call_abc","type":"function","function":{{"name":"{name}",
              "arguments":{arguments}}}}}]}},"logprobs":null,"finish_reason":"tool_calls"}}]}}"#,
            arguments = serde_json::to_string(arguments).unwrap()
        ))
    }

    fn parse(name: &str, args: &str) -> CommandOutcome {
        parse_response(&recorded(name, args), &[]).unwrap()
    }

    #[test]
    fn every_builtin_tool_is_strict_and_lists_all_properties() {
        let tools = builtin_tools();
        let names: Vec<&str> = tools.iter().map(|t| t.function.name.as_str()).collect();
        assert_eq!(names, crate::ai::BUILTIN_TOOL_NAMES);
        for tool in &tools {
            let p = &tool.function.parameters;
            assert!(tool.function.strict);
            assert_eq!(p["additionalProperties"], json!(false));
            let props: Vec<&String> = p["properties"].as_object().unwrap().keys().collect();
            let required: Vec<&str> = p["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(props.len(), required.len(), "{}", tool.function.name);
            for k in props {
                assert!(required.contains(&k.as_str()));
            }
        }
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(
            parse(
                "take_note",
                r#"{"note_content":" Patient reports mild nausea. "}"#
            ),
            CommandOutcome::Command(Command::TakeNote {
                content: "Patient reports mild nausea.".into()
            })
        );
        assert_eq!(
            parse(
                "schedule_follow_up",
                r#"{"duration":2,"unit":"week","details":null}"#
            ),
            CommandOutcome::Command(Command::ScheduleFollowUp {
                duration: 2,
                unit: FollowUpUnit::Week,
                details: None
            })
        );
        assert_eq!(
            parse(
                "write_prescription",
                r#"{"medication_name":"amoxicillin","dosage":"500 mg","frequency":"three times a day","details":"for 10 days"}"#
            ),
            CommandOutcome::Command(Command::WritePrescription {
                medication_name: "amoxicillin".into(),
                dosage: "500 mg".into(),
                frequency: "three times a day".into(),
                details: Some("for 10 days".into())
            })
        );
        assert_eq!(
            parse(
                "order_lab",
                r#"{"test_name":"lipid panel","details":"fasting","urgency":"stat"}"#
            ),
            CommandOutcome::Command(Command::OrderLab {
                test_name: "lipid panel".into(),
                details: Some("fasting".into()),
                urgency: Some(LabUrgency::Stat)
            })
        );
        assert_eq!(
            parse("request_summary", "{}"),
            CommandOutcome::Command(Command::RequestSummary)
        );
        assert_eq!(
            parse("request_medical_history", ""),
            CommandOutcome::Command(Command::RequestMedicalHistory)
        );
    }

    #[test]
    fn missing_or_empty_required_fields_are_incomplete() {
        assert_eq!(
            parse(
                "write_prescription",
                r#"{"medication_name":"ibuprofen","dosage":"","frequency":"  ","details":null}"#
            ),
            CommandOutcome::Incomplete {
                name: "write_prescription".into(),
                missing: vec!["dosage".into(), "frequency".into()]
            }
        );
        assert_eq!(
            parse("take_note", "{}"),
            CommandOutcome::Incomplete {
                name: "take_note".into(),
                missing: vec!["note_content".into()]
            }
        );
        assert_eq!(
            parse(
                "schedule_follow_up",
                r#"{"duration":null,"unit":"week","details":null}"#
            ),
            CommandOutcome::Incomplete {
                name: "schedule_follow_up".into(),
                missing: vec!["duration".into()]
            }
        );
        assert_eq!(
            parse("schedule_follow_up", r#"{"duration":0,"unit":"fortnight"}"#),
            CommandOutcome::Incomplete {
                name: "schedule_follow_up".into(),
                missing: vec!["duration".into(), "unit".into()]
            }
        );
    }

    #[test]
    fn tolerant_number_forms() {
        assert_eq!(positive_int(Some(&json!(3.0))), Some(3));
        assert_eq!(positive_int(Some(&json!("4"))), Some(4));
        assert_eq!(positive_int(Some(&json!(2.5))), None);
        assert_eq!(positive_int(Some(&json!(-1))), None);
    }

    #[test]
    fn no_tool_call_is_none_and_only_the_first_call_counts() {
        let plain = response(
            r#"{"choices":[{"message":{"role":"assistant","content":"OK"},"finish_reason":"stop"}]}"#,
        );
        assert_eq!(parse_response(&plain, &[]).unwrap(), CommandOutcome::None);
        let two = response(
            r#"{"choices":[{"message":{"tool_calls":[
              {"id":"a","type":"function","function":{"name":"request_summary","arguments":"{}"}},
              {"id":"b","type":"function","function":{"name":"take_note","arguments":"{\"note_content\":\"x\"}"}}]},
              "finish_reason":"tool_calls"}]}"#,
        );
        assert_eq!(
            parse_response(&two, &[]).unwrap(),
            CommandOutcome::Command(Command::RequestSummary)
        );
    }

    #[test]
    fn unknown_tools_and_bad_arguments_are_malformed() {
        assert!(matches!(
            parse_response(&recorded("launch_rocket", "{}"), &[]),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse_response(&recorded("take_note", "[1]"), &[]),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn custom_tools_check_their_required_list() {
        let custom = vec![CustomTool {
            name: "refer_patient".into(),
            description: "Refer to a specialist".into(),
            parameters: json!({"type":"object","properties":{"specialty":{"type":"string"}},"required":["specialty"]}),
        }];
        assert_eq!(
            parse_tool_call("refer_patient", r#"{"specialty":"cardiology"}"#, &custom).unwrap(),
            CommandOutcome::Command(Command::Custom {
                name: "refer_patient".into(),
                arguments: json!({"specialty":"cardiology"})
            })
        );
        assert_eq!(
            parse_tool_call("refer_patient", "{}", &custom).unwrap(),
            CommandOutcome::Incomplete {
                name: "refer_patient".into(),
                missing: vec!["specialty".into()]
            }
        );
    }

    #[test]
    fn prefilter_skips_short_text_and_strips_the_wake_phrase() {
        let mut ctx = CommandContext::new("en");
        assert_eq!(worth_asking(" ok ", &ctx), None);
        assert_eq!(worth_asking(" take a note ", &ctx), Some("take a note"));
        ctx.wake_phrase = Some("Hey Tandem".into());
        assert_eq!(worth_asking("take a note: cough", &ctx), None);
        assert_eq!(
            worth_asking("Hey, Tandem! take a note: cough", &ctx),
            Some("take a note: cough")
        );
        assert_eq!(
            worth_asking("HEY TANDEM: Take a note", &ctx),
            Some("Take a note")
        );
        assert_eq!(worth_asking("hey tandemonium take a note", &ctx), None);
        assert_eq!(worth_asking("Hey", &ctx), None);
        assert_eq!(
            worth_asking("Hey Tandem, ok", &ctx),
            None,
            "too short once stripped"
        );
        ctx.wake_phrase = Some("doctor's helper".into());
        assert_eq!(
            worth_asking("Doctor\u{2019}s helper \u{2014} order a CBC", &ctx),
            Some("order a CBC")
        );
        ctx.wake_phrase = Some("oye tándem".into());
        assert_eq!(
            worth_asking("Oye, Tándem: toma una nota", &ctx),
            Some("toma una nota")
        );
    }
}
