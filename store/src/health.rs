//! The console's subscription health view: each worker writes its attempts per subscription in
//! 5-minute buckets ([`record_subscription_minutes`]); [`subscription_health`] joins an hour of
//! them with each subscription's state and its lane's rows in flight and due, most troubled
//! first.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sea_orm::{
    ConnectionTrait, FromQueryResult,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use uuid::Uuid;

use crate::{
    Db, DbError, SubscriptionRow,
    charts::replace_rows,
    entity::subscription_minutes::{self, Column},
    subscriptions::live_subscription_rows,
};
use shared::state::EndpointState;

/// The width of a subscription's bucket.
pub const BUCKET: Duration = Duration::from_secs(300);

/// The span of the health view.
pub const SPAN: Duration = Duration::from_secs(3600);

/// Most subscriptions the view lists.
pub const MAX_LISTED: usize = 500;

/// One worker's attempts for one subscription in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionTally {
    /// The bucket's start.
    pub bucket: DateTime<Utc>,
    /// The subscription.
    pub subscription_id: Uuid,
    /// Attempts that delivered.
    pub delivered: i64,
    /// Attempts that failed.
    pub failed: i64,
}

/// The start of the bucket `at` falls in.
pub fn bucket_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let width = TimeDelta::from_std(BUCKET).unwrap_or(TimeDelta::minutes(5));
    at.duration_trunc(width).unwrap_or(at)
}

/// Writes worker `worker_id`'s buckets, each replacing what it wrote for it before, and
/// removes buckets older than [`KEPT`].
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn record_subscription_minutes(
    db: &Db,
    worker_id: &str,
    tallies: &[SubscriptionTally],
) -> Result<(), DbError> {
    let rows = tallies
        .iter()
        .map(|tally| {
            vec![
                db.time(tally.bucket).into(),
                worker_id.into(),
                tally.subscription_id.into(),
                tally.delivered.into(),
                tally.failed.into(),
            ]
        })
        .collect();
    replace_rows::<subscription_minutes::Entity>(
        db,
        &[Column::Minute, Column::WorkerId, Column::SubscriptionId],
        &[Column::Delivered, Column::Failed],
        rows,
    )
    .await
}

/// One bucket of a subscription's sparkline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthPoint {
    /// Attempts that delivered.
    pub delivered: i64,
    /// Attempts that failed.
    pub failed: i64,
}

/// A subscription as the health view shows it.
#[derive(Clone, Debug)]
pub struct SubscriptionHealth {
    /// The subscription.
    pub subscription: SubscriptionRow,
    /// Its endpoint's state.
    pub state: EndpointState,
    /// Its rows leased now (requests in flight, or a dead worker's waiting out their lease).
    pub in_flight: i64,
    /// Its rows due now and waiting.
    pub due: i64,
    /// The last hour, oldest bucket first, every bucket present.
    pub sparkline: Vec<HealthPoint>,
}

impl SubscriptionHealth {
    /// Attempts of the last hour that delivered, and that failed.
    pub fn totals(&self) -> (i64, i64) {
        self.sparkline
            .iter()
            .fold((0, 0), |(delivered, failed), point| {
                (delivered + point.delivered, failed + point.failed)
            })
    }

    /// The share of the last hour's attempts that delivered; none without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        let (delivered, failed) = self.totals();
        let attempts = delivered + failed;
        (attempts > 0).then(|| delivered as f64 / attempts as f64)
    }

    /// Sorts most troubled first: an open circuit, then failing, then disabled, then healthy;
    /// within a state the lowest success rate, then the longest run of failures.
    fn trouble(&self) -> (u8, i64, i32) {
        let rank = match self.state {
            EndpointState::CircuitOpen => 0,
            EndpointState::Failing => 1,
            EndpointState::Disabled => 2,
            EndpointState::Healthy => 3,
        };
        // per mille, so the key is an integer; no attempts sort as fully successful
        let rate = self
            .success_rate()
            .map_or(1_000, |rate| (rate * 1_000.0) as i64);
        (rank, rate, -self.subscription.consecutive_failures)
    }
}

#[derive(FromQueryResult)]
struct LaneCount {
    lane: Uuid,
    rows: i64,
}

#[derive(FromQueryResult)]
struct BucketSum {
    subscription_id: Uuid,
    minute: DateTime<Utc>,
    delivered: i64,
    failed: i64,
}

/// The live queue's rows of `status` by lane (pending ones only when due). The status stays a
/// literal, so the partial indexes serve the count.
async fn lane_counts(
    db: &Db,
    connection: &impl ConnectionTrait,
    status: &'static str,
) -> Result<HashMap<Uuid, i64>, DbError> {
    let mut select = Query::select();
    select
        .column(Alias::new("lane"))
        .expr_as(Expr::cust("count(*)"), Alias::new("rows"))
        .from(Alias::new("deliveries"))
        .and_where(Expr::cust(format!("status = '{status}'")))
        .group_by_col(Alias::new("lane"));
    if status == "pending" {
        select.and_where(Expr::col(Alias::new("next_attempt_at")).lte(db.now()));
    }
    Ok(
        LaneCount::find_by_statement(connection.get_database_backend().build(&select))
            .all(connection)
            .await?
            .into_iter()
            .map(|count| (count.lane, count.rows))
            .collect(),
    )
}

/// Every subscription (not deleted; at most [`MAX_LISTED`]) with its health over the last
/// hour, most troubled first.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn subscription_health(db: &Db) -> Result<Vec<SubscriptionHealth>, DbError> {
    let connection = db.orm_reader();
    let subscriptions = live_subscription_rows(db).await?;
    let end = bucket_of(Utc::now()) + TimeDelta::from_std(BUCKET).unwrap_or_default();
    let start = end - TimeDelta::from_std(SPAN).unwrap_or_default();
    let sums = BucketSum::find_by_statement(
        connection.get_database_backend().build(
            Query::select()
                .column(Column::SubscriptionId)
                .column(Column::Minute)
                // a sum of bigints is numeric on Postgres: cast back
                .expr_as(Expr::cust("cast(sum(delivered) as bigint)"), Alias::new("delivered"))
                .expr_as(Expr::cust("cast(sum(failed) as bigint)"), Alias::new("failed"))
                .from(subscription_minutes::Entity)
                .and_where(Expr::col(Column::Minute).gte(db.time(start)))
                .group_by_col(Column::SubscriptionId)
                .group_by_col(Column::Minute),
        ),
    )
    .all(&connection)
    .await?;
    let mut buckets: HashMap<Uuid, BTreeMap<DateTime<Utc>, HealthPoint>> = HashMap::new();
    for sum in sums {
        buckets.entry(sum.subscription_id).or_default().insert(
            sum.minute,
            HealthPoint {
                delivered: sum.delivered,
                failed: sum.failed,
            },
        );
    }
    let leased = lane_counts(db, &connection, "leased").await?;
    let due = lane_counts(db, &connection, "pending").await?;
    let width = TimeDelta::from_std(BUCKET).unwrap_or(TimeDelta::minutes(5));
    let mut health: Vec<SubscriptionHealth> = subscriptions
        .into_iter()
        .map(|subscription| {
            let counted = buckets.remove(&subscription.id).unwrap_or_default();
            let mut sparkline = Vec::new();
            let mut at = start;
            while at < end {
                sparkline.push(counted.get(&at).copied().unwrap_or_default());
                at += width;
            }
            SubscriptionHealth {
                state: subscription.state(),
                in_flight: leased.get(&subscription.id).copied().unwrap_or_default(),
                due: due.get(&subscription.id).copied().unwrap_or_default(),
                sparkline,
                subscription,
            }
        })
        .collect();
    health.sort_by_key(SubscriptionHealth::trouble);
    health.truncate(MAX_LISTED);
    Ok(health)
}
