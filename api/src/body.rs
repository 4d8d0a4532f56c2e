//! Request bodies: the size limit, and the publish bodies parsed without re-serialising the
//! payload.
//!
//! poem-openapi's `Json<T>` goes through `serde_json::Value`, which would reorder nothing but
//! would turn `18446744073709551617` into a float and lose the publisher's exact text. The
//! publish bodies are parsed here instead, keeping each payload as the raw JSON text received:
//! the bytes stored are the bytes delivered and signed.

use std::collections::HashMap;

use poem::{
    Endpoint, IntoResponse, Request, RequestBody, Response, error::ReadBodyError, http::header,
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, Object,
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
    types::Type,
};
use serde_json::value::RawValue;
use shared::{
    config::ApiLimits,
    domain::{EventType, IdempotencyKey, ValidationError},
};

use crate::error::ApiError;

/// Largest body of any route other than the publish routes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1_000;

/// Deepest nesting of arrays and objects in a payload. Deeper documents are refused so no
/// later reader (the event detail, a receiver's parser) meets a recursion limit.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in a valid JSON text.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0_usize, 0_usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether a valid JSON text has a `\u` escape of a UTF-16 surrogate that is not one half of
/// a pair (`"\ud800"`). JSON's grammar allows it, but it stands for no character: no parser
/// that decodes strings (the event detail, a receiver's, the Slack message builder) can read
/// it, so such a payload is refused at publish rather than stored unreadable.
fn has_lone_surrogate(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let (mut index, mut in_string) = (0, false);
    while let Some(&byte) = bytes.get(index) {
        if !in_string {
            in_string = byte == b'"';
            index += 1;
            continue;
        }
        match byte {
            b'"' => in_string = false,
            b'\\' if bytes.get(index + 1) == Some(&b'u') => {
                let Some(unit) = hex(index + 2) else {
                    return false;
                };
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (bytes.get(index + 6..index + 8) == Some(&b"\\u"[..]))
                            .then(|| hex(index + 8))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return true;
                        }
                        index += 12;
                        continue;
                    }
                    0xDC00..=0xDFFF => return true,
                    _ => {
                        index += 6;
                        continue;
                    }
                }
            }
            // any other escape is two bytes: skip the escaped one, which may be a quote
            b'\\' => index += 1,
            _ => {}
        }
        index += 1;
    }
    false
}

/// Most bytes of header names and values one request may carry. The HTTP server's own guard
/// (about 400 KiB) answers without the error envelope; this one answers with it, and well
/// before a request can hold much memory.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Answers 431 to a request whose headers add up to more than [`MAX_HEADER_BYTES`].
pub async fn limit_headers<E: Endpoint>(endpoint: E, request: Request) -> poem::Result<Response> {
    let total: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if total > MAX_HEADER_BYTES {
        return Err(ApiError::headers_too_large(MAX_HEADER_BYTES).into());
    }
    Ok(endpoint.call(request).await?.into_response())
}

/// Reads the body up to the route's limit before any handler sees it, answering 413 beyond it
/// and 408 when it has not all arrived within `limits.body_read_timeout` (a client trickling
/// bytes must not hold a permit for long). A declared `Content-Length` over the limit is
/// refused without reading a byte.
pub async fn limit_body<E: Endpoint>(
    endpoint: &E,
    mut request: Request,
    limits: ApiLimits,
) -> poem::Result<Response> {
    let path = request.uri().path();
    let limit = if path.ends_with("/events/batch") {
        limits.max_batch_bytes
    } else if path.ends_with("/events") {
        limits.max_payload_bytes
    } else {
        DEFAULT_BODY_LIMIT
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::payload_too_large(limit).into());
    }
    let body = request.take_body();
    let read = tokio::time::timeout(limits.body_read_timeout, body.into_bytes_limit(limit));
    let Ok(read) = read.await else {
        return Err(ApiError::body_timeout(limits.body_read_timeout).into());
    };
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(ReadBodyError::PayloadTooLarge) => {
            return Err(ApiError::payload_too_large(limit).into());
        }
        Err(error) => {
            return Err(ApiError::bad_request(
                "unreadable_body",
                format!("the request body could not be read: {error}"),
            )
            .into());
        }
    };
    request.set_body(bytes);
    Ok(endpoint.call(request).await?.into_response())
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
}

async fn read_json_object(
    request: &Request,
    body: &mut RequestBody,
) -> poem::Result<HashMap<String, Box<RawValue>>> {
    if !is_json(request.content_type()) {
        return Err(ApiError::unsupported_media_type().into());
    }
    let bytes = body
        .take()?
        .into_vec()
        .await
        .map_err(|error| ApiError::bad_request("unreadable_body", error.to_string()))?;
    let malformed = |error: serde_json::Error| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {error}"),
        )
    };
    // An object is parsed once, straight into its fields; anything else is only checked for
    // being JSON at all, to tell malformed (400) from not an object (422).
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{') {
        return serde_json::from_slice(&bytes).map_err(|error| malformed(error).into());
    }
    serde_json::from_slice::<Box<RawValue>>(&bytes).map_err(malformed)?;
    Err(ApiError::from(ValidationError::new("body", "must be a JSON object")).into())
}

/// One event to publish, validated, its payload kept as received.
#[derive(Debug, Clone)]
pub struct EventInput {
    /// The event type.
    pub event_type: EventType,
    /// The payload's exact JSON text (an object).
    pub payload: String,
    /// A batch item's own idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
}

fn event_input(
    mut fields: HashMap<String, Box<RawValue>>,
    in_batch: bool,
) -> Result<EventInput, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let event_type = match fields.remove("event_type") {
        None => {
            errors.push(ValidationError::new("event_type", "is required"));
            None
        }
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(text) => EventType::parse(&text)
                .map_err(|error| errors.push(error))
                .ok(),
            Err(_) => {
                errors.push(ValidationError::new("event_type", "must be a string"));
                None
            }
        },
    };
    let payload = match fields.remove("payload") {
        None => {
            errors.push(ValidationError::new("payload", "is required"));
            None
        }
        Some(raw) if raw.get().starts_with('{') && json_depth(raw.get()) > MAX_PAYLOAD_DEPTH => {
            errors.push(ValidationError::new(
                "payload",
                format!("must not nest arrays and objects deeper than {MAX_PAYLOAD_DEPTH} levels"),
            ));
            None
        }
        Some(raw) if raw.get().starts_with('{') && has_lone_surrogate(raw.get()) => {
            errors.push(ValidationError::new(
                "payload",
                "must not hold a lone UTF-16 surrogate escape such as \\ud800: it stands for no character",
            ));
            None
        }
        Some(raw) if raw.get().starts_with('{') => Some(raw.get().to_owned()),
        Some(_) => {
            errors.push(ValidationError::new("payload", "must be a JSON object"));
            None
        }
    };
    let idempotency_key = match fields.remove("idempotency_key") {
        Some(raw) if in_batch && raw.get() != "null" => {
            match serde_json::from_str::<String>(raw.get()) {
                Ok(text) => IdempotencyKey::parse(&text, "idempotency_key")
                    .map_err(|error| errors.push(error))
                    .ok(),
                Err(_) => {
                    errors.push(ValidationError::new("idempotency_key", "must be a string"));
                    None
                }
            }
        }
        _ => None,
    };
    match (event_type, payload) {
        (Some(event_type), Some(payload)) if errors.is_empty() => Ok(EventInput {
            event_type,
            payload,
            idempotency_key,
        }),
        _ => Err(errors),
    }
}

/// The documented shape of `POST /events`.
#[derive(Object)]
#[oai(rename = "PublishEventRequest")]
#[allow(dead_code, reason = "documentation of the hand-parsed body")]
struct PublishEventSchema {
    /// `^[A-Za-z0-9_.:-]{1,128}$`.
    event_type: String,
    /// Any JSON object; delivered byte for byte as received.
    payload: HashMap<String, serde_json::Value>,
}

/// The documented shape of one item of `POST /events/batch`.
#[derive(Object)]
#[oai(rename = "BatchEventItem")]
#[allow(dead_code, reason = "documentation of the hand-parsed body")]
struct BatchItemSchema {
    /// `^[A-Za-z0-9_.:-]{1,128}$`.
    event_type: String,
    /// Any JSON object; delivered byte for byte as received.
    payload: HashMap<String, serde_json::Value>,
    /// This item's idempotency key: a retried batch answers this item as it did first.
    idempotency_key: Option<String>,
}

/// The documented shape of `POST /events/batch`.
#[derive(Object)]
#[oai(rename = "PublishBatchRequest")]
#[allow(dead_code, reason = "documentation of the hand-parsed body")]
struct BatchSchema {
    /// 1 to 1,000 events, stored all or none.
    events: Vec<BatchItemSchema>,
}

fn json_request_meta(schema: MetaSchemaRef) -> Option<MetaRequest> {
    Some(MetaRequest {
        description: None,
        content: vec![MetaMediaType {
            content_type: "application/json",
            schema,
        }],
        required: true,
    })
}

/// The body of `POST /events`.
pub struct PublishBody(pub EventInput);

impl<'a> ApiExtractor<'a> for PublishBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        PublishEventSchema::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        json_request_meta(PublishEventSchema::schema_ref())
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let fields = read_json_object(request, body).await?;
        event_input(fields, false)
            .map(Self)
            .map_err(|errors| ApiError::from(errors).into())
    }
}

/// The body of `POST /events/batch`.
pub struct BatchBody(pub Vec<EventInput>);

impl<'a> ApiExtractor<'a> for BatchBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        BatchSchema::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        json_request_meta(BatchSchema::schema_ref())
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let mut fields = read_json_object(request, body).await?;
        let Some(raw_events) = fields.remove("events") else {
            return Err(ApiError::from(ValidationError::new("events", "is required")).into());
        };
        let items: Vec<Box<RawValue>> = serde_json::from_str(raw_events.get())
            .map_err(|_| ApiError::from(ValidationError::new("events", "must be an array")))?;
        if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
            return Err(ApiError::from(ValidationError::new(
                "events",
                format!("must hold 1 to {MAX_BATCH_EVENTS} events"),
            ))
            .into());
        }
        let mut events = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let prefix = format!("events[{index}]");
            let parsed = if item.get().starts_with('{') {
                serde_json::from_str::<HashMap<String, Box<RawValue>>>(item.get())
                    .map_err(|_| {
                        vec![ValidationError::new(
                            prefix.clone(),
                            "must be a JSON object",
                        )]
                    })
                    .and_then(|fields| event_input(fields, true))
            } else {
                Err(vec![ValidationError::new(
                    prefix.clone(),
                    "must be a JSON object",
                )])
            };
            match parsed {
                Ok(event) => events.push(event),
                Err(item_errors) => errors.extend(item_errors.into_iter().map(|error| {
                    if error.field == prefix {
                        error
                    } else {
                        error.within(&prefix)
                    }
                })),
            }
        }
        if errors.is_empty() {
            Ok(Self(events))
        } else {
            Err(ApiError::from(errors).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> HashMap<String, Box<RawValue>> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn payload_text_is_kept_exactly_as_received() {
        let raw = r#"{"b": 18446744073709551617, "a": 1e400,  "s": "\u00e9"}"#;
        let event = event_input(
            fields(&format!(r#"{{"event_type":"x","payload":{raw}}}"#)),
            false,
        )
        .unwrap();
        assert_eq!(event.payload, raw);
    }

    #[test]
    fn every_invalid_field_is_named() {
        let errors =
            event_input(fields(r#"{"event_type":"bad type","payload":[1]}"#), false).unwrap_err();
        let named: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(named, ["event_type", "payload"]);
        let errors = event_input(fields("{}"), false).unwrap_err();
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn nesting_depth_ignores_brackets_inside_strings() {
        assert_eq!(json_depth(r#"{"a":[1,{"b":"[[[{{{\\"]]"}]}"#), 3);
        assert_eq!(json_depth(r#"{"s":"\"[["}"#), 1);
        assert_eq!(json_depth("{}"), 1);
    }

    #[test]
    fn lone_surrogates_are_found_and_pairs_pass() {
        for lone in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\uDBFF x"}"#,
            r#"{"s":"\udc00"}"#,
            r#"{"s":"a\ud83d\u0041"}"#,
            r#"{"\ud800":1}"#,
            r#"{"s":"\ud83d\ude00\ud800"}"#,
        ] {
            assert!(has_lone_surrogate(lone), "{lone}");
        }
        for fine in [
            r#"{"s":"\ud83d\ude00"}"#,
            r#"{"s":"\\ud800"}"#,
            r#"{"s":"\"\ud83d\ude00"}"#,
            r#"{"s":"é \u00e9 \u0000"}"#,
            r#"{"n":1,"a":[{"s":"ud800"}]}"#,
        ] {
            assert!(!has_lone_surrogate(fine), "{fine}");
            // whatever passes decodes
            serde_json::from_str::<serde_json::Value>(fine).unwrap();
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(is_json(Some("application/cloudevents+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }
}
