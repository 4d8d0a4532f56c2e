//! `ih-bench`: load generator and receiving sink for Integrations Hub.
//!
//! `ih-bench run` measures one scenario against a running API and workers; `ih-bench suite`
//! starts the release binaries against a fresh database for each scenario of the standard
//! suite, runs each three times, and writes the table in `bench/README.md`; `ih-bench soak`
//! publishes steadily for minutes on a short retention and samples the database's size;
//! `ih-bench startup` times `ih` from start to serving.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod history;
mod load;
mod process;
mod procstat;
mod sink;
mod soak;
mod startup;
mod suite;

/// Load generator and receiving sink for Integrations Hub.
#[derive(Parser)]
#[command(name = "ih-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against a running API and workers.
    Run(RunArgs),
    /// Run the standard suite on fresh databases and write bench/README.md.
    Suite(suite::SuiteArgs),
    /// Publish at a steady rate for minutes on a short retention, sampling the database's size.
    Soak(soak::SoakArgs),
    /// Measure how long `ih` takes from start to serving, on a new and on an existing file.
    Startup {
        /// Starts of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Port `ih` listens on.
        #[arg(long, default_value_t = 18_000)]
        port: u16,
    },
}

#[derive(Args)]
struct RunArgs {
    /// API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    api_url: String,
    /// Admin token (none when the API runs with authentication disabled).
    #[arg(long)]
    token: Option<String>,
    /// Events to publish (burst and batch modes).
    #[arg(short = 'n', long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent publishers.
    #[arg(short = 'c', long, default_value_t = 32)]
    concurrency: usize,
    /// Events per batch request (1 publishes singly).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Subscriptions per event (fan-out).
    #[arg(long, default_value_t = 1)]
    endpoints: usize,
    /// Subscriptions to other event types, created before the run.
    #[arg(long, default_value_t = 0)]
    other_subscriptions: usize,
    /// Steady publish rate in events per second (0 = burst).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Steady duration in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Fraction of receiver answers that are 500.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Receiver delay per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Subscriptions the events are spread over, round robin (each its own event type).
    #[arg(long, default_value_t = 1)]
    spread: usize,
    /// Events queued first to a noisy neighbour answering after `--backlog-delay-ms`.
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    /// The noisy neighbour's answer delay, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    backlog_delay_ms: u64,
    /// Events queued first to a subscription limited to `--limited-rate` a second.
    #[arg(long, default_value_t = 0)]
    limited_events: usize,
    /// That subscription's rate limit, deliveries a second.
    #[arg(long, default_value_t = 200.0)]
    limited_rate: f64,
    /// Seconds without a new arrival before the run stops waiting.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

#[expect(clippy::print_stdout, reason = "the report is the program's output")]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let scenario = load::Scenario {
                label: "run".to_owned(),
                events: args.events,
                concurrency: args.concurrency,
                batch: args.batch,
                endpoints: args.endpoints,
                other_subscriptions: args.other_subscriptions,
                rate: args.rate,
                duration_seconds: args.duration,
                fail_rate: args.fail_rate,
                delay_ms: args.delay_ms,
                spread: args.spread,
                backlog: args.backlog,
                backlog_delay_ms: args.backlog_delay_ms,
                limited_events: args.limited_events,
                limited_rate: args.limited_rate,
            };
            let target = load::Target {
                api_url: args.api_url,
                token: args.token,
                drain_timeout: Duration::from_secs(args.drain_timeout),
            };
            let report = load::run(target, scenario).await?;
            println!("{}", serde_json::to_string(&report)?);
            println!("{}", suite::table(&[suite::Row::single(&report)]));
        }
        Command::Suite(args) => suite::run(args).await?,
        Command::Soak(args) => soak::run(args).await?,
        Command::Startup { runs, port } => {
            println!("{}", startup::measure(runs, port).await?.table());
        }
    }
    Ok(())
}
