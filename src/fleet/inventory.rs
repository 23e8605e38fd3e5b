//! The inventory over HTTP, read only: Graph applications and service principals with
//! their credentials, the vaults of each subscription (ARM) and of the config, and each
//! vault's secrets and certificates (Key Vault listings, never values). Opt-in, the values
//! of candidate items are read for the hint check and only the comparison is kept.
//!
//! Reuses the Azure plumbing: [`Http`], the configured credentials' token caches, `Authed`
//! for Graph and ARM, [`KeyVaultStore`] for Key Vault (its challenge flow, paging and
//! per-vault [`RequestBudget`]). Graph has its own budget per tenant: reads that select
//! `keyCredentials` are throttled at about 150 a minute, and both listings select them.
//!
//! Failures: 429 waits out `Retry-After` (the budget pauses every caller); 5xx and
//! transport errors are retried with backoff; what stays refused (403, firewall, a token
//! that cannot be had) is reported [`Unreachable`] with its reason, and discovery goes on.
//!
//! Owns: listing, paging, parsing, retries. Never touches: matching, the journal, values
//! beyond the hint comparison.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use url::Url;

use super::matching::{HintCandidate, HintKey, Hints};
use super::model::{
    AppCredential, CredentialKind, Inventory, ItemKind, Origin, Thumbprint, Unreachable,
    UnreachableKind, VaultItem, id_key,
};
use super::rules::Exclusions;
use crate::config::{ARM_SCOPE, GRAPH_SCOPE};
use crate::provider::ProviderError;
use crate::providers::azure::budget::{RequestBudget, SAFETY_PERCENT, VaultBudgets};
use crate::providers::azure::credential::Credential;
use crate::providers::azure::http::{Authed, Body, Http, Op, Response, classify, join};
use crate::providers::azure::keyvault::KeyVaultStore;
use crate::retry::RetryPolicy;
use crate::saga::ErrorClass;

/// What `GET /applications` selects.
pub const APPLICATIONS_SELECT: &str =
    "id,appId,displayName,passwordCredentials,keyCredentials,tags";
/// What `GET /servicePrincipals` selects.
pub const SERVICE_PRINCIPALS_SELECT: &str =
    "id,appId,displayName,servicePrincipalType,passwordCredentials,keyCredentials";
/// Graph's largest page.
pub const GRAPH_TOP: u32 = 999;
/// Graph's limit on reads that select `keyCredentials`, per tenant per minute.
pub const GRAPH_KEY_CREDENTIALS_LIMIT: u32 = 150;
pub const GRAPH_WINDOW_MS: u64 = 60_000;
/// The ARM api-version of the vault listing.
pub const ARM_VAULTS_API_VERSION: &str = "2024-11-01";
/// Most pages followed in one listing.
pub const PAGES_MAX: usize = 100_000;
/// Attempts of one request failing transiently (5xx, transport) before giving up.
pub const ATTEMPTS_MAX: u32 = 6;
/// Attempts of one request answered 429 before giving up.
pub const THROTTLED_ATTEMPTS_MAX: u32 = 30;
/// Vaults listed, or values read, at once.
pub const CONCURRENCY: usize = 8;

/// A phase of discovery, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Applications and service principals listed.
    Apps,
    /// Vaults found (configured, and listed by ARM).
    Vaults,
    /// Vaults whose secrets and certificates were listed.
    Secrets,
}

/// Told how discovery advances (a terminal shows progress bars).
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// `phase` begins; `total` when known.
    fn start(&self, phase: Phase, total: Option<u64>);
    fn advance(&self, phase: Phase, n: u64);
    fn finish(&self, phase: Phase);
}

/// Progress told to no one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: Phase, _: Option<u64>) {}
    fn advance(&self, _: Phase, _: u64) {}
    fn finish(&self, _: Phase) {}
}

/// One tenant to read, with its credential.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The configured name.
    pub name: String,
    pub credential: Arc<dyn Credential>,
    pub subscriptions: Vec<String>,
    pub vaults: Vec<Url>,
    pub service_principals: bool,
}

/// Reads the inventory of some tenants.
#[derive(Debug)]
pub struct Scanner {
    pub http: Http,
    /// Graph with its version, e.g. `https://graph.microsoft.com/v1.0`.
    pub graph: Url,
    /// ARM, e.g. `https://management.azure.com`.
    pub arm: Url,
    pub tenants: Vec<Tenant>,
    /// Vaults and subscriptions excluded are not read at all.
    pub exclusions: Exclusions,
    pub verify_challenge_resource: bool,
    /// Graph requests per window per tenant (default: 95% of 150 a minute).
    pub graph_limit: u32,
    pub graph_window_ms: u64,
    pub vault_budgets: VaultBudgets,
    pub retry: RetryPolicy,
    pub progress: Arc<dyn Progress>,
}

/// What a scan read, and the vault clients that read it (for the hint reads).
#[derive(Debug)]
pub struct Scan {
    pub inventory: Inventory,
    stores: BTreeMap<(String, String), Arc<KeyVaultStore>>,
}

impl Scan {
    /// The URL of each vault read, by `(tenant, vault name)`.
    pub fn vault_urls(&self) -> BTreeMap<(String, String), Url> {
        self.stores
            .iter()
            .map(|(k, store)| (k.clone(), store.vault_url().clone()))
            .collect()
    }
}

/// One tenant's share of a scan.
#[derive(Default)]
struct Part {
    credentials: Vec<AppCredential>,
    items: Vec<VaultItem>,
    unreachable: Vec<Unreachable>,
    stores: Vec<(String, Arc<KeyVaultStore>)>,
}

impl Scanner {
    /// A scanner of `tenants` over `http` with the default budgets and retry policy.
    pub fn new(http: Http, graph: Url, arm: Url, tenants: Vec<Tenant>) -> Self {
        Self {
            http,
            graph,
            arm,
            tenants,
            exclusions: Exclusions::default(),
            verify_challenge_resource: true,
            graph_limit: GRAPH_KEY_CREDENTIALS_LIMIT * SAFETY_PERCENT / 100,
            graph_window_ms: GRAPH_WINDOW_MS,
            vault_budgets: VaultBudgets::default(),
            retry: RetryPolicy::default(),
            progress: Arc::new(NoProgress),
        }
    }

    /// Reads every tenant (at once), each tenant's Graph listings beside its vaults.
    pub async fn scan(&self) -> Scan {
        let parts = futures::future::join_all(self.tenants.iter().map(|t| self.tenant(t))).await;
        let mut inventory = Inventory::default();
        let mut stores = BTreeMap::new();
        for (t, part) in self.tenants.iter().zip(parts) {
            inventory.credentials.extend(part.credentials);
            inventory.items.extend(part.items);
            inventory.unreachable.extend(part.unreachable);
            for (vault, store) in part.stores {
                inventory.vaults.push((t.name.clone(), vault.clone()));
                stores.insert((t.name.clone(), vault), store);
            }
        }
        inventory.unreachable.sort();
        inventory.vaults.sort();
        Scan { inventory, stores }
    }

    async fn tenant(&self, t: &Tenant) -> Part {
        let mut part = Part::default();
        // A tenant whose token cannot be had is unreachable as a whole: say so once,
        // with the reason, instead of failing every listing the same way.
        if let Err(e) = t.credential.token(GRAPH_SCOPE).await {
            part.unreachable.push(unreachable(
                UnreachableKind::Tenant,
                t,
                &t.name,
                &format!("no token for Microsoft Graph: {}", e.message),
            ));
            return part;
        }
        let budget = RequestBudget::new(self.graph_limit, self.graph_window_ms);
        // Graph is paced much slower than Key Vault: the vaults are found and read
        // meanwhile, each within its own budget.
        let vault_side = async {
            let (vaults, lost) = self.vaults(t).await;
            self.progress
                .start(Phase::Secrets, Some(vaults.len() as u64));
            let scanned: Vec<_> = futures::stream::iter(vaults)
                .map(|(name, url)| self.vault(t, name, url))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            self.progress.finish(Phase::Secrets);
            (lost, scanned)
        };
        let ((credentials, mut lost_graph), (mut lost_vaults, scanned)) =
            futures::join!(self.credentials(t, &budget), vault_side);
        part.credentials = credentials;
        part.unreachable.append(&mut lost_graph);
        part.unreachable.append(&mut lost_vaults);
        for (name, store, items, lost) in scanned {
            part.items.extend(items);
            part.unreachable.extend(lost);
            if let Some(store) = store {
                part.stores.push((name, store));
            }
        }
        part
    }

    /// Applications' (and service principals') credentials.
    async fn credentials(
        &self,
        t: &Tenant,
        budget: &RequestBudget,
    ) -> (Vec<AppCredential>, Vec<Unreachable>) {
        let graph = Authed {
            http: self.http.clone(),
            credential: t.credential.clone(),
            scope: GRAPH_SCOPE.to_owned(),
        };
        let mut out = Vec::new();
        let mut lost = Vec::new();
        self.progress.start(Phase::Apps, None);
        let listings = [
            ("/applications", APPLICATIONS_SELECT, Origin::Application),
            (
                "/servicePrincipals",
                SERVICE_PRINCIPALS_SELECT,
                Origin::ServicePrincipal,
            ),
        ];
        for (path, select, origin) in listings {
            if origin == Origin::ServicePrincipal && !t.service_principals {
                continue;
            }
            match self
                .graph_listing(t, &graph, budget, path, select, origin)
                .await
            {
                Ok(mut creds) => out.append(&mut creds),
                Err(e) => {
                    let name = match origin {
                        Origin::Application => t.name.clone(),
                        Origin::ServicePrincipal => format!("{} (service principals)", t.name),
                    };
                    lost.push(unreachable(UnreachableKind::Tenant, t, &name, &e.message));
                }
            }
        }
        self.progress.finish(Phase::Apps);
        (out, lost)
    }

    async fn graph_listing(
        &self,
        t: &Tenant,
        graph: &Authed,
        budget: &RequestBudget,
        path: &str,
        select: &str,
        origin: Origin,
    ) -> Result<Vec<AppCredential>, ProviderError> {
        let mut url = join(&self.graph, path, None)?;
        url.set_query(Some(&format!("$select={select}&$top={GRAPH_TOP}")));
        let resource = format!("{path} of tenant {}", t.name);
        let op = Op {
            service: "Microsoft Graph",
            action: "list",
            resource: &resource,
            grant: "Application.Read.All",
        };
        let mut out = Vec::new();
        for _ in 0..PAGES_MAX {
            let resp = self.get(graph, Some(budget), &url, op).await?;
            let objects = resp.body["value"].as_array().map_or(&[][..], Vec::as_slice);
            for o in objects {
                out.extend(credentials_of(&t.name, origin, o));
            }
            self.progress.advance(Phase::Apps, objects.len() as u64);
            // Followed verbatim: it carries every query option and the skip token.
            match resp.body["@odata.nextLink"].as_str() {
                Some(next) => url = same_origin(&self.graph, next, "Microsoft Graph")?,
                None => return Ok(out),
            }
        }
        Err(ProviderError::transient(format!(
            "listing {resource} did not end after {PAGES_MAX} pages"
        )))
    }

    /// The vaults to read: configured ones, then those ARM lists in each subscription
    /// (excluded ones left out), each once.
    async fn vaults(&self, t: &Tenant) -> (Vec<(String, Url)>, Vec<Unreachable>) {
        let mut vaults: Vec<(String, Url)> = Vec::new();
        let mut lost = Vec::new();
        self.progress.start(Phase::Vaults, None);
        let add = |name: String, url: Url, vaults: &mut Vec<(String, Url)>| {
            let key = crate::providers::azure::budget::vault_key(&url);
            if !self.exclusions.excludes_vault(&name)
                && !vaults
                    .iter()
                    .any(|(_, u)| crate::providers::azure::budget::vault_key(u) == key)
            {
                self.progress.advance(Phase::Vaults, 1);
                vaults.push((name, url));
            }
        };
        for url in &t.vaults {
            let name = crate::config::vault_name(url.as_str())
                .unwrap_or_else(|| url.as_str().to_owned())
                .to_ascii_lowercase();
            add(name, url.clone(), &mut vaults);
        }
        let arm = Authed {
            http: self.http.clone(),
            credential: t.credential.clone(),
            scope: ARM_SCOPE.to_owned(),
        };
        for sub in &t.subscriptions {
            if self.exclusions.excludes_subscription(sub) {
                continue;
            }
            match self.subscription_vaults(&arm, sub).await {
                Ok(found) => {
                    for (name, url) in found {
                        add(name, url, &mut vaults);
                    }
                }
                Err(e) => lost.push(unreachable(
                    UnreachableKind::Subscription,
                    t,
                    sub,
                    &e.message,
                )),
            }
        }
        self.progress.finish(Phase::Vaults);
        (vaults, lost)
    }

    async fn subscription_vaults(
        &self,
        arm: &Authed,
        sub: &str,
    ) -> Result<Vec<(String, Url)>, ProviderError> {
        let mut url = join(
            &self.arm,
            &format!("/subscriptions/{sub}/providers/Microsoft.KeyVault/vaults"),
            Some(ARM_VAULTS_API_VERSION),
        )?;
        let resource = format!("the vaults of subscription {sub}");
        let op = Op {
            service: "Azure Resource Manager",
            action: "list",
            resource: &resource,
            grant: "Reader on the subscription",
        };
        let mut out = Vec::new();
        for _ in 0..PAGES_MAX {
            let resp = self.get(arm, None, &url, op).await?;
            for v in resp.body["value"].as_array().into_iter().flatten() {
                let (Some(name), Some(uri)) =
                    (v["name"].as_str(), v["properties"]["vaultUri"].as_str())
                else {
                    continue;
                };
                match Url::parse(uri) {
                    Ok(u) => out.push((name.to_ascii_lowercase(), u)),
                    Err(e) => {
                        return Err(ProviderError::permanent(format!(
                            "ARM listed vault {name} with a vaultUri that is not a URL ({e})"
                        )));
                    }
                }
            }
            match resp.body["nextLink"].as_str().filter(|s| !s.is_empty()) {
                Some(next) => url = same_origin(&self.arm, next, "Azure Resource Manager")?,
                None => return Ok(out),
            }
        }
        Err(ProviderError::transient(format!(
            "listing {resource} did not end after {PAGES_MAX} pages"
        )))
    }

    /// One vault's secrets and certificates. A vault that refuses its secrets is
    /// unreachable (never empty); one that refuses only its certificates keeps its secrets.
    async fn vault(
        &self,
        t: &Tenant,
        name: String,
        url: Url,
    ) -> (
        String,
        Option<Arc<KeyVaultStore>>,
        Vec<VaultItem>,
        Vec<Unreachable>,
    ) {
        let mut store = KeyVaultStore::new(self.http.clone(), t.credential.clone(), url.clone())
            .with_budget(self.vault_budgets.budget(&url));
        if !self.verify_challenge_resource {
            store = store.without_challenge_verification();
        }
        let store = Arc::new(store);
        let mut items = Vec::new();
        let mut lost = Vec::new();
        match self.listing(&store, "secrets").await {
            Ok(listed) => {
                items.extend(
                    listed
                        .iter()
                        .filter_map(|v| item(t, &name, ItemKind::Secret, v)),
                );
            }
            Err(e) => {
                lost.push(unreachable(UnreachableKind::Vault, t, &name, &e.message));
                self.progress.advance(Phase::Secrets, 1);
                return (name, None, items, lost);
            }
        }
        match self.listing(&store, "certificates").await {
            Ok(listed) => items.extend(
                listed
                    .iter()
                    .filter_map(|v| item(t, &name, ItemKind::Certificate, v)),
            ),
            Err(e) => lost.push(unreachable(
                UnreachableKind::VaultCertificates,
                t,
                &name,
                &e.message,
            )),
        }
        self.progress.advance(Phase::Secrets, 1);
        (name, Some(store), items, lost)
    }

    async fn listing(
        &self,
        store: &KeyVaultStore,
        collection: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut url = store.list_url(collection)?;
        let mut all = Vec::new();
        for _ in 0..PAGES_MAX {
            let (items, next) = self.retrying(|| store.list_page(&url, collection)).await?;
            all.extend(items);
            match next {
                Some(n) => url = n,
                None => return Ok(all),
            }
        }
        Err(ProviderError::transient(format!(
            "listing {collection} of {} did not end after {PAGES_MAX} pages",
            store.vault_url()
        )))
    }

    /// Reads each candidate item's current value once and compares it with every hint
    /// offered for it; keeps only the results. A value that cannot be read gives no
    /// result (no evidence either way).
    pub async fn read_hints(&self, scan: &Scan, candidates: &[HintCandidate]) -> Hints {
        let results: Vec<Vec<(HintKey, bool)>> = futures::stream::iter(candidates)
            .map(|c| async move {
                let Some(store) = scan.stores.get(&(c.tenant.clone(), c.vault.clone())) else {
                    return Vec::new();
                };
                let id = format!(
                    "{}/secrets/{}",
                    store.vault_url().as_str().trim_end_matches('/'),
                    c.item
                );
                let Ok(value) = self.retrying(|| store.read(&id)).await else {
                    return Vec::new();
                };
                let out = c
                    .hints
                    .iter()
                    .map(|(key_id, hint)| {
                        let key = HintKey {
                            key_id: key_id.clone(),
                            vault: c.vault.clone(),
                            item: c.item.to_ascii_lowercase(),
                        };
                        (
                            key,
                            !hint.is_empty() && value.expose().starts_with(hint.as_str()),
                        )
                    })
                    .collect();
                drop(value);
                out
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    /// One GET through `api`, within `budget`, retried; non-2xx becomes an error
    /// classified for `op`.
    /// The longest password lifetime, in whole days, that tenant `t`'s default app
    /// management policy allows (`applicationRestrictions.passwordCredentials`,
    /// `passwordLifetime`), reading `GET /policies/defaultAppManagementPolicy` (needs
    /// Policy.Read.All). `None`: no limit, or the policy could not be read (a rotation that
    /// asks too long a lifetime is then refused by Graph and undone).
    pub async fn password_lifetime_days(&self, t: &Tenant, now_ms: i64) -> Option<i64> {
        let graph = Authed {
            http: self.http.clone(),
            credential: t.credential.clone(),
            scope: GRAPH_SCOPE.to_owned(),
        };
        let url = join(&self.graph, "/policies/defaultAppManagementPolicy", None).ok()?;
        let resource = format!("the app management policy of tenant {}", t.name);
        let op = Op {
            service: "Microsoft Graph",
            action: "read",
            resource: &resource,
            grant: "Policy.Read.All",
        };
        let policy = match self.get(&graph, None, &url, op).await {
            Ok(resp) => resp.body,
            Err(e) => {
                tracing::info!(tenant = t.name, error = %e.message, "password lifetime policy not read; no tenant limit assumed");
                return None;
            }
        };
        password_lifetime_days(&policy, now_ms)
    }

    async fn get(
        &self,
        api: &Authed,
        budget: Option<&RequestBudget>,
        url: &Url,
        op: Op<'_>,
    ) -> Result<Response, ProviderError> {
        self.retrying(|| async {
            if let Some(b) = budget {
                b.acquire().await;
            }
            let resp = api.send(reqwest::Method::GET, url, Body::Empty).await?;
            if let Some(b) = budget {
                if resp.status == 429 {
                    let wait = resp
                        .retry_after_ms
                        .unwrap_or(crate::providers::azure::http::DEFAULT_RETRY_AFTER_MS);
                    b.on_throttled(u64::try_from(wait).unwrap_or(0));
                } else {
                    b.on_success();
                }
            }
            if resp.ok() {
                Ok(resp)
            } else {
                Err(classify(op, &resp))
            }
        })
        .await
    }

    /// Runs `call` until it succeeds, fails permanently, or runs out of attempts: a 429
    /// waits exactly its `Retry-After`, anything else transient backs off.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let (mut attempt, mut throttled) = (0u32, 0u32);
        loop {
            let e = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let wait_ms = match e.class {
                ErrorClass::Permanent => return Err(e),
                ErrorClass::RateLimited => {
                    throttled += 1;
                    if throttled >= THROTTLED_ATTEMPTS_MAX {
                        return Err(e);
                    }
                    e.retry_after_ms
                        .unwrap_or(crate::providers::azure::http::DEFAULT_RETRY_AFTER_MS)
                }
                ErrorClass::Transient => {
                    attempt += 1;
                    if attempt >= ATTEMPTS_MAX {
                        return Err(e);
                    }
                    self.retry.delay_ms(attempt, e.class, None, 0.0)
                }
            };
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))).await;
        }
    }
}

fn unreachable(kind: UnreachableKind, t: &Tenant, name: &str, reason: &str) -> Unreachable {
    Unreachable {
        kind,
        tenant: t.name.clone(),
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A `nextLink` is followed with a token only back to the service that sent it.
fn same_origin(base: &Url, link: &str, service: &str) -> Result<Url, ProviderError> {
    let url = Url::parse(link).map_err(|e| {
        ProviderError::permanent(format!("{service} sent a nextLink that is not a URL: {e}"))
    })?;
    if url.origin() != base.origin() {
        return Err(ProviderError::permanent(format!(
            "{service} sent a nextLink to another origin ({}); refusing to follow it with a token",
            url.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

/// Graph's `dateTimeOffset` as Unix ms.
fn graph_time(v: &Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Graph's strings are capped here so one odd object cannot bloat reports or events.
fn capped(v: &Value) -> Option<String> {
    v.as_str().map(|s| s.chars().take(256).collect())
}

/// The credentials of one application or service principal object.
pub fn credentials_of(tenant: &str, origin: Origin, o: &Value) -> Vec<AppCredential> {
    let (Some(object_id), Some(app_id)) = (o["id"].as_str(), o["appId"].as_str()) else {
        return Vec::new();
    };
    let app_name = capped(&o["displayName"]).unwrap_or_default();
    let base = |kind, c: &Value| -> Option<AppCredential> {
        Some(AppCredential {
            tenant: tenant.to_owned(),
            origin,
            object_id: id_key(object_id),
            app_id: id_key(app_id),
            app_name: app_name.clone(),
            key_id: id_key(c["keyId"].as_str()?),
            kind,
            display_name: capped(&c["displayName"]),
            start_ms: graph_time(&c["startDateTime"]),
            end_ms: graph_time(&c["endDateTime"]),
            hint: None,
            thumbprint: None,
        })
    };
    let mut out = Vec::new();
    for c in o["passwordCredentials"].as_array().into_iter().flatten() {
        if let Some(mut cred) = base(CredentialKind::Password, c) {
            cred.hint = c["hint"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(|h| h.chars().take(3).collect());
            out.push(cred);
        }
    }
    for c in o["keyCredentials"].as_array().into_iter().flatten() {
        if let Some(mut cred) = base(CredentialKind::Certificate, c) {
            cred.thumbprint = c["customKeyIdentifier"]
                .as_str()
                .and_then(Thumbprint::parse);
            out.push(cred);
        }
    }
    out
}

/// A Key Vault list item as a [`VaultItem`]; `None` without a usable id.
pub fn item(t: &Tenant, vault: &str, kind: ItemKind, v: &Value) -> Option<VaultItem> {
    let id = v["id"].as_str()?;
    let name = id.trim_end_matches('/').rsplit('/').next()?.to_owned();
    if name.is_empty() {
        return None;
    }
    let attrs = &v["attributes"];
    let seconds = |k: &str| attrs[k].as_i64().map(|s| s.saturating_mul(1000));
    let tags = v["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some(VaultItem {
        tenant: t.name.clone(),
        vault: vault.to_owned(),
        name,
        kind,
        tags,
        content_type: v["contentType"].as_str().map(str::to_owned),
        enabled: attrs["enabled"].as_bool().unwrap_or(true),
        exp_ms: seconds("exp"),
        created_ms: seconds("created"),
        x5t: v["x5t"].as_str().and_then(Thumbprint::parse),
        managed: v["managed"].as_bool().unwrap_or(false),
    })
}

/// The shortest `passwordLifetime` of an enabled default app management policy, in whole
/// days from `now_ms` (ISO 8601 durations such as `P90D` or `P1Y`); `None` without one.
pub fn password_lifetime_days(policy: &Value, now_ms: i64) -> Option<i64> {
    if policy["isEnabled"].as_bool() != Some(true) {
        return None;
    }
    let today = jiff::Timestamp::from_millisecond(now_ms)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    policy["applicationRestrictions"]["passwordCredentials"]
        .as_array()?
        .iter()
        .filter(|r| r["restrictionType"] == "passwordLifetime")
        .filter_map(|r| r["maxLifetime"].as_str()?.parse::<jiff::Span>().ok())
        .filter_map(|span| span.total((jiff::Unit::Day, today)).ok())
        .map(|days| days.floor() as i64)
        .min()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_tenant_password_lifetime_is_the_shortest_enabled_restriction() {
        // 2025-06-15T14:40:00Z.
        let now = 1_750_000_000_000;
        let policy = |enabled: bool, lifetimes: &[&str]| {
            let restrictions: Vec<Value> = lifetimes
                .iter()
                .map(|l| json!({"restrictionType": "passwordLifetime", "maxLifetime": l}))
                .chain([json!({"restrictionType": "passwordAddition", "maxLifetime": null})])
                .collect();
            json!({"isEnabled": enabled, "applicationRestrictions": {"passwordCredentials": restrictions}})
        };
        assert_eq!(
            password_lifetime_days(&policy(true, &["P90D"]), now),
            Some(90)
        );
        assert_eq!(
            password_lifetime_days(&policy(true, &["P1Y", "P6M"]), now),
            Some(183),
            "six months from mid-June"
        );
        assert_eq!(
            password_lifetime_days(&policy(true, &["P4DT12H"]), now),
            Some(4)
        );
        assert_eq!(password_lifetime_days(&policy(false, &["P90D"]), now), None);
        assert_eq!(password_lifetime_days(&policy(true, &[]), now), None);
        assert_eq!(password_lifetime_days(&json!({}), now), None);
    }

    #[test]
    fn graph_objects_become_credentials_with_normalised_ids_and_thumbprints() {
        let raw = [7u8; 20];
        let app = json!({
            "id": "A99E0000-0000-4000-8000-0000000000B1",
            "appId": "a99e0000-0000-4000-8000-0000000000a1",
            "displayName": "orders-api",
            "passwordCredentials": [{
                "keyId": "5E7C0000-0000-4000-8000-00000000000A",
                "displayName": "prod",
                "startDateTime": "2025-01-01T00:00:00Z",
                "endDateTime": "2025-07-01T00:00:00.1234567Z",
                "hint": "Ab3",
                "customKeyIdentifier": null,
                "secretText": null
            }, {"displayName": "no key id"}],
            "keyCredentials": [{
                "keyId": "5e7c0000-0000-4000-8000-00000000000b",
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
                "endDateTime": "2026-01-01T00:00:00Z",
                "customKeyIdentifier": base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    hex::encode_upper(raw)
                )
            }]
        });
        let creds = credentials_of("contoso", Origin::Application, &app);
        assert_eq!(creds.len(), 2);
        let p = &creds[0];
        assert_eq!(p.object_id, "a99e0000-0000-4000-8000-0000000000b1");
        assert_eq!(p.key_id, "5e7c0000-0000-4000-8000-00000000000a");
        assert_eq!(p.hint.as_deref(), Some("Ab3"));
        assert_eq!(p.end_ms, Some(1_751_328_000_123));
        assert_eq!(p.start_ms, Some(1_735_689_600_000));
        assert_eq!(creds[1].kind, CredentialKind::Certificate);
        assert_eq!(creds[1].thumbprint, Some(Thumbprint(raw)));
        assert!(!format!("{p:?}").contains("Ab3"), "Debug hides the hint");
    }

    #[test]
    fn key_vault_items_keep_metadata_and_never_a_value() {
        let t = Tenant {
            name: "contoso".into(),
            credential: Arc::new(crate::providers::azure::credential::TokenCache::new(
                Http::new(1_000, Arc::new(rekey_journal::SystemClock)).unwrap(),
                crate::providers::azure::credential::Source::Static {
                    token: crate::provider::SecretValue::new("t"),
                },
            )),
            subscriptions: Vec::new(),
            vaults: Vec::new(),
            service_principals: true,
        };
        let v = json!({
            "id": "https://kv.vault.azure.net/secrets/orders-client-secret",
            "attributes": {"enabled": false, "exp": 1_751_328_000, "created": 1_735_689_600},
            "tags": {"CredentialId": "k", "n": 5},
            "contentType": "client-secret",
            "value": "must not be kept"
        });
        let i = item(&t, "kv", ItemKind::Secret, &v).unwrap();
        assert_eq!(i.name, "orders-client-secret");
        assert!(!i.enabled);
        assert_eq!(i.exp_ms, Some(1_751_328_000_000));
        assert_eq!(i.tags.len(), 1, "non-string tag values are dropped");
        assert!(!format!("{i:?}").contains("must not be kept"));
        let c = json!({"id": "https://kv.vault.azure.net/certificates/tls", "x5t": "BwcHBwcHBwcHBwcHBwcHBwcHBwc"});
        assert_eq!(
            item(&t, "kv", ItemKind::Certificate, &c).unwrap().x5t,
            Some(Thumbprint([7; 20]))
        );
    }
}
