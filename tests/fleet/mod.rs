//! Fleet discovery against the fake Azure services, over real HTTP on 127.0.0.1 only.
//!
//! - `inventory`: the scanner (Graph, ARM, Key Vault listings; paging, throttling, retries,
//!   unreachable vaults and tenants; hint reads);
//! - `e2e`: a generated tenant of 600 apps and three vaults (one unreachable) discovered
//!   through `rekey discover`, links asserted;
//! - `bad_input`: every bad-input path explains itself and changes nothing;
//! - `hygiene`: values read for the hint check reach no journal, log or output;
//! - `unattended`: `rekey run` with `[fleet] discover_every`: scheduled discovery, rotation
//!   and notices on the leader only.
//!
//! This file holds what they share: a fake with a registered reader, a scanner over it, a
//! config and a run of the binary.

pub mod api;
mod bad_input;
mod crash;
mod e2e;
mod hygiene;
mod inventory;
mod rotate;
mod rotate_cli;
mod unattended;

use std::sync::Arc;

use rekey::fleet::inventory::{Scanner, Tenant};
use rekey::journal::{Clock, ManualClock};
use rekey::provider::SecretValue;
use rekey::providers::azure::credential::{Source, TokenCache};
use rekey::providers::azure::http::Http;
use rekey::retry::RetryPolicy;
use url::Url;

use crate::fake_azure::FakeAzure;

/// The manual clock's start: 2025-06-15T14:40:00Z.
pub const T0_MS: i64 = 1_750_000_000_000;
/// The service principal discovery reads as.
pub const READER_ID: &str = "5e7c0000-0000-4000-8000-0000000f1ee7";
pub const READER_SECRET: &str = "fleet~reader.secret+1=";
pub const SUB: &str = "00000000-aaaa-4bbb-8ccc-00000000f1ee";

pub fn url(s: &str) -> Url {
    Url::parse(s).expect("URL")
}

/// A fake (manual clock at [`T0_MS`]) with [`READER_ID`] registered.
pub async fn fake() -> (FakeAzure, ManualClock) {
    let clock = ManualClock::new(T0_MS);
    let fake = FakeAzure::start_with_clock(Arc::new(clock.clone())).await;
    fake.register_client(FakeAzure::TENANT, READER_ID, READER_SECRET);
    (fake, clock)
}

/// A tenant read with `secret` as [`READER_ID`]'s client secret.
pub fn tenant(fake: &FakeAzure, http: &Http, name: &str, secret: &str) -> Tenant {
    Tenant {
        name: name.to_owned(),
        credential: Arc::new(TokenCache::new(
            http.clone(),
            Source::ClientSecret {
                authority: url(&fake.authority_url()),
                tenant: FakeAzure::TENANT.to_owned(),
                client_id: READER_ID.to_owned(),
                secret: SecretValue::new(secret),
            },
        )),
        subscriptions: Vec::new(),
        vaults: Vec::new(),
        service_principals: true,
    }
}

/// A scanner of `tenants` over the fake: loopback vaults, fast retries.
pub fn scanner(fake: &FakeAzure, http: Http, tenants: Vec<Tenant>) -> Scanner {
    let mut s = Scanner::new(http, url(&fake.graph_url()), url(&fake.arm_url()), tenants);
    s.verify_challenge_resource = false;
    s.retry = RetryPolicy {
        initial_ms: 10,
        max_ms: 200,
        multiplier: 2.0,
    };
    s
}

/// rekey's HTTP client on `clock`.
pub fn http(clock: &ManualClock) -> Http {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Http::new(5_000, clock).expect("HTTP client")
}

/// The environment variable holding the reader's secret in configs written here.
pub const SECRET_VAR: &str = "REKEY_TEST_FLEET_READER_SECRET";

/// A config for `rekey discover` against `fake`: tenant `contoso` read by [`READER_ID`]
/// (secret in [`SECRET_VAR`]) over `vaults` and `subscriptions`; `extra` goes into
/// `[fleet]`.
pub fn config_text(
    fake: &FakeAzure,
    vaults: &[&str],
    subscriptions: &[&str],
    extra: &str,
) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let vaults: Vec<String> = vaults.iter().map(|v| fake.keyvault_url(v)).collect();
    let subs: Vec<String> = subscriptions.iter().map(|s| (*s).to_owned()).collect();
    format!(
        r#"[journal]
path = "journal.db"

[azure]
authority = "{authority}"
arm = "{arm}"
graph = "{graph}"
timeout = "10s"

[credentials.reader]
kind = "client_secret"
tenant = "{tenant}"
client_id = "{READER_ID}"
client_secret_env = "{SECRET_VAR}"

[fleet]
verify_challenge_resource = false
{extra}

[fleet.tenants.contoso]
credential = "reader"
vaults = [{vaults}]
subscriptions = [{subs}]
"#,
        authority = fake.authority_url(),
        arm = fake.arm_url(),
        graph = fake.graph_url(),
        tenant = FakeAzure::TENANT,
        vaults = list(&vaults),
        subs = list(&subs),
    )
}

/// What a run of the binary left.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `rekey discover ARGS` in `dir` (config `rekey.toml` there) with the reader's
/// secret set unless `secret` is `None`, and trace logging on stderr.
pub async fn discover(dir: &std::path::Path, args: &[&str], secret: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.arg("discover")
        .args(args)
        .arg("--config")
        .arg(dir.join("rekey.toml"))
        .current_dir(dir)
        .env("RUST_LOG", "trace")
        .env_remove("REKEY_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove(SECRET_VAR);
    if let Some(s) = secret {
        cmd.env(SECRET_VAR, s);
    }
    let out = cmd.output().await.expect("run rekey discover");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every byte of the journal in `dir` (database and WAL), empty when there is none.
pub fn journal_bytes(dir: &std::path::Path) -> Vec<u8> {
    ["journal.db", "journal.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .flatten()
        .collect()
}

/// A `rekey run` process started by a test; killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 for a daemon to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client that never goes through a proxy (the tests speak to 127.0.0.1 only).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Starts `rekey run --config <config>` in `dir`, listening on `port`, with the fleet
/// reader's secret and `envs` in its environment, and waits until `/readyz` answers 200.
pub async fn start_daemon(
    dir: &std::path::Path,
    config: &str,
    port: u16,
    envs: &[(&str, &str)],
) -> Daemon {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"));
    command
        .args(["run", "--config", config])
        .current_dir(dir)
        .env(SECRET_VAR, READER_SECRET)
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut daemon = Daemon {
        child: command.spawn().expect("start rekey run"),
        base: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..400 {
        if let Ok(r) = client().get(format!("{}/readyz", daemon.base)).send().await
            && r.status() == 200
        {
            return daemon;
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("rekey run exited early: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("rekey run never became ready");
}
