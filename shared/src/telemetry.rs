//! Logging set-up: JSON lines to stdout by default, human-readable with `IH_LOG_FORMAT=pretty`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `level` is `IH_LOG_LEVEL` (a level or filter directives);
/// noisy dependencies are capped at `warn` unless the directive names them.
///
/// # Errors
/// Returns an error when `level` does not parse or a subscriber is already installed.
pub fn init_logging(
    level: &str,
    format: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut directives = level.to_owned();
    for noisy in ["sqlx", "sea_orm", "sea_orm_migration", "hyper", "poem"] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    let filter = EnvFilter::try_new(directives)?;
    let registry = tracing_subscriber::registry().with(filter);
    if format == "pretty" {
        registry.with(fmt::layer().with_target(false)).try_init()?;
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()?;
    }
    Ok(())
}
