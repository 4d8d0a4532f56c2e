//! Test harness: a receiving server, subscriptions and events written through `store`,
//! and workers in-process or as real child processes.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};
use testkit::db::TestDb;

use shared::{
    config::{DatabaseUrl, Settings, WorkerConfig},
    crypto::SecretCipher,
    domain::{EventType, request_hash},
};
use store::{self as db, NewEvent, NewSubscription, PublishOutcome};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker::{WorkerOptions, http::Lookup};

pub use testkit::receiver::{Receiver, Reply};

/// Worker settings for tests: loopback allowed, fast polls and backoff, short leases.
pub fn worker_settings(database_url: &str) -> Settings {
    Settings {
        database_url: DatabaseUrl::new(database_url),
        allowed_destination_cidrs: Some("127.0.0.1/32".to_owned()),
        delivery_poll_interval_seconds: 0.25,
        delivery_backoff_base_seconds: 1.0,
        delivery_max_attempts: 5,
        delivery_timeout_seconds: 2.0,
        worker_lease_seconds: 5.0,
        worker_concurrency: 32,
        worker_batch_size: 16,
        worker_shutdown_grace_seconds: 5.0,
        ..Settings::default()
    }
}

/// An in-process worker.
pub struct InProcessWorker {
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessWorker {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub fn spawn_worker(settings: &Settings, lookup: Option<Arc<dyn Lookup>>) -> InProcessWorker {
    let config = WorkerConfig::from_settings(settings).unwrap();
    let pool = db::connect(&config.database, "ih-worker").unwrap();
    let shutdown = CancellationToken::new();
    let mut options = WorkerOptions::default();
    if let Some(lookup) = lookup {
        options.lookup = lookup;
    }
    let handle = tokio::spawn(worker::run(config, pool, shutdown.clone(), options));
    InProcessWorker { shutdown, handle }
}

/// A real `ih-worker` process.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn spawn(database_url: &str, worker_id: &str, extra: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ih-worker"));
        command
            .env_clear()
            .env("IH_DATABASE_URL", database_url)
            .env("IH_ALLOWED_DESTINATION_CIDRS", "127.0.0.1/32")
            .env("IH_WORKER_METRICS_ADDR", "127.0.0.1:0")
            .env("IH_WORKER_ID", worker_id)
            .env("IH_DELIVERY_POLL_INTERVAL_SECONDS", "0.25")
            .env("IH_DELIVERY_BACKOFF_BASE_SECONDS", "1")
            .env("IH_DELIVERY_TIMEOUT_SECONDS", "2")
            .env("IH_WORKER_LEASE_SECONDS", "5")
            .env("IH_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in extra {
            command.env(name, value);
        }
        Self {
            child: command.spawn().unwrap(),
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; returns whether it exited 0.
    pub async fn wait(&mut self, deadline: Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                started.elapsed() < deadline,
                "worker did not exit in {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a subscription with a known secret.
pub async fn subscribe(db: &TestDb, url: &str, secret: &str, events: &[&str]) -> Uuid {
    subscribe_sealed(db, &SecretCipher::plaintext(), url, secret, events).await
}

/// Creates a subscription with a known secret, stored sealed by `cipher`.
pub async fn subscribe_sealed(
    db: &TestDb,
    cipher: &SecretCipher,
    url: &str,
    secret: &str,
    events: &[&str],
) -> Uuid {
    let row = db::insert_subscription(
        &db.pool,
        cipher,
        &NewSubscription {
            id: Uuid::now_v7(),
            url: url.to_owned(),
            secret: secret.to_owned(),
            event_types: events.iter().map(|e| (*e).to_owned()).collect(),
            enabled: true,
            description: None,
            headers: BTreeMap::from([("x-team".to_owned(), "billing".to_owned())]),
            max_in_flight: None,
            rate_limit_per_second: None,
        },
    )
    .await
    .unwrap();
    row.id
}

/// Publishes events through the same path as the API; returns their ids.
pub async fn publish(db: &TestDb, event_type: &str, payloads: &[String]) -> Vec<Uuid> {
    publish_with(db, event_type, payloads, None).await
}

/// Publishes with the Slack fan-out of `slack_types` on, as the API does with a bot token.
pub async fn publish_with(
    db: &TestDb,
    event_type: &str,
    payloads: &[String],
    slack_types: Option<&[&str]>,
) -> Vec<Uuid> {
    publish_on_with(&db.pool, event_type, payloads, slack_types).await
}

/// Publishes on a database handle (for publishers on their own tasks).
pub async fn publish_on(pool: &db::Db, event_type: &str, payloads: &[String]) -> Vec<Uuid> {
    publish_on_with(pool, event_type, payloads, None).await
}

async fn publish_on_with(
    pool: &db::Db,
    event_type: &str,
    payloads: &[String],
    slack_types: Option<&[&str]>,
) -> Vec<Uuid> {
    let fanout = slack_types.map(|types| shared::config::SlackFanout {
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
    });
    let event_type = EventType::parse(event_type).unwrap();
    let mut ids = Vec::new();
    for chunk in payloads.chunks(1000) {
        let events: Vec<NewEvent> = chunk
            .iter()
            .map(|payload| NewEvent {
                id: Uuid::now_v7(),
                event_type: event_type.as_str().to_owned(),
                payload: payload.clone(),
                idempotency_key: None,
                request_hash: request_hash(&event_type, payload),
                traceparent: None,
            })
            .collect();
        match db::publish_events(pool, "test", &events, fanout.as_ref())
            .await
            .unwrap()
        {
            PublishOutcome::Stored(stored) => ids.extend(stored.into_iter().map(|event| event.id)),
            PublishOutcome::KeyReused { .. } => panic!("no keys were used"),
        }
    }
    db::notify_workers(pool).await.unwrap();
    ids
}

pub async fn count(db: &TestDb, sql: &'static str) -> i64 {
    db.fetch_i64(sql).await
}

/// Waits until exactly `expected` deliveries are `delivered`; false at the deadline.
pub async fn delivered_within(db: &TestDb, expected: i64, deadline: Duration) -> bool {
    eventually(deadline, || async {
        count(
            db,
            "select count(*) from all_deliveries where status = 'delivered'",
        )
        .await
            == expected
    })
    .await
}

pub use testkit::eventually;

/// A resolver with fixed answers, for SSRF tests: nothing is ever looked up for real.
pub struct FixedLookup(pub BTreeMap<String, Vec<IpAddr>>);

impl Lookup for FixedLookup {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let answer = self.0.get(&host).cloned();
        Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("unknown test host")) })
    }
}

/// Every dead letter, newest first (tests hold a handful).
pub async fn dead_letters(db: &TestDb) -> Vec<db::DeadLetterRow> {
    db::list_dead_letters(
        &db.pool,
        &db::DeadLetterFilter::default(),
        db::Page {
            cursor: None,
            limit: 100,
        },
    )
    .await
    .unwrap()
}

/// The sum of the values on a worker's `/metrics` of the series whose line starts with
/// `series` (a name for every series of a metric, or a name with its labels for one); `None`
/// when the endpoint does not answer or has no such series.
pub async fn scraped(metrics_port: u16, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
