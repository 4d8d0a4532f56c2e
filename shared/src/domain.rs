//! Validated domain values. Each can only be built through its `parse`, so a handler that
//! holds one knows it passed the checks.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use url::{Host, Url};

use crate::url_policy::DestinationPolicy;

/// A client mistake in one field of a request.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Where the problem is, e.g. `url` or `events[2]`.
    pub field: String,
    /// What is wrong, in a sentence fragment.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Returns the same error with `prefix` in front of its field (`events[3].payload`).
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// An event type: `^[A-Za-z0-9_.:-]{1,128}$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(String);

/// Longest event type.
pub const MAX_EVENT_TYPE_LENGTH: usize = 128;

impl EventType {
    /// Validates an event type.
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on field `event_type`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid_characters = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if raw.is_empty() || raw.len() > MAX_EVENT_TYPE_LENGTH || !valid_characters {
            return Err(ValidationError::new(
                "event_type",
                "must be 1 to 128 characters of A-Z, a-z, 0-9, `_`, `.`, `:` or `-`",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The event type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The event types a subscription receives: a non-empty set of types, or `*` for all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTypeFilter(Vec<String>);

/// Most event types one subscription may list.
pub const MAX_SUBSCRIBED_EVENT_TYPES: usize = 100;

impl EventTypeFilter {
    /// Validates a subscription's event list; duplicates are removed, order is kept.
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on field `events` or `events[i]`.
    pub fn parse(raw: &[String]) -> Result<Self, ValidationError> {
        if raw.is_empty() {
            return Err(ValidationError::new(
                "events",
                "must list at least one event type, or \"*\" for all",
            ));
        }
        if raw.len() > MAX_SUBSCRIBED_EVENT_TYPES {
            return Err(ValidationError::new(
                "events",
                format!("must list at most {MAX_SUBSCRIBED_EVENT_TYPES} event types"),
            ));
        }
        let mut types: Vec<String> = Vec::with_capacity(raw.len());
        for (index, event_type) in raw.iter().enumerate() {
            if event_type != "*" {
                EventType::parse(event_type).map_err(|error| {
                    ValidationError::new(format!("events[{index}]"), error.message)
                })?;
            }
            if !types.contains(event_type) {
                types.push(event_type.clone());
            }
        }
        Ok(Self(types))
    }

    /// The event types, `*` included when present.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A subscriber URL that passed the scheme, userinfo, length and literal-address checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl(Url);

/// Longest subscriber URL.
pub const MAX_URL_LENGTH: usize = 2048;

impl TargetUrl {
    /// Validates a subscriber URL against the destination policy. Host names are resolved only
    /// at send time (the API makes no outgoing calls), so here a name is checked only when it
    /// always means this machine or the metadata service.
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on field `url`.
    pub fn parse(raw: &str, policy: &DestinationPolicy) -> Result<Self, ValidationError> {
        let invalid = |message: String| ValidationError::new("url", message);
        if raw.len() > MAX_URL_LENGTH {
            return Err(invalid(format!(
                "must be at most {MAX_URL_LENGTH} characters"
            )));
        }
        let url =
            Url::parse(raw).map_err(|error| invalid(format!("is not a valid URL ({error})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("must use http or https".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not contain credentials".to_owned()));
        }
        // WHATWG parsing has already turned `127.1`, `0x7f000001` and friends into an
        // address, so the check below sees what a client would dial.
        let verdict = match url.host() {
            Some(Host::Ipv4(address)) => policy.check(address.into()),
            Some(Host::Ipv6(address)) => policy.check(address.into()),
            Some(Host::Domain(name)) => policy.check_host_name(name),
            None => return Err(invalid("must have a host".to_owned())),
        };
        verdict
            .map_err(|blocked| invalid(format!("refers to a forbidden destination: {blocked}")))?;
        Ok(Self(url))
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL without query or fragment, safe to log.
    pub fn redacted(&self) -> String {
        redact_url(self.0.as_str())
    }
}

/// Returns `raw` without userinfo, query or fragment, for logs and recorded errors.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Prefix of generated secrets, as Standard Webhooks serialises them.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest secret a subscriber may choose.
pub const MIN_SECRET_LENGTH: usize = 16;
/// Longest secret a subscriber may choose.
pub const MAX_SECRET_LENGTH: usize = 256;
/// Random bytes in a generated secret.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// A subscription's signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// Validates a subscriber-chosen secret: at least 16 characters, printable ASCII, and when
    /// it has the `whsec_` prefix, the rest must be base64 (it is decoded to sign).
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on field `secret`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let invalid = |message: &str| ValidationError::new("secret", message);
        if raw.len() < MIN_SECRET_LENGTH {
            return Err(invalid("must be at least 16 characters"));
        }
        if raw.len() > MAX_SECRET_LENGTH {
            return Err(invalid("must be at most 256 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be printable ASCII without spaces"));
        }
        if raw.starts_with(crate::crypto::SEALED_MARKER) {
            // the marker tells a sealed stored value from a plain one
            return Err(invalid("must not start with `enc.`"));
        }
        if let Some(encoded) = raw.strip_prefix(SECRET_PREFIX) {
            match BASE64.decode(encoded) {
                Ok(key) if !key.is_empty() => {}
                _ => return Err(invalid("after the whsec_ prefix must be valid base64")),
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// Generates `whsec_` + base64 of 32 random bytes.
    ///
    /// # Errors
    /// Fails only when the operating system has no randomness to give.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = [0_u8; GENERATED_SECRET_BYTES];
        getrandom::fill(&mut key)?;
        Ok(Self(format!("{SECRET_PREFIX}{}", BASE64.encode(key))))
    }

    /// The secret itself; only signing and storage use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Extra headers a subscription sends with every delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomHeaders(BTreeMap<String, String>);

/// Most custom headers per subscription.
pub const MAX_CUSTOM_HEADERS: usize = 20;
/// Longest custom header value.
pub const MAX_CUSTOM_HEADER_VALUE: usize = 1024;

impl CustomHeaders {
    /// Validates custom headers: RFC 9110 token names, visible-ASCII values without CR/LF,
    /// and none of the headers the delivery itself owns.
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on field `headers` or `headers.<name>`.
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Self, ValidationError> {
        if raw.len() > MAX_CUSTOM_HEADERS {
            return Err(ValidationError::new(
                "headers",
                format!("must have at most {MAX_CUSTOM_HEADERS} entries"),
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            let field = format!("headers.{name}");
            let is_token = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !is_token {
                return Err(ValidationError::new(field, "is not a valid header name"));
            }
            if is_reserved_header(name) {
                return Err(ValidationError::new(
                    field,
                    "is set by the delivery and cannot be overridden",
                ));
            }
            if value.len() > MAX_CUSTOM_HEADER_VALUE
                || !value
                    .bytes()
                    .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "value must be at most {MAX_CUSTOM_HEADER_VALUE} visible ASCII characters"
                    ),
                ));
            }
            let lowered = name.to_ascii_lowercase();
            if headers.insert(lowered, value.clone()).is_some() {
                return Err(ValidationError::new(
                    field,
                    "appears twice (names are case-insensitive)",
                ));
            }
        }
        Ok(Self(headers))
    }

    /// The headers, names lowercased.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

fn is_reserved_header(name: &str) -> bool {
    let lowered = name.to_ascii_lowercase();
    matches!(
        lowered.as_str(),
        "host"
            | "transfer-encoding"
            | "connection"
            | "user-agent"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-authorization"
            | "proxy-connection"
    ) || lowered.starts_with("content-")
        || lowered.starts_with("x-webhook-")
        || lowered.starts_with("webhook-")
}

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a key; `field` names where it came from in errors.
    ///
    /// # Errors
    /// Returns a [`ValidationError`] on `field`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        if raw.is_empty()
            || raw.len() > MAX_IDEMPOTENCY_KEY_LENGTH
            || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                field,
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The hash that tells a retried publish from a different request reusing its idempotency key:
/// hex SHA-256 over the event type, a NUL, and the exact payload text.
pub fn request_hash(event_type: &EventType, payload: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(payload.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_follow_the_documented_pattern() {
        for good in ["request_submitted", "a", "order.created:v2", "A-Z_09"] {
            assert!(EventType::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "émoji", "a/b", &"x".repeat(129)] {
            assert_eq!(
                EventType::parse(bad).unwrap_err().field,
                "event_type",
                "{bad}"
            );
        }
    }

    #[test]
    fn event_filters_need_one_valid_type_or_star() {
        assert!(EventTypeFilter::parse(&[]).is_err());
        assert_eq!(
            EventTypeFilter::parse(&["*".into(), "*".into()])
                .unwrap()
                .as_slice(),
            ["*".to_owned()]
        );
        assert_eq!(
            EventTypeFilter::parse(&["ok".into(), "bad type".into()])
                .unwrap_err()
                .field,
            "events[1]"
        );
    }

    #[test]
    fn target_urls_are_checked_for_scheme_credentials_and_address() {
        let policy = DestinationPolicy::default();
        assert!(TargetUrl::parse("https://example.com/hook?x=1", &policy).is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pass@example.com/",
            "http://127.0.0.1/",
            "http://127.1/",
            "http://0x7f000001/",
            "http://[::1]/",
            "http://localhost:8080/",
            "http://169.254.169.254/latest/meta-data",
            "not a url",
        ] {
            assert_eq!(
                TargetUrl::parse(bad, &policy).unwrap_err().field,
                "url",
                "{bad}"
            );
        }
        let loopback = DestinationPolicy::from_settings(false, Some("127.0.0.1/32")).unwrap();
        assert!(TargetUrl::parse("http://127.0.0.1:9000/hook", &loopback).is_ok());
    }

    #[test]
    fn redacted_urls_lose_query_and_credentials() {
        assert_eq!(
            redact_url("https://u:p@example.com/path?token=secret#frag"),
            "https://example.com/path"
        );
    }

    #[test]
    fn secrets_are_validated_and_generated_with_the_prefix() {
        assert!(SigningSecret::parse("short").is_err());
        assert!(SigningSecret::parse("whsec_not*base64*at*all!").is_err());
        assert!(SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(SigningSecret::parse("a-plain-secret-of-20").is_ok());
        let generated = SigningSecret::generate().unwrap();
        let decoded = BASE64
            .decode(generated.expose().strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(decoded.len(), GENERATED_SECRET_BYTES);
        assert!(!format!("{generated:?}").contains(generated.expose()));
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        let one = |name: &str, value: &str| {
            CustomHeaders::parse(&BTreeMap::from([(name.to_owned(), value.to_owned())]))
        };
        assert!(one("X-Team", "payments").is_ok());
        for reserved in [
            "Host",
            "Content-Length",
            "content-type",
            "Transfer-Encoding",
            "User-Agent",
            "webhook-signature",
            "X-Webhook-Event",
        ] {
            assert!(one(reserved, "x").is_err(), "{reserved}");
        }
        assert!(one("X-Bad", "line\r\nInjected: yes").is_err());
        assert!(one("bad name", "x").is_err());
    }
}
