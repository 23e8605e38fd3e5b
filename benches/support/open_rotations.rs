//! A journal of open rotations in varied phases, as a fleet stopped mid-flight leaves it,
//! and in-process providers that answer at once and record every effect by idempotency
//! key. Shared by the resume bench (`benches/resume.rs`) and the integration tests
//! (`tests/resume.rs`, `tests/commits.rs`).
//!
//! Each generated rotation is the prefix of a run the pure saga decides, cut before its
//! terminal event: just requested, a step in doubt (`StepStarted` with no outcome), between
//! two steps, a step failed and due for a retry, or compensating after a failed verify.

#![allow(dead_code, reason = "the bench and the tests each use a part")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rekey::journal::{Append, JournalAppend};
use rekey::provider::{
    Created, Dependent, Found, Reconciled, Reply, Rotator, SecretValue, Step, Store, Verifier,
};
use rekey::runner::lock::{self, LockEvent};
use rekey::runner::rotation_event;
use rekey::saga::{
    Action, Command, ErrorClass, Plan, Role, RotationEvent, TargetRef, Trigger, apply, decide,
};
use tokio::sync::{Notify, Semaphore};

/// The provider name every generated plan's targets use.
pub const PROVIDER: &str = "local";

/// A plan with a rotator, a store, a dependent and a verifier, all [`PROVIDER`].
pub fn plan(secret: &str) -> Plan {
    let t = TargetRef::new;
    Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            t(Role::Rotator, PROVIDER),
            t(Role::Store, PROVIDER),
            t(Role::Dependent, PROVIDER),
            t(Role::Verifier, PROVIDER),
        ],
        grace_ms: 0,
        attempts_max: 3,
    }
}

/// How a generated rotation's history goes before it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Course {
    /// Every step succeeds.
    Uneventful,
    /// The first step fails once, with a retry due at once.
    RetriedOnce,
    /// The verify fails for good: the rotation compensates.
    Compensating,
}

/// The full history of `rotation_id` along `course`, to its terminal event.
fn history(rotation_id: &str, secret: &str, course: Course) -> Vec<RotationEvent> {
    let mut events = vec![RotationEvent::Requested {
        rotation_id: rotation_id.into(),
        plan: plan(secret),
        trigger: Trigger::Bulk,
        actor: "generator".into(),
    }];
    let mut state = apply(None, &events[0]).expect("a request folds");
    let mut failed_once = false;
    loop {
        let next = match decide(&state, 0) {
            Command::Run { step, attempt, key } => {
                let fail = match course {
                    Course::RetriedOnce => !failed_once,
                    Course::Compensating => step.action == Action::Verify,
                    Course::Uneventful => false,
                };
                let outcome = if fail {
                    failed_once = true;
                    let permanent = course == Course::Compensating;
                    RotationEvent::StepFailed {
                        step,
                        attempt,
                        class: if permanent {
                            ErrorClass::Permanent
                        } else {
                            ErrorClass::Transient
                        },
                        message: "generated failure".into(),
                        retry_at_ms: (!permanent).then_some(0),
                    }
                } else {
                    RotationEvent::StepSucceeded {
                        step,
                        id: Some(format!("{}-{}", step.action.as_str(), step.target)),
                        reconciled: false,
                    }
                };
                vec![RotationEvent::StepStarted { step, attempt, key }, outcome]
            }
            Command::Reconcile { step, .. } => vec![RotationEvent::StepNotApplied {
                step,
                orphan_discarded: None,
            }],
            Command::StartCompensation { reason } => {
                vec![RotationEvent::CompensationStarted { reason }]
            }
            Command::ScheduleGrace { due_at_ms } => {
                vec![RotationEvent::GraceScheduled { due_at_ms }]
            }
            Command::Complete => vec![RotationEvent::Completed],
            Command::FinishCompensation => vec![RotationEvent::Compensated],
            Command::Done { .. } => return events,
            other => panic!("a generated history does not {other:?}"),
        };
        for e in next {
            state = apply(Some(state), &e).expect("the saga's own decisions fold");
            events.push(e);
        }
    }
}

/// The `i`th generated rotation: its id, secret, and the events it holds (never its
/// terminal one).
pub fn rotation(i: usize) -> (String, String, Vec<RotationEvent>) {
    let rotation_id = format!("00000000-0000-7000-8000-{i:012x}");
    let secret = format!("generated-{i}");
    let course = [
        Course::Uneventful,
        Course::RetriedOnce,
        Course::Compensating,
    ][i % 3];
    let mut events = history(&rotation_id, &secret, course);
    // Cut anywhere from just after `Requested` to just before the terminal event.
    let cut = 1 + (i / 3) % (events.len() - 1);
    events.truncate(cut);
    (rotation_id, secret, events)
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generated {
    pub rotations: u64,
    pub events: u64,
}

/// Writes `n` open rotations (each a lock stream and a rotation stream, as `request`
/// leaves them), `in_flight` appends at a time.
pub async fn generate<J: JournalAppend + Send + Sync + 'static>(
    journal: Arc<J>,
    n: usize,
    in_flight: usize,
) -> Generated {
    let limit = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (journal, limit) = (journal.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("the semaphore stays open");
            let (rotation_id, secret, events) = rotation(i);
            let RotationEvent::Requested {
                plan,
                trigger,
                actor,
                ..
            } = &events[0]
            else {
                unreachable!("a history starts with its request");
            };
            let opened = LockEvent::Opened {
                rotation_id: rotation_id.clone(),
                plan: plan.clone(),
                trigger: trigger.clone(),
                actor: actor.clone(),
            };
            let lock_event = rekey::journal::NewEvent::new(
                opened.kind(),
                serde_json::to_value(&opened).expect("a lock event serialises"),
            );
            journal
                .append(
                    Append::new(lock::stream_id(&secret), 0, vec![lock_event])
                        .subject(&secret)
                        .status(lock::BUSY),
                )
                .await
                .expect("appending a lock stream");
            let count = events.len() as u64;
            journal
                .append(
                    Append::new(&rotation_id, 0, events.iter().map(rotation_event).collect())
                        .subject(&secret)
                        .status("open"),
                )
                .await
                .expect("appending a rotation stream");
            count + 1
        });
    }
    let mut generated = Generated::default();
    while let Some(events) = tasks.join_next().await {
        generated.rotations += 1;
        generated.events += events.expect("a generator task");
    }
    generated
}

/// Providers in every role that answer at once. Effects are counted by idempotency key;
/// a reconciliation finds an effect applied exactly when this provider applied it.
#[derive(Debug, Default)]
pub struct Local {
    applied: Mutex<HashMap<String, u32>>,
    versions: AtomicU64,
    calls: AtomicU64,
    /// Told at the first call.
    pub first_call: Notify,
    /// When set, every call parks for good after counting itself (a bench that measures
    /// only the time to the first call stops the rest this way).
    pub hold: AtomicBool,
    /// When set, every verify waits at this gate until it opens.
    pub verify_gate: Option<Arc<Gate>>,
    /// When set, run at every call, as the runner makes it (before the call's future runs).
    pub on_call: Option<OnCall>,
}

/// What a test runs at each provider call (to look at the journal as the call is made),
/// told the step's idempotency key when the call is an effect, `None` when it only reads
/// (a capture, a verify, an inspection, a value).
#[derive(Clone)]
pub struct OnCall(pub Arc<CallHook>);

/// The function an [`OnCall`] runs.
pub type CallHook = dyn Fn(Option<&str>) + Send + Sync;

impl std::fmt::Debug for OnCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCall")
    }
}

/// Holds calls until as many as expected have arrived and the gate is opened.
#[derive(Debug)]
pub struct Gate {
    arrived: AtomicU64,
    arrival: Notify,
    open: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            arrived: AtomicU64::new(0),
            arrival: Notify::new(),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Waits until `n` calls have arrived in all.
    pub async fn arrivals(&self, n: u64) {
        while self.arrived.load(Ordering::SeqCst) < n {
            self.arrival.notified().await;
        }
    }

    /// Lets `n` waiting calls (and later ones, up to `n`) through.
    pub fn open(&self, n: usize) {
        self.open.add_permits(n);
    }

    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.arrival.notify_one();
        self.open
            .acquire()
            .await
            .expect("the gate is never closed")
            .forget();
    }
}

impl Local {
    /// Providers whose verify waits at `gate`.
    pub fn gated(gate: Arc<Gate>) -> Self {
        Self {
            verify_gate: Some(gate),
            ..Self::default()
        }
    }

    /// Providers that run `hook` at every call.
    pub fn calling(hook: OnCall) -> Self {
        Self {
            on_call: Some(hook),
            ..Self::default()
        }
    }

    /// Calls made so far, in any role.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Effects applied more than once, by key (empty when every effect happened once).
    pub fn repeated(&self) -> Vec<(String, u32)> {
        let applied = self.applied.lock().unwrap();
        let mut twice: Vec<_> = applied
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        twice.sort();
        twice
    }

    /// Effects applied, counted once per key.
    pub fn effects(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    fn version(&self) -> String {
        format!("v{}", self.versions.fetch_add(1, Ordering::Relaxed))
    }

    fn found(&self, key: &str) -> bool {
        self.applied.lock().unwrap().contains_key(key)
    }

    /// Answers `value` after counting the call and, for an effect, recording its key.
    fn reply<'a, T: Send + 'a>(&'a self, effect: Option<&str>, value: T) -> Reply<'a, T> {
        if let Some(key) = effect {
            *self
                .applied
                .lock()
                .unwrap()
                .entry(key.to_owned())
                .or_default() += 1;
        }
        if let Some(OnCall(hook)) = &self.on_call {
            hook(effect);
        }
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first_call.notify_one();
        }
        let hold = self.hold.load(Ordering::Relaxed);
        Box::pin(async move {
            if hold {
                std::future::pending::<()>().await;
            }
            Ok(value)
        })
    }

    fn reconciled<'a>(&'a self, step: &Step<'_>) -> Reply<'a, Found> {
        let found = if self.found(step.key) {
            Found::Applied { id: None }
        } else {
            Found::NotApplied
        };
        self.reply(None, found)
    }
}

impl Rotator for Local {
    fn capture<'a>(&'a self, _: Step<'a>, _: Option<&'a SecretValue>) -> Reply<'a, Option<String>> {
        self.reply(None, Some(self.version()))
    }
    fn create<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Created> {
        let created = Created {
            id: format!("cred-{}", self.version()),
            value: SecretValue::new("generated-value"),
        };
        self.reply(Some(step.key), created)
    }
    fn retire_old<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        self.reply(Some(step.key), ())
    }
    fn discard<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        self.reply(Some(step.key), None)
    }
    fn discard_lost<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        self.reply(Some(step.key), ())
    }
    fn reconcile_create<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Reconciled> {
        // An applied create's value lived only in the process that made it.
        let found = if self.found(step.key) {
            Reconciled::AppliedUnusable {
                orphan_id: format!("orphan-{}", step.key),
            }
        } else {
            Reconciled::NotApplied
        };
        self.reply(None, found)
    }
    fn reconcile_retire_old<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn reconcile_discard<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn reconcile_discard_lost<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a str>,
    ) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
}

impl Store for Local {
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        self.reply(None, Some(self.version()))
    }
    fn write<'a>(&'a self, step: Step<'a>, _: &'a SecretValue) -> Reply<'a, String> {
        self.reply(Some(step.key), self.version())
    }
    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a SecretValue>,
        _: Option<&'a str>,
        _: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        self.reply(Some(step.key), Some(self.version()))
    }
    fn disable_superseded<'a>(&'a self, step: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        self.reply(Some(step.key), ())
    }
    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        _: bool,
        _: Option<&'a str>,
    ) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a str>,
    ) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn read_value<'a>(&'a self, _: &'a str) -> Reply<'a, SecretValue> {
        self.reply(None, SecretValue::new("generated-value"))
    }
}

impl Dependent for Local {
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        self.reply(None, Some(self.version()))
    }
    fn update<'a>(&'a self, step: Step<'a>, _: &'a SecretValue) -> Reply<'a, Option<String>> {
        self.reply(Some(step.key), None)
    }
    fn revert<'a>(
        &'a self,
        step: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        self.reply(Some(step.key), None)
    }
    fn reconcile_update<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
    fn reconcile_revert<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        self.reconciled(&step)
    }
}

impl Verifier for Local {
    fn verify<'a>(&'a self, _: Step<'a>, _: &'a SecretValue) -> Reply<'a, ()> {
        let reply = self.reply(None, ());
        match &self.verify_gate {
            None => reply,
            Some(gate) => Box::pin(async move {
                gate.pass().await;
                reply.await
            }),
        }
    }
}
