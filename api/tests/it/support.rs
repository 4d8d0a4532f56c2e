//! The test harness: a database, the API serving on a free port, and a typed client.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared::config::{ApiConfig, DatabaseUrl, SecretString, Settings};
use testkit::db::TestDb;
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const PUBLISHER_TOKEN: &str = "publisher-token-0123456789abcdef";

/// A fresh test database with the schema applied.
pub async fn test_db() -> TestDb {
    TestDb::new().await
}

/// Settings every test starts from: tokens for both roles, loopback receivers allowed, short
/// database timeouts so outage tests answer quickly.
pub fn test_settings(database_url: &str) -> Settings {
    Settings {
        database_url: DatabaseUrl::new(database_url),
        api_tokens: Some(SecretString::new(format!(
            "admin:{ADMIN_TOKEN},publisher:{PUBLISHER_TOKEN}"
        ))),
        allowed_destination_cidrs: Some("127.0.0.0/8".to_owned()),
        database_acquire_timeout_seconds: 1.0,
        database_max_connections: 5,
        ..Settings::default()
    }
}

/// The API running in-process.
pub struct TestApp {
    pub db: TestDb,
    pub address: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the API with settings changed by `change`.
    pub async fn spawn_with(change: impl FnOnce(&mut Settings)) -> Self {
        let db = test_db().await;
        let mut settings = test_settings(&db.url);
        change(&mut settings);
        Self::start(db, settings).await
    }

    /// Starts the API on an existing database.
    pub async fn start(db: TestDb, settings: Settings) -> Self {
        let config = ApiConfig::from_settings(&settings).expect("test settings are valid");
        let pool = store::connect(&config.database, "ih-api-test").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(config, pool, listener, None, async move {
            let _ = signal.await;
        }));
        #[expect(
            clippy::disallowed_methods,
            reason = "a test client calling the API, not a delivery client"
        )]
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            db,
            address,
            client,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Sends a request with an optional token and JSON body; returns status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
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

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Creates a subscription and returns its JSON (with secret).
    pub async fn create_subscription(&self, url: &str, events: &[&str]) -> Value {
        let (status, body) = self
            .admin(
                Method::POST,
                "/api/v1/subscriptions",
                Some(serde_json::json!({"url": url, "events": events})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Publishes one event and returns its JSON answer.
    pub async fn publish(&self, event_type: &str, payload: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/events",
                Some(PUBLISHER_TOKEN),
                Some(serde_json::json!({"event_type": event_type, "payload": payload})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Posts `body` as it is, as JSON, with the publisher's token: for bodies no JSON
    /// serialiser would write.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(PUBLISHER_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub use testkit::eventually;

pub fn uuid(value: &Value) -> uuid::Uuid {
    value.as_str().unwrap().parse().unwrap()
}
