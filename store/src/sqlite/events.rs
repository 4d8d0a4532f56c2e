//! The publish path and event queries on SQLite.

use std::collections::HashMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::queue::settle_lanes;
use super::{SqliteDb, blob_hex, now, time};
use crate::{
    DbError, NewEvent, PublishOutcome, PublishedEvent, events::IdempotentRow, queue::lane_of,
    retention::uuid_time,
};
use shared::{config::SlackFanout, state::Target};

impl SqliteDb {
    /// One immediate transaction: the live subscriptions it reads cannot change before its
    /// inserts, and a racing publish of the same key waits for it, then finds its row.
    pub(crate) async fn publish_events(
        &self,
        scope: &str,
        events: &[NewEvent],
        slack: Option<&SlackFanout>,
    ) -> Result<PublishOutcome, DbError> {
        let mut transaction = self.write().await?;
        // the enabled subscriptions of each event type of the request, through the routes'
        // primary key; all read in the write transaction, so counts and rows agree
        let mut routed: HashMap<&str, Vec<Uuid>> = HashMap::new();
        for event in events {
            if routed.contains_key(event.event_type.as_str()) {
                continue;
            }
            let subscriptions: Vec<Uuid> = sqlx::query_scalar(
                "select distinct subscription_id
                 from subscription_routes
                 where event_type in (?1, '*')
                 order by subscription_id",
            )
            .bind(&event.event_type)
            .fetch_all(&mut *transaction)
            .await?;
            routed.insert(&event.event_type, subscriptions);
        }
        let mut answers = Vec::with_capacity(events.len());
        let mut deliveries = Vec::new();
        let mut lanes = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let mut targets: Vec<(Target, Option<Uuid>)> = routed
                .get(event.event_type.as_str())
                .into_iter()
                .flatten()
                .map(|id| (Target::Webhook, Some(*id)))
                .collect();
            if slack.is_some_and(|fanout| fanout.event_types.contains(&event.event_type)) {
                targets.push((Target::Slack, None));
            }
            let count = i32::try_from(targets.len()).unwrap_or(i32::MAX);
            // the key first, in its own table (as on Postgres): taken when free, or when the
            // event holding it is gone (removed by retention)
            let claimed = match event.idempotency_key.as_deref() {
                None => true,
                Some(key) => sqlx::query_scalar::<_, Uuid>(
                    "insert into idempotency_keys (scope, key, event_id) values (?1, ?2, ?3)
                     on conflict (scope, key) do update set event_id = excluded.event_id
                       where not exists (select 1 from outbox_events e
                                         where e.id = idempotency_keys.event_id)
                     returning event_id",
                )
                .bind(scope)
                .bind(key)
                .bind(event.id)
                .fetch_optional(&mut *transaction)
                .await?
                .is_some(),
            };
            let inserted: Option<PublishedEvent> = if claimed {
                Some(
                    sqlx::query_as(
                        "insert into outbox_events
                           (id, event_type, payload, idempotency_key, idempotency_scope,
                            request_hash, deliveries_created, traceparent, created_at)
                         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         returning id, event_type, created_at, deliveries_created"
                    )
                    .bind(event.id)
                    .bind(&event.event_type)
                    .bind(&event.payload)
                    .bind(event.idempotency_key.as_deref())
                    .bind(event.idempotency_key.as_ref().map(|_| scope))
                    .bind(&event.request_hash)
                    .bind(count)
                    .bind(event.traceparent.as_deref())
                    // the id's own time, so a time window over ids and over created_at agree
                    .bind(time(uuid_time(event.id)))
                    .fetch_one(&mut *transaction)
                    .await?,
                )
            } else {
                None
            };
            if let Some(inserted) = inserted {
                lanes.extend(
                    targets
                        .iter()
                        .map(|(_, subscription_id)| lane_of(*subscription_id)),
                );
                deliveries.extend(targets.into_iter().map(|(target, subscription_id)| {
                    json!({
                        "id": blob_hex(Uuid::now_v7()),
                        "event_id": blob_hex(inserted.id),
                        "target": target.as_str(),
                        "subscription_id": subscription_id.map(blob_hex),
                        "lane": blob_hex(lane_of(subscription_id)),
                    })
                }));
                answers.push(inserted);
                continue;
            }
            let winner: Option<IdempotentRow> = sqlx::query_as(
                "select e.id, e.event_type, e.created_at, e.deliveries_created,
                        k.key as idempotency_key, e.request_hash
                 from idempotency_keys k
                 join outbox_events e on e.id = k.event_id
                 where k.scope = ?1 and k.key = ?2",
            )
            .bind(scope)
            .bind(event.idempotency_key.as_deref())
            .fetch_optional(&mut *transaction)
            .await?;
            match winner {
                Some(winner) if winner.request_hash == event.request_hash => {
                    answers.push(winner.answer());
                }
                Some(_) => {
                    transaction.rollback().await?;
                    return Ok(PublishOutcome::KeyReused { index });
                }
                // Not inserted and no winner: only a key held by a stored event skips an insert.
                None => return Err(DbError::Other(sqlx::Error::RowNotFound)),
            }
        }
        if !deliveries.is_empty() {
            // every delivery of the request in one statement: a statement is a round trip to
            // the connection's thread, the insert itself is cheap
            sqlx::query(concat!(
                "insert into deliveries
                   (id, event_id, target, subscription_id, lane, status, attempts,
                    next_attempt_at, created_at, updated_at)
                 select unhex(value ->> 'id'), unhex(value ->> 'event_id'), value ->> 'target',
                        unhex(value ->> 'subscription_id'), unhex(value ->> 'lane'), 'pending',
                        0, ",
                now!(),
                ", ",
                now!(),
                ", ",
                now!(),
                "
                 from json_each(?1)"
            ))
            .bind(Value::Array(deliveries).to_string())
            .execute(&mut *transaction)
            .await?;
            settle_lanes(&mut transaction, lanes).await?;
        }
        transaction.commit().await?;
        Ok(PublishOutcome::Stored(answers))
    }
}
