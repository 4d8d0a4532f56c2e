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
//! - [`coalesce`]: group commit of unkeyed publishes.
//! - [`waker`]: coalesced wake-ups of the workers after commits.

use std::{future::Future, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Response, Route, Server,
    endpoint::make_sync,
    get, handler,
    http::{HeaderValue, StatusCode},
    listener::TcpAcceptor,
    web::{Data, Json},
};
use poem_openapi::OpenApiService;
use shared::config::ApiConfig;
use store::Db;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub mod allow;
pub mod auth;
pub mod body;
pub mod coalesce;
pub mod console;
pub mod error;
pub mod labels;
pub mod models;
pub mod openapi;
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
    pub pool: Db,
    /// The validated configuration.
    pub config: Arc<ApiConfig>,
    /// Wakes workers after commits.
    pub waker: WorkerWaker,
    /// Renders `/metrics`; absent when no recorder is installed (in-process tests).
    pub metrics: Option<PrometheusHandle>,
    /// Group commit of unkeyed publishes.
    pub publisher: coalesce::PublishCoalescer,
    /// The bounded `event_type` label values.
    pub event_type_labels: Arc<labels::EventTypeLabels>,
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

#[handler]
fn health() -> Json<models::Health> {
    Json(models::Health {
        status: "ok".to_owned(),
    })
}

#[handler]
async fn ready(state: Data<&AppState>) -> Response {
    match store::ping(&state.pool).await {
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

#[handler]
fn render_metrics(state: Data<&AppState>) -> String {
    state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
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
    let console_paths = console::paths();
    let mut plain_routes = vec!["/openapi.json", "/health", "/ready", "/metrics", "/docs"];
    plain_routes.extend(console_paths.iter().map(String::as_str));
    let document = openapi::constrain(&service.spec());
    let allowed = Arc::new(allow::AllowedMethods::from_spec(
        &document,
        "/api/v1",
        &plain_routes,
    ));
    let spec = get(make_sync(move |_| {
        document.clone().with_content_type("application/json")
    }));
    let docs = service.swagger_ui();
    let routes = allowed.clone();
    let limits = state.config.limits;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(state.config.max_in_flight));
    let authenticator = Authenticator::new(state.config.auth.clone());
    let gate = authenticator.clone();
    Route::new()
        .nest(
            "/api/v1",
            service.around(move |endpoint, request| {
                admit(endpoint, request, gate.clone(), in_flight.clone(), limits)
            }),
        )
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .nest(console::PREFIX, console::routes())
        .at("/health", get(health))
        .at("/ready", get(ready))
        .at("/metrics", get(render_metrics))
        .data(authenticator)
        .data(state)
        .around(body::limit_headers)
        .catch_all_error(render_framework_error)
        .around(move |endpoint, request| {
            allow::add_allow_header(endpoint, request, allowed.clone())
        })
        .around(move |endpoint, request| observe_request(endpoint, request, routes.clone()))
}

/// Admits an `/api/v1` request in three steps, cheapest first:
/// 1. authentication from the headers alone: a request without a valid token is passed on
///    with its body dropped, unread, and no permit, so the route answers it (401, or 404/405
///    for an unknown route or method) from its headers;
/// 2. a load-shedding permit: while the configured maximum is in flight, the rest get 503 at
///    once instead of waiting in memory for a database connection;
/// 3. the body, read within the size limit and the read deadline (413, 408).
async fn admit<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: poem::Request,
    authenticator: Authenticator,
    in_flight: Arc<tokio::sync::Semaphore>,
    limits: shared::config::ApiLimits,
) -> poem::Result<Response> {
    match authenticator.caller(&request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
        }
        Err(_) => {
            drop(request.take_body());
            return Ok(endpoint.call(request).await?.into_response());
        }
    }
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        metrics::counter!("ih_http_requests_shed_total").increment(1);
        return Err(ApiError::overloaded().into());
    };
    body::limit_body(endpoint.as_ref(), request, limits).await
}

/// Gives every request an id, a server span (continuing an incoming `traceparent`), one log
/// line and its HTTP metrics.
async fn observe_request<E: Endpoint>(
    endpoint: Arc<E>,
    request: poem::Request,
    routes: Arc<allow::AllowedMethods>,
) -> poem::Result<Response> {
    let id = request_id(&request);
    // labels, span names and the log line's method come from bounded sets: a request chooses
    // its method and path, and must not choose the size of /metrics
    let method = allow::method_label(request.method());
    let path = request.uri().path().to_owned();
    let route = routes.route_label(&path).to_owned();
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "http_request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.method = %method,
        http.route = %route,
        request.id = %id,
    );
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    shared::telemetry::continue_trace(&span, incoming.as_deref());
    let mut response = REQUEST_ID
        .scope(id.clone(), endpoint.call(request))
        .instrument(span)
        .await?
        .into_response();
    let status = response.status();
    metrics::counter!(
        "ih_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("ih_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        request.id = %id,
        http.method = %method,
        http.path = %path,
        http.status = status.as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request served"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// Logs at start what an operator must not miss: authentication switched off, and whether
/// the Slack connector is on.
pub fn announce(config: &ApiConfig) {
    if matches!(config.auth, shared::config::AuthConfig::Disabled) {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED (IH_AUTH_DISABLED=true): every caller is an admin; never run like this outside local development"
        );
        if !config.addr.ip().is_loopback() {
            tracing::warn!(
                addr = %config.addr,
                "AUTHENTICATION IS DISABLED AND THE API LISTENS BEYOND THIS MACHINE (IH_API_ADDR): anyone who can reach this address is an admin who can make the worker call any destination it may reach; unset IH_API_ADDR to listen on 127.0.0.1 only"
            );
        }
    }
    match &config.slack {
        Some(fanout) => {
            tracing::info!(event_types = ?fanout.event_types, "Slack connector on: these event types also get a slack delivery")
        }
        None => tracing::info!("Slack connector off: IH_SLACK_BOT_TOKEN is not set"),
    }
}

/// How often the API makes sure the partitions ahead exist: well inside the shortest horizon
/// they are made for (an hour, when they are a minute wide).
const PARTITIONS_AHEAD_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Serves the API on `listener` until `shutdown` completes (rendering `/metrics` from
/// `metrics` when a recorder is installed), then lets in-flight requests
/// finish for up to [`SHUTDOWN_GRACE`].
///
/// # Errors
/// Returns an error when the listener fails.
pub async fn serve(
    config: ApiConfig,
    pool: Db,
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let background = CancellationToken::new();
    // The partitions ahead are made from here too, as wide as they are (the workers' retention
    // chooses the width), so publishing never depends on a worker having run lately.
    {
        let pool = pool.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = store::retention::create_partitions_ahead(&pool, None).await {
                    tracing::warn!(error.message = %error, "could not create the partitions ahead; trying again later");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(PARTITIONS_AHEAD_INTERVAL) => {}
                }
            }
        });
    }
    // counters a dashboard or an alert reads, present before their first event
    for counter in [
        "ih_http_requests_shed_total",
        "ih_dead_letters_replayed_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    if let Some(handle) = metrics.clone() {
        let pool = pool.clone();
        let max_connections = config.database.max_connections;
        let stop = background.clone();
        tokio::spawn(async move {
            loop {
                let (size, idle) = pool.pool_usage();
                shared::telemetry::record_pool(size, idle, max_connections);
                handle.run_upkeep();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }
    // Few concurrent writes make big groups: measured on two cores, 3 in flight published
    // twice as fast as 8, with the same latency at moderate load.
    let concurrent_writes = (config.database.max_connections as usize / 4).clamp(1, 3);
    let state = AppState {
        publisher: coalesce::PublishCoalescer::spawn(
            pool.clone(),
            config.slack.clone(),
            concurrent_writes,
            background.clone(),
        ),
        waker: WorkerWaker::spawn(pool.clone(), background.clone()),
        event_type_labels: Arc::new(labels::EventTypeLabels::new(config.metrics_max_event_types)),
        pool,
        config: Arc::new(config),
        metrics,
    };
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    let result = Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(SHUTDOWN_GRACE))
        .await;
    background.cancel();
    result.map_err(Into::into)
}
