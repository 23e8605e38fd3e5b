//! `rekey history` and `GET /v1/history`: one row per rotation over a journal holding
//! hand-configured rotations (run through the real CLI against local providers) and
//! fleet-shaped ones (an Entra application's password rotator, Key Vault items as stores)
//! driven through the runner; and the live progress stream `GET /v1/rotations/{id}/events`.

mod api;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekey::journal::{Clock, SqliteJournal, SystemClock};
use rekey::provider::Cast;
use rekey::providers::local::{CommandVerifier, LocalVault, RandomRotator};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Address, Plan, Role, TargetRef, Trigger};
use serde_json::Value;

use crate::cli::{rekey, text};

/// Two configured secrets: `api` (its check passes) and `db` (its check fails, so its
/// rotation compensates).
const CONFIG: &str = r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.pass]
kind = "command"
command = ["true"]

[providers.fail]
kind = "command"
command = ["false"]

[secrets.api]
rotator = "random"
stores = ["vault"]
verifiers = ["pass"]
grace = "0s"

[secrets.db]
rotator = "random"
stores = ["vault"]
verifiers = ["fail"]
grace = "0s"
"#;

/// Validity of the fleet plans' new passwords.
const VALIDITY_DAYS: i64 = 90;

/// Built from its journal form, so optional fields added to addresses later change nothing
/// here.
fn key_vault(vault: &str, secret: &str) -> Address {
    serde_json::from_value(serde_json::json!({
        "kind": "key_vault",
        "vault_url": format!("https://{vault}.vault.azure.net"),
        "secret": secret,
        "credential": "azure",
        "verify_challenge_resource": true,
    }))
    .unwrap()
}

/// A fleet rotation's plan: the password of application `app_id` in `tenant`, and its
/// two vault copies.
pub fn fleet_plan(app_id: &str, tenant: &str) -> Plan {
    Plan {
        secret: format!("fleet-{app_id}"),
        lock_key: format!("entra:{app_id}"),
        targets: vec![
            TargetRef::at(
                Role::Rotator,
                "entra",
                serde_json::from_value(serde_json::json!({
                    "kind": "entra_password",
                    "credential": "azure",
                    "tenant": tenant,
                    "object_id": format!("obj-{app_id}"),
                    "app_id": app_id,
                    "validity_days": VALIDITY_DAYS,
                    "verify_scope": "https://graph.microsoft.com/.default",
                    "propagation": "0s",
                }))
                .unwrap(),
            ),
            TargetRef::at(
                Role::Store,
                "kv1",
                key_vault("kv1", &format!("{app_id}-secret")),
            ),
            TargetRef::at(
                Role::Store,
                "kv2",
                key_vault("kv2", &format!("{app_id}-copy")),
            ),
            TargetRef::new(Role::Verifier, "check"),
        ],
        grace_ms: 0,
        attempts_max: 2,
    }
}

/// A runner over the journal in `dir` whose providers stand in for the fleet targets by
/// name: random bytes for the application's password, local vault files for the Key Vault
/// items, `true` as the check.
pub fn fleet_runner(dir: &Path) -> Runner<SqliteJournal> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal =
        Arc::new(SqliteJournal::open_with_clock(dir.join("journal.db"), clock.clone()).unwrap());
    let providers = Registry::new()
        .with(
            "entra",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 24 })),
        )
        .with_roles(
            "kv1",
            roles!(Arc::new(LocalVault::new(dir.join("kv1.json")))),
        )
        .with_roles(
            "kv2",
            roles!(Arc::new(LocalVault::new(dir.join("kv2.json")))),
        )
        .with(
            "check",
            Cast::Verifier(Arc::new(CommandVerifier {
                command: vec!["true".into()],
            })),
        );
    Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options {
            sleep: Some(rekey::runner::tokio_sleep()),
            ..Options::new(format!("history-test-{}", uuid::Uuid::now_v7()), 3)
        },
    )
}

/// Requests a fleet rotation and, if `drive`, drives it to its end.
pub async fn fleet_rotation(
    runner: &Runner<SqliteJournal>,
    app_id: &str,
    tenant: &str,
    trigger: Trigger,
    actor: &str,
    drive: bool,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let requested = runner
        .request(fleet_plan(app_id, tenant), trigger, actor, id.clone())
        .await
        .unwrap();
    assert_eq!(
        requested,
        Requested::Started {
            rotation_id: id.clone()
        }
    );
    if drive {
        loop {
            match runner.drive(&id).await.unwrap() {
                Progress::Finished(_) => break,
                Progress::Waiting { .. } => tokio::time::sleep(Duration::from_millis(5)).await,
                other => panic!("{other:?}"),
            }
        }
    }
    id
}

/// Builds the journal the history tests read, in `dir`: `api` completed and `db`
/// compensated through the CLI, then a completed bulk fleet rotation of app `1111…` in
/// `contoso` and, if `with_open`, an open manual one of app `2222…` in `fabrikam`,
/// requested in that order. Returns the rotation ids in that order.
pub fn mixed_journal(dir: &Path, with_open: bool) -> Vec<String> {
    std::fs::write(dir.join("rekey.toml"), CONFIG).unwrap();
    let mut ids = Vec::new();
    for (secret, result, code) in [("api", "completed", 0), ("db", "compensated", 1)] {
        let out = rekey(&["rotate", secret, "--wait", "--json"], dir);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(outcome[0]["result"], result, "{outcome}");
        ids.push(outcome[0]["rotation_id"].as_str().unwrap().to_owned());
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let runner = fleet_runner(dir);
        ids.push(
            fleet_rotation(
                &runner,
                "11111111-aaaa",
                "contoso",
                Trigger::Bulk,
                "fleet",
                true,
            )
            .await,
        );
        if with_open {
            ids.push(
                fleet_rotation(
                    &runner,
                    "22222222-bbbb",
                    "fabrikam",
                    Trigger::Manual,
                    "api",
                    false,
                )
                .await,
            );
            // A near-expiry event for the same credential joins the open rotation.
            let joined = runner
                .request(
                    fleet_plan("22222222-bbbb", "fabrikam"),
                    Trigger::NearExpiry,
                    "eventgrid:evt-1",
                    uuid::Uuid::now_v7().to_string(),
                )
                .await
                .unwrap();
            assert_eq!(
                joined,
                Requested::Coalesced {
                    into: ids[3].clone()
                }
            );
        }
    });
    ids
}

/// `rekey history ARGS --json` in `dir`: the rotation ids listed, and the rows.
pub fn history(dir: &Path, args: &[&str]) -> (Vec<String>, Vec<Value>) {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let out = rekey(&all, dir);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = doc["rotations"].as_array().unwrap().clone();
    let ids = rows
        .iter()
        .map(|r| r["rotation_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, rows)
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

#[test]
fn history_lists_hand_configured_and_fleet_rotations_and_each_filter_narrows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = mixed_journal(dir, true);
    let [api, db, fleet_done, fleet_open] = [0, 1, 2, 3].map(|i| ids[i].as_str());

    let (ids, rows) = history(dir, &[]);
    assert_eq!(
        ids,
        [api, db, fleet_done, fleet_open],
        "sorted by request time"
    );
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r["rotation_id"] == id)
            .unwrap()
            .clone()
    };

    let row = by_id(api);
    assert_eq!(row["secret"], "api");
    assert_eq!(row["outcome"], "completed");
    assert_eq!(
        (&row["trigger"], &row["actor"]),
        (&"manual".into(), &"cli".into())
    );
    assert!(row["app_id"].is_null() && row["tenant"].is_null() && row["new_expiry_ms"].is_null());
    assert_eq!(row["items_updated"][0]["name"], "vault");
    assert_eq!(row["items_updated"][0]["item"], "api");
    assert!(row["finished_at_ms"].as_i64() >= row["requested_at_ms"].as_i64());
    assert!(row["last_error"].is_null(), "{row}");

    let row = by_id(db);
    assert_eq!(row["outcome"], "compensated");
    assert_eq!(row["items_updated"][0]["undone"], true);
    assert_eq!(row["last_error"]["step"], "verify#2");
    assert_eq!(row["last_error"]["class"], "permanent");

    let row = by_id(fleet_done);
    assert_eq!(row["outcome"], "completed");
    assert_eq!(
        (&row["app_id"], &row["tenant"]),
        (&"11111111-aaaa".into(), &"contoso".into())
    );
    assert_eq!(
        (&row["trigger"], &row["actor"]),
        (&"bulk".into(), &"fleet".into())
    );
    let items: Vec<&str> = row["items_updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        items,
        [
            "key_vault https://kv1.vault.azure.net secret 11111111-aaaa-secret",
            "key_vault https://kv2.vault.azure.net secret 11111111-aaaa-copy",
        ]
    );
    let requested = row["requested_at_ms"].as_i64().unwrap();
    let expiry = row["new_expiry_ms"].as_i64().unwrap() - VALIDITY_DAYS * 86_400_000;
    assert!(
        (requested..=row["finished_at_ms"].as_i64().unwrap()).contains(&expiry),
        "the new password's lifetime counts from its creation: {row}"
    );

    let row = by_id(fleet_open);
    assert_eq!(row["outcome"], "open");
    assert_eq!(row["phase"], "forward");
    assert!(row["finished_at_ms"].is_null() && row["new_expiry_ms"].is_null());
    assert_eq!(row["items_updated"], serde_json::json!([]));
    assert_eq!(row["lock_key"], "entra:22222222-bbbb");
    assert_eq!(row["joined"][0]["trigger"], "near_expiry");
    assert_eq!(row["joined"][0]["actor"], "eventgrid:evt-1");
    assert_eq!(by_id(api)["joined"], serde_json::json!([]));

    // Each filter.
    let only = |args: &[&str]| history(dir, args).0;
    assert_eq!(
        only(&["--secret", "A*"]),
        [api],
        "globs are case-insensitive"
    );
    assert_eq!(only(&["--secret", "fleet-*"]), [fleet_done, fleet_open]);
    assert_eq!(only(&["--app", "1111*"]), [fleet_done]);
    assert_eq!(only(&["--app", "22222222-bbbb"]), [fleet_open]);
    assert_eq!(only(&["--tenant", "fabrikam"]), [fleet_open]);
    assert_eq!(only(&["--status", "completed"]), [api, fleet_done]);
    assert_eq!(only(&["--status", "compensated,open"]), [db, fleet_open]);
    assert_eq!(only(&["--status", "failed"]), Vec::<String>::new());
    assert_eq!(only(&["--trigger", "bulk"]), [fleet_done]);
    assert_eq!(only(&["--trigger", "manual"]), [api, db, fleet_open]);
    assert_eq!(
        only(&["--trigger", "manual", "--tenant", "*"]),
        [fleet_open]
    );
    let at = |id: &str| by_id(id)["requested_at_ms"].as_i64().unwrap();
    assert_eq!(
        only(&["--since", &rfc3339(at(db))]),
        [db, fleet_done, fleet_open]
    );
    assert_eq!(only(&["--until", &rfc3339(at(fleet_done))]), [api, db]);
    assert_eq!(
        only(&[
            "--since",
            &rfc3339(at(db)),
            "--until",
            &rfc3339(at(fleet_open))
        ]),
        [db, fleet_done]
    );
    assert_eq!(only(&["--since", "1h"]).len(), 4);
    assert_eq!(only(&["--until", "1h"]), Vec::<String>::new());

    // The table: one line per rotation under a header, in the same order.
    let out = rekey(&["history"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("REQUESTED"), "{table}");
    for (line, id) in lines[1..].iter().zip([api, db, fleet_done, fleet_open]) {
        assert!(line.contains(id), "{table}");
    }
    assert!(lines[3].contains("11111111-aaaa (contoso)"), "{table}");
    assert!(lines[3].contains("bulk by fleet"), "{table}");
    assert!(lines[2].contains("vault/db (undone)"), "{table}");
    assert!(lines[2].contains("verify#2 Permanent"), "{table}");
    assert!(lines[4].contains("open (forward)"), "{table}");
    assert!(lines[4].contains("manual by api (+1 joined)"), "{table}");

    // No value in anything it printed.
    for file in ["vault.json", "kv1.json", "kv2.json"] {
        let vault: Value = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        for versions in vault["secrets"].as_object().unwrap().values() {
            for v in versions.as_array().unwrap() {
                let value = v["value"].as_str().unwrap();
                assert!(value.len() >= 16);
                let json = text(&rekey(&["history", "--json"], dir).stdout);
                assert!(
                    !table.contains(value) && !json.contains(value),
                    "a value in the history"
                );
            }
        }
    }
}

#[test]
fn bad_filters_are_refused_naming_what_is_valid_and_read_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (args, said) in [
        (
            &["--status", "complete"][..],
            "status \"complete\": unknown; valid: completed, compensated, open, failed",
        ),
        (
            &["--trigger", "manual,cron"][..],
            "trigger \"cron\": unknown; valid: manual, schedule, near_expiry, bulk",
        ),
        (
            &["--since", "last tuesday"][..],
            "since \"last tuesday\": not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z) nor a time back from now (e.g. 7d, 12h, 30m)",
        ),
        (
            &["--since", "1d", "--until", "2d"][..],
            "since 1d is not before until 2d",
        ),
    ] {
        let mut all = vec!["history"];
        all.extend_from_slice(args);
        let out = rekey(&all, dir);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    // Checked before the journal is looked for: none was created either.
    assert!(!dir.join("journal.db").exists());
    let out = rekey(&["history"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("journal.db"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("journal.db").exists());
}
