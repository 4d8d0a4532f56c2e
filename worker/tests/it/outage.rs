//! Database restarts under load: a test-owned PostgreSQL cluster is restarted with
//! `pg_ctl restart -m fast` and then `-m immediate` (a crash and recovery) while an `ih-api`
//! and an `ih-worker` process publish and deliver. The API may refuse (503) but never
//! acknowledge an event it did not store; after each restart both processes carry on by
//! themselves, and every acknowledged event is delivered.

use std::{
    collections::HashSet,
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use uuid::Uuid;

use crate::{
    observability::{ADMIN_TOKEN, Stack, workspace_bin},
    support::{Receiver, eventually},
};

/// A throw-away PostgreSQL cluster in a temporary directory, owned by this test.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    root: PathBuf,
    port: u16,
    /// Running as root: the cluster's commands then run as the postgres user.
    as_root: bool,
}

impl Cluster {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .max()
            .expect("pg_ctl");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = std::env::temp_dir().join(format!("ih-outage-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&root).unwrap();
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        let cluster = Self {
            data: root.join("data"),
            bin,
            root,
            port,
            as_root,
        };
        if cluster.as_root {
            // initdb refuses to run as root: the cluster belongs to the postgres user
            assert!(
                Command::new("chown")
                    .args(["postgres", cluster.root.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        cluster.pg(&format!(
            "{}/initdb -D {} -A trust -U postgres --no-sync",
            cluster.bin.display(),
            cluster.data.display()
        ));
        cluster.pg_ctl("start");
        cluster
    }

    /// Runs a shell command as the cluster's owner; returns whether it succeeded.
    fn run_as_owner(&self, command: &str) -> bool {
        let mut shell = if self.as_root {
            let mut su = Command::new("su");
            su.arg("postgres");
            su
        } else {
            Command::new("sh")
        };
        shell
            .args(["-c", command])
            .status()
            .is_ok_and(|status| status.success())
    }

    fn pg(&self, command: &str) {
        assert!(self.run_as_owner(command), "{command}");
    }

    /// `pg_ctl start`, `restart -m fast`, `restart -m immediate`, `stop`; waits for it.
    fn pg_ctl(&self, action: &str) {
        self.pg(&format!(
            "{}/pg_ctl -D {} -l {}/log -w {action} -o '-p {} -k {} -c listen_addresses=127.0.0.1'",
            self.bin.display(),
            self.data.display(),
            self.root.display(),
            self.port,
            self.root.display(),
        ));
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run_as_owner(&format!(
            "{}/pg_ctl -D {} -m immediate stop",
            self.bin.display(),
            self.data.display()
        ));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What the publishers saw.
#[derive(Default)]
struct Publications {
    acknowledged: Vec<Uuid>,
    refused: usize,
    unreachable: usize,
    unexpected: Vec<String>,
}

#[tokio::test]
async fn every_acknowledged_event_is_delivered_across_fast_and_immediate_restarts() {
    let cluster = Cluster::start();
    let url = cluster.url("ih_outage");
    let migrated = Command::new(workspace_bin("ih-migrate"))
        .env_clear()
        .env("IH_DATABASE_URL", &url)
        .env("IH_LOG_LEVEL", "warn")
        .status()
        .unwrap();
    assert!(migrated.success());

    let receiver = Receiver::start().await;
    let stack = Stack::start_on(
        &url,
        &[
            ("IH_DATABASE_ACQUIRE_TIMEOUT_SECONDS", "2".to_owned()),
            ("IH_WORKER_CONCURRENCY", "64".to_owned()),
        ],
    )
    .await;
    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/hook"), "events": ["a"]}),
            &[],
        )
        .await;

    let seen = Arc::new(Mutex::new(Publications::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for publisher in 0..8 {
        let (client, api_url) = (stack.client.clone(), stack.api_url.clone());
        let (seen, stop) = (seen.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let sent = client
                    .post(format!("{api_url}/api/v1/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .timeout(Duration::from_secs(10))
                    .json(&json!({"event_type": "a", "payload": {"publisher": publisher, "n": n}}))
                    .send()
                    .await;
                let Ok(response) = sent else {
                    seen.lock().unwrap().unreachable += 1;
                    continue;
                };
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                match status {
                    202 => seen
                        .acknowledged
                        .push(body["id"].as_str().unwrap().parse().unwrap()),
                    503 if retry_after => seen.refused += 1,
                    _ => seen.unexpected.push(format!("{status} {body}")),
                }
            }
        }));
    }
    let acknowledged = || seen.lock().unwrap().acknowledged.len();
    let wait_for = |target: usize| {
        let acknowledged = &acknowledged;
        async move {
            assert!(
                eventually(Duration::from_secs(60), || async {
                    acknowledged() >= target
                })
                .await,
                "publishing stalled at {} acknowledged",
                acknowledged()
            );
        }
    };

    wait_for(700).await;
    cluster.pg_ctl("restart -m fast");
    let after_fast = acknowledged();
    wait_for(after_fast + 700).await;
    cluster.pg_ctl("restart -m immediate");
    let after_immediate = acknowledged();
    wait_for((after_immediate + 700).max(2000)).await;
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.unexpected.is_empty(),
        "answers other than 202 and 503 with Retry-After: {:?}",
        &seen.unexpected[..seen.unexpected.len().min(5)]
    );
    assert!(seen.acknowledged.len() >= 2000);
    // the restarts were felt: requests on connections they cut were answered 503
    assert!(
        seen.refused > 0,
        "no 503 during two restarts ({} unreachable)",
        seen.unreachable
    );
    let expected: HashSet<Uuid> = seen.acknowledged.iter().copied().collect();
    let delivered_all = eventually(Duration::from_secs(90), || async {
        expected.is_subset(&arrived_ids(&receiver))
    })
    .await;
    let arrived = arrived_ids(&receiver);
    assert!(
        delivered_all,
        "{} of {} acknowledged events never arrived\napi:\n{}\nworker:\n{}",
        expected.difference(&arrived).count(),
        expected.len(),
        tail(&stack.api.output()),
        tail(&stack.worker.output())
    );

    // every acknowledged event is stored, and nothing is left to do
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: Vec<Uuid> = sqlx::query_scalar("select id from outbox_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: HashSet<Uuid> = stored.into_iter().collect();
    assert!(expected.is_subset(&stored));
    let settled = eventually(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from all_deliveries where status <> 'delivered'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == 0
    })
    .await;
    assert!(settled, "deliveries left pending or leased");
    // events whose answer was lost in an outage but which were stored are delivered too
    assert!(stored.is_subset(&arrived_ids(&receiver)));
    pool.close().await;
}

/// The event ids the receiver has seen (`webhook-id`).
fn arrived_ids(receiver: &Receiver) -> HashSet<Uuid> {
    receiver
        .received()
        .iter()
        .filter_map(|request| request.header("webhook-id").parse().ok())
        .collect()
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
