//! The Slack connector's message building and answer classification (DESIGN §7). Pure
//! functions; the worker sends.
//!
//! A `request_submitted` payload becomes a `chat.postMessage` body: a header with the title,
//! fields for requester and description, and the event id in a context line. User text is
//! mrkdwn-escaped and truncated to Slack's block limits, never refused for its size.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

/// Slack's limit for a header block's text.
pub const HEADER_MAX_CHARS: usize = 150;
/// Slack's limit for one section field's text.
pub const FIELD_MAX_CHARS: usize = 2000;
/// Where the notification fallback text is cut (Slack truncates messages past 40,000).
pub const FALLBACK_MAX_CHARS: usize = 3000;
/// The payload key naming a channel.
pub const CHANNEL_KEY: &str = "slack_channel";

/// Escapes the three characters mrkdwn treats as markup.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Escapes `text` and cuts it so the escaped form fits in `max` characters, never inside an
/// entity such as `&amp;`.
pub fn escape_within(text: &str, max: usize) -> String {
    let escaped = escape(text);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut kept = String::new();
    let mut length = 0;
    for character in text.chars() {
        let piece = escape(&character.to_string());
        let piece_length = piece.chars().count();
        if length + piece_length > max.saturating_sub(1) {
            break;
        }
        kept.push_str(&piece);
        length += piece_length;
    }
    kept.push('…');
    kept
}

/// A payload field as display text: strings as they are, other JSON compactly.
fn text_field(payload: &Value, key: &str) -> Option<String> {
    match payload.get(key)? {
        Value::Null => None,
        Value::String(text) if text.trim().is_empty() => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Why a Slack message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The stored payload is not a JSON object.
    #[error("payload_not_an_object")]
    PayloadNotAnObject,
    /// Neither the payload nor `IH_SLACK_DEFAULT_CHANNEL` names a channel.
    #[error("no_channel")]
    NoChannel,
    /// The payload names a channel outside `IH_SLACK_ALLOWED_CHANNELS`.
    #[error("channel_not_allowed")]
    ChannelNotAllowed,
}

/// Builds the `chat.postMessage` body for an event.
///
/// # Errors
/// Returns [`MessageError`] when there is no usable channel or the payload is not an object.
pub fn build_message(
    event_id: Uuid,
    event_type: &str,
    payload_text: &str,
    default_channel: Option<&str>,
    allowed_channels: &[String],
) -> Result<Value, MessageError> {
    let payload: Value =
        serde_json::from_str(payload_text).map_err(|_| MessageError::PayloadNotAnObject)?;
    if !payload.is_object() {
        return Err(MessageError::PayloadNotAnObject);
    }
    let channel = match text_field(&payload, CHANNEL_KEY) {
        Some(named) => {
            if !allowed_channels.is_empty() && !allowed_channels.contains(&named) {
                return Err(MessageError::ChannelNotAllowed);
            }
            named
        }
        None => default_channel
            .filter(|channel| !channel.trim().is_empty())
            .map(str::to_owned)
            .ok_or(MessageError::NoChannel)?,
    };
    let title = text_field(&payload, "title").unwrap_or_else(|| "New request submitted".to_owned());
    let requester = text_field(&payload, "requester");
    let description = text_field(&payload, "description");

    let mut fields = Vec::new();
    if let Some(requester) = &requester {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Requester*\n{}", escape_within(requester, FIELD_MAX_CHARS - 12))}));
    }
    if let Some(description) = &description {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Description*\n{}", escape_within(description, FIELD_MAX_CHARS - 14))}));
    }
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&title, HEADER_MAX_CHARS), "emoji": true}
    })];
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("{} · event `{event_id}`", escape(event_type))}]
    }));

    let fallback = match &requester {
        Some(requester) => format!("{title} (from {requester})"),
        None => title.clone(),
    };
    Ok(json!({
        "channel": channel,
        "text": escape_within(&fallback, FALLBACK_MAX_CHARS),
        "blocks": blocks,
    }))
}

/// Errors after which retrying cannot help: the delivery is dead-lettered at once.
pub const PERMANENT_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "no_text",
    "invalid_blocks",
    "invalid_blocks_format",
    "too_many_attachments",
    "restricted_action",
    "ekm_access_denied",
    "invalid_arguments",
    "invalid_arg_name",
    "invalid_charset",
    "invalid_form_data",
    "invalid_post_type",
    "missing_post_type",
    "team_access_not_granted",
];

/// What Slack's answer means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackVerdict {
    /// Posted; `ts` is the message's timestamp id.
    Posted {
        /// Slack's message timestamp.
        ts: Option<String>,
    },
    /// Retrying cannot help; the error is the dead letter's reason.
    Permanent(String),
    /// Rate limited: wait `Retry-After` (or the backoff when absent).
    RateLimited(Option<Duration>),
    /// A transient failure: retry with the normal backoff.
    Transient(String),
    /// Slack accepted the request (2xx) but its answer could not be read: the message may
    /// well be in the channel. It is recorded and never re-posted automatically, since a
    /// duplicate in a channel is worse than a missed message an operator can replay.
    Unconfirmed(String),
}

/// The verdict's text for a 2xx answer that cannot be read.
pub const UNREADABLE_ANSWER: &str = "slack_unreadable_answer";

/// Classifies Slack's answer: HTTP status, parsed body, and the `Retry-After` already parsed.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> SlackVerdict {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|value| value.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if status == 429 || error.as_deref() == Some("ratelimited") {
        return SlackVerdict::RateLimited(retry_after);
    }
    if !(200..300).contains(&status) {
        return SlackVerdict::Transient(format!("slack_http_{status}"));
    }
    let ok = parsed
        .as_ref()
        .and_then(|value| value.get("ok"))
        .and_then(Value::as_bool);
    match (ok, error) {
        (Some(true), _) => SlackVerdict::Posted {
            ts: parsed
                .as_ref()
                .and_then(|value| value.get("ts"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        (_, Some(error)) if PERMANENT_ERRORS.contains(&error.as_str()) => {
            SlackVerdict::Permanent(error)
        }
        (_, Some(error)) => SlackVerdict::Transient(error),
        (_, None) => SlackVerdict::Unconfirmed(UNREADABLE_ANSWER.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Uuid {
        Uuid::parse_str("01a22415-1292-7a36-aa6d-264ec608abbf").unwrap()
    }

    #[test]
    fn the_message_has_a_header_fields_and_the_event_id() {
        let message = build_message(
            event(),
            "request_submitted",
            r#"{"title": "New laptop", "requester": "Ana <ana@example.com>", "description": "R&D needs it", "slack_channel": "C42"}"#,
            Some("C-default"),
            &[],
        )
        .unwrap();
        assert_eq!(message["channel"], "C42");
        assert_eq!(message["blocks"][0]["text"]["text"], "New laptop");
        assert_eq!(
            message["blocks"][1]["fields"][0]["text"],
            "*Requester*\nAna &lt;ana@example.com&gt;"
        );
        assert_eq!(
            message["blocks"][1]["fields"][1]["text"],
            "*Description*\nR&amp;D needs it"
        );
        assert!(
            message["blocks"][2]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("01a22415-1292-7a36-aa6d-264ec608abbf")
        );
        assert_eq!(
            message["text"],
            "New laptop (from Ana &lt;ana@example.com&gt;)"
        );
    }

    #[test]
    fn missing_optional_fields_are_left_out() {
        let message = build_message(event(), "request_submitted", "{}", Some("C1"), &[]).unwrap();
        assert_eq!(message["channel"], "C1");
        assert_eq!(
            message["blocks"][0]["text"]["text"],
            "New request submitted"
        );
        assert_eq!(
            message["blocks"].as_array().unwrap().len(),
            2,
            "no empty section"
        );
        assert_eq!(
            build_message(event(), "t", "{}", None, &[]),
            Err(MessageError::NoChannel)
        );
        assert_eq!(
            build_message(event(), "t", "[1]", Some("C1"), &[]),
            Err(MessageError::PayloadNotAnObject)
        );
    }

    #[test]
    fn long_text_is_truncated_within_slack_limits() {
        let description = "<&>".repeat(5000);
        let title = "t".repeat(400);
        let payload =
            json!({"title": title, "description": description, "requester": "x".repeat(9000)})
                .to_string();
        let message =
            build_message(event(), "request_submitted", &payload, Some("C1"), &[]).unwrap();
        let header = message["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), HEADER_MAX_CHARS);
        for field in message["blocks"][1]["fields"].as_array().unwrap() {
            let text = field["text"].as_str().unwrap();
            assert!(
                text.chars().count() <= FIELD_MAX_CHARS,
                "{}",
                text.chars().count()
            );
            assert!(text.ends_with('…'));
        }
        let description_field = message["blocks"][1]["fields"][1]["text"].as_str().unwrap();
        assert!(
            description_field.trim_end_matches('…').ends_with(';'),
            "never cut inside an entity"
        );
        assert!(message["text"].as_str().unwrap().chars().count() <= FALLBACK_MAX_CHARS);
    }

    #[test]
    fn a_named_channel_must_be_allowed_when_a_list_is_set() {
        let allowed = vec!["C1".to_owned()];
        assert!(build_message(event(), "t", r#"{"slack_channel":"C1"}"#, None, &allowed).is_ok());
        assert_eq!(
            build_message(event(), "t", r#"{"slack_channel":"C2"}"#, None, &allowed),
            Err(MessageError::ChannelNotAllowed)
        );
        // the default channel is the operator's own choice
        assert!(build_message(event(), "t", "{}", Some("C9"), &allowed).is_ok());
    }

    #[test]
    fn answers_are_classified() {
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            classify(200, r#"{"ok":true,"ts":"1700000000.000100"}"#, None),
            SlackVerdict::Posted {
                ts: Some("1700000000.000100".into())
            }
        );
        for permanent in [
            "invalid_auth",
            "not_authed",
            "account_inactive",
            "token_revoked",
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "msg_too_long",
            "no_text",
            "invalid_blocks",
        ] {
            let body = format!(r#"{{"ok":false,"error":"{permanent}"}}"#);
            assert_eq!(
                classify(200, &body, None),
                SlackVerdict::Permanent(permanent.into())
            );
        }
        assert_eq!(classify(429, "", wait), SlackVerdict::RateLimited(wait));
        assert_eq!(
            classify(200, r#"{"ok":false,"error":"ratelimited"}"#, wait),
            SlackVerdict::RateLimited(wait)
        );
        for transient in [
            "internal_error",
            "service_unavailable",
            "request_timeout",
            "fatal_error",
        ] {
            let body = format!(r#"{{"ok":false,"error":"{transient}"}}"#);
            assert_eq!(
                classify(200, &body, None),
                SlackVerdict::Transient(transient.into())
            );
        }
        assert_eq!(
            classify(503, "", None),
            SlackVerdict::Transient("slack_http_503".into())
        );
        assert_eq!(
            classify(200, "not json", None),
            SlackVerdict::Unconfirmed("slack_unreadable_answer".into()),
            "a 2xx that cannot be read may have been posted: never retried"
        );
    }

    #[test]
    fn escaping_covers_the_three_markup_characters() {
        assert_eq!(escape("a & b < c > d"), "a &amp; b &lt; c &gt; d");
        assert_eq!(escape_within("&&&", 9), "&amp;…");
    }
}
