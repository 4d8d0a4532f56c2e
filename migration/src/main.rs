//! `ih-migrate`: applies, rolls back or reports the schema migrations.

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

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
    };
    let states = migration::run(&database_url, command)
        .await
        .context("ih-migrate failed")?;
    for state in states {
        let status = if state.applied { "applied" } else { "pending" };
        tracing::info!(migration = %state.name, status, "migration {status}");
    }
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
        .finish();
    let _already_set = tracing::subscriber::set_global_default(subscriber);
}
