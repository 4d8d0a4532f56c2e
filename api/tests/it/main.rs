//! Integration tests of ih-api: the real server on 127.0.0.1:0 against a real Postgres, one
//! fresh database per test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod admin;
mod config;
mod events;
mod health;
mod hostile;
mod openapi;
mod subscriptions;
mod support;
