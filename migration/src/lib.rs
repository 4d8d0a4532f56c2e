//! Schema migrations of Integrations Hub.
//!
//! Each migration is a pair of SQL files under `src/sql/` per backend (Postgres, and SQLite
//! for the embedded mode), run through sea-orm-migration so the applied set is recorded in
//! `seaql_migrations`. Both files of a migration create the same tables, columns, constraints
//! and indexes; they differ only in column types and in what SQLite lacks. [`run`] is what
//! `ih-migrate` does: on Postgres it creates the target database when it is missing and
//! serialises concurrent runs with an advisory lock, so two migration jobs started at once both
//! succeed and the schema is applied once; on SQLite it creates the file and its directory.
//!
//! Applied migrations are never edited; a change is a new migration.

use std::{str::FromStr, time::Duration};

use sea_orm_migration::{
    MigrationStatus,
    prelude::*,
    sea_orm::{ConnectionTrait, DatabaseConnection, SqlxPostgresConnector, SqlxSqliteConnector},
};
use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

/// Declares the migrations, oldest first, from their SQL files alone: migration `<name>` runs
/// `src/sql/<name>.up.sql` (`.down.sql` to roll back) on Postgres and the `.sqlite.` twins on
/// SQLite. It makes one module per migration, [`Migrator`]'s list and
/// [`SCHEMA_FINGERPRINT_SOURCE`], so a new migration is its four files and one line here.
macro_rules! migrations {
    ($( $(#[$doc:meta])* $name:ident, )+) => {
        $(
            $(#[$doc])*
            mod $name {
                use sea_orm_migration::prelude::*;

                use crate::{BackendSql, execute_sql};

                pub struct Migration;

                // by hand: the derive names a migration after its file, and every one made
                // here is in this file
                impl MigrationName for Migration {
                    fn name(&self) -> &str {
                        stringify!($name)
                    }
                }

                #[expect(
                    elided_lifetimes_in_paths,
                    reason = "the trait's async_trait signature elides the manager's lifetime"
                )]
                #[async_trait::async_trait]
                impl MigrationTrait for Migration {
                    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                        let sql = BackendSql {
                            postgres: include_str!(concat!("sql/", stringify!($name), ".up.sql")),
                            sqlite: include_str!(concat!("sql/", stringify!($name), ".sqlite.up.sql")),
                        };
                        execute_sql(manager, sql).await
                    }

                    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                        let sql = BackendSql {
                            postgres: include_str!(concat!("sql/", stringify!($name), ".down.sql")),
                            sqlite: include_str!(concat!("sql/", stringify!($name), ".sqlite.down.sql")),
                        };
                        execute_sql(manager, sql).await
                    }
                }
            }
        )+

        /// Every migration, oldest first.
        pub struct Migrator;

        #[async_trait::async_trait]
        impl MigratorTrait for Migrator {
            fn migrations() -> Vec<Box<dyn MigrationTrait>> {
                vec![$(Box::new($name::Migration)),+]
            }
        }

        /// The SQL of every migration, concatenated; test support derives its template name
        /// from it so a changed migration never reuses a stale template database.
        pub const SCHEMA_FINGERPRINT_SOURCE: &str = concat!($(
            include_str!(concat!("sql/", stringify!($name), ".up.sql")),
            include_str!(concat!("sql/", stringify!($name), ".down.sql")),
            include_str!(concat!("sql/", stringify!($name), ".sqlite.up.sql")),
            include_str!(concat!("sql/", stringify!($name), ".sqlite.down.sql")),
        )+);
    };
}

migrations! {
    /// Subscriptions, the outbox (events and deliveries), attempts and dead letters.
    m20261128_000001_initial,
    /// Routing by event type: `subscription_routes`, filled from the subscriptions there are.
    m20261129_000002_subscription_routes,
    /// The live queue apart from the history: finished deliveries in `delivery_history`;
    /// events, history, attempts and dead letters in day partitions (Postgres); idempotency
    /// keys in their own table.
    m20261129_000003_history,
    /// Partitions a day, an hour or a minute wide, as the retention chooses; history
    /// partitions are not vacuumed for inserts alone.
    m20261129_000004_partition_width,
    /// Lanes: the fair, capped lease's state per subscription (and one for Slack), the
    /// subscriptions' limits, and the live queue indexed by lane.
    m20261130_000005_lanes,
    /// The console's charts and health view: outcomes, lag and due depth per minute and
    /// worker, and attempts per subscription per 5 minutes.
    m20261130_000006_delivery_minutes,
}

/// Key of the session advisory lock that serialises concurrent `ih-migrate` runs.
const MIGRATION_LOCK_KEY: i64 = 0x4948_4d49_4752_4154; // "IHMIGRAT"

/// What `ih-migrate` was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Apply every pending migration.
    Up,
    /// Roll back the newest applied migration.
    Down,
    /// Report each migration as applied or pending.
    Status,
}

/// One migration and whether it has been applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationState {
    /// The migration's name.
    pub name: String,
    /// Whether it is recorded in `seaql_migrations`.
    pub applied: bool,
}

/// Errors of a migration run.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database URL could not be parsed.
    #[error("invalid database url: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server or database could not be reached or created.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] DbErr),
    /// The SQLite file's directory or migration lock could not be created.
    #[error("cannot create or lock {path}: {source}")]
    Filesystem {
        /// The directory or lock file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether a database URL names an SQLite file (`sqlite:` or `sqlite://`).
fn is_sqlite_url(database_url: &str) -> bool {
    database_url.starts_with("sqlite:")
}

/// Runs `command` against the database at `database_url`, creating the database first when it
/// does not exist (for `up`).
///
/// # Errors
/// Returns [`MigrationError`] when the server cannot be reached or a migration fails.
pub async fn run(
    database_url: &str,
    command: Command,
) -> Result<Vec<MigrationState>, MigrationError> {
    if is_sqlite_url(database_url) {
        return run_sqlite(database_url, command).await;
    }
    let options: PgConnectOptions = database_url.parse().map_err(MigrationError::InvalidUrl)?;
    let options = options.application_name("ih-migrate");
    if command == Command::Up {
        create_database_if_missing(&options).await?;
    }

    // The lock lives on its own session: sea-orm runs the migrations on a pool, and a session
    // lock must outlive every statement of the run.
    let mut lock_connection = PgConnection::connect_with(&options).await?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut lock_connection)
        .await?;

    let result = run_locked(&options, command).await;

    // Closing the session releases the lock even if the unlock below fails.
    let _unlock = sqlx::query("select pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut lock_connection)
        .await;
    let _closed = lock_connection.close().await;
    result
}

async fn run_locked(
    options: &PgConnectOptions,
    command: Command,
) -> Result<Vec<MigrationState>, MigrationError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await?;
    migrate(
        SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
        command,
    )
    .await
}

/// Runs are serialised by an exclusive lock on a file beside the database
/// (`<file>.migrate-lock`), the counterpart of Postgres' advisory lock: two processes starting
/// on a new file at once would otherwise both find the schema missing and both create it.
/// The lock is not taken on the database file itself: closing any other descriptor of that
/// file would drop the POSIX locks SQLite holds on it in this process.
async fn run_sqlite(
    database_url: &str,
    command: Command,
) -> Result<Vec<MigrationState>, MigrationError> {
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(MigrationError::InvalidUrl)?
        .create_if_missing(command == Command::Up)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30));
    if command == Command::Up
        && let Some(directory) = options.get_filename().parent()
        && !directory.as_os_str().is_empty()
    {
        std::fs::create_dir_all(directory).map_err(|source| MigrationError::Filesystem {
            path: directory.display().to_string(),
            source,
        })?;
    }
    let lock_path = format!("{}.migrate-lock", options.get_filename().display());
    let lock = match command {
        Command::Up | Command::Down => Some(lock_file(lock_path).await?),
        Command::Status => None,
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let result = migrate(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool), command).await;
    drop(lock);
    result
}

/// Opens (creating it) and exclusively locks `path`; the lock lasts until the file is closed.
async fn lock_file(path: String) -> Result<std::fs::File, MigrationError> {
    let opened = path.clone();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&opened)?;
        // blocks while another run holds it
        file.lock()?;
        Ok(file)
    })
    .await
    .unwrap_or_else(|error| Err(std::io::Error::other(error)))
    .map_err(|source| MigrationError::Filesystem { path, source })
}

async fn migrate(
    db: DatabaseConnection,
    command: Command,
) -> Result<Vec<MigrationState>, MigrationError> {
    match command {
        Command::Up => Migrator::up(&db, None).await?,
        Command::Down => Migrator::down(&db, Some(1)).await?,
        Command::Status => {}
    }
    let states = Migrator::get_migration_with_status(&db)
        .await?
        .into_iter()
        .map(|migration| MigrationState {
            name: migration.name().to_owned(),
            applied: migration.status() == MigrationStatus::Applied,
        })
        .collect();
    let _closed = db.close().await;
    Ok(states)
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), MigrationError> {
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let maintenance = options.clone().database("postgres");
    let mut connection = PgConnection::connect_with(&maintenance).await?;
    let exists: Option<i32> = sqlx::query_scalar("select 1 from pg_database where datname = $1")
        .bind(&database)
        .fetch_optional(&mut connection)
        .await?;
    if exists.is_none() {
        let statement = format!("create database \"{}\"", database.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
        {
            Ok(_) => tracing::info!(database.name = %database, "created database"),
            // another ih-migrate created it between our check and our create: 42P04, or 23505
            // on pg_database's name index when both creates ran at the same moment
            Err(sqlx::Error::Database(error))
                if matches!(error.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let _closed = connection.close().await;
    Ok(())
}

/// One migration's SQL for each backend.
struct BackendSql {
    postgres: &'static str,
    sqlite: &'static str,
}

/// Runs the connection's backend's SQL through sea-orm's schema manager; shared by every
/// migration.
async fn execute_sql(manager: &SchemaManager<'_>, sql: BackendSql) -> Result<(), DbErr> {
    let sql = match manager.get_database_backend() {
        sea_orm_migration::sea_orm::DbBackend::Sqlite => sql.sqlite,
        _ => sql.postgres,
    };
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(|_| ())
}
