//! Runner behaviour around time: the lease heartbeat during slow calls (real tokio time)
//! and renewal before slow appends.

use std::collections::HashMap;
use std::sync::Arc;

use rekey::journal::{Clock, ManualClock, MemoryJournal};
use rekey::provider::{Applied, BoxFuture, Call, Provider, ProviderError, Reconciled, SecretValue};
use rekey::providers::local::{EnvFile, LocalVault, RandomRotator};
use rekey::runner::{Observer, Options, Progress, Requested, Runner, tokio_sleep};
use rekey::saga::{Phase, Plan, Role, Rotation, RotationEvent, TargetRef, Trigger};

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

/// A store whose every call first waits `delay_ms`.
#[derive(Debug)]
struct Slow {
    inner: LocalVault,
    delay_ms: u64,
}

impl Slow {
    fn wait(&self) -> tokio::time::Sleep {
        tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms))
    }
}

impl Provider for Slow {
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            self.wait().await;
            self.inner.apply(call).await
        })
    }
    fn compensate<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            self.wait().await;
            self.inner.compensate(call).await
        })
    }
    fn reconcile<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>> {
        Box::pin(async move {
            self.wait().await;
            self.inner.reconcile(call).await
        })
    }
    fn read_value<'a>(
        &'a self,
        version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            self.wait().await;
            self.inner.read_value(version).await
        })
    }
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
    let providers: HashMap<String, Arc<dyn Provider>> = HashMap::from([
        (
            "random".to_owned(),
            Arc::new(RandomRotator { bytes: 16 }) as Arc<dyn Provider>,
        ),
        (
            "vault".to_owned(),
            Arc::new(Slow {
                inner: vault,
                delay_ms: 1_000,
            }),
        ),
        (
            "app".to_owned(),
            Arc::new(EnvFile::new(dir.path().join("app.env"), "K")),
        ),
    ]);
    let t = |role, name: &str| TargetRef {
        role,
        name: name.into(),
    };
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
    let runner = Runner::new(journal, providers, clock, options);
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

/// Models appends that take `append_ms` each (a journal under load): the clock moves on
/// once an event is durable.
struct SlowAppends {
    clock: ManualClock,
    append_ms: i64,
}

impl Observer for SlowAppends {
    fn journaled(&self, _: &Rotation, _: &RotationEvent, _: f64) {
        self.clock.advance(self.append_ms);
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
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let providers: HashMap<String, Arc<dyn Provider>> = HashMap::from([
        (
            "random".to_owned(),
            Arc::new(RandomRotator { bytes: 16 }) as Arc<dyn Provider>,
        ),
        (
            "vault".to_owned(),
            Arc::new(LocalVault::new(dir.path().join("vault.json"))),
        ),
        (
            "app".to_owned(),
            Arc::new(EnvFile::new(dir.path().join("app.env"), "K")),
        ),
    ]);
    let t = |role, name: &str| TargetRef {
        role,
        name: name.into(),
    };
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
        observer: Some(Arc::new(SlowAppends {
            clock: manual,
            append_ms: lease_ms * 55 / 100,
        })),
        ..Options::new("runner-1", 7)
    };
    let runner = Runner::new(journal, providers, clock, options);
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
