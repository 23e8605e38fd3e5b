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

/// At most one log line per period for something any client can cause at will (a refused
/// request, a refused connection), with the count of the lines left out since the last:
/// a flood of requests must not become a flood of logs.
#[derive(Debug)]
pub struct LogThrottle {
    every: std::time::Duration,
    /// When the last line was let through, and how many were left out since.
    state: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl LogThrottle {
    /// One line per `every` at most.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(left_out)` when a line may be logged now (`left_out` lines were suppressed
    /// since the last one), `None` when this one is to be left out. Reads tokio's clock,
    /// which tests can pause.
    pub fn admit(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            *left_out += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let burst: Vec<Option<u64>> = (0..1_000).map(|_| throttle.admit()).collect();
        assert_eq!(burst[0], Some(0));
        assert!(burst[1..].iter().all(Option::is_none));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(throttle.admit(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            throttle.admit(),
            Some(1_000),
            "999 of the burst and 1 after"
        );
        assert_eq!(throttle.admit(), None);
    }
}
