//! Integration tests of ih-worker against a real Postgres and local receiving servers, with
//! workers in-process and as child processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

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
