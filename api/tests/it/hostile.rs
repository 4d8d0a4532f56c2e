//! Hostile and careless clients: what they send must cost nobody else a request, and nothing
//! they get accepted may be unreadable.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{ADMIN_TOKEN, PUBLISHER_TOKEN, TestApp, uuid};

/// Opens a connection that declares a large body and sends one byte of it.
async fn stalled_upload(app: &TestApp, token: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /api/v1/events/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{authorization}Content-Length: 4000000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads what the server has answered on `stream` until it closes or `deadline` passes.
async fn answer(stream: &mut TcpStream, deadline: Duration) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    let started = Instant::now();
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => {
                answer.extend_from_slice(&buffer[..read]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn stalled_uploads_without_a_token_hold_no_capacity() {
    let app = TestApp::spawn_with(|settings| settings.api_max_in_flight = 16).await;
    // four times the capacity in stalled, unauthenticated uploads, all kept open
    let mut stalled = Vec::new();
    for _ in 0..64 {
        stalled.push(stalled_upload(&app, None).await);
    }
    // each is refused from its headers, without waiting for the body
    for stream in stalled.iter_mut().take(4) {
        let head = answer(stream, Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    // and the service answers its admins meanwhile
    for _ in 0..20 {
        let (status, body) = app.admin(Method::GET, "/api/v1/admin/stats", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    drop(stalled);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_its_permit() {
    let app = TestApp::spawn_with(|settings| {
        settings.api_max_in_flight = 2;
        settings.api_body_read_timeout_seconds = 1.0;
    })
    .await;
    let started = Instant::now();
    let mut first = stalled_upload(&app, Some(PUBLISHER_TOKEN)).await;
    let mut second = stalled_upload(&app, Some(PUBLISHER_TOKEN)).await;
    for stream in [&mut first, &mut second] {
        let head = answer(stream, Duration::from_secs(10)).await;
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    // both permits are back
    let (status, body) = app.admin(Method::GET, "/api/v1/admin/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_payload_with_a_lone_surrogate_is_refused_and_stored_events_stay_readable() {
    let app = TestApp::spawn().await;
    // sent as raw text: a JSON serialiser would never write a lone surrogate
    for (path, body, field) in [
        (
            "/api/v1/events",
            r#"{"event_type":"a","payload":{"s":"\ud800"}}"#,
            "payload",
        ),
        (
            "/api/v1/events/batch",
            r#"{"events":[{"event_type":"a","payload":{"ok":"\ud83d\ude00"}},{"event_type":"a","payload":{"x":["\udfff"]}}]}"#,
            "events[1].payload",
        ),
    ] {
        let response = app.post_raw(path, body).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["details"][0]["field"], field, "{problem}");
    }
    let (_, listed) = app.admin(Method::GET, "/api/v1/events", None).await;
    assert_eq!(
        listed["data"],
        json!([]),
        "nothing of either request stored"
    );

    // a well-formed pair is stored and reads back
    let response = app
        .post_raw(
            "/api/v1/events",
            r#"{"event_type":"a","payload":{"s":"\ud83d\ude00","z":"\u0000"}}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = uuid(&response.json::<Value>().await.unwrap()["id"]);
    let (status, event) = app
        .admin(Method::GET, &format!("/api/v1/events/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["payload"]["s"], "😀");
}

#[tokio::test]
async fn identical_keyed_batches_in_opposite_key_order_all_succeed() {
    let app = TestApp::spawn_with(|settings| {
        settings.api_max_in_flight = 1_000;
        settings.database_max_connections = 16;
        settings.database_acquire_timeout_seconds = 60.0;
    })
    .await;
    let mut requests = tokio::task::JoinSet::new();
    for pair in 0..300 {
        let items: Vec<Value> = (0..4)
            .map(|n| {
                json!({"event_type": "a", "payload": {"n": n}, "idempotency_key": format!("pair-{pair}-{n}")})
            })
            .collect();
        let mut reversed = items.clone();
        reversed.reverse();
        for events in [items, reversed] {
            let client = app.client.clone();
            let url = app.url("/api/v1/events/batch");
            requests.spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(PUBLISHER_TOKEN)
                    .json(&json!({ "events": events }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.text().await.unwrap())
            });
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        if status != StatusCode::ACCEPTED {
            eprintln!("{status}: {body}");
        }
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(202, 600)].into_iter().collect());
    assert_eq!(
        app.db.fetch_i64("select count(*) from outbox_events").await,
        1_200,
        "one event per key"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_keep_their_answers_without_a_token() {
    let app = TestApp::spawn().await;
    let (status, _) = app.call(Method::GET, "/api/v1/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = app
        .client
        .put(app.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = app
        .call(Method::GET, "/api/v1/admin/stats", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_description_holding_nul_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let created = app
        .create_subscription("https://example.com/hook", &["a"])
        .await;
    let id = uuid(&created["id"]);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/subscriptions".to_owned(),
            json!({"url": "https://example.com/hook", "events": ["a"], "description": "a\u{0}b"}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/subscriptions/{id}"),
            json!({"description": "\u{0}"}),
        ),
    ] {
        let (status, problem) = app.admin(method, &path, Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["details"][0]["field"], "description", "{problem}");
    }
}
