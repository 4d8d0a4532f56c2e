//! Bearer-token authentication.
//!
//! [`Caller`] is an OpenAPI extractor: operations that take one are documented as needing the
//! bearer scheme, and are refused with 401 before the handler runs when the token is missing or
//! unknown. With authentication disabled every caller is an anonymous admin.
//!
//! [`Authenticator::caller`] runs on the headers alone, before the request takes a load-shedding
//! permit or has its body read (see `crate::admit`): a request without a valid token holds no
//! capacity and makes the server buffer nothing.

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme, auth::Bearer,
    registry::Registry,
};
use shared::{
    auth::{ApiTokens, Role},
    config::AuthConfig,
};

use crate::error::ApiError;

/// The idempotency scope of requests made while authentication is disabled.
pub const ANONYMOUS_SCOPE: &str = "anonymous";

/// How requests are authenticated; shared with every request as poem data.
#[derive(Clone, Debug)]
pub struct Authenticator(Arc<AuthConfig>);

impl Authenticator {
    /// Wraps the configured tokens (or the disabled mode).
    pub fn new(config: AuthConfig) -> Self {
        Self(Arc::new(config))
    }

    /// The caller the request's headers name, or why it has none.
    ///
    /// # Errors
    /// Returns [`ApiError::Unauthorized`] when the token is missing, malformed or unknown.
    pub fn caller(&self, request: &Request) -> Result<Caller, ApiError> {
        match self.0.as_ref() {
            AuthConfig::Disabled => Ok(Caller {
                role: Role::Admin,
                scope: ANONYMOUS_SCOPE.to_owned(),
            }),
            AuthConfig::Tokens(tokens) => authenticate(tokens, request),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    role: Role,
    scope: String,
}

impl Caller {
    /// Refuses with 403 unless the caller is an admin.
    ///
    /// # Errors
    /// Returns [`ApiError::Forbidden`] for publishers.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Publisher => Err(ApiError::forbidden("this operation needs an admin token")),
        }
    }

    /// The scope of this caller's idempotency keys: its token's name.
    pub fn idempotency_scope(&self) -> &str {
        &self.scope
    }
}

/// The OpenAPI description of the bearer scheme; [`Caller`] borrows its registration.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth")]
#[allow(dead_code, reason = "only its OpenAPI registration is used")]
struct BearerAuth(Bearer);

fn authenticate(tokens: &ApiTokens, request: &Request) -> Result<Caller, ApiError> {
    let header = request
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let presented = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
    let token = tokens
        .authenticate(presented)
        .ok_or_else(|| ApiError::unauthorized("unknown API token"))?;
    Ok(Caller {
        role: token.role(),
        scope: token.name().to_owned(),
    })
}

impl<'a> ApiExtractor<'a> for Caller {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <BearerAuth as ApiExtractor<'a>>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <BearerAuth as ApiExtractor<'a>>::security_schemes()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // admitted requests carry the caller found from their headers
        if let Some(caller) = request.data::<Self>() {
            return Ok(caller.clone());
        }
        let Some(authenticator) = request.data::<Authenticator>() else {
            return Err(
                ApiError::internal(&std::io::Error::other("authenticator not installed")).into(),
            );
        };
        authenticator.caller(request).map_err(Into::into)
    }
}
