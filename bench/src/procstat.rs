//! CPU time and peak memory of the service processes, read from `/proc`.

use std::collections::HashMap;

use serde::Serialize;

/// The processes measured, by their `comm` name (`ih` is the embedded single process).
const MEASURED: &[&str] = &["ih-api", "ih-worker", "ih", "postgres"];

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One process at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    name: String,
    cpu_ticks: u64,
    peak_rss_kib: u64,
}

/// CPU seconds and peak memory of one kind of process over a run.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    /// `ih-api`, `ih-worker`, `ih` or `postgres`.
    pub name: String,
    /// How many processes of that name.
    pub processes: usize,
    /// CPU seconds used during the run, all of them together.
    pub cpu_seconds: f64,
    /// The largest peak resident set of one of them, in MiB.
    pub peak_rss_mib: f64,
}

fn read(pid: &str) -> Option<Sample> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()?
        .trim()
        .to_owned();
    if !MEASURED.contains(&name.as_str()) {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised name; utime and stime are the 14th and 15th fields
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_default();
    Some(Sample {
        name,
        cpu_ticks: utime + stime,
        peak_rss_kib,
    })
}

/// Every measured process now, by pid.
pub fn snapshot() -> HashMap<String, Sample> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| read(&pid).map(|sample| (pid, sample)))
        .collect()
}

/// What each kind of process used between two snapshots.
pub fn usage(
    before: &HashMap<String, Sample>,
    after: &HashMap<String, Sample>,
) -> Vec<ProcessUsage> {
    let mut by_name: HashMap<String, ProcessUsage> = HashMap::new();
    for (pid, sample) in after {
        let earlier = before.get(pid).map_or(0, |before| before.cpu_ticks);
        let entry = by_name
            .entry(sample.name.clone())
            .or_insert_with(|| ProcessUsage {
                name: sample.name.clone(),
                processes: 0,
                cpu_seconds: 0.0,
                peak_rss_mib: 0.0,
            });
        entry.processes += 1;
        entry.cpu_seconds += sample.cpu_ticks.saturating_sub(earlier) as f64 / TICKS_PER_SECOND;
        entry.peak_rss_mib = entry.peak_rss_mib.max(sample.peak_rss_kib as f64 / 1024.0);
    }
    let mut usage: Vec<ProcessUsage> = by_name.into_values().collect();
    usage.sort_by(|a, b| a.name.cmp(&b.name));
    usage
}
