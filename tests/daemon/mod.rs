//! The daemon (`rekey run`): its loop in process over a real SQLite journal and local
//! providers, its HTTP API over a loopback socket, and the binary killed and restarted.

mod http;
mod process;
mod schedule;
mod webhook;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekey::config::Config;
use rekey::daemon::metrics::Metrics;
use rekey::daemon::{Daemon, Handle, Settings, Summary, api};
use rekey::journal::{Clock, JournalRead, JournalScan, SqliteJournal, SystemClock};
use rekey::provider::SecretValue;
use rekey::runner::{Options, Requested, Runner};
use rekey::saga::Trigger;
use rekey::triggers::eventgrid;
use serde_json::Value;

const TOKEN: &str = "daemon-test-token-3f9c";

/// A config of `n` secrets `s0..`, each rotated into one local vault and checked by
/// `verifier` (a command given the value on stdin).
pub fn config_text(n: usize, grace: &str, verifier: &str) -> String {
    let mut text = format!(
        r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.check]
kind = "command"
command = {verifier}
"#
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[secrets.s{i}]\nrotator = \"random\"\nstores = [\"vault\"]\nverifiers = [\"check\"]\ngrace = \"{grace}\"\n"
        ));
    }
    text
}

/// A daemon over `dir`'s config, its API served on a loopback port.
struct Running {
    handle: Handle,
    base: String,
    done: tokio::task::JoinHandle<Summary>,
    journal: Arc<SqliteJournal>,
    metrics: Arc<Metrics>,
}

async fn start(dir: &Path, text: &str, max_concurrent: usize) -> Running {
    start_with(dir, text, max_concurrent, &|_| None).await
}

/// The webhook's shared secret in these tests.
const HOOK_SECRET: &str = "hook-secret-71aa";

/// As [`start`], with `env` giving the providers' environment variables; the Event Grid
/// webhook is served too, with [`HOOK_SECRET`].
async fn start_with(
    dir: &Path,
    text: &str,
    max_concurrent: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Running {
    start_settings(dir, text, Settings::new(max_concurrent), env).await
}

/// As [`start_with`], with the daemon's settings given.
async fn start_settings(
    dir: &Path,
    text: &str,
    settings: Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Running {
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
    let config = Config::load(&dir.join("rekey.toml")).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = config.build_providers(clock.clone(), env).unwrap();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(&config.journal_path, clock.clone()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let runner = Arc::new(Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock.clone(),
        Options {
            sleep: Some(rekey::runner::tokio_sleep()),
            observer: Some(metrics.clone()),
            ..Options::new(format!("daemon-test-{}", uuid::Uuid::now_v7()), 7)
        },
    ));
    let (daemon, handle) = Daemon::new(runner, journal.clone(), Arc::new(config), clock, settings);
    let mut state = daemon.api_state(vec![SecretValue::new(TOKEN)]);
    state.metrics = Some(metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hook = eventgrid::WebhookConfig {
        secret: Some(SecretValue::new(HOOK_SECRET)),
        ..eventgrid::WebhookConfig::default()
    };
    let app = api::router(state).merge(eventgrid::router(hook, daemon.webhook_sink()).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let done = tokio::spawn(async move { daemon.run().await.expect("daemon run") });
    Running {
        handle,
        base,
        done,
        journal,
        metrics,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET base + path` with the API token, as JSON.
async fn get_json(base: &str, path: &str) -> Value {
    client()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `GET /v1/rotations/{id}` until its phase is `phase`.
async fn wait_phase(r: &Running, id: &str, phase: &str) -> Value {
    let path = format!("/v1/rotations/{id}");
    for _ in 0..400 {
        let body = get_json(&r.base, &path).await;
        if body["phase"] == phase {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let last = get_json(&r.base, &path).await;
    panic!("rotation {id} never reached {phase}: {last}");
}

async fn event_count(journal: &SqliteJournal) -> u64 {
    journal.read_after(0, usize::MAX).await.unwrap().len() as u64
}

/// The API refuses calls without the token, and unknown secrets, with a clear error and
/// nothing journaled; with the token a rotation starts, runs to completion through the
/// daemon's timers (grace included), and its timeline, the secret list and the metrics
/// say so.
#[tokio::test]
async fn api_starts_rotations_and_refuses_bad_requests_changing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let r = start(tmp.path(), &config_text(2, "300ms", r#"["true"]"#), 4).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", r.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let before = event_count(&r.journal).await;
    let rotate = |token: Option<&str>, secret: &str| {
        let mut req = c.post(format!("{}/v1/secrets/{secret}/rotate", r.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let none = rotate(None, "s0").await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(rotate(Some("wrong"), "s0").await.unwrap().status(), 401);
    let unknown = rotate(Some(TOKEN), "nope").await.unwrap();
    assert_eq!(unknown.status(), 404);
    let message: Value = unknown.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("\"s0\""),
        "{message}"
    );
    assert_eq!(
        event_count(&r.journal).await,
        before,
        "a refused call wrote"
    );

    let started = rotate(Some(TOKEN), "s0").await.unwrap();
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["coalesced"], false);
    let id = started["rotation_id"].as_str().unwrap().to_owned();
    let done = wait_phase(&r, &id, "completed").await;
    let types: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"Requested"));
    assert!(types.contains(&"GraceScheduled"), "{types:?}");
    assert_eq!(types.last(), Some(&"Completed"));

    let secrets: Vec<Value> =
        serde_json::from_value(get_json(&r.base, "/v1/secrets").await).unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0]["last_ended"]["status"], "completed");
    assert!(secrets[1]["last_ended"].is_null());
    let metrics = c
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rekey_rotations_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rekey_open_rotations 0"), "{metrics}");
    assert!(metrics.contains("rekey_journal_append_seconds_count"));
    // No value, old or new, in anything the API said.
    let vault: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("vault.json")).unwrap()).unwrap();
    let values: Vec<&str> = vault["secrets"]["s0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "one version written");
    let said = format!("{done}{}{metrics}", Value::from(secrets.clone()));
    for v in values {
        assert!(
            v.len() > 20 && !said.contains(v),
            "a secret value in API output"
        );
    }
    r.handle.signal();
    let summary = r.done.await.unwrap();
    assert_eq!(summary.completed, 1);
    assert_eq!(summary.left_open, 0);
    drop(r.metrics);
}

/// Every route the router serves is in the OpenAPI document, and the document parses.
#[test]
fn openapi_lists_every_route() {
    let doc: Value = serde_json::from_str(api::OPENAPI).unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/secrets",
        "/v1/secrets/{secret}/rotate",
        "/v1/rotations/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
}

/// Many triggers at once with few rotation slots: every one is taken (queued, not
/// refused), each secret rotates exactly once, and duplicate triggers for an open
/// rotation are coalesced into it.
#[tokio::test]
async fn bulk_triggers_queue_and_all_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 40;
    let r = start(tmp.path(), &config_text(n, "0s", r#"["true"]"#), 3).await;
    let mut requests = Vec::new();
    for i in 0..n {
        let handle = r.handle.clone();
        requests.push(tokio::spawn(async move {
            let first = handle
                .rotate(&format!("s{i}"), Trigger::Bulk, "test")
                .await
                .unwrap();
            let second = handle
                .rotate(&format!("s{i}"), Trigger::Bulk, "test")
                .await
                .unwrap();
            (first, second)
        }));
    }
    let mut started = 0;
    for req in requests {
        let (first, second) = req.await.unwrap();
        assert!(matches!(first, Requested::Started { .. }), "{first:?}");
        // The second either joined the first or came after it ended.
        match (&first, &second) {
            (Requested::Started { rotation_id }, Requested::Coalesced { into }) => {
                assert_eq!(rotation_id, into);
            }
            (_, Requested::Started { .. }) => started += 1,
            other => panic!("{other:?}"),
        }
        started += 1;
    }
    // Wait for the daemon to finish them all, then stop it.
    for _ in 0..800 {
        if r.journal
            .streams(&rekey::journal::StreamFilter {
                status: Some("open".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    r.handle.signal();
    let summary = r.done.await.unwrap();
    assert_eq!(summary.completed, started);
    assert_eq!(summary.compensated, 0);
    assert_eq!(summary.left_open, 0);
}

/// A signal while rotations run: the daemon stops taking requests, lets started steps
/// finish, and leaves the rest open in the journal; a new daemon on the same journal
/// resumes and completes every one of them.
#[tokio::test]
async fn graceful_stop_leaves_open_rotations_that_the_next_start_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 6;
    // Verification takes a while, so the signal lands while steps are running.
    let text = config_text(n, "0s", r#"["sh", "-c", "cat >/dev/null; sleep 0.4"]"#);
    let r = start(tmp.path(), &text, 2).await;
    for i in 0..n {
        r.handle
            .rotate(&format!("s{i}"), Trigger::Manual, "test")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.handle.signal();
    let summary = r.done.await.unwrap();
    assert!(!summary.immediate);
    assert!(
        summary.left_open > 0,
        "the stop came after everything ended: {summary:?}"
    );
    assert!(matches!(
        r.handle.rotate("s0", Trigger::Manual, "test").await,
        Err(rekey::daemon::Error::ShuttingDown)
    ));
    // No step was left in doubt by the graceful stop: every started step has its outcome.
    let events = r.journal.read_after(0, usize::MAX).await.unwrap();
    let started = events.iter().filter(|e| e.kind == "StepStarted").count();
    let outcomes = events
        .iter()
        .filter(|e| e.kind == "StepSucceeded" || e.kind == "StepFailed")
        .count();
    assert_eq!(started, outcomes, "a started step has no outcome");
    // What ended before the stop was finished off: counted, and its lock closed.
    let ended = r
        .journal
        .streams(&rekey::journal::StreamFilter {
            status: Some("completed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ended.len() as u64, summary.completed);
    for rotation in ended {
        let lock = rekey::runner::lock::stream_id(&rotation.subject.unwrap());
        let lock = r.journal.stream_info(&lock).await.unwrap().unwrap();
        assert_eq!(lock.status, rekey::runner::lock::IDLE, "{}", lock.stream_id);
    }
    drop(r.journal);

    let again = start(tmp.path(), &text, 4).await;
    for _ in 0..800 {
        let open = again
            .journal
            .streams(&rekey::journal::StreamFilter {
                status: Some("open".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    again.handle.signal();
    let second = again.done.await.unwrap();
    assert_eq!(summary.completed + second.completed, n as u64);
    assert_eq!(second.left_open, 0);
}

/// A lock still open for a rotation that has ended (its runner died before closing it, or
/// has not closed it yet) must not swallow a new trigger: the request closes it and
/// starts a new rotation.
#[tokio::test]
async fn a_trigger_after_a_rotation_ended_is_never_coalesced_into_it() {
    use rekey::journal::{Append, JournalAppend, JournalRead, NewEvent};
    use rekey::runner::lock::{self, LockEvent};
    let tmp = tempfile::tempdir().unwrap();
    let r = start(tmp.path(), &config_text(1, "0s", r#"["true"]"#), 2).await;
    let Requested::Started { rotation_id: first } = r
        .handle
        .rotate("s0", Trigger::Manual, "test")
        .await
        .unwrap()
    else {
        panic!("nothing was open");
    };
    let lock_stream = lock::stream_id("s0");
    for _ in 0..400 {
        if r.journal
            .stream_info(&lock_stream)
            .await
            .unwrap()
            .unwrap()
            .status
            == lock::IDLE
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let info = r.journal.stream_info(&lock_stream).await.unwrap().unwrap();
    assert_eq!(info.status, lock::IDLE, "the first rotation never ended");
    let plan = Config::load(&tmp.path().join("rekey.toml"))
        .unwrap()
        .plan("s0")
        .unwrap()
        .clone();
    let stale = LockEvent::Opened {
        rotation_id: first.clone(),
        plan,
        trigger: Trigger::Manual,
        actor: "test".into(),
    };
    r.journal
        .append(
            Append::new(
                &lock_stream,
                info.head_seq,
                vec![NewEvent::new(
                    stale.kind(),
                    serde_json::to_value(&stale).unwrap(),
                )],
            )
            .status(lock::BUSY),
        )
        .await
        .unwrap();
    let second = r
        .handle
        .rotate("s0", Trigger::Manual, "test")
        .await
        .unwrap();
    match second {
        Requested::Started { rotation_id } => assert_ne!(rotation_id, first),
        other => panic!("coalesced into an ended rotation: {other:?}"),
    }
    r.handle.signal();
    r.done.await.unwrap();
}

/// A rotation opened after the daemon started, by a command killed before it drove it
/// (its lease left behind), is found by the daemon's periodic rescan once the lease lapsed,
/// and finished, without a restart.
#[tokio::test]
async fn a_rotation_a_killed_command_left_is_taken_up_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        rescan_ms: 200,
        ..Settings::new(4)
    };
    let text = config_text(1, "0s", r#"["true"]"#);
    let r = start_settings(tmp.path(), &text, settings, &|_| None).await;
    // Let the daemon finish its start (its first scan found nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = Config::load(&tmp.path().join("rekey.toml")).unwrap();
    let killed = Runner::new(
        r.journal.clone(),
        Arc::new(rekey::resolve::Registry::new()),
        Arc::new(SystemClock),
        Options::new("killed-cli", 7),
    );
    let plan = config.plan("s0").unwrap().clone();
    let Requested::Started { rotation_id } = killed
        .request(
            plan,
            Trigger::Manual,
            "cli",
            uuid::Uuid::now_v7().to_string(),
        )
        .await
        .unwrap()
    else {
        panic!("nothing was open");
    };
    use rekey::journal::Leases;
    r.journal
        .acquire(&rotation_id, "killed-cli", 500)
        .await
        .unwrap();
    wait_phase(&r, &rotation_id, "completed").await;
    r.handle.signal();
    r.done.await.unwrap();
}
