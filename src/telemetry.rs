//! Logs and traces. Logs go to stderr, filtered by `RUST_LOG`. When the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP (HTTP/protobuf):
//! one trace per rotation whose root span carries `rotation_id`, a span per step. Nothing is
//! exported otherwise. Spans and events carry ids and error classes, never secret values.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable that turns OTLP export on.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the exporter alive; dropping it flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("rekey: flushing traces to {OTLP_ENDPOINT_VAR} failed: {e}");
        }
    }
}

/// Installs the global subscriber: stderr logs at `default_level` unless `RUST_LOG` says
/// otherwise, plus OTLP export when configured.
pub fn init(default_level: &str) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = std::env::var_os(OTLP_ENDPOINT_VAR)
        .filter(|v| !v.is_empty())
        .and_then(|_| match otlp_provider() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("rekey: {OTLP_ENDPOINT_VAR} is set but the OTLP exporter failed: {e}; traces are not exported");
                None
            }
        });
    let otel = provider.as_ref().map(|p| {
        // Spans are exported whatever RUST_LOG says about log lines.
        tracing_opentelemetry::layer().with_tracer(p.tracer("rekey"))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Guard(provider)
}

use tracing_subscriber::Layer as _;

fn otlp_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("rekey")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The root span of a rotation. Its trace id is the rotation id (a UUID is 128 bits, as a
/// trace id is), so every process that drives the rotation, before and after a crash,
/// reports into the same trace.
pub fn rotation_span(rotation_id: &str, secret: &str) -> tracing::Span {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let span = tracing::info_span!("rotation", rotation_id, secret);
    if let Ok(id) = uuid::Uuid::parse_str(rotation_id) {
        let bytes = id.as_bytes();
        let mut parent = [0u8; 8];
        parent.copy_from_slice(&bytes[8..]);
        let remote = SpanContext::new(
            TraceId::from_bytes(*bytes),
            SpanId::from_bytes(parent),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        // Without an OpenTelemetry layer installed there is nothing to parent: fine.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    span
}
