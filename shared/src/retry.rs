//! The retry schedule and how a receiver's answer is classified.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Relative spread of the jitter applied to every backoff delay (±20 %).
pub const JITTER: f64 = 0.2;

/// The backoff policy.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Delay after attempt `n` is `base^n` seconds.
    pub base_seconds: f64,
    /// Cap of one delay.
    pub max_delay: Duration,
    /// Cap of an honoured `Retry-After`.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), before jitter: `base^attempt`,
    /// capped.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let seconds = self.base_seconds.powi(exponent);
        if seconds.is_finite() && seconds < self.max_delay.as_secs_f64() {
            Duration::from_secs_f64(seconds)
        } else {
            self.max_delay
        }
    }

    /// The delay after failed attempt `attempt`, with `unit` (uniform in [0, 1)) spreading it
    /// ±20 %, never above the cap.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        spread(self.base_delay(attempt), JITTER, unit).min(self.max_delay)
    }

    /// [`delay`](Self::delay) with a random spread.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, random_unit())
    }

    /// Whether attempt `attempt` was the last one.
    pub fn is_last(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

/// Parses `Retry-After`: delay seconds, or an HTTP date (relative to `now`); bounded by `max`.
/// Returns `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>, max: Duration) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let date = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (date - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(max))
}

/// What one attempt's result means for the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it (2xx).
    Delivered,
    /// Dead-letter at once and disable the subscription (410 Gone).
    Gone,
    /// Try again; `retry_after` is the receiver's requested wait (429/503).
    Retry {
        /// Why it failed, for `last_error` and the dead letter.
        reason: String,
        /// The honoured `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// Classifies a receiver's status. Redirects are failures: they are never followed.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        429 | 503 => Verdict::Retry {
            reason: format!("http_{status}"),
            retry_after,
        },
        300..=399 => Verdict::Retry {
            reason: format!("http_{status} (redirect not followed)"),
            retry_after: None,
        },
        _ => Verdict::Retry {
            reason: format!("http_{status}"),
            retry_after: None,
        },
    }
}

/// `duration` moved by up to ±`fraction` of itself, at random: the one jitter of the service,
/// so replicas, reconnects and retries that would run in step spread out.
pub fn jitter(duration: Duration, fraction: f64) -> Duration {
    spread(duration, fraction, random_unit())
}

/// `duration` moved by `fraction` of itself, `unit` (in [0, 1]) choosing where in ±`fraction`.
fn spread(duration: Duration, fraction: f64, unit: f64) -> Duration {
    let factor = 1.0 + fraction * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    duration.mul_f64(factor.max(0.0))
}

/// A uniform number in [0, 1) from the operating system, for jitter.
fn random_unit() -> f64 {
    let mut bytes = [0_u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_seconds: 2.0,
            max_delay: Duration::from_secs(3600),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    #[test]
    fn delays_grow_as_base_to_the_attempt_and_are_capped() {
        let policy = policy();
        let delays: Vec<u64> = (1..=5).map(|n| policy.base_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32]);
        assert_eq!(policy.base_delay(40), Duration::from_secs(3600));
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn random_jitter_stays_within_its_fraction() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
            let jittered = jitter(Duration::from_secs(10), 0.5).as_secs_f64();
            assert!((5.0..=15.0).contains(&jittered), "{jittered}");
        }
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = policy();
        for step in 0..=100 {
            let unit = f64::from(step) / 100.0;
            let delay = policy.delay(3, unit).as_secs_f64();
            assert!((6.4..=9.6).contains(&delay), "{delay} at {unit}");
        }
        assert!((policy.delay(3, 0.0).as_secs_f64() - 6.4).abs() < 1e-9);
        assert!((policy.delay(3, 1.0).as_secs_f64() - 9.6).abs() < 1e-9);
        assert!(policy.delay(30, 1.0) <= Duration::from_secs(3600));
    }

    #[test]
    fn the_last_attempt_is_the_configured_maximum() {
        assert!(!policy().is_last(4));
        assert!(policy().is_last(5));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates_and_is_bounded() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let max = Duration::from_secs(3600);
        assert_eq!(
            parse_retry_after("120", now, max),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 12:01:30 GMT", now, max),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now, max),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("31536000", now, max), Some(max));
        assert_eq!(parse_retry_after("soon", now, max), None);
        assert_eq!(parse_retry_after("-5", now, max), None);
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(classify_status(200, None), Verdict::Delivered);
        assert_eq!(classify_status(204, None), Verdict::Delivered);
        assert_eq!(classify_status(410, None), Verdict::Gone);
        assert_eq!(
            classify_status(429, wait),
            Verdict::Retry {
                reason: "http_429".into(),
                retry_after: wait
            }
        );
        assert_eq!(
            classify_status(503, wait),
            Verdict::Retry {
                reason: "http_503".into(),
                retry_after: wait
            }
        );
        assert!(matches!(
            classify_status(301, wait),
            Verdict::Retry {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(classify_status(404, None), Verdict::Retry { .. }));
        assert!(matches!(
            classify_status(500, wait),
            Verdict::Retry {
                retry_after: None,
                ..
            }
        ));
    }
}
