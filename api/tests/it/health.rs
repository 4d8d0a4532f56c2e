use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::ChaosProxy;

use crate::support::{PUBLISHER_TOKEN, TestApp, eventually, test_db, test_settings};

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after_and_recovers_by_itself() {
    let db = test_db().await;
    let upstream = {
        let url = url::Url::parse(&db.url).unwrap();
        let host = url.host_str().unwrap().to_owned();
        tokio::net::lookup_host((host, url.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = ChaosProxy::start(upstream).await;
    let settings = test_settings(&proxy.proxied_url(&db.url));
    let app = TestApp::start(db, settings).await;
    let publish = json!({"event_type": "a", "payload": {}});
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(PUBLISHER_TOKEN),
            Some(publish.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    proxy.break_networking();
    let started = std::time::Instant::now();
    let response = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(PUBLISHER_TOKEN)
        .json(&publish)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("retry-after").unwrap(), "2");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "database_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answers within the acquire timeout, not a hang"
    );
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the database"
    );

    proxy.restore_networking();
    let recovered = eventually(Duration::from_secs(10), || async {
        app.client
            .get(app.url("/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(recovered, "ready again once the database is back");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some(PUBLISHER_TOKEN),
            Some(publish),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        2,
        "nothing half-written during the outage"
    );
}

#[tokio::test]
async fn the_server_stops_gracefully() {
    let app = TestApp::spawn().await;
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("stops in time");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_shed_with_503() {
    use tokio::io::AsyncWriteExt;

    let app = TestApp::spawn_with(|s| s.api_max_in_flight = 1).await;
    // A publish whose body never finishes arriving holds the only slot.
    let mut slow = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {PUBLISHER_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"event_type\":",
        app.address
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();

    let shed = eventually(Duration::from_secs(5), || async {
        let response = app
            .client
            .post(app.url("/api/v1/events"))
            .bearer_auth(PUBLISHER_TOKEN)
            .json(&json!({"event_type": "a", "payload": {}}))
            .send()
            .await
            .unwrap();
        response.status() == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().get("retry-after").is_some()
            && response.json::<serde_json::Value>().await.unwrap()["code"] == "overloaded"
    })
    .await;
    assert!(
        shed,
        "a second request is refused while the first holds the only slot"
    );
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "health is outside the limit");

    drop(slow);
    let served = eventually(Duration::from_secs(5), || async {
        app.call(
            Method::POST,
            "/api/v1/events",
            Some(PUBLISHER_TOKEN),
            Some(json!({"event_type": "a", "payload": {}})),
        )
        .await
        .0 == StatusCode::ACCEPTED
    })
    .await;
    assert!(
        served,
        "the slot is free again once the slow request is gone"
    );
}

#[tokio::test]
async fn oversized_headers_and_pages_get_the_error_envelope() {
    let app = TestApp::spawn().await;
    let send = |header_bytes: usize| {
        app.client
            .get(app.url("/api/v1/events"))
            .header("x-padding", "p".repeat(header_bytes))
            .send()
    };
    let response = send(40 * 1024).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "headers_too_large");
    assert!(problem["request_id"].is_string());
    // under the limit the request goes on (to the token check)
    assert_eq!(
        send(8 * 1024).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    for path in [
        "/api/v1/events?limit=501",
        "/api/v1/subscriptions?limit=0",
        "/api/v1/admin/deliveries?limit=-1",
        "/api/v1/admin/dead-letters?limit=100000",
    ] {
        let (status, problem) = app.admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(problem["details"][0]["field"], "limit", "{path}");
    }
}
