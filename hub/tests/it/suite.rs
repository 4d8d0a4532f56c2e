//! The end-to-end suite, once per backend: publish → signed delivery, retries → dead letter →
//! replay, the Slack connector, idempotency and the admin listings, all through the HTTP API
//! of one `ih` process.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use shared::config::SecretString;
use testkit::{db::Backend, on_both_backends};

use crate::support::{Hub, Receiver, Reply, eventually};

on_both_backends!(
    a_published_event_is_delivered_signed,
    failures_retry_then_dead_letter_and_a_replay_delivers,
    request_submitted_is_posted_to_slack,
    an_idempotency_key_stores_one_event,
    admin_listings_page_and_filter,
    a_subscription_is_changed_rotated_and_deleted,
    the_brief_signature_verifies_with_the_old_secret_through_a_rotation,
    a_receivers_nul_byte_costs_no_other_delivery,
    a_row_the_database_refuses_sinks_no_other_row,
    gone_dead_letters_at_once_and_disables_the_subscription,
    queued_work_of_a_deleted_subscription_is_cancelled,
);

/// The Standard Webhooks rule: base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) among the
/// `v1,` signatures, the key being the base64 after `whsec_`.
fn signed_by(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&[id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat());
    let expected = BASE64.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .any(|signature| signature == expected)
}

async fn a_published_event_is_delivered_signed(backend: Backend) {
    let hub = Hub::start(backend, |settings| {
        let key = BASE64.encode([7_u8; 32]);
        settings.encryption_keys = Some(SecretString::new(format!("k1:{key}")));
    })
    .await;
    let receiver = Receiver::start().await;
    let (subscription_id, secret) = hub
        .subscribe(&receiver.url("/hook"), &["order.created"])
        .await;
    let (stored, _) = hub
        .db
        .stored_secrets(subscription_id.parse().unwrap())
        .await;
    assert!(stored.starts_with("enc.v1.k1."), "sealed at rest: {stored}");
    assert!(!stored.contains(&secret));
    let published = hub
        .publish("order.created", json!({"order": 42, "note": "é"}), None)
        .await;
    assert_eq!(published["deliveries"], 1);
    let event_id = published["id"].as_str().unwrap().to_owned();

    assert!(eventually(Duration::from_secs(20), || async { receiver.count() == 1 }).await);
    let request = receiver.received().pop().unwrap();
    assert_eq!(request.header("webhook-id"), event_id);
    assert!(signed_by(
        &secret,
        &event_id,
        request.header("webhook-timestamp"),
        &request.body,
        request.header("webhook-signature"),
    ));
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["data"], json!({"order": 42, "note": "é"}));

    let path = format!("/admin/events/{event_id}/attempts");
    assert!(hub.wait_for_listing(&path, 1).await);
    let attempts = hub.get(&path).await;
    assert_eq!(attempts["data"][0]["outcome"], "delivered");
    assert_eq!(attempts["data"][0]["response_status"], 200);
    let event = hub.get(&format!("/events/{event_id}")).await;
    assert_eq!(event["deliveries"][0]["status"], "delivered");
    hub.stop().await;
}

async fn failures_retry_then_dead_letter_and_a_replay_delivers(backend: Backend) {
    let hub = Hub::start(backend, |settings| settings.delivery_max_attempts = 3).await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(500));
    let (subscription_id, _) = hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    let event_id = hub.publish("a", json!({}), None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    hub.publish("a", json!({"second": true}), None).await;

    assert!(
        hub.wait_for_listing("/admin/dead-letters?replayed=false", 2)
            .await,
        "both dead-lettered after the last attempt"
    );
    assert_eq!(receiver.count(), 6);
    let attempts = hub.get(&format!("/admin/events/{event_id}/attempts")).await;
    let outcomes: Vec<&str> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["retry_scheduled", "retry_scheduled", "dead_lettered"]
    );
    let dead = hub.get("/admin/deliveries?status=dead").await;
    assert_eq!(dead["data"].as_array().unwrap().len(), 2);
    let letters = hub.get("/admin/dead-letters?replayed=false").await;
    let letter = &letters["data"][0];
    assert_eq!(letter["reason"], "max_attempts_exceeded: http_500");
    assert_eq!(letter["subscription_id"], subscription_id.as_str());
    let subscription = hub.get(&format!("/subscriptions/{subscription_id}")).await;
    assert_eq!(subscription["consecutive_failures"], 6);

    receiver.reply_with(|_, _| Reply::status(200));
    let replay = format!(
        "/admin/dead-letters/{}/replay",
        letter["id"].as_str().unwrap()
    );
    let (status, body) = hub.call(Method::POST, &replay, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (again, body) = hub.call(Method::POST, &replay, None).await;
    assert_eq!(again, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "already_replayed");

    // the other one in bulk, counted first
    let bulk = json!({"subscription_id": subscription_id, "dry_run": true});
    let (_, counted) = hub
        .call(Method::POST, "/admin/dead-letters/replay", Some(bulk))
        .await;
    assert_eq!(counted["count"], 1, "{counted}");
    let bulk = json!({"subscription_id": subscription_id});
    let (status, replayed) = hub
        .call(Method::POST, "/admin/dead-letters/replay", Some(bulk))
        .await;
    assert!(status.is_success(), "{replayed}");
    assert_eq!(replayed["count"], 1, "{replayed}");
    assert!(
        hub.wait_for_listing("/admin/dead-letters?replayed=true", 2)
            .await
    );

    assert!(
        hub.wait_for_listing("/admin/deliveries?status=delivered", 2)
            .await,
        "the replayed deliveries arrive"
    );
    assert_eq!(receiver.count(), 8);
    let subscription = hub.get(&format!("/subscriptions/{subscription_id}")).await;
    assert_eq!(subscription["consecutive_failures"], 0);
    hub.stop().await;
}

async fn request_submitted_is_posted_to_slack(backend: Backend) {
    let slack = Receiver::start().await;
    slack.reply_with(|_, _| {
        Reply::json(
            200,
            r#"{"ok":true,"channel":"C-team","ts":"1700000000.000200"}"#,
        )
    });
    let hub = Hub::start(backend, |settings| {
        settings.slack_bot_token = Some(SecretString::new("xoxb-test-token"));
        settings.slack_api_base_url = slack.url("/api");
        settings.slack_default_channel = Some("C-team".to_owned());
    })
    .await;
    let published = hub
        .publish(
            "request_submitted",
            json!({"title": "New laptop", "requester": "ana"}),
            None,
        )
        .await;
    assert_eq!(published["deliveries"], 1, "the Slack delivery, no webhook");
    let event_id = published["id"].as_str().unwrap().to_owned();

    let path = format!("/admin/events/{event_id}/attempts");
    assert!(hub.wait_for_listing(&path, 1).await);
    let attempt = &hub.get(&path).await["data"][0];
    assert_eq!(attempt["target"], "slack");
    assert_eq!(attempt["outcome"], "delivered");
    assert_eq!(attempt["external_id"], "1700000000.000200");
    let request = slack.received().pop().unwrap();
    assert_eq!(request.path, "/api/chat.postMessage");
    assert_eq!(request.header("authorization"), "Bearer xoxb-test-token");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["channel"], "C-team");
    assert_eq!(body["blocks"][0]["text"]["text"], "New laptop");
    hub.stop().await;
}

async fn an_idempotency_key_stores_one_event(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    hub.subscribe(&receiver.url("/hook"), &["*"]).await;
    let first = hub.publish("a", json!({"n": 1}), Some("key-1")).await;
    let retry = hub.publish("a", json!({"n": 1}), Some("key-1")).await;
    assert_eq!(first, retry, "a retry gets the first answer");
    let (status, body) = hub.publish_raw("a", json!({"n": 2}), Some("key-1")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "idempotency_key_reused");

    // a batch: the keyed retry inside it answers the stored event, the new one is stored
    let (status, batch) = hub
        .publisher_post(
            "/events/batch",
            json!({"events": [
                {"event_type": "a", "payload": {"n": 1}, "idempotency_key": "key-1"},
                {"event_type": "a", "payload": {"n": 3}, "idempotency_key": "key-3"},
            ]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    assert_eq!(batch["events"][0]["id"], first["id"]);
    // a batch reusing a key with another request writes nothing
    let (status, _) = hub
        .publisher_post(
            "/events/batch",
            json!({"events": [
                {"event_type": "a", "payload": {"n": 4}, "idempotency_key": "key-4"},
                {"event_type": "a", "payload": {"n": 9}, "idempotency_key": "key-3"},
            ]}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    assert!(
        hub.wait_for_listing("/admin/deliveries?status=delivered", 2)
            .await
    );
    assert_eq!(
        hub.get("/events").await["data"].as_array().unwrap().len(),
        2
    );
    assert!(
        eventually(Duration::from_secs(5), || async { receiver.count() == 2 }).await,
        "one delivery per stored event"
    );
    hub.stop().await;
}

async fn admin_listings_page_and_filter(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let (first_subscription, _) = hub.subscribe(&receiver.url("/one"), &["a"]).await;
    hub.subscribe(&receiver.url("/two"), &["a", "b"]).await;
    let mut published = Vec::new();
    for n in 0..5 {
        let event_type = if n % 2 == 0 { "a" } else { "b" };
        published.push(hub.publish(event_type, json!({"n": n}), None).await);
    }
    let since = published[0]["created_at"].as_str().unwrap().to_owned();

    // newest first, two a page, every event once
    let mut seen = Vec::new();
    let mut path = "/events?limit=2".to_owned();
    loop {
        let page = hub.get(&path).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|event| event["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/events?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<Value> = published.iter().rev().map(|e| e["id"].clone()).collect();
    assert_eq!(seen, expected);

    let only_b = hub.get("/events?event_type=b").await;
    assert_eq!(only_b["data"].as_array().unwrap().len(), 2);
    let since_first = hub
        .get(&format!("/events?since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(since_first["data"].as_array().unwrap().len(), 5);
    let until_first = hub
        .get(&format!("/events?until={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(until_first["data"].as_array().unwrap().len(), 0);

    // 3 "a" events to both subscriptions, 2 "b" events to the second: 8 deliveries
    assert!(
        hub.wait_for_listing("/admin/deliveries?status=delivered&limit=100", 8)
            .await
    );
    let mine = hub
        .get(&format!(
            "/admin/deliveries?subscription_id={first_subscription}"
        ))
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 3);
    let of_event = hub
        .get(&format!(
            "/admin/deliveries?event_id={}",
            published[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(of_event["data"].as_array().unwrap().len(), 2);
    let subscriptions = hub.get("/subscriptions?limit=1").await;
    assert_eq!(subscriptions["data"][0]["id"], first_subscription.as_str());
    assert!(subscriptions["next_cursor"].is_string());
    // the overview's counts are the worker's, written every ~10 s
    assert!(
        eventually(Duration::from_secs(30), || async {
            hub.get("/admin/stats").await["delivered"] == 8
        })
        .await,
        "{}",
        hub.get("/admin/stats").await
    );
    let stats = hub.get("/admin/stats").await;
    assert_eq!(stats["dead_letters"], 0);
    let chart = hub.get("/admin/charts?window=15m").await;
    let delivered: i64 = chart["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["delivered"].as_i64().unwrap())
        .sum();
    assert_eq!(delivered, 8, "{chart}");
    hub.stop().await;
}

/// Both migrations create the same tables, columns and indexes (types differ by design).
#[tokio::test]
async fn both_backends_get_the_same_schema() {
    let postgres = testkit::db::TestDb::new().await;
    let sqlite = testkit::db::TestDb::sqlite().await;
    let mut postgres_columns = postgres
        .fetch_strings(
            // tables and views (the partitions of a table are the table's)
            "select c.relname || '.' || a.attname
             from pg_class c
             join pg_namespace n on n.oid = c.relnamespace and n.nspname = 'public'
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             where c.relkind in ('r', 'p', 'v') and not c.relispartition
               and c.relname <> 'seaql_migrations'",
        )
        .await;
    let mut sqlite_columns = sqlite
        .fetch_strings(
            "select m.name || '.' || c.name from sqlite_master m, pragma_table_info(m.name) c
             where m.type in ('table', 'view') and m.name <> 'seaql_migrations'",
        )
        .await;
    postgres_columns.sort();
    sqlite_columns.sort();
    assert_eq!(postgres_columns.len(), 111);
    assert_eq!(postgres_columns, sqlite_columns);

    // named indexes; the primary and unique keys are constraints on both
    let mut postgres_indexes = postgres
        .fetch_strings(
            "select i.relname::text
             from pg_index x
             join pg_class i on i.oid = x.indexrelid
             join pg_class t on t.oid = x.indrelid
             join pg_namespace n on n.oid = t.relnamespace and n.nspname = 'public'
             where not x.indisprimary and not t.relispartition
               and i.relname not like 'seaql%'",
        )
        .await;
    let mut sqlite_indexes = sqlite
        .fetch_strings(
            "select name from sqlite_master
             where type = 'index' and name not like 'sqlite_autoindex%'",
        )
        .await;
    postgres_indexes.sort();
    sqlite_indexes.sort();
    assert_eq!(postgres_indexes.len(), 15);
    assert_eq!(postgres_indexes, sqlite_indexes);
}

async fn a_subscription_is_changed_rotated_and_deleted(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let (id, old_secret) = hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    let path = format!("/subscriptions/{id}");

    let (status, body) = hub
        .call(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled_reason"], "disabled_by_operator");
    assert_eq!(hub.publish("a", json!({}), None).await["deliveries"], 0);
    let (_, body) = hub
        .call(
            Method::PATCH,
            &path,
            Some(json!({"enabled": true, "events": ["a", "b"], "description": "ops"})),
        )
        .await;
    assert_eq!(body["enabled"], true);
    assert_eq!(body["disabled_reason"], Value::Null);
    assert_eq!(body["events"], json!(["a", "b"]));
    assert_eq!(body["description"], "ops");

    // after a rotation both secrets sign, for the grace period
    let (status, rotated) = hub
        .call(Method::POST, &format!("{path}/rotate-secret"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_secret_expires_at"].is_string());
    let event_id = hub.publish("b", json!({}), None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(eventually(Duration::from_secs(20), || async { receiver.count() == 1 }).await);
    let request = receiver.received().pop().unwrap();
    for secret in [&old_secret, &new_secret] {
        assert!(signed_by(
            secret,
            &event_id,
            request.header("webhook-timestamp"),
            &request.body,
            request.header("webhook-signature"),
        ));
    }

    let (status, _) = hub.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = hub.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = hub.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(hub.publish("b", json!({}), None).await["deliveries"], 0);
    hub.stop().await;
}

/// The README's recipe for `X-Webhook-Signature` (and `-Next`): lowercase hex of
/// HMAC-SHA256 over `{timestamp}.{body}`, keyed with the secret's UTF-8 bytes.
fn brief_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&[timestamp.as_bytes(), b".", body].concat());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn the_brief_signature_verifies_with_the_old_secret_through_a_rotation(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    let (id, old_secret) = hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    let (status, rotated) = hub
        .call(
            Method::POST,
            &format!("/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();

    // through the grace period: receivers still holding the old secret verify the brief's
    // header as before; those already switched verify the -Next header
    hub.publish("a", json!({"n": 1}), None).await;
    assert!(eventually(Duration::from_secs(20), || async { receiver.count() == 1 }).await);
    let during = receiver.received().pop().unwrap();
    let timestamp = during.header("x-webhook-timestamp");
    assert_eq!(
        during.header("x-webhook-signature"),
        brief_signature(&old_secret, timestamp, &during.body)
    );
    assert_eq!(
        during.header("x-webhook-signature-next"),
        brief_signature(&new_secret, timestamp, &during.body)
    );
    for secret in [&old_secret, &new_secret] {
        assert!(signed_by(
            secret,
            during.header("webhook-id"),
            during.header("webhook-timestamp"),
            &during.body,
            during.header("webhook-signature"),
        ));
    }

    // after it: the new secret alone, in the brief's header
    hub.db.end_secret_grace(id.parse().unwrap()).await;
    hub.publish("a", json!({"n": 2}), None).await;
    assert!(eventually(Duration::from_secs(20), || async { receiver.count() == 2 }).await);
    let after = receiver.received().pop().unwrap();
    let timestamp = after.header("x-webhook-timestamp");
    assert_eq!(
        after.header("x-webhook-signature"),
        brief_signature(&new_secret, timestamp, &after.body)
    );
    assert!(after.headers.get("x-webhook-signature-next").is_none());
    assert!(!signed_by(
        &old_secret,
        after.header("webhook-id"),
        after.header("webhook-timestamp"),
        &after.body,
        after.header("webhook-signature"),
    ));
    hub.stop().await;
}

/// Publishes `count` events of type `a`; returns their ids, sorted.
async fn publish_numbered(hub: &Hub, count: u32) -> Vec<String> {
    let mut published = Vec::new();
    for n in 0..count {
        let answer = hub.publish("a", json!({"n": n}), None).await;
        published.push(answer["id"].as_str().unwrap().to_owned());
    }
    published.sort();
    published
}

/// Waits until `expected` attempts have delivered.
async fn all_delivered(hub: &Hub, expected: i64) -> bool {
    eventually(Duration::from_secs(30), || async {
        hub.get("/admin/stats").await["delivered"].as_i64() == Some(expected)
    })
    .await
}

/// The sorted event ids of the requests `receiver` got.
fn event_ids(receiver: &Receiver) -> Vec<String> {
    let mut ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|request| request.header("webhook-id").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn a_receivers_nul_byte_costs_no_other_delivery(backend: Backend) {
    let hub = Hub::start(backend, |settings| settings.worker_batch_size = 20).await;
    let hostile = Receiver::start().await;
    hostile.reply_with(|_, _| Reply {
        body: b"ok\0 and \0 more".to_vec(),
        ..Reply::status(200)
    });
    let healthy = Receiver::start().await;
    let (hostile_id, _) = hub.subscribe(&hostile.url("/nul"), &["a"]).await;
    hub.subscribe(&healthy.url("/fine"), &["a"]).await;
    let published = publish_numbered(&hub, 10).await;
    assert!(
        all_delivered(&hub, 20).await,
        "{}",
        hub.get("/admin/stats").await
    );
    // each event reached each receiver once: no outcome was lost and re-sent
    assert_eq!(event_ids(&healthy), published);
    assert_eq!(event_ids(&hostile), published);
    let letters = hub.get("/admin/dead-letters").await;
    assert_eq!(letters["data"], json!([]));
    // the hostile answer is kept, readable, its NULs replaced
    let attempts = hub
        .get(&format!("/admin/events/{}/attempts", published[0]))
        .await;
    let kept = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attempt| attempt["response_body"] != "")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        kept["response_body"], "ok\u{fffd} and \u{fffd} more",
        "{attempts}"
    );
    let subscription = hub.get(&format!("/subscriptions/{hostile_id}")).await;
    assert_eq!(subscription["consecutive_failures"], 0);
    hub.stop().await;
}

async fn a_row_the_database_refuses_sinks_no_other_row(backend: Backend) {
    let hub = Hub::start(backend, |settings| settings.worker_batch_size = 20).await;
    hub.db.refuse_poisoned_attempts().await;
    let poisoned = Receiver::start().await;
    // the first answer of each event cannot be stored; the retry's can
    poisoned.reply_with(|index, _| Reply {
        body: if index < 5 {
            b"poison".to_vec()
        } else {
            b"fine".to_vec()
        },
        ..Reply::status(200)
    });
    let healthy = Receiver::start().await;
    hub.subscribe(&poisoned.url("/poisoned"), &["a"]).await;
    hub.subscribe(&healthy.url("/healthy"), &["a"]).await;
    let published = publish_numbered(&hub, 5).await;
    assert!(
        all_delivered(&hub, 10).await,
        "{}",
        hub.get("/admin/stats").await
    );
    // the healthy receiver lost nothing to its neighbour's refused rows
    assert_eq!(event_ids(&healthy), published);
    // each refused outcome was recorded as a failed attempt, then retried
    let mut poisoned_ids = event_ids(&poisoned);
    poisoned_ids.dedup();
    assert_eq!(poisoned_ids, published);
    assert_eq!(poisoned.count(), 10);
    let attempts = hub
        .get(&format!("/admin/events/{}/attempts", published[0]))
        .await;
    let errors: Vec<&str> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|attempt| attempt["error"].as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("outcome_unstorable")),
        "{attempts}"
    );
    hub.stop().await;
}

async fn gone_dead_letters_at_once_and_disables_the_subscription(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(410));
    let (id, _) = hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    hub.publish("a", json!({}), None).await;
    assert!(hub.wait_for_listing("/admin/dead-letters", 1).await);
    assert_eq!(receiver.count(), 1, "no retry after 410");
    let letters = hub.get("/admin/dead-letters").await;
    assert_eq!(letters["data"][0]["reason"], "endpoint_gone");
    let subscription = hub.get(&format!("/subscriptions/{id}")).await;
    assert_eq!(subscription["enabled"], false);
    assert_eq!(subscription["disabled_reason"], "endpoint_gone");
    assert_eq!(subscription["consecutive_failures"], 1);
    hub.stop().await;
}

async fn queued_work_of_a_deleted_subscription_is_cancelled(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let receiver = Receiver::start().await;
    // the retry waits 3 s: time to delete the subscription before it is due
    receiver.reply_with(|_, _| Reply::status(503).header("retry-after", "3"));
    let (id, _) = hub.subscribe(&receiver.url("/hook"), &["a"]).await;
    let event_id = hub.publish("a", json!({}), None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        hub.wait_for_listing(&format!("/admin/events/{event_id}/attempts"), 1)
            .await
    );
    let (status, _) = hub
        .call(Method::DELETE, &format!("/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        hub.wait_for_listing("/admin/deliveries?status=cancelled", 1)
            .await
    );
    assert_eq!(receiver.count(), 1, "nothing is sent once it is deleted");
    assert_eq!(
        hub.get("/admin/dead-letters").await["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    hub.stop().await;
}
