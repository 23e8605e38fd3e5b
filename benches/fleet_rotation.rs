//! A bulk fleet rotation against the fake Azure services over loopback HTTP: 1,000
//! applications, each with one password held by two vault copies (`kv-one` and `kv-two`,
//! linked HIGH by their `CredentialId` tags), discovered, planned (one rotation per app)
//! and driven to their end (a 1 ms grace period) by one runner over a SQLite journal, at
//! most 64 at once, the way `rekey rotate --fleet` and `resume` do it; with rekey's
//! per-vault budgets at their real pace (1,900 per 10 s) and the fakes enforcing Key
//! Vault's own limit (2,000 per 10 s per vault).
//!
//! Each iteration prints the wall time, the requests sent per service, the 429s served,
//! the failed rotations (goal: none), and the bound the vault budgets allow: for each
//! vault, (requests − 1) × its spacing, the largest of them. Goal: wall time ≤ 1.15 ×
//! bound.
//!
//! Run: `cargo bench --bench fleet_rotation` (one run; `REKEY_BENCH_ROUNDS=N` for more).
//! Not a criterion benchmark: one run takes tens of seconds at the services' pace.

#[path = "../tests/fake_azure/mod.rs"]
mod fake_azure;
#[path = "support/fake_requests.rs"]
mod fake_requests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekey::config::Config;
use rekey::fleet::discover;
use rekey::fleet::matching::Confidence;
use rekey::fleet::plan::Selection;
use rekey::journal::{Clock, SqliteJournal, SystemClock};
use rekey::providers::azure::budget::{
    DEFAULT_REQUESTS_PER_10S, KEY_VAULT_LIMIT, KEY_VAULT_WINDOW_MS,
};
use rekey::runner::{Options, Progress, Runner};
use rekey::saga::{Phase, Trigger};
use tokio::runtime::Runtime;

use fake_azure::{App, FakeAzure, PasswordCred, SecretMeta};
use fake_requests::per_service as requests;

const APPS: u32 = 1_000;
const IN_FLIGHT: usize = 64;
const READER: &str = "5e7c0000-0000-4000-8000-0000000be4c2";
const SECRET: &str = "bench-rotator-secret";
const VAULTS: [&str; 2] = ["kv-one", "kv-two"];
const DAY_S: i64 = 86_400;

fn id(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

/// 1,000 apps due in 10 days, each batch `round` with fresh key ids and item names.
fn seed(fake: &FakeAzure, round: u32) {
    let now_s = SystemClock.now_ms() / 1000;
    let start = jiff::Timestamp::from_second(now_s - 100 * DAY_S).unwrap();
    let end = jiff::Timestamp::from_second(now_s + 10 * DAY_S).unwrap();
    for k in 0..APPS {
        let n = round * APPS + k;
        let key = id(3, n);
        fake.graph_insert_app(App {
            object_id: id(1, n),
            app_id: id(2, n),
            principal_id: id(5, n),
            display_name: format!("svc-{n}"),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &key,
                None,
                &format!("p{n}-secret"),
                start,
                end,
            )],
            keys: Vec::new(),
        });
        for vault in VAULTS {
            fake.kv_seed_item(
                vault,
                &format!("svc-{n}-secret"),
                &format!("p{n}-secret"),
                SecretMeta {
                    tags: [("CredentialId".to_owned(), key.clone())].into(),
                    ..SecretMeta::default()
                },
            );
        }
    }
}

fn config(fake: &FakeAzure, dir: &Path) -> Config {
    let vaults: Vec<String> = VAULTS
        .iter()
        .map(|v| format!("{:?}", fake.keyvault_url(v)))
        .collect();
    let text = format!(
        r#"[journal]
path = "{journal}"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"

[credentials.reader]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{READER}"
client_secret_env = "BENCH_ROTATOR_SECRET"

[fleet]
verify_challenge_resource = false

[fleet.rotation]
grace = "1ms"

[fleet.tenants.bench]
credential = "reader"
vaults = [{vaults}]
"#,
        journal = dir.join("journal.db").display(),
        authority = fake.authority_url(),
        arm = fake.arm_url(),
        graph = fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vaults = vaults.join(", "),
    );
    Config::parse(&dir.join("rekey.toml"), &text).expect("bench config")
}

/// The least time rekey's vault budgets allow for `sent`: per vault, (n − 1) spacings.
fn bound_ms(sent: &BTreeMap<String, usize>) -> f64 {
    let spacing = KEY_VAULT_WINDOW_MS as f64 / f64::from(DEFAULT_REQUESTS_PER_10S);
    sent.iter()
        .filter(|(s, _)| s.starts_with("keyvault"))
        .map(|(_, n)| n.saturating_sub(1) as f64 * spacing)
        .fold(0.0, f64::max)
}

/// The peak resident memory of this process so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn drive_to_end(runner: &Runner<SqliteJournal>, id: &str) -> Phase {
    loop {
        match runner.drive(id).await.expect("drive") {
            Progress::Finished(phase) => return phase,
            Progress::Waiting { until_ms, .. } => {
                let wait = until_ms.saturating_sub(SystemClock.now_ms()).max(0);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
            Progress::Busy { .. } | Progress::Stopped => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn main() {
    let rounds: u32 = std::env::var("REKEY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = Runtime::new().expect("runtime");
    let fake = rt.block_on(FakeAzure::start_with_clock(Arc::new(SystemClock)));
    fake.register_client(FakeAzure::TENANT, READER, SECRET);
    for v in VAULTS {
        fake.set_vault_rate_limit(v, KEY_VAULT_LIMIT, KEY_VAULT_WINDOW_MS);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&fake, dir.path());
    let fleet = config.fleet.clone().expect("[fleet]");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let env = |v: &str| (v == "BENCH_ROTATOR_SECRET").then(|| SECRET.to_owned());
    let resolver = config
        .resolver(clock.clone(), Arc::new(env))
        .expect("resolver");
    let journal = Arc::new(
        SqliteJournal::open_with_clock(dir.path().join("journal.db"), clock.clone())
            .expect("journal"),
    );
    let runner = Arc::new(Runner::new(
        journal,
        Arc::new(resolver),
        clock.clone(),
        Options {
            sleep: Some(rekey::runner::tokio_sleep()),
            ..Options::new("bench", 7)
        },
    ));
    for round in 0..rounds {
        seed(&fake, round);
        let scanner = discover::scanner(&config, None, clock.clone(), &env).expect("scanner");
        let sel = Selection {
            now_ms: clock.now_ms(),
            expiring_within_ms: Some(30 * 86_400_000),
            app: None,
            key_id: None,
            tenant: None,
            min_confidence: Confidence::High,
            approve_medium: false,
            tenant_max_days: BTreeMap::new(),
            tenant_ids: rekey::fleet::rotate::tenant_ids(&config),
        };
        let (_, plans) = rt
            .block_on(rekey::fleet::rotate::discover_and_plan(
                &scanner,
                &fleet,
                sel,
                clock.as_ref(),
            ))
            .expect("plans");
        assert_eq!(
            plans.rotations.len(),
            APPS as usize,
            "{:?}",
            plans.refused.first()
        );
        let throttled_before: u64 = VAULTS.iter().map(|v| fake.throttled_count(v)).sum();
        let rss_before = peak_rss_kib();
        let from = fake.requests().len();
        let t0 = clock.now_ms();
        let phases: Vec<Phase> = rt.block_on(async {
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            for r in plans.rotations {
                let (runner, slots) = (runner.clone(), slots.clone());
                tasks.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let id = uuid::Uuid::now_v7().to_string();
                    runner
                        .request(r.plan, Trigger::Bulk, "bench", id.clone())
                        .await
                        .expect("request");
                    drive_to_end(&runner, &id).await
                });
            }
            let mut phases = Vec::new();
            while let Some(p) = tasks.join_next().await {
                phases.push(p.expect("task"));
            }
            phases
        });
        let wall_ms = clock.now_ms() - t0;
        let failed = phases.iter().filter(|p| **p != Phase::Completed).count();
        let sent = requests(&fake, from);
        let bound = bound_ms(&sent);
        let throttled =
            VAULTS.iter().map(|v| fake.throttled_count(v)).sum::<u64>() - throttled_before;
        let rss = match (rss_before, peak_rss_kib()) {
            (Some(a), Some(b)) => format!(
                "peak RSS grew {} KiB ({:.1} KiB per in-flight rotation, fakes included)",
                b.saturating_sub(a),
                b.saturating_sub(a) as f64 / IN_FLIGHT as f64
            ),
            _ => "peak RSS unknown".to_owned(),
        };
        println!(
            "fleet_rotation: {wall_ms} ms for {APPS} rotations; failed {failed}; requests {sent:?}; 429s served {throttled}; vault budget bound {bound:.0} ms; wall / bound {:.2}; {rss}",
            wall_ms as f64 / bound.max(1.0)
        );
    }
}
