//! `rekey policy check --online`, the real binary against the fake Azure services and the
//! test PostgreSQL server: with everything granted every target passes and nothing changes
//! (no effect on the fakes, no write request, no journal file); with one permission
//! missing per target kind, that kind's targets fail in Azure's words and exit 1, the
//! others still pass; no secret value is ever printed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use crate::fake_azure::{FakeAzure, Route};
use crate::postgres::server::{Fixture, server};

const CLIENT_ID: &str = "0b1e0000-0000-4000-8000-0000000000c1";
const CLIENT_SECRET: &str = "online~sp.secret+value/1=";
const CLIENT_SECRET_VAR: &str = "REKEY_ONLINE_CLIENT_SECRET";
const PG_PASSWORD_VAR: &str = "REKEY_ONLINE_PG_PASSWORD";
const SUB: &str = "00000000-aaaa-4bbb-8ccc-0000000000e1";
const RG: &str = "rg-online";
const VAULT: &str = "onlinekv";
const SITE: &str = "online-web";
const ACCOUNT: &str = "onlineacct";
const APP_OBJECT_ID: &str = "0b1e0000-0000-4000-8000-0000000000b1";
const APP_ID: &str = "0b1e0000-0000-4000-8000-0000000000a1";
/// Values seeded where rekey would read them: none may ever be printed.
const API_KEY: &str = "seeded-api-key-7f3a9c";
const DB_VALUE: &str = "seeded-db-value-51be20";

/// Everything `policy check --online` probes, and the dir holding the config.
struct World {
    fake: FakeAzure,
    pg: Fixture,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    async fn start(db: &str) -> World {
        let fake = FakeAzure::start().await;
        fake.register_client(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET);
        fake.kv_seed(VAULT, "api-key", API_KEY);
        fake.site_seed(
            SUB,
            RG,
            SITE,
            None,
            &[("API_KEY", API_KEY), ("OTHER", "unrelated")],
        );
        fake.app_seed(APP_OBJECT_ID, APP_ID);
        fake.storage_seed(SUB, RG, ACCOUNT);
        let pg = Fixture::new(db).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.env"),
            format!("API_KEY={API_KEY}\nLOG=info\n"),
        )
        .unwrap();
        let config = dir.path().join("rekey.toml");
        std::fs::write(&config, config_text(&fake, &pg)).unwrap();
        // It runs a command: it must be private.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        World {
            fake,
            pg,
            dir,
            config,
        }
    }

    /// `rekey policy check --online ARGS…` with the credentials' variables set.
    async fn check(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["policy", "check", "--online"])
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "trace")
            .env(CLIENT_SECRET_VAR, CLIENT_SECRET)
            .env(PG_PASSWORD_VAR, &self.pg.admin_password);
        for var in [
            "REKEY_CONFIG",
            "REKEY_JOURNAL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.output().await.expect("run rekey");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let mut secrets = vec![
            CLIENT_SECRET.to_owned(),
            API_KEY.to_owned(),
            DB_VALUE.to_owned(),
            self.pg.admin_password.clone(),
        ];
        secrets.extend(self.fake.storage_keys(ACCOUNT).into_values());
        for s in &secrets {
            assert!(
                !all.contains(s.as_str()),
                "a secret value was printed:\n{all}"
            );
        }
        out
    }

    /// Nothing was changed: no effect on the fakes, only reads sent, no journal file.
    fn assert_unchanged(&self) {
        assert_eq!(self.fake.effects(), []);
        for r in self.fake.requests() {
            let read = r.method == "GET"
                || (r.method == "POST"
                    && (r.path.contains("/appsettings/list?")
                        || r.path.contains("/listKeys?")
                        || r.path.ends_with("/oauth2/v2.0/token")));
            assert!(read, "a request that may write: {} {}", r.method, r.path);
        }
        assert!(!self.dir.path().join("journal.db").exists());
        let mut left: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["app.env", "rekey.toml"]);
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("app.env")).unwrap(),
            format!("API_KEY={API_KEY}\nLOG=info\n")
        );
    }

    /// Runs the probes with one thing missing; returns `(target, ok, line)` per target.
    async fn rows(&self, args: &[&str], code: i32) -> Vec<(String, bool, String)> {
        let out = self.check(args).await;
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{stdout}\n{}",
            text(&out.stderr)
        );
        stdout
            .lines()
            .filter(|l| l.starts_with('✔') || l.starts_with('✘'))
            .map(|l| {
                let target = l.split_whitespace().nth(3).unwrap().to_owned();
                (target, l.starts_with('✔'), l.to_owned())
            })
            .collect()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_text(fake: &FakeAzure, pg: &Fixture) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"
timeout = "5s"

[credentials.sp]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{CLIENT_ID}"
client_secret_env = "{CLIENT_SECRET_VAR}"

[providers.random]
kind = "random"

[providers.kv]
kind = "key_vault"
vault_url = "{vault}"
credential = "sp"
verify_challenge_resource = false

[providers.local]
kind = "local_vault"
path = "vault.json"

[providers.web]
kind = "app_setting"
credential = "sp"
subscription = "{SUB}"
resource_group = "{RG}"
site = "{SITE}"
setting = "API_KEY"

[providers.envfile]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[providers.check]
kind = "command"
command = ["true"]

[providers.entra]
kind = "entra_password"
credential = "sp"
tenant = "{tenant}"
object_id = "{APP_OBJECT_ID}"
app_id = "{APP_ID}"

[providers.storage]
kind = "storage_keys"
credential = "sp"
subscription = "{SUB}"
resource_group = "{RG}"
account = "{ACCOUNT}"

[providers.pg]
kind = "postgres_role"
host = "127.0.0.1"
port = {port}
dbname = "{db}"
admin_user = "{admin}"
admin_password_env = "{PG_PASSWORD_VAR}"
mode = "alternating"
roles = ["{blue}", "{green}"]
value_format = "json"
tls = "disable"

[secrets.api-key]
rotator = "random"
stores = ["kv", "local"]
dependents = ["web", "envfile"]
verifiers = ["kv", "check"]
grace = "1h"

[secrets.app-secret]
rotator = "entra"
stores = ["kv"]
verifiers = ["entra"]
grace = "1h"

[secrets.storage-key]
rotator = "storage"
stores = ["kv"]
verifiers = ["kv"]
grace = "1h"

[secrets.db-password]
rotator = "pg"
stores = ["kv"]
verifiers = ["pg"]
grace = "1h"
"#,
        authority = fake.authority_url(),
        arm = fake.arm_url(),
        graph = fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vault = fake.keyvault_url(VAULT),
        port = pg.port,
        db = pg.db,
        admin = pg.admin,
        blue = pg.blue,
        green = pg.green,
    )
}

/// Every target passes and nothing changes; JSON says the same; one secret can be asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_setup_passes_every_target_and_changes_nothing() {
    let world = World::start("online_clean").await;
    let rows = world.rows(&[], 0).await;
    let targets: Vec<&str> = rows.iter().map(|(t, _, _)| t.as_str()).collect();
    // Secrets in name order, each secret's targets in plan order.
    assert_eq!(
        targets,
        [
            "random", "kv", "local", "web", "envfile", "kv", "check", // api-key
            "entra", "kv", "entra", // app-secret
            "pg", "kv", "pg", // db-password
            "storage", "kv", "kv", // storage-key
        ]
    );
    for (_, ok, line) in &rows {
        assert!(ok, "{line}");
    }
    let found = [
        (1, "api-key in"),
        (1, "versions listed (values not read)"),
        (2, "no live version of api-key yet"),
        (3, "setting API_KEY of site online-web: settings listed"),
        (6, "nothing to probe"),
        (7, APP_ID),
        (8, "does not exist yet: the first rotation creates it"),
        (10, "ready to rotate"),
        (13, "keys key1 and key2 listed"),
    ];
    for (n, words) in found {
        assert!(rows[n].2.contains(words), "{words:?} not in {}", rows[n].2);
    }
    world.assert_unchanged();

    let out = world.check(&["db-password", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(&str, &str, &str, bool)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["secret"].as_str().unwrap(),
                r["role"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("db-password", "rotator", "pg", true),
            ("db-password", "store", "kv", true),
            ("db-password", "verifier", "pg", true),
        ]
    );
    world.assert_unchanged();
}

/// One permission missing per target kind: exactly that kind's targets fail, saying what
/// to grant; the rest pass; exit 1; still nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_permission_fails_its_targets_in_words() {
    let world = World::start("online_denied").await;
    let cases: [(Route, &str, &str); 4] = [
        (
            Route::KvVersions,
            "kv",
            "Key Vault denied `list versions` on secret",
        ),
        (
            Route::AppSettingsList,
            "web",
            "App Service denied `list settings` on setting API_KEY of site online-web",
        ),
        (
            Route::GraphGetApplication,
            "entra",
            "Microsoft Graph denied `read the application` on application",
        ),
        (
            Route::StorageListKeys,
            "storage",
            "Azure Storage denied `list keys` on storage account onlineacct",
        ),
    ];
    let vault = world.fake.keyvault_url(VAULT);
    let grants = [
        // Each role is told its own grant (below).
        "grant Key Vault Secrets ".to_owned(),
        "grant Website Contributor on the site".to_owned(),
        "grant Application.ReadWrite.OwnedBy".to_owned(),
        "grant Storage Account Key Operator Service Role".to_owned(),
    ];
    for ((route, target, denied), grant) in cases.into_iter().zip(grants) {
        world.fake.deny(route);
        let rows = world.rows(&[], 1).await;
        world.fake.allow(route);
        let mut failed = 0;
        for (t, ok, line) in &rows {
            // The Entra verifier signs in with the new password: no Graph read to deny.
            let denied_here = t == target && !(t == "entra" && line.contains(" verifier "));
            if denied_here {
                failed += 1;
                assert!(!ok, "{line}");
                assert!(line.contains(denied), "{line}");
                assert!(line.contains("(HTTP 403"), "{line}");
                assert!(line.contains(&grant), "{line}");
            } else {
                assert!(ok, "{route:?} denied, yet: {line}");
            }
        }
        assert!(failed > 0, "{route:?}: no target failed");
    }
    // A store needs more than a verifier: each is told its own role.
    world.fake.deny(Route::KvVersions);
    let rows = world.rows(&["api-key"], 1).await;
    world.fake.allow(Route::KvVersions);
    let kv: Vec<&str> = rows
        .iter()
        .filter(|(t, _, _)| t == "kv")
        .map(|(_, _, l)| l.as_str())
        .collect();
    let officer = format!("grant Key Vault Secrets Officer on {vault}");
    let user = format!("grant Key Vault Secrets User on {vault}");
    assert!(
        kv[0].contains(" store ") && kv[0].contains(&officer),
        "{}",
        kv[0]
    );
    assert!(
        kv[1].contains(" verifier ") && kv[1].contains(&user),
        "{}",
        kv[1]
    );

    // PostgreSQL: an admin without CREATEROLE cannot change a password.
    let su = server().superuser("postgres").await;
    su.batch_execute(&format!("ALTER ROLE {} NOCREATEROLE", world.pg.admin))
        .await
        .unwrap();
    let rows = world.rows(&["db-password"], 1).await;
    for (t, ok, line) in &rows {
        if t == "pg" {
            assert!(!ok, "{line}");
            assert!(line.contains("lacks CREATEROLE"), "{line}");
            assert!(
                line.contains(&format!("ALTER ROLE \"{}\" CREATEROLE", world.pg.admin)),
                "{line}"
            );
        } else {
            assert!(ok, "{line}");
        }
    }

    // No token at all: every Azure target says its credential could not sign in.
    world.fake.deny(Route::Token);
    let rows = world.rows(&["app-secret"], 1).await;
    world.fake.allow(Route::Token);
    for (t, ok, line) in &rows {
        if line.contains(" verifier ") {
            assert!(ok, "{line}");
        } else {
            assert!(
                !ok && line.contains("cannot get a token for"),
                "{t}: {line}"
            );
        }
    }
    world.assert_unchanged();
}

/// The probe's own file checks: a dependent whose directory is missing fails, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_fails_the_file_target() {
    let world = World::start("online_dir").await;
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("\"app.env\"", "\"gone/app.env\""),
    )
    .unwrap();
    let rows = world.rows(&["api-key"], 1).await;
    for (t, ok, line) in &rows {
        if t == "envfile" {
            assert!(!ok, "{line}");
            assert!(
                line.contains(&format!(
                    "the directory {} does not exist",
                    world.dir.path().join("gone").display()
                )),
                "{line}"
            );
        } else {
            assert!(ok, "{line}");
        }
    }
}
