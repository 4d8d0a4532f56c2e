//! `ih-migrate`: applies, rolls back or reports the schema migrations, and re-encrypts the
//! stored subscription secrets under the current key.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::{
    config::{DatabaseConfig, DatabaseUrl},
    crypto::SecretCipher,
};
use std::time::Duration;

/// Applies the Integrations Hub schema to the database named by `IH_DATABASE_URL`.
#[derive(Parser)]
#[command(name = "ih-migrate", version)]
struct Cli {
    /// Database URL; overrides `IH_DATABASE_URL`.
    #[arg(long)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<CommandArg>,
}

#[derive(Subcommand, Clone, Copy)]
enum CommandArg {
    /// Create the database if needed and apply every pending migration (the default).
    Up,
    /// Roll back the newest applied migration.
    Down,
    /// List every migration and whether it is applied.
    Status,
    /// Seal every stored subscription secret with the first key of `IH_ENCRYPTION_KEYS`
    /// (after adding a new key in front; then the old key can be removed). Safe to interrupt
    /// and run again.
    Reencrypt,
    /// Remove the finished work past `IH_RETENTION` (and the dead letters past
    /// `IH_DEAD_LETTER_RETENTION`), as the workers do; with `--dry-run`, only report it.
    Prune {
        /// Report the days that would be removed and kept, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Rows read per statement by `reencrypt`.
const REENCRYPT_BATCH: i64 = 500;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/integrations_hub";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_init();
    let cli = Cli::parse();
    let database_url = match cli.database_url {
        Some(url) => url,
        // ih-migrate stands alone (no dependency on the service configuration), so it reads the
        // one variable it needs itself.
        None => {
            std::env::var("IH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
        }
    };
    let command = match cli.command.unwrap_or(CommandArg::Up) {
        CommandArg::Up => migration::Command::Up,
        CommandArg::Down => migration::Command::Down,
        CommandArg::Status => migration::Command::Status,
        CommandArg::Reencrypt => return reencrypt(&database_url).await,
        CommandArg::Prune { dry_run } => return prune(&database_url, dry_run).await,
    };
    let states = migration::run(&database_url, command)
        .await
        .context("ih-migrate failed")?;
    for state in states {
        let status = if state.applied { "applied" } else { "pending" };
        tracing::info!(migration = %state.name, status, "migration {status}");
    }
    if command == migration::Command::Up {
        partitions_ahead(&database_url).await?;
    }
    Ok(())
}

/// `IH_RETENTION` and the other retention settings, validated.
fn retention() -> anyhow::Result<shared::config::Retention> {
    let settings = shared::config::load(None, &std::collections::BTreeMap::<String, String>::new())
        .context("reading the IH_ variables")?
        .settings;
    Ok(shared::config::Retention::from_settings(&settings)?)
}

/// Makes the partitions ahead as wide as `IH_RETENTION` asks for (Postgres). The migrations
/// make day partitions, and a worker replaces a day with narrower ones only while the day
/// holds no row: made here, before the services start, a short retention holds from the
/// first event.
async fn partitions_ahead(database_url: &str) -> anyhow::Result<()> {
    let width = retention()?.partition_width();
    let pool = store::connect(&database(database_url), "ih-migrate").context("IH_DATABASE_URL")?;
    let created = store::retention::create_partitions_ahead(&pool, Some(width))
        .await
        .context("making the partitions ahead")?;
    tracing::info!(
        tables = created,
        width_seconds = width.as_secs(),
        "partitions made ahead"
    );
    Ok(())
}

async fn prune(database_url: &str, dry_run: bool) -> anyhow::Result<()> {
    let retention = retention()?;
    let pool = store::connect(&database(database_url), "ih-migrate").context("IH_DATABASE_URL")?;
    let report = store::retention::prune(&pool, retention, dry_run)
        .await
        .context("retention stopped; run it again to finish")?;
    anyhow::ensure!(
        report.ran,
        "another process is running retention; run this again later"
    );
    report.log(dry_run);
    let removed = report.removed();
    tracing::info!(
        dry_run,
        spans = report
            .spans
            .iter()
            .filter(|span| span.kept.is_none())
            .count(),
        events = removed.events,
        deliveries = removed.deliveries,
        attempts = removed.attempts,
        dead_letters = removed.dead_letters,
        retention_seconds = retention.finished.as_secs(),
        dead_letter_retention_seconds = retention.dead_letters.as_secs(),
        "retention finished"
    );
    Ok(())
}

fn database(database_url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: DatabaseUrl::new(database_url),
        listen_url: DatabaseUrl::new(database_url),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    }
}

async fn reencrypt(database_url: &str) -> anyhow::Result<()> {
    let keys = std::env::var("IH_ENCRYPTION_KEYS")
        .ok()
        .filter(|keys| !keys.trim().is_empty())
        .context("IH_ENCRYPTION_KEYS is not set: there is no key to encrypt with")?;
    let cipher = SecretCipher::parse(&keys).context("IH_ENCRYPTION_KEYS")?;
    let pool = store::connect(&database(database_url), "ih-migrate").context("IH_DATABASE_URL")?;
    let report = store::reencrypt_secrets(&pool, &cipher, REENCRYPT_BATCH)
        .await
        .context("re-encryption stopped; run it again to finish")?;
    for (subscription_id, error) in &report.failed {
        tracing::error!(subscription.id = %subscription_id, error.message = %error, "secret not re-encrypted");
    }
    tracing::info!(
        key_id = cipher.key_ids().first().copied().unwrap_or_default(),
        examined = report.examined,
        reencrypted = report.reencrypted,
        changed_meanwhile = report.changed_meanwhile,
        failed = report.failed.len(),
        "re-encryption finished"
    );
    anyhow::ensure!(
        report.failed.is_empty(),
        "{} subscription secrets could not be opened with the configured keys",
        report.failed.len()
    );
    Ok(())
}

fn tracing_init() {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IH_LOG_LEVEL").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    let _already_set = tracing::subscriber::set_global_default(subscriber);
}
