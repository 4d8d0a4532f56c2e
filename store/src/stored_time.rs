//! Times as SQLite stores them: UTC text in one fixed-width form, so comparing the text
//! compares the instants. Used by the SQLite statements and by the sea-orm queries that
//! compare or write times on SQLite.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The current time in the stored form, as an SQL expression.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now;

/// A time in the stored form: UTC, milliseconds, fixed width, so text order is time order.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An SQLite date modifier adding `delay` (`strftime(…, 'now', '+1.500 seconds')`).
pub(crate) fn plus(delay: Duration) -> String {
    format!("+{:.3} seconds", delay.as_secs_f64())
}

/// An SQLite date modifier moving a time by `seconds`, either way.
pub(crate) fn shift(seconds: f64) -> String {
    format!("{seconds:+.3} seconds")
}
