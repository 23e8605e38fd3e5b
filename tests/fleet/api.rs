//! The daemon's fleet routes, through a real `rekey run` process against the fakes:
//! `POST /v1/fleet/rotate` plans (dry run), refuses with reasons, requests the eligible
//! rotations, which the daemon drives to their end (old password removed after the
//! grace period, exactly once); `POST /v1/discovery` and `GET /v1/discovery/latest`
//! report what was found; every route needs the bearer token; bad input changes nothing.

use std::time::Duration;

use rekey::journal::{Clock as _, SystemClock};
use serde_json::{Value, json};

use super::{Daemon, READER_ID, READER_SECRET, client, config_text, free_port, start_daemon};
use crate::fake_azure::{App, Effect, FakeAzure, PasswordCred, SecretMeta};

const TOKEN: &str = "fleet-api-token-5c1d-77e0";
const DAY_S: i64 = 86_400;
const OBJECT: &str = "0b000000-0000-4000-8000-0000000000a1";
const APP: &str = "0a000000-0000-4000-8000-0000000000a1";
const KEY: &str = "0c000000-0000-4000-8000-0000000000a1";
const LOW_KEY: &str = "0c000000-0000-4000-8000-0000000000b2";

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap()
}

/// `orders` (HIGH: its item carries its key id) and `search` (LOW: its name only), both
/// due in 10 days.
pub fn seed(fake: &FakeAzure) {
    let now_s = SystemClock.now_ms() / 1000;
    for (n, name, object, app, key) in [
        (1, "orders", OBJECT, APP, KEY),
        (
            2,
            "search",
            "0b000000-0000-4000-8000-0000000000b2",
            "0a000000-0000-4000-8000-0000000000b2",
            LOW_KEY,
        ),
    ] {
        fake.graph_insert_app(App {
            object_id: object.into(),
            app_id: app.into(),
            principal_id: format!("0f000000-0000-4000-8000-00000000000{n}"),
            display_name: name.into(),
            tags: Vec::new(),
            passwords: vec![PasswordCred::new(
                key,
                None,
                &format!("{name}8Q~hand-made"),
                at(now_s - 100 * DAY_S),
                at(now_s + 10 * DAY_S),
            )],
            keys: Vec::new(),
        });
    }
    fake.kv_seed_item(
        "kv-alpha",
        "orders-client-secret",
        "orders8Q~hand-made",
        SecretMeta {
            tags: [("CredentialId".to_owned(), KEY.to_owned())].into(),
            ..SecretMeta::default()
        },
    );
    fake.kv_seed_item(
        "kv-alpha",
        "search-client-secret",
        "search8Q~hand-made",
        SecretMeta::default(),
    );
}

async fn start(fake: &FakeAzure, dir: &std::path::Path) -> Daemon {
    let port = free_port();
    let text = format!(
        "{}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_API_TOKEN\"\n",
        config_text(
            fake,
            &["kv-alpha"],
            &[],
            "[fleet.rotation]\ngrace = \"1s\"\n"
        )
    );
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
    start_daemon(dir, "rekey.toml", port, &[("REKEY_TEST_API_TOKEN", TOKEN)]).await
}

async fn call(d: &Daemon, post: bool, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", d.base);
    let mut req = if post {
        client().post(url)
    } else {
        client().get(url)
    }
    .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rotates_the_fleet_on_request() {
    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    seed(&fake);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&fake, dir.path()).await;

    // No token, no fleet.
    for (post, path) in [
        (true, "/v1/fleet/rotate"),
        (true, "/v1/discovery"),
        (false, "/v1/discovery/latest"),
    ] {
        let url = format!("{}{path}", d.base);
        let req = if post {
            client().post(url)
        } else {
            client().get(url)
        };
        assert_eq!(req.send().await.unwrap().status(), 401, "{path}");
    }
    // Bad input explains itself and changes nothing.
    let (status, body) = call(
        &d,
        true,
        "/v1/fleet/rotate",
        Some(json!({"app_id": "nope"})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no application matches --app \"nope\"")
    );
    let (status, body) = call(&d, true, "/v1/fleet/rotate", Some(json!({"expiry": 3}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `expiry`"),
        "{body}"
    );
    assert!(fake.effects().is_empty());

    let (status, plan) = call(&d, true, "/v1/fleet/rotate", Some(json!({"dry_run": true}))).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["rotations"].as_array().unwrap().len(), 1);
    assert_eq!(plan["rotations"][0]["object_id"], OBJECT);
    assert!(plan["rotations"][0].get("rotation_id").is_none());
    assert_eq!(plan["refused"][0]["key_id"], LOW_KEY);
    assert!(
        plan["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("LOW")
    );
    assert!(fake.effects().is_empty(), "a dry run changes nothing");

    let (status, started) = call(
        &d,
        true,
        "/v1/fleet/rotate",
        Some(json!({"expiry_days": 30})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["rotations"][0]["rotation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut phase = Value::Null;
    for _ in 0..400 {
        let (_, r) = call(&d, false, &format!("/v1/rotations/{id}"), None).await;
        phase = r["phase"].clone();
        if phase == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(phase, "completed");
    let effects = fake.effects();
    let removed: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::GraphPasswordRemoved { .. }))
        .collect();
    assert_eq!(
        removed,
        [&Effect::GraphPasswordRemoved {
            object_id: OBJECT.into(),
            key_id: KEY.into()
        }]
    );
    assert_eq!(
        effects.len(),
        4,
        "added, written, removed, disabled: {effects:#?}"
    );
    let latest = &fake.kv_versions("kv-alpha", "orders-client-secret")[1];
    assert_eq!(latest.tags["rekey-app-id"], APP);

    // What the last discovery found, from the journal; and a new one on request.
    let (status, last) = call(&d, false, "/v1/discovery/latest", None).await;
    assert_eq!(status, 200, "{last}");
    assert!(last["stream"].as_str().unwrap().starts_with("discovery:"));
    let links = last["links"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| l["key_id"] == KEY && l["confidence"] == "high"),
        "{last}"
    );
    let (status, report) = call(&d, true, "/v1/discovery", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["counts"]["apps"], 2);
    let (_, newer) = call(&d, false, "/v1/discovery/latest", None).await;
    assert_eq!(newer["run_id"], report["run_id"]);
    // The new password is linked definitively by rekey's own tags now.
    assert!(
        newer["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["app_id"] == APP && l["confidence"] == "high" && l["key_id"] != KEY),
        "{newer}"
    );
    let _ = APP;
}

/// The OpenAPI document lists the fleet routes.
#[test]
fn openapi_lists_the_fleet_routes() {
    let doc: Value = serde_json::from_str(rekey::daemon::api::OPENAPI).unwrap();
    for (path, method) in [
        ("/v1/discovery", "post"),
        ("/v1/discovery/latest", "get"),
        ("/v1/fleet/rotate", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

/// Two discoveries requested at once: the second is refused with 409 while the first
/// reads the tenant (its Graph listing held back), and the flag is cleared once it ends,
/// so a later request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_requested_while_one_runs_is_refused_with_409() {
    use crate::fake_azure::{Fault, Route};

    let fake = FakeAzure::start().await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    seed(&fake);
    let dir = tempfile::tempdir().unwrap();
    let d = start(&fake, dir.path()).await;
    fake.inject(Route::GraphListApplications, Fault::Delay { ms: 1_500 }, 1);
    let first = call(&d, true, "/v1/discovery", None);
    let second = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        call(&d, true, "/v1/discovery", None).await
    };
    let ((s1, first), (s2, refused)) = tokio::join!(first, second);
    assert_eq!(s1, 200, "{first}");
    assert_eq!(s2, 409, "{refused}");
    assert!(refused.to_string().contains("already running"), "{refused}");
    let (status, latest) = call(&d, false, "/v1/discovery/latest", None).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["run_id"], first["run_id"], "only the first ran");
    let (status, again) = call(&d, true, "/v1/discovery", None).await;
    assert_eq!(status, 200, "the flag is cleared once a run ends: {again}");
}
