//! Starting and stopping the binaries under test, and small helpers the suite and the
//! start-up measurement share.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

/// Started service processes; stopped (SIGTERM, then SIGKILL after 15 s) when dropped.
pub struct Stack {
    pub children: Vec<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A release binary beside `ih-bench`.
///
/// # Errors
/// When it is not there.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    let path = here.parent().map(|dir| dir.join(name)).unwrap_or_default();
    anyhow::ensure!(
        path.exists(),
        "{} not found beside ih-bench: build the release binaries",
        path.display()
    );
    Ok(path)
}

/// Polls `url` every `every` until it answers 2xx.
///
/// # Errors
/// When it has not within `within`.
pub async fn wait_until_ok(
    client: &reqwest::Client,
    url: &str,
    every: Duration,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
    anyhow::bail!("{url} did not answer 2xx within {within:?}")
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
