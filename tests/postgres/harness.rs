//! A runner over an in-memory journal and a local vault, with the PostgreSQL provider as
//! rotator and verifier, on a manual clock; a spy that records the values the rotator made
//! and can lose a response; a capture of tracing output.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rekey::journal::{Clock, ManualClock, MemoryJournal};
use rekey::provider::{Created, ProviderError, Reply, Roles, SecretValue, Step, Store};
use rekey::providers::local::LocalVault;
use rekey::providers::postgres::{Endpoint, Mode, PostgresRole, Tls, ValueFormat};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Action, Plan, Role, RotationEvent, StepId, TargetRef, Trigger, Wait};

use super::server::Fixture;
use crate::intercept::{Hook, Seen, intercept};

/// Where the manual clock starts.
pub const T0: i64 = 1_700_000_000_000;
/// Grace period of test rotations.
pub const GRACE_MS: i64 = 3_600_000;

/// The environment variable named as holding the admin password.
pub const ADMIN_ENV: &str = "REKEY_TEST_PG_ADMIN_PASSWORD";

/// The provider for `f` in `mode` (values in JSON when alternating, as the config
/// requires), with a short verification retry.
pub fn provider(f: &Fixture, mode: Mode, clock: Arc<dyn Clock>) -> PostgresRole {
    let value_format = match mode {
        Mode::Single { .. } => ValueFormat::Password,
        Mode::Alternating { .. } => ValueFormat::Json,
    };
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port: f.port,
    };
    PostgresRole {
        admin: endpoint.clone(),
        verify: endpoint,
        dbname: f.db.clone(),
        admin_user: f.admin.clone(),
        admin_password: SecretValue::new(f.admin_password.clone()),
        admin_password_env: ADMIN_ENV.into(),
        mode,
        password_bytes: 24,
        value_format,
        tls: Tls::Disable,
        clock,
        verify_attempts: 2,
        verify_backoff_ms: 20,
    }
}

/// The password in a value: the value itself, or its `password` when it is JSON.
pub fn password(value: &SecretValue) -> String {
    match serde_json::from_str::<serde_json::Value>(value.expose()) {
        Ok(v) => v["password"].as_str().unwrap().to_owned(),
        Err(_) => value.expose().to_owned(),
    }
}

/// The role a JSON value names.
pub fn username(value: &SecretValue) -> String {
    let v: serde_json::Value = serde_json::from_str(value.expose()).unwrap();
    v["username"].as_str().unwrap().to_owned()
}

/// A JSON value as alternating mode writes it.
pub fn json_value(user: &str, password: &str) -> SecretValue {
    SecretValue::new(serde_json::json!({"username": user, "password": password}).to_string())
}

pub fn alternating(f: &Fixture) -> Mode {
    Mode::Alternating {
        roles: [f.blue.clone(), f.green.clone()],
    }
}

pub fn single(f: &Fixture) -> Mode {
    Mode::Single {
        role: f.app.clone(),
    }
}

/// `pg` in the roles it plays.
pub fn roles_of(pg: PostgresRole) -> Roles {
    roles!(Arc::new(pg))
}

/// Calls `action` on `pg` (a rotator and verifier) outside any rotation, as the runner
/// would, and returns the id it produced.
pub async fn call(
    pg: &Roles,
    action: Action,
    rotation_id: &str,
    value: Option<&SecretValue>,
    produced: Option<&str>,
) -> Result<Option<String>, ProviderError> {
    let id = StepId::new(action, 0);
    let key = id.key(rotation_id);
    let step = Step {
        rotation_id,
        secret: "s",
        id,
        key: &key,
        credential: None,
        address: None,
    };
    let rotator = pg.rotator().expect("a rotator");
    match action {
        Action::Capture => rotator.capture(step, value).await,
        Action::Create => rotator.create(step, None).await.map(|c| Some(c.id)),
        Action::RetireOld => rotator.retire_old(step, None).await.map(|()| None),
        Action::Discard => rotator.discard(step, produced, value).await,
        Action::DiscardLost => rotator.discard_lost(step, produced).await.map(|()| None),
        Action::Verify => {
            let verifier = pg.verifier().expect("a verifier");
            let value = value.expect("a value to verify");
            verifier.verify(step, value).await.map(|()| None)
        }
        other => panic!("a rotator and verifier has no step {other:?}"),
    }
}

/// What the spy does to `Create` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The first `Create` takes effect but its response is lost (a transient error).
    LoseFirstCreate,
    /// As `LoseFirstCreate`, and every later `Create` is refused without effect.
    LoseFirstCreateThenRefuse,
}

/// Watches a provider: records every value it hands out, and injects `fault`.
#[derive(Debug)]
pub struct Spy {
    pub fault: Fault,
    pub creates: AtomicU32,
    /// Every value a `Create` made, including one whose response was lost.
    pub made: Mutex<Vec<SecretValue>>,
}

impl Spy {
    pub fn new(fault: Fault) -> Arc<Self> {
        Arc::new(Self {
            fault,
            creates: AtomicU32::new(0),
            made: Mutex::default(),
        })
    }

    /// `pg`, watched by this spy.
    pub fn wrap(self: &Arc<Self>, pg: PostgresRole) -> Roles {
        intercept(roles_of(pg), self.clone())
    }

    pub fn made(&self) -> Vec<SecretValue> {
        self.made.lock().unwrap().clone()
    }
}

impl Hook for Spy {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        if !seen.performs(Action::Create) {
            return call;
        }
        Box::pin(async move {
            let n = self.creates.fetch_add(1, Ordering::SeqCst);
            if n > 0 && self.fault == Fault::LoseFirstCreateThenRefuse {
                return Err(ProviderError::permanent("refused by the test"));
            }
            let created = call.await?;
            if n == 0 && self.fault != Fault::None {
                return Err(ProviderError::transient(
                    "connection reset while reading the response (injected by the test)",
                ));
            }
            Ok(created)
        })
    }

    fn created(&self, created: &Created) {
        self.made.lock().unwrap().push(created.value.clone());
    }
}

/// A store that refuses every write permanently (to make a rotation compensate).
#[derive(Debug)]
pub struct RefusingStore;

impl RefusingStore {
    /// `vault`, refusing writes.
    pub fn wrap(vault: LocalVault) -> Roles {
        intercept(roles!(Arc::new(vault)), RefusingStore)
    }
}

impl Hook for RefusingStore {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        if seen.performs(Action::Write) {
            return Box::pin(async { Err(ProviderError::permanent("store refused by the test")) });
        }
        call
    }
}

/// A runner with the provider `pg` as rotator (target 0) and verifier (target 2), and the
/// local vault `vault` as store (target 1).
pub struct Rig {
    pub clock: ManualClock,
    pub journal: Arc<MemoryJournal>,
    pub vault: Arc<LocalVault>,
    pub runner: Runner<MemoryJournal>,
    pub plan: Plan,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// The standard rig: `rotator` as `pg`, the vault (wrapped by `store` if given) as
    /// `vault`, a one-hour grace period.
    pub fn new(
        secret: &str,
        clock: ManualClock,
        rotator: Roles,
        store: Option<fn(LocalVault) -> Roles>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault_path = dir.path().join("vault.json");
        let store = match store {
            Some(wrap) => wrap(LocalVault::new(&vault_path)),
            None => roles!(Arc::new(LocalVault::new(&vault_path))),
        };
        let providers = Registry::new()
            .with_roles("pg", rotator)
            .with_roles("vault", store);
        let target = TargetRef::new;
        let plan = Plan {
            secret: secret.into(),
            lock_key: secret.into(),
            targets: vec![
                target(Role::Rotator, "pg"),
                target(Role::Store, "vault"),
                target(Role::Verifier, "pg"),
            ],
            grace_ms: GRACE_MS,
            attempts_max: 3,
        };
        Self::with(clock, providers, plan, &vault_path, dir)
    }

    /// A rig over given providers and plan; `vault_path` is the store's file, which must
    /// be target 1, and `dir` is kept until the rig drops.
    pub fn with(
        clock: ManualClock,
        providers: Registry,
        plan: Plan,
        vault_path: &std::path::Path,
        dir: tempfile::TempDir,
    ) -> Self {
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let journal = Arc::new(MemoryJournal::new(shared.clone()));
        let runner = Runner::new(
            journal.clone(),
            Arc::new(providers),
            shared,
            Options::new("pg-test", 7),
        );
        Self {
            clock,
            journal,
            vault: Arc::new(LocalVault::new(vault_path)),
            runner,
            plan,
            _dir: dir,
        }
    }

    /// Opens a rotation and returns its id.
    pub async fn start(&self) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let got = self
            .runner
            .request(self.plan.clone(), Trigger::Manual, "test", id.clone())
            .await
            .unwrap();
        assert_eq!(
            got,
            Requested::Started {
                rotation_id: id.clone()
            }
        );
        id
    }

    /// Drives `id`, moving the clock past every retry backoff, until it finishes or waits
    /// for its grace period.
    pub async fn drive(&self, id: &str) -> Progress {
        for _ in 0..50 {
            match self.runner.drive(id).await.unwrap() {
                Progress::Waiting {
                    until_ms,
                    reason: Wait::Backoff,
                } => self.clock.set(until_ms),
                other => return other,
            }
        }
        panic!("rotation {id} kept backing off");
    }

    /// Moves the clock to the end of the grace period and drives `id` to its end.
    pub async fn after_grace(&self, id: &str) -> Progress {
        self.clock.advance(GRACE_MS);
        self.drive(id).await
    }

    /// The rotation's events, decoded.
    pub fn events(&self, id: &str) -> Vec<RotationEvent> {
        self.journal
            .all_events()
            .into_iter()
            .filter(|e| e.stream_id == id)
            .map(|e| serde_json::from_str(&e.payload).unwrap())
            .collect()
    }

    /// What a succeeded step produced.
    pub async fn outcome(&self, id: &str, step: StepId) -> Option<String> {
        let (state, _) = self.runner.load(id).await.unwrap();
        state.outcome(&step).map(str::to_owned)
    }

    /// The value the rotation wrote to the vault.
    pub async fn stored(&self, id: &str) -> SecretValue {
        let version = self
            .outcome(id, StepId::new(Action::Write, 1))
            .await
            .expect("the rotation wrote the vault");
        self.vault.read_value(&version).await.unwrap()
    }
}

/// Keeps a capture on.
pub struct Capture {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

/// Tracing output of the current thread, as text (use with a current-thread runtime, so
/// every task of the test logs here).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures everything down to TRACE until the guard drops, including the `log` records
    /// of libraries (tokio-postgres), as rekey's own log setup forwards them.
    pub fn capture(&self) -> Capture {
        // Process-wide and once only; another test may have installed it first.
        let _ = tracing_log::LogTracer::init();
        // With a single live dispatcher, tracing-core caches a callsite's interest from
        // whatever thread hits it first: a test thread without a subscriber would switch
        // our events off for good. A second live dispatcher makes it ask every live one.
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        Capture {
            _default: tracing::subscriber::set_default(subscriber),
            _second: second,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
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

/// The starting clock, shared.
pub fn clock() -> (ManualClock, Arc<dyn Clock>) {
    let c = ManualClock::new(T0);
    let shared: Arc<dyn Clock> = Arc::new(c.clone());
    (c, shared)
}
