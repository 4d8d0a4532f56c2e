//! The Slack connector: posts `request_submitted` events with `chat.postMessage`, through the
//! same leases, retries and dead letters as webhooks and the same guarded HTTP client (no
//! redirects, no proxy variables, the address policy).

use std::time::{Duration, Instant};

use chrono::Utc;
use shared::{
    config::SlackConnector,
    slack::{self, MessageError, SlackVerdict},
    state::{DeadReason, Target},
};
use store::{AttemptRecord, LeasedDelivery, NextState};

use crate::{
    context::DeliveryContext,
    http::{self, SendResult},
    outcome::Outcome,
    pacer::MAX_PACING_WAIT,
};

/// Posts one Slack delivery and returns its outcome.
pub async fn deliver_slack(
    context: &DeliveryContext,
    connector: &SlackConnector,
    delivery: &LeasedDelivery,
) -> Outcome {
    let message = match slack::build_message(
        delivery.event_id,
        &delivery.event_type,
        &delivery.payload,
        connector.default_channel.as_deref(),
        &connector.allowed_channels,
    ) {
        Ok(message) => message,
        Err(error) => {
            let reason = match error {
                MessageError::NoChannel => {
                    "no_channel: set IH_SLACK_DEFAULT_CHANNEL or the payload's slack_channel"
                }
                MessageError::ChannelNotAllowed => {
                    "channel_not_allowed: the payload's slack_channel is not in IH_SLACK_ALLOWED_CHANNELS"
                }
                MessageError::PayloadNotAnObject => "payload_not_an_object",
            };
            return Outcome::dead(delivery, DeadReason::SlackRejected(reason.to_owned()), None);
        }
    };
    let channel = message["channel"].as_str().unwrap_or_default().to_owned();
    match context.slack_pacer.reserve(&channel, MAX_PACING_WAIT) {
        Ok(wait) => tokio::time::sleep(wait).await,
        Err(wait) => {
            metrics::counter!("ih_deliveries_deferred_total").increment(1);
            return Outcome::release(delivery, wait);
        }
    }

    let url = format!("{}/chat.postMessage", connector.api_base_url);
    let headers = vec![(
        "Authorization".to_owned(),
        format!("Bearer {}", connector.bot_token.expose()),
    )];
    let started_at = Utc::now();
    let clock = Instant::now();
    let result = http::send(
        &context.client,
        &context.policy,
        &url,
        headers,
        message.to_string(),
        http::MAX_SLACK_ANSWER_READ,
    )
    .await;
    let elapsed = clock.elapsed();
    metrics::histogram!("ih_delivery_attempt_duration_seconds").record(elapsed.as_secs_f64());

    let (verdict, status, body) = match result {
        SendResult::Answered {
            status,
            retry_after,
            body,
        } => {
            let retry_after = context.retry_after(delivery, retry_after.as_deref());
            (
                slack::classify(status, &body, retry_after),
                Some(i32::from(status)),
                Some(http::excerpt(&body)),
            )
        }
        // accepted, then the answer broke off: the message may be in the channel
        SendResult::BrokeOff { status, error } if (200..300).contains(&status) => (
            SlackVerdict::Unconfirmed(format!("{}: {error}", slack::UNREADABLE_ANSWER)),
            Some(i32::from(status)),
            None,
        ),
        SendResult::BrokeOff { error, .. } | SendResult::Failed { error } => {
            (SlackVerdict::Transient(error), None, None)
        }
    };
    let mut record = AttemptRecord {
        attempt_number: delivery.attempts,
        started_at,
        duration_ms: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
        response_status: status,
        response_body: body,
        error: None,
        external_id: None,
    };
    let (next, error) = match verdict {
        SlackVerdict::Posted { ts } => {
            record.external_id = ts;
            (NextState::Delivered, None)
        }
        SlackVerdict::Permanent(error) => {
            let reason = DeadReason::SlackRejected(error);
            let text = reason.to_string();
            (NextState::Dead(reason), Some(text))
        }
        SlackVerdict::RateLimited(retry_after) => retry_or_die(
            context,
            delivery,
            "slack_ratelimited".to_owned(),
            retry_after,
        ),
        SlackVerdict::Transient(error) => retry_or_die(context, delivery, error, None),
        SlackVerdict::Unconfirmed(error) => (
            NextState::Dead(DeadReason::SlackUnconfirmed(error.clone())),
            Some(error),
        ),
    };
    record.error.clone_from(&error);
    tracing::info!(
        event.id = %delivery.event_id,
        delivery.id = %delivery.id,
        target = %Target::Slack,
        attempt = delivery.attempts,
        response.status = status,
        duration_ms = elapsed.as_millis() as u64,
        error = error.as_deref().unwrap_or_default(),
        "slack attempt finished"
    );
    Outcome::attempted(delivery, next, error, record)
}

fn retry_or_die(
    context: &DeliveryContext,
    delivery: &LeasedDelivery,
    error: String,
    retry_after: Option<Duration>,
) -> (NextState, Option<String>) {
    let next = context.after_failure(delivery, error.clone(), retry_after);
    (next, Some(error))
}
