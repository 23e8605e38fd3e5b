//! Fleet discovery against the fake Azure services over loopback HTTP: 1,000 applications
//! (each with a password, every tenth with a certificate too), three vaults (one
//! configured by URL, two found by ARM) holding 3,000 secrets, read the way
//! `rekey discover` reads them (config, scanner, matching), with rekey's budgets at their
//! real limits (Graph's `keyCredentials` reads: 95% of 150 a minute per tenant; Key
//! Vault: 1,900 per 10 s per vault) and the fakes enforcing the services' own (150 a
//! minute; 2,000 per 10 s per vault).
//!
//! Each iteration prints the wall time, the requests sent per service, the 429s served,
//! and the bound the budgets allow: for each budget, (requests − 1) × its spacing, the
//! largest of them (they run at once). Goal: wall time ≤ 1.2 × bound.
//!
//! Run: `cargo bench --bench fleet_discovery`.

#[path = "../tests/fake_azure/mod.rs"]
mod fake_azure;
#[path = "support/fake_requests.rs"]
mod fake_requests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rekey::config::Config;
use rekey::fleet::discover;
use rekey::fleet::inventory::{GRAPH_KEY_CREDENTIALS_LIMIT, GRAPH_WINDOW_MS};
use rekey::journal::{Clock, SystemClock};
use rekey::providers::azure::budget::{
    DEFAULT_REQUESTS_PER_10S, KEY_VAULT_LIMIT, KEY_VAULT_WINDOW_MS, SAFETY_PERCENT,
};
use tokio::runtime::Runtime;

use fake_azure::{App, FakeAzure, KeyCred, PasswordCred, SecretMeta};
use fake_requests::per_service as requests;

const APPS: u32 = 1_000;
const SECRETS: u32 = 3_000;
const SUB: &str = "00000000-aaaa-4bbb-8ccc-00000000be4c";
const READER: &str = "5e7c0000-0000-4000-8000-0000000be4c1";
const SECRET: &str = "bench-reader-secret";
const VAULTS: [&str; 3] = ["kv-one", "kv-two", "kv-three"];

fn id(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

async fn seeded() -> FakeAzure {
    let fake = FakeAzure::start_with_clock(Arc::new(SystemClock)).await;
    fake.register_client(FakeAzure::TENANT, READER, SECRET);
    let start: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let end: jiff::Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
    for n in 0..APPS {
        let mut app = App {
            object_id: id(1, n),
            app_id: id(2, n),
            principal_id: id(5, n),
            display_name: format!("svc-{n}"),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &id(3, n),
                None,
                &format!("p{n}-secret"),
                start,
                end,
            )],
            keys: Vec::new(),
        };
        if n % 10 == 0 {
            app.keys.push(KeyCred {
                key_id: id(4, n),
                display_name: None,
                custom_key_identifier: vec![n as u8; 20],
                start,
                end,
            });
        }
        fake.graph_insert_app(app);
    }
    for s in 0..SECRETS {
        let vault = VAULTS[s as usize % 3];
        let n = s % APPS;
        let tags = if s < APPS {
            [("CredentialId".to_owned(), id(3, n))].into()
        } else {
            BTreeMap::new()
        };
        fake.kv_seed_item(
            vault,
            &format!("svc-{n}-secret-{s}"),
            "value",
            SecretMeta {
                tags,
                ..SecretMeta::default()
            },
        );
    }
    fake.arm_vault_seed(SUB, "rg", "kv-two");
    fake.arm_vault_seed(SUB, "rg", "kv-three");
    for v in VAULTS {
        fake.set_vault_rate_limit(v, KEY_VAULT_LIMIT, KEY_VAULT_WINDOW_MS);
    }
    fake.set_graph_key_credentials_rate_limit(GRAPH_KEY_CREDENTIALS_LIMIT, GRAPH_WINDOW_MS);
    fake
}

fn config(fake: &FakeAzure) -> Config {
    let text = format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"

[credentials.reader]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{READER}"
client_secret_env = "BENCH_READER_SECRET"

[fleet]
verify_challenge_resource = false

[fleet.tenants.bench]
credential = "reader"
vaults = ["{vault}"]
subscriptions = ["{SUB}"]
"#,
        authority = fake.authority_url(),
        arm = fake.arm_url(),
        graph = fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vault = fake.keyvault_url("kv-one"),
    );
    Config::parse(Path::new("/tmp/bench-rekey.toml"), &text).expect("bench config")
}

/// The least time rekey's budgets allow for `sent`: per budget, (n − 1) spacings.
fn bound_ms(sent: &BTreeMap<String, usize>) -> f64 {
    let graph_limit = f64::from(GRAPH_KEY_CREDENTIALS_LIMIT * SAFETY_PERCENT / 100);
    let graph_spacing = GRAPH_WINDOW_MS as f64 / graph_limit;
    let kv_spacing = KEY_VAULT_WINDOW_MS as f64 / f64::from(DEFAULT_REQUESTS_PER_10S);
    let mut bound: f64 = 0.0;
    for (service, n) in sent {
        let n = n.saturating_sub(1) as f64;
        if service == "graph" {
            bound = bound.max(n * graph_spacing);
        } else if service.starts_with("keyvault") {
            bound = bound.max(n * kv_spacing);
        }
    }
    bound
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let fake = rt.block_on(seeded());
    let config = config(&fake);
    let fleet = config.fleet.clone().expect("[fleet]");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let env = |v: &str| (v == "BENCH_READER_SECRET").then(|| SECRET.to_owned());
    let mut group = c.benchmark_group("fleet_discovery");
    // Few runs: each is a fresh process's worth of budgets, and Graph's window (a
    // minute) must not fill up across runs, as it would not between real ones.
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("1000_apps_3_vaults_3000_secrets", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let from = fake.requests().len();
                let throttled_kv: u64 = VAULTS.iter().map(|v| fake.throttled_count(v)).sum();
                let throttled_graph = fake.graph_throttled_count();
                let scanner = discover::scanner(&config, None, clock.clone(), &env).expect("scanner");
                let t0 = clock.now_ms();
                let d = rt.block_on(discover::discover(&scanner, &fleet, None, clock.as_ref()));
                let wall_ms = clock.now_ms() - t0;
                total += Duration::from_millis(u64::try_from(wall_ms).unwrap_or(0));
                assert!(!d.partial(), "{:?}", d.matched.unreachable);
                assert_eq!(d.matched.credentials.len(), (APPS + APPS / 10) as usize);
                assert_eq!(d.matched.items.len(), SECRETS as usize);
                let sent = requests(&fake, from);
                let bound = bound_ms(&sent);
                let throttled = VAULTS.iter().map(|v| fake.throttled_count(v)).sum::<u64>() - throttled_kv
                    + fake.graph_throttled_count() - throttled_graph;
                println!(
                    "fleet_discovery: {wall_ms} ms; requests {sent:?} ({} in all); 429s served {throttled}; budget bound {bound:.0} ms; wall / bound {:.2}",
                    sent.values().sum::<usize>(),
                    wall_ms as f64 / bound.max(1.0)
                );
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
