//! `ih-bench soak`: a steady load for minutes on a stack whose workers keep a short retention,
//! sampling the database's size and the autovacuums of the history partitions as it runs, to
//! show that retention holds the database flat and that the history is never vacuumed.

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use clap::Args;

use crate::{
    load::{self, Scenario, Target},
    process::wait_until_ok,
    suite,
};

/// Options of `ih-bench soak`.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// The server to create the bench database on (its database name is replaced).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/ih_bench")]
    database_url: String,
    /// Events published per second.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// How long the load runs, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// `IH_RETENTION` of the workers.
    #[arg(long, default_value = "2m")]
    retention: String,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    sample_seconds: u64,
    /// Port of the API under test.
    #[arg(long, default_value_t = 18_000)]
    api_port: u16,
}

/// The state of the database at one moment of the soak.
struct Sample {
    seconds: u64,
    database_mib: f64,
    history_mib: f64,
    partitions: u64,
    events: u64,
    live_deliveries: u64,
}

impl Sample {
    /// The sample as a line of the results table.
    fn row(&self) -> String {
        format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} |",
            self.seconds,
            self.database_mib,
            self.history_mib,
            self.partitions,
            self.events,
            self.live_deliveries
        )
    }
}

const HEADER: &str = "| s | database MiB | history MiB | partitions | events kept | live deliveries |\n|---|---|---|---|---|---|";

const HISTORY: &str = "^(outbox_events|delivery_history|delivery_attempts|dead_letters)_p";

fn query(url: &str, sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql").args([url, "-Atc", sql]).output()?;
    anyhow::ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[expect(
    clippy::cast_precision_loss,
    reason = "sizes in MiB for a table of figures"
)]
fn sample(url: &str, seconds: u64) -> anyhow::Result<Sample> {
    let row = query(
        url,
        &format!(
            "select pg_database_size(current_database()),
                    coalesce((select sum(pg_total_relation_size(c.oid)) from pg_class c
                              where c.relkind = 'r' and c.relname ~ '{HISTORY}'), 0),
                    (select count(*) from ih_partitions()),
                    (select count(*) from outbox_events),
                    (select count(*) from deliveries)"
        ),
    )?;
    let fields: Vec<u64> = row.split('|').map(str::parse).collect::<Result<_, _>>()?;
    anyhow::ensure!(fields.len() == 5, "unexpected sample {row:?}");
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    Ok(Sample {
        seconds,
        database_mib: mib(fields[0]),
        history_mib: mib(fields[1]),
        partitions: fields[2],
        events: fields[3],
        live_deliveries: fields[4],
    })
}

/// The history partitions autovacuum has vacuumed (not analyzed) so far.
fn vacuumed(url: &str) -> anyhow::Result<Vec<String>> {
    Ok(query(
        url,
        &format!(
            "select relname from pg_stat_user_tables
             where relname ~ '{HISTORY}' and autovacuum_count > 0"
        ),
    )?
    .lines()
    .map(str::to_owned)
    .collect())
}

/// Runs the soak and prints its samples and the load's report.
///
/// # Errors
/// Returns an error when the stack cannot start or the database cannot be read.
#[expect(
    clippy::print_stdout,
    reason = "progress and results are the command's output"
)]
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let api_url = format!("http://127.0.0.1:{}", args.api_port);
    #[expect(clippy::disallowed_methods, reason = "the bench's own client")]
    let client = reqwest::Client::builder().no_proxy().build()?;
    // the migration is told the retention too, as a deployment's is: it makes the
    // partitions as wide as the retention asks before the first event
    suite::fresh_database(
        &args.database_url,
        &[("IH_RETENTION", args.retention.as_str())],
    )?;
    let stack = suite::start_postgres_stack(
        &args.database_url,
        args.api_port,
        &[("IH_RETENTION", args.retention.as_str())],
    )?;
    wait_until_ok(
        &client,
        &format!("{api_url}/ready"),
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await?;
    let duration = Duration::from_secs(args.minutes * 60);
    let scenario = Scenario {
        label: format!(
            "soak {}/s for {} min, IH_RETENTION={}",
            args.rate, args.minutes, args.retention
        ),
        rate: args.rate,
        duration_seconds: duration.as_secs_f64(),
        ..suite::scenario("soak")
    };
    let target = Target {
        api_url,
        token: Some(suite::TOKEN.to_owned()),
        drain_timeout: Duration::from_secs(30),
    };
    let load = tokio::spawn(load::run(target, scenario));
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut vacuums = BTreeSet::new();
    let mut next = Duration::ZERO;
    while !load.is_finished() {
        if started.elapsed() >= next {
            let taken = sample(&args.database_url, started.elapsed().as_secs())?;
            vacuums.extend(vacuumed(&args.database_url)?);
            println!("{}", taken.row());
            samples.push(taken);
            next += Duration::from_secs(args.sample_seconds);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.await??;
    drop(stack);
    println!("{}", serde_json::to_string(&report)?);
    println!("{HEADER}");
    for taken in &samples {
        println!("{}", taken.row());
    }
    let after_four: Vec<f64> = samples
        .iter()
        .filter(|taken| taken.seconds >= 240)
        .map(|taken| taken.database_mib)
        .collect();
    if let (Some(low), Some(high)) = (
        after_four.iter().copied().reduce(f64::min),
        after_four.iter().copied().reduce(f64::max),
    ) {
        let middle = f64::midpoint(low, high);
        println!(
            "database size from minute 4: {low:.0}–{high:.0} MiB (±{:.1} % around {middle:.0})",
            (high - low) / 2.0 / middle * 100.0
        );
    }
    println!(
        "history partitions autovacuumed during the soak: {} {:?}",
        vacuums.len(),
        vacuums
    );
    println!("{}", suite::table(&[suite::Row::single(&report)]));
    Ok(())
}
