//! The store's contract: every public function of `store`, run on Postgres and on SQLite from
//! one test body with the same assertions. A backend that answers differently from the other
//! fails here, before any end-to-end test.
//!
//! The last test checks that every `.sql` file of the store is included by a function this
//! suite calls, so no hand-written statement goes unexecuted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::{collections::BTreeMap, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use shared::{
    config::SlackFanout,
    crypto::SecretCipher,
    state::{AttemptOutcome, DeadReason, DeliveryStatus, Target},
};
use store::{
    self as db, AttemptRecord, BulkReplayFilter, Completion, Db, DeadLetterFilter, DeliveryFilter,
    EventFilter, NewEvent, NewSubscription, NextState, Page, PublishOutcome, PublishedEvent,
    ReplayOutcome, SubscriptionPatch,
};
use testkit::db::{Backend, TestDb};
use uuid::Uuid;

/// The service's defaults: no test here fails enough to open a circuit unless it says so.
const HEALTH: db::EndpointHealth = db::EndpointHealth {
    failures: 20,
    window: Duration::from_secs(60),
    first_probe: Duration::from_secs(5),
    disable_after: Duration::from_secs(120 * 3600),
};

/// Declares each test once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name(testkit::db::TestDb::on(testkit::db::Backend::Postgres).await)
                        .await;
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name(testkit::db::TestDb::on(testkit::db::Backend::Sqlite).await)
                        .await;
                }
            }
        )*
    };
}

contract!(
    subscriptions_are_created_read_listed_changed_and_deleted,
    a_rotation_keeps_the_old_secret_for_its_grace,
    secrets_are_resealed_under_the_current_key,
    publish_stores_events_and_answers_a_retried_key,
    events_are_listed_by_type_time_and_page,
    a_lease_takes_due_rows_once_and_a_release_hands_them_back,
    completions_write_states_attempts_and_dead_letters,
    dead_letters_are_listed_and_replayed_once,
    a_bulk_replay_takes_what_its_dry_run_counted,
    the_console_numbers_and_the_queue_sample_count_due_work,
    the_handle_pings_wakes_and_closes,
    publish_reaches_the_subscriptions_routed_to_its_event_type,
    the_migration_routes_the_subscriptions_there_are,
    a_finished_delivery_leaves_the_live_table_for_the_history,
    retention_removes_the_days_past_it_and_keeps_live_work_and_dead_letters,
    a_key_whose_event_is_gone_is_free_again,
    a_short_retention_removes_short_spans,
    the_history_migration_keeps_every_row_and_resends_nothing,
    a_failing_endpoint_opens_its_circuit_probes_and_closes,
    a_subscription_failing_too_long_is_disabled_and_keeps_its_deliveries,
    chart_minutes_are_replaced_summed_across_workers_and_pruned,
    the_health_view_ranks_subscriptions_by_trouble,
);

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const KEY_1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// Leases as a worker does, with a subscription in-flight limit no test here reaches.
async fn lease(
    db: &Db,
    limit: usize,
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<db::LeasedDelivery>, db::DbError> {
    db::lease_deliveries(
        db,
        &db::LeaseRequest {
            limit,
            worker_id,
            lease,
            max_in_flight: 10_000,
        },
    )
    .await
    .map(|leased| leased.deliveries)
}

fn new_subscription(event_types: &[&str]) -> NewSubscription {
    NewSubscription {
        id: Uuid::now_v7(),
        url: "http://127.0.0.1:9/hook".to_owned(),
        secret: SECRET.to_owned(),
        event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        enabled: true,
        description: Some("orders".to_owned()),
        headers: BTreeMap::from([("X-Team".to_owned(), "payments".to_owned())]),
        max_in_flight: None,
        rate_limit_per_second: None,
    }
}

async fn subscribe(db: &Db, event_types: &[&str]) -> Uuid {
    db::insert_subscription(
        db,
        &SecretCipher::plaintext(),
        &new_subscription(event_types),
    )
    .await
    .unwrap()
    .id
}

fn event(event_type: &str, key: Option<&str>, hash: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        payload: r#"{"n":1}"#.to_owned(),
        idempotency_key: key.map(str::to_owned),
        request_hash: hash.to_owned(),
        traceparent: None,
    }
}

async fn publish(db: &Db, events: &[NewEvent]) -> Vec<PublishedEvent> {
    match db::publish_events(db, "publisher", events, None)
        .await
        .unwrap()
    {
        PublishOutcome::Stored(stored) => stored,
        PublishOutcome::KeyReused { index } => panic!("key reused at {index}"),
    }
}

fn page(limit: i64) -> Page {
    Page {
        cursor: None,
        limit,
    }
}

fn attempt(number: i32, status: Option<i32>) -> AttemptRecord {
    AttemptRecord {
        attempt_number: number,
        started_at: Utc::now(),
        duration_ms: 12,
        response_status: status,
        response_body: Some("ok".to_owned()),
        error: None,
        external_id: None,
    }
}

/// Leases everything due and makes each row's completion from what `next` says for its event
/// type; a failure carries an error with NUL in it, which the store must make storable.
async fn lease_for(db: &Db, next: impl Fn(&str) -> NextState) -> Vec<Completion> {
    let leased = lease(db, 100, "w1", Duration::from_secs(30)).await.unwrap();
    leased
        .iter()
        .map(|row| {
            let next = next(&row.event_type);
            let failed = next != NextState::Delivered;
            Completion {
                delivery_id: row.id,
                lease_token: row.lease_token,
                last_error: failed.then(|| "HTTP 500\0!".to_owned()),
                attempt: Some(attempt(row.attempts, Some(if failed { 500 } else { 200 }))),
                next,
                probe: row.probe,
            }
        })
        .collect()
}

/// Leases everything due and completes it; returns how many completions were written.
async fn lease_and_complete(db: &Db, next: impl Fn(&str) -> NextState) -> usize {
    let completions = lease_for(db, next).await;
    db::complete_deliveries(db, "w1", &completions, &HEALTH)
        .await
        .unwrap()
        .len()
}

/// Dead after the last attempt failed with `class`.
fn dead(class: &str) -> NextState {
    NextState::Dead(DeadReason::MaxAttemptsExceeded(class.to_owned()))
}

async fn subscriptions_are_created_read_listed_changed_and_deleted(test: TestDb) {
    let db = &test.pool;
    let cipher = SecretCipher::plaintext();
    let created = db::insert_subscription(db, &cipher, &new_subscription(&["order.created"]))
        .await
        .unwrap();
    assert_eq!(created.url, "http://127.0.0.1:9/hook");
    assert_eq!(created.event_types.0, ["order.created"]);
    assert_eq!(created.headers.0["X-Team"], "payments");
    assert_eq!(created.description.as_deref(), Some("orders"));
    assert!(created.enabled);
    assert_eq!(created.disabled_reason, None);
    assert_eq!(created.consecutive_failures, 0);
    assert!((Utc::now() - created.created_at).num_seconds().abs() < 60);

    let read = db::get_subscription(db, created.id).await.unwrap().unwrap();
    assert_eq!((read.id, read.created_at), (created.id, created.created_at));
    assert!(
        db::get_subscription(db, Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );

    // three more, one disabled at creation; pages of two, oldest first
    let mut ids = vec![created.id];
    for enabled in [true, false, true] {
        let mut subscription = new_subscription(&["*"]);
        subscription.enabled = enabled;
        ids.push(
            db::insert_subscription(db, &cipher, &subscription)
                .await
                .unwrap()
                .id,
        );
    }
    let first = db::list_subscriptions(db, None, page(2)).await.unwrap();
    let second = db::list_subscriptions(
        db,
        None,
        Page {
            cursor: Some(first[1].id),
            limit: 2,
        },
    )
    .await
    .unwrap();
    let listed: Vec<Uuid> = first.iter().chain(&second).map(|row| row.id).collect();
    assert_eq!(listed, ids);
    let disabled = db::list_subscriptions(db, Some(false), page(10))
        .await
        .unwrap();
    assert_eq!(
        disabled.iter().map(|row| row.id).collect::<Vec<_>>(),
        [ids[2]]
    );
    assert_eq!(
        db::list_subscriptions(db, Some(true), page(10))
            .await
            .unwrap()
            .len(),
        3
    );

    // a patch changes only what it names; a description can be cleared
    let patch = SubscriptionPatch {
        url: Some("http://127.0.0.1:9/other".to_owned()),
        event_types: Some(vec!["a".to_owned(), "b".to_owned()]),
        description: Some(None),
        headers: Some(BTreeMap::new()),
        enabled: None,
        max_in_flight: Some(Some(7)),
        rate_limit_per_second: Some(Some(0.5)),
    };
    let changed = db::update_subscription(db, created.id, &patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.url, "http://127.0.0.1:9/other");
    assert_eq!(changed.event_types.0, ["a", "b"]);
    assert_eq!(changed.description, None);
    assert!(changed.headers.0.is_empty());
    assert!(changed.enabled);
    assert_eq!(
        (changed.max_in_flight, changed.rate_limit_per_second),
        (Some(7), Some(0.5))
    );
    assert!(changed.updated_at >= created.updated_at);
    let untouched = db::update_subscription(db, created.id, &SubscriptionPatch::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.url, changed.url);

    // disabling by hand gives a reason; re-enabling clears it
    let off = SubscriptionPatch {
        enabled: Some(false),
        ..SubscriptionPatch::default()
    };
    let on = SubscriptionPatch {
        enabled: Some(true),
        ..SubscriptionPatch::default()
    };
    let disabled = db::update_subscription(db, created.id, &off)
        .await
        .unwrap()
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("disabled_by_operator")
    );
    let enabled = db::update_subscription(db, created.id, &on)
        .await
        .unwrap()
        .unwrap();
    assert!(enabled.enabled);
    assert_eq!(enabled.disabled_reason, None);

    // a soft delete hides it from every read and write, once
    assert!(db::delete_subscription(db, created.id).await.unwrap());
    assert!(!db::delete_subscription(db, created.id).await.unwrap());
    assert!(
        db::get_subscription(db, created.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db::update_subscription(db, created.id, &on)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db::rotate_subscription_secret(db, &cipher, created.id, OTHER_SECRET, 60.0)
            .await
            .unwrap()
            .is_none()
    );
    let left: Vec<Uuid> = db::list_subscriptions(db, None, page(10))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(left, ids[1..]);
    assert!(
        db::update_subscription(db, Uuid::now_v7(), &on)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_rotation_keeps_the_old_secret_for_its_grace(test: TestDb) {
    let db = &test.pool;
    let cipher = SecretCipher::parse(KEY_1).unwrap();
    let id = db::insert_subscription(db, &cipher, &new_subscription(&["*"]))
        .await
        .unwrap()
        .id;
    let rotated = db::rotate_subscription_secret(db, &cipher, id, OTHER_SECRET, 3600.0)
        .await
        .unwrap()
        .unwrap();
    let expires = rotated.previous_secret_expires_at.unwrap();
    let grace = (expires - Utc::now()).num_seconds();
    assert!((3500..=3600).contains(&grace), "grace of {grace} s");

    let subscriptions = db::get_delivery_subscriptions(db, &cipher, &[id, Uuid::now_v7()])
        .await
        .unwrap();
    assert_eq!(subscriptions.len(), 1, "an unknown id is left out");
    let secrets = subscriptions[0].secrets.as_ref().unwrap();
    assert_eq!(secrets.current, OTHER_SECRET);
    assert_eq!(secrets.previous.as_deref(), Some(SECRET));
    assert!(subscriptions[0].enabled && !subscriptions[0].deleted);

    // after the grace the previous secret no longer signs
    test.end_secret_grace(id).await;
    let after = db::get_delivery_subscriptions(db, &cipher, &[id])
        .await
        .unwrap();
    assert_eq!(after[0].secrets.as_ref().unwrap().previous, None);
}

async fn secrets_are_resealed_under_the_current_key(test: TestDb) {
    let db = &test.pool;
    let old = SecretCipher::parse(KEY_1).unwrap();
    let both = SecretCipher::parse(&format!("{KEY_2},{KEY_1}")).unwrap();
    let only_new = SecretCipher::parse(KEY_2).unwrap();
    let first = db::insert_subscription(db, &old, &new_subscription(&["*"]))
        .await
        .unwrap()
        .id;
    db::insert_subscription(db, &old, &new_subscription(&["*"]))
        .await
        .unwrap();
    db::rotate_subscription_secret(db, &old, first, OTHER_SECRET, 3600.0)
        .await
        .unwrap();
    // two current secrets and one previous, all under k1
    assert_eq!(
        db::secrets_without_key(db, &only_new).await.unwrap(),
        [("k1".to_owned(), 3)]
    );
    assert!(db::secrets_without_key(db, &old).await.unwrap().is_empty());

    let report = db::reencrypt_secrets(db, &both, 1).await.unwrap();
    assert_eq!((report.examined, report.reencrypted), (2, 2));
    assert!(report.failed.is_empty());
    assert!(
        db::secrets_without_key(db, &only_new)
            .await
            .unwrap()
            .is_empty()
    );
    let again = db::reencrypt_secrets(db, &both, 10).await.unwrap();
    assert_eq!(
        (again.examined, again.reencrypted),
        (2, 0),
        "already current"
    );
    let (stored, previous) = test.stored_secrets(first).await;
    assert!(stored.starts_with("enc.v1.k2."), "{stored}");
    assert!(previous.unwrap().starts_with("enc.v1.k2."));
    let opened = db::get_delivery_subscriptions(db, &only_new, &[first])
        .await
        .unwrap();
    assert_eq!(opened[0].secrets.as_ref().unwrap().current, OTHER_SECRET);
}

async fn publish_stores_events_and_answers_a_retried_key(test: TestDb) {
    let db = &test.pool;
    subscribe(db, &["order.created"]).await;
    subscribe(db, &["*"]).await;
    let keyed = event("order.created", Some("key-1"), "h1");
    let stored = publish(db, &[keyed.clone(), event("other", None, "h2")]).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].id, keyed.id);
    assert_eq!(
        stored
            .iter()
            .map(|e| e.deliveries_created)
            .collect::<Vec<_>>(),
        [2, 1],
        "a matching subscription and the wildcard; the wildcard alone"
    );

    // the same key and request: the first answer, nothing new
    let mut retry = keyed.clone();
    retry.id = Uuid::now_v7();
    assert_eq!(publish(db, std::slice::from_ref(&retry)).await, stored[..1]);
    // the same key in another scope is another event
    let other_scope = db::publish_events(db, "other", std::slice::from_ref(&retry), None)
        .await
        .unwrap();
    assert!(matches!(other_scope, PublishOutcome::Stored(ref e) if e[0].id == retry.id));
    // the same key with another request is refused, and nothing of the batch is written
    let conflicting = event("order.created", Some("key-1"), "different");
    let fresh = event("other", None, "h3");
    let refused = db::publish_events(db, "publisher", &[fresh.clone(), conflicting], None)
        .await
        .unwrap();
    assert!(matches!(refused, PublishOutcome::KeyReused { index: 1 }));
    assert!(db::get_event(db, fresh.id).await.unwrap().is_none());

    // the Slack connector adds a delivery for its event types
    let slack = SlackFanout {
        event_types: vec!["request_submitted".to_owned()],
    };
    let request = event("request_submitted", None, "h4");
    let answer = db::publish_events(
        db,
        "publisher",
        std::slice::from_ref(&request),
        Some(&slack),
    )
    .await
    .unwrap();
    assert!(matches!(answer, PublishOutcome::Stored(ref e) if e[0].deliveries_created == 2));
    let (_, deliveries) = db::get_event(db, request.id).await.unwrap().unwrap();
    let mut targets: Vec<Target> = deliveries.iter().map(|d| d.target).collect();
    targets.sort();
    assert_eq!(targets, [Target::Webhook, Target::Slack]);

    let (read, deliveries) = db::get_event(db, keyed.id).await.unwrap().unwrap();
    assert_eq!(read.payload, r#"{"n":1}"#);
    assert_eq!(read.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(read.deliveries_created, 2);
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Pending
                && d.event_id == keyed.id
                && d.attempts == 0)
    );
}

async fn events_are_listed_by_type_time_and_page(test: TestDb) {
    let db = &test.pool;
    let before = Utc::now() - chrono::Duration::seconds(1);
    let stored = publish(
        db,
        &[
            event("a", None, "1"),
            event("b", None, "2"),
            event("a", None, "3"),
        ],
    )
    .await;
    let after = Utc::now() + chrono::Duration::seconds(1);
    let ids = |events: Vec<PublishedEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();

    let all = db::list_events(db, &EventFilter::default(), page(10))
        .await
        .unwrap();
    assert_eq!(
        ids(all),
        [stored[2].id, stored[1].id, stored[0].id],
        "newest first"
    );
    let of_a = EventFilter {
        event_type: Some("a".to_owned()),
        ..EventFilter::default()
    };
    let first = db::list_events(db, &of_a, page(1)).await.unwrap();
    assert_eq!(first[0].event_type, "a");
    let next = Page {
        cursor: Some(first[0].id),
        limit: 10,
    };
    assert_eq!(ids(first), [stored[2].id]);
    assert_eq!(
        ids(db::list_events(db, &of_a, next).await.unwrap()),
        [stored[0].id]
    );
    let nobody = EventFilter {
        event_type: Some("nobody".to_owned()),
        ..EventFilter::default()
    };
    assert!(
        db::list_events(db, &nobody, page(10))
            .await
            .unwrap()
            .is_empty()
    );

    let window = |since: DateTime<Utc>, until: DateTime<Utc>| EventFilter {
        since: Some(since),
        until: Some(until),
        ..EventFilter::default()
    };
    assert_eq!(
        db::list_events(db, &window(before, after), page(10))
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(
        db::list_events(
            db,
            &window(after, after + chrono::Duration::hours(1)),
            page(10)
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert!(
        db::list_events(
            db,
            &window(before - chrono::Duration::hours(1), before),
            page(10)
        )
        .await
        .unwrap()
        .is_empty()
    );
    // `since` is inclusive, `until` exclusive
    let created = stored[1].created_at;
    let at = db::list_events(db, &window(created, after), page(10))
        .await
        .unwrap();
    assert!(at.iter().any(|e| e.id == stored[1].id));
    let until = db::list_events(db, &window(before, created), page(10))
        .await
        .unwrap();
    assert!(until.iter().all(|e| e.id != stored[1].id));
}

async fn a_lease_takes_due_rows_once_and_a_release_hands_them_back(test: TestDb) {
    let db = &test.pool;
    subscribe(db, &["*"]).await;
    // two publishes, so the first is due strictly before the second
    let mut stored = publish(db, &[event("a", None, "1")]).await;
    stored.extend(publish(db, &[event("b", None, "2")]).await);
    let leased = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    assert_eq!(leased.len(), 1, "the limit holds");
    assert_eq!(leased[0].event_id, stored[0].id, "oldest due first");
    assert_eq!(leased[0].attempts, 1);
    assert_eq!(leased[0].target, Target::Webhook);
    assert_eq!(leased[0].payload, r#"{"n":1}"#);
    let rest = lease(db, 10, "w2", Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].id, leased[0].id, "a leased row is not leased again");
    assert!(
        lease(db, 10, "w3", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );

    let handed = (leased[0].id, leased[0].lease_token, Duration::ZERO);
    let stale = (rest[0].id, Uuid::now_v7(), Duration::ZERO);
    assert_eq!(
        db::release_deliveries(db, &[handed, stale]).await.unwrap(),
        [leased[0].id],
        "a wrong lease token changes nothing"
    );
    assert!(
        db::release_deliveries(db, &[handed])
            .await
            .unwrap()
            .is_empty()
    );
    let again = lease(db, 10, "w1", Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, leased[0].id);
    assert_eq!(
        again[0].attempts, 1,
        "the handed-back attempt was not counted"
    );

    // a released row due later is not leased before its time
    db::release_deliveries(
        db,
        &[(again[0].id, again[0].lease_token, Duration::from_secs(600))],
    )
    .await
    .unwrap();
    assert!(
        lease(db, 10, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );

    // an expired lease is rescued, and taken again with the attempt counted; until its
    // rescue it is not leased again
    let short = publish(db, &[event("c", None, "3")]).await;
    let first = lease(db, 10, "w1", Duration::from_millis(1)).await.unwrap();
    assert_eq!(first[0].event_id, short[0].id);
    assert!(
        lease(db, 10, "w2", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        testkit::eventually(Duration::from_secs(5), || async {
            db::rescue_expired_leases(db).await.unwrap() == 1
        })
        .await
    );
    assert!(
        testkit::eventually(Duration::from_secs(5), || async {
            let taken = lease(db, 10, "w2", Duration::from_secs(30)).await.unwrap();
            taken.len() == 1 && taken[0].id == first[0].id && taken[0].attempts == 2
        })
        .await
    );
}

async fn completions_write_states_attempts_and_dead_letters(test: TestDb) {
    let db = &test.pool;
    let subscription = subscribe(db, &["*"]).await;
    let stored = publish(
        db,
        &[
            event("ok", None, "1"),
            event("retry", None, "2"),
            event("dead", None, "3"),
            event("gone", None, "4"),
        ],
    )
    .await;
    let completions = lease_for(db, |event_type| match event_type {
        "ok" => NextState::Delivered,
        "retry" => NextState::Retry(Duration::from_secs(600)),
        "dead" => dead("http_500\0"),
        _ => NextState::Dead(DeadReason::EndpointGone),
    })
    .await;
    let ok = completions
        .iter()
        .find(|c| c.next == NextState::Delivered)
        .unwrap();
    let stale = Completion {
        lease_token: Uuid::now_v7(),
        ..ok.clone()
    };
    let written = db::complete_deliveries(db, "w1", &completions, &HEALTH)
        .await
        .unwrap();
    assert_eq!(written.len(), 4);
    let delivered = written.iter().find(|w| w.id == ok.delivery_id).unwrap();
    assert!(delivered.lag_seconds.unwrap() >= 0.0);
    assert!(written.iter().filter(|w| w.lag_seconds.is_some()).count() == 1);
    assert!(
        db::complete_deliveries(db, "w1", &[stale], &HEALTH)
            .await
            .unwrap()
            .is_empty(),
        "a completion without the lease writes nothing"
    );

    let status_of = |event_id: Uuid| async move {
        let (_, deliveries) = db::get_event(db, event_id).await.unwrap().unwrap();
        deliveries[0].clone()
    };
    assert_eq!(
        status_of(stored[0].id).await.status,
        DeliveryStatus::Delivered
    );
    let retry = status_of(stored[1].id).await;
    assert_eq!(retry.status, DeliveryStatus::Pending);
    assert_eq!(
        retry.last_error.as_deref(),
        Some("HTTP 500\u{fffd}!"),
        "NUL made storable"
    );
    assert!(retry.next_attempt_at > Utc::now() + chrono::Duration::seconds(500));
    assert_eq!(status_of(stored[2].id).await.status, DeliveryStatus::Dead);

    let attempts = db::list_event_attempts(db, stored[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::RetryScheduled);
    assert_eq!(attempts[0].target, Some(Target::Webhook));
    assert_eq!(attempts[0].response_status, Some(500));
    assert_eq!(attempts[0].worker_id.as_deref(), Some("w1"));
    let ok = db::list_event_attempts(db, stored[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok[0].outcome, AttemptOutcome::Delivered);
    assert!(
        db::list_event_attempts(db, Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );

    // each dead letter says why, with a receiver-shaped detail made storable
    let mut reasons: Vec<String> =
        db::list_dead_letters(db, &DeadLetterFilter::default(), page(10))
            .await
            .unwrap()
            .into_iter()
            .map(|letter| letter.reason.to_string())
            .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["endpoint_gone", "max_attempts_exceeded: http_500\u{fffd}"]
    );

    // 410 Gone disables the subscription with its reason
    let gone = db::get_subscription(db, subscription)
        .await
        .unwrap()
        .unwrap();
    assert!(!gone.enabled);
    assert_eq!(gone.disabled_reason.as_deref(), Some("endpoint_gone"));
    // listings by status, subscription and event, newest first, paged
    let by_status = |status| DeliveryFilter {
        status: Some(status),
        ..DeliveryFilter::default()
    };
    let dead_rows = db::list_deliveries(db, &by_status(DeliveryStatus::Dead), page(10))
        .await
        .unwrap();
    assert_eq!(dead_rows.len(), 2);
    assert!(dead_rows[0].id > dead_rows[1].id);
    let after_first = Page {
        cursor: Some(dead_rows[0].id),
        limit: 10,
    };
    let rest = db::list_deliveries(db, &by_status(DeliveryStatus::Dead), after_first)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|r| r.id).collect::<Vec<_>>(),
        [dead_rows[1].id]
    );
    let of_subscription = DeliveryFilter {
        subscription_id: Some(subscription),
        ..DeliveryFilter::default()
    };
    assert_eq!(
        db::list_deliveries(db, &of_subscription, page(10))
            .await
            .unwrap()
            .len(),
        4
    );
    let of_event = DeliveryFilter {
        event_id: Some(stored[0].id),
        ..DeliveryFilter::default()
    };
    let one = db::list_deliveries(db, &of_event, page(10)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].subscription_id, Some(subscription));

    // the subscription 410 Gone disabled is routed nothing until it is enabled again
    assert_eq!(reached(db, &["later"]).await, [Vec::<Uuid>::new()]);
    let on = SubscriptionPatch {
        enabled: Some(true),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(db, subscription, &on)
        .await
        .unwrap();
    assert_eq!(reached(db, &["later"]).await, [vec![subscription]]);
}

async fn dead_letters_are_listed_and_replayed_once(test: TestDb) {
    let db = &test.pool;
    let kept = subscribe(db, &["kept"]).await;
    let deleted = subscribe(db, &["deleted"]).await;
    let stored = publish(db, &[event("kept", None, "1"), event("deleted", None, "2")]).await;
    assert_eq!(lease_and_complete(db, |_| dead("timeout")).await, 2);

    let all = db::list_dead_letters(db, &DeadLetterFilter::default(), page(10))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].id > all[1].id, "newest first");
    assert!(all.iter().all(|letter| letter.reason
        == DeadReason::MaxAttemptsExceeded("timeout".to_owned())
        && letter.target == Target::Webhook
        && letter.replayed_at.is_none()));
    let of_kept = DeadLetterFilter {
        subscription_id: Some(kept),
        ..DeadLetterFilter::default()
    };
    let letters = db::list_dead_letters(db, &of_kept, page(10)).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.event_id, stored[0].id);

    let new_delivery = Uuid::now_v7();
    assert_eq!(
        db::replay_dead_letter(db, letter.id, new_delivery)
            .await
            .unwrap(),
        ReplayOutcome::Replayed {
            delivery_id: new_delivery
        }
    );
    assert_eq!(
        db::replay_dead_letter(db, letter.id, Uuid::now_v7())
            .await
            .unwrap(),
        ReplayOutcome::AlreadyReplayed
    );
    assert_eq!(
        db::replay_dead_letter(db, Uuid::now_v7(), Uuid::now_v7())
            .await
            .unwrap(),
        ReplayOutcome::NotFound
    );
    let (_, deliveries) = db::get_event(db, stored[0].id).await.unwrap().unwrap();
    let replay = deliveries.iter().find(|d| d.id == new_delivery).unwrap();
    assert_eq!(
        (replay.status, replay.attempts),
        (DeliveryStatus::Pending, 0)
    );

    let replayed = DeadLetterFilter {
        replayed: Some(true),
        ..DeadLetterFilter::default()
    };
    let marked = db::list_dead_letters(db, &replayed, page(10))
        .await
        .unwrap();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].replay_delivery_id, Some(new_delivery));
    assert!(marked[0].replayed_at.is_some());
    let waiting = DeadLetterFilter {
        replayed: Some(false),
        ..DeadLetterFilter::default()
    };
    let orphan = db::list_dead_letters(db, &waiting, page(10)).await.unwrap();
    assert_eq!(orphan.len(), 1);
    assert!(db::delete_subscription(db, deleted).await.unwrap());
    assert_eq!(
        db::replay_dead_letter(db, orphan[0].id, Uuid::now_v7())
            .await
            .unwrap(),
        ReplayOutcome::SubscriptionDeleted
    );
}

async fn a_bulk_replay_takes_what_its_dry_run_counted(test: TestDb) {
    let db = &test.pool;
    let first = subscribe(db, &["a"]).await;
    let second = subscribe(db, &["b"]).await;
    let before = Utc::now() - chrono::Duration::seconds(1);
    let events: Vec<NewEvent> = (0..5)
        .map(|n| event(if n < 3 { "a" } else { "b" }, None, &n.to_string()))
        .collect();
    publish(db, &events).await;
    let died = lease_and_complete(db, |_| dead("http_503")).await;
    assert_eq!(died, 5);
    let after = Utc::now() + chrono::Duration::seconds(1);

    let count = |filter: BulkReplayFilter| async move {
        db::count_replayable_dead_letters(db, &filter)
            .await
            .unwrap()
    };
    let replay = |filter: BulkReplayFilter| async move {
        db::replay_dead_letters_batch(db, &filter, 2).await.unwrap()
    };
    let everything = BulkReplayFilter::default;
    let of_first = || BulkReplayFilter {
        subscription_id: Some(first),
        ..BulkReplayFilter::default()
    };
    let in_window = |since, until| BulkReplayFilter {
        since: Some(since),
        until: Some(until),
        ..BulkReplayFilter::default()
    };
    assert_eq!(count(everything()).await, 5);
    assert_eq!(count(of_first()).await, 3);
    assert_eq!(count(in_window(before, after)).await, 5);
    let later = in_window(after, after + chrono::Duration::hours(1));
    assert_eq!(count(later).await, 0);
    // a deleted subscription's dead letters have nowhere to go
    assert!(db::delete_subscription(db, second).await.unwrap());
    assert_eq!(count(everything()).await, 3);

    // batches of two until one comes back short, as the API loops
    assert_eq!(replay(of_first()).await, 2);
    assert_eq!(count(of_first()).await, 1);
    assert_eq!(replay(of_first()).await, 1);
    assert_eq!(replay(everything()).await, 0);
    let queued = DeliveryFilter {
        status: Some(DeliveryStatus::Pending),
        subscription_id: Some(first),
        ..DeliveryFilter::default()
    };
    let pending = db::list_deliveries(db, &queued, page(10)).await.unwrap();
    assert_eq!(
        pending.len(),
        3,
        "one new delivery per replayed dead letter"
    );
    assert!(pending.iter().all(|d| d.attempts == 0));
}

async fn the_console_numbers_and_the_queue_sample_count_due_work(test: TestDb) {
    let db = &test.pool;
    subscribe(db, &["*"]).await;
    let empty = db::console_stats(db, 300.0).await.unwrap();
    assert_eq!(
        (empty.due, empty.delivered, empty.failed, empty.dead_letters),
        (0, 0, 0, 0)
    );
    assert_eq!(empty.oldest_due_age_seconds, None);
    let sample = db::sample_queue(db).await.unwrap();
    assert!(sample.leader);
    assert_eq!(sample.depth, Some(0));

    publish(
        db,
        &[
            event("ok", None, "1"),
            event("dead", None, "2"),
            event("retry", None, "3"),
        ],
    )
    .await;
    let sample = db::sample_queue(db).await.unwrap();
    assert_eq!(sample.depth, Some(3));
    assert!(sample.oldest_due_age_seconds.unwrap() >= 0.0);
    lease_and_complete(db, |event_type| match event_type {
        "ok" => NextState::Delivered,
        "dead" => dead("http_500"),
        _ => NextState::Retry(Duration::ZERO),
    })
    .await;
    publish(db, &[event("later", None, "4")]).await;
    // the worker's counts of those outcomes, as it writes them every few seconds; a minute
    // before the window does not count
    let minute = store::charts::minute_of(Utc::now());
    let mut counted = store::charts::MinuteTally::new(minute);
    (counted.delivered, counted.retried, counted.dead) = (1, 1, 1);
    let mut earlier = store::charts::MinuteTally::new(minute - chrono::TimeDelta::minutes(10));
    earlier.delivered = 50;
    store::charts::record_minutes(db, "w1", &[earlier, counted])
        .await
        .unwrap();
    let stats = db::console_stats(db, 300.0).await.unwrap();
    assert_eq!(stats.due, 2, "the retry due now and the new event");
    assert_eq!(
        (stats.delivered, stats.failed, stats.dead_letters),
        (1, 2, 1)
    );
    assert!(stats.oldest_due_age_seconds.unwrap() >= 0.0);
    assert_eq!(db::sample_queue(db).await.unwrap().depth, Some(2));

    // dead letters are counted up to 10,000, so the count never grows with the history
    let more_dead_letters = match test.backend() {
        Backend::Postgres => {
            "insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason)
             select gen_random_uuid(), gen_random_uuid(), event_id, subscription_id, target, reason
             from dead_letters, generate_series(1, 10005)"
        }
        Backend::Sqlite => {
            "insert into dead_letters (id, delivery_id, event_id, subscription_id, target, reason,
                                       created_at)
             with recursive n(i) as (select 1 union all select i + 1 from n where i < 10005)
             select randomblob(16), randomblob(16), event_id, subscription_id, target, reason,
                    created_at
             from dead_letters, n"
        }
    };
    test.execute_script(more_dead_letters.to_owned()).await;
    let capped = db::console_stats(db, 300.0).await.unwrap();
    assert_eq!(capped.dead_letters, 10_000);
}

async fn the_handle_pings_wakes_and_closes(test: TestDb) {
    let db = &test.pool;
    db::ping(db).await.unwrap();
    let listen_url = shared::config::DatabaseUrl::new(test.url.clone());
    let mut wakeups = db::wake::Wakeups::start(db, listen_url);
    // the first wake-up is the catch-up after (re)connecting
    tokio::time::timeout(Duration::from_secs(10), wakeups.next())
        .await
        .expect("catch-up wake-up");
    // on Postgres the LISTEN may still be starting: notify until one arrives
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut woken = false;
    while !woken && tokio::time::Instant::now() < deadline {
        db::notify_workers(db).await.unwrap();
        woken = tokio::time::timeout(Duration::from_millis(200), wakeups.next())
            .await
            .is_ok();
    }
    assert!(woken, "a notification wakes the listener");
    if test.backend() == Backend::Sqlite {
        db::wake::wake_local(db);
        tokio::time::timeout(Duration::from_secs(1), wakeups.next())
            .await
            .expect("a local wake-up");
    }
    wakeups.stop().await;

    let (open, idle) = db.pool_usage();
    assert!(open >= 1 && idle <= open as usize);
    db.close().await;
    assert!(db::ping(db).await.unwrap_err().is_unavailable());
}

/// The webhook subscriptions an event's deliveries went to, sorted.
async fn fanned_out_to(db: &Db, event_id: Uuid) -> Vec<Uuid> {
    let (_, deliveries) = db::get_event(db, event_id).await.unwrap().unwrap();
    let mut subscriptions: Vec<Uuid> = deliveries
        .iter()
        .filter_map(|delivery| delivery.subscription_id)
        .collect();
    subscriptions.sort();
    subscriptions
}

/// Publishes one event of each type and returns, per type, the subscriptions it reached; the
/// count answered at publish must be the rows inserted.
async fn reached(db: &Db, event_types: &[&str]) -> Vec<Vec<Uuid>> {
    let events: Vec<NewEvent> = event_types
        .iter()
        .map(|event_type| event(event_type, None, event_type))
        .collect();
    let mut reached = Vec::new();
    for stored in publish(db, &events).await {
        let subscriptions = fanned_out_to(db, stored.id).await;
        assert_eq!(
            usize::try_from(stored.deliveries_created).unwrap(),
            subscriptions.len()
        );
        reached.push(subscriptions);
    }
    reached
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

async fn publish_reaches_the_subscriptions_routed_to_its_event_type(test: TestDb) {
    let db = &test.pool;
    let only_a = subscribe(db, &["a"]).await;
    let all = subscribe(db, &["*"]).await;
    let a_and_all = subscribe(db, &["a", "*", "a"]).await;
    let only_b = subscribe(db, &["b"]).await;
    // subscriptions to other types reach nothing here
    for n in 0..50 {
        subscribe(db, &[&format!("other.{n}")]).await;
    }
    assert_eq!(
        reached(db, &["a", "b", "c"]).await,
        [
            sorted(vec![only_a, all, a_and_all]),
            sorted(vec![all, a_and_all, only_b]),
            sorted(vec![all, a_and_all]),
        ],
        "a subscription naming the type and `*` gets one delivery"
    );

    // the routes follow changes of event types, disabling and deletion
    let to_a = SubscriptionPatch {
        event_types: Some(vec!["a".to_owned()]),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(db, only_b, &to_a).await.unwrap();
    let off = SubscriptionPatch {
        enabled: Some(false),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(db, all, &off).await.unwrap();
    assert!(db::delete_subscription(db, only_a).await.unwrap());
    assert_eq!(
        reached(db, &["a", "b"]).await,
        [sorted(vec![a_and_all, only_b]), vec![a_and_all]]
    );
    let on = SubscriptionPatch {
        enabled: Some(true),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(db, all, &on).await.unwrap();
    assert_eq!(reached(db, &["b"]).await, [sorted(vec![all, a_and_all])]);
}

async fn the_migration_routes_the_subscriptions_there_are(test: TestDb) {
    let db = &test.pool;
    let kept = subscribe(db, &["a", "b"]).await;
    let wildcard = subscribe(db, &["*"]).await;
    let deleted = subscribe(db, &["a"]).await;
    assert!(db::delete_subscription(db, deleted).await.unwrap());
    let disabled = subscribe(db, &["a"]).await;
    let off = SubscriptionPatch {
        enabled: Some(false),
        ..SubscriptionPatch::default()
    };
    db::update_subscription(db, disabled, &off).await.unwrap();
    // back to the schema before routes, then forward again: the routes are made from the
    // subscriptions as they are
    roll_back_to(&test, "m20261129_000002_subscription_routes").await;
    migration::run(&test.url, migration::Command::Down)
        .await
        .unwrap();
    migration::run(&test.url, migration::Command::Up)
        .await
        .unwrap();
    assert_eq!(
        reached(db, &["a", "b", "c"]).await,
        [
            sorted(vec![kept, wildcard]),
            sorted(vec![kept, wildcard]),
            vec![wildcard],
        ]
    );
}

/// On a database with many subscriptions to other types, the fan-out never reads the
/// subscriptions table and reads the routes of the event's type by key, with or without
/// statistics, custom plan or generic. A thousand routes is where a generic plan of `= any`
/// over the routes chose to read them all, analyzed or not.
#[tokio::test]
async fn the_fan_out_reads_only_the_routes_of_the_event_type() {
    let test = TestDb::on(Backend::Postgres).await;
    let db = &test.pool;
    subscribe(db, &["a"]).await;
    let seed = "insert into subscriptions (id, url, secret, event_types)
         select ih_uuid_v7(), 'http://127.0.0.1:9/hook', 'whsec_x', jsonb_build_array('other.' || n)
         from generate_series(1, 1000) n;
         insert into subscription_routes (event_type, subscription_id)
         select event_types ->> 0, id from subscriptions where event_types ->> 0 like 'other.%'";
    sqlx::raw_sql(seed).execute(test.pg()).await.unwrap();
    let statement = include_str!("../../store/src/sql/publish_events.sql");
    let prepare = format!(
        "prepare publish (uuid[], text[], text[], text[], text[], text, text[], boolean, text[])
         as {statement}"
    );
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql("analyze subscriptions; analyze subscription_routes")
                .execute(test.pg())
                .await
                .unwrap();
        }
        for mode in ["force_custom_plan", "force_generic_plan"] {
            let mut connection = test.pg().acquire().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "set plan_cache_mode = {mode}; {prepare}"
            )))
            .execute(&mut *connection)
            .await
            .unwrap();
            let plan: Vec<String> = sqlx::query_scalar(
                "explain execute publish (array[ih_uuid_v7()], array['a'], array['{}'],
                                          array[null::text], array['h'], 'p',
                                          array[null::text], false, array[]::text[])",
            )
            .fetch_all(&mut *connection)
            .await
            .unwrap();
            sqlx::raw_sql("deallocate publish; reset plan_cache_mode")
                .execute(&mut *connection)
                .await
                .unwrap();
            let plan = plan.join("\n");
            let context = format!("analyzed: {analyzed}, {mode}\n{plan}");
            assert!(!plan.contains(" on subscriptions "), "{context}");
            assert!(
                !plan.contains("Seq Scan on subscription_routes"),
                "{context}"
            );
            assert!(plan.contains("subscription_routes_pkey"), "{context}");
        }
    }
    assert_eq!(reached(db, &["a"]).await[0].len(), 1);
}

/// Every `.sql` file of the store is included by a function this suite calls by name.
#[test]
fn every_sql_file_is_executed_by_this_suite() {
    let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("../store/src");
    let suite = include_str!("store.rs");
    let mut sources = String::new();
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(store.join("sql")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let include = format!("include_str!(\"sql/{name}\")");
        // the public functions around the includes (a plan's `explain` includes some too)
        let functions: Vec<&str> = sources
            .match_indices(&include)
            .map(|(at, _)| {
                sources[..at]
                    .rsplit("pub async fn ")
                    .next()
                    .and_then(|rest| rest.split('(').next())
                    .unwrap()
            })
            .collect();
        assert!(
            !functions.is_empty(),
            "{name} is included by no store function"
        );
        assert!(
            functions
                .iter()
                .any(|function| suite.contains(&format!("db::{function}("))),
            "{name} runs in {functions:?}, which this suite never calls"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} files found");
}

/// Rolls migrations back until `name` is the newest applied one.
async fn roll_back_to(test: &TestDb, name: &str) {
    loop {
        let states = migration::run(&test.url, migration::Command::Status)
            .await
            .unwrap();
        let newest = states.iter().rev().find(|m| m.applied).unwrap();
        if newest.name == name {
            return;
        }
        migration::run(&test.url, migration::Command::Down)
            .await
            .unwrap();
    }
}

async fn a_finished_delivery_leaves_the_live_table_for_the_history(test: TestDb) {
    let db = &test.pool;
    subscribe(db, &["*"]).await;
    let stored = publish(
        db,
        &[
            event("ok", None, "1"),
            event("retry", None, "2"),
            event("dead", None, "3"),
        ],
    )
    .await;
    assert_eq!(test.fetch_i64("select count(*) from deliveries").await, 3);
    let written = lease_and_complete(db, |event_type| match event_type {
        "ok" => NextState::Delivered,
        "retry" => NextState::Retry(Duration::from_secs(600)),
        _ => dead("http_500"),
    })
    .await;
    assert_eq!(written, 3);
    // the live table holds the retry alone; the other two are history
    assert_eq!(
        test.fetch_strings("select status from deliveries").await,
        ["pending"]
    );
    let mut finished = test
        .fetch_strings("select status from delivery_history")
        .await;
    finished.sort();
    assert_eq!(finished, ["dead", "delivered"]);
    // and every listing still shows all three
    let all = db::list_deliveries(db, &DeliveryFilter::default(), page(10))
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let delivered = db::list_deliveries(
        db,
        &DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            ..DeliveryFilter::default()
        },
        page(10),
    )
    .await
    .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].event_id, stored[0].id);
    assert_eq!(delivered[0].attempts, 1);
    let (_, of_dead) = db::get_event(db, stored[2].id).await.unwrap().unwrap();
    assert_eq!(of_dead[0].status, DeliveryStatus::Dead);
    assert_eq!(of_dead[0].last_error.as_deref(), Some("HTTP 500\u{fffd}!"));
}

/// A UUID v7 of `day` at `h:m:s.ms` UTC.
fn id_at(day: chrono::NaiveDate, h: u32, m: u32, s: u32, ms: u32) -> Uuid {
    let at = day.and_hms_milli_opt(h, m, s, ms).unwrap().and_utc();
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap(),
        at.timestamp_subsec_nanos(),
    ))
}

async fn publish_at(db: &Db, id: Uuid, event_type: &str, key: Option<&str>) -> Uuid {
    let stored = publish(
        db,
        &[NewEvent {
            id,
            ..event(event_type, key, event_type)
        }],
    )
    .await;
    assert_eq!(stored[0].id, id);
    id
}

const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86_400);
const NINETY_DAYS: Duration = Duration::from_secs(90 * 86_400);

async fn retention_removes_the_days_past_it_and_keeps_live_work_and_dead_letters(test: TestDb) {
    use chrono::Days;
    use db::retention::{self, KeptBecause};
    use shared::config::Retention;

    let db = &test.pool;
    let today = Utc::now().date_naive();
    let ago = |days: u64| today - Days::new(days);
    retention::create_partitions(db, ago(45), today)
        .await
        .unwrap();
    subscribe(db, &["*"]).await;
    let finished = publish_at(db, id_at(ago(40), 12, 0, 0, 0), "finished", Some("k-old")).await;
    let live = publish_at(db, id_at(ago(39), 12, 0, 0, 0), "live", None).await;
    let dead_letter = publish_at(db, id_at(ago(38), 12, 0, 0, 0), "dead", None).await;
    let replayed = publish_at(db, id_at(ago(37), 12, 0, 0, 0), "replayed", None).await;
    // the two sides of the boundary: the last millisecond of the newest day past 30 days, the
    // first of the day after it
    let last_out = publish_at(db, id_at(ago(31), 23, 59, 59, 999), "edge", None).await;
    let first_in = publish_at(db, id_at(ago(30), 0, 0, 0, 0), "edge", None).await;
    let recent = publish_at(db, id_at(ago(2), 12, 0, 0, 0), "finished", None).await;

    lease_and_complete(db, |event_type| match event_type {
        "live" => NextState::Retry(Duration::from_secs(600)),
        "dead" | "replayed" => dead("http_500"),
        _ => NextState::Delivered,
    })
    .await;
    let letters = db::list_dead_letters(db, &DeadLetterFilter::default(), page(10))
        .await
        .unwrap();
    let to_replay = letters.iter().find(|l| l.event_id == replayed).unwrap();
    assert!(matches!(
        db::replay_dead_letter(db, to_replay.id, Uuid::now_v7())
            .await
            .unwrap(),
        ReplayOutcome::Replayed { .. }
    ));
    assert_eq!(lease_and_complete(db, |_| NextState::Delivered).await, 1);

    let policy = Retention {
        finished: THIRTY_DAYS,
        dead_letters: NINETY_DAYS,
    };
    let expected = vec![
        (ago(40), None),
        (ago(39), Some(KeptBecause::LiveDelivery)),
        (ago(38), Some(KeptBecause::UnreplayedDeadLetter)),
        (ago(37), None),
        (ago(31), None),
    ];
    let outcome = |report: &retention::PruneReport| {
        report
            .spans
            .iter()
            .map(|span| (span.start.date_naive(), span.kept))
            .collect::<Vec<_>>()
    };
    let exists = |id: Uuid| async move { db::get_event(db, id).await.unwrap().is_some() };

    // a dry run reports and removes nothing
    let dry = retention::prune(db, policy, true).await.unwrap();
    assert!(dry.ran);
    assert_eq!(outcome(&dry), expected);
    assert!(exists(finished).await && exists(last_out).await);

    let report = retention::prune(db, policy, false).await.unwrap();
    assert_eq!(outcome(&report), expected);
    assert_eq!(
        report.spans, dry.spans,
        "the dry run counted what was removed"
    );
    let day = |date| {
        report
            .spans
            .iter()
            .find(|span| span.start.date_naive() == date)
            .unwrap()
            .rows
    };
    assert_eq!(
        day(ago(40)),
        retention::DayRows {
            events: 1,
            deliveries: 1,
            attempts: 1,
            dead_letters: 0
        }
    );
    assert_eq!(
        day(ago(37)),
        retention::DayRows {
            events: 1,
            deliveries: 2,
            attempts: 2,
            dead_letters: 1
        }
    );
    assert_eq!(report.removed().events, 3);
    for (id, kept) in [
        (finished, false),
        (live, true),
        (dead_letter, true),
        (replayed, false),
        (last_out, false),
        (first_in, true),
        (recent, true),
    ] {
        assert_eq!(exists(id).await, kept, "event {id}");
    }
    assert!(
        db::list_event_attempts(db, finished)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        db::list_dead_letters(db, &DeadLetterFilter::default(), page(10))
            .await
            .unwrap()
            .len(),
        1,
        "the replayed dead letter went with its day"
    );
    // the live work of a kept day is still leased and sent
    let (_, of_live) = db::get_event(db, live).await.unwrap().unwrap();
    assert_eq!(of_live[0].status, DeliveryStatus::Pending);

    // a removed day's idempotency key is free again
    let again = publish(db, &[event("finished", Some("k-old"), "other request")]).await;
    assert_ne!(again[0].id, finished);

    // past the dead-letter retention, the unreplayed dead letter no longer keeps its day
    let short = Retention {
        finished: THIRTY_DAYS,
        dead_letters: Duration::from_nanos(1),
    };
    let report = retention::prune(db, short, false).await.unwrap();
    assert_eq!(
        outcome(&report),
        [(ago(39), Some(KeptBecause::LiveDelivery)), (ago(38), None)]
    );
    assert!(!exists(dead_letter).await);
    assert!(exists(live).await);
}

/// `(start, end)` of every partition (Postgres), oldest first.
async fn partitions(test: &TestDb) -> Vec<(chrono::DateTime<Utc>, chrono::DateTime<Utc>)> {
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as("select low, high from ih_partitions()")
        .fetch_all(test.pg())
        .await
        .unwrap();
    rows.into_iter()
        .map(|(low, high)| {
            (
                db::retention::uuid_time(low),
                db::retention::uuid_time(high),
            )
        })
        .collect()
}

async fn a_short_retention_removes_short_spans(test: TestDb) {
    use db::retention;
    use shared::config::Retention;

    let db = &test.pool;
    let policy = Retention {
        finished: Duration::from_secs(60),
        dead_letters: NINETY_DAYS,
    };
    let width = policy.partition_width();
    assert_eq!(width, Duration::from_secs(10));
    let step = chrono::TimeDelta::from_std(width).unwrap();
    let started = Utc::now();
    let minute = chrono::TimeDelta::minutes(1);
    // beyond every horizon the partitions are made for
    let later_noon = (started.date_naive() + chrono::Days::new(3))
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let id_of = |at: chrono::DateTime<Utc>| {
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.timestamp()).unwrap(),
            at.timestamp_subsec_nanos(),
        ))
    };
    if test.backend() == Backend::Postgres {
        // five minutes ago, today's day partition, made ahead and still empty, gave way to
        // spans of 10 s for the 10 minutes ahead; they are extended now
        assert!(
            retention::create_partitions_at(db, Some(width), started - minute * 5)
                .await
                .unwrap()
                > 0
        );
        retention::create_partitions_at(db, Some(width), started)
            .await
            .unwrap();
        let spans = partitions(&test).await;
        let holding = |at| {
            spans
                .iter()
                .find(|(start, end)| *start <= at && at < *end)
                .copied()
        };
        for at in [started - minute * 5, started, started + minute * 9] {
            let (start, end) = holding(at).unwrap();
            assert_eq!(end - start, step, "{at}: {spans:?}");
        }
        assert!(holding(started - minute * 10).is_some(), "{spans:?}");
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
        }
        let covered = spans
            .windows(2)
            .take_while(|pair| pair[0].1 == pair[1].0)
            .count();
        assert!(
            spans[covered].1 >= started + minute * 10,
            "a gap before the 10 minutes ahead: {spans:?}"
        );
        // a process that does not choose keeps the width it finds
        retention::create_partitions_at(db, None, started + minute * 5)
            .await
            .unwrap();
        let spans = partitions(&test).await;
        let newest = spans
            .iter()
            .find(|(start, end)| *start <= started + minute * 14 && started + minute * 14 < *end)
            .unwrap();
        assert_eq!(newest.1 - newest.0, step);
    }
    subscribe(db, &["*"]).await;
    let old = publish_at(db, id_of(started - minute * 5), "old", None).await;
    let new = publish_at(db, Uuid::now_v7(), "new", None).await;
    // a partition that holds rows is never dropped to change its width
    let ahead = publish_at(db, id_of(later_noon), "ahead", None).await;
    if test.backend() == Backend::Postgres {
        retention::create_partitions_at(db, Some(width), later_noon - minute * 5)
            .await
            .unwrap();
        let spans = partitions(&test).await;
        let (start, end) = spans
            .iter()
            .find(|(start, end)| *start <= later_noon && later_noon < *end)
            .copied()
            .unwrap();
        assert_eq!(end - start, chrono::TimeDelta::days(1));
    }
    assert_eq!(lease_and_complete(db, |_| NextState::Delivered).await, 3);

    // the old event's span ended more than a minute ago: it goes; the others stay
    let report = retention::prune(db, policy, false).await.unwrap();
    assert_eq!(report.removed().events, 1, "{report:?}");
    let span = report
        .spans
        .iter()
        .find(|span| span.kept.is_none())
        .unwrap();
    assert!(span.start <= retention::uuid_time(old) && retention::uuid_time(old) < span.end);
    assert!(span.end <= Utc::now() - minute, "{span:?}");
    assert!(db::get_event(db, old).await.unwrap().is_none());
    assert!(db::get_event(db, new).await.unwrap().is_some());
    assert!(db::get_event(db, ahead).await.unwrap().is_some());
}

async fn a_key_whose_event_is_gone_is_free_again(test: TestDb) {
    let db = &test.pool;
    subscribe(db, &["a"]).await;
    let first = publish(db, &[event("a", Some("k"), "1")]).await;
    // the key outlives its event, as for a moment after retention drops a day
    let deleted = test
        .execute_bound("delete from outbox_events where id = $1", first[0].id)
        .await;
    assert_eq!(deleted, 1);
    let second = publish(db, &[event("a", Some("k"), "2")]).await;
    assert_ne!(second[0].id, first[0].id);
    assert_eq!(second[0].deliveries_created, 1);
    // and the key is held again
    let third = publish(db, &[event("a", Some("k"), "2")]).await;
    assert_eq!(third[0].id, second[0].id);
}

async fn the_history_migration_keeps_every_row_and_resends_nothing(test: TestDb) {
    let db = &test.pool;
    let subscription = subscribe(db, &["*"]).await;
    let keyed = publish(db, &[event("delivered", Some("key-1"), "h1")]).await;
    publish(
        db,
        &[event("dead", None, "h2"), event("replayed", None, "h3")],
    )
    .await;
    lease_and_complete(db, |event_type| match event_type {
        "delivered" => NextState::Delivered,
        _ => dead("http_500"),
    })
    .await;
    let letters = db::list_dead_letters(db, &DeadLetterFilter::default(), page(10))
        .await
        .unwrap();
    let replayed_event = letters.iter().map(|l| l.event_id).max().unwrap();
    let letter = letters
        .iter()
        .find(|l| l.event_id == replayed_event)
        .unwrap();
    db::replay_dead_letter(db, letter.id, Uuid::now_v7())
        .await
        .unwrap();
    // a leased row, whose worker is still sending it
    let to_lease = publish(db, &[event("leased", None, "h4")]).await;
    let leased = lease(db, 1, "w1", Duration::from_secs(300)).await.unwrap();
    assert_eq!(leased.len(), 1);
    // and one pending
    let pending = publish(db, &[event("pending", None, "h5")]).await;

    let snapshot = || async {
        let deliveries = db::list_deliveries(db, &DeliveryFilter::default(), page(100))
            .await
            .unwrap();
        let letters = db::list_dead_letters(db, &DeadLetterFilter::default(), page(100))
            .await
            .unwrap();
        let events = db::list_events(db, &EventFilter::default(), page(100))
            .await
            .unwrap();
        let mut attempts = Vec::new();
        for event in &events {
            for attempt in db::list_event_attempts(db, event.id)
                .await
                .unwrap()
                .unwrap()
            {
                attempts.push((attempt.id, attempt.outcome, attempt.delivery_id));
            }
        }
        (
            deliveries
                .iter()
                .map(|d| (d.id, d.event_id, d.status, d.attempts, d.subscription_id))
                .collect::<Vec<_>>(),
            letters
                .iter()
                .map(|l| (l.id, l.replayed_at.is_some(), l.replay_delivery_id))
                .collect::<Vec<_>>(),
            events
                .iter()
                .map(|e| (e.id, e.event_type.clone(), e.deliveries_created))
                .collect::<Vec<_>>(),
            attempts,
        )
    };
    let before = snapshot().await;
    assert_eq!(before.0.len(), 6);

    // back to the schema before the history, then forward: every row is where it was
    roll_back_to(&test, "m20261129_000002_subscription_routes").await;
    assert_eq!(
        test.fetch_i64("select count(*) from deliveries").await,
        6,
        "the old layout holds every delivery in one table"
    );
    migration::run(&test.url, migration::Command::Up)
        .await
        .unwrap();
    assert_eq!(snapshot().await, before);
    assert_eq!(test.fetch_i64("select count(*) from deliveries").await, 3);

    // nothing is sent again: what is due now is the live work except the row still leased
    // (its lease runs), and nothing finished
    let due = lease(db, 100, "w2", Duration::from_secs(30)).await.unwrap();
    let mut due: Vec<Uuid> = due.iter().map(|d| d.event_id).collect();
    due.sort();
    let mut expected: Vec<Uuid> = [pending[0].id, replayed_event, to_lease[0].id]
        .into_iter()
        .filter(|id| *id != leased[0].event_id)
        .collect();
    expected.sort();
    assert_eq!(due, expected);
    // the idempotency key still answers with its event
    let retried = publish(db, &[event("delivered", Some("key-1"), "h1")]).await;
    assert_eq!(retried[0].id, keyed[0].id);
    assert_eq!(
        db::get_subscription(db, subscription)
            .await
            .unwrap()
            .unwrap()
            .id,
        subscription
    );
}

/// Completes `rows` as failed attempts (HTTP 500), under `health`, as the worker does: a
/// probe retries at once, the others after a second.
async fn fail(db: &Db, rows: &[db::LeasedDelivery], health: &db::EndpointHealth) {
    let completions: Vec<Completion> = rows
        .iter()
        .map(|row| Completion {
            delivery_id: row.id,
            lease_token: row.lease_token,
            next: NextState::Retry(if row.probe {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            }),
            last_error: Some("http_500".to_owned()),
            attempt: Some(attempt(row.attempts, Some(500))),
            probe: row.probe,
        })
        .collect();
    let written = db::complete_deliveries(db, "w1", &completions, health)
        .await
        .unwrap();
    assert_eq!(written.len(), rows.len());
}

async fn state_of(db: &Db, id: Uuid) -> db::SubscriptionRow {
    db::get_subscription(db, id).await.unwrap().unwrap()
}

/// Leases until a row comes (or `deadline` passes).
async fn lease_when_allowed(db: &Db, deadline: Duration) -> Vec<db::LeasedDelivery> {
    let start = std::time::Instant::now();
    loop {
        let rows = lease(db, 100, "w1", Duration::from_secs(30)).await.unwrap();
        if !rows.is_empty() || start.elapsed() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_failing_endpoint_opens_its_circuit_probes_and_closes(test: TestDb) {
    use shared::state::EndpointState;
    let db = &test.pool;
    let health = db::EndpointHealth {
        failures: 3,
        window: Duration::from_secs(60),
        first_probe: Duration::from_secs(1),
        disable_after: Duration::from_secs(120 * 3600),
    };
    let id = subscribe(db, &["*"]).await;
    let events: Vec<NewEvent> = (0..10)
        .map(|n| event("orders", None, &n.to_string()))
        .collect();
    publish(db, &events).await;
    assert_eq!(state_of(db, id).await.state(), EndpointState::Healthy);

    let first = lease(db, 2, "w1", Duration::from_secs(30)).await.unwrap();
    fail(db, &first, &health).await;
    let failing = state_of(db, id).await;
    assert_eq!(failing.state(), EndpointState::Failing);
    assert!(failing.failing_since.is_some());
    assert!(failing.circuit_opened_at.is_none(), "two failures of three");

    let third = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    assert!(!third[0].probe, "a closed circuit leases no probes");
    fail(db, &third, &health).await;
    let open = state_of(db, id).await;
    assert_eq!(open.state(), EndpointState::CircuitOpen);
    assert!(open.circuit_opened_at.is_some());
    assert!(
        lease(db, 100, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "an open circuit holds its due rows"
    );
    let counts = db::count_subscriptions_by_state(db).await.unwrap();
    assert_eq!(
        counts,
        [
            (EndpointState::Healthy, 0),
            (EndpointState::Failing, 0),
            (EndpointState::CircuitOpen, 1),
            (EndpointState::Disabled, 0),
        ]
    );

    let probe = lease_when_allowed(db, Duration::from_secs(10)).await;
    assert_eq!(probe.len(), 1, "one probe");
    assert!(probe[0].probe);
    assert!(
        lease(db, 100, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "one probe at a time"
    );
    let attempts_before = probe[0].attempts - 1;
    fail(db, &probe, &health).await;
    let still = state_of(db, id).await;
    assert_eq!(still.state(), EndpointState::CircuitOpen);
    assert_eq!(still.circuit_opened_at, open.circuit_opened_at);
    let probed = db::list_deliveries(
        db,
        &DeliveryFilter {
            status: None,
            subscription_id: Some(id),
            event_id: Some(probe[0].event_id),
        },
        page(10),
    )
    .await
    .unwrap();
    assert_eq!(
        probed[0].attempts, attempts_before,
        "a failed probe gives its attempt back"
    );
    assert_eq!(probed[0].status, DeliveryStatus::Pending);
    assert!(
        lease(db, 100, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "held again after the failed probe"
    );

    // the second probe waits twice as long, and its success closes the circuit
    let probe_started = std::time::Instant::now();
    let second = lease_when_allowed(db, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1);
    assert!(second[0].probe);
    assert!(
        probe_started.elapsed() >= Duration::from_millis(1500),
        "the second probe came {:?} after the first failed",
        probe_started.elapsed()
    );
    let delivered: Vec<Completion> = second
        .iter()
        .map(|row| Completion {
            delivery_id: row.id,
            lease_token: row.lease_token,
            next: NextState::Delivered,
            last_error: None,
            attempt: Some(attempt(row.attempts, Some(200))),
            probe: row.probe,
        })
        .collect();
    db::complete_deliveries(db, "w1", &delivered, &health)
        .await
        .unwrap();
    let closed = state_of(db, id).await;
    assert_eq!(closed.state(), EndpointState::Healthy);
    assert!(closed.failing_since.is_none() && closed.circuit_opened_at.is_none());
    let rest = lease(db, 100, "w1", Duration::from_secs(30)).await.unwrap();
    // the nine not delivered, the failed ones among them due again by now
    assert_eq!(rest.len(), 9, "the backlog flows again, none of it a probe");
    assert!(rest.iter().all(|row| !row.probe));
}

async fn a_subscription_failing_too_long_is_disabled_and_keeps_its_deliveries(test: TestDb) {
    use shared::state::EndpointState;
    let db = &test.pool;
    let health = db::EndpointHealth {
        failures: 1_000,
        window: Duration::from_secs(60),
        first_probe: Duration::from_secs(5),
        disable_after: Duration::from_millis(1),
    };
    let id = subscribe(db, &["*"]).await;
    let events: Vec<NewEvent> = (0..5)
        .map(|n| event("orders", None, &n.to_string()))
        .collect();
    publish(db, &events).await;
    let first = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    fail(db, &first, &health).await;
    assert_eq!(state_of(db, id).await.state(), EndpointState::Failing);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    fail(db, &second, &health).await;
    let disabled = state_of(db, id).await;
    assert_eq!(disabled.state(), EndpointState::Disabled);
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("endpoint_failing")
    );
    let disabled_count = db::count_subscriptions_by_state(db)
        .await
        .unwrap()
        .into_iter()
        .find(|(state, _)| *state == EndpointState::Disabled);
    assert_eq!(disabled_count, Some((EndpointState::Disabled, 1)));

    // its deliveries stay pending, held, also once their retries are due; no new ones come
    publish(db, &[event("orders", None, "late")]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        lease(db, 100, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let pending = DeliveryFilter {
        status: Some(DeliveryStatus::Pending),
        subscription_id: Some(id),
        event_id: None,
    };
    assert_eq!(
        db::list_deliveries(db, &pending, page(100))
            .await
            .unwrap()
            .len(),
        5
    );

    // enabled again, it is healthy and everything it kept flows
    let enabled = db::update_subscription(
        db,
        id,
        &SubscriptionPatch {
            enabled: Some(true),
            ..SubscriptionPatch::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(enabled.state(), EndpointState::Healthy);
    assert!(enabled.failing_since.is_none() && enabled.disabled_reason.is_none());
    let flowing = lease(db, 100, "w1", Duration::from_secs(30)).await.unwrap();
    assert_eq!(flowing.len(), 5);
}

async fn chart_minutes_are_replaced_summed_across_workers_and_pruned(test: TestDb) {
    use store::charts::{self, MinuteTally};
    let db = &test.pool;
    let minute = charts::minute_of(Utc::now());
    let mut first = MinuteTally::new(minute);
    first.delivered = 5;
    first.add_lag(0.003);
    first.due = Some(7);
    charts::record_minutes(db, "w1", &[first.clone()])
        .await
        .unwrap();
    // a worker writes its totals so far: the row is replaced, not added to
    first.delivered = 8;
    first.add_lag(0.2);
    charts::record_minutes(db, "w1", &[first]).await.unwrap();
    let mut second = MinuteTally::new(minute);
    second.delivered = 2;
    second.retried = 3;
    second.dead = 1;
    second.add_lag(0.004);
    charts::record_minutes(db, "w2", &[second]).await.unwrap();
    // a minute past what is kept goes with the next write
    let old = MinuteTally::new(minute - chrono::TimeDelta::hours(26));
    charts::record_minutes(db, "w3", &[old]).await.unwrap();
    assert_eq!(
        test.fetch_i64("select count(*) from delivery_minutes")
            .await,
        2
    );

    let points = charts::chart(db, Duration::from_secs(900), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(points.len(), 15, "every minute of the window");
    assert!(points.windows(2).all(|pair| pair[0].start < pair[1].start));
    let now = points.iter().find(|point| point.start == minute).unwrap();
    assert_eq!((now.delivered, now.retried, now.dead), (10, 3, 1));
    assert_eq!(now.due, Some(7));
    // three lags: 3 ms and 4 ms (under 5), 200 ms (under 250)
    assert_eq!(now.lag_p50_ms, Some(5.0));
    assert_eq!(now.lag_p99_ms, Some(250.0));
    let quiet = points.iter().filter(|point| point.start != minute);
    assert!(
        quiet
            .into_iter()
            .all(|point| point.delivered == 0 && point.lag_p50_ms.is_none())
    );
}

async fn the_health_view_ranks_subscriptions_by_trouble(test: TestDb) {
    use shared::state::EndpointState;
    use store::health::{self, SubscriptionTally};
    let db = &test.pool;
    let fine = subscribe(db, &["fine"]).await;
    let flaky = subscribe(db, &["flaky"]).await;
    let quiet = subscribe(db, &["quiet"]).await;
    publish(
        db,
        &[
            event("flaky", None, "1"),
            event("flaky", None, "2"),
            event("flaky", None, "3"),
        ],
    )
    .await;
    // one attempt fails (the subscription is failing, the row due again in a second), and
    // another row goes out: one in flight, one due
    let first = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    fail(db, &first, &HEALTH).await;
    let second = lease(db, 1, "w1", Duration::from_secs(30)).await.unwrap();
    assert_eq!(second.len(), 1);
    // what the workers counted: two workers, two buckets
    let bucket = health::bucket_of(Utc::now());
    let tally = |bucket, subscription_id, delivered, failed| SubscriptionTally {
        bucket,
        subscription_id,
        delivered,
        failed,
    };
    health::record_subscription_minutes(
        db,
        "w1",
        &[tally(bucket, fine, 10, 0), tally(bucket, flaky, 1, 3)],
    )
    .await
    .unwrap();
    health::record_subscription_minutes(
        db,
        "w2",
        &[tally(bucket - chrono::TimeDelta::minutes(5), flaky, 0, 2)],
    )
    .await
    .unwrap();

    let view = health::subscription_health(db).await.unwrap();
    let order: Vec<Uuid> = view.iter().map(|entry| entry.subscription.id).collect();
    assert_eq!(order, [flaky, fine, quiet], "the failing one first");
    let troubled = &view[0];
    assert_eq!(troubled.state, EndpointState::Failing);
    assert_eq!((troubled.in_flight, troubled.due), (1, 1));
    assert_eq!(troubled.sparkline.len(), 12, "an hour of 5-minute buckets");
    assert_eq!(troubled.totals(), (1, 5));
    assert_eq!(troubled.success_rate(), Some(1.0 / 6.0));
    let last = troubled.sparkline[11];
    let before = troubled.sparkline[10];
    assert_eq!((last.delivered, last.failed), (1, 3));
    assert_eq!((before.delivered, before.failed), (0, 2));
    assert_eq!(view[1].success_rate(), Some(1.0));
    assert_eq!(view[2].success_rate(), None, "no attempts in the hour");
    assert_eq!((view[2].in_flight, view[2].due), (0, 0));
}
