//! The Slack connector against a local fake Slack API.

use std::time::Duration;

use shared::{
    config::{SecretString, Settings},
    state::{AttemptOutcome, Target},
};
use store as db;
use uuid::Uuid;

use crate::support::{
    Receiver, Reply, count, dead_letters, eventually, publish_with, spawn_worker, worker_settings,
};
use testkit::db::TestDb;

const TOKEN: &str = "xoxb-test-token-123";
const OK: &str = r#"{"ok":true,"channel":"C-default","ts":"1700000000.000100"}"#;

fn slack_settings(db: &TestDb, slack: &Receiver) -> Settings {
    let mut settings = worker_settings(&db.url);
    settings.slack_bot_token = Some(SecretString::new(TOKEN));
    settings.slack_api_base_url = slack.url("/api");
    settings.slack_default_channel = Some("C-default".to_owned());
    settings
}

async fn request_submitted(db: &TestDb, payload: &str) -> Uuid {
    publish_with(
        db,
        "request_submitted",
        &[payload.to_owned()],
        Some(&["request_submitted"]),
    )
    .await[0]
}

async fn settled(db: &TestDb) -> bool {
    eventually(Duration::from_secs(20), || async {
        count(
            db,
            "select count(*) from all_deliveries where status in ('delivered', 'dead')",
        )
        .await
            == 1
    })
    .await
}

#[tokio::test]
async fn a_request_is_posted_to_slack_and_its_ts_recorded() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|_, _| Reply::json(200, OK));
    let event_id = request_submitted(
        &db,
        r#"{"title":"New laptop","requester":"ana","description":"14\" & <fast>"}"#,
    )
    .await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    assert!(settled(&db).await);
    worker.stop().await;

    let request = slack.received().pop().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/chat.postMessage");
    assert_eq!(request.header("authorization"), format!("Bearer {TOKEN}"));
    assert!(
        request
            .header("content-type")
            .starts_with("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["channel"], "C-default");
    assert_eq!(body["blocks"][0]["text"]["text"], "New laptop");
    assert_eq!(body["blocks"][1]["fields"][0]["text"], "*Requester*\nana");
    assert_eq!(
        body["blocks"][1]["fields"][1]["text"],
        "*Description*\n14\" &amp; &lt;fast&gt;"
    );
    assert!(
        body["blocks"][2]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&event_id.to_string())
    );
    assert!(body["text"].is_string());

    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].target, Some(Target::Slack));
    assert_eq!(attempts[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(
        attempts[0].external_id.as_deref(),
        Some("1700000000.000100")
    );
}

#[tokio::test]
async fn permanent_slack_errors_dead_letter_at_once_and_replay() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|_, _| Reply::json(200, r#"{"ok":false,"error":"channel_not_found"}"#));
    let event_id = request_submitted(&db, r#"{"title":"t","slack_channel":"C-gone"}"#).await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    assert!(settled(&db).await);
    assert_eq!(slack.count(), 1, "no retry of a permanent error");
    let letters = dead_letters(&db).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.to_string(), "slack_channel_not_found");
    assert_eq!(letters[0].target, Target::Slack);
    assert_eq!(letters[0].event_id, event_id);

    slack.reply_with(|_, _| Reply::json(200, OK));
    let replayed = db::replay_dead_letter(&db.pool, letters[0].id, Uuid::now_v7())
        .await
        .unwrap();
    assert!(matches!(replayed, db::ReplayOutcome::Replayed { .. }));
    db::notify_workers(&db.pool).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(
                &db,
                "select count(*) from all_deliveries where status = 'delivered' and target = 'slack'",
            )
            .await
                == 1
        })
        .await
    );
    worker.stop().await;
}

#[tokio::test]
async fn transient_slack_errors_retry_with_backoff() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|n, _| match n {
        0 => Reply::json(200, r#"{"ok":false,"error":"internal_error"}"#),
        1 => Reply::json(503, r#"{"ok":false,"error":"service_unavailable"}"#),
        2 => Reply::json(200, r#"{"ok":false,"error":"request_timeout"}"#),
        _ => Reply::json(200, OK),
    });
    let event_id = request_submitted(&db, r#"{"title":"t"}"#).await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    assert!(settled(&db).await);
    worker.stop().await;
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(
        errors,
        [
            Some("internal_error"),
            Some("slack_http_503"),
            Some("request_timeout"),
            None
        ]
    );
    assert_eq!(attempts.last().unwrap().outcome, AttemptOutcome::Delivered);
}

#[tokio::test]
async fn a_rate_limited_post_waits_for_retry_after() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|n, _| {
        if n == 0 {
            Reply::json(429, r#"{"ok":false,"error":"ratelimited"}"#).header("Retry-After", "2")
        } else {
            Reply::json(200, OK)
        }
    });
    request_submitted(&db, r#"{"title":"t"}"#).await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    assert!(settled(&db).await);
    worker.stop().await;
    let gap = count(&db, "select (extract(epoch from max(started_at) - min(started_at)) * 1000)::bigint from delivery_attempts").await;
    assert!(gap >= 2000, "retried no earlier than Retry-After: {gap} ms");
    assert_eq!(
        count(
            &db,
            "select count(*) from delivery_attempts where error = 'slack_ratelimited'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn an_unreachable_slack_is_retried_like_any_network_error() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    let mut settings = slack_settings(&db, &slack);
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.slack_api_base_url = format!("http://127.0.0.1:{closed}/api");
    settings.delivery_max_attempts = 2;
    request_submitted(&db, r#"{"title":"t"}"#).await;
    let worker = spawn_worker(&settings, None);
    assert!(settled(&db).await);
    worker.stop().await;
    assert_eq!(
        count(
            &db,
            "select count(*) from delivery_attempts where error like 'connection_error%'"
        )
        .await,
        2
    );
    assert_eq!(count(&db, "select count(*) from dead_letters where reason like 'max_attempts_exceeded: connection_error%'").await, 1);
}

#[tokio::test]
async fn without_a_token_or_with_a_forbidden_channel_slack_deliveries_dead_letter() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    request_submitted(&db, r#"{"title":"t"}"#).await;
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(settled(&db).await);
    worker.stop().await;
    assert_eq!(
        count(
            &db,
            "select count(*) from dead_letters where reason = 'connector_not_configured'"
        )
        .await,
        1
    );

    let db = TestDb::new().await;
    let mut settings = slack_settings(&db, &slack);
    settings.slack_allowed_channels = Some("C-ok, C-also-ok".to_owned());
    request_submitted(&db, r#"{"title":"t","slack_channel":"C-secret"}"#).await;
    let worker = spawn_worker(&settings, None);
    assert!(settled(&db).await);
    worker.stop().await;
    assert_eq!(
        count(
            &db,
            "select count(*) from dead_letters where reason like 'slack_channel_not_allowed%'"
        )
        .await,
        1
    );
    assert_eq!(slack.count(), 0, "nothing was posted");
}

/// Slack's answer to a long message: `chat.postMessage` echoes the message it posted, in
/// `text` and in `blocks`, so the answer is as long as the message and more.
fn echoing_answer(request: &testkit::receiver::Received) -> Reply {
    let posted: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let answer = serde_json::json!({
        "ok": true,
        "channel": posted["channel"],
        "ts": "1700000000.000200",
        "message": {
            "type": "message",
            "text": posted["text"],
            "blocks": posted["blocks"],
            "bot_id": "B1",
        },
    });
    // Slack's API writes JSON in ASCII: every other character as a \u escape
    let mut ascii = String::new();
    for character in answer.to_string().chars() {
        if character.is_ascii() {
            ascii.push(character);
        } else {
            let mut units = [0_u16; 2];
            for unit in character.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    Reply::json(200, &ascii)
}

#[tokio::test]
async fn a_long_message_is_posted_once_whatever_the_length_of_the_echo() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|_, request| echoing_answer(request));
    // every field at its longest, in characters that escape to the most bytes
    let long = "é<😀>&".repeat(2_000);
    let payload = serde_json::json!({
        "title": long, "requester": long, "description": long
    });
    let event_id = request_submitted(&db, &payload.to_string()).await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    assert!(settled(&db).await);
    worker.stop().await;
    assert_eq!(slack.count(), 1, "posted once");
    let answer_length = echoing_answer(&slack.received()[0]).body.len();
    assert!(
        answer_length > 8 * 1024,
        "the echo is {answer_length} bytes"
    );
    let attempts = db::list_event_attempts(&db.pool, event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(
        attempts[0].external_id.as_deref(),
        Some("1700000000.000200")
    );
    let excerpt = attempts[0].response_body.as_deref().unwrap_or_default();
    assert!(excerpt.len() <= 4 * 1024, "only the excerpt is stored");
}

#[tokio::test]
async fn an_unreadable_answer_after_a_2xx_is_recorded_and_never_reposted() {
    let db = TestDb::new().await;
    let slack = Receiver::start().await;
    slack.reply_with(|_, _| Reply::json(200, "<html>proxy says hi</html>"));
    let event_id = request_submitted(&db, r#"{"title":"t"}"#).await;
    let worker = spawn_worker(&slack_settings(&db, &slack), None);
    // dead is terminal: no retry can follow it
    assert!(settled(&db).await);
    worker.stop().await;
    assert_eq!(slack.count(), 1, "never re-posted automatically");
    let letters = dead_letters(&db).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, event_id);
    assert!(
        letters[0]
            .reason
            .to_string()
            .starts_with("slack_unreadable_answer"),
        "{}",
        letters[0].reason
    );
}
