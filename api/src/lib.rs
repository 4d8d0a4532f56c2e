//! `ih-api`: the publish and admin REST API.
//!
//! It only writes outbox rows and reads state; it never makes an outgoing HTTP call.
//!
//! # Layout
//! - [`serve`] runs the server on a given listener until a shutdown signal; [`app`] builds the
//!   endpoint tree (tests and `main` share it).
//! - [`routes`]: the `/api/v1` operations, one module per resource.
//! - [`body`]: the body-size limit and the publish bodies, parsed without touching the payload.
//! - [`auth`]: bearer tokens and roles.
//! - [`error`]: the one mapping of errors to statuses and the error envelope.
//! - [`waker`]: coalesced NOTIFY of the workers after commits.

use std::{future::Future, sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Response, Route, Server, get, handler,
    http::{HeaderValue, StatusCode},
    listener::TcpAcceptor,
    web::{Data, Json},
};
use poem_openapi::OpenApiService;
use shared::config::ApiConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod auth;
pub mod body;
pub mod error;
pub mod models;
pub mod routes;
pub mod waker;

use crate::{
    auth::Authenticator,
    error::{ApiError, REQUEST_ID, render_framework_error},
    routes::{admin::AdminApi, events::EventsApi, subscriptions::SubscriptionsApi},
    waker::WorkerWaker,
};

/// State shared by every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database pool.
    pub pool: PgPool,
    /// The validated configuration.
    pub config: Arc<ApiConfig>,
    /// Wakes workers after commits.
    pub waker: WorkerWaker,
}

/// How long in-flight requests may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

fn openapi_service(
    state: &AppState,
) -> OpenApiService<(EventsApi, SubscriptionsApi, AdminApi), ()> {
    OpenApiService::new(
        (
            EventsApi {
                state: state.clone(),
            },
            SubscriptionsApi {
                state: state.clone(),
            },
            AdminApi {
                state: state.clone(),
            },
        ),
        "Integrations Hub",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Outgoing webhook delivery: publish events, manage subscriptions, operate deliveries.",
    )
    .server("/api/v1")
}

/// The OpenAPI document as served at `/openapi.json`.
pub fn openapi_json(state: &AppState) -> String {
    openapi_service(state).spec()
}

#[handler]
fn health() -> Json<models::Health> {
    Json(models::Health {
        status: "ok".to_owned(),
    })
}

#[handler]
async fn ready(state: Data<&AppState>) -> Response {
    match shared::db::ping(&state.pool).await {
        Ok(()) => Json(models::Health {
            status: "ok".to_owned(),
        })
        .into_response(),
        Err(error) => {
            tracing::warn!(error.message = %error, "not ready: database unavailable");
            let mut response = Json(models::Health {
                status: "unavailable".to_owned(),
            })
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
            response.headers_mut().insert(
                poem::http::header::RETRY_AFTER,
                HeaderValue::from(error::RETRY_AFTER_SECONDS),
            );
            response
        }
    }
}

/// A request id from `X-Request-Id` when it is short and printable, else a fresh one.
fn request_id(request: &poem::Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// Builds the endpoint tree.
pub fn app(state: AppState) -> impl poem::Endpoint {
    let service = openapi_service(&state);
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    let limits = state.config.limits;
    let authenticator = Authenticator::new(state.config.auth.clone());
    Route::new()
        .nest(
            "/api/v1",
            service.around(move |endpoint, request| body::limit_body(endpoint, request, limits)),
        )
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/health", get(health))
        .at("/ready", get(ready))
        .data(authenticator)
        .data(state)
        .catch_all_error(render_framework_error)
        .around(|endpoint, request| async move {
            let id = request_id(&request);
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let started = std::time::Instant::now();
            let mut response = REQUEST_ID
                .scope(id.clone(), endpoint.call(request))
                .await?
                .into_response();
            tracing::info!(
                request.id = %id,
                http.method = %method,
                http.path = %path,
                http.status = response.status().as_u16(),
                duration_ms = started.elapsed().as_millis() as u64,
                "request served"
            );
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", value);
            }
            Ok::<Response, poem::Error>(response)
        })
}

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight requests
/// finish for up to [`SHUTDOWN_GRACE`].
///
/// # Errors
/// Returns an error when the listener fails.
pub async fn serve(
    config: ApiConfig,
    pool: PgPool,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let background = CancellationToken::new();
    let state = AppState {
        waker: WorkerWaker::spawn(pool.clone(), background.clone()),
        pool,
        config: Arc::new(config),
    };
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    let result = Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(SHUTDOWN_GRACE))
        .await;
    background.cancel();
    result.map_err(Into::into)
}

/// Keeps [`ApiError`] reachable from the crate root for integration tests.
pub type Error = ApiError;
