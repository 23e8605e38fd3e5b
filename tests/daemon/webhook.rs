//! Key Vault events through the daemon's Event Grid webhook, against the fake Key Vault:
//! near-expiry starts a rotation; a redelivered event id starts nothing; rekey's own new
//! version, other vaults' secrets and unknown types are acknowledged and journaled as
//! ignored; an unauthenticated post is refused with nothing journaled. Any event id is
//! recorded, and no event requests a rotation twice. A store's `vault_name` is what events
//! are matched against, and events for a vault no store names are logged once per name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekey::journal::{JournalRead, JournalScan, StreamFilter};
use serde_json::{Value, json};

use rekey::saga::Trigger;

use super::{HOOK_SECRET, Running, client, start_with};
use crate::azure::{CLIENT_ID, CLIENT_SECRET, Env, VAULT};
use crate::fake_azure::FakeAzure;

const SECRET: &str = "payments";

fn config(env: &Env) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"
timeout = "5s"

[credentials.x]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{CLIENT_ID}"
client_secret_env = "SP_SECRET"

[providers.random]
kind = "random"

[providers.vault]
kind = "key_vault"
vault_url = "{vault}"
credential = "x"
verify_challenge_resource = false

[secrets.{SECRET}]
rotator = "random"
stores = ["vault"]
verifiers = ["vault"]
grace = "0s"
"#,
        authority = env.fake.authority_url(),
        arm = env.fake.arm_url(),
        graph = env.fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vault = env.fake.keyvault_url(VAULT),
    )
}

fn grid_event(id: &str, kind: &str, vault: &str, secret: &str, version: &str) -> Value {
    json!({
        "id": id,
        "topic": format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"),
        "subject": secret,
        "eventType": format!("Microsoft.KeyVault.{kind}"),
        "eventTime": "2026-11-22T01:08:33.1036736Z",
        "data": {
            "Id": format!("https://{vault}.vault.azure.net/secrets/{secret}/{version}"),
            "VaultName": vault, "ObjectType": "Secret", "ObjectName": secret,
            "Version": version, "NBF": 1_559_081_980, "EXP": "1559082102"
        },
        "dataVersion": "1", "metadataVersion": "1"
    })
}

async fn post(r: &Running, body: &Value, code: Option<&str>) -> reqwest::Response {
    let mut url = format!("{}/eventgrid", r.base);
    if let Some(code) = code {
        url.push_str(&format!("?code={code}"));
    }
    client()
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("aeg-event-type", "Notification")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn rotations(r: &Running) -> Vec<String> {
    r.journal
        .streams(&StreamFilter {
            subject: Some(SECRET.into()),
            ..StreamFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|s| rekey::runner::lock::is_rotation_stream(&s.stream_id))
        .map(|s| s.stream_id)
        .collect()
}

async fn outcome(r: &Running, event_id: &str) -> Option<String> {
    let events = r
        .journal
        .read_stream(&rekey::daemon::events::stream_id(event_id))
        .await
        .unwrap();
    let payload: Value = serde_json::from_str(&events.first()?.payload).unwrap();
    payload["outcome"].as_str().map(str::to_owned)
}

async fn until_none_open(r: &Running) {
    for _ in 0..400 {
        let open = r
            .journal
            .streams(&StreamFilter {
                status: Some("open".into()),
                ..StreamFilter::default()
            })
            .await
            .unwrap();
        if open.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("a rotation stayed open");
}

#[tokio::test]
async fn key_vault_events_start_rotations_once_and_ignore_the_rest() {
    let env = Env::start_real_clock().await;
    env.fake.kv_seed(VAULT, SECRET, "old-value");
    let tmp = tempfile::tempdir().unwrap();
    let r = start_with(tmp.path(), &config(&env), 4, &|var| {
        (var == "SP_SECRET").then(|| CLIENT_SECRET.to_owned())
    })
    .await;

    // The subscription handshake.
    let validation = json!([{
        "id": "v1", "topic": "/subscriptions/s", "subject": "",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                 "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/validate"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2018-01-25T22:12:19.4556811Z", "metadataVersion": "1", "dataVersion": "1"
    }]);
    let answer = post(&r, &validation, Some(HOOK_SECRET)).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer["validationResponse"],
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    );

    // Unauthenticated: refused, nothing journaled, nothing started.
    let near = json!([grid_event("e1", "SecretNearExpiry", VAULT, SECRET, "aa11")]);
    assert_eq!(post(&r, &near, None).await.status(), 401);
    assert_eq!(post(&r, &near, Some("wrong")).await.status(), 401);
    assert_eq!(outcome(&r, "e1").await, None);
    assert!(rotations(&r).await.is_empty());

    // Near expiry (vault and secret names in another case): one rotation.
    let near_upper = json!([grid_event(
        "e1",
        "SecretNearExpiry",
        "KV1",
        "Payments",
        "aa11"
    )]);
    assert_eq!(post(&r, &near_upper, Some(HOOK_SECRET)).await.status(), 200);
    let started = outcome(&r, "e1").await.expect("e1 journaled");
    assert!(started.starts_with("started "), "{started}");
    until_none_open(&r).await;
    let first = rotations(&r).await;
    assert_eq!(first.len(), 1);
    let requested: Value =
        serde_json::from_str(&r.journal.read_stream(&first[0]).await.unwrap()[0].payload).unwrap();
    assert_eq!(requested["trigger"], "near_expiry");
    assert_eq!(requested["actor"], "eventgrid:e1");

    // Redelivered: acknowledged, nothing new.
    assert_eq!(post(&r, &near, Some(HOOK_SECRET)).await.status(), 200);
    assert_eq!(rotations(&r).await, first);

    // rekey's own new version; someone else's; another vault's secret; another type.
    let written = env
        .fake
        .kv_versions(VAULT, SECRET)
        .into_iter()
        .find(|v| v.tags.contains_key("rekey-rotation"))
        .expect("rekey wrote a version")
        .version;
    let batch = json!([
        grid_event("e2", "SecretNewVersionCreated", VAULT, SECRET, &written),
        grid_event("e3", "SecretNewVersionCreated", VAULT, SECRET, "ffff0000"),
        grid_event("e4", "SecretNearExpiry", "other-vault", SECRET, "aa11"),
        grid_event("e5", "VaultAccessPolicyChanged", VAULT, SECRET, "aa11"),
    ]);
    assert_eq!(post(&r, &batch, Some(HOOK_SECRET)).await.status(), 200);
    let said = async |id| outcome(&r, id).await.unwrap_or_default();
    assert!(
        said("e2").await.contains("rekey wrote itself"),
        "{}",
        said("e2").await
    );
    assert!(
        said("e3").await.contains("outside rekey"),
        "{}",
        said("e3").await
    );
    assert!(
        said("e4").await.contains("not configured"),
        "{}",
        said("e4").await
    );
    assert!(
        said("e5").await.contains("starts nothing"),
        "{}",
        said("e5").await
    );
    assert_eq!(
        rotations(&r).await,
        first,
        "an ignored event started a rotation"
    );

    // CloudEvents, one structured event: a second rotation.
    let cloud = json!({
        "specversion": "1.0", "id": "c1", "type": "Microsoft.KeyVault.SecretExpired",
        "source": format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{VAULT}"),
        "subject": SECRET, "time": "2026-11-22T01:08:33Z",
        "data": {"Id": "x", "VaultName": VAULT, "ObjectType": "Secret", "ObjectName": SECRET,
                 "Version": "bb22", "NBF": null, "EXP": null}
    });
    let answer = client()
        .post(format!("{}/eventgrid", r.base))
        .header("x-rekey-webhook-secret", HOOK_SECRET)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(cloud.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    until_none_open(&r).await;
    assert!(
        said("c1").await.starts_with("started "),
        "{}",
        said("c1").await
    );
    assert_eq!(rotations(&r).await.len(), 2);
    r.handle.signal();
    let summary = r.done.await.unwrap();
    assert_eq!(summary.completed, 2);
}

/// An event id that cannot be a stream id as it is (spaces, other scripts, control
/// characters, 60 KiB) is recorded under its hash; a batch holding one is acknowledged;
/// delivering it again after its rotation ended starts nothing; and an event whose request
/// was made but never recorded (the record failed, or the process died) is recorded with
/// that request, not requested again.
#[tokio::test]
async fn odd_event_ids_are_recorded_and_no_event_rotates_twice() {
    let env = Env::start_real_clock().await;
    env.fake.kv_seed(VAULT, SECRET, "old-value");
    let tmp = tempfile::tempdir().unwrap();
    let r = start_with(tmp.path(), &config(&env), 4, &|var| {
        (var == "SP_SECRET").then(|| CLIENT_SECRET.to_owned())
    })
    .await;

    let odd = "near expiry \u{2713} \u{1}";
    let huge = "h".repeat(60 * 1024);
    let batch = json!([
        grid_event(
            "good-1",
            "SecretNewVersionCreated",
            VAULT,
            SECRET,
            "ffff0000"
        ),
        grid_event(odd, "SecretNearExpiry", VAULT, SECRET, "aa11"),
        grid_event(&huge, "VaultAccessPolicyChanged", VAULT, SECRET, "aa11"),
    ]);
    assert_eq!(post(&r, &batch, Some(HOOK_SECRET)).await.status(), 200);
    until_none_open(&r).await;
    let first = rotations(&r).await;
    assert_eq!(first.len(), 1);
    let said = async |id: &str| outcome(&r, id).await.unwrap_or_default();
    assert_eq!(said(odd).await, format!("started {}", first[0]));
    assert!(
        said("good-1").await.contains("outside rekey"),
        "{}",
        said("good-1").await
    );
    assert!(
        said(&huge).await.contains("starts nothing"),
        "{}",
        said(&huge).await
    );

    // Delivered again after the rotation ended: acknowledged, nothing started.
    assert_eq!(post(&r, &batch, Some(HOOK_SECRET)).await.status(), 200);
    assert_eq!(rotations(&r).await, first);

    // The request of event e9 was made (its actor is the event's stream id) and the
    // rotation ended, but the event was never recorded: its delivery records that request.
    let actor = rekey::daemon::events::stream_id("e9");
    let requested = r.handle.rotate(SECRET, Trigger::NearExpiry, &actor).await;
    let Ok(rekey::runner::Requested::Started { rotation_id }) = requested else {
        panic!("{requested:?}");
    };
    until_none_open(&r).await;
    let second = rotations(&r).await;
    assert_eq!(second.len(), 2);
    let near = json!([grid_event("e9", "SecretNearExpiry", VAULT, SECRET, "bb22")]);
    assert_eq!(post(&r, &near, Some(HOOK_SECRET)).await.status(), 200);
    assert_eq!(said("e9").await, format!("started {rotation_id}"));
    assert_eq!(
        rotations(&r).await,
        second,
        "the event's request was made twice"
    );
    r.handle.signal();
    assert_eq!(r.done.await.unwrap().completed, 2);
}

/// Where the fake serves the vault of [`named_config`]: a path that is not its name.
const STORE_PATH: &str = "store-a";
/// The vault's name in Event Grid events, given to its store as `vault_name`.
const VAULT_NAME: &str = "contoso-prod";

/// [`config`] with the store at the loopback fake's `/store-a`, named `contoso-prod`.
fn named_config(env: &Env) -> String {
    let text = config(env)
        .replace(
            &env.fake.keyvault_url(VAULT),
            &env.fake.keyvault_url(STORE_PATH),
        )
        .replace(
            "verify_challenge_resource = false\n",
            &format!("verify_challenge_resource = false\nvault_name = \"{VAULT_NAME}\"\n"),
        );
    assert!(text.contains(&format!("/{STORE_PATH}\"")) && text.contains(VAULT_NAME));
    text
}

/// A store's `vault_name` (in another case than the event's) matches events for that
/// vault although its loopback URL ends in another name; the URL's own last segment
/// then names no vault rekey knows.
#[tokio::test]
async fn a_stores_vault_name_matches_events_for_its_vault() {
    let env = Env::start_real_clock().await;
    env.fake.kv_seed(STORE_PATH, SECRET, "old-value");
    let tmp = tempfile::tempdir().unwrap();
    let r = start_with(tmp.path(), &named_config(&env), 4, &|var| {
        (var == "SP_SECRET").then(|| CLIENT_SECRET.to_owned())
    })
    .await;

    let batch = json!([
        grid_event("n1", "SecretNearExpiry", "Contoso-Prod", SECRET, "aa11"),
        grid_event("n2", "SecretNearExpiry", STORE_PATH, SECRET, "aa11"),
    ]);
    assert_eq!(post(&r, &batch, Some(HOOK_SECRET)).await.status(), 200);
    until_none_open(&r).await;
    let said = async |id| outcome(&r, id).await.unwrap_or_default();
    assert!(
        said("n1").await.starts_with("started "),
        "{}",
        said("n1").await
    );
    assert!(
        said("n2").await.contains("not configured"),
        "{}",
        said("n2").await
    );
    assert_eq!(rotations(&r).await.len(), 1);
    let written = env
        .fake
        .kv_versions(STORE_PATH, SECRET)
        .into_iter()
        .filter(|v| v.tags.contains_key("rekey-rotation"))
        .count();
    assert_eq!(written, 1, "the rotation wrote the vault at its URL");
    r.handle.signal();
    assert_eq!(r.done.await.unwrap().completed, 1);
}

/// Tracing output of the current thread (the test's current-thread runtime runs the
/// daemon and its webhook there too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures everything until the guards drop. A second live dispatcher keeps
    /// tracing-core from caching a callsite as off because another test's thread, without
    /// a subscriber, hit it first.
    fn capture(&self) -> (tracing::subscriber::DefaultGuard, tracing::Dispatch) {
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (tracing::subscriber::set_default(subscriber), second)
    }

    fn lines_with(&self, level: &str, text: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(&format!(" {level} ")) && l.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Events for vaults no store names are journaled as ignored, each one, and logged at
/// WARN once per vault name (in any case), naming the vaults rekey knows; events for the
/// named vault are not.
#[tokio::test]
async fn events_for_an_unknown_vault_warn_once_per_vault_name() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let env = Env::start_real_clock().await;
    let tmp = tempfile::tempdir().unwrap();
    let r = start_with(tmp.path(), &named_config(&env), 4, &|var| {
        (var == "SP_SECRET").then(|| CLIENT_SECRET.to_owned())
    })
    .await;

    let first = json!([
        grid_event("u1", "SecretNearExpiry", "other-vault", SECRET, "aa11"),
        grid_event(
            "u2",
            "SecretNewVersionCreated",
            "other-vault",
            SECRET,
            "aa12"
        ),
        grid_event("u3", "SecretNearExpiry", "third-vault", "db", "aa13"),
        grid_event(
            "u4",
            "SecretNewVersionCreated",
            VAULT_NAME,
            "unlisted",
            "aa14"
        ),
    ]);
    assert_eq!(post(&r, &first, Some(HOOK_SECRET)).await.status(), 200);
    let again = json!([
        grid_event("u5", "SecretNearExpiry", "OTHER-VAULT", SECRET, "aa15"),
        grid_event("u6", "SecretExpired", "third-vault", "db", "aa16"),
        grid_event("u7", "SecretNearExpiry", "other-vault", SECRET, "aa17"),
    ]);
    assert_eq!(post(&r, &again, Some(HOOK_SECRET)).await.status(), 200);

    let said = async |id| outcome(&r, id).await.unwrap_or_default();
    for id in ["u1", "u2", "u3", "u5", "u6", "u7"] {
        assert!(
            said(id).await.starts_with("ignored: vault ")
                && said(id).await.contains("not configured"),
            "{id}: {}",
            said(id).await
        );
    }
    assert!(
        said("u4")
            .await
            .contains("secret unlisted of vault contoso-prod is not configured"),
        "{}",
        said("u4").await
    );
    assert!(rotations(&r).await.is_empty());

    let warned = logs.lines_with("WARN", "no key_vault store names");
    assert_eq!(warned.len(), 2, "one line per unknown vault: {warned:#?}");
    for (line, vault) in warned.iter().zip(["other-vault", "third-vault"]) {
        assert!(line.contains(&format!("vault=\"{vault}\"")), "{line}");
        assert!(
            line.contains(&format!("{VAULT_NAME} (provider vault)")),
            "the line names the vaults rekey knows: {line}"
        );
    }
    r.handle.signal();
    r.done.await.unwrap();
}
