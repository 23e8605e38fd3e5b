//! Fleet rotations' effects over HTTP against the fakes: discovery, a plan, the runner.
//! A discovered Entra password is replaced (`addPassword`), every vault copy gets one new
//! version that keeps the item's other tags and content type and is tagged with the app,
//! the new keyId and the rotation; the new password is verified by signing in with it;
//! after the grace period the old password (hand-made, identified with HIGH confidence) is
//! removed exactly once and the versions it superseded are disabled. A resumed rotation
//! needs neither the discovery nor a config entry per secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use rekey::config::Config;
use rekey::fleet::discover;
use rekey::fleet::matching::Confidence;
use rekey::fleet::plan::{FleetPlans, Selection, plan};
use rekey::fleet::progress::{FleetProgress, ProgressSink, RotationProgress};
use rekey::journal::{Clock, ManualClock, MemoryJournal};
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Phase, RotationEvent, Trigger};

use super::{READER_ID, READER_SECRET, SECRET_VAR, T0_MS, config_text, fake};
use crate::azure::{drive, drive_to_end, events};
use crate::fake_azure::{App, Effect, FakeAzure, Fault, PasswordCred, Route, SecretMeta, Service};

const DAY_S: i64 = 86_400;
pub const ORDERS_OBJECT: &str = "0b000000-0000-4000-8000-000000000001";
pub const ORDERS_APP: &str = "0a000000-0000-4000-8000-000000000001";
pub const ORDERS_KEY: &str = "0c000000-0000-4000-8000-000000000001";
pub const ORDERS_TEXT: &str = "Ord8Q~orders-old-value";

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// App `orders` with one hand-made password ending in 10 days, held by
/// `kv-alpha/orders-client-secret` (Azure's sample tags, a team tag, a content type) and
/// `kv-beta/orders-copy` (rekey's own tags from an earlier rotation).
pub fn seed_orders(fake: &FakeAzure) {
    let now_s = T0_MS / 1000;
    fake.graph_insert_app(App {
        object_id: ORDERS_OBJECT.into(),
        app_id: ORDERS_APP.into(),
        principal_id: "0f000000-0000-4000-8000-000000000001".into(),
        display_name: "orders".into(),
        tags: Vec::new(),
        passwords: vec![PasswordCred::new(
            ORDERS_KEY,
            Some("made by hand"),
            ORDERS_TEXT,
            at(now_s - 300 * DAY_S),
            at(now_s + 10 * DAY_S),
        )],
        keys: Vec::new(),
    });
    fake.kv_seed_item(
        "kv-alpha",
        "orders-client-secret",
        ORDERS_TEXT,
        SecretMeta {
            tags: tags(&[
                ("CredentialId", ORDERS_KEY),
                ("ProviderAddress", ORDERS_OBJECT),
                ("team", "shop"),
            ]),
            content_type: Some("text/plain".into()),
            ..SecretMeta::default()
        },
    );
    fake.kv_seed_item(
        "kv-beta",
        "orders-copy",
        ORDERS_TEXT,
        SecretMeta {
            tags: tags(&[("rekey-app-id", ORDERS_APP), ("rekey-key-id", ORDERS_KEY)]),
            ..SecretMeta::default()
        },
    );
}

fn env(var: &str) -> Option<String> {
    (var == SECRET_VAR).then(|| READER_SECRET.to_owned())
}

/// The config over `fake`'s two vaults, with a one-hour grace.
fn config(fake: &FakeAzure, dir: &std::path::Path) -> Config {
    let text = config_text(
        fake,
        &["kv-alpha", "kv-beta"],
        &[],
        "[fleet.rotation]\ngrace = \"1h\"\n",
    );
    let path = dir.join("rekey.toml");
    std::fs::write(&path, &text).unwrap();
    Config::parse(&path, &text).expect("config")
}

/// Discovers and plans with the default selection (HIGH, due within 30 days).
async fn discover_and_plan(config: &Config, clock: &ManualClock) -> FleetPlans {
    let fleet = discover::fleet(config).unwrap();
    let arc: Arc<dyn Clock> = Arc::new(clock.clone());
    let scanner = discover::scanner(config, None, arc, &env).unwrap();
    let d = discover::discover(&scanner, fleet, None, clock).await;
    let sel = Selection {
        now_ms: clock.now_ms(),
        expiring_within_ms: None,
        app: None,
        key_id: None,
        tenant: None,
        min_confidence: Confidence::High,
        approve_medium: false,
        tenant_max_days: BTreeMap::new(),
        tenant_ids: BTreeMap::from([("contoso".to_owned(), FakeAzure::TENANT.to_owned())]),
    };
    plan(&d, fleet, &sel).unwrap()
}

fn runner(
    config: &Config,
    clock: &ManualClock,
    journal: Arc<MemoryJournal>,
) -> Runner<MemoryJournal> {
    let arc: Arc<dyn Clock> = Arc::new(clock.clone());
    let resolver = config
        .resolver(arc.clone(), Arc::new(|v: &str| env(v)))
        .expect("resolver");
    Runner::new(
        journal,
        Arc::new(resolver),
        arc,
        Options::new("fleet-test", 7),
    )
}

#[tokio::test]
async fn a_fleet_rotation_writes_every_copy_verifies_and_retires_the_old_password_once() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&fake, dir.path());
    let plans = discover_and_plan(&config, &clock).await;
    assert_eq!(plans.rotations.len(), 1, "{:?}", plans.refused);
    let rotation = &plans.rotations[0];
    assert_eq!(rotation.plan.lock_key, format!("entra-app.{ORDERS_APP}"));
    let before = fake.effects().len();
    assert_eq!(before, 0, "discovery changed nothing");

    // Requested by one runner, driven by another built from the config alone: the plan
    // in the journal is all a resume needs.
    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let id = "0197a000-0000-7000-8000-00000000f1ee";
    let first = runner(&config, &clock, journal.clone());
    let requested = first
        .request(rotation.plan.clone(), Trigger::Bulk, "test", id.to_owned())
        .await
        .unwrap();
    assert_eq!(
        requested,
        Requested::Started {
            rotation_id: id.into()
        }
    );
    drop(first);
    let resumed = runner(&config, &clock, journal.clone());
    match drive(&resumed, &clock, id, true).await {
        Progress::Waiting { until_ms, .. } => assert_eq!(until_ms, clock.now_ms() + 3_600_000),
        other => panic!("expected the grace period, got {other:?}"),
    }

    // One new password, named for rekey and this rotation; the old one still there.
    let passwords = fake.app_passwords(ORDERS_OBJECT);
    assert_eq!(passwords.len(), 2);
    let new = passwords.iter().find(|p| p.key_id != ORDERS_KEY).unwrap();
    let name = new.display_name.clone().unwrap();
    assert!(
        name.starts_with(&format!("rekey:entra-app.{ORDERS_APP}:{id}:")),
        "{name}"
    );
    let new_end = new.end.as_second();
    assert_eq!(new_end, clock.now_ms() / 1000 + 180 * DAY_S);

    // Every copy: exactly one new version, the item's tags and content type kept, the
    // app, the NEW keyId and the rotation tagged.
    for (vault, item, kept) in [
        (
            "kv-alpha",
            "orders-client-secret",
            &[("ProviderAddress", ORDERS_OBJECT), ("team", "shop")][..],
        ),
        ("kv-beta", "orders-copy", &[][..]),
    ] {
        let versions = fake.kv_versions(vault, item);
        assert_eq!(versions.len(), 2, "{vault}/{item}: one new version");
        let latest = &versions[1];
        assert_eq!(
            latest.value, new.secret_text,
            "{vault}/{item} holds the new password"
        );
        let t = &latest.tags;
        assert_eq!(t["rekey-app-id"], ORDERS_APP);
        assert_eq!(t["rekey-key-id"], new.key_id);
        assert_eq!(t["rekey-rotation"], id);
        for (k, v) in kept {
            assert_eq!(t[*k], *v, "{vault}/{item} keeps {k}");
        }
        assert_eq!(
            latest.content_type, versions[0].content_type,
            "{vault}/{item}"
        );
        if vault == "kv-alpha" {
            // Azure's own key-id tag follows the credential it names.
            assert_eq!(t["CredentialId"], new.key_id);
            assert_eq!(latest.content_type.as_deref(), Some("text/plain"));
        }
    }

    // After the grace period: the old password removed once, the old versions disabled.
    assert_eq!(
        drive(&resumed, &clock, id, false).await,
        Progress::Finished(Phase::Completed)
    );
    let passwords = fake.app_passwords(ORDERS_OBJECT);
    assert_eq!(
        passwords
            .iter()
            .map(|p| p.key_id.as_str())
            .collect::<Vec<_>>(),
        [new.key_id.as_str()]
    );
    let effects = fake.effects();
    let removed: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::GraphPasswordRemoved { .. }))
        .collect();
    assert_eq!(
        removed,
        [&Effect::GraphPasswordRemoved {
            object_id: ORDERS_OBJECT.into(),
            key_id: ORDERS_KEY.into()
        }]
    );
    for (vault, item) in [
        ("kv-alpha", "orders-client-secret"),
        ("kv-beta", "orders-copy"),
    ] {
        let versions = fake.kv_versions(vault, item);
        assert!(
            !versions[0].enabled,
            "{vault}/{item}: the old version is disabled"
        );
        assert!(versions[1].enabled, "{vault}/{item}: the new one is live");
    }
    let added = effects
        .iter()
        .filter(|e| matches!(e, Effect::GraphPasswordAdded { .. }))
        .count();
    let written = effects
        .iter()
        .filter(|e| matches!(e, Effect::KvVersionCreated { .. }))
        .count();
    assert_eq!((added, written, effects.len()), (1, 2, 6), "{effects:#?}");
    let _ = READER_ID;
}

/// A new password that never signs in: the rotation is undone. The new password is
/// removed; each copy gets the old value back as a new version carrying the tags and
/// content type it had (its key-id tags naming the old password again), and the failed
/// rotation's version is disabled; the old password stays.
#[tokio::test]
async fn an_undone_fleet_rotation_puts_every_copy_back_with_its_tags() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    // Longer than verification keeps trying.
    fake.set_propagation_delay_ms(3_600_000);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &fake,
        &["kv-alpha", "kv-beta"],
        &[],
        "[fleet.rotation]\ngrace = \"1h\"\nattempts_max = 1\npropagation = \"1s\"\n",
    );
    let path = dir.path().join("rekey.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&path, &text).unwrap();
    let plans = discover_and_plan(&config, &clock).await;
    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let runner = runner(&config, &clock, journal);
    let id = "0197a000-0000-7000-8000-00000000c0de";
    runner
        .request(
            plans.rotations[0].plan.clone(),
            Trigger::Bulk,
            "test",
            id.to_owned(),
        )
        .await
        .unwrap();
    assert_eq!(
        drive(&runner, &clock, id, false).await,
        Progress::Finished(Phase::Compensated)
    );
    let passwords = fake.app_passwords(ORDERS_OBJECT);
    assert_eq!(
        passwords
            .iter()
            .map(|p| p.key_id.as_str())
            .collect::<Vec<_>>(),
        [ORDERS_KEY],
        "only the old password is left"
    );
    for (vault, item) in [
        ("kv-alpha", "orders-client-secret"),
        ("kv-beta", "orders-copy"),
    ] {
        let versions = fake.kv_versions(vault, item);
        assert_eq!(versions.len(), 3, "{vault}/{item}: written, then restored");
        let (old, failed, restored) = (&versions[0], &versions[1], &versions[2]);
        assert_eq!(restored.value, ORDERS_TEXT);
        assert!(restored.enabled && !failed.enabled && !old.enabled);
        assert_eq!(restored.content_type, old.content_type);
        for (k, v) in &old.tags {
            assert_eq!(&restored.tags[k], v, "{vault}/{item}: {k} as it was");
        }
        assert_eq!(restored.tags["rekey-rotation"], id);
    }
}

/// Every fleet progress update, in the order the observer sent them.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<RotationProgress>>);

impl ProgressSink for Recorded {
    fn show(&self, update: RotationProgress) {
        self.0.lock().unwrap().push(update);
    }
}

/// The progress hook of `rotate --fleet`: for a rotation whose first vault write is
/// throttled once, a sink sees every step the journal records as started, in the same
/// order and with its attempt (the retried write twice), named by the application and the
/// step's target; then the rotation's end at its grace period and at completion.
#[tokio::test]
async fn fleet_progress_shows_each_step_and_attempt_in_journal_order_then_the_end() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&fake, dir.path());
    let plans = discover_and_plan(&config, &clock).await;
    fake.inject(Route::KvSet, Fault::Status { code: 503 }, 1);
    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let arc: Arc<dyn Clock> = Arc::new(clock.clone());
    let resolver = config
        .resolver(arc.clone(), Arc::new(|v: &str| env(v)))
        .expect("resolver");
    let sink = Arc::new(Recorded::default());
    let runner = Runner::new(
        journal.clone(),
        Arc::new(resolver),
        arc,
        Options {
            observer: Some(Arc::new(FleetProgress::new(sink.clone()))),
            ..Options::new("fleet-progress", 7)
        },
    );
    let id = "0197a000-0000-7000-8000-00000000face";
    runner
        .request(
            plans.rotations[0].plan.clone(),
            Trigger::Bulk,
            "test",
            id.to_owned(),
        )
        .await
        .unwrap();
    assert!(matches!(
        drive(&runner, &clock, id, true).await,
        Progress::Waiting { .. }
    ));
    let app = format!("app orders ({ORDERS_APP})");
    let plan = &plans.rotations[0].plan;
    let started = |events: &[RotationEvent]| -> Vec<RotationProgress> {
        events
            .iter()
            .filter_map(|e| match e {
                RotationEvent::StepStarted { step, attempt, .. } => Some(RotationProgress::Step {
                    rotation_id: id.to_owned(),
                    app: app.clone(),
                    step: format!(
                        "{} {}",
                        step.action.as_str(),
                        plan.targets[usize::from(step.target)].name
                    ),
                    attempt: *attempt,
                }),
                _ => None,
            })
            .collect()
    };
    let ended = |outcome| RotationProgress::Ended {
        rotation_id: id.to_owned(),
        app: app.clone(),
        outcome,
    };
    let mut want = started(&events(journal.as_ref(), id).await);
    assert!(
        want.iter().any(|u| matches!(
            u,
            RotationProgress::Step { step, attempt: 2, .. } if step.starts_with("write ")
        )),
        "the throttled write is retried: {want:?}"
    );
    want.push(ended("rotated"));
    assert_eq!(*sink.0.lock().unwrap(), want);

    assert_eq!(drive_to_end(&runner, &clock, id).await, Phase::Completed);
    let all = started(&events(journal.as_ref(), id).await);
    let mut want_all = want.clone();
    want_all.extend(all[want.len() - 1..].iter().cloned());
    want_all.push(ended("completed"));
    assert_eq!(*sink.0.lock().unwrap(), want_all);
}

const SITE_SUB: &str = "5a000000-0000-4000-8000-000000000001";
const SITE_RG: &str = "rg-web";

/// `orders-web` (production only) in `[fleet.tenants.contoso] app_service_sites`, seeded
/// with a versionless reference to each copy of the orders password (both syntaxes), a
/// reference to an item no rotation writes, and a literal; its `staging` slot and the site
/// `unlisted-web` hold the same references but are not configured. Returns the config and
/// the production settings as seeded.
pub fn with_sites(
    fake: &FakeAzure,
    dir: &std::path::Path,
    rotation: &str,
    pin: Option<&str>,
) -> (Config, BTreeMap<String, String>) {
    let alpha = fake.keyvault_url("kv-alpha");
    let versionless =
        format!("@Microsoft.KeyVault(SecretUri={alpha}/secrets/orders-client-secret/)");
    let by_name = match pin {
        Some(v) => format!(
            "@Microsoft.KeyVault(VaultName=kv-beta;SecretName=orders-copy;SecretVersion={v})"
        ),
        None => "@Microsoft.KeyVault(VaultName=KV-Beta;SecretName=orders-copy)".to_owned(),
    };
    let other = format!("@Microsoft.KeyVault(SecretUri={alpha}/secrets/billing-secret/)");
    let production = [
        ("ORDERS_SECRET", versionless.as_str()),
        ("ORDERS_COPY", by_name.as_str()),
        ("BILLING_SECRET", other.as_str()),
        ("DB_HOST", "db.internal"),
    ];
    fake.site_seed(SITE_SUB, SITE_RG, "orders-web", None, &production);
    fake.site_seed(
        SITE_SUB,
        SITE_RG,
        "orders-web",
        Some("staging"),
        &[("ORDERS_SECRET", versionless.as_str())],
    );
    fake.site_seed(
        SITE_SUB,
        SITE_RG,
        "unlisted-web",
        None,
        &[("ORDERS_SECRET", versionless.as_str())],
    );
    let text = format!(
        "{}app_service_sites = [\"/subscriptions/{SITE_SUB}/resourceGroups/{SITE_RG}/providers/Microsoft.Web/sites/orders-web\"]\n",
        config_text(fake, &["kv-alpha", "kv-beta"], &[], rotation)
    );
    let path = dir.join("rekey.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&path, &text).expect("config");
    let seeded = production
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (config, seeded)
}

/// Discovers and plans as `rotate --fleet` does (site settings read and matched).
async fn plan_with_sites(config: &Config, clock: &ManualClock) -> FleetPlans {
    let fleet = discover::fleet(config).unwrap();
    let arc: Arc<dyn Clock> = Arc::new(clock.clone());
    let scanner = discover::scanner(config, None, arc, &env).unwrap();
    let sel = Selection {
        now_ms: clock.now_ms(),
        expiring_within_ms: None,
        app: None,
        key_id: None,
        tenant: None,
        min_confidence: Confidence::High,
        approve_medium: false,
        tenant_max_days: BTreeMap::new(),
        tenant_ids: BTreeMap::from([("contoso".to_owned(), FakeAzure::TENANT.to_owned())]),
    };
    rekey::fleet::rotate::discover_and_plan(&scanner, fleet, sel, clock)
        .await
        .unwrap()
        .1
}

/// The settings PUTs of `site` (`None`: production), as the fake logged them.
fn settings_puts(fake: &FakeAzure, site: &str, slot: Option<&str>) -> Vec<Vec<String>> {
    fake.effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::AppSettingsReplaced {
                site: s,
                slot: sl,
                keys_changed,
            } if s == site && sl.as_deref() == slot => Some(keys_changed),
            _ => None,
        })
        .collect()
}

/// No request at all reached a site or slot that is not configured.
fn untouched_unconfigured(fake: &FakeAzure) {
    let stray: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| {
            let p = p.to_ascii_lowercase();
            p.contains("/sites/unlisted-web") || p.contains("/slots/staging")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "unconfigured sites were read or written: {stray:?}"
    );
}

/// A configured site's settings that reference an item the rotation writes are shown in
/// the plan and refreshed exactly once each, after the vault writes, by re-writing the
/// versionless reference as it is (both `SecretUri=` and `VaultName=` forms); a reference to
/// another item and a literal are never changed; the site's slot and a site not in
/// `app_service_sites` are never read nor written; completion after the grace refreshes
/// nothing again.
#[tokio::test]
async fn a_fleet_rotation_refreshes_references_to_its_items_on_configured_sites_once() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (config, seeded) = with_sites(
        &fake,
        dir.path(),
        "[fleet.rotation]\ngrace = \"1h\"\n",
        None,
    );
    let plans = plan_with_sites(&config, &clock).await;
    assert_eq!(plans.rotations.len(), 1, "{:?}", plans.refused);
    let r = &plans.rotations[0];
    let shown: Vec<(String, String, String)> = r
        .settings
        .iter()
        .map(|s| (s.setting.clone(), s.vault.clone(), s.item.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("ORDERS_COPY".into(), "kv-beta".into(), "orders-copy".into()),
            (
                "ORDERS_SECRET".into(),
                "kv-alpha".into(),
                "orders-client-secret".into()
            ),
        ]
    );
    let site_id = format!(
        "/subscriptions/{SITE_SUB}/resourceGroups/{SITE_RG}/providers/Microsoft.Web/sites/orders-web"
    );
    assert!(r.settings.iter().all(|s| s.site == site_id));
    assert!(fake.effects().is_empty(), "planning changed something");

    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let runner = runner(&config, &clock, journal.clone());
    let id = "0197a000-0000-7000-8000-00000000a55e";
    runner
        .request(r.plan.clone(), Trigger::Bulk, "test", id.to_owned())
        .await
        .unwrap();
    assert!(matches!(
        drive(&runner, &clock, id, true).await,
        Progress::Waiting { .. }
    ));
    // One PUT per referencing setting, each changing no value: the references stand as
    // they were, and App Service fetches their new version on the write.
    assert_eq!(
        settings_puts(&fake, "orders-web", None),
        [vec![], vec![]] as [Vec<String>; 2]
    );
    assert_eq!(fake.app_settings("orders-web", None), seeded);
    let effects = fake.effects();
    let last_vault_write = effects
        .iter()
        .rposition(|e| matches!(e, Effect::KvVersionCreated { .. }))
        .unwrap();
    let first_put = effects
        .iter()
        .position(|e| matches!(e, Effect::AppSettingsReplaced { .. }))
        .unwrap();
    assert!(
        first_put > last_vault_write,
        "refreshed before the vault writes"
    );

    assert_eq!(drive_to_end(&runner, &clock, id).await, Phase::Completed);
    assert_eq!(
        settings_puts(&fake, "orders-web", None).len(),
        2,
        "refreshed again"
    );
    assert_eq!(fake.app_settings("orders-web", None), seeded);
    untouched_unconfigured(&fake);
}

/// An undone fleet rotation writes each refreshed setting back as it was captured.
#[tokio::test]
async fn an_undone_fleet_rotation_restores_the_settings_it_refreshed() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    fake.set_propagation_delay_ms(3_600_000);
    let dir = tempfile::tempdir().unwrap();
    let (config, seeded) = with_sites(
        &fake,
        dir.path(),
        "[fleet.rotation]\ngrace = \"1h\"\nattempts_max = 1\npropagation = \"1s\"\n",
        None,
    );
    let plans = plan_with_sites(&config, &clock).await;
    assert_eq!(plans.rotations[0].settings.len(), 2);
    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let runner = runner(&config, &clock, journal);
    let id = "0197a000-0000-7000-8000-00000000b00b";
    runner
        .request(
            plans.rotations[0].plan.clone(),
            Trigger::Bulk,
            "test",
            id.to_owned(),
        )
        .await
        .unwrap();
    assert_eq!(drive_to_end(&runner, &clock, id).await, Phase::Compensated);
    // Two refreshes, then two restores of the captured references.
    assert_eq!(settings_puts(&fake, "orders-web", None).len(), 4);
    assert_eq!(fake.app_settings("orders-web", None), seeded);
    untouched_unconfigured(&fake);
}

/// A reference that pins a version of a copy refuses the rotation, naming the setting,
/// the site and what to do; nothing changes.
#[tokio::test]
async fn a_pinned_reference_to_a_copy_refuses_the_rotation() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = with_sites(
        &fake,
        dir.path(),
        "[fleet.rotation]\ngrace = \"1h\"\n",
        Some("0123456789abcdef0123456789abcdef"),
    );
    let plans = plan_with_sites(&config, &clock).await;
    assert!(plans.rotations.is_empty());
    let reason = &plans.refused[0].reason;
    assert!(
        reason.contains("setting ORDERS_COPY of App Service site")
            && reason
                .contains("pins version 0123456789abcdef0123456789abcdef of kv-beta/orders-copy")
            && reason.contains("make the reference versionless"),
        "{reason}"
    );
    assert!(fake.effects().is_empty());
}

/// A fleet rotation never fetches the value a vault copy held: Graph (and the plan) name
/// the password in use, so the rotator's capture needs no value, and the copies' captures
/// journal the versions they held without reading them. Undoing a fleet rotation needs no
/// old value either (a new version is written, the old ones stay).
#[tokio::test]
async fn a_fleet_rotation_fetches_no_old_value_from_the_vaults() {
    let (fake, clock) = fake().await;
    seed_orders(&fake);
    let old: Vec<(String, String)> = [
        ("kv-alpha", "orders-client-secret"),
        ("kv-beta", "orders-copy"),
    ]
    .iter()
    .map(|(v, i)| ((*i).to_owned(), fake.kv_versions(v, i)[0].version.clone()))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&fake, dir.path());
    let plans = discover_and_plan(&config, &clock).await;
    let journal = Arc::new(MemoryJournal::new(Arc::new(clock.clone())));
    let runner = runner(&config, &clock, journal.clone());
    let id = "0197a000-0000-7000-8000-0000000001d1";
    runner
        .request(
            plans.rotations[0].plan.clone(),
            Trigger::Bulk,
            "test",
            id.to_owned(),
        )
        .await
        .unwrap();
    assert_eq!(drive_to_end(&runner, &clock, id).await, Phase::Completed);
    let value_reads: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::KeyVault && r.method == "GET")
        .map(|r| r.path)
        .filter(|p| {
            old.iter()
                .any(|(item, version)| p.contains(&format!("/secrets/{item}/{version}")))
        })
        .collect();
    assert!(
        value_reads.is_empty(),
        "old values fetched: {value_reads:?}"
    );
    // The captures still journal the versions the copies held.
    let captured: Vec<String> = events(journal.as_ref(), id)
        .await
        .into_iter()
        .filter_map(|e| match e {
            RotationEvent::StepSucceeded {
                step, id: Some(v), ..
            } if step.action == rekey::saga::Action::Capture => Some(v),
            _ => None,
        })
        .collect();
    for (_, version) in &old {
        assert!(
            captured.iter().any(|c| c.contains(version.as_str())),
            "{captured:?}"
        );
    }
}
