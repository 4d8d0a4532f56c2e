//! Retention run by the workers and by `ih-migrate prune`, on Postgres: a day past
//! `IH_RETENTION` is removed once its work is finished, and counted.

use std::{process::Command, time::Duration};

use chrono::{Days, NaiveDate, Utc};
use shared::domain::{EventType, request_hash};
use store::{self as db, NewEvent, PublishOutcome};
use testkit::db::TestDb;
use uuid::Uuid;

use crate::{
    observability::workspace_bin,
    support::{Receiver, WorkerProcess, delivered_within, eventually, subscribe},
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Publishes one event whose id (and so whose day) is noon of `day`.
async fn publish_on(db: &TestDb, day: NaiveDate) -> Uuid {
    let at = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap(),
        0,
    ));
    let event_type = EventType::parse("order.created").unwrap();
    let payload = "{}".to_owned();
    let event = NewEvent {
        id,
        event_type: event_type.as_str().to_owned(),
        request_hash: request_hash(&event_type, &payload),
        payload,
        idempotency_key: None,
        traceparent: None,
    };
    match db::publish_events(&db.pool, "test", &[event], None)
        .await
        .unwrap()
    {
        PublishOutcome::Stored(stored) => assert_eq!(stored[0].id, id),
        PublishOutcome::KeyReused { .. } => panic!("no key was used"),
    }
    db::notify_workers(&db.pool).await.unwrap();
    id
}

async fn exists(db: &TestDb, id: Uuid) -> bool {
    db::get_event(&db.pool, id).await.unwrap().is_some()
}

/// The value of `ih_retention_removed_total{table="<table>"}` in a scrape.
fn removed(metrics: &str, table: &str) -> Option<f64> {
    let prefix = format!("ih_retention_removed_total{{table=\"{table}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// A database with a subscription to a receiver and the partitions of the last days.
async fn setup() -> (TestDb, Receiver, NaiveDate) {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    subscribe(&db, &receiver.url("/hook"), SECRET, &["order.created"]).await;
    let today = Utc::now().date_naive();
    db::retention::create_partitions(&db.pool, today - Days::new(5), today)
        .await
        .unwrap();
    (db, receiver, today)
}

#[tokio::test]
async fn a_worker_removes_a_finished_day_past_the_retention_and_counts_it() {
    let (db, receiver, today) = setup().await;
    let old = publish_on(&db, today - Days::new(3)).await;
    let fresh = publish_on(&db, today).await;

    let metrics_port = testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _worker = WorkerProcess::spawn(
        &db.url,
        "retention-1",
        &[
            ("IH_RETENTION", "60s"),
            ("IH_WORKER_METRICS_ADDR", &metrics_addr),
        ],
    );
    // both are delivered (the old day is kept while its delivery is live), then the old day
    // goes at a later round
    assert!(
        eventually(Duration::from_secs(40), || async {
            receiver.count() == 2 && !exists(&db, old).await
        })
        .await,
        "the old day was not removed"
    );
    assert!(exists(&db, fresh).await);
    // counted once the round that removed it is over
    #[expect(
        clippy::disallowed_methods,
        reason = "a test client, not a delivery client"
    )]
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let scrape = || async {
        client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            removed(&scrape().await, "events") == Some(1.0)
        })
        .await,
        "{}",
        scrape().await
    );
    let metrics = scrape().await;
    assert_eq!(removed(&metrics, "attempts"), Some(1.0), "{metrics}");
    assert_eq!(removed(&metrics, "deliveries"), Some(1.0), "{metrics}");
    assert_eq!(removed(&metrics, "dead_letters"), Some(0.0), "{metrics}");
}

fn prune(database_url: &str, variables: &[(&str, &str)], dry_run: bool) -> std::process::Output {
    let mut command = Command::new(workspace_bin("ih-migrate"));
    command
        .env_clear()
        .env("IH_DATABASE_URL", database_url)
        .env("IH_LOG_LEVEL", "info")
        .env("IH_LOG_FORMAT", "pretty")
        .arg("prune");
    if dry_run {
        command.arg("--dry-run");
    }
    for (name, value) in variables {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// `ih-migrate up` with a short retention replaces today's day partition, made by the
/// migration and still empty, with partitions of 10 seconds, so retention holds from the first
/// event.
#[tokio::test]
async fn ih_migrate_up_makes_partitions_as_wide_as_the_retention() {
    let db = TestDb::new().await;
    let width_now = || async {
        let width: f64 = sqlx::query_scalar(
            "select extract(epoch from ih_uuid_time(high) - ih_uuid_time(low))::float8
             from ih_partitions()
             where low <= ih_uuid_floor(now()) and high > ih_uuid_floor(now())",
        )
        .fetch_one(db.pg())
        .await
        .unwrap();
        width
    };
    assert!((width_now().await - 86_400.0).abs() < f64::EPSILON);
    let up = Command::new(workspace_bin("ih-migrate"))
        .env_clear()
        .env("IH_DATABASE_URL", &db.url)
        .env("IH_RETENTION", "2m")
        .arg("up")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!((width_now().await - 10.0).abs() < f64::EPSILON);
}

#[tokio::test]
async fn ih_migrate_prune_reports_with_dry_run_then_removes() {
    let (db, _receiver, today) = setup().await;
    let old = publish_on(&db, today - Days::new(3)).await;
    let recent = publish_on(&db, today - Days::new(1)).await;

    // a bad setting is refused with its name
    let refused = prune(&db.url, &[("IH_RETENTION", "soon")], true);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("IH_RETENTION: `soon`"));

    // both days are live (pending deliveries): kept
    let kept = prune(&db.url, &[("IH_RETENTION", "1d")], true);
    assert!(kept.status.success());
    let log = String::from_utf8_lossy(&kept.stderr);
    assert!(
        log.contains("kept") && log.contains("LiveDelivery"),
        "{log}"
    );

    // delivered, the old day is reported by the dry run and left in place
    let worker = WorkerProcess::spawn(&db.url, "prune-1", &[]);
    assert!(delivered_within(&db, 2, Duration::from_secs(20)).await);
    drop(worker);
    let old_day = (today - Days::new(3)).to_string();
    let dry = prune(&db.url, &[("IH_RETENTION_DAYS", "2")], true);
    assert!(dry.status.success());
    let log = String::from_utf8_lossy(&dry.stderr);
    assert!(
        log.contains("would remove") && log.contains(&old_day),
        "{log}"
    );
    assert!(exists(&db, old).await);

    // run for real, the days setting accepted as before
    let real = prune(&db.url, &[("IH_RETENTION_DAYS", "2")], false);
    assert!(real.status.success());
    let log = String::from_utf8_lossy(&real.stderr);
    assert!(log.contains("removed") && log.contains(&old_day), "{log}");
    assert!(!exists(&db, old).await);
    assert!(exists(&db, recent).await);
}
