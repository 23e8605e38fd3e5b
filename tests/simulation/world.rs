//! The simulated outside world: per secret a rotator (credentials, like Entra passwords),
//! one or two stores (versions, like Key Vault), maybe a dependent (one setting, like an App
//! Service setting) and a verifier. All fakes share one [`World`], so the checks see every
//! effect and the key it was tagged with. Values and faults come from the seeded RNG.
//!
//! Every fake yields before and after applying an effect (crash points), and a fault may
//! strike before the effect (transient, rate limited, permanent, an outage window) or after
//! it (the response is lost: the effect happened, the caller gets a transient error).

use std::sync::{Arc, Mutex, MutexGuard};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use rekey::journal::{Clock, ManualClock};
use rekey::provider::{
    self, Created, Found, ProviderError, Reconciled, Reply, Rotator, SecretValue, Step, Store,
    Verifier,
};
use rekey::providers::versions;
use rekey::saga::{Action, StepId};

use super::journal::{Point, Probe, lock, yield_at};

/// Every value the world makes starts with this, so a leak is one substring search.
pub const VALUE_PREFIX: &str = "SIMSECRET-";

/// How often calls fail, per call. Zero everywhere means a well-behaved world.
#[derive(Debug, Clone, Default)]
pub struct FaultProfile {
    pub transient: f64,
    pub rate_limited: f64,
    /// Permanent refusals; effectful steps see a quarter of this.
    pub permanent: f64,
    /// The effect happens but the response is lost.
    pub lost: f64,
    pub slow: f64,
    /// An error message quotes the value sent (a careless API echoing its request).
    pub echo: f64,
    pub outages: Vec<Outage>,
}

/// A window in which every call to `target` fails: with 503 (transient), or with 403
/// (permanent: a role assignment that has not propagated yet, a revoked permission).
#[derive(Debug, Clone)]
pub struct Outage {
    pub target: String,
    pub from_ms: i64,
    pub until_ms: i64,
    pub forbidden: bool,
}

/// What a fake stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rotator,
    Store(usize),
    Dependent,
    Verifier,
}

/// The provider (target) name of a fake of `secret`.
pub fn target_name(secret: &str, kind: Kind) -> String {
    match kind {
        Kind::Rotator => format!("{secret}-rotator"),
        Kind::Store(k) => format!("{secret}-store{k}"),
        Kind::Dependent => format!("{secret}-dependent"),
        Kind::Verifier => format!("{secret}-verifier"),
    }
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub id: String,
    pub value: String,
    /// The idempotency key it was created with (`None` for the initial one).
    pub key: Option<String>,
    pub live: bool,
    /// The create response (with the value) reached the caller.
    pub delivered: bool,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub value: String,
    pub key: Option<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct Dependent {
    pub value: String,
    pub revision: u64,
    /// The key of the last write, which is all `reconcile` can go by.
    pub last_key: Option<String>,
}

/// One secret's targets.
#[derive(Debug, Clone)]
pub struct SecretWorld {
    pub name: String,
    pub credentials: Vec<Credential>,
    pub stores: Vec<Vec<Version>>,
    pub dependent: Option<Dependent>,
    /// The verifier refuses every new credential: the rotation must compensate.
    pub verify_fails: bool,
}

impl SecretWorld {
    pub fn newest_live(&self) -> Option<&Credential> {
        self.credentials.iter().rev().find(|c| c.live)
    }

    pub fn live_count(&self) -> usize {
        self.credentials.iter().filter(|c| c.live).count()
    }

    pub fn credential(&self, id: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.id == id)
    }

    pub fn latest_enabled(&self, store: usize) -> Option<&Version> {
        self.stores[store].iter().rev().find(|v| v.enabled)
    }

    pub fn version(&self, store: usize, id: &str) -> Option<&Version> {
        self.stores[store].iter().find(|v| v.id == id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectKind {
    CredentialCreated,
    CredentialRetired,
    VersionWritten,
    VersionDisabled,
    DependentSet,
}

/// One real change to a target.
#[derive(Debug, Clone)]
pub struct Effect {
    pub secret: usize,
    pub kind: EffectKind,
    /// The credential or version id, or the dependent's revision.
    pub object: String,
    /// The idempotency key of the call that made it.
    pub key: String,
    pub at_ms: i64,
}

/// What kind of call a fault is drawn for.
#[derive(Debug, Clone, Copy)]
enum Op {
    Effect(Action),
    Inspect,
}

#[derive(Debug, Default)]
struct Faults {
    before: Option<ProviderError>,
    lost: Option<ProviderError>,
    slow: bool,
}

/// Everything outside rekey.
#[derive(Debug)]
pub struct World {
    rng: StdRng,
    clock: ManualClock,
    faults: Option<FaultProfile>,
    /// Slow calls never move the clock past this (the harness keeps live leases live).
    pub clock_cap: i64,
    pub secrets: Vec<SecretWorld>,
    pub effects: Vec<Effect>,
    /// Calls no correct runner makes (a missing value, an unknown id): each is a violation.
    pub anomalies: Vec<String>,
    /// Every value made, for the leak scans (I5).
    pub values: Vec<String>,
    next_credential: u64,
}

impl World {
    pub fn new(seed: u64, clock: ManualClock, faults: Option<FaultProfile>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_0f00_3011),
            clock,
            faults,
            clock_cap: i64::MAX,
            secrets: Vec::new(),
            effects: Vec::new(),
            anomalies: Vec::new(),
            values: Vec::new(),
            next_credential: 0,
        }
    }

    /// Adds a secret whose credential, store versions and dependent all hold one value.
    pub fn add_secret(&mut self, name: &str, stores: usize, dependent: bool, verify_fails: bool) {
        let value = self.fresh_value();
        let credential = Credential {
            id: self.fresh_credential_id(name),
            value: value.clone(),
            key: None,
            live: true,
            delivered: true,
        };
        let stores = (0..stores)
            .map(|_| {
                vec![Version {
                    id: self.fresh_version_id(),
                    value: value.clone(),
                    key: None,
                    enabled: true,
                }]
            })
            .collect();
        self.secrets.push(SecretWorld {
            name: name.to_owned(),
            credentials: vec![credential],
            stores,
            dependent: dependent.then_some(Dependent {
                value,
                revision: 1,
                last_key: None,
            }),
            verify_fails,
        });
    }

    fn fresh_value(&mut self) -> String {
        let value = format!("{VALUE_PREFIX}{:032x}", self.rng.random::<u128>());
        self.values.push(value.clone());
        value
    }

    fn fresh_version_id(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    fn fresh_credential_id(&mut self, secret: &str) -> String {
        self.next_credential += 1;
        format!("{secret}-cred-{}", self.next_credential)
    }

    fn anomaly(&mut self, text: String) {
        self.anomalies.push(text);
    }

    fn record(&mut self, secret: usize, kind: EffectKind, object: &str, key: &str) {
        self.effects.push(Effect {
            secret,
            kind,
            object: object.to_owned(),
            key: key.to_owned(),
            at_ms: self.clock.now_ms(),
        });
    }

    /// How far a slow call moves the clock.
    fn slow_delta(&mut self) -> i64 {
        let room = (self.clock_cap - self.clock.now_ms()).max(0);
        self.rng.random_range(0..=3_000).min(room)
    }

    /// The faults for one call.
    fn draw(&mut self, target: &str, op: Op, value: Option<&SecretValue>) -> Faults {
        let mut faults = Faults::default();
        let Some(profile) = &self.faults else {
            return faults;
        };
        let rng = &mut self.rng;
        let now = self.clock.now_ms();
        let echo = |rng: &mut StdRng| match value {
            Some(v) if rng.random_bool(profile.echo) => {
                format!(" (request body: {})", v.expose())
            }
            _ => String::new(),
        };
        let outage = profile
            .outages
            .iter()
            .find(|o| o.target == target && o.from_ms <= now && now < o.until_ms);
        if let Some(outage) = outage {
            faults.before = Some(if outage.forbidden {
                let message = format!("{target}: 403 Forbidden (simulated permission outage)");
                ProviderError::permanent(message + &echo(rng))
            } else {
                let message = format!("{target}: 503 Service Unavailable (simulated outage)");
                ProviderError::transient(message + &echo(rng))
            });
            return faults;
        }
        faults.slow = rng.random_bool(profile.slow);
        let effectful =
            matches!(op, Op::Effect(a) if !matches!(a, Action::Capture | Action::Verify));
        let permanent = if effectful {
            profile.permanent / 4.0
        } else {
            profile.permanent
        };
        let r: f64 = rng.random();
        if r < profile.transient {
            let message = format!("{target}: connection reset (simulated)");
            faults.before = Some(ProviderError::transient(message + &echo(rng)));
        } else if r < profile.transient + profile.rate_limited {
            let after = rng.random_range(1_000..60_000);
            let message = format!("{target}: 429 Too Many Requests (simulated)");
            faults.before = Some(ProviderError::rate_limited(after, message));
        } else if r < profile.transient + profile.rate_limited + permanent {
            let message = format!("{target}: 403 Forbidden (simulated)");
            faults.before = Some(ProviderError::permanent(message + &echo(rng)));
        } else if effectful && rng.random_bool(profile.lost) {
            let message = format!("{target}: response lost after the request was sent (simulated)");
            faults.lost = Some(ProviderError::transient(message + &echo(rng)));
        }
        faults
    }
}

/// One call to a fake: the step, and what the role method was given.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub rotation_id: &'a str,
    pub step: StepId,
    pub key: &'a str,
    pub captured: Option<&'a str>,
    pub produced: Option<&'a str>,
    pub value: Option<&'a SecretValue>,
}

impl<'a> Call<'a> {
    fn new(step: Step<'a>) -> Self {
        Self {
            rotation_id: step.rotation_id,
            step: step.id,
            key: step.key,
            captured: None,
            produced: None,
            value: None,
        }
    }

    fn captured(self, captured: Option<&'a str>) -> Self {
        Self { captured, ..self }
    }

    fn produced(self, produced: Option<&'a str>) -> Self {
        Self { produced, ..self }
    }

    fn value(self, value: Option<&'a SecretValue>) -> Self {
        Self { value, ..self }
    }
}

/// What a fake's effect produced.
#[derive(Debug, Default)]
pub struct Applied {
    pub id: Option<String>,
    pub value: Option<SecretValue>,
}

/// A fake provider of one kind for one secret.
#[derive(Debug)]
pub struct FakeProvider {
    world: Arc<Mutex<World>>,
    probe: Arc<Probe>,
    clock: ManualClock,
    secret: usize,
    name: String,
    kind: Kind,
}

impl FakeProvider {
    pub fn new(
        world: Arc<Mutex<World>>,
        probe: Arc<Probe>,
        clock: ManualClock,
        secret: usize,
        kind: Kind,
    ) -> Self {
        let name = target_name(&lock(&world).secrets[secret].name, kind);
        Self {
            world,
            probe,
            clock,
            secret,
            name,
            kind,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    async fn slow(&self) {
        yield_at(&self.probe, Point::Slow).await;
        let delta = self.world().slow_delta();
        self.clock.advance(delta);
    }

    /// An effect: a forward, retirement or undo step.
    async fn effect(&self, call: Call<'_>) -> Result<Applied, ProviderError> {
        let call = &call;
        yield_at(&self.probe, Point::BeforeEffect).await;
        let faults = self
            .world()
            .draw(&self.name, Op::Effect(call.step.action), call.value);
        if faults.slow {
            self.slow().await;
        }
        if let Some(e) = faults.before {
            return Err(e);
        }
        let outcome = {
            let mut w = self.world();
            self.perform(&mut w, call)
        };
        yield_at(&self.probe, Point::AfterEffect).await;
        if let (Some(e), Ok(_)) = (faults.lost, &outcome) {
            return Err(e);
        }
        if let Ok(Applied {
            id: Some(id),
            value: Some(_),
        }) = &outcome
        {
            let mut w = self.world();
            let credentials = &mut w.secrets[self.secret].credentials;
            if let Some(c) = credentials.iter_mut().find(|c| c.id == *id) {
                c.delivered = true;
            }
        }
        outcome
    }

    /// Records a call no correct runner makes and refuses it.
    fn misuse(&self, w: &mut World, call: &Call<'_>, why: &str) -> ProviderError {
        w.anomaly(format!(
            "{}: step {} (key {}) sent to {}: {why}",
            call.rotation_id, call.step, call.key, self.name
        ));
        ProviderError::permanent(format!("{}: bad request (simulated): {why}", self.name))
    }

    fn value<'c>(&self, w: &mut World, call: &Call<'c>) -> Result<&'c SecretValue, ProviderError> {
        call.value.ok_or_else(|| self.misuse(w, call, "no value"))
    }

    fn perform(&self, w: &mut World, call: &Call<'_>) -> Result<Applied, ProviderError> {
        let s = self.secret;
        let found = |id: Option<String>| Applied { id, value: None };
        match (self.kind, call.step.action) {
            (Kind::Rotator, Action::Capture) => {
                Ok(found(w.secrets[s].newest_live().map(|c| c.id.clone())))
            }
            (Kind::Rotator, Action::Create) => {
                let secret = w.secrets[s].name.clone();
                let id = w.fresh_credential_id(&secret);
                let value = w.fresh_value();
                w.secrets[s].credentials.push(Credential {
                    id: id.clone(),
                    value: value.clone(),
                    key: Some(call.key.to_owned()),
                    live: true,
                    delivered: false,
                });
                w.record(s, EffectKind::CredentialCreated, &id, call.key);
                Ok(Applied {
                    id: Some(id),
                    value: Some(SecretValue::new(value)),
                })
            }
            (Kind::Rotator, Action::RetireOld) => self.retire(w, call, call.captured),
            (Kind::Rotator, Action::Discard | Action::DiscardLost) => {
                self.retire(w, call, call.produced)
            }
            (Kind::Store(k), Action::Capture) => {
                Ok(found(w.secrets[s].latest_enabled(k).map(|v| v.id.clone())))
            }
            (Kind::Store(k), Action::Write) => {
                let value = self.value(w, call)?.expose().to_owned();
                Ok(found(Some(self.write(w, k, value, call.key))))
            }
            // The old value goes back once per key; what it supersedes is disabled by the
            // compensation's `DisableOld` (I8).
            (Kind::Store(k), Action::Restore) => {
                let value = self.value(w, call)?.expose().to_owned();
                let tagged = w.secrets[s].stores[k]
                    .iter()
                    .find(|v| v.key.as_deref() == Some(call.key))
                    .map(|v| v.id.clone());
                let id = match tagged {
                    Some(id) => id,
                    None => self.write(w, k, value, call.key),
                };
                Ok(found(Some(id)))
            }
            (Kind::Store(k), Action::DisableOld) => {
                let live = w.secrets[s].latest_enabled(k).map(|v| v.id.clone());
                self.disable_superseded(w, k, live.as_deref(), call);
                Ok(found(None))
            }
            (Kind::Dependent, Action::Capture) => {
                let revision = w.secrets[s].dependent.as_ref().map(|d| d.revision);
                Ok(found(revision.map(|r| format!("rev-{r}"))))
            }
            (Kind::Dependent, Action::Update | Action::Revert) => {
                let value = self.value(w, call)?.expose().to_owned();
                let Some(dependent) = w.secrets[s].dependent.as_mut() else {
                    return Err(self.misuse(w, call, "no dependent"));
                };
                dependent.last_key = Some(call.key.to_owned());
                let changed = dependent.value != value;
                if changed {
                    dependent.value = value;
                    dependent.revision += 1;
                }
                let revision = format!("rev-{}", dependent.revision);
                if changed {
                    w.record(s, EffectKind::DependentSet, &revision, call.key);
                }
                Ok(found(Some(revision)))
            }
            (Kind::Verifier, Action::Verify) => {
                let value = self.value(w, call)?.expose();
                let sw = &w.secrets[s];
                if sw.verify_fails {
                    return Err(ProviderError::permanent(format!(
                        "{}: the new credential was refused (simulated)",
                        self.name
                    )));
                }
                let authenticates = sw.newest_live().is_some_and(|c| c.value == value);
                let deployed = sw.dependent.as_ref().is_none_or(|d| d.value == value);
                if authenticates && deployed {
                    Ok(found(None))
                } else {
                    let why = format!(
                        "the value verified is not the newest live credential's ({authenticates}) \
                         or not the dependent's ({deployed})"
                    );
                    Err(self.misuse(w, call, &why))
                }
            }
            _ => Err(self.misuse(w, call, "action not supported by this target")),
        }
    }

    /// Writes a new enabled version of store `k`.
    fn write(&self, w: &mut World, k: usize, value: String, key: &str) -> String {
        let id = w.fresh_version_id();
        w.secrets[self.secret].stores[k].push(Version {
            id: id.clone(),
            value,
            key: Some(key.to_owned()),
            enabled: true,
        });
        w.record(self.secret, EffectKind::VersionWritten, &id, key);
        id
    }

    /// The enabled versions of store `k` that rekey knows of (wrote, or captured), but
    /// `live`: what a retirement or a restore must disable.
    fn superseded(sw: &SecretWorld, k: usize, live: Option<&str>, call: &Call<'_>) -> Vec<String> {
        // The fake follows the rule every real store follows.
        let listed = sw.stores[k].iter().map(|v| versions::Listed {
            id: &v.id,
            enabled: v.enabled,
            written_by_rekey: v.key.is_some(),
        });
        versions::superseded(listed, live, call.captured)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    fn disable_superseded(&self, w: &mut World, k: usize, live: Option<&str>, call: &Call<'_>) {
        let s = self.secret;
        for id in Self::superseded(&w.secrets[s], k, live, call) {
            if let Some(v) = w.secrets[s].stores[k].iter_mut().find(|v| v.id == id) {
                v.enabled = false;
            }
            w.record(s, EffectKind::VersionDisabled, &id, call.key);
        }
    }

    /// Retires a credential; retiring a retired one changes nothing.
    fn retire(
        &self,
        w: &mut World,
        call: &Call<'_>,
        id: Option<&str>,
    ) -> Result<Applied, ProviderError> {
        let s = self.secret;
        let Some(id) = id else {
            return Err(self.misuse(w, call, "no credential id"));
        };
        let Some(credential) = w.secrets[s].credentials.iter_mut().find(|c| c.id == id) else {
            return Err(self.misuse(w, call, "unknown credential"));
        };
        if credential.live {
            credential.live = false;
            w.record(s, EffectKind::CredentialRetired, id, call.key);
        }
        Ok(Applied::default())
    }

    /// Answers `reconcile`: did the step tagged `call.key` happen?
    async fn inspect(&self, call: Call<'_>) -> Result<Reconciled, ProviderError> {
        let call = &call;
        yield_at(&self.probe, Point::Inspect).await;
        let faults = self.world().draw(&self.name, Op::Inspect, None);
        if faults.slow {
            self.slow().await;
        }
        if let Some(e) = faults.before {
            return Err(e);
        }
        let w = self.world();
        let sw = &w.secrets[self.secret];
        let applied = |id: Option<String>| Reconciled::Applied { id };
        let retired = |id: Option<&str>| {
            if id.and_then(|id| sw.credential(id)).is_some_and(|c| !c.live) {
                applied(None)
            } else {
                Reconciled::NotApplied
            }
        };
        Ok(match (self.kind, call.step.action) {
            (Kind::Rotator, Action::Create) => {
                let tagged = sw
                    .credentials
                    .iter()
                    .rev()
                    .find(|c| c.live && c.key.as_deref() == Some(call.key));
                match tagged {
                    Some(c) if c.delivered => applied(Some(c.id.clone())),
                    Some(c) => Reconciled::AppliedUnusable {
                        orphan_id: c.id.clone(),
                    },
                    None => Reconciled::NotApplied,
                }
            }
            (Kind::Rotator, Action::RetireOld) => retired(call.captured),
            (Kind::Rotator, Action::Discard | Action::DiscardLost) => retired(call.produced),
            (Kind::Store(k), Action::Write | Action::Restore) => sw.stores[k]
                .iter()
                .find(|v| v.key.as_deref() == Some(call.key))
                .map_or(Reconciled::NotApplied, |v| applied(Some(v.id.clone()))),
            (Kind::Store(k), Action::DisableOld) => {
                let live = sw.latest_enabled(k).map(|v| v.id.as_str());
                if Self::superseded(sw, k, live, call).is_empty() {
                    applied(None)
                } else {
                    Reconciled::NotApplied
                }
            }
            (Kind::Dependent, Action::Update | Action::Revert) => match &sw.dependent {
                Some(d) if d.last_key.as_deref() == Some(call.key) => {
                    applied(Some(format!("rev-{}", d.revision)))
                }
                _ => Reconciled::NotApplied,
            },
            // Capture and Verify change nothing: run them again.
            _ => Reconciled::NotApplied,
        })
    }

    async fn read(&self, version: &str) -> Result<SecretValue, ProviderError> {
        yield_at(&self.probe, Point::Inspect).await;
        let faults = self.world().draw(&self.name, Op::Inspect, None);
        if faults.slow {
            self.slow().await;
        }
        if let Some(e) = faults.before {
            return Err(e);
        }
        let mut w = self.world();
        let found = match self.kind {
            // Like Key Vault, a disabled version cannot be read.
            Kind::Store(k) => match w.secrets[self.secret].version(k, version) {
                Some(v) if !v.enabled => {
                    return Err(ProviderError::permanent(format!(
                        "{}: version {version} is disabled (simulated)",
                        self.name
                    )));
                }
                found => found.map(|v| SecretValue::new(v.value.clone())),
            },
            // Like an Entra password: the source never shows a credential's value again.
            // The runner may ask (storage keys can answer); it must then treat the value
            // as lost.
            Kind::Rotator => {
                return Err(ProviderError::permanent(format!(
                    "{}: a credential's value is shown only once (simulated)",
                    self.name
                )));
            }
            _ => None,
        };
        found.ok_or_else(|| {
            w.anomaly(format!("read_value({version}) sent to {}", self.name));
            ProviderError::permanent(format!("{}: no such version (simulated)", self.name))
        })
    }
}

impl FakeProvider {
    /// Reconciles a step that is not a create: a fake never finds one unusable.
    async fn inspect_found(&self, call: Call<'_>) -> Result<Found, ProviderError> {
        match self.inspect(call).await? {
            Reconciled::Applied { id } => Ok(Found::Applied { id }),
            Reconciled::NotApplied => Ok(Found::NotApplied),
            Reconciled::AppliedUnusable { orphan_id } => {
                let mut w = self.world();
                Err(self.misuse(
                    &mut w,
                    &call,
                    &format!("unusable {orphan_id} outside a create"),
                ))
            }
        }
    }

    async fn effect_id(&self, call: Call<'_>) -> Result<Option<String>, ProviderError> {
        self.effect(call).await.map(|a| a.id)
    }

    async fn effect_done(&self, call: Call<'_>) -> Result<(), ProviderError> {
        self.effect(call).await.map(drop)
    }
}

impl Rotator for FakeProvider {
    fn capture<'a>(
        &'a self,
        step: Step<'a>,
        stored: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step).value(stored)))
    }

    fn create<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(async move {
            let call = Call::new(step).captured(captured);
            match self.effect(call).await? {
                Applied {
                    id: Some(id),
                    value: Some(value),
                } => Ok(Created { id, value }),
                _ => {
                    let mut w = self.world();
                    Err(self.misuse(&mut w, &call, "a create made no credential"))
                }
            }
        })
    }

    fn retire_old<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(self.effect_done(Call::new(step).captured(captured)))
    }

    fn discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step).produced(created).value(old)))
    }

    fn discard_lost<'a>(&'a self, step: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(self.effect_done(Call::new(step).produced(created)))
    }

    fn reconcile_create<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Reconciled> {
        Box::pin(self.inspect(Call::new(step).captured(captured)))
    }

    fn reconcile_retire_old<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step).captured(captured)))
    }

    fn reconcile_discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step).produced(created)))
    }

    fn reconcile_discard_lost<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step).produced(created)))
    }

    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }

    fn reveal<'a>(&'a self, id: &'a str) -> Reply<'a, Option<SecretValue>> {
        Box::pin(async move { self.read(id).await.map(Some) })
    }
}

impl Store for FakeProvider {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step)))
    }

    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String> {
        Box::pin(async move {
            let call = Call::new(step).value(Some(new));
            match self.effect_id(call).await? {
                Some(id) => Ok(id),
                None => {
                    let mut w = self.world();
                    Err(self.misuse(&mut w, &call, "a write made no version"))
                }
            }
        })
    }

    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        let call = Call::new(step)
            .value(old)
            .produced(written)
            .captured(captured);
        Box::pin(self.effect_id(call))
    }

    fn disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, ()> {
        Box::pin(self.effect_done(Call::new(step).captured(captured)))
    }

    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }

    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        _had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step).captured(captured)))
    }

    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step).captured(captured)))
    }

    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }

    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue> {
        Box::pin(self.read(version))
    }
}

impl provider::Dependent for FakeProvider {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step)))
    }

    fn update<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step).value(Some(new))))
    }

    fn revert<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(self.effect_id(Call::new(step).captured(captured).value(old)))
    }

    fn reconcile_update<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }

    fn reconcile_revert<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }

    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }
}

impl Verifier for FakeProvider {
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(self.effect_done(Call::new(step).value(Some(new))))
    }

    fn reconcile_verify<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(self.inspect_found(Call::new(step)))
    }
}
