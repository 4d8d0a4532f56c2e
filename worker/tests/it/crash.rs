//! Crashes, pauses, terminated connections and shutdowns. These run real worker processes and
//! share the machine's two cores, so nextest runs them one at a time (`.config/nextest.toml`).

use std::{collections::HashSet, time::Duration};

use testkit::db::TestDb;

use crate::support::{
    Receiver, Reply, WorkerProcess, count, delivered_within, eventually, publish, spawn_worker,
    subscribe, worker_settings,
};

const SECRET: &str = "a-plain-secret-of-some-length";

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"n":{i}}}"#)).collect()
}

async fn leased_by(db: &TestDb, worker: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from all_deliveries where status = 'leased' and leased_by = $1",
    )
    .bind(worker)
    .fetch_one(db.pg())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_killed_workers_leases_are_delivered_by_another_after_they_expire() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_secs(30)));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(60)).await;

    let mut doomed = WorkerProcess::spawn(
        &db.url,
        "doomed",
        &[
            ("IH_WORKER_CONCURRENCY", "100"),
            ("IH_WORKER_BATCH_SIZE", "100"),
            ("IH_SUBSCRIPTION_MAX_IN_FLIGHT", "100"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            leased_by(&db, "doomed").await >= 50
        })
        .await
    );
    doomed.signal("KILL");
    assert!(!doomed.wait(Duration::from_secs(5)).await);
    let held = leased_by(&db, "doomed").await;
    assert!(held >= 50, "{held} leases held at the kill");

    receiver.reply_with(|_, _| Reply::status(200));
    let rescuer = spawn_worker(&worker_settings(&db.url), None);
    assert!(delivered_within(&db, 60, Duration::from_secs(30)).await);
    rescuer.stop().await;
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status <> 'delivered'"
        )
        .await,
        0,
        "none lost, none left leased"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where attempts = 2"
        )
        .await,
        held,
        "the dead lease used one attempt"
    );
}

#[tokio::test]
async fn a_paused_worker_past_its_lease_changes_nothing_when_it_resumes() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(1500)));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(20)).await;

    // the per-subscription cap must cover all 20, or the rows above it are handed back and
    // re-leased in a loop instead of being held
    let mut zombie = WorkerProcess::spawn(
        &db.url,
        "zombie",
        &[("IH_SUBSCRIPTION_MAX_IN_FLIGHT", "32")],
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            leased_by(&db, "zombie").await == 20
        })
        .await
    );
    zombie.signal("STOP");

    receiver.reply_with(|_, _| Reply::status(200));
    let other = spawn_worker(&worker_settings(&db.url), None);
    assert!(delivered_within(&db, 20, Duration::from_secs(30)).await);
    other.stop().await;

    zombie.signal("CONT");
    zombie.signal("TERM");
    assert!(
        zombie.wait(Duration::from_secs(30)).await,
        "the resumed worker exits cleanly"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from delivery_attempts where outcome = 'delivered'"
        )
        .await,
        20,
        "one delivered transition each"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from delivery_attempts where worker_id = 'zombie'"
        )
        .await,
        0,
        "the zombie's late outcomes were fenced off"
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status <> 'delivered'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn three_workers_share_three_thousand_deliveries_exactly_once() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(3000)).await;
    let workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| {
            let mut settings = worker_settings(&db.url);
            settings.worker_id = Some((*id).to_owned());
            settings.subscription_max_in_flight = 32;
            spawn_worker(&settings, None)
        })
        .collect();
    assert!(delivered_within(&db, 3000, Duration::from_secs(120)).await);
    for worker in workers {
        worker.stop().await;
    }
    assert_delivered_once(&receiver, 3000);
    for worker in ["w1", "w2", "w3"] {
        let share: i64 =
            sqlx::query_scalar("select count(*) from delivery_attempts where worker_id = $1")
                .bind(worker)
                .fetch_one(db.pg())
                .await
                .unwrap();
        assert!(share > 0, "{worker} took no share");
    }
    assert_eq!(
        count(&db, "select count(*) from delivery_attempts").await,
        3000
    );
}

/// Each of `expected` events arrived exactly once.
fn assert_delivered_once(receiver: &Receiver, expected: usize) {
    let received = receiver.received();
    let ids: HashSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(received.len(), expected, "no duplicates without faults");
    assert_eq!(ids.len(), expected);
}

/// Separate `ih-worker` processes on one SQLite file find work by polling, and SQLite's single
/// writer keeps their leases apart: every delivery is made once.
#[tokio::test]
async fn two_worker_processes_share_an_sqlite_file_exactly_once() {
    let db = TestDb::sqlite().await;
    let receiver = Receiver::start().await;
    // slow enough, with few slots each, that neither worker can take everything alone
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(10)));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    let limits = [
        ("IH_WORKER_BATCH_SIZE", "8"),
        ("IH_WORKER_CONCURRENCY", "8"),
    ];
    let mut workers: Vec<WorkerProcess> = ["p1", "p2"]
        .iter()
        .map(|id| WorkerProcess::spawn(&db.url, id, &limits))
        .collect();
    for _ in 0..6 {
        publish(&db, "a", &payloads(100)).await;
    }
    assert!(delivered_within(&db, 600, Duration::from_secs(60)).await);
    for worker in &mut workers {
        worker.signal("TERM");
        assert!(worker.wait(Duration::from_secs(10)).await);
    }
    assert_delivered_once(&receiver, 600);
    for share in [
        "select count(*) from delivery_attempts where worker_id = 'p1'",
        "select count(*) from delivery_attempts where worker_id = 'p2'",
    ] {
        assert!(count(&db, share).await > 0, "{share}: no share");
    }
}

#[tokio::test]
async fn terminated_worker_connections_are_survived() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(5)));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(600)).await;
    let mut settings = worker_settings(&db.url);
    settings.worker_concurrency = 8;
    settings.worker_batch_size = 8;
    let worker = spawn_worker(&settings, None);
    for round in 1..=3_i64 {
        assert!(
            eventually(Duration::from_secs(30), || async {
                count(
                    &db,
                    "select count(*) from all_deliveries where status = 'delivered'",
                )
                .await
                    >= round * 100
            })
            .await
        );
        let killed: i64 = sqlx::query_scalar(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
              where application_name = 'ih-worker' and datname = current_database()) t",
        )
        .fetch_one(db.pg())
        .await
        .unwrap();
        assert!(
            killed >= 1,
            "round {round}: no worker connection to terminate"
        );
    }
    assert!(
        delivered_within(&db, 600, Duration::from_secs(60)).await,
        "every delivery arrives after the connections were cut"
    );
    worker.stop().await;
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status <> 'delivered'"
        )
        .await,
        0
    );
    let distinct = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect::<HashSet<_>>()
        .len();
    assert_eq!(distinct, 600);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(1500)));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(10)).await;
    let mut worker = WorkerProcess::spawn(
        &db.url,
        "graceful",
        &[("IH_WORKER_SHUTDOWN_GRACE_SECONDS", "10")],
    );
    assert!(eventually(Duration::from_secs(10), || async { receiver.count() == 10 }).await);
    worker.signal("TERM");
    assert!(worker.wait(Duration::from_secs(15)).await, "exit status 0");
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status = 'delivered' and attempts = 1"
        )
        .await,
        10
    );
    assert_eq!(receiver.count(), 10);
}

#[tokio::test]
async fn sigterm_hands_back_unfinished_leases_long_before_they_expire() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|n, _| {
        if n < 10 {
            Reply::status(200).delayed(Duration::from_secs(20))
        } else {
            Reply::status(200)
        }
    });
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &payloads(10)).await;
    let lease = [
        ("IH_WORKER_SHUTDOWN_GRACE_SECONDS", "1"),
        ("IH_DELIVERY_TIMEOUT_SECONDS", "10"),
        ("IH_WORKER_LEASE_SECONDS", "30"),
    ];
    let mut leaving = WorkerProcess::spawn(&db.url, "leaving", &lease);
    assert!(eventually(Duration::from_secs(10), || async { receiver.count() == 10 }).await);
    let terminated_at = std::time::Instant::now();
    leaving.signal("TERM");
    assert!(leaving.wait(Duration::from_secs(15)).await, "exit status 0");
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status = 'pending' and attempts = 0"
        )
        .await,
        10,
        "handed back, attempt not counted"
    );

    let mut settings = worker_settings(&db.url);
    settings.delivery_timeout_seconds = 10.0;
    settings.worker_lease_seconds = 30.0;
    let successor = spawn_worker(&settings, None);
    assert!(delivered_within(&db, 10, Duration::from_secs(20)).await);
    assert!(
        terminated_at.elapsed() < Duration::from_secs(25),
        "picked up before the 30 s lease would have expired: {:?}",
        terminated_at.elapsed()
    );
    successor.stop().await;
}
