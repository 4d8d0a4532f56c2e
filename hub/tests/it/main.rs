//! End-to-end tests of `ih`: the API and a worker in one process, on each backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

mod crash;
mod faults;
mod listen;
mod suite;
mod support;
