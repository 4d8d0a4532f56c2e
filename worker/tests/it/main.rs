//! Integration tests of ih-worker against a real Postgres and local receiving servers, with
//! workers in-process and as child processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

/// Declares each test body (an `async fn(Backend)`) once per backend, as `name::postgres` and
/// `name::sqlite`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name(testkit::db::Backend::Postgres).await;
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name(testkit::db::Backend::Sqlite).await;
                }
            }
        )*
    };
}

mod console;
mod crash;
mod dashboard;
mod delivery;
mod deployment;
mod flood;
mod health;
mod hostile;
mod lanes;
mod observability;
mod outage;
mod retention;
mod secrets;
mod slack;
mod support;
