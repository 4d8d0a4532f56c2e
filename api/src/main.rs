//! `ih-api` binary: configuration, logging, pool, then [`api::serve`].

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use shared::config::ApiConfig;

/// Serves the Integrations Hub publish and admin API.
///
/// Configuration comes from compiled defaults, an optional TOML file, `IH_*` environment
/// variables and these flags, later ones winning. See the README for every variable.
#[derive(Parser, Serialize)]
#[command(name = "ih-api", version)]
struct Cli {
    /// TOML configuration file (keys as the variables, lowercased, without `IH_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<std::path::PathBuf>,
    /// Listen address (IH_API_ADDR).
    #[arg(long = "addr")]
    #[serde(rename = "api_addr", skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loaded = shared::config::load(cli.config.as_deref(), &cli)?;
    let settings = &loaded.settings;
    let config = ApiConfig::from_settings(settings)?;
    let telemetry = shared::telemetry::init(
        "ih-api",
        &settings.log_level,
        &settings.log_format,
        config.tracing.as_ref(),
    )
    .map_err(|error| anyhow::anyhow!("cannot set up logging and tracing: {error}"))?;
    let metrics = shared::telemetry::install_metrics()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))?;
    loaded.warn_unknown_variables();
    if settings.database_url_sync.is_some() {
        tracing::info!("IH_DATABASE_URL_SYNC is accepted for compatibility and ignored");
    }
    api::announce(&config);
    if config.database.url.is_sqlite() {
        tracing::warn!(
            "SQLite file: no worker runs in this process, so an ih-worker on the same file finds new events at its next poll; `ih` runs the API and a worker in one process. Every process on the file must run on this machine, on a local disk; replicas on several machines need Postgres"
        );
    }
    tracing::info!(config = ?config, "starting ih-api");
    config.secrets.announce();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let pool = store::connect(&config.database, "ih-api")?;
        if let Err(error) = store::ping(&pool).await {
            tracing::warn!(error.message = %error, "database not reachable yet; /ready answers 503 until it is");
        }
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        tracing::info!(addr = %config.addr, "ih-api listening");
        api::serve(config, pool, listener, Some(metrics), shared::shutdown::signal()).await
    });
    // flushing spans may block on the collector, within its bounded timeout
    telemetry.shutdown();
    result
}
