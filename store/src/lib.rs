//! Every SQL statement of the service, behind named, typed functions, on two backends.
//!
//! [`Db`] is PostgreSQL (the scale-out path: many workers, row locks, LISTEN/NOTIFY) or an
//! SQLite file (the embedded single-process mode). Each public function takes a `Db` and runs
//! the statement of its backend; callers never know which. The two mechanisms that differ in
//! kind, not only in syntax, are the lease (`FOR NO KEY UPDATE SKIP LOCKED` on Postgres, one
//! `UPDATE … RETURNING` in an immediate transaction on SQLite, whose single writer makes it
//! safe) and the wake-up ([`wake`]: LISTEN/NOTIFY, or an in-process signal).
//!
//! Operator queries (subscriptions, listings, details, dead letters' reads) are built once with
//! sea-orm ([`entity`], [`orm`]) and run on either backend. The hot path keeps a hand-tuned
//! statement per backend: the Postgres ones in `sql/*.sql`, lowercase, with a header saying
//! which index they rely on; the SQLite ones in `sqlite/`. The store's contract suite
//! (`testkit/tests/store.rs`) runs every function on both backends (raw SQL is not
//! compile-checked, so that suite is its check). Handlers and loops call these functions and
//! never build SQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use shared::config::DatabaseConfig;

mod admin;
pub mod charts;
mod entity;
mod error;
mod events;
pub mod health;
mod orm;
pub mod plans;
mod queue;
pub mod retention;
mod sqlite;
mod stored_time;
mod subscriptions;
pub mod wake;

pub use admin::*;
pub use error::DbError;
pub use events::*;
pub use queue::*;
pub use shared::config::{EndpointHealth, MAX_PROBE_INTERVAL};
pub use sqlite::SqliteDb;
pub use subscriptions::*;

/// The channel workers LISTEN on.
pub const DELIVERY_CHANNEL: &str = "ih_deliveries";

/// The service's database.
#[derive(Clone, Debug)]
pub enum Db {
    /// A PostgreSQL pool.
    Postgres(PgPool),
    /// An SQLite file, for one machine.
    Sqlite(SqliteDb),
}

impl Db {
    /// Connections open and idle now, for the pool metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        match self {
            Self::Postgres(pool) => (pool.size(), pool.num_idle()),
            Self::Sqlite(sqlite) => sqlite.pool_usage(),
        }
    }

    /// Closes every connection (the SQLite file is checkpointed and left consistent).
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(sqlite) => sqlite.close().await,
        }
    }
}

/// Builds the database handle for `config.url`: `postgres://…` or `sqlite://…`. It connects
/// lazily, so a process starts (and reports not ready) while the database is down instead of
/// crash-looping.
///
/// # Errors
/// Returns [`DbError::InvalidUrl`] when the URL does not parse.
pub fn connect(config: &DatabaseConfig, application_name: &str) -> Result<Db, DbError> {
    if config.url.is_sqlite() {
        return SqliteDb::connect(config).map(Db::Sqlite);
    }
    let options: PgConnectOptions = config
        .url
        .expose()
        .parse()
        .map_err(|error: sqlx::Error| DbError::InvalidUrl(error.to_string()))?;
    let options = options.application_name(application_name);
    Ok(Db::Postgres(
        PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // No ping before every acquire: it would cost a round trip per request. A connection
        // that died with a database restart fails its statement, which answers 503 once, and
        // is then replaced.
        .test_before_acquire(false)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options),
    ))
}

/// Checks that the database answers.
///
/// # Errors
/// Returns [`DbError::Unavailable`] when it does not.
pub async fn ping(db: &Db) -> Result<(), DbError> {
    match db {
        Db::Postgres(pool) => sqlx::query("select 1").execute(pool).await.map(drop)?,
        Db::Sqlite(sqlite) => sqlite.ping().await?,
    }
    Ok(())
}

/// Wakes every listening worker: NOTIFY on Postgres, reaching every process; on SQLite the
/// workers of this process only (others find the work at their next poll). Callers coalesce
/// (see `api::waker`).
///
/// # Errors
/// Returns [`DbError`] when the database cannot be reached; the workers' poll is the fallback.
pub async fn notify_workers(db: &Db) -> Result<(), DbError> {
    match db {
        Db::Postgres(pool) => {
            sqlx::query(include_str!("sql/notify_workers.sql"))
                .execute(pool)
                .await?;
        }
        Db::Sqlite(sqlite) => sqlite.notify_workers(),
    }
    Ok(())
}

/// A page request: rows after `cursor` (exclusive), at most `limit`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Last id of the previous page.
    pub cursor: Option<Uuid>,
    /// Most rows to return.
    pub limit: i64,
}

impl Page {
    /// The limit as sea-orm takes it (a negative one reads nothing).
    pub(crate) fn limit_rows(self) -> u64 {
        u64::try_from(self.limit).unwrap_or_default()
    }
}

/// A delivery as the admin API shows it.
#[derive(Clone, Debug)]
pub struct DeliveryRow {
    /// Delivery id.
    pub id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Where it goes.
    pub target: shared::state::Target,
    /// The subscription, for webhooks.
    pub subscription_id: Option<Uuid>,
    /// Where it is in its life.
    pub status: shared::state::DeliveryStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// Next try (pending) or lease expiry (leased).
    pub next_attempt_at: DateTime<Utc>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<entity::deliveries::Model> for DeliveryRow {
    type Error = DbError;

    fn try_from(row: entity::deliveries::Model) -> Result<Self, DbError> {
        Ok(Self {
            id: row.id,
            event_id: row.event_id,
            target: orm::parse_state(&row.target)?,
            subscription_id: row.subscription_id,
            status: orm::parse_state(&row.status)?,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
