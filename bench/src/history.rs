//! Past work for the `history` scenarios, and the admin listings timed on it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::load::{Percentiles, percentiles};

/// Fills the bench database with `events` past events (`history.sql`), vacuums and
/// checkpoints it, and returns the database's size afterwards, in bytes.
pub fn seed(database_url: &str, events: u64) -> anyhow::Result<u64> {
    let sql = include_str!("history.sql").replace("$EVENTS", &events.to_string());
    let status = Command::new("psql")
        .args([database_url, "-qv", "ON_ERROR_STOP=1", "-c", &sql])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "seeding the history failed");
    // A history that grew over weeks has been vacuumed (hint bits set, pages all-visible) and
    // checkpointed long ago; one loaded in a minute has not, and its first readers would dirty
    // and write every page they touch. Settle it as time would, so the runs measure the
    // layout and not the load's aftermath. (`history.sql` has analyzed it already.)
    for settle in ["vacuum", "checkpoint"] {
        let status = Command::new("psql")
            .args([database_url, "-qv", "ON_ERROR_STOP=1", "-c", settle])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "{settle} after the seed failed");
    }
    let size = Command::new("psql")
        .args([
            database_url,
            "-Atc",
            "select pg_database_size(current_database())",
        ])
        .output()?;
    Ok(String::from_utf8(size.stdout)?.trim().parse()?)
}

/// One admin listing's latency over its calls.
#[derive(Clone, Debug, Serialize)]
pub struct ListingLatency {
    /// What was listed.
    pub label: String,
    /// Milliseconds of the first call, which plans the listing's statement on its connection.
    pub first_ms: f64,
    /// Milliseconds per call, after the first.
    pub latency_ms: Percentiles,
}

/// Calls each admin listing once, then `calls` times, on the seeded history and reports the
/// first call's latency and the others'.
///
/// # Errors
/// Returns an error when a listing does not answer 200.
pub async fn listings(
    client: &reqwest::Client,
    api_url: &str,
    token: &str,
    calls: usize,
) -> anyhow::Result<Vec<ListingLatency>> {
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{api_url}/api/v1{path}");
        let token = token.to_owned();
        async move {
            let response = client.get(&url).bearer_auth(token).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            Ok::<_, anyhow::Error>(response.json::<serde_json::Value>().await?)
        }
    };
    let first = |listing: serde_json::Value, field: &str| {
        listing["data"][0][field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("the seeded history has no {field}"))
    };
    let middle = chrono::Utc::now() - chrono::Duration::days(30);
    let second = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let dead = get("/admin/dead-letters?limit=1".to_owned()).await?;
    let subscription = first(dead.clone(), "subscription_id")?;
    let event = first(dead, "event_id")?;
    let paths = [
        ("events, newest page", "/events".to_owned()),
        (
            "events of a type nobody sends",
            "/events?event_type=nobody.sends".to_owned(),
        ),
        ("events of one type", "/events?event_type=past.3".to_owned()),
        (
            "events of one second in the middle",
            format!(
                "/events?since={}&until={}",
                second(middle),
                second(middle + chrono::Duration::seconds(1))
            ),
        ),
        ("deliveries, newest page", "/admin/deliveries".to_owned()),
        (
            "deliveries of a subscription",
            format!("/admin/deliveries?subscription_id={subscription}"),
        ),
        (
            "deliveries, dead",
            "/admin/deliveries?status=dead".to_owned(),
        ),
        (
            "deliveries of an event",
            format!("/admin/deliveries?event_id={event}"),
        ),
        (
            "dead letters of a subscription",
            format!("/admin/dead-letters?subscription_id={subscription}"),
        ),
        (
            "dead letters not replayed",
            "/admin/dead-letters?replayed=false".to_owned(),
        ),
        (
            "attempts of an event",
            format!("/admin/events/{event}/attempts"),
        ),
        ("the console's numbers", "/admin/stats".to_owned()),
    ];
    let mut latencies = Vec::new();
    for (label, path) in paths {
        let started = Instant::now();
        get(path.clone()).await?;
        let first_ms = started.elapsed().as_secs_f64() * 1_000.0;
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            get(path.clone()).await?;
            samples.push(started.elapsed().as_secs_f64() * 1_000.0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        latencies.push(ListingLatency {
            label: label.to_owned(),
            first_ms,
            latency_ms: percentiles(samples),
        });
    }
    Ok(latencies)
}

/// The listings as a Markdown table.
#[must_use]
pub fn table(events: u64, size_bytes: u64, latencies: &[ListingLatency]) -> String {
    let mut out = format!(
        "With {events} past events ({:.0} MB database):\n\n| listing | first call ms | p50 ms | p99 ms |\n|---|---|---|---|\n",
        size_bytes as f64 / 1e6
    );
    for listing in latencies {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} |\n",
            listing.label, listing.first_ms, listing.latency_ms.p50, listing.latency_ms.p99
        ));
    }
    out
}
