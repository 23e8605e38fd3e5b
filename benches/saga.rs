//! Criterion benchmarks of the rotation saga and runner.
//!
//! * `fold_decide`: folding a completed rotation's events and deciding after each, per
//!   event (the pure core's cost on replay).
//! * `rotations`: whole rotations end to end (request, every step, grace of 0, retirement)
//!   through the runner over a durable SQLite journal, with providers that answer at once,
//!   at 1, 64 and 256 rotations in flight (goals: 300/s at 1, 5,000/s at 256; a rotation
//!   of this plan is 23 events in 9 durable commits, `tests/commits.rs`), and side by side the
//!   same rotations over a PostgreSQL journal at 64 and 256 in flight (`postgres_in_flight`;
//!   a server with `fsync=on` started by the bench on 127.0.0.1, skipped with a notice when
//!   PostgreSQL is not installed).
//!
//! Run: `cargo bench --bench saga`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use rekey::journal::{Clock, PostgresJournal, SqliteJournal, SystemClock};
use rekey::provider::{
    Created, Dependent, Found, Reconciled, Reply, Rotator, SecretValue, Step, Store, Verifier,
};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner, RunnerJournal};
use rekey::saga::{Command, Phase, Plan, Role, RotationEvent, TargetRef, Trigger, apply, decide};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

#[path = "support/pg.rs"]
mod pg;

/// A provider that answers every call at once, in every role (the runner and journal are
/// what is measured).
#[derive(Debug, Default)]
struct Instant {
    versions: AtomicU64,
}

impl Instant {
    fn version(&self) -> String {
        format!("v{}", self.versions.fetch_add(1, Ordering::Relaxed))
    }
}

fn done<'a, T: Send + 'a>(value: T) -> Reply<'a, T> {
    Box::pin(async move { Ok(value) })
}

impl Rotator for Instant {
    fn capture<'a>(&'a self, _: Step<'a>, _: Option<&'a SecretValue>) -> Reply<'a, Option<String>> {
        done(Some(self.version()))
    }
    fn create<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Created> {
        done(Created {
            id: "cred".into(),
            value: SecretValue::new("v"),
        })
    }
    fn retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        done(())
    }
    fn discard<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        done(None)
    }
    fn discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        done(())
    }
    fn reconcile_create<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Reconciled> {
        done(Reconciled::NotApplied)
    }
    fn reconcile_retire_old<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn reconcile_discard<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn reconcile_discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
}

impl Store for Instant {
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        done(Some(self.version()))
    }
    fn write<'a>(&'a self, _: Step<'a>, _: &'a SecretValue) -> Reply<'a, String> {
        done(self.version())
    }
    fn restore<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a SecretValue>,
        _: Option<&'a str>,
        _: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        done(None)
    }
    fn disable_superseded<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, ()> {
        done(())
    }
    fn reconcile_write<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn reconcile_restore<'a>(
        &'a self,
        _: Step<'a>,
        _: bool,
        _: Option<&'a str>,
    ) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn reconcile_disable_superseded<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
    ) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn read_value<'a>(&'a self, _: &'a str) -> Reply<'a, SecretValue> {
        done(SecretValue::new("v"))
    }
}

impl Dependent for Instant {
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        done(Some(self.version()))
    }
    fn update<'a>(&'a self, _: Step<'a>, _: &'a SecretValue) -> Reply<'a, Option<String>> {
        done(None)
    }
    fn revert<'a>(
        &'a self,
        _: Step<'a>,
        _: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        done(None)
    }
    fn reconcile_update<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
    fn reconcile_revert<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        done(Found::NotApplied)
    }
}

impl Verifier for Instant {
    fn verify<'a>(&'a self, _: Step<'a>, _: &'a SecretValue) -> Reply<'a, ()> {
        done(())
    }
}

fn plan(secret: &str) -> Plan {
    let t = TargetRef::new;
    Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            t(Role::Rotator, "p"),
            t(Role::Store, "p"),
            t(Role::Dependent, "p"),
            t(Role::Verifier, "p"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    }
}

/// The events of one uneventful completed rotation, as the runner would journal them.
fn completed_rotation() -> Vec<RotationEvent> {
    let mut events = vec![RotationEvent::Requested {
        rotation_id: "r".into(),
        plan: plan("s"),
        trigger: Trigger::Schedule,
        actor: "bench".into(),
    }];
    let mut state = apply(None, &events[0]).unwrap();
    loop {
        let next = match decide(&state, 0) {
            Command::Run { step, attempt, key } => vec![
                RotationEvent::StepStarted { step, attempt, key },
                RotationEvent::StepSucceeded {
                    step,
                    id: Some("id".into()),
                    reconciled: false,
                },
            ],
            Command::ScheduleGrace { due_at_ms } => {
                vec![RotationEvent::GraceScheduled { due_at_ms }]
            }
            Command::Complete => vec![RotationEvent::Completed],
            Command::Done { .. } => return events,
            other => panic!("an uneventful rotation does not {other:?}"),
        };
        for e in next {
            state = apply(Some(state), &e).unwrap();
            events.push(e);
        }
    }
}

fn fold_decide(c: &mut Criterion) {
    let events = completed_rotation();
    let mut g = c.benchmark_group("fold_decide");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("per_event", |b| {
        b.iter(|| {
            let mut state = None;
            for e in &events {
                let s = apply(state, black_box(e)).unwrap();
                black_box(decide(&s, 0));
                state = Some(s);
            }
            state
        })
    });
    g.finish();
}

fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// Whole no-op rotations through the runner over `journal`, `in_flight` at a time, as
/// criterion function `name`.
fn rotations_on<J: RunnerJournal + 'static>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    journal: Arc<J>,
    in_flights: &[u64],
) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = Registry::new().with_roles("p", roles!(Arc::new(Instant::default())));
    let runner = Arc::new(Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("bench", 1),
    ));
    let next = Arc::new(AtomicU64::new(0));
    for &in_flight in in_flights {
        g.throughput(Throughput::Elements(in_flight));
        g.bench_with_input(BenchmarkId::new(name, in_flight), &in_flight, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tasks = JoinSet::new();
                    for _ in 0..n {
                        let (runner, id) = (runner.clone(), next.fetch_add(1, Ordering::Relaxed));
                        tasks.spawn(async move {
                            let secret = format!("s{id}");
                            let Requested::Started { rotation_id } = runner
                                .request(plan(&secret), Trigger::Bulk, "bench", format!("r{id}"))
                                .await
                                .unwrap()
                            else {
                                panic!("each secret is rotated once");
                            };
                            let done = runner.drive(&rotation_id).await.unwrap();
                            assert_eq!(done, Progress::Finished(Phase::Completed));
                        });
                    }
                    while let Some(r) = tasks.join_next().await {
                        r.unwrap();
                    }
                })
            })
        });
    }
}

/// The same no-op rotations on a SQLite journal and, side by side, on a PostgreSQL journal
/// (a server started by the bench; skipped with a notice when PostgreSQL is not installed).
fn rotations(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = scratch();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sqlite = Arc::new(SqliteJournal::open_with_clock(dir.path().join("j.db"), clock).unwrap());
    let mut g = c.benchmark_group("rotations");
    g.sample_size(10);
    rotations_on(&mut g, &rt, "in_flight", sqlite, &[1, 64, 256]);
    if let Some(config) = pg::config() {
        let postgres = Arc::new(PostgresJournal::open(config, "bench_rotations").unwrap());
        g.measurement_time(std::time::Duration::from_secs(5));
        rotations_on(&mut g, &rt, "postgres_in_flight", postgres, &[64, 256]);
    }
    g.finish();
}

criterion_group!(benches, fold_decide, rotations);
criterion_main!(benches);
