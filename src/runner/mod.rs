//! The runner: takes the saga's commands, performs them through providers, and journals
//! what happened, following the exactly-once protocol of `DESIGN.md` §4:
//! `StepStarted` is durable before a provider is called to change something (a step that
//! only reads may ride along with the next commit); an outcome is journaled after; a step
//! found started without an outcome is reconciled, never blindly repeated.
//!
//! It owns everything impure: leases, the clock, jitter, retries, and secret values held
//! in memory between steps (read back from a store by version id after a restart).

pub mod lock;
pub mod resume;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use rekey_journal::{
    Append, Appended, Clock, JournalAppend, JournalRead, JournalScan, Lease, Leases, NewEvent,
    TimerOp,
};
use tracing::{Instrument, info, info_span, warn};

use crate::provider::{Cast, Found, ProviderError, Reconciled, Rotator, SecretValue, Step, Store};
use crate::resolve::{Resolve, ResolveError};
use crate::retry::RetryPolicy;
use crate::saga::{
    Action, Command, ErrorClass, Nondeterminism, Phase, Plan, Role, Rotation, RotationEvent,
    StepId, StepStatus, Trigger, Wait, apply, decide,
};
use lock::LockEvent;

/// Everything a runner needs from a journal.
pub trait RunnerJournal: JournalRead + JournalAppend + JournalScan + Leases + Send + Sync {}
impl<T: JournalRead + JournalAppend + JournalScan + Leases + Send + Sync> RunnerJournal for T {}

/// The timer every rotation stream keeps armed for its next wake-up (retry or grace).
pub const WAKE_TIMER: &str = "wake";

/// What went wrong while driving rotations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Journal(#[from] rekey_journal::Error),
    #[error(transparent)]
    Nondeterminism(#[from] Nondeterminism),
    #[error(
        "rotation {rotation}: event {seq} cannot be decoded ({detail}); the journal was written by another program or edited"
    )]
    Decode {
        rotation: String,
        seq: u64,
        detail: String,
    },
    #[error(
        "rotation {rotation} does not exist in the journal; list rotations with `rekey status`"
    )]
    UnknownRotation { rotation: String },
    #[error("rotation {rotation}: {source}")]
    Resolve {
        rotation: String,
        #[source]
        source: ResolveError,
    },
}

/// Options a runner is built with.
#[derive(Clone)]
pub struct Options {
    /// This runner's identity in leases; unique per process.
    pub owner: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl_ms: i64,
    pub retry: RetryPolicy,
    /// Seed for retry jitter (the OS picks one in production; simulations fix it).
    pub jitter_seed: u64,
    /// How to wait in real time; with it, the lease is renewed while a provider call runs,
    /// so a slow call (up to the HTTP timeout) never outlives the lease of a live runner.
    /// `None` (simulations, which drive time themselves) renews only between steps.
    pub sleep: Option<Sleep>,
    /// Told of every event this runner journals (metrics); `None` in tests that need none.
    pub observer: Option<Arc<dyn Observer>>,
    /// The longest a provider call can take (its timeout). Before each call that may
    /// change something (a step, a reconciliation), the lease is renewed to outlive it:
    /// should this runner then stall or die, no other runner takes the rotation over and
    /// reconciles while the call could still land. `None`: no known bound.
    pub call_timeout_ms: Option<i64>,
    /// Test-only: plants a known bug so the simulation can show it catches it.
    #[doc(hidden)]
    pub planted_bug_skip_reconcile: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("owner", &self.owner)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("retry", &self.retry)
            .field("heartbeat", &self.sleep.is_some())
            .field("call_timeout_ms", &self.call_timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Watches what a runner journals, without a say in it (metrics, alerts).
pub trait Observer: Send + Sync {
    /// `event` was appended to rotation `state` (the state before it), taking
    /// `append_seconds` to become durable.
    fn journaled(&self, state: &Rotation, event: &RotationEvent, append_seconds: f64);
}

/// Several observers, each told of every event in turn (metrics and progress streams).
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

impl Observer for Observers {
    fn journaled(&self, state: &Rotation, event: &RotationEvent, append_seconds: f64) {
        for observer in &self.0 {
            observer.journaled(state, event, append_seconds);
        }
    }
}

/// Waits the given milliseconds.
pub type Sleep = Arc<dyn Fn(u64) -> crate::provider::BoxFuture<'static, ()> + Send + Sync>;

/// [`Sleep`] on the tokio timer.
pub fn tokio_sleep() -> Sleep {
    Arc::new(|ms| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms))))
}

impl Options {
    /// Defaults for `owner`: 15 s leases, Key Vault's backoff, the given jitter seed.
    pub fn new(owner: impl Into<String>, jitter_seed: u64) -> Self {
        Self {
            owner: owner.into(),
            lease_ttl_ms: 15_000,
            retry: RetryPolicy::default(),
            jitter_seed,
            sleep: None,
            observer: None,
            call_timeout_ms: None,
            planted_bug_skip_reconcile: false,
        }
    }
}

/// How a request for a rotation was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A new rotation was opened.
    Started { rotation_id: String },
    /// One was already open for the same credential; the trigger was journaled against it.
    Coalesced { into: String },
}

/// Where `drive` left a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// It reached its terminal event.
    Finished(Phase),
    /// Nothing to do before `until_ms` (a retry backoff or the grace period).
    Waiting { until_ms: i64, reason: Wait },
    /// Another runner holds its lease.
    Busy { holder: String },
    /// The runner is stopping ([`Runner::stop`]); the rotation is left for `resume`.
    Stopped,
}

/// Drives rotations through providers, journaling every step.
#[derive(Debug)]
pub struct Runner<J> {
    journal: Arc<J>,
    resolver: Arc<dyn Resolve>,
    clock: Arc<dyn Clock>,
    options: Options,
    jitter: Mutex<StdRng>,
    /// New values created by this process, by (rotation, generation). Lost on a crash
    /// by design: they are read back from a store, or the credential is made again.
    values: Mutex<HashMap<(String, u32), SecretValue>>,
    /// Rotations this runner is driving now. Its lease is re-entrant for its own owner,
    /// so this, not the lease, keeps two of its own tasks off one rotation.
    driving: Mutex<HashSet<String>>,
    /// Set by [`Runner::stop`]: no new step starts.
    stopping: std::sync::atomic::AtomicBool,
}

/// Marks a rotation as driven by this runner until dropped (also when a drive is cancelled).
struct DrivingGuard<'a> {
    set: &'a Mutex<HashSet<String>>,
    rotation_id: String,
}

impl Drop for DrivingGuard<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.rotation_id);
    }
}

/// A rotation being driven under a lease.
struct Driving {
    state: Rotation,
    /// The stream's sequence as journaled (events in `pending` not counted).
    seq: u64,
    lease: Lease,
    /// Events folded into `state` but not journaled yet, each with the state before it
    /// (for the observer). They are journaled together, in one append, before the next
    /// provider call and before the drive returns: a step's outcome, the pure events the
    /// saga decides after it, and the next step's `StepStarted` are one durable commit,
    /// and that commit precedes the call it starts. Reads alone (captures, a verify after
    /// a verify) wait for the next commit: see [`Driving::holds_only_reads`].
    pending: Vec<(Rotation, RotationEvent)>,
}

impl Driving {
    /// Whether every held event belongs to a step that only reads its target (its start,
    /// its outcome). Such events need not be durable before the next call: a crash loses
    /// only reads, which the resumed rotation runs again. Anything else held (an effect's
    /// start or outcome, a phase change) is journaled before the next call (DESIGN §4).
    fn holds_only_reads(&self) -> bool {
        self.pending.iter().all(|(_, e)| match e {
            RotationEvent::StepStarted { step, .. }
            | RotationEvent::StepSucceeded { step, .. }
            | RotationEvent::StepFailed { step, .. } => step.action.only_reads(),
            _ => false,
        })
    }
}

/// Events a drive holds back at most before journaling them (well under an append's limit).
const PENDING_EVENTS_MAX: usize = 32;

impl<J: RunnerJournal> Runner<J> {
    /// A runner over `journal`, calling the providers `resolver` finds for each target.
    pub fn new(
        journal: Arc<J>,
        resolver: Arc<dyn Resolve>,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> Self {
        let jitter = Mutex::new(StdRng::seed_from_u64(options.jitter_seed));
        Self {
            journal,
            resolver,
            clock,
            options,
            jitter,
            values: Mutex::default(),
            driving: Mutex::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Graceful shutdown: steps already started run to their outcome event, then every
    /// drive returns [`Progress::Stopped`]; the journal holds the rest for `resume`.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Opens a rotation of `plan`'s secret, or coalesces into the one already open.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn request(
        &self,
        plan: Plan,
        trigger: Trigger,
        actor: &str,
        rotation_id: String,
    ) -> Result<Requested, Error> {
        self.request_unless(plan, trigger, actor, rotation_id, None)
            .await
    }

    /// As [`Runner::request`], once per slot: when `actor` already requested `plan`'s
    /// secret since the lock closed rotation `after` (or ever, for `None`), that request's
    /// outcome, and nothing is journaled. The check and the append are one optimistic
    /// step on the lock stream, so two processes firing the same slot open one rotation.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn request_once(
        &self,
        plan: Plan,
        trigger: Trigger,
        actor: &str,
        rotation_id: String,
        after: Option<&str>,
    ) -> Result<Requested, Error> {
        self.request_unless(plan, trigger, actor, rotation_id, Some(after))
            .await
    }

    async fn request_unless(
        &self,
        plan: Plan,
        trigger: Trigger,
        actor: &str,
        rotation_id: String,
        once_after: Option<Option<&str>>,
    ) -> Result<Requested, Error> {
        let lock_stream = lock::stream_id(&plan.lock_key);
        loop {
            let (events, seq) = self.read_lock(&lock_stream).await?;
            if let Some(after) = once_after
                && let Some((id, opened)) =
                    lock::requested_since(&events, after, &plan.secret, actor)
            {
                info!(
                    secret = plan.secret,
                    actor,
                    rotation_id = id,
                    "already requested"
                );
                let id = id.to_owned();
                return Ok(if opened {
                    Requested::Started { rotation_id: id }
                } else {
                    Requested::Coalesced { into: id }
                });
            }
            let (event, outcome) = match lock::open_rotation(&events) {
                Some(LockEvent::Opened {
                    rotation_id: open,
                    plan: open_plan,
                    trigger: open_trigger,
                    actor: open_actor,
                }) => {
                    // A journal written before the lock's opening and the rotation's
                    // request became one atomic append may hold a lock opened without its
                    // rotation stream (a crash between the two): create it, so the trigger
                    // coalesces into a real rotation.
                    match self.journal.stream_info(open).await? {
                        None => {
                            self.create_rotation_stream(open, open_plan, open_trigger, open_actor)
                                .await?;
                        }
                        // It has ended and its runner has not closed the lock yet (or died
                        // before it could): close it for it, so this trigger is not lost
                        // in a rotation that will never run again.
                        Some(info) if info.status != "open" => {
                            let (state, _) = self.load(open).await?;
                            self.close_lock(&state, state.phase).await?;
                            continue;
                        }
                        Some(_) => {}
                    }
                    (
                        LockEvent::Coalesced {
                            into: open.clone(),
                            trigger: trigger.clone(),
                            actor: actor.to_owned(),
                        },
                        Requested::Coalesced { into: open.clone() },
                    )
                }
                _ => (
                    LockEvent::Opened {
                        rotation_id: rotation_id.clone(),
                        plan: plan.clone(),
                        trigger: trigger.clone(),
                        actor: actor.to_owned(),
                    },
                    Requested::Started {
                        rotation_id: rotation_id.clone(),
                    },
                ),
            };
            let opening = matches!(event, LockEvent::Opened { .. });
            let append =
                Append::new(&lock_stream, seq, vec![lock_event(&event)]).subject(&plan.secret);
            let written = if opening {
                // The lock's `Opened` and the rotation's `Requested` land together.
                let rotation = rotation_stream_append(&rotation_id, &plan, &trigger, actor);
                self.journal
                    .append_all(vec![append.status(lock::BUSY), rotation])
                    .await
                    .map(drop)
            } else {
                self.journal.append(append).await.map(drop)
            };
            match written {
                Ok(()) => {}
                Err(rekey_journal::Error::Conflict { stream, .. }) if stream == lock_stream => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if opening {
                info!(
                    rotation_id,
                    secret = plan.secret,
                    ?trigger,
                    "rotation requested"
                );
            } else {
                info!(
                    secret = plan.secret,
                    ?trigger,
                    ?outcome,
                    "trigger coalesced into the open rotation"
                );
            }
            return Ok(outcome);
        }
    }

    async fn create_rotation_stream(
        &self,
        rotation_id: &str,
        plan: &Plan,
        trigger: &Trigger,
        actor: &str,
    ) -> Result<(), Error> {
        let append = rotation_stream_append(rotation_id, plan, trigger, actor);
        match self.journal.append(append).await {
            // Someone (a resume after a crash) created it first: the same request.
            Ok(_) | Err(rekey_journal::Error::Conflict { .. }) => Ok(()),
            // A runner holding its lease has created it meanwhile.
            Err(rekey_journal::Error::LeaseHeld { .. })
                if self.journal.stream_info(rotation_id).await?.is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_lock(&self, lock_stream: &str) -> Result<(Vec<LockEvent>, u64), Error> {
        let events = self.journal.read_stream(lock_stream).await?;
        let seq = events.last().map_or(0, |e| e.stream_seq);
        let decoded = events
            .iter()
            .map(|e| {
                serde_json::from_str(&e.payload).map_err(|err| Error::Decode {
                    rotation: lock_stream.to_owned(),
                    seq: e.stream_seq,
                    detail: err.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((decoded, seq))
    }

    /// The earliest expiry any store of `plan` reports for its current version.
    ///
    /// # Errors
    /// The first store that cannot be asked.
    pub async fn expiry(&self, plan: &Plan) -> Result<Option<i64>, ProviderError> {
        let mut earliest: Option<i64> = None;
        for target in plan.targets.iter().filter(|t| t.role == Role::Store) {
            if let Ok(Cast::Store(store)) = self.resolver.resolve(target)
                && let Some(at) = store.expiry(target.secret(&plan.secret)).await?
            {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        Ok(earliest)
    }

    /// Every rotation not yet ended, repairing what a crash between two appends left:
    /// an opened lock without its rotation stream, or an ended rotation whose lock is open
    /// (see [`Runner::each_open_rotation`], which hands each over as it is found).
    ///
    /// # Errors
    /// Journal errors.
    pub async fn open_rotations(&self) -> Result<Vec<String>, Error> {
        let mut open = Vec::new();
        self.each_open_rotation(|o| open.push(o.rotation_id))
            .await?;
        Ok(open)
    }

    /// Folds a rotation's stream into its state.
    ///
    /// # Errors
    /// [`Error::UnknownRotation`], decode and nondeterminism errors.
    pub async fn load(&self, rotation_id: &str) -> Result<(Rotation, u64), Error> {
        let events = self.journal.read_stream(rotation_id).await?;
        let mut state = None;
        for e in &events {
            let event =
                RotationEvent::from_journal(&e.kind, &e.payload).map_err(|err| Error::Decode {
                    rotation: rotation_id.to_owned(),
                    seq: e.stream_seq,
                    detail: err.to_string(),
                })?;
            state = Some(apply(state, &event)?);
        }
        let seq = events.last().map_or(0, |e| e.stream_seq);
        state
            .map(|s| (s, seq))
            .ok_or_else(|| Error::UnknownRotation {
                rotation: rotation_id.to_owned(),
            })
    }

    /// Drives one rotation as far as it can go now: to its end, to a wait, or not at all
    /// when another runner holds it.
    ///
    /// # Errors
    /// Journal, decode and nondeterminism errors; a lost lease is reported as
    /// [`rekey_journal::Error::StaleFence`] or `LeaseExpired`, and the runner stops.
    pub async fn drive(&self, rotation_id: &str) -> Result<Progress, Error> {
        let newly = self
            .driving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rotation_id.to_owned());
        if !newly {
            return Ok(Progress::Busy {
                holder: self.options.owner.clone(),
            });
        }
        let _guard = DrivingGuard {
            set: &self.driving,
            rotation_id: rotation_id.to_owned(),
        };
        // No lease is taken on a stream that does not exist: it would block its creation.
        let Some(info) = self.journal.stream_info(rotation_id).await? else {
            return Err(Error::UnknownRotation {
                rotation: rotation_id.to_owned(),
            });
        };
        // Nor on one that has ended: nothing is left to call or to append to it, only its
        // lock to close (an optimistic append to the lock stream), so any runner may.
        if info.status != "open" {
            let (state, _) = self.load(rotation_id).await?;
            if let Command::Done { phase } = decide(&state, self.clock.now_ms()) {
                self.close_lock(&state, phase).await?;
                return Ok(Progress::Finished(phase));
            }
        }
        let lease = match self
            .journal
            .acquire(rotation_id, &self.options.owner, self.options.lease_ttl_ms)
            .await
        {
            Ok(lease) => lease,
            Err(rekey_journal::Error::LeaseHeld { holder, .. }) => {
                return Ok(Progress::Busy { holder });
            }
            Err(e) => return Err(e.into()),
        };
        let (state, seq) = match self.load(rotation_id).await {
            Ok(loaded) => loaded,
            Err(e) => {
                let _ = self.journal.release(&lease).await;
                return Err(e);
            }
        };
        let span = crate::telemetry::rotation_span(rotation_id, &state.plan.secret);
        let mut d = Driving {
            state,
            seq,
            lease,
            pending: Vec::new(),
        };
        let result = self.drive_leased(&mut d).instrument(span).await;
        // Best effort: an unreleased lease simply expires. An ended rotation's is kept
        // (one commit saved): no runner needs it again (see above).
        if !matches!(result, Ok(Progress::Finished(_))) {
            let _ = self.journal.release(&d.lease).await;
        }
        result
    }

    /// Drives under the lease, then journals what the drive decided and has not journaled
    /// yet, on every way out (a wait, the end, a stop, an error of a provider's resolution).
    async fn drive_leased(&self, d: &mut Driving) -> Result<Progress, Error> {
        let result = self.drive_steps(d).await;
        let flushed = self.flush(d).await;
        let progress = result?;
        flushed?;
        Ok(progress)
    }

    async fn drive_steps(&self, d: &mut Driving) -> Result<Progress, Error> {
        loop {
            let now = self.clock.now_ms();
            if d.lease.expires_at_ms - now < self.options.lease_ttl_ms / 2 {
                d.lease = self
                    .journal
                    .renew(&d.lease, self.options.lease_ttl_ms)
                    .await?;
            }
            let command = decide(&d.state, now);
            // Checked before a provider call only: a step that started reaches its outcome
            // event, and what needs no provider (ending, closing the lock) still happens.
            if matches!(command, Command::Run { .. } | Command::Reconcile { .. })
                && self.stopping.load(std::sync::atomic::Ordering::Acquire)
            {
                return Ok(Progress::Stopped);
            }
            match command {
                Command::Done { phase } => {
                    self.end(d, phase).await?;
                    return Ok(Progress::Finished(phase));
                }
                Command::WaitUntil { at_ms, reason } => {
                    return Ok(Progress::Waiting {
                        until_ms: at_ms,
                        reason,
                    });
                }
                Command::StartCompensation { reason } => {
                    warn!(reason, "compensating");
                    self.emit(d, RotationEvent::CompensationStarted { reason })
                        .await?;
                }
                Command::ScheduleGrace { due_at_ms } => {
                    self.emit(d, RotationEvent::GraceScheduled { due_at_ms })
                        .await?;
                }
                Command::Complete => self.emit(d, RotationEvent::Completed).await?,
                Command::FinishCompensation => self.emit(d, RotationEvent::Compensated).await?,
                Command::Run { step, attempt, key } => {
                    let span = info_span!("step", %step, attempt);
                    self.run_step(d, step, attempt, &key)
                        .instrument(span)
                        .await?;
                }
                Command::Reconcile { step, attempt, key } => {
                    let span = info_span!("reconcile", %step, attempt);
                    self.reconcile_step(d, step, attempt, &key)
                        .instrument(span)
                        .await?;
                }
            }
        }
    }

    /// Folds one event into the state and holds it for the next [`Runner::flush`], which
    /// journals it under the lease. Folding first means an event the rotation logic
    /// refuses never reaches the journal.
    async fn emit(&self, d: &mut Driving, event: RotationEvent) -> Result<(), Error> {
        if d.pending.len() >= PENDING_EVENTS_MAX {
            self.flush(d).await?;
        }
        let next = apply(Some(d.state.clone()), &event)?;
        let before = std::mem::replace(&mut d.state, next);
        d.pending.push((before, event));
        Ok(())
    }

    /// Journals the held events in one append under the lease, and waits until it is
    /// durable. Called before every provider call that follows anything but reads, so an
    /// effect's `StepStarted` is durable before the call it announces (DESIGN §4),
    /// together with the previous step's outcome and the reads before it.
    async fn flush(&self, d: &mut Driving) -> Result<(), Error> {
        if d.pending.is_empty() {
            return Ok(());
        }
        let append = self.pending_append(d).await?;
        // Wall time for the latency metric only; no decision depends on it.
        let started = tokio::time::Instant::now();
        let appended = self.journal.append(append).await?;
        self.journaled(d, &appended, started);
        Ok(())
    }

    /// The append of the held events, under a lease renewed first if it runs short: the
    /// renewal at the top of the step may be long past (a slow append or a call between
    /// them), and the lease must not lapse under this append.
    async fn pending_append(&self, d: &mut Driving) -> Result<Append, Error> {
        if d.lease.expires_at_ms - self.clock.now_ms() < self.options.lease_ttl_ms / 2 {
            d.lease = self
                .journal
                .renew(&d.lease, self.options.lease_ttl_ms)
                .await?;
        }
        let events = d.pending.iter().map(|(_, e)| rotation_event(e)).collect();
        let append = Append::new(d.state.id.clone(), d.seq, events).fenced(d.lease.fence());
        Ok(match d.pending.last().map(|(_, e)| e) {
            Some(RotationEvent::Completed) => append.status("completed"),
            Some(RotationEvent::Compensated) => append.status("compensated"),
            _ => append,
        })
    }

    /// Notes that the held events are durable (as `appended`, since `started`).
    fn journaled(&self, d: &mut Driving, appended: &Appended, started: tokio::time::Instant) {
        d.seq = appended.last_seq;
        let pending = std::mem::take(&mut d.pending);
        if let Some(observer) = &self.options.observer {
            let seconds = started.elapsed().as_secs_f64();
            for (before, event) in &pending {
                observer.journaled(before, event, seconds);
            }
        }
    }

    /// Journals the terminal event (with whatever else is held) and closes the lock, in
    /// one commit when the lock still holds this rotation open: the lock then never says
    /// closed before the rotation has ended, and no crash can leave one without the other.
    async fn end(&self, d: &mut Driving, phase: Phase) -> Result<(), Error> {
        if d.pending.is_empty() {
            return self.close_lock(&d.state, phase).await;
        }
        let lock_stream = lock::stream_id(&d.state.plan.lock_key);
        let (events, seq) = self.read_lock(&lock_stream).await?;
        if !lock::holds_open(&events, &d.state.id) {
            // The lock has moved on from this rotation: there is nothing to close.
            return self.flush(d).await;
        }
        let rotation = self.pending_append(d).await?;
        let close = close_lock_append(&lock_stream, seq, &d.state.id, phase);
        let started = tokio::time::Instant::now();
        match self.journal.append_all(vec![rotation, close]).await {
            Ok(appended) => {
                self.journaled(d, &appended[0], started);
                Ok(())
            }
            // A trigger joined the rotation meanwhile: nothing landed; end in two
            // commits, the rotation's first.
            Err(rekey_journal::Error::Conflict { stream, .. }) if stream == lock_stream => {
                self.flush(d).await?;
                self.close_lock(&d.state, phase).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The provider of `step`'s target, in the target's role.
    fn cast(&self, state: &Rotation, step: StepId) -> Result<Cast, Error> {
        let target = &state.plan.targets[usize::from(step.target)];
        self.resolver
            .resolve(target)
            .map_err(|source| Error::Resolve {
                rotation: state.id.clone(),
                source,
            })
    }

    /// The store of `step`'s target.
    fn store(&self, state: &Rotation, step: StepId) -> Result<Arc<dyn Store>, ProviderError> {
        match self.cast(state, step) {
            Ok(Cast::Store(store)) => Ok(store),
            Ok(other) => Err(ProviderError::permanent(format!(
                "target {} of rotation {} is a {}, not a store",
                step.target,
                state.id,
                other.role().as_str()
            ))),
            Err(e) => Err(ProviderError::permanent(e.to_string())),
        }
    }

    /// What a role method is told about `step`: the secret by its name at the step's
    /// target.
    fn step<'s>(state: &'s Rotation, step: StepId, key: &'s str) -> Step<'s> {
        let target = &state.plan.targets[usize::from(step.target)];
        Step {
            rotation_id: &state.id,
            secret: target.secret(&state.plan.secret),
            id: step,
            key,
            credential: Self::created_id(state),
            address: target.address.as_ref(),
        }
    }

    fn cached_value(&self, state: &Rotation) -> Option<SecretValue> {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        values.get(&(state.id.clone(), state.generation)).cloned()
    }

    /// A store this rotation already wrote the new value to, with the version id.
    fn written_store(state: &Rotation) -> Option<(StepId, String)> {
        state.forward_steps().into_iter().find_map(|s| {
            (s.action == Action::Write)
                .then(|| state.outcome(&s).map(|v| (s, v.to_owned())))
                .flatten()
        })
    }

    /// The credential id the current generation's create produced, borrowed.
    fn created_id(state: &Rotation) -> Option<&str> {
        state
            .forward_steps()
            .into_iter()
            .find(|s| s.action == Action::Create)
            .and_then(|s| state.outcome(&s))
    }

    /// The current generation's create step and the credential id it produced.
    fn created(state: &Rotation) -> Option<(StepId, String)> {
        state
            .forward_steps()
            .into_iter()
            .find(|s| s.action == Action::Create)
            .and_then(|s| state.outcome(&s).map(|id| (s, id.to_owned())))
    }

    /// The new value: from memory, else read back from a store that holds it, else from
    /// the rotator when its source can show it again (storage keys). `None` when it is lost.
    async fn new_value(&self, state: &Rotation) -> Result<Option<SecretValue>, ProviderError> {
        if let Some(v) = self.cached_value(state) {
            return Ok(Some(v));
        }
        if let Some((step, version)) = Self::written_store(state) {
            return self
                .store(state, step)?
                .read_value(&version)
                .await
                .map(Some);
        }
        let Some((create, id)) = Self::created(state) else {
            return Ok(None);
        };
        let rotator = match self.cast(state, create) {
            Ok(Cast::Rotator(rotator)) => rotator,
            Ok(_) => return Ok(None),
            Err(e) => return Err(ProviderError::permanent(e.to_string())),
        };
        match rotator.reveal(&id).await {
            Ok(v) => Ok(v),
            // The source cannot show it (any more): it is lost.
            Err(e) if e.class == ErrorClass::Permanent => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value before the rotation, read from the first store's captured version (or
    /// its restored copy).
    async fn old_value(&self, state: &Rotation) -> Result<Option<SecretValue>, ProviderError> {
        let Some((store, version)) = Self::old_version(state) else {
            return Ok(None);
        };
        self.store(state, StepId::new(Action::Capture, store))?
            .read_value(version)
            .await
            .map(Some)
    }

    /// Where the value before the rotation is: the first store and its version. Once
    /// restored, it lives in the restored copy: the captured version was disabled with the
    /// failed rotation's (I8), and a disabled version cannot be read. `None`: the secret
    /// did not exist before.
    fn old_version(state: &Rotation) -> Option<(u16, &str)> {
        let store = state
            .plan
            .targets
            .iter()
            .position(|t| t.role == Role::Store)
            .map(|i| i as u16)?;
        let restored = state.outcome(&StepId::new(Action::Restore, store));
        restored.or(state.captured(store)).map(|v| (store, v))
    }

    /// What the provider is told about a step's target.
    fn call_ids(state: &Rotation, step: StepId) -> (Option<String>, Option<String>) {
        let captured = state.captured(step.target).map(str::to_owned);
        let forward = match step.action {
            Action::Discard => Some(Action::Create),
            Action::Restore => Some(Action::Write),
            Action::Revert => Some(Action::Update),
            Action::DiscardLost => Some(Action::Create),
            _ => None,
        };
        let produced = forward.and_then(|a| {
            let generation = match step.action {
                Action::DiscardLost | Action::Discard => step.generation,
                _ => 0,
            };
            state
                .outcome(&StepId {
                    action: a,
                    target: step.target,
                    generation,
                })
                .map(str::to_owned)
        });
        // A verifier is told which credential it checks (the rotator's, not its own).
        let produced = match step.action {
            Action::Verify => Self::created(state).map(|(_, id)| id),
            _ => produced,
        };
        (captured, produced)
    }

    async fn run_step(
        &self,
        d: &mut Driving,
        step: StepId,
        attempt: u32,
        key: &str,
    ) -> Result<(), Error> {
        let cast = self.cast(&d.state, step)?;
        let needs_new = matches!(step.action, Action::Write | Action::Update | Action::Verify);
        // Values are fetched before `StepStarted`: reading one is not an effect. Reads
        // may wait (a throttled vault's queue), so the lease is renewed meanwhile too.
        let given = if needs_new {
            match self.heartbeat(&mut d.lease, self.new_value(&d.state)).await {
                Ok(Some(v)) => Ok(Given::New(v)),
                Ok(None) => {
                    // The value lived only in a crashed process: make the credential again.
                    let credential_id = Self::created(&d.state).map(|(_, id)| id);
                    warn!(
                        ?credential_id,
                        "new value lost before any store held it; discarding and creating again"
                    );
                    return self
                        .emit(d, RotationEvent::ValueLost { credential_id })
                        .await;
                }
                Err(e) => Err(e),
            }
        } else if matches!(step.action, Action::Restore | Action::Revert)
            || (matches!(step.action, Action::Capture | Action::Discard)
                && matches!(&cast, Cast::Rotator(r) if r.uses_stored_value()))
        {
            // Undo needs the old value; a rotator's capture uses it to find the credential
            // in use (unless the rotator can tell without it).
            self.heartbeat(&mut d.lease, self.old_value(&d.state))
                .await
                .map(Given::Old)
        } else {
            Ok(Given::Nothing)
        };
        self.emit(
            d,
            RotationEvent::StepStarted {
                step,
                attempt,
                key: key.to_owned(),
            },
        )
        .await?;
        let (captured, produced) = Self::call_ids(&d.state, step);
        let sent = match &given {
            Ok(Given::New(v) | Given::Old(Some(v))) => Some(v.clone()),
            _ => None,
        };
        let result = match given {
            Err(e) => Err(e),
            Ok(given) => {
                if !d.holds_only_reads() {
                    self.flush(d).await?;
                }
                self.lease_for_call(&mut d.lease).await?;
                let ids = Ids {
                    captured: captured.as_deref(),
                    produced: produced.as_deref(),
                };
                let effect = perform(&cast, Self::step(&d.state, step, key), ids, given);
                self.heartbeat(&mut d.lease, effect).await
            }
        };
        match result {
            Ok(Applied { id, value }) => {
                if let Some(v) = value {
                    let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
                    values.insert((d.state.id.clone(), d.state.generation), v);
                }
                info!(?id, "step succeeded");
                self.emit(
                    d,
                    RotationEvent::StepSucceeded {
                        step,
                        id,
                        reconciled: false,
                    },
                )
                .await
            }
            Err(e) => self.fail(d, step, attempt, e, sent.as_ref()).await,
        }
    }

    /// Journals a failed call with its next attempt time.
    async fn fail(
        &self,
        d: &mut Driving,
        step: StepId,
        attempt: u32,
        e: ProviderError,
        sent: Option<&SecretValue>,
    ) -> Result<(), Error> {
        let give_up = step.action.may_abandon()
            && (e.class == ErrorClass::Permanent || attempt >= d.state.plan.attempts_max);
        let retry_at_ms = (!give_up).then(|| self.retry_at(attempt, &e));
        let message = self.redact(&d.state, e.message, sent);
        warn!(class = ?e.class, message, ?retry_at_ms, "step failed");
        self.emit(
            d,
            RotationEvent::StepFailed {
                step,
                attempt,
                class: e.class,
                message,
                retry_at_ms,
            },
        )
        .await
    }

    /// Runs a provider call while renewing `lease` every third of its duration. A renewal
    /// that fails leaves the lease as it was: the next append will then be refused.
    async fn heartbeat<T>(
        &self,
        lease: &mut Lease,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(sleep) = &self.options.sleep else {
            return call.await;
        };
        let every_ms = (self.options.lease_ttl_ms / 3).max(1) as u64;
        let mut call = std::pin::pin!(call);
        loop {
            tokio::select! {
                out = &mut call => return out,
                () = sleep(every_ms) => {
                    // Never shortened: a lease made to outlive this call keeps doing so.
                    let left = lease.expires_at_ms - self.clock.now_ms();
                    let ttl = self.options.lease_ttl_ms.max(left);
                    match self.journal.renew(lease, ttl).await {
                        Ok(renewed) => *lease = renewed,
                        Err(e) => warn!(error = %e, "lease renewal failed during a provider call"),
                    }
                }
            }
        }
    }

    /// Makes the lease outlive the provider call about to start: renewed, when less than
    /// the call's timeout and half a lease is left, to last that long. A renewal refused
    /// (the lease was lost) stops the drive before the call; a step already started is
    /// then reconciled by whoever takes the rotation up.
    async fn lease_for_call(&self, lease: &mut Lease) -> Result<(), Error> {
        let Some(call_ms) = self.options.call_timeout_ms else {
            return Ok(());
        };
        let need = call_ms.saturating_add(self.options.lease_ttl_ms / 2);
        if lease.expires_at_ms - self.clock.now_ms() < need {
            *lease = self.journal.renew(lease, need).await?;
        }
        Ok(())
    }

    /// When to try again after the `n`th failure, as the retry policy and the target say.
    fn retry_at(&self, n: u32, e: &ProviderError) -> i64 {
        let jitter: f64 = self
            .jitter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random();
        self.clock.now_ms()
            + self
                .options
                .retry
                .delay_ms(n, e.class, e.retry_after_ms, jitter)
    }

    /// Journals a failed check of an in-doubt step. The step stays in doubt with its own
    /// failure class (a check refused by the target says nothing about the step), and the
    /// next check waits longer each time: checks never give up.
    async fn check_failed(
        &self,
        d: &mut Driving,
        step: StepId,
        attempt: u32,
        e: ProviderError,
    ) -> Result<(), Error> {
        let prior = match d.state.steps.get(&step) {
            Some(StepStatus::InDoubt { failure, .. }) => failure.clone(),
            _ => None,
        };
        let class = prior.as_ref().map_or(ErrorClass::Transient, |f| f.class);
        let checks = prior.as_ref().map_or(0, |f| f.count) + 1;
        let retry_at_ms = Some(self.retry_at(attempt.saturating_add(checks), &e));
        let message = self.redact(
            &d.state,
            format!(
                "could not check whether step {step} happened: {}",
                e.message
            ),
            None,
        );
        warn!(message, ?retry_at_ms, "reconciliation failed");
        self.emit(
            d,
            RotationEvent::StepFailed {
                step,
                attempt,
                class,
                message,
                retry_at_ms,
            },
        )
        .await
    }

    /// Defence in depth: a provider message that quotes a value loses it here, whether
    /// the value was sent in this call or is held for the rotation.
    fn redact(&self, state: &Rotation, mut message: String, sent: Option<&SecretValue>) -> String {
        for v in sent.into_iter().cloned().chain(self.cached_value(state)) {
            if !v.expose().is_empty() && message.contains(v.expose()) {
                message = message.replace(v.expose(), "[redacted]");
            }
        }
        message
    }

    async fn reconcile_step(
        &self,
        d: &mut Driving,
        step: StepId,
        attempt: u32,
        key: &str,
    ) -> Result<(), Error> {
        if self.options.planted_bug_skip_reconcile {
            return self
                .emit(
                    d,
                    RotationEvent::StepNotApplied {
                        step,
                        orphan_discarded: None,
                    },
                )
                .await;
        }
        let cast = self.cast(&d.state, step)?;
        let (captured, produced) = Self::call_ids(&d.state, step);
        let ids = Ids {
            captured: captured.as_deref(),
            produced: produced.as_deref(),
        };
        let had_old = Self::old_version(&d.state).is_some();
        self.flush(d).await?;
        self.lease_for_call(&mut d.lease).await?;
        let inspect = inspect(&cast, Self::step(&d.state, step, key), ids, had_old);
        let found = self.heartbeat(&mut d.lease, inspect).await;
        let event = match found {
            Ok(Inspected::Applied { id }) => {
                info!(?id, "in-doubt step was applied");
                RotationEvent::StepSucceeded {
                    step,
                    id,
                    reconciled: true,
                }
            }
            Ok(Inspected::NotApplied) => RotationEvent::StepNotApplied {
                step,
                orphan_discarded: None,
            },
            // Only a rotator's create finds an orphan: the rotator discards it.
            Ok(Inspected::Orphan { orphan_id, rotator }) => {
                let discard_step = StepId {
                    action: Action::DiscardLost,
                    ..step
                };
                let discard_key = discard_step.key(&d.state.id);
                let discard = rotator.discard_lost(
                    Self::step(&d.state, discard_step, &discard_key),
                    Some(&orphan_id),
                );
                match self.heartbeat(&mut d.lease, discard).await {
                    Ok(()) => RotationEvent::StepNotApplied {
                        step,
                        orphan_discarded: Some(orphan_id.clone()),
                    },
                    Err(e) => return self.check_failed(d, step, attempt, e).await,
                }
            }
            Err(e) => return self.check_failed(d, step, attempt, e).await,
        };
        self.emit(d, event).await
    }

    async fn close_lock(&self, state: &Rotation, phase: Phase) -> Result<(), Error> {
        let lock_stream = lock::stream_id(&state.plan.lock_key);
        loop {
            let (events, seq) = self.read_lock(&lock_stream).await?;
            if !lock::holds_open(&events, &state.id) {
                return Ok(());
            }
            let append = close_lock_append(&lock_stream, seq, &state.id, phase);
            match self.journal.append(append).await {
                Ok(_) => return Ok(()),
                Err(rekey_journal::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The append that creates a rotation's stream with its `Requested`.
fn rotation_stream_append(
    rotation_id: &str,
    plan: &Plan,
    trigger: &Trigger,
    actor: &str,
) -> Append {
    let event = RotationEvent::Requested {
        rotation_id: rotation_id.to_owned(),
        plan: plan.clone(),
        trigger: trigger.clone(),
        actor: actor.to_owned(),
    };
    Append::new(rotation_id, 0, vec![rotation_event(&event)])
        .subject(&plan.secret)
        .status("open")
}

/// The lock's `Closed` of `rotation_id`, after the lock's sequence `seq`.
fn close_lock_append(lock_stream: &str, seq: u64, rotation_id: &str, phase: Phase) -> Append {
    let event = LockEvent::Closed {
        rotation_id: rotation_id.to_owned(),
        phase,
    };
    Append::new(lock_stream, seq, vec![lock_event(&event)]).status(lock::IDLE)
}

/// What a step's provider is given besides the step itself.
enum Given {
    /// The new value (write, update, verify).
    New(SecretValue),
    /// The value before the rotation, if any (undo steps, a rotator's capture).
    Old(Option<SecretValue>),
    Nothing,
}

impl Given {
    fn old(&self) -> Option<&SecretValue> {
        match self {
            Given::Old(v) => v.as_ref(),
            _ => None,
        }
    }
}

/// What capture found on a step's target, and what its forward step produced.
#[derive(Clone, Copy)]
struct Ids<'a> {
    captured: Option<&'a str>,
    produced: Option<&'a str>,
}

/// What a performed step produced: the id to journal, and a new credential's value.
#[derive(Default)]
struct Applied {
    id: Option<String>,
    value: Option<SecretValue>,
}

impl Applied {
    fn id(id: Option<String>) -> Self {
        Self { id, value: None }
    }
}

/// Performs `step` through its provider: each action calls the one method of the target's
/// role that does it. The saga runs each action only on targets of the role that has it.
async fn perform(
    cast: &Cast,
    step: Step<'_>,
    ids: Ids<'_>,
    given: Given,
) -> Result<Applied, ProviderError> {
    let Ids { captured, produced } = ids;
    match (cast, step.id.action, &given) {
        (Cast::Rotator(r), Action::Capture, _) => {
            r.capture(step, given.old()).await.map(Applied::id)
        }
        (Cast::Rotator(r), Action::Create, _) => r.create(step, captured).await.map(|c| Applied {
            id: Some(c.id),
            value: Some(c.value),
        }),
        (Cast::Rotator(r), Action::RetireOld, _) => r
            .retire_old(step, captured)
            .await
            .map(|()| Applied::default()),
        (Cast::Rotator(r), Action::Discard, _) => r
            .discard(step, produced, given.old())
            .await
            .map(Applied::id),
        (Cast::Rotator(r), Action::DiscardLost, _) => r
            .discard_lost(step, produced)
            .await
            .map(|()| Applied::default()),
        (Cast::Store(s), Action::Capture, _) => s.capture(step).await.map(Applied::id),
        (Cast::Store(s), Action::Write, Given::New(new)) => {
            s.write(step, new).await.map(|id| Applied::id(Some(id)))
        }
        (Cast::Store(s), Action::Restore, _) => s
            .restore(step, given.old(), produced, captured)
            .await
            .map(Applied::id),
        (Cast::Store(s), Action::DisableOld, _) => s
            .disable_superseded(step, captured)
            .await
            .map(|()| Applied::default()),
        (Cast::Dependent(d), Action::Capture, _) => d.capture(step).await.map(Applied::id),
        (Cast::Dependent(d), Action::Update, Given::New(new)) => {
            d.update(step, new).await.map(Applied::id)
        }
        (Cast::Dependent(d), Action::Revert, _) => {
            d.revert(step, captured, given.old()).await.map(Applied::id)
        }
        (Cast::Verifier(v), Action::Verify, Given::New(new)) => {
            v.verify(step, new).await.map(|()| Applied::default())
        }
        (cast, action, _) => Err(misfit(cast, action)),
    }
}

/// What reconciling an in-doubt step found.
enum Inspected {
    Applied {
        id: Option<String>,
    },
    NotApplied,
    /// A create happened but its credential cannot be used: `rotator` discards it.
    Orphan {
        orphan_id: String,
        rotator: Arc<dyn Rotator>,
    },
}

/// Asks `step`'s provider whether the in-doubt step happened. `had_old`: whether the
/// rotation had an old value (a restore then writes it back).
async fn inspect(
    cast: &Cast,
    step: Step<'_>,
    ids: Ids<'_>,
    had_old: bool,
) -> Result<Inspected, ProviderError> {
    let Ids { captured, produced } = ids;
    let found = match (cast, step.id.action) {
        (Cast::Rotator(r), Action::Create) => {
            return Ok(match r.reconcile_create(step, captured).await? {
                Reconciled::Applied { id } => Inspected::Applied { id },
                Reconciled::NotApplied => Inspected::NotApplied,
                Reconciled::AppliedUnusable { orphan_id } => Inspected::Orphan {
                    orphan_id,
                    rotator: r.clone(),
                },
            });
        }
        (Cast::Rotator(r), Action::Capture) => r.reconcile_capture(step).await,
        (Cast::Rotator(r), Action::RetireOld) => r.reconcile_retire_old(step, captured).await,
        (Cast::Rotator(r), Action::Discard) => r.reconcile_discard(step, produced).await,
        (Cast::Rotator(r), Action::DiscardLost) => r.reconcile_discard_lost(step, produced).await,
        (Cast::Store(s), Action::Capture) => s.reconcile_capture(step).await,
        (Cast::Store(s), Action::Write) => s.reconcile_write(step).await,
        (Cast::Store(s), Action::Restore) => s.reconcile_restore(step, had_old, captured).await,
        (Cast::Store(s), Action::DisableOld) => {
            s.reconcile_disable_superseded(step, captured).await
        }
        (Cast::Dependent(d), Action::Capture) => d.reconcile_capture(step).await,
        (Cast::Dependent(d), Action::Update) => d.reconcile_update(step).await,
        (Cast::Dependent(d), Action::Revert) => d.reconcile_revert(step).await,
        (Cast::Verifier(v), Action::Verify) => v.reconcile_verify(step).await,
        (cast, action) => Err(misfit(cast, action)),
    };
    found.map(|found| match found {
        Found::Applied { id } => Inspected::Applied { id },
        Found::NotApplied => Inspected::NotApplied,
    })
}

/// A step the saga never gives a target of this role (a journal that does not fit the
/// rotation logic).
fn misfit(cast: &Cast, action: Action) -> ProviderError {
    ProviderError::permanent(format!(
        "a {} has no step {}; the journal does not match this rekey's rotation logic",
        cast.role().as_str(),
        action.as_str()
    ))
}

/// A rotation event as a journal event, with the wake-up timer it implies.
pub fn rotation_event(event: &RotationEvent) -> NewEvent {
    let payload = serde_json::to_value(event).unwrap_or_default();
    let new = NewEvent::new(event.kind(), payload);
    match event {
        RotationEvent::StepFailed {
            retry_at_ms: Some(at),
            ..
        } => new.with_timer(TimerOp::Schedule {
            name: WAKE_TIMER.into(),
            due_at_ms: *at,
        }),
        RotationEvent::GraceScheduled { due_at_ms } => new.with_timer(TimerOp::Schedule {
            name: WAKE_TIMER.into(),
            due_at_ms: *due_at_ms,
        }),
        RotationEvent::Completed | RotationEvent::Compensated => new.with_timer(TimerOp::Clear {
            name: WAKE_TIMER.into(),
        }),
        _ => new,
    }
}

fn lock_event(event: &LockEvent) -> NewEvent {
    NewEvent::new(
        event.kind(),
        serde_json::to_value(event).unwrap_or_default(),
    )
}
