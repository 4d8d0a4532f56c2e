//! `ih-worker`: leases due deliveries and sends them.
//!
//! Any number of replicas share the work through the database's locks alone (Postgres row
//! locks, or an SQLite file's write lock); none talks to another. One loop leases `min(batch
//! size, free slots)` rows, spread over the subscriptions with due work and within each one's
//! fleet-wide in-flight limit (the lease statement enforces both), each row is sent on its own
//! task, and outcomes are written back in batches fenced by the lease token. A slot is free
//! again when its request is answered; the row counts against its subscription's limit until
//! its outcome is written.
//!
//! # Layout
//! - [`run`]: the lease loop, the shutdown sequence, and how the parts are wired.
//! - [`deliver`]: one webhook delivery: checks, signing, the request, the outcome.
//! - [`outcome`]: what happens to a leased row, and its constructors.
//! - [`context`]: what every delivery shares (client, policies, the Slack pacer).
//! - [`pacer`]: per-channel pacing of Slack messages.
//! - [`http`]: the delivery client and its SSRF-guarded resolver.
//! - [`complete`]: the completion buffer.
//! - [`maintenance`]: partitions ahead and retention.
//! - wake-ups come from `store::wake` (LISTEN/NOTIFY, or the publish path of the same
//!   process on SQLite).
//! - [`slack`]: the Slack connector.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use shared::{
    config::WorkerConfig,
    crypto::SecretCipher,
    retry::{RetryPolicy, jitter},
    state::Target,
};
use store::{self as db, Db, DeliverySubscription, LeasedDelivery, NextState};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

pub mod complete;
pub mod context;
pub mod deliver;
pub mod http;
pub mod maintenance;
pub mod outcome;
pub mod pacer;
pub mod slack;
pub mod tally;

use crate::{
    complete::Finished, context::DeliveryContext, deliver::failed_attempt, outcome::Outcome,
};

/// Longest pause after a failed lease statement.
const MAX_LEASE_ERROR_BACKOFF: Duration = Duration::from_secs(2);
/// How long handed-back outcomes may take to be written after the grace period.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The time of the lease loop's last iteration, for the liveness probe.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat(Arc<AtomicI64>);

impl Heartbeat {
    fn beat(&self) {
        self.0
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Seconds since the loop last went round.
    pub fn age_seconds(&self) -> i64 {
        chrono::Utc::now().timestamp() - self.0.load(Ordering::Relaxed)
    }
}

/// What tests and the binary may plug in.
pub struct WorkerOptions {
    /// Name resolution for deliveries (the system resolver by default).
    pub lookup: Arc<dyn http::Lookup>,
    /// Updated on every loop iteration.
    pub heartbeat: Heartbeat,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lookup: Arc::new(http::SystemLookup),
            heartbeat: Heartbeat::default(),
        }
    }
}

/// An interval with ±20 % jitter, so replicas do not poll in step.
fn jittered(interval: Duration) -> Duration {
    jitter(interval, 0.2)
}

/// Runs the worker until `shutdown` is cancelled, then stops leasing, lets in-flight requests
/// finish for the grace period, hands back what did not finish, and flushes every outcome.
///
/// # Errors
/// Returns an error when the delivery client cannot be built.
pub async fn run(
    config: WorkerConfig,
    pool: Db,
    shutdown: CancellationToken,
    options: WorkerOptions,
) -> anyhow::Result<()> {
    let client = http::client(
        &config.destination_policy,
        options.lookup.clone(),
        config.delivery_timeout,
    )?;
    let context = Arc::new(DeliveryContext {
        client,
        policy: config.destination_policy.clone(),
        retry: RetryPolicy {
            max_attempts: config.max_attempts,
            base_seconds: config.backoff_base_seconds,
            max_delay: config.backoff_max,
            retry_after_max: config.retry_after_max,
        },
        slack: config.slack.clone(),
        slack_pacer: pacer::ChannelPacer::default(),
    });
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let (outcome_sender, outcome_receiver) =
        mpsc::channel::<Finished>(config.concurrency.max(1) * 2);
    // each written flush frees room under some subscriptions' limits: lease again then
    let flushed = Arc::new(Notify::new());
    let tally = Arc::new(tally::Tally::default());
    let completer = tokio::spawn(complete::run(
        pool.clone(),
        config.worker_id.clone(),
        outcome_receiver,
        complete::Flushing {
            concurrency: config.concurrency,
            lease: config.lease,
            retry: context.retry,
            flushed: flushed.clone(),
            health: config.endpoint_health,
            tally: tally.clone(),
        },
    ));

    let mut wake = db::wake::Wakeups::start(&pool, config.database.listen_url.clone());

    let samplers_stop = CancellationToken::new();
    spawn_samplers(
        pool.clone(),
        config.database.max_connections,
        samplers_stop.clone(),
        Charted {
            worker_id: config.worker_id.clone(),
            tally,
        },
    );
    maintenance::spawn(pool.clone(), config.retention, samplers_stop.clone());
    register_metrics();

    let abort_sends = CancellationToken::new();
    let tasks = TaskTracker::new();
    tracing::info!(worker.id = %config.worker_id, concurrency = config.concurrency, "worker started");

    // the last lease took all it asked for: there may be more due, lease again as soon as a
    // slot is free (a lease that took less comes back on the next wake-up: a publish, a
    // written flush, a lane due or allowed again, the poll)
    let mut more = false;
    let mut error_backoff = Duration::from_millis(100);
    let mut next_rescue = Instant::now();
    // when a lane leased from last is due again, or allowed by its rate limit: sooner than
    // the poll
    let mut lease_again_at: Option<Instant> = None;
    loop {
        options.heartbeat.beat();
        if more && slots.available_permits() > 0 {
            // lease again at once
        } else if more {
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => drop(permit),
            }
        } else {
            let poll = Instant::now() + jittered(config.poll_interval);
            let until = lease_again_at.map_or(poll, |at| at.min(poll));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.next() => {}
                () = flushed.notified() => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        if Instant::now() >= next_rescue {
            next_rescue = Instant::now() + jittered(config.poll_interval);
            match db::rescue_expired_leases(&pool).await {
                Ok(0) => {}
                Ok(rescued) => {
                    tracing::warn!(count = rescued, "rows whose lease expired are due again")
                }
                Err(error) => {
                    tracing::warn!(error.message = %error, "could not rescue expired leases")
                }
            }
        }
        let want = config.batch_size.min(slots.available_permits());
        if want == 0 {
            more = true;
            continue;
        }
        let permits: Vec<OwnedSemaphorePermit> = (0..want)
            .filter_map(|_| slots.clone().try_acquire_owned().ok())
            .collect();
        let request = db::LeaseRequest {
            limit: permits.len(),
            worker_id: &config.worker_id,
            lease: config.lease,
            max_in_flight: config.subscription_max_in_flight,
        };
        let leased = match db::lease_deliveries(&pool, &request).await {
            Ok(db::Leased {
                deliveries,
                lease_again_at: again,
            }) => {
                if let Some(at) = again {
                    let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                    lease_again_at = Some(Instant::now() + wait);
                } else if lease_again_at.is_some_and(|at| at <= Instant::now()) {
                    lease_again_at = None;
                }
                deliveries
            }
            Err(error) => {
                tracing::warn!(error.message = %error, "lease failed; backing off");
                more = false;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(jittered(error_backoff)) => {}
                }
                error_backoff = (error_backoff * 2).min(MAX_LEASE_ERROR_BACKOFF);
                continue;
            }
        };
        error_backoff = Duration::from_millis(100);
        let leased_at = Instant::now();
        more = leased.len() == permits.len();
        metrics::histogram!("ih_lease_batch_size").record(leased.len() as f64);
        if leased.is_empty() {
            continue;
        }
        let subscriptions = match load_subscriptions(&pool, &config.secrets, &leased).await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                // The rows come back when their lease expires; the attempt they used is the
                // price of a database that failed between two statements.
                tracing::warn!(error.message = %error, count = leased.len(), "could not read subscriptions of a leased batch");
                continue;
            }
        };
        for (delivery, permit) in leased.into_iter().zip(permits) {
            let subscription = delivery
                .subscription_id
                .and_then(|id| subscriptions.get(&id).cloned());
            tasks.spawn(deliver_one(
                context.clone(),
                delivery,
                subscription,
                permit,
                leased_at,
                outcome_sender.clone(),
                abort_sends.clone(),
            ));
        }
    }

    tracing::info!(
        grace_seconds = config.shutdown_grace.as_secs_f64(),
        "stopping: no new leases, finishing in-flight deliveries"
    );
    tasks.close();
    if tokio::time::timeout(config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: handing back unfinished deliveries");
        abort_sends.cancel();
        let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, tasks.wait()).await;
    }
    drop(outcome_sender);
    if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, completer)
        .await
        .is_err()
    {
        tracing::warn!("final flush did not finish in time; unwritten leases expire by themselves");
    }
    samplers_stop.cancel();
    wake.stop().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Refuses to start when stored secrets are sealed with keys this worker was not given: every
/// delivery to those subscriptions would fail. A database that cannot be reached yet only
/// postpones the question to the deliveries themselves (`secret_unavailable`).
///
/// # Errors
/// Names each missing key and how many secrets it seals.
pub async fn check_encryption_keys(pool: &Db, cipher: &SecretCipher) -> anyhow::Result<()> {
    match db::secrets_without_key(pool, cipher).await {
        Ok(missing) if missing.is_empty() => Ok(()),
        Ok(missing) => {
            let listed: Vec<String> = missing
                .iter()
                .map(|(key_id, count)| format!("{count} sealed with key `{key_id}`"))
                .collect();
            anyhow::bail!(
                "IH_ENCRYPTION_KEYS lacks keys that stored subscription secrets need ({}); add them back, or run `ih-migrate reencrypt` with them before removing them",
                listed.join(", ")
            )
        }
        Err(error) => {
            tracing::warn!(error.message = %error, "could not check the stored secrets' keys at start");
            Ok(())
        }
    }
}

/// How often the queue and the pool are sampled for metrics.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// What the sampler writes for the console's charts: this worker's counts per minute.
struct Charted {
    worker_id: String,
    tally: Arc<tally::Tally>,
}

impl Charted {
    async fn write(&self, pool: &Db) {
        let recent = self.tally.recent();
        let written = match db::charts::record_minutes(pool, &self.worker_id, &recent.minutes).await
        {
            Ok(()) => {
                db::health::record_subscription_minutes(
                    pool,
                    &self.worker_id,
                    &recent.subscriptions,
                )
                .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::debug!(error.message = %error, "the chart minutes were not written");
        }
    }
}

/// Samples the queue (when this worker takes the sampling lock) and the pool, and writes the
/// chart minutes, every ~10 s (the minutes once more when stopping).
fn spawn_samplers(pool: Db, max_connections: u32, stop: CancellationToken, charted: Charted) {
    tokio::spawn(async move {
        loop {
            let (size, idle) = pool.pool_usage();
            shared::telemetry::record_pool(size, idle, max_connections);
            let sample = db::sample_queue(&pool).await;
            metrics::gauge!("ih_database_up").set(if sample.is_ok() { 1.0 } else { 0.0 });
            match sample {
                Ok(sample) if sample.leader => {
                    metrics::gauge!("ih_queue_depth").set(sample.depth.unwrap_or_default() as f64);
                    metrics::gauge!("ih_queue_oldest_due_age_seconds")
                        .set(sample.oldest_due_age_seconds.unwrap_or_default().max(0.0));
                    sample_subscriptions(&pool).await;
                    charted.tally.sample_due(sample.depth.unwrap_or_default());
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(error.message = %error, "queue sample failed"),
            }
            charted.write(&pool).await;
            tokio::select! {
                () = stop.cancelled() => {
                    charted.write(&pool).await;
                    break;
                }
                () = tokio::time::sleep(jittered(SAMPLE_INTERVAL)) => {}
            }
        }
    });
}

/// Sets `ih_subscriptions{state}`: how many subscriptions are healthy, failing, with an open
/// circuit, or disabled (by the worker that samples the queue, so one series per state).
async fn sample_subscriptions(pool: &Db) {
    match db::count_subscriptions_by_state(pool).await {
        Ok(counts) => {
            for (state, count) in counts {
                metrics::gauge!("ih_subscriptions", "state" => state.as_str()).set(count as f64);
            }
        }
        Err(error) => tracing::debug!(error.message = %error, "subscription sample failed"),
    }
}

/// Registers the counters at zero, so dashboards and alerts see them before the first event.
fn register_metrics() {
    metrics::counter!("ih_completion_flush_failures_total").increment(0);
    for target in Target::ALL {
        for outcome in NextState::LABELS {
            metrics::counter!("ih_deliveries_total", "target" => target.as_str(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("ih_dead_letters_total", "target" => target.as_str()).increment(0);
    }
    metrics::counter!("ih_leases_lost_total").increment(0);
    metrics::counter!("ih_deliveries_deferred_total").increment(0);
    metrics::gauge!("ih_inflight_deliveries").set(0.0);
}

async fn load_subscriptions(
    pool: &Db,
    cipher: &SecretCipher,
    leased: &[LeasedDelivery],
) -> Result<HashMap<Uuid, DeliverySubscription>, db::DbError> {
    let ids: Vec<Uuid> = leased
        .iter()
        .filter_map(|delivery| delivery.subscription_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(db::get_delivery_subscriptions(pool, cipher, &ids)
        .await?
        .into_iter()
        .map(|subscription| (subscription.id, subscription))
        .collect())
}

/// Sends one delivery on its own task. The send runs on an inner task so a panic inside it
/// becomes a failed attempt instead of taking the worker down; shutdown past the grace period
/// hands the lease back instead of waiting for the request.
async fn deliver_one(
    context: Arc<DeliveryContext>,
    delivery: LeasedDelivery,
    subscription: Option<DeliverySubscription>,
    permit: OwnedSemaphorePermit,
    leased_at: Instant,
    outcomes: mpsc::Sender<Finished>,
    abort: CancellationToken,
) {
    metrics::gauge!("ih_inflight_deliveries").increment(1.0);
    let outcome = match deliver::precheck(&context, &delivery, subscription.as_ref()) {
        Some(outcome) => outcome,
        None if abort.is_cancelled() => Outcome::Release {
            delivery_id: delivery.id,
            lease_token: delivery.lease_token,
            due_in: Duration::ZERO,
        },
        None => {
            let task_context = context.clone();
            let task_delivery = delivery.clone();
            // The attempt joins the publisher's trace: one trace shows publish → every attempt.
            let span = tracing::info_span!(
                "deliver",
                otel.name = format!("deliver {}", delivery.target),
                otel.kind = "client",
                event.id = %delivery.event_id,
                delivery.id = %delivery.id,
                attempt = delivery.attempts,
            );
            shared::telemetry::continue_trace(&span, delivery.traceparent.as_deref());
            let send = tokio::spawn(
                async move {
                    match (
                        task_delivery.target,
                        subscription,
                        task_context.slack.as_ref(),
                    ) {
                        (Target::Webhook, Some(subscription), _) => {
                            deliver::deliver_webhook(&task_context, &task_delivery, &subscription)
                                .await
                        }
                        (Target::Slack, _, Some(connector)) => {
                            slack::deliver_slack(&task_context, connector, &task_delivery).await
                        }
                        // precheck settles every other combination
                        _ => failed_attempt(
                            &task_context,
                            &task_delivery,
                            "internal_error: unknown delivery target",
                        ),
                    }
                }
                .instrument(span),
            );
            let abort_handle = send.abort_handle();
            tokio::select! {
                joined = send => match joined {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        tracing::error!(delivery.id = %delivery.id, error.message = %error, "delivery task failed");
                        failed_attempt(&context, &delivery, "internal_error: the delivery task panicked")
                    }
                },
                () = abort.cancelled() => {
                    abort_handle.abort();
                    Outcome::Release { delivery_id: delivery.id, lease_token: delivery.lease_token, due_in: Duration::ZERO }
                }
            }
        }
    };
    metrics::gauge!("ih_inflight_deliveries").decrement(1.0);
    // the slot is free once the request is answered; the row still counts against its
    // subscription's limit until the outcome is written
    drop(permit);
    let _ = outcomes
        .send(Finished {
            outcome,
            leased_at,
            target: delivery.target,
            subscription_id: delivery.subscription_id,
        })
        .await;
}
