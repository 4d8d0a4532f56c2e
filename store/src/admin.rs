//! Operator queries: attempts, deliveries, dead letters and their replay.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, sea_query::Query,
};
use uuid::Uuid;

use crate::{
    Db, DbError, DeliveryRow, Page,
    entity::{attempts, dead_letters, deliveries, events, subscriptions},
    orm::{Planning, newest_first, parse_state},
};
use shared::state::{AttemptOutcome, DeadReason, DeliveryStatus, Target};

/// One recorded attempt.
#[derive(Clone, Debug)]
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

impl AttemptRow {
    /// The attempt with its delivery's target (absent when the delivery is gone).
    fn read(attempt: attempts::Model, target: Option<&String>) -> Result<Self, DbError> {
        Ok(Self {
            id: attempt.id,
            delivery_id: attempt.delivery_id,
            event_id: attempt.event_id,
            target: target.map(|target| parse_state(target)).transpose()?,
            attempt_number: attempt.attempt_number,
            started_at: attempt.started_at,
            duration_ms: attempt.duration_ms,
            response_status: attempt.response_status,
            response_body: attempt.response_body,
            error: attempt.error,
            worker_id: attempt.worker_id,
            external_id: attempt.external_id,
            outcome: parse_state(&attempt.outcome)?,
        })
    }
}

/// Lists every attempt of every delivery of an event; `None` when the event does not exist.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_event_attempts(
    db: &Db,
    event_id: Uuid,
) -> Result<Option<Vec<AttemptRow>>, DbError> {
    let connection = db.orm_reader();
    let exists = events::Entity::find_by_id(event_id)
        .select_only()
        .column(events::Column::Id)
        .into_tuple::<Uuid>()
        .one(&connection)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let attempts = db
        .read_all(
            attempts_listing(event_id).into_model::<attempts::Model>(),
            ATTEMPTS_PLANNING,
        )
        .await?;
    // each attempt's target, from the event's deliveries (read by event as the event detail
    // reads them): two indexed reads, where a join to the live-and-history view would make
    // SQLite read the whole view
    let targets: HashMap<Uuid, String> = deliveries::Entity::find()
        .select_only()
        .columns([deliveries::Column::Id, deliveries::Column::Target])
        .filter(deliveries::Column::EventId.eq(event_id))
        .into_tuple::<(Uuid, String)>()
        .all(&connection)
        .await?
        .into_iter()
        .collect();
    attempts
        .into_iter()
        .map(|attempt| {
            let target = targets.get(&attempt.delivery_id);
            AttemptRow::read(attempt, target)
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The attempt log's planning: whatever the event, one partition's index (Postgres prunes the
/// others as the statement starts).
pub(crate) const ATTEMPTS_PLANNING: Planning = Planning::Once;

/// The attempt log's query: served by delivery_attempts_event_idx (in the event's day alone on
/// Postgres).
pub(crate) fn attempts_listing(event_id: Uuid) -> Select<attempts::Entity> {
    attempts::Entity::find()
        .filter(attempts::Column::EventId.eq(event_id))
        .order_by_asc(attempts::Column::StartedAt)
        .order_by_asc(attempts::Column::AttemptNumber)
        .order_by_asc(attempts::Column::Id)
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

/// Lists deliveries, live and finished, newest first. Each filter has an index on the history
/// (status, subscription and event, each with the id for the order); the live table is the
/// size of the backlog.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_deliveries(
    db: &Db,
    filter: &DeliveryFilter,
    page: Page,
) -> Result<Vec<DeliveryRow>, DbError> {
    db.read_all(
        deliveries_listing(filter, page).into_model::<deliveries::Model>(),
        DELIVERIES_PLANNING,
    )
    .await?
    .into_iter()
    .map(DeliveryRow::try_from)
    .collect()
}

/// The delivery listing's planning: each filter has its index on every partition, and the
/// newest rows of each are merged, whatever the values.
pub(crate) const DELIVERIES_PLANNING: Planning = Planning::Once;

/// The delivery listing's query.
pub(crate) fn deliveries_listing(
    filter: &DeliveryFilter,
    page: Page,
) -> Select<deliveries::Entity> {
    use deliveries::Column;
    let query = deliveries::Entity::find()
        .apply_if(filter.status, |q, status| {
            q.filter(Column::Status.eq(status.as_str()))
        })
        .apply_if(filter.subscription_id, |q, id| {
            q.filter(Column::SubscriptionId.eq(id))
        })
        .apply_if(filter.event_id, |q, id| q.filter(Column::EventId.eq(id)));
    newest_first(query, Column::Id, page)
}

/// A dead letter.
#[derive(Clone, Debug)]
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
    pub reason: DeadReason,
    /// When it died.
    pub created_at: DateTime<Utc>,
    /// When it was replayed.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The delivery the replay created.
    pub replay_delivery_id: Option<Uuid>,
}

impl TryFrom<dead_letters::Model> for DeadLetterRow {
    type Error = DbError;

    fn try_from(row: dead_letters::Model) -> Result<Self, DbError> {
        Ok(Self {
            id: row.id,
            delivery_id: row.delivery_id,
            event_id: row.event_id,
            subscription_id: row.subscription_id,
            target: parse_state(&row.target)?,
            reason: DeadReason::from_stored(&row.reason),
            created_at: row.created_at,
            replayed_at: row.replayed_at,
            replay_delivery_id: row.replay_delivery_id,
        })
    }
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
    db.read_all(
        dead_letters_listing(filter, page).into_model::<dead_letters::Model>(),
        DEAD_LETTERS_PLANNING,
    )
    .await?
    .into_iter()
    .map(DeadLetterRow::try_from)
    .collect()
}

/// The dead-letter listing's planning: as the deliveries'.
pub(crate) const DEAD_LETTERS_PLANNING: Planning = Planning::Once;

/// The dead-letter listing's query.
pub(crate) fn dead_letters_listing(
    filter: &DeadLetterFilter,
    page: Page,
) -> Select<dead_letters::Entity> {
    use dead_letters::Column;
    let query = dead_letters::Entity::find()
        .apply_if(filter.subscription_id, |q, id| {
            q.filter(Column::SubscriptionId.eq(id))
        })
        .apply_if(filter.replayed, |q, replayed| {
            q.filter(if replayed {
                Column::ReplayedAt.is_not_null()
            } else {
                Column::ReplayedAt.is_null()
            })
        });
    newest_first(query, Column::Id, page)
}

/// Subscriptions that still exist (not soft-deleted), as a subquery of their ids.
fn live_subscription_ids() -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .column(subscriptions::Column::Id)
        .from(subscriptions::Entity)
        .and_where(subscriptions::Column::DeletedAt.is_null())
        .to_owned()
}

/// Dead letters a replay may take: not replayed, and still with somewhere to go (a Slack
/// delivery has no subscription).
fn replayable() -> Condition {
    use dead_letters::Column;
    Condition::all().add(Column::ReplayedAt.is_null()).add(
        Condition::any()
            .add(Column::SubscriptionId.is_null())
            .add(Column::SubscriptionId.in_subquery(live_subscription_ids())),
    )
}

/// Why a dead letter was not replayed: `(replayed, subscription deleted)`, `None` when it
/// does not exist.
async fn dead_letter_replay_state(db: &Db, id: Uuid) -> Result<Option<(bool, bool)>, DbError> {
    let connection = db.orm_reader();
    let Some(letter) = dead_letters::Entity::find_by_id(id)
        .one(&connection)
        .await?
    else {
        return Ok(None);
    };
    let subscription_deleted = match letter.subscription_id {
        None => false,
        Some(subscription_id) => {
            subscriptions::Entity::find_by_id(subscription_id)
                .filter(subscriptions::Column::DeletedAt.is_null())
                .count(&connection)
                .await?
                == 0
        }
    };
    Ok(Some((letter.replayed_at.is_some(), subscription_deleted)))
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
    // The write is per backend: Postgres copies the delivery in one statement; SQLite makes
    // the row in Rust (it has no uuid function) in its write transaction.
    let replayed = match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar::<_, Uuid>(include_str!("sql/replay_dead_letter.sql"))
                .bind(id)
                .bind(new_delivery_id)
                .fetch_optional(pool)
                .await?
                .is_some()
        }
        Db::Sqlite(sqlite) => sqlite.replay_dead_letter(id, new_delivery_id).await?,
    };
    if replayed {
        return Ok(ReplayOutcome::Replayed {
            delivery_id: new_delivery_id,
        });
    }
    Ok(ReplayOutcome::from_state(
        dead_letter_replay_state(db, id).await?,
    ))
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

/// Counts the dead letters a bulk replay would take (the dry run): what
/// `replay_dead_letters_batch.sql` would take.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn count_replayable_dead_letters(
    db: &Db,
    filter: &BulkReplayFilter,
) -> Result<i64, DbError> {
    use dead_letters::Column;
    let count = dead_letters::Entity::find()
        .filter(replayable())
        .apply_if(filter.subscription_id, |q, id| {
            q.filter(Column::SubscriptionId.eq(id))
        })
        .apply_if(filter.since, |q, since| {
            q.filter(Column::CreatedAt.gte(db.time(since)))
        })
        .apply_if(filter.until, |q, until| {
            q.filter(Column::CreatedAt.lt(db.time(until)))
        })
        .count(&db.orm_reader())
        .await?;
    Ok(i64::try_from(count).unwrap_or(i64::MAX))
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
    /// Deliveries the workers delivered in the window.
    pub delivered: i64,
    /// Attempts that failed in the window (retry scheduled or dead-lettered).
    pub failed: i64,
    /// Dead letters not replayed, counted up to 10,000.
    pub dead_letters: i64,
}

/// Reads the overview numbers, with the outcomes the workers counted over the last
/// `window_seconds` (from their per-minute counts: the attempt log is not read).
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn console_stats(db: &Db, window_seconds: f64) -> Result<ConsoleStats, DbError> {
    let window = std::time::Duration::try_from_secs_f64(window_seconds).unwrap_or_default();
    let (delivered, failed) = crate::charts::recent_outcomes(db, window).await?;
    let (due, oldest_due_age_seconds, dead_letters) = match db {
        // without parameters: planned once per connection
        Db::Postgres(pool) => {
            sqlx::query_as(include_str!("sql/console_stats.sql"))
                .fetch_one(pool)
                .await?
        }
        Db::Sqlite(sqlite) => sqlite.console_counts().await?,
    };
    Ok(ConsoleStats {
        due,
        oldest_due_age_seconds,
        delivered,
        failed,
        dead_letters,
    })
}
