//! `rekey rotate --fleet` end to end: the real binary against the fakes over HTTP on
//! 127.0.0.1, a generated tenant of 240 applications in two vaults. Exactly the HIGH,
//! due, not excluded credentials rotate (one rotation per app); every linked item gets one
//! new version with the three tags, its other tags and content type kept; after the grace
//! period (`rekey resume --wait`) each old hand-made password is removed exactly once;
//! MEDIUM, LOW, partial and unlinked credentials are refused with reasons; and the fakes'
//! effect logs show nothing else changed. Bad input changes nothing; secret values reach
//! no journal, log or output.

use std::collections::{BTreeMap, BTreeSet};

use rekey::journal::{Clock as _, SystemClock};
use serde_json::Value;

use super::{READER_ID, READER_SECRET, Run, SECRET_VAR, config_text, journal_bytes};
use crate::fake_azure::{App, Effect, FakeAzure, PasswordCred, SecretMeta};

const APPS: u32 = 240;
const DAY_S: i64 = 86_400;

fn id(prefix: &str, n: u32) -> String {
    format!("{prefix}000000-0000-4000-8000-{n:012x}")
}

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// What the generator put where.
#[derive(Default)]
struct Tenant {
    /// Apps that must rotate: object id → (old key id, linked items `(vault, item)`).
    rotate: BTreeMap<String, (String, Vec<(String, String)>)>,
    /// Key ids that must be refused, with a word their reason must contain.
    refused: BTreeMap<String, &'static str>,
    /// Items that must not change.
    untouched: Vec<(String, String)>,
}

/// App `n` falls in category `n % 8`: 0-2 HIGH and due (1 has a second copy with rekey's
/// own tags), 3 HIGH but not due, 4 MEDIUM, 5 LOW, 6 partial (a HIGH and a LOW copy),
/// 7 excluded by app id. Every tenth app also has a due password in no vault (which makes
/// a copy linked by the app alone ambiguous between its two passwords).
fn seed(fake: &FakeAzure, now_s: i64) -> Tenant {
    let mut t = Tenant::default();
    for n in 0..APPS {
        let name = format!("app-{n:04}");
        let (object_id, app_id) = (id("0b", n), id("0a", n));
        let (key1, key2) = (id("0c", n), id("0d", n));
        let text1 = format!("x{n:03}8Q~old-hand-made-{n}");
        let category = n % 8;
        let due_days = if category == 3 {
            120
        } else {
            i64::from(n % 25) + 1
        };
        let mut passwords = vec![PasswordCred::new(
            &key1,
            Some("made by hand"),
            &text1,
            at(now_s - 300 * DAY_S),
            at(now_s + due_days * DAY_S),
        )];
        if n % 10 == 0 {
            passwords.push(PasswordCred::new(
                &key2,
                Some("spare"),
                &format!("y{n:03}8Q~spare-{n}"),
                at(now_s - 10 * DAY_S),
                at(now_s + 5 * DAY_S),
            ));
            // Categories 4 and 6 link a copy by the app alone: both passwords fit it.
            let why = if matches!(category, 4 | 6) {
                "ambiguous"
            } else {
                "not in any scanned vault"
            };
            t.refused.insert(key2.clone(), why);
        }
        fake.graph_insert_app(App {
            object_id: object_id.clone(),
            app_id: app_id.clone(),
            principal_id: id("0f", n),
            display_name: name.clone(),
            tags: Vec::new(),
            passwords,
            keys: Vec::new(),
        });
        let main = format!("{name}-client-secret");
        let high = SecretMeta {
            tags: tags(&[
                ("CredentialId", &key1),
                ("ProviderAddress", &object_id),
                ("owner", "team-a"),
            ]),
            content_type: Some("text/plain".into()),
            ..SecretMeta::default()
        };
        match category {
            0..=3 | 7 => {
                fake.kv_seed_item("kv-alpha", &main, &text1, high);
                let mut items = vec![("kv-alpha".to_owned(), main.clone())];
                if category == 1 {
                    let copy = format!("{name}-copy");
                    fake.kv_seed_item(
                        "kv-beta",
                        &copy,
                        &text1,
                        SecretMeta {
                            tags: tags(&[("rekey-app-id", &app_id), ("rekey-key-id", &key1)]),
                            ..SecretMeta::default()
                        },
                    );
                    items.push(("kv-beta".to_owned(), copy));
                }
                match category {
                    3 | 7 => t.untouched.extend(items),
                    _ => {
                        t.rotate.insert(object_id.clone(), (key1.clone(), items));
                    }
                }
            }
            4 => {
                fake.kv_seed_item(
                    "kv-alpha",
                    &main,
                    &text1,
                    SecretMeta {
                        tags: tags(&[("AppId", &app_id)]),
                        ..SecretMeta::default()
                    },
                );
                // With a second password, the app-id tag fits both equally: ambiguous.
                let why = if n % 10 == 0 { "ambiguous" } else { "MEDIUM" };
                t.refused.insert(key1.clone(), why);
                t.untouched.push(("kv-alpha".into(), main));
            }
            5 => {
                fake.kv_seed_item("kv-alpha", &main, &text1, SecretMeta::default());
                t.refused.insert(key1.clone(), "LOW");
                t.untouched.push(("kv-alpha".into(), main));
            }
            _ => {
                fake.kv_seed_item("kv-alpha", &main, &text1, high);
                let weak = format!("{name}-secret");
                fake.kv_seed_item("kv-beta", &weak, &text1, SecretMeta::default());
                let why = if n % 10 == 0 {
                    "ambiguous"
                } else {
                    "partial coverage"
                };
                t.refused.insert(key1.clone(), why);
                t.untouched.push(("kv-alpha".into(), main));
                t.untouched.push(("kv-beta".into(), weak));
            }
        }
        // Something unrelated in each vault.
        if n % 20 == 0 {
            let other = format!("settings-{n}");
            fake.kv_seed_item("kv-beta", &other, "not a credential", SecretMeta::default());
            t.untouched.push(("kv-beta".into(), other));
        }
    }
    t
}

/// A config over the fake's two vaults: apps whose client id ends in 7 or f (category 7)
/// excluded, a two-second grace.
fn write_config(fake: &FakeAzure, dir: &std::path::Path) {
    let extra = "[fleet.exclude]\napp_ids = [\"*7\", \"*f\"]\n\n[fleet.rotation]\ngrace = \"2s\"\nmax_concurrent = 8\nmax_concurrent_per_tenant = 4\n";
    let text = config_text(fake, &["kv-alpha", "kv-beta"], &[], extra);
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
}

/// Runs `rekey ARGS` in `dir` with the reader's secret and trace logs.
async fn rekey(dir: &std::path::Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .arg("--config")
        .arg(dir.join("rekey.toml"))
        .current_dir(dir)
        .env("RUST_LOG", "trace")
        .env_remove("REKEY_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env(SECRET_VAR, READER_SECRET)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run rekey");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn tenant() -> (FakeAzure, Tenant, tempfile::TempDir) {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    let t = seed(&fake, SystemClock.now_ms() / 1000);
    let dir = tempfile::tempdir().unwrap();
    write_config(&fake, dir.path());
    (fake, t, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_fleet_rotates_exactly_the_eligible_credentials_of_a_large_tenant() {
    let (fake, t, dir) = tenant().await;
    let dir = dir.path();
    assert!(t.rotate.len() >= 80, "the tenant has enough to rotate");

    // The review changes nothing, not even the journal.
    let review = rekey(
        dir,
        &["rotate", "--fleet", "--expiring-within", "30d", "--dry-run"],
    )
    .await;
    assert_eq!(review.code, 0, "{}", review.stderr);
    assert!(
        review.stdout.starts_with("dry run: nothing changed\n"),
        "{}",
        review.stdout
    );
    assert_eq!(
        review
            .stdout
            .lines()
            .filter(|l| l.starts_with("would rotate "))
            .count(),
        t.rotate.len()
    );
    assert!(fake.effects().is_empty());
    assert!(
        journal_bytes(dir).is_empty(),
        "a dry run creates no journal"
    );

    let run = rekey(
        dir,
        &[
            "rotate",
            "--fleet",
            "--expiring-within",
            "30d",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(doc["counts"]["planned"], t.rotate.len());
    assert_eq!(
        doc["counts"]["rotated"],
        t.rotate.len(),
        "{}",
        doc["rotations"]
    );
    let rotated: BTreeSet<String> = doc["rotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["object_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rotated, t.rotate.keys().cloned().collect());
    // Every refusal is there, with its reason; nothing else is refused.
    let refused: BTreeMap<String, String> = doc["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key_id"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refused.keys().collect::<BTreeSet<_>>(),
        t.refused.keys().collect::<BTreeSet<_>>()
    );
    for (key, word) in &t.refused {
        assert!(
            refused[key].contains(word),
            "{key}: {} lacks {word}",
            refused[key]
        );
    }

    // Before the grace ends: one new password per app, one new version per linked item
    // with the three tags and the item's own kept; nothing removed, nothing else.
    let effects = fake.effects();
    let mut added = BTreeMap::new();
    for e in &effects {
        match e {
            Effect::GraphPasswordAdded {
                object_id, key_id, ..
            } => assert!(added.insert(object_id.clone(), key_id.clone()).is_none()),
            Effect::KvVersionCreated { .. } => {}
            other => panic!("unexpected effect before the grace period: {other:?}"),
        }
    }
    assert_eq!(
        added.keys().collect::<BTreeSet<_>>(),
        t.rotate.keys().collect()
    );
    let mut written = 0;
    for (object_id, (_, items)) in &t.rotate {
        for (vault, item) in items {
            let versions = fake.kv_versions(vault, item);
            assert_eq!(versions.len(), 2, "{vault}/{item}: exactly one new version");
            let (old, new) = (&versions[0], &versions[1]);
            assert_eq!(new.tags["rekey-key-id"], added[object_id], "{vault}/{item}");
            assert_eq!(
                new.tags["rekey-app-id"],
                id("0a", u32::from_str_radix(&object_id[24..], 16).unwrap())
            );
            assert!(new.tags.contains_key("rekey-rotation"));
            assert_eq!(new.content_type, old.content_type);
            for (k, v) in &old.tags {
                if !["CredentialId", "rekey-key-id"].contains(&k.as_str()) {
                    assert_eq!(&new.tags[k], v, "{vault}/{item} keeps {k}");
                }
            }
            written += 1;
        }
    }
    assert_eq!(effects.len(), added.len() + written);
    for (vault, item) in &t.untouched {
        assert_eq!(
            fake.kv_versions(vault, item).len(),
            1,
            "{vault}/{item} untouched"
        );
    }

    // After the grace period: each old password removed exactly once, the superseded
    // versions disabled, and nothing else.
    let resumed = rekey(dir, &["resume", "--wait", "--json"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let effects = fake.effects();
    let removed: Vec<(String, String)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::GraphPasswordRemoved { object_id, key_id } => {
                Some((object_id.clone(), key_id.clone()))
            }
            _ => None,
        })
        .collect();
    let want: Vec<(String, String)> = t
        .rotate
        .iter()
        .map(|(o, (k, _))| (o.clone(), k.clone()))
        .collect();
    let mut got = removed.clone();
    got.sort();
    assert_eq!(got, want, "each old password removed exactly once");
    let disabled = effects
        .iter()
        .filter(|e| matches!(e, Effect::KvVersionUpdated { enabled: false, .. }))
        .count();
    assert_eq!(
        disabled, written,
        "one superseded version disabled per item"
    );
    assert_eq!(effects.len(), added.len() + 2 * written + removed.len());
    for (object_id, (old, _)) in &t.rotate {
        let keys: Vec<String> = fake
            .app_passwords(object_id)
            .into_iter()
            .map(|p| p.key_id)
            .collect();
        assert!(!keys.contains(old) && keys.contains(&added[object_id]));
    }
    // Unlinked passwords stay.
    for key in t.refused.keys().filter(|k| k.starts_with("0d")) {
        let n = u32::from_str_radix(&key[24..], 16).unwrap();
        assert!(
            fake.app_passwords(&id("0b", n))
                .iter()
                .any(|p| &p.key_id == key)
        );
    }

    // Hygiene: no generated or seeded password text in the journal or any output.
    let journal = journal_bytes(dir);
    assert!(!journal.is_empty());
    let outputs = [&review, &run, &resumed];
    for object_id in t.rotate.keys() {
        for p in fake.app_passwords(object_id) {
            let text = p.secret_text.as_bytes();
            assert!(
                !journal.windows(text.len()).any(|w| w == text),
                "a password in the journal"
            );
            for o in outputs {
                assert!(!o.stdout.contains(&p.secret_text) && !o.stderr.contains(&p.secret_text));
            }
        }
    }
    for o in outputs {
        assert!(!o.stderr.contains("old-hand-made") && !o.stdout.contains("old-hand-made"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fleet_input_explains_itself_and_changes_nothing() {
    let (fake, _, dir) = tenant().await;
    let dir = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (
            &["rotate", "--fleet", "--app", "no-such-app", "--yes"],
            "no application matches --app \"no-such-app\"",
        ),
        (
            &[
                "rotate",
                "--fleet",
                "--app",
                "app-0001",
                "--key-id",
                "0c000000-0000-4000-8000-000000000002",
                "--yes",
            ],
            "no credential 0c000000-0000-4000-8000-000000000002 on app-0001",
        ),
        (
            &["rotate", "--fleet", "--min-confidence", "hihg", "--yes"],
            "--min-confidence \"hihg\": not a confidence; write \"high\" (the default) or \"medium\"",
        ),
        (
            &["rotate", "--fleet", "--min-confidence", "low", "--yes"],
            "low, none and ambiguous links never rotate",
        ),
        (
            &["rotate", "--fleet", "--tenant", "fabrikam", "--yes"],
            "--tenant \"fabrikam\" is not a tenant of [fleet.tenants]",
        ),
        (
            &["rotate", "--fleet", "--expiring-within", "soon", "--yes"],
            "--expiring-within \"soon\"",
        ),
        (
            &["rotate", "--fleet"],
            "stdin is not a terminal; review with --dry-run, then pass --yes",
        ),
    ];
    for (args, want) in cases {
        let run = rekey(dir, args).await;
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
        assert!(fake.effects().is_empty(), "{args:?} changed something");
        assert!(journal_bytes(dir).is_empty(), "{args:?} created a journal");
    }
    // Usage errors are clap's: --key-id needs --app, --wait-max is not for --fleet.
    let run = rekey(dir, &["rotate", "--fleet", "--key-id", "k", "--yes"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(fake.effects().is_empty());
}

/// A tenant whose policy allows passwords 30 days at most gets 30-day passwords (Graph
/// would refuse the configured 180, and the rotation would be undone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_passwords_live_no_longer_than_the_tenant_allows() {
    let (fake, t, dir) = tenant().await;
    fake.set_password_lifetime_days(Some(30));
    let before_s = SystemClock.now_ms() / 1000;
    let run = rekey(
        dir.path(),
        &["rotate", "--fleet", "--app", "app-0001", "--yes", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["counts"]["rotated"], 1, "{}", run.stdout);
    let object_id = id("0b", 1);
    let (old, _) = &t.rotate[&object_id];
    let passwords = fake.app_passwords(&object_id);
    let new = passwords.iter().find(|p| &p.key_id != old).unwrap();
    let lifetime_s = new.end.as_second() - new.start.as_second();
    assert!(
        lifetime_s <= 30 * DAY_S && lifetime_s > 29 * DAY_S,
        "{lifetime_s}"
    );
    assert!(new.end.as_second() <= before_s + 31 * DAY_S);
}

/// The dry run lists the App Service settings a rotation would refresh, by site and
/// setting and the item each references (the JSON rows too), and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_lists_the_app_service_settings_a_rotation_refreshes() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    super::rotate::seed_orders(&fake);
    let dir = tempfile::tempdir().unwrap();
    super::rotate::with_sites(&fake, dir.path(), "", None);
    let review = rekey(dir.path(), &["rotate", "--fleet", "--dry-run"]).await;
    assert_eq!(review.code, 0, "{}", review.stderr);
    let site = "/subscriptions/5a000000-0000-4000-8000-000000000001/resourceGroups/rg-web/providers/Microsoft.Web/sites/orders-web";
    let listed: Vec<&str> = review
        .stdout
        .lines()
        .filter(|l| l.starts_with("  refreshes App Service setting "))
        .collect();
    assert_eq!(
        listed,
        [
            format!("  refreshes App Service setting {site} ORDERS_COPY (kv-beta/orders-copy)"),
            format!(
                "  refreshes App Service setting {site} ORDERS_SECRET (kv-alpha/orders-client-secret)"
            ),
        ],
        "{}",
        review.stdout
    );
    let json = rekey(dir.path(), &["rotate", "--fleet", "--dry-run", "--json"]).await;
    let doc: Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(
        doc["rotations"][0]["settings"].as_array().map(Vec::len),
        Some(2),
        "{doc}"
    );
    assert!(fake.effects().is_empty());
    assert!(journal_bytes(dir.path()).is_empty());
}
