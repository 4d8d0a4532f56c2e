//! Start-up time of `ih`: from spawning the built binary to its first `200` on `/health`, on a
//! new SQLite file (created and migrated during the start) and again on that file.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::process::{Stack, binary, median, wait_until_ok};

/// Start-up times in milliseconds.
pub struct Startup {
    /// On a new file: the file, its directory and the schema are created during the start.
    pub fresh_ms: Vec<f64>,
    /// On the file the previous start left.
    pub existing_ms: Vec<f64>,
}

impl Startup {
    /// The Markdown table of the medians and maxima.
    pub fn table(&self) -> String {
        let max = |values: &[f64]| values.iter().copied().fold(0.0_f64, f64::max);
        format!(
            "| `ih` start-up, built binary → first 200 on `/health` | runs | median ms | max ms |\n|---|---|---|---|\n\
             | new SQLite file (created and migrated at start) | {} | {:.0} | {:.0} |\n\
             | existing SQLite file | {} | {:.0} | {:.0} |\n",
            self.fresh_ms.len(),
            median(self.fresh_ms.clone()),
            max(&self.fresh_ms),
            self.existing_ms.len(),
            median(self.existing_ms.clone()),
            max(&self.existing_ms),
        )
    }
}

/// Starts and stops `ih` `runs` times on new files and `runs` times on existing ones.
///
/// # Errors
/// Returns an error when `ih` is missing or does not serve within 10 s.
pub async fn measure(runs: usize, port: u16) -> anyhow::Result<Startup> {
    #[expect(clippy::disallowed_methods, reason = "the bench's own client")]
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()?;
    let directory = std::env::temp_dir().join("ih-bench-startup");
    let mut startup = Startup {
        fresh_ms: Vec::new(),
        existing_ms: Vec::new(),
    };
    let url = format!("http://127.0.0.1:{port}/health");
    for _ in 0..runs {
        if directory.exists() {
            std::fs::remove_dir_all(&directory)?;
        }
        std::fs::create_dir_all(&directory)?;
        for existing in [false, true] {
            let started = Instant::now();
            let ih = Command::new(binary("ih")?)
                .current_dir(&directory)
                .env_clear()
                .env("IH_AUTH_DISABLED", "true")
                .env("IH_API_ADDR", format!("127.0.0.1:{port}"))
                .env("IH_LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let stack = Stack { children: vec![ih] };
            wait_until_ok(
                &client,
                &url,
                Duration::from_millis(2),
                Duration::from_secs(10),
            )
            .await?;
            let serving = started.elapsed();
            drop(stack);
            let ms = serving.as_secs_f64() * 1000.0;
            if existing {
                startup.existing_ms.push(ms);
            } else {
                startup.fresh_ms.push(ms);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&directory);
    Ok(startup)
}
