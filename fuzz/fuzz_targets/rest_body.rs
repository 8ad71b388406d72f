//! A REST request body through `filters::parse_json`, the function every JSON route's body
//! filter calls, into each request type in turn, and on through the checks its handler runs
//! before touching the store. Raw bytes, invalid UTF-8 included, as a client can send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tandem::commands::wake;
use tandem::http::commands::{CommandRequest, SettingsPatch};
use tandem::http::filters::parse_json;
use tandem::http::models::{
    CreateConversationRequest, EditActionRequest, LoginRequest, PutWebhookRequest, RefreshRequest,
    RegisterRequest, UpdatePatientRequest,
};

/// An action of every editable kind (and a clinic-defined one), as the pipeline stores them.
fn actions() -> [(&'static str, Value); 5] {
    [
        ("note", json!({"content": "chest pain for three days"})),
        (
            "followup",
            json!({"duration": 2, "unit": "week", "scheduledFor": "2026-12-09T10:00:00.000Z", "details": null}),
        ),
        (
            "prescription",
            json!({"medicationName": "metformin", "dosage": "500 mg", "frequency": "twice a day", "details": null}),
        ),
        (
            "lab_order",
            json!({"testName": "HbA1c", "urgency": null, "details": null}),
        ),
        ("referral", json!({"specialty": "cardiology"})),
    ]
}

fuzz_target!(|body: &[u8]| {
    let _ = parse_json::<RegisterRequest>(body);
    let _ = parse_json::<LoginRequest>(body);
    let _ = parse_json::<RefreshRequest>(body);
    let _ = parse_json::<CreateConversationRequest>(body);
    let _ = parse_json::<UpdatePatientRequest>(body);
    if let Ok(edit) = parse_json::<EditActionRequest>(body) {
        for (kind, data) in actions() {
            let _ = tandem::actions::edit(kind, "pending_review", &data, &edit.data, 0);
        }
    }
    if let Ok(hook) = parse_json::<PutWebhookRequest>(body) {
        let _ = tandem::webhook::validate_url(&hook.url);
    }
    if let Ok(command) = parse_json::<CommandRequest>(body) {
        let _ = command.into_definition();
    }
    if let Ok(SettingsPatch {
        wake_phrase: Some(Some(phrase)),
        ..
    }) = parse_json::<SettingsPatch>(body)
    {
        let _ = wake::normalize(&phrase);
    }
});
