//! `ih-worker` binary: configuration, logging, metrics endpoint, then [`worker::run`].

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use poem::{EndpointExt, IntoResponse, Route, Server, get, handler, http::StatusCode, web::Data};
use serde::Serialize;
use shared::config::WorkerConfig;
use tokio_util::sync::CancellationToken;
use worker::{Heartbeat, WorkerOptions};

/// Leases due deliveries from the database and sends them, HMAC-signed, to subscribers.
///
/// Configuration comes from compiled defaults, an optional TOML file, `IH_*` environment
/// variables and these flags, later ones winning. See the README for every variable.
#[derive(Parser, Serialize)]
#[command(name = "ih-worker", version)]
struct Cli {
    /// TOML configuration file (keys as the variables, lowercased, without `IH_`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<std::path::PathBuf>,
    /// Most deliveries in flight at once (IH_WORKER_CONCURRENCY).
    #[arg(long)]
    #[serde(rename = "worker_concurrency", skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
    /// Most deliveries leased per statement (IH_WORKER_BATCH_SIZE).
    #[arg(long)]
    #[serde(rename = "worker_batch_size", skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    /// Lease length in seconds; at least 2 × (delivery timeout + the 25 ms completion flush) (IH_WORKER_LEASE_SECONDS).
    #[arg(long)]
    #[serde(
        rename = "worker_lease_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    lease_seconds: Option<f64>,
    /// Safety-net poll interval in seconds (IH_DELIVERY_POLL_INTERVAL_SECONDS).
    #[arg(long)]
    #[serde(
        rename = "delivery_poll_interval_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    poll_interval: Option<f64>,
    /// Address of /metrics and /health (IH_WORKER_METRICS_ADDR).
    #[arg(long)]
    #[serde(
        rename = "worker_metrics_addr",
        skip_serializing_if = "Option::is_none"
    )]
    metrics_addr: Option<String>,
    /// This replica's name in `leased_by`; default host name and pid (IH_WORKER_ID).
    #[arg(long)]
    #[serde(rename = "worker_id", skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
}

/// The loop is considered stuck (and the liveness probe fails) after this long.
const LIVENESS_LIMIT_SECONDS: i64 = 60;

#[handler]
fn health(heartbeat: Data<&Heartbeat>) -> poem::Response {
    if heartbeat.age_seconds() <= LIVENESS_LIMIT_SECONDS {
        poem::web::Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        poem::web::Json(serde_json::json!({"status": "stuck"}))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response()
    }
}

#[handler]
fn render_metrics(handle: Data<&metrics_exporter_prometheus::PrometheusHandle>) -> String {
    handle.render()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loaded = shared::config::load(cli.config.as_deref(), &cli)?;
    let settings = &loaded.settings;
    let config = WorkerConfig::from_settings(settings)?;
    let telemetry = shared::telemetry::init(
        "ih-worker",
        &settings.log_level,
        &settings.log_format,
        config.tracing.as_ref(),
    )
    .map_err(|error| anyhow::anyhow!("cannot set up logging and tracing: {error}"))?;
    loaded.warn_unknown_variables();
    if config.slack.is_none() {
        tracing::info!(
            "Slack connector off: IH_SLACK_BOT_TOKEN is not set; slack deliveries are dead-lettered as connector_not_configured"
        );
    }
    if config.database.url.is_sqlite() {
        tracing::warn!(
            poll_interval_seconds = config.poll_interval.as_secs_f64(),
            "SQLite file: there is no LISTEN/NOTIFY, so this worker finds events published by other processes at its next poll; `ih` runs the API and a worker in one process, woken at once. Every process on the file must run on this machine, on a local disk; replicas on several machines need Postgres"
        );
    }
    tracing::info!(config = ?config, "starting ih-worker");
    config.secrets.announce();

    let handle = shared::telemetry::install_metrics()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let pool = store::connect(&config.database, "ih-worker")?;
        worker::check_encryption_keys(&pool, &config.secrets).await?;
        let shutdown = CancellationToken::new();
        let heartbeat = Heartbeat::default();

        let upkeep_handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep_handle.run_upkeep();
            }
        });
        let listener = tokio::net::TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.metrics_addr))?;
        let metrics_addr = listener.local_addr()?;
        tracing::info!(addr = %metrics_addr, "metrics and health listening");
        let app = Route::new()
            .at("/metrics", get(render_metrics))
            .at("/health", get(health))
            .data(handle)
            .data(heartbeat.clone());
        let server_stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
            Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    app,
                    server_stop.cancelled_owned(),
                    Some(Duration::from_secs(1)),
                )
                .await
        });

        let signal_shutdown = shutdown.clone();
        tokio::spawn(async move {
            shared::shutdown::signal().await;
            signal_shutdown.cancel();
        });
        let options = WorkerOptions {
            heartbeat,
            ..WorkerOptions::default()
        };
        let result = worker::run(config, pool, shutdown.clone(), options).await;
        shutdown.cancel();
        let _ = server.await;
        result
    });
    // flushing spans may block on the collector, within its bounded timeout
    telemetry.shutdown();
    result
}
