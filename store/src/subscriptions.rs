//! Subscription storage. Secrets are sealed here before they are written (see
//! [`shared::crypto`]) and never read back by these queries: no listing or lookup returns them.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, FromJsonQueryResult, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, TransactionTrait,
    sea_query::{Expr, Func},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Db, DbError, Page,
    entity::{
        lanes, routes,
        subscriptions::{self, Column},
    },
};
use shared::{
    crypto::{CryptoError, SecretCipher},
    state::EndpointState,
};

/// A subscription's event types, `*` for all (a JSON array in the database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct EventTypes(pub Vec<String>);

/// A subscription's custom headers (a JSON object in the database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct Headers(pub BTreeMap<String, String>);

/// A subscription without its secrets.
#[derive(Clone, Debug, FromQueryResult)]
pub struct SubscriptionRow {
    /// Subscription id.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// Event types, `*` for all.
    pub event_types: EventTypes,
    /// Whether deliveries are created and sent.
    pub enabled: bool,
    /// Operator's note.
    pub description: Option<String>,
    /// Custom headers.
    pub headers: Headers,
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
    /// Its own limit of requests in flight across the fleet (none: the configured default).
    pub max_in_flight: Option<i32>,
    /// Most deliveries a second, across the fleet (none: no limit).
    pub rate_limit_per_second: Option<f64>,
    /// The first failure since the last success (none: not failing).
    pub failing_since: Option<DateTime<Utc>>,
    /// When its circuit opened (none: closed).
    pub circuit_opened_at: Option<DateTime<Utc>>,
}

impl SubscriptionRow {
    /// Its endpoint's health.
    pub fn state(&self) -> EndpointState {
        EndpointState::of(
            self.enabled,
            self.circuit_opened_at.is_some(),
            self.failing_since.is_some(),
        )
    }
}

/// The columns of a [`SubscriptionRow`]: never the secrets.
const ROW_COLUMNS: [Column; 17] = [
    Column::Id,
    Column::Url,
    Column::EventTypes,
    Column::Enabled,
    Column::Description,
    Column::Headers,
    Column::DisabledReason,
    Column::PreviousSecretExpiresAt,
    Column::LastSuccessAt,
    Column::LastFailureAt,
    Column::ConsecutiveFailures,
    Column::CreatedAt,
    Column::UpdatedAt,
    Column::MaxInFlight,
    Column::RateLimitPerSecond,
    Column::FailingSince,
    Column::CircuitOpenedAt,
];

/// Subscriptions that are not deleted, as [`SubscriptionRow`] columns.
fn live_rows() -> Select<subscriptions::Entity> {
    subscriptions::Entity::find()
        .select_only()
        .columns(ROW_COLUMNS)
        .filter(Column::DeletedAt.is_null())
}

/// Every subscription that is not deleted (the health view ranks them all).
pub(crate) async fn live_subscription_rows(db: &Db) -> Result<Vec<SubscriptionRow>, DbError> {
    Ok(live_rows()
        .into_model::<SubscriptionRow>()
        .all(&db.orm_reader())
        .await?)
}

/// Reads the subscription `id` on `connection` (the writer after a write, so the row read is
/// the one written).
async fn read_row(
    connection: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<SubscriptionRow>, DbError> {
    Ok(live_rows()
        .filter(Column::Id.eq(id))
        .into_model::<SubscriptionRow>()
        .one(connection)
        .await?)
}

/// Makes the routes of subscription `id` the event types `event_types` (none: a disabled or
/// deleted subscription, which is routed nothing), on `connection`: the transaction that
/// changes the subscription, so the publish fan-out never sees one without the other.
async fn route(
    connection: &impl ConnectionTrait,
    id: Uuid,
    event_types: &[String],
) -> Result<(), DbError> {
    routes::Entity::delete_many()
        .filter(routes::Column::SubscriptionId.eq(id))
        .exec(connection)
        .await?;
    let distinct: BTreeSet<&String> = event_types.iter().collect();
    if distinct.is_empty() {
        return Ok(());
    }
    let rows = distinct.into_iter().map(|event_type| routes::ActiveModel {
        event_type: Set(event_type.clone()),
        subscription_id: Set(id),
    });
    routes::Entity::insert_many(rows)
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

fn json(value: impl Serialize) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(value)
        .map_err(|error| DbError::Orm(sea_orm::DbErr::Json(error.to_string())))
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
    /// Its own in-flight limit (none: the configured default).
    pub max_in_flight: Option<i32>,
    /// Most deliveries a second (none: no limit).
    pub rate_limit_per_second: Option<f64>,
}

/// Stores a new subscription, with its lane (see `crate::queue`).
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn insert_subscription(
    db: &Db,
    cipher: &SecretCipher,
    subscription: &NewSubscription,
) -> Result<SubscriptionRow, DbError> {
    let secret = cipher.seal(subscription.id, &subscription.secret)?;
    let row = subscriptions::ActiveModel {
        id: Set(subscription.id),
        url: Set(subscription.url.clone()),
        secret: Set(secret),
        event_types: Set(json(&subscription.event_types)?),
        enabled: Set(subscription.enabled),
        description: Set(subscription.description.clone()),
        headers: Set(json(&subscription.headers)?),
        max_in_flight: Set(subscription.max_in_flight),
        rate_limit_per_second: Set(subscription.rate_limit_per_second),
        // the database's defaults: its clock, in its stored form
        created_at: NotSet,
        updated_at: NotSet,
        ..Default::default()
    };
    let transaction = db.orm_writer().begin().await?;
    subscriptions::Entity::insert(row)
        .exec_without_returning(&transaction)
        .await?;
    lanes::Entity::insert(lanes::ActiveModel {
        id: Set(subscription.id),
        next_allowed_at: NotSet,
    })
    .exec_without_returning(&transaction)
    .await?;
    let routed: &[String] = if subscription.enabled {
        &subscription.event_types
    } else {
        &[]
    };
    route(&transaction, subscription.id, routed).await?;
    let stored = read_row(&transaction, subscription.id).await?;
    transaction.commit().await?;
    stored.ok_or_else(|| DbError::Other(sqlx::Error::RowNotFound))
}

/// Reads a subscription that is not deleted.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn get_subscription(db: &Db, id: Uuid) -> Result<Option<SubscriptionRow>, DbError> {
    read_row(&db.orm_reader(), id).await
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
    Ok(live_rows()
        .apply_if(page.cursor, |q, cursor| q.filter(Column::Id.gt(cursor)))
        .apply_if(enabled, |q, enabled| q.filter(Column::Enabled.eq(enabled)))
        .order_by_asc(Column::Id)
        .limit(page.limit_rows())
        .into_model::<SubscriptionRow>()
        .all(&db.orm_reader())
        .await?)
}

/// A count of subscriptions that are not deleted, by the parts of their state.
#[derive(FromQueryResult)]
struct StateCount {
    enabled: bool,
    circuit_open: bool,
    failing: bool,
    subscriptions: i64,
}

/// How many subscriptions (not deleted) are in each state, every state listed.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn count_subscriptions_by_state(db: &Db) -> Result<Vec<(EndpointState, i64)>, DbError> {
    let circuit_open = Expr::col(Column::CircuitOpenedAt).is_not_null();
    let failing = Expr::col(Column::FailingSince).is_not_null();
    let counts = subscriptions::Entity::find()
        .select_only()
        .column(Column::Enabled)
        .column_as(circuit_open.clone(), "circuit_open")
        .column_as(failing.clone(), "failing")
        .column_as(Expr::col(Column::Id).count(), "subscriptions")
        .filter(Column::DeletedAt.is_null())
        .group_by(Column::Enabled)
        .group_by(circuit_open)
        .group_by(failing)
        .into_model::<StateCount>()
        .all(&db.orm_reader())
        .await?;
    Ok(EndpointState::ALL
        .iter()
        .map(|state| {
            let total = counts
                .iter()
                .filter(|count| {
                    EndpointState::of(count.enabled, count.circuit_open, count.failing) == *state
                })
                .map(|count| count.subscriptions)
                .sum();
            (*state, total)
        })
        .collect())
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
    /// `Some(None)` returns to the configured in-flight limit.
    pub max_in_flight: Option<Option<i32>>,
    /// `Some(None)` removes the rate limit.
    pub rate_limit_per_second: Option<Option<f64>>,
}

/// The reason a subscription disabled by hand shows.
const DISABLED_BY_OPERATOR: &str = "disabled_by_operator";

/// The reason of a subscription the service disabled for failing too long; its lane is held
/// (its pending deliveries kept) until it is enabled again. Written as a literal by the
/// Postgres completion statement.
pub(crate) const FAILING_TOO_LONG: &str = "endpoint_failing";

/// Applies a partial update to a subscription that is not deleted.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn update_subscription(
    db: &Db,
    id: Uuid,
    patch: &SubscriptionPatch,
) -> Result<Option<SubscriptionRow>, DbError> {
    let mut update = subscriptions::Entity::update_many()
        .col_expr(Column::UpdatedAt, db.now())
        .filter(Column::Id.eq(id))
        .filter(Column::DeletedAt.is_null());
    if let Some(url) = &patch.url {
        update = update.col_expr(Column::Url, Expr::value(url.clone()));
    }
    if let Some(event_types) = &patch.event_types {
        update = update.col_expr(Column::EventTypes, Expr::value(json(event_types)?));
    }
    if let Some(description) = &patch.description {
        update = update.col_expr(Column::Description, Expr::value(description.clone()));
    }
    if let Some(headers) = &patch.headers {
        update = update.col_expr(Column::Headers, Expr::value(json(headers)?));
    }
    if let Some(max_in_flight) = patch.max_in_flight {
        update = update.col_expr(Column::MaxInFlight, Expr::value(max_in_flight));
    }
    if let Some(rate) = patch.rate_limit_per_second {
        update = update.col_expr(Column::RateLimitPerSecond, Expr::value(rate));
    }
    match patch.enabled {
        // Re-enabling clears why it was disabled and its endpoint's record: the circuit closes
        // and the deliveries held (a subscription disabled for failing too long keeps them)
        // flow again. An operator who knows the endpoint is back may do this on an enabled
        // subscription too.
        Some(true) => {
            let none = Option::<DateTime<Utc>>::None;
            update = update
                .col_expr(Column::Enabled, Expr::value(true))
                .col_expr(Column::DisabledReason, Expr::value(Option::<String>::None))
                .col_expr(Column::FailingSince, Expr::value(none))
                .col_expr(Column::FailureWindowStartedAt, Expr::value(none))
                .col_expr(Column::FailureWindowCount, Expr::value(0))
                .col_expr(Column::CircuitOpenedAt, Expr::value(none))
                .col_expr(Column::CircuitProbes, Expr::value(0))
                .col_expr(Column::ConsecutiveFailures, Expr::value(0));
        }
        // disabling keeps a reason the service gave (`endpoint_gone`, …)
        Some(false) => {
            update = update
                .col_expr(Column::Enabled, Expr::value(false))
                .col_expr(
                    Column::DisabledReason,
                    Func::coalesce([
                        Expr::col(Column::DisabledReason),
                        Expr::value(DISABLED_BY_OPERATOR),
                    ])
                    .into(),
                );
        }
        None => {}
    }
    let transaction = db.orm_writer().begin().await?;
    if update.exec(&transaction).await?.rows_affected == 0 {
        return Ok(None);
    }
    let row = read_row(&transaction, id).await?;
    // the routes follow the subscription as it now is: its types, if it is enabled
    let reroute = patch.event_types.is_some() || patch.enabled.is_some();
    if let Some(row) = row.as_ref().filter(|_| reroute) {
        let routed: &[String] = if row.enabled { &row.event_types.0 } else { &[] };
        route(&transaction, id, routed).await?;
    }
    let enabled = patch.enabled == Some(true);
    if enabled {
        release_lane(db, &transaction, id).await?;
    }
    transaction.commit().await?;
    if enabled {
        // the lane's held rows are due: workers asleep until their next poll come now
        crate::notify_workers(db).await?;
    }
    Ok(row)
}

/// Lets the lease take from the lane of subscription `id` again from now: a hold (an open
/// circuit's wait for its probe, or a subscription disabled for failing too long) ends.
async fn release_lane(db: &Db, connection: &impl ConnectionTrait, id: Uuid) -> Result<(), DbError> {
    lanes::Entity::update_many()
        .col_expr(lanes::Column::NextAllowedAt, db.now())
        .filter(lanes::Column::Id.eq(id))
        .filter(Expr::col(lanes::Column::NextAllowedAt).gt(db.now()))
        .exec(connection)
        .await?;
    Ok(())
}

/// Soft-deletes a subscription; returns whether it existed. Queued deliveries of a deleted
/// subscription complete `cancelled` at send time.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn delete_subscription(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let transaction = db.orm_writer().begin().await?;
    let deleted = subscriptions::Entity::update_many()
        .col_expr(Column::DeletedAt, db.now())
        .col_expr(Column::Enabled, Expr::value(false))
        .col_expr(Column::UpdatedAt, db.now())
        .filter(Column::Id.eq(id))
        .filter(Column::DeletedAt.is_null())
        .exec(&transaction)
        .await?;
    if deleted.rows_affected == 0 {
        return Ok(false);
    }
    route(&transaction, id, &[]).await?;
    // its queued deliveries are cancelled as they are leased, held ones too
    release_lane(db, &transaction, id).await?;
    transaction.commit().await?;
    Ok(true)
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
    let grace = Duration::try_from_secs_f64(grace_seconds).unwrap_or_default();
    // the old value moves to previous_secret as it is stored: both are sealed for this id
    let new_secret = cipher.seal(id, new_secret)?;
    let rotate = subscriptions::Entity::update_many()
        .col_expr(Column::PreviousSecret, Expr::col(Column::Secret))
        .col_expr(Column::PreviousSecretExpiresAt, db.now_plus(grace))
        .col_expr(Column::Secret, Expr::value(new_secret))
        .col_expr(Column::UpdatedAt, db.now())
        .filter(Column::Id.eq(id))
        .filter(Column::DeletedAt.is_null());
    let transaction = db.orm_writer().begin().await?;
    if rotate.exec(&transaction).await?.rows_affected == 0 {
        return Ok(None);
    }
    let row = read_row(&transaction, id).await?;
    transaction.commit().await?;
    Ok(row)
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
#[derive(FromQueryResult)]
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

/// Every subscription's secrets, deleted ones included (their sealed values stay stored),
/// `batch` rows after `cursor`.
async fn list_stored_secrets(
    db: &Db,
    cursor: Option<Uuid>,
    batch: i64,
) -> Result<Vec<StoredSecrets>, DbError> {
    Ok(subscriptions::Entity::find()
        .select_only()
        .columns([Column::Id, Column::Secret, Column::PreviousSecret])
        .apply_if(cursor, |q, cursor| q.filter(Column::Id.gt(cursor)))
        .order_by_asc(Column::Id)
        .limit(u64::try_from(batch).unwrap_or_default())
        .into_model::<StoredSecrets>()
        .all(&db.orm_reader())
        .await?)
}

/// Compare-and-set: when the secrets changed since they were read (a rotation meanwhile), the
/// row is left alone; it was written under the current key anyway. Returns whether the row
/// was written.
async fn replace_stored_secrets(db: &Db, replaced: ReplacedSecrets<'_>) -> Result<bool, DbError> {
    let read_previous = match &replaced.read.previous_secret {
        Some(previous) => Column::PreviousSecret.eq(previous.clone()),
        None => Column::PreviousSecret.is_null(),
    };
    let updated = subscriptions::Entity::update_many()
        .col_expr(Column::Secret, Expr::value(replaced.secret))
        .col_expr(
            Column::PreviousSecret,
            Expr::value(replaced.previous_secret),
        )
        .filter(Column::Id.eq(replaced.id))
        .filter(Column::Secret.eq(replaced.read.secret.clone()))
        .filter(read_previous)
        .exec(&db.orm_writer())
        .await?;
    Ok(updated.rows_affected == 1)
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
    // Every sealed value, current and previous, of every subscription; the key id is the
    // third dot-separated part of `enc.v1.<key>.<nonce>.<ct>`, split here because SQLite has
    // no split function. This runs once at a worker's start.
    let sealed = Column::Secret
        .like("enc.%")
        .or(Column::PreviousSecret.like("enc.%"));
    let stored = subscriptions::Entity::find()
        .select_only()
        .columns([Column::Id, Column::Secret, Column::PreviousSecret])
        .filter(sealed)
        .into_model::<StoredSecrets>()
        .all(&db.orm_reader())
        .await?;
    let mut counts = BTreeMap::<String, i64>::new();
    let values = stored
        .iter()
        .flat_map(|row| std::iter::once(&row.secret).chain(row.previous_secret.as_ref()));
    for value in values.filter(|value| value.starts_with("enc.")) {
        let key_id = value.split('.').nth(2).unwrap_or_default();
        *counts.entry(key_id.to_owned()).or_default() += 1;
    }
    let known = cipher.key_ids();
    Ok(counts
        .into_iter()
        .filter(|(key_id, _)| !known.contains(&key_id.as_str()))
        .collect())
}
