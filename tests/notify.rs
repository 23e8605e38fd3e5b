//! Notifications over a real SQLite journal, posted to a receiver on a loopback port:
//! each channel's body, retries with backoff, deduplication, a crash between journaling and
//! posting, catching up on rotations that ended without a notice, and URL hygiene.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rekey::journal::{Clock, JournalRead, JournalScan, ManualClock, SqliteJournal, StreamFilter};
use rekey::notify::{
    self, ChannelKind, Notice, NoticeEvent, NoticeKind, NotificationConfig, Notifier,
};
use rekey::provider::{Cast, ProviderError, Reply};
use rekey::providers::local::{EnvFile, LocalVault, RandomRotator};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Action, Phase, Plan, Role, TargetRef, Trigger};

use crate::intercept::{Hook, Seen, intercept};
use serde_json::{Value, json};

const START_MS: i64 = 1_700_000_000_000;

/// What the receiver answers next: a status and an optional `Retry-After`; 200 when empty.
type Script = VecDeque<(u16, Option<&'static str>)>;

/// A webhook receiver on 127.0.0.1: records every POST as (path, body) and answers from
/// its script.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<(String, Value)>>>,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, base)
    }

    fn answer(&self, status: u16, retry_after: Option<&'static str>) {
        self.script.lock().unwrap().push_back((status, retry_after));
    }

    fn posts(&self) -> Vec<(String, Value)> {
        self.posts.lock().unwrap().clone()
    }
}

async fn receive(
    State(r): State<Receiver>,
    UrlPath(path): UrlPath<String>,
    body: axum::Json<Value>,
) -> impl IntoResponse {
    r.posts.lock().unwrap().push((path, body.0));
    let (status, retry_after) = r.script.lock().unwrap().pop_front().unwrap_or((200, None));
    let mut headers = HeaderMap::new();
    if let Some(v) = retry_after {
        headers.insert("retry-after", v.parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), headers, "busy")
}

struct World {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    journal: Arc<SqliteJournal>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let clock = ManualClock::new(START_MS);
        let journal = Arc::new(open(&path, &clock));
        Self {
            _dir: dir,
            path,
            clock,
            journal,
        }
    }

    fn notifier(
        &self,
        channels: &[(&str, ChannelKind, &str, &[NoticeKind])],
    ) -> Notifier<SqliteJournal> {
        notifier(&self.journal, &self.clock, channels)
    }

    /// The decoded events of a notice stream.
    async fn notice_events(&self, id: &str) -> Vec<NoticeEvent> {
        self.journal
            .read_stream(id)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.payload).unwrap())
            .collect()
    }

    async fn streams_with_status(&self, status: &str) -> Vec<String> {
        self.journal
            .streams(&StreamFilter {
                status: Some(status.into()),
                ..StreamFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.stream_id)
            .collect()
    }
}

fn open(path: &Path, clock: &ManualClock) -> SqliteJournal {
    SqliteJournal::open_with_clock(path, Arc::new(clock.clone()) as Arc<dyn Clock>).unwrap()
}

/// A notifier with channels given as (name, kind, url, kinds heard; all when empty).
fn notifier(
    journal: &Arc<SqliteJournal>,
    clock: &ManualClock,
    channels: &[(&str, ChannelKind, &str, &[NoticeKind])],
) -> Notifier<SqliteJournal> {
    let mut configs = BTreeMap::new();
    let mut env = HashMap::new();
    for (name, kind, url, on) in channels {
        let var = format!("HOOK_{}", name.to_uppercase());
        env.insert(var.clone(), (*url).to_owned());
        let on = if on.is_empty() {
            NoticeKind::all()
        } else {
            on.to_vec()
        };
        configs.insert(
            (*name).to_owned(),
            NotificationConfig {
                kind: *kind,
                url_env: var,
                on,
            },
        );
    }
    let channels = notify::channels(&configs, &|v| env.get(v).cloned()).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Notifier::new(journal.clone(), channels, http, Arc::new(clock.clone()))
}

#[tokio::test]
async fn each_channel_gets_its_documented_body() {
    let (receiver, base) = Receiver::start().await;
    let w = World::new();
    let n = w.notifier(&[
        ("chat", ChannelKind::Teams, &format!("{base}/teams"), &[]),
        ("ops", ChannelKind::Slack, &format!("{base}/slack"), &[]),
        (
            "siem",
            ChannelKind::Webhook,
            &format!("{base}/webhook"),
            &[],
        ),
    ]);
    let reason = "verify#3 failed: HTTP 403 <forbidden>";
    assert_eq!(
        n.rotation_ended("rot-1", "payments", false, Some(reason))
            .await
            .unwrap(),
        3
    );
    assert_eq!(n.deliver_due().await.unwrap(), None);

    let mut posts = receiver.posts();
    posts.sort_by(|a, b| a.0.cmp(&b.0));
    let title = "rekey: rotation of payments failed and was rolled back (compensated)";
    let expected = vec![
        (
            "slack".to_owned(),
            json!({
                "text": format!("{title}: verify#3 failed: HTTP 403 &lt;forbidden&gt;"),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn",
                        "text": format!("*{title}*\nverify#3 failed: HTTP 403 &lt;forbidden&gt;")}},
                    {"type": "context", "elements": [{"type": "mrkdwn",
                        "text": "secret `payments` · rotation `rot-1` · notice `notice:ops:rot-1:compensated`"}]},
                ],
            }),
        ),
        (
            "teams".to_owned(),
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true},
                            {"type": "TextBlock", "text": reason, "wrap": true},
                            {"type": "FactSet", "facts": [
                                {"title": "Secret", "value": "payments"},
                                {"title": "Rotation", "value": "rot-1"},
                                {"title": "Notice", "value": "notice:chat:rot-1:compensated"},
                            ]},
                        ],
                    },
                }],
            }),
        ),
        (
            "webhook".to_owned(),
            json!({
                "notice_id": "notice:siem:rot-1:compensated",
                "kind": "compensated",
                "secret": "payments",
                "rotation_id": "rot-1",
                "outcome": "compensated",
                "reason": reason,
                "at_ms": START_MS,
            }),
        ),
    ];
    assert_eq!(posts, expected);
    assert_eq!(w.streams_with_status(notify::DELIVERED).await.len(), 3);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_backoff_then_delivered_once() {
    let (receiver, base) = Receiver::start().await;
    receiver.answer(503, None);
    receiver.answer(503, Some("7"));
    let w = World::new();
    let n = w.notifier(&[("siem", ChannelKind::Webhook, &format!("{base}/hook"), &[])]);
    n.rotation_ended("rot-1", "payments", true, None)
        .await
        .unwrap();
    let id = "notice:siem:rot-1:completed";

    // First attempt: 503, retried after the first backoff step (1 s).
    let first_retry = n.deliver_due().await.unwrap();
    assert_eq!(first_retry, Some(START_MS + 1_000));
    // Not yet time: nothing is posted.
    assert_eq!(n.deliver_due().await.unwrap(), first_retry);
    assert_eq!(receiver.posts().len(), 1);

    // Second attempt: 503 with Retry-After 7 s, which outweighs the 2 s backoff.
    w.clock.set(START_MS + 1_000);
    let second_retry = n.deliver_due().await.unwrap();
    assert_eq!(second_retry, Some(START_MS + 1_000 + 7_000));

    // Third attempt: accepted.
    w.clock.set(START_MS + 8_000);
    assert_eq!(n.deliver_due().await.unwrap(), None);
    w.clock.advance(600_000);
    assert_eq!(n.deliver_due().await.unwrap(), None);

    let posts = receiver.posts();
    assert_eq!(posts.len(), 3, "two failures and one success");
    assert!(
        posts.iter().all(|p| p == &posts[0]),
        "every attempt sends the same notice"
    );
    let events = w.notice_events(id).await;
    assert!(matches!(
        events[0],
        NoticeEvent::Due(Notice {
            kind: NoticeKind::Completed,
            ..
        })
    ));
    let message = "the receiver answered HTTP 503 Service Unavailable: busy".to_owned();
    assert_eq!(
        events[1..],
        [
            NoticeEvent::Failed {
                attempt: 1,
                message: message.clone(),
                retry_at_ms: START_MS + 1_000
            },
            NoticeEvent::Failed {
                attempt: 2,
                message,
                retry_at_ms: START_MS + 8_000
            },
            NoticeEvent::Delivered { attempts: 3 },
        ]
    );
    assert_eq!(
        w.streams_with_status(notify::DELIVERED).await,
        vec![id.to_owned()]
    );
}

#[tokio::test]
async fn the_same_notice_is_created_once_per_channel_and_key() {
    let (receiver, base) = Receiver::start().await;
    let w = World::new();
    let n = w.notifier(&[
        ("all", ChannelKind::Webhook, &format!("{base}/all"), &[]),
        (
            "ends",
            ChannelKind::Webhook,
            &format!("{base}/ends"),
            &[NoticeKind::Completed],
        ),
    ]);
    assert_eq!(n.rotation_ended("rot-1", "s", true, None).await.unwrap(), 2);
    assert_eq!(n.rotation_ended("rot-1", "s", true, None).await.unwrap(), 0);
    // Stuck and upcoming go only to the channel that hears everything.
    assert_eq!(
        n.step_stuck("rot-1", "s", "write#1", 3, "503")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        n.step_stuck("rot-1", "s", "write#1", 3, "503")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        n.step_stuck("rot-1", "s", "write#1", 4, "503")
            .await
            .unwrap(),
        1
    );
    let due = START_MS + 86_400_000;
    assert_eq!(n.upcoming("s", "expiry", due).await.unwrap(), 1);
    assert_eq!(n.upcoming("s", "expiry", due).await.unwrap(), 0);
    assert_eq!(n.upcoming("s", "rotation", due).await.unwrap(), 1);

    assert_eq!(n.deliver_due().await.unwrap(), None);
    // Once delivered, asking again creates nothing and posts nothing.
    assert_eq!(n.rotation_ended("rot-1", "s", true, None).await.unwrap(), 0);
    assert_eq!(n.deliver_due().await.unwrap(), None);
    let mut ids: Vec<String> = receiver
        .posts()
        .iter()
        .map(|(path, body)| format!("{path} {}", body["notice_id"].as_str().unwrap()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "all notice:all:rot-1:completed",
            "all notice:all:rot-1:stuck:write_1:3",
            "all notice:all:rot-1:stuck:write_1:4",
            &format!("all notice:all:s:upcoming:expiry:{due}"),
            &format!("all notice:all:s:upcoming:rotation:{due}"),
            "ends notice:ends:rot-1:completed",
        ]
    );
    let stuck = receiver
        .posts()
        .into_iter()
        .find(|(_, b)| b["kind"] == "stuck")
        .unwrap();
    assert_eq!(stuck.1["reason"], "step write#1, attempt 3: 503");
}

#[tokio::test]
async fn a_due_notice_survives_a_crash_and_the_next_process_posts_it() {
    let (receiver, base) = Receiver::start().await;
    let url = format!("{base}/hook");
    let channels: &[(&str, ChannelKind, &str, &[NoticeKind])] =
        &[("siem", ChannelKind::Webhook, &url, &[])];
    let w = World::new();
    {
        let n = w.notifier(channels);
        n.rotation_ended("rot-1", "payments", true, None)
            .await
            .unwrap();
        // The process dies here: the notice is journaled, nothing was posted.
    }
    let World {
        _dir,
        path,
        clock,
        journal,
    } = w;
    drop(journal);
    assert!(receiver.posts().is_empty());

    let journal = Arc::new(open(&path, &clock));
    let n = notifier(&journal, &clock, channels);
    assert_eq!(n.deliver_due().await.unwrap(), None);
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].1["notice_id"], "notice:siem:rot-1:completed");
    assert_eq!(
        journal
            .stream_info("notice:siem:rot-1:completed")
            .await
            .unwrap()
            .unwrap()
            .status,
        notify::DELIVERED
    );
}

/// Refuses one action (always, with `error`) and passes the rest on.
#[derive(Debug)]
struct Refusing {
    action: Action,
    error: fn() -> ProviderError,
}

impl Hook for Refusing {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        if seen.performs(self.action) {
            return Box::pin(async { Err((self.error)()) });
        }
        call
    }
}

/// How the local providers of a test rotation behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Works,
    /// The app refuses the new value, so the rotation compensates.
    AppRefuses,
    /// The vault is unavailable, so writing to it is retried.
    VaultDown,
}

/// Opens a rotation of `secret` with the local providers; its runner and id.
async fn open_rotation(
    w: &World,
    dir: &Path,
    secret: &str,
    behaviour: Behaviour,
) -> (Runner<SqliteJournal>, String) {
    let env = roles!(Arc::new(EnvFile::new(
        dir.join(format!("{secret}.env")),
        "K"
    )));
    let vault = roles!(Arc::new(LocalVault::new(
        dir.join(format!("{secret}.json"))
    )));
    let (app, vault) = match behaviour {
        Behaviour::Works => (env, vault),
        Behaviour::AppRefuses => (
            intercept(
                env,
                Refusing {
                    action: Action::Verify,
                    error: || ProviderError::permanent("the app refused the new value"),
                },
            ),
            vault,
        ),
        Behaviour::VaultDown => (
            env,
            intercept(
                vault,
                Refusing {
                    action: Action::Write,
                    error: || ProviderError::transient("the vault is unavailable (503)"),
                },
            ),
        ),
    };
    let providers = Registry::new()
        .with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        )
        .with_roles("vault", vault)
        .with_roles("app", app);
    let t = TargetRef::new;
    let plan = Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "app"),
        ],
        grace_ms: 0,
        // A refusing app gives up at once; a vault that is down is retried.
        attempts_max: if behaviour == Behaviour::VaultDown {
            5
        } else {
            1
        },
    };
    let clock: Arc<dyn Clock> = Arc::new(w.clock.clone());
    let runner = Runner::new(
        w.journal.clone(),
        Arc::new(providers),
        clock,
        Options::new("runner-1", 7),
    );
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", format!("rot-{secret}"))
        .await
        .unwrap()
    else {
        panic!("a fresh lock has no open rotation");
    };
    (runner, rotation_id)
}

/// Runs one rotation of `secret` to its end, moving the clock over every wait.
async fn rotate(w: &World, dir: &Path, secret: &str, behaviour: Behaviour) -> String {
    let (runner, rotation_id) = open_rotation(w, dir, secret, behaviour).await;
    for _ in 0..50 {
        match runner.drive(&rotation_id).await.unwrap() {
            Progress::Finished(phase) => {
                let compensated = behaviour == Behaviour::AppRefuses;
                assert_eq!(phase == Phase::Compensated, compensated, "{phase:?}");
                return rotation_id;
            }
            Progress::Waiting { until_ms, .. } => w.clock.set(until_ms),
            other => panic!("unexpected progress {other:?}"),
        }
    }
    panic!("rotation {rotation_id} did not end");
}

#[tokio::test]
async fn a_step_waiting_for_a_retry_is_reported_stuck_with_its_error() {
    let (receiver, base) = Receiver::start().await;
    let w = World::new();
    let files = tempfile::tempdir().unwrap();
    let (runner, rotation_id) = open_rotation(&w, files.path(), "api", Behaviour::VaultDown).await;
    let progress = runner.drive(&rotation_id).await.unwrap();
    assert!(matches!(progress, Progress::Waiting { .. }), "{progress:?}");
    let (state, _) = runner.load(&rotation_id).await.unwrap();
    let n = w.notifier(&[("siem", ChannelKind::Webhook, &format!("{base}/hook"), &[])]);
    assert_eq!(
        n.steps_stuck(&state, 2).await.unwrap(),
        0,
        "one failure is not stuck yet"
    );
    assert_eq!(n.steps_stuck(&state, 1).await.unwrap(), 1);
    assert_eq!(n.steps_stuck(&state, 1).await.unwrap(), 0);
    assert_eq!(n.deliver_due().await.unwrap(), None);
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].1,
        json!({
            "notice_id": format!("notice:siem:{rotation_id}:stuck:write_1:1"),
            "kind": "stuck",
            "secret": "api",
            "rotation_id": rotation_id,
            "outcome": "stuck",
            "reason": "step write#1, attempt 1: the vault is unavailable (503)",
            "at_ms": START_MS,
        })
    );
}

#[tokio::test]
async fn catch_up_creates_the_notices_of_rotations_that_ended_without_one() {
    let (receiver, base) = Receiver::start().await;
    let w = World::new();
    let files = tempfile::tempdir().unwrap();
    let done = rotate(&w, files.path(), "api", Behaviour::Works).await;
    let undone = rotate(&w, files.path(), "db", Behaviour::AppRefuses).await;
    let n = w.notifier(&[("siem", ChannelKind::Webhook, &format!("{base}/hook"), &[])]);

    // Rotations that ended before the window are left alone.
    assert_eq!(n.catch_up(w.clock.now_ms() + 1).await.unwrap(), 0);
    assert_eq!(n.catch_up(START_MS).await.unwrap(), 2);
    assert_eq!(
        n.catch_up(START_MS).await.unwrap(),
        0,
        "a second start creates nothing"
    );
    assert_eq!(n.deliver_due().await.unwrap(), None);

    let mut bodies: Vec<Value> = receiver.posts().into_iter().map(|(_, b)| b).collect();
    bodies.sort_by_key(|b| b["secret"].as_str().unwrap().to_owned());
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["rotation_id"], done.as_str());
    assert_eq!(bodies[0]["kind"], "completed");
    assert_eq!(bodies[0]["reason"], Value::Null);
    assert_eq!(bodies[1]["rotation_id"], undone.as_str());
    assert_eq!(bodies[1]["kind"], "compensated");
    let reason = bodies[1]["reason"].as_str().unwrap();
    assert!(reason.contains("the app refused the new value"), "{reason}");
}

#[tokio::test]
async fn an_unset_url_variable_names_the_channel_and_the_variable() {
    let configs = BTreeMap::from([(
        "oncall".to_owned(),
        NotificationConfig {
            kind: ChannelKind::Teams,
            url_env: "ONCALL_TEAMS_URL".into(),
            on: NoticeKind::all(),
        },
    )]);
    let err = notify::channels(&configs, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("oncall") && err.contains("ONCALL_TEAMS_URL"),
        "{err}"
    );
    assert!(err.contains("is not set"), "{err}");
}

#[tokio::test]
async fn urls_are_refused_over_plain_http_and_never_shown() {
    let secret_path = "services/T0001/B0002/s3cr3tT0ken";
    let configs = BTreeMap::from([(
        "ops".to_owned(),
        NotificationConfig {
            kind: ChannelKind::Slack,
            url_env: "OPS_SLACK_URL".into(),
            on: NoticeKind::all(),
        },
    )]);
    let remote = format!("http://hooks.slack.example/{secret_path}");
    let err = notify::channels(&configs, &|_| Some(remote.clone())).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("https") && shown.contains("OPS_SLACK_URL"),
        "{shown}"
    );
    assert!(
        !shown.contains(secret_path) && !shown.contains("hooks.slack.example"),
        "{shown}"
    );

    // A loopback URL is accepted, and neither Debug nor a delivery failure shows it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{secret_path}", closed.local_addr().unwrap());
    drop(closed);
    let w = World::new();
    let n = w.notifier(&[("ops", ChannelKind::Slack, &url, &[])]);
    assert!(!format!("{n:?}").contains(secret_path), "{n:?}");
    n.rotation_ended("rot-1", "payments", true, None)
        .await
        .unwrap();
    assert_eq!(n.deliver_due().await.unwrap(), Some(START_MS + 1_000));
    let events = w.notice_events("notice:ops:rot-1:completed").await;
    let NoticeEvent::Failed { message, .. } = &events[1] else {
        panic!("expected a failure, got {events:?}");
    };
    assert!(message.contains("cannot connect"), "{message}");
    assert!(
        !message.contains(secret_path) && !message.contains("http://"),
        "{message}"
    );
}
