//! The deployment files agree with the binaries: every variable they set is one the binaries
//! read, every worker flag is one `ih-worker --help` lists, ports match the configured
//! addresses, and every probe path answers on the running binaries.

use std::{collections::BTreeSet, process::Command, time::Duration};

use serde_yaml::Value;
use shared::config::KNOWN_VARIABLES;
use testkit::db::TestDb;

use crate::observability::{Stack, workspace_bin};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|document: &Value| !document.is_null())
        .collect()
}

fn kind(documents: &[Value], kind: &str) -> Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind)
        .unwrap()
        .clone()
}

fn container(deployment: &Value) -> Value {
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

fn port_of(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Standard variables the binaries read besides their own `IH_*` ones.
const STANDARD_VARIABLES: &[&str] = &["OTEL_EXPORTER_OTLP_ENDPOINT"];

fn assert_known(variable: &str, source: &str) {
    assert!(
        KNOWN_VARIABLES.contains(&variable) || STANDARD_VARIABLES.contains(&variable),
        "{source} sets {variable}, which neither binary reads"
    );
}

#[test]
fn every_variable_the_deployment_sets_is_one_the_binaries_read() {
    let configmap = documents("k8s/configmap.yaml");
    let secret = documents("k8s/secret.example.yaml");
    let mut set = BTreeSet::new();
    for (key, _) in configmap[0]["data"].as_mapping().unwrap() {
        set.insert(key.as_str().unwrap().to_owned());
    }
    for (key, _) in secret[0]["stringData"].as_mapping().unwrap() {
        set.insert(key.as_str().unwrap().to_owned());
    }
    for file in ["k8s/worker.yaml", "k8s/api.yaml"] {
        for env in container(&kind(&documents(file), "Deployment"))["env"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            set.insert(env["name"].as_str().unwrap().to_owned());
        }
    }
    for variable in &set {
        assert_known(variable, "k8s/");
    }
    for required in [
        "IH_DATABASE_URL",
        "IH_API_TOKENS",
        "IH_API_ADDR",
        "IH_WORKER_METRICS_ADDR",
    ] {
        assert!(set.contains(required), "k8s/ does not set {required}");
    }

    let compose = &documents("docker-compose.yml")[0];
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for (key, _) in service["environment"].as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if key != "<<" && key.starts_with("IH_") {
                assert_known(
                    key,
                    &format!("docker-compose service {}", name.as_str().unwrap()),
                );
            }
        }
    }
}

fn help_flags(binary: &str) -> BTreeSet<String> {
    let output = Command::new(workspace_bin(binary))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .filter(|word| word.starts_with("--"))
        .map(|word| word.trim_end_matches(',').to_owned())
        .collect()
}

#[test]
fn container_args_are_flags_the_binaries_accept() {
    let worker_flags = help_flags("ih-worker");
    let worker = container(&kind(&documents("k8s/worker.yaml"), "Deployment"));
    assert_eq!(worker["command"][0], "ih-worker");
    let args: Vec<&str> = worker["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!args.is_empty());
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(
            worker_flags.contains(flag),
            "k8s worker arg {arg} is not in ih-worker --help: {worker_flags:?}"
        );
    }
    let compose = &documents("docker-compose.yml")[0];
    for word in compose["services"]["worker"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
    {
        if word.starts_with("--") {
            assert!(
                worker_flags.contains(word),
                "compose worker flag {word} is not in ih-worker --help"
            );
        }
    }
    let job = &documents("k8s/migrate-job.yaml")[0];
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(job_container["command"][0], "ih-migrate");
    let output = Command::new(workspace_bin("ih-migrate"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for arg in job_container["args"].as_sequence().unwrap() {
        assert!(
            help.contains(arg.as_str().unwrap()),
            "ih-migrate does not know {arg:?}"
        );
    }
}

#[test]
fn ports_match_the_configured_addresses() {
    let configmap = &documents("k8s/configmap.yaml")[0]["data"];
    let api = container(&kind(&documents("k8s/api.yaml"), "Deployment"));
    let worker_documents = documents("k8s/worker.yaml");
    let worker = container(&kind(&worker_documents, "Deployment"));
    let api_port = api["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(
        api_port,
        port_of(configmap["IH_API_ADDR"].as_str().unwrap())
    );
    assert_eq!(api_port, u64::from(shared::config::DEFAULT_API_PORT));
    let metrics_port = worker["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(
        metrics_port,
        port_of(configmap["IH_WORKER_METRICS_ADDR"].as_str().unwrap())
    );
    let metrics_arg = worker["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("--metrics-addr="))
        .unwrap();
    assert_eq!(metrics_port, port_of(metrics_arg));
    let service = kind(&documents("k8s/api.yaml"), "Service");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        api["ports"][0]["name"]
    );
    // the worker's grace period must cover its own shutdown grace
    let grace = kind(&worker_documents, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    let worker_grace: f64 = configmap["IH_WORKER_SHUTDOWN_GRACE_SECONDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace as f64 > worker_grace + 5.0,
        "terminationGracePeriodSeconds {grace} vs grace {worker_grace}"
    );
}

#[tokio::test]
async fn every_probe_path_answers_on_the_running_binaries() {
    let db = TestDb::new().await;
    let stack = Stack::start(&db, &[]).await;
    let mut probed = 0;
    for (file, base) in [
        ("k8s/api.yaml", &stack.api_url),
        ("k8s/worker.yaml", &stack.worker_metrics_url),
    ] {
        let deployment = kind(&documents(file), "Deployment");
        let container = container(&deployment);
        for probe in ["livenessProbe", "readinessProbe"] {
            let Some(path) = container[probe]["httpGet"]["path"].as_str() else {
                continue;
            };
            let status = stack
                .client
                .get(format!("{base}{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap()
                .status();
            assert!(
                status.is_success(),
                "{file} {probe} {path} answered {status}"
            );
            probed += 1;
        }
    }
    assert_eq!(probed, 3, "api liveness and readiness, worker liveness");
    for file in ["k8s/servicemonitors.yaml"] {
        for monitor in documents(file) {
            assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
        }
    }
    for base in [&stack.api_url, &stack.worker_metrics_url] {
        let metrics = stack
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert!(metrics.status().is_success());
    }
}

#[tokio::test]
async fn two_migration_jobs_started_at_once_both_succeed_and_apply_the_schema_once() {
    // a database that does not exist yet: both runs race to create it, then to migrate it
    let db = TestDb::new().await;
    let name = format!("{}_fresh", db.name);
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_path(&format!("/{name}"));
    let spawn = || {
        Command::new(workspace_bin("ih-migrate"))
            .env_clear()
            .args(["--database-url", url.as_str(), "up"])
            .output()
    };
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(spawn);
        let second = scope.spawn(spawn);
        (
            first.join().unwrap().unwrap(),
            second.join().unwrap().unwrap(),
        )
    });
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let mut fresh = db.url.clone();
    fresh.replace_range(fresh.rfind('/').unwrap().., &format!("/{name}"));
    let pool = sqlx::PgPool::connect(&fresh).await.unwrap();
    let applied: i64 = sqlx::query_scalar("select count(*) from seaql_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let migrations = migration_count();
    assert_eq!(applied, migrations, "each migration recorded once");
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name = 'deliveries'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 1);
    pool.close().await;
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

fn migration_count() -> i64 {
    let output = Command::new(workspace_bin("ih-migrate"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    // one Postgres `.up.sql` file per migration under migration/src/sql
    std::fs::read_dir(format!("{ROOT}/migration/src/sql"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.ends_with(".up.sql") && !name.ends_with(".sqlite.up.sql")
        })
        .count() as i64
}

#[tokio::test]
async fn migration_runs_started_at_once_on_a_new_sqlite_file_all_succeed() {
    let directory =
        std::env::temp_dir().join(format!("ih_migrate_race_{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", directory.join("hub.db").display());
    let spawn = || {
        Command::new(workspace_bin("ih-migrate"))
            .env_clear()
            .args(["--database-url", url.as_str(), "up"])
            .output()
    };
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4).map(|_| scope.spawn(spawn)).collect();
        runs.into_iter()
            .map(|run| run.join().unwrap().unwrap())
            .collect()
    });
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("select count(*) from seaql_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, migration_count(), "each migration recorded once");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn the_keda_scalers_query_counts_what_the_workers_report_as_queue_depth() {
    let db = TestDb::new().await;
    let scaler = kind(&documents("k8s/worker-keda.yaml"), "ScaledObject");
    let query = scaler["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::support::subscribe(&db, "http://127.0.0.1:9/hook", "a-plain-secret", &["a"]).await;
    let payloads: Vec<String> = (0..8).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    crate::support::publish(&db, "a", &payloads).await;
    // eight pending and due; then two due later, one leased with its lease expired (due:
    // a dead worker's), one leased and in flight
    db.execute_script(
        "update deliveries set next_attempt_at = now() + interval '1 hour'
           where id in (select id from deliveries order by id limit 2);
         update deliveries set status = 'leased', lease_token = gen_random_uuid(),
                leased_by = 'w', next_attempt_at = now() - interval '1 minute'
           where id in (select id from deliveries order by id offset 2 limit 1);
         update deliveries set status = 'leased', lease_token = gen_random_uuid(),
                leased_by = 'w', next_attempt_at = now() + interval '30 seconds'
           where id in (select id from deliveries order by id offset 3 limit 1);"
            .to_owned(),
    )
    .await;
    let scaled_on: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .fetch_one(db.pg())
        .await
        .unwrap();
    assert_eq!(scaled_on, 5, "four pending and due, one expired lease");
    let sample = store::sample_queue(&db.pool).await.unwrap();
    assert!(sample.leader);
    assert_eq!(sample.depth, Some(scaled_on), "the workers' ih_queue_depth");
}
