//! What every delivery shares: the client, the policies, the per-subscription slots and the
//! Slack pacer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use shared::{
    retry::{RetryPolicy, parse_retry_after},
    url_policy::DestinationPolicy,
};
use store::{LeasedDelivery, NextState};
use uuid::Uuid;

use crate::pacer::ChannelPacer;

/// Counts requests in flight per subscription, so one slow endpoint cannot take every slot.
#[derive(Debug, Default)]
pub struct SubscriptionSlots {
    counts: Mutex<HashMap<Uuid, usize>>,
}

impl SubscriptionSlots {
    /// Takes a slot for `subscription` unless it already has `cap` in flight.
    pub(crate) fn try_take(self: &Arc<Self>, subscription: Uuid, cap: usize) -> Option<SlotGuard> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(subscription).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(SlotGuard {
            slots: self.clone(),
            subscription,
        })
    }
}

/// Returns its subscription slot when dropped.
pub struct SlotGuard {
    slots: Arc<SubscriptionSlots>,
    subscription: Uuid,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.subscription) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.subscription);
            }
        }
    }
}

/// Everything a delivery needs besides its row.
pub struct DeliveryContext {
    /// The delivery client.
    pub client: reqwest::Client,
    /// The SSRF policy, for IP-literal hosts.
    pub policy: DestinationPolicy,
    /// The backoff policy.
    pub retry: RetryPolicy,
    /// Per-subscription in-flight counts.
    pub slots: Arc<SubscriptionSlots>,
    /// Most requests in flight per subscription.
    pub max_in_flight_per_subscription: usize,
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

    /// [`after_failure`](crate::outcome::after_failure) under this worker's retry policy.
    pub fn after_failure(
        &self,
        attempt: u32,
        failure: String,
        retry_after: Option<Duration>,
    ) -> NextState {
        crate::outcome::after_failure(&self.retry, attempt, failure, retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_slots_cap_in_flight_requests() {
        let slots = Arc::new(SubscriptionSlots::default());
        let id = Uuid::now_v7();
        let first = slots.try_take(id, 2).unwrap();
        let _second = slots.try_take(id, 2).unwrap();
        assert!(slots.try_take(id, 2).is_none());
        assert!(slots.try_take(Uuid::now_v7(), 2).is_some());
        drop(first);
        assert!(slots.try_take(id, 2).is_some());
    }
}
