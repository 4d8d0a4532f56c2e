//! What happens to a leased row, and its constructors: the webhook and Slack senders, the
//! pre-send checks and the lease loop all end a delivery through these.

use std::time::Duration;

use shared::{retry::RetryPolicy, state::DeadReason};
use store::{AttemptRecord, Completion, LeasedDelivery, NextState};
use uuid::Uuid;

/// The next state after failed attempt `attempt`: a probe of an open circuit retries at once,
/// whatever its attempts (it gives its attempt back; its lane waits for the next probe);
/// otherwise dead after the last attempt, with the failure's class (`http_500`, `timeout`, …)
/// as the reason's detail, else a retry after `retry_after` or the jittered backoff.
pub fn after_failure(
    retry: &RetryPolicy,
    probe: bool,
    attempt: u32,
    failure: String,
    retry_after: Option<Duration>,
) -> NextState {
    if probe {
        NextState::Retry(Duration::ZERO)
    } else if retry.is_last(attempt) {
        NextState::Dead(DeadReason::MaxAttemptsExceeded(failure))
    } else {
        NextState::Retry(retry_after.unwrap_or_else(|| retry.next_delay(attempt)))
    }
}

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

impl Outcome {
    /// Hands the row back, due again in `due_in`, without counting an attempt.
    pub fn release(delivery: &LeasedDelivery, due_in: Duration) -> Self {
        Self::Release {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            due_in,
        }
    }

    /// Dead now with `reason`, which is also its last error; with the attempt when one was
    /// made (or stands for one).
    pub fn dead(
        delivery: &LeasedDelivery,
        reason: DeadReason,
        attempt: Option<AttemptRecord>,
    ) -> Self {
        Self::Complete(Completion {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            last_error: Some(reason.to_string()),
            next: NextState::Dead(reason),
            attempt,
            probe: delivery.probe,
        })
    }

    /// Cancelled without a request: the subscription was deleted.
    pub fn cancelled(delivery: &LeasedDelivery) -> Self {
        Self::Complete(Completion {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            next: NextState::Cancelled,
            last_error: Some("subscription_deleted".to_owned()),
            attempt: None,
            probe: delivery.probe,
        })
    }

    /// After an attempt: `next`, with `error` as the delivery's last error.
    pub fn attempted(
        delivery: &LeasedDelivery,
        next: NextState,
        error: Option<String>,
        attempt: AttemptRecord,
    ) -> Self {
        Self::Complete(Completion {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            next,
            last_error: error,
            attempt: Some(attempt),
            probe: delivery.probe,
        })
    }
}
