//! Faults of the SQLite file: another process holding its write lock.

use std::{str::FromStr, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, sqlite::SqliteConnectOptions};
use testkit::db::Backend;

use crate::support::{Hub, Receiver, eventually};

/// A writer that keeps the lock past the busy timeout gets 503 with `Retry-After` (nothing
/// was written); once the lock is released, publishing works again and what was accepted is
/// delivered.
#[tokio::test]
async fn a_write_lock_held_elsewhere_answers_503_and_the_hub_recovers() {
    let hub = Hub::start(Backend::Sqlite, |_| {}).await;
    let receiver = Receiver::start().await;
    hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    hub.publish("a", json!({"before": true}), None).await;
    assert!(eventually(Duration::from_secs(10), || async { receiver.count() == 1 }).await);

    // another process's writer, as far as the hub can tell: a connection of its own
    let options = SqliteConnectOptions::from_str(&hub.db.url).unwrap();
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("begin immediate")
        .execute(&mut other)
        .await
        .unwrap();
    let (status, body) = hub.publish_raw("a", json!({"locked": true}), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "database_unavailable", "{body}");
    sqlx::query("rollback").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    hub.publish("a", json!({"after": true}), None).await;
    assert!(eventually(Duration::from_secs(10), || async { receiver.count() == 2 }).await);
    let bodies: Vec<String> = receiver
        .received()
        .iter()
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect();
    assert!(
        bodies.iter().all(|body| !body.contains("locked")),
        "the refused event was not stored: {bodies:?}"
    );
    hub.stop().await;
}
