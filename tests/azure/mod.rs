//! rekey's Azure providers against the fake Azure services (`tests/fake_azure`), over real
//! HTTP on 127.0.0.1 only.
//!
//! - `keyvault`, `appservice`, `graph`, `storage`, `credential`: each provider through its
//!   role traits directly (capture, write, reconcile after lost responses, compensate,
//!   retire, permission and throttling errors) and the token sources;
//! - `flows`: whole rotations through the runner (the seed-001 API key, an Entra password);
//! - `hygiene`: no secret value or bearer token in logs, errors or the journal;
//! - `config`: a TOML config building the providers and rotating through them.
//!
//! This file holds what they share: a fake with a registered client, the providers built
//! over it, a step builder that calls the role method of a step's action as the runner
//! does ([`Perform`]), and runner helpers.

mod appservice;
mod chain;
mod config;
mod credential;
mod flows;
mod graph;
mod hygiene;
mod keyvault;
mod storage;
mod throttle;

use std::sync::{Arc, Mutex};

use rekey::journal::{Clock, JournalRead, JournalScan, ManualClock, MemoryJournal, StreamFilter};
use rekey::provider::{
    Cast, Dependent, ProviderError, Reconciled, Reply, Roles, Rotator, SecretValue, Store, Verifier,
};
use rekey::providers::azure::appservice::{AppSetting, Mode, SiteLocks};
use rekey::providers::azure::credential::{Source, TokenCache};
use rekey::providers::azure::graph::AppPasswords;
use rekey::providers::azure::http::{Authed, Http};
use rekey::providers::azure::keyvault::KeyVaultStore;
use rekey::providers::azure::storage::StorageKeys;
use rekey::resolve::Registry;
use rekey::runner::lock::is_lock_stream;
use rekey::runner::{Options, Progress, Requested, Runner, RunnerJournal};
use rekey::saga::{Action, Phase, Plan, Role, RotationEvent, StepId, TargetRef, Trigger, Wait};
use url::Url;

use crate::fake_azure::{Effect, FakeAzure, Service};
use crate::intercept::{Hook, Seen, intercept};

/// The manual clock's start: 2025-06-15T14:40:00Z.
pub const T0_MS: i64 = 1_750_000_000_000;
/// The service principal rekey runs as.
pub const CLIENT_ID: &str = "5e7c0000-0000-4000-8000-00000000c11e";
/// Its client secret (with characters a form must encode).
pub const CLIENT_SECRET: &str = "rekey~sp.secret+value/1=";
pub const SUB: &str = "00000000-aaaa-4bbb-8ccc-000000000002";
pub const RG: &str = "rg-rekey";
pub const VAULT: &str = "kv1";
pub const SITE: &str = "web1";
pub const ACCOUNT: &str = "acct1";
/// The Entra application whose passwords rotate: object id and client (app) id.
pub const APP_OBJECT_ID: &str = "a99e0000-0000-4000-8000-0000000000b1";
pub const APP_ID: &str = "a99e0000-0000-4000-8000-0000000000a1";
pub const KV_SCOPE: &str = "https://vault.azure.net/.default";
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Timeout of one provider call: far above any fake's answer time.
pub const CALL_TIMEOUT_MS: u64 = 5_000;

/// A running fake, rekey's HTTP client and credential over it.
pub struct Env {
    pub fake: FakeAzure,
    /// `None` when the fake and rekey run on the real clock.
    manual: Option<ManualClock>,
    pub clock: Arc<dyn Clock>,
    pub http: Http,
    pub credential: Arc<TokenCache>,
}

impl Env {
    /// A fake on a manual clock at [`T0_MS`], [`CLIENT_ID`] registered in the home tenant.
    pub async fn start() -> Env {
        let manual = ManualClock::new(T0_MS);
        Self::with_clock(Arc::new(manual.clone()), Some(manual)).await
    }

    /// The same on the real clock (for waits that really pass, such as propagation).
    pub async fn start_real_clock() -> Env {
        Self::with_clock(Arc::new(rekey::journal::SystemClock), None).await
    }

    async fn with_clock(clock: Arc<dyn Clock>, manual: Option<ManualClock>) -> Env {
        let fake = FakeAzure::start_with_clock(clock.clone()).await;
        fake.register_client(FakeAzure::TENANT, CLIENT_ID, CLIENT_SECRET);
        let http = Http::new(CALL_TIMEOUT_MS, clock.clone()).expect("HTTP client");
        let credential = Arc::new(TokenCache::new(
            http.clone(),
            Source::ClientSecret {
                authority: url(&fake.authority_url()),
                tenant: FakeAzure::TENANT.to_owned(),
                client_id: CLIENT_ID.to_owned(),
                secret: SecretValue::new(CLIENT_SECRET),
            },
        ));
        Env {
            fake,
            manual,
            clock,
            http,
            credential,
        }
    }

    /// The manual clock (panics on a real-clock env).
    pub fn manual(&self) -> &ManualClock {
        self.manual
            .as_ref()
            .expect("this env runs on the real clock")
    }

    /// The vault [`VAULT`] as a store (challenge verification off: the fake is loopback).
    pub fn kv(&self) -> KeyVaultStore {
        KeyVaultStore::new(
            self.http.clone(),
            self.credential.clone(),
            url(&self.fake.keyvault_url(VAULT)),
        )
        .without_challenge_verification()
    }

    /// rekey's authenticated client for `scope`.
    pub fn authed(&self, scope: &str) -> Authed {
        Authed {
            http: self.http.clone(),
            credential: self.credential.clone(),
            scope: scope.to_owned(),
        }
    }

    /// Setting `setting` of [`SITE`] (or its `slot`).
    pub fn app_setting(&self, slot: Option<&str>, setting: &str, mode: Mode) -> AppSetting {
        AppSetting {
            api: self.authed(ARM_SCOPE),
            arm: url(&self.fake.arm_url()),
            subscription: SUB.to_owned(),
            resource_group: RG.to_owned(),
            site: SITE.to_owned(),
            slot: slot.map(str::to_owned),
            setting: setting.to_owned(),
            mode,
            lock: SiteLocks::default().lock(SUB, RG, SITE, slot),
        }
    }

    /// The passwords of application [`APP_OBJECT_ID`] (seed it with [`Env::seed_app`]).
    pub fn app_passwords(&self, propagation_ms_max: u64) -> AppPasswords {
        AppPasswords {
            api: self.authed(GRAPH_SCOPE),
            graph: url(&self.fake.graph_url()),
            object_id: APP_OBJECT_ID.to_owned(),
            app_id: APP_ID.to_owned(),
            tenant: FakeAzure::TENANT.to_owned(),
            authority: url(&self.fake.authority_url()),
            validity_days: 180,
            verify_scope: GRAPH_SCOPE.to_owned(),
            propagation_ms_max,
            retire: None,
        }
    }

    /// The key pair of storage account [`ACCOUNT`] (seed it with `fake.storage_seed`).
    pub fn storage(&self) -> StorageKeys {
        StorageKeys {
            api: self.authed(ARM_SCOPE),
            arm: url(&self.fake.arm_url()),
            subscription: SUB.to_owned(),
            resource_group: RG.to_owned(),
            account: ACCOUNT.to_owned(),
            kerberos: false,
        }
    }

    /// Creates application [`APP_OBJECT_ID`] / [`APP_ID`] with no passwords.
    pub fn seed_app(&self) {
        self.fake.app_seed(APP_OBJECT_ID, APP_ID);
    }

    /// How many token requests reached the authority for `client_id`.
    pub fn token_requests(&self, client_id: &str) -> usize {
        let field = format!("client_id={client_id}");
        self.fake
            .requests()
            .iter()
            .filter(|r| r.service == Service::Login && r.method == "POST")
            .filter(|r| r.body.split('&').any(|kv| kv == field))
            .count()
    }

    /// Every bearer token rekey presented to any fake service.
    pub fn bearer_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .fake
            .requests()
            .iter()
            .filter_map(|r| r.authorization.as_deref())
            .filter_map(|a| {
                a.get(7..)
                    .filter(|_| a[..7].eq_ignore_ascii_case("bearer "))
            })
            .map(str::to_owned)
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    }

    /// How many effects match `pred`.
    pub fn effects_where(&self, pred: impl Fn(&Effect) -> bool) -> usize {
        self.fake.effects().iter().filter(|e| pred(e)).count()
    }
}

/// Parses a URL the test built.
pub fn url(s: &str) -> Url {
    Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// One provider call's inputs, owned, so a test can build a [`Call`] in one line.
#[derive(Debug, Clone)]
pub struct Step {
    pub rotation_id: String,
    pub secret: String,
    pub step: StepId,
    pub key: String,
    pub target: TargetRef,
    pub captured: Option<String>,
    pub produced: Option<String>,
    pub value: Option<SecretValue>,
}

impl Step {
    /// `action` of rotation `rot-1` on target 0 of `secret`, keyed as the runner keys it.
    pub fn new(secret: &str, action: Action) -> Self {
        let step = StepId::new(action, 0);
        let role = match action {
            Action::Create | Action::RetireOld | Action::Discard | Action::DiscardLost => {
                Role::Rotator
            }
            Action::Update | Action::Revert => Role::Dependent,
            Action::Verify => Role::Verifier,
            Action::Capture | Action::Write | Action::DisableOld | Action::Restore => Role::Store,
        };
        Self {
            rotation_id: "rot-1".to_owned(),
            secret: secret.to_owned(),
            step,
            key: step.key("rot-1"),
            target: TargetRef::new(role, "target"),
            captured: None,
            produced: None,
            value: None,
        }
    }

    /// The same step in rotation `id` (re-keyed).
    pub fn rotation(mut self, id: &str) -> Self {
        self.rotation_id = id.to_owned();
        self.key = self.step.key(id);
        self
    }

    pub fn captured(mut self, captured: Option<&str>) -> Self {
        self.captured = captured.map(str::to_owned);
        self
    }

    pub fn produced(mut self, produced: &str) -> Self {
        self.produced = Some(produced.to_owned());
        self
    }

    pub fn value(mut self, value: &str) -> Self {
        self.value = Some(SecretValue::new(value));
        self
    }

    /// The step with everything the runner would hand its provider.
    pub fn call(&self) -> Call<'_> {
        Call {
            step: rekey::provider::Step {
                rotation_id: &self.rotation_id,
                secret: &self.secret,
                id: self.step,
                key: &self.key,
                credential: None,
                address: None,
            },
            role: self.target.role,
            captured: self.captured.as_deref(),
            produced: self.produced.as_deref(),
            value: self.value.as_ref(),
        }
    }
}

/// A step and what the runner hands its provider besides.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub step: rekey::provider::Step<'a>,
    pub role: Role,
    pub captured: Option<&'a str>,
    pub produced: Option<&'a str>,
    pub value: Option<&'a SecretValue>,
}

/// What a performed step produced.
#[derive(Debug, Default)]
pub struct Applied {
    pub id: Option<String>,
    pub value: Option<SecretValue>,
}

/// A provider in one role, borrowed.
#[derive(Clone, Copy)]
pub enum As<'a> {
    Rotator(&'a dyn Rotator),
    Store(&'a dyn Store),
    Dependent(&'a dyn Dependent),
    Verifier(&'a dyn Verifier),
}

/// Performs `c` through `p`: the role method of its action, as the runner calls it.
pub async fn apply_as(p: As<'_>, c: &Call<'_>) -> Result<Applied, ProviderError> {
    let found = |id| Applied { id, value: None };
    let (s, captured, produced, value) = (c.step, c.captured, c.produced, c.value);
    let needs =
        || value.ok_or_else(|| ProviderError::permanent(format!("step {} has no value", s.id)));
    match (p, s.id.action) {
        (As::Rotator(r), Action::Capture) => r.capture(s, value).await.map(found),
        (As::Rotator(r), Action::Create) => r.create(s, captured).await.map(|c| Applied {
            id: Some(c.id),
            value: Some(c.value),
        }),
        (As::Rotator(r), Action::RetireOld) => {
            r.retire_old(s, captured).await.map(|()| found(None))
        }
        (As::Rotator(r), Action::Discard) => r.discard(s, produced, value).await.map(found),
        (As::Rotator(r), Action::DiscardLost) => {
            r.discard_lost(s, produced).await.map(|()| found(None))
        }
        (As::Store(st), Action::Capture) => st.capture(s).await.map(found),
        (As::Store(st), Action::Write) => st.write(s, needs()?).await.map(|id| found(Some(id))),
        (As::Store(st), Action::Restore) => {
            st.restore(s, value, produced, captured).await.map(found)
        }
        (As::Store(st), Action::DisableOld) => st
            .disable_superseded(s, captured)
            .await
            .map(|()| found(None)),
        (As::Dependent(d), Action::Capture) => d.capture(s).await.map(found),
        (As::Dependent(d), Action::Update) => d.update(s, needs()?).await.map(found),
        (As::Dependent(d), Action::Revert) => d.revert(s, captured, value).await.map(found),
        (As::Verifier(v), Action::Verify) => v.verify(s, needs()?).await.map(|()| found(None)),
        (_, action) => panic!("no role method for {action:?} here"),
    }
}

/// Reconciles `c` through `p`, as the runner does (a restore is told whether the step
/// carries an old value).
pub async fn reconcile_as(p: As<'_>, c: &Call<'_>) -> Result<Reconciled, ProviderError> {
    let (s, captured, produced) = (c.step, c.captured, c.produced);
    let found = match (p, s.id.action) {
        (As::Rotator(r), Action::Create) => return r.reconcile_create(s, captured).await,
        (As::Rotator(r), Action::Capture) => r.reconcile_capture(s).await,
        (As::Rotator(r), Action::RetireOld) => r.reconcile_retire_old(s, captured).await,
        (As::Rotator(r), Action::Discard) => r.reconcile_discard(s, produced).await,
        (As::Rotator(r), Action::DiscardLost) => r.reconcile_discard_lost(s, produced).await,
        (As::Store(st), Action::Capture) => st.reconcile_capture(s).await,
        (As::Store(st), Action::Write) => st.reconcile_write(s).await,
        (As::Store(st), Action::Restore) => {
            st.reconcile_restore(s, c.value.is_some(), captured).await
        }
        (As::Store(st), Action::DisableOld) => st.reconcile_disable_superseded(s, captured).await,
        (As::Dependent(d), Action::Capture) => d.reconcile_capture(s).await,
        (As::Dependent(d), Action::Update) => d.reconcile_update(s).await,
        (As::Dependent(d), Action::Revert) => d.reconcile_revert(s).await,
        (As::Verifier(v), Action::Verify) => v.reconcile_verify(s).await,
        (_, action) => panic!("no role method for {action:?} here"),
    };
    found.map(Reconciled::from)
}

/// A provider's steps performed and reconciled as the runner would, by the step's role.
pub trait Perform: Sync {
    /// This provider in `role`.
    fn cast(&self, role: Role) -> As<'_>;

    fn apply<'a>(&'a self, c: &'a Call<'a>) -> Reply<'a, Applied> {
        Box::pin(apply_as(self.cast(c.role), c))
    }

    /// Undo steps go through the same role methods.
    fn compensate<'a>(&'a self, c: &'a Call<'a>) -> Reply<'a, Applied> {
        self.apply(c)
    }

    fn reconcile<'a>(&'a self, c: &'a Call<'a>) -> Reply<'a, Reconciled> {
        Box::pin(reconcile_as(self.cast(c.role), c))
    }
}

impl Perform for KeyVaultStore {
    fn cast(&self, role: Role) -> As<'_> {
        match role {
            Role::Verifier => As::Verifier(self),
            _ => As::Store(self),
        }
    }
}

impl Perform for AppSetting {
    fn cast(&self, _: Role) -> As<'_> {
        As::Dependent(self)
    }
}

impl Perform for AppPasswords {
    fn cast(&self, role: Role) -> As<'_> {
        match role {
            Role::Verifier => As::Verifier(self),
            _ => As::Rotator(self),
        }
    }
}

impl Perform for StorageKeys {
    fn cast(&self, _: Role) -> As<'_> {
        As::Rotator(self)
    }
}

impl Perform for Roles {
    fn cast(&self, role: Role) -> As<'_> {
        match role {
            Role::Rotator => As::Rotator(&**self.rotator().expect("a rotator")),
            Role::Store => As::Store(&**self.store().expect("a store")),
            Role::Dependent => As::Dependent(&**self.dependent().expect("a dependent")),
            Role::Verifier => As::Verifier(&**self.verifier().expect("a verifier")),
        }
    }
}

/// A plan over `targets` (role, provider name), 3 attempts a step.
pub fn plan(secret: &str, targets: &[(Role, &str)], grace_ms: i64) -> Plan {
    Plan {
        secret: secret.to_owned(),
        lock_key: secret.to_owned(),
        targets: targets
            .iter()
            .map(|(role, name)| TargetRef::new(*role, *name))
            .collect(),
        grace_ms,
        attempts_max: 3,
    }
}

/// A runner over an in-memory journal on `clock`.
pub fn memory_runner(
    clock: &ManualClock,
    providers: Registry,
) -> (Runner<MemoryJournal>, Arc<MemoryJournal>) {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let runner = Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock,
        Options::new("azure-test", 7),
    );
    (runner, journal)
}

/// Opens rotation `id` of `plan`, which must not coalesce.
pub async fn request<J: RunnerJournal>(runner: &Runner<J>, plan: Plan, id: &str) {
    let got = runner
        .request(plan, Trigger::Manual, "azure-test", id.to_owned())
        .await
        .expect("request");
    assert_eq!(
        got,
        Requested::Started {
            rotation_id: id.to_owned()
        }
    );
}

/// Drives rotation `id`, jumping the clock over every backoff; stops at its end, or at the
/// grace period when `stop_at_grace`.
pub async fn drive<J: RunnerJournal>(
    runner: &Runner<J>,
    clock: &ManualClock,
    id: &str,
    stop_at_grace: bool,
) -> Progress {
    for _ in 0..50 {
        match runner.drive(id).await.expect("drive") {
            Progress::Waiting {
                reason: Wait::Grace,
                until_ms,
            } if stop_at_grace => {
                return Progress::Waiting {
                    reason: Wait::Grace,
                    until_ms,
                };
            }
            Progress::Waiting { until_ms, .. } => clock.set(until_ms),
            Progress::Finished(phase) => return Progress::Finished(phase),
            Progress::Busy { holder } => panic!("rotation {id} busy with {holder}"),
            Progress::Stopped => panic!("rotation {id}: the runner was stopped"),
        }
    }
    panic!("rotation {id} did not settle after 50 drives")
}

/// Drives rotation `id` to its terminal phase.
pub async fn drive_to_end<J: RunnerJournal>(
    runner: &Runner<J>,
    clock: &ManualClock,
    id: &str,
) -> Phase {
    match drive(runner, clock, id, false).await {
        Progress::Finished(phase) => phase,
        other => panic!("rotation {id} stopped at {other:?}"),
    }
}

/// The events of rotation stream `id`, decoded.
pub async fn events<J: JournalRead>(journal: &J, id: &str) -> Vec<RotationEvent> {
    journal
        .read_stream(id)
        .await
        .expect("read stream")
        .iter()
        .map(|e| serde_json::from_str(&e.payload).expect("rotation event"))
        .collect()
}

/// Every payload of every stream (rotations and locks).
pub async fn payloads<J: JournalRead + JournalScan>(journal: &J) -> Vec<String> {
    let mut all = Vec::new();
    for info in journal
        .streams(&StreamFilter::default())
        .await
        .expect("streams")
    {
        for e in journal
            .read_stream(&info.stream_id)
            .await
            .expect("read stream")
        {
            all.push(e.payload);
        }
    }
    all
}

/// The `StepFailed` messages of every rotation stream: what providers said when they failed.
pub async fn failure_messages<J: JournalRead + JournalScan>(journal: &J) -> Vec<String> {
    let mut out = Vec::new();
    for info in journal
        .streams(&StreamFilter::default())
        .await
        .expect("streams")
    {
        if is_lock_stream(&info.stream_id) {
            continue;
        }
        for event in events(journal, &info.stream_id).await {
            if let RotationEvent::StepFailed { message, .. } = event {
                out.push(message);
            }
        }
    }
    out
}

/// A verifier that refuses every new credential (a probe that cannot log in with it).
#[derive(Debug)]
pub struct Rejecting;

/// What [`Rejecting`] says.
pub const REJECTED: &str =
    "verification failed: the probe could not log in with the new credential";

impl Verifier for Rejecting {
    fn verify<'a>(&'a self, _: rekey::provider::Step<'a>, _: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(async { Err(ProviderError::permanent(REJECTED)) })
    }
}

/// Every `ProviderError` message providers returned, before the runner saw (and redacted)
/// them.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog(Arc<Mutex<Vec<String>>>);

impl ErrorLog {
    pub fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note<T>(&self, result: &Result<T, ProviderError>) {
        if let Err(e) = result {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.message.clone());
        }
    }
}

/// Notes every error of the provider it wraps in an [`ErrorLog`].
#[derive(Debug)]
pub struct Recorded(ErrorLog);

impl Recorded {
    /// `inner`, its errors noted in `log`.
    pub fn wrap(inner: Roles, log: &ErrorLog) -> Roles {
        intercept(inner, Recorded(log.clone()))
    }
}

impl Hook for Recorded {
    fn around<'a, T: Send + 'a>(&'a self, _: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        Box::pin(async move {
            let result = call.await;
            self.0.note(&result);
            result
        })
    }
}

/// `p` in the one role `cast` gives it.
pub fn only(cast: Cast) -> Roles {
    Roles::new([Some(cast)])
}
