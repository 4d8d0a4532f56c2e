//! The Grafana dashboard on a real Prometheus: Debian's `prometheus` scrapes a real `ih-api`
//! and two `ih-worker`s every second while the test publishes, fails one subscription's
//! deliveries until they are dead-lettered, and replays them. Then every target of every panel,
//! its Grafana variables substituted, is evaluated through Prometheus's HTTP API and must
//! return a series; the panels of failures, dead letters and replays must show more than 0.
//! The same Prometheus loads the alert rules, so a rule it refuses fails here too.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use testkit::{db::TestDb, free_port};
use uuid::Uuid;

use crate::{
    observability::Stack,
    support::{Receiver, Reply, WorkerProcess, count, eventually},
};

const DASHBOARD: &str = include_str!("../../../k8s/grafana-dashboard.json");
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts.yml"
);

/// Panels whose numbers must be above 0 after the test's failures, dead letters and replays.
const MUST_MOVE: [&str; 4] = [
    "Dead letters (1h)",
    "Dead letters and replays",
    "Failed attempts (retries)",
    "Failing subscriptions (failed attempts, 15m)",
];

/// A Prometheus server scraping the given targets every second, with its own data directory.
struct Prometheus {
    child: Child,
    directory: PathBuf,
    url: String,
    client: reqwest::Client,
}

impl Prometheus {
    fn start(api: &str, workers: &[String]) -> Self {
        let binary =
            std::env::var("IH_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".to_owned());
        let directory = std::env::temp_dir().join(format!("ih-prometheus-{}", Uuid::now_v7()));
        std::fs::create_dir_all(directory.join("data")).unwrap();
        let workers: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {ALERTS}\n\
             scrape_configs:\n\
             \x20 - job_name: ih-api\n    static_configs:\n      - targets: [\"{api}\"]\n\
             \x20 - job_name: ih-worker\n    static_configs:\n      - targets: [{}]\n",
            workers.join(", ")
        );
        std::fs::write(directory.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                directory.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{binary}: {error} (install Debian's prometheus: make prometheus)")
            });
        #[expect(
            clippy::disallowed_methods,
            reason = "a test client, not a delivery client"
        )]
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            child,
            directory,
            url: format!("http://127.0.0.1:{port}"),
            client,
        }
    }

    /// An instant query's result (the series), or `None` while Prometheus is not answering.
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            [("query", expr)],
        )
        .unwrap();
        let answer: Value = self.client.get(url).send().await.ok()?.json().await.ok()?;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned()
    }

    /// The largest value among a query's series (0 when it has none).
    async fn largest(&self, expr: &str) -> f64 {
        self.query(expr)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|value| value.is_finite())
            .fold(0.0, f64::max)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A panel's query as Grafana sends it: its interval variables replaced by what Grafana
/// computes for a 1 s scrape interval over the last hour.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "5s")
        .replace("${__interval}", "5s")
        .replace("$__range", "1h")
        .replace("${__range}", "1h")
}

#[tokio::test]
async fn every_dashboard_panel_has_data_on_a_real_prometheus() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.reply_with(|_, received| {
        Reply::status(if received.path == "/failing" {
            500
        } else {
            200
        })
    });
    let settings = [("IH_DELIVERY_MAX_ATTEMPTS", "2".to_owned())];
    let stack = Stack::start(&db, &settings).await;
    let second_port = free_port();
    let _second = WorkerProcess::spawn(
        &db.url,
        "second",
        &[
            (
                "IH_WORKER_METRICS_ADDR",
                &format!("127.0.0.1:{second_port}"),
            ),
            ("IH_DELIVERY_MAX_ATTEMPTS", "2"),
        ],
    );
    let api = stack.api_url.trim_start_matches("http://").to_owned();
    let workers = [
        stack
            .worker_metrics_url
            .trim_start_matches("http://")
            .to_owned(),
        format!("127.0.0.1:{second_port}"),
    ];
    let prometheus = Prometheus::start(&api, &workers);
    assert!(
        eventually(Duration::from_secs(30), || async {
            prometheus.largest("count(up == 1)").await >= 3.0
        })
        .await,
        "Prometheus never scraped the API and both workers"
    );

    stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/ok"), "events": ["order.created"]}),
            &[],
        )
        .await;
    let failing = stack
        .admin(
            "/api/v1/subscriptions",
            json!({"url": receiver.url("/failing"), "events": ["order.failed"]}),
            &[],
        )
        .await;
    for i in 0..20 {
        stack
            .admin(
                "/api/v1/events",
                json!({"event_type": "order.created", "payload": {"i": i}}),
                &[],
            )
            .await;
    }
    for i in 0..5 {
        stack
            .admin(
                "/api/v1/events",
                json!({"event_type": "order.failed", "payload": {"i": i}}),
                &[],
            )
            .await;
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&db, "select count(*) from dead_letters").await == 5
        })
        .await,
        "the failing subscription's five deliveries are dead-lettered"
    );
    let replayed = stack
        .admin(
            "/api/v1/admin/dead-letters/replay",
            json!({"subscription_id": failing["id"]}),
            &[],
        )
        .await;
    assert_eq!(replayed["count"], 5);

    // the scrapes have seen the failures, the dead letters and the replays
    for expr in [
        "sum(ih_dead_letters_replayed_total)",
        "sum(ih_dead_letters_total)",
        "sum(increase(ih_subscription_failures_total[15m]))",
    ] {
        assert!(
            eventually(Duration::from_secs(30), || async {
                prometheus.largest(expr).await > 0.0
            })
            .await,
            "Prometheus never saw {expr} above 0"
        );
    }

    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = as_grafana_sends(target["expr"].as_str().unwrap());
            let series = prometheus.query(&expr).await.unwrap_or_default();
            assert!(
                !series.is_empty(),
                "panel \"{title}\": no series for {expr}"
            );
            if MUST_MOVE.contains(&title) {
                assert!(
                    prometheus.largest(&expr).await > 0.0,
                    "panel \"{title}\" shows nothing above 0 for {expr}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 23, "{checked} queries");
    // the alert rules loaded: Prometheus lists every group's rules
    let rules: Value = prometheus
        .client
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(loaded >= 9, "alert rules loaded: {rules}");
}
