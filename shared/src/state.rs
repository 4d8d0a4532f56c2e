//! The states of the delivery pipeline as types: a delivery's status, its target, an
//! attempt's outcome and why a delivery died. Each has its one mapping to the text stored in
//! the database (the SQL files repeat the status literals, since the partial indexes'
//! predicates name them); everything else handles the enums.

use std::{fmt, str::FromStr};

/// Declares a state enum with its one text mapping, `Display`, `FromStr`, and decoding from a
/// text column on every backend (statements bind [`as_str`](DeliveryStatus::as_str)).
macro_rules! state_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value as stored and as the API writes it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $( $text => Ok(Self::$variant), )+
                    other => Err(UnknownState {
                        kind: stringify!($name),
                        text: other.to_owned(),
                    }),
                }
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse::<Self>()?)
            }
        }
    };
}

/// Text read from the database that names no known state: a schema this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a {kind}")]
pub struct UnknownState {
    kind: &'static str,
    text: String,
}

state_enum! {
    /// Where a delivery is in its life.
    pub enum DeliveryStatus {
        /// Waiting for its next attempt.
        Pending => "pending",
        /// A worker holds it.
        Leased => "leased",
        /// The receiver accepted it.
        Delivered => "delivered",
        /// Dead-lettered; may be replayed.
        Dead => "dead",
        /// Its subscription was deleted before it was sent.
        Cancelled => "cancelled",
    }
}

state_enum! {
    /// Where a delivery goes.
    pub enum Target {
        /// An HTTP POST to a subscription's URL.
        Webhook => "webhook",
        /// A Slack message through the connector.
        Slack => "slack",
    }
}

state_enum! {
    /// What one attempt led to.
    pub enum AttemptOutcome {
        /// The receiver accepted it.
        Delivered => "delivered",
        /// It failed; another attempt is scheduled.
        RetryScheduled => "retry_scheduled",
        /// It failed for the last time, or could not be made: the delivery is dead.
        DeadLettered => "dead_lettered",
    }
}

state_enum! {
    /// A subscription's endpoint, as the API, the console and the metrics show it.
    pub enum EndpointState {
        /// Its last attempt delivered (or none was made yet).
        Healthy => "healthy",
        /// Attempts have failed since its last success.
        Failing => "failing",
        /// Failures opened its circuit: its deliveries wait while one probe at a time tests
        /// the endpoint.
        CircuitOpen => "circuit_open",
        /// It gets no deliveries until it is enabled again.
        Disabled => "disabled",
    }
}

impl EndpointState {
    /// The state of a subscription: disabled first, then an open circuit, then failing.
    pub fn of(enabled: bool, circuit_open: bool, failing: bool) -> Self {
        match (enabled, circuit_open, failing) {
            (false, _, _) => Self::Disabled,
            (true, true, _) => Self::CircuitOpen,
            (true, false, true) => Self::Failing,
            (true, false, false) => Self::Healthy,
        }
    }
}

state_enum! {
    /// The kind of reason a delivery died for, as the API lists it.
    pub enum DeadReasonKind {
        /// The receiver answered 410 Gone; the subscription was disabled with it.
        EndpointGone => "endpoint_gone",
        /// The subscription was disabled when the delivery came up.
        SubscriptionDisabled => "subscription_disabled",
        /// A Slack delivery came up with the connector not configured.
        ConnectorNotConfigured => "connector_not_configured",
        /// Its workers stopped before finishing it more often than it may be tried.
        LeaseExpired => "lease_expired",
        /// Every attempt failed.
        MaxAttemptsExceeded => "max_attempts_exceeded",
        /// Slack refused the message for a reason a retry does not change, or the message
        /// could not be built from the payload.
        SlackRejected => "slack_rejected",
        /// Slack answered 2xx with an answer that could not be read: it may have been posted.
        SlackUnconfirmed => "slack_unconfirmed",
        /// The database refused to store the attempt's outcome.
        OutcomeUnstorable => "outcome_unstorable",
        /// A reason this version does not know (written by another version during an
        /// upgrade): shown as it is stored.
        Unrecognized => "unrecognized",
    }
}

/// What a dead letter stored as [`DeadReason::OutcomeUnstorable`] says; also the error of an
/// attempt whose record the database refused.
pub const OUTCOME_UNSTORABLE: &str =
    "outcome_unstorable: the database refused this attempt's record";
const MAX_ATTEMPTS_PREFIX: &str = "max_attempts_exceeded: ";
const SLACK_PREFIX: &str = "slack_";
const UNCONFIRMED_SUFFIX: &str = " (may have been posted; replay to post again)";

/// Why a delivery died, with the detail operators read. Stored as one text: [`Display`] and
/// [`from_stored`](Self::from_stored) are its one mapping (`endpoint_gone`,
/// `max_attempts_exceeded: http_500`, `slack_channel_not_found`, …).
///
/// [`Display`]: fmt::Display
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The receiver answered 410 Gone.
    EndpointGone,
    /// The subscription was disabled.
    SubscriptionDisabled,
    /// The Slack connector is not configured.
    ConnectorNotConfigured,
    /// Its workers kept stopping before finishing it.
    LeaseExpired,
    /// Every attempt failed; the last failure's class (`http_500`, `timeout`, …).
    MaxAttemptsExceeded(String),
    /// Slack's error code, or why no message could be built (without the `slack_` prefix).
    SlackRejected(String),
    /// Slack's 2xx could not be read (the error, `slack_unreadable_answer…`).
    SlackUnconfirmed(String),
    /// The database refused the outcome.
    OutcomeUnstorable,
    /// A stored text this version does not know, kept whole: a dead letter stays readable
    /// whichever version wrote it.
    Unrecognized(String),
}

impl DeadReason {
    /// Its kind.
    pub fn kind(&self) -> DeadReasonKind {
        match self {
            Self::EndpointGone => DeadReasonKind::EndpointGone,
            Self::SubscriptionDisabled => DeadReasonKind::SubscriptionDisabled,
            Self::ConnectorNotConfigured => DeadReasonKind::ConnectorNotConfigured,
            Self::LeaseExpired => DeadReasonKind::LeaseExpired,
            Self::MaxAttemptsExceeded(_) => DeadReasonKind::MaxAttemptsExceeded,
            Self::SlackRejected(_) => DeadReasonKind::SlackRejected,
            Self::SlackUnconfirmed(_) => DeadReasonKind::SlackUnconfirmed,
            Self::OutcomeUnstorable => DeadReasonKind::OutcomeUnstorable,
            Self::Unrecognized(_) => DeadReasonKind::Unrecognized,
        }
    }

    /// The detail it carries, which may come from a receiver's answer, to change in place.
    pub fn detail_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::MaxAttemptsExceeded(detail)
            | Self::SlackRejected(detail)
            | Self::SlackUnconfirmed(detail)
            | Self::Unrecognized(detail) => Some(detail),
            Self::EndpointGone
            | Self::SubscriptionDisabled
            | Self::ConnectorNotConfigured
            | Self::LeaseExpired
            | Self::OutcomeUnstorable => None,
        }
    }

    /// Whether the subscription is disabled with the delivery (410 Gone).
    pub fn disables_subscription(&self) -> bool {
        matches!(self, Self::EndpointGone)
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxAttemptsExceeded(class) => write!(formatter, "{MAX_ATTEMPTS_PREFIX}{class}"),
            Self::SlackRejected(error) => write!(formatter, "{SLACK_PREFIX}{error}"),
            Self::SlackUnconfirmed(error) => write!(formatter, "{error}{UNCONFIRMED_SUFFIX}"),
            Self::OutcomeUnstorable => formatter.write_str(OUTCOME_UNSTORABLE),
            Self::Unrecognized(text) => formatter.write_str(text),
            other => formatter.write_str(other.kind().as_str()),
        }
    }
}

impl DeadReason {
    /// The reason a stored text says; total, so no stored dead letter becomes unreadable.
    pub fn from_stored(text: &str) -> Self {
        let unit = match text.parse::<DeadReasonKind>() {
            Ok(DeadReasonKind::EndpointGone) => Some(Self::EndpointGone),
            Ok(DeadReasonKind::SubscriptionDisabled) => Some(Self::SubscriptionDisabled),
            Ok(DeadReasonKind::ConnectorNotConfigured) => Some(Self::ConnectorNotConfigured),
            Ok(DeadReasonKind::LeaseExpired) => Some(Self::LeaseExpired),
            _ => None,
        };
        if let Some(reason) = unit {
            return reason;
        }
        if text == OUTCOME_UNSTORABLE {
            return Self::OutcomeUnstorable;
        }
        if let Some(class) = text.strip_prefix(MAX_ATTEMPTS_PREFIX) {
            return Self::MaxAttemptsExceeded(class.to_owned());
        }
        // before the prefix: an unconfirmed post's text starts with `slack_` too
        if let Some(error) = text.strip_suffix(UNCONFIRMED_SUFFIX) {
            return Self::SlackUnconfirmed(error.to_owned());
        }
        if let Some(error) = text.strip_prefix(SLACK_PREFIX) {
            return Self::SlackRejected(error.to_owned());
        }
        Self::Unrecognized(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_text() {
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(*status));
        }
        for target in Target::ALL {
            assert_eq!(target.to_string().parse::<Target>(), Ok(*target));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<AttemptOutcome>(), Ok(*outcome));
        }
        assert!("paused".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn every_dead_reason_reads_back_from_its_text() {
        let reasons = [
            DeadReason::EndpointGone,
            DeadReason::SubscriptionDisabled,
            DeadReason::ConnectorNotConfigured,
            DeadReason::LeaseExpired,
            DeadReason::MaxAttemptsExceeded("http_500".to_owned()),
            DeadReason::MaxAttemptsExceeded(OUTCOME_UNSTORABLE.to_owned()),
            DeadReason::SlackRejected("channel_not_found".to_owned()),
            DeadReason::SlackUnconfirmed("slack_unreadable_answer".to_owned()),
            DeadReason::SlackUnconfirmed("slack_unreadable_answer: cut off".to_owned()),
            DeadReason::OutcomeUnstorable,
        ];
        for reason in reasons {
            let text = reason.to_string();
            assert_eq!(DeadReason::from_stored(&text), reason, "{text}");
        }
        let kinds: Vec<DeadReasonKind> = [
            "endpoint_gone",
            "max_attempts_exceeded: timeout",
            "slack_no_channel: set IH_SLACK_DEFAULT_CHANNEL or the payload's slack_channel",
            "slack_unreadable_answer (may have been posted; replay to post again)",
            "gone_fishing",
        ]
        .iter()
        .map(|text| DeadReason::from_stored(text).kind())
        .collect();
        assert_eq!(
            kinds,
            [
                DeadReasonKind::EndpointGone,
                DeadReasonKind::MaxAttemptsExceeded,
                DeadReasonKind::SlackRejected,
                DeadReasonKind::SlackUnconfirmed,
                DeadReasonKind::Unrecognized,
            ]
        );
        assert_eq!(
            DeadReason::from_stored("gone_fishing").to_string(),
            "gone_fishing",
            "kept as stored"
        );
    }
}
