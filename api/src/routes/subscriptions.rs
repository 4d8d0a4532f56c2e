//! Subscription CRUD and secret rotation.

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use shared::domain::{CustomHeaders, EventTypeFilter, SigningSecret, TargetUrl, ValidationError};
use store::{self as db, NewSubscription, Page, SubscriptionPatch};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    models::{
        CreateSubscription, Subscription, SubscriptionPage, SubscriptionWithSecret,
        UpdateSubscription, next_cursor, string_map, strings,
    },
    routes::{ApiTags, page_limit},
};

/// How long a rotated-out secret keeps signing beside the new one.
pub const SECRET_ROTATION_GRACE_SECONDS: f64 = 24.0 * 3600.0;
/// Longest description.
pub const MAX_DESCRIPTION_LENGTH: usize = 1000;
/// The range of a subscription's rate limit, deliveries a second: from one every 100 s.
pub const RATE_LIMIT_RANGE: (f64, f64) = (0.01, 100_000.0);
/// Highest in-flight limit a subscription may be given.
pub const MAX_IN_FLIGHT_LIMIT: i64 = shared::config::MAX_SUBSCRIPTION_IN_FLIGHT as i64;

/// Subscription operations.
pub struct SubscriptionsApi {
    /// Shared state.
    pub state: AppState,
}

#[derive(ApiResponse)]
enum CreatedResponse {
    /// Created; the secret is shown this once.
    #[oai(status = 201)]
    Created(Json<SubscriptionWithSecret>),
}

#[derive(ApiResponse)]
enum DeletedResponse {
    /// Deleted; its queued deliveries complete `cancelled`.
    #[oai(status = 204)]
    NoContent,
}

fn validate_description(description: Option<&str>, errors: &mut Vec<ValidationError>) {
    if description.is_some_and(|text| text.chars().count() > MAX_DESCRIPTION_LENGTH) {
        errors.push(ValidationError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LENGTH} characters"),
        ));
    }
    // no stored text may hold NUL (a Postgres `text` value cannot)
    if description.is_some_and(|text| text.contains('\0')) {
        errors.push(ValidationError::new(
            "description",
            "must not contain NUL characters",
        ));
    }
}

/// A subscription's own in-flight limit, 1 to [`MAX_IN_FLIGHT_LIMIT`].
fn max_in_flight(value: Option<i64>, errors: &mut Vec<ValidationError>) -> Option<i32> {
    let value = value?;
    match i32::try_from(value) {
        Ok(limit) if (1..=MAX_IN_FLIGHT_LIMIT).contains(&value) => Some(limit),
        _ => {
            errors.push(ValidationError::new(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
            ));
            None
        }
    }
}

/// A subscription's rate limit, within [`RATE_LIMIT_RANGE`].
fn rate_limit(value: Option<f64>, errors: &mut Vec<ValidationError>) -> Option<f64> {
    let value = value?;
    let (lowest, highest) = RATE_LIMIT_RANGE;
    if (lowest..=highest).contains(&value) {
        Some(value)
    } else {
        errors.push(ValidationError::new(
            "rate_limit_per_second",
            format!("must be between {lowest} and {highest}"),
        ));
        None
    }
}

/// Collects the result of one field's check, so every invalid field is reported at once.
fn collect<T>(result: Result<T, ValidationError>, errors: &mut Vec<ValidationError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

#[OpenApi(tag = "ApiTags::Subscriptions")]
impl SubscriptionsApi {
    /// Create a subscription.
    ///
    /// When `secret` is omitted a `whsec_` secret of 32 random bytes is generated and returned
    /// in this answer only; a supplied secret is never echoed.
    #[oai(
        path = "/subscriptions",
        method = "post",
        operation_id = "create_subscription"
    )]
    async fn create_subscription(
        &self,
        caller: Caller,
        body: Json<CreateSubscription>,
    ) -> Result<CreatedResponse, ApiError> {
        caller.require_admin()?;
        let request = body.0;
        let policy = &self.state.config.destination_policy;
        let mut errors = Vec::new();
        let url = collect(TargetUrl::parse(&request.url, policy), &mut errors);
        let generated = request.secret.is_none();
        let secret = match request.secret.as_deref() {
            Some(raw) => collect(SigningSecret::parse(raw), &mut errors),
            None => Some(SigningSecret::generate()?),
        };
        let events = collect(
            EventTypeFilter::parse(&strings(request.events)),
            &mut errors,
        );
        let headers = collect(
            CustomHeaders::parse(&string_map(request.headers.unwrap_or_default())),
            &mut errors,
        );
        validate_description(request.description.as_deref(), &mut errors);
        let limit = max_in_flight(request.max_in_flight, &mut errors);
        let rate = rate_limit(request.rate_limit_per_second, &mut errors);
        let (Some(url), Some(secret), Some(events), Some(headers), true) =
            (url, secret, events, headers, errors.is_empty())
        else {
            return Err(errors.into());
        };
        let row = db::insert_subscription(
            &self.state.pool,
            &self.state.config.secrets,
            &NewSubscription {
                id: Uuid::now_v7(),
                url: url.as_str().to_owned(),
                secret: secret.expose().to_owned(),
                event_types: events.as_slice().to_vec(),
                enabled: request.enabled.unwrap_or(true),
                description: request.description.map(|text| text.0),
                headers: headers.as_map().clone(),
                max_in_flight: limit,
                rate_limit_per_second: rate,
            },
        )
        .await?;
        tracing::info!(subscription.id = %row.id, url = %url.redacted(), "subscription created");
        Ok(CreatedResponse::Created(Json(SubscriptionWithSecret {
            subscription: row.into(),
            // DESIGN §5: only a secret the service generated is shown
            secret: generated.then(|| secret.expose().to_owned()),
        })))
    }

    /// List subscriptions, oldest first.
    #[oai(
        path = "/subscriptions",
        method = "get",
        operation_id = "list_subscriptions"
    )]
    async fn list_subscriptions(
        &self,
        caller: Caller,
        /// Only enabled (`true`) or disabled (`false`) ones.
        enabled: Query<Option<bool>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<Uuid>>,
        /// Page size, 1 to 500 (default 50).
        limit: Query<Option<i64>>,
    ) -> Result<Json<SubscriptionPage>, ApiError> {
        caller.require_admin()?;
        let limit = page_limit(limit.0)?;
        let rows = db::list_subscriptions(
            &self.state.pool,
            enabled.0,
            Page {
                cursor: cursor.0,
                limit,
            },
        )
        .await?;
        let next_cursor = next_cursor(&rows, limit, |row| row.id);
        Ok(Json(SubscriptionPage {
            data: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// Get a subscription (without its secret).
    #[oai(
        path = "/subscriptions/:id",
        method = "get",
        operation_id = "get_subscription"
    )]
    async fn get_subscription(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> Result<Json<Subscription>, ApiError> {
        caller.require_admin()?;
        let row = db::get_subscription(&self.state.pool, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("subscription"))?;
        Ok(Json(row.into()))
    }

    /// Change a subscription; absent fields are kept.
    ///
    /// Queued deliveries are not rewritten: they go to the subscription as it is when sent.
    #[oai(
        path = "/subscriptions/:id",
        method = "patch",
        operation_id = "update_subscription"
    )]
    async fn update_subscription(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        body: Json<UpdateSubscription>,
    ) -> Result<Json<Subscription>, ApiError> {
        caller.require_admin()?;
        let request = body.0;
        let policy = &self.state.config.destination_policy;
        let mut errors = Vec::new();
        let url = request
            .url
            .as_deref()
            .and_then(|raw| collect(TargetUrl::parse(raw, policy), &mut errors));
        let events = request
            .events
            .map(strings)
            .and_then(|raw| collect(EventTypeFilter::parse(&raw), &mut errors));
        let headers = request
            .headers
            .map(string_map)
            .and_then(|raw| collect(CustomHeaders::parse(&raw), &mut errors));
        let description = match request.description {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(text) => Some(Some(text.0)),
        };
        validate_description(description.clone().flatten().as_deref(), &mut errors);
        let limit = match request.max_in_flight {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(value) => Some(max_in_flight(Some(value), &mut errors)),
        };
        let rate = match request.rate_limit_per_second {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(value) => Some(rate_limit(Some(value), &mut errors)),
        };
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let patch = SubscriptionPatch {
            url: url.map(|url| url.as_str().to_owned()),
            event_types: events.map(|events| events.as_slice().to_vec()),
            enabled: request.enabled,
            description,
            headers: headers.map(|headers| headers.as_map().clone()),
            max_in_flight: limit,
            rate_limit_per_second: rate,
        };
        let row = db::update_subscription(&self.state.pool, id.0, &patch)
            .await?
            .ok_or_else(|| ApiError::not_found("subscription"))?;
        Ok(Json(row.into()))
    }

    /// Delete a subscription.
    ///
    /// It stops receiving new events at once; its queued deliveries complete `cancelled`
    /// without a request.
    #[oai(
        path = "/subscriptions/:id",
        method = "delete",
        operation_id = "delete_subscription"
    )]
    async fn delete_subscription(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> Result<DeletedResponse, ApiError> {
        caller.require_admin()?;
        if db::delete_subscription(&self.state.pool, id.0).await? {
            tracing::info!(subscription.id = %id.0, "subscription deleted");
            Ok(DeletedResponse::NoContent)
        } else {
            Err(ApiError::not_found("subscription"))
        }
    }

    /// Rotate a subscription's secret.
    ///
    /// A new `whsec_` secret is generated and returned once; the previous one keeps signing
    /// beside it for 24 hours, so receivers can switch without dropping deliveries.
    #[oai(
        path = "/subscriptions/:id/rotate-secret",
        method = "post",
        operation_id = "rotate_subscription_secret"
    )]
    async fn rotate_subscription_secret(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> Result<Json<SubscriptionWithSecret>, ApiError> {
        caller.require_admin()?;
        let secret = SigningSecret::generate()?;
        let row = db::rotate_subscription_secret(
            &self.state.pool,
            &self.state.config.secrets,
            id.0,
            secret.expose(),
            SECRET_ROTATION_GRACE_SECONDS,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
        tracing::info!(subscription.id = %id.0, "subscription secret rotated");
        Ok(Json(SubscriptionWithSecret {
            subscription: row.into(),
            secret: Some(secret.expose().to_owned()),
        }))
    }
}
