//! The SQLite backend of the embedded single-process mode.
//!
//! One file, in WAL mode (readers never wait for the writer), `synchronous = FULL` (a commit
//! returns after the write-ahead log is on disk, so an acknowledged publish survives a crash
//! of the process or of the machine) and foreign keys on (as on Postgres).
//!
//! SQLite has one writer per file. Every write goes through a pool of exactly one connection,
//! so writers of this process queue in order in the pool instead of spinning in SQLite's busy
//! handler; the busy timeout only covers other processes on the same file. Write transactions
//! start `IMMEDIATE`, taking the write lock at `BEGIN`, so a transaction never fails halfway
//! on a lock and what it read cannot change before it writes: that is what makes the lease (one
//! `UPDATE … RETURNING`) and the idempotency check safe without row locks.
//!
//! Conventions of the schema (see the SQLite migration): uuids are 16-byte blobs, times are
//! UTC text in one fixed-width form ([`time`]), JSON is text. Ids that Postgres makes with
//! `ih_uuid_v7()` are made here in Rust.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    SqlitePool, Transaction,
    sqlite::{
        Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::DbError;
pub(crate) use crate::stored_time::{now, plus, time};
use shared::config::DatabaseConfig;

mod admin;
mod events;
mod queue;
mod retention;

/// How long a write waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Due deliveries (pending and due, or with an expired lease), counted up to 100,000 so a huge
/// backlog stays cheap to count; and the seconds since the oldest of them became due. Both
/// read the pending and leased rows' partial indexes. Columns `due_count` and
/// `oldest_due_age_seconds`.
macro_rules! due_depth_and_age {
    () => {
        concat!(
            "(select count(*) from (select 1 from deliveries
                                     where status in ('pending', 'leased')
                                       and next_attempt_at <= ",
            now!(),
            "
                                     limit 100000)) as due_count,
             (select (julianday('now') - julianday(min(next_attempt_at))) * 86400.0
                from deliveries
               where status in ('pending', 'leased')
                 and next_attempt_at <= ",
            now!(),
            ") as oldest_due_age_seconds"
        )
    };
}
pub(crate) use due_depth_and_age;

/// An SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Bumped after each commit that queued work; the workers of this process wait on it.
    wake: Arc<watch::Sender<u64>>,
}

impl SqliteDb {
    /// Opens the file's pools lazily. The file must exist with its schema (`ih` and
    /// `ih-migrate up` create it).
    ///
    /// # Errors
    /// Returns [`DbError::InvalidUrl`] when the URL does not parse or names an in-memory
    /// database (each connection would get its own, and nothing would be durable).
    pub fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(config.url.expose())
            .map_err(|error| DbError::InvalidUrl(error.to_string()))?;
        let url = config.url.expose();
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(DbError::InvalidUrl(
                "an in-memory SQLite database keeps nothing; name a file, e.g. sqlite://data/integrations-hub.db".to_owned(),
            ));
        }
        let options = options
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.clone());
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        let (wake, _) = watch::channel(0);
        Ok(Self {
            writer,
            reader,
            wake: Arc::new(wake),
        })
    }

    pub(crate) fn pool_usage(&self) -> (u32, usize) {
        (
            self.writer.size() + self.reader.size(),
            self.writer.num_idle() + self.reader.num_idle(),
        )
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        // reads the schema too, so a file that was never migrated is not ready
        sqlx::query("select 1 from deliveries limit 1")
            .execute(&self.reader)
            .await?;
        Ok(())
    }

    /// The write pool (one connection), for the operator queries built with sea-orm.
    pub(crate) fn writer(&self) -> SqlitePool {
        self.writer.clone()
    }

    /// The read pool.
    pub(crate) fn reader(&self) -> SqlitePool {
        self.reader.clone()
    }

    pub(crate) fn notify_workers(&self) {
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver that changes whenever work was queued by this process.
    pub(crate) fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Starts a write transaction holding the file's write lock.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>, DbError> {
        Ok(self.writer.begin_with("begin immediate").await?)
    }
}

/// A uuid as the hex of its 16 bytes, for rows passed as JSON and stored with `unhex()`: a
/// statement taking a JSON array of rows (`json_each`) writes many rows in one round trip.
pub(crate) fn blob_hex(id: Uuid) -> String {
    id.simple().to_string()
}
