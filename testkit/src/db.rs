//! Test databases: one fresh database per test, on either backend.
//!
//! On Postgres, a database copied from a migrated template. The template is built once per
//! schema version (its name carries a hash of the migrations) under an advisory lock, so test
//! processes running in parallel wait for one another instead of racing. Each test's database
//! is dropped when its [`TestDb`] is dropped; databases left by crashed runs are swept after
//! two hours. On SQLite, a freshly migrated file in a directory of its own, removed on drop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

use std::{
    path::PathBuf,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};
use sqlx::{
    Connection, PgConnection, PgPool, SqlitePool,
    postgres::PgConnectOptions,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};
use uuid::Uuid;

use shared::config::{DatabaseConfig, DatabaseUrl};
use store::{Db, SqliteDb};

/// The two backends, for tests that run on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// An SQLite file.
    Sqlite,
}

/// The test's own connections, for assertions in raw SQL.
enum Raw {
    Postgres {
        pool: PgPool,
        server: Box<PgConnectOptions>,
    },
    Sqlite {
        pool: SqlitePool,
        directory: PathBuf,
    },
}

/// Runs `$body` with `$pool` bound to the raw pool of either backend (the body compiles once
/// per backend; sqlx's query functions are generic over the database).
macro_rules! on_raw {
    ($raw:expr, $pool:ident => $body:expr) => {
        match $raw {
            Raw::Postgres { pool: $pool, .. } => $body,
            Raw::Sqlite { pool: $pool, .. } => $body,
        }
    };
}

const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const TEMPLATE_LOCK_KEY: i64 = 0x4948_5445_5354_4442; // "IHTESTDB"
const LEFTOVER_AGE_SECONDS: u64 = 2 * 3600;

/// A database of its own for one test.
pub struct TestDb {
    /// URL of the test's database.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// The service's handle on it, as `store::connect` makes it.
    pub pool: Db,
    raw: Raw,
}

fn server_options() -> (String, PgConnectOptions) {
    let url = std::env::var("IH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
    let options: PgConnectOptions = url
        .parse()
        .expect("IH_TEST_DATABASE_URL is not a postgres URL");
    (url, options)
}

/// Replaces the database name in a postgres URL.
fn url_with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("test database URL parses");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

impl TestDb {
    /// Creates a fresh database on `backend`.
    pub async fn on(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::new().await,
            Backend::Sqlite => Self::sqlite().await,
        }
    }

    /// Creates a fresh, migrated SQLite file in a new directory under the system's temporary
    /// directory.
    pub async fn sqlite() -> Self {
        let name = format!("ih_test_{}", Uuid::new_v4().simple());
        let directory = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&directory).unwrap();
        let url = format!("sqlite://{}", directory.join("hub.db").display());
        if let Err(error) = migration::run(&url, migration::Command::Up).await {
            panic!("migrating the test SQLite file failed: {error}");
        }
        let config = DatabaseConfig {
            url: DatabaseUrl::new(url.clone()),
            listen_url: DatabaseUrl::new(url.clone()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
        };
        let db = SqliteDb::connect(&config).unwrap();
        let raw = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(SqliteConnectOptions::from_str(&url).unwrap())
            .await
            .unwrap();
        Self {
            url,
            name,
            pool: Db::Sqlite(db),
            raw: Raw::Sqlite {
                pool: raw,
                directory,
            },
        }
    }

    /// Which backend the database is on.
    pub fn backend(&self) -> Backend {
        match self.raw {
            Raw::Postgres { .. } => Backend::Postgres,
            Raw::Sqlite { .. } => Backend::Sqlite,
        }
    }

    /// The raw Postgres pool, for tests of Postgres-only behaviour.
    ///
    /// # Panics
    /// On SQLite.
    pub fn pg(&self) -> &PgPool {
        match &self.raw {
            Raw::Postgres { pool, .. } => pool,
            Raw::Sqlite { .. } => panic!("this test needs Postgres"),
        }
    }

    /// Creates a fresh Postgres database from the migrated template (the template's name carries a
    /// hash of every migration, so a changed schema never reuses a stale one).
    ///
    /// Panics with instructions when Postgres is not reachable: a missing database fails the
    /// run, it never skips it.
    pub async fn new() -> Self {
        let schema_source = migration::SCHEMA_FINGERPRINT_SOURCE;
        let migrate = |url: String| async move {
            migration::run(&url, migration::Command::Up)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        let (server_url, server) = server_options();
        let mut admin = match PgConnection::connect_with(&server).await {
            Ok(connection) => connection,
            Err(error) => panic!(
                "cannot reach the test Postgres at {server_url} ({error}); start it \
                 (`make test` does) or point IH_TEST_DATABASE_URL at one"
            ),
        };
        sqlx::query("select pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK_KEY)
            .execute(&mut admin)
            .await
            .unwrap();

        let digest = Sha256::digest(schema_source.as_bytes());
        let fingerprint: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let template = format!("ih_tmpl_{fingerprint}");
        let ready: Option<bool> =
            sqlx::query_scalar("select datistemplate from pg_database where datname = $1")
                .bind(&template)
                .fetch_optional(&mut admin)
                .await
                .unwrap();
        if ready != Some(true) {
            // absent, or left half-built by a crashed run
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "drop database if exists {template} with (force)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("create database {template}")))
                .execute(&mut admin)
                .await
                .unwrap();
            if let Err(error) = migrate(url_with_database(&server_url, &template)).await {
                panic!("migrating the test template failed: {error}");
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "alter database {template} is_template true"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let leftovers: Vec<String> =
            sqlx::query_scalar("select datname from pg_database where datname like 'ih_test_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap();
        for leftover in leftovers {
            let created: Option<u64> = leftover
                .strip_prefix("ih_test_")
                .and_then(|rest| rest.split('_').next())
                .and_then(|seconds| seconds.parse().ok());
            if created.is_some_and(|created| created + LEFTOVER_AGE_SECONDS < now) {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {leftover} with (force)"
                )))
                .execute(&mut admin)
                .await;
            }
        }

        let name = format!(
            "ih_test_{now}_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create database {name} template {template}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(TEMPLATE_LOCK_KEY)
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();

        let url = url_with_database(&server_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        // the template may have been made days ago: today's partitions are made here, as the
        // services make them at start
        store::retention::create_partitions_ahead(&Db::Postgres(pool.clone()), None)
            .await
            .unwrap();
        Self {
            url,
            name,
            pool: Db::Postgres(pool.clone()),
            raw: Raw::Postgres {
                pool,
                server: Box::new(server),
            },
        }
    }

    /// Runs several statements (seeding, catalog changes), on either backend.
    pub async fn execute_script(&self, sql: String) {
        on_raw!(&self.raw, pool => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
        });
    }

    /// Runs a statement with one id bound as `$1`; returns the rows it changed.
    pub async fn execute_bound(&self, sql: &'static str, id: Uuid) -> u64 {
        on_raw!(&self.raw, pool => {
            sqlx::query(sql).bind(id).execute(pool).await.unwrap().rows_affected()
        })
    }

    /// Runs a query returning one integer (counts for assertions).
    pub async fn fetch_i64(&self, sql: &'static str) -> i64 {
        on_raw!(&self.raw, pool => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap())
    }

    /// Runs a query returning one text column (catalog reads for assertions).
    pub async fn fetch_strings(&self, sql: &'static str) -> Vec<String> {
        on_raw!(&self.raw, pool => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap())
    }

    /// Counts the delivery rows of an event, by status.
    pub async fn count_deliveries(&self, event_id: Uuid, status: &str) -> i64 {
        on_raw!(&self.raw, pool => {
            sqlx::query_scalar("select count(*) from all_deliveries where event_id = $1 and status = $2")
                .bind(event_id)
                .bind(status)
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }

    /// Ends a delivery `dead` and writes its dead letter and failed attempt, as the worker
    /// does after the last attempt; returns the dead letter's id. Postgres only.
    pub async fn kill_delivery(&self, delivery_id: Uuid, reason: &str) -> Uuid {
        let dead_letter_id = Uuid::now_v7();
        sqlx::query(
            "with dead as (
               delete from deliveries where id = $1
               returning id, event_id, subscription_id, target, attempts + 1 as attempts, created_at
             ), history as (
               insert into delivery_history (id, event_id, target, subscription_id, status,
                                             attempts, last_error, created_at, updated_at)
               select id, event_id, target, subscription_id, 'dead', attempts, $2, created_at, now()
               from dead
             ), attempt as (
               insert into delivery_attempts (id, delivery_id, event_id, attempt_number, started_at,
                                              duration_ms, response_status, error, outcome)
               select ih_uuid_v7(), id, event_id, attempts, now(), 1, 500, $2, 'dead_lettered' from dead
             )
             insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason)
             select $3, id, event_id, subscription_id, target, $2 from dead",
        )
        .bind(delivery_id)
        .bind(reason)
        .bind(dead_letter_id)
        .execute(self.pg())
        .await
        .unwrap();
        dead_letter_id
    }

    /// The ids of an event's deliveries, oldest first.
    pub async fn delivery_ids(&self, event_id: Uuid) -> Vec<Uuid> {
        on_raw!(&self.raw, pool => {
            sqlx::query_scalar("select id from all_deliveries where event_id = $1 order by id")
                .bind(event_id)
                .fetch_all(pool)
                .await
                .unwrap()
        })
    }

    /// The raw stored secret columns of a subscription.
    pub async fn stored_secrets(&self, subscription_id: Uuid) -> (String, Option<String>) {
        on_raw!(&self.raw, pool => {
            sqlx::query_as("select secret, previous_secret from subscriptions where id = $1")
                .bind(subscription_id)
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }

    /// Ends a rotated-out secret's grace period now (its expiry becomes the subscription's
    /// creation time, which both backends store in their own format).
    pub async fn end_secret_grace(&self, subscription_id: Uuid) {
        on_raw!(&self.raw, pool => {
            sqlx::query(
                "update subscriptions set previous_secret_expires_at = created_at where id = $1",
            )
            .bind(subscription_id)
            .execute(pool)
            .await
            .unwrap();
        });
    }

    /// Makes the database refuse every attempt record whose response body is `poison`, as a
    /// stand-in for any row a database may refuse: a trigger raising an error.
    pub async fn refuse_poisoned_attempts(&self) {
        match &self.raw {
            Raw::Postgres { pool, .. } => {
                sqlx::query(
                    "create function ih_test_refuse() returns trigger language plpgsql as $$
                     begin
                       if new.response_body = 'poison' then raise exception 'refused by the test'; end if;
                       return new;
                     end $$",
                )
                .execute(pool)
                .await
                .unwrap();
                sqlx::query(
                    "create trigger ih_test_refuse before insert on delivery_attempts
                     for each row execute function ih_test_refuse()",
                )
                .execute(pool)
                .await
                .unwrap();
            }
            Raw::Sqlite { pool, .. } => {
                sqlx::query(
                    "create trigger ih_test_refuse before insert on delivery_attempts
                     when new.response_body = 'poison'
                     begin select raise(abort, 'refused by the test'); end",
                )
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// The stored payload text of an event.
    pub async fn stored_payload(&self, event_id: Uuid) -> String {
        on_raw!(&self.raw, pool => {
            sqlx::query_scalar("select payload from outbox_events where id = $1")
                .bind(event_id)
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = match &self.raw {
            Raw::Postgres { server, .. } => (**server).clone(),
            Raw::Sqlite { directory, .. } => {
                // open connections keep their unlinked files until they close
                let _ = std::fs::remove_dir_all(directory);
                return;
            }
        };
        let name = self.name.clone();
        // Drop cannot await, and the test's runtime may already be shutting down: drop the
        // database from a thread with a runtime of its own.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect_with(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&mut admin)
                    .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}
