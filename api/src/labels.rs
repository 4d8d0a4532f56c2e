//! The `event_type` label of `ih_events_published_total`, kept to a bounded set.
//!
//! Publishers choose event types, and each label value is a series held for the life of the
//! process: the first [`EventTypeLabels::new`]`(max)` types seen keep their own series, and
//! every later one is counted under [`OTHER`].

use std::{collections::HashSet, sync::Mutex};

/// The label value of every event type past the cap.
pub const OTHER: &str = "other";

/// The event types that have their own series.
#[derive(Debug)]
pub struct EventTypeLabels {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl EventTypeLabels {
    /// Keeps at most `max` types apart.
    pub fn new(max: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// The label value for `event_type`.
    pub fn label(&self, event_type: &str) -> String {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(event_type) {
            return event_type.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(event_type.to_owned());
            return event_type.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_past_the_cap_share_one_label() {
        let labels = EventTypeLabels::new(2);
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), OTHER);
        assert_eq!(labels.label("a"), "a", "a type seen early keeps its series");
        assert_eq!(labels.label("d"), OTHER);
    }
}
