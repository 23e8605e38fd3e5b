//! Several `rekey run` nodes on one journal (DESIGN.md §8): three daemons, the real binary,
//! share a PostgreSQL journal (a server the tests start on 127.0.0.1; a SQLite file with
//! `REKEY_MULTINODE_ENGINE=sqlite`) and rotate secrets through the fake Azure services
//! (Key Vault, App Service settings, the token endpoint), asked through the API of any
//! node, while lost responses, throttling and 5xx are injected and random nodes are
//! SIGKILLed at random moments and started again. Two secrets are rotated only by their
//! schedule (every minute), so the leader's duties move with the kills.
//!
//! When enough rotations were asked for and enough kills made, every node is left alive
//! until no rotation is open (they must finish what the dead left, by their rescan and
//! takeover), then stopped; a `rekey resume` finishes a schedule fired in between. The
//! checks, from the journal and the fakes' effect logs and state: every rotation reaches
//! exactly one terminal event and every lock is closed; no effect happens twice (one Key
//! Vault version per idempotency key, no settings write that changes nothing, no version
//! disabled twice or enabled again); a completed rotation disabled the version it captured
//! exactly once and not before its grace period ended; each secret's targets hold its
//! latest value, the only enabled version; the leader changed hands; each schedule fired
//! at most once per slot (minute), and some did; `journal verify` is clean; no secret value
//! is in anything rekey printed.
//!
//! `REKEY_MULTINODE_KILLS=N` asks for at least N kills (default 100);
//! `REKEY_MULTINODE_SEED=S` replays the test's choices.

mod checks;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekey::journal::{Clock, SystemClock};

use crate::crash::SplitMix;
use crate::crash::child::{Ended, Rekey, Running};
use crate::crash::world::{random_value, stamp_effects};
use crate::fake_azure::{FakeAzure, Fault, Route};

const KILLS_ENV: &str = "REKEY_MULTINODE_KILLS";
const SEED_ENV: &str = "REKEY_MULTINODE_SEED";
const ENGINE_ENV: &str = "REKEY_MULTINODE_ENGINE";
const KILLS_DEFAULT: u64 = 100;
/// Rotations asked for at least (counted from the journal at the end).
const ROTATIONS_MIN: usize = 300;
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Secrets `s0..`; the first [`SCHEDULED`] are rotated by their schedule only.
const SECRETS: usize = 22;
const SCHEDULED: usize = 2;
pub const VAULT: &str = "multivault";
pub const SUBSCRIPTION: &str = "00000000-c0de-4bad-8ccc-0000000e0de5";
pub const RESOURCE_GROUP: &str = "multi-rg";
const CLIENT_ID: &str = "0a1b2c3d-0000-4000-8000-0000000e0de5";
const SECRET_ENV: &str = "REKEY_MULTINODE_CLIENT_SECRET";
const TOKEN_ENV: &str = "REKEY_MULTINODE_API_TOKEN";
const PG_PASSWORD_ENV: &str = "REKEY_MULTINODE_PG_PASSWORD";
/// A node is killed every this long, give or take half (ms).
const KILL_EVERY_MS: u64 = 600;
/// Once the chaos ends, the live nodes must end every open rotation within this.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A setting of the site rekey must never touch.
pub const UNRELATED_SETTING: (&str, &str) = ("WEBSITE_RUN_FROM_PACKAGE", "1");

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// The secret `i`'s name and its App Service setting.
pub fn secret(i: usize) -> (String, String) {
    (format!("s{i}"), format!("S{i}_VALUE"))
}

/// The site whose setting holds secret `i`: one site per secret. Settings are written by
/// replacing the site's whole list, with no condition Azure would check; one process
/// serializes the writes to a site, but two nodes do not (docs/config.md, `app_setting`),
/// so secrets sharing a site could undo each other's write.
pub fn site(i: usize) -> String {
    format!("multi-site-{i}")
}

/// One `rekey run`.
struct Node {
    name: &'static str,
    base: String,
    rekey: Rekey,
    running: Option<Running>,
}

impl Node {
    fn start(&mut self) {
        self.running = Some(self.rekey.spawn(&["run"]));
    }
}

/// The fakes, the nodes and what the test saw.
pub struct Cluster {
    pub fake: Arc<FakeAzure>,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    token: String,
    pub client_secret: String,
    /// `[journal]` as every node's config has it.
    journal_toml: String,
    journal_env: Vec<(String, String)>,
    stamps: Arc<Mutex<Vec<i64>>>,
    /// Everything every node and command printed.
    pub transcript: Vec<u8>,
    pub violations: Vec<String>,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(rng: &mut SplitMix) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the fakes' runtime");
        let fake = Arc::new(rt.block_on(FakeAzure::start()));
        let client_secret = format!("multi-client-secret-{:016x}", rng.next_u64());
        fake.register_client(FakeAzure::TENANT, CLIENT_ID, &client_secret);
        for i in 0..SECRETS {
            let ((name, setting), value) = (secret(i), random_value(rng));
            fake.kv_seed(VAULT, &name, &value);
            let settings = [UNRELATED_SETTING, (setting.as_str(), value.as_str())];
            fake.site_seed(SUBSCRIPTION, RESOURCE_GROUP, &site(i), None, &settings);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (journal_toml, journal_env) = journal_section(&rt, rng);
        let stamps = Arc::new(Mutex::new(Vec::new()));
        rt.spawn(stamp_effects(fake.clone(), stamps.clone()));
        let token = format!("multi-api-token-{:016x}", rng.next_u64());
        let mut cluster = Cluster {
            fake,
            dir,
            nodes: Vec::new(),
            token,
            client_secret,
            journal_toml,
            journal_env,
            stamps,
            transcript: Vec::new(),
            violations: Vec::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("reqwest client"),
            rt,
        };
        for name in NODES {
            let port = free_port();
            let config = cluster.dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, cluster.config_text(name, port)).unwrap();
            let mut env = cluster.journal_env.clone();
            env.push((TOKEN_ENV.to_owned(), cluster.token.clone()));
            cluster.nodes.push(Node {
                name,
                base: format!("http://127.0.0.1:{port}"),
                rekey: Rekey {
                    config,
                    secret_env: (SECRET_ENV.to_owned(), cluster.client_secret.clone()),
                    env,
                    transcript: Vec::new(),
                },
                running: None,
            });
        }
        cluster
    }

    fn config_text(&self, node: &str, port: u16) -> String {
        let mut c = format!(
            r#"{journal}

[runner]
lease_ttl = "1s"

[daemon]
listen = "127.0.0.1:{port}"
api_token_env = "{TOKEN_ENV}"
node_id = "{node}"
leader_ttl = "3s"
max_concurrent_rotations = 16

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
"#,
            journal = self.journal_toml,
            authority = self.fake.authority_url(),
            arm = self.fake.arm_url(),
            tenant = FakeAzure::TENANT,
            vault = self.fake.keyvault_url(VAULT),
        );
        for i in 0..SECRETS {
            let ((name, setting), site) = (secret(i), site(i));
            c.push_str(&format!(
                r#"
[providers.app-{name}]
kind = "app_setting"
credential = "fake"
subscription = "{SUBSCRIPTION}"
resource_group = "{RESOURCE_GROUP}"
site = "{site}"
setting = "{setting}"

[secrets.{name}]
rotator = "random"
stores = ["kv"]
dependents = ["app-{name}"]
verifiers = ["kv"]
grace = "1s"
attempts_max = 8
"#
            ));
            if i < SCHEDULED {
                c.push_str(&format!(
                    "\n[secrets.{name}.schedule]\ncron = \"* * * * *\"\ntime_zone = \"UTC\"\n"
                ));
            }
        }
        c
    }

    /// Asks a node to rotate `secret`; false when it could not be asked (down, starting).
    fn rotate(&self, node: usize, secret: &str) -> bool {
        let url = format!("{}/v1/secrets/{secret}/rotate", self.nodes[node].base);
        let request = async { self.http.post(url).bearer_auth(&self.token).send().await };
        self.rt
            .block_on(request)
            .is_ok_and(|r| r.status().as_u16() == 202)
    }

    /// Kills node `i` (if it runs) and starts it again; true if it was killed.
    fn kill_and_restart(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let Some(mut running) = node.running.take() else {
            node.start();
            return false;
        };
        if running.exited() {
            let ended = running.kill();
            let why = format!("{} exited by itself: {}", node.name, ended.describe());
            self.violations.push(why);
            self.record(&ended);
            self.nodes[i].start();
            return false;
        }
        let ended = running.kill();
        self.record(&ended);
        self.nodes[i].start();
        ended.killed
    }

    fn record(&mut self, ended: &Ended) {
        self.transcript.extend_from_slice(ended.stdout.as_bytes());
        self.transcript.extend_from_slice(ended.stderr.as_bytes());
        if ended.stderr.contains("panicked") {
            self.violations
                .push(format!("rekey panicked: {}", ended.describe()));
        }
    }

    /// Stops every node gracefully.
    fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(running) = self.nodes[i].running.take() {
                let ended = running.terminate(Duration::from_secs(30));
                if ended.timed_out {
                    let why = format!("a node ignored SIGTERM: {}", ended.describe());
                    self.violations.push(why);
                }
                self.record(&ended);
            }
        }
    }

    /// Runs `rekey ARGS` (config of the first node) to its end.
    fn command(&mut self, args: &[&str]) -> Ended {
        let ended = self.nodes[0]
            .rekey
            .spawn(args)
            .wait_for(Duration::from_secs(120));
        self.record(&ended);
        ended
    }

    /// The journal as every node's config names it, read-only (an error until a node
    /// has created it).
    pub fn journal(&self) -> Result<rekey::journal::AnyJournal, String> {
        let config = rekey::config::Config::load(&self.nodes[0].rekey.config).expect("config");
        let env: BTreeMap<String, String> = self.journal_env.iter().cloned().collect();
        rekey::journal_open::open_read_only(&config.journal, &|v| env.get(v).cloned())
            .map_err(|e| e.to_string())
    }

    /// The effect stamps once the poller has seen `n` effects.
    pub fn stamps(&self, n: usize) -> Vec<i64> {
        loop {
            let stamps = self.stamps.lock().unwrap().clone();
            if stamps.len() >= n {
                return stamps;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `[journal]` section and the variables it needs: a database of its own on the
/// tests' PostgreSQL server, or a SQLite file next to the configs.
fn journal_section(
    rt: &tokio::runtime::Runtime,
    rng: &mut SplitMix,
) -> (String, Vec<(String, String)>) {
    if std::env::var(ENGINE_ENV).is_ok_and(|e| e == "sqlite") {
        return ("[journal]\npath = \"journal.db\"".to_owned(), Vec::new());
    }
    let password = format!("multi-pg-{:016x}", rng.next_u64());
    rt.block_on(crate::postgres::journal::journal_database(
        "multinode",
        "multinode_journal",
        &password,
    ));
    let port = crate::postgres::server::server().port;
    let toml = format!(
        "[journal]\nurl = \"postgres://multinode_journal@127.0.0.1:{port}/multinode\"\npassword_env = \"{PG_PASSWORD_ENV}\"\ntls = \"disable\""
    );
    (toml, vec![(PG_PASSWORD_ENV.to_owned(), password)])
}

/// A transient fault on a route the rotations use: lost responses on every kind of write,
/// throttling, 5xx, slow answers.
fn draw_fault(rng: &mut SplitMix) -> (Route, Fault) {
    let lost = Fault::ApplyThenDropResponse;
    let throttle = Fault::Throttle {
        retry_after_secs: 1,
    };
    let menu = [
        (Route::KvSet, lost),
        (Route::AppSettingsPut, lost),
        (Route::KvUpdate, lost),
        (Route::KvSet, throttle),
        (Route::AppSettingsPut, throttle),
        (Route::KvGet, Fault::Status { code: 503 }),
        (Route::KvVersions, Fault::Status { code: 500 }),
        (Route::Token, throttle),
        (Route::KvSet, Fault::Delay { ms: 150 }),
    ];
    menu[rng.below(menu.len() as u64) as usize]
}

#[test]
fn nodes_killed_at_random_lose_no_rotation_and_repeat_no_effect() {
    let kills_wanted = env_u64(KILLS_ENV).unwrap_or(KILLS_DEFAULT);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| RandomState::new().build_hasher().finish());
    println!(
        "multinode: seed {seed} (replay with {SEED_ENV}={seed}), at least {kills_wanted} kills"
    );
    let started = SystemClock.now_ms();
    let mut rng = SplitMix(seed);
    let mut c = Cluster::start(&mut rng);
    for i in 0..c.nodes.len() {
        c.nodes[i].start();
    }
    let (mut kills, mut rotations) = (0u64, 0usize);
    let mut next_kill = SystemClock.now_ms() + 2_000;
    let (mut next_fault, mut next_count) = (SystemClock.now_ms(), SystemClock.now_ms());
    while kills < kills_wanted || rotations < ROTATIONS_MIN {
        let now = SystemClock.now_ms();
        if now >= next_fault {
            let (route, fault) = draw_fault(&mut rng);
            c.fake.inject(route, fault, 1);
            next_fault = now + 200 + rng.below(400) as i64;
        }
        if now >= next_kill {
            let victim = rng.below(NODES.len() as u64) as usize;
            kills += u64::from(c.kill_and_restart(victim));
            next_kill = now + (KILL_EVERY_MS / 2 + rng.below(KILL_EVERY_MS)) as i64;
        }
        // Most asks coalesce into the secret's open rotation: rotations are counted from
        // the journal.
        if now >= next_count {
            rotations = checks::rotation_count(&c);
            next_count = now + 2_000;
        }
        let secret = secret(SCHEDULED + rng.below((SECRETS - SCHEDULED) as u64) as usize).0;
        let node = rng.below(NODES.len() as u64) as usize;
        c.rotate(node, &secret);
        std::thread::sleep(Duration::from_millis(10 + rng.below(30)));
    }
    let chaos_s = (SystemClock.now_ms() - started) / 1000;
    println!("multinode: {kills} kills in {chaos_s} s; settling");
    // Every node alive: they must end every rotation the dead left.
    let settled = checks::settle(&c, SETTLE_TIMEOUT);
    if let Err(open) = settled {
        c.violations.push(format!(
            "the live nodes left rotations open for {} s: {open:?}",
            SETTLE_TIMEOUT.as_secs()
        ));
    }
    c.stop_all();
    // A schedule may have fired between the settling and the stop: finish it.
    let resume = c.command(&["resume", "--wait", "--json"]);
    if !resume.status.success() {
        c.violations
            .push(format!("the last resume failed: {}", resume.describe()));
    }
    let rotations = checks::audit(&mut c);
    let secs = (SystemClock.now_ms() - started) as f64 / 1000.0;
    println!(
        "multinode: {kills} kills, {rotations} rotations, {} violations ({secs:.0} s, seed {seed})",
        c.violations.len()
    );
    assert!(
        c.violations.is_empty(),
        "{} violations (replay with {SEED_ENV}={seed}):\n{}",
        c.violations.len(),
        c.violations.join("\n")
    );
    assert!(kills >= kills_wanted, "only {kills} kills");
    assert!(rotations >= ROTATIONS_MIN, "only {rotations} rotations");
}
