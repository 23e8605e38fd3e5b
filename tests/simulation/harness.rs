//! The harness: builds a scenario from a seed and runs it through runners whose futures it
//! polls by hand, one await point at a time, in an order drawn from the seed.
//!
//! A "process" is a `Runner` with its own owner id. Its work is a set of tasks (a request,
//! an `open_rotations` scan, a `drive`), each a future. A crash drops every future of one
//! process wherever it is parked (SIGKILL) and starts a new process over the same journal;
//! the dead process's leases stay until they expire. A process whose every task is parked
//! just before a fenced append may instead be *paused*: resumed once its lease has expired,
//! each of its appends must be refused (I6).
//!
//! Time moves only when told: when nothing can run, the clock jumps to the earliest
//! wake-up (a retry, the end of a grace period, a lease expiry); slow calls nudge it, but
//! never so far that a live task's lease could expire under it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rekey::journal::{
    Clock, Error as JournalError, JournalScan, ManualClock, MemoryJournal, StreamFilter,
};
use rekey::provider::Cast;
use rekey::resolve::Registry;
use rekey::runner::lock::is_lock_stream;
use rekey::runner::{Error, Options, Progress, Requested, Runner};
use rekey::saga::{Phase, Plan, Role, RotationEvent, TargetRef, Trigger};

use super::checks::{self, Holding, Invariant, Violation};
use super::journal::{Point, Probe, SimJournal, lock};
use super::world::{FakeProvider, FaultProfile, Kind, Outage, World, target_name};

pub const START_MS: i64 = 1_700_000_000_000;
pub const LEASE_TTL_MS: i64 = 15_000;
const GRACE_MS: i64 = 3_600_000;
/// Harness steps (one poll of one task each) before a run counts as stuck.
const STEP_LIMIT: u64 = 20_000;
/// Polls of one task before it counts as a loop that never waits.
const TASK_POLL_LIMIT: u32 = 1_000;
/// Polls a resumed stale runner gets to notice it lost its lease.
const STALE_POLL_LIMIT: u32 = 200;
/// Requests that arrive while rotations run, per run.
const MID_REQUESTS_MAX: u32 = 2;

/// One secret of a scenario.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub plan: Plan,
    pub stores: usize,
    pub dependent: bool,
    /// The verifier refuses the new credential, so the rotation must compensate.
    pub verify_fails: bool,
    /// Requests at the start; all but one coalesce.
    pub requests: usize,
    /// Request once more when the first rotation has ended.
    pub again: bool,
}

impl SecretSpec {
    fn generate(rng: &mut StdRng, index: usize) -> Self {
        let name = format!("s{index}");
        let stores = rng.random_range(1..=2);
        let dependent = rng.random_bool(0.6);
        let mut kinds = kinds(stores, dependent);
        kinds.shuffle(rng);
        let targets = kinds
            .iter()
            .map(|k| TargetRef::new(role(*k), target_name(&name, *k)))
            .collect();
        Self {
            plan: Plan {
                secret: name.clone(),
                lock_key: format!("cred-{name}"),
                targets,
                grace_ms: GRACE_MS,
                attempts_max: rng.random_range(3..=5),
            },
            stores,
            dependent,
            verify_fails: rng.random_bool(0.12),
            requests: rng.random_range(1..=3),
            again: rng.random_bool(0.3),
        }
    }
}

fn kinds(stores: usize, dependent: bool) -> Vec<Kind> {
    let mut kinds = vec![Kind::Rotator];
    kinds.extend((0..stores).map(Kind::Store));
    if dependent {
        kinds.push(Kind::Dependent);
    }
    kinds.push(Kind::Verifier);
    kinds
}

fn role(kind: Kind) -> Role {
    match kind {
        Kind::Rotator => Role::Rotator,
        Kind::Store(_) => Role::Store,
        Kind::Dependent => Role::Dependent,
        Kind::Verifier => Role::Verifier,
    }
}

/// Everything a seed decides before anything runs.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub secrets: Vec<SecretSpec>,
    pub processes: usize,
    /// Chance, per harness step, that a process crashes.
    pub crash_p: f64,
    pub faults: FaultProfile,
}

impl Scenario {
    pub fn generate(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(1..=3);
        let secrets: Vec<SecretSpec> = (0..count)
            .map(|i| SecretSpec::generate(&mut rng, i))
            .collect();
        let level = f64::from(rng.random_range(0..4u32));
        let mut faults = FaultProfile {
            transient: 0.04 * level,
            rate_limited: 0.01 * level,
            permanent: 0.004 * level,
            lost: 0.04 * level,
            slow: 0.05 * level,
            echo: 0.1,
            outages: Vec::new(),
        };
        for target in secrets.iter().flat_map(|s| &s.plan.targets) {
            if rng.random_bool(0.03 * level) {
                let from_ms = START_MS + rng.random_range(0..2 * GRACE_MS);
                faults.outages.push(Outage {
                    target: target.name.clone(),
                    from_ms,
                    until_ms: from_ms + rng.random_range(10_000..1_200_000),
                    forbidden: rng.random_bool(0.5),
                });
            }
        }
        let crash_p = [0.0, 0.005, 0.02, 0.05]
            .choose(&mut rng)
            .copied()
            .unwrap_or_default();
        Self {
            seed,
            secrets,
            processes: rng.random_range(1..=2),
            crash_p,
            faults,
        }
    }

    /// Terminal phases per secret in a world without faults or crashes.
    pub fn expected_calm_phases(&self) -> BTreeMap<String, Vec<Phase>> {
        self.secrets
            .iter()
            .map(|s| {
                let phase = if s.verify_fails {
                    Phase::Compensated
                } else {
                    Phase::Completed
                };
                let count = 1 + usize::from(s.again);
                (s.plan.secret.clone(), vec![phase; count])
            })
            .collect()
    }
}

/// How to run a scenario.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    pub faults: bool,
    pub crash_p: f64,
    /// Crashes per run at most (fewer than any step's attempts, for I3).
    pub crash_cap: Option<u32>,
    pub mid_requests: bool,
    /// A request lost in a crash is always sent again (else half the time).
    pub retry_requests: bool,
    pub planted_bug: bool,
    pub capture_logs: bool,
    /// A runner is sometimes asked to drive a rotation it is driving already (a timer
    /// wake-up racing a manual resume in one daemon).
    pub reentrant_drives: bool,
}

impl RunConfig {
    /// Faults, crashes, paused runners, contention, requests at any time.
    pub fn full(sc: &Scenario) -> Self {
        Self {
            faults: true,
            crash_p: sc.crash_p,
            crash_cap: None,
            mid_requests: true,
            retry_requests: false,
            planted_bug: false,
            capture_logs: false,
            reentrant_drives: false,
        }
    }

    /// No faults and a fixed set of requests, so the outcome is known; with `crashes`,
    /// fewer crashes than any step has attempts, so crashes alone cannot exhaust one.
    pub fn calm(sc: &Scenario, crashes: bool) -> Self {
        let attempts = sc
            .secrets
            .iter()
            .map(|s| s.plan.attempts_max)
            .min()
            .unwrap_or(1);
        Self {
            faults: false,
            crash_p: if crashes { sc.crash_p.max(0.02) } else { 0.0 },
            crash_cap: Some(attempts.saturating_sub(1)),
            mid_requests: false,
            retry_requests: true,
            ..Self::full(sc)
        }
    }
}

/// How often the paths worth exercising were taken, so a harness that silently stopped
/// exercising one is noticed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    pub crashes: u64,
    pub paused_runners_refused: u64,
    pub busy: u64,
    pub reentrant_drives: u64,
    pub coalesced: u64,
    pub values_lost: u64,
    pub orphans_discarded: u64,
    pub reconciled_applied: u64,
    pub completed: u64,
    pub compensated: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.crashes += o.crashes;
        self.paused_runners_refused += o.paused_runners_refused;
        self.busy += o.busy;
        self.reentrant_drives += o.reentrant_drives;
        self.coalesced += o.coalesced;
        self.values_lost += o.values_lost;
        self.orphans_discarded += o.orphans_discarded;
        self.reconciled_applied += o.reconciled_applied;
        self.completed += o.completed;
        self.compensated += o.compensated;
    }

    /// The paths never taken.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            ("crashes", self.crashes),
            ("paused runners refused", self.paused_runners_refused),
            ("busy", self.busy),
            ("coalesced requests", self.coalesced),
            ("values lost", self.values_lost),
            ("orphans discarded", self.orphans_discarded),
            ("reconciled as applied", self.reconciled_applied),
            ("completed", self.completed),
            ("compensated", self.compensated),
        ]
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(name, _)| name)
        .collect()
    }

    /// Counts what the journal shows.
    fn count_events(&mut self, memory: &MemoryJournal) {
        for e in memory.all_events() {
            let Ok(event) = serde_json::from_str::<RotationEvent>(&e.payload) else {
                continue;
            };
            match event {
                RotationEvent::ValueLost { .. } => self.values_lost += 1,
                RotationEvent::StepNotApplied {
                    orphan_discarded: Some(_),
                    ..
                } => self.orphans_discarded += 1,
                RotationEvent::StepSucceeded {
                    reconciled: true, ..
                } => self.reconciled_applied += 1,
                RotationEvent::Completed => self.completed += 1,
                RotationEvent::Compensated => self.compensated += 1,
                _ => {}
            }
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunOutcome {
    pub violations: Vec<Violation>,
    pub rotations: usize,
    /// Terminal phases per secret, in order.
    pub phases: BTreeMap<String, Vec<Phase>>,
    /// A digest of every event and effect, to compare two runs of one seed.
    pub fingerprint: u64,
    /// The event traces of the rotations named in violations.
    pub traces: String,
    pub coverage: Coverage,
    /// Every value the world made.
    pub values: Vec<String>,
}

/// Runs `sc` under `cfg`, optionally capturing the runner's logs to scan them (I5).
pub fn run(sc: &Scenario, cfg: RunConfig) -> RunOutcome {
    if !cfg.capture_logs {
        return Harness::new(sc, cfg).run();
    }
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let mut outcome = tracing::subscriber::with_default(subscriber, || Harness::new(sc, cfg).run());
    let text = String::from_utf8_lossy(&lock(&logs.0)).into_owned();
    let leak = checks::scan_for_values("the runner's logs", &text, &outcome.values);
    outcome.violations.extend(leak);
    outcome
}

#[derive(Debug, Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type SimRunner = Runner<SimJournal>;

struct Process {
    id: u64,
    owner: String,
    runner: Arc<SimRunner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskKind {
    Request { secret: usize },
    Scan,
    Drive { rotation: String },
}

impl TaskKind {
    fn rotation(&self) -> Option<&str> {
        match self {
            TaskKind::Drive { rotation } => Some(rotation),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Output {
    Request(Result<Requested, Error>),
    Scan(Result<Vec<String>, Error>),
    Drive(Result<Progress, Error>),
}

struct Task {
    process: u64,
    kind: TaskKind,
    future: Pin<Box<dyn Future<Output = Output>>>,
    started_ms: i64,
    polls: u32,
    parked: Option<Point>,
}

/// Polls a task once; `None` while it is pending.
fn poll_once(task: &mut Task, probe: &Probe) -> Option<Output> {
    let mut cx = Context::from_waker(Waker::noop());
    let poll = task.future.as_mut().poll(&mut cx);
    task.parked = probe.take();
    match poll {
        Poll::Ready(out) => Some(out),
        Poll::Pending => {
            task.polls += 1;
            None
        }
    }
}

/// A paused process: resumed once its leases have expired.
struct Paused {
    tasks: Vec<Task>,
    at_ms: i64,
}

/// How the last scan went.
#[derive(Debug, Clone, Copy)]
struct Scanned {
    /// False when the scan failed and the harness went on with the rotations it knew.
    complete: bool,
    /// It found nothing open, nothing else ran meanwhile, and nothing was started since:
    /// a request started after the scan may open a rotation (and crash before writing its
    /// stream) that only a later scan can find.
    nothing_open: bool,
}

/// What the harness knows about a rotation.
struct Track {
    secret: usize,
    /// Not worth driving before this time.
    wake_at_ms: i64,
    ended: Option<Phase>,
}

struct Harness<'s> {
    sc: &'s Scenario,
    cfg: RunConfig,
    rng: StdRng,
    clock: ManualClock,
    memory: MemoryJournal,
    journal: Arc<SimJournal>,
    probe: Arc<Probe>,
    world: Arc<Mutex<World>>,
    providers: Arc<Registry>,
    processes: Vec<Process>,
    next_process: u64,
    next_rotation: u64,
    tasks: Vec<Task>,
    paused: Vec<Paused>,
    rotations: BTreeMap<String, Track>,
    /// What each secret holds between rotations.
    holdings: Vec<Holding>,
    again_sent: Vec<bool>,
    phases: BTreeMap<String, Vec<Phase>>,
    /// Set when an `open_rotations` scan ended, until the rotations it named have been
    /// driven.
    scanned: Option<Scanned>,
    /// Nothing but a scan ran since the harness started the scan.
    quiet: bool,
    /// Rotations a runner was asked to drive while it was driving them already.
    reentered: BTreeSet<String>,
    mid_requests_left: u32,
    crashes: u32,
    coverage: Coverage,
    violations: Vec<Violation>,
    aborted: bool,
}

impl<'s> Harness<'s> {
    fn new(sc: &'s Scenario, cfg: RunConfig) -> Self {
        let clock = ManualClock::new(START_MS);
        let memory = MemoryJournal::new(Arc::new(clock.clone()));
        let probe = Arc::new(Probe::default());
        let journal = Arc::new(SimJournal::new(memory.clone(), probe.clone()));
        let faults = cfg.faults.then(|| sc.faults.clone());
        let mut world = World::new(sc.seed, clock.clone(), faults);
        for s in &sc.secrets {
            world.add_secret(&s.plan.secret, s.stores, s.dependent, s.verify_fails);
        }
        let holdings = world
            .secrets
            .iter()
            .map(|sw| Holding {
                credential: sw.credentials[0].id.clone(),
                value: sw.credentials[0].value.clone(),
            })
            .collect();
        let world = Arc::new(Mutex::new(world));
        let mut providers = Registry::new();
        for (i, s) in sc.secrets.iter().enumerate() {
            for kind in kinds(s.stores, s.dependent) {
                let fake = FakeProvider::new(world.clone(), probe.clone(), clock.clone(), i, kind);
                let name = fake.name().to_owned();
                let fake = Arc::new(fake);
                let cast = match kind {
                    Kind::Rotator => Cast::Rotator(fake),
                    Kind::Store(_) => Cast::Store(fake),
                    Kind::Dependent => Cast::Dependent(fake),
                    Kind::Verifier => Cast::Verifier(fake),
                };
                providers.insert(name, cast);
            }
        }
        let providers = Arc::new(providers);
        let mut harness = Self {
            sc,
            cfg,
            rng: StdRng::seed_from_u64(sc.seed ^ 0xdead_beef),
            clock,
            memory,
            journal,
            probe,
            world,
            providers,
            processes: Vec::new(),
            next_process: 1,
            next_rotation: 1,
            tasks: Vec::new(),
            paused: Vec::new(),
            rotations: BTreeMap::new(),
            holdings,
            again_sent: vec![false; sc.secrets.len()],
            phases: BTreeMap::new(),
            scanned: None,
            quiet: false,
            reentered: BTreeSet::new(),
            mid_requests_left: if cfg.mid_requests {
                MID_REQUESTS_MAX
            } else {
                0
            },
            crashes: 0,
            coverage: Coverage::default(),
            violations: Vec::new(),
            aborted: false,
        };
        for _ in 0..sc.processes {
            harness.start_process(None);
        }
        harness
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn fail(&mut self, invariant: Invariant, rotation: Option<&str>, detail: impl Into<String>) {
        self.violations
            .push(Violation::new(invariant, rotation, detail));
    }

    /// Records a runner error once per kind of call (an error is a violation in itself).
    fn runner_error(&mut self, rotation: Option<&str>, what: &str, e: &Error) {
        let text = e.to_string();
        let values = lock(&self.world).values.clone();
        let leak = checks::scan_for_values(&format!("the error of {what}"), &text, &values);
        self.violations.extend(leak);
        let prefix = format!("{what} failed");
        if !self
            .violations
            .iter()
            .any(|v| v.detail.starts_with(&prefix))
        {
            self.fail(Invariant::Runner, rotation, format!("{prefix}: {text}"));
        }
    }

    fn start_process(&mut self, owner: Option<String>) -> u64 {
        let id = self.next_process;
        self.next_process += 1;
        let owner = owner.unwrap_or_else(|| format!("runner-{id}"));
        let mut options = Options::new(owner.clone(), self.rng.random());
        options.lease_ttl_ms = LEASE_TTL_MS;
        options.planted_bug_skip_reconcile = self.cfg.planted_bug;
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let runner = Runner::new(self.journal.clone(), self.providers.clone(), clock, options);
        self.processes.push(Process {
            id,
            owner,
            runner: Arc::new(runner),
        });
        id
    }

    fn any_process(&mut self) -> u64 {
        let i = self.rng.random_range(0..self.processes.len());
        self.processes[i].id
    }

    fn spawn(&mut self, process: u64, kind: TaskKind) {
        let Some(runner) = self
            .processes
            .iter()
            .find(|p| p.id == process)
            .map(|p| p.runner.clone())
        else {
            return;
        };
        let future: Pin<Box<dyn Future<Output = Output>>> = match &kind {
            TaskKind::Request { secret } => {
                let plan = self.sc.secrets[*secret].plan.clone();
                let rotation_id = format!("rot-{}", self.next_rotation);
                self.next_rotation += 1;
                let triggers = [
                    Trigger::Manual,
                    Trigger::Schedule,
                    Trigger::NearExpiry,
                    Trigger::Bulk,
                ];
                let trigger = triggers.choose(&mut self.rng).cloned();
                let trigger = trigger.unwrap_or(Trigger::Manual);
                Box::pin(async move {
                    let requested = runner.request(plan, trigger, "simulation", rotation_id);
                    Output::Request(requested.await)
                })
            }
            TaskKind::Scan => Box::pin(async move { Output::Scan(runner.open_rotations().await) }),
            TaskKind::Drive { rotation } => {
                let rotation = rotation.clone();
                Box::pin(async move { Output::Drive(runner.drive(&rotation).await) })
            }
        };
        if kind != TaskKind::Scan {
            self.quiet = false;
            if let Some(scanned) = self.scanned.as_mut() {
                scanned.nothing_open = false;
            }
        }
        self.tasks.push(Task {
            process,
            kind,
            future,
            started_ms: self.now(),
            polls: 0,
            parked: None,
        });
    }

    fn spawn_anywhere(&mut self, kind: TaskKind) {
        let process = self.any_process();
        self.spawn(process, kind);
    }

    fn driving(&self, rotation: &str) -> bool {
        self.tasks
            .iter()
            .any(|t| t.kind.rotation() == Some(rotation))
    }

    fn set_wake(&mut self, rotation: &str, at_ms: i64) {
        if let Some(track) = self.rotations.get_mut(rotation) {
            track.wake_at_ms = at_ms;
        }
    }

    fn run(mut self) -> RunOutcome {
        for (secret, spec) in self.sc.secrets.iter().enumerate() {
            for _ in 0..spec.requests {
                self.spawn_anywhere(TaskKind::Request { secret });
            }
        }
        let mut steps = 0;
        while !self.aborted {
            steps += 1;
            if steps > STEP_LIMIT {
                let open = self.unended();
                self.fail(
                    Invariant::Liveness,
                    open.first().map(String::as_str),
                    format!("not finished after {STEP_LIMIT} steps; still open: {open:?}"),
                );
                break;
            }
            if !self.paused.is_empty() && self.rng.random_bool(0.2) {
                self.resume_paused();
            }
            if self.tasks.is_empty() {
                if self.idle() {
                    break;
                }
                continue;
            }
            self.step();
        }
        self.finish()
    }

    fn unended(&self) -> Vec<String> {
        self.rotations
            .iter()
            .filter(|(_, t)| t.ended.is_none())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Nothing is running: move time to the next wake-up and look for open rotations again.
    /// True when everything has ended.
    fn idle(&mut self) -> bool {
        self.reentered.clear();
        let Some(scanned) = self.scanned.take() else {
            self.quiet = true;
            self.spawn_anywhere(TaskKind::Scan);
            return false;
        };
        let wakes = self
            .rotations
            .values()
            .filter(|t| t.ended.is_none())
            .map(|t| t.wake_at_ms);
        let resumes = self.paused.iter().map(|p| p.at_ms + LEASE_TTL_MS);
        // After a failed scan, rotations the harness does not know of may be open.
        let rescan = (!scanned.complete).then(|| self.now() + LEASE_TTL_MS);
        match wakes.chain(resumes).chain(rescan).min() {
            Some(at) => self.clock.set(at),
            // Done only when a scan that ran alone found nothing: a request lost in a crash
            // may have opened a rotation that only a scan can find.
            None if scanned.nothing_open => return true,
            None => {}
        }
        self.quiet = true;
        self.resume_paused();
        self.spawn_anywhere(TaskKind::Scan);
        false
    }

    /// Polls one task once, then maybe crashes a process, sends a request or adds contention.
    fn step(&mut self) {
        let i = self.rng.random_range(0..self.tasks.len());
        // A live task's lease must not expire under it (that would be a process paused, which
        // `Paused` models precisely): slow calls stop short of the earliest possible expiry.
        let cap = self
            .tasks
            .iter()
            .filter(|t| t.kind.rotation().is_some())
            .map(|t| t.started_ms + LEASE_TTL_MS - 1)
            .min()
            .unwrap_or(i64::MAX);
        lock(&self.world).clock_cap = cap;
        if let Some(out) = poll_once(&mut self.tasks[i], &self.probe) {
            let task = self.tasks.swap_remove(i);
            self.handle(task, out);
        } else if self.tasks[i].polls > TASK_POLL_LIMIT {
            let kind = self.tasks[i].kind.clone();
            self.fail(
                Invariant::Liveness,
                kind.rotation(),
                format!(
                    "{kind:?} still running after {TASK_POLL_LIMIT} polls: a loop that never waits"
                ),
            );
            self.aborted = true;
            return;
        }
        let may_crash = self.cfg.crash_cap.is_none_or(|cap| self.crashes < cap);
        if may_crash && self.cfg.crash_p > 0.0 && self.rng.random_bool(self.cfg.crash_p) {
            self.crash();
        }
        if self.mid_requests_left > 0 && self.rng.random_bool(0.002) {
            self.mid_requests_left -= 1;
            let secret = self.rng.random_range(0..self.sc.secrets.len());
            self.spawn_anywhere(TaskKind::Request { secret });
        }
        if self.rng.random_bool(0.005) {
            self.contend();
        }
    }

    /// A second drive of a rotation that a task is driving already: from another process
    /// (its lease makes one of them `Busy`), or from the same runner (same owner, so the
    /// lease does not tell them apart; only the journal's sequence check does).
    fn contend(&mut self) {
        let driving: Vec<(u64, String)> = self
            .tasks
            .iter()
            .filter_map(|t| t.kind.rotation().map(|r| (t.process, r.to_owned())))
            .collect();
        let Some((process, rotation)) = driving.choose(&mut self.rng).cloned() else {
            return;
        };
        let idle: Vec<u64> = self
            .processes
            .iter()
            .map(|p| p.id)
            .filter(|p| !driving.contains(&(*p, rotation.clone())))
            .collect();
        let other = idle.choose(&mut self.rng).copied();
        match other {
            Some(other) if !self.cfg.reentrant_drives || self.rng.random_bool(0.5) => {
                self.spawn(other, TaskKind::Drive { rotation });
            }
            _ if !self.cfg.reentrant_drives => {}
            _ => {
                self.coverage.reentrant_drives += 1;
                self.reentered.insert(rotation.clone());
                self.spawn(process, TaskKind::Drive { rotation });
            }
        }
    }

    /// Kills (or pauses) one process and starts another in its place.
    fn crash(&mut self) {
        self.crashes += 1;
        self.coverage.crashes += 1;
        self.quiet = false;
        let i = self.rng.random_range(0..self.processes.len());
        let victim = self.processes.swap_remove(i);
        let (mine, others): (Vec<Task>, Vec<Task>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| t.process == victim.id);
        self.tasks = others;
        let now = self.now();
        let mut resend = Vec::new();
        for t in &mine {
            match &t.kind {
                TaskKind::Drive { rotation } => self.set_wake(rotation, now),
                TaskKind::Request { secret } => {
                    if self.cfg.retry_requests || self.rng.random_bool(0.5) {
                        resend.push(*secret);
                    }
                }
                TaskKind::Scan => {}
            }
        }
        let pausable = !mine.is_empty()
            && mine
                .iter()
                .all(|t| t.parked == Some(Point::BeforeAppend { fenced: true }));
        let pause = pausable && self.rng.random_bool(0.5);
        if pause {
            self.paused.push(Paused {
                tasks: mine,
                at_ms: now,
            });
        } else {
            drop(mine);
        }
        // A restarted process may come back under the same id (a fixed host name), but never
        // while its paused self may still wake up.
        let same_owner = !pause && self.rng.random_bool(0.3);
        let process = self.start_process(same_owner.then_some(victim.owner));
        for secret in resend {
            self.spawn(process, TaskKind::Request { secret });
        }
    }

    /// Resumes paused processes whose leases have surely expired: each of their appends
    /// must be refused, and the journal must not change.
    fn resume_paused(&mut self) {
        let now = self.now();
        let (due, later): (Vec<Paused>, Vec<Paused>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|p| now >= p.at_ms + LEASE_TTL_MS);
        self.paused = later;
        for paused in due {
            let appends = self.journal.log().appends.len();
            lock(&self.world).clock_cap = now;
            for mut task in paused.tasks {
                let rotation = task.kind.rotation().map(str::to_owned);
                let out = (0..STALE_POLL_LIMIT).find_map(|_| poll_once(&mut task, &self.probe));
                match out {
                    Some(Output::Drive(Err(Error::Journal(
                        JournalError::StaleFence { .. } | JournalError::LeaseExpired { .. },
                    )))) => self.coverage.paused_runners_refused += 1,
                    other => self.fail(
                        Invariant::Fencing,
                        rotation.as_deref(),
                        format!(
                            "a runner paused past its lease resumed and got {other:?}, not a refused append"
                        ),
                    ),
                }
            }
            if self.journal.log().appends.len() != appends {
                self.fail(
                    Invariant::Fencing,
                    None,
                    "a runner paused past its lease appended after it resumed",
                );
            }
        }
    }

    fn handle(&mut self, task: Task, out: Output) {
        let now = self.now();
        match (task.kind, out) {
            (TaskKind::Request { secret }, Output::Request(Ok(requested))) => {
                let rotation = match requested {
                    Requested::Started { rotation_id } => rotation_id,
                    Requested::Coalesced { into } => {
                        self.coverage.coalesced += 1;
                        into
                    }
                };
                self.track(&rotation, Some(secret));
            }
            (TaskKind::Scan, Output::Scan(Ok(open))) => {
                for rotation in &open {
                    self.track(rotation, None);
                }
                // A request that ran alongside the scan may have opened a rotation after
                // the scan looked: only a scan that ran alone must list every open one.
                if self.quiet {
                    self.check_unlisted(&open);
                }
                self.drive_due(&open);
                self.scanned = Some(Scanned {
                    complete: true,
                    nothing_open: open.is_empty() && self.quiet,
                });
            }
            (TaskKind::Scan, Output::Scan(Err(e))) => {
                self.runner_error(None, "open_rotations", &e);
                // Carry on with the rotations the harness knows of, so the rest of the seed
                // is still checked.
                let open = self.unended();
                self.drive_due(&open);
                self.scanned = Some(Scanned {
                    complete: false,
                    nothing_open: false,
                });
            }
            (TaskKind::Drive { rotation }, Output::Drive(Ok(progress))) => match progress {
                Progress::Finished(phase) => self.ended(&rotation, phase),
                Progress::Stopped => unreachable!("the simulation never stops its runners"),
                // Slow calls of other tasks may have moved the clock past `until_ms` while
                // this drive released its lease: then it is simply due again.
                Progress::Waiting { until_ms, .. } => self.set_wake(&rotation, until_ms),
                Progress::Busy { .. } => {
                    self.coverage.busy += 1;
                    let expiry = self
                        .journal
                        .log()
                        .leases
                        .get(&rotation)
                        .map(|l| l.expires_at_ms);
                    let at = if self.driving(&rotation) {
                        now
                    } else {
                        expiry.unwrap_or(now + LEASE_TTL_MS)
                    };
                    self.set_wake(&rotation, at);
                }
            },
            // Two drives of one rotation in one runner: the journal stops one of them (its
            // append conflicts, or the other's release ended the shared lease). The checks
            // of what they did to the world still apply.
            (
                TaskKind::Drive { rotation },
                Output::Drive(Err(Error::Journal(
                    JournalError::Conflict { .. }
                    | JournalError::LeaseExpired { .. }
                    | JournalError::StaleFence { .. },
                ))),
            ) if self.reentered.contains(&rotation) => self.set_wake(&rotation, now),
            (kind, Output::Request(Err(e)) | Output::Drive(Err(e))) => {
                self.runner_error(kind.rotation(), &format!("{kind:?}"), &e);
                self.aborted = true;
            }
            (kind, out) => {
                self.fail(
                    Invariant::Runner,
                    None,
                    format!("{kind:?} ended with {out:?}"),
                );
                self.aborted = true;
            }
        }
    }

    /// Starts drives for the rotations of a scan that are due and not driven already.
    fn drive_due(&mut self, open: &[String]) {
        let now = self.now();
        for rotation in open {
            let due = self
                .rotations
                .get(rotation)
                .is_some_and(|t| t.wake_at_ms <= now);
            if due && !self.driving(rotation) {
                self.spawn_anywhere(TaskKind::Drive {
                    rotation: rotation.clone(),
                });
            }
        }
    }

    /// A rotation the scan does not list must have ended (perhaps its last drive crashed
    /// after closing it); otherwise nothing would ever resume it.
    fn check_unlisted(&mut self, open: &[String]) {
        for rotation in self.unended() {
            if open.contains(&rotation) {
                continue;
            }
            match checks::load(&self.memory, &rotation) {
                Ok(r) if r.phase.is_terminal() => self.ended(&rotation, r.phase),
                Ok(r) => {
                    self.fail(
                        Invariant::Liveness,
                        Some(&rotation),
                        format!(
                            "in phase {:?}, but open_rotations does not list it",
                            r.phase
                        ),
                    );
                    self.aborted = true;
                }
                Err(e) => self.fail(Invariant::Terminal, Some(&rotation), e),
            }
        }
    }

    /// Starts tracking a rotation named by a request or a scan.
    fn track(&mut self, rotation: &str, secret: Option<usize>) {
        if self.rotations.contains_key(rotation) {
            return;
        }
        let events = checks::rotation_events(&self.memory, rotation).unwrap_or_default();
        let Some(RotationEvent::Requested { plan, .. }) = events.first() else {
            // Coalesced into a rotation whose opener crashed before creating its stream:
            // the next scan repairs and reports it.
            return;
        };
        match (self.sc.secrets.iter().position(|s| s.plan == *plan), secret) {
            (Some(found), Some(asked)) if found != asked => self.fail(
                Invariant::Runner,
                Some(rotation),
                format!("a request for secret {asked} was served by a rotation of secret {found}"),
            ),
            (Some(found), _) => {
                let wake_at_ms = self.now();
                self.rotations.insert(
                    rotation.to_owned(),
                    Track {
                        secret: found,
                        wake_at_ms,
                        ended: None,
                    },
                );
            }
            (None, _) => self.fail(
                Invariant::Runner,
                Some(rotation),
                "its plan is not one of the scenario's",
            ),
        }
    }

    /// A drive reported the rotation ended: check what it left, before anything else runs.
    fn ended(&mut self, rotation: &str, phase: Phase) {
        let Some(track) = self.rotations.get_mut(rotation) else {
            return;
        };
        if let Some(seen) = track.ended {
            if seen != phase {
                let detail = format!("ended as {seen:?}, later reported as {phase:?}");
                self.fail(Invariant::Terminal, Some(rotation), detail);
            }
            return;
        }
        track.ended = Some(phase);
        let secret = track.secret;
        let spec = &self.sc.secrets[secret];
        self.phases
            .entry(spec.plan.secret.clone())
            .or_default()
            .push(phase);
        match checks::load(&self.memory, rotation) {
            Ok(r) if r.phase == phase => {
                let world = lock(&self.world);
                let found = checks::check_ended(&r, &world, secret, &mut self.holdings[secret]);
                drop(world);
                self.violations.extend(found);
            }
            Ok(r) => self.fail(
                Invariant::Terminal,
                Some(rotation),
                format!(
                    "drive reported {phase:?}, the stream folds to {:?}",
                    r.phase
                ),
            ),
            Err(e) => self.fail(Invariant::Terminal, Some(rotation), e),
        }
        if spec.again && !self.again_sent[secret] {
            self.again_sent[secret] = true;
            self.spawn_anywhere(TaskKind::Request { secret });
        }
    }

    fn finish(self) -> RunOutcome {
        let complete = !self.aborted
            && self
                .violations
                .iter()
                .all(|v| v.invariant != Invariant::Liveness);
        let mut violations = self.violations;
        let world = lock(&self.world);
        violations.extend(checks::check_journal(
            &self.memory,
            &self.journal.log().appends,
            &world.values,
            complete,
        ));
        violations.extend(checks::check_world(&world, complete));
        let streams = futures::executor::block_on(self.memory.streams(&StreamFilter::default()))
            .unwrap_or_default();
        let rotations = streams
            .iter()
            .filter(|s| !is_lock_stream(&s.stream_id))
            .count();
        let mut hasher = DefaultHasher::new();
        for e in self.memory.all_events() {
            (
                &e.stream_id,
                e.stream_seq,
                &e.kind,
                &e.payload,
                e.recorded_at_ms,
            )
                .hash(&mut hasher);
        }
        for e in &world.effects {
            (&e.object, &e.key, e.at_ms).hash(&mut hasher);
        }
        let mut named: Vec<&str> = Vec::new();
        for r in violations.iter().filter_map(|v| v.rotation.as_deref()) {
            if !named.contains(&r) {
                named.push(r);
            }
        }
        let traces = named
            .iter()
            .filter(|r| !is_lock_stream(r))
            .take(3)
            .map(|r| format!("  events of {r}:\n{}", checks::trace(&self.memory, r)))
            .collect();
        let mut coverage = self.coverage;
        coverage.count_events(&self.memory);
        RunOutcome {
            violations,
            rotations,
            phases: self.phases,
            fingerprint: hasher.finish(),
            traces,
            coverage,
            values: world.values.clone(),
        }
    }
}
