use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, uuid};

/// Publishes an event to one subscription and kills its delivery as the worker would after
/// the last attempt; returns (subscription id, event id, dead letter id).
async fn dead_letter(app: &TestApp) -> (uuid::Uuid, uuid::Uuid, uuid::Uuid) {
    let subscription = app
        .create_subscription("http://127.0.0.1:9/a", &["a"])
        .await;
    let event = app.publish("a", json!({"n": 1})).await;
    let event_id = uuid(&event["id"]);
    let delivery_id = app.db.delivery_ids(event_id).await[0];
    let dead_letter_id = app.db.kill_delivery(delivery_id, "http_500").await;
    (uuid(&subscription["id"]), event_id, dead_letter_id)
}

#[tokio::test]
async fn attempts_of_an_event_are_listed() {
    let app = TestApp::spawn().await;
    let (_, event_id, _) = dead_letter(&app).await;
    let (status, attempts) = app
        .admin(
            Method::GET,
            &format!("/api/v1/admin/events/{event_id}/attempts"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{attempts}");
    let data = attempts["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["outcome"], "dead_lettered");
    assert_eq!(data[0]["response_status"], 500);
    assert_eq!(data[0]["attempt_number"], 1);

    let quiet = app.publish("nobody", json!({})).await;
    let (status, empty) = app
        .admin(
            Method::GET,
            &format!(
                "/api/v1/admin/events/{}/attempts",
                quiet["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["data"], json!([]));
    let (status, _) = app
        .admin(
            Method::GET,
            "/api/v1/admin/events/01a22415-1292-7a36-aa6d-264ec608abbf/attempts",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_dead_letter_is_replayed_once() {
    let app = TestApp::spawn().await;
    let (subscription_id, event_id, dead_letter_id) = dead_letter(&app).await;

    let (status, listed) = app
        .admin(
            Method::GET,
            "/api/v1/admin/dead-letters?replayed=false",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["data"][0]["id"], dead_letter_id.to_string());
    assert_eq!(listed["data"][0]["reason"], "http_500");
    // a text no version of the worker writes is listed as stored, not refused
    assert_eq!(listed["data"][0]["reason_code"], "unrecognized");
    assert_eq!(
        listed["data"][0]["subscription_id"],
        subscription_id.to_string()
    );

    let path = format!("/api/v1/admin/dead-letters/{dead_letter_id}/replay");
    let (status, replayed) = app.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    let new_delivery = uuid(&replayed["delivery_id"]);
    let (_, deliveries) = app
        .admin(
            Method::GET,
            &format!("/api/v1/admin/deliveries?event_id={event_id}"),
            None,
        )
        .await;
    let fresh = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == new_delivery.to_string())
        .unwrap();
    assert_eq!(fresh["status"], "pending");
    assert_eq!(fresh["attempts"], 0);
    assert_eq!(fresh["subscription_id"], subscription_id.to_string());

    let (status, problem) = app.admin(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "already_replayed");
    assert_eq!(app.db.count_deliveries(event_id, "pending").await, 1);

    let (_, replayed_list) = app
        .admin(
            Method::GET,
            "/api/v1/admin/dead-letters?replayed=true",
            None,
        )
        .await;
    assert_eq!(
        replayed_list["data"][0]["replay_delivery_id"],
        new_delivery.to_string()
    );
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/01a22415-1292-7a36-aa6d-264ec608abbf/replay",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_dead_letter_of_a_deleted_subscription_cannot_be_replayed() {
    let app = TestApp::spawn().await;
    let (subscription_id, _, dead_letter_id) = dead_letter(&app).await;
    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/api/v1/subscriptions/{subscription_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = app
        .admin(
            Method::POST,
            &format!("/api/v1/admin/dead-letters/{dead_letter_id}/replay"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "subscription_deleted");
}

#[tokio::test]
async fn bulk_replay_counts_in_a_dry_run_then_replays_each_dead_letter_once() {
    let app = TestApp::spawn().await;
    let subscription = app
        .create_subscription("http://127.0.0.1:9/a", &["a"])
        .await;
    let other = app
        .create_subscription("http://127.0.0.1:9/b", &["b"])
        .await;
    for event_type in ["a", "a", "a", "b"] {
        let event = app.publish(event_type, json!({})).await;
        let delivery = app.db.delivery_ids(uuid(&event["id"])).await[0];
        app.db.kill_delivery(delivery, "http_503").await;
    }
    let filter = json!({"subscription_id": subscription["id"], "dry_run": true});
    let (status, counted) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/replay",
            Some(filter),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{counted}");
    assert_eq!(counted, json!({"dry_run": true, "count": 3}));
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries where status = 'pending'")
            .await,
        0
    );

    let (status, done) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/replay",
            Some(json!({"subscription_id": subscription["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(done["count"], 3);
    assert_eq!(
        app.db
            .fetch_i64("select count(*) from all_deliveries where status = 'pending'")
            .await,
        3
    );
    let (_, again) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/replay",
            Some(json!({"subscription_id": subscription["id"]})),
        )
        .await;
    assert_eq!(again["count"], 0);

    let (_, rest) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/replay",
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(
        rest["count"], 1,
        "only the other subscription's dead letter is left"
    );
    let _ = other;
    let (status, _) = app
        .admin(
            Method::POST,
            "/api/v1/admin/dead-letters/replay",
            Some(json!({"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn deliveries_are_listed_with_status_and_subscription_filters() {
    let app = TestApp::spawn().await;
    let (subscription_id, _, _) = dead_letter(&app).await;
    app.publish("a", json!({})).await;
    let (status, dead) = app
        .admin(Method::GET, "/api/v1/admin/deliveries?status=dead", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dead["data"].as_array().unwrap().len(), 1);
    let (_, pending) = app
        .admin(
            Method::GET,
            &format!("/api/v1/admin/deliveries?status=pending&subscription_id={subscription_id}"),
            None,
        )
        .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1);
    let (_, paged) = app
        .admin(Method::GET, "/api/v1/admin/deliveries?limit=1", None)
        .await;
    assert_eq!(paged["data"].as_array().unwrap().len(), 1);
    assert!(paged["next_cursor"].is_string());
    let (status, _) = app
        .admin(
            Method::GET,
            "/api/v1/admin/deliveries?status=exploded",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn stats_count_the_due_queue_recent_attempts_and_open_dead_letters() {
    let app = TestApp::spawn().await;
    let (status, empty) = app.admin(Method::GET, "/api/v1/admin/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(
        empty,
        json!({"window_seconds": 300, "due": 0, "delivered": 0, "failed": 0, "dead_letters": 0})
    );
    dead_letter(&app).await;
    // its failed attempt as the worker counts it in its minute
    let mut counted = store::charts::MinuteTally::new(store::charts::minute_of(chrono::Utc::now()));
    counted.dead = 1;
    store::charts::record_minutes(&app.db.pool, "w1", &[counted])
        .await
        .unwrap();
    app.publish("a", json!({"n": 2})).await;
    app.publish("a", json!({"n": 3})).await;
    let (_, stats) = app.admin(Method::GET, "/api/v1/admin/stats", None).await;
    assert_eq!(stats["due"], 2);
    assert!(stats["oldest_due_age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["delivered"], 0);
    assert_eq!(stats["dead_letters"], 1);
    let (status, _) = app
        .call(
            Method::GET,
            "/api/v1/admin/stats",
            Some(crate::support::PUBLISHER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn charts_cover_their_window_in_buckets_from_the_workers_minutes() {
    let app = TestApp::spawn().await;
    let (status, hour) = app.admin(Method::GET, "/api/v1/admin/charts", None).await;
    assert_eq!(status, StatusCode::OK, "{hour}");
    assert_eq!(hour["window_seconds"], 3600);
    assert_eq!(hour["bucket_seconds"], 60);
    assert_eq!(hour["points"].as_array().unwrap().len(), 60);
    assert!(hour["points"][0].get("lag_p50_ms").is_none(), "{hour}");

    // what a worker wrote for this minute
    let minute = store::charts::minute_of(chrono::Utc::now());
    let mut counted = store::charts::MinuteTally::new(minute);
    counted.delivered = 30;
    counted.dead = 2;
    counted.add_lag(0.02);
    counted.due = Some(4);
    store::charts::record_minutes(&app.db.pool, "w1", &[counted])
        .await
        .unwrap();
    for (window, points, bucket) in [("15m", 15, 60), ("6h", 72, 300), ("24h", 72, 1200)] {
        let (status, chart) = app
            .admin(
                Method::GET,
                &format!("/api/v1/admin/charts?window={window}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{chart}");
        assert_eq!(chart["bucket_seconds"], bucket);
        let buckets = chart["points"].as_array().unwrap();
        assert_eq!(buckets.len(), points, "{window}");
        let last = buckets.last().unwrap();
        assert_eq!(
            (&last["delivered"], &last["dead"], &last["due"]),
            (&json!(30), &json!(2), &json!(4)),
            "{window}: {last}"
        );
        assert_eq!(last["lag_p50_ms"], 25.0);
    }

    let (status, refused) = app
        .admin(Method::GET, "/api/v1/admin/charts?window=2h", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, _) = app
        .call(
            Method::GET,
            "/api/v1/admin/charts",
            Some(crate::support::PUBLISHER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_health_view_lists_subscriptions_most_troubled_first() {
    let app = TestApp::spawn().await;
    let fine = app
        .create_subscription("https://example.com/fine", &["a"])
        .await;
    let failing = app
        .create_subscription("https://example.com/failing", &["a"])
        .await;
    let failing_id = crate::support::uuid(&failing["id"]);
    app.db
        .execute_bound(
            "update subscriptions set failing_since = now(), consecutive_failures = 3 \
             where id = $1",
            failing_id,
        )
        .await;
    let (status, health) = app
        .admin(Method::GET, "/api/v1/admin/subscription-health", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["bucket_seconds"], 300);
    let data = health["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["subscription"]["id"], failing["id"]);
    assert_eq!(data[0]["subscription"]["state"], "failing");
    assert_eq!(data[0]["subscription"]["consecutive_failures"], 3);
    assert_eq!(data[1]["subscription"]["id"], fine["id"]);
    assert_eq!(data[0]["sparkline"].as_array().unwrap().len(), 12);
    assert_eq!(
        (&data[0]["in_flight"], &data[0]["due"]),
        (&json!(0), &json!(0))
    );
    assert!(
        data[0].get("success_rate").is_none(),
        "no attempts: {}",
        data[0]
    );
    let (status, _) = app
        .call(
            Method::GET,
            "/api/v1/admin/subscription-health",
            Some(crate::support::PUBLISHER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    let mut bodies = std::collections::HashMap::new();
    for (path, content_type, marker) in [
        ("/console", "text/html", "<main id=\"main\""),
        ("/console/app.js", "text/javascript", "textContent"),
        ("/console/app.css", "text/css", "--accent"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        assert!(body.contains(marker), "{path}");
        bodies.insert(path, body);
    }
    // no inline script or handler the policy would have to allow, and no HTML writing
    let page = &bodies["/console"];
    assert!(!page.contains("<script>") && !page.contains(" onclick="));
    let script = &bodies["/console/app.js"];
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(
            !script.contains(forbidden),
            "{forbidden} in the console script"
        );
    }
}
