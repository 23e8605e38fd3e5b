//! P5: bulk rotation in one throttled vault.
//!
//! * `p5_bulk_throttle`: [`SECRETS`] secrets rotated at once through the runner (SQLite
//!   journal, random rotator, Key Vault as store and verifier: 6 vault requests each)
//!   against the fake Key Vault limited to [`LIMIT`] requests per [`WINDOW_MS`] with
//!   [`LATENCY_MS`] per request, rekey's budget at its default share of that limit. Each
//!   iteration prints the total time over the throttle bound (requests / limit × window;
//!   goal ≤ 1.1) and the 429s served and rotations failed (goal 0).
//! * Memory: [`IN_FLIGHT`] rotations parked in the budget's queue at their first vault
//!   request; prints the growth of the resident set per rotation (goal ≤ 16 KiB).
//!
//! Scale: the case is 5,000 secrets at 2,000 per 10 s, 30,000 requests or 15
//! windows of 10 s; this is 500 secrets at 200 per 1 s, the same 15 windows (of 1 s), so a
//! sample takes 16 s instead of 150 s.
//!
//! Run: `cargo bench --bench throttle`. `REKEY_P5_FULL=1 cargo bench --bench throttle`
//! runs the case itself once (about 160 s), outside criterion's sampling.

#[path = "../tests/fake_azure/mod.rs"]
mod fake_azure;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use rekey::journal::{Clock, SqliteJournal, SystemClock};
use rekey::provider::{Cast, Found, ProviderError, Reply, SecretValue, Step, Store, Verifier};
use rekey::providers::azure::budget::{RequestBudget, SAFETY_PERCENT};
use rekey::providers::azure::credential::{Source, TokenCache};
use rekey::providers::azure::http::Http;
use rekey::providers::azure::keyvault::KeyVaultStore;
use rekey::providers::local::RandomRotator;
use rekey::resolve::Registry;
use rekey::runner::{Options, Progress, Requested, Runner, tokio_sleep};
use rekey::saga::{Phase, Plan, Role, TargetRef, Trigger};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use url::Url;

use fake_azure::{FakeAzure, Service};

const SECRETS: usize = 500;
const LIMIT: u32 = 200;
const WINDOW_MS: u64 = 1_000;
const LATENCY_MS: u64 = 20;
const IN_FLIGHT: usize = 2_000;
const VAULT: &str = "bulk";
const CLIENT_ID: &str = "5e7c0000-0000-4000-8000-0000000000b5";
const CLIENT_SECRET: &str = "bench-secret";

/// Counts calls into the vault and the errors it returned.
#[derive(Debug)]
struct Counted {
    inner: KeyVaultStore,
    calls: AtomicUsize,
    errors: AtomicUsize,
}

impl Counted {
    fn note<T>(&self, r: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl Counted {
    /// A call that changes or reads something (not a reconciliation).
    fn call<'a, T: Send + 'a>(&'a self, call: Reply<'a, T>) -> Reply<'a, T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.noted(call)
    }

    fn noted<'a, T: Send + 'a>(&'a self, call: Reply<'a, T>) -> Reply<'a, T> {
        Box::pin(async move { self.note(call.await) })
    }
}

impl Store for Counted {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        self.call(Store::capture(&self.inner, step))
    }
    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String> {
        self.call(self.inner.write(step, new))
    }
    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        self.noted(self.inner.restore(step, old, written, captured))
    }
    fn disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, ()> {
        self.call(self.inner.disable_superseded(step, captured))
    }
    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        self.noted(self.inner.reconcile_write(step))
    }
    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        self.noted(self.inner.reconcile_restore(step, had_old, captured))
    }
    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        self.noted(self.inner.reconcile_disable_superseded(step, captured))
    }
    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue> {
        self.noted(self.inner.read_value(version))
    }
}

impl Verifier for Counted {
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        self.call(self.inner.verify(step, new))
    }
}

/// The fake vault, a runner whose store has `budget`, and the counted store.
struct Setup {
    fake: FakeAzure,
    runner: Arc<Runner<SqliteJournal>>,
    vault: Arc<Counted>,
    _dir: tempfile::TempDir,
}

/// How big one bulk is: secrets, and the vault's limit per window.
#[derive(Debug, Clone, Copy)]
struct Scale {
    secrets: usize,
    limit: u32,
    window_ms: u64,
}

/// The sampled scale: 15 windows, as the case.
const SAMPLED: Scale = Scale {
    secrets: SECRETS,
    limit: LIMIT,
    window_ms: WINDOW_MS,
};

/// The case: 5,000 secrets, 2,000 requests per 10 s.
const FULL: Scale = Scale {
    secrets: 5_000,
    limit: 2_000,
    window_ms: 10_000,
};

async fn setup(budget: Arc<RequestBudget>) -> Setup {
    setup_at(budget, SAMPLED).await
}

async fn setup_at(budget: Arc<RequestBudget>, scale: Scale) -> Setup {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let fake = FakeAzure::start_with_clock(clock.clone()).await;
    fake.register_client(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET);
    fake.set_vault_rate_limit(VAULT, scale.limit, scale.window_ms);
    fake.set_vault_latency_ms(VAULT, LATENCY_MS);
    let http = Http::new(30_000, clock.clone()).unwrap();
    let credential = Arc::new(TokenCache::new(
        http.clone(),
        Source::ClientSecret {
            authority: Url::parse(&fake.authority_url()).unwrap(),
            tenant: FakeAzure::TENANT.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            secret: SecretValue::new(CLIENT_SECRET),
        },
    ));
    let kv = KeyVaultStore::new(
        http,
        credential,
        Url::parse(&fake.keyvault_url(VAULT)).unwrap(),
    )
    .without_challenge_verification()
    .with_budget(budget);
    let vault = Arc::new(Counted {
        inner: kv,
        calls: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
    });
    let dir = scratch();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(dir.path().join("j.db"), clock.clone()).unwrap());
    let providers = Registry::new()
        .with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        )
        .with("vault", Cast::Store(vault.clone()))
        .with("vault", Cast::Verifier(vault.clone()));
    let mut options = Options::new("bench", 5);
    options.sleep = Some(tokio_sleep());
    let runner = Arc::new(Runner::new(journal, Arc::new(providers), clock, options));
    Setup {
        fake,
        runner,
        vault,
        _dir: dir,
    }
}

fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn plan(secret: &str) -> Plan {
    let t = TargetRef::new;
    Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Verifier, "vault"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    }
}

/// Opens and drives rotation `n` to its end, waiting out retries in real time.
async fn rotate(runner: Arc<Runner<SqliteJournal>>, n: u64) -> Phase {
    let secret = format!("s{n}");
    let Requested::Started { rotation_id } = runner
        .request(plan(&secret), Trigger::Bulk, "bench", format!("r{n}"))
        .await
        .unwrap()
    else {
        panic!("each secret is rotated once");
    };
    loop {
        match runner.drive(&rotation_id).await.unwrap() {
            Progress::Finished(phase) => return phase,
            Progress::Waiting { until_ms, .. } => {
                let wait = until_ms.saturating_sub(SystemClock.now_ms()).max(0);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
            Progress::Busy { holder } => panic!("{rotation_id} busy with {holder}"),
            Progress::Stopped => panic!("{rotation_id}: the runner was stopped"),
        }
    }
}

fn vault_requests(fake: &FakeAzure) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.service == Service::KeyVault)
        .count()
}

/// Rotates `scale.secrets` fresh secrets at once and prints how long it took against the
/// throttle bound; returns the time taken. Seeding and a quiet window are not timed: each
/// bulk starts from an empty window, as a real one would.
fn bulk(rt: &Runtime, s: &Setup, next: &AtomicU64, scale: Scale) -> Duration {
    let first = next.fetch_add(scale.secrets as u64, Ordering::Relaxed);
    for n in first..first + scale.secrets as u64 {
        s.fake.kv_seed(VAULT, &format!("s{n}"), "old");
    }
    std::thread::sleep(Duration::from_millis(scale.window_ms));
    let (requests_before, throttled_before, errors_before) = (
        vault_requests(&s.fake),
        s.fake.throttled_count(VAULT),
        s.vault.errors.load(Ordering::Relaxed),
    );
    let start = tokio::time::Instant::now();
    let phases = rt.block_on(async {
        let mut tasks = JoinSet::new();
        for n in first..first + scale.secrets as u64 {
            tasks.spawn(rotate(s.runner.clone(), n));
        }
        tasks.join_all().await
    });
    let elapsed = start.elapsed();
    let requests = vault_requests(&s.fake) - requests_before;
    let bound_s = requests as f64 / f64::from(scale.limit) * scale.window_ms as f64 / 1_000.0;
    let failed = phases.iter().filter(|p| **p != Phase::Completed).count();
    eprintln!(
        "P5: {} rotations, {requests} vault requests in {:.2} s; bound {bound_s:.2} s; ratio {:.3}; 429s served {}; provider errors {}; rotations not completed {failed}",
        scale.secrets,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / bound_s,
        s.fake.throttled_count(VAULT) - throttled_before,
        s.vault.errors.load(Ordering::Relaxed) - errors_before,
    );
    elapsed
}

fn p5_bulk_throttle(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let next = AtomicU64::new(0);
    if std::env::var_os("REKEY_P5_FULL").is_some() {
        let budget = Arc::new(RequestBudget::new(
            FULL.limit * SAFETY_PERCENT / 100,
            FULL.window_ms,
        ));
        let s = rt.block_on(setup_at(budget, FULL));
        bulk(&rt, &s, &next, FULL);
        return;
    }
    let budget = Arc::new(RequestBudget::new(LIMIT * SAFETY_PERCENT / 100, WINDOW_MS));
    let s = rt.block_on(setup(budget.clone()));
    let mut g = c.benchmark_group("p5_bulk_throttle");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(1));
    // One bulk (about 16 s) per sample.
    g.measurement_time(Duration::from_secs(170));
    g.bench_function(
        format!("{SECRETS}_secrets_{LIMIT}_per_{WINDOW_MS}ms"),
        |b| b.iter_custom(|iters| (0..iters).map(|_| bulk(&rt, &s, &next, SAMPLED)).sum()),
    );
    g.finish();
    drop(s);
}

/// Resident set size in bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Parks `m` rotations at their first vault request (a budget of one request an hour)
/// and returns the RSS growth per rotation.
fn parked_bytes_per_rotation(rt: &Runtime, m: usize, first: u64) -> f64 {
    let budget = Arc::new(RequestBudget::new(1, 3_600_000));
    rt.block_on(async {
        let s = setup(budget).await;
        for n in first..first + m as u64 {
            s.fake.kv_seed(VAULT, &format!("s{n}"), "old");
        }
        let before = rss_bytes();
        let mut tasks = JoinSet::new();
        for n in first..first + m as u64 {
            tasks.spawn(rotate(s.runner.clone(), n));
        }
        // Every rotation has reached the vault (all but the first wait in its queue).
        while s.vault.calls.load(Ordering::Relaxed) < m {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = rss_bytes();
        tasks.abort_all();
        after.saturating_sub(before) as f64 / m as f64
    })
}

fn memory_per_rotation(_c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    // A first round warms the allocator, thread stacks and connection pools.
    parked_bytes_per_rotation(&rt, 200, 10_000_000);
    let per = parked_bytes_per_rotation(&rt, IN_FLIGHT, 20_000_000);
    eprintln!(
        "P5 memory: {IN_FLIGHT} rotations parked in the vault's queue: {:.1} KiB resident per rotation (goal <= 16 KiB)",
        per / 1024.0
    );
}

criterion_group!(benches, memory_per_rotation, p5_bulk_throttle);
criterion_main!(benches);
