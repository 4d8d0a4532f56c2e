use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, PUBLISHER_TOKEN, TestApp, uuid};

#[tokio::test]
async fn publish_stores_the_event_with_one_delivery_per_matching_enabled_subscription() {
    let app = TestApp::spawn().await;
    app.create_subscription("http://127.0.0.1:9/a", &["order.created"])
        .await;
    app.create_subscription("http://127.0.0.1:9/b", &["*"])
        .await;
    app.create_subscription("http://127.0.0.1:9/c", &["other"])
        .await;
    let disabled = app
        .create_subscription("http://127.0.0.1:9/d", &["order.created"])
        .await;
    let (status, _) = app
        .admin(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{}", disabled["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deleted = app
        .create_subscription("http://127.0.0.1:9/e", &["order.created"])
        .await;
    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/api/v1/subscriptions/{}", deleted["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let event = app.publish("order.created", json!({"order": 42})).await;

    assert_eq!(event["deliveries"], 2);
    assert_eq!(event["event_type"], "order.created");
    let event_id = uuid(&event["id"]);
    assert_eq!(event_id.get_version_num(), 7);
    assert_eq!(app.db.count_deliveries(event_id, "pending").await, 2);
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries")
            .await,
        2
    );

    let (status, detail) = app
        .admin(Method::GET, &format!("/api/v1/events/{event_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["payload"], json!({"order": 42}));
    assert_eq!(detail["deliveries"].as_array().unwrap().len(), 2);
    assert!(
        detail["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "pending" && d["attempts"] == 0)
    );
}

#[tokio::test]
async fn an_event_without_subscribers_is_stored_with_zero_deliveries() {
    let app = TestApp::spawn().await;
    let event = app.publish("nobody.listens", json!({})).await;
    assert_eq!(event["deliveries"], 0);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1
    );
}

#[tokio::test]
async fn the_payload_is_stored_byte_for_byte() {
    let app = TestApp::spawn().await;
    let body = r#"{"event_type":"t","payload":{"z": 18446744073709551617, "a":1e400, "s":"\u0000\u00e9", "nested": {"k":[1, 2 ,3]}}}"#;
    let response = app.post_raw("/api/v1/events", body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let stored = app.db.stored_payload(uuid(&answer["id"])).await;
    assert_eq!(
        stored,
        r#"{"z": 18446744073709551617, "a":1e400, "s":"\u0000\u00e9", "nested": {"k":[1, 2 ,3]}}"#
    );
}

async fn publish_with_key(app: &TestApp, key: &str, payload: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(PUBLISHER_TOKEN)
        .header("Idempotency-Key", key)
        .json(&json!({"event_type": "invoice.paid", "payload": payload}))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_retried_publish_with_the_same_idempotency_key_gets_the_first_answer() {
    let app = TestApp::spawn().await;
    app.create_subscription("http://127.0.0.1:9/a", &["invoice.paid"])
        .await;
    let (first_status, first) = publish_with_key(&app, "key-1", json!({"n": 1})).await;
    let (second_status, second) = publish_with_key(&app, "key-1", json!({"n": 1})).await;
    assert_eq!(first_status, StatusCode::ACCEPTED);
    assert_eq!(second_status, StatusCode::ACCEPTED);
    assert_eq!(first, second);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1
    );
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries")
            .await,
        1
    );

    let (status, conflict) = publish_with_key(&app, "key-1", json!({"n": 2})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "idempotency_key_reused");
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1
    );

    // the same key under another token is another key
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", "key-1")
        .json(&json!({"event_type": "invoice.paid", "payload": {"n": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        2
    );
}

#[tokio::test]
async fn identical_publishes_racing_with_one_key_create_one_event_and_get_one_answer() {
    let app = Arc::new(TestApp::spawn().await);
    app.create_subscription("http://127.0.0.1:9/a", &["invoice.paid"])
        .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            publish_with_key(&app, "race", json!({"amount": 100})).await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        answers.push(body);
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1
    );
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries")
            .await,
        1
    );
}

#[tokio::test]
async fn a_batch_is_stored_in_request_order_and_repeated_items_answer_as_before() {
    let app = TestApp::spawn().await;
    app.create_subscription("http://127.0.0.1:9/a", &["a", "b"])
        .await;
    let batch = json!({"events": [
        {"event_type": "a", "payload": {"i": 0}, "idempotency_key": "item-0"},
        {"event_type": "b", "payload": {"i": 1}},
        {"event_type": "c", "payload": {"i": 2}},
        {"event_type": "a", "payload": {"i": 0}, "idempotency_key": "item-0"},
    ]});
    let (status, answer) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(batch.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["a", "b", "c", "a"]);
    let deliveries: Vec<i64> = events
        .iter()
        .map(|e| e["deliveries"].as_i64().unwrap())
        .collect();
    assert_eq!(deliveries, [1, 1, 0, 1]);
    assert_eq!(events[0], events[3]);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        3
    );
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries")
            .await,
        2
    );

    // retrying the whole batch stores the unkeyed items again but not the keyed one
    let (status, again) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(batch),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["events"][0], events[0]);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        5
    );
}

#[tokio::test]
async fn a_batch_with_one_bad_item_stores_nothing_and_names_the_item() {
    let app = TestApp::spawn().await;
    let batch = json!({"events": [
        {"event_type": "a", "payload": {}},
        {"event_type": "a", "payload": "not an object"},
        {"payload": {}},
    ]});
    let (status, problem) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(batch),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: Vec<&str> = problem["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["events[1].payload", "events[2].event_type"]);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        0
    );

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"event_type": "a", "payload": {"i": i}}))
        .collect();
    let (status, problem) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(json!({"events": too_many})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["details"][0]["field"], "events");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(json!({"events": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_batch_reusing_a_key_with_another_body_is_refused_whole() {
    let app = TestApp::spawn().await;
    let (status, _) = publish_with_key(&app, "k", json!({"v": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let batch = json!({"events": [
        {"event_type": "fresh", "payload": {}},
        {"event_type": "invoice.paid", "payload": {"v": 2}, "idempotency_key": "k"},
    ]});
    let (status, problem) = app
        .call(
            Method::POST,
            "/api/v1/events/batch",
            Some(PUBLISHER_TOKEN),
            Some(batch),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["message"].as_str().unwrap().contains("events[1]"));
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1
    );
}

#[tokio::test]
async fn malformed_publishes_get_the_right_status_and_envelope() {
    let app = TestApp::spawn_with(|s| s.max_payload_bytes = 2048).await;
    let send = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/events"))
            .bearer_auth(PUBLISHER_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "application/json",
            b"{\"event_type\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "application/json",
            vec![b'{', 0xff, 0xfe, b'}'],
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "application/json",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "application/json",
            format!(
                r#"{{"event_type":"a","payload":{{"x":"{}"}}}}"#,
                "y".repeat(4000)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "text/plain",
            br#"{"event_type":"a","payload":{}}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "application/json",
            b"[1,2]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "application/json",
            br#"{"event_type":"has space","payload":{}}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "application/json",
            br#"{"event_type":"a","payload":[1]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "application/json",
            br#"{"event_type":7,"payload":{}}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "application/json",
            format!(
                r#"{{"event_type":"a","payload":{}}}"#,
                "[".repeat(1100) + &"]".repeat(1100)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "application/json",
            format!(
                r#"{{"event_type":"a","payload":{{"d":{}}}}}"#,
                "[".repeat(65) + &"]".repeat(65)
            )
            .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    for (content_type, body, expected, code) in cases {
        let response = send(content_type, body.clone()).await.unwrap();
        let status = response.status();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            status,
            expected,
            "{problem} for {}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert_eq!(problem["code"], code, "{problem}");
        assert!(
            problem["message"].is_string() && problem["request_id"].is_string(),
            "{problem}"
        );
    }
    let (status, problem) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(PUBLISHER_TOKEN),
            Some(json!({"event_type": "has space", "payload": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["details"][0]["field"], "event_type");
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(PUBLISHER_TOKEN)
        .header("Idempotency-Key", "has space")
        .json(&json!({"event_type": "a", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["details"][0]["field"], "Idempotency-Key");
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        0
    );
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let app = TestApp::spawn().await;
    let publish = json!({"event_type": "a", "payload": {}});
    let (status, problem) = app
        .call(Method::POST, "/api/v1/events", None, Some(publish.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], "unauthorized");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some("wrong-token-0123456789"),
            Some(publish.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .get(app.url("/api/v1/events"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(PUBLISHER_TOKEN),
            Some(publish.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for (method, path) in [
        (Method::GET, "/api/v1/events"),
        (Method::GET, "/api/v1/subscriptions"),
        (Method::GET, "/api/v1/admin/deliveries"),
        (Method::GET, "/api/v1/admin/dead-letters"),
    ] {
        let (status, problem) = app.call(method, path, Some(PUBLISHER_TOKEN), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(problem["code"], "forbidden");
    }
    let (status, _) = app
        .call(Method::GET, "/api/v1/events", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn with_auth_disabled_requests_need_no_token() {
    let app = TestApp::spawn_with(|s| {
        s.api_tokens = None;
        s.auth_disabled = true;
    })
    .await;
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            None,
            Some(json!({"event_type": "a", "payload": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = app
        .call(Method::GET, "/api/v1/admin/dead-letters", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn events_are_listed_newest_first_with_filters_and_cursor_paging() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let event_type = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(app.publish(event_type, json!({"i": i})).await["id"].clone());
    }
    let (status, page) = app.admin(Method::GET, "/api/v1/events?limit=2", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["data"][0]["id"], ids[4]);
    assert_eq!(page["data"][1]["id"], ids[3]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app
        .admin(
            Method::GET,
            &format!("/api/v1/events?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["data"][0]["id"], ids[2]);
    let (_, filtered) = app
        .admin(Method::GET, "/api/v1/events?event_type=even", None)
        .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 3);
    assert!(filtered["next_cursor"].is_null());
    let (_, none) = app
        .admin(
            Method::GET,
            "/api/v1/events?since=2999-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
    let (status, problem) = app.admin(Method::GET, "/api/v1/events?limit=0", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["details"][0]["field"], "limit");
    let (status, _) = app
        .admin(Method::GET, "/api/v1/events?since=yesterday", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin(
            Method::GET,
            "/api/v1/events/01a22415-1292-7a36-aa6d-264ec608abbf",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .admin(Method::GET, "/api/v1/events/not-a-uuid", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_publish_wakes_listening_workers_after_commit() {
    let app = TestApp::spawn().await;
    let mut listener = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    listener.listen(store::DELIVERY_CHANNEL).await.unwrap();
    app.publish("a", json!({})).await;
    let notification = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification arrives")
        .unwrap();
    assert_eq!(notification.channel(), store::DELIVERY_CHANNEL);
}

#[tokio::test]
async fn with_a_slack_token_request_submitted_also_gets_a_slack_delivery() {
    let app = TestApp::spawn_with(|s| {
        s.slack_bot_token = Some(shared::config::SecretString::new("xoxb-1"))
    })
    .await;
    app.create_subscription("http://127.0.0.1:9/a", &["*"])
        .await;
    let event = app
        .publish("request_submitted", json!({"title": "t"}))
        .await;
    assert_eq!(event["deliveries"], 2);
    let other = app.publish("something_else", json!({})).await;
    assert_eq!(other["deliveries"], 1);
    let (_, detail) = app
        .admin(
            Method::GET,
            &format!("/api/v1/events/{}", event["id"].as_str().unwrap()),
            None,
        )
        .await;
    let mut targets: Vec<&str> = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["slack", "webhook"]);
}

#[tokio::test]
async fn concurrent_unkeyed_publishes_sharing_a_commit_each_get_their_own_answer() {
    let app = Arc::new(TestApp::spawn().await);
    app.create_subscription("http://127.0.0.1:9/a", &["*"])
        .await;
    app.create_subscription("http://127.0.0.1:9/b", &["*"])
        .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let app = app.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let event_type = format!("type.{i}");
            let answer = app.publish(&event_type, json!({"i": i})).await;
            (event_type, answer)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (event_type, answer) = task.await.unwrap();
        assert_eq!(
            answer["event_type"], event_type,
            "each request gets its own event back"
        );
        assert_eq!(answer["deliveries"], 2);
        let id = uuid(&answer["id"]);
        assert!(ids.insert(id));
        assert_eq!(app.db.count_deliveries(id, "pending").await, 2);
        let payload: Value = serde_json::from_str(&app.db.stored_payload(id).await).unwrap();
        assert_eq!(format!("type.{}", payload["i"]), event_type);
    }
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        60
    );
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries")
            .await,
        120
    );
}
