//! Upkeep every worker runs beside the lease loop: partitions created ahead, and retention
//! (which the store lets one process at a time run; the others find the lock taken).

use std::time::Duration;

use shared::config::Retention;
use store::{
    Db, DbError,
    retention::{self, PruneReport},
};
use tokio_util::sync::CancellationToken;

/// How often upkeep runs: an eighth of the retention, between 10 s and 15 min, so a short
/// retention is honoured closely and a long one costs a few statements an hour.
fn interval(retention: &Retention) -> Duration {
    (retention.finished / 8).clamp(Duration::from_secs(10), Duration::from_secs(15 * 60))
}

/// Runs [`round`] now and then every interval until `stop`.
pub fn spawn(pool: Db, retention: Retention, stop: CancellationToken) {
    register_metrics();
    tokio::spawn(async move {
        loop {
            if let Err(error) = round(&pool, retention).await {
                tracing::warn!(error.message = %error, "retention round failed; trying again later");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(crate::jittered(interval(&retention))) => {}
            }
        }
    });
}

/// Creates the partitions ahead, removes what is past its retention, and logs and counts it.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn round(pool: &Db, retention: Retention) -> Result<PruneReport, DbError> {
    let created =
        retention::create_partitions_ahead(pool, Some(retention.partition_width())).await?;
    if created > 0 {
        tracing::info!(tables = created, "created partitions ahead");
    }
    let report = retention::prune(pool, retention, false).await?;
    record(&report);
    Ok(report)
}

fn register_metrics() {
    for (table, _) in retention::DayRows::default().by_table() {
        metrics::counter!("ih_retention_removed_total", "table" => table).increment(0);
    }
}

fn record(report: &PruneReport) {
    for (table, rows) in report.removed().by_table() {
        metrics::counter!("ih_retention_removed_total", "table" => table).increment(rows);
    }
    report.log(false);
}
