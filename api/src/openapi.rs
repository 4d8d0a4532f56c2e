//! The constraints of the OpenAPI document.
//!
//! The handlers validate every field themselves so that one answer names every bad field with
//! 422 (poem-openapi's own validators would stop at the first, with 400). The document must
//! still state each rule a schema can express, so generated clients and validators know them:
//! [`constrain`] writes them into the generated document, from the same constants the
//! validators use. The fuzz run in CI (`.ci/schemathesis`, positive and negative data checks)
//! holds the two together. Rules no schema can express are in the descriptions.

use serde_json::{Map, Value, json};
use shared::domain::{
    MAX_CUSTOM_HEADER_VALUE, MAX_CUSTOM_HEADERS, MAX_EVENT_TYPE_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_SECRET_LENGTH, MAX_SUBSCRIBED_EVENT_TYPES, MAX_URL_LENGTH, MIN_SECRET_LENGTH,
};

use crate::{
    body::MAX_BATCH_EVENTS,
    models::MAX_PAGE_SIZE,
    routes::subscriptions::{MAX_DESCRIPTION_LENGTH, MAX_IN_FLIGHT_LIMIT, RATE_LIMIT_RANGE},
};

/// `shared::domain::EventType`.
const EVENT_TYPE_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";
/// Visible ASCII: idempotency keys and secrets.
const VISIBLE_ASCII_PATTERN: &str = "^[!-~]+$";
/// A custom header's value: visible ASCII, spaces and tabs.
const HEADER_VALUE_PATTERN: &str = "^[\\t -~]*$";
/// Any text without NUL, which no stored text may hold.
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";
/// The schemes a subscription URL may have.
const URL_PATTERN: &str = "^[Hh][Tt][Tt][Pp][Ss]?://";

fn event_type() -> Value {
    json!({
        "type": "string",
        "pattern": EVENT_TYPE_PATTERN,
        "minLength": 1,
        "maxLength": MAX_EVENT_TYPE_LENGTH,
    })
}

fn idempotency_key() -> Value {
    json!({
        "type": "string",
        "pattern": VISIBLE_ASCII_PATTERN,
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
    })
}

/// The `Idempotency-Key` header: HTTP drops the spaces and tabs around a header value, so
/// they may be there.
fn idempotency_header() -> Value {
    let pattern = format!("^[\\t ]*[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}[\\t ]*$");
    json!({"type": "string", "pattern": pattern})
}

fn url() -> Value {
    json!({
        "type": "string",
        "format": "uri",
        "pattern": URL_PATTERN,
        "maxLength": MAX_URL_LENGTH,
    })
}

fn event_filter() -> Value {
    json!({
        "type": "array",
        // a type or `*`
        "items": {
            "type": "string",
            "pattern": format!("^(\\*|[A-Za-z0-9_.:-]{{1,{MAX_EVENT_TYPE_LENGTH}}})$"),
        },
        "minItems": 1,
        "maxItems": MAX_SUBSCRIBED_EVENT_TYPES,
    })
}

fn headers() -> Value {
    json!({
        "type": "object",
        "maxProperties": MAX_CUSTOM_HEADERS,
        "additionalProperties": {
            "type": "string",
            "pattern": HEADER_VALUE_PATTERN,
            "maxLength": MAX_CUSTOM_HEADER_VALUE,
        },
    })
}

fn description() -> Value {
    json!({"type": "string", "pattern": NO_NUL_PATTERN, "maxLength": MAX_DESCRIPTION_LENGTH})
}

/// Merges `constraint` into the schema at `pointer`, keeping what is there (descriptions).
fn merge(document: &mut Value, pointer: &str, constraint: &Value) {
    if let (Some(schema), Some(constraint)) = (
        document.pointer_mut(pointer).and_then(Value::as_object_mut),
        constraint.as_object(),
    ) {
        extend(schema, constraint);
    }
}

/// Marks the optional properties of a schema as accepting `null`: an `Option` is read from
/// `null` (as absent, or as "clear" where a description says so) and written as `null`.
fn nullable_optionals(object: &mut Map<String, Value>) {
    let required: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            // a property with a default is not an `Option`: `null` is refused there
            if !required.contains(name)
                && let Some(property) = property.as_object_mut()
                && !property.contains_key("default")
            {
                property.insert("nullable".to_owned(), Value::Bool(true));
            }
        }
    }
}

/// Applies `constraint` to every operation parameter named `name`.
fn constrain_parameters(document: &mut Value, name: &str, constraint: &Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for parameter in parameters {
                if parameter.get("name").and_then(Value::as_str) == Some(name)
                    && let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut)
                    && let Some(constraint) = constraint.as_object()
                {
                    extend(schema, constraint);
                }
            }
        }
    }
}

fn extend(schema: &mut Map<String, Value>, constraint: &Map<String, Value>) {
    for (key, value) in constraint {
        schema.insert(key.clone(), value.clone());
    }
}

/// The generated document with every constraint the service enforces and a schema can state.
pub fn constrain(generated: &str) -> String {
    let Ok(mut document) = serde_json::from_str::<Value>(generated) else {
        return generated.to_owned();
    };
    constrain_parameters(
        &mut document,
        "limit",
        &json!({"minimum": 1, "maximum": MAX_PAGE_SIZE}),
    );
    constrain_parameters(&mut document, "event_type", &event_type());
    constrain_parameters(&mut document, "Idempotency-Key", &idempotency_header());

    let schemas = "/components/schemas";
    for schema in ["PublishEventRequest", "BatchEventItem"] {
        merge(
            &mut document,
            &format!("{schemas}/{schema}/properties/event_type"),
            &event_type(),
        );
    }
    merge(
        &mut document,
        &format!("{schemas}/BatchEventItem/properties/idempotency_key"),
        &idempotency_key(),
    );
    merge(
        &mut document,
        &format!("{schemas}/PublishBatchRequest/properties/events"),
        &json!({"minItems": 1, "maxItems": MAX_BATCH_EVENTS}),
    );
    for schema in ["CreateSubscription", "UpdateSubscription"] {
        let property = |name: &str| format!("{schemas}/{schema}/properties/{name}");
        merge(&mut document, &property("url"), &url());
        merge(&mut document, &property("events"), &event_filter());
        merge(&mut document, &property("headers"), &headers());
        merge(&mut document, &property("description"), &description());
        merge(
            &mut document,
            &property("max_in_flight"),
            &json!({"minimum": 1, "maximum": MAX_IN_FLIGHT_LIMIT}),
        );
        merge(
            &mut document,
            &property("rate_limit_per_second"),
            &json!({"minimum": RATE_LIMIT_RANGE.0, "maximum": RATE_LIMIT_RANGE.1}),
        );
    }
    merge(
        &mut document,
        &format!("{schemas}/CreateSubscription/properties/secret"),
        &json!({
            "type": "string",
            "pattern": VISIBLE_ASCII_PATTERN,
            "minLength": MIN_SECRET_LENGTH,
            "maxLength": MAX_SECRET_LENGTH,
        }),
    );
    // every optional property, of requests and answers alike
    if let Some(all) = document.pointer_mut(schemas).and_then(Value::as_object_mut) {
        all.values_mut()
            .filter_map(Value::as_object_mut)
            .for_each(nullable_optionals);
    }
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| generated.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_land_where_the_validators_are() {
        let generated = json!({
            "paths": {"/events": {"get": {"parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer"}}
            ]}}},
            "components": {"schemas": {
                "PublishBatchRequest": {"properties": {"events": {"type": "array", "description": "d"}}},
                "UpdateSubscription": {"properties": {"url": {"type": "string"}, "enabled": {"type": "boolean"}}},
            }}
        });
        let document: Value = serde_json::from_str(&constrain(&generated.to_string())).unwrap();
        assert_eq!(
            document["paths"]["/events"]["get"]["parameters"][0]["schema"]["maximum"],
            MAX_PAGE_SIZE
        );
        let events =
            &document["components"]["schemas"]["PublishBatchRequest"]["properties"]["events"];
        assert_eq!(events["maxItems"], MAX_BATCH_EVENTS);
        assert_eq!(events["description"], "d", "descriptions are kept");
        let update = &document["components"]["schemas"]["UpdateSubscription"]["properties"];
        assert_eq!(update["url"]["format"], "uri");
        assert_eq!(update["enabled"]["nullable"], true);
    }
}
