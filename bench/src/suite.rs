//! The standard suite: each scenario runs three times, each time against freshly started
//! release binaries and a fresh database; the medians go into `bench/README.md`. The
//! embedded scenarios run `ih` (API and worker in one process) on a fresh SQLite file
//! instead of `ih-api` and `ih-worker` on Postgres, and the suite ends with `ih`'s start-up
//! time.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use clap::Args;

use crate::{
    history,
    load::{self, Report, Scenario, Target},
    process::{Stack, binary, median, wait_until_ok},
    startup::{self, Startup},
};

/// Calls of each admin listing timed on a seeded history.
const LISTING_CALLS: usize = 20;

/// Starts of `ih` on a new file, and as many on an existing one.
const STARTUP_RUNS: usize = 10;

/// Options of `ih-bench suite`.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// The server to create the bench database on (its database name is replaced).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/ih_bench")]
    database_url: String,
    /// Runs per scenario (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only scenarios whose label contains this (`=label`: whose label is exactly that).
    #[arg(long)]
    only: Option<String>,
    /// The README whose results table is rewritten.
    #[arg(long, default_value = "bench/README.md")]
    readme: PathBuf,
    /// Port of the API under test.
    #[arg(long, default_value_t = 18_000)]
    api_port: u16,
}

pub const TOKEN: &str = "bench-admin-token-0123456789";

/// One scenario of the suite and how the stack is started for it.
struct Plan {
    scenario: Scenario,
    workers: usize,
    /// What the scenario needs besides the defaults (the history kept, retries sooner); never
    /// a speed setting: the suite measures what a user gets.
    worker_env: Vec<(&'static str, &'static str)>,
    /// `ih` on an SQLite file instead of `ih-api` and `ih-worker` on Postgres.
    embedded: bool,
    /// Past events seeded before the first run and kept for the others (`history.sql`); the
    /// admin listings are timed on them before the first run's load.
    history: u64,
}

/// The seeded history spans 60 days: a worker at the default retention (30 days) would drop
/// half of it during the first run, taking the parent tables' locks as it goes.
const KEEP_THE_HISTORY: [(&str, &str); 1] = [("IH_RETENTION", "90d")];

/// Label prefix of the embedded scenarios.
const EMBEDDED: &str = "embedded (SQLite): ";

pub fn scenario(label: &str) -> Scenario {
    Scenario {
        label: label.to_owned(),
        events: 0,
        concurrency: 32,
        batch: 1,
        endpoints: 1,
        other_subscriptions: 0,
        rate: 0.0,
        duration_seconds: 0.0,
        fail_rate: 0.0,
        delay_ms: 0,
        spread: 0,
        backlog: 0,
        backlog_delay_ms: 0,
        limited_events: 0,
        limited_rate: 0.0,
    }
}

fn plans() -> Vec<Plan> {
    let plan = |scenario: Scenario, workers: usize| Plan {
        scenario,
        workers,
        worker_env: vec![],
        embedded: false,
        history: 0,
    };
    let mut plans = vec![
        plan(
            Scenario {
                events: 20_000,
                ..scenario("burst 20k single, c32")
            },
            1,
        ),
        plan(
            Scenario {
                events: 20_000,
                other_subscriptions: 1_000,
                ..scenario("burst 20k single, c32, 1,000 other subscriptions")
            },
            1,
        ),
        plan(
            Scenario {
                events: 20_000,
                other_subscriptions: 10_000,
                ..scenario("burst 20k single, c32, 10,000 other subscriptions")
            },
            1,
        ),
        Plan {
            history: 2_000_000,
            worker_env: KEEP_THE_HISTORY.to_vec(),
            ..plan(
                Scenario {
                    events: 20_000,
                    ..scenario("burst 20k single, c32, 2M past events")
                },
                1,
            )
        },
        Plan {
            history: 10_000_000,
            worker_env: KEEP_THE_HISTORY.to_vec(),
            ..plan(
                Scenario {
                    events: 20_000,
                    ..scenario("burst 20k single, c32, 10M past events")
                },
                1,
            )
        },
        plan(
            Scenario {
                events: 100_000,
                batch: 100,
                concurrency: 4,
                ..scenario("batch 100k in 100s")
            },
            1,
        ),
        plan(
            Scenario {
                events: 2_000,
                endpoints: 10,
                ..scenario("fan-out 2k x 10")
            },
            1,
        ),
        plan(
            Scenario {
                rate: 500.0,
                duration_seconds: 20.0,
                ..scenario("steady 500/s 20 s")
            },
            1,
        ),
        plan(
            Scenario {
                rate: 2_000.0,
                duration_seconds: 20.0,
                ..scenario("steady 2000/s 20 s")
            },
            1,
        ),
    ];
    for workers in [1, 2, 4] {
        plans.push(plan(
            Scenario {
                events: 3_000,
                delay_ms: 50,
                spread: 10,
                ..scenario(&format!("50 ms receiver, {workers} worker(s)"))
            },
            workers,
        ));
    }
    plans.push(plan(
        Scenario {
            events: 20_000,
            spread: 1_000,
            ..scenario("burst 20k spread over 1,000 subscriptions, c32")
        },
        1,
    ));
    plans.push(plan(
        Scenario {
            rate: 100.0,
            duration_seconds: 20.0,
            backlog: 30_000,
            backlog_delay_ms: 1_500,
            ..scenario("noisy neighbour: 100/s beside a 30,000-row backlog answering in 1.5 s")
        },
        1,
    ));
    plans.push(plan(
        Scenario {
            events: 20_000,
            limited_events: 4_000,
            limited_rate: 200.0,
            ..scenario("burst 20k beside a subscription limited to 200/s")
        },
        1,
    ));
    let failing = [
        ("IH_DELIVERY_BACKOFF_BASE_SECONDS", "1"),
        ("IH_DELIVERY_MAX_ATTEMPTS", "20"),
    ];
    // the same settings with and without failures, so the two latencies compare
    for (fail_rate, label) in [
        (0.0, "steady 500/s, no failures"),
        (0.2, "steady 500/s, 20 % 500s"),
    ] {
        plans.push(Plan {
            worker_env: failing.to_vec(),
            ..plan(
                Scenario {
                    rate: 500.0,
                    duration_seconds: 10.0,
                    fail_rate,
                    ..scenario(label)
                },
                1,
            )
        });
    }
    // the burst and steady scenarios again on the embedded mode, for comparison
    let embedded: Vec<Plan> = plans
        .iter()
        .filter(|plan| {
            let label = &plan.scenario.label;
            (label.starts_with("burst") && !label.contains("past events"))
                || (label.starts_with("steady ") && !label.contains(','))
        })
        .map(|plan| Plan {
            scenario: Scenario {
                label: format!("{EMBEDDED}{}", plan.scenario.label),
                ..plan.scenario.clone()
            },
            worker_env: vec![],
            embedded: true,
            ..*plan
        })
        .collect();
    plans.extend(embedded);
    plans
}

fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// Drops the bench database and migrates a new one, `ih-migrate` run with `env` besides.
pub fn fresh_database(url: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url)?;
    let database = parsed.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(
        database.starts_with("ih_bench"),
        "refusing to drop {database}: the bench database name must start with ih_bench"
    );
    let maintenance = with_database(url, "postgres")?;
    let status = Command::new("psql")
        .args([
            maintenance.as_str(),
            "-qc",
            &format!("drop database if exists {database} with (force)"),
        ])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "dropping the bench database failed");
    let status = Command::new(binary("ih-migrate")?)
        .envs(env.iter().copied())
        .args(["--database-url", url, "up"])
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "ih-migrate failed");
    Ok(())
}

/// The SQLite file of the embedded runs, in a directory emptied before each run.
fn fresh_sqlite_file() -> anyhow::Result<String> {
    let directory = std::env::temp_dir().join("ih-bench-sqlite");
    if directory.exists() {
        std::fs::remove_dir_all(&directory)?;
    }
    Ok(format!("sqlite://{}", directory.join("bench.db").display()))
}

/// `ih` on a fresh SQLite file (it creates the file and its schema at start).
fn start_embedded(args: &SuiteArgs, plan: &Plan) -> anyhow::Result<Stack> {
    let ih = Command::new(binary("ih")?)
        .env_clear()
        .env("IH_DATABASE_URL", fresh_sqlite_file()?)
        .env("IH_API_TOKENS", format!("admin:{TOKEN}"))
        .env("IH_ALLOWED_DESTINATION_CIDRS", "127.0.0.1/32")
        .env("IH_LOG_LEVEL", "warn")
        .env("IH_API_ADDR", format!("127.0.0.1:{}", args.api_port))
        .envs(plan.worker_env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Stack { children: vec![ih] })
}

fn start_stack(args: &SuiteArgs, plan: &Plan) -> anyhow::Result<Stack> {
    if plan.embedded {
        return start_embedded(args, plan);
    }
    start_services(&args.database_url, args.api_port, plan, &[])
}

/// `ih-api` and one `ih-worker` on `database_url` at the suite's steady settings, the workers
/// with `worker_env` besides.
pub fn start_postgres_stack(
    database_url: &str,
    api_port: u16,
    worker_env: &[(&'static str, &str)],
) -> anyhow::Result<Stack> {
    let plan = Plan {
        scenario: scenario("soak"),
        workers: 1,
        worker_env: vec![],
        embedded: false,
        history: 0,
    };
    start_services(database_url, api_port, &plan, worker_env)
}

/// Where worker `index` of a stack serves `/metrics`.
fn worker_metrics_port(api_port: u16, index: usize) -> u16 {
    api_port + 1000 + u16::try_from(index).unwrap_or(u16::MAX - api_port - 1000)
}

/// Rows the workers handed back (`ih_deliveries_deferred_total`, summed over them); none for
/// the embedded mode, whose worker shares the API's process.
async fn handed_back(client: &reqwest::Client, api_port: u16, plan: &Plan) -> Option<f64> {
    if plan.embedded {
        return None;
    }
    let mut total = 0.0;
    for index in 0..plan.workers {
        let port = worker_metrics_port(api_port, index);
        let text = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        total += text
            .lines()
            .filter(|line| line.starts_with("ih_deliveries_deferred_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Some(total)
}

fn start_services(
    database_url: &str,
    api_port: u16,
    plan: &Plan,
    extra_env: &[(&'static str, &str)],
) -> anyhow::Result<Stack> {
    let mut stack = Stack { children: vec![] };
    let common = [
        ("IH_DATABASE_URL", database_url.to_owned()),
        ("IH_API_TOKENS", format!("admin:{TOKEN}")),
        ("IH_ALLOWED_DESTINATION_CIDRS", "127.0.0.1/32".to_owned()),
        ("IH_LOG_LEVEL", "warn".to_owned()),
    ];
    let api = Command::new(binary("ih-api")?)
        .env_clear()
        .envs(common.iter().cloned())
        .env("IH_API_ADDR", format!("127.0.0.1:{api_port}"))
        .stdout(Stdio::null())
        .spawn()?;
    stack.children.push(api);
    for index in 0..plan.workers {
        let worker = Command::new(binary("ih-worker")?)
            .env_clear()
            .envs(common.iter().cloned())
            .envs(plan.worker_env.iter().map(|(k, v)| (*k, *v)))
            .envs(extra_env.iter().map(|(k, v)| (*k, *v)))
            .env(
                "IH_WORKER_METRICS_ADDR",
                format!("127.0.0.1:{}", worker_metrics_port(api_port, index)),
            )
            .env("IH_WORKER_ID", format!("bench-{index}"))
            .stdout(Stdio::null())
            .spawn()?;
        stack.children.push(worker);
    }
    Ok(stack)
}

/// One line of the results table: the medians of a scenario's runs.
pub struct Row {
    label: String,
    settings: String,
    delivery_rate: f64,
    publish_rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    lost: usize,
    rejected: usize,
    duplicates: u64,
    /// `ih-api`, or `ih` in the embedded mode.
    api_mib: f64,
    /// `ih-worker`; none in the embedded mode (the worker is inside `ih`).
    worker_mib: Option<f64>,
    cpu: String,
}

fn settings(scenario: &Scenario, workers: usize) -> String {
    let load = if scenario.rate > 0.0 {
        format!("{}/s for {} s", scenario.rate, scenario.duration_seconds)
    } else {
        format!(
            "n={} c={} batch={}",
            scenario.events, scenario.concurrency, scenario.batch
        )
    };
    let receiver = match (scenario.delay_ms, scenario.fail_rate) {
        (0, 0.0) => String::new(),
        (delay, rate) => format!(", receiver {delay} ms / {:.0} % fail", rate * 100.0),
    };
    let spread = if scenario.spread > 1 {
        format!(" spread over {} subscriptions", scenario.spread)
    } else {
        String::new()
    };
    let limited = if scenario.limited_events > 0 {
        format!(
            ", beside {} queued to one limited to {}/s",
            scenario.limited_events, scenario.limited_rate
        )
    } else {
        String::new()
    };
    let neighbour = if scenario.backlog > 0 {
        format!(
            ", beside {} queued to one answering in {} ms",
            scenario.backlog, scenario.backlog_delay_ms
        )
    } else {
        String::new()
    };
    format!(
        "{load}{spread}, {} endpoint(s), {workers} worker(s){receiver}{neighbour}{limited}",
        scenario.endpoints
    )
}

impl Row {
    /// A row from one run.
    pub fn single(report: &Report) -> Self {
        Self::median_of(std::slice::from_ref(report), String::new())
    }

    fn median_of(reports: &[Report], settings: String) -> Self {
        let usage = |name: &str, field: fn(&crate::procstat::ProcessUsage) -> f64| {
            reports
                .iter()
                .flat_map(|r| r.processes.iter().filter(|p| p.name == name).map(field))
                .fold(0.0_f64, f64::max)
        };
        let embedded = reports
            .iter()
            .any(|r| r.processes.iter().any(|p| p.name == "ih"));
        let measured: &[&str] = if embedded {
            &["ih"]
        } else {
            &["ih-api", "ih-worker", "postgres"]
        };
        let cpu = measured
            .iter()
            .map(|name| {
                median(
                    reports
                        .iter()
                        .map(|r| {
                            r.processes
                                .iter()
                                .filter(|p| p.name == *name)
                                .map(|p| p.cpu_seconds)
                                .sum()
                        })
                        .collect(),
                )
            })
            .map(|seconds| format!("{seconds:.1}"))
            .collect::<Vec<_>>()
            .join(" / ");
        let cpu = if embedded { format!("ih {cpu}") } else { cpu };
        Self {
            label: reports
                .first()
                .map(|r| r.scenario.label.clone())
                .unwrap_or_default(),
            settings,
            delivery_rate: median(reports.iter().map(|r| r.delivery_rate).collect()),
            publish_rate: median(reports.iter().map(|r| r.publish_rate).collect()),
            p50: median(reports.iter().map(|r| r.latency_ms.p50).collect()),
            p99: median(reports.iter().map(|r| r.latency_ms.p99).collect()),
            p999: median(reports.iter().map(|r| r.latency_ms.p999).collect()),
            lost: reports.iter().map(|r| r.lost).max().unwrap_or_default(),
            rejected: reports.iter().map(|r| r.rejected).max().unwrap_or_default(),
            duplicates: reports
                .iter()
                .map(|r| r.duplicates)
                .max()
                .unwrap_or_default(),
            api_mib: usage(if embedded { "ih" } else { "ih-api" }, |p| p.peak_rss_mib),
            worker_mib: (!embedded).then(|| usage("ih-worker", |p| p.peak_rss_mib)),
            cpu,
        }
    }
}

/// Renders rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | settings | deliveries/s | publishes/s | p50 ms | p99 ms | p99.9 ms | lost | dup | refused | api MiB | worker MiB | CPU s api / worker / pg |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.1} | {} | {} |\n",
            row.label,
            row.settings,
            row.delivery_rate,
            row.publish_rate,
            row.p50,
            row.p99,
            row.p999,
            row.lost,
            row.duplicates,
            row.rejected,
            row.api_mib,
            row.worker_mib
                .map_or_else(|| "in ih".to_owned(), |mib| format!("{mib:.1}")),
            row.cpu
        ));
    }
    out
}

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

fn write_readme(
    path: &Path,
    rows: &[Row],
    listings: &[String],
    startup: &Startup,
) -> anyhow::Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_owned())
        .unwrap_or_default();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|output| !output.stdout.is_empty());
    let block = format!(
        "{BEGIN}\nMeasured {} on commit `{commit}`{}; medians of the runs of each scenario.\n\n{}\n{}{}{END}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        table(rows),
        listings
            .iter()
            .map(|listed| format!("{listed}\n"))
            .collect::<String>(),
        startup.table()
    );
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (current.find(BEGIN), current.find(END)) {
        (Some(start), Some(end)) if start < end => {
            format!(
                "{}{block}{}",
                &current[..start],
                &current[end + END.len()..]
            )
        }
        _ => format!("{current}\n{block}\n"),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

/// Runs the suite and rewrites the README table.
///
/// # Errors
/// Returns an error when a binary is missing or a run cannot start.
#[expect(
    clippy::print_stdout,
    reason = "progress and results are the command's output"
)]
pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let api_url = format!("http://127.0.0.1:{}", args.api_port);
    #[expect(clippy::disallowed_methods, reason = "the bench's own client")]
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut rows = Vec::new();
    let mut listing_tables = Vec::new();
    for plan in plans() {
        if args.only.as_deref().is_some_and(|only| {
            only.strip_prefix('=').map_or_else(
                || !plan.scenario.label.contains(only),
                |exact| plan.scenario.label != exact,
            )
        }) {
            continue;
        }
        let mut reports = Vec::new();
        for run in 1..=args.runs {
            // a seeded history is made once and kept for the plan's later runs (each adds its
            // 20k events to it): seeding ten million events takes minutes
            let keep_history = plan.history > 0 && run > 1;
            if !plan.embedded && !keep_history {
                fresh_database(&args.database_url, &[])?;
            }
            let size = if plan.history > 0 && run == 1 {
                println!("  seeding {} past events", plan.history);
                Some(history::seed(&args.database_url, plan.history)?)
            } else {
                None
            };
            let stack = start_stack(&args, &plan)?;
            let ready = format!("{api_url}/ready");
            wait_until_ok(
                &client,
                &ready,
                Duration::from_millis(50),
                Duration::from_secs(20),
            )
            .await?;
            if let Some(size) = size {
                // a listing that fails is reported, and the load still runs
                match history::listings(&client, &api_url, TOKEN, LISTING_CALLS).await {
                    Ok(latencies) => {
                        let listed = history::table(plan.history, size, &latencies);
                        println!("{listed}");
                        listing_tables.push(listed);
                    }
                    Err(error) => println!("  the admin listings failed: {error:#}"),
                }
            }
            let target = Target {
                api_url: api_url.clone(),
                token: Some(TOKEN.to_owned()),
                drain_timeout: Duration::from_secs(30),
            };
            let report = load::run(target, plan.scenario.clone()).await?;
            let handed_back = handed_back(&client, args.api_port, &plan).await;
            drop(stack);
            println!("{}", serde_json::to_string(&report)?);
            println!(
                "  {} run {run}: {:.0} deliveries/s, p50 {:.1} ms, p99 {:.1} ms, lost {}, duplicates {}, handed back {}{}",
                plan.scenario.label,
                report.delivery_rate,
                report.latency_ms.p50,
                report.latency_ms.p99,
                report.lost,
                report.duplicates,
                handed_back.map_or_else(|| "-".to_owned(), |n| format!("{n:.0}")),
                report
                    .limited_rate
                    .map(|rate| format!(", rate-limited subscription {rate:.1}/s"))
                    .unwrap_or_default(),
            );
            reports.push(report);
        }
        let mut described = settings(&plan.scenario, plan.workers);
        if plan.embedded {
            described = described.replace("1 worker(s)", "ih (API + worker)");
        }
        rows.push(Row::median_of(&reports, described));
    }
    println!("{}", table(&rows));
    for listed in &listing_tables {
        println!("{listed}");
    }
    if args
        .only
        .as_deref()
        .is_none_or(|only| "startup".contains(only))
    {
        let startup = startup::measure(STARTUP_RUNS, args.api_port).await?;
        println!("{}", startup.table());
        if args.only.is_none() {
            write_readme(&args.readme, &rows, &listing_tables, &startup)?;
        }
    }
    Ok(())
}
