//! One delivery: decide whether to send, send a webhook, and turn the answer into an outcome.

use std::time::{Duration, Instant};

use chrono::Utc;
use shared::{
    domain::redact_url,
    retry::{Verdict, classify_status},
    signing,
    state::{DeadReason, Target},
};
use store::{AttemptRecord, DeliverySubscription, LeasedDelivery, NextState};

use crate::{
    context::DeliveryContext,
    http::{self, SendResult},
    outcome::Outcome,
};

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
        return Some(Outcome::dead(
            delivery,
            DeadReason::LeaseExpired,
            Some(record),
        ));
    }
    if delivery.target == Target::Slack {
        if context.slack.is_none() {
            return Some(Outcome::dead(
                delivery,
                DeadReason::ConnectorNotConfigured,
                None,
            ));
        }
        return None;
    }
    match subscription {
        // a deleted subscription's row stays (soft delete); a missing one is treated the same
        None => Some(Outcome::cancelled(delivery)),
        Some(subscription) if subscription.deleted => Some(Outcome::cancelled(delivery)),
        Some(subscription) if !subscription.enabled => Some(Outcome::dead(
            delivery,
            DeadReason::SubscriptionDisabled,
            None,
        )),
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

/// Sends a webhook delivery and returns its outcome.
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
        Verdict::Gone => NextState::Dead(DeadReason::EndpointGone),
        Verdict::Retry {
            reason,
            retry_after,
        } => context.after_failure(delivery, failure_class(&reason), retry_after),
    };
    Outcome::attempted(delivery, next, error, record)
}

/// The short class of a failure, e.g. `http_500` or `timeout`, for dead letters.
/// The class of a failure (`http_500`, `timeout`, `connection_error`), without the detail
/// after it: what a dead letter after the last attempt says.
fn failure_class(reason: &str) -> String {
    reason.split([':', ' ']).next().unwrap_or(reason).to_owned()
}

#[cfg(test)]
mod tests {

    use shared::{retry::RetryPolicy, url_policy::DestinationPolicy};
    use uuid::Uuid;

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
            slack: None,
            slack_pacer: crate::pacer::ChannelPacer::default(),
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
            probe: false,
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
            NextState::Dead(DeadReason::EndpointGone)
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
            NextState::Dead(DeadReason::MaxAttemptsExceeded("http_500".into()))
        );
        assert_eq!(
            run(
                5,
                SendResult::Failed {
                    error: "connection_error: refused".into()
                }
            ),
            NextState::Dead(DeadReason::MaxAttemptsExceeded("connection_error".into()))
        );
    }

    #[test]
    fn a_failed_probe_retries_at_once_even_on_its_last_attempt() {
        let context = context(5);
        let probe = LeasedDelivery {
            probe: true,
            ..delivery(5)
        };
        let run = |result| {
            next(outcome_of(
                &context,
                &probe,
                result,
                Utc::now(),
                Duration::ZERO,
            ))
        };
        assert_eq!(run(answered(500, None)), NextState::Retry(Duration::ZERO));
        assert_eq!(
            run(answered(429, Some("120"))),
            NextState::Retry(Duration::ZERO)
        );
        assert_eq!(run(answered(204, None)), NextState::Delivered);
        // the endpoint says it is gone: that still ends the subscription
        assert_eq!(
            run(answered(410, None)),
            NextState::Dead(DeadReason::EndpointGone)
        );
    }

    #[test]
    fn a_row_leased_more_often_than_allowed_dies_without_a_request() {
        let context = context(3);
        let subscription = None;
        match precheck(&context, &delivery(4), subscription) {
            Some(Outcome::Complete(completion)) => {
                assert_eq!(completion.next, NextState::Dead(DeadReason::LeaseExpired));
            }
            other => panic!("{other:?}"),
        }
    }
}
