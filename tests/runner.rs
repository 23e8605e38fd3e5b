//! Runner behaviour around time: the lease heartbeat during slow calls (real tokio time)
//! and renewal before slow appends.

use std::sync::Arc;

use rekey::journal::{
    Append, Appended, Clock, Event, JournalAppend, JournalRead, JournalScan, Lease, Leases,
    ManualClock, MemoryJournal, Result as JournalResult, StreamFilter, StreamInfo, Timer,
};
use rekey::provider::{Cast, ProviderError, Reply, Roles, SecretValue, Store};
use rekey::providers::local::{CommandVerifier, EnvFile, LocalVault, RandomRotator};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner, tokio_sleep};
use rekey::saga::{Action, Phase, Plan, Role, RotationEvent, StepId, TargetRef, Trigger};

use crate::intercept::{Hook, Seen, intercept};

/// Journal time that follows tokio's (pausable) clock, starting at `base_ms`.
#[derive(Debug)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `base_ms` now; call inside a (paused) runtime.
    pub fn starting_at(base_ms: i64) -> Self {
        Self {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

/// Every call first waits `delay_ms`.
#[derive(Debug)]
struct Slow {
    delay_ms: u64,
}

impl Hook for Slow {
    fn around<'a, T: Send + 'a>(&'a self, _: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms)).await;
            call.await
        })
    }
}

/// The local providers of a one-secret plan: a random rotator, the vault `vault` and the
/// env file `app` (line `K`) as dependent and verifier.
fn local(vault: Roles, dir: &std::path::Path) -> Registry {
    Registry::new()
        .with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        )
        .with_roles("vault", vault)
        .with_roles(
            "app",
            roles!(Arc::new(EnvFile::new(dir.join("app.env"), "K"))),
        )
}

/// Drives one rotation whose store calls (value reads included) take 1 s under a 300 ms
/// lease.
async fn slow_rotation(heartbeat: bool) -> Result<Progress, rekey::runner::Error> {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(1_700_000_000_000));
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    // An old version, so the runner reads values (the old one, for the rotator's capture)
    // before steps, through the same slow store.
    let vault = LocalVault::new(dir.path().join("vault.json"));
    vault
        .set("api", &SecretValue::new("old-value"), "seed")
        .unwrap();
    let providers = local(
        intercept(roles!(Arc::new(vault)), Slow { delay_ms: 1_000 }),
        dir.path(),
    );
    let t = TargetRef::new;
    let plan = Plan {
        secret: "api".into(),
        lock_key: "api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "app"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    };
    let options = Options {
        lease_ttl_ms: 300,
        sleep: heartbeat.then(tokio_sleep),
        ..Options::new("runner-1", 7)
    };
    let runner = Runner::new(journal, Arc::new(providers), clock, options);
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", "rot-1".into())
        .await
        .unwrap()
    else {
        panic!("a fresh journal has no open rotation");
    };
    runner.drive(&rotation_id).await
}

#[tokio::test(start_paused = true)]
async fn the_lease_outlives_a_slow_call_only_with_a_heartbeat() {
    let with = slow_rotation(true)
        .await
        .expect("heartbeat keeps the lease");
    assert_eq!(with, Progress::Finished(Phase::Completed));
    let without = slow_rotation(false).await;
    let err = without.expect_err("a 1 s call must outlive a 300 ms lease without renewal");
    assert!(
        err.to_string().contains("expired"),
        "expected the append after the call to be refused: {err}"
    );
}

/// A journal whose appends take `append_ms` each (a journal under load): the clock moves
/// on once an append is durable, before the runner hears of it.
#[derive(Debug)]
struct SlowAppends {
    memory: MemoryJournal,
    clock: ManualClock,
    append_ms: i64,
}

impl JournalRead for SlowAppends {
    async fn read_stream(&self, stream_id: &str) -> JournalResult<Vec<Event>> {
        self.memory.read_stream(stream_id).await
    }
    async fn stream_info(&self, stream_id: &str) -> JournalResult<Option<StreamInfo>> {
        self.memory.stream_info(stream_id).await
    }
}

impl JournalScan for SlowAppends {
    async fn read_after(&self, after: u64, limit: usize) -> JournalResult<Vec<Event>> {
        self.memory.read_after(after, limit).await
    }
    async fn streams(&self, filter: &StreamFilter) -> JournalResult<Vec<StreamInfo>> {
        self.memory.streams(filter).await
    }
    async fn due_timers(&self, now_ms: i64, limit: usize) -> JournalResult<Vec<Timer>> {
        self.memory.due_timers(now_ms, limit).await
    }
    async fn next_timer(&self) -> JournalResult<Option<Timer>> {
        self.memory.next_timer().await
    }
}

impl JournalAppend for SlowAppends {
    async fn append(&self, append: Append) -> JournalResult<Appended> {
        let appended = self.memory.append(append).await;
        self.clock.advance(self.append_ms);
        appended
    }

    async fn append_all(&self, appends: Vec<Append>) -> JournalResult<Vec<Appended>> {
        let appended = self.memory.append_all(appends).await;
        self.clock.advance(self.append_ms);
        appended
    }
}

impl Leases for SlowAppends {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> JournalResult<Lease> {
        self.memory.acquire(stream_id, owner, ttl_ms).await
    }
    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> JournalResult<Lease> {
        self.memory.renew(lease, ttl_ms).await
    }
    async fn release(&self, lease: &Lease) -> JournalResult<()> {
        self.memory.release(lease).await
    }
}

/// Every append takes over half the lease and the calls between them none: renewing only
/// between steps lets the lease lapse during a step's outcome append. The runner renews
/// before each append that finds less than half the lease left, and finishes.
#[tokio::test]
async fn appends_slower_than_half_the_lease_do_not_lose_it() {
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 1_000;
    let manual = ManualClock::new(1_700_000_000_000);
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let journal = Arc::new(SlowAppends {
        memory: MemoryJournal::new(clock.clone()),
        clock: manual,
        append_ms: lease_ms * 55 / 100,
    });
    let providers = local(
        roles!(Arc::new(LocalVault::new(dir.path().join("vault.json")))),
        dir.path(),
    );
    let t = TargetRef::new;
    let plan = Plan {
        secret: "api".into(),
        lock_key: "api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "app"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    };
    let options = Options {
        lease_ttl_ms: lease_ms,
        ..Options::new("runner-1", 7)
    };
    let runner = Runner::new(journal, Arc::new(providers), clock, options);
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", "rot-1".into())
        .await
        .unwrap()
    else {
        panic!("a fresh journal has no open rotation");
    };
    let progress = runner
        .drive(&rotation_id)
        .await
        .expect("the lease is renewed before it lapses");
    assert_eq!(progress, Progress::Finished(Phase::Completed));
}

/// The first restore lands, but its response is lost.
#[derive(Debug, Default)]
struct LosesRestoreResponse {
    lost: std::sync::atomic::AtomicBool,
}

impl Hook for LosesRestoreResponse {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        Box::pin(async move {
            let out = call.await?;
            if seen.performs(Action::Restore)
                && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(ProviderError::transient("response lost (test)"));
            }
            Ok(out)
        })
    }
}

/// A restore that wrote the old value back but lost its response is found done by
/// reconciling (the vault is told the rotation had an old value): it is not started again.
#[tokio::test]
async fn an_in_doubt_restore_that_landed_is_found_done() {
    let dir = tempfile::tempdir().unwrap();
    let manual = ManualClock::new(1_700_000_000_000);
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let vault = LocalVault::new(dir.path().join("vault.json"));
    vault
        .set("api", &SecretValue::new("old-value"), "seed")
        .unwrap();
    std::fs::write(dir.path().join("app.env"), "K=old-value\n").unwrap();
    let vault_file = LocalVault::new(dir.path().join("vault.json"));
    let providers = local(
        intercept(
            roles!(Arc::new(vault_file)),
            LosesRestoreResponse::default(),
        ),
        dir.path(),
    )
    .with(
        "refuses",
        Cast::Verifier(Arc::new(CommandVerifier {
            command: vec!["false".into()],
        })),
    );
    let t = TargetRef::new;
    let plan = Plan {
        secret: "api".into(),
        lock_key: "api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "refuses"),
        ],
        grace_ms: 0,
        attempts_max: 1,
    };
    let runner = Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock,
        Options::new("runner-1", 7),
    );
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", "rot-1".into())
        .await
        .unwrap()
    else {
        panic!("a fresh journal has no open rotation");
    };
    let progress = loop {
        match runner.drive(&rotation_id).await.unwrap() {
            Progress::Waiting { until_ms, .. } => manual.advance(until_ms - manual.now_ms()),
            other => break other,
        }
    };
    assert_eq!(progress, Progress::Finished(Phase::Compensated));
    let restore = StepId::new(Action::Restore, 1);
    let events: Vec<RotationEvent> =
        rekey::journal::JournalRead::read_stream(&*journal, &rotation_id)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.payload).unwrap())
            .collect();
    let started = events
        .iter()
        .filter(|e| matches!(e, RotationEvent::StepStarted { step, .. } if *step == restore))
        .count();
    assert_eq!(started, 1, "the restore ran once: {events:#?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            RotationEvent::StepSucceeded { step, id: Some(_), reconciled: true } if *step == restore
        )),
        "the restore was found done: {events:#?}"
    );
    let app = std::fs::read_to_string(dir.path().join("app.env")).unwrap();
    assert_eq!(app, "K=old-value\n");
    let restored = vault.read_value(
        events
            .iter()
            .find_map(|e| match e {
                RotationEvent::StepSucceeded { step, id, .. } if *step == restore => id.as_deref(),
                _ => None,
            })
            .unwrap(),
    );
    assert_eq!(restored.await.unwrap().expose(), "old-value");
}

/// A store write that takes 800 ms (under its 1 s timeout), and, before it answers, a
/// second runner trying to take the rotation over.
#[derive(Debug)]
struct IntruderDuringWrite {
    journal: Arc<MemoryJournal>,
    /// What the intruder's acquire got: `Some(true)` when it took the lease.
    took_over: std::sync::Mutex<Option<bool>>,
}

impl Hook for IntruderDuringWrite {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        Box::pin(async move {
            if seen.performs(Action::Write) {
                tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                use rekey::journal::Leases;
                let got = self.journal.acquire("rot-1", "intruder", 300).await;
                *self.took_over.lock().unwrap() = Some(got.is_ok());
            }
            call.await
        })
    }
}

/// A call may take its whole timeout (1 s) under a 300 ms lease, with no heartbeat to
/// renew it meanwhile: the runner makes the lease outlive the call before starting it, so
/// nobody can take the rotation over (and reconcile) while the call could still land.
#[tokio::test(start_paused = true)]
async fn no_provider_call_starts_unless_the_lease_outlives_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(1_700_000_000_000));
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let hook = Arc::new(IntruderDuringWrite {
        journal: journal.clone(),
        took_over: std::sync::Mutex::new(None),
    });
    let vault = LocalVault::new(dir.path().join("vault.json"));
    let providers = local(intercept(roles!(Arc::new(vault)), hook.clone()), dir.path());
    let t = TargetRef::new;
    let plan = Plan {
        secret: "api".into(),
        lock_key: "api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "app"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    };
    let options = Options {
        lease_ttl_ms: 300,
        call_timeout_ms: Some(1_000),
        ..Options::new("runner-1", 7)
    };
    let runner = Runner::new(journal, Arc::new(providers), clock, options);
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", "rot-1".into())
        .await
        .unwrap()
    else {
        panic!("a fresh journal has no open rotation");
    };
    let progress = runner.drive(&rotation_id).await;
    assert_eq!(
        *hook.took_over.lock().unwrap(),
        Some(false),
        "another runner took the rotation over while a write was in flight"
    );
    assert_eq!(progress.unwrap(), Progress::Finished(Phase::Completed));
}

/// A schedule fires once per slot, whichever node fires it: a node that led before a
/// takeover fired the slot counted from the last ended rotation (here none), and its
/// rotation has ended since; the next leader, firing the same slot from what it read
/// before, finds the first request and opens nothing. The next slot (counted from the
/// rotation that ended) fires.
#[tokio::test]
async fn a_schedule_slot_fired_again_opens_no_second_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let providers = local(
        roles!(Arc::new(LocalVault::new(dir.path().join("vault.json")))),
        dir.path(),
    );
    let t = TargetRef::new;
    let plan = Plan {
        secret: "api".into(),
        lock_key: "api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    };
    let runner = Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("node-a", 7),
    );
    let fire = |id: &str, after: Option<&'static str>| {
        runner.request_once(
            plan.clone(),
            Trigger::Schedule,
            "schedule",
            id.into(),
            after,
        )
    };
    let first = fire("rot-1", None).await.unwrap();
    assert_eq!(
        first,
        Requested::Started {
            rotation_id: "rot-1".into()
        }
    );
    let done = runner.drive("rot-1").await.unwrap();
    assert_eq!(done, Progress::Finished(Phase::Completed));
    let again = fire("rot-2", None).await.unwrap();
    assert_eq!(
        again,
        Requested::Started {
            rotation_id: "rot-1".into()
        }
    );
    assert!(
        runner.load("rot-2").await.is_err(),
        "a second rotation was opened for the same slot"
    );
    let next = fire("rot-3", Some("rot-1")).await.unwrap();
    assert_eq!(
        next,
        Requested::Started {
            rotation_id: "rot-3".into()
        }
    );
}

/// The daemon scans for open rotations at start and periodically: a secret's schedule
/// stream (whose status is `open` too) is none, and never driven as one.
#[tokio::test]
async fn open_rotations_are_rotations_only() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let now = clock.now_ms();
    rekey::daemon::schedules::adopted_at(&*journal, "api", now)
        .await
        .unwrap();
    let runner = Runner::new(
        journal,
        Arc::new(Registry::new()),
        clock,
        Options::new("node-a", 7),
    );
    assert_eq!(runner.open_rotations().await.unwrap(), Vec::<String>::new());
}
