//! Request and response bodies of the API, as documented in the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::{
    Enum, Object,
    registry::MetaSchemaRef,
    types::{MaybeUndefined, ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;
use shared::state;
use store as db;
use uuid::Uuid;

/// Default page size of every listing.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page size of every listing.
pub const MAX_PAGE_SIZE: i64 = 500;

/// An event as stored.
#[derive(Object, Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    /// Event id (UUID v7), the `webhook-id` of every delivery.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Deliveries created for it.
    pub deliveries: i32,
}

impl From<db::PublishedEvent> for PublishedEvent {
    fn from(event: db::PublishedEvent) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type,
            created_at: event.created_at,
            deliveries: event.deliveries_created,
        }
    }
}

/// The answer to a batch publish, in request order.
#[derive(Object, Debug)]
pub struct PublishedBatch {
    /// One entry per request item.
    pub events: Vec<PublishedEvent>,
}

/// A page of events.
#[derive(Object, Debug)]
pub struct EventPage {
    /// Newest first.
    pub data: Vec<PublishedEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<Uuid>,
}

/// Declares the documented mirror of a `shared::state` enum: the same variants, listed in the
/// OpenAPI document under the same snake_case names (`state`'s mapping is the stored text; a
/// test checks the two agree), and the conversions both ways.
macro_rules! documented_state {
    (
        $(#[$meta:meta])*
        $name:ident mirrors $state:ty { $( $(#[$variant_meta:meta])* $variant:ident, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
        #[oai(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl From<$state> for $name {
            fn from(state: $state) -> Self {
                match state {
                    $( <$state>::$variant => Self::$variant, )+
                }
            }
        }

        impl From<$name> for $state {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => Self::$variant, )+
                }
            }
        }
    };
}

documented_state! {
    /// Delivery states.
    DeliveryStatus mirrors state::DeliveryStatus {
        /// Waiting for its next attempt.
        Pending,
        /// A worker holds it.
        Leased,
        /// The receiver accepted it.
        Delivered,
        /// Dead-lettered; may be replayed.
        Dead,
        /// Its subscription was deleted.
        Cancelled,
    }
}

documented_state! {
    /// Where a delivery goes.
    Target mirrors state::Target {
        /// An HTTP POST to the subscription's URL.
        Webhook,
        /// A Slack message.
        Slack,
    }
}

documented_state! {
    /// What an attempt led to.
    AttemptOutcome mirrors state::AttemptOutcome {
        /// The receiver accepted it.
        Delivered,
        /// Another attempt is scheduled.
        RetryScheduled,
        /// The delivery is dead.
        DeadLettered,
    }
}

documented_state! {
    /// Why a delivery died; `reason` says it with its detail.
    DeadReasonKind mirrors state::DeadReasonKind {
        /// The receiver answered 410 Gone; the subscription was disabled.
        EndpointGone,
        /// The subscription was disabled.
        SubscriptionDisabled,
        /// A Slack delivery with the connector not configured.
        ConnectorNotConfigured,
        /// Its workers stopped before finishing it too often.
        LeaseExpired,
        /// Every attempt failed.
        MaxAttemptsExceeded,
        /// Slack refused the message, or no message could be built from the payload.
        SlackRejected,
        /// Slack's answer could not be read: the message may have been posted.
        SlackUnconfirmed,
        /// The database refused to store the attempt's outcome.
        OutcomeUnstorable,
        /// A reason this version does not know (written by another version): `reason` says it.
        Unrecognized,
    }
}

documented_state! {
    /// A subscription's endpoint health.
    EndpointState mirrors state::EndpointState {
        /// Its last attempt delivered, or none was made yet.
        Healthy,
        /// Attempts have failed since its last success.
        Failing,
        /// Failures opened its circuit: deliveries wait while one probe at a time, at growing
        /// intervals, tests the endpoint; the first success closes it.
        CircuitOpen,
        /// Disabled (`disabled_reason` says why); enabling it sends what it kept.
        Disabled,
    }
}

/// A delivery of an event to one target.
#[derive(Object, Debug)]
pub struct Delivery {
    /// Delivery id.
    pub id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Where it goes.
    pub target: Target,
    /// The subscription, for webhooks.
    pub subscription_id: Option<Uuid>,
    /// Where it is in its life.
    pub status: DeliveryStatus,
    /// Attempts started.
    pub attempts: i32,
    /// Next try (pending) or lease expiry (leased).
    pub next_attempt_at: DateTime<Utc>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<db::DeliveryRow> for Delivery {
    fn from(row: db::DeliveryRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            target: row.target.into(),
            subscription_id: row.subscription_id,
            status: row.status.into(),
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An event with its payload and the state of each delivery.
#[derive(Object, Debug)]
pub struct EventDetail {
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// The payload (parsed for display; deliveries carry the exact text received).
    pub payload: serde_json::Value,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Deliveries created at publish.
    pub deliveries_created: i32,
    /// Every delivery, oldest first (replays add more).
    pub deliveries: Vec<Delivery>,
}

/// A page of deliveries.
#[derive(Object, Debug)]
pub struct DeliveryPage {
    /// Newest first.
    pub data: Vec<Delivery>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<Uuid>,
}

/// A JSON string in a request body. poem-openapi's `String` also reads a number or a boolean
/// as text (`true` becomes `"true"`); a field documented as a string refuses them instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> std::borrow::Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// The strings of a list of [`Text`]s.
pub fn strings(texts: Vec<Text>) -> Vec<String> {
    texts.into_iter().map(|text| text.0).collect()
}

/// A map of [`Text`]s as plain strings.
pub fn string_map(texts: BTreeMap<String, Text>) -> BTreeMap<String, String> {
    texts
        .into_iter()
        .map(|(name, text)| (name, text.0))
        .collect()
}

/// `POST /subscriptions`.
#[derive(Object, Debug)]
pub struct CreateSubscription {
    /// `http(s)` URL without credentials; private and metadata addresses are refused unless
    /// the operator allows them.
    pub url: Text,
    /// At least 16 characters; a `whsec_…` secret is generated and returned once when omitted.
    pub secret: Option<Text>,
    /// Event types to receive; `*` for all.
    pub events: Vec<Text>,
    /// Defaults to true.
    pub enabled: Option<bool>,
    /// A note for operators (at most 1,000 characters).
    pub description: Option<Text>,
    /// Extra headers sent with every delivery; `Host`, `Content-*`, `User-Agent`,
    /// `Transfer-Encoding`, `Connection` and signature headers are refused.
    pub headers: Option<BTreeMap<String, Text>>,
    /// Most requests in flight to this subscription at once, across every worker (1 to
    /// 10,000); absent: `IH_SUBSCRIPTION_MAX_IN_FLIGHT`.
    pub max_in_flight: Option<i64>,
    /// Most deliveries a second to this subscription, across every worker (0.01 to 100,000);
    /// absent: no limit.
    pub rate_limit_per_second: Option<f64>,
}

/// `PATCH /subscriptions/{id}`: absent fields are kept.
#[derive(Object, Debug)]
pub struct UpdateSubscription {
    /// New URL.
    pub url: Option<Text>,
    /// New event types.
    pub events: Option<Vec<Text>>,
    /// Enable or disable; enabling clears `disabled_reason`.
    pub enabled: Option<bool>,
    /// New description; `null` clears it.
    pub description: MaybeUndefined<Text>,
    /// New headers, replacing all.
    pub headers: Option<BTreeMap<String, Text>>,
    /// New in-flight limit; `null` returns to `IH_SUBSCRIPTION_MAX_IN_FLIGHT`.
    pub max_in_flight: MaybeUndefined<i64>,
    /// New rate limit; `null` removes it.
    pub rate_limit_per_second: MaybeUndefined<f64>,
}

/// A subscription. Its secret is never shown after creation.
#[derive(Object, Debug)]
pub struct Subscription {
    /// Subscription id.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// Event types; `*` for all.
    pub events: Vec<String>,
    /// Whether new events are fanned out to it and queued deliveries sent.
    pub enabled: bool,
    /// Operator's note.
    pub description: Option<String>,
    /// Extra headers (names lowercased).
    pub headers: BTreeMap<String, String>,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Until when the previous secret also signs, after a rotation.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Last successful delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last failed attempt.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Its own limit of requests in flight across every worker; `null`: the service's
    /// `IH_SUBSCRIPTION_MAX_IN_FLIGHT`.
    pub max_in_flight: Option<i32>,
    /// Most deliveries a second, across every worker; `null`: no limit.
    pub rate_limit_per_second: Option<f64>,
    /// Its endpoint's health.
    pub state: EndpointState,
    /// The first failed attempt since the last success; `null` when not failing.
    pub failing_since: Option<DateTime<Utc>>,
    /// When its circuit opened; `null` when closed.
    pub circuit_opened_at: Option<DateTime<Utc>>,
}

impl From<db::SubscriptionRow> for Subscription {
    fn from(row: db::SubscriptionRow) -> Self {
        Self {
            state: row.state().into(),
            failing_since: row.failing_since,
            circuit_opened_at: row.circuit_opened_at,
            id: row.id,
            url: row.url,
            events: row.event_types.0,
            enabled: row.enabled,
            description: row.description,
            headers: row.headers.0,
            disabled_reason: row.disabled_reason,
            previous_secret_expires_at: row.previous_secret_expires_at,
            last_success_at: row.last_success_at,
            last_failure_at: row.last_failure_at,
            consecutive_failures: row.consecutive_failures,
            created_at: row.created_at,
            updated_at: row.updated_at,
            max_in_flight: row.max_in_flight,
            rate_limit_per_second: row.rate_limit_per_second,
        }
    }
}

/// A subscription with its secret: answered only by creation and rotation.
#[derive(Object, Debug)]
pub struct SubscriptionWithSecret {
    /// The subscription.
    #[oai(flatten)]
    pub subscription: Subscription,
    /// The signing secret when the service made it (a rotation, or a creation without
    /// `secret`); store it now, it is not shown again. A secret the caller supplied is never
    /// echoed.
    #[oai(skip_serializing_if_is_none)]
    pub secret: Option<String>,
}

/// A page of subscriptions.
#[derive(Object, Debug)]
pub struct SubscriptionPage {
    /// Oldest first.
    pub data: Vec<Subscription>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<Uuid>,
}

/// One attempt to deliver.
#[derive(Object, Debug)]
pub struct Attempt {
    /// Attempt id.
    pub id: Uuid,
    /// Its delivery.
    pub delivery_id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Where its delivery went.
    pub target: Option<Target>,
    /// 1 for the first try.
    pub attempt_number: i32,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's HTTP status.
    pub response_status: Option<i32>,
    /// The start of the receiver's body (at most 4 KiB).
    pub response_body: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// The worker that made it.
    pub worker_id: Option<String>,
    /// The receiving system's id for what was created (Slack's message `ts`).
    pub external_id: Option<String>,
    /// What it led to.
    pub outcome: AttemptOutcome,
}

impl From<db::AttemptRow> for Attempt {
    fn from(row: db::AttemptRow) -> Self {
        Self {
            id: row.id,
            delivery_id: row.delivery_id,
            event_id: row.event_id,
            target: row.target.map(Into::into),
            attempt_number: row.attempt_number,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            response_status: row.response_status,
            response_body: row.response_body,
            error: row.error,
            worker_id: row.worker_id,
            external_id: row.external_id,
            outcome: row.outcome.into(),
        }
    }
}

/// Every attempt of an event.
#[derive(Object, Debug)]
pub struct AttemptList {
    /// Oldest first.
    pub data: Vec<Attempt>,
}

/// A dead letter.
#[derive(Object, Debug)]
pub struct DeadLetter {
    /// Dead letter id.
    pub id: Uuid,
    /// The delivery that died.
    pub delivery_id: Uuid,
    /// Its event.
    pub event_id: Uuid,
    /// Its subscription, for webhooks.
    pub subscription_id: Option<Uuid>,
    /// Where it was going.
    pub target: Target,
    /// Why it died, with the detail (`max_attempts_exceeded: http_500`).
    pub reason: String,
    /// The kind of reason, for filtering and alerting.
    pub reason_code: DeadReasonKind,
    /// When it died.
    pub created_at: DateTime<Utc>,
    /// When it was replayed.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The delivery its replay created.
    pub replay_delivery_id: Option<Uuid>,
}

impl From<db::DeadLetterRow> for DeadLetter {
    fn from(row: db::DeadLetterRow) -> Self {
        Self {
            id: row.id,
            delivery_id: row.delivery_id,
            event_id: row.event_id,
            subscription_id: row.subscription_id,
            target: row.target.into(),
            reason_code: row.reason.kind().into(),
            reason: row.reason.to_string(),
            created_at: row.created_at,
            replayed_at: row.replayed_at,
            replay_delivery_id: row.replay_delivery_id,
        }
    }
}

/// A page of dead letters.
#[derive(Object, Debug)]
pub struct DeadLetterPage {
    /// Newest first.
    pub data: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<Uuid>,
}

/// The answer to a replay.
#[derive(Object, Debug)]
pub struct Replayed {
    /// The dead letter replayed.
    pub dead_letter_id: Uuid,
    /// The new pending delivery.
    pub delivery_id: Uuid,
}

/// `POST /admin/dead-letters/replay`.
#[derive(Object, Debug)]
pub struct BulkReplayRequest {
    /// Only this subscription's dead letters.
    pub subscription_id: Option<Uuid>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Count what would be replayed, change nothing.
    #[oai(default)]
    pub dry_run: bool,
}

/// The answer to a bulk replay.
#[derive(Object, Debug)]
pub struct BulkReplayResult {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Dead letters that match (dry run) or were replayed.
    pub count: i64,
}

/// `GET /admin/stats`: the console's overview.
#[derive(Object, Debug)]
pub struct AdminStats {
    /// Seconds covered by `delivered` and `failed`.
    pub window_seconds: u32,
    /// Deliveries due now (pending and due, or with an expired lease), counted up to 100,000.
    pub due: i64,
    /// Seconds since the oldest due delivery became due; absent when none is due.
    #[oai(skip_serializing_if_is_none)]
    pub oldest_due_age_seconds: Option<f64>,
    /// Deliveries delivered in the window, as the workers count them per minute (the window
    /// is its last whole minutes and the current one).
    pub delivered: i64,
    /// Attempts in the window that failed (a retry scheduled or a dead letter), counted the
    /// same way.
    pub failed: i64,
    /// Dead letters not replayed, counted up to 10,000.
    pub dead_letters: i64,
}

/// The span a chart covers.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartWindow {
    /// The last 15 minutes, in minutes.
    #[oai(rename = "15m")]
    Minutes15,
    /// The last hour, in minutes.
    #[oai(rename = "1h")]
    Hour1,
    /// The last 6 hours, in 5-minute buckets.
    #[oai(rename = "6h")]
    Hours6,
    /// The last 24 hours, in 20-minute buckets.
    #[oai(rename = "24h")]
    Hours24,
}

impl ChartWindow {
    /// The window and its bucket, in seconds.
    pub fn span(self) -> (u32, u32) {
        match self {
            Self::Minutes15 => (900, 60),
            Self::Hour1 => (3_600, 60),
            Self::Hours6 => (21_600, 300),
            Self::Hours24 => (86_400, 1_200),
        }
    }
}

/// One bucket of the console's charts.
#[derive(Object, Debug)]
pub struct ChartPoint {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// Deliveries delivered in it.
    pub delivered: i64,
    /// Attempts that failed and are tried again.
    pub retried: i64,
    /// Deliveries dead-lettered.
    pub dead: i64,
    /// Median publish → delivered lag: the upper bound (ms) of the lag bucket it falls in;
    /// absent when nothing was delivered.
    #[oai(skip_serializing_if_is_none)]
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    #[oai(skip_serializing_if_is_none)]
    pub lag_p99_ms: Option<f64>,
    /// The largest due depth sampled in it; absent when no worker sampled.
    #[oai(skip_serializing_if_is_none)]
    pub due: Option<i64>,
}

/// `GET /admin/charts`: the console's charts over a window, every bucket present.
#[derive(Object, Debug)]
pub struct Charts {
    /// Seconds covered.
    pub window_seconds: u32,
    /// Seconds per bucket.
    pub bucket_seconds: u32,
    /// Oldest first.
    pub points: Vec<ChartPoint>,
}

impl From<db::charts::ChartBucket> for ChartPoint {
    fn from(bucket: db::charts::ChartBucket) -> Self {
        Self {
            start: bucket.start,
            delivered: bucket.delivered,
            retried: bucket.retried,
            dead: bucket.dead,
            lag_p50_ms: bucket.lag_p50_ms,
            lag_p99_ms: bucket.lag_p99_ms,
            due: bucket.due,
        }
    }
}

/// Attempts of one 5-minute bucket of a subscription's sparkline.
#[derive(Object, Debug)]
pub struct HealthPoint {
    /// Attempts that delivered.
    pub delivered: i64,
    /// Attempts that failed.
    pub failed: i64,
}

/// A subscription in the health view.
#[derive(Object, Debug)]
pub struct SubscriptionHealth {
    /// The subscription (its `state`, `disabled_reason`, `last_success_at` and
    /// `consecutive_failures` among its fields).
    pub subscription: Subscription,
    /// Attempts of the last hour that delivered.
    pub delivered: i64,
    /// Attempts of the last hour that failed.
    pub failed: i64,
    /// `delivered` as a share of the last hour's attempts; absent without attempts.
    #[oai(skip_serializing_if_is_none)]
    pub success_rate: Option<f64>,
    /// Its requests in flight now (leased rows).
    pub in_flight: i64,
    /// Its deliveries due now and waiting.
    pub due: i64,
    /// The last hour in 5-minute buckets, oldest first.
    pub sparkline: Vec<HealthPoint>,
}

/// `GET /admin/subscription-health`: every subscription, most troubled first (an open circuit,
/// then failing, then disabled, then healthy; within each the lowest success rate first), at
/// most 500.
#[derive(Object, Debug)]
pub struct SubscriptionHealthList {
    /// Seconds per sparkline bucket.
    pub bucket_seconds: u32,
    /// Most troubled first.
    pub data: Vec<SubscriptionHealth>,
}

impl From<db::health::SubscriptionHealth> for SubscriptionHealth {
    fn from(health: db::health::SubscriptionHealth) -> Self {
        let (delivered, failed) = health.totals();
        Self {
            success_rate: health.success_rate(),
            delivered,
            failed,
            in_flight: health.in_flight,
            due: health.due,
            sparkline: health
                .sparkline
                .iter()
                .map(|point| HealthPoint {
                    delivered: point.delivered,
                    failed: point.failed,
                })
                .collect(),
            subscription: health.subscription.into(),
        }
    }
}

/// Health of the process.
#[derive(Object, Debug, serde::Serialize)]
pub struct Health {
    /// `ok`, or `unavailable` when a dependency is down.
    pub status: String,
}

/// Returns the id to continue after, when a full page came back.
pub fn next_cursor<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> Uuid) -> Option<Uuid> {
    if rows.len() as i64 >= limit {
        rows.last().map(id)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name the API writes for a documented state.
    fn written(value: &impl ToJSON) -> String {
        value.to_json().unwrap().as_str().unwrap().to_owned()
    }

    #[test]
    fn documented_states_are_written_as_they_are_stored() {
        for state in state::DeliveryStatus::ALL {
            assert_eq!(written(&DeliveryStatus::from(*state)), state.as_str());
        }
        for state in state::Target::ALL {
            assert_eq!(written(&Target::from(*state)), state.as_str());
        }
        for state in state::AttemptOutcome::ALL {
            assert_eq!(written(&AttemptOutcome::from(*state)), state.as_str());
        }
        for state in state::DeadReasonKind::ALL {
            assert_eq!(written(&DeadReasonKind::from(*state)), state.as_str());
        }
        for state in state::EndpointState::ALL {
            assert_eq!(written(&EndpointState::from(*state)), state.as_str());
        }
    }
}
