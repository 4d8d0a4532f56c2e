//! Subscription storage on SQLite. As on Postgres, secrets are sealed before they are written
//! and no listing or lookup returns them.

use std::time::Duration;

use sqlx::types::Json;
use uuid::Uuid;

use super::{SqliteDb, now, plus};
use crate::{
    DbError, NewSubscription, Page, SubscriptionPatch, SubscriptionRow,
    subscriptions::{ReplacedSecrets, StoredSecrets},
};
use shared::crypto::SecretCipher;

/// The columns of a [`SubscriptionRow`].
macro_rules! subscription_columns {
    () => {
        "id, url, event_types, enabled, description, headers, disabled_reason,
         previous_secret_expires_at, last_success_at, last_failure_at, consecutive_failures,
         created_at, updated_at"
    };
}

impl SqliteDb {
    pub(crate) async fn insert_subscription(
        &self,
        cipher: &SecretCipher,
        subscription: &NewSubscription,
    ) -> Result<SubscriptionRow, DbError> {
        let secret = cipher.seal(subscription.id, &subscription.secret)?;
        let mut transaction = self.write().await?;
        let row = sqlx::query_as(concat!(
            "insert into subscriptions
               (id, url, secret, event_types, enabled, description, headers, created_at,
                updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ",
            now!(),
            ", ",
            now!(),
            ")
             returning ",
            subscription_columns!()
        ))
        .bind(subscription.id)
        .bind(&subscription.url)
        .bind(secret)
        .bind(Json(&subscription.event_types))
        .bind(subscription.enabled)
        .bind(subscription.description.as_deref())
        .bind(Json(&subscription.headers))
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(row)
    }

    pub(crate) async fn get_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<SubscriptionRow>, DbError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            subscription_columns!(),
            " from subscriptions where id = ?1 and deleted_at is null"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub(crate) async fn list_subscriptions(
        &self,
        enabled: Option<bool>,
        page: Page,
    ) -> Result<Vec<SubscriptionRow>, DbError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            subscription_columns!(),
            " from subscriptions
             where deleted_at is null
               and (?1 is null or id > ?1)
               and (?2 is null or enabled = ?2)
             order by id
             limit ?3"
        ))
        .bind(page.cursor)
        .bind(enabled)
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?)
    }

    pub(crate) async fn update_subscription(
        &self,
        id: Uuid,
        patch: &SubscriptionPatch,
    ) -> Result<Option<SubscriptionRow>, DbError> {
        let mut transaction = self.write().await?;
        // ?5 says whether the description is being set (it may be set to null); re-enabling
        // clears the reason the subscription was disabled.
        let row = sqlx::query_as(concat!(
            "update subscriptions
             set url             = coalesce(?2, url),
                 event_types     = coalesce(?3, event_types),
                 enabled         = coalesce(?4, enabled),
                 description     = case when ?5 then ?6 else description end,
                 headers         = coalesce(?7, headers),
                 disabled_reason = case when ?4 = 1 then null
                                        when ?4 = 0 then coalesce(disabled_reason, 'disabled_by_operator')
                                        else disabled_reason end,
                 updated_at      = ",
            now!(),
            "
             where id = ?1 and deleted_at is null
             returning ",
            subscription_columns!()
        ))
        .bind(id)
        .bind(patch.url.as_deref())
        .bind(patch.event_types.as_ref().map(Json))
        .bind(patch.enabled)
        .bind(patch.description.is_some())
        .bind(patch.description.clone().flatten())
        .bind(patch.headers.as_ref().map(Json))
        .fetch_optional(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(row)
    }

    pub(crate) async fn delete_subscription(&self, id: Uuid) -> Result<bool, DbError> {
        let mut transaction = self.write().await?;
        let deleted: Option<Uuid> = sqlx::query_scalar(concat!(
            "update subscriptions
             set deleted_at = ",
            now!(),
            ", enabled = 0, updated_at = ",
            now!(),
            "
             where id = ?1 and deleted_at is null
             returning id"
        ))
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(deleted.is_some())
    }

    pub(crate) async fn rotate_subscription_secret(
        &self,
        cipher: &SecretCipher,
        id: Uuid,
        new_secret: &str,
        grace_seconds: f64,
    ) -> Result<Option<SubscriptionRow>, DbError> {
        let new_secret = cipher.seal(id, new_secret)?;
        let grace = Duration::try_from_secs_f64(grace_seconds).unwrap_or_default();
        let mut transaction = self.write().await?;
        let row = sqlx::query_as(concat!(
            "update subscriptions
             set previous_secret = secret,
                 previous_secret_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3),
                 secret = ?2,
                 updated_at = ",
            now!(),
            "
             where id = ?1 and deleted_at is null
             returning ",
            subscription_columns!()
        ))
        .bind(id)
        .bind(new_secret)
        .bind(plus(grace))
        .fetch_optional(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(row)
    }

    pub(crate) async fn list_stored_secrets(
        &self,
        cursor: Option<Uuid>,
        batch: i64,
    ) -> Result<Vec<StoredSecrets>, DbError> {
        Ok(sqlx::query_as(
            "select id, secret, previous_secret
             from subscriptions
             where ?1 is null or id > ?1
             order by id
             limit ?2",
        )
        .bind(cursor)
        .bind(batch)
        .fetch_all(&self.reader)
        .await?)
    }

    pub(crate) async fn replace_stored_secrets(
        &self,
        replaced: ReplacedSecrets<'_>,
    ) -> Result<bool, DbError> {
        let mut transaction = self.write().await?;
        let updated = sqlx::query(
            "update subscriptions
             set secret = ?2, previous_secret = ?3
             where id = ?1 and secret = ?4 and previous_secret is ?5",
        )
        .bind(replaced.id)
        .bind(replaced.secret)
        .bind(replaced.previous_secret)
        .bind(&replaced.read.secret)
        .bind(replaced.read.previous_secret.as_deref())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    /// `(key id, count)` of every sealed secret, current and previous.
    pub(crate) async fn count_sealed_secrets_by_key(&self) -> Result<Vec<(String, i64)>, DbError> {
        // The key id is the third dot-separated part of `enc.v1.<key>.<nonce>.<ct>`; SQLite has
        // no split function, so the values are read and split here.
        let stored: Vec<String> = sqlx::query_scalar(
            "select secret from subscriptions where secret like 'enc.%'
             union all
             select previous_secret from subscriptions where previous_secret like 'enc.%'",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for value in stored {
            let key_id = value.split('.').nth(2).unwrap_or_default().to_owned();
            *counts.entry(key_id).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }
}
