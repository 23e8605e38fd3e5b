//! Whole rotations through the runner (in-memory journal, manual clock) against the fakes:
//! the seed-001 API key (random value → Key Vault → App Service setting), its compensation
//! when verification fails, an Entra application password with a lost `addPassword`
//! response, and a storage account key. Each flow returns what it produced, so `hygiene`
//! can run it again and scan for leaks.

use std::collections::BTreeMap;
use std::sync::Arc;

use rekey::journal::MemoryJournal;
use rekey::provider::{Cast, Roles};
use rekey::providers::azure::appservice::Mode;
use rekey::providers::azure::graph::display_prefix;
use rekey::providers::azure::keyvault::KEY_TAG;
use rekey::providers::local::RandomRotator;
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Progress, Runner};
use rekey::saga::{Action, Phase, Role, RotationEvent, StepId, Wait};

use super::{
    ACCOUNT, APP_OBJECT_ID, Env, ErrorLog, REJECTED, RG, Recorded, Rejecting, SITE, SUB, VAULT,
    drive, drive_to_end, events, memory_runner, only, plan, request,
};
use crate::fake_azure::{Effect, Fault, Route};

/// The seed-001 secret: an API key kept in Key Vault and given to an app as a setting.
pub const API_SECRET: &str = "payments-api";
pub const SETTING: &str = "PAYMENTS_API_KEY";
/// Its value before the first rotation.
pub const OLD_API_KEY: &str = "seed-001-old-api-key-4f9a1c77e2";
/// The Entra-password secret.
pub const APP_SECRET: &str = "app-secret";
pub const STORAGE_SECRET: &str = "storage-key";
pub const GRACE_MS: i64 = 3_600_000;
const OTHERS: [(&str, &str); 2] = [("DB_HOST", "db.internal"), ("FEATURE_X", "on")];

/// What a flow leaves behind for inspection.
pub struct FlowRun {
    pub env: Env,
    pub journal: Arc<MemoryJournal>,
    pub rotation_id: String,
    /// Every secret value that existed during the flow (old, new, orphaned, hand-made).
    pub values: Vec<String>,
    /// Every error the flow's providers returned.
    pub errors: ErrorLog,
}

/// Whether the seed-001 verifier accepts the new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
}

/// The providers by name, each noting its errors in `errors`.
fn providers(list: Vec<(&str, Roles)>, errors: &ErrorLog) -> Registry {
    list.into_iter().fold(Registry::new(), |registry, (n, p)| {
        registry.with_roles(n, Recorded::wrap(p, errors))
    })
}

fn settings_with(value: &str) -> BTreeMap<String, String> {
    let mut s: BTreeMap<String, String> = OTHERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    s.insert(SETTING.to_owned(), value.to_owned());
    s
}

/// Drives to the grace period and checks it is a grace wait.
async fn drive_to_grace(runner: &Runner<MemoryJournal>, env: &Env, id: &str) -> i64 {
    match drive(runner, env.manual(), id, true).await {
        Progress::Waiting {
            reason: Wait::Grace,
            until_ms,
        } => until_ms,
        other => panic!("expected the grace period, got {other:?}"),
    }
}

/// The seed-001 providers: a random rotator, the vault, the app setting, and a probe that
/// rejects every new value.
fn seed_001_runner(env: &Env, errors: &ErrorLog) -> (Runner<MemoryJournal>, Arc<MemoryJournal>) {
    memory_runner(
        env.manual(),
        providers(
            vec![
                ("random", roles!(Arc::new(RandomRotator { bytes: 32 }))),
                ("vault", roles!(Arc::new(env.kv()))),
                (
                    "web",
                    roles!(Arc::new(env.app_setting(None, SETTING, Mode::Literal))),
                ),
                ("probe", only(Cast::Verifier(Arc::new(Rejecting)))),
            ],
            errors,
        ),
    )
}

/// The seed-001 plan's targets; the vault verifies unless the probe is to reject.
fn seed_001_targets(verdict: Verdict) -> [(Role, &'static str); 4] {
    let verifier = match verdict {
        Verdict::Accept => "vault",
        Verdict::Reject => "probe",
    };
    [
        (Role::Rotator, "random"),
        (Role::Store, "vault"),
        (Role::Dependent, "web"),
        (Role::Verifier, verifier),
    ]
}

/// Seed 001 end to end, asserting every effect on the way. With [`Verdict::Accept`] the
/// vault verifies the new key and the rotation completes; with [`Verdict::Reject`] a probe
/// refuses it and the rotation compensates.
pub async fn seed_001(verdict: Verdict) -> FlowRun {
    let env = Env::start().await;
    let old_version = env.fake.kv_seed(VAULT, API_SECRET, OLD_API_KEY);
    let mut seeded: Vec<(&str, &str)> = OTHERS.to_vec();
    seeded.push((SETTING, OLD_API_KEY));
    env.fake.site_seed(SUB, RG, SITE, None, &seeded);
    let errors = ErrorLog::default();
    let (runner, journal) = seed_001_runner(&env, &errors);
    let id = "0197a000-0000-7000-8000-000000000001";
    let targets = seed_001_targets(verdict);
    request(&runner, plan(API_SECRET, &targets, GRACE_MS), id).await;

    let values = match verdict {
        Verdict::Accept => {
            let due = drive_to_grace(&runner, &env, id).await;
            let versions = env.fake.kv_versions(VAULT, API_SECRET);
            assert_eq!(versions.len(), 2, "one new version");
            let (old, new) = (&versions[0], &versions[1]);
            assert_eq!(old.version, old_version);
            assert_eq!(new.tags.get("rekey-rotation").map(String::as_str), Some(id));
            assert_eq!(
                new.tags.get(KEY_TAG),
                Some(&StepId::new(Action::Write, 1).key(id))
            );
            assert_eq!(new.value.len(), 64, "32 random bytes, hex");
            assert_ne!(new.value, OLD_API_KEY);
            assert_eq!(
                env.fake.app_settings(SITE, None),
                settings_with(&new.value),
                "only our setting changed, to the vault's new value"
            );
            assert!(
                old.enabled,
                "the old version is disabled only after the grace"
            );

            // Before the due time nothing more happens.
            assert_eq!(
                runner.drive(id).await.unwrap(),
                Progress::Waiting {
                    until_ms: due,
                    reason: Wait::Grace
                }
            );
            env.manual().set(due);
            assert_eq!(
                drive_to_end(&runner, env.manual(), id).await,
                Phase::Completed
            );
            let after = env.fake.kv_versions(VAULT, API_SECRET);
            assert_eq!(
                after.iter().map(|v| v.enabled).collect::<Vec<_>>(),
                [false, true],
                "old version disabled, new one live"
            );
            let writes: Vec<_> = env
                .fake
                .effects()
                .into_iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::KvVersionCreated { .. } | Effect::AppSettingsReplaced { .. }
                    )
                })
                .collect();
            assert_eq!(
                writes.len(),
                2,
                "one version, one settings write: {writes:?}"
            );
            let kinds: Vec<&str> = events(&*journal, id)
                .await
                .iter()
                .map(|e| e.kind())
                .collect();
            assert!(
                kinds.ends_with(&[
                    "GraceScheduled",
                    "StepStarted",
                    "StepSucceeded",
                    "StepStarted",
                    "StepSucceeded",
                    "Completed"
                ]),
                "{kinds:?}"
            );
            vec![OLD_API_KEY.to_owned(), new.value.clone()]
        }
        Verdict::Reject => {
            assert_eq!(
                drive_to_end(&runner, env.manual(), id).await,
                Phase::Compensated
            );
            assert_eq!(
                env.fake.app_settings(SITE, None),
                settings_with(OLD_API_KEY),
                "the setting holds the old value again, the others untouched"
            );
            let versions = env.fake.kv_versions(VAULT, API_SECRET);
            assert_eq!(
                versions.len(),
                3,
                "old, new, and exactly one restored version"
            );
            let (new, restored) = (&versions[1], &versions[2]);
            assert_eq!(
                restored.value, OLD_API_KEY,
                "the old value is the latest again"
            );
            assert_eq!(
                restored.tags.get(KEY_TAG),
                Some(&StepId::new(Action::Restore, 1).key(id))
            );
            // I8: the failed rotation's version and the captured one are disabled.
            let enabled: Vec<bool> = versions.iter().map(|v| v.enabled).collect();
            assert_eq!(enabled, [false, false, true]);
            let started = events(&*journal, id)
                .await
                .into_iter()
                .find_map(|e| match e {
                    RotationEvent::CompensationStarted { reason } => Some(reason),
                    _ => None,
                });
            assert!(
                started.as_deref().is_some_and(|r| r.contains(REJECTED)),
                "{started:?}"
            );
            vec![OLD_API_KEY.to_owned(), new.value.clone()]
        }
    };
    assert!(
        runner.open_rotations().await.unwrap().is_empty(),
        "the rotation is still open"
    );
    // The lock is released: a new request opens a new rotation rather than coalescing.
    request(
        &runner,
        plan(API_SECRET, &targets, GRACE_MS),
        "0197a000-0000-7000-8000-0000000000ff",
    )
    .await;
    FlowRun {
        env,
        journal,
        rotation_id: id.to_owned(),
        values,
        errors,
    }
}

/// Seed 001: random key → new vault version → app setting merged → verified by the vault →
/// grace → old version disabled → Completed; the old version survives the grace period.
#[tokio::test]
async fn seed_001_completes() {
    seed_001(Verdict::Accept).await;
}

/// Seed 001 with a verifier that refuses the new key: the app setting gets the old value
/// back, the old value is written back as exactly one extra vault version, the rotation ends
/// Compensated, and its lock is released.
#[tokio::test]
async fn seed_001_compensates_when_verification_fails() {
    seed_001(Verdict::Reject).await;
}

/// A secret new to the vault whose first rotation was compensated (so its only version is
/// now disabled) can be rotated again: the next rotation's capture must not fail on the
/// disabled latest version.
#[tokio::test]
async fn a_new_secret_compensated_once_rotates_again() {
    let env = Env::start().await;
    env.fake.site_seed(SUB, RG, SITE, None, &OTHERS);
    let errors = ErrorLog::default();
    let (runner, journal) = seed_001_runner(&env, &errors);
    let first = "0197a000-0000-7000-8000-000000000005";
    let targets = seed_001_targets(Verdict::Reject);
    request(&runner, plan(API_SECRET, &targets, GRACE_MS), first).await;
    assert_eq!(
        drive_to_end(&runner, env.manual(), first).await,
        Phase::Compensated
    );
    let versions = env.fake.kv_versions(VAULT, API_SECRET);
    assert_eq!(versions.len(), 1);
    assert!(!versions[0].enabled, "the only version was disabled");
    assert!(!env.fake.app_settings(SITE, None).contains_key(SETTING));

    let second = "0197a000-0000-7000-8000-000000000006";
    let targets = seed_001_targets(Verdict::Accept);
    request(&runner, plan(API_SECRET, &targets, GRACE_MS), second).await;
    let phase = drive_to_end(&runner, env.manual(), second).await;
    let reason = events(&*journal, second)
        .await
        .into_iter()
        .find_map(|e| match e {
            RotationEvent::CompensationStarted { reason } => Some(reason),
            _ => None,
        });
    assert_eq!(
        phase,
        Phase::Completed,
        "the second rotation compensated: {reason:?}"
    );
    let latest = env.fake.kv_versions(VAULT, API_SECRET).pop().unwrap();
    assert!(latest.enabled);
    assert_eq!(env.fake.app_settings(SITE, None)[SETTING], latest.value);
}

/// An Entra password rotation whose first `addPassword` response is lost: the orphan is
/// removed, a new password is created, stored and verified; the previous rotation's password
/// is removed exactly once, only after the grace; a hand-made password is never touched.
pub async fn entra() -> FlowRun {
    let env = Env::start().await;
    env.seed_app();
    let prefix = display_prefix(APP_SECRET);
    let (old_key, old_text) = env.fake.app_add_password(
        APP_OBJECT_ID,
        &format!("{prefix}0197a000-previous:create:1:0"),
    );
    let (hand_key, hand_text) = env.fake.app_add_password(APP_OBJECT_ID, "made by hand");
    env.fake.kv_seed(VAULT, APP_SECRET, &old_text);
    let entra = roles!(Arc::new(env.app_passwords(10_000)));
    let errors = ErrorLog::default();
    let (runner, journal) = memory_runner(
        env.manual(),
        providers(
            vec![("entra", entra), ("vault", roles!(Arc::new(env.kv())))],
            &errors,
        ),
    );
    let id = "0197a000-0000-7000-8000-000000000003";
    let targets = [
        (Role::Rotator, "entra"),
        (Role::Store, "vault"),
        (Role::Verifier, "entra"),
    ];
    request(&runner, plan(APP_SECRET, &targets, GRACE_MS), id).await;
    let removals = |key: &str| {
        env.effects_where(|e| {
            matches!(e, Effect::GraphPasswordRemoved { key_id, .. } if key_id.eq_ignore_ascii_case(key))
        })
    };
    let live = || -> Vec<String> {
        let mut ids: Vec<String> = env
            .fake
            .app_passwords(APP_OBJECT_ID)
            .into_iter()
            .map(|p| p.key_id)
            .collect();
        ids.sort();
        ids
    };

    env.fake
        .inject(Route::GraphAddPassword, Fault::ApplyThenDropResponse, 1);
    let first = runner.drive(id).await.unwrap();
    assert!(
        matches!(
            first,
            Progress::Waiting {
                reason: Wait::Backoff,
                ..
            }
        ),
        "{first:?}"
    );
    let orphan = env
        .fake
        .app_passwords(APP_OBJECT_ID)
        .into_iter()
        .find(|p| p.key_id != old_key && p.key_id != hand_key)
        .expect("the lost addPassword created a password");

    let due = drive_to_grace(&runner, &env, id).await;
    assert_eq!(removals(&orphan.key_id), 1, "the orphan was removed");
    assert_eq!(
        removals(&old_key),
        0,
        "the old password went before the grace"
    );
    let new = env
        .fake
        .app_passwords(APP_OBJECT_ID)
        .into_iter()
        .find(|p| ![&old_key, &hand_key, &orphan.key_id].contains(&&p.key_id))
        .expect("a new password");
    let mut want = vec![old_key.clone(), hand_key.clone(), new.key_id.clone()];
    want.sort();
    assert_eq!(live(), want);
    let versions = env.fake.kv_versions(VAULT, APP_SECRET);
    assert_eq!(
        versions.last().map(|v| v.value.as_str()),
        Some(new.secret_text.as_str()),
        "the vault holds the new password"
    );
    let discarded = events(&*journal, id).await.into_iter().any(|e| {
        matches!(e, RotationEvent::StepNotApplied { orphan_discarded: Some(o), .. } if o == orphan.key_id)
    });
    assert!(
        discarded,
        "the journal does not record the discarded orphan"
    );

    env.manual().set(due);
    assert_eq!(
        drive_to_end(&runner, env.manual(), id).await,
        Phase::Completed
    );
    assert_eq!(
        removals(&old_key),
        1,
        "the old password is removed exactly once"
    );
    let mut want = vec![hand_key.clone(), new.key_id.clone()];
    want.sort();
    assert_eq!(live(), want);
    let rekey_passwords: Vec<_> = env
        .fake
        .app_passwords(APP_OBJECT_ID)
        .into_iter()
        .filter(|p| {
            p.display_name
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|p| p.key_id)
        .collect();
    assert_eq!(
        rekey_passwords,
        std::slice::from_ref(&new.key_id),
        "exactly one live rekey password"
    );
    assert!(
        !env.fake.kv_versions(VAULT, APP_SECRET)[0].enabled,
        "the old vault version is disabled"
    );
    assert!(runner.open_rotations().await.unwrap().is_empty());
    FlowRun {
        env,
        journal,
        rotation_id: id.to_owned(),
        values: vec![old_text, hand_text, orphan.secret_text, new.secret_text],
        errors,
    }
}

/// See [`entra`].
#[tokio::test]
async fn entra_password_rotation_survives_a_lost_add_password() {
    entra().await;
}

/// A storage key rotation: the idle key is regenerated and stored, and after the grace
/// the key that was in use is regenerated, once.
pub async fn storage() -> FlowRun {
    let env = Env::start().await;
    env.fake.storage_seed(SUB, RG, ACCOUNT);
    let before = env.fake.storage_keys(ACCOUNT);
    let errors = ErrorLog::default();
    let (runner, journal) = memory_runner(
        env.manual(),
        providers(
            vec![
                ("keys", roles!(Arc::new(env.storage()))),
                ("vault", roles!(Arc::new(env.kv()))),
            ],
            &errors,
        ),
    );
    let id = "0197a000-0000-7000-8000-000000000004";
    let targets = [
        (Role::Rotator, "keys"),
        (Role::Store, "vault"),
        (Role::Verifier, "vault"),
    ];
    request(&runner, plan(STORAGE_SECRET, &targets, GRACE_MS), id).await;
    env.manual().advance(1_000);
    let due = drive_to_grace(&runner, &env, id).await;
    let during = env.fake.storage_keys(ACCOUNT);
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != during[*k]).collect();
    assert_eq!(changed.len(), 1, "exactly the idle key is regenerated");
    let new_value = &during[changed[0]];
    assert_eq!(
        env.fake
            .kv_versions(VAULT, STORAGE_SECRET)
            .last()
            .map(|v| &v.value),
        Some(new_value)
    );
    env.manual().set(due);
    assert_eq!(
        drive_to_end(&runner, env.manual(), id).await,
        Phase::Completed
    );
    let after = env.fake.storage_keys(ACCOUNT);
    assert_eq!(
        &after[changed[0]], new_value,
        "the new key survives retirement"
    );
    assert_eq!(
        env.effects_where(|e| matches!(e, Effect::StorageKeyRegenerated { .. })),
        2
    );
    let mut values: Vec<String> = before.into_values().collect();
    values.extend(after.into_values());
    FlowRun {
        env,
        journal,
        rotation_id: id.to_owned(),
        values,
        errors,
    }
}

/// See [`storage`].
#[tokio::test]
async fn storage_key_rotation_completes() {
    storage().await;
}

/// The seed-001 world with its old key in the vault and the app setting, and its runner.
async fn seeded_001() -> (Env, Runner<MemoryJournal>, ErrorLog) {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, API_SECRET, OLD_API_KEY);
    let mut seeded: Vec<(&str, &str)> = OTHERS.to_vec();
    seeded.push((SETTING, OLD_API_KEY));
    env.fake.site_seed(SUB, RG, SITE, None, &seeded);
    let errors = ErrorLog::default();
    let (runner, _journal) = seed_001_runner(&env, &errors);
    (env, runner, errors)
}

/// The enabled versions of the seed-001 secret, oldest first, by value.
fn enabled_values(env: &Env) -> Vec<String> {
    env.fake
        .kv_versions(VAULT, API_SECRET)
        .into_iter()
        .filter(|v| v.enabled)
        .map(|v| v.value)
        .collect()
}

/// I8 on Key Vault: a compensated rotation leaves one enabled version, the copy of the old
/// value (the failed rotation's version and the captured one are disabled); the next
/// rotation, which completes, leaves only its own version enabled after the grace.
#[tokio::test]
async fn a_compensation_then_a_completion_leave_one_enabled_version() {
    let (env, runner, _errors) = seeded_001().await;

    let first = "0197a000-0000-7000-8000-000000000011";
    request(
        &runner,
        plan(API_SECRET, &seed_001_targets(Verdict::Reject), GRACE_MS),
        first,
    )
    .await;
    assert_eq!(
        drive_to_end(&runner, env.manual(), first).await,
        Phase::Compensated
    );
    assert_eq!(env.fake.kv_versions(VAULT, API_SECRET).len(), 3);
    assert_eq!(
        enabled_values(&env),
        [OLD_API_KEY],
        "only the restored copy is enabled"
    );

    let second = "0197a000-0000-7000-8000-000000000012";
    request(
        &runner,
        plan(API_SECRET, &seed_001_targets(Verdict::Accept), GRACE_MS),
        second,
    )
    .await;
    assert_eq!(
        drive_to_end(&runner, env.manual(), second).await,
        Phase::Completed
    );
    let live = env.fake.app_settings(SITE, None)[SETTING].clone();
    assert_eq!(
        enabled_values(&env),
        [live],
        "only the new version is enabled"
    );
}

/// I8 with one vault entry listed twice as a store: both writes land, and the retirement
/// leaves only the newest enabled.
#[tokio::test]
async fn a_store_listed_twice_leaves_one_enabled_version() {
    let (env, runner, _errors) = seeded_001().await;
    let targets = [
        (Role::Rotator, "random"),
        (Role::Store, "vault"),
        (Role::Store, "vault"),
        (Role::Dependent, "web"),
        (Role::Verifier, "vault"),
    ];
    let id = "0197a000-0000-7000-8000-000000000013";
    request(&runner, plan(API_SECRET, &targets, GRACE_MS), id).await;
    assert_eq!(
        drive_to_end(&runner, env.manual(), id).await,
        Phase::Completed
    );
    assert_eq!(env.fake.kv_versions(VAULT, API_SECRET).len(), 3);
    let live = env.fake.app_settings(SITE, None)[SETTING].clone();
    assert_eq!(enabled_values(&env), [live]);
}

/// A compensation's restore lands in Key Vault but its response is lost. Reconciling is
/// told the rotation had an old value, so it finds the restored copy by its tag and the
/// restore is done: it is not started again (it was, every time, while reconciling was
/// never told; the copy's tag saved it from being written twice).
#[tokio::test]
async fn a_restore_whose_response_was_lost_is_found_done() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, API_SECRET, OLD_API_KEY);
    let mut seeded: Vec<(&str, &str)> = OTHERS.to_vec();
    seeded.push((SETTING, OLD_API_KEY));
    env.fake.site_seed(SUB, RG, SITE, None, &seeded);
    // The rotation's write passes; the restore's set lands and its response is dropped.
    env.fake.inject(Route::KvSet, Fault::Delay { ms: 0 }, 1);
    env.fake
        .inject(Route::KvSet, Fault::ApplyThenDropResponse, 1);
    let errors = ErrorLog::default();
    let (runner, journal) = seed_001_runner(&env, &errors);
    let id = "0197a000-0000-7000-8000-000000000005";
    let targets = seed_001_targets(Verdict::Reject);
    request(&runner, plan(API_SECRET, &targets, GRACE_MS), id).await;
    assert_eq!(
        drive_to_end(&runner, env.manual(), id).await,
        Phase::Compensated
    );

    let restore = StepId::new(Action::Restore, 1);
    let events = events(&*journal, id).await;
    let started = events
        .iter()
        .filter(|e| matches!(e, RotationEvent::StepStarted { step, .. } if *step == restore))
        .count();
    assert_eq!(started, 1, "the restore ran once: {events:#?}");
    let versions = env.fake.kv_versions(VAULT, API_SECRET);
    assert_eq!(versions.len(), 3, "old, new, and one copy of the old");
    let copy = &versions[2];
    assert_eq!(copy.value, OLD_API_KEY);
    assert!(
        events.contains(&RotationEvent::StepSucceeded {
            step: restore,
            id: Some(copy.id.clone()),
            reconciled: true,
        }),
        "{events:#?}"
    );
    let enabled: Vec<&str> = versions
        .iter()
        .filter(|v| v.enabled)
        .map(|v| v.id.as_str())
        .collect();
    assert_eq!(enabled, [copy.id.as_str()], "I8: the copy alone is enabled");
}
