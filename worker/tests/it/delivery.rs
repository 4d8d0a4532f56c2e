use std::{collections::BTreeMap, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use shared::state::AttemptOutcome;
use store::{self as db, ReplayOutcome};
use uuid::Uuid;

use crate::support::{
    FixedLookup, Receiver, Reply, count, dead_letters, delivered_within, eventually, publish,
    spawn_worker, subscribe, worker_settings,
};
use testkit::db::TestDb;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The product brief's recipe: hex HMAC-SHA256 over "{timestamp}.{body}" with the secret's
/// UTF-8 bytes, compared with X-Webhook-Signature.
fn verify_brief_signature(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let message = [timestamp.as_bytes(), b".", body].concat();
    let expected: String = hmac(secret.as_bytes(), &message)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == signature
}

/// The Standard Webhooks verification rule: any space-separated `v1,` signature matching
/// base64(HMAC(base64-decoded whsec key, "{id}.{timestamp}.{body}")).
pub fn verify_standard_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let message = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let expected = BASE64.encode(hmac(&key, &message));
    header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .any(|signature| signature == expected)
}

#[tokio::test]
async fn a_published_event_is_delivered_signed_with_the_exact_payload() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    subscribe(
        &db,
        &receiver.url("/hook?team=a"),
        SECRET,
        &["order.created"],
    )
    .await;
    let payload = r#"{"big": 18446744073709551617, "z": "é", "a": [1, 2]}"#.to_owned();
    let event_id = publish(&db, "order.created", std::slice::from_ref(&payload)).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), None);

    assert!(
        delivered_within(&db, 1, Duration::from_secs(20)).await,
        "the delivery completes"
    );
    let request = receiver.received().pop().unwrap();
    let timestamp = request.header("x-webhook-timestamp");
    assert!(verify_brief_signature(
        SECRET,
        timestamp,
        &request.body,
        request.header("x-webhook-signature")
    ));
    assert!(verify_standard_signature(
        SECRET,
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        &request.body,
        request.header("webhook-signature")
    ));
    assert_eq!(request.header("webhook-id"), event_id.to_string());
    assert_eq!(request.header("x-webhook-event-id"), event_id.to_string());
    assert_eq!(request.header("x-webhook-event"), "order.created");
    assert_eq!(request.header("x-team"), "billing");
    assert!(
        request
            .header("user-agent")
            .starts_with("integrations-hub/")
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert!((chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap()).abs() < 30);

    let body = String::from_utf8(request.body.clone()).unwrap();
    assert!(
        body.starts_with(&format!(
            r#"{{"id":"{event_id}","type":"order.created","timestamp":""#
        )),
        "{body}"
    );
    assert!(
        body.ends_with(&format!(r#","data":{payload}}}"#)),
        "payload spliced byte for byte: {body}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["type"], "order.created");

    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(attempts[0].response_status, Some(200));
    worker.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_four_times_gets_the_event_on_attempt_five() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|n, _| Reply::status(if n < 4 { 500 } else { 200 }));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    let event_id = publish(&db, "a", &["{}".to_owned()]).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), None);

    assert!(delivered_within(&db, 1, Duration::from_secs(20)).await);
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "retry_scheduled",
            "retry_scheduled",
            "retry_scheduled",
            "retry_scheduled",
            "delivered"
        ]
    );
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt_number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert_eq!(attempts[0].response_status, Some(500));
    assert_eq!(
        count(&db, "select attempts::bigint from all_deliveries").await,
        5
    );
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(
        ids.iter().all(|id| *id == event_id.to_string()),
        "the same id on every retry"
    );
    assert_eq!(count(&db, "select count(*) from subscriptions where consecutive_failures = 0 and last_success_at is not null").await, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_receiver_that_always_fails_dead_letters_and_replay_delivers() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(500));
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    let event_id = publish(&db, "a", &["{}".to_owned()]).await[0];
    let mut settings = worker_settings(&db.url);
    settings.delivery_max_attempts = 3;
    let worker = spawn_worker(&settings, None);

    let dead = eventually(Duration::from_secs(20), || async {
        count(&db, "select count(*) from dead_letters").await == 1
    })
    .await;
    assert!(dead, "dead-lettered after the last attempt");
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status = 'dead'"
        )
        .await,
        1
    );
    assert_eq!(receiver.count(), 3);
    let letters = dead_letters(&db).await;
    assert_eq!(
        letters[0].reason.to_string(),
        "max_attempts_exceeded: http_500"
    );
    assert_eq!(letters[0].event_id, event_id);

    receiver.reply_with(|_, _| Reply::status(200));
    let outcome = db::replay_dead_letter(&db.pool, letters[0].id, Uuid::now_v7())
        .await
        .unwrap();
    assert!(matches!(outcome, ReplayOutcome::Replayed { .. }));
    db::notify_workers(&db.pool).await.unwrap();
    assert!(
        delivered_within(&db, 1, Duration::from_secs(20)).await,
        "the replayed delivery arrives"
    );
    assert_eq!(receiver.count(), 4);
    worker.stop().await;
}

#[tokio::test]
async fn gone_dead_letters_at_once_and_disables_the_subscription() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(410));
    let subscription = subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &["{}".to_owned()]).await;
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(
                &db,
                "select count(*) from dead_letters where reason = 'endpoint_gone'",
            )
            .await
                == 1
        })
        .await
    );
    let row = db::get_subscription(&db.pool, subscription)
        .await
        .unwrap()
        .unwrap();
    assert!(!row.enabled);
    assert_eq!(row.disabled_reason.as_deref(), Some("endpoint_gone"));
    assert_eq!(receiver.count(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn queued_work_follows_the_subscription_as_it_is_when_sent() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let deleted = subscribe(&db, &receiver.url("/deleted"), SECRET, &["a"]).await;
    let disabled = subscribe(&db, &receiver.url("/disabled"), SECRET, &["a"]).await;
    publish(&db, "a", &["{}".to_owned()]).await;
    assert!(db::delete_subscription(&db.pool, deleted).await.unwrap());
    let patch = db::SubscriptionPatch {
        enabled: Some(false),
        ..Default::default()
    };
    db::update_subscription(&db.pool, disabled, &patch)
        .await
        .unwrap()
        .unwrap();
    let worker = spawn_worker(&worker_settings(&db.url), None);

    assert!(
        eventually(Duration::from_secs(10), || async {
            count(
                &db,
                "select count(*) from all_deliveries where status in ('cancelled', 'dead')",
            )
            .await
                == 2
        })
        .await
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status = 'cancelled'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from dead_letters where reason = 'subscription_disabled'"
        )
        .await,
        1
    );
    assert_eq!(receiver.count(), 0, "no request in either case");
    worker.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|n, _| {
        if n == 0 {
            Reply::status(429).header("Retry-After", "2")
        } else {
            Reply::status(200)
        }
    });
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    publish(&db, "a", &["{}".to_owned()]).await;
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(delivered_within(&db, 1, Duration::from_secs(20)).await);
    let gap = count(&db, "select (extract(epoch from max(started_at) - min(started_at)) * 1000)::bigint from delivery_attempts").await;
    assert!(
        gap >= 1900,
        "second attempt waited for Retry-After: {gap} ms"
    );
    worker.stop().await;
}

#[tokio::test]
async fn redirects_are_failures_and_are_not_followed() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let canary = receiver.url("/canary");
    receiver.reply_with(move |_, request| {
        if request.path == "/canary" {
            Reply::status(200)
        } else {
            Reply::status(307).header("Location", &canary)
        }
    });
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    let event_id = publish(&db, "a", &["{}".to_owned()]).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&db, "select count(*) from delivery_attempts").await >= 1
        })
        .await
    );
    worker.stop().await;
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts[0].response_status, Some(307));
    assert_eq!(attempts[0].outcome, AttemptOutcome::RetryScheduled);
    assert!(
        receiver.received().iter().all(|r| r.path != "/canary"),
        "the redirect target was never called"
    );
}

#[tokio::test]
async fn slow_and_huge_answers_are_bounded() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, request| {
        if request.path == "/slow" {
            Reply::status(200).delayed(Duration::from_secs(10))
        } else {
            Reply {
                body: vec![b'x'; 2 * 1024 * 1024],
                ..Reply::status(200)
            }
        }
    });
    subscribe(&db, &receiver.url("/slow"), SECRET, &["slow"]).await;
    subscribe(&db, &receiver.url("/huge"), SECRET, &["huge"]).await;
    let slow = publish(&db, "slow", &["{}".to_owned()]).await[0];
    let huge = publish(&db, "huge", &["{}".to_owned()]).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(
        eventually(Duration::from_secs(15), || async {
            count(&db, "select count(*) from delivery_attempts").await >= 2
        })
        .await
    );
    worker.stop().await;
    let slow_attempt = &db::list_event_attempts(&db.pool, slow)
        .await
        .unwrap()
        .unwrap()[0];
    assert!(
        slow_attempt
            .error
            .as_deref()
            .unwrap()
            .starts_with("timeout"),
        "{slow_attempt:?}"
    );
    assert!(slow_attempt.duration_ms < 4000, "{slow_attempt:?}");
    let huge_attempt = &db::list_event_attempts(&db.pool, huge)
        .await
        .unwrap()
        .unwrap()[0];
    assert_eq!(huge_attempt.outcome, AttemptOutcome::Delivered);
    assert_eq!(huge_attempt.response_body.as_ref().unwrap().len(), 4096);
}

#[tokio::test]
async fn forbidden_destinations_are_refused_at_send_time_without_a_connection() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    // names resolving to metadata and private addresses, and literals written past the API
    subscribe(&db, "http://metadata.test/latest", SECRET, &["a"]).await;
    subscribe(&db, "http://private.test/hook", SECRET, &["a"]).await;
    subscribe(&db, "http://mixed.test/hook", SECRET, &["a"]).await;
    subscribe(&db, "http://10.0.0.1/hook", SECRET, &["a"]).await;
    subscribe(&db, "http://169.254.169.254/latest", SECRET, &["a"]).await;
    let port = receiver.address.port();
    subscribe(
        &db,
        &format!("http://allowed.test:{port}/hook"),
        SECRET,
        &["a"],
    )
    .await;
    let lookup = FixedLookup(BTreeMap::from([
        (
            "metadata.test".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
        ("private.test".to_owned(), vec!["10.0.0.1".parse().unwrap()]),
        (
            "mixed.test".to_owned(),
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap()],
        ),
        (
            "allowed.test".to_owned(),
            vec!["127.0.0.1".parse().unwrap()],
        ),
    ]));
    let event_id = publish(&db, "a", &["{}".to_owned()]).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), Some(Arc::new(lookup)));
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&db, "select count(*) from delivery_attempts").await >= 6
        })
        .await
    );
    worker.stop().await;
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    let blocked = attempts
        .iter()
        .filter(|a| {
            a.error
                .as_deref()
                .is_some_and(|e| e.starts_with("blocked_address"))
        })
        .count();
    assert_eq!(blocked, 5, "{attempts:?}");
    assert_eq!(
        attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Delivered)
            .count(),
        1
    );
    assert_eq!(
        receiver.count(),
        1,
        "only the allowed destination was contacted"
    );
}

#[tokio::test]
async fn an_idle_listening_worker_is_woken_without_waiting_for_its_poll() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    subscribe(&db, &receiver.url("/hook"), SECRET, &["a"]).await;
    let mut settings = worker_settings(&db.url);
    settings.delivery_poll_interval_seconds = 30.0;
    let worker = spawn_worker(&settings, None);
    // wait until the worker's LISTEN is registered, so only a notification can wake it
    let listening = eventually(Duration::from_secs(10), || async {
        count(
            &db,
            "select count(*) from pg_stat_activity
              where datname = current_database() and query ilike 'listen%'",
        )
        .await
            == 1
    })
    .await;
    assert!(listening, "the worker never started listening");
    let started = std::time::Instant::now();
    publish(&db, "a", &["{}".to_owned()]).await;
    assert!(eventually(Duration::from_secs(10), || async { receiver.count() == 1 }).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by NOTIFY, not the 30 s poll: {:?}",
        started.elapsed()
    );
    worker.stop().await;
}

/// A resolver that panics for one host: the panic happens inside a delivery.
struct PanickingLookup;

impl worker::http::Lookup for PanickingLookup {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send>>
    {
        Box::pin(async move {
            assert!(host != "panic.test", "injected panic while delivering");
            Ok(vec!["127.0.0.1".parse().unwrap()])
        })
    }
}

#[tokio::test]
async fn a_panic_inside_one_delivery_is_a_failed_attempt_and_the_worker_goes_on() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let port = receiver.address.port();
    subscribe(
        &db,
        &format!("http://panic.test:{port}/hook"),
        SECRET,
        &["a"],
    )
    .await;
    subscribe(
        &db,
        &format!("http://fine.test:{port}/hook"),
        SECRET,
        &["a"],
    )
    .await;
    let event_id = publish(&db, "a", &["{}".to_owned()]).await[0];
    let worker = spawn_worker(&worker_settings(&db.url), Some(Arc::new(PanickingLookup)));
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(
                &db,
                "select count(*) from delivery_attempts where outcome = 'retry_scheduled'",
            )
            .await
                >= 1
                && count(
                    &db,
                    "select count(*) from all_deliveries where status = 'delivered'",
                )
                .await
                    == 1
        })
        .await
    );
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    let failed = attempts
        .iter()
        .find(|a| a.outcome == AttemptOutcome::RetryScheduled)
        .unwrap();
    assert!(failed.error.is_some(), "{failed:?}");
    worker.stop().await;
}
