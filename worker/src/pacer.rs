//! Per-channel pacing of Slack messages within one worker.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
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
