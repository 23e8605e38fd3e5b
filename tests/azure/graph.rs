//! `AppPasswords` (Entra application passwords) through its role traits: create,
//! verification while a password propagates, orphans from a lost `addPassword` response,
//! and retirement that touches only the passwords rekey made for this secret.

use rekey::provider::Reconciled;
use rekey::providers::azure::graph::display_prefix;
use rekey::saga::{Action, ErrorClass};

use super::{APP_ID, APP_OBJECT_ID, Env, Perform, Step};
use crate::fake_azure::{Effect, Fault, Route};

const SECRET: &str = "app-secret";

fn removed(env: &Env, key_id: &str) -> usize {
    env.effects_where(
        |e| matches!(e, Effect::GraphPasswordRemoved { key_id: k, .. } if k.eq_ignore_ascii_case(key_id)),
    )
}

fn live_key_ids(env: &Env) -> Vec<String> {
    let mut ids: Vec<String> = env
        .fake
        .app_passwords(APP_OBJECT_ID)
        .into_iter()
        .map(|p| p.key_id)
        .collect();
    ids.sort();
    ids
}

/// Create adds a password named after the step's key and returns its keyId and text.
#[tokio::test]
async fn create_returns_the_key_id_and_the_text() {
    let env = Env::start().await;
    env.seed_app();
    let step = Step::new(SECRET, Action::Create);
    let got = env.app_passwords(0).apply(&step.call()).await.unwrap();

    let passwords = env.fake.app_passwords(APP_OBJECT_ID);
    assert_eq!(passwords.len(), 1);
    let p = &passwords[0];
    assert_eq!(got.id.as_deref(), Some(p.key_id.as_str()));
    assert_eq!(got.value.unwrap().expose(), p.secret_text);
    assert_eq!(
        p.display_name.as_deref(),
        Some(format!("{}{}", display_prefix(SECRET), step.key).as_str())
    );
}

/// A new password that works only after 1.5 s: verification keeps asking for a token with
/// it and succeeds within its bound.
#[tokio::test]
async fn verify_waits_for_propagation() {
    let env = Env::start_real_clock().await;
    env.seed_app();
    env.fake.set_propagation_delay_ms(1_500);
    let app = env.app_passwords(8_000);
    let created = app
        .apply(&Step::new(SECRET, Action::Create).call())
        .await
        .unwrap();
    let value = created.value.unwrap();
    app.apply(
        &Step::new(SECRET, Action::Verify)
            .value(value.expose())
            .call(),
    )
    .await
    .unwrap();
    assert!(
        env.token_requests(APP_ID) >= 2,
        "verification succeeded at once: the propagation delay was not exercised"
    );
}

/// A password that never works fails verification once the propagation bound has passed,
/// with a permanent error that says so and does not quote the password.
#[tokio::test]
async fn verify_of_a_bad_value_fails_after_the_bound() {
    let env = Env::start_real_clock().await;
    env.seed_app();
    let bad = "not-a-password-of-this-app";
    let err = env
        .app_passwords(1_000)
        .apply(&Step::new(SECRET, Action::Verify).value(bad).call())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("does not authenticate after"),
        "{}",
        err.message
    );
    assert!(!err.message.contains(bad), "{}", err.message);
    assert!(env.token_requests(APP_ID) >= 2, "it never retried");
}

/// `addPassword` applied but its response lost: reconcile reports the password as an
/// unusable orphan, `DiscardLost` removes it, and then the step counts as not applied.
#[tokio::test]
async fn lost_add_password_is_an_orphan_that_discard_lost_removes() {
    let env = Env::start().await;
    env.seed_app();
    let (hand_made, _) = env.fake.app_add_password(APP_OBJECT_ID, "made by hand");
    let app = env.app_passwords(0);
    let step = Step::new(SECRET, Action::Create);

    env.fake
        .inject(Route::GraphAddPassword, Fault::ApplyThenDropResponse, 1);
    let err = app.apply(&step.call()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    let orphan = env
        .fake
        .app_passwords(APP_OBJECT_ID)
        .into_iter()
        .find(|p| p.key_id != hand_made)
        .expect("the password was added despite the lost response");

    let found = app.reconcile(&step.call()).await.unwrap();
    assert_eq!(
        found,
        Reconciled::AppliedUnusable {
            orphan_id: orphan.key_id.clone()
        }
    );
    let discard = Step::new(SECRET, Action::DiscardLost).produced(&orphan.key_id);
    app.compensate(&discard.call()).await.unwrap();
    assert_eq!(live_key_ids(&env), std::slice::from_ref(&hand_made));
    assert_eq!(removed(&env, &orphan.key_id), 1);
    assert_eq!(
        app.reconcile(&step.call()).await.unwrap(),
        Reconciled::NotApplied
    );
}

/// Capture names exactly the passwords rekey created for this secret; RetireOld removes
/// exactly those, never a hand-made one nor another secret's; retiring again (each already
/// gone) counts as done and removes nothing more.
#[tokio::test]
async fn retire_old_removes_only_captured_rekey_passwords() {
    let env = Env::start().await;
    env.seed_app();
    let prefix = display_prefix(SECRET);
    let (old_a, _) = env
        .fake
        .app_add_password(APP_OBJECT_ID, &format!("{prefix}rot-a:create:0:0"));
    let (old_b, _) = env
        .fake
        .app_add_password(APP_OBJECT_ID, &format!("{prefix}rot-b:create:0:0"));
    let (hand_made, _) = env.fake.app_add_password(APP_OBJECT_ID, "ci pipeline");
    let (other_secret, _) = env
        .fake
        .app_add_password(APP_OBJECT_ID, "rekey:other-secret:rot-c:create:0:0");
    let (unnamed_like, _) = env
        .fake
        .app_add_password(APP_OBJECT_ID, &format!("x{prefix}rot-d"));
    let app = env.app_passwords(0);

    let captured = app
        .apply(&Step::new(SECRET, Action::Capture).call())
        .await
        .unwrap()
        .id
        .expect("two rekey passwords to capture");
    let mut want = [old_a.clone(), old_b.clone()];
    want.sort();
    assert_eq!(captured, want.join(","));

    // A new password made by this rotation is not captured, so it survives retirement.
    let new = app
        .apply(&Step::new(SECRET, Action::Create).call())
        .await
        .unwrap()
        .id
        .unwrap();
    let retire = Step::new(SECRET, Action::RetireOld).captured(Some(&captured));
    app.apply(&retire.call()).await.unwrap();
    let mut left = vec![hand_made, other_secret, unnamed_like, new];
    left.sort();
    assert_eq!(live_key_ids(&env), left);
    assert_eq!((removed(&env, &old_a), removed(&env, &old_b)), (1, 1));

    app.apply(&retire.call()).await.unwrap();
    assert_eq!(
        env.effects_where(|e| matches!(e, Effect::GraphPasswordRemoved { .. })),
        2,
        "retiring again removed something"
    );
    assert_eq!(live_key_ids(&env), left);
}
