//! The hub in-process on a fresh database of either backend, and an HTTP client for its API.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared::config::{ApiConfig, DatabaseUrl, Settings, WorkerConfig};
use testkit::db::{Backend, TestDb};
use tokio_util::sync::CancellationToken;
use worker::WorkerOptions;

pub use testkit::{
    eventually,
    receiver::{Receiver, Reply},
};

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const PUBLISHER_TOKEN: &str = "publisher-token-0123456789abcdef";

/// Settings for a test hub: tokens, loopback receivers, fast polls, short backoff.
pub fn settings(database_url: &str) -> Settings {
    Settings {
        database_url: DatabaseUrl::new(database_url),
        api_tokens: Some(shared::config::SecretString::new(format!(
            "admin:{ADMIN_TOKEN},publisher:{PUBLISHER_TOKEN}"
        ))),
        allowed_destination_cidrs: Some("127.0.0.0/8".to_owned()),
        delivery_poll_interval_seconds: 0.5,
        delivery_backoff_base_seconds: 1.0,
        delivery_timeout_seconds: 2.0,
        worker_lease_seconds: 5.0,
        worker_shutdown_grace_seconds: 2.0,
        ..Settings::default()
    }
}

/// An HTTP client for the API under test.
pub fn client() -> reqwest::Client {
    #[expect(
        clippy::disallowed_methods,
        reason = "a test client calling the API, not a delivery client"
    )]
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `ih` running in this process on a fresh database.
pub struct Hub {
    pub db: TestDb,
    pub address: SocketAddr,
    client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Hub {
    /// Starts the hub with settings changed by `change`.
    pub async fn start(backend: Backend, change: impl FnOnce(&mut Settings)) -> Self {
        let db = TestDb::on(backend).await;
        let mut settings = settings(&db.url);
        change(&mut settings);
        let api_config = ApiConfig::from_settings(&settings).unwrap();
        let worker_config = WorkerConfig::from_settings(&settings).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // the test's database handle is the hub's: on SQLite, wake-ups pass through it
        let handle = tokio::spawn(hub::run(
            api_config,
            worker_config,
            db.pool.clone(),
            listener,
            None,
            shutdown.clone(),
            WorkerOptions::default(),
        ));
        let client = client();
        Self {
            db,
            address,
            client,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Sends a request as the admin; returns the status and the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(ADMIN_TOKEN, method, path, body, None).await
    }

    /// Posts as the publisher, with an `Idempotency-Key` when given.
    pub async fn publisher_post(
        &self,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.send(
            PUBLISHER_TOKEN,
            Method::POST,
            path,
            Some(body),
            idempotency_key,
        )
        .await
    }

    async fn send(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}/api/v1{path}", self.address))
            .bearer_auth(token);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// Creates a subscription; returns its id and secret.
    pub async fn subscribe(&self, url: &str, events: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/subscriptions",
                Some(serde_json::json!({"url": url, "events": events})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Publishes one event as the publisher; returns the answer.
    pub async fn publish(&self, event_type: &str, payload: Value, key: Option<&str>) -> Value {
        let (status, body) = self.publish_raw(event_type, payload, key).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    pub async fn publish_raw(
        &self,
        event_type: &str,
        payload: Value,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.publisher_post(
            "/events",
            serde_json::json!({"event_type": event_type, "payload": payload}),
            key,
        )
        .await
    }

    /// Waits until `path` lists `count` items in `data`.
    pub async fn wait_for_listing(&self, path: &str, count: usize) -> bool {
        eventually(Duration::from_secs(30), || async {
            self.get(path).await["data"]
                .as_array()
                .is_some_and(|data| data.len() == count)
        })
        .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
