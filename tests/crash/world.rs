//! The world the crash test runs `rekey` against: the fake Azure servers on a tokio runtime
//! of their own, a temp dir holding the config, the journal and the local components (a
//! local vault file and an env file), and a poller that stamps each effect the fakes record
//! with the time it was first seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekey::journal::{Clock, JournalScan, SqliteJournal, StreamFilter, SystemClock};
use rekey::runner::lock;
use tempfile::TempDir;

use super::SplitMix;
use crate::fake_azure::{FakeAzure, Fault, Route};

pub const VAULT: &str = "crashvault";
pub const SUBSCRIPTION: &str = "00000000-c0de-4bad-8ccc-00000000c4a5";
pub const RESOURCE_GROUP: &str = "crash-rg";
pub const SITE: &str = "crash-site";
pub const CLIENT_ID: &str = "0a1b2c3d-0000-4000-8000-00000000c4a5";
/// The variable the children read the client secret from.
pub const SECRET_ENV: &str = "REKEY_CRASH_CLIENT_SECRET";
/// Settings of the site that rekey must never touch.
pub const UNRELATED_SETTINGS: [(&str, &str); 2] = [
    ("WEBSITE_RUN_FROM_PACKAGE", "1"),
    ("FEATURE_FLAGS", "beta,dark-mode"),
];
/// A line of the env file that rekey must never touch.
pub const UNRELATED_ENV_LINE: &str = "LOG_LEVEL=info";
/// How often the effect poller looks.
const STAMP_EVERY: Duration = Duration::from_millis(5);

/// One managed secret: its Key Vault secret, its App Service setting, and optionally a
/// second store (the local vault) and a second dependent (a line of the env file).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The secret's name in the config and in Key Vault.
    pub name: &'static str,
    /// Its App Service setting.
    pub setting: &'static str,
    /// Its line in the env file, which is also a verifier.
    pub env_key: Option<&'static str>,
    /// Whether the local vault is a second store.
    pub local_vault: bool,
    pub grace: &'static str,
}

pub const SPECS: [Spec; 3] = [
    Spec {
        name: "api-key",
        setting: "API_KEY",
        env_key: None,
        local_vault: false,
        grace: "1s",
    },
    Spec {
        name: "db-password",
        setting: "DB_PASSWORD",
        env_key: Some("DB_PASSWORD"),
        local_vault: true,
        grace: "1s",
    },
    Spec {
        name: "queue-token",
        setting: "QUEUE_TOKEN",
        env_key: None,
        local_vault: false,
        grace: "2s",
    },
];

/// A fault queued on a route of the fakes.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub route: Route,
    pub fault: Fault,
    pub times: u32,
}

/// Everything the test drives and inspects.
pub struct World {
    pub fake: Arc<FakeAzure>,
    pub dir: TempDir,
    pub config: PathBuf,
    pub journal: PathBuf,
    pub vault_file: PathBuf,
    pub env_file: PathBuf,
    pub client_secret: String,
    /// `stamps[i]`: when the poller first saw effect `i` (it happened no later).
    stamps: Arc<Mutex<Vec<i64>>>,
    http: reqwest::Client,
    /// Declared last: dropped after the fake it serves.
    rt: tokio::runtime::Runtime,
}

impl World {
    /// Starts the fakes, seeds every secret with a first value (Key Vault, the site, the
    /// local vault, the env file) and writes the config. Returns the seeded values.
    pub fn start(rng: &mut SplitMix) -> (World, BTreeMap<&'static str, String>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the fakes' runtime");
        let fake = Arc::new(rt.block_on(FakeAzure::start()));
        let client_secret = format!("crash-client-secret-{:016x}", rng.next_u64());
        fake.register_client(FakeAzure::TENANT, CLIENT_ID, &client_secret);

        let dir = tempfile::tempdir().expect("temp dir");
        let first: BTreeMap<&'static str, String> =
            SPECS.iter().map(|s| (s.name, random_value(rng))).collect();
        for spec in &SPECS {
            fake.kv_seed(VAULT, spec.name, &first[spec.name]);
        }
        let mut settings: Vec<(&str, &str)> = UNRELATED_SETTINGS.to_vec();
        settings.extend(SPECS.iter().map(|s| (s.setting, first[s.name].as_str())));
        fake.site_seed(SUBSCRIPTION, RESOURCE_GROUP, SITE, None, &settings);

        let (vault_file, env_file) = seed_local_components(dir.path(), &first);
        let config = dir.path().join("rekey.toml");
        std::fs::write(&config, config_text(&fake)).unwrap();
        let stamps = Arc::new(Mutex::new(Vec::new()));
        rt.spawn(stamp_effects(fake.clone(), stamps.clone()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        let world = World {
            journal: dir.path().join("journal.db"),
            fake,
            dir,
            config,
            vault_file,
            env_file,
            client_secret,
            stamps,
            http,
            rt,
        };
        (world, first)
    }

    /// Queues faults on the fakes.
    pub fn inject(&self, faults: &[Planned]) {
        for f in faults {
            self.fake.inject(f.route, f.fault, f.times);
        }
    }

    /// Takes up to `n` faults left queued on a read route (`KvGet`, `KvVersions`,
    /// `AppSettingsList`) with harmless reads of our own: a permanent refusal meant for a
    /// forward step must never reach a later compensation (which would retry it for
    /// minutes), and faults on routes rekey uses rarely must not pile up.
    pub fn drain_reads(&self, route: Route, n: u32) {
        let (method, url, audience) = match route {
            Route::KvGet | Route::KvVersions => {
                let versions = if route == Route::KvVersions {
                    "/versions"
                } else {
                    ""
                };
                let vault = self.fake.keyvault_url(VAULT);
                let url = format!(
                    "{vault}/secrets/{}{versions}?api-version=7.5",
                    SPECS[0].name
                );
                (reqwest::Method::GET, url, "https://vault.azure.net")
            }
            Route::AppSettingsList => {
                let url = format!(
                    "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/\
                     Microsoft.Web/sites/{SITE}/config/appsettings/list?api-version=2024-04-01",
                    self.fake.arm_url()
                );
                (reqwest::Method::POST, url, "https://management.azure.com/")
            }
            other => panic!("{other:?} is not a read this test drains"),
        };
        let token = self.fake.mint_token(audience);
        self.rt.block_on(async {
            for _ in 0..n {
                let request = self.http.request(method.clone(), &url);
                let request = request.bearer_auth(&token).header("content-length", "0");
                let status = request
                    .send()
                    .await
                    .expect("draining a read fault")
                    .status();
                // Anything else would mean the request never reached the faults.
                assert!(
                    status.is_success() || [403, 429, 500, 503].contains(&status.as_u16()),
                    "draining {route:?}: {status}"
                );
            }
        });
    }

    /// Whether `secret` has an open rotation (its lock is busy), by the journal.
    pub fn rotation_open(&self, secret: &str) -> bool {
        let Ok(journal) = SqliteJournal::open_read_only(&self.journal) else {
            return false; // not created yet
        };
        let busy = StreamFilter {
            subject: Some(secret.to_owned()),
            status: Some(lock::BUSY.to_owned()),
            ..StreamFilter::default()
        };
        let locks = crate::block_on(journal.streams(&busy)).expect("listing the journal's streams");
        locks.iter().any(|s| lock::is_lock_stream(&s.stream_id))
    }

    /// The effect stamps, once the poller has seen at least `n` effects.
    pub fn stamps(&self, n: usize) -> Vec<i64> {
        loop {
            let stamps = self.stamps.lock().unwrap().clone();
            if stamps.len() >= n {
                return stamps;
            }
            std::thread::sleep(STAMP_EVERY);
        }
    }

    /// The value of the env file's line `key`, and whether every other line is intact.
    pub fn env_line(&self, key: &str) -> (Option<String>, bool) {
        let text = std::fs::read_to_string(&self.env_file).unwrap_or_default();
        let prefix = format!("{key}=");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned);
        (value, text.lines().any(|l| l == UNRELATED_ENV_LINE))
    }

    /// The local vault's versions of `secret`: (id, value, enabled), oldest first.
    pub fn local_versions(&self, secret: &str) -> Vec<(String, String, bool)> {
        let bytes = std::fs::read(&self.vault_file).unwrap_or_default();
        let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        file["secrets"][secret]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v["id"].as_str().unwrap_or_default().to_owned(),
                    v["value"].as_str().unwrap_or_default().to_owned(),
                    v["enabled"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// Every file of the journal (database, WAL, shared memory), concatenated.
    pub fn journal_bytes(&self) -> Vec<u8> {
        ["journal.db", "journal.db-wal", "journal.db-shm"]
            .iter()
            .filter_map(|name| std::fs::read(self.dir.path().join(name)).ok())
            .flatten()
            .collect()
    }
}

/// Writes the local vault file and the env file, holding each secret's first value, and
/// returns their paths.
fn seed_local_components(dir: &Path, first: &BTreeMap<&str, String>) -> (PathBuf, PathBuf) {
    let vault_file = dir.join("vault.json");
    let secrets: serde_json::Map<String, serde_json::Value> = SPECS
        .iter()
        .filter(|s| s.local_vault)
        .map(|s| {
            let version = serde_json::json!({
                "id": format!("seed-{}", s.name),
                "value": first[s.name],
                "enabled": true,
                "tags": {},
            });
            (s.name.to_owned(), serde_json::json!([version]))
        })
        .collect();
    let vault = serde_json::json!({ "secrets": secrets });
    std::fs::write(&vault_file, serde_json::to_vec_pretty(&vault).unwrap()).unwrap();
    let env_file = dir.join("app.env");
    let mut env = format!("{UNRELATED_ENV_LINE}\n");
    for s in &SPECS {
        if let Some(key) = s.env_key {
            env.push_str(&format!("{key}={}\n", first[s.name]));
        }
    }
    std::fs::write(&env_file, env).unwrap();
    (vault_file, env_file)
}

/// 32 random bytes, hex encoded, like the random rotator's values.
pub fn random_value(rng: &mut SplitMix) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

/// Records, for every new effect, the time it was first seen.
pub async fn stamp_effects(fake: Arc<FakeAzure>, stamps: Arc<Mutex<Vec<i64>>>) {
    loop {
        let n = fake.effects().len();
        let now = SystemClock.now_ms();
        {
            let mut stamps = stamps.lock().unwrap();
            let seen = stamps.len();
            stamps.extend(std::iter::repeat_n(now, n.saturating_sub(seen)));
        }
        tokio::time::sleep(STAMP_EVERY).await;
    }
}

/// The provider name of a secret's App Service setting.
pub fn app_provider(spec: &Spec) -> String {
    format!("app-{}", spec.name)
}

/// The config: one Key Vault, one App Service site, the local vault, the env file, and
/// every secret in [`SPECS`] rotated by the random rotator.
fn config_text(fake: &FakeAzure) -> String {
    let mut c = format!(
        r#"[journal]
path = "journal.db"

[runner]
lease_ttl = "1s"

[azure]
authority = "{authority}"
arm = "{arm}"
timeout = "1s"

[credentials.fake]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"

[providers.random]
kind = "random"

[providers.kv]
kind = "key_vault"
vault_url = "{vault}"
credential = "fake"
verify_challenge_resource = false

[providers.local-vault]
kind = "local_vault"
path = "vault.json"
"#,
        authority = fake.authority_url(),
        arm = fake.arm_url(),
        tenant = FakeAzure::TENANT,
        vault = fake.keyvault_url(VAULT),
    );
    for s in &SPECS {
        c.push_str(&format!(
            r#"
[providers.{app}]
kind = "app_setting"
credential = "fake"
subscription = "{SUBSCRIPTION}"
resource_group = "{RESOURCE_GROUP}"
site = "{SITE}"
setting = "{setting}"
"#,
            app = app_provider(s),
            setting = s.setting,
        ));
        let mut stores = vec!["kv".to_owned()];
        let mut dependents = vec![app_provider(s)];
        let mut verifiers = vec!["kv".to_owned()];
        if s.local_vault {
            stores.push("local-vault".into());
        }
        if let Some(key) = s.env_key {
            let env = format!("env-{}", s.name);
            c.push_str(&format!(
                "\n[providers.{env}]\nkind = \"env_file\"\npath = \"app.env\"\nkey = \"{key}\"\n"
            ));
            dependents.push(env.clone());
            verifiers.push(env);
        }
        c.push_str(&format!(
            r#"
[secrets.{name}]
rotator = "random"
stores = {stores:?}
dependents = {dependents:?}
verifiers = {verifiers:?}
grace = "{grace}"
attempts_max = 8
"#,
            name = s.name,
            grace = s.grace,
        ));
    }
    c
}
