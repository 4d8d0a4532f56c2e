//! Logs and traces.
//!
//! Logs are JSON lines on stdout by default (`IH_LOG_FORMAT=pretty` for humans). Traces are
//! exported over OTLP/HTTP (JSON encoding) when an endpoint is configured, and not at all
//! otherwise. The batch exporter runs on its own thread with a bounded queue: a collector that
//! is down costs dropped spans and an error line, never a blocked request.
//!
//! Trace context crosses the outbox as a W3C `traceparent` string: [`current_traceparent`]
//! renders the current span's context for storage, [`parent_from_traceparent`] turns a stored
//! one back into a parent for the worker's spans.

use std::{collections::HashMap, time::Duration};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// How long exporting may delay shutdown.
pub const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and how traces go.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL (e.g. `http://otel-collector:4318`); `/v1/traces` is appended.
    pub endpoint: String,
    /// Fraction of new traces sampled; children follow their parent's decision.
    pub sample_ratio: f64,
}

/// Keeps the exporter alive; call [`Telemetry::shutdown`] before exiting to flush spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter, waiting at most [`EXPORT_SHUTDOWN_TIMEOUT`]. Blocking:
    /// call it from a blocking context.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error.message = %error, "trace exporter did not shut down cleanly");
        }
    }
}

fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut directives = level.to_owned();
    // Dependencies are capped at warn unless the directive names them; the exporter's own
    // logs never reach the trace layer (see below), so they cannot feed back into it.
    for noisy in [
        "sqlx",
        "sea_orm",
        "sea_orm_migration",
        "hyper",
        "poem",
        "opentelemetry",
        "reqwest",
    ] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=warn"));
        }
    }
    EnvFilter::try_new(directives)
}

/// Installs logging and, when `tracing` is set, the OTLP trace exporter for `service_name`.
///
/// # Errors
/// Returns an error when `level` does not parse, the exporter cannot be built, or a
/// subscriber is already installed.
pub fn init(
    service_name: &str,
    level: &str,
    format: &str,
    tracing: Option<&TracingConfig>,
) -> Result<Telemetry, Box<dyn std::error::Error + Send + Sync>> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match tracing {
        Some(config) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(format!(
                    "{}/v1/traces",
                    config.endpoint.trim_end_matches('/')
                ))
                .with_timeout(Duration::from_secs(5))
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sample_ratio,
                ))))
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_owned())
                        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                        .build(),
                )
                .build();
            Some(provider)
        }
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.to_owned()))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                !metadata.target().starts_with("opentelemetry")
            }))
    });
    let fmt_layer = if format == "pretty" {
        fmt::layer().with_target(false).boxed()
    } else {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer.with_filter(filter(level)?))
        .try_init()?;
    Ok(Telemetry { provider })
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct TraceparentCarrier<'a>(&'a str);

impl Extractor for TraceparentCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The W3C `traceparent` of the current span, when it is being traced.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut MapCarrier(&mut carrier));
    carrier.remove("traceparent")
}

/// The remote parent context a stored or received `traceparent` stands for.
pub fn parent_from_traceparent(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&TraceparentCarrier(traceparent))
}

/// Makes `span` a child of the trace in `traceparent` (when it parses).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let _ = span.set_parent(parent_from_traceparent(traceparent));
    }
}

/// Buckets of every `*_seconds` histogram: from a millisecond (loopback deliveries) to an
/// hour (the longest backoff).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0,
];
/// Buckets of the lease batch size histogram.
const BATCH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];

/// Installs the process-wide Prometheus recorder (histograms with buckets, so Grafana can take
/// quantiles across replicas) and returns the handle `/metrics` renders. Call `run_upkeep` on
/// the handle every few seconds, or histogram buffers grow.
///
/// # Errors
/// Returns an error when a recorder is already installed.
pub fn install_metrics()
-> Result<metrics_exporter_prometheus::PrometheusHandle, Box<dyn std::error::Error + Send + Sync>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("ih_lease_batch_size".to_owned()),
            BATCH_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// Records a connection pool's use (`size` open, `idle` of them idle) as
/// `ih_db_pool_connections{state}`.
pub fn record_pool(size: u32, idle: usize, max_connections: u32) {
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    metrics::gauge!("ih_db_pool_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("ih_db_pool_connections", "state" => "in_use")
        .set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!("ih_db_pool_connections", "state" => "max").set(f64::from(max_connections));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_traced_span_there_is_no_traceparent() {
        assert_eq!(current_traceparent(), None);
    }

    #[test]
    fn a_stored_traceparent_becomes_a_remote_parent() {
        use opentelemetry::trace::TraceContextExt;
        let context =
            parent_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let span_context = context.span().span_context().clone();
        assert!(span_context.is_valid());
        assert!(span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let garbage = parent_from_traceparent("garbage");
        assert!(!garbage.span().span_context().is_valid());
    }
}
