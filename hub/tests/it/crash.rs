//! SIGKILL of the one `ih` process on SQLite while events are being published and delivered:
//! after a restart on the same file, every event that was answered 202 is delivered.

use std::{
    collections::HashSet,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;

use testkit::free_port;

use crate::support::{ADMIN_TOKEN, PUBLISHER_TOKEN, Receiver, Reply, client, eventually};

/// Starts the `ih` binary in `directory` with its default database (`data/…` there).
fn spawn_ih(directory: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ih"))
        .current_dir(directory)
        .env_clear()
        .env("IH_API_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "IH_API_TOKENS",
            format!("admin:{ADMIN_TOKEN},publisher:{PUBLISHER_TOKEN}"),
        )
        .env("IH_ALLOWED_DESTINATION_CIDRS", "127.0.0.0/8")
        .env("IH_DELIVERY_POLL_INTERVAL_SECONDS", "0.5")
        .env("IH_DELIVERY_TIMEOUT_SECONDS", "1")
        .env("IH_WORKER_LEASE_SECONDS", "3")
        .env("IH_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn ready(client: &reqwest::Client, base: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|response| response.status() == StatusCode::OK)
    })
    .await
}

#[tokio::test]
async fn a_killed_hub_delivers_every_acknowledged_event_after_a_restart() {
    let directory =
        std::env::temp_dir().join(format!("ih_crash_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let receiver = Receiver::start().await;
    // slow enough, with the subscription's in-flight limit below, that deliveries are in
    // flight, and many still queued, at the kill
    receiver.reply_with(|_, _| Reply::status(200).delayed(Duration::from_millis(20)));
    let client = client();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut hub = spawn_ih(&directory, port);
    assert!(
        ready(&client, &base).await,
        "ih serves on a new SQLite file"
    );
    assert!(directory.join("data/integrations-hub.db").exists());
    let created = client
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"url": receiver.url("/hook"), "events": ["load"], "max_in_flight": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut publishers = Vec::new();
    for publisher in 0..8 {
        let client = client.clone();
        let base = base.clone();
        let acknowledged = acknowledged.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0.. {
                let sent = client
                    .post(format!("{base}/api/v1/events"))
                    .bearer_auth(PUBLISHER_TOKEN)
                    .json(
                        &json!({"event_type": "load", "payload": {"publisher": publisher, "n": n}}),
                    )
                    .send()
                    .await;
                // the process is gone: what was not answered 202 was never promised
                let Ok(response) = sent else { return };
                if response.status() != StatusCode::ACCEPTED {
                    continue;
                }
                let Ok(body) = response.json::<serde_json::Value>().await else {
                    return;
                };
                acknowledged
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            acknowledged.lock().unwrap().len() >= 400
        })
        .await
    );
    hub.kill().unwrap(); // SIGKILL
    hub.wait().unwrap();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let delivered_at_kill: HashSet<String> = delivered(&receiver);
    assert!(
        delivered_at_kill.len() < acknowledged.len(),
        "the kill came while work was queued ({} of {} delivered)",
        delivered_at_kill.len(),
        acknowledged.len()
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut restarted = spawn_ih(&directory, port);
    assert!(
        ready(&client, &base).await,
        "ih starts again on the same file"
    );
    let all_delivered = eventually(Duration::from_secs(60), || async {
        delivered(&receiver).is_superset(&acknowledged)
    })
    .await;
    let missing = acknowledged.difference(&delivered(&receiver)).count();
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    assert!(
        all_delivered,
        "{missing} of {} acknowledged events never delivered",
        acknowledged.len()
    );
}

/// The distinct event ids the receiver got.
fn delivered(receiver: &Receiver) -> HashSet<String> {
    receiver
        .received()
        .iter()
        .map(|request| request.header("webhook-id").to_owned())
        .collect()
}
