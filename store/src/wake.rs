//! Wake-ups of the lease loop when a publish (or a replay) queued work.
//!
//! On Postgres, a LISTEN connection: it reaches every worker process. On SQLite, a signal from
//! the publish path of the same process; a worker in another process on the same file learns
//! of new work at its next poll.
//!
//! Wake-ups are a latency hint, not a queue: notifications are lost while a LISTEN connection
//! is down, so every (re)connect also wakes the loop for a catch-up lease, and the poll interval
//! stays the safety net.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{DELIVERY_CHANNEL, Db};
use shared::{config::DatabaseUrl, retry::jitter};

/// Longest pause between reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

async fn connect(url: &DatabaseUrl) -> Result<PgListener, sqlx::Error> {
    let options: PgConnectOptions = url.expose().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name("ih-worker"))
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(DELIVERY_CHANNEL).await?;
    Ok(listener)
}

/// Where the lease loop learns that work was queued.
///
/// On Postgres a task holds the LISTEN connection and forwards each notification (and each
/// reconnect) through a channel of one. On SQLite the loop watches the generation the publish
/// path of this process bumps: one channel between the commit and the lease, no task.
pub struct Wakeups(Source);

enum Source {
    Listen {
        receiver: mpsc::Receiver<()>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    },
    Local(watch::Receiver<u64>),
}

impl Wakeups {
    /// Starts listening; `listen_url` is where Postgres notifications are listened for (unused
    /// on SQLite). The first [`next`](Self::next) returns at once, for a catch-up lease.
    pub fn start(db: &Db, listen_url: DatabaseUrl) -> Self {
        match db {
            Db::Postgres(_) => {
                let (sender, receiver) = mpsc::channel(1);
                let stop = CancellationToken::new();
                let task = tokio::spawn(listen(listen_url, sender, stop.clone()));
                Self(Source::Listen {
                    receiver,
                    stop,
                    task,
                })
            }
            Db::Sqlite(sqlite) => {
                let mut receiver = sqlite.wakeups();
                receiver.mark_changed();
                Self(Source::Local(receiver))
            }
        }
    }

    /// Waits for the next wake-up. A source that has closed never wakes again; the poll
    /// interval stays the safety net.
    pub async fn next(&mut self) {
        let open = match &mut self.0 {
            Source::Listen { receiver, .. } => receiver.recv().await.is_some(),
            Source::Local(receiver) => receiver.changed().await.is_ok(),
        };
        if !open {
            std::future::pending::<()>().await;
        }
    }

    /// Stops listening.
    pub async fn stop(self) {
        if let Source::Listen { stop, task, .. } = self.0 {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// Wakes the lease loops of this process at once when the database is SQLite (a bump of the
/// watched generation; nothing else to send). Does nothing on Postgres, where
/// [`super::notify_workers`] must be sent after the commit.
pub fn wake_local(db: &Db) {
    if let Db::Sqlite(sqlite) = db {
        sqlite.notify_workers();
    }
}

/// Listens until `shutdown`, sending a wake-up for each notification and after each connect.
async fn listen(url: DatabaseUrl, wake: mpsc::Sender<()>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect(&url) => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error.message = %error, "LISTEN connection failed, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(jitter(delay, 0.5)) => {}
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        delay = Duration::from_millis(100);
        tracing::debug!("listening for new deliveries");
        let _ = wake.try_send(());
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(_)) => {
                    let _ = wake.try_send(());
                }
                Ok(None) => {
                    // The connection dropped; the next try_recv reconnects. Anything sent in
                    // between is lost, so lease once to catch up.
                    tracing::warn!("LISTEN connection lost, reconnecting");
                    let _ = wake.try_send(());
                }
                Err(error) => {
                    tracing::warn!(error.message = %error, "LISTEN connection failed, reconnecting");
                    break;
                }
            }
        }
    }
}
