//! Receivers that misbehave on purpose, spoken to over raw TCP so they can do what no HTTP
//! server library would: trickle a body, stop mid-body, never answer, stream without end.
//! Each costs the worker one bounded attempt, and its memory stays flat.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use shared::state::AttemptOutcome;
use store as db;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support::{
    WorkerProcess, count, eventually, publish, spawn_worker, subscribe, worker_settings,
};
use testkit::db::TestDb;

const SECRET: &str = "a-plain-secret-of-some-length";

/// A raw HTTP/1.1 receiver whose answer depends on the request path.
struct HostileReceiver {
    address: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl HostileReceiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, counter).await;
                });
            }
        });
        Self { address, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

async fn serve(mut stream: TcpStream, requests: Arc<AtomicUsize>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0_u8; length];
    stream.read_exact(&mut body).await?;
    requests.fetch_add(1, Ordering::SeqCst);
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    match path.as_str() {
        "/trickle" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await?;
            for _ in 0..600 {
                stream.write_all(b"x").await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "/close" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial...")
                .await?;
            stream.shutdown().await?;
        }
        "/silent" => tokio::time::sleep(Duration::from_secs(60)).await,
        _ => {
            // an endless chunked body, 64 KiB a chunk
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let chunk = [b"10000\r\n".as_slice(), &[b'z'; 0x10000], b"\r\n"].concat();
            loop {
                stream.write_all(&chunk).await?;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn each_hostile_answer_is_one_bounded_attempt() {
    let db = TestDb::new().await;
    let receiver = HostileReceiver::start().await;
    for kind in ["trickle", "close", "silent", "endless"] {
        subscribe(&db, &receiver.url(&format!("/{kind}")), SECRET, &[kind]).await;
    }
    let mut events = Vec::new();
    for kind in ["trickle", "close", "silent", "endless"] {
        events.push((kind, publish(&db, kind, &["{}".to_owned()]).await[0]));
    }
    let worker = spawn_worker(&worker_settings(&db.url), None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&db, "select count(*) from delivery_attempts").await >= 4
        })
        .await
    );
    worker.stop().await;
    for (kind, event_id) in events {
        let attempt = db::list_event_attempts(&db.pool, event_id)
            .await
            .unwrap()
            .unwrap()
            .remove(0);
        let error = attempt.error.clone().unwrap_or_default();
        match kind {
            "endless" => {
                // the status was answered and the read was capped: delivered
                assert_eq!(attempt.outcome, AttemptOutcome::Delivered, "{attempt:?}");
                assert_eq!(attempt.response_body.as_ref().map(String::len), Some(4096));
            }
            "trickle" => {
                assert_eq!(
                    attempt.outcome,
                    AttemptOutcome::RetryScheduled,
                    "{attempt:?}"
                );
                assert!(
                    error.starts_with("timeout") && error.contains("after status 200"),
                    "{error}"
                );
                assert!(attempt.duration_ms < 4000, "{attempt:?}");
            }
            "close" => {
                assert_eq!(
                    attempt.outcome,
                    AttemptOutcome::RetryScheduled,
                    "{attempt:?}"
                );
                assert!(
                    !error.starts_with("timeout") && error.contains("after status 200"),
                    "{error}"
                );
            }
            _ => {
                assert_eq!(
                    attempt.outcome,
                    AttemptOutcome::RetryScheduled,
                    "{attempt:?}"
                );
                assert!(error.starts_with("timeout"), "{error}");
                assert!(attempt.duration_ms < 4000, "{attempt:?}");
            }
        }
    }
    assert!(receiver.requests.load(Ordering::SeqCst) >= 4);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_worker_process_stays_small_under_hostile_receivers() {
    let db = TestDb::new().await;
    let receiver = HostileReceiver::start().await;
    for kind in ["trickle", "close", "silent", "endless"] {
        subscribe(
            &db,
            &receiver.url(&format!("/{kind}")),
            SECRET,
            &["hostile"],
        )
        .await;
    }
    let payload = format!(r#"{{"pad":"{}"}}"#, "p".repeat(16 * 1024));
    publish(&db, "hostile", &vec![payload; 100]).await;
    let worker = WorkerProcess::spawn(
        &db.url,
        "hostile",
        &[
            ("IH_WORKER_CONCURRENCY", "128"),
            ("IH_WORKER_BATCH_SIZE", "64"),
            ("IH_SUBSCRIPTION_MAX_IN_FLIGHT", "64"),
            // every receiver fails: with the default breaker their circuits would open and
            // hold most deliveries back, and this test is about the worker sending them all
            ("IH_CIRCUIT_BREAKER_FAILURES", "1000000"),
        ],
    );
    // every one of the 400 deliveries tried at least once
    assert!(
        eventually(Duration::from_secs(90), || async {
            count(
                &db,
                "select count(*) from all_deliveries where attempts >= 1 and status <> 'leased'",
            )
            .await
                >= 400
        })
        .await,
        "all deliveries attempted"
    );
    let peak_mib = peak_rss_kib(worker.child.id()) as f64 / 1024.0;
    assert!(peak_mib < 64.0, "worker peak RSS {peak_mib:.1} MiB");
    assert_eq!(
        count(
            &db,
            "select count(*) from all_deliveries where status = 'delivered'"
        )
        .await,
        100,
        "only the capped endless answers count as delivered"
    );
}
