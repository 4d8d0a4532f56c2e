//! What every delivery shares: the client, the policies and the Slack pacer. (A subscription's
//! in-flight limit is the lease's: see `store::lease_deliveries`.)

use std::time::Duration;

use chrono::Utc;
use shared::{
    retry::{RetryPolicy, parse_retry_after},
    url_policy::DestinationPolicy,
};
use store::{LeasedDelivery, NextState};

use crate::pacer::ChannelPacer;

/// Everything a delivery needs besides its row.
pub struct DeliveryContext {
    /// The delivery client.
    pub client: reqwest::Client,
    /// The SSRF policy, for IP-literal hosts.
    pub policy: DestinationPolicy,
    /// The backoff policy.
    pub retry: RetryPolicy,
    /// The Slack connector, when configured.
    pub slack: Option<shared::config::SlackConnector>,
    /// Per-channel pacing of Slack messages.
    pub slack_pacer: ChannelPacer,
}

impl DeliveryContext {
    /// A receiver's `Retry-After`, bounded by `IH_RETRY_AFTER_MAX_SECONDS`; an unparseable
    /// value is ignored with a warning.
    pub fn retry_after(&self, delivery: &LeasedDelivery, header: Option<&str>) -> Option<Duration> {
        let value = header?;
        let parsed = parse_retry_after(value, Utc::now(), self.retry.retry_after_max);
        if parsed.is_none() {
            tracing::warn!(delivery.id = %delivery.id, "ignoring an unparseable Retry-After");
        }
        parsed
    }

    /// [`after_failure`](crate::outcome::after_failure) of `delivery`'s attempt under this
    /// worker's retry policy.
    pub fn after_failure(
        &self,
        delivery: &LeasedDelivery,
        failure: String,
        retry_after: Option<Duration>,
    ) -> NextState {
        let attempt = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
        crate::outcome::after_failure(&self.retry, delivery.probe, attempt, failure, retry_after)
    }
}
