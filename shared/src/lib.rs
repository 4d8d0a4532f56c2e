//! Domain types, configuration, telemetry set-up, secrets and signing of Integrations Hub.
//!
//! Every other crate stands on this one. It knows nothing of HTTP serving or HTTP clients
//! (no poem, no reqwest: those live in `api` and `worker`) and issues no SQL (`store` does).
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
//! - [`telemetry`]: log set-up.

pub mod auth;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod slack;
pub mod state;
pub mod telemetry;
pub mod url_policy;
