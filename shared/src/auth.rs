//! API tokens and roles.
//!
//! Tokens come from `IH_API_TOKENS` as `role:token` pairs. A token's name (used as the
//! idempotency scope of what it publishes) is derived from a hash of the token, so it is stable
//! when the list is reordered and reveals nothing of the token.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May publish events only.
    Publisher,
    /// May do everything.
    Admin,
}

impl Role {
    /// Returns the role's name as written in `IH_API_TOKENS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Admin => "admin",
        }
    }
}

/// Shortest token accepted; shorter ones are guessable.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// One configured token.
#[derive(Clone)]
pub struct ApiToken {
    role: Role,
    token: String,
    name: String,
}

impl ApiToken {
    /// The token's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The token's stable, non-secret name: `<role>-<first 12 hex digits of its SHA-256>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token itself, for clients in tests and tools.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("role", &self.role)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct ApiTokens(Vec<ApiToken>);

/// Why `IH_API_TOKENS` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenConfigError {
    /// An entry is not `role:token`.
    #[error("entry {0} is not `role:token`")]
    Malformed(usize),
    /// The role is neither `admin` nor `publisher`.
    #[error("entry {index} has unknown role `{role}` (expected admin or publisher)")]
    UnknownRole {
        /// 1-based position.
        index: usize,
        /// The role as written.
        role: String,
    },
    /// The token is too short.
    #[error("entry {0} has a token shorter than {MIN_TOKEN_LENGTH} characters")]
    TooShort(usize),
    /// The same token appears twice.
    #[error("entry {0} repeats an earlier token")]
    Duplicate(usize),
}

impl ApiTokens {
    /// Parses `admin:<token>,publisher:<token>`.
    ///
    /// # Errors
    /// Returns the first malformed entry.
    pub fn parse(raw: &str) -> Result<Self, TokenConfigError> {
        let mut tokens: Vec<ApiToken> = Vec::new();
        for (position, entry) in raw.split(',').map(str::trim).enumerate() {
            let index = position + 1;
            if entry.is_empty() {
                continue;
            }
            let (role, token) = entry
                .split_once(':')
                .ok_or(TokenConfigError::Malformed(index))?;
            let role = match role.trim() {
                "admin" => Role::Admin,
                "publisher" => Role::Publisher,
                other => {
                    return Err(TokenConfigError::UnknownRole {
                        index,
                        role: other.to_owned(),
                    });
                }
            };
            let token = token.trim();
            if token.chars().count() < MIN_TOKEN_LENGTH {
                return Err(TokenConfigError::TooShort(index));
            }
            if tokens.iter().any(|existing| existing.token == token) {
                return Err(TokenConfigError::Duplicate(index));
            }
            let digest = Sha256::digest(token.as_bytes());
            let fingerprint: String = digest
                .iter()
                .take(6)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            tokens.push(ApiToken {
                role,
                token: token.to_owned(),
                name: format!("{}-{fingerprint}", role.as_str()),
            });
        }
        Ok(Self(tokens))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the tokens.
    pub fn iter(&self) -> impl Iterator<Item = &ApiToken> {
        self.0.iter()
    }

    /// Finds the token equal to `presented`. Every configured token is compared in constant
    /// time, and all of them are always compared, so the answer's timing says nothing about
    /// which prefix matched.
    pub fn authenticate(&self, presented: &str) -> Option<&ApiToken> {
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.token.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(token);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_roles_and_stable_names() {
        let tokens =
            ApiTokens::parse("admin:aaaaaaaaaaaaaaaaaaaa, publisher:bbbbbbbbbbbbbbbbbbbb").unwrap();
        let admin = tokens.authenticate("aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(admin.role(), Role::Admin);
        assert!(admin.name().starts_with("admin-"));
        let reordered =
            ApiTokens::parse("publisher:bbbbbbbbbbbbbbbbbbbb,admin:aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(
            reordered
                .authenticate("aaaaaaaaaaaaaaaaaaaa")
                .unwrap()
                .name(),
            admin.name()
        );
        assert!(tokens.authenticate("aaaaaaaaaaaaaaaaaaa").is_none());
        assert!(tokens.authenticate("").is_none());
    }

    #[test]
    fn malformed_token_lists_are_refused() {
        assert_eq!(
            ApiTokens::parse("admin").unwrap_err(),
            TokenConfigError::Malformed(1)
        );
        assert!(matches!(
            ApiTokens::parse("root:aaaaaaaaaaaaaaaaaaaa").unwrap_err(),
            TokenConfigError::UnknownRole { index: 1, .. }
        ));
        assert_eq!(
            ApiTokens::parse("admin:short").unwrap_err(),
            TokenConfigError::TooShort(1)
        );
        assert_eq!(
            ApiTokens::parse("admin:aaaaaaaaaaaaaaaaaaaa,publisher:aaaaaaaaaaaaaaaaaaaa")
                .unwrap_err(),
            TokenConfigError::Duplicate(2)
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let tokens = ApiTokens::parse("admin:aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(!format!("{tokens:?}").contains("aaaaaaaaaaaaaaaaaaaa"));
    }
}
