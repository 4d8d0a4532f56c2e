//! Subscription storage. Secrets are written here and never read back by these queries: no
//! listing or lookup returns them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::db::{DbError, Page};

/// A subscription without its secrets.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Subscription id.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// Event types, `*` for all.
    pub event_types: Json<Vec<String>>,
    /// Whether deliveries are created and sent.
    pub enabled: bool,
    /// Operator's note.
    pub description: Option<String>,
    /// Custom headers.
    pub headers: Json<BTreeMap<String, String>>,
    /// Why it was disabled (`disabled_by_operator`, `endpoint_gone`, …).
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Last delivered attempt.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last failed attempt.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Failures since the last success.
    pub consecutive_failures: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A validated subscription to store.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// A fresh UUID v7.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// Signing secret.
    pub secret: String,
    /// Event types.
    pub event_types: Vec<String>,
    /// Enabled at creation.
    pub enabled: bool,
    /// Operator's note.
    pub description: Option<String>,
    /// Custom headers.
    pub headers: BTreeMap<String, String>,
}

/// Stores a new subscription.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn insert_subscription(
    pool: &PgPool,
    subscription: &NewSubscription,
) -> Result<SubscriptionRow, DbError> {
    Ok(sqlx::query_as(include_str!("sql/insert_subscription.sql"))
        .bind(subscription.id)
        .bind(&subscription.url)
        .bind(&subscription.secret)
        .bind(Json(&subscription.event_types))
        .bind(subscription.enabled)
        .bind(subscription.description.as_deref())
        .bind(Json(&subscription.headers))
        .fetch_one(pool)
        .await?)
}

/// Reads a subscription that is not deleted.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn get_subscription(pool: &PgPool, id: Uuid) -> Result<Option<SubscriptionRow>, DbError> {
    Ok(sqlx::query_as(include_str!("sql/get_subscription.sql"))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Lists subscriptions that are not deleted, oldest first.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_subscriptions(
    pool: &PgPool,
    enabled: Option<bool>,
    page: Page,
) -> Result<Vec<SubscriptionRow>, DbError> {
    Ok(sqlx::query_as(include_str!("sql/list_subscriptions.sql"))
        .bind(page.cursor)
        .bind(enabled)
        .bind(page.limit)
        .fetch_all(pool)
        .await?)
}

/// A partial update; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionPatch {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    pub event_types: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    /// New custom headers (replacing all).
    pub headers: Option<BTreeMap<String, String>>,
}

/// Applies a partial update to a subscription that is not deleted.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn update_subscription(
    pool: &PgPool,
    id: Uuid,
    patch: &SubscriptionPatch,
) -> Result<Option<SubscriptionRow>, DbError> {
    Ok(sqlx::query_as(include_str!("sql/update_subscription.sql"))
        .bind(id)
        .bind(patch.url.as_deref())
        .bind(patch.event_types.as_ref().map(Json))
        .bind(patch.enabled)
        .bind(patch.description.is_some())
        .bind(patch.description.clone().flatten())
        .bind(patch.headers.as_ref().map(Json))
        .fetch_optional(pool)
        .await?)
}

/// Soft-deletes a subscription; returns whether it existed.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn delete_subscription(pool: &PgPool, id: Uuid) -> Result<bool, DbError> {
    let deleted: Option<Uuid> = sqlx::query_scalar(include_str!("sql/delete_subscription.sql"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(deleted.is_some())
}

/// Replaces the secret; the old one keeps signing for `grace_seconds`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn rotate_subscription_secret(
    pool: &PgPool,
    id: Uuid,
    new_secret: &str,
    grace_seconds: f64,
) -> Result<Option<SubscriptionRow>, DbError> {
    Ok(
        sqlx::query_as(include_str!("sql/rotate_subscription_secret.sql"))
            .bind(id)
            .bind(new_secret)
            .bind(grace_seconds)
            .fetch_optional(pool)
            .await?,
    )
}
