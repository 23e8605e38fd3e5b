//! The rotation as a pure state machine: `apply` folds one event into the state, `decide`
//! says what to do next. No I/O, no clock, no randomness: `now` is an argument. Replay
//! after a crash is folding the stream again through the same `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{Action, ErrorClass, Plan, Role, RotationEvent, StepId, Trigger};

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running forward steps: capture, create, write, update, verify.
    Forward,
    /// Waiting out the grace period, then retiring the old credential.
    Grace,
    /// Undoing applied steps, newest first.
    Compensating,
    /// Terminal.
    Completed,
    /// Terminal.
    Compensated,
}

impl Phase {
    /// True for the two terminal phases.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Compensated)
    }
}

/// A failure recorded against an in-doubt step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    pub retry_at_ms: Option<i64>,
    /// Failures journaled for this attempt: the call's own, then each failed check of
    /// whether it happened. Retry delays grow with it.
    pub count: u32,
}

/// Where one step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum StepStatus {
    /// May run (again) from `not_before_ms`; `attempts` were made and found not applied.
    Pending { attempts: u32, not_before_ms: i64 },
    /// Started; the outcome is unknown until a response or a reconciliation says.
    InDoubt {
        attempt: u32,
        failure: Option<Failure>,
    },
    /// Applied; `id` is what it produced or found.
    Succeeded { id: Option<String> },
    /// Not applied, and will not be tried again.
    Abandoned { reason: String },
}

/// The folded state of one rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    pub id: String,
    pub plan: Plan,
    pub trigger: Trigger,
    pub phase: Phase,
    /// Credential generation: grows each time a created value was lost in a crash.
    pub generation: u32,
    /// A created credential whose value was lost and which must be discarded first.
    pub lost_credential: Option<StepId>,
    pub steps: BTreeMap<StepId, StepStatus>,
    pub grace_due_ms: Option<i64>,
    pub compensation_reason: Option<String>,
}

/// What the runner should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Journal `StepStarted`, call the provider, journal the outcome.
    Run {
        step: StepId,
        attempt: u32,
        key: String,
    },
    /// The step is in doubt: ask the provider whether it was applied.
    Reconcile {
        step: StepId,
        attempt: u32,
        key: String,
    },
    /// Nothing to do before `at_ms`.
    WaitUntil { at_ms: i64, reason: Wait },
    /// Journal `CompensationStarted`.
    StartCompensation { reason: String },
    /// Journal `GraceScheduled` (arming the durable timer).
    ScheduleGrace { due_at_ms: i64 },
    /// Journal `Completed`.
    Complete,
    /// Journal `Compensated`.
    FinishCompensation,
    /// The rotation has ended.
    Done { phase: Phase },
}

/// Why a rotation is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// A retry after a failure (backoff or `Retry-After`).
    Backoff,
    /// The grace period before the old credential is retired.
    Grace,
}

/// An event that does not fit the state: the journal is corrupt or was written by a
/// different rotation logic. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rotation {rotation}: event {event} does not fit the state ({why}); the journal does not match this rekey's rotation logic"
)]
pub struct Nondeterminism {
    pub rotation: String,
    pub event: &'static str,
    pub why: String,
}

/// The forward steps' order: each (role, action) for every target of the role, in the
/// plan's order. Stores are captured first: the rotator's capture is shown the value they
/// hold, so an alternating rotator can tell which of its credentials is in use. Only the
/// rotator's create step carries the credential generation.
const FORWARD: [(Role, Action); 7] = [
    (Role::Store, Action::Capture),
    (Role::Dependent, Action::Capture),
    (Role::Rotator, Action::Capture),
    (Role::Rotator, Action::Create),
    (Role::Store, Action::Write),
    (Role::Dependent, Action::Update),
    (Role::Verifier, Action::Verify),
];

impl Rotation {
    /// Forward steps in order, for the current credential generation.
    pub fn forward_steps(&self) -> Vec<StepId> {
        self.forward().collect()
    }

    /// [`Rotation::forward_steps`] without collecting them: the fold asks for the active
    /// step at every event, so this allocates nothing.
    fn forward(&self) -> impl Iterator<Item = StepId> + '_ {
        FORWARD.iter().flat_map(move |&(role, action)| {
            self.plan
                .targets
                .iter()
                .enumerate()
                .filter(move |(_, t)| t.role == role)
                .map(move |(i, _)| StepId {
                    generation: if action == Action::Create {
                        self.generation
                    } else {
                        0
                    },
                    ..StepId::new(action, i as u16)
                })
        })
    }

    /// Retirement steps, run once the grace period is over.
    pub fn retire_steps(&self) -> Vec<StepId> {
        let mut steps = Vec::new();
        for (i, t) in self.plan.targets.iter().enumerate() {
            match t.role {
                Role::Rotator => steps.push(StepId::new(Action::RetireOld, i as u16)),
                Role::Store => steps.push(StepId::new(Action::DisableOld, i as u16)),
                Role::Dependent | Role::Verifier => {}
            }
        }
        // The credential goes last: disabled vault versions first stop new readers.
        steps.sort_by_key(|s| s.action == Action::RetireOld);
        steps
    }

    /// Undo steps: the compensation of every applied forward step, newest first, and of
    /// every started step whose undo is harmless if it never landed. Then each restored
    /// store disables what its restored copy superseded (I8): the failed rotation's
    /// version and the captured one. That comes last, once nothing needs to read the old
    /// value from the captured version any more.
    pub fn undo_steps(&self) -> Vec<StepId> {
        let mut steps: Vec<StepId> = self
            .forward_steps()
            .into_iter()
            .rev()
            .filter(|s| match self.steps.get(s) {
                Some(StepStatus::Succeeded { .. }) => true,
                Some(_) => s.action.undo_sets_captured_state(),
                None => false,
            })
            .filter_map(|s| s.action.undo().map(|undo| StepId { action: undo, ..s }))
            .collect();
        let restored: Vec<StepId> = steps
            .iter()
            .filter(|s| s.action == Action::Restore)
            .map(|s| StepId::new(Action::DisableOld, s.target))
            .collect();
        steps.extend(restored);
        steps
    }

    /// The id a step produced, if it succeeded.
    pub fn outcome(&self, step: &StepId) -> Option<&str> {
        match self.steps.get(step) {
            Some(StepStatus::Succeeded { id }) => id.as_deref(),
            _ => None,
        }
    }

    /// The version or credential id captured from `target` before anything changed.
    pub fn captured(&self, target: u16) -> Option<&str> {
        self.outcome(&StepId::new(Action::Capture, target))
    }

    /// The step that is active now, if any: the first unfinished step of the phase.
    pub fn active_step(&self) -> Option<StepId> {
        if let Some(lost) = self.lost_credential {
            return Some(lost);
        }
        let list = match self.phase {
            Phase::Forward => return self.forward().find(|s| !self.succeeded(s)),
            Phase::Grace => self.retire_steps(),
            Phase::Compensating => self.undo_steps(),
            Phase::Completed | Phase::Compensated => return None,
        };
        list.into_iter().find(|s| !self.succeeded(s))
    }

    fn succeeded(&self, step: &StepId) -> bool {
        matches!(self.steps.get(step), Some(StepStatus::Succeeded { .. }))
    }

    fn misfit(&self, event: &RotationEvent, why: impl Into<String>) -> Nondeterminism {
        Nondeterminism {
            rotation: self.id.clone(),
            event: event.kind(),
            why: why.into(),
        }
    }
}

/// Folds one event into the state. `None` is the state before `Requested`.
///
/// # Errors
/// [`Nondeterminism`] when the event cannot follow the state.
pub fn apply(state: Option<Rotation>, event: &RotationEvent) -> Result<Rotation, Nondeterminism> {
    let mut r = match (state, event) {
        (
            None,
            RotationEvent::Requested {
                rotation_id,
                plan,
                trigger,
                ..
            },
        ) => {
            return Ok(Rotation {
                id: rotation_id.clone(),
                plan: plan.clone(),
                trigger: trigger.clone(),
                phase: Phase::Forward,
                generation: 0,
                lost_credential: None,
                steps: BTreeMap::new(),
                grace_due_ms: None,
                compensation_reason: None,
            });
        }
        (None, e) => {
            return Err(Nondeterminism {
                rotation: "(unknown)".into(),
                event: e.kind(),
                why: "the stream does not begin with Requested".into(),
            });
        }
        (Some(r), _) if r.phase.is_terminal() => {
            return Err(r.misfit(event, format!("the rotation already ended ({:?})", r.phase)));
        }
        (Some(r), _) => r,
    };
    let active = r.active_step();
    let check_active = |r: &Rotation, step: &StepId| {
        if active.as_ref() == Some(step) {
            Ok(())
        } else {
            Err(r.misfit(
                event,
                format!(
                    "step {step} is not the active step ({})",
                    active.map_or("none".into(), |a| a.to_string())
                ),
            ))
        }
    };
    match event {
        RotationEvent::Requested { .. } => return Err(r.misfit(event, "the rotation exists")),
        RotationEvent::StepStarted { step, attempt, .. } => {
            check_active(&r, step)?;
            let made = match r.steps.get(step) {
                None => 0,
                Some(StepStatus::Pending { attempts, .. }) => *attempts,
                Some(other) => return Err(r.misfit(event, format!("step {step} is {other:?}"))),
            };
            if *attempt != made + 1 {
                return Err(r.misfit(event, format!("attempt {attempt} after {made}")));
            }
            r.steps.insert(
                *step,
                StepStatus::InDoubt {
                    attempt: *attempt,
                    failure: None,
                },
            );
        }
        RotationEvent::StepSucceeded { step, id, .. } => {
            check_active(&r, step)?;
            if !matches!(r.steps.get(step), Some(StepStatus::InDoubt { .. })) {
                return Err(r.misfit(event, format!("step {step} was not started")));
            }
            r.steps
                .insert(*step, StepStatus::Succeeded { id: id.clone() });
            if r.lost_credential == Some(*step) {
                r.lost_credential = None;
            }
        }
        RotationEvent::StepFailed {
            step,
            attempt,
            class,
            message,
            retry_at_ms,
        } => {
            check_active(&r, step)?;
            let count = match r.steps.get(step) {
                Some(StepStatus::InDoubt {
                    attempt: a,
                    failure,
                }) if a == attempt => failure.as_ref().map_or(0, |f| f.count) + 1,
                other => {
                    return Err(
                        r.misfit(event, format!("step {step} attempt {attempt} is {other:?}"))
                    );
                }
            };
            r.steps.insert(
                *step,
                StepStatus::InDoubt {
                    attempt: *attempt,
                    failure: Some(Failure {
                        class: *class,
                        message: message.clone(),
                        retry_at_ms: *retry_at_ms,
                        count,
                    }),
                },
            );
        }
        RotationEvent::StepNotApplied { step, .. } => {
            check_active(&r, step)?;
            let Some(StepStatus::InDoubt { attempt, failure }) = r.steps.get(step).cloned() else {
                return Err(r.misfit(event, format!("step {step} is not in doubt")));
            };
            let permanent = matches!(&failure, Some(f) if f.class == ErrorClass::Permanent);
            let exhausted = attempt >= r.plan.attempts_max;
            let status = if step.action.may_abandon() && (permanent || exhausted) {
                let why = failure.map_or_else(|| "no outcome".to_owned(), |f| f.message);
                StepStatus::Abandoned {
                    reason: format!("step {step} failed after {attempt} attempt(s): {why}"),
                }
            } else {
                StepStatus::Pending {
                    attempts: attempt,
                    not_before_ms: failure.and_then(|f| f.retry_at_ms).unwrap_or(i64::MIN),
                }
            };
            r.steps.insert(*step, status);
        }
        RotationEvent::ValueLost { .. } => {
            let create = StepId {
                generation: r.generation,
                ..StepId::new(
                    Action::Create,
                    rotator_index(&r).ok_or_else(|| r.misfit(event, "no rotator"))?,
                )
            };
            if r.phase != Phase::Forward
                || !matches!(r.steps.get(&create), Some(StepStatus::Succeeded { .. }))
                || r.lost_credential.is_some()
            {
                return Err(r.misfit(event, "no created credential to lose"));
            }
            r.lost_credential = Some(StepId {
                action: Action::DiscardLost,
                ..create
            });
            r.generation += 1;
        }
        RotationEvent::CompensationStarted { reason } => {
            let abandoned = active
                .is_some_and(|s| matches!(r.steps.get(&s), Some(StepStatus::Abandoned { .. })));
            if r.phase != Phase::Forward || !abandoned {
                return Err(r.misfit(event, "no forward step was abandoned"));
            }
            r.phase = Phase::Compensating;
            r.compensation_reason = Some(reason.clone());
        }
        RotationEvent::GraceScheduled { due_at_ms } => {
            if r.phase != Phase::Forward || active.is_some() {
                return Err(r.misfit(event, "forward steps are not all done"));
            }
            r.phase = Phase::Grace;
            r.grace_due_ms = Some(*due_at_ms);
        }
        RotationEvent::Completed => {
            if r.phase != Phase::Grace || active.is_some() {
                return Err(r.misfit(event, "retirement is not done"));
            }
            r.phase = Phase::Completed;
        }
        RotationEvent::Compensated => {
            if r.phase != Phase::Compensating || active.is_some() {
                return Err(r.misfit(event, "compensation is not done"));
            }
            r.phase = Phase::Compensated;
        }
    }
    Ok(r)
}

fn rotator_index(r: &Rotation) -> Option<u16> {
    r.plan
        .targets
        .iter()
        .position(|t| t.role == Role::Rotator)
        .map(|i| i as u16)
}

/// Folds a whole stream.
///
/// # Errors
/// [`Nondeterminism`] at the first event that does not fit.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a RotationEvent>,
) -> Result<Option<Rotation>, Nondeterminism> {
    events
        .into_iter()
        .try_fold(None, |state, e| apply(state, e).map(Some))
}

/// What to do next, given the state and the time.
pub fn decide(r: &Rotation, now_ms: i64) -> Command {
    if r.phase.is_terminal() {
        return Command::Done { phase: r.phase };
    }
    if r.phase == Phase::Grace
        && let Some(due) = r.grace_due_ms
        && now_ms < due
    {
        return Command::WaitUntil {
            at_ms: due,
            reason: Wait::Grace,
        };
    }
    let Some(step) = r.active_step() else {
        return match r.phase {
            Phase::Forward => Command::ScheduleGrace {
                due_at_ms: now_ms.saturating_add(r.plan.grace_ms),
            },
            Phase::Grace => Command::Complete,
            _ => Command::FinishCompensation,
        };
    };
    let key = step.key(&r.id);
    match r.steps.get(&step) {
        None => Command::Run {
            step,
            attempt: 1,
            key,
        },
        Some(StepStatus::Pending {
            attempts,
            not_before_ms,
        }) => {
            if now_ms < *not_before_ms {
                Command::WaitUntil {
                    at_ms: *not_before_ms,
                    reason: Wait::Backoff,
                }
            } else {
                Command::Run {
                    step,
                    attempt: attempts + 1,
                    key,
                }
            }
        }
        Some(StepStatus::InDoubt { attempt, failure }) => match failure {
            Some(Failure {
                retry_at_ms: Some(at),
                ..
            }) if now_ms < *at => Command::WaitUntil {
                at_ms: *at,
                reason: Wait::Backoff,
            },
            _ => Command::Reconcile {
                step,
                attempt: *attempt,
                key,
            },
        },
        Some(StepStatus::Abandoned { reason }) => Command::StartCompensation {
            reason: reason.clone(),
        },
        // An internal invariant, not input: `active_step` skips succeeded steps.
        Some(StepStatus::Succeeded { .. }) => unreachable!("active step {step} already succeeded"),
    }
}
