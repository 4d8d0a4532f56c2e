//! Retention: how finished work leaves the database.
//!
//! Every row of an event (the event, its finished deliveries, attempts and dead letters) is
//! filed under the time of the event's UUID v7, in spans a day, an hour, a minute or 10 s
//! wide (the width the retention chooses, [`Retention::partition_width`]). A span is removed
//! whole once it ended more than the retention ago, unless one of its events still has a live
//! delivery (pending or leased) or a dead letter not yet replayed that is younger than the
//! dead-letter retention: such a span is kept, and looked at again on the next run. On Postgres a span is
//! a partition of each history table and leaves with `drop table` (no delete, nothing to
//! vacuum); on SQLite its rows are deleted in short batches.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::{Db, DbError};
use shared::config::Retention;

/// Why a span past its retention was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeptBecause {
    /// One of its events has a pending or leased delivery.
    LiveDelivery,
    /// One of its events has a dead letter not yet replayed, within the dead-letter retention.
    UnreplayedDeadLetter,
    /// Postgres only: its tables were busy past the lock timeout; the next run tries again.
    Busy,
}

impl KeptBecause {
    /// The reason from the two checks of a span: a live delivery, an unreplayed dead letter.
    pub(crate) const fn from_checks(live: bool, dead_letter: bool) -> Option<Self> {
        if live {
            Some(Self::LiveDelivery)
        } else if dead_letter {
            Some(Self::UnreplayedDeadLetter)
        } else {
            None
        }
    }
}

/// The rows of one span, by table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayRows {
    /// Events.
    pub events: u64,
    /// Finished deliveries.
    pub deliveries: u64,
    /// Attempts.
    pub attempts: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

impl DayRows {
    /// The rows of every table, with the table's name.
    #[must_use]
    pub fn by_table(&self) -> [(&'static str, u64); 4] {
        [
            ("events", self.events),
            ("deliveries", self.deliveries),
            ("attempts", self.attempts),
            ("dead_letters", self.dead_letters),
        ]
    }
}

/// One span past its retention, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedSpan {
    /// The time of the first event the span may hold.
    pub start: DateTime<Utc>,
    /// The end of the span (the first time it does not hold).
    pub end: DateTime<Utc>,
    /// Its rows (removed, or that would be by a dry run). On Postgres the counts come from the
    /// planner's statistics when the partition has them, else from a count.
    pub rows: DayRows,
    /// `None` when it was removed (or would be), else why it was kept.
    pub kept: Option<KeptBecause>,
}

/// What a retention run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// False when another process was running retention; nothing was looked at.
    pub ran: bool,
    /// The spans past their retention, oldest first.
    pub spans: Vec<PrunedSpan>,
}

impl PruneReport {
    /// Logs each span: removed (or that a dry run would remove) with its rows, or kept and
    /// why.
    pub fn log(&self, dry_run: bool) {
        let verb = if dry_run { "would remove" } else { "removed" };
        for span in &self.spans {
            match span.kept {
                None => tracing::info!(
                    start = %span.start,
                    end = %span.end,
                    events = span.rows.events,
                    deliveries = span.rows.deliveries,
                    attempts = span.rows.attempts,
                    dead_letters = span.rows.dead_letters,
                    "retention {verb} a span of events"
                ),
                Some(reason) => tracing::info!(
                    start = %span.start,
                    end = %span.end,
                    reason = ?reason,
                    "retention kept a span of events past its retention"
                ),
            }
        }
    }

    /// The rows removed (or that a dry run would remove), by table.
    #[must_use]
    pub fn removed(&self) -> DayRows {
        let mut total = DayRows::default();
        for span in self.spans.iter().filter(|span| span.kept.is_none()) {
            total.events += span.rows.events;
            total.deliveries += span.rows.deliveries;
            total.attempts += span.rows.attempts;
            total.dead_letters += span.rows.dead_letters;
        }
        total
    }
}

/// Key of the advisory lock that lets one process at a time run retention.
const RETENTION_LOCK_KEY: i64 = 0x4948_5245_5445_4e54; // "IHRETENT"

/// The smallest UUID v7 made at or after `at`: the lower bound of a time window as a key range.
#[must_use]
pub fn uuid_floor(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    Uuid::from_u128(u128::from(millis) << 80)
}

/// The instant a UUID v7 was made (millisecond precision).
#[must_use]
pub fn uuid_time(id: Uuid) -> DateTime<Utc> {
    let millis = i64::try_from(id.as_u128() >> 80).unwrap_or(0);
    DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or_default()
}

/// The span `[start, end)` of `width` that holds `at`, on a grid from the Unix epoch (so a
/// day is a UTC day).
#[must_use]
pub fn span_of(at: DateTime<Utc>, width: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let width = i64::try_from(width.as_millis()).unwrap_or(i64::MAX).max(1);
    let start = at.timestamp_millis().div_euclid(width) * width;
    let time = |millis| DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or_default();
    (time(start), time(start.saturating_add(width)))
}

/// Creates a partition for each day from `first` to `last` that no partition covers any part
/// of (Postgres;
/// SQLite has none) and returns how many tables it created.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn create_partitions(db: &Db, first: NaiveDate, last: NaiveDate) -> Result<i32, DbError> {
    match db {
        Db::Postgres(pool) => Ok(
            sqlx::query_scalar("select ih_create_day_partitions($1, $2)")
                .bind(first)
                .bind(last)
                .fetch_one(pool)
                .await?,
        ),
        Db::Sqlite(_) => Ok(0),
    }
}

/// Keeps partitions ready from now to a horizon ahead (a week of days, two days of hours, an
/// hour of minutes, 10 minutes of 10 s), `width` wide (`None`: as wide as the partition of now). Run by `ih-api`
/// at start and every few minutes, and by the workers' maintenance with their retention's
/// width, so a publish always finds its partition. A partition made wider than `width` that
/// holds no row yet is replaced.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn create_partitions_ahead(db: &Db, width: Option<Duration>) -> Result<i32, DbError> {
    create_partitions_at(db, width, Utc::now()).await
}

/// [`create_partitions_ahead`] as if now were `at`.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn create_partitions_at(
    db: &Db,
    width: Option<Duration>,
    at: DateTime<Utc>,
) -> Result<i32, DbError> {
    let Db::Postgres(pool) = db else {
        return Ok(0);
    };
    let seconds = width.map(|width| i64::try_from(width.as_secs()).unwrap_or(i64::MAX));
    // in two transactions: the drop of a wide partition locks the parent tables, which every
    // publish waits for, so it commits before the partitions are made
    if seconds.is_some() {
        sqlx::query("select ih_replace_wide_partitions($1, $2)")
            .bind(seconds)
            .bind(at)
            .execute(pool)
            .await?;
    }
    Ok(sqlx::query_scalar("select ih_create_partitions($1, $2)")
        .bind(seconds)
        .bind(at)
        .fetch_one(pool)
        .await?)
}

/// Removes the spans past `policy` (or, with `dry_run`, only reports them), one process at a
/// time across the fleet.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn prune(db: &Db, policy: Retention, dry_run: bool) -> Result<PruneReport, DbError> {
    let now = Utc::now();
    let cutoff = now - delta(policy.finished);
    let dead_letter_cutoff = now - delta(policy.dead_letters);
    match db {
        Db::Postgres(pool) => prune_postgres(pool, cutoff, dead_letter_cutoff, dry_run).await,
        Db::Sqlite(sqlite) => {
            sqlite
                .prune(
                    cutoff,
                    dead_letter_cutoff,
                    policy.partition_width(),
                    dry_run,
                )
                .await
        }
    }
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// The history tables, each partitioned by the event's time.
const PARTITIONED: [&str; 4] = [
    "outbox_events",
    "delivery_history",
    "delivery_attempts",
    "dead_letters",
];

async fn prune_postgres(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    dead_letter_cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, DbError> {
    // A session lock on a connection of its own, held for the whole run.
    let mut lock = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(RETENTION_LOCK_KEY)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        return Ok(PruneReport::default());
    }
    let result = prune_spans(pool, cutoff, dead_letter_cutoff, dry_run).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(RETENTION_LOCK_KEY)
        .execute(&mut *lock)
        .await;
    if unlocked.is_err() {
        // a session whose unlock failed is closed, which releases its locks
        lock.detach().close().await.ok();
    }
    result
}

async fn prune_spans(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    dead_letter_cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, DbError> {
    let partitions: Vec<(String, Uuid, Uuid)> =
        sqlx::query_as("select suffix, low, high from ih_partitions()")
            .fetch_all(pool)
            .await?;
    let mut report = PruneReport {
        ran: true,
        spans: Vec::new(),
    };
    for (suffix, low, high) in partitions {
        if uuid_time(high) > cutoff {
            continue;
        }
        let mut rows = partition_rows(&mut *pool.acquire().await?, &suffix).await?;
        let kept = if dry_run {
            held(pool, low, high, dead_letter_cutoff).await?
        } else {
            drop_span(pool, &suffix, (low, high), dead_letter_cutoff, &mut rows).await?
        };
        // an empty span (a partition made ahead that never got an event) goes unreported, as
        // on SQLite, where it has no rows to find
        if kept.is_some() || rows != DayRows::default() {
            report.spans.push(PrunedSpan {
                start: uuid_time(low),
                end: uuid_time(high),
                rows,
                kept,
            });
        }
    }
    Ok(report)
}

/// The rows of a span's partitions: the planner's estimate when the partition was analyzed (a
/// count would read the whole span), else a count (a partition never analyzed is small or new).
async fn partition_rows(
    connection: &mut sqlx::PgConnection,
    suffix: &str,
) -> Result<DayRows, DbError> {
    let mut counts = [0_u64; 4];
    for (count, table) in counts.iter_mut().zip(PARTITIONED) {
        let name = format!("{table}_{suffix}");
        let estimate: Option<f32> =
            sqlx::query_scalar("select reltuples from pg_class where oid = to_regclass($1)")
                .bind(&name)
                .fetch_optional(&mut *connection)
                .await?;
        *count = match estimate {
            Some(estimate) if estimate >= 0.0 => float_count(estimate),
            Some(_) => {
                let counted: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {name}")))
                        .fetch_one(&mut *connection)
                        .await?;
                u64::try_from(counted).unwrap_or(0)
            }
            None => 0,
        };
    }
    Ok(DayRows {
        events: counts[0],
        deliveries: counts[1],
        attempts: counts[2],
        dead_letters: counts[3],
    })
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a row estimate, non-negative and far below u64::MAX"
)]
fn float_count(estimate: f32) -> u64 {
    estimate.round() as u64
}

/// Why the span of events `[low, high)` must be kept, if it must: read with one statement, so
/// both checks see one snapshot.
async fn held<'c, E>(
    executor: E,
    low: Uuid,
    high: Uuid,
    dead_letter_cutoff: DateTime<Utc>,
) -> Result<Option<KeptBecause>, DbError>
where
    E: sqlx::PgExecutor<'c>,
{
    let (live, dead): (bool, bool) = sqlx::query_as(
        "select exists (select 1 from deliveries where event_id >= $1 and event_id < $2),
                exists (select 1 from dead_letters
                        where event_id >= $1 and event_id < $2
                          and replayed_at is null and created_at > $3)",
    )
    .bind(low)
    .bind(high)
    .bind(dead_letter_cutoff)
    .fetch_one(executor)
    .await?;
    Ok(KeptBecause::from_checks(live, dead))
}

/// How long the drop waits for its locks. While it waits, every publish queues behind it (the
/// drop locks the parent tables), so the wait stays well under what a publish may take before
/// the API sheds load; a span busy that long (a long listing reading it) is tried again next
/// run.
const DROP_LOCK_TIMEOUT: &str = "100ms";

/// Drops a span's partitions unless it must be kept. The check is made again once the
/// partitions are locked, so no replay can queue a delivery of the span between the check and
/// the drop, and `rows` is counted again under the locks. The span's idempotency keys are
/// deleted afterwards, in batches: a key whose event is gone is free again (the publish takes
/// it over), so a key left behind for a moment does no harm.
async fn drop_span(
    pool: &PgPool,
    suffix: &str,
    (low, high): (Uuid, Uuid),
    dead_letter_cutoff: DateTime<Utc>,
    rows: &mut DayRows,
) -> Result<Option<KeptBecause>, DbError> {
    // checked first without locks: a span that must be kept (the usual case for one holding
    // an unreplayed dead letter) is never locked, so no statement waits on it
    if let Some(kept) = held(pool, low, high, dead_letter_cutoff).await? {
        return Ok(Some(kept));
    }
    let tables: Vec<String> = PARTITIONED
        .iter()
        .map(|table| format!("{table}_{suffix}"))
        .collect();
    let list = tables.join(", ");
    let mut transaction = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "set local lock_timeout = '{DROP_LOCK_TIMEOUT}'"
    )))
    .execute(&mut *transaction)
    .await?;
    let locked = sqlx::query(sqlx::AssertSqlSafe(format!(
        "lock table {list} in access exclusive mode"
    )))
    .execute(&mut *transaction)
    .await;
    match locked {
        Ok(_) => {}
        // 55P03: lock_not_available
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            transaction.rollback().await?;
            return Ok(Some(KeptBecause::Busy));
        }
        Err(error) => return Err(error.into()),
    }
    if let Some(kept) = held(&mut *transaction, low, high, dead_letter_cutoff).await? {
        transaction.rollback().await?;
        return Ok(Some(kept));
    }
    // counted again under the lock: what is dropped, not what was there before a completion
    // moved its delivery into the span's history
    *rows = partition_rows(&mut transaction, suffix).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("drop table {list}")))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;

    loop {
        let deleted = sqlx::query(
            "delete from idempotency_keys
             where ctid = any (array(select ctid from idempotency_keys
                                     where event_id >= $1 and event_id < $2
                                     limit 5000))",
        )
        .bind(low)
        .bind(high)
        .execute(pool)
        .await?
        .rows_affected();
        if deleted == 0 {
            break;
        }
    }
    Ok(None)
}

/// The longest a batch of SQLite deletes may hold the write lock.
pub(crate) const SQLITE_BATCH_BUDGET: Duration = Duration::from_millis(50);

/// Sizes SQLite's delete batches so that each stays well inside [`SQLITE_BATCH_BUDGET`]:
/// halves after a batch that took more than half of it, doubles after one under a tenth.
#[derive(Debug)]
pub(crate) struct BatchSize(u32);

impl BatchSize {
    pub(crate) const fn new() -> Self {
        Self(500)
    }

    pub(crate) const fn get(&self) -> u32 {
        self.0
    }

    pub(crate) fn adapt(&mut self, started: Instant) {
        let took = started.elapsed();
        if took > SQLITE_BATCH_BUDGET / 2 {
            self.0 = (self.0 / 2).max(10);
        } else if took < SQLITE_BATCH_BUDGET / 10 {
            self.0 = (self.0 * 2).min(20_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Days;

    use super::*;

    #[test]
    fn a_day_is_a_range_of_v7_ids() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        let noon = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let width = Duration::from_secs(86_400);
        let (start, end) = span_of(noon, width);
        let (low, high) = (uuid_floor(start), uuid_floor(end));
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(noon.timestamp()).unwrap(),
            0,
        ));
        assert!(low <= id && id < high);
        assert_eq!(uuid_time(id).date_naive(), day);
        assert_eq!(uuid_time(low).date_naive(), day);
        assert_eq!(uuid_time(high).date_naive(), day + Days::new(1));
        assert_eq!(uuid_floor(span_of(end, width).0), high);
    }

    #[test]
    fn a_span_is_on_a_grid_from_the_epoch() {
        let on = |h, m| {
            NaiveDate::from_ymd_opt(2026, 11, 29)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
                .and_utc()
        };
        let at = on(19, 30) + TimeDelta::milliseconds(12_345);
        let minute = Duration::from_secs(60);
        assert_eq!(span_of(at, minute), (on(19, 30), on(19, 31)));
        assert_eq!(span_of(at, minute * 60), (on(19, 0), on(20, 0)));
        assert_eq!(
            span_of(at, minute * 1_440),
            (on(0, 0), on(0, 0) + TimeDelta::days(1))
        );
        // the first millisecond of a span is in it, the one before is in the previous span
        assert_eq!(span_of(on(19, 31), minute).0, on(19, 31));
        assert_eq!(
            span_of(on(19, 31) - TimeDelta::milliseconds(1), minute).0,
            on(19, 30)
        );
    }
}
