//! The publish path and event queries.

use crate::{orm::BEGIN_PLANNED_ONCE, retention::uuid_floor};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Select,
};
use uuid::Uuid;

use crate::{
    Db, DbError, DeliveryRow, Page,
    entity::{deliveries, events},
    orm::{Planning, newest_first},
};
use shared::config::SlackFanout;

/// One event to publish, already validated.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// A fresh UUID v7, used only if this event is not a retry of an earlier publish.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The payload exactly as received.
    pub payload: String,
    /// The publisher's idempotency key.
    pub idempotency_key: Option<String>,
    /// Hash of type and payload, telling a retry from a conflicting reuse of the key.
    pub request_hash: String,
    /// The W3C trace context the deliveries continue.
    pub traceparent: Option<String>,
}

/// A stored event as the publish call answers it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, FromQueryResult)]
pub struct PublishedEvent {
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// How many deliveries were created for it.
    pub deliveries_created: i32,
}

/// What a publish did.
#[derive(Debug)]
pub enum PublishOutcome {
    /// Every event is stored (new, or the earlier answer of a retried key), in request order.
    Stored(Vec<PublishedEvent>),
    /// The event at this index reused an idempotency key with a different request; nothing
    /// was written.
    KeyReused {
        /// Index into the request's events.
        index: usize,
    },
}

/// The event stored under an idempotency key.
#[derive(sqlx::FromRow)]
pub(crate) struct IdempotentRow {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) deliveries_created: i32,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) request_hash: String,
}

impl IdempotentRow {
    /// The earlier answer, for a retry of the same request.
    pub(crate) fn answer(&self) -> PublishedEvent {
        PublishedEvent {
            id: self.id,
            event_type: self.event_type.clone(),
            created_at: self.created_at,
            deliveries_created: self.deliveries_created,
        }
    }
}

/// Stores events and their deliveries atomically; the caller answers 2xx only after this
/// returns, so an acknowledged event is durable with all its deliveries.
///
/// Events carrying an idempotency key already used in `scope` are not written again: the
/// first answer is returned when the request hash matches, [`PublishOutcome::KeyReused`]
/// otherwise. Two identical requests racing get one event: the loser's insert waits for the
/// winner's commit and then reads it.
///
/// # Errors
/// Returns [`DbError`] when the database fails; nothing was written then.
pub async fn publish_events(
    db: &Db,
    scope: &str,
    events: &[NewEvent],
    slack: Option<&SlackFanout>,
) -> Result<PublishOutcome, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.publish_events(scope, events, slack).await,
    };
    // Keyed inserts are made in key order, so two requests with the same keys wait for each
    // other instead of deadlocking; a transaction that still loses a race (a deadlock with
    // another kind of writer, a serialization failure) was rolled back whole and is run again.
    let mut tries = 0;
    loop {
        tries += 1;
        match publish_once(pool, scope, events, slack).await {
            Ok(Attempt::Done(outcome)) => return Ok(outcome),
            Ok(Attempt::StaleKeys(keys)) if tries < PUBLISH_TRIES => {
                free_stale_keys(pool, scope, &keys).await?;
            }
            Ok(Attempt::StaleKeys(_)) => return Err(DbError::Other(sqlx::Error::RowNotFound)),
            Err(DbError::Contention(error)) if tries < PUBLISH_TRIES => {
                tracing::debug!(error.message = %error, tries, "publish lost a race, running it again");
                let pause = shared::retry::jitter(CONTENTION_PAUSE * tries, 0.5);
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// What one run of a publish came to.
enum Attempt {
    Done(PublishOutcome),
    /// Keys held by events that are gone (their day was removed by retention, and the keys
    /// not yet): freed, then the publish runs again.
    StaleKeys(Vec<String>),
}

/// Deletes the keys of `keys` whose event is gone. The key and its event are written by one
/// statement, so a key whose event is not visible is one whose event was removed.
async fn free_stale_keys(pool: &sqlx::PgPool, scope: &str, keys: &[String]) -> Result<(), DbError> {
    sqlx::query(
        "delete from idempotency_keys k
         where k.scope = $1 and k.key = any($2::text[])
           and not exists (select 1 from outbox_events e where e.id = k.event_id)",
    )
    .bind(scope)
    .bind(keys)
    .execute(pool)
    .await?;
    Ok(())
}

/// How many times a publish transaction is run when it keeps losing races.
const PUBLISH_TRIES: u32 = 4;
/// The base pause between two runs of a publish that lost a race.
const CONTENTION_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

async fn publish_once(
    pool: &sqlx::PgPool,
    scope: &str,
    events: &[NewEvent],
    slack: Option<&SlackFanout>,
) -> Result<Attempt, DbError> {
    // The fan-out is one statement, run in a transaction planned once per connection: for a
    // few events Postgres judged a plan for any batch dearer than one for this batch and
    // planned every publish (0.36 ms, more than running it). A batch that may be refused after
    // part of it was inserted (a reused key) is rolled back; anything else commits.
    let keyed_batch =
        events.len() > 1 && events.iter().any(|event| event.idempotency_key.is_some());
    let mut transaction = pool.begin_with(BEGIN_PLANNED_ONCE).await?;
    if !keyed_batch {
        let attempt = publish_on(&mut transaction, scope, events, slack).await?;
        transaction.commit().await?;
        return Ok(attempt);
    }
    match publish_on(&mut transaction, scope, events, slack).await? {
        stored @ Attempt::Done(PublishOutcome::Stored(_)) => {
            transaction.commit().await?;
            Ok(stored)
        }
        refused => {
            transaction.rollback().await?;
            Ok(refused)
        }
    }
}

async fn publish_on(
    connection: &mut sqlx::PgConnection,
    scope: &str,
    events: &[NewEvent],
    slack: Option<&SlackFanout>,
) -> Result<Attempt, DbError> {
    let traceparents: Vec<Option<&str>> = events
        .iter()
        .map(|event| event.traceparent.as_deref())
        .collect();
    let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    let payloads: Vec<&str> = events.iter().map(|event| event.payload.as_str()).collect();
    let keys: Vec<Option<&str>> = events
        .iter()
        .map(|event| event.idempotency_key.as_deref())
        .collect();
    let hashes: Vec<&str> = events
        .iter()
        .map(|event| event.request_hash.as_str())
        .collect();
    let slack_types: Vec<String> = slack
        .map(|fanout| fanout.event_types.clone())
        .unwrap_or_default();

    let inserted: Vec<PublishedEvent> = sqlx::query_as(include_str!("sql/publish_events.sql"))
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&keys)
        .bind(&hashes)
        .bind(scope)
        .bind(&traceparents)
        .bind(slack.is_some())
        .bind(&slack_types)
        .fetch_all(&mut *connection)
        .await?;
    let mut inserted: HashMap<Uuid, PublishedEvent> = inserted
        .into_iter()
        .map(|event| (event.id, event))
        .collect();

    let skipped_keys: Vec<&str> = events
        .iter()
        .filter(|event| !inserted.contains_key(&event.id))
        .filter_map(|event| event.idempotency_key.as_deref())
        .collect();
    let winners: HashMap<String, IdempotentRow> = if skipped_keys.is_empty() {
        HashMap::new()
    } else {
        let rows: Vec<IdempotentRow> =
            sqlx::query_as(include_str!("sql/find_idempotent_events.sql"))
                .bind(scope)
                .bind(&skipped_keys)
                .fetch_all(&mut *connection)
                .await?;
        rows.into_iter()
            .filter_map(|row| row.idempotency_key.clone().map(|key| (key, row)))
            .collect()
    };

    let stale: Vec<String> = skipped_keys
        .iter()
        .filter(|key| !winners.contains_key(**key))
        .map(|key| (*key).to_owned())
        .collect();
    if !stale.is_empty() {
        return Ok(Attempt::StaleKeys(stale));
    }
    let mut answers = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if let Some(stored) = inserted.remove(&event.id) {
            answers.push(stored);
            continue;
        }
        let winner = event
            .idempotency_key
            .as_deref()
            .and_then(|key| winners.get(key));
        match winner {
            Some(winner) if winner.request_hash == event.request_hash => {
                answers.push(winner.answer());
            }
            Some(_) => return Ok(Attempt::Done(PublishOutcome::KeyReused { index })),
            // Not inserted and no winner: every skipped key has a winner (checked above), so
            // treat it as a failed statement rather than answer without a stored row.
            None => return Err(DbError::Other(sqlx::Error::RowNotFound)),
        }
    }
    Ok(Attempt::Done(PublishOutcome::Stored(answers)))
}

/// Filters of the event listing.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this event type.
    pub event_type: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

/// Lists events, newest first (uuid v7 ids sort by time). A time window is a range of the
/// primary key (the smallest v7 id of each bound), so it reads only the days it covers; a type
/// is read through `(event_type, id)`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn list_events(
    db: &Db,
    filter: &EventFilter,
    page: Page,
) -> Result<Vec<PublishedEvent>, DbError> {
    db.read_all(
        events_listing(filter, page).into_model::<PublishedEvent>(),
        events_planning(filter),
    )
    .await
}

/// The event listing's planning. By type, for each call: a type nobody sends is found at once
/// through the type's index, where a plan for any type walks the newest ids of every day
/// testing each. Otherwise once: the newest ids (within the window) whatever the values.
pub(crate) fn events_planning(filter: &EventFilter) -> Planning {
    if filter.event_type.is_some() {
        Planning::EachCall
    } else {
        Planning::Once
    }
}

/// The event listing's query (also read by [`crate::plans`]).
pub(crate) fn events_listing(filter: &EventFilter, page: Page) -> Select<events::Entity> {
    use events::Column;
    let query = events::Entity::find().select_only().columns([
        Column::Id,
        Column::EventType,
        Column::CreatedAt,
        Column::DeliveriesCreated,
    ]);
    let query = query
        .apply_if(filter.event_type.clone(), |q, event_type| {
            q.filter(Column::EventType.eq(event_type))
        })
        .apply_if(filter.since, |q, since| {
            q.filter(Column::Id.gte(uuid_floor(since)))
        })
        .apply_if(filter.until, |q, until| {
            q.filter(Column::Id.lt(uuid_floor(until)))
        });
    newest_first(query, Column::Id, page)
}

/// A stored event with its payload text.
#[derive(Clone, Debug, FromQueryResult)]
pub struct EventRow {
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Payload exactly as received.
    pub payload: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Deliveries created at publish.
    pub deliveries_created: i32,
    /// The publisher's idempotency key.
    pub idempotency_key: Option<String>,
}

/// Reads one event and the current state of each of its deliveries.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn get_event(db: &Db, id: Uuid) -> Result<Option<(EventRow, Vec<DeliveryRow>)>, DbError> {
    use events::Column;
    let connection = db.orm_reader();
    let Some(event) = events::Entity::find_by_id(id)
        .select_only()
        .columns([
            Column::Id,
            Column::EventType,
            Column::Payload,
            Column::CreatedAt,
            Column::DeliveriesCreated,
            Column::IdempotencyKey,
        ])
        .into_model::<EventRow>()
        .one(&connection)
        .await?
    else {
        return Ok(None);
    };
    // served by deliveries_event_idx
    let deliveries = deliveries::Entity::find()
        .filter(deliveries::Column::EventId.eq(id))
        .order_by_asc(deliveries::Column::Id)
        .all(&connection)
        .await?
        .into_iter()
        .map(DeliveryRow::try_from)
        .collect::<Result<_, _>>()?;
    Ok(Some((event, deliveries)))
}
