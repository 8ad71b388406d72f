//! Clinic-defined voice commands and clinician settings over REST, against the real server on
//! loopback with a temp SQLite file.

mod support;

use serde_json::{json, Value};
use support::{error_code, Client, TestServer};
use tandem::store::UserRole;

fn referral() -> Value {
    json!({
        "name": "refer_patient",
        "description": "Refer the patient to a specialist.",
        "examples": ["refer to cardiology", "send a referral to dermatology"],
        "parameters": {
            "type": "object",
            "properties": {
                "specialty": {"type": "string", "description": "e.g. cardiology"},
                "reason": {"type": ["string", "null"]}
            },
            "required": ["specialty"]
        },
        "produces": {"kind": "action", "actionType": "referral"}
    })
}

/// An admin and a clinician of the default organization (where REST registration puts users).
async fn clinic(srv: &TestServer) -> (Client, Client) {
    let clinician = srv.new_user("dr_lee").await;
    let org = srv
        .store
        .default_organization()
        .await
        .expect("default organization");
    let admin = srv
        .user_with_role(&org.id, "admin_kim", UserRole::Admin)
        .await;
    (admin, clinician)
}

async fn create(admin: &Client, body: &Value) -> reqwest::Response {
    admin
        .post("/commands")
        .json(body)
        .send()
        .await
        .expect("create request")
}

/// Both a `PUT` and a `DELETE` of command `id` by `who` fail with `status` and `code`.
async fn changes_refused(who: &Client, id: &str, status: u16, code: &str) {
    let path = format!("/commands/{id}");
    let res = who
        .put(&path)
        .json(&referral())
        .send()
        .await
        .expect("put request");
    assert_eq!(error_code(res, status).await, code, "PUT");
    let res = who.delete(&path).send().await.expect("delete request");
    assert_eq!(error_code(res, status).await, code, "DELETE");
}

#[tokio::test]
async fn admins_define_commands_and_clinicians_read_them() {
    let srv = support::start().await;
    let (admin, clinician) = clinic(&srv).await;

    assert_eq!(clinician.get_json("/commands", 200).await, json!([]));
    let res = create(&admin, &referral()).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    for field in ["name", "description", "examples", "parameters", "produces"] {
        assert_eq!(created[field], referral()[field], "{field} round-trips");
    }
    assert_eq!(created["createdAt"], created["updatedAt"]);

    // Any clinician of the organization may list and read.
    let listed = clinician.get_json("/commands", 200).await;
    assert_eq!(listed, json!([created.clone()]));
    assert_eq!(
        clinician.get_json(&format!("/commands/{id}"), 200).await,
        created
    );

    // PUT replaces the whole definition.
    let webhook = json!({
        "name": "notify_billing",
        "description": "Tell billing about an extra procedure.",
        "parameters": {"type": "object", "properties": {"procedure": {"type": "string"}}},
        "produces": {"kind": "webhook"}
    });
    let res = admin
        .put(&format!("/commands/{id}"))
        .json(&webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let replaced: Value = res.json().await.unwrap();
    assert_eq!(replaced["id"], id.as_str());
    assert_eq!(replaced["name"], "notify_billing");
    assert_eq!(replaced["examples"], json!([]), "omitted examples are none");
    assert_eq!(replaced["produces"], json!({"kind": "webhook"}));
    assert_eq!(replaced["createdAt"], created["createdAt"]);

    let res = admin
        .delete(&format!("/commands/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let path = format!("/commands/{id}");
    let res = clinician.get(&path).send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
    let res = admin.delete(&path).send().await.unwrap();
    assert_eq!(error_code(res, 404).await, "not_found", "deleting twice");

    // Every change is audited.
    let org = srv.store.default_organization().await.unwrap();
    let trail: Vec<(String, String)> = srv
        .store
        .list_audit(&org.id, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.entity_type == "command")
        .map(|a| (a.action, a.entity_id))
        .collect();
    assert_eq!(
        trail,
        [
            ("delete".to_owned(), id.clone()),
            ("update".to_owned(), id.clone()),
            ("create".to_owned(), id)
        ]
    );
}

#[tokio::test]
async fn only_admins_change_commands() {
    let srv = support::start().await;
    let (admin, clinician) = clinic(&srv).await;
    let code = error_code(create(&clinician, &referral()).await, 403).await;
    assert_eq!(code, "forbidden");

    let created: Value = create(&admin, &referral()).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    changes_refused(&clinician, id, 403, "forbidden").await;
    assert_eq!(clinician.get_json("/commands", 200).await, json!([created]));

    let res = srv.http.get(srv.api("/commands")).send().await.unwrap();
    assert_eq!(error_code(res, 401).await, "unauthorized");
}

#[tokio::test]
async fn other_organizations_see_nothing() {
    let srv = support::start().await;
    let (admin, _) = clinic(&srv).await;
    let created: Value = create(&admin, &referral()).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();

    let outsider = srv.user_in_new_org("Other Clinic", "dr_other").await;
    let other_org = srv
        .store
        .organization_by_name("Other Clinic")
        .await
        .unwrap();
    let other_admin = srv
        .user_with_role(&other_org.id, "admin_other", UserRole::Admin)
        .await;
    assert_eq!(outsider.get_json("/commands", 200).await, json!([]));
    for who in [&outsider, &other_admin] {
        let res = who.get(&format!("/commands/{id}")).send().await.unwrap();
        assert_eq!(error_code(res, 404).await, "not_found");
    }
    changes_refused(&other_admin, id, 404, "not_found").await;
    // The same name is free in another organization.
    assert_eq!(create(&other_admin, &referral()).await.status(), 201);
    assert_eq!(
        admin.get_json(&format!("/commands/{id}"), 200).await,
        created,
        "untouched"
    );
}

#[tokio::test]
async fn names_must_be_unique_and_not_built_in() {
    let srv = support::start().await;
    let (admin, _) = clinic(&srv).await;
    assert_eq!(create(&admin, &referral()).await.status(), 201);

    let mut same = referral();
    same["name"] = json!("Refer_Patient");
    let res = create(&admin, &same).await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "command_exists");
    assert!(body["message"].as_str().unwrap().contains("Refer_Patient"));

    for builtin in ["take_note", "ORDER_LAB", "request_summary"] {
        let mut clash = referral();
        clash["name"] = json!(builtin);
        let res = create(&admin, &clash).await;
        assert_eq!(res.status(), 422, "{builtin}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_field");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("built-in command"),
            "{body}"
        );
    }

    // Renaming onto a taken name is a conflict too.
    let mut other = referral();
    other["name"] = json!("order_imaging");
    let created: Value = create(&admin, &other).await.json().await.unwrap();
    let res = admin
        .put(&format!("/commands/{}", created["id"].as_str().unwrap()))
        .json(&referral())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 409).await, "command_exists");
}

#[tokio::test]
async fn invalid_definitions_get_a_422_naming_the_problem() {
    let srv = support::start().await;
    let (admin, _) = clinic(&srv).await;
    let with = |field: &str, value: Value| {
        let mut body = referral();
        body[field] = value;
        body
    };
    let cases = [
        (with("name", json!("refer patient")), "name must be"),
        (with("name", json!("")), "name must be"),
        (with("description", json!(" ")), "description must be"),
        (with("examples", json!(["ok", ""])), "examples must be"),
        (
            with("parameters", json!({"type": "string"})),
            "parameters.type: must be \"object\"",
        ),
        (
            with("parameters", json!({"type": "object"})),
            "parameters.properties: is required",
        ),
        (
            with(
                "parameters",
                json!({"type": "object", "properties": {"dose": {"type": "decimal"}}}),
            ),
            "parameters.properties.dose.type: unsupported type \"decimal\"",
        ),
        (
            with(
                "parameters",
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
            ),
            "parameters.required: names \"b\", which is not in properties",
        ),
        (
            with(
                "parameters",
                json!({"type": "object", "properties": {"a": {"type": "string", "oneOf": []}}}),
            ),
            "parameters.properties.a.oneOf: unsupported keyword",
        ),
        (
            with(
                "parameters",
                json!({"type": "object", "properties": {"a": {"type": "string",
                    "description": "x".repeat(17 * 1024)}}}),
            ),
            "parameters: is ",
        ),
        (
            with(
                "parameters",
                json!({"type": "object", "properties": {"a": {"type": "object", "properties": {
                    "b": {"type": "object", "properties": {"c": {"type": "object", "properties": {
                        "d": {"type": "array", "items": {"type": "string"}}}}}}}}}}),
            ),
            "parameters.properties.a.properties.b.properties.c.properties.d.items: schemas may nest at most 5 levels deep",
        ),
        (
            with("produces", json!({"kind": "action", "actionType": "Referral"})),
            "produces.actionType must be snake_case",
        ),
        (
            with("produces", json!({"kind": "action", "actionType": "note"})),
            "belongs to a built-in command",
        ),
        (with("produces", json!({"kind": "email"})), "unknown variant"),
        (
            with("produces", json!({"kind": "action"})),
            "produces.actionType is required when kind is \"action\"",
        ),
        (
            with("produces", json!({"kind": "webhook", "actionType": "referral"})),
            "produces.actionType applies only when kind is \"action\"",
        ),
        (
            with("produces", json!({"kind": "webhook", "url": "https://example.org"})),
            "unknown field `url`",
        ),
        (with("parameters", Value::Null), "parameters"),
    ];
    for (body, expected) in cases {
        let res = create(&admin, &body).await;
        assert_eq!(res.status(), 422, "{body}");
        let error: Value = res.json().await.unwrap();
        assert_eq!(error["code"], "invalid_field");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "for {}: {message:?} should contain {expected:?}",
            &body.to_string()[..body.to_string().len().min(200)]
        );
    }
    let mut no_params = referral();
    no_params.as_object_mut().unwrap().remove("parameters");
    let res = create(&admin, &no_params).await;
    assert_eq!(error_code(res, 422).await, "invalid_field");
    assert_eq!(
        admin.get_json("/commands", 200).await,
        json!([]),
        "nothing stored"
    );
}

#[tokio::test]
async fn clinicians_keep_their_own_settings() {
    let srv = support::start().await;
    let (admin, clinician) = clinic(&srv).await;
    let defaults = json!({"builtinCommands": true, "wakePhrase": null});
    assert_eq!(
        clinician.get_json("/users/me/settings", 200).await,
        defaults
    );

    let patch = |body: Value| clinician.patch("/users/me/settings").json(&body).send();
    let res = patch(json!({"wakePhrase": "  Hey   Tandem "}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let expected = json!({"builtinCommands": true, "wakePhrase": "hey tandem"});
    assert_eq!(res.json::<Value>().await.unwrap(), expected);
    // Absent fields stay.
    let res = patch(json!({"builtinCommands": false})).await.unwrap();
    let expected = json!({"builtinCommands": false, "wakePhrase": "hey tandem"});
    assert_eq!(res.json::<Value>().await.unwrap(), expected);
    assert_eq!(
        clinician.get_json("/users/me/settings", 200).await,
        expected
    );

    for bad in [
        json!("hey, tandem!"),
        json!(""),
        json!("x".repeat(41)),
        json!(7),
    ] {
        let res = patch(json!({"wakePhrase": bad})).await.unwrap();
        assert_eq!(error_code(res, 422).await, "invalid_field", "{bad}");
    }
    let res = patch(json!({"builtinCommands": "no"})).await.unwrap();
    assert_eq!(error_code(res, 422).await, "invalid_field");
    assert_eq!(
        clinician.get_json("/users/me/settings", 200).await,
        expected,
        "rejected patches change nothing"
    );

    // null removes the phrase; settings are per user.
    let res = patch(json!({"wakePhrase": null})).await.unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"builtinCommands": false, "wakePhrase": null})
    );
    assert_eq!(admin.get_json("/users/me/settings", 200).await, defaults);
}
