//! Prometheus metrics of the daemon, fed by the runner's [`Observer`] hook: every number is
//! counted from an event at the moment it is journaled, so metrics and journal agree.
//! Open rotations are read from the journal at scrape time instead of being tracked.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runner::Observer;
use crate::saga::{ErrorClass, Rotation, RotationEvent, StepId};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

/// The daemon's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    rotations: Family<OutcomeLabel, Counter>,
    step_seconds: Family<ActionLabel, Histogram>,
    retries: Counter,
    throttled: Counter,
    append_seconds: Histogram,
    open: Gauge,
    /// Wall time each in-flight step started, for its latency.
    started: Mutex<HashMap<(String, StepId), tokio::time::Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under `rekey_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rekey");
        let rotations = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "rotations",
            "Rotations ended, by outcome (completed, compensated)",
            rotations.clone(),
        );
        let step_seconds =
            Family::<ActionLabel, Histogram>::new_with_constructor(|| -> Histogram {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            });
        registry.register(
            "step_duration_seconds",
            "Time from a step's start to its outcome, by action",
            step_seconds.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "step_failures",
            "Step attempts that failed and will be reconciled or retried",
            retries.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled",
            "Step attempts refused by throttling (429), each waited out",
            throttled.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 14));
        registry.register(
            "journal_append_seconds",
            "Time for one rotation event to become durable in the journal",
            append_seconds.clone(),
        );
        let open = Gauge::default();
        registry.register(
            "open_rotations",
            "Rotations not yet ended, read from the journal",
            open.clone(),
        );
        Self {
            registry,
            rotations,
            step_seconds,
            retries,
            throttled,
            append_seconds,
            open,
            started: Mutex::default(),
        }
    }

    /// The OpenMetrics text, with `open` rotations as read from the journal now.
    pub fn encode(&self, open: usize) -> String {
        self.open.set(i64::try_from(open).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Observer for Metrics {
    fn journaled(&self, state: &Rotation, event: &RotationEvent, append_seconds: f64) {
        self.append_seconds.observe(append_seconds);
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let mut finish = |step: &StepId| {
            if let Some(at) = started.remove(&(state.id.clone(), *step)) {
                self.step_seconds
                    .get_or_create(&ActionLabel {
                        action: step.action.as_str().to_owned(),
                    })
                    .observe(at.elapsed().as_secs_f64());
            }
        };
        match event {
            RotationEvent::StepStarted { step, .. } => {
                started.insert((state.id.clone(), *step), tokio::time::Instant::now());
            }
            RotationEvent::StepSucceeded { step, .. } => finish(step),
            RotationEvent::StepFailed { step, class, .. } => {
                finish(step);
                self.retries.inc();
                if *class == ErrorClass::RateLimited {
                    self.throttled.inc();
                }
            }
            RotationEvent::Completed => {
                self.count_end("completed");
            }
            RotationEvent::Compensated => {
                self.count_end("compensated");
            }
            _ => {}
        }
    }
}

impl Metrics {
    fn count_end(&self, outcome: &str) {
        self.rotations
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
