//! Retention on SQLite: a span's rows are deleted in batches, each its own short write
//! transaction, so a publish or a completion never waits long behind it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::{SqliteDb, time};
use crate::{
    DbError,
    retention::{
        BatchSize, DayRows, KeptBecause, PruneReport, PrunedSpan, span_of, uuid_floor, uuid_time,
    },
};

/// The tables a span's rows are deleted from, the event last: until then, the span's rows stay
/// reachable from it. Each names its column holding the event id.
const TABLES: [(&str, &str); 5] = [
    ("delivery_attempts", "event_id"),
    ("delivery_history", "event_id"),
    ("dead_letters", "event_id"),
    ("idempotency_keys", "event_id"),
    ("outbox_events", "id"),
];

impl SqliteDb {
    pub(crate) async fn prune(
        &self,
        cutoff: DateTime<Utc>,
        dead_letter_cutoff: DateTime<Utc>,
        width: Duration,
        dry_run: bool,
    ) -> Result<PruneReport, DbError> {
        let mut report = PruneReport {
            ran: true,
            spans: Vec::new(),
        };
        let mut batch = BatchSize::new();
        let mut next: Option<Uuid> = sqlx::query_scalar("select min(id) from outbox_events")
            .fetch_one(&self.reader)
            .await?;
        while let Some(first) = next {
            let (start, end) = span_of(uuid_time(first), width);
            if end > cutoff {
                break;
            }
            let (low, high) = (uuid_floor(start), uuid_floor(end));
            let mut connection = self.reader.acquire().await?;
            let mut kept = held(&mut connection, low, high, dead_letter_cutoff).await?;
            let rows = if dry_run || kept.is_some() {
                count(&mut connection, low, high).await?
            } else {
                drop(connection);
                let (rows, held_meanwhile) = self
                    .delete_span(low, high, dead_letter_cutoff, &mut batch)
                    .await?;
                kept = held_meanwhile;
                rows
            };
            report.spans.push(PrunedSpan {
                start,
                end,
                rows,
                kept,
            });
            next = sqlx::query_scalar("select min(id) from outbox_events where id >= ?1")
                .bind(high)
                .fetch_one(&self.reader)
                .await?;
        }
        Ok(report)
    }

    /// Deletes the span's rows table by table in batches; each batch checks again that the
    /// span may go (a replay may have queued one of its events since), and stops if not.
    async fn delete_span(
        &self,
        low: Uuid,
        high: Uuid,
        dead_letter_cutoff: DateTime<Utc>,
        batch: &mut BatchSize,
    ) -> Result<(DayRows, Option<KeptBecause>), DbError> {
        let mut counts = [0_u64; 5];
        for (index, (table, column)) in TABLES.iter().enumerate() {
            loop {
                let started = Instant::now();
                let size = batch.get();
                let mut transaction = self.write().await?;
                if let Some(kept) = held(&mut transaction, low, high, dead_letter_cutoff).await? {
                    transaction.rollback().await?;
                    return Ok((rows(counts), Some(kept)));
                }
                let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "delete from {table} where rowid in
                       (select rowid from {table} where {column} >= ?1 and {column} < ?2 limit ?3)"
                )))
                .bind(low)
                .bind(high)
                .bind(size)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                transaction.commit().await?;
                batch.adapt(started);
                counts[index] += deleted;
                // fewer than asked for: the table holds no more of the span
                if deleted < u64::from(size) {
                    break;
                }
            }
        }
        Ok((rows(counts), None))
    }
}

fn rows(counts: [u64; 5]) -> DayRows {
    DayRows {
        attempts: counts[0],
        deliveries: counts[1],
        dead_letters: counts[2],
        events: counts[4],
    }
}

async fn count(
    connection: &mut SqliteConnection,
    low: Uuid,
    high: Uuid,
) -> Result<DayRows, DbError> {
    let mut counts = [0_u64; 5];
    for ((table, column), count) in TABLES.iter().zip(counts.iter_mut()) {
        let counted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {table} where {column} >= ?1 and {column} < ?2"
        )))
        .bind(low)
        .bind(high)
        .fetch_one(&mut *connection)
        .await?;
        *count = u64::try_from(counted).unwrap_or(0);
    }
    Ok(rows(counts))
}

async fn held(
    connection: &mut SqliteConnection,
    low: Uuid,
    high: Uuid,
    dead_letter_cutoff: DateTime<Utc>,
) -> Result<Option<KeptBecause>, DbError> {
    let (live, dead): (bool, bool) = sqlx::query_as(
        "select exists (select 1 from deliveries where event_id >= ?1 and event_id < ?2),
                exists (select 1 from dead_letters
                        where event_id >= ?1 and event_id < ?2
                          and replayed_at is null and created_at > ?3)",
    )
    .bind(low)
    .bind(high)
    .bind(time(dead_letter_cutoff))
    .fetch_one(&mut *connection)
    .await?;
    Ok(KeptBecause::from_checks(live, dead))
}
