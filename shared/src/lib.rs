//! Domain types, configuration and every SQL statement of Integrations Hub.
//!
//! Both binaries stand on this crate. It knows nothing of HTTP serving or HTTP clients
//! (no poem, no reqwest): those live in `api` and `worker`.
//!
//! # Layout
//! - [`config`]: settings from defaults, file, `IH_*` environment and flags; validated views
//!   for each binary.
//! - [`auth`]: API tokens and roles.
//! - [`crypto`]: subscription secrets sealed at rest.
//! - [`domain`]: validated values (event type, target URL, secret, headers, idempotency key).
//! - [`url_policy`]: which destination addresses may be dialled.
//! - [`signing`]: the webhook body and its signatures.
//! - [`retry`]: the backoff schedule and the classification of answers.
//! - [`slack`]: the Slack connector's messages and answer classification.
//! - [`state`]: delivery status, target and attempt outcome as types, with their one text
//!   mapping.
//! - [`db`]: the connection pool and every SQL statement.
//! - [`telemetry`]: log set-up.

pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod slack;
pub mod state;
pub mod telemetry;
pub mod url_policy;
