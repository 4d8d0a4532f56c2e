//! The completion buffer: outcomes are collected for up to [`FLUSH_INTERVAL`] (or until
//! [`FLUSH_SIZE`] wait) and written in one statement. A worker's slot is freed only when its
//! outcome's flush is acknowledged, so capacity never runs ahead of what is recorded.

use std::time::{Duration, Instant};

use shared::db::{self, Completion};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use uuid::Uuid;

use crate::deliver::{Outcome, random_unit};

/// Longest an outcome waits in the buffer.
pub const FLUSH_INTERVAL: Duration = shared::config::COMPLETION_FLUSH_INTERVAL;
/// Outcomes that trigger a flush at once.
pub const FLUSH_SIZE: usize = 100;

/// A finished delivery on its way to the database.
pub struct Finished {
    /// What to write.
    pub outcome: Outcome,
    /// When the row was leased, by this process's monotonic clock.
    pub leased_at: Instant,
    /// The worker slot, released after the flush.
    pub permit: OwnedSemaphorePermit,
}

/// Runs until every sender is dropped and the buffer is flushed.
pub async fn run(
    pool: PgPool,
    worker_id: String,
    mut outcomes: mpsc::Receiver<Finished>,
    lease: Duration,
) {
    let mut buffer: Vec<Finished> = Vec::with_capacity(FLUSH_SIZE);
    while let Some(first) = outcomes.recv().await {
        buffer.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while buffer.len() < FLUSH_SIZE {
            tokio::select! {
                next = outcomes.recv() => match next {
                    Some(finished) => buffer.push(finished),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        flush(&pool, &worker_id, &mut buffer, lease).await;
    }
}

async fn flush(pool: &PgPool, worker_id: &str, buffer: &mut Vec<Finished>, lease: Duration) {
    let mut delay = Duration::from_millis(100);
    loop {
        // An outcome older than its lease is dropped, not written: the row may already belong
        // to another worker, and the fenced write would match nothing anyway.
        let before = buffer.len();
        buffer.retain(|finished| finished.leased_at.elapsed() < lease);
        let stale = before - buffer.len();
        if stale > 0 {
            tracing::warn!(count = stale, "dropping outcomes older than their lease");
            metrics::counter!("ih_leases_lost_total").increment(stale as u64);
        }
        if buffer.is_empty() {
            return;
        }
        match write(pool, worker_id, buffer).await {
            Ok(()) => {
                buffer.clear();
                return;
            }
            Err(error) => {
                tracing::warn!(error.message = %error, count = buffer.len(), "completion flush failed, retrying");
                tokio::time::sleep(delay.mul_f64(0.8 + 0.4 * random_unit())).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn write(pool: &PgPool, worker_id: &str, buffer: &[Finished]) -> Result<(), db::DbError> {
    let mut completions: Vec<Completion> = Vec::new();
    let mut releases: Vec<(Uuid, Uuid, Duration)> = Vec::new();
    for finished in buffer {
        match &finished.outcome {
            Outcome::Complete(completion) => completions.push(completion.clone()),
            Outcome::Release {
                delivery_id,
                lease_token,
                due_in,
            } => releases.push((*delivery_id, *lease_token, *due_in)),
        }
    }
    if !completions.is_empty() {
        let written = db::complete_deliveries(pool, worker_id, &completions).await?;
        for completion in &completions {
            if !written.contains(&completion.delivery_id) {
                tracing::warn!(delivery.id = %completion.delivery_id, "lease lost before the outcome was written; discarding it");
                metrics::counter!("ih_leases_lost_total").increment(1);
            } else {
                let outcome = match completion.next {
                    db::NextState::Delivered => "delivered",
                    db::NextState::Retry(_) => "retry_scheduled",
                    db::NextState::Dead { .. } => "dead_lettered",
                    db::NextState::Cancelled => "cancelled",
                };
                metrics::counter!("ih_deliveries_total", "outcome" => outcome).increment(1);
            }
        }
    }
    if !releases.is_empty() {
        let released = db::release_deliveries(pool, &releases).await?;
        if released.len() < releases.len() {
            metrics::counter!("ih_leases_lost_total")
                .increment((releases.len() - released.len()) as u64);
        }
    }
    Ok(())
}
