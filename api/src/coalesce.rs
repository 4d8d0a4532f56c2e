//! Group commit for publishes.
//!
//! Publishes without idempotency keys are handed to one task that writes whatever is waiting
//! as a single fan-out statement and a single commit. When the API is idle a publish goes out
//! at once (no timer); under load, publishes arriving while earlier writes are in flight wait
//! for the next free write and share it, so 32 concurrent publishers cost a few commits
//! instead of 32. Each event keeps its own id, fan-out count and trace context; the statement
//! is atomic, so a failure answers every publish in it with nothing stored.
//!
//! Publishes with idempotency keys do not go through here: a key reused with another body must
//! fail its own request only.

use std::sync::Arc;

use shared::config::SlackFanout;
use store::{self as db, Db, NewEvent, PublishOutcome, PublishedEvent};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Most events written by one statement.
pub const MAX_EVENTS_PER_WRITE: usize = 1_000;
/// Most publishes waiting for a write; beyond it callers wait for room.
const QUEUE_DEPTH: usize = 4_096;

/// Why a coalesced write failed, for every publish in it.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Unavailable,
    Internal,
}

struct Job {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<PublishedEvent>, Failure>>,
}

/// Handle to the group-commit task.
#[derive(Clone, Debug)]
pub struct PublishCoalescer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("events", &self.events.len())
            .finish()
    }
}

impl PublishCoalescer {
    /// Starts the task; `concurrent_writes` statements may be in flight at once.
    pub fn spawn(
        pool: Db,
        slack: Option<SlackFanout>,
        concurrent_writes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (jobs, mut waiting) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let writes = Arc::new(Semaphore::new(concurrent_writes.max(1)));
        tokio::spawn(async move {
            loop {
                // Take a write slot first: while every slot is busy, publishes pile up in the
                // channel and the next write takes all of them.
                let Ok(slot) = writes.clone().acquire_owned().await else {
                    break;
                };
                let first = tokio::select! {
                    job = waiting.recv() => job,
                    () = shutdown.cancelled() => None,
                };
                let Some(first) = first else {
                    break;
                };
                let mut count = first.events.len();
                let mut batch = vec![first];
                while count < MAX_EVENTS_PER_WRITE {
                    match waiting.try_recv() {
                        Ok(job) => {
                            count += job.events.len();
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let pool = pool.clone();
                let slack = slack.clone();
                tokio::spawn(async move {
                    write(&pool, slack.as_ref(), batch).await;
                    drop(slot);
                });
            }
        });
        Self { jobs }
    }

    /// Publishes unkeyed events through the shared write; answers in order.
    ///
    /// # Errors
    /// Returns 503 when the database is unavailable (nothing was stored), 500 otherwise.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishedEvent>, ApiError> {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { events, reply }).await.is_err() {
            return Err(ApiError::unavailable());
        }
        match answer.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(Failure::Unavailable)) | Err(_) => Err(ApiError::unavailable()),
            Ok(Err(Failure::Internal)) => Err(ApiError::internal(&std::io::Error::other(
                "the shared publish write failed; its cause is logged",
            ))),
        }
    }
}

async fn write(pool: &Db, slack: Option<&SlackFanout>, batch: Vec<Job>) {
    let events: Vec<NewEvent> = batch
        .iter()
        .flat_map(|job| job.events.iter().cloned())
        .collect();
    metrics::histogram!("ih_publish_write_events").record(events.len() as f64);
    let result = db::publish_events(pool, "", &events, slack).await;
    let mut stored = match result {
        Ok(PublishOutcome::Stored(stored)) => stored.into_iter(),
        Ok(PublishOutcome::KeyReused { .. }) | Err(_) => {
            let failure = match &result {
                Err(error) if error.is_transient() => Failure::Unavailable,
                Err(error) => {
                    tracing::error!(error.message = %error, error.cause_chain = ?error, "shared publish write failed");
                    Failure::Internal
                }
                Ok(_) => {
                    tracing::error!("a shared publish write reported a reused key it cannot hold");
                    Failure::Internal
                }
            };
            for job in batch {
                let _ = job.reply.send(Err(failure));
            }
            return;
        }
    };
    for job in batch {
        let answers: Vec<PublishedEvent> = stored.by_ref().take(job.events.len()).collect();
        let _ = job.reply.send(Ok(answers));
    }
}
