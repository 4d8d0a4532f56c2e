//! Operator queries: attempts, deliveries, dead letters and their replay.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Db, DbError, DeliveryRow, Page};
use shared::state::{AttemptOutcome, DeliveryStatus, Target};

/// One recorded attempt.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    /// Attempt id.
    pub id: Uuid,
    /// Its delivery.
    pub delivery_id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Where its delivery went (absent when the delivery was pruned).
    pub target: Option<Target>,
    /// 1 for the first try.
    pub attempt_number: i32,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's status, when it answered.
    pub response_status: Option<i32>,
    /// The start of the receiver's body.
    pub response_body: Option<String>,
    /// What went wrong, without the URL's query or credentials.
    pub error: Option<String>,
    /// The worker that made it.
    pub worker_id: Option<String>,
    /// The receiving system's id for what was created (Slack's `ts`).
    pub external_id: Option<String>,
    /// What it led to.
    pub outcome: AttemptOutcome,
}

/// Lists every attempt of every delivery of an event; `None` when the event does not exist.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_event_attempts(
    db: &Db,
    event_id: Uuid,
) -> Result<Option<Vec<AttemptRow>>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.list_event_attempts(event_id).await,
    };
    let exists: bool = sqlx::query_scalar(include_str!("sql/event_exists.sql"))
        .bind(event_id)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let attempts = sqlx::query_as(include_str!("sql/list_event_attempts.sql"))
        .bind(event_id)
        .fetch_all(pool)
        .await?;
    Ok(Some(attempts))
}

/// Filters of the delivery listing.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this subscription.
    pub subscription_id: Option<Uuid>,
    /// Only this event.
    pub event_id: Option<Uuid>,
}

/// Lists deliveries, newest first.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_deliveries(
    db: &Db,
    filter: &DeliveryFilter,
    page: Page,
) -> Result<Vec<DeliveryRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.list_deliveries(filter, page).await,
    };
    Ok(sqlx::query_as(include_str!("sql/list_deliveries.sql"))
        .bind(filter.status.map(DeliveryStatus::as_str))
        .bind(filter.subscription_id)
        .bind(filter.event_id)
        .bind(page.cursor)
        .bind(page.limit)
        .fetch_all(pool)
        .await?)
}

/// A dead letter.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadLetterRow {
    /// Dead letter id.
    pub id: Uuid,
    /// The delivery that died.
    pub delivery_id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Its subscription, for webhooks.
    pub subscription_id: Option<Uuid>,
    /// Where it was going.
    pub target: Target,
    /// Why it died.
    pub reason: String,
    /// When it died.
    pub created_at: DateTime<Utc>,
    /// When it was replayed.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The delivery the replay created.
    pub replay_delivery_id: Option<Uuid>,
}

/// Filters of the dead-letter listing.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    /// Only this subscription.
    pub subscription_id: Option<Uuid>,
    /// Only replayed (`true`) or not yet replayed (`false`) ones.
    pub replayed: Option<bool>,
}

/// Lists dead letters, newest first.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_dead_letters(
    db: &Db,
    filter: &DeadLetterFilter,
    page: Page,
) -> Result<Vec<DeadLetterRow>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.list_dead_letters(filter, page).await,
    };
    Ok(sqlx::query_as(include_str!("sql/list_dead_letters.sql"))
        .bind(filter.subscription_id)
        .bind(filter.replayed)
        .bind(page.cursor)
        .bind(page.limit)
        .fetch_all(pool)
        .await?)
}

/// What a replay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// A new pending delivery was queued.
    Replayed {
        /// The new delivery.
        delivery_id: Uuid,
    },
    /// No such dead letter.
    NotFound,
    /// It was replayed before.
    AlreadyReplayed,
    /// Its subscription was deleted, so there is nowhere to send it.
    SubscriptionDeleted,
}

/// Replays one dead letter: marks it and queues a new delivery (attempts reset) atomically,
/// so replaying twice queues one delivery.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn replay_dead_letter(
    db: &Db,
    id: Uuid,
    new_delivery_id: Uuid,
) -> Result<ReplayOutcome, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.replay_dead_letter(id, new_delivery_id).await,
    };
    let replayed: Option<Uuid> = sqlx::query_scalar(include_str!("sql/replay_dead_letter.sql"))
        .bind(id)
        .bind(new_delivery_id)
        .fetch_optional(pool)
        .await?;
    if let Some(delivery_id) = replayed {
        return Ok(ReplayOutcome::Replayed { delivery_id });
    }
    let state: Option<(bool, bool)> =
        sqlx::query_as(include_str!("sql/dead_letter_replay_state.sql"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(ReplayOutcome::from_state(state))
}

impl ReplayOutcome {
    /// Why a dead letter was not replayed, from `(replayed, subscription deleted)`.
    pub(crate) fn from_state(state: Option<(bool, bool)>) -> Self {
        match state {
            None => Self::NotFound,
            Some((true, _)) => Self::AlreadyReplayed,
            Some((false, true)) => Self::SubscriptionDeleted,
            // It became replayable between the two statements (cannot un-replay), or its
            // subscription was restored: report it as replayed by someone else.
            Some((false, false)) => Self::AlreadyReplayed,
        }
    }
}

/// Which dead letters a bulk replay takes.
#[derive(Clone, Debug, Default)]
pub struct BulkReplayFilter {
    /// Only this subscription.
    pub subscription_id: Option<Uuid>,
    /// Died at or after.
    pub since: Option<DateTime<Utc>>,
    /// Died before.
    pub until: Option<DateTime<Utc>>,
}

/// Counts the dead letters a bulk replay would take (the dry run).
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn count_replayable_dead_letters(
    db: &Db,
    filter: &BulkReplayFilter,
) -> Result<i64, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.count_replayable_dead_letters(filter).await,
    };
    Ok(
        sqlx::query_scalar(include_str!("sql/count_replayable_dead_letters.sql"))
            .bind(filter.subscription_id)
            .bind(filter.since)
            .bind(filter.until)
            .fetch_one(pool)
            .await?,
    )
}

/// Replays up to `batch_size` matching dead letters in one transaction; returns how many.
/// Callers loop until a batch comes back short.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn replay_dead_letters_batch(
    db: &Db,
    filter: &BulkReplayFilter,
    batch_size: i64,
) -> Result<u64, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.replay_dead_letters_batch(filter, batch_size).await,
    };
    let ids: Vec<Uuid> = sqlx::query_scalar(include_str!("sql/replay_dead_letters_batch.sql"))
        .bind(filter.subscription_id)
        .bind(filter.since)
        .bind(filter.until)
        .bind(batch_size)
        .fetch_all(pool)
        .await?;
    Ok(ids.len() as u64)
}

/// The numbers of the console's overview.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConsoleStats {
    /// Deliveries due now (pending and due, or with an expired lease), counted up to 100,000.
    pub due: i64,
    /// Seconds since the oldest due delivery became due.
    pub oldest_due_age_seconds: Option<f64>,
    /// Attempts in the window that delivered.
    pub delivered: i64,
    /// Attempts in the window that failed (retry scheduled or dead-lettered).
    pub failed: i64,
    /// Dead letters not replayed.
    pub dead_letters: i64,
}

/// Reads the overview numbers, with attempts counted over the last `window_seconds`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn console_stats(db: &Db, window_seconds: f64) -> Result<ConsoleStats, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.console_stats(window_seconds).await,
    };
    Ok(sqlx::query_as(include_str!("sql/console_stats.sql"))
        .bind(window_seconds)
        .fetch_one(pool)
        .await?)
}
