//! Bulk rotation against a vault that throttles as Key Vault does, at a twentieth of its
//! rate (200 requests per 2 s instead of 2,000 per 10 s): a debug build here sends about 110
//! requests a second, so at the real limit no load it can make would ever be throttled and
//! the test could not fail. The window is shortened only 5 times, so the budget's margin
//! (5% of a window: 100 ms) covers the in-process scheduling delay between a request's
//! slot and its arrival at the fake on a loaded 2-core machine; with a 1 s window (50 ms)
//! it did not, once in six runs. Every rotation runs concurrently through the real runner, and
//! with the vault's request budget none of them is ever answered 429. Without the budget
//! the same load is throttled, which shows the first test can fail.
//!
//! Real clock for the bulk tests (the fake's window, rekey's budget and the runner's backoff
//! all pass in real time); nothing here asserts how long anything took. The fake's limit
//! itself is checked first, on a manual clock.

use std::sync::Arc;

use rekey::journal::{Clock, MemoryJournal, SystemClock};
use rekey::provider::Cast;
use rekey::providers::azure::budget::{RequestBudget, SAFETY_PERCENT};
use rekey::providers::azure::keyvault::KeyVaultStore;
use rekey::providers::local::RandomRotator;
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Runner, tokio_sleep};
use rekey::saga::{Phase, Role, Trigger};
use tokio::task::JoinSet;

use super::{Env, VAULT, failure_messages, plan};
use crate::fake_azure::Service;

/// Secrets rotated at once; each rotation sends the vault 6 requests (capture, read back
/// the captured value for the rotator, write, two to verify, disable the old version), so
/// 1,200 in all: 6 windows' worth at the limit.
const SECRETS: usize = 200;
/// The fake vault's limit: requests per window.
const LIMIT: u32 = 200;
const WINDOW_MS: u64 = 2_000;

/// The runner over the random rotator and `kv` as store and verifier, on the real clock,
/// and its journal.
fn runner(kv: KeyVaultStore) -> (Arc<Runner<MemoryJournal>>, Arc<MemoryJournal>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = Registry::new()
        .with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        )
        .with_roles("vault", roles!(Arc::new(kv)));
    let mut options = Options::new("throttle-test", 11);
    // Calls may wait in the budget's queue for seconds: renew leases meanwhile.
    options.sleep = Some(tokio_sleep());
    // Hundreds of rotations share two test threads with the fake vault and the other
    // tests: a long lease keeps a starved renewal from failing a test about throttling.
    options.lease_ttl_ms = 120_000;
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let runner = Runner::new(journal.clone(), Arc::new(providers), clock, options);
    (Arc::new(runner), journal)
}

fn secret(i: usize) -> String {
    format!("bulk-{i:04}")
}

/// Seeds [`SECRETS`] secrets and requests a rotation of each (grace 0).
async fn request_all(env: &Env, runner: &Runner<MemoryJournal>) -> Vec<String> {
    let targets = [
        (Role::Rotator, "random"),
        (Role::Store, "vault"),
        (Role::Verifier, "vault"),
    ];
    let mut ids = Vec::new();
    for i in 0..SECRETS {
        env.fake.kv_seed(VAULT, &secret(i), "old-value");
        let id = format!("0197b000-0000-7000-8000-{i:012}");
        runner
            .request(
                plan(&secret(i), &targets, 0),
                Trigger::Bulk,
                "throttle-test",
                id.clone(),
            )
            .await
            .expect("request");
        ids.push(id);
    }
    ids
}

/// Drives every rotation concurrently; each is driven again when its wait is over, up to
/// `drives` times. Returns the last progress of each.
async fn drive_all(
    runner: &Arc<Runner<MemoryJournal>>,
    ids: &[String],
    drives: usize,
) -> Vec<Progress> {
    let mut tasks = JoinSet::new();
    for id in ids {
        let (runner, id) = (runner.clone(), id.clone());
        tasks.spawn(async move {
            let mut progress = runner.drive(&id).await.expect("drive");
            for _ in 1..drives {
                let Progress::Waiting { until_ms, .. } = progress else {
                    break;
                };
                let wait = until_ms.saturating_sub(SystemClock.now_ms()).max(0);
                tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
                progress = runner.drive(&id).await.expect("drive");
            }
            progress
        });
    }
    tasks.join_all().await
}

fn vault_requests(env: &Env) -> usize {
    env.fake
        .requests()
        .iter()
        .filter(|r| r.service == Service::KeyVault)
        .count()
}

#[tokio::test]
async fn the_fake_vault_refuses_requests_beyond_its_window_as_key_vault_does() {
    let env = Env::start().await;
    env.fake.set_vault_rate_limit(VAULT, 2, 10_000);
    let client = reqwest::Client::new();
    let probe = format!("{}/secrets?api-version=7.5", env.fake.keyvault_url(VAULT));
    let get = || async {
        let resp = client.get(&probe).send().await.expect("send");
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.expect("JSON body");
        (status, retry_after, body)
    };
    // Unauthenticated requests count too: the challenge is an answer.
    assert_eq!(get().await.0, 401);
    env.manual().advance(2_500);
    assert_eq!(get().await.0, 401);
    let (status, retry_after, body) = get().await;
    assert_eq!(status, 429);
    assert_eq!(
        retry_after.as_deref(),
        Some("8"),
        "7.5 s until the first leaves"
    );
    assert_eq!(body["error"]["code"], "Throttled");
    assert_eq!(
        body["error"]["message"],
        "Request was not processed because too many requests were received. Reason: A1"
    );
    // The refused request did not count: once the first leaves, one more is served.
    env.manual().advance(7_500);
    assert_eq!(get().await.0, 401);
    assert_eq!(get().await.0, 429);
    assert_eq!(env.fake.throttled_count(VAULT), 2);
    assert_eq!(env.fake.throttled_count("other"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_rotation_within_the_budget_is_never_throttled() {
    let env = Env::start_real_clock().await;
    env.fake.set_vault_rate_limit(VAULT, LIMIT, WINDOW_MS);
    let budget = Arc::new(RequestBudget::new(LIMIT * SAFETY_PERCENT / 100, WINDOW_MS));
    let (runner, journal) = runner(env.kv().with_budget(budget.clone()));
    let ids = request_all(&env, &runner).await;

    let progress = drive_all(&runner, &ids, 20).await;

    assert!(
        progress
            .iter()
            .all(|p| *p == Progress::Finished(Phase::Completed)),
        "every rotation completes: {:?}",
        progress
            .iter()
            .filter(|p| **p != Progress::Finished(Phase::Completed))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        env.fake.throttled_count(VAULT),
        0,
        "no request was throttled"
    );
    let journal_failures = failure_messages(&*journal).await;
    assert!(
        journal_failures.is_empty(),
        "no step failed: {journal_failures:?}"
    );
    let sent = vault_requests(&env);
    assert!(
        sent >= SECRETS * 6,
        "the load ({sent} requests) is many windows' worth at {LIMIT} a window"
    );
    assert_eq!(
        budget.effective_limit(),
        budget.limit(),
        "never slowed down"
    );
    for i in 0..SECRETS {
        let versions = env.fake.kv_versions(VAULT, &secret(i));
        let enabled: Vec<bool> = versions.iter().map(|v| v.enabled).collect();
        assert_eq!(enabled, [false, true], "{}: rotated once", secret(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_load_without_a_budget_is_throttled() {
    let env = Env::start_real_clock().await;
    env.fake.set_vault_rate_limit(VAULT, LIMIT, WINDOW_MS);
    let (runner, journal) = runner(env.kv());
    let ids = request_all(&env, &runner).await;

    // One drive each: as far as the vault lets it go.
    let progress = drive_all(&runner, &ids, 1).await;

    let throttled = env.fake.throttled_count(VAULT);
    assert!(throttled > 0, "unbudgeted, the vault throttles the load");
    let waiting = progress
        .iter()
        .filter(|p| matches!(p, Progress::Waiting { .. }))
        .count();
    assert!(waiting > 0, "throttled rotations wait to retry");
    let failures = failure_messages(&*journal).await;
    assert!(
        !failures.is_empty() && failures.iter().all(|m| m.contains("throttled")),
        "each failure is a 429: {failures:?}"
    );
}
