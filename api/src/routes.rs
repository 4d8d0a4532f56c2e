//! The `/api/v1` operations, one module per resource.

use poem_openapi::Tags;

use crate::{
    error::ApiError,
    models::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE},
};
use shared::domain::ValidationError;

pub mod admin;
pub mod events;
pub mod subscriptions;

/// Groups of operations in the OpenAPI document.
#[derive(Tags)]
pub enum ApiTags {
    /// Publishing and reading events.
    Events,
    /// Managing webhook subscriptions.
    Subscriptions,
    /// Operating deliveries: attempts, dead letters, replay.
    Admin,
}

/// Validates a `limit` query parameter.
///
/// # Errors
/// Returns 422 naming `limit` when it is out of range.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
        Some(_) => Err(ValidationError::new(
            "limit",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )
        .into()),
    }
}
