//! Typed configuration shared by both binaries.
//!
//! Layers, later wins: compiled defaults ([`Settings::default`]) → an optional TOML file →
//! `IH_*` environment variables → command-line flags. Both binaries read the same
//! environment (one ConfigMap serves both): a variable meant for the other binary is ignored,
//! an unknown `IH_*` variable is reported by [`Loaded::unknown_variables`] so the binary can
//! warn about it. Validation ([`ApiConfig::from_settings`], [`WorkerConfig::from_settings`])
//! lists every problem at once.

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{auth::ApiTokens, domain::EventType, url_policy::DestinationPolicy};

/// Every `IH_*` variable either binary understands; anything else with the prefix is warned
/// about at start.
pub const KNOWN_VARIABLES: &[&str] = &[
    "IH_CONFIG_FILE",
    "IH_DATABASE_URL",
    "IH_DATABASE_URL_SYNC",
    "IH_DATABASE_LISTEN_URL",
    "IH_DATABASE_MAX_CONNECTIONS",
    "IH_DATABASE_ACQUIRE_TIMEOUT_SECONDS",
    "IH_API_ADDR",
    "IH_WORKER_METRICS_ADDR",
    "IH_AUTH_DISABLED",
    "IH_API_TOKENS",
    "IH_ALLOW_PRIVATE_DESTINATIONS",
    "IH_ALLOWED_DESTINATION_CIDRS",
    "IH_DELIVERY_POLL_INTERVAL_SECONDS",
    "IH_DELIVERY_MAX_ATTEMPTS",
    "IH_DELIVERY_BACKOFF_BASE_SECONDS",
    "IH_DELIVERY_BACKOFF_MAX_SECONDS",
    "IH_DELIVERY_TIMEOUT_SECONDS",
    "IH_RETRY_AFTER_MAX_SECONDS",
    "IH_SLACK_BOT_TOKEN",
    "IH_SLACK_DEFAULT_CHANNEL",
    "IH_SLACK_API_BASE_URL",
    "IH_SLACK_EVENT_TYPES",
    "IH_SLACK_ALLOWED_CHANNELS",
    "IH_LOG_LEVEL",
    "IH_LOG_FORMAT",
    "IH_ENCRYPTION_KEYS",
    "IH_MAX_PAYLOAD_BYTES",
    "IH_MAX_BATCH_BYTES",
    "IH_WORKER_CONCURRENCY",
    "IH_WORKER_BATCH_SIZE",
    "IH_WORKER_LEASE_SECONDS",
    "IH_WORKER_ID",
    "IH_WORKER_SHUTDOWN_GRACE_SECONDS",
    "IH_SUBSCRIPTION_MAX_IN_FLIGHT",
    "IH_CIRCUIT_BREAKER_FAILURES",
    "IH_CIRCUIT_BREAKER_WINDOW_SECONDS",
    "IH_CIRCUIT_BREAKER_PROBE_SECONDS",
    "IH_SUBSCRIPTION_DISABLE_AFTER_HOURS",
    "IH_OTLP_ENDPOINT",
    "IH_OTEL_SAMPLE_RATIO",
    "IH_API_MAX_IN_FLIGHT",
    "IH_API_BODY_READ_TIMEOUT_SECONDS",
    "IH_METRICS_MAX_EVENT_TYPES",
    "IH_RETENTION",
    "IH_RETENTION_DAYS",
    "IH_DEAD_LETTER_RETENTION",
];

/// Highest in-flight limit of one subscription, configured or its own.
pub const MAX_SUBSCRIPTION_IN_FLIGHT: u32 = 10_000;

/// A string that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret itself; call sites are the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Self)
    }
}

/// A database URL whose `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it names an SQLite file (`sqlite:` or `sqlite://`) rather than a Postgres server.
    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// Returns the URL with any password replaced by `***`, for logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                let _ignored = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "<unparseable url>".to_owned(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Self)
    }
}

/// Accepts a string, or a number or boolean written where a string was meant: figment parses
/// `IH_SLACK_DEFAULT_CHANNEL=123` as a number, which is still a valid channel.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Text(text) => text,
        Scalar::Unsigned(number) => number.to_string(),
        Scalar::Signed(number) => number.to_string(),
        Scalar::Float(number) => number.to_string(),
        Scalar::Bool(flag) => flag.to_string(),
    })
}

fn lenient_optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

/// The raw settings, one field per `IH_*` variable (the variable name, lowercased, without the
/// prefix). Validated views are [`ApiConfig`] and [`WorkerConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `IH_DATABASE_URL`.
    pub database_url: DatabaseUrl,
    /// `IH_DATABASE_URL_SYNC`: accepted for compatibility and ignored (there is no separate
    /// synchronous driver in Rust).
    pub database_url_sync: Option<DatabaseUrl>,
    /// `IH_DATABASE_LISTEN_URL`: a direct URL for the worker's LISTEN connection when the pool
    /// goes through a transaction-pooling proxy.
    pub database_listen_url: Option<DatabaseUrl>,
    /// `IH_DATABASE_MAX_CONNECTIONS`: pool size per process.
    pub database_max_connections: u32,
    /// `IH_DATABASE_ACQUIRE_TIMEOUT_SECONDS`: how long a request waits for a connection before
    /// it is answered 503.
    pub database_acquire_timeout_seconds: f64,
    /// `IH_API_ADDR`; unset, `0.0.0.0:8000`, or `127.0.0.1:8000` while authentication is
    /// disabled (a tokenless API is nobody else's to reach).
    #[serde(deserialize_with = "lenient_optional_string")]
    pub api_addr: Option<String>,
    /// `IH_WORKER_METRICS_ADDR`.
    pub worker_metrics_addr: String,
    /// `IH_AUTH_DISABLED`: serve the API without tokens (local development only).
    pub auth_disabled: bool,
    /// `IH_API_TOKENS`: `role:token` pairs, comma separated.
    pub api_tokens: Option<SecretString>,
    /// `IH_ALLOW_PRIVATE_DESTINATIONS`.
    pub allow_private_destinations: bool,
    /// `IH_ALLOWED_DESTINATION_CIDRS`: comma-separated CIDRs allowed despite being private.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub allowed_destination_cidrs: Option<String>,
    /// `IH_DELIVERY_POLL_INTERVAL_SECONDS`.
    pub delivery_poll_interval_seconds: f64,
    /// `IH_DELIVERY_MAX_ATTEMPTS`.
    pub delivery_max_attempts: u32,
    /// `IH_DELIVERY_BACKOFF_BASE_SECONDS`.
    pub delivery_backoff_base_seconds: f64,
    /// `IH_DELIVERY_BACKOFF_MAX_SECONDS`.
    pub delivery_backoff_max_seconds: f64,
    /// `IH_DELIVERY_TIMEOUT_SECONDS`.
    pub delivery_timeout_seconds: f64,
    /// `IH_RETRY_AFTER_MAX_SECONDS`.
    pub retry_after_max_seconds: f64,
    /// `IH_SLACK_BOT_TOKEN`: enables the Slack connector.
    pub slack_bot_token: Option<SecretString>,
    /// `IH_SLACK_DEFAULT_CHANNEL`.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub slack_default_channel: Option<String>,
    /// `IH_SLACK_API_BASE_URL`.
    pub slack_api_base_url: String,
    /// `IH_SLACK_EVENT_TYPES`: comma-separated event types that also go to Slack.
    #[serde(deserialize_with = "lenient_string")]
    pub slack_event_types: String,
    /// `IH_SLACK_ALLOWED_CHANNELS`.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub slack_allowed_channels: Option<String>,
    /// `IH_LOG_LEVEL`: a level or an `EnvFilter` directive.
    pub log_level: String,
    /// `IH_LOG_FORMAT`: `json` or `pretty`.
    pub log_format: String,
    /// `IH_ENCRYPTION_KEYS`: `key_id:base64` pairs; the first encrypts.
    pub encryption_keys: Option<SecretString>,
    /// `IH_MAX_PAYLOAD_BYTES`: the largest `POST /events` body.
    pub max_payload_bytes: usize,
    /// `IH_MAX_BATCH_BYTES`: the largest `POST /events/batch` body.
    pub max_batch_bytes: usize,
    /// `IH_WORKER_CONCURRENCY` (flag `--concurrency`).
    pub worker_concurrency: usize,
    /// `IH_WORKER_BATCH_SIZE` (flag `--batch-size`).
    pub worker_batch_size: usize,
    /// `IH_WORKER_LEASE_SECONDS` (flag `--lease-seconds`).
    pub worker_lease_seconds: f64,
    /// `IH_WORKER_ID` (flag `--worker-id`); defaults to host name and pid.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub worker_id: Option<String>,
    /// `IH_WORKER_SHUTDOWN_GRACE_SECONDS`: how long in-flight requests may finish after
    /// SIGTERM before their leases are handed back.
    pub worker_shutdown_grace_seconds: f64,
    /// `IH_SUBSCRIPTION_MAX_IN_FLIGHT`: most requests in flight to one subscription at once,
    /// across every worker, unless the subscription has its own `max_in_flight`. The default
    /// leaves a quarter of a default worker's slots to the other subscriptions, so one slow
    /// endpoint cannot hold them all.
    pub subscription_max_in_flight: u32,
    /// `IH_CIRCUIT_BREAKER_FAILURES`: failed attempts within the window that open a
    /// subscription's circuit.
    pub circuit_breaker_failures: u32,
    /// `IH_CIRCUIT_BREAKER_WINDOW_SECONDS`: the time those failures must fall within.
    pub circuit_breaker_window_seconds: f64,
    /// `IH_CIRCUIT_BREAKER_PROBE_SECONDS`: the wait before an open circuit's first probe; each
    /// failed probe doubles it, up to 300 s.
    pub circuit_breaker_probe_seconds: f64,
    /// `IH_SUBSCRIPTION_DISABLE_AFTER_HOURS`: how long a subscription may fail without a
    /// success before it is disabled (its pending deliveries are kept).
    pub subscription_disable_after_hours: f64,
    /// `IH_OTLP_ENDPOINT` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`): OTLP/HTTP base URL;
    /// traces are exported only when set.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub otlp_endpoint: Option<String>,
    /// `IH_OTEL_SAMPLE_RATIO`: fraction of new traces sampled (children follow their parent).
    pub otel_sample_ratio: f64,
    /// `IH_API_MAX_IN_FLIGHT`: most `/api/v1` requests one API process serves at once; more
    /// are answered 503 at once instead of queueing (memory stays bounded under overload).
    pub api_max_in_flight: usize,
    /// `IH_API_BODY_READ_TIMEOUT_SECONDS`: how long a request body may take to arrive before
    /// the request is answered 408.
    pub api_body_read_timeout_seconds: f64,
    /// `IH_METRICS_MAX_EVENT_TYPES`: distinct `event_type` label values per process; later
    /// types are counted under `other` (publishers choose the types, so they must not choose
    /// the size of `/metrics`).
    pub metrics_max_event_types: usize,
    /// `IH_RETENTION`: how long finished work is kept, a duration like `30d`, `12h`, `2m`.
    #[serde(deserialize_with = "lenient_optional_string")]
    pub retention: Option<String>,
    /// `IH_RETENTION_DAYS`: the same in days, read when `IH_RETENTION` is unset.
    pub retention_days: Option<f64>,
    /// `IH_DEAD_LETTER_RETENTION`: how long a dead letter not yet replayed (and its event) is
    /// kept.
    #[serde(deserialize_with = "lenient_string")]
    pub dead_letter_retention: String,
}

/// The default database of `make run` and of a fresh checkout.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/integrations_hub";

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: DatabaseUrl::new(DEFAULT_DATABASE_URL),
            database_url_sync: None,
            database_listen_url: None,
            database_max_connections: 10,
            database_acquire_timeout_seconds: 3.0,
            api_addr: None,
            worker_metrics_addr: "0.0.0.0:9091".to_owned(),
            auth_disabled: false,
            api_tokens: None,
            allow_private_destinations: false,
            allowed_destination_cidrs: None,
            delivery_poll_interval_seconds: 2.0,
            delivery_max_attempts: 5,
            delivery_backoff_base_seconds: 2.0,
            delivery_backoff_max_seconds: 3600.0,
            delivery_timeout_seconds: 10.0,
            retry_after_max_seconds: 3600.0,
            slack_bot_token: None,
            slack_default_channel: None,
            slack_api_base_url: "https://slack.com/api".to_owned(),
            slack_event_types: "request_submitted".to_owned(),
            slack_allowed_channels: None,
            log_level: "info".to_owned(),
            log_format: "json".to_owned(),
            encryption_keys: None,
            max_payload_bytes: 256 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            worker_concurrency: 512,
            worker_batch_size: 512,
            worker_lease_seconds: 30.0,
            worker_id: None,
            worker_shutdown_grace_seconds: 25.0,
            subscription_max_in_flight: 384,
            circuit_breaker_failures: 20,
            circuit_breaker_window_seconds: 60.0,
            circuit_breaker_probe_seconds: 5.0,
            subscription_disable_after_hours: 120.0,
            otlp_endpoint: None,
            otel_sample_ratio: 1.0,
            api_max_in_flight: 256,
            api_body_read_timeout_seconds: 10.0,
            metrics_max_event_types: 100,
            retention: None,
            retention_days: None,
            dead_letter_retention: "90d".to_owned(),
        }
    }
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One sentence per problem.
    pub problems: Vec<String>,
}

/// Settings as loaded, with the `IH_*` variables nobody understands.
#[derive(Debug)]
pub struct Loaded {
    /// The merged settings.
    pub settings: Settings,
    /// `IH_*` variables in the environment that neither binary reads.
    pub unknown_variables: Vec<String>,
}

impl Loaded {
    /// Logs each `IH_*` variable no binary reads (a typo, or a setting of another version);
    /// called once logging is set up.
    pub fn warn_unknown_variables(&self) {
        for variable in &self.unknown_variables {
            tracing::warn!(variable = %variable, "unknown IH_ variable ignored");
        }
    }
}

/// Loads settings: defaults, then `file` (or `IH_CONFIG_FILE`) when given, then `IH_*`
/// variables, then `overrides` (the binary's flags; `None` fields must be skipped when
/// serialising so they do not mask the layers below).
///
/// # Errors
/// Returns [`ConfigError`] when a layer cannot be read or a value has the wrong type.
pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<Loaded, ConfigError> {
    load_with_database(file, overrides, DEFAULT_DATABASE_URL)
}

/// [`load`] with another default for `IH_DATABASE_URL` (the embedded mode's SQLite file).
///
/// # Errors
/// As [`load`].
pub fn load_with_database(
    file: Option<&Path>,
    overrides: &impl Serialize,
    default_database_url: &str,
) -> Result<Loaded, ConfigError> {
    let environment: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("IH_"))
        .collect();
    let file_from_env = environment
        .iter()
        .find(|(name, _)| name == "IH_CONFIG_FILE")
        .map(|(_, value)| std::path::PathBuf::from(value));
    let file = file.map(Path::to_path_buf).or(file_from_env);

    let mut figment = Figment::from(Serialized::default("database_url", default_database_url));
    if let Some(path) = &file {
        if !path.exists() {
            return Err(ConfigError {
                problems: vec![format!("config file {} does not exist", path.display())],
            });
        }
        figment = figment.merge(Toml::file(path));
    }
    let figment = figment
        .merge(Env::prefixed("IH_").ignore(&["CONFIG_FILE"]))
        .merge(Serialized::defaults(overrides));
    let mut settings: Settings = figment.extract().map_err(|error| ConfigError {
        problems: error.into_iter().map(|e| e.to_string()).collect(),
    })?;
    if settings.otlp_endpoint.is_none() {
        // the standard OpenTelemetry variable, for deployments that set it for every service
        settings.otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|endpoint| !endpoint.trim().is_empty());
    }
    let unknown_variables = environment
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !KNOWN_VARIABLES.contains(&name.as_str()))
        .collect();
    Ok(Loaded {
        settings,
        unknown_variables,
    })
}

/// Connection settings of the database pool.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// The pool's URL.
    pub url: DatabaseUrl,
    /// The LISTEN connection's URL (defaults to `url`).
    pub listen_url: DatabaseUrl,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
}

/// Where a `request_submitted`-style event also goes to Slack: the API creates a `slack`
/// delivery for these event types when a bot token is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackFanout {
    /// Event types that get a Slack delivery.
    pub event_types: Vec<String>,
}

/// Request size limits of the API.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Largest `POST /events` body.
    pub max_payload_bytes: usize,
    /// Largest `POST /events/batch` body.
    pub max_batch_bytes: usize,
    /// Longest a request body may take to arrive.
    pub body_read_timeout: Duration,
}

/// How the API authenticates callers.
#[derive(Clone, Debug)]
pub enum AuthConfig {
    /// Every request must carry one of these tokens.
    Tokens(ApiTokens),
    /// Every request is treated as an admin (`IH_AUTH_DISABLED=true`).
    Disabled,
}

/// The validated configuration of `ih-api`.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Database pool.
    pub database: DatabaseConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Which subscription URLs are accepted.
    pub destination_policy: DestinationPolicy,
    /// Body limits.
    pub limits: ApiLimits,
    /// Slack fan-out, when the connector is configured.
    pub slack: Option<SlackFanout>,
    /// Trace export, when an endpoint is configured.
    pub tracing: Option<crate::telemetry::TracingConfig>,
    /// Most `/api/v1` requests served at once.
    pub max_in_flight: usize,
    /// Seals subscription secrets before they are stored.
    pub secrets: crate::crypto::SecretCipher,
    /// Distinct `event_type` label values before the `other` bucket.
    pub metrics_max_event_types: usize,
}

/// The API's port when `IH_API_ADDR` is unset.
pub const DEFAULT_API_PORT: u16 = 8000;

/// The validated configuration of `ih-worker`.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Address of `/metrics` and `/health`.
    pub metrics_addr: SocketAddr,
    /// Database pool and listener.
    pub database: DatabaseConfig,
    /// This replica's name in `leased_by`.
    pub worker_id: String,
    /// Most deliveries in flight at once.
    pub concurrency: usize,
    /// Most deliveries leased per statement.
    pub batch_size: usize,
    /// How long a lease lasts before another worker may take the row.
    pub lease: Duration,
    /// The safety-net poll interval.
    pub poll_interval: Duration,
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Base of the exponential backoff.
    pub backoff_base_seconds: f64,
    /// Cap of a single backoff delay.
    pub backoff_max: Duration,
    /// Cap of an honoured `Retry-After`.
    pub retry_after_max: Duration,
    /// Timeout of one delivery request.
    pub delivery_timeout: Duration,
    /// Which resolved addresses may be dialled.
    pub destination_policy: DestinationPolicy,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Most requests in flight to one subscription.
    pub subscription_max_in_flight: u32,
    /// When a circuit opens and is probed, and when a failing subscription is disabled.
    pub endpoint_health: EndpointHealth,
    /// The Slack connector, when configured.
    pub slack: Option<SlackConnector>,
    /// Trace export, when an endpoint is configured.
    pub tracing: Option<crate::telemetry::TracingConfig>,
    /// Opens the stored subscription secrets.
    pub secrets: crate::crypto::SecretCipher,
    /// What retention keeps, and for how long.
    pub retention: Retention,
}

/// When a subscription's circuit opens, how it is probed, and when a failing subscription is
/// disabled. A failure is an attempt that did not deliver; a success ends the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointHealth {
    /// Failures within [`window`](Self::window) that open the circuit.
    pub failures: u32,
    /// The time the failures must fall within.
    pub window: Duration,
    /// The delay before the first probe; each failed probe doubles it, up to
    /// [`MAX_PROBE_INTERVAL`].
    pub first_probe: Duration,
    /// How long a subscription may fail, without a success, before it is disabled.
    pub disable_after: Duration,
}

/// The longest wait between two probes of an open circuit.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// How long finished work is kept (`IH_RETENTION`, `IH_DEAD_LETTER_RETENTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events and everything finished about them.
    pub finished: Duration,
    /// Dead letters not yet replayed, and so their events.
    pub dead_letters: Duration,
}

/// `IH_RETENTION` when neither it nor `IH_RETENTION_DAYS` is set.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

impl Retention {
    /// Validates the retention settings (read by the worker and by `ih-migrate prune`).
    ///
    /// # Errors
    /// Returns every problem found.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let retention = retention(&mut problems, settings);
        problems.finish(retention)
    }

    /// How much time one partition of the history holds: a day, an hour, a minute or 10
    /// seconds, the widest that is at most a quarter of the retention. Work is removed a whole
    /// partition at a time, so it stays for up to the retention plus this; a narrower
    /// partition would only add tables.
    #[must_use]
    pub fn partition_width(&self) -> Duration {
        const DAY: Duration = Duration::from_secs(86_400);
        const HOUR: Duration = Duration::from_secs(3_600);
        const MINUTE: Duration = Duration::from_secs(60);
        if self.finished >= DAY * 4 {
            DAY
        } else if self.finished >= HOUR * 4 {
            HOUR
        } else if self.finished >= MINUTE * 4 {
            MINUTE
        } else {
            Duration::from_secs(10)
        }
    }
}

/// Parses a duration written as a whole number and a unit: `s`, `m`, `h` or `d` (`30d`,
/// `90m`); a bare number is seconds.
#[must_use]
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .checked_mul(unit_seconds)
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}

fn retention(problems: &mut Problems, settings: &Settings) -> Retention {
    let finished = match (settings.retention.as_deref(), settings.retention_days) {
        (Some(text), _) => parse_duration(text).unwrap_or_else(|| {
            problems.push(format!(
                "IH_RETENTION: `{text}` is not a positive duration like 30d, 12h or 90m"
            ));
            DEFAULT_RETENTION
        }),
        (None, Some(days)) => {
            if days.is_finite() && days > 0.0 && days < 100_000.0 {
                Duration::from_secs_f64(days * 86_400.0)
            } else {
                problems.push(format!(
                    "IH_RETENTION_DAYS: must be a positive number of days, got {days}"
                ));
                DEFAULT_RETENTION
            }
        }
        (None, None) => DEFAULT_RETENTION,
    };
    let dead_letters = parse_duration(&settings.dead_letter_retention).unwrap_or_else(|| {
        problems.push(format!(
            "IH_DEAD_LETTER_RETENTION: `{}` is not a positive duration like 90d",
            settings.dead_letter_retention
        ));
        DEFAULT_RETENTION
    });
    Retention {
        finished,
        dead_letters,
    }
}

/// The Slack connector's settings, for the worker.
#[derive(Clone, Debug)]
pub struct SlackConnector {
    /// The bot token.
    pub bot_token: SecretString,
    /// Channel when the payload names none.
    pub default_channel: Option<String>,
    /// API base, e.g. `https://slack.com/api`.
    pub api_base_url: String,
    /// Channels a payload may name; empty means any.
    pub allowed_channels: Vec<String>,
}

/// Collects problems while validating, so the binary can list all of them at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

fn parse_addr(problems: &mut Problems, variable: &str, raw: &str) -> SocketAddr {
    raw.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "{variable}: `{raw}` is not a socket address like 0.0.0.0:8000"
        ));
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

fn positive_seconds(problems: &mut Problems, variable: &str, value: f64) -> Duration {
    if value.is_finite() && value > 0.0 && value < 1.0e9 {
        Duration::from_secs_f64(value)
    } else {
        problems.push(format!(
            "{variable}: must be a positive number of seconds, got {value}"
        ));
        Duration::from_secs(1)
    }
}

/// `value` seconds, which must lie in `bounds`.
fn bounded_seconds(
    problems: &mut Problems,
    variable: &str,
    value: f64,
    bounds: std::ops::RangeInclusive<f64>,
) -> Duration {
    if bounds.contains(&value) {
        Duration::from_secs_f64(value)
    } else {
        problems.push(format!(
            "{variable}: must be between {} and {} seconds, got {value}",
            bounds.start(),
            bounds.end()
        ));
        Duration::from_secs_f64(*bounds.start())
    }
}

fn database_config(problems: &mut Problems, settings: &Settings) -> DatabaseConfig {
    for (variable, url) in [
        ("IH_DATABASE_URL", Some(&settings.database_url)),
        (
            "IH_DATABASE_LISTEN_URL",
            settings.database_listen_url.as_ref(),
        ),
    ] {
        if let Some(url) = url {
            let postgres = url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://");
            if !postgres && !url.is_sqlite() {
                problems.push(format!(
                    "{variable}: must be a postgres://, postgresql:// or sqlite:// URL, got {}",
                    url.redacted()
                ));
            }
        }
    }
    if settings.database_url.is_sqlite() {
        if settings.database_url.expose().contains(":memory:")
            || settings.database_url.expose().contains("mode=memory")
        {
            problems.push(
                "IH_DATABASE_URL: an in-memory SQLite database keeps nothing across connections; name a file, e.g. sqlite://data/integrations-hub.db",
            );
        }
        if settings.database_listen_url.is_some() {
            problems.push(
                "IH_DATABASE_LISTEN_URL: LISTEN/NOTIFY needs Postgres; on SQLite the workers of the same process are woken directly and others poll (IH_DELIVERY_POLL_INTERVAL_SECONDS)",
            );
        }
    } else if settings
        .database_listen_url
        .as_ref()
        .is_some_and(DatabaseUrl::is_sqlite)
    {
        problems.push("IH_DATABASE_LISTEN_URL: must be a Postgres URL (LISTEN/NOTIFY)");
    }
    if settings.database_max_connections == 0 {
        problems.push("IH_DATABASE_MAX_CONNECTIONS: must be at least 1");
    }
    let acquire_timeout = positive_seconds(
        problems,
        "IH_DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        settings.database_acquire_timeout_seconds,
    );
    DatabaseConfig {
        url: settings.database_url.clone(),
        listen_url: settings
            .database_listen_url
            .clone()
            .unwrap_or_else(|| settings.database_url.clone()),
        max_connections: settings.database_max_connections,
        acquire_timeout,
    }
}

fn destination_policy(problems: &mut Problems, settings: &Settings) -> DestinationPolicy {
    match DestinationPolicy::from_settings(
        settings.allow_private_destinations,
        settings.allowed_destination_cidrs.as_deref(),
    ) {
        Ok(policy) => policy,
        Err(error) => {
            problems.push(format!("IH_ALLOWED_DESTINATION_CIDRS: {error}"));
            DestinationPolicy::default()
        }
    }
}

fn secret_cipher(problems: &mut Problems, settings: &Settings) -> crate::crypto::SecretCipher {
    let Some(raw) = settings.encryption_keys.as_ref() else {
        return crate::crypto::SecretCipher::plaintext();
    };
    match crate::crypto::SecretCipher::parse(raw.expose()) {
        Ok(cipher) => cipher,
        Err(error) => {
            problems.push(format!("IH_ENCRYPTION_KEYS: {error}"));
            crate::crypto::SecretCipher::plaintext()
        }
    }
}

fn slack_fanout(problems: &mut Problems, settings: &Settings) -> Option<SlackFanout> {
    let mut event_types = Vec::new();
    for raw in settings.slack_event_types.split(',').map(str::trim) {
        if raw.is_empty() {
            continue;
        }
        match EventType::parse(raw) {
            Ok(event_type) => event_types.push(event_type.as_str().to_owned()),
            Err(error) => problems.push(format!("IH_SLACK_EVENT_TYPES: {error}")),
        }
    }
    settings
        .slack_bot_token
        .as_ref()
        .filter(|token| !token.expose().trim().is_empty())
        .map(|_| SlackFanout { event_types })
}

fn tracing_config(
    problems: &mut Problems,
    settings: &Settings,
) -> Option<crate::telemetry::TracingConfig> {
    if !(0.0..=1.0).contains(&settings.otel_sample_ratio) {
        problems.push("IH_OTEL_SAMPLE_RATIO: must be between 0 and 1");
    }
    let endpoint = settings.otlp_endpoint.as_deref()?.trim();
    let valid = url::Url::parse(endpoint).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !valid {
        problems.push(format!(
            "IH_OTLP_ENDPOINT: `{endpoint}` is not an http(s) URL"
        ));
        return None;
    }
    Some(crate::telemetry::TracingConfig {
        endpoint: endpoint.to_owned(),
        sample_ratio: settings.otel_sample_ratio.clamp(0.0, 1.0),
    })
}

fn common_checks(problems: &mut Problems, settings: &Settings) {
    if !matches!(settings.log_format.as_str(), "json" | "pretty") {
        problems.push(format!(
            "IH_LOG_FORMAT: must be `json` or `pretty`, got `{}`",
            settings.log_format
        ));
    }
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&settings.log_level) {
        problems.push(format!("IH_LOG_LEVEL: {error}"));
    }
}

impl ApiConfig {
    /// Validates the settings `ih-api` uses.
    ///
    /// # Errors
    /// Returns every problem found.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        common_checks(&mut problems, settings);
        let addr = match settings.api_addr.as_deref() {
            Some(raw) => parse_addr(&mut problems, "IH_API_ADDR", raw),
            None if settings.auth_disabled => SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT)),
        };
        let body_read_timeout = positive_seconds(
            &mut problems,
            "IH_API_BODY_READ_TIMEOUT_SECONDS",
            settings.api_body_read_timeout_seconds,
        );
        if settings.metrics_max_event_types == 0 {
            problems.push("IH_METRICS_MAX_EVENT_TYPES: must be at least 1");
        }
        let database = database_config(&mut problems, settings);
        let destination_policy = destination_policy(&mut problems, settings);
        let slack = slack_fanout(&mut problems, settings);
        let tracing = tracing_config(&mut problems, settings);
        let secrets = secret_cipher(&mut problems, settings);
        if settings.api_max_in_flight == 0 {
            problems.push("IH_API_MAX_IN_FLIGHT: must be at least 1");
        }

        let tokens = match settings
            .api_tokens
            .as_ref()
            .map(|raw| ApiTokens::parse(raw.expose()))
        {
            Some(Ok(tokens)) => tokens,
            Some(Err(error)) => {
                problems.push(format!("IH_API_TOKENS: {error}"));
                ApiTokens::default()
            }
            None => ApiTokens::default(),
        };
        let auth = if settings.auth_disabled {
            AuthConfig::Disabled
        } else if tokens.is_empty() {
            problems.push(
                "IH_API_TOKENS: no API token is configured; set IH_API_TOKENS=\"admin:<token>\" \
                 or, for local development only, IH_AUTH_DISABLED=true",
            );
            AuthConfig::Disabled
        } else {
            AuthConfig::Tokens(tokens)
        };

        const MIN_BODY_BYTES: usize = 1024;
        if settings.max_payload_bytes < MIN_BODY_BYTES {
            problems.push(format!(
                "IH_MAX_PAYLOAD_BYTES: must be at least {MIN_BODY_BYTES}"
            ));
        }
        if settings.max_batch_bytes < settings.max_payload_bytes {
            problems.push("IH_MAX_BATCH_BYTES: must be at least IH_MAX_PAYLOAD_BYTES");
        }
        let limits = ApiLimits {
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_bytes: settings.max_batch_bytes,
            body_read_timeout,
        };
        problems.finish(Self {
            addr,
            database,
            auth,
            destination_policy,
            limits,
            slack,
            tracing,
            max_in_flight: settings.api_max_in_flight,
            secrets,
            metrics_max_event_types: settings.metrics_max_event_types,
        })
    }
}

/// Time a completion may wait in the worker's buffer before it is flushed.
pub const COMPLETION_FLUSH_INTERVAL: Duration = Duration::from_millis(25);

impl WorkerConfig {
    /// Validates the settings `ih-worker` uses.
    ///
    /// # Errors
    /// Returns every problem found.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        common_checks(&mut problems, settings);
        let metrics_addr = parse_addr(
            &mut problems,
            "IH_WORKER_METRICS_ADDR",
            &settings.worker_metrics_addr,
        );
        let database = database_config(&mut problems, settings);
        let destination_policy = destination_policy(&mut problems, settings);
        let lease = positive_seconds(
            &mut problems,
            "IH_WORKER_LEASE_SECONDS",
            settings.worker_lease_seconds,
        );
        let poll_interval = positive_seconds(
            &mut problems,
            "IH_DELIVERY_POLL_INTERVAL_SECONDS",
            settings.delivery_poll_interval_seconds,
        );
        let delivery_timeout = positive_seconds(
            &mut problems,
            "IH_DELIVERY_TIMEOUT_SECONDS",
            settings.delivery_timeout_seconds,
        );
        let backoff_max = positive_seconds(
            &mut problems,
            "IH_DELIVERY_BACKOFF_MAX_SECONDS",
            settings.delivery_backoff_max_seconds,
        );
        let retry_after_max = positive_seconds(
            &mut problems,
            "IH_RETRY_AFTER_MAX_SECONDS",
            settings.retry_after_max_seconds,
        );
        if !(settings.delivery_backoff_base_seconds.is_finite()
            && settings.delivery_backoff_base_seconds >= 1.0)
        {
            problems.push("IH_DELIVERY_BACKOFF_BASE_SECONDS: must be at least 1");
        }
        if settings.delivery_max_attempts == 0 || settings.delivery_max_attempts > 100 {
            problems.push("IH_DELIVERY_MAX_ATTEMPTS: must be between 1 and 100");
        }
        if settings.worker_concurrency == 0 || settings.worker_concurrency > 10_000 {
            problems.push("IH_WORKER_CONCURRENCY: must be between 1 and 10000");
        }
        if settings.worker_batch_size == 0 || settings.worker_batch_size > 1_000 {
            problems.push("IH_WORKER_BATCH_SIZE: must be between 1 and 1000");
        }
        // A lease shorter than a request plus its flush would let a second worker take a row
        // that is still being sent.
        let minimum_lease = (delivery_timeout + COMPLETION_FLUSH_INTERVAL) * 2;
        if lease < minimum_lease {
            problems.push(format!(
                "IH_WORKER_LEASE_SECONDS: must be at least 2 × (IH_DELIVERY_TIMEOUT_SECONDS + {} s) = {:.1} s",
                COMPLETION_FLUSH_INTERVAL.as_secs_f64(),
                minimum_lease.as_secs_f64()
            ));
        }
        let shutdown_grace = positive_seconds(
            &mut problems,
            "IH_WORKER_SHUTDOWN_GRACE_SECONDS",
            settings.worker_shutdown_grace_seconds,
        );
        if !(1..=MAX_SUBSCRIPTION_IN_FLIGHT).contains(&settings.subscription_max_in_flight) {
            problems.push(format!(
                "IH_SUBSCRIPTION_MAX_IN_FLIGHT: must be between 1 and {MAX_SUBSCRIPTION_IN_FLIGHT}"
            ));
        }
        let endpoint_health = endpoint_health(&mut problems, settings);
        let slack = settings
            .slack_bot_token
            .clone()
            .filter(|token| !token.expose().trim().is_empty())
            .map(|bot_token| SlackConnector {
                bot_token,
                default_channel: settings.slack_default_channel.clone(),
                api_base_url: settings.slack_api_base_url.trim_end_matches('/').to_owned(),
                allowed_channels: settings
                    .slack_allowed_channels
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|channel| !channel.is_empty())
                    .map(str::to_owned)
                    .collect(),
            });
        if url::Url::parse(&settings.slack_api_base_url)
            .map(|url| !matches!(url.scheme(), "http" | "https"))
            .unwrap_or(true)
        {
            problems.push("IH_SLACK_API_BASE_URL: must be an http(s) URL");
        }
        let tracing = tracing_config(&mut problems, settings);
        let secrets = secret_cipher(&mut problems, settings);
        let retention = retention(&mut problems, settings);
        let worker_id = settings
            .worker_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(default_worker_id);
        problems.finish(Self {
            metrics_addr,
            database,
            worker_id,
            concurrency: settings.worker_concurrency,
            batch_size: settings.worker_batch_size,
            lease,
            poll_interval,
            max_attempts: settings.delivery_max_attempts,
            backoff_base_seconds: settings.delivery_backoff_base_seconds,
            backoff_max,
            retry_after_max,
            delivery_timeout,
            destination_policy,
            shutdown_grace,
            subscription_max_in_flight: settings.subscription_max_in_flight,
            endpoint_health,
            slack,
            tracing,
            secrets,
            retention,
        })
    }
}

/// The circuit breaker's and the disabling's settings, each within its bounds.
fn endpoint_health(problems: &mut Problems, settings: &Settings) -> EndpointHealth {
    if !(1..=1_000_000).contains(&settings.circuit_breaker_failures) {
        problems.push("IH_CIRCUIT_BREAKER_FAILURES: must be between 1 and 1000000");
    }
    let window = bounded_seconds(
        problems,
        "IH_CIRCUIT_BREAKER_WINDOW_SECONDS",
        settings.circuit_breaker_window_seconds,
        1.0..=86_400.0,
    );
    let first_probe = bounded_seconds(
        problems,
        "IH_CIRCUIT_BREAKER_PROBE_SECONDS",
        settings.circuit_breaker_probe_seconds,
        1.0..=MAX_PROBE_INTERVAL.as_secs_f64(),
    );
    let hours = settings.subscription_disable_after_hours;
    let disable_after = if (1.0..=8760.0).contains(&hours) {
        Duration::from_secs_f64(hours * 3600.0)
    } else {
        problems.push(format!(
            "IH_SUBSCRIPTION_DISABLE_AFTER_HOURS: must be between 1 and 8760 hours, got {hours}"
        ));
        Duration::from_secs(3600)
    };
    EndpointHealth {
        failures: settings.circuit_breaker_failures,
        window,
        first_probe,
        disable_after,
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(change: impl FnOnce(&mut Settings)) -> Settings {
        let mut settings = Settings::default();
        change(&mut settings);
        settings
    }

    #[test]
    fn api_config_refuses_to_start_without_tokens_unless_auth_is_disabled() {
        let error = ApiConfig::from_settings(&Settings::default()).unwrap_err();
        assert!(
            error.problems.iter().any(|p| p.contains("IH_API_TOKENS")),
            "{error}"
        );

        let config = ApiConfig::from_settings(&settings_with(|s| s.auth_disabled = true)).unwrap();
        assert!(matches!(config.auth, AuthConfig::Disabled));
    }

    #[test]
    fn retention_is_a_duration_with_the_days_setting_accepted_as_before() {
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 12h "), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        for bad in ["", "0d", "d", "1.5d", "-1d", "3w", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let retention =
            |change: fn(&mut Settings)| Retention::from_settings(&settings_with(change));
        assert_eq!(
            retention(|_| {}).unwrap(),
            Retention {
                finished: DEFAULT_RETENTION,
                dead_letters: Duration::from_secs(90 * 86_400),
            }
        );
        let days = retention(|s| s.retention_days = Some(7.0)).unwrap();
        assert_eq!(days.finished, Duration::from_secs(7 * 86_400));
        // IH_RETENTION wins over IH_RETENTION_DAYS
        let both = retention(|s| {
            s.retention = Some("2m".to_owned());
            s.retention_days = Some(7.0);
        })
        .unwrap();
        assert_eq!(both.finished, Duration::from_secs(120));
        let error = retention(|s| {
            s.retention = Some("soon".to_owned());
            s.dead_letter_retention = "never".to_owned();
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("IH_RETENTION: `soon`"), "{error}");
        assert!(
            error.contains("IH_DEAD_LETTER_RETENTION: `never`"),
            "{error}"
        );
        assert!(retention(|s| s.retention_days = Some(0.0)).is_err());
        // partitions: the widest of a day, an hour, a minute, 10 s within a quarter of the
        // retention
        let width = |finished: u64| {
            Retention {
                finished: Duration::from_secs(finished),
                dead_letters: DEFAULT_RETENTION,
            }
            .partition_width()
            .as_secs()
        };
        assert_eq!(width(30 * 86_400), 86_400);
        assert_eq!(width(4 * 86_400), 86_400);
        assert_eq!(width(4 * 86_400 - 1), 3_600);
        assert_eq!(width(4 * 3_600), 3_600);
        assert_eq!(width(4 * 3_600 - 1), 60);
        assert_eq!(width(240), 60);
        assert_eq!(width(239), 10);
        assert_eq!(width(120), 10);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let settings = settings_with(|s| {
            s.api_addr = Some("not an address".to_owned());
            s.database_max_connections = 0;
            s.log_format = "xml".to_owned();
            s.api_tokens = Some(SecretString::new("root:abc"));
        });
        let error = ApiConfig::from_settings(&settings).unwrap_err();
        let text = error.to_string();
        for variable in [
            "IH_API_ADDR",
            "IH_DATABASE_MAX_CONNECTIONS",
            "IH_LOG_FORMAT",
            "IH_API_TOKENS",
        ] {
            assert!(text.contains(variable), "{variable} missing from {text}");
        }
    }

    #[test]
    fn database_urls_are_postgres_or_an_sqlite_file() {
        let with_url = |url: &str, listen: Option<&str>| {
            WorkerConfig::from_settings(&settings_with(|s| {
                s.database_url = DatabaseUrl::new(url);
                s.database_listen_url = listen.map(DatabaseUrl::new);
            }))
        };
        assert!(with_url("sqlite://data/hub.db", None).is_ok());
        assert!(with_url("postgresql://db/ih", Some("postgres://direct/ih")).is_ok());
        for (url, listen, variable) in [
            ("mysql://db/ih", None, "IH_DATABASE_URL"),
            ("sqlite::memory:", None, "in-memory"),
            (
                "sqlite://data/hub.db",
                Some("postgres://db/ih"),
                "LISTEN/NOTIFY needs Postgres",
            ),
            (
                "postgres://db/ih",
                Some("sqlite://data/hub.db"),
                "IH_DATABASE_LISTEN_URL",
            ),
        ] {
            let error = with_url(url, listen).unwrap_err();
            assert!(error.to_string().contains(variable), "{url}: {error}");
        }
    }

    #[test]
    fn worker_lease_must_cover_two_request_timeouts() {
        let settings = settings_with(|s| {
            s.delivery_timeout_seconds = 30.0;
            s.worker_lease_seconds = 30.0;
        });
        let error = WorkerConfig::from_settings(&settings).unwrap_err();
        assert!(
            error.to_string().contains("IH_WORKER_LEASE_SECONDS"),
            "{error}"
        );
        assert!(WorkerConfig::from_settings(&Settings::default()).is_ok());
    }

    #[test]
    fn a_subscriptions_in_flight_limit_is_bounded() {
        for limit in [0, MAX_SUBSCRIPTION_IN_FLIGHT + 1] {
            let settings = settings_with(|s| s.subscription_max_in_flight = limit);
            let error = WorkerConfig::from_settings(&settings).unwrap_err();
            assert!(
                error.to_string().contains("IH_SUBSCRIPTION_MAX_IN_FLIGHT"),
                "{error}"
            );
        }
        let settings = settings_with(|s| s.subscription_max_in_flight = 1);
        assert_eq!(
            WorkerConfig::from_settings(&settings)
                .unwrap()
                .subscription_max_in_flight,
            1
        );
    }

    #[test]
    fn the_circuit_breaker_and_the_disabling_are_bounded() {
        assert_eq!(
            WorkerConfig::from_settings(&Settings::default())
                .unwrap()
                .endpoint_health,
            EndpointHealth {
                failures: 20,
                window: Duration::from_secs(60),
                first_probe: Duration::from_secs(5),
                disable_after: Duration::from_secs(120 * 3600),
            }
        );
        type Change = fn(&mut Settings);
        let refused: [(&str, Change); 8] = [
            ("IH_CIRCUIT_BREAKER_FAILURES", |s| {
                s.circuit_breaker_failures = 0
            }),
            ("IH_CIRCUIT_BREAKER_FAILURES", |s| {
                s.circuit_breaker_failures = 1_000_001;
            }),
            ("IH_CIRCUIT_BREAKER_WINDOW_SECONDS", |s| {
                s.circuit_breaker_window_seconds = 0.5;
            }),
            ("IH_CIRCUIT_BREAKER_WINDOW_SECONDS", |s| {
                s.circuit_breaker_window_seconds = f64::NAN;
            }),
            ("IH_CIRCUIT_BREAKER_PROBE_SECONDS", |s| {
                s.circuit_breaker_probe_seconds = 301.0;
            }),
            ("IH_CIRCUIT_BREAKER_PROBE_SECONDS", |s| {
                s.circuit_breaker_probe_seconds = 0.0;
            }),
            ("IH_SUBSCRIPTION_DISABLE_AFTER_HOURS", |s| {
                s.subscription_disable_after_hours = 0.5;
            }),
            ("IH_SUBSCRIPTION_DISABLE_AFTER_HOURS", |s| {
                s.subscription_disable_after_hours = f64::INFINITY;
            }),
        ];
        for (variable, change) in refused {
            let error = WorkerConfig::from_settings(&settings_with(change)).unwrap_err();
            assert!(error.to_string().contains(variable), "{variable}: {error}");
        }
        let settings = settings_with(|s| {
            s.circuit_breaker_failures = 5;
            s.circuit_breaker_window_seconds = 30.0;
            s.circuit_breaker_probe_seconds = 1.0;
            s.subscription_disable_after_hours = 24.0;
        });
        assert_eq!(
            WorkerConfig::from_settings(&settings)
                .unwrap()
                .endpoint_health,
            EndpointHealth {
                failures: 5,
                window: Duration::from_secs(30),
                first_probe: Duration::from_secs(1),
                disable_after: Duration::from_secs(24 * 3600),
            }
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = settings_with(|s| {
            s.api_tokens = Some(SecretString::new("admin:supersecrettoken"));
            s.slack_bot_token = Some(SecretString::new("xoxb-very-secret"));
            s.database_url = DatabaseUrl::new("postgres://user:hunter2@db:5432/ih");
        });
        let printed = format!("{settings:?}");
        for secret in ["supersecrettoken", "xoxb-very-secret", "hunter2"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(
            printed.contains("postgres://user:***@db:5432/ih"),
            "{printed}"
        );
    }

    #[test]
    fn slack_fanout_exists_only_with_a_token() {
        let without = ApiConfig::from_settings(&settings_with(|s| s.auth_disabled = true)).unwrap();
        assert_eq!(without.slack, None);
        let with = ApiConfig::from_settings(&settings_with(|s| {
            s.auth_disabled = true;
            s.slack_bot_token = Some(SecretString::new("xoxb-1"));
            s.slack_event_types = "request_submitted, other".to_owned();
        }))
        .unwrap();
        assert_eq!(
            with.slack,
            Some(SlackFanout {
                event_types: vec!["request_submitted".into(), "other".into()]
            })
        );
    }

    #[test]
    fn encryption_keys_are_validated_by_both_binaries_without_echoing_them() {
        let bad = settings_with(|s| {
            s.auth_disabled = true;
            s.encryption_keys = Some(SecretString::new("k1:c2hvcnQ="));
        });
        for error in [
            ApiConfig::from_settings(&bad).unwrap_err().to_string(),
            WorkerConfig::from_settings(&bad).unwrap_err().to_string(),
        ] {
            assert!(error.contains("IH_ENCRYPTION_KEYS"), "{error}");
            assert!(!error.contains("c2hvcnQ="), "{error}");
        }
        let good = settings_with(|s| {
            s.auth_disabled = true;
            s.encryption_keys = Some(SecretString::new(
                "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            ));
        });
        let config = ApiConfig::from_settings(&good).unwrap();
        assert_eq!(config.secrets.key_ids(), ["k2", "k1"]);
        assert!(!format!("{config:?}").contains("AgICAg"));
        assert!(
            !ApiConfig::from_settings(&settings_with(|s| s.auth_disabled = true))
                .unwrap()
                .secrets
                .enabled()
        );
    }
}
