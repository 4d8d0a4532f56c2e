//! The delivery queue: lease, complete, release. The two Postgres-specific mechanisms of the
//! worker (this lease statement and LISTEN/NOTIFY) live here and in `db.rs` only.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Db, DbError, orm::BEGIN_PLANNED_ONCE};
use shared::{
    config::{EndpointHealth, MAX_PROBE_INTERVAL},
    crypto::{CryptoError, SecretCipher},
    state::{AttemptOutcome, DeadReason, DeliveryStatus, Target},
};

/// A leased delivery with everything its send needs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LeasedDelivery {
    /// Delivery id.
    pub id: Uuid,
    /// The fencing token every write-back must present.
    pub lease_token: Uuid,
    /// Attempts including this one.
    pub attempts: i32,
    /// Where it goes.
    pub target: Target,
    /// The subscription, for webhooks.
    pub subscription_id: Option<Uuid>,
    /// The event.
    pub event_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The payload's exact text.
    pub payload: String,
    /// When the event was stored.
    pub event_created_at: DateTime<Utc>,
    /// The publisher's trace context.
    pub traceparent: Option<String>,
    /// Leased as its subscription's probe: the circuit is open, and this one request tests
    /// whether the endpoint recovered. A failed probe gives its attempt back and retries.
    pub probe: bool,
}

/// The lane of every Slack delivery; a webhook delivery's lane is its subscription's id.
pub const SLACK_LANE: Uuid = Uuid::nil();

/// The lane of a delivery to this subscription (none: Slack).
pub(crate) fn lane_of(subscription_id: Option<Uuid>) -> Uuid {
    subscription_id.unwrap_or(SLACK_LANE)
}

/// Most lanes one lease takes rows from: a round over the lanes with due work goes this many
/// at a time (with 32, a burst spread over 1,000 subscriptions waited 130 ms at the median,
/// with 128 about 55 ms).
pub const LANES_PER_LEASE: usize = 128;

/// What one lease asks for.
#[derive(Clone, Copy, Debug)]
pub struct LeaseRequest<'a> {
    /// Most rows to lease.
    pub limit: usize,
    /// The leasing worker's name.
    pub worker_id: &'a str,
    /// How long the lease lasts.
    pub lease: Duration,
    /// The in-flight limit of a subscription without its own, and of the Slack lane.
    pub max_in_flight: u32,
}

/// A lane the lease may take rows from.
#[derive(sqlx::FromRow)]
struct LeasableLane {
    id: Uuid,
    max_in_flight: i32,
    rate_limit_per_second: Option<f64>,
    may_settle: bool,
    probing: bool,
}

/// What a lease took, and when leasing again is worth it.
#[derive(Clone, Debug, Default)]
pub struct Leased {
    /// The rows leased.
    pub deliveries: Vec<LeasedDelivery>,
    /// The earliest time after now at which one of the lanes leased from has a row due or is
    /// allowed again by its rate limit (the poll interval would come later).
    pub lease_again_at: Option<DateTime<Utc>>,
}

/// How many rows one lane may give to a lease of `limit` rows over `lanes` lanes: an equal
/// share, so a lease spreads over the lanes with due work.
pub(crate) fn lane_quota(limit: usize, lanes: usize) -> usize {
    limit.div_ceil(lanes.max(1)).max(1)
}

/// Leases up to `request.limit` due deliveries, a few from each lane with due work (a
/// subscription, or the Slack lane), least recently leased lanes first, never more than a
/// lane's in-flight limit counted across every worker.
///
/// # Errors
/// Returns [`DbError`] when the database fails; nothing is leased then.
pub async fn lease_deliveries(db: &Db, request: &LeaseRequest<'_>) -> Result<Leased, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.lease_deliveries(request).await,
    };
    // planned once: its plan is the same whatever the lanes (each read by key), and planning
    // it cost as much as running it
    let mut transaction = pool.begin_with(BEGIN_PLANNED_ONCE).await?;
    let lanes: Vec<LeasableLane> = sqlx::query_as(include_str!("sql/lease_lanes.sql"))
        .bind(i64::try_from(LANES_PER_LEASE).unwrap_or(i64::MAX))
        .bind(i32::try_from(request.max_in_flight).unwrap_or(i32::MAX))
        .fetch_all(&mut *transaction)
        .await?;
    if lanes.is_empty() {
        let lease_again_at = next_allowed(&mut transaction).await?;
        transaction.commit().await?;
        return Ok(Leased {
            deliveries: Vec::new(),
            lease_again_at,
        });
    }
    let quota = lane_quota(request.limit, lanes.len());
    let leased: Vec<LeasedRow> = sqlx::query_as(include_str!("sql/lease_deliveries.sql"))
        .bind(lanes.iter().map(|lane| lane.id).collect::<Vec<_>>())
        .bind(
            lanes
                .iter()
                .map(|lane| lane.max_in_flight)
                .collect::<Vec<_>>(),
        )
        .bind(lanes.iter().map(|lane| lane.may_settle).collect::<Vec<_>>())
        .bind(i64::try_from(quota).unwrap_or(i64::MAX))
        .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
        .bind(request.worker_id)
        .bind(request.lease.as_secs_f64())
        .bind(
            lanes
                .iter()
                .map(|lane| lane.rate_limit_per_second)
                .collect::<Vec<_>>(),
        )
        .bind(lanes.iter().map(|lane| lane.probing).collect::<Vec<_>>())
        .fetch_all(&mut *transaction)
        .await?;
    let lease_again_at = match leased.first() {
        Some(row) => row.lease_again_at,
        None => next_allowed(&mut transaction).await?,
    };
    transaction.commit().await?;
    let ids: Vec<Uuid> = leased.iter().map(|row| row.event_id).collect();
    let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(Leased::default());
    };
    let events: HashMap<Uuid, LeasedEvent> =
        sqlx::query_as::<_, LeasedEvent>(include_str!("sql/leased_events.sql"))
            .bind(&ids)
            .bind(first)
            .bind(last)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|event| (event.id, event))
            .collect();
    let deliveries = leased
        .into_iter()
        .filter_map(|row| {
            // an event is removed only with no live delivery left (see retention), so every
            // leased row finds its event; one that did not would wait out its lease
            let event = events.get(&row.event_id)?;
            Some(LeasedDelivery {
                id: row.id,
                lease_token: row.lease_token,
                attempts: row.attempts,
                target: row.target,
                subscription_id: row.subscription_id,
                event_id: row.event_id,
                event_type: event.event_type.clone(),
                payload: event.payload.clone(),
                event_created_at: event.created_at,
                traceparent: event.traceparent.clone(),
                probe: row.probe,
            })
        })
        .collect();
    Ok(Leased {
        deliveries,
        lease_again_at,
    })
}

/// When a lane held back by its rate limit is allowed again, for a lease that took nothing.
async fn next_allowed(
    connection: &mut sqlx::PgConnection,
) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/lanes_allowed_next.sql"))
            .fetch_one(connection)
            .await?,
    )
}

/// A row the lease statement took.
#[derive(sqlx::FromRow)]
struct LeasedRow {
    id: Uuid,
    lease_token: Uuid,
    attempts: i32,
    target: Target,
    subscription_id: Option<Uuid>,
    event_id: Uuid,
    lease_again_at: Option<DateTime<Utc>>,
    probe: bool,
}

/// The event of a leased row.
#[derive(sqlx::FromRow)]
struct LeasedEvent {
    id: Uuid,
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
    traceparent: Option<String>,
}

/// A subscription's signing secrets, opened.
#[derive(Clone)]
pub struct OpenedSecrets {
    /// Current secret.
    pub current: String,
    /// The previous secret while its grace period lasts.
    pub previous: Option<String>,
}

/// A subscription as the worker sends to it.
#[derive(Clone)]
pub struct DeliverySubscription {
    /// Subscription id.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// The secrets, or why they cannot be opened (a missing key, a damaged value): only the
    /// deliveries of this subscription fail then.
    pub secrets: Result<OpenedSecrets, CryptoError>,
    /// Custom headers.
    pub headers: Json<BTreeMap<String, String>>,
    /// Disabled subscriptions get no requests.
    pub enabled: bool,
    /// Deleted subscriptions get no requests.
    pub deleted: bool,
}

impl std::fmt::Debug for DeliverySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverySubscription")
            .field("id", &self.id)
            .field("enabled", &self.enabled)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

/// A subscription row as the worker reads it, secrets still sealed.
#[derive(sqlx::FromRow)]
pub(crate) struct StoredDeliverySubscription {
    pub(crate) id: Uuid,
    pub(crate) url: String,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) headers: Json<BTreeMap<String, String>>,
    pub(crate) enabled: bool,
    pub(crate) deleted: bool,
}

impl StoredDeliverySubscription {
    /// Opens the secrets; a failure stays with this subscription.
    pub(crate) fn open(self, cipher: &SecretCipher) -> DeliverySubscription {
        let secrets = cipher.open(self.id, &self.secret).and_then(|current| {
            let previous = self
                .previous_secret
                .as_deref()
                .map(|previous| cipher.open(self.id, previous))
                .transpose()?;
            Ok(OpenedSecrets { current, previous })
        });
        DeliverySubscription {
            id: self.id,
            url: self.url,
            secrets,
            headers: self.headers,
            enabled: self.enabled,
            deleted: self.deleted,
        }
    }
}

/// Reads the subscriptions of a leased batch and opens their secrets.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn get_delivery_subscriptions(
    db: &Db,
    cipher: &SecretCipher,
    ids: &[Uuid],
) -> Result<Vec<DeliverySubscription>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.get_delivery_subscriptions(cipher, ids).await,
    };
    let rows: Vec<StoredDeliverySubscription> =
        sqlx::query_as(include_str!("sql/get_delivery_subscriptions.sql"))
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|row| row.open(cipher)).collect())
}

/// The terminal or next state of a delivery after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum NextState {
    /// Accepted by the receiver.
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// Dead-lettered with this reason (410 Gone also disables the subscription).
    Dead(DeadReason),
    /// The subscription was deleted; no request was made.
    Cancelled,
}

impl NextState {
    /// As stored: the delivery's status, its delay when pending, and the attempt's outcome.
    pub(crate) fn stored(&self) -> (DeliveryStatus, Duration, AttemptOutcome) {
        match self {
            Self::Delivered => (
                DeliveryStatus::Delivered,
                Duration::ZERO,
                AttemptOutcome::Delivered,
            ),
            Self::Retry(delay) => (
                DeliveryStatus::Pending,
                *delay,
                AttemptOutcome::RetryScheduled,
            ),
            Self::Dead(_) => (
                DeliveryStatus::Dead,
                Duration::ZERO,
                AttemptOutcome::DeadLettered,
            ),
            Self::Cancelled => (
                DeliveryStatus::Cancelled,
                Duration::ZERO,
                AttemptOutcome::DeadLettered,
            ),
        }
    }

    /// Every value [`label`](Self::label) takes, for registering the counters at zero.
    pub const LABELS: [&'static str; 4] = [
        AttemptOutcome::Delivered.as_str(),
        AttemptOutcome::RetryScheduled.as_str(),
        AttemptOutcome::DeadLettered.as_str(),
        DeliveryStatus::Cancelled.as_str(),
    ];

    /// The `outcome` label of `ih_deliveries_total` and of the attempt's log line: the
    /// attempt's outcome, or `cancelled` when no attempt was made for a deleted subscription.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Cancelled => DeliveryStatus::Cancelled.as_str(),
            other => other.stored().2.as_str(),
        }
    }

    /// The dead letter's reason as stored, when the delivery dies.
    pub(crate) fn dead_reason(&self) -> Option<String> {
        match self {
            Self::Dead(reason) => Some(reason.to_string()),
            _ => None,
        }
    }

    /// Whether the subscription is disabled with it (410 Gone).
    pub(crate) fn disables_subscription(&self) -> bool {
        matches!(self, Self::Dead(reason) if reason.disables_subscription())
    }
}

/// The record of one request, when one was made.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// 1-based attempt number.
    pub attempt_number: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's status, if it answered.
    pub response_status: Option<i32>,
    /// The start of its body.
    pub response_body: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// The receiving system's id for what was created (Slack's `ts`).
    pub external_id: Option<String>,
}

/// A completion the database accepted.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Written {
    /// Delivery id.
    pub id: Uuid,
    /// Publish → delivered, in seconds, for delivered rows.
    pub lag_seconds: Option<f64>,
}

/// One outcome to write back.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Its lease token.
    pub lease_token: Uuid,
    /// Where it goes next.
    pub next: NextState,
    /// `last_error` of the delivery.
    pub last_error: Option<String>,
    /// The attempt, when a request (or a decision standing for one) was made.
    pub attempt: Option<AttemptRecord>,
    /// The delivery was its subscription's probe (see [`LeasedDelivery::probe`]).
    pub probe: bool,
}

/// The wait before the next probe after `failed_probes` failed ones (SQLite; the Postgres
/// statement computes the same).
pub(crate) fn probe_delay(health: &EndpointHealth, failed_probes: i64) -> Duration {
    let doublings = u32::try_from(failed_probes.clamp(0, 30)).unwrap_or(30);
    health
        .first_probe
        .saturating_mul(1_u32 << doublings)
        .min(MAX_PROBE_INTERVAL)
}

impl Completion {
    /// Whether a text a receiver can shape holds NUL (see [`storable`](Self::storable)).
    fn holds_nul(&self) -> bool {
        // rendered only for a death, which is rare
        let reason = match &self.next {
            NextState::Dead(reason) => Some(reason.to_string()),
            _ => None,
        };
        let attempt = self.attempt.as_ref();
        [
            self.last_error.as_deref(),
            reason.as_deref(),
            attempt.and_then(|a| a.response_body.as_deref()),
            attempt.and_then(|a| a.error.as_deref()),
            attempt.and_then(|a| a.external_id.as_deref()),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.contains('\0'))
    }

    /// The completion with every text a receiver can shape (its answer's excerpt, the error
    /// and dead-letter texts built from it, Slack's `ts`) made storable: a Postgres `text`
    /// value cannot hold NUL, and one refused value would fail the whole flush.
    fn storable(&self) -> Self {
        let mut completion = self.clone();
        storable_in_place(completion.last_error.as_mut());
        if let NextState::Dead(reason) = &mut completion.next {
            storable_in_place(reason.detail_mut());
        }
        if let Some(attempt) = &mut completion.attempt {
            storable_in_place(attempt.response_body.as_mut());
            storable_in_place(attempt.error.as_mut());
            storable_in_place(attempt.external_id.as_mut());
        }
        completion
    }
}

/// `text` without NUL characters (each replaced by U+FFFD), borrowed when it has none. Rust
/// strings are always valid UTF-8, so NUL is the one character a `text` column refuses.
pub fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn storable_in_place(text: Option<&mut String>) {
    if let Some(value) = text
        && let std::borrow::Cow::Owned(scrubbed) = storable_text(value)
    {
        *value = scrubbed;
    }
}

/// Writes a batch of outcomes of worker `worker_id` in one statement, the subscriptions'
/// health following them under `health`; returns the rows whose lease still held (for the
/// others, taken by another worker, nothing was written).
///
/// # Errors
/// Returns [`DbError`] when the database fails; nothing was written then.
pub async fn complete_deliveries(
    db: &Db,
    worker_id: &str,
    completions: &[Completion],
    health: &EndpointHealth,
) -> Result<Vec<Written>, DbError> {
    // a copy only in the rare flush that holds NUL: this is the hot path
    let scrubbed: Vec<Completion>;
    let completions = if completions.iter().any(Completion::holds_nul) {
        scrubbed = completions.iter().map(Completion::storable).collect();
        scrubbed.as_slice()
    } else {
        completions
    };
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => {
            return sqlite
                .complete_deliveries(worker_id, completions, health)
                .await;
        }
    };
    let mut sorted: Vec<&Completion> = completions.iter().collect();
    sorted.sort_by_key(|completion| completion.delivery_id);
    let len = sorted.len();
    let mut ids = Vec::with_capacity(len);
    let mut tokens = Vec::with_capacity(len);
    let mut statuses = Vec::with_capacity(len);
    let mut delays = Vec::with_capacity(len);
    let mut last_errors = Vec::with_capacity(len);
    let mut has_attempt = Vec::with_capacity(len);
    let mut attempt_numbers = Vec::with_capacity(len);
    let mut started = Vec::with_capacity(len);
    let mut durations = Vec::with_capacity(len);
    let mut response_statuses = Vec::with_capacity(len);
    let mut response_bodies = Vec::with_capacity(len);
    let mut attempt_errors = Vec::with_capacity(len);
    let mut attempt_outcomes = Vec::with_capacity(len);
    let mut dead_reasons = Vec::with_capacity(len);
    let mut disables = Vec::with_capacity(len);
    let mut external_ids = Vec::with_capacity(len);
    let mut probes = Vec::with_capacity(len);
    for completion in sorted {
        let (status, delay, outcome) = completion.next.stored();
        ids.push(completion.delivery_id);
        tokens.push(completion.lease_token);
        statuses.push(status.as_str());
        delays.push(delay.as_secs_f64());
        last_errors.push(completion.last_error.clone());
        has_attempt.push(completion.attempt.is_some());
        let attempt = completion.attempt.clone();
        attempt_numbers.push(attempt.as_ref().map(|a| a.attempt_number));
        started.push(attempt.as_ref().map(|a| a.started_at));
        durations.push(attempt.as_ref().map(|a| a.duration_ms));
        response_statuses.push(attempt.as_ref().and_then(|a| a.response_status));
        response_bodies.push(attempt.as_ref().and_then(|a| a.response_body.clone()));
        attempt_errors.push(attempt.as_ref().and_then(|a| a.error.clone()));
        attempt_outcomes.push(outcome.as_str());
        dead_reasons.push(completion.next.dead_reason());
        disables.push(completion.next.disables_subscription());
        external_ids.push(attempt.as_ref().and_then(|a| a.external_id.clone()));
        probes.push(completion.probe);
    }
    Ok(sqlx::query_as(include_str!("sql/complete_deliveries.sql"))
        .bind(&ids)
        .bind(&tokens)
        .bind(&statuses)
        .bind(&delays)
        .bind(&last_errors)
        .bind(&has_attempt)
        .bind(&attempt_numbers)
        .bind(&started)
        .bind(&durations)
        .bind(&response_statuses)
        .bind(&response_bodies)
        .bind(&attempt_errors)
        .bind(&attempt_outcomes)
        .bind(&dead_reasons)
        .bind(&disables)
        .bind(worker_id)
        .bind(&external_ids)
        .bind(&probes)
        .bind(i32::try_from(health.failures).unwrap_or(i32::MAX))
        .bind(health.window.as_secs_f64())
        .bind(health.first_probe.as_secs_f64())
        .bind(MAX_PROBE_INTERVAL.as_secs_f64())
        .bind(health.disable_after.as_secs_f64())
        .fetch_all(pool)
        .await?)
}

/// Hands leased rows (id, lease token, due in) back to the queue without counting an attempt;
/// returns the ids whose lease still held.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn release_deliveries(
    db: &Db,
    leases: &[(Uuid, Uuid, Duration)],
) -> Result<Vec<Uuid>, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.release_deliveries(leases).await,
    };
    let mut sorted = leases.to_vec();
    sorted.sort_by_key(|(id, _, _)| *id);
    let ids: Vec<Uuid> = sorted.iter().map(|(id, _, _)| *id).collect();
    let tokens: Vec<Uuid> = sorted.iter().map(|(_, token, _)| *token).collect();
    let due_in: Vec<f64> = sorted.iter().map(|(_, _, due)| due.as_secs_f64()).collect();
    Ok(
        sqlx::query_scalar(include_str!("sql/release_deliveries.sql"))
            .bind(&ids)
            .bind(&tokens)
            .bind(&due_in)
            .fetch_all(pool)
            .await?,
    )
}

/// Makes rows whose lease expired (their worker died) pending again, due at once; returns how
/// many. Until then they count against their lane's in-flight limit.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn rescue_expired_leases(db: &Db) -> Result<i64, DbError> {
    match db {
        Db::Postgres(pool) => Ok(sqlx::query_scalar(include_str!("sql/rescue_leases.sql"))
            .fetch_one(pool)
            .await?),
        Db::Sqlite(sqlite) => sqlite.rescue_expired_leases().await,
    }
}

/// One sample of the queue, taken by the worker holding the sampling lock.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct QueueSample {
    /// Whether this worker took the lock (the other fields are empty otherwise).
    pub leader: bool,
    /// Due rows (pending and due, or with an expired lease), counted up to 100,000.
    pub depth: Option<i64>,
    /// Seconds since the oldest due row became due.
    pub oldest_due_age_seconds: Option<f64>,
}

/// Samples the queue's depth and oldest due age.
///
/// # Errors
/// Returns [`DbError`] when the database fails.
pub async fn sample_queue(db: &Db) -> Result<QueueSample, DbError> {
    let pool = match db {
        Db::Postgres(pool) => pool,
        Db::Sqlite(sqlite) => return sqlite.sample_queue().await,
    };
    Ok(sqlx::query_as(include_str!("sql/sample_queue.sql"))
        .fetch_one(pool)
        .await?)
}
