//! Fleet matching in memory: 10,000 credentials (5,000 apps with two passwords each)
//! against 30,000 vault items (each app's client secret, tagged by key id, by app id or
//! not at all; some copies; and 24,000 unrelated items sharing name tokens such as `svc`,
//! `client`, `secret` and the apps' words). Goal: one match ≤ 1 s, through the candidate
//! pruning of DESIGN §7 (tag, thumbprint and rarest-name-token indexes).
//!
//! Run: `cargo bench --bench fleet_matching`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rekey::fleet::matching::{Confidence, Hints, match_inventory};
use rekey::fleet::model::{AppCredential, CredentialKind, Inventory, ItemKind, Origin, VaultItem};
use rekey::fleet::rules::Rules;

const APPS: u32 = 5_000;
const ITEMS: usize = 30_000;
const WORDS: &[&str] = &[
    "orders",
    "billing",
    "search",
    "ledger",
    "payments",
    "portal",
    "gateway",
    "inventory",
    "reports",
    "auth",
    "notify",
    "catalog",
    "pricing",
    "shipping",
    "returns",
    "audit",
    "export",
    "import",
    "sync",
    "batch",
    "stream",
    "events",
    "profile",
    "account",
    "session",
    "token",
    "media",
    "upload",
    "archive",
    "backup",
    "metrics",
    "alerts",
    "config",
    "cache",
    "queue",
    "worker",
    "scheduler",
    "mailer",
    "sms",
    "push",
    "chat",
    "support",
    "crm",
    "erp",
    "hr",
    "payroll",
    "finance",
    "tax",
    "legal",
    "risk",
];

fn id(prefix: u32, n: u32) -> String {
    format!("{prefix:08x}-0000-4000-8000-{n:012x}")
}

fn item(vault: &str, name: String, tags: &[(&str, &str)]) -> VaultItem {
    VaultItem {
        tenant: "contoso".into(),
        vault: vault.into(),
        name,
        kind: ItemKind::Secret,
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        content_type: None,
        enabled: true,
        exp_ms: Some(1_751_328_000_000),
        created_ms: None,
        x5t: None,
        managed: false,
    }
}

fn fleet() -> Inventory {
    let mut inv = Inventory::default();
    for n in 0..APPS {
        let word = WORDS[n as usize % WORDS.len()];
        let name = format!("svc-{word}-{n}");
        for k in 0..2 {
            inv.credentials.push(AppCredential {
                tenant: "contoso".into(),
                origin: Origin::Application,
                object_id: id(1, n),
                app_id: id(2, n),
                app_name: name.clone(),
                key_id: id(3 + k, n),
                kind: CredentialKind::Password,
                display_name: None,
                start_ms: Some(1_735_689_600_000),
                end_ms: Some(1_751_328_000_000 + i64::from(k) * 86_400_000 * 30),
                hint: None,
                thumbprint: None,
            });
        }
        let vault = ["kv-a", "kv-b", "kv-c"][n as usize % 3];
        let (key, app) = (id(3, n), id(2, n));
        let tags: Vec<(&str, &str)> = match n % 3 {
            0 => vec![("CredentialId", key.as_str())],
            1 => vec![("AppId", app.as_str())],
            _ => Vec::new(),
        };
        inv.items
            .push(item(vault, format!("{name}-client-secret"), &tags));
        if n % 5 == 0 {
            inv.items
                .push(item("kv-shared", format!("{name}-secret"), &[]));
        }
    }
    let mut m = 0u32;
    while inv.items.len() < ITEMS {
        let word = WORDS[(m as usize * 7) % WORDS.len()];
        let name = match m % 4 {
            0 => format!("cfg-{word}-{m}"),
            1 => format!("db-{word}-password-{m}"),
            2 => format!("svc-{word}-client-id-{m}"),
            _ => format!("{word}-api-key-{m}"),
        };
        let env = ["prod", "dev", "test"][m as usize % 3];
        inv.items.push(item(
            ["kv-a", "kv-b", "kv-c"][m as usize % 3],
            name,
            &[("env", env), ("owner", word)],
        ));
        m += 1;
    }
    inv
}

fn bench(c: &mut Criterion) {
    let inv = fleet();
    let rules = Rules::default();
    let hints = Hints::new();
    let once = match_inventory(&inv, &rules, &hints);
    let high = once
        .pairs
        .iter()
        .filter(|p| p.confidence == Confidence::High)
        .count();
    println!(
        "fleet_matching: {} credentials x {} items -> {} scored pairs, {} HIGH links",
        inv.credentials.len(),
        inv.items.len(),
        once.pairs.len(),
        high
    );
    let mut group = c.benchmark_group("fleet_matching");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("10000_credentials_x_30000_items", |b| {
        b.iter(|| black_box(match_inventory(black_box(&inv), &rules, &hints)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
