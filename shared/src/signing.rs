//! The webhook body and its signatures (DESIGN §6).
//!
//! The body is spliced together from the stored payload text, never parsed and re-serialised,
//! so large numbers and key order survive and the bytes sent are exactly the bytes signed. Two
//! signature schemes ride on every request:
//! - `X-Webhook-Signature`: hex HMAC-SHA256 over `{timestamp}.{body}`, keyed with the secret's
//!   UTF-8 bytes. It carries one signature, so through a rotation's grace period it is made
//!   with the previous secret (the one receivers still hold) and `X-Webhook-Signature-Next`
//!   with the new one; after the grace period only `X-Webhook-Signature`, with the new secret;
//! - `webhook-signature` (Standard Webhooks v1): `v1,<base64 HMAC-SHA256 over
//!   {id}.{timestamp}.{body}>`, keyed with the base64-decoded part of a `whsec_` secret (else
//!   the secret's bytes), one space-separated signature per secret still valid.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::SECRET_PREFIX;

type HmacSha256 = Hmac<Sha256>;

/// Builds the delivered body: `{"id","type","timestamp","data"}` with `payload` spliced in.
pub fn webhook_body(
    event_id: Uuid,
    event_type: &str,
    created_at: DateTime<Utc>,
    payload: &str,
) -> String {
    // serde_json escapes the type; event types are validated, so this never fails in practice
    let event_type = serde_json::to_string(event_type).unwrap_or_else(|_| "\"\"".to_owned());
    let timestamp = created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    format!(
        r#"{{"id":"{event_id}","type":{event_type},"timestamp":"{timestamp}","data":{payload}}}"#
    )
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `X-Webhook-Signature`: lowercase hex HMAC-SHA256 of `{timestamp}.{body}`.
pub fn legacy_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    hmac_sha256(secret.as_bytes(), &[timestamp.as_bytes(), b".", body])
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The Standard Webhooks signing key of a secret.
fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// One Standard Webhooks signature, `v1,<base64>`.
pub fn standard_signature(secret: &str, message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac_sha256(
        &standard_key(secret),
        &[
            message_id.as_bytes(),
            b".",
            timestamp.as_bytes(),
            b".",
            body,
        ],
    );
    format!("v1,{}", BASE64.encode(mac))
}

/// The signature headers of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    /// `X-Webhook-Signature`: with the previous secret while one is in its grace period, else
    /// with the current one.
    pub legacy: String,
    /// `X-Webhook-Signature-Next`: with the current secret, only while a previous one is in
    /// its grace period.
    pub legacy_next: Option<String>,
    /// `webhook-signature`: every valid secret's signature, space-separated.
    pub standard: String,
}

/// Signs `body` at `timestamp` with the current secret and any still-valid previous ones.
pub fn sign(
    current: &str,
    previous: &[&str],
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Signatures {
    let standard = std::iter::once(current)
        .chain(previous.iter().copied())
        .map(|secret| standard_signature(secret, message_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    let (legacy, legacy_next) = match previous.first() {
        Some(previous) => (
            legacy_signature(previous, timestamp, body),
            Some(legacy_signature(current, timestamp, body)),
        ),
        None => (legacy_signature(current, timestamp, body), None),
    };
    Signatures {
        legacy,
        legacy_next,
        standard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_spec_vector_verifies() {
        let signature = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_legacy_signature_is_hex_hmac_of_timestamp_dot_body() {
        // computed independently: hmac.new(key, b'1700000000.{"a":1}', sha256).hexdigest()
        let signature = legacy_signature("my-secret-of-16-chars", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            signature,
            "f3452937a3528ab78c2212da174d84c29a7bc3214e2da01586d9a159ff786590"
        );
        assert_ne!(
            signature,
            legacy_signature("my-secret-of-16-chars", 1_700_000_001, br#"{"a":1}"#)
        );
    }

    #[test]
    fn rotation_adds_a_second_space_separated_signature() {
        let signatures = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &["an-old-plain-secret"],
            "id",
            1,
            b"{}",
        );
        let parts: Vec<&str> = signatures.standard.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_eq!(
            parts[1],
            standard_signature("an-old-plain-secret", "id", 1, b"{}")
        );
    }

    #[test]
    fn the_brief_signature_stays_with_the_old_secret_through_the_grace_period() {
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let during = sign(new, &["an-old-plain-secret"], "id", 1, b"{}");
        assert_eq!(
            during.legacy,
            legacy_signature("an-old-plain-secret", 1, b"{}")
        );
        assert_eq!(during.legacy_next, Some(legacy_signature(new, 1, b"{}")));
        let after = sign(new, &[], "id", 1, b"{}");
        assert_eq!(after.legacy, legacy_signature(new, 1, b"{}"));
        assert_eq!(after.legacy_next, None);
    }

    #[test]
    fn the_body_splices_the_payload_text_unchanged() {
        let id = Uuid::nil();
        let created = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = webhook_body(
            id,
            "order.created",
            created,
            r#"{"big": 18446744073709551617, "z": 1, "a": 2}"#,
        );
        assert_eq!(
            body,
            r#"{"id":"00000000-0000-0000-0000-000000000000","type":"order.created","timestamp":"2026-01-02T03:04:05.123456Z","data":{"big": 18446744073709551617, "z": 1, "a": 2}}"#
        );
    }
}
