//! `ih` binary: configuration, logging, schema, then [`hub::run`].

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use shared::config::{ApiConfig, WorkerConfig};
use tokio_util::sync::CancellationToken;
use worker::WorkerOptions;

/// Runs the Integrations Hub API and a delivery worker in one process.
///
/// By default the data lives in an SQLite file, `data/integrations-hub.db` under the current
/// directory, created at first start; set `IH_DATABASE_URL` to another `sqlite://` file or to
/// a `postgres://` database. Configuration otherwise comes from compiled defaults, an optional
/// TOML file, `IH_*` environment variables and these flags, later ones winning, as for
/// `ih-api` and `ih-worker`. See the README for every variable.
#[derive(Parser, Serialize)]
#[command(name = "ih", version)]
struct Cli {
    /// TOML configuration file (keys as the variables, lowercased, without `IH_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<std::path::PathBuf>,
    /// Listen address of the API (IH_API_ADDR).
    #[arg(long = "addr")]
    #[serde(rename = "api_addr", skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let cli = Cli::parse();
    let loaded =
        shared::config::load_with_database(cli.config.as_deref(), &cli, hub::DEFAULT_DATABASE_URL)?;
    let settings = &loaded.settings;
    let api_config = ApiConfig::from_settings(settings)?;
    let worker_config = WorkerConfig::from_settings(settings)?;
    let telemetry = shared::telemetry::init(
        "ih",
        &settings.log_level,
        &settings.log_format,
        api_config.tracing.as_ref(),
    )
    .map_err(|error| anyhow::anyhow!("cannot set up logging and tracing: {error}"))?;
    let metrics = shared::telemetry::install_metrics()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))?;
    loaded.warn_unknown_variables();
    api::announce(&api_config);
    tracing::info!(api = ?api_config, worker = ?worker_config, "starting ih");
    api_config.secrets.announce();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let url = api_config.database.url.clone();
        hub::prepare(&url)
            .await
            .with_context(|| format!("cannot prepare the database {}", url.redacted()))?;
        let db = store::connect(&api_config.database, "ih")?;
        worker::check_encryption_keys(&db, &worker_config.secrets).await?;
        let listener = tokio::net::TcpListener::bind(api_config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", api_config.addr))?;
        tracing::info!(
            addr = %api_config.addr,
            database = %url.redacted(),
            startup_ms = started.elapsed().as_millis(),
            "ih listening: API and worker in one process"
        );
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            shared::shutdown::signal().await;
            signal.cancel();
        });
        hub::run(
            api_config,
            worker_config,
            db,
            listener,
            Some(metrics),
            shutdown,
            WorkerOptions::default(),
        )
        .await
    });
    // flushing spans may block on the collector, within its bounded timeout
    telemetry.shutdown();
    result
}
