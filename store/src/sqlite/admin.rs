//! Operator queries on SQLite: attempts, deliveries, dead letters and their replay.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{SqliteDb, blob_hex, due_depth_and_age, now, queue::settle_lanes, time};
use crate::{BulkReplayFilter, DbError, SLACK_LANE};

/// Dead letters a replay may take: not replayed, and still with somewhere to go.
macro_rules! replayable {
    () => {
        "dl.replayed_at is null
         and (dl.subscription_id is null
              or exists (select 1 from subscriptions s
                         where s.id = dl.subscription_id and s.deleted_at is null))"
    };
}

/// Dead letters matching a bulk replay's filter (?1 subscription, ?2 since, ?3 until).
macro_rules! bulk_filter {
    () => {
        "(?1 is null or dl.subscription_id = ?1)
         and (?2 is null or dl.created_at >= ?2)
         and (?3 is null or dl.created_at < ?3)"
    };
}

impl SqliteDb {
    /// Marks the dead letter replayed and queues its new delivery, in one write transaction;
    /// returns whether it was replayable.
    pub(crate) async fn replay_dead_letter(
        &self,
        id: Uuid,
        new_delivery_id: Uuid,
    ) -> Result<bool, DbError> {
        let mut transaction = self.write().await?;
        let replayed: Option<Uuid> = sqlx::query_scalar(concat!(
            "update dead_letters as dl
             set replayed_at = ",
            now!(),
            ", replay_delivery_id = ?2
             where dl.id = ?1 and ",
            replayable!(),
            "
             returning id"
        ))
        .bind(id)
        .bind(new_delivery_id)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(id) = replayed {
            queue_replays(&mut transaction, &[id]).await?;
        }
        transaction.commit().await?;
        Ok(replayed.is_some())
    }

    /// The batch is chosen and replayed inside one immediate transaction, so two operators
    /// replaying at once never queue the same dead letter twice.
    pub(crate) async fn replay_dead_letters_batch(
        &self,
        filter: &BulkReplayFilter,
        batch_size: i64,
    ) -> Result<u64, DbError> {
        let mut transaction = self.write().await?;
        let picked: Vec<Uuid> = sqlx::query_scalar(concat!(
            "select dl.id from dead_letters dl where ",
            replayable!(),
            " and ",
            bulk_filter!(),
            " order by dl.id limit ?4"
        ))
        .bind(filter.subscription_id)
        .bind(filter.since.map(time))
        .bind(filter.until.map(time))
        .bind(batch_size)
        .fetch_all(&mut *transaction)
        .await?;
        let replays: Vec<Value> = picked
            .iter()
            .map(|id| json!({"id": blob_hex(*id), "delivery_id": blob_hex(Uuid::now_v7())}))
            .collect();
        sqlx::query(concat!(
            "update dead_letters
             set replayed_at = ",
            now!(),
            ", replay_delivery_id = unhex(c.value ->> 'delivery_id')
             from json_each(?1) as c
             where dead_letters.id = unhex(c.value ->> 'id')"
        ))
        .bind(Value::Array(replays).to_string())
        .execute(&mut *transaction)
        .await?;
        queue_replays(&mut transaction, &picked).await?;
        transaction.commit().await?;
        Ok(picked.len() as u64)
    }

    /// The overview's due queue, its oldest row's age and the dead letters not replayed (see
    /// the Postgres statement `console_stats.sql`).
    pub(crate) async fn console_counts(&self) -> Result<(i64, Option<f64>, i64), DbError> {
        Ok(sqlx::query_as(concat!(
            "select due_count as due, oldest_due_age_seconds,
               (select count(*) from (select 1 from dead_letters where replayed_at is null
                                      limit 10000)) as dead_letters
             from (select ",
            due_depth_and_age!(),
            ")"
        ))
        .fetch_one(&self.reader)
        .await?)
    }
}

/// Queues the new delivery of each of these dead letters, just marked replayed: attempts 0,
/// due now, under the `replay_delivery_id` the mark gave it.
async fn queue_replays(
    transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    dead_letters: &[Uuid],
) -> Result<(), DbError> {
    let ids: Vec<String> = dead_letters.iter().copied().map(blob_hex).collect();
    let lanes: Vec<Uuid> = sqlx::query_scalar(concat!(
        "insert into deliveries
           (id, event_id, target, subscription_id, lane, status, attempts, next_attempt_at,
            created_at, updated_at)
         select replay_delivery_id, event_id, target, subscription_id,
                coalesce(subscription_id, ?2), 'pending', 0, ",
        now!(),
        ", ",
        now!(),
        ", ",
        now!(),
        "
         from dead_letters
         where id in (select unhex(value) from json_each(?1))
         returning lane"
    ))
    .bind(json!(ids).to_string())
    .bind(SLACK_LANE)
    .fetch_all(&mut **transaction)
    .await?;
    settle_lanes(transaction, lanes).await
}
