//! Coalesced wake-ups of the workers.
//!
//! Every publish commit calls [`WorkerWaker::wake`]; a background task turns the calls into at
//! most one `pg_notify` every [`MIN_NOTIFY_INTERVAL`], sent after the commit as its own
//! statement. A wake during the pause is remembered (a stored permit), so the commit right
//! after a notification is not left waiting for the workers' poll.
//!
//! The interval is 2 ms rather than the 50–100 ms queue libraries use: every event waits for
//! the next notification, so the interval is a floor under publish → delivery latency, and a
//! NOTIFY sent alone outside the insert transaction holds the cluster-wide notify lock only for
//! its own tiny commit. At most 500 notifications per second per API process is cheap for
//! Postgres. Notifying after every commit with no pause (measured in bench/README.md) halves
//! the median at 500 events/s but lets the p99 jump past 100 ms and sheds load at 2,000/s.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shortest gap between two notifications from one process.
pub const MIN_NOTIFY_INTERVAL: Duration = Duration::from_millis(2);

/// Handle to the notifier task.
#[derive(Clone, Debug)]
pub struct WorkerWaker {
    pending: Arc<Notify>,
}

impl WorkerWaker {
    /// Starts the notifier task; it ends when `shutdown` is cancelled.
    pub fn spawn(pool: PgPool, shutdown: CancellationToken) -> Self {
        let pending = Arc::new(Notify::new());
        let task_pending = pending.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = task_pending.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                if let Err(error) = shared::db::notify_workers(&pool).await {
                    // the workers' poll interval is the safety net
                    tracing::warn!(error.message = %error, "could not notify workers");
                }
                tokio::time::sleep(MIN_NOTIFY_INTERVAL).await;
            }
        });
        Self { pending }
    }

    /// Asks for a notification soon.
    pub fn wake(&self) {
        self.pending.notify_one();
    }
}
