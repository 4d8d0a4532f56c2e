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

/// The counts of the recent minutes and buckets.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    minutes: BTreeMap<DateTime<Utc>, MinuteTally>,
    subscriptions: BTreeMap<(DateTime<Utc>, Uuid), SubscriptionTally>,
}

impl Counts {
    fn minute(&mut self, at: DateTime<Utc>) -> &mut MinuteTally {
        let minute = minute_of(at);
        self.minutes
            .entry(minute)
            .or_insert_with(|| MinuteTally::new(minute))
    }
}

/// The recent buckets' totals, to be written.
pub struct Recent {
    /// The minutes of the charts.
    pub minutes: Vec<MinuteTally>,
    /// The subscriptions' buckets of the health view.
    pub subscriptions: Vec<SubscriptionTally>,
}

impl Tally {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an outcome written back, with its lag when delivered, and, when a request was
    /// made to subscription `attempted`, the attempt for the health view.
    pub fn count(&self, next: &NextState, lag_seconds: Option<f64>, attempted: Option<Uuid>) {
        let now = Utc::now();
        let mut counts = self.counts();
        let minute = counts.minute(now);
        match next {
            NextState::Delivered => {
                minute.delivered += 1;
                if let Some(lag) = lag_seconds {
                    minute.add_lag(lag);
                }
            }
            NextState::Retry(_) => minute.retried += 1,
            NextState::Dead(_) => minute.dead += 1,
            NextState::Cancelled => {}
        }
        let Some(subscription_id) = attempted else {
            return;
        };
        let bucket = bucket_of(now);
        let tally = counts
            .subscriptions
            .entry((bucket, subscription_id))
            .or_insert_with(|| SubscriptionTally {
                bucket,
                subscription_id,
                ..SubscriptionTally::default()
            });
        if *next == NextState::Delivered {
            tally.delivered += 1;
        } else {
            tally.failed += 1;
        }
    }

    /// Records a due depth this worker sampled.
    pub fn sample_due(&self, depth: i64) {
        let mut counts = self.counts();
        let minute = counts.minute(Utc::now());
        minute.due = minute.due.max(Some(depth));
    }

    /// The recent buckets' totals, to be written; buckets ended long enough ago are forgotten
    /// once returned.
    pub fn recent(&self) -> Recent {
        let now = Utc::now();
        let mut counts = self.counts();
        let recent_minutes: Vec<MinuteTally> = counts.minutes.values().cloned().collect();
        let forget_before = minute_of(now) - KEPT_AFTER;
        counts.minutes.retain(|minute, _| *minute >= forget_before);
        let recent_buckets: Vec<SubscriptionTally> =
            counts.subscriptions.values().cloned().collect();
        let forget_before =
            bucket_of(now) - TimeDelta::from_std(BUCKET).unwrap_or_default() - KEPT_AFTER;
        counts
            .subscriptions
            .retain(|(bucket, _), _| *bucket >= forget_before);
        Recent {
            minutes: recent_minutes,
            subscriptions: recent_buckets,
        }
    }
}
