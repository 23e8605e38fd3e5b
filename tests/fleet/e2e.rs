//! `rekey discover` end to end over HTTP: a generated tenant of 600 applications (some
//! with two passwords, some with certificates), a service principal and three vaults (one
//! configured by URL, two found by ARM, one of those behind a firewall), discovered by the
//! real binary; every credential's links are asserted from the generator's rules, then the
//! journal stream and the `--expiring-within` filter.

use std::collections::{BTreeMap, BTreeSet};

use rekey::fleet::journal::{DiscoveryEvent, stream_id};
use rekey::journal::{
    Clock as _, JournalRead as _, JournalScan as _, SqliteJournal, StreamFilter, SystemClock,
};
use serde_json::Value;

use super::{READER_ID, READER_SECRET, SUB, config_text, discover};
use crate::fake_azure::{
    App, FakeAzure, KeyCred, KvCert, PasswordCred, SecretMeta, ServicePrincipal,
};

const APPS: u32 = 600;
const DAY_S: i64 = 86_400;

fn id(prefix: &str, n: u32) -> String {
    format!("{prefix}000000-0000-4000-8000-{n:012x}")
}

/// App `n`'s first password's hint: three characters from its number.
fn hint(n: u32) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let c = |k: u32| char::from(CHARS[(k % 62) as usize]);
    format!("{}{}{}", c(n / 3844), c(n / 62), c(n))
}

fn thumbprint(n: u32) -> [u8; 20] {
    core::array::from_fn(|i| (n as u8).wrapping_add(i as u8).wrapping_mul(31) ^ (n >> 8) as u8)
}

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

/// What each credential's links should be: `(vault, item, confidence, evidence or veto
/// that must be there)`, non-vetoed ones only; and the vetoed rows that must exist.
#[derive(Default)]
struct Expected {
    links: BTreeMap<String, Vec<(String, String, &'static str, &'static str)>>,
    vetoed: Vec<(String, String, &'static str)>,
    /// Key id → days until it ends.
    ends_in_days: BTreeMap<String, i64>,
}

impl Expected {
    fn link(
        &mut self,
        key: &str,
        vault: &str,
        item: &str,
        confidence: &'static str,
        why: &'static str,
    ) {
        self.links.entry(key.to_owned()).or_default().push((
            vault.to_owned(),
            item.to_owned(),
            confidence,
            why,
        ));
    }
}

/// Seeds the tenant; returns what discovery must find.
fn seed(fake: &FakeAzure, now_s: i64) -> Expected {
    let mut want = Expected::default();
    fake.arm_vault_seed(SUB, "rg-apps", "kv-beta");
    fake.arm_vault_seed(SUB, "rg-apps", "kv-gamma");
    fake.kv_set_firewall("kv-gamma", true);
    for n in 0..APPS {
        let name = format!("svc-{n:04}");
        let (object_id, app_id) = (id("0b", n), id("0a", n));
        let (key1, key2, cert_key) = (id("0c", n), id("0d", n), id("0e", n));
        let text1 = format!("{}8Q~{n}-first-value", hint(n));
        let end1 = now_s + (i64::from(n % 90) + 1) * DAY_S;
        let start = now_s - 100 * DAY_S;
        let mut app = App {
            object_id: object_id.clone(),
            app_id: app_id.clone(),
            principal_id: id("0f", n),
            display_name: name.clone(),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &key1,
                Some("prod"),
                &text1,
                at(start),
                at(end1),
            )],
            keys: Vec::new(),
        };
        want.ends_in_days
            .insert(key1.clone(), i64::from(n % 90) + 1);
        if n % 10 == 0 {
            let text2 = format!("~~{n}8Q~second-value");
            app.passwords.push(PasswordCred::new(
                &key2,
                Some("next"),
                &text2,
                at(start),
                at(now_s + 200 * DAY_S),
            ));
            want.ends_in_days.insert(key2.clone(), 200);
            want.links.entry(key2.clone()).or_default();
        }
        if n % 7 == 0 {
            let raw = thumbprint(n);
            app.keys.push(KeyCred {
                key_id: cert_key.clone(),
                display_name: Some(format!("CN={name}")),
                // Both forms Graph shows: the 20 bytes, or the 40 hex characters.
                custom_key_identifier: if n % 2 == 0 {
                    raw.to_vec()
                } else {
                    hex::encode_upper(raw).into_bytes()
                },
                start: at(start),
                end: at(now_s + 365 * DAY_S),
            });
            want.ends_in_days.insert(cert_key.clone(), 365);
            fake.kv_seed_certificate(
                "kv-alpha",
                KvCert {
                    name: format!("{name}-tls"),
                    thumbprint: raw,
                    tags: BTreeMap::new(),
                    enabled: true,
                    nbf: None,
                    exp: Some(now_s + 365 * DAY_S),
                    created: start,
                    updated: start,
                },
            );
            want.link(&cert_key, "kv-alpha", &format!("{name}-tls"), "high", "x5t");
        }
        fake.graph_insert_app(app);
        let secret_name = format!("{name}-client-secret");
        let tags = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        match n % 4 {
            0 => {
                // Azure's rotation samples' tags.
                fake.kv_seed_item(
                    "kv-alpha",
                    &secret_name,
                    &text1,
                    SecretMeta {
                        tags: tags(&[("CredentialId", &key1), ("ProviderAddress", &object_id)]),
                        ..SecretMeta::default()
                    },
                );
                want.link(
                    &key1,
                    "kv-alpha",
                    &secret_name,
                    "high",
                    "tag-key-id(CredentialId)",
                );
                if n % 10 == 0 {
                    want.vetoed.push((
                        key2.clone(),
                        secret_name.clone(),
                        "tag-other-key(CredentialId)",
                    ));
                }
            }
            1 => {
                // rekey's own tags from an earlier rotation.
                fake.kv_seed_item(
                    "kv-beta",
                    &secret_name,
                    &text1,
                    SecretMeta {
                        tags: tags(&[("rekey-app-id", &app_id), ("rekey-key-id", &key1)]),
                        ..SecretMeta::default()
                    },
                );
                want.link(&key1, "kv-beta", &secret_name, "high", "rekey-tags");
            }
            2 => {
                // Untagged: the name, the expiry and (read) the hint.
                let mismatch = n % 20 == 6;
                let value = if mismatch {
                    "zz-not-this-password".to_owned()
                } else {
                    text1.clone()
                };
                fake.kv_seed_item(
                    "kv-beta",
                    &secret_name,
                    &value,
                    SecretMeta {
                        exp: Some(end1 - 3_600),
                        content_type: Some("client-secret".into()),
                        ..SecretMeta::default()
                    },
                );
                if mismatch {
                    want.vetoed
                        .push((key1.clone(), secret_name.clone(), "hint-mismatch"));
                    want.links.entry(key1.clone()).or_default();
                } else {
                    want.link(&key1, "kv-beta", &secret_name, "high", "hint-match");
                }
                if n % 10 == 0 {
                    want.vetoed
                        .push((key2.clone(), secret_name.clone(), "hint-mismatch"));
                }
            }
            _ => {
                // Only in the firewalled vault, or nowhere.
                if n % 8 == 3 {
                    fake.kv_seed_item("kv-gamma", &secret_name, &text1, SecretMeta::default());
                }
                want.links.entry(key1.clone()).or_default();
            }
        }
    }
    // One app, two passwords, two secrets tagged only by its client id: ambiguous.
    let (object_id, app_id) = (id("1b", 1), id("1a", 1));
    let keys = [id("1c", 1), id("1c", 2)];
    fake.graph_insert_app(App {
        object_id,
        app_id: app_id.clone(),
        principal_id: id("1f", 1),
        display_name: "billing".into(),
        tags: Vec::new(),
        passwords: keys
            .iter()
            .map(|k| {
                PasswordCred::new(
                    k,
                    None,
                    &format!("Bil{k}"),
                    at(now_s - DAY_S),
                    at(now_s + 400 * DAY_S),
                )
            })
            .collect(),
        keys: Vec::new(),
    });
    for item in ["billing-blue", "billing-green"] {
        fake.kv_seed_item(
            "kv-alpha",
            item,
            "Bil-value",
            SecretMeta {
                tags: [("AppId".to_owned(), app_id.clone())].into(),
                ..SecretMeta::default()
            },
        );
        for k in &keys {
            want.link(k, "kv-alpha", item, "ambiguous", "tag-app-id(AppId)");
        }
    }
    for k in &keys {
        want.ends_in_days.insert(k.clone(), 400);
    }
    // A service principal holding its own password, in a vault: reported.
    let sp_key = id("2c", 1);
    fake.graph_insert_principal(ServicePrincipal {
        object_id: id("2b", 1),
        app_id: id("2a", 1),
        display_name: "legacy-daemon".into(),
        principal_type: "Application".into(),
        passwords: vec![PasswordCred::new(
            &sp_key,
            None,
            "Leg-daemon-secret",
            at(now_s - DAY_S),
            at(now_s + 400 * DAY_S),
        )],
        keys: Vec::new(),
    });
    want.ends_in_days.insert(sp_key.clone(), 400);
    fake.kv_seed_item(
        "kv-alpha",
        "legacy-daemon-client-secret",
        "Leg-daemon-secret",
        SecretMeta {
            tags: [("CredentialId".to_owned(), sp_key.clone())].into(),
            ..SecretMeta::default()
        },
    );
    want.link(
        &sp_key,
        "kv-alpha",
        "legacy-daemon-client-secret",
        "high",
        "tag-key-id(CredentialId)",
    );
    want
}

fn rows_by_key(doc: &Value) -> BTreeMap<String, Vec<&Value>> {
    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for row in doc["links"].as_array().unwrap() {
        by_key
            .entry(row["key_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(row);
    }
    by_key
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_tenant_is_discovered_end_to_end() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    fake.set_graph_page_size(250);
    fake.set_arm_page_size(1);
    let now_s = SystemClock.now_ms() / 1000;
    let want = seed(&fake, now_s);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("rekey.toml"),
        config_text(&fake, &["kv-alpha"], &[SUB], "read_values_for_hint = true"),
    )
    .unwrap();

    let run = discover(tmp.path(), &["--json"], Some(READER_SECRET)).await;
    assert_eq!(
        run.code, 4,
        "partial: one vault is firewalled\n{}",
        run.stderr
    );
    let doc: Value = serde_json::from_str(&run.stdout).expect("one JSON document");

    // What could not be read, and why.
    let unreachable = doc["unreachable"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1, "{unreachable:?}");
    assert_eq!(unreachable[0]["kind"], "vault");
    assert_eq!(unreachable[0]["name"], "kv-gamma");
    assert!(
        unreachable[0]["reason"]
            .as_str()
            .unwrap()
            .contains("ForbiddenByFirewall")
    );
    assert_eq!(doc["partial"], true);

    // Every credential's links, as the generator's rules say.
    let by_key = rows_by_key(&doc);
    assert_eq!(
        by_key.keys().collect::<BTreeSet<_>>(),
        want.links.keys().collect::<BTreeSet<_>>(),
        "every credential has rows, and only those"
    );
    for (key, expected) in &want.links {
        let rows = &by_key[key];
        let mut got: Vec<(String, String, String)> = rows
            .iter()
            .filter(|r| r["vault"].is_string() && r["confidence"] != "none")
            .map(|r| {
                (
                    r["vault"].as_str().unwrap().to_owned(),
                    r["item"].as_str().unwrap().to_owned(),
                    r["confidence"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort();
        let mut expected_rows: Vec<(String, String, String)> = expected
            .iter()
            .map(|(v, i, c, _)| (v.clone(), i.clone(), (*c).to_owned()))
            .collect();
        expected_rows.sort();
        assert_eq!(got, expected_rows, "links of {key}");
        for (vault, item, _, why) in expected {
            let row = rows
                .iter()
                .find(|r| r["vault"] == vault.as_str() && r["item"] == item.as_str())
                .unwrap();
            assert!(
                strings(&row["evidence"]).contains(why),
                "{key} {item}: {row}"
            );
        }
        if expected.is_empty() {
            assert!(
                rows.iter().all(|r| r["confidence"] == "none"),
                "{key} has no link: {rows:?}"
            );
        }
        for row in rows {
            assert_eq!(
                row["ready"], false,
                "nothing is ready while a vault is unread"
            );
            for field in [
                "tenant",
                "app_id",
                "app_name",
                "key_id",
                "kind",
                "credential_end",
                "confidence",
                "score",
                "evidence",
            ] {
                assert!(!row[field].is_null(), "{field} in {row}");
            }
        }
    }
    for (key, item, veto) in &want.vetoed {
        let row = by_key[key]
            .iter()
            .find(|r| r["item"] == item.as_str())
            .unwrap_or_else(|| panic!("{key}: no vetoed row for {item}"));
        assert_eq!(row["confidence"], "none");
        assert!(strings(&row["vetoes"]).contains(veto), "{row}");
    }
    let unlinked = by_key
        .values()
        .flatten()
        .filter(|r| r["vault"].is_null())
        .count();
    assert!(
        unlinked >= 150,
        "apps n % 4 == 3 are in no scanned vault: {unlinked}"
    );
    let sp = &by_key[&id("2c", 1)][0];
    assert_eq!(sp["origin"], "service_principal");
    let counts = &doc["counts"];
    assert_eq!(counts["apps"], APPS + 2);
    assert_eq!(counts["vaults"], 2);
    assert!(counts["hint_reads"].as_u64().unwrap() >= 150);

    // Sorted by expiry.
    let ends: Vec<&str> = doc["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["credential_end"].as_str().unwrap())
        .collect();
    let parsed: Vec<jiff::Timestamp> = ends.iter().map(|e| e.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "rows by expiry");

    // The journal stream says the same, in bounded events; Azure was not changed.
    let journal = SqliteJournal::open_read_only(tmp.path().join("journal.db")).unwrap();
    let run_id = doc["run_id"].as_str().unwrap();
    let streams = journal.streams(&StreamFilter::default()).await.unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].stream_id, stream_id(run_id));
    assert_eq!(streams[0].status, "partial");
    let events = journal.read_stream(&stream_id(run_id)).await.unwrap();
    let mut journaled_links = 0;
    let mut journaled_credentials = 0;
    for e in &events {
        assert!(
            e.payload.len() <= 40 * 1024,
            "{} is {} bytes",
            e.kind,
            e.payload.len()
        );
        match serde_json::from_str::<DiscoveryEvent>(&e.payload).unwrap() {
            DiscoveryEvent::LinksFound { links, .. } => journaled_links += links.len(),
            DiscoveryEvent::CredentialsFound { credentials, .. } => {
                journaled_credentials += credentials.len();
            }
            _ => {}
        }
    }
    let json_links = doc["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["vault"].is_string())
        .count();
    assert_eq!(journaled_links, json_links);
    assert_eq!(journaled_credentials, by_key.len());
    assert!(fake.effects().is_empty(), "discovery changes nothing");

    // Only what ends within 30 days.
    let run = discover(
        tmp.path(),
        &["--json", "--expiring-within", "30d"],
        Some(READER_SECRET),
    )
    .await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let keys: BTreeSet<String> = rows_by_key(&doc).into_keys().collect();
    let soon: BTreeSet<String> = want
        .ends_in_days
        .iter()
        .filter(|(_, d)| **d <= 30)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys, soon);
    assert!(
        doc["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["due"] == true)
    );

    // The table: a row per credential, soonest first, and the unreachable vault.
    let run = discover(tmp.path(), &["--tenant", "contoso"], Some(READER_SECRET)).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("APP") && lines[0].contains("LINKED ITEMS"),
        "{}",
        lines[0]
    );
    assert!(run.stdout.contains("not in any scanned vault"));
    assert!(
        run.stdout
            .contains("unreachable vault kv-gamma (tenant contoso)")
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("svc-")
                || l.starts_with("billing")
                || l.starts_with("legacy"))
            .count(),
        want.links.len()
    );
    // --explain: the ambiguous app, every pair and the verdict.
    let run = discover(tmp.path(), &["--explain", "billing"], Some(READER_SECRET)).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    // Both passwords' hints are "Bil" and both match: the tie stands.
    assert!(
        run.stdout.contains(
            "kv-alpha/billing-blue score 105 (high) -> ambiguous ambiguous: tag-app-id(AppId), hint-match, name-contains-app"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("verdict: ambiguous, not ready"));
    // A read-only open is a snapshot (an auditor's copy may be immutable): open again.
    let journal = SqliteJournal::open_read_only(tmp.path().join("journal.db")).unwrap();
    assert_eq!(
        journal
            .streams(&StreamFilter::default())
            .await
            .unwrap()
            .len(),
        4,
        "each run journaled"
    );
}
