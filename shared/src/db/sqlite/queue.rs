//! The delivery queue on SQLite: lease, complete, release.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SqliteDb, due_depth_and_age, now, plus, time};
use crate::{
    crypto::SecretCipher,
    db::{
        Completion, DbError, DeliverySubscription, LeasedDelivery, NextState, QueueSample, Written,
        queue::StoredDeliverySubscription,
    },
};

#[derive(sqlx::FromRow)]
struct LeasedRow {
    id: Uuid,
    attempts: i32,
    target: String,
    subscription_id: Option<Uuid>,
    event_id: Uuid,
}

#[derive(Clone, sqlx::FromRow)]
struct LeasedEvent {
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
    traceparent: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CompletedRow {
    event_id: Uuid,
    subscription_id: Option<Uuid>,
    target: String,
}

/// What one flush changes on a subscription.
#[derive(Default)]
struct SubscriptionChange {
    succeeded: bool,
    failures: i64,
    disable: bool,
}

impl SqliteDb {
    /// One `UPDATE … RETURNING` inside an immediate transaction: no other writer, in this
    /// process or another, can lease the same rows between the choice and the update. The
    /// batch shares one fresh lease token; a row leased again after its lease expired gets
    /// another, so the fence still tells the holders apart.
    pub(crate) async fn lease_deliveries(
        &self,
        limit: usize,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<LeasedDelivery>, DbError> {
        let token = Uuid::new_v4();
        let mut transaction = self.write().await?;
        let rows: Vec<LeasedRow> = sqlx::query_as(concat!(
            "update deliveries
             set status = 'leased',
                 lease_token = ?3,
                 leased_by = ?2,
                 next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4),
                 attempts = attempts + 1,
                 updated_at = ",
            now!(),
            "
             where id in (select id
                          from deliveries
                          where status in ('pending', 'leased')
                            and next_attempt_at <= ",
            now!(),
            "
                          order by next_attempt_at, id
                          limit ?1)
             returning id, attempts, target, subscription_id, event_id"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(worker_id)
        .bind(token)
        .bind(plus(lease))
        .fetch_all(&mut *transaction)
        .await?;
        let mut events: HashMap<Uuid, LeasedEvent> = HashMap::new();
        let mut leased = Vec::with_capacity(rows.len());
        for row in rows {
            let event = match events.get(&row.event_id) {
                Some(event) => event.clone(),
                None => {
                    let event: LeasedEvent = sqlx::query_as(
                        "select event_type, payload, created_at, traceparent
                         from outbox_events where id = ?1",
                    )
                    .bind(row.event_id)
                    .fetch_one(&mut *transaction)
                    .await?;
                    events.insert(row.event_id, event.clone());
                    event
                }
            };
            leased.push(LeasedDelivery {
                id: row.id,
                lease_token: token,
                attempts: row.attempts,
                target: row.target,
                subscription_id: row.subscription_id,
                event_id: row.event_id,
                event_type: event.event_type,
                payload: event.payload,
                event_created_at: event.created_at,
                traceparent: event.traceparent,
            });
        }
        transaction.commit().await?;
        Ok(leased)
    }

    pub(crate) async fn get_delivery_subscriptions(
        &self,
        cipher: &SecretCipher,
        ids: &[Uuid],
    ) -> Result<Vec<DeliverySubscription>, DbError> {
        let mut connection = self.reader.acquire().await?;
        let mut subscriptions = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<StoredDeliverySubscription> = sqlx::query_as(concat!(
                "select id, url, secret,
                        case when previous_secret_expires_at > ",
                now!(),
                " then previous_secret end as previous_secret,
                        headers, enabled, deleted_at is not null as deleted
                 from subscriptions
                 where id = ?1"
            ))
            .bind(id)
            .fetch_optional(&mut *connection)
            .await?;
            subscriptions.extend(row.map(|row| row.open(cipher)));
        }
        Ok(subscriptions)
    }

    /// The whole flush in one immediate transaction, row by row, fenced by the lease token as
    /// on Postgres: a row whose lease was lost is skipped and nothing is written for it.
    pub(crate) async fn complete_deliveries(
        &self,
        worker_id: &str,
        completions: &[Completion],
    ) -> Result<Vec<Written>, DbError> {
        let mut transaction = self.write().await?;
        let mut written = Vec::with_capacity(completions.len());
        let mut changes: HashMap<Uuid, SubscriptionChange> = HashMap::new();
        for completion in completions {
            let (status, delay, outcome) = match &completion.next {
                NextState::Delivered => ("delivered", Duration::ZERO, "delivered"),
                NextState::Retry(delay) => ("pending", *delay, "retry_scheduled"),
                NextState::Dead { .. } => ("dead", Duration::ZERO, "dead_lettered"),
                NextState::Cancelled => ("cancelled", Duration::ZERO, "dead_lettered"),
            };
            let done: Option<CompletedRow> = sqlx::query_as(concat!(
                "update deliveries
                 set status = ?3,
                     next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4),
                     lease_token = null,
                     leased_by = null,
                     last_error = ?5,
                     updated_at = ",
                now!(),
                "
                 where id = ?1 and lease_token = ?2 and status = 'leased'
                 returning event_id, subscription_id, target"
            ))
            .bind(completion.delivery_id)
            .bind(completion.lease_token)
            .bind(status)
            .bind(plus(delay))
            .bind(completion.last_error.as_deref())
            .fetch_optional(&mut *transaction)
            .await?;
            let Some(done) = done else {
                continue;
            };
            if let Some(attempt) = &completion.attempt {
                sqlx::query(
                    "insert into delivery_attempts
                       (id, delivery_id, event_id, attempt_number, started_at, duration_ms,
                        response_status, response_body, error, worker_id, external_id, outcome)
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .bind(Uuid::now_v7())
                .bind(completion.delivery_id)
                .bind(done.event_id)
                .bind(attempt.attempt_number)
                .bind(time(attempt.started_at))
                .bind(attempt.duration_ms)
                .bind(attempt.response_status)
                .bind(attempt.response_body.as_deref())
                .bind(attempt.error.as_deref())
                .bind(worker_id)
                .bind(attempt.external_id.as_deref())
                .bind(outcome)
                .execute(&mut *transaction)
                .await?;
                if let Some(subscription_id) = done.subscription_id {
                    let change = changes.entry(subscription_id).or_default();
                    change.succeeded |= status == "delivered";
                    change.failures += i64::from(status != "delivered");
                    change.disable |= matches!(
                        completion.next,
                        NextState::Dead {
                            disable_subscription: true,
                            ..
                        }
                    );
                }
            }
            if let NextState::Dead { reason, .. } = &completion.next {
                sqlx::query(concat!(
                    "insert into dead_letters
                       (id, delivery_id, event_id, subscription_id, target, reason, created_at)
                     values (?1, ?2, ?3, ?4, ?5, ?6, ",
                    now!(),
                    ")"
                ))
                .bind(Uuid::now_v7())
                .bind(completion.delivery_id)
                .bind(done.event_id)
                .bind(done.subscription_id)
                .bind(&done.target)
                .bind(reason)
                .execute(&mut *transaction)
                .await?;
            }
            // publish → delivered lag, from database timestamps only (no worker clock involved)
            let lag_seconds: Option<f64> = if status == "delivered" {
                sqlx::query_scalar(
                    "select (julianday('now') - julianday(created_at)) * 86400.0
                     from outbox_events where id = ?1",
                )
                .bind(done.event_id)
                .fetch_one(&mut *transaction)
                .await?
            } else {
                None
            };
            written.push(Written {
                id: completion.delivery_id,
                lag_seconds,
            });
        }
        for (id, change) in changes {
            sqlx::query(concat!(
                "update subscriptions
                 set last_success_at = case when ?2 then ",
                now!(),
                " else last_success_at end,
                     last_failure_at = case when ?3 > 0 then ",
                now!(),
                " else last_failure_at end,
                     consecutive_failures = case when ?2 then 0
                                                 else consecutive_failures + ?3 end,
                     enabled = case when ?4 then 0 else enabled end,
                     disabled_reason = case when ?4 then 'endpoint_gone' else disabled_reason end,
                     updated_at = case when ?4 then ",
                now!(),
                " else updated_at end
                 where id = ?1"
            ))
            .bind(id)
            .bind(change.succeeded)
            .bind(change.failures)
            .bind(change.disable)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(written)
    }

    pub(crate) async fn release_deliveries(
        &self,
        leases: &[(Uuid, Uuid, Duration)],
    ) -> Result<Vec<Uuid>, DbError> {
        let mut transaction = self.write().await?;
        let mut released = Vec::with_capacity(leases.len());
        for (id, token, due_in) in leases {
            let row: Option<Uuid> = sqlx::query_scalar(concat!(
                "update deliveries
                 set status = 'pending',
                     attempts = max(attempts - 1, 0),
                     next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3),
                     lease_token = null,
                     leased_by = null,
                     updated_at = ",
                now!(),
                "
                 where id = ?1 and lease_token = ?2 and status = 'leased'
                 returning id"
            ))
            .bind(id)
            .bind(token)
            .bind(plus(*due_in))
            .fetch_optional(&mut *transaction)
            .await?;
            released.extend(row);
        }
        transaction.commit().await?;
        Ok(released)
    }

    /// Every worker on the file samples (there is no lock to elect one; they are few).
    pub(crate) async fn sample_queue(&self) -> Result<QueueSample, DbError> {
        Ok(sqlx::query_as(concat!(
            "select 1 as leader, due_count as depth, oldest_due_age_seconds
             from (select ",
            due_depth_and_age!(),
            ")"
        ))
        .fetch_one(&self.reader)
        .await?)
    }
}
