//! A flood of hostile requests against the real `ih-api`: invented methods, random paths,
//! unauthenticated writes and thousands of distinct event types. None of it may grow
//! `/metrics` or the process: every label value comes from a bounded set.

use reqwest::Method;
use serde_json::json;
use testkit::db::TestDb;

use crate::observability::{ADMIN_TOKEN, Stack};

const REQUESTS: usize = 40_000;
const CLIENTS: usize = 32;

fn metric_lines(text: &str) -> usize {
    text.lines().filter(|line| !line.starts_with('#')).count()
}

#[tokio::test]
async fn forty_thousand_hostile_requests_leave_metrics_and_memory_flat() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, &[]).await;
    let api = stack.api_url.clone();
    let rss_at_start = stack.api.rss_bytes();

    let mut clients = tokio::task::JoinSet::new();
    for client_index in 0..CLIENTS {
        let client = stack.client.clone();
        let api = api.clone();
        clients.spawn(async move {
            let mut answered = 0;
            for n in (client_index..REQUESTS).step_by(CLIENTS) {
                let request = match n % 4 {
                    // a method nobody serves
                    0 => client.request(
                        Method::from_bytes(format!("M{n}").as_bytes()).unwrap(),
                        format!("{api}/api/v1/events"),
                    ),
                    // a path nobody serves
                    1 => client.get(format!("{api}/probe/{n}/{}", uuid::Uuid::new_v4())),
                    // a write without a token
                    2 => client
                        .post(format!("{api}/api/v1/events"))
                        .json(&json!({"event_type": format!("anon.{n}"), "payload": {}})),
                    // an accepted publish of a type never seen before
                    _ => client
                        .post(format!("{api}/api/v1/events"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"event_type": format!("type.{n}"), "payload": {}})),
                };
                if request.send().await.is_ok() {
                    answered += 1;
                }
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(count) = clients.join_next().await {
        answered += count.unwrap();
    }
    assert_eq!(answered, REQUESTS, "every request was answered");

    let metrics = stack.metrics(&api).await;
    let lines = metric_lines(&metrics);
    assert!(lines < 500, "/metrics grew to {lines} lines");
    assert!(metrics.contains(r#"route="unmatched""#), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    assert!(metrics.contains(r#"event_type="other""#), "{metrics}");
    let rss_after = stack.api.rss_bytes();
    eprintln!(
        "/metrics: {lines} lines; ih-api RSS {} KiB at start, {} KiB after {REQUESTS} requests",
        rss_at_start / 1024,
        rss_after / 1024
    );
    let grown = rss_after.saturating_sub(rss_at_start);
    assert!(
        grown < 10 * 1024 * 1024,
        "ih-api grew by {} KiB (from {} KiB)",
        grown / 1024,
        rss_at_start / 1024
    );
}
