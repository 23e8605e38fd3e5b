//! Fleet rotations under SIGKILL: the real binary rotates batches of 32 discovered Entra
//! passwords (two vault copies each) against the fakes over HTTP, and is killed at random
//! moments, `rotate --fleet` and `resume --wait` alike, at least 100 times
//! (`REKEY_FLEET_CRASH_KILLS`; `REKEY_FLEET_CRASH_SEED` replays the delays). A new batch
//! is seeded whenever the last one is done, so kills keep landing on work. Then `resume
//! --wait` finishes everything, and the journal and the fakes' effect logs prove each
//! application rotated exactly once: one rotation, one terminal event (Completed), one
//! live password (an orphan of a lost response removed), each copy written exactly once
//! with the live password and its id, each old password removed exactly once, each old
//! version disabled exactly once; no password text in the journal or any output.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use rekey::journal::{
    Clock as _, JournalRead as _, JournalScan as _, SqliteJournal, StreamFilter, SystemClock,
};
use rekey::runner::lock::is_rotation_stream;

use super::{READER_ID, READER_SECRET, SECRET_VAR, config_text};
use crate::fake_azure::{App, Effect, FakeAzure, PasswordCred, SecretMeta};

const BATCH: u32 = 32;
const DAY_S: i64 = 86_400;
const KILLS_ENV: &str = "REKEY_FLEET_CRASH_KILLS";
const SEED_ENV: &str = "REKEY_FLEET_CRASH_SEED";
/// A child is killed within this long of its start (ms).
const KILL_MS: u64 = 1_000;

fn id(prefix: &str, n: u32) -> String {
    format!("{prefix}000000-0000-4000-8000-{n:012x}")
}

struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Seeds batch `b`: apps `b*BATCH ..`, each with a hand-made password due within 20 days
/// held by `kv-alpha/<app>-client-secret` (Azure's sample tags) and `kv-beta/<app>-copy`
/// (rekey's own tags). Returns `(object id, old key id, old text)` of each.
fn seed(fake: &FakeAzure, b: u32) -> Vec<(String, String, String)> {
    let now_s = SystemClock.now_ms() / 1000;
    (b * BATCH..(b + 1) * BATCH)
        .map(|n| {
            let name = format!("app-{n:04}");
            let (object_id, app_id, key) = (id("0b", n), id("0a", n), id("0c", n));
            let text = format!("k{n:03}8Q~hand-made-{n}");
            fake.graph_insert_app(App {
                object_id: object_id.clone(),
                app_id: app_id.clone(),
                principal_id: id("0f", n),
                display_name: name.clone(),
                tags: Vec::new(),
                passwords: vec![PasswordCred::new(
                    &key,
                    None,
                    &text,
                    jiff::Timestamp::from_second(now_s - 100 * DAY_S).unwrap(),
                    jiff::Timestamp::from_second(now_s + (i64::from(n % 20) + 1) * DAY_S).unwrap(),
                )],
                keys: Vec::new(),
            });
            let tags = |pairs: &[(&str, &str)]| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            };
            fake.kv_seed_item(
                "kv-alpha",
                &format!("{name}-client-secret"),
                &text,
                SecretMeta {
                    tags: tags(&[("CredentialId", &key), ("ProviderAddress", &object_id)]),
                    ..SecretMeta::default()
                },
            );
            fake.kv_seed_item(
                "kv-beta",
                &format!("{name}-copy"),
                &text,
                SecretMeta {
                    tags: tags(&[("rekey-app-id", &app_id), ("rekey-key-id", &key)]),
                    ..SecretMeta::default()
                },
            );
            (object_id, key, text)
        })
        .collect()
}

/// Runs `rekey ARGS`; kills it after `kill_ms` unless it ended (`None`: waits up to two
/// minutes). Returns whether it was killed while running, and what it printed.
async fn run(dir: &std::path::Path, args: &[&str], kill_ms: Option<u64>) -> (bool, i32, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .arg("--config")
        .arg(dir.join("rekey.toml"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("REKEY_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env(SECRET_VAR, READER_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rekey");
    let wait = Duration::from_millis(kill_ms.unwrap_or(120_000));
    let killed = match tokio::time::timeout(wait, child.wait()).await {
        Ok(_) => false,
        Err(_) => {
            child.start_kill().expect("SIGKILL rekey");
            kill_ms.is_some()
        }
    };
    let out = child.wait_with_output().await.expect("reap rekey");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (killed, out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_bulk_fleet_rotations_then_resume_rotates_each_app_once() {
    let kills_wanted: u64 = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed_value = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| SystemClock.now_ms() as u64);
    eprintln!("fleet crash test: {SEED_ENV}={seed_value}");
    let mut rng = SplitMix(seed_value);
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let text = format!(
        "{}\n[runner]\nlease_ttl = \"1s\"\n",
        config_text(
            &fake,
            &["kv-alpha", "kv-beta"],
            &[],
            "[fleet.rotation]\ngrace = \"500ms\"\nmax_concurrent = 8\n",
        )
    );
    std::fs::write(dir.join("rekey.toml"), text).unwrap();

    let mut apps: Vec<(String, String, String)> = seed(&fake, 0);
    let mut batches = 1;
    let mut kills = 0u64;
    let mut transcript = String::new();
    let mut round = 0u64;
    while kills < kills_wanted {
        round += 1;
        let fleet = [
            "rotate",
            "--fleet",
            "--expiring-within",
            "30d",
            "--yes",
            "--json",
        ];
        let resume = ["resume", "--wait", "--json"];
        let args: &[&str] = if round % 3 == 1 { &fleet } else { &resume };
        let (killed, _, out) = run(dir, args, Some(rng.below(KILL_MS))).await;
        transcript += &out;
        kills += u64::from(killed);
        // Everything of the last batch done: give the kills more work.
        let done = apps.iter().all(|(object_id, old, _)| {
            let p = fake.app_passwords(object_id);
            p.len() == 1 && &p[0].key_id != old
        });
        if done && kills < kills_wanted {
            apps.extend(seed(&fake, batches));
            batches += 1;
        }
        assert!(round < 2_000, "no progress after {round} rounds");
    }
    // Finish: plan what is left, then drive everything to its end.
    for args in [
        &[
            "rotate",
            "--fleet",
            "--expiring-within",
            "30d",
            "--yes",
            "--json",
        ][..],
        &["resume", "--wait", "--json"][..],
    ] {
        let (_, code, out) = run(dir, args, None).await;
        assert_eq!(code, 0, "rekey {args:?}: {out}");
        transcript += &out;
    }
    eprintln!(
        "fleet crash test: {kills} kills over {round} rounds, {} apps in {batches} batches",
        apps.len()
    );

    // The fakes: each app rotated once, every effect at most once.
    let effects = fake.effects();
    let mut removed = BTreeSet::new();
    let mut written: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut disabled: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for e in &effects {
        match e {
            Effect::GraphPasswordRemoved { key_id, .. } => {
                assert!(
                    removed.insert(key_id.clone()),
                    "password {key_id} removed twice"
                );
            }
            Effect::KvVersionCreated { vault, name, .. } => {
                *written.entry((vault.clone(), name.clone())).or_default() += 1;
            }
            Effect::KvVersionUpdated {
                vault,
                name,
                version,
                enabled: false,
            } => {
                *disabled
                    .entry((vault.clone(), name.clone(), version.clone()))
                    .or_default() += 1;
            }
            Effect::GraphPasswordAdded { .. } => {}
            other => panic!("unexpected effect {other:?}"),
        }
    }
    assert!(
        disabled.values().all(|n| *n == 1),
        "a version disabled twice: {disabled:?}"
    );
    for (object_id, old, old_text) in &apps {
        let n = u32::from_str_radix(&object_id[24..], 16).unwrap();
        let name = format!("app-{n:04}");
        let live = fake.app_passwords(object_id);
        assert_eq!(live.len(), 1, "{name}: one live password");
        let live = &live[0];
        assert_ne!(&live.key_id, old, "{name}: rotated");
        assert!(removed.contains(old), "{name}: the old password removed");
        for (vault, item) in [
            ("kv-alpha", format!("{name}-client-secret")),
            ("kv-beta", format!("{name}-copy")),
        ] {
            assert_eq!(
                written.get(&(vault.to_owned(), item.clone())),
                Some(&1),
                "{vault}/{item}: written exactly once"
            );
            let versions = fake.kv_versions(vault, &item);
            assert_eq!(versions.len(), 2, "{vault}/{item}");
            assert_eq!(&versions[0].value, old_text);
            assert!(
                !versions[0].enabled,
                "{vault}/{item}: the old version disabled"
            );
            assert_eq!(
                versions[1].value, live.secret_text,
                "{vault}/{item} holds the live one"
            );
            assert_eq!(versions[1].tags["rekey-key-id"], live.key_id);
            assert!(versions[1].enabled);
        }
    }

    // The journal: one rotation per app, each ended once, completed; the chains verify.
    let journal = SqliteJournal::open(dir.join("journal.db")).unwrap();
    let mut per_app: BTreeMap<String, u32> = BTreeMap::new();
    // Steps a kill left in doubt, later reconciled: proof the kills hit work in flight.
    let mut in_doubt = 0;
    for s in journal.streams(&StreamFilter::default()).await.unwrap() {
        if !is_rotation_stream(&s.stream_id) {
            continue;
        }
        let events = journal.read_stream(&s.stream_id).await.unwrap();
        let terminal: Vec<&str> = events
            .iter()
            .map(|e| e.kind.as_str())
            .filter(|k| matches!(*k, "Completed" | "Compensated"))
            .collect();
        assert_eq!(terminal, ["Completed"], "rotation {}", s.stream_id);
        in_doubt += events
            .iter()
            .filter(|e| {
                matches!(e.kind.as_str(), "StepNotApplied" | "ValueLost")
                    || (e.kind == "StepSucceeded" && e.payload.contains("\"reconciled\":true"))
            })
            .count();
        *per_app
            .entry(s.subject.clone().unwrap_or_default())
            .or_default() += 1;
    }
    eprintln!("fleet crash test: {in_doubt} steps found in doubt and reconciled");
    if kills_wanted >= 50 {
        assert!(in_doubt > 0, "no kill hit a step in flight");
    }
    assert_eq!(per_app.len(), apps.len());
    assert!(per_app.values().all(|n| *n == 1), "{per_app:?}");
    let (_, code, out) = run(dir, &["journal", "verify"], None).await;
    assert_eq!(code, 0, "{out}");

    // No password text anywhere.
    let bytes: Vec<u8> = ["journal.db", "journal.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .flatten()
        .collect();
    for (object_id, _, old_text) in &apps {
        for text in [
            old_text.clone(),
            fake.app_passwords(object_id)[0].secret_text.clone(),
        ] {
            assert!(!transcript.contains(&text), "a password in the output");
            assert!(
                !bytes.windows(text.len()).any(|w| w == text.as_bytes()),
                "a password in the journal"
            );
        }
    }
}
