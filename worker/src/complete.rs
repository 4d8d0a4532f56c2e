//! The completion buffer: outcomes are collected for up to [`FLUSH_INTERVAL`] (or until
//! enough wait: [`FLUSH_SIZE`], or a quarter of the worker's slots, whichever is smaller) and
//! written in one statement. The quarter keeps a small worker's rows from counting against
//! their subscriptions' limits for a whole interval waiting for a batch that cannot fill. The
//! buffer's channel is bounded, so while the database cannot take outcomes the delivery tasks
//! wait to hand theirs over and the worker leases no more than it can record.
//!
//! A flush the database refuses for its data (not for being unavailable) is written again one
//! outcome at a time, so one bad row cannot sink the others: the row that is still refused
//! alone is recorded as a failed attempt without the receiver's texts.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use shared::{
    retry::{RetryPolicy, jitter},
    // what an attempt whose record the database refused is stored as
    state::{DeadReason, OUTCOME_UNSTORABLE as UNSTORABLE, Target},
};
use store::{self as db, AttemptRecord, Completion, Db, EndpointHealth, NextState};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::{
    outcome::{Outcome, after_failure},
    tally::Tally,
};

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
    /// Where the delivery went, for metrics.
    pub target: Target,
    /// The subscription, for the per-subscription failure metric.
    pub subscription_id: Option<Uuid>,
}

/// How the buffer flushes.
pub struct Flushing {
    /// The worker's slots, which size a flush.
    pub concurrency: usize,
    /// The lease length: older outcomes are dropped.
    pub lease: Duration,
    /// The retry policy, for outcomes the database refuses.
    pub retry: RetryPolicy,
    /// Notified after each flush (the lease loop leases again: limits have room).
    pub flushed: Arc<Notify>,
    /// How the outcomes move the subscriptions' circuits.
    pub health: EndpointHealth,
    /// The per-minute counts of the console's charts.
    pub tally: Arc<Tally>,
}

/// Runs until every sender is dropped and the buffer is flushed.
pub async fn run(
    pool: Db,
    worker_id: String,
    mut outcomes: mpsc::Receiver<Finished>,
    flushing: Flushing,
) {
    let Flushing {
        concurrency,
        lease,
        retry,
        flushed,
        health,
        tally,
    } = flushing;
    let mut buffer: Vec<Finished> = Vec::with_capacity(FLUSH_SIZE);
    while let Some(first) = outcomes.recv().await {
        buffer.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        let flush_size = FLUSH_SIZE.min((concurrency / 4).max(1));
        while buffer.len() < flush_size {
            tokio::select! {
                next = outcomes.recv() => match next {
                    Some(finished) => buffer.push(finished),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        flush(
            &pool,
            &worker_id,
            &mut buffer,
            lease,
            &retry,
            &health,
            &tally,
        )
        .await;
        flushed.notify_one();
    }
}

/// `completion` as a failed attempt without any text the receiver shaped: what is written when
/// the database refuses the original alone.
fn unstorable(completion: &Completion, retry: &RetryPolicy) -> Completion {
    let Some(attempt) = &completion.attempt else {
        // no request was made: keep the decision, drop its texts
        let next = match &completion.next {
            // such deaths (a disabled subscription, a Slack message that cannot be built)
            // never disable the subscription, so nothing is lost with the reason's detail
            NextState::Dead(_) => NextState::Dead(DeadReason::OutcomeUnstorable),
            other => other.clone(),
        };
        return Completion {
            next,
            last_error: Some(UNSTORABLE.to_owned()),
            ..completion.clone()
        };
    };
    let number = u32::try_from(attempt.attempt_number).unwrap_or(u32::MAX);
    let next = after_failure(retry, completion.probe, number, UNSTORABLE.to_owned(), None);
    Completion {
        next,
        last_error: Some(UNSTORABLE.to_owned()),
        attempt: Some(AttemptRecord {
            response_body: None,
            error: Some(UNSTORABLE.to_owned()),
            external_id: None,
            ..attempt.clone()
        }),
        ..completion.clone()
    }
}

/// Drops the outcomes older than their lease: the row may already belong to another worker,
/// and the fenced write would match nothing anyway.
fn drop_stale(buffer: &mut Vec<Finished>, lease: Duration) {
    let before = buffer.len();
    buffer.retain(|finished| finished.leased_at.elapsed() < lease);
    let stale = before - buffer.len();
    if stale > 0 {
        tracing::warn!(count = stale, "dropping outcomes older than their lease");
        metrics::counter!("ih_leases_lost_total").increment(stale as u64);
    }
}

async fn flush(
    pool: &Db,
    worker_id: &str,
    buffer: &mut Vec<Finished>,
    lease: Duration,
    retry: &RetryPolicy,
    health: &EndpointHealth,
    tally: &Tally,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        drop_stale(buffer, lease);
        if buffer.is_empty() {
            return;
        }
        match write(pool, worker_id, buffer, health, tally).await {
            Ok(()) => {
                buffer.clear();
                return;
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(error.message = %error, count = buffer.len(), "completion flush failed, retrying");
                metrics::counter!("ih_completion_flush_failures_total").increment(1);
                tokio::time::sleep(jitter(delay, 0.2)).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            // One outcome alone, refused for its data: write it once more without the
            // receiver's texts; refused again, it is left to the lease rescue.
            Err(error) if buffer.len() == 1 => {
                if let Some(Finished {
                    outcome: Outcome::Complete(completion),
                    ..
                }) = buffer.first_mut()
                    && completion.last_error.as_deref() != Some(UNSTORABLE)
                {
                    tracing::error!(error.message = %error, error.cause_chain = ?error, delivery.id = %completion.delivery_id, "the database refused an outcome; recording it as a failed attempt");
                    metrics::counter!("ih_completions_unstorable_total").increment(1);
                    *completion = unstorable(completion, retry);
                    continue;
                }
                tracing::error!(error.message = %error, error.cause_chain = ?error, "the database refused an outcome even without its texts; leaving it to the lease rescue");
                buffer.clear();
                return;
            }
            Err(error) => {
                // One row's data sank the statement: write each outcome alone, so only the
                // refused one is set aside.
                tracing::warn!(error.message = %error, count = buffer.len(), "the database refused a completion flush; writing its outcomes one by one");
                for finished in std::mem::take(buffer) {
                    let mut alone = vec![finished];
                    Box::pin(flush(
                        pool, worker_id, &mut alone, lease, retry, health, tally,
                    ))
                    .await;
                }
                return;
            }
        }
    }
}

async fn write(
    pool: &Db,
    worker_id: &str,
    buffer: &[Finished],
    health: &EndpointHealth,
    tally: &Tally,
) -> Result<(), db::DbError> {
    let mut completions: Vec<Completion> = Vec::new();
    let mut releases: Vec<(Uuid, Uuid, Duration)> = Vec::new();
    let mut targets: std::collections::HashMap<Uuid, (Target, Option<Uuid>)> =
        std::collections::HashMap::new();
    for finished in buffer {
        match &finished.outcome {
            Outcome::Complete(completion) => {
                targets.insert(
                    completion.delivery_id,
                    (finished.target, finished.subscription_id),
                );
                completions.push(completion.clone());
            }
            Outcome::Release {
                delivery_id,
                lease_token,
                due_in,
            } => releases.push((*delivery_id, *lease_token, *due_in)),
        }
    }
    if !completions.is_empty() {
        let written = db::complete_deliveries(pool, worker_id, &completions, health).await?;
        let lags: std::collections::HashMap<Uuid, Option<f64>> = written
            .into_iter()
            .map(|row| (row.id, row.lag_seconds))
            .collect();
        for completion in &completions {
            let Some(lag) = lags.get(&completion.delivery_id) else {
                tracing::warn!(delivery.id = %completion.delivery_id, "lease lost before the outcome was written; discarding it");
                metrics::counter!("ih_leases_lost_total").increment(1);
                continue;
            };
            // every completion came from the buffer, so its target is known
            let Some(&(target, subscription_id)) = targets.get(&completion.delivery_id) else {
                continue;
            };
            let failed_attempt =
                completion.attempt.is_some() && completion.next != db::NextState::Delivered;
            if let (true, Some(subscription_id)) = (failed_attempt, subscription_id) {
                // one series per subscription: bounded by what operators create
                metrics::counter!(
                    "ih_subscription_failures_total",
                    "subscription_id" => subscription_id.to_string()
                )
                .increment(1);
            }
            let outcome = completion.next.label();
            metrics::counter!("ih_deliveries_total", "target" => target.as_str(), "outcome" => outcome).increment(1);
            if let db::NextState::Dead { .. } = completion.next {
                metrics::counter!("ih_dead_letters_total", "target" => target.as_str())
                    .increment(1);
            }
            if let Some(lag) = lag {
                metrics::histogram!("ih_delivery_lag_seconds").record(*lag);
            }
            tally.count(
                &completion.next,
                *lag,
                subscription_id.filter(|_| completion.attempt.is_some()),
            );
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
