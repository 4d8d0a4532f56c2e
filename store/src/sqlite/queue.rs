//! The delivery queue on SQLite: lease, complete, release.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{SqliteDb, blob_hex, due_depth_and_age, now, plus, time};
use crate::{
    Completion, DbError, DeliverySubscription, EndpointHealth, LANES_PER_LEASE, LeaseRequest,
    Leased, LeasedDelivery, QueueSample, Written,
    queue::{StoredDeliverySubscription, lane_of, lane_quota, probe_delay},
    stored_time::shift,
    subscriptions::FAILING_TOO_LONG,
};
use shared::{
    crypto::SecretCipher,
    state::{DeliveryStatus, Target},
};

/// A lane the lease may take rows from.
#[derive(sqlx::FromRow)]
struct LaneToLease {
    id: Uuid,
    max_in_flight: i64,
    rate_limit_per_second: Option<f64>,
    /// Seconds the rate limit's clock is behind now.
    clock_behind: f64,
    /// The subscription's circuit is open: this lane gives one probe at a time.
    probing: bool,
}

/// A lane held until its subscription is enabled again: the last stored time, which no clock
/// reaches ('infinity' on Postgres).
pub(crate) const HELD: &str = "9999-12-31T23:59:59.999Z";

/// How far behind now a rate limit's clock may start a lease (see lease_deliveries.sql).
const RATE_CATCH_UP: f64 = 0.1;

#[derive(sqlx::FromRow)]
struct CompletedRow {
    id: Uuid,
    event_id: Uuid,
    subscription_id: Option<Uuid>,
    target: Target,
    lag_seconds: Option<f64>,
}

/// What one flush changes on a subscription.
#[derive(Default)]
struct SubscriptionChange {
    succeeded: bool,
    failures: i64,
    disable: bool,
    probe_failed: bool,
}

/// A subscription's health after a flush.
#[derive(sqlx::FromRow)]
struct HealthAfter {
    enabled: bool,
    disabled_reason: Option<String>,
    circuit_open: bool,
    circuit_probes: i64,
}

impl SqliteDb {
    /// The lease in one immediate transaction: no other writer, in this process or another,
    /// can lease between the choice of lanes and the updates, so the in-flight counts hold
    /// across workers without the Postgres lock protocol. One `UPDATE … RETURNING` a lane (its
    /// oldest due rows, as many as its room and share allow), the event's columns coming back
    /// with each row (key lookups inside SQLite cost less than a statement each); then the
    /// lanes are settled. The batch shares one fresh lease token; a row leased again after its
    /// lease expired gets another, so the fence still tells the holders apart.
    pub(crate) async fn lease_deliveries(
        &self,
        request: &LeaseRequest<'_>,
    ) -> Result<Leased, DbError> {
        let token = Uuid::new_v4();
        let mut transaction = self.write().await?;
        let lanes: Vec<LaneToLease> = sqlx::query_as(concat!(
            "select l.id,
                    case when s.circuit_opened_at is not null then 1
                         else coalesce(s.max_in_flight, ?2) end as max_in_flight,
                    s.rate_limit_per_second,
                    (julianday('now') - julianday(l.next_allowed_at)) * 86400.0 as clock_behind,
                    coalesce(s.circuit_opened_at is not null, 0) as probing
             from lanes l
             left join subscriptions s on s.id = l.id
             where l.next_due_at <= ",
            now!(),
            " and l.next_allowed_at <= ",
            now!(),
            "
             order by l.last_leased_at
             limit ?1"
        ))
        .bind(i64::try_from(LANES_PER_LEASE).unwrap_or(i64::MAX))
        .bind(i64::from(request.max_in_flight))
        .fetch_all(&mut *transaction)
        .await?;
        if lanes.is_empty() {
            let lease_again_at = next_allowed(&mut transaction).await?;
            transaction.commit().await?;
            return Ok(Leased {
                deliveries: Vec::new(),
                lease_again_at,
            });
        }
        let quota = lane_quota(request.limit, lanes.len());
        let mut leased: Vec<LeasedDelivery> = Vec::new();
        let mut served = Vec::new();
        let mut clocks: HashMap<Uuid, String> = HashMap::new();
        for lane in &lanes {
            let mut want = quota.min(request.limit.saturating_sub(leased.len()));
            // the rate limit's clock, as on Postgres (see lease_deliveries.sql)
            let clock = lane.rate_limit_per_second.map(|rate| {
                let start_behind = lane.clock_behind.clamp(0.0, RATE_CATCH_UP);
                let allowed = ((RATE_CATCH_UP + start_behind) * rate).floor().max(1.0);
                want = want.min(allowed as usize);
                (rate, start_behind)
            });
            if want == 0 {
                break;
            }
            let rows: Vec<LeasedDelivery> = sqlx::query_as(concat!(
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
                              where lane = ?5
                                and status = 'pending'
                                and next_attempt_at <= ",
                now!(),
                "
                              order by next_attempt_at, id
                              limit max(0, min(?1, ?6 - (select count(*) from deliveries
                                                         where lane = ?5
                                                           and status = 'leased'))))
                 returning id, lease_token, attempts, target, subscription_id, event_id,
                           ?7 as probe,
                           (select event_type from outbox_events e
                             where e.id = deliveries.event_id) as event_type,
                           (select payload from outbox_events e
                             where e.id = deliveries.event_id) as payload,
                           (select created_at from outbox_events e
                             where e.id = deliveries.event_id) as event_created_at,
                           (select traceparent from outbox_events e
                             where e.id = deliveries.event_id) as traceparent"
            ))
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .bind(request.worker_id)
            .bind(token)
            .bind(plus(request.lease))
            .bind(lane.id)
            .bind(lane.max_in_flight)
            .bind(lane.probing)
            .fetch_all(&mut *transaction)
            .await?;
            if lane.probing && !rows.is_empty() {
                // held while the probe is out; its outcome sets the next time
                clocks.insert(lane.id, plus(request.lease));
            } else if let Some((rate, start_behind)) = clock {
                let moved = rows.len() as f64 / rate - start_behind;
                clocks.insert(lane.id, shift(moved));
            }
            if !rows.is_empty() {
                served.push(lane.id);
            }
            leased.extend(rows);
        }
        // the lanes that gave rows go to the end of the round, in their order (a millisecond
        // apart: the stored times' precision), and a lane at its limit keeps its place; a
        // rate-limited lane's clock moves on: one statement for both (a null modifier keeps
        // the stored value)
        let round: Vec<Value> = lanes
            .iter()
            .map(|lane| {
                let after = served.iter().position(|id| *id == lane.id).map(|position| {
                    plus(Duration::from_millis(
                        u64::try_from(position).unwrap_or(u64::MAX),
                    ))
                });
                let at = clocks.get(&lane.id);
                json!({"id": blob_hex(lane.id), "after": after, "at": at})
            })
            .collect();
        sqlx::query(
            "update lanes
             set last_leased_at = coalesce(
                   strftime('%Y-%m-%dT%H:%M:%fZ', 'now', r.value ->> 'after'), last_leased_at),
                 next_allowed_at = coalesce(
                   strftime('%Y-%m-%dT%H:%M:%fZ', 'now', r.value ->> 'at'), next_allowed_at)
             from json_each(?1) as r
             where lanes.id = unhex(r.value ->> 'id')",
        )
        .bind(Value::Array(round).to_string())
        .execute(&mut *transaction)
        .await?;
        let touched: Vec<Uuid> = lanes.iter().map(|lane| lane.id).collect();
        settle_lanes(&mut transaction, touched.iter().copied()).await?;
        let lease_again_at = if leased.is_empty() {
            next_allowed(&mut transaction).await?
        } else {
            let touched: Vec<String> = touched.into_iter().map(blob_hex).collect();
            sqlx::query_scalar(concat!(
                "select min(at) from (
                   select next_due_at as at from lanes
                   where id in (select unhex(value) from json_each(?1)) and next_due_at > ",
                now!(),
                "
                   union all
                   select next_allowed_at from lanes
                   where id in (select unhex(value) from json_each(?1)) and next_allowed_at > ",
                now!(),
                " and next_allowed_at < ?2)"
            ))
            .bind(json!(touched).to_string())
            .bind(HELD)
            .fetch_one(&mut *transaction)
            .await?
        };
        transaction.commit().await?;
        Ok(Leased {
            deliveries: leased,
            lease_again_at,
        })
    }

    /// Rows whose lease expired, pending again and due at once (see the Postgres statement).
    pub(crate) async fn rescue_expired_leases(&self) -> Result<i64, DbError> {
        let mut transaction = self.write().await?;
        let lanes: Vec<Uuid> = sqlx::query_scalar(concat!(
            "update deliveries
             set status = 'pending', lease_token = null, leased_by = null, updated_at = ",
            now!(),
            "
             where status = 'leased' and next_attempt_at <= ",
            now!(),
            "
             returning lane"
        ))
        .fetch_all(&mut *transaction)
        .await?;
        settle_lanes(&mut transaction, lanes.iter().copied()).await?;
        transaction.commit().await?;
        Ok(i64::try_from(lanes.len()).unwrap_or(i64::MAX))
    }

    pub(crate) async fn get_delivery_subscriptions(
        &self,
        cipher: &SecretCipher,
        ids: &[Uuid],
    ) -> Result<Vec<DeliverySubscription>, DbError> {
        let ids: Vec<String> = ids.iter().copied().map(blob_hex).collect();
        let rows: Vec<StoredDeliverySubscription> = sqlx::query_as(concat!(
            "select id, url, secret,
                    case when previous_secret_expires_at > ",
            now!(),
            " then previous_secret end as previous_secret,
                    headers, enabled, deleted_at is not null as deleted
             from subscriptions
             where id in (select unhex(value) from json_each(?1))"
        ))
        .bind(json!(ids).to_string())
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|row| row.open(cipher)).collect())
    }

    /// The whole flush in one immediate transaction of a few statements, each taking its rows
    /// as a JSON array: the retries' updates and the finished deliveries' move to the history,
    /// fenced by the lease token as on Postgres (a row whose lease was lost does not match and
    /// nothing is written for it); then the attempts and dead letters of the rows that
    /// matched, and the subscriptions' changes.
    pub(crate) async fn complete_deliveries(
        &self,
        worker_id: &str,
        completions: &[Completion],
        health: &EndpointHealth,
    ) -> Result<Vec<Written>, DbError> {
        let states: Vec<Value> = completions
            .iter()
            .map(|completion| {
                let (status, delay, _) = completion.next.stored();
                json!({
                    "id": blob_hex(completion.delivery_id),
                    "token": blob_hex(completion.lease_token),
                    "status": status.as_str(),
                    "delay": plus(delay),
                    "last_error": completion.last_error,
                    "probe": i32::from(completion.probe),
                })
            })
            .collect();
        let states = Value::Array(states).to_string();
        let mut transaction = self.write().await?;
        // a retry stays live, pending again; a failed probe gives its attempt back
        let mut done: Vec<CompletedRow> = sqlx::query_as(concat!(
            "update deliveries
             set status = 'pending',
                 attempts = attempts - (c.value ->> 'probe'),
                 next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', c.value ->> 'delay'),
                 lease_token = null,
                 leased_by = null,
                 last_error = c.value ->> 'last_error',
                 updated_at = ",
            now!(),
            "
             from json_each(?1) as c
             where deliveries.id = unhex(c.value ->> 'id')
               and deliveries.lease_token = unhex(c.value ->> 'token')
               and deliveries.status = 'leased'
               and c.value ->> 'status' = 'pending'
             returning id, event_id, subscription_id, target, null as lag_seconds"
        ))
        .bind(&states)
        .fetch_all(&mut *transaction)
        .await?;
        // a finished delivery moves to the history, so the live table holds live work only
        let finished: Vec<CompletedRow> = sqlx::query_as(concat!(
            "insert into delivery_history
               (id, event_id, target, subscription_id, status, attempts, last_error, created_at,
                updated_at)
             select d.id, d.event_id, d.target, d.subscription_id, c.value ->> 'status',
                    d.attempts, c.value ->> 'last_error', d.created_at, ",
            now!(),
            "
             from deliveries d
             join json_each(?1) as c on d.id = unhex(c.value ->> 'id')
             where d.lease_token = unhex(c.value ->> 'token')
               and d.status = 'leased'
               and c.value ->> 'status' <> 'pending'
             returning id, event_id, subscription_id, target,
                       -- publish → delivered lag, from database timestamps only
                       case when status = 'delivered'
                            then (julianday('now') - julianday(
                                    (select created_at from outbox_events e
                                      where e.id = delivery_history.event_id))) * 86400.0
                       end as lag_seconds"
        ))
        .bind(&states)
        .fetch_all(&mut *transaction)
        .await?;
        if !finished.is_empty() {
            sqlx::query(
                "delete from deliveries
                 where rowid in (select d.rowid
                                 from deliveries d
                                 join json_each(?1) as c on d.id = unhex(c.value ->> 'id')
                                 where d.lease_token = unhex(c.value ->> 'token')
                                   and d.status = 'leased'
                                   and c.value ->> 'status' <> 'pending')",
            )
            .bind(&states)
            .execute(&mut *transaction)
            .await?;
        }
        // a retry's lane is due again by the retry's time
        settle_lanes(
            &mut transaction,
            done.iter().map(|row| lane_of(row.subscription_id)),
        )
        .await?;
        done.extend(finished);
        let done: HashMap<Uuid, CompletedRow> = done.into_iter().map(|row| (row.id, row)).collect();

        let mut written = Vec::with_capacity(done.len());
        let mut attempts = Vec::new();
        let mut dead_letters = Vec::new();
        let mut changes: HashMap<Uuid, SubscriptionChange> = HashMap::new();
        for completion in completions {
            let Some(done) = done.get(&completion.delivery_id) else {
                continue;
            };
            let (status, _, outcome) = completion.next.stored();
            if let Some(attempt) = &completion.attempt {
                attempts.push(json!({
                    "id": blob_hex(Uuid::now_v7()),
                    "delivery_id": blob_hex(completion.delivery_id),
                    "event_id": blob_hex(done.event_id),
                    "number": attempt.attempt_number,
                    "started_at": time(attempt.started_at),
                    "duration_ms": attempt.duration_ms,
                    "status": attempt.response_status,
                    "body": attempt.response_body,
                    "error": attempt.error,
                    "external_id": attempt.external_id,
                    "outcome": outcome.as_str(),
                }));
                if let Some(subscription_id) = done.subscription_id {
                    let change = changes.entry(subscription_id).or_default();
                    change.succeeded |= status == DeliveryStatus::Delivered;
                    change.failures += i64::from(status != DeliveryStatus::Delivered);
                    change.disable |= completion.next.disables_subscription();
                    change.probe_failed |= completion.probe && status != DeliveryStatus::Delivered;
                }
            }
            if let Some(reason) = completion.next.dead_reason() {
                dead_letters.push(json!({
                    "id": blob_hex(Uuid::now_v7()),
                    "delivery_id": blob_hex(completion.delivery_id),
                    "event_id": blob_hex(done.event_id),
                    "subscription_id": done.subscription_id.map(blob_hex),
                    "target": done.target.as_str(),
                    "reason": reason,
                }));
            }
            written.push(Written {
                id: completion.delivery_id,
                lag_seconds: done.lag_seconds,
            });
        }
        if !attempts.is_empty() {
            sqlx::query(
                "insert into delivery_attempts
                   (id, delivery_id, event_id, attempt_number, started_at, duration_ms,
                    response_status, response_body, error, worker_id, external_id, outcome)
                 select unhex(value ->> 'id'), unhex(value ->> 'delivery_id'),
                        unhex(value ->> 'event_id'), value ->> 'number', value ->> 'started_at',
                        value ->> 'duration_ms', value ->> 'status', value ->> 'body',
                        value ->> 'error', ?2, value ->> 'external_id', value ->> 'outcome'
                 from json_each(?1)",
            )
            .bind(Value::Array(attempts).to_string())
            .bind(worker_id)
            .execute(&mut *transaction)
            .await?;
        }
        if !dead_letters.is_empty() {
            sqlx::query(concat!(
                "insert into dead_letters
                   (id, delivery_id, event_id, subscription_id, target, reason, created_at)
                 select unhex(value ->> 'id'), unhex(value ->> 'delivery_id'),
                        unhex(value ->> 'event_id'), unhex(value ->> 'subscription_id'),
                        value ->> 'target', value ->> 'reason', ",
                now!(),
                "
                 from json_each(?1)"
            ))
            .bind(Value::Array(dead_letters).to_string())
            .execute(&mut *transaction)
            .await?;
        }
        for (id, change) in changes {
            update_health(&mut transaction, id, &change, health).await?;
        }
        transaction.commit().await?;
        Ok(written)
    }

    pub(crate) async fn release_deliveries(
        &self,
        leases: &[(Uuid, Uuid, Duration)],
    ) -> Result<Vec<Uuid>, DbError> {
        let leases: Vec<Value> = leases
            .iter()
            .map(|(id, token, due_in)| {
                json!({"id": blob_hex(*id), "token": blob_hex(*token), "due_in": plus(*due_in)})
            })
            .collect();
        let mut transaction = self.write().await?;
        let released: Vec<(Uuid, Uuid)> = sqlx::query_as(concat!(
            "update deliveries
             set status = 'pending',
                 attempts = max(attempts - 1, 0),
                 next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', c.value ->> 'due_in'),
                 lease_token = null,
                 leased_by = null,
                 updated_at = ",
            now!(),
            "
             from json_each(?1) as c
             where deliveries.id = unhex(c.value ->> 'id')
               and deliveries.lease_token = unhex(c.value ->> 'token')
               and deliveries.status = 'leased'
             returning id, lane"
        ))
        .bind(Value::Array(leases).to_string())
        .fetch_all(&mut *transaction)
        .await?;
        settle_lanes(&mut transaction, released.iter().map(|(_, lane)| *lane)).await?;
        transaction.commit().await?;
        Ok(released.into_iter().map(|(id, _)| id).collect())
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

/// Sets each lane's `next_due_at` to its earliest pending row (null when none): exact, since
/// the caller's immediate transaction is the only writer. Every write that makes rows pending,
/// and the lease, ends with it.
pub(crate) async fn settle_lanes(
    transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    lanes: impl IntoIterator<Item = Uuid>,
) -> Result<(), DbError> {
    let lanes: Vec<String> = lanes
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(blob_hex)
        .collect();
    if lanes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update lanes
         set next_due_at = (select min(d.next_attempt_at) from deliveries d
                            where d.lane = lanes.id and d.status = 'pending')
         where id in (select unhex(value) from json_each(?1))",
    )
    .bind(json!(lanes).to_string())
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// A subscription's stats and endpoint health after a flush's attempts, and its lane held or
/// released to match (see complete_deliveries.sql, which does the same on Postgres).
async fn update_health(
    transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: Uuid,
    change: &SubscriptionChange,
    health: &EndpointHealth,
) -> Result<(), DbError> {
    // the subscription as it was (this transaction is the only writer): to tell a closing
    // circuit, and whether it has failed for too long without a success
    let disable_before = format!("-{:.3} seconds", health.disable_after.as_secs_f64());
    let (was_open, failing_long): (bool, bool) = sqlx::query_as(
        "select circuit_opened_at is not null,
                coalesce(enabled and failing_since <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2),
                         0)
         from subscriptions where id = ?1",
    )
    .bind(id)
    .bind(&disable_before)
    .fetch_optional(&mut **transaction)
    .await?
    .unwrap_or((false, false));
    let failing_too_long = failing_long && !change.succeeded;
    let window_start = format!("-{:.3} seconds", health.window.as_secs_f64());
    // every expression reads the columns as they were (SQLite's `set` semantics)
    let after: Option<HealthAfter> = sqlx::query_as(concat!(
        "update subscriptions
         set last_success_at = case when ?2 then ",
        now!(),
        " else last_success_at end,
             last_failure_at = case when ?3 > 0 then ",
        now!(),
        " else last_failure_at end,
             consecutive_failures = case when ?2 then 0 else consecutive_failures + ?3 end,
             failing_since = case when ?2 then null else coalesce(failing_since, ",
        now!(),
        ") end,
             failure_window_started_at =
               case when ?2 then null
                    when failure_window_started_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?6)
                    then failure_window_started_at
                    else ",
        now!(),
        " end,
             failure_window_count =
               case when ?2 then 0
                    when failure_window_started_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?6)
                    then failure_window_count + ?3
                    else ?3 end,
             circuit_opened_at =
               case when ?2 then null
                    when circuit_opened_at is not null then circuit_opened_at
                    when ?3 + case when failure_window_started_at
                                          > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?6)
                                   then failure_window_count else 0 end >= ?5
                    then ",
        now!(),
        " end,
             circuit_probes = case when ?2 or circuit_opened_at is null then 0
                                   else circuit_probes + ?8 end,
             enabled = case when ?4 or ?7 then 0 else enabled end,
             disabled_reason = case when ?4 then 'endpoint_gone'
                                    when ?7 then 'endpoint_failing'
                                    else disabled_reason end,
             updated_at = case when ?4 or ?7 then ",
        now!(),
        " else updated_at end
         where id = ?1
         returning enabled, disabled_reason, circuit_opened_at is not null as circuit_open,
                   circuit_probes"
    ))
    .bind(id)
    .bind(change.succeeded)
    .bind(change.failures)
    .bind(change.disable)
    .bind(i64::from(health.failures))
    .bind(&window_start)
    .bind(failing_too_long)
    .bind(i64::from(change.probe_failed))
    .fetch_optional(&mut **transaction)
    .await?;
    let Some(after) = after else {
        return Ok(());
    };
    if !after.enabled {
        // a disabled subscription is routed no more events
        sqlx::query("delete from subscription_routes where subscription_id = ?1")
            .bind(id)
            .execute(&mut **transaction)
            .await?;
    }
    // (held until, or held for): until enabled again, until the next probe, or released
    let hold = if !after.enabled && after.disabled_reason.as_deref() == Some(FAILING_TOO_LONG) {
        Some((Some(HELD), Duration::ZERO))
    } else if after.circuit_open && (!was_open || change.probe_failed) {
        Some((None, probe_delay(health, after.circuit_probes)))
    } else if !after.circuit_open && was_open {
        Some((None, Duration::ZERO))
    } else {
        None
    };
    if let Some((until, delay)) = hold {
        sqlx::query(
            "update lanes
             set next_allowed_at = coalesce(?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3))
             where id = ?1",
        )
        .bind(id)
        .bind(until)
        .bind(plus(delay))
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// When a lane held back by its rate limit is allowed again, for a lease that took nothing
/// (see the Postgres statement `lanes_allowed_next.sql`).
async fn next_allowed(
    transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, DbError> {
    Ok(sqlx::query_scalar(concat!(
        "select min(next_allowed_at) from lanes where next_due_at <= ",
        now!(),
        " and next_allowed_at > ",
        now!(),
        " and next_allowed_at < ?1"
    ))
    .bind(HELD)
    .fetch_one(&mut **transaction)
    .await?)
}
