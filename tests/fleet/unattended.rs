//! Unattended fleet rotation (`[fleet] discover_every`), through real `rekey run`
//! processes against the fakes over HTTP on 127.0.0.1, with a webhook notice receiver:
//! the leader discovers on its schedule and rotates exactly the eligible HIGH credentials,
//! once; MEDIUM and partial ones are refused with notices; an unlinked expiring credential
//! gets one "expires with no vault link" notice across several runs; a credential inside
//! the notice window gets its advance notice; a node that does not lead never discovers,
//! and a new leader does not discover again before the period is up.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekey::journal::{Clock as _, SystemClock};
use serde_json::Value;

use super::{Daemon, READER_ID, READER_SECRET, client, config_text, free_port, start_daemon};
use crate::fake_azure::{App, Effect, FakeAzure, PasswordCred, SecretMeta};

const TOKEN: &str = "fleet-unattended-token-3f9a-11c2";
const NOTICE_VAR: &str = "REKEY_TEST_FLEET_NOTICE_URL";
const DAY_S: i64 = 86_400;

fn id(prefix: &str, n: u32) -> String {
    format!("{prefix}000000-0000-4000-8000-{n:012x}")
}

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

/// App `n`'s key id.
fn key(n: u32) -> String {
    id("0c", n)
}

fn object(n: u32) -> String {
    id("0b", n)
}

/// 1 `orders`: HIGH, due in 10 days; 2 `billing`: MEDIUM (an app-id tag only), due;
/// 3 `search`: partial (a HIGH copy and a name-only one), due; 4 `lonely`: due, in no
/// vault; 5 `later`: HIGH, due in 35 days (outside the 30-day window, inside the 7-day
/// notice window); 6 `distant`: HIGH, due in 200 days (nothing to say).
fn seed(fake: &FakeAzure) {
    let now_s = SystemClock.now_ms() / 1000;
    for (n, name, days) in [
        (1, "orders", 10),
        (2, "billing", 12),
        (3, "search", 14),
        (4, "lonely", 16),
        (5, "later", 35),
        (6, "distant", 200),
    ] {
        let text = format!("{name}8Q~hand-made");
        fake.graph_insert_app(App {
            object_id: object(n),
            app_id: id("0a", n),
            principal_id: id("0f", n),
            display_name: name.into(),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                &key(n),
                None,
                &text,
                at(now_s - 100 * DAY_S),
                at(now_s + days * DAY_S),
            )],
            keys: Vec::new(),
        });
        let item = format!("{name}-client-secret");
        let high = SecretMeta {
            tags: [
                ("CredentialId".to_owned(), key(n)),
                ("ProviderAddress".to_owned(), object(n)),
            ]
            .into(),
            ..SecretMeta::default()
        };
        match n {
            2 => {
                fake.kv_seed_item(
                    "kv-alpha",
                    &item,
                    &text,
                    SecretMeta {
                        tags: [("AppId".to_owned(), id("0a", n))].into(),
                        ..SecretMeta::default()
                    },
                );
            }
            3 => {
                fake.kv_seed_item("kv-alpha", &item, &text, high);
                fake.kv_seed_item(
                    "kv-alpha",
                    &format!("{name}-secret"),
                    &text,
                    SecretMeta::default(),
                );
            }
            4 => {}
            _ => {
                fake.kv_seed_item("kv-alpha", &item, &text, high);
            }
        }
    }
}

/// A webhook receiver on 127.0.0.1 keeping every notice posted.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/notices",
            axum::routing::post(move |body: axum::Json<Value>| async move {
                r.posts.lock().unwrap().push(body.0);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notices", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    /// The fleet notices posted as (credential's key id, outcome, reason).
    fn fleet(&self) -> Vec<(String, String, String)> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "fleet")
            .map(|p| {
                let secret = p["secret"].as_str().unwrap_or_default();
                let key = (1..=6)
                    .map(key)
                    .find(|k| secret.contains(k.as_str()))
                    .unwrap_or_else(|| secret.to_owned());
                (
                    key,
                    p["outcome"].as_str().unwrap_or_default().to_owned(),
                    p["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn write_config(fake: &FakeAzure, dir: &std::path::Path, every: &str, grace: &str) {
    let text = format!(
        "{}\n[notifications.ops]\nkind = \"webhook\"\nurl_env = \"{NOTICE_VAR}\"\n",
        config_text(
            fake,
            &["kv-alpha"],
            &[],
            &format!("discover_every = \"{every}\"\n\n[fleet.rotation]\ngrace = \"{grace}\"\n"),
        )
    );
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
}

/// Starts `rekey run` in `dir` as node `node` (leader lease of `ttl`).
async fn start(dir: &std::path::Path, notice_url: &str, node: &str, ttl: &str) -> Daemon {
    let port = free_port();
    let config = std::fs::read_to_string(dir.join("rekey.toml")).unwrap();
    let file = format!("rekey-{node}.toml");
    std::fs::write(
        dir.join(&file),
        format!(
            "{config}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_API_TOKEN\"\nnode_id = \"{node}\"\nleader_ttl = \"{ttl}\"\n"
        ),
    )
    .unwrap();
    start_daemon(
        dir,
        &file,
        port,
        &[("REKEY_TEST_API_TOKEN", TOKEN), (NOTICE_VAR, notice_url)],
    )
    .await
}

/// The run id of the newest journaled discovery, if any.
async fn latest_run(d: &Daemon) -> Option<String> {
    let resp = client()
        .get(format!("{}/v1/discovery/latest", d.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let doc: Value = resp.json().await.unwrap_or(Value::Null);
    doc["run_id"].as_str().map(str::to_owned)
}

async fn readyz(d: &Daemon) -> String {
    client()
        .get(format!("{}/readyz", d.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `done` every 25 ms for up to 60 s.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..2_400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_discovers_on_schedule_rotates_the_high_ones_once_and_notices_the_rest() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    seed(&fake);
    let (receiver, url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // An hour's grace: `orders` stays under rotation (its lock held, its old password
    // unlinked but kept) across every later run, which must say nothing more about it.
    write_config(&fake, dir.path(), "1s", "1h");
    let d = start(dir.path(), &url, "solo", "15s").await;

    // Three discovery runs after the one that rotated `orders` (new password written,
    // waiting out the grace period).
    let mut runs = BTreeSet::new();
    let mut written = false;
    until(
        "the new password written, then three discovery runs",
        async || {
            if !written {
                written = fake
                    .effects()
                    .iter()
                    .any(|e| matches!(e, Effect::KvVersionCreated { .. }));
            } else if let Some(run) = latest_run(&d).await {
                runs.insert(run);
            }
            runs.len() >= 3
        },
    )
    .await;
    // Every notice created so far is delivered (one per credential and reason).
    until("the notices", async || receiver.fleet().len() >= 5).await;

    let effects = fake.effects();
    let added: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::GraphPasswordAdded { .. }))
        .collect();
    assert_eq!(added.len(), 1, "one new password, for orders: {effects:#?}");
    assert!(
        matches!(added[0], Effect::GraphPasswordAdded { object_id, .. } if *object_id == object(1))
    );
    assert!(
        matches!(&effects[1], Effect::KvVersionCreated { name, .. } if name == "orders-client-secret")
    );
    assert_eq!(
        effects.len(),
        2,
        "added and written (the old one stays for the grace period); nothing else in the tenant: {effects:#?}"
    );

    let notices = receiver.fleet();
    let of = |n: u32| -> Vec<(String, String)> {
        notices
            .iter()
            .filter(|(k, _, _)| *k == key(n))
            .map(|(_, o, r)| (o.clone(), r.clone()))
            .collect()
    };
    let one = |n: u32, outcome: &str, word: &str| {
        let got = of(n);
        assert_eq!(got.len(), 1, "app {n}: one notice: {notices:#?}");
        assert_eq!(got[0].0, outcome, "app {n}: {notices:#?}");
        assert!(
            got[0].1.contains(word),
            "app {n}: {:?} lacks {word:?}",
            got[0].1
        );
    };
    one(1, "rotating", "kv-alpha/orders-client-secret");
    one(2, "refused", "MEDIUM");
    one(3, "refused", "partial coverage");
    one(
        4,
        "expires with no vault link",
        "no scanned vault holds a copy",
    );
    one(5, "rotation upcoming", "30 days before it expires");
    assert!(of(6).is_empty(), "nothing to say about app 6: {notices:#?}");
    assert_eq!(notices.len(), 5, "{notices:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_discovers_and_a_new_leader_waits_out_the_period() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    seed(&fake);
    let (_receiver, url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&fake, dir.path(), "1h", "1s");
    let a = start(dir.path(), &url, "node-a", "3s").await;
    let mut first = None;
    until("the leader's first run", async || {
        first = latest_run(&a).await;
        let added = fake
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::GraphPasswordAdded { .. }));
        first.is_some() && added && readyz(&a).await.contains("leader: node-a (this node)")
    })
    .await;
    let b = start(dir.path(), &url, "node-b", "3s").await;
    assert!(
        !readyz(&b).await.contains("(this node)"),
        "node-b must not lead while node-a does"
    );
    // node-a stops; node-b takes the lead once the lease lapses, and does not discover:
    // the last run was less than an hour ago.
    drop(a);
    until("node-b to lead", async || {
        readyz(&b).await.contains("leader: node-b (this node)")
    })
    .await;
    // The loop handles the leadership change before it could start a run; give it the
    // time to a rescan (which would also start a due run) before looking.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        latest_run(&b).await,
        first,
        "no second discovery within the hour"
    );
    assert_eq!(
        fake.effects()
            .iter()
            .filter(|e| matches!(e, Effect::GraphPasswordAdded { .. }))
            .count(),
        1,
        "orders rotated once, by the first leader"
    );
}
