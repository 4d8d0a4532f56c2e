//! Traces, metrics and logs of the real binaries: `ih-api` and `ih-worker` run as child
//! processes against a test database, with a local OTLP/HTTP receiver and webhook receiver.

use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use poem::{EndpointExt, Route, Server, handler, listener::TcpAcceptor, web::Data};
use serde_json::{Value, json};
use testkit::{db::TestDb, free_port};
use tokio_util::sync::CancellationToken;

use crate::support::{Receiver, Reply, count, delivered_within, eventually};

pub const ADMIN_TOKEN: &str = "admin-token-for-observability-tests";

/// A binary of this workspace, built beside the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    let directory = test_exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = directory.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the workspace binaries first (make test does)",
        binary.display()
    );
    binary
}

/// A child process whose stdout and stderr are captured.
pub struct Service {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Service {
    fn start(binary: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(workspace_bin(binary));
        command
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0_u8; 8192];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            });
        }
        Self { child, output }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The resident set size of the process now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// Sends SIGTERM and waits; returns whether it exited 0 within `deadline`.
    async fn terminate(&mut self, deadline: Duration) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if started.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ih-api` and `ih-worker` on one database.
pub struct Stack {
    pub api: Service,
    pub worker: Service,
    pub api_url: String,
    pub worker_metrics_url: String,
    pub client: reqwest::Client,
}

impl Stack {
    pub async fn start(db: &TestDb, extra: &[(&str, String)]) -> Self {
        Self::start_on(&db.url, extra).await
    }

    pub async fn start_on(database_url: &str, extra: &[(&str, String)]) -> Self {
        let api_port = free_port();
        let metrics_port = free_port();
        let mut common: Vec<(&str, String)> = vec![
            ("IH_DATABASE_URL", database_url.to_owned()),
            ("IH_API_TOKENS", format!("admin:{ADMIN_TOKEN}")),
            ("IH_ALLOWED_DESTINATION_CIDRS", "127.0.0.1/32".to_owned()),
            ("IH_LOG_FORMAT", "json".to_owned()),
            ("IH_LOG_LEVEL", "info".to_owned()),
            ("IH_DELIVERY_POLL_INTERVAL_SECONDS", "0.25".to_owned()),
            ("IH_DELIVERY_BACKOFF_BASE_SECONDS", "1".to_owned()),
            ("IH_DELIVERY_TIMEOUT_SECONDS", "2".to_owned()),
            ("IH_WORKER_LEASE_SECONDS", "5".to_owned()),
            ("IH_WORKER_SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ];
        common.extend(extra.iter().cloned());
        let mut api_env = common.clone();
        api_env.push(("IH_API_ADDR", format!("127.0.0.1:{api_port}")));
        let mut worker_env = common;
        worker_env.push((
            "IH_WORKER_METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        ));
        let api = Service::start("ih-api", &api_env);
        let worker = Service::start("ih-worker", &worker_env);
        #[expect(
            clippy::disallowed_methods,
            reason = "a test client, not a delivery client"
        )]
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let stack = Self {
            api,
            worker,
            api_url: format!("http://127.0.0.1:{api_port}"),
            worker_metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            client,
        };
        for url in [
            format!("{}/ready", stack.api_url),
            format!("{}/health", stack.worker_metrics_url),
        ] {
            let up = eventually(Duration::from_secs(20), || async {
                stack
                    .client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success())
            })
            .await;
            assert!(
                up,
                "{url} never answered\napi:\n{}\nworker:\n{}",
                stack.api.output(),
                stack.worker.output()
            );
        }
        stack
    }

    pub async fn admin(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Value {
        let mut request = self
            .client
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn metrics(&self, url: &str) -> String {
        self.client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Parses Prometheus text into `name{sorted labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value);
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

fn metric_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn metrics_of_both_binaries_move_with_the_work_and_cover_the_dashboard() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let stack = Stack::start(&db, &[]).await;
    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/hook"), "events": ["metrics.test"]}),
            &[],
        )
        .await;
    let api_before = parse_metrics(&stack.metrics(&stack.api_url).await);
    let worker_before = parse_metrics(&stack.metrics(&stack.worker_metrics_url).await);

    for i in 0..5 {
        stack
            .admin(
                "/api/v1/events",
                json!({"event_type": "metrics.test", "payload": {"i": i}}),
                &[],
            )
            .await;
    }
    assert!(delivered_within(&db, 5, Duration::from_secs(20)).await);
    // outcomes are counted after their flush; give the counter its flush interval
    let counted = eventually(Duration::from_secs(5), || async {
        let text = stack.metrics(&stack.worker_metrics_url).await;
        sample(
            &parse_metrics(&text),
            r#"ih_deliveries_total{outcome="delivered",target="webhook"}"#,
        ) >= 5.0
    })
    .await;
    assert!(counted, "the delivered counter moved");
    let worker_text = stack.metrics(&stack.worker_metrics_url).await;
    let api_text = stack.metrics(&stack.api_url).await;
    let api_after = parse_metrics(&api_text);
    let worker_after = parse_metrics(&worker_text);
    let delta = |before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str| {
        sample(after, key) - sample(before, key)
    };

    assert_eq!(
        delta(
            &api_before,
            &api_after,
            r#"ih_events_published_total{event_type="metrics.test"}"#
        ),
        5.0
    );
    assert_eq!(
        delta(
            &api_before,
            &api_after,
            r#"ih_http_requests_total{method="POST",route="/api/v1/events",status="202"}"#
        ),
        5.0
    );
    assert_eq!(
        delta(
            &api_before,
            &api_after,
            r#"ih_http_request_duration_seconds_count{method="POST",route="/api/v1/events"}"#
        ),
        5.0
    );
    assert_eq!(
        delta(
            &worker_before,
            &worker_after,
            r#"ih_deliveries_total{outcome="delivered",target="webhook"}"#
        ),
        5.0
    );
    assert_eq!(
        delta(
            &worker_before,
            &worker_after,
            "ih_delivery_attempt_duration_seconds_count"
        ),
        5.0
    );
    assert_eq!(
        delta(
            &worker_before,
            &worker_after,
            "ih_delivery_lag_seconds_count"
        ),
        5.0
    );
    assert!(sample(&worker_after, r#"ih_db_pool_connections{state="max"}"#) > 0.0);

    let dashboard: Value =
        serde_json::from_str(include_str!("../../../k8s/grafana-dashboard.json")).unwrap();
    let mut exported = metric_names(&api_text);
    exported.extend(metric_names(&worker_text));
    let mut used = HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metrics_in(target["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    // and the alert rules' (the sampled gauges are there: the worker samples once at start)
    let alerting: HashSet<String> = alert_rules(ALERTS)
        .iter()
        .flat_map(|(_, expr)| metrics_in(expr))
        .collect();
    assert!(alerting.len() >= 8, "{alerting:?}");
    used.extend(alerting);
    let exported_base: HashSet<String> = exported
        .iter()
        .map(|name| {
            name.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .chain(exported.iter().cloned())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let base = name.trim_end_matches("_bucket");
            // a per-subscription failure series exists only once some attempt has failed
            !exported_base.contains(base) && base != "ih_subscription_failures_total"
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use metrics nobody exports: {missing:?}"
    );
}

/// The metric names (`ih_…`) a PromQL expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.match_indices("ih_")
        .map(|(start, _)| {
            expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");

/// Each alert of a rules file (plain, or a `PrometheusRule`'s spec): its name and expression.
fn alert_rules(text: &str) -> Vec<(String, String)> {
    let document: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let groups = document
        .get("spec")
        .unwrap_or(&document)
        .get("groups")
        .and_then(serde_yaml::Value::as_sequence)
        .unwrap();
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap())
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_the_kubernetes_manifest_carries_them() {
    let promtool = std::env::var("IH_PROMTOOL").unwrap_or_else(|_| "/usr/bin/promtool".to_owned());
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    for arguments in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(arguments)
            .current_dir(directory)
            .output()
            .unwrap_or_else(|error| {
                panic!("{promtool}: {error} (install Debian's prometheus: make prometheus)")
            });
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // every alert has a firing and a quiet unit test
    let tests: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../deploy/prometheus/alerts.test.yml")).unwrap();
    let rules = alert_rules(ALERTS);
    for (alert, _) in &rules {
        let cases: Vec<bool> = tests["tests"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|case| case["alert_rule_test"].as_sequence().unwrap())
            .filter(|check| check["alertname"].as_str() == Some(alert))
            .map(|check| !check["exp_alerts"].as_sequence().unwrap().is_empty())
            .collect();
        assert!(
            cases.contains(&true) && cases.contains(&false),
            "{alert} needs a firing and a quiet test, has {cases:?}"
        );
    }
    // the Prometheus Operator's copy holds the same groups, whole
    let plain: serde_yaml::Value = serde_yaml::from_str(ALERTS).unwrap();
    let operator: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../k8s/prometheus-rule.yaml")).unwrap();
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    assert_eq!(
        alert_rules(include_str!("../../../k8s/prometheus-rule.yaml")),
        rules
    );
}

#[handler]
async fn collect_traces(body: poem::Body, store: Data<&Arc<Mutex<Vec<Value>>>>) -> &'static str {
    if let Ok(bytes) = body.into_vec().await
        && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
    {
        store.lock().unwrap().push(value);
    }
    "{}"
}

/// Every span received: (service, trace id, span id, parent span id, name).
fn spans(store: &Arc<Mutex<Vec<Value>>>) -> Vec<(String, String, String, String, String)> {
    let mut found = Vec::new();
    for export in store.lock().unwrap().iter() {
        for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource_spans["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|attribute| attribute["key"] == "service.name")
                .and_then(|attribute| attribute["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for scope in resource_spans["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                    found.push((
                        service.clone(),
                        text("traceId"),
                        text("spanId"),
                        text("parentSpanId"),
                        text("name"),
                    ));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn one_trace_shows_the_publish_and_the_delivery_attempt() {
    let store: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let app = Route::new()
        .at("/v1/traces", poem::post(collect_traces))
        .data(store.clone());
    let server_stop = stop.clone();
    tokio::spawn(async move {
        let _ = Server::new_with_acceptor(TcpAcceptor::from_tokio(listener).unwrap())
            .run_with_graceful_shutdown(app, server_stop.cancelled_owned(), None)
            .await;
    });

    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let stack = Stack::start(&db, &[("IH_OTLP_ENDPOINT", collector)]).await;
    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/hook"), "events": ["traced"]}),
            &[],
        )
        .await;
    let publisher_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let event = stack
        .admin(
            "/api/v1/events",
            json!({"event_type": "traced", "payload": {}}),
            &[(
                "traceparent",
                &format!("00-{publisher_trace}-00f067aa0ba902b7-01"),
            )],
        )
        .await;
    assert!(eventually(Duration::from_secs(20), || async { receiver.count() == 1 }).await);

    let joined = eventually(Duration::from_secs(20), || async {
        let spans = spans(&store);
        let publish = spans
            .iter()
            .find(|s| s.0 == "ih-api" && s.4 == "publish events");
        let deliver = spans
            .iter()
            .find(|s| s.0 == "ih-worker" && s.4 == "deliver webhook");
        matches!((publish, deliver), (Some(p), Some(d)) if p.1 == d.1 && d.3 == p.2)
    })
    .await;
    let spans = spans(&store);
    assert!(
        joined,
        "publish and delivery spans in one trace, the delivery a child of the publish: {spans:?}"
    );
    let publish = spans.iter().find(|s| s.4 == "publish events").unwrap();
    assert_eq!(
        publish.1, publisher_trace,
        "the publisher's incoming trace is continued"
    );
    let request = receiver.received().pop().unwrap();
    assert!(
        request.header("traceparent").contains(publisher_trace),
        "the receiver gets the trace context too"
    );
    assert_eq!(request.header("webhook-id"), event["id"].as_str().unwrap());
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_collector_never_blocks_delivery_or_shutdown() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut stack = Stack::start(&db, &[("IH_OTLP_ENDPOINT", closed)]).await;
    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/hook"), "events": ["a"]}),
            &[],
        )
        .await;
    for _ in 0..3 {
        stack
            .admin(
                "/api/v1/events",
                json!({"event_type": "a", "payload": {}}),
                &[],
            )
            .await;
    }
    assert!(delivered_within(&db, 3, Duration::from_secs(20)).await);
    assert!(
        stack.api.terminate(Duration::from_secs(15)).await,
        "api exits 0 within its grace:\n{}",
        stack.api.output()
    );
    assert!(
        stack.worker.terminate(Duration::from_secs(15)).await,
        "worker exits 0 within its grace:\n{}",
        stack.worker.output()
    );
}

#[tokio::test]
async fn logs_of_a_publish_deliver_dead_letter_run_hold_no_secret_and_no_payload() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, _| Reply::status(500));
    let secret = "whsec_Q2FuYXJ5U2VjcmV0Q2FuYXJ5U2VjcmV0MTIzNDU=";
    let payload_canary = "payload-canary-7f3a";
    let query_canary = "query-canary-91bd";
    let encryption_key = "S2V5Q2FuYXJ5S2V5Q2FuYXJ5S2V5Q2FuYXJ5MTIzNDU=";
    let mut stack = Stack::start(
        &db,
        &[
            ("IH_DELIVERY_MAX_ATTEMPTS", "2".to_owned()),
            ("IH_ENCRYPTION_KEYS", format!("k1:{encryption_key}")),
        ],
    )
    .await;
    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url(&format!("/hook?token={query_canary}")), "events": ["a"], "secret": secret}),
            &[],
        )
        .await;
    stack
        .admin(
            "/api/v1/events",
            json!({"event_type": "a", "payload": {"note": payload_canary}}),
            &[],
        )
        .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&db, "select count(*) from dead_letters").await == 1
        })
        .await
    );
    assert!(stack.api.terminate(Duration::from_secs(15)).await);
    assert!(stack.worker.terminate(Duration::from_secs(15)).await);

    let logs = format!("{}\n{}", stack.api.output(), stack.worker.output());
    assert!(
        logs.contains("delivery attempt finished"),
        "the attempts were logged:\n{logs}"
    );
    assert!(
        logs.lines()
            .filter(|line| line.starts_with('{'))
            .all(|line| serde_json::from_str::<Value>(line).is_ok()),
        "JSON lines"
    );
    for forbidden in [
        secret,
        "whsec_",
        payload_canary,
        query_canary,
        ADMIN_TOKEN,
        "Bearer ",
        encryption_key,
    ] {
        assert!(
            !logs.contains(forbidden),
            "`{forbidden}` leaked into the logs:\n{logs}"
        );
    }
}
