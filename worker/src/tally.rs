//! What this worker counted for the console's charts (`store::charts`: its outcomes per minute,
//! their publish → delivered lag and the due depth it sampled) and health view
//! (`store::health`: attempts per subscription per 5 minutes). The sampler writes the recent
//! buckets every few seconds, each as its totals so far, and forgets the older ones.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use chrono::{DateTime, TimeDelta, Utc};
use store::{
    NextState,
    charts::{MinuteTally, minute_of},
    health::{BUCKET, SubscriptionTally, bucket_of},
};
use uuid::Uuid;

/// How long a minute is kept after it ends, so its last counts are written.
const KEPT_AFTER: TimeDelta = TimeDelta::minutes(2);

/// The counts of the recent minutes.
#[derive(Default)]
pub struct Tally {
    minutes: Mutex<BTreeMap<DateTime<Utc>, MinuteTally>>,
    subscriptions: Mutex<BTreeMap<(DateTime<Utc>, Uuid), SubscriptionTally>>,
}

/// The recent buckets' totals, to be written.
pub struct Recent {
    /// The minutes of the charts.
    pub minutes: Vec<MinuteTally>,
    /// The subscriptions' buckets of the health view.
    pub subscriptions: Vec<SubscriptionTally>,
}

impl Tally {
    fn with_minute(&self, change: impl FnOnce(&mut MinuteTally)) {
        let minute = minute_of(Utc::now());
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        change(
            minutes
                .entry(minute)
                .or_insert_with(|| MinuteTally::new(minute)),
        );
    }

    /// Counts an attempt of subscription `subscription_id` (none: Slack) for the health view.
    pub fn count_attempt(&self, subscription_id: Option<Uuid>, delivered: bool) {
        let Some(subscription_id) = subscription_id else {
            return;
        };
        let bucket = bucket_of(Utc::now());
        let mut buckets = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tally = buckets
            .entry((bucket, subscription_id))
            .or_insert_with(|| SubscriptionTally {
                bucket,
                subscription_id,
                ..SubscriptionTally::default()
            });
        if delivered {
            tally.delivered += 1;
        } else {
            tally.failed += 1;
        }
    }

    /// Counts an outcome written back, with its lag when delivered.
    pub fn count(&self, next: &NextState, lag_seconds: Option<f64>) {
        self.with_minute(|minute| match next {
            NextState::Delivered => {
                minute.delivered += 1;
                if let Some(lag) = lag_seconds {
                    minute.add_lag(lag);
                }
            }
            NextState::Retry(_) => minute.retried += 1,
            NextState::Dead(_) => minute.dead += 1,
            NextState::Cancelled => {}
        });
    }

    /// Records a due depth this worker sampled.
    pub fn sample_due(&self, depth: i64) {
        self.with_minute(|minute| minute.due = minute.due.max(Some(depth)));
    }

    /// The recent buckets' totals, to be written; buckets ended long enough ago are forgotten
    /// once returned.
    pub fn recent(&self) -> Recent {
        let now = Utc::now();
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let recent_minutes: Vec<MinuteTally> = minutes.values().cloned().collect();
        let forget_before = minute_of(now) - KEPT_AFTER;
        minutes.retain(|minute, _| *minute >= forget_before);
        drop(minutes);
        let mut buckets = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let recent_buckets: Vec<SubscriptionTally> = buckets.values().cloned().collect();
        let forget_before =
            bucket_of(now) - TimeDelta::from_std(BUCKET).unwrap_or_default() - KEPT_AFTER;
        buckets.retain(|(bucket, _), _| *bucket >= forget_before);
        Recent {
            minutes: recent_minutes,
            subscriptions: recent_buckets,
        }
    }
}
