//! Subscription storage. Secrets are sealed here before they are written (see
//! [`shared::crypto`]) and never read back by these queries: no listing or lookup returns them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Db, DbError, Page};
use shared::crypto::{CryptoError, SecretCipher};

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
    db: &Db,
    cipher: &SecretCipher,
    subscription: &NewSubscription,
) -> Result<SubscriptionRow, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.insert_subscription(cipher, subscription).await,
    };
    let secret = cipher.seal(subscription.id, &subscription.secret)?;
    Ok(sqlx::query_as(include_str!("sql/insert_subscription.sql"))
        .bind(subscription.id)
        .bind(&subscription.url)
        .bind(secret)
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
pub async fn get_subscription(db: &Db, id: Uuid) -> Result<Option<SubscriptionRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.get_subscription(id).await,
    };
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
    db: &Db,
    enabled: Option<bool>,
    page: Page,
) -> Result<Vec<SubscriptionRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.list_subscriptions(enabled, page).await,
    };
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
    db: &Db,
    id: Uuid,
    patch: &SubscriptionPatch,
) -> Result<Option<SubscriptionRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.update_subscription(id, patch).await,
    };
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
pub async fn delete_subscription(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.delete_subscription(id).await,
    };
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
    db: &Db,
    cipher: &SecretCipher,
    id: Uuid,
    new_secret: &str,
    grace_seconds: f64,
) -> Result<Option<SubscriptionRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => {
            return sqlite
                .rotate_subscription_secret(cipher, id, new_secret, grace_seconds)
                .await;
        }
    };
    // the old value moves to previous_secret as it is stored: both are sealed for this id
    let new_secret = cipher.seal(id, new_secret)?;
    Ok(
        sqlx::query_as(include_str!("sql/rotate_subscription_secret.sql"))
            .bind(id)
            .bind(new_secret)
            .bind(grace_seconds)
            .fetch_optional(pool)
            .await?,
    )
}

/// What one re-encryption pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Subscriptions looked at.
    pub examined: u64,
    /// Subscriptions whose secrets were sealed again under the current key.
    pub reencrypted: u64,
    /// Subscriptions changed by someone else while this pass ran (already current).
    pub changed_meanwhile: u64,
    /// Subscriptions whose secrets could not be opened, with why.
    pub failed: Vec<(Uuid, CryptoError)>,
}

/// A subscription's stored (sealed) secrets, as `ih-migrate reencrypt` reads them.
#[derive(sqlx::FromRow)]
pub(crate) struct StoredSecrets {
    pub(crate) id: Uuid,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
}

/// New values for a subscription's secrets, written only if they are still as `read`.
pub(crate) struct ReplacedSecrets<'a> {
    pub(crate) id: Uuid,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) read: &'a StoredSecrets,
}

async fn list_stored_secrets(
    db: &Db,
    cursor: Option<Uuid>,
    batch: i64,
) -> Result<Vec<StoredSecrets>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.list_stored_secrets(cursor, batch).await,
    };
    Ok(sqlx::query_as(include_str!("sql/list_stored_secrets.sql"))
        .bind(cursor)
        .bind(batch)
        .fetch_all(pool)
        .await?)
}

/// Compare-and-set; returns whether the row was written.
async fn replace_stored_secrets(db: &Db, replaced: ReplacedSecrets<'_>) -> Result<bool, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.replace_stored_secrets(replaced).await,
    };
    let updated = sqlx::query(include_str!("sql/replace_stored_secrets.sql"))
        .bind(replaced.id)
        .bind(replaced.secret)
        .bind(replaced.previous_secret)
        .bind(&replaced.read.secret)
        .bind(replaced.read.previous_secret.as_deref())
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Seals every stored secret under the cipher's current key, `batch` rows per read; values
/// already current are left alone, so the pass can be interrupted and run again.
///
/// # Errors
/// Returns [`DbError`] when the database fails; the rows written until then stay written.
pub async fn reencrypt_secrets(
    db: &Db,
    cipher: &SecretCipher,
    batch: i64,
) -> Result<ReencryptReport, DbError> {
    let mut report = ReencryptReport::default();
    let mut cursor: Option<Uuid> = None;
    loop {
        let rows = list_stored_secrets(db, cursor, batch).await?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        cursor = Some(last.id);
        for row in rows {
            report.examined += 1;
            let resealed = reseal(cipher, row.id, &row.secret).and_then(|secret| {
                let previous = row
                    .previous_secret
                    .as_deref()
                    .map(|previous| reseal(cipher, row.id, previous))
                    .transpose()?;
                Ok((secret, previous))
            });
            let (secret, previous) = match resealed {
                Ok(resealed) => resealed,
                Err(error) => {
                    report.failed.push((row.id, error));
                    continue;
                }
            };
            if secret == row.secret && previous == row.previous_secret {
                // already under the current key
                continue;
            }
            let replaced = ReplacedSecrets {
                id: row.id,
                secret,
                previous_secret: previous,
                read: &row,
            };
            if replace_stored_secrets(db, replaced).await? {
                report.reencrypted += 1;
            } else {
                report.changed_meanwhile += 1;
            }
        }
    }
}

/// The stored value under the current key: unchanged when it already is.
fn reseal(cipher: &SecretCipher, id: Uuid, stored: &str) -> Result<String, CryptoError> {
    if cipher.is_current(stored) {
        return Ok(stored.to_owned());
    }
    cipher.seal(id, &cipher.open(id, stored)?)
}

/// Stored secrets sealed with keys the cipher does not hold: `(key id, count)`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn secrets_without_key(
    db: &Db,
    cipher: &SecretCipher,
) -> Result<Vec<(String, i64)>, DbError> {
    let counts: Vec<(String, i64)> = match db {
        Db::Postgres(pool) => {
            sqlx::query_as(include_str!("sql/count_sealed_secrets_by_key.sql"))
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(sqlite) => sqlite.count_sealed_secrets_by_key().await?,
    };
    let known = cipher.key_ids();
    Ok(counts
        .into_iter()
        .filter(|(key_id, _)| !known.contains(&key_id.as_str()))
        .collect())
}
