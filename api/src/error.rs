//! The one place errors become HTTP responses.
//!
//! Every error body is the envelope [`Problem`] `{code, message, details?, request_id?}`.
//! [`ApiError`] is what handlers return; the `From` impls below are exhaustive over the domain
//! errors, so a new kind of failure does not compile until it has a status. Errors raised by
//! poem itself (unknown route, unparseable parameter, wrong content type) are rewritten into
//! the same envelope by [`render_framework_error`].

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};
use shared::domain::ValidationError;
use store::DbError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 2;

fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The error envelope.
#[derive(Object, Debug, Clone)]
pub struct Problem {
    /// A stable, machine-readable code (`validation_failed`, `not_found`, …).
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// The fields at fault, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<Vec<FieldProblem>>,
    /// The request's id, to find it in the logs.
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

/// One field at fault.
#[derive(Object, Debug, Clone)]
pub struct FieldProblem {
    /// Where: a field name, `events[2]`, or a header name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    fn new(code: &str, message: impl Into<String>) -> Json<Self> {
        Json(Self {
            code: code.to_owned(),
            message: message.into(),
            details: None,
            request_id: current_request_id(),
        })
    }
}

/// Every error status the API answers.
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed: invalid JSON, or a parameter of the wrong type.
    #[oai(status = 400)]
    BadRequest(Json<Problem>),
    /// No valid bearer token.
    #[oai(status = 401)]
    Unauthorized(Json<Problem>),
    /// The token's role may not do this.
    #[oai(status = 403)]
    Forbidden(Json<Problem>),
    /// No such resource.
    #[oai(status = 404)]
    NotFound(Json<Problem>),
    /// The request conflicts with the current state (idempotency key reuse, already replayed).
    #[oai(status = 409)]
    Conflict(Json<Problem>),
    /// The body did not arrive within the read deadline.
    #[oai(status = 408)]
    RequestTimeout(Json<Problem>),
    /// The body is larger than allowed.
    #[oai(status = 413)]
    PayloadTooLarge(Json<Problem>),
    /// The body is not JSON.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but a value is invalid; `details` names the fields.
    #[oai(status = 422)]
    Unprocessable(Json<Problem>),
    /// The request's headers together are larger than allowed.
    #[oai(status = 431)]
    HeadersTooLarge(Json<Problem>),
    /// An unexpected failure; the body carries only the request id.
    #[oai(status = 500)]
    Internal(Json<Problem>),
    /// The database is unavailable; nothing was changed and the request may be retried.
    #[oai(status = 503)]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl ApiError {
    /// 400 with `code` and `message`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(Problem::new(code, message))
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(Problem::new("unauthorized", message))
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(Problem::new("forbidden", message))
    }

    /// 404 naming what was not found.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(Problem::new("not_found", format!("{what} not found")))
    }

    /// 431 naming the limit.
    pub fn headers_too_large(limit: usize) -> Self {
        Self::HeadersTooLarge(Problem::new(
            "headers_too_large",
            format!("the request headers exceed {limit} bytes in all"),
        ))
    }

    /// 409 with a specific code.
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(Problem::new(code, message))
    }

    /// 408 naming the deadline.
    pub fn body_timeout(deadline: std::time::Duration) -> Self {
        Self::RequestTimeout(Problem::new(
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs_f64()
            ),
        ))
    }

    /// 413.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::PayloadTooLarge(Problem::new(
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        ))
    }

    /// 415.
    pub fn unsupported_media_type() -> Self {
        Self::UnsupportedMediaType(Problem::new(
            "unsupported_media_type",
            "the request body must be sent as Content-Type: application/json",
        ))
    }

    /// 503 with `Retry-After`.
    pub fn unavailable() -> Self {
        Self::Unavailable(
            Problem::new(
                "database_unavailable",
                "the database is unavailable; retry later",
            ),
            RETRY_AFTER_SECONDS,
        )
    }

    /// 503 when the process already serves its maximum of requests: shed at once rather
    /// than queued, so memory stays bounded and clients retry elsewhere or later.
    pub fn overloaded() -> Self {
        Self::Unavailable(
            Problem::new("overloaded", "the service is at capacity; retry later"),
            1,
        )
    }

    /// 500, logged here with its cause; the client sees only the request id.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(
            error.message = %error,
            error.cause_chain = ?error,
            request.id = current_request_id().unwrap_or_default(),
            "request failed"
        );
        Self::Internal(Problem::new(
            "internal_error",
            "an unexpected error occurred",
        ))
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        Self::from(vec![error])
    }
}

impl From<Vec<ValidationError>> for ApiError {
    fn from(errors: Vec<ValidationError>) -> Self {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Problem::new("validation_failed", message);
        problem.details = Some(
            errors
                .into_iter()
                .map(|error| FieldProblem {
                    field: error.field,
                    message: error.message,
                })
                .collect(),
        );
        Self::Unprocessable(problem)
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable(ref cause) => {
                tracing::warn!(
                    error.message = %cause,
                    request.id = current_request_id().unwrap_or_default(),
                    "database unavailable, answering 503"
                );
                Self::unavailable()
            }
            DbError::Contention(ref cause) => {
                tracing::warn!(
                    error.message = %cause,
                    request.id = current_request_id().unwrap_or_default(),
                    "transaction kept losing races, answering 503"
                );
                Self::Unavailable(
                    Problem::new(
                        "contention",
                        "the request kept conflicting with concurrent writes and was not applied; retry it",
                    ),
                    1,
                )
            }
            DbError::Constraint { .. }
            | DbError::InvalidUrl(_)
            | DbError::Crypto(_)
            | DbError::Other(_)
            | DbError::Orm(_) => Self::internal(&error),
        }
    }
}

impl From<getrandom::Error> for ApiError {
    fn from(error: getrandom::Error) -> Self {
        Self::internal(&error)
    }
}

/// Rewrites an error that did not come from a handler (poem's routing, parameter parsing,
/// content-type checks) into the envelope; handler errors pass through unchanged.
pub async fn render_framework_error(error: poem::Error) -> Response {
    if error.is_from_response() {
        return error.into_response();
    }
    let status = error.status();
    let (code, message) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", error.to_string()),
        StatusCode::UNAUTHORIZED => (
            "unauthorized",
            "a valid bearer token is required".to_owned(),
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this method is not allowed on this route".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", error.to_string()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "the request body must be sent as Content-Type: application/json".to_owned(),
        ),
        status if status.is_server_error() => {
            tracing::error!(
                error.message = %error,
                request.id = current_request_id().unwrap_or_default(),
                "request failed in the framework"
            );
            ("internal_error", "an unexpected error occurred".to_owned())
        }
        _ => ("error", error.to_string()),
    };
    let Json(problem) = Problem::new(code, message);
    poem::web::Json(serde_json::json!({
        "code": problem.code,
        "message": problem.message,
        "request_id": problem.request_id,
    }))
    .with_status(status)
    .into_response()
}
