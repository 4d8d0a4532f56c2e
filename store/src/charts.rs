//! The console's charts: each worker writes its outcomes, the publish → delivered lag and the
//! due depth it sampled per minute ([`record_minutes`]); [`chart`] sums a window of those rows
//! into buckets. The attempt log is never read, so a chart costs the same whatever the history
//! holds: at most a day of minutes per worker.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, OnConflict, Query},
};

use crate::{
    Db, DbError,
    entity::delivery_minutes::{self, Column},
};

/// Upper bounds (ms) of the lag buckets; a last bucket counts what is slower.
pub const LAG_BOUNDS_MS: [f64; 14] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0,
    60_000.0, 300_000.0,
];

/// How long minutes are kept.
pub const KEPT: Duration = Duration::from_secs(25 * 3600);

/// One worker's counts of one minute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinuteTally {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Delivered.
    pub delivered: i64,
    /// Failed, to be tried again.
    pub retried: i64,
    /// Dead-lettered.
    pub dead: i64,
    /// Delivered deliveries by lag bucket ([`LAG_BOUNDS_MS`], then the slower ones).
    pub lag_buckets: Vec<i64>,
    /// The due depth this worker sampled in the minute (only the sampling worker has one).
    pub due: Option<i64>,
}

impl MinuteTally {
    /// An empty minute.
    pub fn new(minute: DateTime<Utc>) -> Self {
        Self {
            minute,
            lag_buckets: vec![0; LAG_BOUNDS_MS.len() + 1],
            ..Self::default()
        }
    }

    /// Counts a delivery's publish → delivered lag.
    pub fn add_lag(&mut self, seconds: f64) {
        let ms = seconds * 1_000.0;
        let bucket = LAG_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LAG_BOUNDS_MS.len());
        if let Some(count) = self.lag_buckets.get_mut(bucket) {
            *count += 1;
        }
    }
}

/// The start of the minute `at` falls in.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

/// Writes worker `worker_id`'s minutes, each replacing what the worker wrote for it before
/// (they are its totals so far), and removes minutes older than [`KEPT`].
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn record_minutes(
    db: &Db,
    worker_id: &str,
    minutes: &[MinuteTally],
) -> Result<(), DbError> {
    let rows = minutes
        .iter()
        .map(|minute| {
            vec![
                db.time(minute.minute).into(),
                worker_id.into(),
                minute.delivered.into(),
                minute.retried.into(),
                minute.dead.into(),
                serde_json::json!(minute.lag_buckets).into(),
                minute.due.into(),
            ]
        })
        .collect();
    replace_rows::<delivery_minutes::Entity>(
        db,
        &[Column::Minute, Column::WorkerId],
        &[
            Column::Delivered,
            Column::Retried,
            Column::Dead,
            Column::LagBuckets,
            Column::Due,
        ],
        rows,
    )
    .await
}

/// Writes `rows` (the `key` columns' values, then the `counts` columns') into `E`'s table,
/// each replacing the row of its key: a worker writes its totals so far. Then removes the rows
/// whose first key column, their minute, is older than [`KEPT`].
pub(crate) async fn replace_rows<E: EntityTrait>(
    db: &Db,
    key: &[E::Column],
    counts: &[E::Column],
    rows: Vec<Vec<Expr>>,
) -> Result<(), DbError> {
    let connection = db.orm_writer();
    if !rows.is_empty() {
        let mut insert = Query::insert();
        insert
            .into_table(E::default())
            .columns(key.iter().chain(counts).copied());
        for row in rows {
            insert
                .values(row)
                .map_err(|error| DbError::Orm(sea_orm::DbErr::Custom(error.to_string())))?;
        }
        insert.on_conflict(
            OnConflict::columns(key.iter().copied())
                .update_columns(counts.iter().copied())
                .to_owned(),
        );
        connection.execute(&insert).await?;
    }
    if let Some(minute) = key.first() {
        let oldest = Utc::now() - TimeDelta::from_std(KEPT).unwrap_or(TimeDelta::zero());
        E::delete_many()
            .filter(minute.lt(db.time(oldest)))
            .exec(&connection)
            .await?;
    }
    Ok(())
}

/// The outcomes the workers counted in the minutes of the last `window` (the current minute
/// and those before it): delivered, and failed (retried or dead-lettered).
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn recent_outcomes(db: &Db, window: Duration) -> Result<(i64, i64), DbError> {
    let now = Utc::now();
    let since = minute_of(now) - TimeDelta::from_std(window).unwrap_or(TimeDelta::zero())
        + TimeDelta::minutes(1);
    let rows = delivery_minutes::Entity::find()
        .filter(Column::Minute.gte(db.time(since)))
        .all(&db.orm_reader())
        .await?;
    Ok(rows.iter().fold((0, 0), |(delivered, failed), row| {
        (delivered + row.delivered, failed + row.retried + row.dead)
    }))
}

/// One bucket of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartBucket {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// Delivered in it.
    pub delivered: i64,
    /// Failed and retried.
    pub retried: i64,
    /// Dead-lettered.
    pub dead: i64,
    /// Median publish → delivered lag (the bucket's bound it falls under), when any delivered.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub lag_p99_ms: Option<f64>,
    /// The largest due depth sampled in it.
    pub due: Option<i64>,
}

/// The last `window` before now in buckets of `bucket`, oldest first, every bucket present.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn chart(
    db: &Db,
    window: Duration,
    bucket: Duration,
) -> Result<Vec<ChartBucket>, DbError> {
    let now = Utc::now();
    let bucket = TimeDelta::from_std(bucket).unwrap_or(TimeDelta::minutes(1));
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::hours(1));
    let end = now.duration_trunc(bucket).unwrap_or(now) + bucket;
    let start = end - window;
    let rows = delivery_minutes::Entity::find()
        .filter(Column::Minute.gte(db.time(start)))
        .order_by_asc(Column::Minute)
        .all(&db.orm_reader())
        .await?;
    Ok(buckets(&rows, start, end, bucket))
}

/// Sums minute rows into the buckets from `start` to `end`.
fn buckets(
    rows: &[delivery_minutes::Model],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    bucket: TimeDelta,
) -> Vec<ChartBucket> {
    let mut sums: BTreeMap<DateTime<Utc>, (ChartBucket, Vec<i64>)> = BTreeMap::new();
    let mut at = start;
    while at < end {
        let empty = ChartBucket {
            start: at,
            delivered: 0,
            retried: 0,
            dead: 0,
            lag_p50_ms: None,
            lag_p99_ms: None,
            due: None,
        };
        sums.insert(at, (empty, vec![0; LAG_BOUNDS_MS.len() + 1]));
        at += bucket;
    }
    for row in rows {
        let Some((_, (sum, lags))) = sums.range_mut(..=row.minute).next_back() else {
            continue;
        };
        sum.delivered += row.delivered;
        sum.retried += row.retried;
        sum.dead += row.dead;
        sum.due = sum.due.max(row.due);
        let counts: Vec<i64> = serde_json::from_value(row.lag_buckets.clone()).unwrap_or_default();
        for (total, count) in lags.iter_mut().zip(counts) {
            *total += count;
        }
    }
    sums.into_values()
        .map(|(mut sum, lags)| {
            sum.lag_p50_ms = percentile(&lags, 0.5);
            sum.lag_p99_ms = percentile(&lags, 0.99);
            sum
        })
        .collect()
}

/// The bound of the bucket holding quantile `q` of the counts (the last bound for the slowest
/// bucket); none when nothing was counted.
fn percentile(counts: &[i64], q: f64) -> Option<f64> {
    let total: i64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen as f64 >= rank {
            return LAG_BOUNDS_MS.get(index).or(LAG_BOUNDS_MS.last()).copied();
        }
    }
    LAG_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        minute: DateTime<Utc>,
        worker: &str,
        delivered: i64,
        lags: &[(usize, i64)],
    ) -> delivery_minutes::Model {
        let mut buckets = vec![0; LAG_BOUNDS_MS.len() + 1];
        for (bucket, count) in lags {
            buckets[*bucket] = *count;
        }
        delivery_minutes::Model {
            minute,
            worker_id: worker.to_owned(),
            delivered,
            retried: 1,
            dead: 0,
            lag_buckets: serde_json::json!(buckets),
            due: Some(delivered),
        }
    }

    #[test]
    fn minutes_are_summed_into_buckets_with_their_lag_percentiles() {
        let start = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let five = TimeDelta::minutes(5);
        let rows = [
            // two workers in the first bucket: 99 fast (≤ 5 ms) and one slow (≤ 1 s)
            row(start, "a", 60, &[(0, 60)]),
            row(start + TimeDelta::minutes(2), "b", 40, &[(0, 39), (7, 1)]),
            // the third bucket: all slower than every bound
            row(start + TimeDelta::minutes(12), "a", 3, &[(14, 3)]),
        ];
        let buckets = buckets(&rows, start, start + TimeDelta::minutes(15), five);
        assert_eq!(buckets.len(), 3);
        assert_eq!(
            (buckets[0].delivered, buckets[0].retried, buckets[0].due),
            (100, 2, Some(60))
        );
        assert_eq!(buckets[0].lag_p50_ms, Some(5.0));
        assert_eq!(buckets[0].lag_p99_ms, Some(5.0));
        assert_eq!(buckets[1].delivered, 0);
        assert_eq!(buckets[1].lag_p50_ms, None);
        assert_eq!(buckets[1].due, None);
        assert_eq!(buckets[2].lag_p99_ms, Some(300_000.0));
        let mut minute = MinuteTally::new(start);
        minute.add_lag(0.004);
        minute.add_lag(0.7);
        minute.add_lag(1_000.0);
        assert_eq!(minute.lag_buckets[0], 1);
        assert_eq!(minute.lag_buckets[7], 1);
        assert_eq!(minute.lag_buckets[14], 1);
    }
}
