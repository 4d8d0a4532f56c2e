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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::DatabaseUrl,
    db::{DELIVERY_CHANNEL, Db},
    retry::random_unit,
};

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

/// Sends a wake-up on `wake` for each signal of new work, and once at start, until `shutdown`.
/// `listen_url` is where Postgres notifications are listened for (unused on SQLite).
pub async fn run(
    db: Db,
    listen_url: DatabaseUrl,
    wake: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    match db {
        Db::Postgres(_) => listen(listen_url, wake, shutdown).await,
        Db::Sqlite(sqlite) => {
            let mut wakeups = sqlite.wakeups();
            let _ = wake.try_send(());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = wakeups.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let _ = wake.try_send(());
                    }
                }
            }
        }
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
                    () = tokio::time::sleep(delay.mul_f64(0.5 + random_unit())) => {}
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
