//! `StorageKeys` (an alternating rotator) through its role traits. The fake's clock is
//! moved a second before each regeneration, as real time would, so "regenerated last" is
//! always well defined.

use rekey::provider::{Reconciled, Rotator};
use rekey::saga::{Action, ErrorClass};

use super::{ACCOUNT, Env, Perform, RG, SUB, Step};
use crate::fake_azure::{Effect, Fault, Route};

const SECRET: &str = "storage-key";

fn regenerated(env: &Env, name: &str) -> usize {
    env.effects_where(
        |e| matches!(e, Effect::StorageKeyRegenerated { key_name, .. } if key_name == name),
    )
}

/// Captures the pair as the runner would, showing the provider the value the stores hold
/// (if any); returns the capture id and the key it names as in use.
async fn capture(env: &Env, stored: Option<&str>) -> (String, String) {
    let mut step = Step::new(SECRET, Action::Capture);
    if let Some(v) = stored {
        step = step.value(v);
    }
    let id = env
        .storage()
        .apply(&step.call())
        .await
        .unwrap()
        .id
        .expect("a key pair always names a key in use");
    let in_use = id.split('|').next().unwrap().to_owned();
    (id, in_use)
}

/// Capture names a key of the pair; Create regenerates the other one and returns its
/// value, leaving the captured key (still in use) as it was.
#[tokio::test]
async fn create_regenerates_the_idle_key() {
    let env = Env::start().await;
    env.fake.storage_seed(SUB, RG, ACCOUNT);
    let before = env.fake.storage_keys(ACCOUNT);
    let (captured, in_use) = capture(&env, None).await;
    let idle = if in_use == "key1" { "key2" } else { "key1" };

    env.manual().advance(1_000);
    let got = env
        .storage()
        .apply(
            &Step::new(SECRET, Action::Create)
                .captured(Some(&captured))
                .call(),
        )
        .await
        .unwrap();
    let after = env.fake.storage_keys(ACCOUNT);
    assert_eq!(got.id.as_deref(), Some(idle));
    assert_eq!(got.value.unwrap().expose(), after[idle]);
    assert_ne!(after[idle], before[idle]);
    assert_eq!(
        after[&in_use], before[&in_use],
        "the key in use was changed"
    );
    assert_eq!(regenerated(&env, idle), 1);
    assert_eq!(env.fake.effects().len(), 1);
    // The new key is now the newest: without a stored value, a capture names it.
    assert_eq!(capture(&env, None).await.1, idle);
    // With the old value still in the stores, the old key is the one in use.
    let stored = before[&in_use].clone();
    assert_eq!(capture(&env, Some(&stored)).await.1, in_use);
}

/// Regeneration applied but its response lost: reconcile(Create) finds it applied (the
/// idle key became the newest) and the value is read back; RetireOld then regenerates the
/// old key exactly once, after which reconcile(RetireOld) also answers applied.
#[tokio::test]
async fn lost_regeneration_is_reconciled_and_the_old_key_retired_once() {
    let env = Env::start().await;
    env.fake.storage_seed(SUB, RG, ACCOUNT);
    let (captured, in_use) = capture(&env, None).await;
    let idle = if in_use == "key1" { "key2" } else { "key1" };
    let keys = env.storage();
    let create = Step::new(SECRET, Action::Create).captured(Some(&captured));
    let retire = Step::new(SECRET, Action::RetireOld).captured(Some(&captured));

    env.manual().advance(1_000);
    env.fake
        .inject(Route::StorageRegenerateKey, Fault::ApplyThenDropResponse, 1);
    let err = keys.apply(&create.call()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert_eq!(regenerated(&env, idle), 1, "the regeneration happened");

    assert_eq!(
        keys.reconcile(&create.call()).await.unwrap(),
        Reconciled::Applied {
            id: Some(idle.to_owned())
        }
    );
    let value = keys.reveal(idle).await.unwrap().unwrap();
    assert_eq!(value.expose(), env.fake.storage_keys(ACCOUNT)[idle]);
    assert_eq!(
        keys.reconcile(&retire.call()).await.unwrap(),
        Reconciled::NotApplied,
        "retirement has not happened yet"
    );

    env.manual().advance(1_000);
    let old_value = env.fake.storage_keys(ACCOUNT)[&in_use].clone();
    keys.apply(&retire.call()).await.unwrap();
    assert_eq!(regenerated(&env, &in_use), 1);
    assert_ne!(env.fake.storage_keys(ACCOUNT)[&in_use], old_value);
    assert_eq!(
        env.fake.storage_keys(ACCOUNT)[idle],
        value.expose(),
        "retiring the old key changed the new one"
    );
    assert_eq!(
        keys.reconcile(&retire.call()).await.unwrap(),
        Reconciled::Applied { id: None }
    );
    assert_eq!(
        env.fake.effects().len(),
        2,
        "exactly two regenerations in all"
    );
}

/// Two rotations in a row: the second must regenerate the key the first one retired (now
/// idle), never the key the first one handed out, which consumers use until the second
/// rotation's new key reaches them.
#[tokio::test]
async fn second_rotation_keeps_the_key_in_use() {
    let env = Env::start().await;
    env.fake.storage_seed(SUB, RG, ACCOUNT);
    let keys = env.storage();

    // Rotation 1, start to end.
    let (first_captured, _) = capture(&env, None).await;
    env.manual().advance(1_000);
    let handed_out = keys
        .apply(
            &Step::new(SECRET, Action::Create)
                .rotation("rot-1")
                .captured(Some(&first_captured))
                .call(),
        )
        .await
        .unwrap();
    let handed_out_key = handed_out.id.unwrap();
    let handed_out_value = handed_out.value.unwrap();
    env.manual().advance(1_000);
    keys.apply(
        &Step::new(SECRET, Action::RetireOld)
            .rotation("rot-1")
            .captured(Some(&first_captured))
            .call(),
    )
    .await
    .unwrap();

    // Rotation 2: consumers hold `handed_out_value` until this rotation updates them.
    env.manual().advance(1_000);
    let (second_captured, second_in_use) = capture(&env, Some(handed_out_value.expose())).await;
    assert_eq!(
        second_in_use, handed_out_key,
        "capture must name the key consumers use (the one rotation 1 handed out)"
    );
    env.manual().advance(1_000);
    keys.apply(
        &Step::new(SECRET, Action::Create)
            .rotation("rot-2")
            .captured(Some(&second_captured))
            .call(),
    )
    .await
    .unwrap();
    assert_eq!(
        env.fake.storage_keys(ACCOUNT)[&handed_out_key],
        handed_out_value.expose(),
        "rotation 2 regenerated the key in use before any consumer had the new one"
    );
}
