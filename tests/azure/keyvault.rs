//! `KeyVaultStore` through its role traits: capture, tagged writes, reconciliation after
//! a lost response (over many small pages), restore, disable, read-back, verification, and
//! the errors an operator sees.

use rekey::provider::{Reconciled, Store};
use rekey::providers::azure::keyvault::{KEY_TAG, KeyVaultStore, ROTATION_TAG};
use rekey::saga::{Action, ErrorClass};

use super::{Env, Perform, Step, VAULT, url};
use crate::fake_azure::{Effect, Fault, Route, Service};

const SECRET: &str = "payments-api";

fn kv_sets(env: &Env) -> usize {
    env.effects_where(|e| matches!(e, Effect::KvVersionCreated { .. }))
}

fn version_list_requests(env: &Env) -> usize {
    env.fake
        .requests()
        .iter()
        .filter(|r| r.service == Service::KeyVault && r.path.contains("/versions"))
        .count()
}

/// Capture answers `None` for a secret that does not exist and the latest version's full
/// id for one that does.
#[tokio::test]
async fn capture_names_the_latest_version_or_none() {
    let env = Env::start().await;
    let kv = env.kv();
    let got = kv
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap();
    assert_eq!(got.id, None, "a new secret has no version");

    env.fake.kv_seed(VAULT, SECRET, "v1");
    let latest = env.fake.kv_seed(VAULT, SECRET, "v2");
    let got = kv
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap();
    let want = format!("{}/secrets/{SECRET}/{latest}", env.fake.keyvault_url(VAULT));
    assert_eq!(got.id.as_deref(), Some(want.as_str()));
    assert!(got.value.is_none(), "capture never returns a value");
}

/// A write creates one new version holding the value, tagged with the rotation and the
/// step's idempotency key; its id reads back the value.
#[tokio::test]
async fn write_creates_one_tagged_version() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, SECRET, "old");
    let kv = env.kv();
    let step = Step::new(SECRET, Action::Write).value("new-value-1");
    let got = kv.apply(&step.call()).await.unwrap();

    let versions = env.fake.kv_versions(VAULT, SECRET);
    assert_eq!(versions.len(), 2);
    let new = &versions[1];
    assert_eq!(got.id.as_deref(), Some(new.id.as_str()));
    assert_eq!(new.value, "new-value-1");
    assert_eq!(new.tags.get(ROTATION_TAG), Some(&step.rotation_id));
    assert_eq!(new.tags.get(KEY_TAG), Some(&step.key));
    assert_eq!(kv_sets(&env), 1);

    let read = kv.read_value(&new.id).await.unwrap();
    assert_eq!(read.expose(), "new-value-1");
}

/// A write whose response is lost fails, yet the version exists: reconcile finds it by its
/// tag, following `nextLink` through an empty first page and one-item pages, answers the
/// same version id, and no second version is ever written.
#[tokio::test]
async fn reconcile_finds_a_write_whose_response_was_lost() {
    let env = Env::start().await;
    for i in 0..5 {
        env.fake.kv_seed(VAULT, SECRET, &format!("old-{i}"));
    }
    env.fake.set_kv_page_size(1);
    env.fake.set_kv_empty_first_page(true);
    let kv = env.kv();
    let step = Step::new(SECRET, Action::Write).value("lost-response-value");

    env.fake
        .inject(Route::KvSet, Fault::ApplyThenDropResponse, 1);
    let err = kv.apply(&step.call()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    let versions = env.fake.kv_versions(VAULT, SECRET);
    assert_eq!(versions.len(), 6, "the write happened despite the error");
    let written = versions.last().unwrap();

    let lists_before = version_list_requests(&env);
    let found = kv.reconcile(&step.call()).await.unwrap();
    assert_eq!(
        found,
        Reconciled::Applied {
            id: Some(written.id.clone())
        }
    );
    assert!(
        version_list_requests(&env) - lists_before >= 2,
        "the empty first page's nextLink was not followed"
    );
    assert_eq!(kv_sets(&env), 1, "reconcile must not write again");
    assert_eq!(env.fake.kv_versions(VAULT, SECRET).len(), 6);
}

/// A write the vault refused did not happen: reconcile answers `NotApplied` after reading
/// every page, and a version tagged with another step's key does not count.
#[tokio::test]
async fn reconcile_reports_a_failed_write_as_not_applied() {
    let env = Env::start().await;
    for i in 0..3 {
        env.fake.kv_seed(VAULT, SECRET, &format!("old-{i}"));
    }
    env.fake.set_kv_page_size(2);
    env.fake.set_kv_empty_first_page(true);
    let kv = env.kv();
    // An earlier rotation's write, tagged with its own key.
    kv.apply(
        &Step::new(SECRET, Action::Write)
            .rotation("rot-0")
            .value("earlier")
            .call(),
    )
    .await
    .unwrap();

    let step = Step::new(SECRET, Action::Write).value("never-written");
    env.fake
        .inject(Route::KvSet, Fault::Status { code: 500 }, 1);
    let err = kv.apply(&step.call()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);

    let lists_before = version_list_requests(&env);
    assert_eq!(
        kv.reconcile(&step.call()).await.unwrap(),
        Reconciled::NotApplied
    );
    // 4 versions in pages of 2 after an empty page: 3 pages at least.
    assert!(version_list_requests(&env) - lists_before >= 3);
    assert_eq!(env.fake.kv_versions(VAULT, SECRET).len(), 4);
}

/// Restore writes the old value back as the newest version (versions cannot be
/// un-created), tagged with the restore step's key so it too can be reconciled.
#[tokio::test]
async fn restore_writes_the_old_value_back_as_a_new_version() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, SECRET, "old-value");
    let kv = env.kv();
    let write = Step::new(SECRET, Action::Write).value("new-value");
    let new_id = kv.apply(&write.call()).await.unwrap().id.unwrap();

    let restore = Step::new(SECRET, Action::Restore)
        .value("old-value")
        .produced(&new_id);
    let got = kv.compensate(&restore.call()).await.unwrap();
    let versions = env.fake.kv_versions(VAULT, SECRET);
    assert_eq!(versions.len(), 3, "exactly one extra version");
    let restored = versions.last().unwrap();
    assert_eq!(got.id.as_deref(), Some(restored.id.as_str()));
    assert_eq!(restored.value, "old-value");
    assert_eq!(restored.tags.get(KEY_TAG), Some(&restore.key));
    assert_eq!(
        kv.reconcile(&restore.call()).await.unwrap(),
        Reconciled::Applied {
            id: Some(restored.id.clone())
        }
    );
}

/// A secret that did not exist before the rotation is "restored" by disabling the version
/// the rotation wrote.
#[tokio::test]
async fn restore_of_a_new_secret_disables_the_written_version() {
    let env = Env::start().await;
    let kv = env.kv();
    let new_id = kv
        .apply(&Step::new(SECRET, Action::Write).value("new").call())
        .await
        .unwrap()
        .id
        .unwrap();
    kv.compensate(&Step::new(SECRET, Action::Restore).produced(&new_id).call())
        .await
        .unwrap();
    let versions = env.fake.kv_versions(VAULT, SECRET);
    assert_eq!(versions.len(), 1);
    assert!(!versions[0].enabled);
}

/// DisableOld disables exactly the captured version; the new one stays enabled.
#[tokio::test]
async fn disable_old_disables_the_captured_version_only() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, SECRET, "old");
    let kv = env.kv();
    let old = kv
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap()
        .id
        .unwrap();
    kv.apply(&Step::new(SECRET, Action::Write).value("new").call())
        .await
        .unwrap();
    kv.apply(
        &Step::new(SECRET, Action::DisableOld)
            .captured(Some(&old))
            .call(),
    )
    .await
    .unwrap();
    let versions = env.fake.kv_versions(VAULT, SECRET);
    assert_eq!(
        versions.iter().map(|v| v.enabled).collect::<Vec<_>>(),
        [false, true]
    );
    // Nothing captured (the secret was new): nothing to disable.
    kv.apply(&Step::new(SECRET, Action::DisableOld).call())
        .await
        .unwrap();
    assert_eq!(
        env.effects_where(|e| matches!(e, Effect::KvVersionUpdated { .. })),
        1
    );
}

/// As a verifier, the vault accepts the value its latest version holds and refuses any
/// other, permanently, without quoting either value.
#[tokio::test]
async fn verify_compares_the_latest_version_with_the_new_value() {
    let env = Env::start().await;
    env.fake.kv_seed(VAULT, SECRET, "old-value");
    env.fake.kv_seed(VAULT, SECRET, "current-value");
    let kv = env.kv();
    kv.apply(
        &Step::new(SECRET, Action::Verify)
            .value("current-value")
            .call(),
    )
    .await
    .unwrap();
    let err = kv
        .apply(&Step::new(SECRET, Action::Verify).value("old-value").call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("verification failed"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("old-value") && !err.message.contains("current-value"));
    let err = kv
        .apply(
            &Step::new("no-such-secret", Action::Verify)
                .value("x")
                .call(),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("does not exist"), "{}", err.message);
}

/// A 403 on `set` is permanent and tells the operator which role to grant.
#[tokio::test]
async fn denied_set_names_the_missing_role() {
    let env = Env::start().await;
    env.fake.deny(Route::KvSet);
    let err = env
        .kv()
        .apply(&Step::new(SECRET, Action::Write).value("v").call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    let prefix = format!(
        "Key Vault denied `set` on secret {SECRET} in {}",
        env.fake.keyvault_url(VAULT)
    );
    assert!(err.message.starts_with(&prefix), "{}", err.message);
    assert!(
        err.message.contains("grant Key Vault Secrets Officer"),
        "{}",
        err.message
    );
}

/// A 429 is classified as rate limited and carries the `Retry-After` the vault sent.
#[tokio::test]
async fn throttling_carries_retry_after() {
    let env = Env::start().await;
    env.fake.inject(
        Route::KvSet,
        Fault::Throttle {
            retry_after_secs: 7,
        },
        1,
    );
    let err = env
        .kv()
        .apply(&Step::new(SECRET, Action::Write).value("v").call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimited, "{}", err.message);
    assert_eq!(err.retry_after_ms, Some(7_000));
    assert!(env.fake.kv_versions(VAULT, SECRET).is_empty());
}

/// With challenge verification on (the default), a loopback vault's challenge for
/// `vault.azure.net` is refused with a message saying why, and no token is ever sent.
#[tokio::test]
async fn challenge_verification_refuses_a_loopback_vault() {
    let env = Env::start().await;
    let kv = KeyVaultStore::new(
        env.http.clone(),
        env.credential.clone(),
        url(&env.fake.keyvault_url(VAULT)),
    );
    let err = kv
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("is not the vault's domain; refusing")
            && err
                .message
                .contains("verify_challenge_resource = false on its key_vault provider"),
        "{}",
        err.message
    );
    assert!(env.fake.requests().iter().all(|r| !r.had_bearer));
    assert_eq!(env.token_requests(super::CLIENT_ID), 0);
}
