//! Endpoint health with real worker processes and a real receiver: a run of failures opens a
//! subscription's circuit, its deliveries wait (no attempts spent, nothing dead-lettered)
//! while single probes test the endpoint, and the first good probe lets the backlog through;
//! a subscription failing past `IH_SUBSCRIPTION_DISABLE_AFTER_HOURS` is disabled with its
//! pending deliveries kept, and they are sent once it is enabled again. On both backends.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use shared::state::EndpointState;
use store::{self as db, SubscriptionPatch};
use testkit::{
    db::{Backend, TestDb},
    free_port,
};
use uuid::Uuid;

use crate::support::{
    Receiver, Reply, WorkerProcess, delivered_within, eventually, publish, scraped, subscribe,
};

const SECRET: &str = "a-plain-secret-of-some-length";

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"n":{i}}}"#)).collect()
}

async fn state(db: &TestDb, id: Uuid) -> db::SubscriptionRow {
    db::get_subscription(&db.pool, id).await.unwrap().unwrap()
}

async fn attempts_spent(db: &TestDb) -> i64 {
    db.fetch_i64("select coalesce(sum(attempts), 0) from deliveries")
        .await
}

/// A receiver answering `status` while the flag it returns is set, 200 once it is cleared.
async fn endpoint_down(status: u16) -> (Receiver, Arc<AtomicBool>) {
    let receiver = Receiver::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let answer = down.clone();
    receiver.reply_with(move |_, _| {
        Reply::status(if answer.load(Ordering::SeqCst) {
            status
        } else {
            200
        })
    });
    (receiver, down)
}

async fn a_run_of_failures_opens_the_circuit_and_a_good_probe_closes_it(backend: Backend) {
    let db = TestDb::on(backend).await;
    let (receiver, down) = endpoint_down(500).await;
    let flaky = subscribe(&db, &receiver.url("/flaky"), SECRET, &["a"]).await;
    // two in flight, so the run of failures opens the circuit with most rows still waiting
    let patch = SubscriptionPatch {
        max_in_flight: Some(Some(2)),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(&db.pool, flaky, &patch)
        .await
        .unwrap()
        .unwrap();
    publish(&db, "a", &payloads(40)).await;
    let port = free_port();
    let worker = WorkerProcess::spawn(
        &db.url,
        "w0",
        &[
            ("IH_WORKER_METRICS_ADDR", &format!("127.0.0.1:{port}")),
            ("IH_CIRCUIT_BREAKER_FAILURES", "5"),
            ("IH_CIRCUIT_BREAKER_WINDOW_SECONDS", "30"),
            ("IH_CIRCUIT_BREAKER_PROBE_SECONDS", "1"),
        ],
    );

    assert!(
        eventually(Duration::from_secs(20), || async {
            state(&db, flaky).await.state() == EndpointState::CircuitOpen
        })
        .await,
        "the circuit opens after five failures"
    );
    // the requests in flight when it opened finish; from then on only probes go out, and a
    // failed probe gives its attempt back
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = attempts_spent(&db).await;
    let sent = receiver.count();
    assert!(
        sent < 12,
        "{sent} requests before the circuit held the backlog"
    );
    // probes 1 s, then 2 s, then 4 s apart: two or three in the next 4.5 s
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let probes = receiver.count() - sent;
    assert!(
        (1..=3).contains(&probes),
        "{probes} probes in 4.5 s with intervals of 1, 2, 4 s"
    );
    assert_eq!(
        attempts_spent(&db).await,
        spent,
        "probes spend no delivery's attempts"
    );
    assert_eq!(
        db.fetch_i64("select count(*) from dead_letters").await,
        0,
        "nothing is dead-lettered while the circuit is open"
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            scraped(port, "ih_subscriptions{state=\"circuit_open\"}").await == Some(1.0)
        })
        .await,
        "the metrics show the open circuit"
    );

    // the endpoint recovers: the next probe closes the circuit and the backlog flows
    down.store(false, Ordering::SeqCst);
    assert!(delivered_within(&db, 40, Duration::from_secs(30)).await);
    let healthy = state(&db, flaky).await;
    assert_eq!(healthy.state(), EndpointState::Healthy);
    assert!(healthy.circuit_opened_at.is_none());
    assert_eq!(db.fetch_i64("select count(*) from dead_letters").await, 0);
    drop(worker);
}

testkit::on_both_backends!(a_run_of_failures_opens_the_circuit_and_a_good_probe_closes_it);

async fn a_subscription_failing_for_days_is_disabled_and_sends_what_it_kept_when_enabled(
    backend: Backend,
) {
    let db = TestDb::on(backend).await;
    let (receiver, down) = endpoint_down(503).await;
    let failing = subscribe(&db, &receiver.url("/failing"), SECRET, &["a"]).await;
    // it has been failing for 121 hours, past the default 120
    db.execute_bound(
        match backend {
            Backend::Postgres => {
                "update subscriptions set failing_since = now() - interval '121 hours', \
                 consecutive_failures = 500 where id = $1"
            }
            Backend::Sqlite => {
                "update subscriptions \
                 set failing_since = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-121 hours'), \
                     consecutive_failures = 500 where id = $1"
            }
        },
        failing,
    )
    .await;
    assert_eq!(state(&db, failing).await.state(), EndpointState::Failing);
    publish(&db, "a", &payloads(10)).await;
    let port = free_port();
    let worker = WorkerProcess::spawn(
        &db.url,
        "w0",
        &[("IH_WORKER_METRICS_ADDR", &format!("127.0.0.1:{port}"))],
    );

    assert!(
        eventually(Duration::from_secs(20), || async {
            state(&db, failing).await.state() == EndpointState::Disabled
        })
        .await,
        "the next failure disables it"
    );
    let disabled = state(&db, failing).await;
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("endpoint_failing")
    );
    let sent = receiver.count();
    // its deliveries wait, pending, past their retries' times, none dead-lettered; a new
    // event is not routed to it
    publish(&db, "a", &payloads(1)).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            scraped(port, "ih_subscriptions{state=\"disabled\"}").await == Some(1.0)
        })
        .await,
        "the metrics show the disabled subscription"
    );
    assert_eq!(receiver.count(), sent, "no request while disabled");
    assert_eq!(
        db.fetch_i64("select count(*) from deliveries where status = 'pending'")
            .await,
        10
    );
    assert_eq!(db.fetch_i64("select count(*) from dead_letters").await, 0);

    // enabled again (the endpoint is back), it sends the ten it kept
    down.store(false, Ordering::SeqCst);
    let enable = SubscriptionPatch {
        enabled: Some(true),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(&db.pool, failing, &enable)
        .await
        .unwrap()
        .unwrap();
    assert!(delivered_within(&db, 10, Duration::from_secs(20)).await);
    assert_eq!(state(&db, failing).await.state(), EndpointState::Healthy);
    drop(worker);
}

testkit::on_both_backends!(
    a_subscription_failing_for_days_is_disabled_and_sends_what_it_kept_when_enabled
);
