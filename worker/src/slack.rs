//! The Slack connector: posts `request_submitted` events with `chat.postMessage`, through the
//! same leases, retries and dead letters as webhooks and the same guarded HTTP client (no
//! redirects, no proxy variables, the address policy).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::Utc;
use shared::{
    config::SlackConnector,
    db::{AttemptRecord, Completion, LeasedDelivery, NextState},
    slack::{self, MessageError, SlackVerdict},
    state::Target,
};

use crate::{
    deliver::{DeliveryContext, Outcome},
    http::{self, SendResult},
};

/// Slack allows about one message per second per channel.
pub const CHANNEL_SPACING: Duration = Duration::from_secs(1);
/// Longest a delivery waits in its task for its channel's turn; beyond it the row is handed
/// back to be due at its turn, so a busy channel never holds worker slots.
pub const MAX_PACING_WAIT: Duration = Duration::from_secs(2);

/// Paces messages per channel within one worker. Channels are named by payloads, so the
/// table forgets a channel once its turn has passed: it holds about the channels posted to in
/// the last few seconds, whatever publishers send.
#[derive(Debug, Default)]
pub struct ChannelPacer {
    turns: Mutex<Turns>,
}

#[derive(Debug, Default)]
struct Turns {
    next: HashMap<String, Instant>,
    /// The table's size at which passed turns are swept out next: twice what the last sweep
    /// kept, so sweeping costs O(1) per message however many channels are live.
    sweep_at: usize,
}

/// The smallest table that is swept.
const PACER_SWEEP_AT: usize = 64;

impl ChannelPacer {
    /// Reserves the channel's next turn if it comes within `max_wait`; returns how long to
    /// wait for it, or `Err(wait)` without reserving when it is further away.
    pub fn reserve(&self, channel: &str, max_wait: Duration) -> Result<Duration, Duration> {
        self.reserve_at(channel, max_wait, Instant::now())
    }

    fn reserve_at(
        &self,
        channel: &str,
        max_wait: Duration,
        now: Instant,
    ) -> Result<Duration, Duration> {
        let mut turns = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if turns.next.len() >= turns.sweep_at.max(PACER_SWEEP_AT) {
            // a passed turn means "now", as no entry does
            turns.next.retain(|_, turn| *turn > now);
            turns.sweep_at = 2 * turns.next.len();
        }
        let turn = turns
            .next
            .get(channel)
            .copied()
            .filter(|turn| *turn > now)
            .unwrap_or(now);
        let wait = turn - now;
        if wait > max_wait {
            return Err(wait);
        }
        turns
            .next
            .insert(channel.to_owned(), turn + CHANNEL_SPACING);
        Ok(wait)
    }
}

fn dead_now(delivery: &LeasedDelivery, reason: String, attempt: Option<AttemptRecord>) -> Outcome {
    Outcome::Complete(Completion {
        delivery_id: delivery.id,
        lease_token: delivery.lease_token,
        next: NextState::Dead {
            reason: reason.clone(),
            disable_subscription: false,
        },
        last_error: Some(reason),
        attempt,
    })
}

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
                    "slack_no_channel: set IH_SLACK_DEFAULT_CHANNEL or the payload's slack_channel"
                }
                MessageError::ChannelNotAllowed => {
                    "slack_channel_not_allowed: the payload's slack_channel is not in IH_SLACK_ALLOWED_CHANNELS"
                }
                MessageError::PayloadNotAnObject => "slack_payload_not_an_object",
            };
            return dead_now(delivery, reason.to_owned(), None);
        }
    };
    let channel = message["channel"].as_str().unwrap_or_default().to_owned();
    match context.slack_pacer.reserve(&channel, MAX_PACING_WAIT) {
        Ok(wait) => tokio::time::sleep(wait).await,
        Err(wait) => {
            return Outcome::Release {
                delivery_id: delivery.id,
                lease_token: delivery.lease_token,
                due_in: wait,
            };
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

    let attempt_number = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
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
        SlackVerdict::Permanent(error) => (
            NextState::Dead {
                reason: format!("slack_{error}"),
                disable_subscription: false,
            },
            Some(format!("slack_{error}")),
        ),
        SlackVerdict::RateLimited(retry_after) => retry_or_die(
            context,
            attempt_number,
            "slack_ratelimited".to_owned(),
            retry_after,
        ),
        SlackVerdict::Transient(error) => retry_or_die(context, attempt_number, error, None),
        SlackVerdict::Unconfirmed(error) => (
            NextState::Dead {
                reason: format!("{error} (may have been posted; replay to post again)"),
                disable_subscription: false,
            },
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
    Outcome::Complete(Completion {
        delivery_id: delivery.id,
        lease_token: delivery.lease_token,
        next,
        last_error: error,
        attempt: Some(record),
    })
}

fn retry_or_die(
    context: &DeliveryContext,
    attempt: u32,
    error: String,
    retry_after: Option<Duration>,
) -> (NextState, Option<String>) {
    let next = context.after_failure(
        attempt,
        format!("max_attempts_exceeded: {error}"),
        retry_after,
    );
    (next, Some(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_forgets_channels_whose_turn_has_passed() {
        let pacer = ChannelPacer::default();
        let start = Instant::now();
        // a new channel every 10 ms for 100 s: about 100 have a turn pending at any time
        for channel in 0..10_000_u32 {
            let now = start + Duration::from_millis(10 * u64::from(channel));
            assert_eq!(
                pacer.reserve_at(&format!("C{channel}"), MAX_PACING_WAIT, now),
                Ok(Duration::ZERO)
            );
        }
        let kept = pacer.turns.lock().unwrap().next.len();
        assert!(kept <= 256, "the pacer kept {kept} channels");
    }

    #[test]
    fn a_channel_gets_one_turn_per_second_and_far_turns_are_not_reserved() {
        let pacer = ChannelPacer::default();
        assert_eq!(pacer.reserve("C1", MAX_PACING_WAIT), Ok(Duration::ZERO));
        let second = pacer.reserve("C1", MAX_PACING_WAIT).unwrap();
        assert!(
            second > Duration::from_millis(900) && second <= CHANNEL_SPACING,
            "{second:?}"
        );
        let third = pacer.reserve("C1", MAX_PACING_WAIT).unwrap();
        assert!(third > Duration::from_millis(1900), "{third:?}");
        assert!(
            pacer.reserve("C1", MAX_PACING_WAIT).is_err(),
            "three seconds away is handed back"
        );
        assert_eq!(
            pacer.reserve("C2", MAX_PACING_WAIT),
            Ok(Duration::ZERO),
            "channels are independent"
        );
    }
}
