//! Live progress of fleet rotations: a runner [`Observer`] that turns each journaled event
//! of a rotation into what one line of `rekey rotate --fleet` shows (the application, the
//! step in flight and its attempt), and the end of the rotation. Where the lines go (bars
//! on a terminal, nothing with `--json`) is the [`ProgressSink`]'s business.
//!
//! Owns: which events show. Never touches: the terminal, the journal, the saga's state.

use std::sync::Arc;

use crate::runner::Observer;
use crate::saga::{Rotation, RotationEvent};

/// What one rotation shows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationProgress {
    /// A step started (or started again): `step` names the action and its target.
    Step {
        rotation_id: String,
        app: String,
        step: String,
        attempt: u32,
    },
    /// The rotation reached its grace period (`rotated`), or its end (`completed`,
    /// `compensated`): its line goes.
    Ended {
        rotation_id: String,
        app: String,
        outcome: &'static str,
    },
}

/// Where fleet progress goes.
pub trait ProgressSink: Send + Sync {
    fn show(&self, update: RotationProgress);
}

/// The observer: tells `sink` of each rotation's steps and end, in journal order.
pub struct FleetProgress {
    sink: Arc<dyn ProgressSink>,
}

impl std::fmt::Debug for FleetProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetProgress").finish_non_exhaustive()
    }
}

impl FleetProgress {
    pub fn new(sink: Arc<dyn ProgressSink>) -> Self {
        Self { sink }
    }
}

/// The application a rotation replaces a password of: its rotator's name (`app NAME
/// (APP_ID)`), else the plan's secret.
fn app_of(state: &Rotation) -> String {
    state
        .plan
        .targets
        .first()
        .map_or_else(|| state.plan.secret.clone(), |t| t.name.clone())
}

impl Observer for FleetProgress {
    fn journaled(&self, state: &Rotation, event: &RotationEvent, _append_seconds: f64) {
        let rotation_id = state.id.clone();
        let update = match event {
            RotationEvent::StepStarted { step, attempt, .. } => {
                let target = state
                    .plan
                    .targets
                    .get(usize::from(step.target))
                    .map_or("", |t| t.name.as_str());
                RotationProgress::Step {
                    rotation_id,
                    app: app_of(state),
                    step: format!("{} {target}", step.action.as_str()),
                    attempt: *attempt,
                }
            }
            RotationEvent::GraceScheduled { .. } => RotationProgress::Ended {
                rotation_id,
                app: app_of(state),
                outcome: "rotated",
            },
            RotationEvent::Completed => RotationProgress::Ended {
                rotation_id,
                app: app_of(state),
                outcome: "completed",
            },
            RotationEvent::Compensated => RotationProgress::Ended {
                rotation_id,
                app: app_of(state),
                outcome: "compensated",
            },
            _ => return,
        };
        self.sink.show(update);
    }
}
