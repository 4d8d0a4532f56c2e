//! Operator endpoints: attempts, deliveries, dead letters and replay.

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use store::{self as db, BulkReplayFilter, DeadLetterFilter, DeliveryFilter, Page, ReplayOutcome};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    models::{
        AdminStats, AttemptList, BulkReplayRequest, BulkReplayResult, ChartPoint, ChartWindow,
        Charts, DeadLetterPage, DeliveryPage, DeliveryStatus, Replayed, SubscriptionHealth,
        SubscriptionHealthList, next_cursor,
    },
    routes::{ApiTags, page_limit},
};

/// Dead letters replayed per transaction by a bulk replay.
pub const BULK_REPLAY_BATCH_SIZE: i64 = 500;

/// The window of the overview's attempt counts.
pub const STATS_WINDOW_SECONDS: u32 = 300;

/// Admin operations.
pub struct AdminApi {
    /// Shared state.
    pub state: AppState,
}

#[derive(ApiResponse)]
enum ReplayResponse {
    /// A new pending delivery was queued.
    #[oai(status = 202)]
    Accepted(Json<Replayed>),
}

#[derive(ApiResponse)]
enum BulkReplayResponse {
    /// Dry run: how many would be replayed.
    #[oai(status = 200)]
    Counted(Json<BulkReplayResult>),
    /// Replayed; new deliveries are queued.
    #[oai(status = 202)]
    Accepted(Json<BulkReplayResult>),
}

#[OpenApi(prefix_path = "/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// The overview of the queue: deliveries due now and the age of the oldest, outcomes of
    /// the last five minutes (as the workers count them per minute), and dead letters not yet
    /// replayed.
    #[oai(path = "/stats", method = "get", operation_id = "get_stats")]
    async fn get_stats(&self, caller: Caller) -> Result<Json<AdminStats>, ApiError> {
        caller.require_admin()?;
        let stats = db::console_stats(&self.state.pool, f64::from(STATS_WINDOW_SECONDS)).await?;
        Ok(Json(AdminStats {
            window_seconds: STATS_WINDOW_SECONDS,
            due: stats.due,
            oldest_due_age_seconds: stats.oldest_due_age_seconds,
            delivered: stats.delivered,
            failed: stats.failed,
            dead_letters: stats.dead_letters,
        }))
    }

    /// Charts of the last 15 minutes, hour (the default), 6 or 24 hours: deliveries by
    /// outcome, publish → delivered lag percentiles and the due depth, per bucket. Written by
    /// the workers every few seconds, so the newest bucket may lag by as much.
    #[oai(path = "/charts", method = "get", operation_id = "get_charts")]
    async fn get_charts(
        &self,
        caller: Caller,
        window: Query<Option<ChartWindow>>,
    ) -> Result<Json<Charts>, ApiError> {
        caller.require_admin()?;
        let (window_seconds, bucket_seconds) = window.0.unwrap_or(ChartWindow::Hour1).span();
        let buckets = db::charts::chart(
            &self.state.pool,
            std::time::Duration::from_secs(u64::from(window_seconds)),
            std::time::Duration::from_secs(u64::from(bucket_seconds)),
        )
        .await?;
        Ok(Json(Charts {
            window_seconds,
            bucket_seconds,
            points: buckets.into_iter().map(ChartPoint::from).collect(),
        }))
    }

    /// Every subscription with its health over the last hour, most troubled first: its
    /// state, the success rate and a 5-minute sparkline of its attempts, its requests in
    /// flight and its deliveries due.
    #[oai(
        path = "/subscription-health",
        method = "get",
        operation_id = "get_subscription_health"
    )]
    async fn get_subscription_health(
        &self,
        caller: Caller,
    ) -> Result<Json<SubscriptionHealthList>, ApiError> {
        caller.require_admin()?;
        let health = db::health::subscription_health(&self.state.pool).await?;
        Ok(Json(SubscriptionHealthList {
            bucket_seconds: u32::try_from(db::health::BUCKET.as_secs()).unwrap_or(u32::MAX),
            data: health.into_iter().map(SubscriptionHealth::from).collect(),
        }))
    }

    /// List every attempt of every delivery of an event.
    #[oai(
        path = "/events/:event_id/attempts",
        method = "get",
        operation_id = "list_event_attempts"
    )]
    async fn list_event_attempts(
        &self,
        caller: Caller,
        event_id: Path<Uuid>,
    ) -> Result<Json<AttemptList>, ApiError> {
        caller.require_admin()?;
        let attempts = db::list_event_attempts(&self.state.pool, event_id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("event"))?;
        Ok(Json(AttemptList {
            data: attempts.into_iter().map(Into::into).collect(),
        }))
    }

    /// List deliveries, newest first.
    #[oai(path = "/deliveries", method = "get", operation_id = "list_deliveries")]
    async fn list_deliveries(
        &self,
        caller: Caller,
        /// Only this status.
        status: Query<Option<DeliveryStatus>>,
        /// Only this subscription's deliveries.
        subscription_id: Query<Option<Uuid>>,
        /// Only this event's deliveries.
        event_id: Query<Option<Uuid>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<i64>>,
    ) -> Result<Json<DeliveryPage>, ApiError> {
        caller.require_admin()?;
        let limit = page_limit(limit.0)?;
        let filter = DeliveryFilter {
            status: status.0.map(Into::into),
            subscription_id: subscription_id.0,
            event_id: event_id.0,
        };
        let rows = db::list_deliveries(
            &self.state.pool,
            &filter,
            Page {
                cursor: cursor.0,
                limit,
            },
        )
        .await?;
        let next_cursor = next_cursor(&rows, limit, |row| row.id);
        Ok(Json(DeliveryPage {
            data: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// List dead letters, newest first.
    #[oai(
        path = "/dead-letters",
        method = "get",
        operation_id = "list_dead_letters"
    )]
    async fn list_dead_letters(
        &self,
        caller: Caller,
        /// Only this subscription's dead letters.
        subscription_id: Query<Option<Uuid>>,
        /// Only replayed (`true`) or not yet replayed (`false`) ones.
        replayed: Query<Option<bool>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<i64>>,
    ) -> Result<Json<DeadLetterPage>, ApiError> {
        caller.require_admin()?;
        let limit = page_limit(limit.0)?;
        let filter = DeadLetterFilter {
            subscription_id: subscription_id.0,
            replayed: replayed.0,
        };
        let rows = db::list_dead_letters(
            &self.state.pool,
            &filter,
            Page {
                cursor: cursor.0,
                limit,
            },
        )
        .await?;
        let next_cursor = next_cursor(&rows, limit, |row| row.id);
        Ok(Json(DeadLetterPage {
            data: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// Replay a dead letter.
    ///
    /// Queues a new delivery of the same event to the same target with its attempts reset.
    /// A dead letter is replayed once: the second replay answers 409.
    #[oai(
        path = "/dead-letters/:id/replay",
        method = "post",
        operation_id = "replay_dead_letter"
    )]
    async fn replay_dead_letter(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> Result<ReplayResponse, ApiError> {
        caller.require_admin()?;
        match db::replay_dead_letter(&self.state.pool, id.0, Uuid::now_v7()).await? {
            ReplayOutcome::Replayed { delivery_id } => {
                self.state.waker.wake();
                metrics::counter!("ih_dead_letters_replayed_total").increment(1);
                tracing::info!(dead_letter.id = %id.0, delivery.id = %delivery_id, "dead letter replayed");
                Ok(ReplayResponse::Accepted(Json(Replayed {
                    dead_letter_id: id.0,
                    delivery_id,
                })))
            }
            ReplayOutcome::NotFound => Err(ApiError::not_found("dead letter")),
            ReplayOutcome::AlreadyReplayed => Err(ApiError::conflict(
                "already_replayed",
                "this dead letter was already replayed",
            )),
            ReplayOutcome::SubscriptionDeleted => Err(ApiError::conflict(
                "subscription_deleted",
                "the dead letter's subscription was deleted; there is nowhere to send it",
            )),
        }
    }

    /// Replay dead letters in bulk.
    ///
    /// Takes every not-yet-replayed dead letter matching the filters (whose subscription still
    /// exists), in transactions of 500. With `dry_run` it only counts them.
    #[oai(
        path = "/dead-letters/replay",
        method = "post",
        operation_id = "replay_dead_letters"
    )]
    async fn replay_dead_letters(
        &self,
        caller: Caller,
        body: Json<BulkReplayRequest>,
    ) -> Result<BulkReplayResponse, ApiError> {
        caller.require_admin()?;
        let request = body.0;
        if let (Some(since), Some(until)) = (request.since, request.until)
            && since >= until
        {
            return Err(
                shared::domain::ValidationError::new("until", "must be after since").into(),
            );
        }
        let filter = BulkReplayFilter {
            subscription_id: request.subscription_id,
            since: request.since,
            until: request.until,
        };
        if request.dry_run {
            let count = db::count_replayable_dead_letters(&self.state.pool, &filter).await?;
            return Ok(BulkReplayResponse::Counted(Json(BulkReplayResult {
                dry_run: true,
                count,
            })));
        }
        let mut replayed: u64 = 0;
        loop {
            let batch =
                db::replay_dead_letters_batch(&self.state.pool, &filter, BULK_REPLAY_BATCH_SIZE)
                    .await?;
            replayed += batch;
            if batch > 0 {
                self.state.waker.wake();
                metrics::counter!("ih_dead_letters_replayed_total").increment(batch);
            }
            if batch < BULK_REPLAY_BATCH_SIZE as u64 {
                break;
            }
        }
        tracing::info!(count = replayed, "dead letters replayed in bulk");
        Ok(BulkReplayResponse::Accepted(Json(BulkReplayResult {
            dry_run: false,
            count: i64::try_from(replayed).unwrap_or(i64::MAX),
        })))
    }
}
