//! `AppSetting` through its role traits: merge-safe updates (only our setting
//! changes), compare-before-write, revert, Key Vault reference mode, slots, and the 403.

use std::collections::BTreeMap;

use rekey::provider::Reconciled;
use rekey::providers::azure::appservice::{ABSENT, Mode, PRESENT};
use rekey::saga::{Action, ErrorClass};

use super::{Env, Perform, RG, SITE, SUB, Step};
use crate::fake_azure::{Effect, Route};

const SECRET: &str = "payments-api";
const SETTING: &str = "PAYMENTS_API_KEY";

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The `AppSettingsReplaced` effects on `slot` of [`SITE`], as their changed keys.
fn replaced(env: &Env, slot: Option<&str>) -> Vec<Vec<String>> {
    env.fake
        .effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::AppSettingsReplaced {
                site,
                slot: s,
                keys_changed,
            } if site == SITE && s.as_deref() == slot => Some(keys_changed),
            _ => None,
        })
        .collect()
}

/// A literal update changes only our setting; repeating it writes nothing; revert puts the
/// old value back; every other setting is untouched throughout.
#[tokio::test]
async fn literal_update_merges_compares_and_reverts() {
    let env = Env::start().await;
    let others = [("DB_HOST", "db.internal"), ("FEATURE_X", "on")];
    let mut seeded = others.to_vec();
    seeded.push((SETTING, "old-value"));
    env.fake.site_seed(SUB, RG, SITE, None, &seeded);
    let app = env.app_setting(None, SETTING, Mode::Literal);

    let captured = app
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap()
        .id;
    assert_eq!(
        captured.as_deref(),
        Some(PRESENT),
        "a literal's value is never captured"
    );

    let update = Step::new(SECRET, Action::Update).value("new-value");
    app.apply(&update.call()).await.unwrap();
    let mut want = settings(&others);
    want.insert(SETTING.into(), "new-value".into());
    assert_eq!(env.fake.app_settings(SITE, None), want);
    assert_eq!(replaced(&env, None), [vec![SETTING.to_owned()]]);

    // Compare before write: the same update again changes nothing and writes nothing.
    app.apply(&update.call()).await.unwrap();
    assert_eq!(
        replaced(&env, None).len(),
        1,
        "identical update was written"
    );
    assert_eq!(
        app.reconcile(&update.call()).await.unwrap(),
        Reconciled::NotApplied
    );

    let revert = Step::new(SECRET, Action::Revert)
        .captured(captured.as_deref())
        .value("old-value");
    app.compensate(&revert.call()).await.unwrap();
    want.insert(SETTING.into(), "old-value".into());
    assert_eq!(env.fake.app_settings(SITE, None), want);
    assert_eq!(replaced(&env, None).len(), 2);
}

/// A setting that did not exist is captured as absent, added by the update, and removed
/// again by revert.
#[tokio::test]
async fn revert_removes_a_setting_that_was_absent() {
    let env = Env::start().await;
    env.fake
        .site_seed(SUB, RG, SITE, None, &[("DB_HOST", "db.internal")]);
    let app = env.app_setting(None, SETTING, Mode::Literal);
    let captured = app
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap()
        .id;
    assert_eq!(captured.as_deref(), Some(ABSENT));
    app.apply(&Step::new(SECRET, Action::Update).value("new").call())
        .await
        .unwrap();
    assert_eq!(
        env.fake
            .app_settings(SITE, None)
            .get(SETTING)
            .map(String::as_str),
        Some("new")
    );
    app.compensate(
        &Step::new(SECRET, Action::Revert)
            .captured(captured.as_deref())
            .call(),
    )
    .await
    .unwrap();
    assert_eq!(
        env.fake.app_settings(SITE, None),
        settings(&[("DB_HOST", "db.internal")])
    );
}

/// In Key Vault reference mode on a slot: capture journals the old reference (an address,
/// not a secret), every update re-writes the map (that is what makes App Service fetch the
/// new version), revert restores the old reference, and the production site is untouched.
#[tokio::test]
async fn reference_mode_on_a_slot() {
    let env = Env::start().await;
    let old_ref = "@Microsoft.KeyVault(VaultName=kv1;SecretName=payments-api-old)";
    let new_ref = "@Microsoft.KeyVault(VaultName=kv1;SecretName=payments-api)";
    let production = [(SETTING, "production-literal"), ("DB_HOST", "db.prod")];
    env.fake.site_seed(SUB, RG, SITE, None, &production);
    env.fake.site_seed(
        SUB,
        RG,
        SITE,
        Some("staging"),
        &[(SETTING, old_ref), ("DB_HOST", "db.staging")],
    );
    let app = env.app_setting(Some("staging"), SETTING, Mode::Reference(new_ref.into()));

    let captured = app
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap()
        .id;
    assert_eq!(captured.as_deref(), Some(old_ref));

    let update = Step::new(SECRET, Action::Update).value("the-new-secret-value");
    app.apply(&update.call()).await.unwrap();
    let staging = env.fake.app_settings(SITE, Some("staging"));
    assert_eq!(
        staging,
        settings(&[(SETTING, new_ref), ("DB_HOST", "db.staging")])
    );
    assert!(
        !staging.values().any(|v| v.contains("the-new-secret-value")),
        "reference mode must never write the value itself"
    );
    // Forced refresh: the identical reference is written again.
    app.apply(&update.call()).await.unwrap();
    assert_eq!(replaced(&env, Some("staging")).len(), 2);

    app.compensate(
        &Step::new(SECRET, Action::Revert)
            .captured(captured.as_deref())
            .call(),
    )
    .await
    .unwrap();
    assert_eq!(
        env.fake.app_settings(SITE, Some("staging")),
        settings(&[(SETTING, old_ref), ("DB_HOST", "db.staging")])
    );
    assert_eq!(env.fake.app_settings(SITE, None), settings(&production));
    assert!(replaced(&env, None).is_empty(), "production was written");
}

/// A literal update of a slot changes the slot only.
#[tokio::test]
async fn literal_update_of_a_slot_leaves_production_alone() {
    let env = Env::start().await;
    env.fake
        .site_seed(SUB, RG, SITE, None, &[(SETTING, "production-value")]);
    env.fake
        .site_seed(SUB, RG, SITE, Some("staging"), &[(SETTING, "old")]);
    let app = env.app_setting(Some("staging"), SETTING, Mode::Literal);
    app.apply(&Step::new(SECRET, Action::Update).value("new").call())
        .await
        .unwrap();
    assert_eq!(
        env.fake.app_settings(SITE, Some("staging")),
        settings(&[(SETTING, "new")])
    );
    assert_eq!(
        env.fake.app_settings(SITE, None),
        settings(&[(SETTING, "production-value")])
    );
}

/// A 403 on the write is permanent, names the setting and the role to grant, and leaves the
/// settings as they were.
#[tokio::test]
async fn denied_write_names_the_grant() {
    let env = Env::start().await;
    env.fake.site_seed(SUB, RG, SITE, None, &[(SETTING, "old")]);
    env.fake.deny(Route::AppSettingsPut);
    let err = env
        .app_setting(None, SETTING, Mode::Literal)
        .apply(&Step::new(SECRET, Action::Update).value("new").call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.starts_with(&format!(
            "App Service denied `write settings` on setting {SETTING} of site {SITE}"
        )),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("grant Website Contributor"),
        "{}",
        err.message
    );
    assert_eq!(
        env.fake.app_settings(SITE, None),
        settings(&[(SETTING, "old")])
    );
}
