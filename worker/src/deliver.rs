//! One delivery: decide whether to send, send, and turn the answer into an outcome.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use shared::{
    db::{AttemptRecord, Completion, DeliverySubscription, LeasedDelivery, NextState},
    domain::redact_url,
    retry::{RetryPolicy, Verdict, classify_status, parse_retry_after},
    signing,
    state::Target,
    url_policy::DestinationPolicy,
};
use uuid::Uuid;

use crate::http::{self, SendResult};

/// What happens to a leased row.
#[derive(Debug)]
pub enum Outcome {
    /// Write this completion.
    Complete(Completion),
    /// Hand the lease back without counting an attempt.
    Release {
        /// Delivery id.
        delivery_id: Uuid,
        /// Its lease token.
        lease_token: Uuid,
        /// When it is due again.
        due_in: Duration,
    },
}

/// Counts requests in flight per subscription, so one slow endpoint cannot take every slot.
#[derive(Debug, Default)]
pub struct SubscriptionSlots {
    counts: Mutex<HashMap<Uuid, usize>>,
}

impl SubscriptionSlots {
    /// Takes a slot for `subscription` unless it already has `cap` in flight.
    fn try_take(self: &Arc<Self>, subscription: Uuid, cap: usize) -> Option<SlotGuard> {
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

/// How soon a row handed back at its subscription's in-flight cap is due again.
pub const DEFERRED_DUE_IN: Duration = Duration::from_millis(500);

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
    pub slack_pacer: crate::slack::ChannelPacer,
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

    /// The next state after failed attempt `attempt`: dead with `dead_reason` after the last
    /// attempt, else a retry after `retry_after` or the jittered backoff.
    pub fn after_failure(
        &self,
        attempt: u32,
        dead_reason: String,
        retry_after: Option<Duration>,
    ) -> NextState {
        if self.retry.is_last(attempt) {
            NextState::Dead {
                reason: dead_reason,
                disable_subscription: false,
            }
        } else {
            NextState::Retry(
                retry_after.unwrap_or_else(|| self.retry.delay(attempt, random_unit())),
            )
        }
    }
}

pub use shared::retry::random_unit;

fn dead(delivery: &LeasedDelivery, reason: &str, attempt: Option<AttemptRecord>) -> Outcome {
    Outcome::Complete(Completion {
        delivery_id: delivery.id,
        lease_token: delivery.lease_token,
        next: NextState::Dead {
            reason: reason.to_owned(),
            disable_subscription: false,
        },
        last_error: Some(reason.to_owned()),
        attempt,
    })
}

fn cancelled(delivery: &LeasedDelivery) -> Outcome {
    Outcome::Complete(Completion {
        delivery_id: delivery.id,
        lease_token: delivery.lease_token,
        next: NextState::Cancelled,
        last_error: Some("subscription_deleted".to_owned()),
        attempt: None,
    })
}

/// The decision made before any request: `None` means send.
pub fn precheck(
    context: &DeliveryContext,
    delivery: &LeasedDelivery,
    subscription: Option<&DeliverySubscription>,
) -> Option<Outcome> {
    let attempt = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
    if attempt > context.retry.max_attempts {
        // Leased again after its worker died more times than it may be tried: a poison
        // delivery must not crash workers forever.
        let record = AttemptRecord {
            attempt_number: delivery.attempts,
            started_at: Utc::now(),
            duration_ms: 0,
            response_status: None,
            response_body: None,
            error: Some(
                "lease_expired: the delivery's worker stopped before finishing it".to_owned(),
            ),
            external_id: None,
        };
        return Some(dead(delivery, "lease_expired", Some(record)));
    }
    if delivery.target == Target::Slack {
        if context.slack.is_none() {
            return Some(dead(delivery, "connector_not_configured", None));
        }
        return None;
    }
    match subscription {
        // a deleted subscription's row stays (soft delete); a missing one is treated the same
        None => Some(cancelled(delivery)),
        Some(subscription) if subscription.deleted => Some(cancelled(delivery)),
        Some(subscription) if !subscription.enabled => {
            Some(dead(delivery, "subscription_disabled", None))
        }
        Some(_) => None,
    }
}

/// The outcome of an attempt that failed before any request was made.
pub fn failed_attempt(
    context: &DeliveryContext,
    delivery: &LeasedDelivery,
    error: &str,
) -> Outcome {
    outcome_of(
        context,
        delivery,
        SendResult::Failed {
            error: error.to_owned(),
        },
        Utc::now(),
        Duration::ZERO,
    )
}

/// Sends a webhook delivery and returns its outcome. Takes the subscription's in-flight slot
/// first; at the cap, the lease is handed back for a moment later.
pub async fn deliver_webhook(
    context: &DeliveryContext,
    delivery: &LeasedDelivery,
    subscription: &DeliverySubscription,
) -> Outcome {
    let secrets = match &subscription.secrets {
        Ok(secrets) => secrets,
        Err(error) => {
            // A missing key or a damaged value: this subscription's deliveries fail and retry
            // (the operator may restore the key); every other subscription goes on.
            tracing::error!(
                subscription.id = %subscription.id,
                delivery.id = %delivery.id,
                error.message = %error,
                "the subscription's secret cannot be opened"
            );
            return failed_attempt(context, delivery, &format!("secret_unavailable: {error}"));
        }
    };
    let Some(_slot) = context
        .slots
        .try_take(subscription.id, context.max_in_flight_per_subscription)
    else {
        metrics::counter!("ih_deliveries_deferred_total").increment(1);
        return Outcome::Release {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            due_in: DEFERRED_DUE_IN,
        };
    };

    let body = signing::webhook_body(
        delivery.event_id,
        &delivery.event_type,
        delivery.event_created_at,
        &delivery.payload,
    );
    let started_at = Utc::now();
    let timestamp = started_at.timestamp();
    let event_id = delivery.event_id.to_string();
    let previous: Vec<&str> = secrets.previous.as_deref().into_iter().collect();
    let signatures = signing::sign(
        &secrets.current,
        &previous,
        &event_id,
        timestamp,
        body.as_bytes(),
    );
    let mut headers: Vec<(String, String)> = subscription
        .headers
        .0
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    headers.extend([
        ("X-Webhook-Signature".to_owned(), signatures.legacy),
        ("X-Webhook-Timestamp".to_owned(), timestamp.to_string()),
        ("X-Webhook-Event".to_owned(), delivery.event_type.clone()),
        ("X-Webhook-Event-Id".to_owned(), event_id.clone()),
        ("webhook-id".to_owned(), event_id),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signatures.standard),
    ]);
    if let Some(next) = signatures.legacy_next {
        headers.push(("X-Webhook-Signature-Next".to_owned(), next));
    }
    // the attempt's own span when traced, else the context the publisher handed in
    if let Some(traceparent) =
        shared::telemetry::current_traceparent().or_else(|| delivery.traceparent.clone())
    {
        headers.push(("traceparent".to_owned(), traceparent));
    }

    let clock = Instant::now();
    let result = http::send(
        &context.client,
        &context.policy,
        &subscription.url,
        headers,
        body,
        http::MAX_RESPONSE_READ,
    )
    .await;
    let elapsed = clock.elapsed();
    metrics::histogram!("ih_delivery_attempt_duration_seconds").record(elapsed.as_secs_f64());
    let outcome = outcome_of(context, delivery, result, started_at, elapsed);
    if let Outcome::Complete(completion) = &outcome {
        tracing::info!(
            event.id = %delivery.event_id,
            delivery.id = %delivery.id,
            subscription.id = %subscription.id,
            attempt = delivery.attempts,
            response.status = completion.attempt.as_ref().and_then(|a| a.response_status),
            duration_ms = elapsed.as_millis() as u64,
            outcome = completion.next.label(),
            target = %redact_url(&subscription.url),
            "delivery attempt finished"
        );
    }
    outcome
}

/// Turns a send result into the delivery's next state.
pub fn outcome_of(
    context: &DeliveryContext,
    delivery: &LeasedDelivery,
    result: SendResult,
    started_at: chrono::DateTime<Utc>,
    elapsed: Duration,
) -> Outcome {
    let attempt = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
    let (verdict, response_status, response_body, error) = match result {
        SendResult::Answered {
            status,
            retry_after,
            body,
        } => {
            let retry_after = context.retry_after(delivery, retry_after.as_deref());
            let verdict = classify_status(status, retry_after);
            let error = match &verdict {
                Verdict::Delivered => None,
                Verdict::Gone => Some("http_410 (endpoint gone)".to_owned()),
                Verdict::Retry { reason, .. } => Some(reason.clone()),
            };
            (
                verdict,
                Some(i32::from(status)),
                Some(http::excerpt(&body)),
                error,
            )
        }
        SendResult::Failed { error } | SendResult::BrokeOff { error, .. } => (
            Verdict::Retry {
                reason: error.clone(),
                retry_after: None,
            },
            None,
            None,
            Some(error),
        ),
    };
    let record = AttemptRecord {
        attempt_number: delivery.attempts,
        started_at,
        duration_ms: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
        response_status,
        response_body,
        error: error.clone(),
        external_id: None,
    };
    let next = match verdict {
        Verdict::Delivered => NextState::Delivered,
        Verdict::Gone => NextState::Dead {
            reason: "endpoint_gone".to_owned(),
            disable_subscription: true,
        },
        Verdict::Retry {
            reason,
            retry_after,
        } => context.after_failure(attempt, dead_reason(&reason), retry_after),
    };
    Outcome::Complete(Completion {
        delivery_id: delivery.id,
        lease_token: delivery.lease_token,
        next,
        last_error: error,
        attempt: Some(record),
    })
}

/// The short class of a failure, e.g. `http_500` or `timeout`, for dead letters.
fn dead_reason(reason: &str) -> String {
    let class = reason.split([':', ' ']).next().unwrap_or(reason);
    format!("max_attempts_exceeded: {class}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(max_attempts: u32) -> DeliveryContext {
        DeliveryContext {
            #[expect(
                clippy::disallowed_methods,
                reason = "a client that is never used to send"
            )]
            client: reqwest::Client::new(),
            policy: DestinationPolicy::default(),
            retry: RetryPolicy {
                max_attempts,
                base_seconds: 2.0,
                max_delay: Duration::from_secs(3600),
                retry_after_max: Duration::from_secs(600),
            },
            slots: Arc::default(),
            max_in_flight_per_subscription: 2,
            slack: None,
            slack_pacer: crate::slack::ChannelPacer::default(),
        }
    }

    fn delivery(attempts: i32) -> LeasedDelivery {
        LeasedDelivery {
            id: Uuid::now_v7(),
            lease_token: Uuid::new_v4(),
            attempts,
            target: Target::Webhook,
            subscription_id: Some(Uuid::now_v7()),
            event_id: Uuid::now_v7(),
            event_type: "t".to_owned(),
            payload: "{}".to_owned(),
            event_created_at: Utc::now(),
            traceparent: None,
        }
    }

    fn answered(status: u16, retry_after: Option<&str>) -> SendResult {
        SendResult::Answered {
            status,
            retry_after: retry_after.map(str::to_owned),
            body: String::new(),
        }
    }

    fn next(outcome: Outcome) -> NextState {
        match outcome {
            Outcome::Complete(completion) => completion.next,
            Outcome::Release { .. } => panic!("expected a completion"),
        }
    }

    #[test]
    fn outcomes_follow_the_delivery_contract() {
        let context = context(5);
        let run = |attempts, result| {
            next(outcome_of(
                &context,
                &delivery(attempts),
                result,
                Utc::now(),
                Duration::ZERO,
            ))
        };
        assert_eq!(run(1, answered(204, None)), NextState::Delivered);
        assert_eq!(
            run(1, answered(410, None)),
            NextState::Dead {
                reason: "endpoint_gone".into(),
                disable_subscription: true
            }
        );
        assert_eq!(
            run(2, answered(429, Some("120"))),
            NextState::Retry(Duration::from_secs(120))
        );
        assert_eq!(
            run(2, answered(503, Some("99999"))),
            NextState::Retry(Duration::from_secs(600))
        );
        match run(3, answered(500, Some("120"))) {
            NextState::Retry(delay) => {
                assert!((6.4..=9.6).contains(&delay.as_secs_f64()), "{delay:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(run(1, answered(302, None)), NextState::Retry(_)));
        assert!(matches!(
            run(
                1,
                SendResult::Failed {
                    error: "timeout".into()
                }
            ),
            NextState::Retry(_)
        ));
        assert_eq!(
            run(5, answered(500, None)),
            NextState::Dead {
                reason: "max_attempts_exceeded: http_500".into(),
                disable_subscription: false
            }
        );
        assert_eq!(
            run(
                5,
                SendResult::Failed {
                    error: "connection_error: refused".into()
                }
            ),
            NextState::Dead {
                reason: "max_attempts_exceeded: connection_error".into(),
                disable_subscription: false
            }
        );
    }

    #[test]
    fn a_row_leased_more_often_than_allowed_dies_without_a_request() {
        let context = context(3);
        let subscription = None;
        match precheck(&context, &delivery(4), subscription) {
            Some(Outcome::Complete(completion)) => {
                assert_eq!(
                    completion.next,
                    NextState::Dead {
                        reason: "lease_expired".into(),
                        disable_subscription: false
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

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

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
