//! The states of the delivery pipeline as types: a delivery's status, its target and an
//! attempt's outcome. Each has its one mapping to the text stored in the database (the SQL
//! files repeat the literals, since the partial indexes' predicates name them); everything
//! else handles the enums.

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
}
