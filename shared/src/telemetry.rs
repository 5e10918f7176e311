//! Logs, traces and metrics, set up the same way in every binary.
//!
//! Traces are recorded only when an OTLP endpoint is configured, by the
//! configured sampler; how a trace crosses from the api to the gateways is
//! in [`crate::trace_context`].

use crate::config::{LogFormat, TelemetryArgs, TraceSampler};
use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, TracerProviderBuilder};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the global tracing subscriber: a log layer in the configured
/// format and, when an OTLP endpoint is set, a trace exporter. Call it inside
/// the Tokio runtime (the exporter needs one).
pub fn init(args: &TelemetryArgs, service: &'static str) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .with_context(|| format!("PARLEY_LOG={:?} is not a valid log filter", args.log_filter))?;
    // Logs go to stderr; stdout is left to what a binary prints for people
    // (the single node's start-up banner). Colours only on a terminal: in a
    // file, a pipe or a log collector escape codes are noise. NO_COLOR
    // (no-color.org) turns them off on a terminal too.
    let colours = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = match args.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colours)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    // Empty counts as unset: compose passes `${OTEL_EXPORTER_OTLP_ENDPOINT:-}`.
    let endpoint = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty());
    let (otel, provider) = match endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("building the OTLP span exporter")?;
            let provider = tracer_provider(args, service)
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer(service);
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider with the configured sampler and this process's
/// resource, still without an exporter (tests add an in-memory one).
pub fn tracer_provider(args: &TelemetryArgs, service: &'static str) -> TracerProviderBuilder {
    let ratio = args.traces_sampler_arg;
    let sampler = match args.traces_sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        TraceSampler::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        TraceSampler::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        TraceSampler::ParentbasedTraceIdRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    };
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                // Replicas of one service share its name; this tells their
                // spans apart (a gateway's `deliver` spans, one per node).
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    uuid::Uuid::new_v4().to_string(),
                ))
                .build(),
        )
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: fine-grained below 50 ms, where a healthy
/// cluster's deliveries and requests fall.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process-wide Prometheus recorder, installed on first use. Every
/// `metrics::counter!` and friends in the process lands in it.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embed several
        // services in one process); the first one keeps receiving.
        let _ = metrics::set_global_recorder(recorder);
        metrics_process::Collector::default().describe();
        handle
    })
}

/// Renders the current metrics, process metrics (memory, CPU, open files) included.
pub fn render_metrics() -> String {
    let handle = prometheus();
    metrics_process::Collector::default().collect();
    handle.run_upkeep();
    handle.render()
}

/// An axum router that serves `/metrics`.
pub fn metrics_router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { render_metrics() }),
    )
}

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    prometheus();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics_router())
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }))
}
