//! `ih`: the API and a worker in one process.
//!
//! This is the embedded mode: by default on an SQLite file under `./data/`, created with its
//! schema at first start, so trying the hub or running it for a small team on one machine
//! needs no database server. The worker is woken by the publish path directly, in memory.
//! Pointed at Postgres (`IH_DATABASE_URL=postgres://…`) it is the same pair of services as
//! `ih-api` and `ih-worker`, in one process.
//!
//! The `api` and `worker` libraries stay independent of each other; this crate only composes
//! them around one database handle, which is what lets the publish path's wake-up reach the
//! worker without a database round trip.

use metrics_exporter_prometheus::PrometheusHandle;
use shared::config::{ApiConfig, DatabaseUrl, WorkerConfig};
use store::Db;
use tokio_util::sync::CancellationToken;
use worker::WorkerOptions;

/// Where `ih` keeps its data when `IH_DATABASE_URL` is not set: relative to the directory it
/// is started in.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/integrations-hub.db";

/// Creates the schema when it is missing (on SQLite the file and its directory too); an
/// up-to-date database is left alone.
///
/// # Errors
/// Returns an error when the database cannot be reached or a migration fails.
pub async fn prepare(url: &DatabaseUrl) -> anyhow::Result<()> {
    migration::run(url.expose(), migration::Command::Up).await?;
    Ok(())
}

/// Serves the API on `listener` and runs one worker beside it on the same database handle,
/// until `shutdown` is cancelled; then the API stops taking requests and the worker finishes
/// or hands back what it holds, as each does on its own.
///
/// # Errors
/// Returns the API's or the worker's error; the other is stopped too.
pub async fn run(
    api_config: ApiConfig,
    worker_config: WorkerConfig,
    db: Db,
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    options: WorkerOptions,
) -> anyhow::Result<()> {
    let worker = tokio::spawn(worker::run(
        worker_config,
        db.clone(),
        shutdown.clone(),
        options,
    ));
    let served = api::serve(
        api_config,
        db.clone(),
        listener,
        metrics,
        shutdown.clone().cancelled_owned(),
    )
    .await;
    // the API may have ended on its own (a failed listener): the worker must not outlive it
    shutdown.cancel();
    let worked = match worker.await {
        Ok(result) => result,
        Err(error) => Err(anyhow::anyhow!("the worker task failed: {error}")),
    };
    db.close().await;
    served.and(worked)
}
