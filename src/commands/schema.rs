//! Validation of the JSON Schemas clinics give their voice commands' parameters.
//!
//! Design decision: only a documented subset of JSON Schema is accepted (the keywords tool
//! calling uses in practice), and anything else is rejected by name rather than passed through,
//! so an admin learns at definition time — with the path of the offending keyword — that the
//! model would not understand it. Size and nesting are bounded because every schema is sent
//! with every clinician utterance.

use serde_json::{Map, Value};

/// Largest accepted schema, serialized.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Deepest accepted nesting of schemas (the root object is depth 1).
pub const MAX_DEPTH: usize = 5;
/// Most properties one object schema may declare.
pub const MAX_PROPERTIES: usize = 64;
/// Most values an `enum` may list.
pub const MAX_ENUM_VALUES: usize = 100;

const TYPES: &[&str] = &["string", "number", "integer", "boolean", "array", "object"];

/// What is wrong with a schema, and where (`parameters.properties.dose.type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SchemaError {
    pub path: String,
    pub problem: String,
}

fn fail<T>(path: &str, problem: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError {
        path: path.to_owned(),
        problem: problem.into(),
    })
}

/// Checks a command's `parameters`: an object schema (`type: "object"`, `properties` an object
/// of property schemas with supported types, `required` a subset of the properties) within the
/// size and depth bounds.
///
/// # Errors
/// The first problem found, with its path under `parameters`.
pub fn validate(schema: &Value) -> Result<(), SchemaError> {
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return fail(
            "parameters",
            format!("is {size} bytes; at most {MAX_SCHEMA_BYTES} are allowed"),
        );
    }
    let Value::Object(root) = schema else {
        return fail("parameters", "must be a JSON object (a JSON Schema)");
    };
    if root.get("type") != Some(&Value::String("object".into())) {
        return fail("parameters.type", "must be \"object\"");
    }
    if !root.contains_key("properties") {
        return fail(
            "parameters.properties",
            "is required (use {} for a command without parameters)",
        );
    }
    property_schema("parameters", schema, 1)
}

/// A schema node (`"type"` already known to include `object`).
fn object_schema(path: &str, node: &Map<String, Value>, depth: usize) -> Result<(), SchemaError> {
    let properties = match node.get("properties") {
        None => return required_list(path, node, &Map::new()),
        Some(Value::Object(p)) => p,
        Some(_) => return fail(&format!("{path}.properties"), "must be an object"),
    };
    if properties.len() > MAX_PROPERTIES {
        return fail(
            &format!("{path}.properties"),
            format!(
                "has {} properties; at most {MAX_PROPERTIES}",
                properties.len()
            ),
        );
    }
    for (name, property) in properties {
        let at = format!("{path}.properties.{name}");
        if !valid_property_name(name) {
            return fail(
                &at,
                "property names must be 1-64 letters, digits, '_' or '-'",
            );
        }
        property_schema(&at, property, depth + 1)?;
    }
    required_list(path, node, properties)
}

fn required_list(
    path: &str,
    node: &Map<String, Value>,
    properties: &Map<String, Value>,
) -> Result<(), SchemaError> {
    let Some(required) = node.get("required") else {
        return Ok(());
    };
    let at = format!("{path}.required");
    let Value::Array(names) = required else {
        return fail(&at, "must be an array of property names");
    };
    for (i, name) in names.iter().enumerate() {
        let Value::String(name) = name else {
            return fail(&at, "must be an array of property names");
        };
        if !properties.contains_key(name) {
            return fail(&at, format!("names {name:?}, which is not in properties"));
        }
        if names[..i].iter().any(|n| n == name.as_str()) {
            return fail(&at, format!("lists {name:?} twice"));
        }
    }
    Ok(())
}

fn valid_property_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The declared types of a property schema: `"string"` or `["string", "null"]`.
fn declared_types<'a>(
    path: &str,
    node: &'a Map<String, Value>,
) -> Result<Vec<&'a str>, SchemaError> {
    let at = format!("{path}.type");
    let names: Vec<&Value> = match node.get("type") {
        None => {
            return fail(
                &at,
                "is required (one of string, number, integer, boolean, array, object)",
            )
        }
        Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
        Some(one @ Value::String(_)) => vec![one],
        Some(_) => {
            return fail(
                &at,
                "must be a type name or a non-empty array of type names",
            )
        }
    };
    let mut types = Vec::with_capacity(names.len());
    for name in names {
        let Some(name) = name.as_str() else {
            return fail(
                &at,
                "must be a type name or a non-empty array of type names",
            );
        };
        if !TYPES.contains(&name) && name != "null" {
            return fail(
                &at,
                format!(
                    "unsupported type {name:?} (use string, number, integer, boolean, array or \
                     object, optionally with null)"
                ),
            );
        }
        if types.contains(&name) {
            return fail(&at, format!("lists {name:?} twice"));
        }
        types.push(name);
    }
    if types.iter().all(|t| *t == "null") {
        return fail(&at, "must allow a value other than null");
    }
    Ok(types)
}

fn property_schema(path: &str, schema: &Value, depth: usize) -> Result<(), SchemaError> {
    if depth > MAX_DEPTH {
        return fail(
            path,
            format!("schemas may nest at most {MAX_DEPTH} levels deep"),
        );
    }
    let Value::Object(node) = schema else {
        return fail(path, "must be a schema object like {\"type\": \"string\"}");
    };
    let types = declared_types(path, node)?;
    let has = |t: &str| types.contains(&t);
    for (keyword, value) in node {
        let at = format!("{path}.{keyword}");
        let allowed = match keyword.as_str() {
            "type" => true,
            "description" | "title" => text(&at, value)?,
            "enum" => enum_values(&at, value, &types)?,
            "minLength" | "maxLength" => has("string") && count(&at, value)?,
            "pattern" | "format" => has("string") && text(&at, value)?,
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                (has("number") || has("integer")) && number(&at, value)?
            }
            "items" => has("array"),
            "minItems" | "maxItems" => has("array") && count(&at, value)?,
            "properties" | "required" => has("object"),
            "additionalProperties" => has("object") && boolean(&at, value)?,
            _ => return fail(&at, "unsupported keyword"),
        };
        if !allowed {
            return fail(
                &at,
                format!("does not apply to type {}", types.join(" or ")),
            );
        }
    }
    if has("array") {
        match node.get("items") {
            Some(items) => property_schema(&format!("{path}.items"), items, depth + 1)?,
            None => return fail(&format!("{path}.items"), "is required for arrays"),
        }
    }
    if has("object") {
        object_schema(path, node, depth)?;
    }
    Ok(())
}

fn text(path: &str, value: &Value) -> Result<bool, SchemaError> {
    match value {
        Value::String(_) => Ok(true),
        _ => fail(path, "must be a string"),
    }
}

fn boolean(path: &str, value: &Value) -> Result<bool, SchemaError> {
    match value {
        Value::Bool(_) => Ok(true),
        _ => fail(path, "must be true or false"),
    }
}

fn count(path: &str, value: &Value) -> Result<bool, SchemaError> {
    match value.as_u64() {
        Some(_) => Ok(true),
        None => fail(path, "must be a non-negative integer"),
    }
}

fn number(path: &str, value: &Value) -> Result<bool, SchemaError> {
    match value {
        Value::Number(_) => Ok(true),
        _ => fail(path, "must be a number"),
    }
}

fn enum_values(path: &str, value: &Value, types: &[&str]) -> Result<bool, SchemaError> {
    let Value::Array(values) = value else {
        return fail(path, "must be a non-empty array");
    };
    if values.is_empty() || values.len() > MAX_ENUM_VALUES {
        return fail(path, format!("must list 1 to {MAX_ENUM_VALUES} values"));
    }
    for v in values {
        let fits = match v {
            Value::Null => types.contains(&"null"),
            Value::Bool(_) => types.contains(&"boolean"),
            Value::String(_) => types.contains(&"string"),
            Value::Number(n) => {
                types.contains(&"number")
                    || (types.contains(&"integer") && (n.is_i64() || n.is_u64()))
            }
            Value::Array(_) | Value::Object(_) => false,
        };
        if !fits {
            return fail(path, format!("value {v} does not match the declared type"));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problem(schema: Value) -> String {
        validate(&schema).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_supported_subset() {
        for ok in [
            json!({"type": "object", "properties": {}}),
            json!({
                "type": "object",
                "description": "Referral",
                "properties": {
                    "specialty": {"type": "string", "enum": ["cardiology", "dermatology"]},
                    "reason": {"type": ["string", "null"], "maxLength": 500},
                    "urgent": {"type": "boolean"},
                    "within_days": {"type": "integer", "minimum": 1, "maximum": 365},
                    "tests": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                    "contact": {"type": "object", "properties": {"phone": {"type": "string",
                        "pattern": "^[0-9 +]+$"}}, "required": ["phone"],
                        "additionalProperties": false},
                },
                "required": ["specialty"],
                "additionalProperties": false,
            }),
        ] {
            assert_eq!(validate(&ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn each_invalid_schema_names_its_problem() {
        let cases = [
            (json!([1]), "parameters: must be a JSON object"),
            (
                json!({"type": "array", "items": {}}),
                "parameters.type: must be \"object\"",
            ),
            (
                json!({"type": "object"}),
                "parameters.properties: is required",
            ),
            (
                json!({"type": "object", "properties": []}),
                "parameters.properties: must be an object",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "date"}}}),
                "parameters.properties.a.type: unsupported type \"date\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {}}}),
                "parameters.properties.a.type: is required",
            ),
            (
                json!({"type": "object", "properties": {"a": "string"}}),
                "parameters.properties.a: must be a schema object",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
                "parameters.required: names \"b\", which is not in properties",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}),
                "parameters.required: must be an array",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "$ref": "#/x"}}}),
                "parameters.properties.a.$ref: unsupported keyword",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "minimum": 1}}}),
                "parameters.properties.a.minimum: does not apply to type string",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array"}}}),
                "parameters.properties.a.items: is required for arrays",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "enum": ["x"]}}}),
                "parameters.properties.a.enum: value \"x\" does not match",
            ),
            (
                json!({"type": "object", "properties": {"a b": {"type": "string"}}}),
                "parameters.properties.a b: property names",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "null"}}}),
                "parameters.properties.a.type: must allow a value other than null",
            ),
        ];
        for (schema, expected) in cases {
            let got = problem(schema.clone());
            assert!(
                got.starts_with(expected),
                "{schema}\n got: {got}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        let got = problem(deep);
        assert!(got.contains("nest at most 5 levels"), "{got}");

        let mut ok = json!({"type": "string"});
        for _ in 0..MAX_DEPTH - 1 {
            ok = json!({"type": "object", "properties": {"x": ok}});
        }
        assert_eq!(validate(&ok), Ok(()));

        let big = json!({"type": "object", "properties": {
            "a": {"type": "string", "description": "x".repeat(MAX_SCHEMA_BYTES)}}});
        assert!(problem(big).starts_with("parameters: is "));

        let many: Map<String, Value> = (0..=MAX_PROPERTIES)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let got = problem(json!({"type": "object", "properties": many}));
        assert!(got.contains("at most 64"), "{got}");
    }
}
