//! `POST /events`, `POST /events/batch`, `GET /events`, `GET /events/{id}`.

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use shared::domain::{EventType, IdempotencyKey, request_hash};
use store::{self as db, EventFilter, NewEvent, Page, PublishOutcome};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    body::{BatchBody, EventInput, PublishBody},
    error::ApiError,
    models::{EventDetail, EventPage, PublishedBatch, PublishedEvent, next_cursor},
    routes::{ApiTags, page_limit},
};

/// Event operations.
pub struct EventsApi {
    /// Shared state.
    pub state: AppState,
}

#[derive(ApiResponse)]
enum PublishResponse {
    /// Stored with its deliveries; durable from this answer on.
    #[oai(status = 202)]
    Accepted(Json<PublishedEvent>),
}

#[derive(ApiResponse)]
enum PublishBatchResponse {
    /// Every event stored with its deliveries, in request order.
    #[oai(status = 202)]
    Accepted(Json<PublishedBatch>),
}

/// A W3C `traceparent` is stored only when well-formed: `00-<32 hex>-<16 hex>-<2 hex>`.
fn valid_traceparent(raw: Option<&str>) -> Option<&str> {
    let raw = raw?;
    let parts: Vec<&str> = raw.split('-').collect();
    let hex = |part: &str, length: usize| {
        part.len() == length && part.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let well_formed = parts.len() == 4
        && hex(parts.first()?, 2)
        && hex(parts.get(1)?, 32)
        && hex(parts.get(2)?, 16)
        && hex(parts.get(3)?, 2);
    well_formed.then_some(raw)
}

impl EventsApi {
    async fn publish(
        &self,
        caller: &Caller,
        inputs: Vec<EventInput>,
        traceparent: Option<&str>,
    ) -> Result<Vec<PublishedEvent>, ApiError> {
        let span = tracing::info_span!(
            "publish",
            otel.name = "publish events",
            events.count = inputs.len()
        );
        let incoming = valid_traceparent(traceparent).map(str::to_owned);
        // The publish span's own context is stored, so the deliveries join this trace; with
        // tracing off, the publisher's context is passed through as received.
        let stored_context = span
            .in_scope(shared::telemetry::current_traceparent)
            .or(incoming);
        let events: Vec<NewEvent> = inputs
            .into_iter()
            .map(|input| NewEvent {
                id: Uuid::now_v7(),
                request_hash: request_hash(&input.event_type, &input.payload),
                event_type: input.event_type.as_str().to_owned(),
                payload: input.payload,
                idempotency_key: input.idempotency_key.map(|key| key.as_str().to_owned()),
                traceparent: stored_context.clone(),
            })
            .collect();
        let keyed = events.iter().any(|event| event.idempotency_key.is_some());
        let event_count = events.len();
        let outcome = async move {
            if keyed {
                db::publish_events(
                    &self.state.pool,
                    caller.idempotency_scope(),
                    &events,
                    self.state.config.slack.as_ref(),
                )
                .await
                .map_err(ApiError::from)
            } else {
                self.state
                    .publisher
                    .publish(events)
                    .await
                    .map(PublishOutcome::Stored)
            }
        }
        .instrument(span)
        .await?;
        match outcome {
            PublishOutcome::Stored(stored) => {
                // After commit, never inside the insert transaction: see store::notify_workers.
                self.state.waker.wake();
                for event in &stored {
                    let label = self.state.event_type_labels.label(&event.event_type);
                    metrics::counter!("ih_events_published_total", "event_type" => label)
                        .increment(1);
                }
                Ok(stored.into_iter().map(PublishedEvent::from).collect())
            }
            PublishOutcome::KeyReused { index } => Err(ApiError::conflict(
                "idempotency_key_reused",
                if event_count == 1 {
                    "this Idempotency-Key was used with a different request".to_owned()
                } else {
                    format!("events[{index}].idempotency_key was used with a different request")
                },
            )),
        }
    }
}

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// Publish an event.
    ///
    /// Stores the event and one delivery per matching subscription in one transaction and
    /// answers 202. With an `Idempotency-Key`, a retry of the same request answers the first
    /// answer (same id) and a different request with the same key answers 409.
    #[oai(path = "/events", method = "post", operation_id = "publish_event")]
    async fn publish_event(
        &self,
        caller: Caller,
        /// Makes retries safe: the same key and body answer the first answer.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// W3C trace context of the publisher, continued by the deliveries.
        traceparent: Header<Option<String>>,
        body: PublishBody,
    ) -> Result<PublishResponse, ApiError> {
        let PublishBody(mut input) = body;
        input.idempotency_key = idempotency_key
            .0
            .as_deref()
            .map(|key| IdempotencyKey::parse(key, "Idempotency-Key"))
            .transpose()?;
        let mut published = self
            .publish(&caller, vec![input], traceparent.0.as_deref())
            .await?;
        let event = published
            .pop()
            .ok_or_else(|| ApiError::internal(&std::io::Error::other("publish stored no event")))?;
        Ok(PublishResponse::Accepted(Json(event)))
    }

    /// Publish up to 1,000 events at once.
    ///
    /// All are stored or none. Each item may carry its own `idempotency_key`; a repeated item
    /// answers as its first publish did.
    #[oai(
        path = "/events/batch",
        method = "post",
        operation_id = "publish_event_batch"
    )]
    async fn publish_event_batch(
        &self,
        caller: Caller,
        /// W3C trace context of the publisher.
        traceparent: Header<Option<String>>,
        body: BatchBody,
    ) -> Result<PublishBatchResponse, ApiError> {
        let BatchBody(inputs) = body;
        let events = self
            .publish(&caller, inputs, traceparent.0.as_deref())
            .await?;
        Ok(PublishBatchResponse::Accepted(Json(PublishedBatch {
            events,
        })))
    }

    /// List events, newest first.
    #[oai(path = "/events", method = "get", operation_id = "list_events")]
    async fn list_events(
        &self,
        caller: Caller,
        /// Only this event type.
        event_type: Query<Option<String>>,
        /// Created at or after (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Created before (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<i64>>,
    ) -> Result<Json<EventPage>, ApiError> {
        caller.require_admin()?;
        let limit = page_limit(limit.0)?;
        if let Some(event_type) = event_type.0.as_deref() {
            EventType::parse(event_type)?;
        }
        let filter = EventFilter {
            event_type: event_type.0,
            since: since.0,
            until: until.0,
        };
        let rows = db::list_events(
            &self.state.pool,
            &filter,
            Page {
                cursor: cursor.0,
                limit,
            },
        )
        .await?;
        let next_cursor = next_cursor(&rows, limit, |row| row.id);
        Ok(Json(EventPage {
            data: rows.into_iter().map(PublishedEvent::from).collect(),
            next_cursor,
        }))
    }

    /// Get an event with its payload and the state of each delivery.
    #[oai(path = "/events/:id", method = "get", operation_id = "get_event")]
    async fn get_event(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> Result<Json<EventDetail>, ApiError> {
        caller.require_admin()?;
        let (event, deliveries) = db::get_event(&self.state.pool, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("event"))?;
        let payload =
            serde_json::from_str(&event.payload).map_err(|error| ApiError::internal(&error))?;
        Ok(Json(EventDetail {
            id: event.id,
            event_type: event.event_type,
            payload,
            created_at: event.created_at,
            deliveries_created: event.deliveries_created,
            deliveries: deliveries.into_iter().map(Into::into).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(Some(good)), Some(good));
        assert_eq!(valid_traceparent(Some("00-xyz-00f067aa0ba902b7-01")), None);
        assert_eq!(valid_traceparent(Some("garbage")), None);
        assert_eq!(valid_traceparent(None), None);
    }
}
