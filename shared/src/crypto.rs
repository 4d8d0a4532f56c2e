//! Subscription secrets at rest.
//!
//! With `IH_ENCRYPTION_KEYS` set, every secret is stored as
//! `enc.v1.<key id>.<nonce>.<ciphertext>` (base64url without padding): XChaCha20-Poly1305
//! with a random 24-byte nonce, and the subscription id as associated data, so a ciphertext
//! copied onto another subscription does not open. The first configured key seals; every
//! configured key opens, which is what lets keys rotate: add the new key first, run
//! `ih-migrate reencrypt`, then drop the old one.
//!
//! Without keys, secrets are stored as they are. A stored value without the `enc.` marker is
//! such a plain secret (written before keys were configured) and is still used; a chosen
//! secret may not start with the marker (see [`crate::domain::SigningSecret::parse`]).
//!
//! Opening never panics on what the database holds: a truncated, tampered or foreign value
//! is a [`CryptoError`] for that one subscription.

use std::fmt;

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use chacha20poly1305::{
    Key, XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use uuid::Uuid;

/// What every sealed value starts with.
pub const SEALED_MARKER: &str = "enc.";
const ENVELOPE_VERSION: &str = "v1";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const MAX_KEY_ID_LENGTH: usize = 32;

/// Why a secret could not be sealed or opened, or why the keys are unusable.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// `IH_ENCRYPTION_KEYS` does not parse.
    #[error("{0}")]
    InvalidKeys(String),
    /// The stored value is encrypted but no keys are configured.
    #[error("the secret is encrypted and no encryption keys are configured")]
    NoKeys,
    /// The stored value names a key that is not configured.
    #[error("the secret is encrypted with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// The stored value is not a well-formed envelope.
    #[error("the stored secret is malformed")]
    Malformed,
    /// Authentication failed: wrong key, another subscription's value, or tampering.
    #[error("the stored secret does not authenticate")]
    Tampered,
    /// The operating system gave no randomness for a nonce.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

struct EncryptionKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Seals and opens subscription secrets; a pass-through when no keys are configured.
#[derive(Clone, Default)]
pub struct SecretCipher {
    keys: std::sync::Arc<Vec<EncryptionKey>>,
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCipher")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl SecretCipher {
    /// No keys: secrets are stored in plain text.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Parses `key_id:<base64 of 32 bytes>,…`; the first key seals, all open.
    ///
    /// # Errors
    /// Returns [`CryptoError::InvalidKeys`] naming the first bad entry (never its key bytes).
    pub fn parse(raw: &str) -> Result<Self, CryptoError> {
        let invalid = |message: String| Err(CryptoError::InvalidKeys(message));
        let mut keys: Vec<EncryptionKey> = Vec::new();
        for (position, entry) in raw.split(',').map(str::trim).enumerate() {
            let number = position + 1;
            let Some((id, encoded)) = entry.split_once(':') else {
                return invalid(format!("entry {number} must be `key_id:<base64 key>`"));
            };
            let id = id.trim();
            let id_ok = !id.is_empty()
                && id.len() <= MAX_KEY_ID_LENGTH
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return invalid(format!(
                    "entry {number}: the key id must be 1–32 letters, digits, `_` or `-`"
                ));
            }
            if keys.iter().any(|key| key.id == id) {
                return invalid(format!("entry {number}: key id `{id}` appears twice"));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(encoded.trim()));
            let key: [u8; KEY_BYTES] = match bytes.ok().map(<[u8; KEY_BYTES]>::try_from) {
                Some(Ok(key)) => key,
                _ => {
                    return invalid(format!("key `{id}` must be the base64 of exactly 32 bytes"));
                }
            };
            keys.push(EncryptionKey {
                id: id.to_owned(),
                cipher: XChaCha20Poly1305::new(&Key::from(key)),
            });
        }
        Ok(Self {
            keys: std::sync::Arc::new(keys),
        })
    }

    /// Says at start how secrets are kept: a warning when they are stored in plain text.
    pub fn announce(&self) {
        if self.enabled() {
            tracing::info!(key_ids = ?self.key_ids(), "subscription secrets are encrypted at rest");
        } else {
            tracing::warn!(
                "IH_ENCRYPTION_KEYS is not set: subscription secrets are stored in plain text"
            );
        }
    }

    /// Whether secrets are sealed before they are stored.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The configured key ids, the sealing key first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|key| key.id.as_str()).collect()
    }

    /// The value to store for `secret` of subscription `subscription_id`.
    ///
    /// # Errors
    /// Returns [`CryptoError::Random`] when the system has no randomness.
    pub fn seal(&self, subscription_id: Uuid, secret: &str) -> Result<String, CryptoError> {
        let Some(key) = self.keys.first() else {
            return Ok(secret.to_owned());
        };
        let mut nonce = [0_u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|error| CryptoError::Random(error.to_string()))?;
        let sealed = key
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: subscription_id.as_bytes(),
                },
            )
            // encryption fails only for messages past the cipher's 256 GiB limit
            .map_err(|_| CryptoError::Malformed)?;
        Ok(format!(
            "{SEALED_MARKER}{ENVELOPE_VERSION}.{}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// The secret behind a stored value.
    ///
    /// # Errors
    /// Returns a [`CryptoError`] when the value is sealed and cannot be opened.
    pub fn open(&self, subscription_id: Uuid, stored: &str) -> Result<String, CryptoError> {
        let Some(envelope) = stored.strip_prefix(SEALED_MARKER) else {
            return Ok(stored.to_owned());
        };
        let mut parts = envelope.split('.');
        let (Some(ENVELOPE_VERSION), Some(key_id), Some(nonce), Some(sealed), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CryptoError::Malformed);
        };
        if self.keys.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        let key = self
            .keys
            .iter()
            .find(|key| key.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let nonce: [u8; NONCE_BYTES] = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(CryptoError::Malformed)?;
        let sealed = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| CryptoError::Malformed)?;
        let plain = key
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed,
                    aad: subscription_id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Malformed)
    }

    /// Whether a stored value is already sealed with the current key (or, without keys, is
    /// plain): such a value needs no re-encryption.
    pub fn is_current(&self, stored: &str) -> bool {
        match self.keys.first() {
            None => !stored.starts_with(SEALED_MARKER),
            Some(key) => stored
                .strip_prefix(SEALED_MARKER)
                .and_then(|rest| rest.strip_prefix(ENVELOPE_VERSION))
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|rest| rest.strip_prefix(key.id.as_str()))
                .is_some_and(|rest| rest.starts_with('.')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; KEY_BYTES])
    }

    fn cipher(spec: &str) -> SecretCipher {
        SecretCipher::parse(spec).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_and_hides_the_plain_text() {
        let keys = cipher(&format!("k1:{}", key(1)));
        let id = Uuid::now_v7();
        let sealed = keys.seal(id, "whsec_c2VjcmV0").unwrap();
        assert!(sealed.starts_with("enc.v1.k1."), "{sealed}");
        assert!(!sealed.contains("whsec_") && !sealed.contains("c2VjcmV0"));
        assert_eq!(keys.open(id, &sealed).unwrap(), "whsec_c2VjcmV0");
        // a fresh nonce every time
        assert_ne!(keys.seal(id, "whsec_c2VjcmV0").unwrap(), sealed);
    }

    #[test]
    fn another_subscriptions_ciphertext_does_not_open() {
        let keys = cipher(&format!("k1:{}", key(1)));
        let sealed = keys
            .seal(Uuid::now_v7(), "a-secret-of-some-length")
            .unwrap();
        assert_eq!(
            keys.open(Uuid::now_v7(), &sealed),
            Err(CryptoError::Tampered)
        );
    }

    #[test]
    fn truncated_tampered_and_foreign_values_are_errors_not_panics() {
        let keys = cipher(&format!("k1:{}", key(1)));
        let id = Uuid::now_v7();
        let sealed = keys.seal(id, "a-secret-of-some-length").unwrap();
        for length in 0..sealed.len() {
            let truncated = &sealed[..length];
            if truncated.starts_with(SEALED_MARKER) {
                assert!(keys.open(id, truncated).is_err(), "{truncated}");
            }
        }
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(keys.open(id, &flipped), Err(CryptoError::Tampered));
        let foreign = sealed.replacen("enc.v1.k1.", "enc.v1.k9.", 1);
        assert_eq!(
            keys.open(id, &foreign),
            Err(CryptoError::UnknownKey("k9".to_owned()))
        );
        assert_eq!(
            SecretCipher::plaintext().open(id, &sealed),
            Err(CryptoError::NoKeys)
        );
        assert_eq!(keys.open(id, "enc.v2.k1.a.b"), Err(CryptoError::Malformed));
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = cipher(&format!("a:{}", key(1)));
        let rotated = cipher(&format!("b:{}, a:{}", key(2), key(1)));
        let id = Uuid::now_v7();
        let under_a = old.seal(id, "a-secret-of-some-length").unwrap();
        assert_eq!(
            rotated.open(id, &under_a).unwrap(),
            "a-secret-of-some-length"
        );
        assert!(!rotated.is_current(&under_a));
        let under_b = rotated.seal(id, "a-secret-of-some-length").unwrap();
        assert!(under_b.starts_with("enc.v1.b."));
        assert!(rotated.is_current(&under_b));
        assert!(!rotated.is_current("a-plain-secret-of-some-length"));
        assert!(SecretCipher::plaintext().is_current("a-plain-secret-of-some-length"));
    }

    #[test]
    fn plain_values_pass_through() {
        let id = Uuid::now_v7();
        let plain = SecretCipher::plaintext();
        assert_eq!(plain.seal(id, "whsec_abc").unwrap(), "whsec_abc");
        assert_eq!(plain.open(id, "whsec_abc").unwrap(), "whsec_abc");
        let keys = cipher(&format!("k1:{}", key(1)));
        assert_eq!(keys.open(id, "whsec_abc").unwrap(), "whsec_abc");
    }

    #[test]
    fn bad_key_lists_are_refused_without_echoing_key_bytes() {
        for (spec, expected) in [
            ("k1", "entry 1 must be"),
            ("k1:abc", "exactly 32 bytes"),
            ("bad.id:AAAA", "key id"),
            (&format!("k1:{},k1:{}", key(1), key(2)), "appears twice"),
        ] {
            let error = SecretCipher::parse(spec).unwrap_err().to_string();
            assert!(error.contains(expected), "{spec}: {error}");
            assert!(!error.contains(&key(1)), "{error}");
        }
    }
}
