//! The HTTP half of the fake provider: `POST /v1/chat/completions` and `POST /v1/audio/speech`.
//!
//! Answers are deterministic functions of the request, so tests assert on exact outputs without
//! scripting every call: with `tools` the fake picks a tool by keyword rules over the last user
//! message ("take a note ...", "follow-up in 2 weeks", "prescribe X 500 mg twice a day", "order
//! a lipid panel", "summary", "medical history"), but first any offered tool that is not built in
//! (a clinic command) whose name the message says (`refer patient` for `refer_patient`), with
//! each of its schema's properties read from `<property> <value>` parts after the name
//! (`..., specialty cardiology, reason chest pain`); a translation prompt gets `"[<to>] <text>"`;
//! detection, summary and history prompts get fixed shapes; speech gets `FAKE-<FMT>:<text>`.
//! A FIFO chat script overrides the rules when a test needs an exact answer. Fault injection
//! (429 with `Retry-After: 0`, 500, a malformed body, a speech body cut mid-stream, per-path
//! delays), streamed speech bodies ([`State::set_speech_chunk_size`]) and a request log sit in
//! [`State`]. Prompts are recognised by the marker phrases the real implementations put in them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::ai::openai::markers;
use crate::ai::AudioFormat;

/// Path of the chat endpoint, as recorded and as used for faults and delays.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Path of the speech endpoint.
pub const SPEECH_PATH: &str = "/v1/audio/speech";

/// A failure to answer with instead of the normal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: 0` and an OpenAI-style error body.
    RateLimited,
    /// 500 with an OpenAI-style error body.
    ServerError,
    /// 200 with a truncated JSON body.
    Malformed,
    /// Speech only: 200 whose body breaks off (a connection error) after its first chunk.
    /// Without a speech chunk size the body is split in two.
    CutStream,
}

/// A chat answer to give instead of the keyword rules.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedReply {
    /// Plain assistant text.
    Text(String),
    /// One tool call; `arguments` is encoded to a string as the API does.
    ToolCall { name: String, arguments: Value },
    /// A whole response body, sent as is.
    Raw(Value),
}

/// One request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    faults: HashMap<String, VecDeque<Fault>>,
    delays: HashMap<String, Duration>,
    chat_script: VecDeque<ScriptedReply>,
    /// When set, speech bodies are streamed in chunks of this many bytes.
    speech_chunk_size: Option<usize>,
}

/// Script, fault switches and request log of the HTTP endpoints; shared with the server task.
#[derive(Debug, Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// Keep no request log (long load runs).
    unrecorded: bool,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps no request log ([`State::requests`] stays empty), so a long load run does not
    /// keep every request body.
    pub fn unrecorded() -> State {
        State {
            unrecorded: true,
            ..State::default()
        }
    }

    /// The next `count` requests to `path` (e.g. [`CHAT_PATH`]) fail with `fault`.
    pub fn fail_next(&self, path: &str, count: usize, fault: Fault) {
        let mut inner = self.lock();
        let queue = inner.faults.entry(path.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(fault, count));
    }

    /// Forgets every queued fault, so later requests are answered normally.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every later request to `path` waits `delay` before answering (zero removes it).
    pub fn set_delay(&self, path: &str, delay: Duration) {
        self.lock().delays.insert(path.to_owned(), delay);
    }

    /// Speech answers are streamed in chunks of `size` bytes (a few milliseconds apart, so the
    /// client sees them separately); `None` (the default) sends each body whole.
    pub fn set_speech_chunk_size(&self, size: Option<usize>) {
        self.lock().speech_chunk_size = size.filter(|n| *n > 0);
    }

    /// Queues a chat answer; queued answers are used in order before the keyword rules.
    pub fn script_chat(&self, reply: ScriptedReply) {
        self.lock().chat_script.push_back(reply);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests to one path, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// The HTTP routes, to be combined with the Realtime route on one port.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let common = warp::post()
        .and(with_state)
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::bytes());
    let chat = warp::path!("v1" / "chat" / "completions")
        .and(common.clone())
        .and_then(|state, auth, body| handle(state, CHAT_PATH, auth, body));
    let speech = warp::path!("v1" / "audio" / "speech")
        .and(common)
        .and_then(|state, auth, body| handle(state, SPEECH_PATH, auth, body));
    chat.or(speech).unify()
}

async fn handle(
    state: Arc<State>,
    path: &'static str,
    authorization: Option<String>,
    body: bytes::Bytes,
) -> Result<warp::reply::Response, Infallible> {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let (delay, fault, scripted, chunk_size) = {
        let mut inner = state.lock();
        if !state.unrecorded {
            inner.requests.push(RecordedRequest {
                path: path.to_owned(),
                authorization,
                body: parsed.clone().unwrap_or(Value::Null),
            });
        }
        let delay = inner.delays.get(path).copied().unwrap_or_default();
        let fault = inner.faults.get_mut(path).and_then(VecDeque::pop_front);
        let scripted = if fault.is_none() && path == CHAT_PATH {
            inner.chat_script.pop_front()
        } else {
            None
        };
        (delay, fault, scripted, inner.speech_chunk_size)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let cut = fault == Some(Fault::CutStream);
    if let Some(fault) = fault.filter(|f| *f != Fault::CutStream) {
        return Ok(fault_reply(fault));
    }
    let Some(body) = parsed else {
        return Ok(error_reply(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request.",
        ));
    };
    Ok(match path {
        CHAT_PATH => {
            let answer = match scripted {
                Some(reply) => scripted_body(reply, &body),
                None => chat_answer(&body),
            };
            warp::reply::json(&answer).into_response()
        }
        _ => speech_reply(&body, chunk_size, cut),
    })
}

fn error_reply(status: StatusCode, kind: &str, message: &str) -> warp::reply::Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn fault_reply(fault: Fault) -> warp::reply::Response {
    match fault {
        Fault::RateLimited => warp::reply::with_header(
            error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "Rate limit reached (fake).",
            ),
            "retry-after",
            "0",
        )
        .into_response(),
        // CutStream is answered by `speech_reply`; it never gets here.
        Fault::ServerError | Fault::CutStream => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request (fake).",
        ),
        Fault::Malformed => warp::reply::with_header(
            r#"{"choices":[{"message":"#,
            "content-type",
            "application/json",
        )
        .into_response(),
    }
}

fn speech_reply(body: &Value, chunk_size: Option<usize>, cut: bool) -> warp::reply::Response {
    let format = body["response_format"]
        .as_str()
        .and_then(AudioFormat::parse)
        .unwrap_or_default();
    let input = body["input"].as_str().unwrap_or_default();
    let bytes = format!("FAKE-{}:{input}", format.as_str().to_ascii_uppercase()).into_bytes();
    let size = match chunk_size {
        Some(size) => size,
        None if cut => bytes.len().div_ceil(2).max(1),
        None => {
            return warp::reply::with_header(bytes, "content-type", format.mime()).into_response()
        }
    };
    let mut chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(size)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    if cut {
        chunks.truncate(1);
        chunks.push(Err(std::io::Error::other("fake: speech stream cut")));
    }
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
        let chunk = rest.next()?;
        // Apart in time, so each chunk leaves as its own body frame.
        tokio::time::sleep(SPEECH_CHUNK_GAP).await;
        Some((chunk, rest))
    });
    warp::reply::with_header(warp::reply::stream(stream), "content-type", format.mime())
        .into_response()
}

/// Time between streamed speech chunks.
const SPEECH_CHUNK_GAP: Duration = Duration::from_millis(5);

fn completion(body: &Value, message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"].as_str().unwrap_or("fake"),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })
}

fn text_completion(body: &Value, text: &str) -> Value {
    completion(
        body,
        json!({"role": "assistant", "content": text, "refusal": null}),
        "stop",
    )
}

fn tool_completion(body: &Value, name: &str, arguments: &Value) -> Value {
    completion(
        body,
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": name, "arguments": arguments.to_string()},
        }]}),
        "tool_calls",
    )
}

fn scripted_body(reply: ScriptedReply, body: &Value) -> Value {
    match reply {
        ScriptedReply::Text(text) => text_completion(body, &text),
        ScriptedReply::ToolCall { name, arguments } => tool_completion(body, &name, &arguments),
        ScriptedReply::Raw(raw) => raw,
    }
}

/// Text of a message's `content` (a string, or an array of `{type:"text",text}` parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn messages_by_role<'a>(body: &'a Value, roles: &'a [&str]) -> impl Iterator<Item = String> + 'a {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |m| m["role"].as_str().is_some_and(|r| roles.contains(&r)))
        .map(|m| content_text(&m["content"]))
}

/// Pure: the deterministic answer to a chat request.
fn chat_answer(body: &Value) -> Value {
    let user = messages_by_role(body, &["user"]).last().unwrap_or_default();
    let offered: Vec<&Value> = body["tools"].as_array().into_iter().flatten().collect();
    let tools: Vec<&str> = offered
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    if !tools.is_empty() {
        if let Some((name, args)) = clinic_tool_rule(&user, &offered) {
            return tool_completion(body, name, &args);
        }
        return match tool_rule(&user) {
            Some((name, args)) if tools.contains(&name) => tool_completion(body, name, &args),
            _ => text_completion(body, ""),
        };
    }
    let system = messages_by_role(body, &["system", "developer"])
        .collect::<Vec<_>>()
        .join("\n");
    let all = format!("{system}\n{user}");
    let text = if let Some(at) = system.find(markers::TRANSLATE_TARGET) {
        let target = last_parenthesized(&system[at..]).unwrap_or("??");
        format!("[{target}] {user}")
    } else if system.contains(markers::DETECT_LANGUAGE) {
        detect_language(&system, &user)
    } else if all.contains(markers::SUMMARY) {
        let cited: Vec<&str> = user
            .split_whitespace()
            .filter(|w| w.starts_with("[msg:") && w.ends_with(']'))
            .collect();
        format!(
            "FAKE SUMMARY of {} transcript lines. Sources: {}",
            cited.len(),
            cited.join(" ")
        )
    } else if all.contains(markers::HISTORY) {
        "Allergies: none known.\nCurrent Medications: none.\nPast Medical History: unremarkable."
            .to_owned()
    } else {
        format!("FAKE: {user}")
    };
    text_completion(body, &text)
}

/// The code inside the last `(..)` of `s`, e.g. `es` in `Target language: Spanish (es)`.
fn last_parenthesized(s: &str) -> Option<&str> {
    let open = s.rfind('(')?;
    let close = s[open..].find(')')? + open;
    Some(&s[open + 1..close])
}

/// Picks one of the prompt's listed codes by counting common function words; ties go to the
/// first listed code.
fn detect_language(system: &str, text: &str) -> String {
    const WORDS: &[(&str, &[&str])] = &[
        ("en", &["the", "i", "you", "is", "and", "have", "my", "it"]),
        (
            "es",
            &[
                "el", "la", "yo", "es", "y", "tengo", "mi", "que", "me", "de",
            ],
        ),
        (
            "fr",
            &["le", "la", "je", "est", "et", "j'ai", "mon", "que", "de"],
        ),
    ];
    let list = system
        .split("from this list:")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .unwrap_or_default();
    let codes: Vec<&str> = list
        .split(',')
        .filter_map(|item| item.split_whitespace().next())
        .collect();
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .collect();
    let score = |code: &str| {
        WORDS
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(0, |(_, list)| {
                words.iter().filter(|w| list.contains(w)).count()
            })
    };
    let mut best: Option<(&str, usize)> = None;
    for code in codes {
        let s = score(code);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((code, s));
        }
    }
    best.map(|(c, _)| c).unwrap_or("en").to_owned()
}

/// Pure keyword rules: the tool a user message asks for, with its arguments.
fn tool_rule(text: &str) -> Option<(&'static str, Value)> {
    // ASCII lowercasing keeps byte offsets valid in the original text.
    let lower = text.to_ascii_lowercase();
    let after = |needle: &str| lower.find(needle).map(|i| &text[i + needle.len()..]);
    let clean = |s: &str| {
        s.trim_matches(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | '.' | '-'))
            .to_owned()
    };

    if let Some(rest) = after("take a note") {
        let rest = clean(rest);
        let rest = rest.strip_prefix("that ").unwrap_or(&rest);
        return Some(("take_note", json!({ "note_content": rest })));
    }
    if let Some(rest) = ["follow-up", "follow up", "followup"]
        .iter()
        .find_map(|n| after(n))
    {
        let tokens: Vec<String> = rest
            .split_whitespace()
            .map(|t| {
                t.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_ascii_lowercase()
            })
            .collect();
        let at = tokens.iter().position(|t| t == "in");
        let duration = at
            .and_then(|i| tokens.get(i + 1))
            .and_then(|t| number_word(t));
        let unit = at
            .and_then(|i| tokens.get(i + 2))
            .and_then(|t| crate::ai::FollowUpUnit::parse(t))
            .map(|u| u.as_str());
        return Some((
            "schedule_follow_up",
            json!({"duration": duration, "unit": unit, "details": null}),
        ));
    }
    if let Some(rest) = after("prescribe ") {
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let medication = tokens.first().map(|t| clean(t)).unwrap_or_default();
        let (dosage, frequency) = match tokens.get(1) {
            Some(amount) if amount.starts_with(|c: char| c.is_ascii_digit()) => {
                let unit = tokens
                    .get(2)
                    .filter(|u| u.len() <= 5 && u.chars().all(char::is_alphabetic));
                let used = if unit.is_some() { 3 } else { 2 };
                let dosage = match unit {
                    Some(unit) => format!("{amount} {unit}"),
                    None => (*amount).to_owned(),
                };
                (dosage, clean(&tokens[used.min(tokens.len())..].join(" ")))
            }
            _ => (String::new(), String::new()),
        };
        return Some((
            "write_prescription",
            json!({"medication_name": medication, "dosage": dosage, "frequency": frequency, "details": null}),
        ));
    }
    if let Some(rest) = after("order a ").or_else(|| after("order an ")) {
        let rest_lower = rest.to_ascii_lowercase();
        let end = [" test", " panel"]
            .iter()
            .filter_map(|w| rest_lower.find(w).map(|i| i + w.len()))
            .min()
            .unwrap_or(rest.len());
        let urgency = if lower.contains(" stat") {
            json!("stat")
        } else if lower.contains("urgent") {
            json!("urgent")
        } else {
            Value::Null
        };
        return Some((
            "order_lab",
            json!({"test_name": clean(&rest[..end]), "details": null, "urgency": urgency}),
        ));
    }
    if lower.contains("medical history") {
        return Some(("request_medical_history", json!({})));
    }
    if lower.contains("summary") {
        return Some(("request_summary", json!({})));
    }
    None
}

/// Pure: the first offered non-built-in tool the message names, with the arguments read from
/// the tool's own `parameters.properties` (so the fake answers only with what it was sent).
fn clinic_tool_rule<'t>(text: &str, offered: &[&'t Value]) -> Option<(&'t str, Value)> {
    let words = |s: &str| s.replace(['_', '-'], " ").to_lowercase();
    let lower = text.to_lowercase();
    offered.iter().find_map(|tool| {
        let function = &tool["function"];
        let name = function["name"].as_str()?;
        if crate::ai::BUILTIN_TOOL_NAMES.contains(&name) {
            return None;
        }
        let phrase = words(name);
        let rest = &lower[lower.find(&phrase)? + phrase.len()..];
        let mut args = serde_json::Map::new();
        let properties = function["parameters"]["properties"].as_object();
        for (key, schema) in properties.into_iter().flatten() {
            let key_phrase = format!("{} ", words(key));
            let Some(part) = rest
                .split([',', ';', '.'])
                .map(str::trim)
                .find_map(|part| part.strip_prefix(&key_phrase))
            else {
                continue;
            };
            let numeric = matches!(schema["type"].as_str(), Some("integer" | "number"));
            let value = match part.trim().parse::<i64>() {
                Ok(n) if numeric => json!(n),
                _ => json!(part.trim()),
            };
            args.insert(key.clone(), value);
        }
        Some((name, Value::Object(args)))
    })
}

fn number_word(token: &str) -> Option<u32> {
    const WORDS: [&str; 12] = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve",
    ];
    token.parse().ok().or_else(|| {
        WORDS
            .iter()
            .position(|w| *w == token)
            .and_then(|i| u32::try_from(i + 1).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_rules() {
        assert_eq!(
            tool_rule("Please take a note: patient is allergic to penicillin."),
            Some((
                "take_note",
                json!({"note_content": "patient is allergic to penicillin"})
            ))
        );
        assert_eq!(
            tool_rule("Schedule a follow-up in two weeks").unwrap().1,
            json!({"duration": 2, "unit": "week", "details": null})
        );
        assert_eq!(
            tool_rule("Prescribe amoxicillin 500 mg three times a day.")
                .unwrap()
                .1,
            json!({"medication_name": "amoxicillin", "dosage": "500 mg",
                   "frequency": "three times a day", "details": null})
        );
        assert_eq!(
            tool_rule("prescribe ibuprofen").unwrap().1["dosage"],
            json!("")
        );
        assert_eq!(
            tool_rule("Order a complete blood count test, stat")
                .unwrap()
                .1,
            json!({"test_name": "complete blood count test", "details": null, "urgency": "stat"})
        );
        assert_eq!(tool_rule("Give me a summary").unwrap().0, "request_summary");
        assert_eq!(
            tool_rule("Show the medical history").unwrap().0,
            "request_medical_history"
        );
        assert_eq!(tool_rule("How are you feeling today?"), None);
    }

    #[test]
    fn clinic_tools_are_answered_from_the_offered_schema() {
        let refer = json!({"type": "function", "function": {"name": "refer_patient",
            "parameters": {"type": "object", "properties": {
                "specialty": {"type": "string"}, "within_days": {"type": "integer"}}}}});
        let note = json!({"type": "function", "function": {"name": "take_note"}});
        let offered = [&note, &refer];
        assert_eq!(
            clinic_tool_rule(
                "Refer patient, specialty cardiology, within days 14.",
                &offered
            ),
            Some((
                "refer_patient",
                json!({"specialty": "cardiology", "within_days": 14})
            ))
        );
        assert_eq!(
            clinic_tool_rule("refer patient", &offered),
            Some(("refer_patient", json!({})))
        );
        assert_eq!(
            clinic_tool_rule("take a note: refer patient", &[&note]),
            None
        );
        assert_eq!(clinic_tool_rule("How are you?", &offered), None);
    }

    #[test]
    fn prompt_driven_answers() {
        let translate = json!({"messages": [
            {"role": "system", "content": "Translate...\nTarget language: Spanish (es)"},
            {"role": "user", "content": "Hello"}]});
        assert_eq!(
            chat_answer(&translate)["choices"][0]["message"]["content"],
            "[es] Hello"
        );
        let detect = json!({"messages": [
            {"role": "system", "content": format!("{}, x. Answer with only one ISO 639-1 code from this list: en (English), es (Spanish). If", markers::DETECT_LANGUAGE)},
            {"role": "user", "content": "Tengo dolor de cabeza"}]});
        assert_eq!(
            chat_answer(&detect)["choices"][0]["message"]["content"],
            "es"
        );
    }
}
