//! One benchmark run against a running API and its workers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    procstat::{self, ProcessUsage},
    sink::{self, Arrivals, Behaviour},
};

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// A name for the report.
    pub label: String,
    /// Events to publish (burst and batch modes).
    pub events: usize,
    /// Concurrent publishers.
    pub concurrency: usize,
    /// Events per batch request; 1 publishes singly.
    pub batch: usize,
    /// Subscriptions per event.
    pub endpoints: usize,
    /// Subscriptions to event types the run never publishes: they must cost the publish
    /// nothing.
    pub other_subscriptions: usize,
    /// Steady rate in events per second; 0 means a burst.
    pub rate: f64,
    /// Steady duration in seconds.
    pub duration_seconds: f64,
    /// Fraction of receiver answers that are 500.
    pub fail_rate: f64,
    /// Receiver delay per request, in milliseconds.
    pub delay_ms: u64,
    /// Subscriptions the events are spread over, round robin (each its own event type); 0 or
    /// 1: one.
    pub spread: usize,
    /// Events queued before the run to another subscription (`/slow`), which answers after
    /// `backlog_delay_ms`: a noisy neighbour. The report counts only the run's own events.
    pub backlog: usize,
    /// The noisy neighbour's answer delay, in milliseconds.
    pub backlog_delay_ms: u64,
    /// Events queued before the run to a subscription (`/limited`) with a rate limit of
    /// `limited_rate` a second; the report gives the rate they arrived at.
    pub limited_events: usize,
    /// That subscription's `rate_limit_per_second`.
    pub limited_rate: f64,
}

/// Where the API is.
#[derive(Clone, Debug)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub api_url: String,
    /// An admin token, or none when authentication is disabled.
    pub token: Option<String>,
    /// Longest wait for the last arrival after publishing ends.
    pub drain_timeout: Duration,
}

/// The measured result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Events published (acknowledged with 2xx).
    pub published: usize,
    /// Publish requests refused (e.g. 503 when the API sheds load); not retried.
    pub rejected: usize,
    /// Deliveries expected (events × endpoints).
    pub expected: usize,
    /// Distinct deliveries that arrived.
    pub arrived: usize,
    /// Expected deliveries that never arrived.
    pub lost: usize,
    /// Arrivals beyond the first of a delivery.
    pub duplicates: u64,
    /// Publish requests per second (events per second in batch mode).
    pub publish_rate: f64,
    /// Deliveries per second, first publish to last arrival.
    pub delivery_rate: f64,
    /// Publish → arrival latency, milliseconds.
    pub latency_ms: Percentiles,
    /// CPU seconds and peak memory of the service processes during the run.
    pub processes: Vec<ProcessUsage>,
    /// Deliveries a second to the rate-limited subscription, first to last arrival.
    pub limited_rate: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

pub fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
        samples.get(index).copied().unwrap_or_default()
    };
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: samples.last().copied().unwrap_or_default(),
    }
}

struct Client {
    http: reqwest::Client,
    target: Target,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.try_post(path, body).await.map_err(|(_, error)| error)
    }

    /// Posts JSON; on failure also says whether the API refused with a status (as opposed
    /// to the request failing).
    async fn try_post(&self, path: &str, body: Value) -> Result<Value, (bool, anyhow::Error)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.target.api_url))
            .json(&body);
        if let Some(token) = &self.target.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|error| (false, error.into()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err((true, anyhow::anyhow!("{path} answered {status}: {body}")))
        }
    }

    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let mut request = self.http.delete(format!("{}{path}", self.target.api_url));
        if let Some(token) = &self.target.token {
            request = request.bearer_auth(token);
        }
        request.send().await?;
        Ok(())
    }
}

/// Publish start times by event id.
type Started = Arc<Mutex<HashMap<String, Instant>>>;

/// The event type of event `n`: the run's type, or one of its `spread` types.
fn event_type_of(event_type: &str, spread: usize, n: usize) -> String {
    if spread > 1 {
        format!("{event_type}_s{}", n % spread)
    } else {
        event_type.to_owned()
    }
}

/// Publishes events `first..first + count` in one request; returns how many the API refused
/// with an error status (a load generator counts those rather than stopping).
async fn publish_one(
    client: &Client,
    (event_type, spread): (&str, usize),
    first: usize,
    count: usize,
    started: &Started,
) -> anyhow::Result<usize> {
    let start = Instant::now();
    let answer = if count == 1 {
        client
            .try_post(
                "/api/v1/events",
                json!({
                    "event_type": event_type_of(event_type, spread, first),
                    "payload": {"n": first, "note": "bench"},
                }),
            )
            .await
    } else {
        let events: Vec<Value> = (first..first + count)
            .map(|n| {
                json!({
                    "event_type": event_type_of(event_type, spread, n),
                    "payload": {"n": n, "note": "bench"},
                })
            })
            .collect();
        client
            .try_post("/api/v1/events/batch", json!({"events": events}))
            .await
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err((true, _)) => return Ok(count),
        Err((false, error)) => return Err(error),
    };
    let ids: Vec<String> = if count == 1 {
        vec![answer["id"].as_str().unwrap_or_default().to_owned()]
    } else {
        answer["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut started = started
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for id in ids {
        started.insert(id, start);
    }
    Ok(0)
}

/// Runs one scenario and returns its report.
///
/// # Errors
/// Returns an error when the API refuses the set-up or a publish.
pub async fn run(target: Target, scenario: Scenario) -> anyhow::Result<Report> {
    #[expect(
        clippy::disallowed_methods,
        reason = "the load generator's client, not a delivery client"
    )]
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(scenario.concurrency.max(1))
        .timeout(Duration::from_secs(60))
        .build()?;
    let client = Arc::new(Client {
        http,
        target: target.clone(),
    });
    let behaviour = Behaviour {
        fail_rate: scenario.fail_rate,
        delay: Duration::from_millis(scenario.delay_ms),
        slow_delay: Duration::from_millis(scenario.backlog_delay_ms),
    };
    let (sink_address, arrivals) = sink::start("127.0.0.1:0", behaviour).await?;
    let event_type = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut subscriptions = Vec::new();
    let spread = scenario.spread.max(1);
    for endpoint in 0..scenario.endpoints.max(1) {
        for part in 0..spread {
            let created = client
                .post(
                    "/api/v1/subscriptions",
                    json!({
                        "url": format!("http://{sink_address}/e{endpoint}"),
                        "events": [event_type_of(&event_type, spread, part)],
                    }),
                )
                .await?;
            subscriptions.push(created["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    if scenario.backlog > 0 {
        let slow_type = format!("{event_type}_slow");
        let created = client
            .post(
                "/api/v1/subscriptions",
                json!({"url": format!("http://{sink_address}{}", sink::SLOW), "events": [slow_type]}),
            )
            .await?;
        subscriptions.push(created["id"].as_str().unwrap_or_default().to_owned());
        // the backlog's publish times are not the run's: they stay out of its latencies
        let ignored: Started = Arc::default();
        for first in (0..scenario.backlog).step_by(100) {
            let count = 100.min(scenario.backlog - first);
            publish_one(&client, (&slow_type, 1), first, count, &ignored).await?;
        }
        // the run starts once the neighbour's requests are on the wire
        let deadline = Instant::now() + Duration::from_secs(30);
        while arrivals.slow.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(scenario.backlog_delay_ms / 2)).await;
    }
    if scenario.limited_events > 0 {
        let limited_type = format!("{event_type}_limited");
        let created = client
            .post(
                "/api/v1/subscriptions",
                json!({
                    "url": format!("http://{sink_address}{}", sink::LIMITED),
                    "events": [limited_type],
                    "rate_limit_per_second": scenario.limited_rate,
                }),
            )
            .await?;
        subscriptions.push(created["id"].as_str().unwrap_or_default().to_owned());
        let ignored: Started = Arc::default();
        for first in (0..scenario.limited_events).step_by(100) {
            let count = 100.min(scenario.limited_events - first);
            publish_one(&client, (&limited_type, 1), first, count, &ignored).await?;
        }
    }
    for other in 0..scenario.other_subscriptions {
        let created = client
            .post(
                "/api/v1/subscriptions",
                json!({
                    "url": format!("http://{sink_address}/other{other}"),
                    "events": [format!("{event_type}_other_{other}")],
                }),
            )
            .await?;
        subscriptions.push(created["id"].as_str().unwrap_or_default().to_owned());
    }

    let usage_before = procstat::snapshot();
    let started: Started = Arc::default();
    let first_publish = Instant::now();
    let (requested, rejected) = if scenario.rate > 0.0 {
        publish_steady(&client, &scenario, &event_type, &started).await?
    } else {
        publish_burst(&client, &scenario, &event_type, &started).await?
    };
    let publish_elapsed = first_publish.elapsed();
    let published = requested - rejected;
    let expected = published * scenario.endpoints.max(1);
    wait_for_arrivals(&arrivals, expected, target.drain_timeout).await;
    let limited_rate = if scenario.limited_events > 0 {
        Some(wait_for_limited(&arrivals, scenario.limited_events, target.drain_timeout).await)
    } else {
        None
    };
    let usage_after = procstat::snapshot();

    for id in &subscriptions {
        let _ = client.delete(&format!("/api/v1/subscriptions/{id}")).await;
    }
    let mut report = report(
        scenario,
        (published, rejected),
        expected,
        &arrivals,
        &started,
        first_publish,
        publish_elapsed,
        procstat::usage(&usage_before, &usage_after),
    );
    report.limited_rate = limited_rate;
    Ok(report)
}

/// Waits for the rate-limited subscription's deliveries; returns the rate they arrived at.
async fn wait_for_limited(arrivals: &Arrivals, expected: usize, timeout: Duration) -> f64 {
    let limited = || {
        arrivals
            .limited
            .lock()
            .map(|times| times.clone())
            .unwrap_or_default()
    };
    wait_for_count(|| limited().len(), expected, timeout).await;
    let times = limited();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return 0.0;
    };
    let span = last
        .saturating_duration_since(*first)
        .as_secs_f64()
        .max(1e-9);
    (times.len().saturating_sub(1)) as f64 / span
}

/// Publishes `events` as fast as `concurrency` publishers go; returns (requested, refused).
async fn publish_burst(
    client: &Arc<Client>,
    scenario: &Scenario,
    event_type: &str,
    started: &Started,
) -> anyhow::Result<(usize, usize)> {
    let batch = scenario.batch.max(1);
    let requests = scenario.events.div_ceil(batch);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..scenario.concurrency.max(1) {
        let client = client.clone();
        let next = next.clone();
        let started = started.clone();
        let event_type = event_type.to_owned();
        let total = scenario.events;
        let spread = scenario.spread;
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            loop {
                let request = next.fetch_add(1, Ordering::Relaxed);
                if request >= requests {
                    return Ok::<usize, anyhow::Error>(refused);
                }
                let first = request * batch;
                let count = batch.min(total - first);
                refused +=
                    publish_one(&client, (&event_type, spread), first, count, &started).await?;
            }
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await??;
    }
    Ok((scenario.events, refused))
}

/// Publishes at a fixed rate, open loop; returns (requested, refused).
async fn publish_steady(
    client: &Arc<Client>,
    scenario: &Scenario,
    event_type: &str,
    started: &Started,
) -> anyhow::Result<(usize, usize)> {
    let total = (scenario.rate * scenario.duration_seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / scenario.rate);
    let begin = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut refused = 0;
    for n in 0..total {
        // an open-loop schedule: each event goes out at its time whatever earlier ones do
        let due = begin + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let started = started.clone();
        let event_type = event_type.to_owned();
        let spread = scenario.spread;
        tasks.spawn(
            async move { publish_one(&client, (&event_type, spread), n, 1, &started).await },
        );
        while let Some(done) = tasks.try_join_next() {
            refused += done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        refused += done??;
    }
    Ok((total, refused))
}

async fn wait_for_arrivals(arrivals: &Arrivals, expected: usize, timeout: Duration) {
    let count = || {
        arrivals
            .first
            .lock()
            .map(|first| first.len())
            .unwrap_or_default()
    };
    wait_for_count(count, expected, timeout).await;
}

/// Polls `count` until it reaches `expected`, or has not grown for `timeout`.
async fn wait_for_count(count: impl Fn() -> usize, expected: usize, timeout: Duration) {
    let mut last_progress = Instant::now();
    let mut last_count = 0;
    loop {
        let count = count();
        if count >= expected {
            return;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site assembling the report"
)]
fn report(
    scenario: Scenario,
    (published, rejected): (usize, usize),
    expected: usize,
    arrivals: &Arrivals,
    started: &Started,
    first_publish: Instant,
    publish_elapsed: Duration,
    processes: Vec<ProcessUsage>,
) -> Report {
    let first = arrivals
        .first
        .lock()
        .map(|first| first.clone())
        .unwrap_or_default();
    let started = started
        .lock()
        .map(|started| started.clone())
        .unwrap_or_default();
    let mut latencies = Vec::with_capacity(first.len());
    let mut last_arrival = first_publish;
    for ((id, _), arrived) in &first {
        last_arrival = last_arrival.max(*arrived);
        if let Some(start) = started.get(id) {
            latencies.push(arrived.saturating_duration_since(*start).as_secs_f64() * 1000.0);
        }
    }
    let span = last_arrival
        .saturating_duration_since(first_publish)
        .as_secs_f64()
        .max(1e-9);
    Report {
        published,
        rejected,
        expected,
        arrived: first.len(),
        lost: expected.saturating_sub(first.len()),
        duplicates: arrivals.duplicates.load(Ordering::Relaxed),
        publish_rate: published as f64 / publish_elapsed.as_secs_f64().max(1e-9),
        delivery_rate: first.len() as f64 / span,
        latency_ms: percentiles(latencies),
        processes,
        scenario,
        limited_rate: None,
    }
}
