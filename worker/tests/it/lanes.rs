//! The lease's limits and fairness: a subscription's in-flight limit holds across worker
//! processes without a row leased to be handed back, one subscription's backlog does not
//! delay another's deliveries, and lanes emptied by a lease while publishes race stay
//! reachable. The worker processes share the machine's two cores, so nextest runs these one
//! at a time (`.config/nextest.toml`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use store::{self as db, SubscriptionPatch};
use testkit::{
    db::{Backend, TestDb},
    free_port,
};
use uuid::Uuid;

use crate::support::{
    Receiver, Reply, WorkerProcess, delivered_within, eventually, publish, scraped, spawn_worker,
    subscribe, worker_settings,
};

const SECRET: &str = "a-plain-secret-of-some-length";

fn payloads(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!(r#"{{"n":{i}}}"#))
        .collect()
}

async fn limit_in_flight(db: &TestDb, subscription: Uuid, limit: i32) {
    let patch = SubscriptionPatch {
        max_in_flight: Some(Some(limit)),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(&db.pool, subscription, &patch)
        .await
        .unwrap()
        .unwrap();
}

async fn limit_rate(db: &TestDb, subscription: Uuid, per_second: f64) {
    let patch = SubscriptionPatch {
        rate_limit_per_second: Some(Some(per_second)),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(&db.pool, subscription, &patch)
        .await
        .unwrap()
        .unwrap();
}

async fn a_subscriptions_limit_holds_across_two_worker_processes(backend: Backend) {
    let db = TestDb::on(backend).await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(150)));
    let limited = subscribe(&db, &receiver.url("/limited"), SECRET, &["a"]).await;
    limit_in_flight(&db, limited, 3).await;
    publish(&db, "a", &payloads(0, 30)).await;

    let ports = [free_port(), free_port()];
    let workers: Vec<WorkerProcess> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            WorkerProcess::spawn(
                &db.url,
                &format!("w{n}"),
                &[
                    ("IH_WORKER_METRICS_ADDR", &format!("127.0.0.1:{port}")),
                    ("IH_WORKER_CONCURRENCY", "32"),
                    ("IH_SUBSCRIPTION_MAX_IN_FLIGHT", "100"),
                ],
            )
        })
        .collect();
    assert!(delivered_within(&db, 30, Duration::from_secs(60)).await);

    let most = receiver.most_in_flight("/limited");
    assert!(
        (2..=3).contains(&most),
        "{most} requests at once to a subscription limited to 3"
    );
    assert_eq!(receiver.count(), 30, "each delivery sent once");
    let attempts = db
        .fetch_i64("select coalesce(sum(attempts), 0) from all_deliveries")
        .await;
    assert_eq!(attempts, 30, "one attempt each");
    // no row was leased to be handed back at the limit
    for port in ports {
        assert_eq!(
            scraped(port, "ih_deliveries_deferred_total").await,
            Some(0.0),
            "hand-backs on the worker at 127.0.0.1:{port}"
        );
    }
    drop(workers);
}

testkit::on_both_backends!(a_subscriptions_limit_holds_across_two_worker_processes);

async fn a_rate_limit_holds_across_two_worker_processes(backend: Backend) {
    let db = TestDb::on(backend).await;
    let receiver = Receiver::start().await;
    let limited = subscribe(&db, &receiver.url("/limited"), SECRET, &["limited"]).await;
    limit_rate(&db, limited, 20.0).await;
    subscribe(&db, &receiver.url("/free"), SECRET, &["free"]).await;
    publish(&db, "limited", &payloads(0, 60)).await;
    publish(&db, "free", &payloads(0, 200)).await;
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|n| WorkerProcess::spawn(&db.url, &format!("w{n}"), &[]))
        .collect();
    assert!(delivered_within(&db, 260, Duration::from_secs(30)).await);
    drop(workers);

    let arrivals = |path: &str| {
        let mut times: Vec<Instant> = receiver
            .received()
            .into_iter()
            .filter(|received| received.path == path)
            .map(|received| received.at)
            .collect();
        times.sort();
        times
    };
    let limited = arrivals("/limited");
    let free = arrivals("/free");
    assert_eq!((limited.len(), free.len()), (60, 200), "each sent once");
    // 60 at 20 a second, after at most 200 ms of the rate at once: about 2.8 s
    let span = limited[59].duration_since(limited[0]);
    assert!(
        (Duration::from_millis(2_400)..Duration::from_secs(5)).contains(&span),
        "60 deliveries limited to 20 a second took {span:?}"
    );
    for (n, first) in limited.iter().enumerate() {
        let within_a_second = limited[n..]
            .iter()
            .take_while(|at| at.duration_since(*first) < Duration::from_secs(1))
            .count();
        // the lease's bound: a second of the rate, 200 ms more at once (see
        // lease_deliveries.sql), one for the rounding; and one for the arrivals' jitter (two
        // leases' requests can land closer together than they were leased)
        assert!(
            within_a_second <= 26,
            "{within_a_second} deliveries within a second of a subscription limited to 20"
        );
    }
    // the other subscription was not held to the limit
    let free_span = free[199].duration_since(free[0]);
    assert!(
        free_span < Duration::from_secs(2),
        "200 unlimited deliveries took {free_span:?}"
    );
}

testkit::on_both_backends!(a_rate_limit_holds_across_two_worker_processes);

async fn a_backlog_does_not_delay_another_subscriptions_deliveries(backend: Backend) {
    let db = TestDb::on(backend).await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, received| {
        if received.path == "/slow" {
            Reply::status(200).delayed(Duration::from_secs(1))
        } else {
            Reply::status(200)
        }
    });
    let slow = subscribe(&db, &receiver.url("/slow"), SECRET, &["slow"]).await;
    limit_in_flight(&db, slow, 4).await;
    subscribe(&db, &receiver.url("/prompt"), SECRET, &["prompt"]).await;
    publish(&db, "slow", &payloads(0, 400)).await;
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(
        eventually(Duration::from_secs(10), || async {
            receiver.most_in_flight("/slow") == 4
        })
        .await
    );

    let mut published = HashMap::new();
    for n in 0..10 {
        published.insert(format!(r#"{{"n":{n}}}"#), Instant::now());
        publish(&db, "prompt", &payloads(n, 1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prompt = || {
        receiver
            .received()
            .into_iter()
            .filter(|received| received.path == "/prompt")
            .collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(10), || async { prompt().len() == 10 }).await);
    let slowest = prompt()
        .iter()
        .map(|received| {
            let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
            let sent = published[&body["data"].to_string()];
            received.at.duration_since(sent)
        })
        .max()
        .unwrap();
    // the worker polls every 250 ms besides its wake-ups: a prompt delivery waits at most
    // about that, never for the backlog's 1 s answers
    assert!(
        slowest < Duration::from_millis(900),
        "a prompt subscription's delivery waited {slowest:?} behind another's backlog"
    );
    assert_eq!(receiver.most_in_flight("/slow"), 4);
    worker.stop().await;
}

testkit::on_both_backends!(a_backlog_does_not_delay_another_subscriptions_deliveries);

/// Leases mark lanes empty while publishes to them commit: every row must still be delivered.
/// In each of ten rounds, the 100 subscriptions' lanes are made due with nothing in them for
/// long enough to be marked empty (what a lane is a second after its last row), and each gets
/// an event while the workers' leases mark them; a lane marked empty over a row that lease
/// could not see would hold the row until the subscription's next event, which never comes.
#[tokio::test]
async fn rows_published_while_leases_empty_their_lanes_are_all_delivered() {
    const LANES: usize = 100;
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    for n in 0..LANES {
        let event_type = format!("t{n}");
        subscribe(
            &db,
            &receiver.url(&format!("/s{n}")),
            SECRET,
            &[&event_type],
        )
        .await;
    }
    let workers = [
        spawn_worker(&worker_settings(&db.url), None),
        spawn_worker(&worker_settings(&db.url), None),
    ];
    let publish_to_every_lane = |round: usize| {
        let publishers: Vec<_> = (0..4)
            .map(|publisher| {
                let pool = db.pool.clone();
                tokio::spawn(async move {
                    for n in (publisher..LANES).step_by(4) {
                        let event_type = format!("t{n}");
                        let payload = payloads(round * LANES + n, 1);
                        crate::support::publish_on(&pool, &event_type, &payload).await;
                    }
                })
            })
            .collect();
        async move {
            for publisher in publishers {
                publisher.await.unwrap();
            }
        }
    };
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        db.execute_script(
            "update lanes set next_due_at = now(), empty_since = now() - interval '5 seconds'
             where id <> '00000000-0000-0000-0000-000000000000'"
                .to_owned(),
        )
        .await;
        publish_to_every_lane(round).await;
    }
    let expected = i64::try_from(LANES * ROUNDS).unwrap();
    assert!(
        delivered_within(&db, expected, Duration::from_secs(30)).await,
        "{} of {expected} delivered; lanes with rows not due: {:?}",
        db.fetch_i64("select count(*) from all_deliveries where status = 'delivered'")
            .await,
        db.fetch_strings(
            "select l.id::text from lanes l
             where exists (select 1 from deliveries d
                           where d.lane = l.id and d.status = 'pending')
               and (l.next_due_at is null or l.next_due_at > now())"
        )
        .await
    );
    assert_eq!(receiver.count(), LANES * ROUNDS);
    for worker in workers {
        worker.stop().await;
    }
}
