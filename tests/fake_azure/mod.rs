//! Faithful fake Azure services for rekey's Azure providers, served over real HTTP on
//! 127.0.0.1 (ephemeral ports, nothing else is ever contacted).
//!
//! The spec is `/work/shared/contracts/azure.md`; each service module says which part it
//! implements and in which order it checks a request:
//! - [`keyvault`]: Key Vault secrets (challenge 401, paging, soft delete, disabled versions)
//!   and the certificate listing (`x5t`), firewalled vaults;
//! - [`arm`]: App Service app settings (replace-all PUT), storage account keys, and the
//!   listing of a subscription's Key Vaults;
//! - [`graph`]: application password credentials, and the listings of applications and
//!   service principals with their password and certificate credentials;
//! - [`login`]: the v2 client-credentials token endpoint and OpenID discovery;
//! - [`managed_identity`]: IMDS and the App Service identity endpoint.
//!
//! Tokens: resource servers accept only tokens this fake issued (unsigned JWTs, see [`jwt`]),
//! unexpired by the fake's clock, for their own audience, from the home tenant
//! ([`FakeAzure::TENANT`], which Key Vault's challenge names). Register clients under
//! `FakeAzure::TENANT` unless a test wants the wrong-tenant failure.
//!
//! Every request is logged ([`FakeAzure::requests`]), every change clients make is recorded
//! ([`FakeAzure::effects`]), and faults can be injected per route ([`FakeAzure::inject`],
//! [`FakeAzure::deny`]). Time comes from an injected [`Clock`] (a `ManualClock` lets a test
//! expire tokens or passwords without sleeping).

// The fake is a library for every Azure test in this binary; no single test uses all of it.
#![allow(dead_code)]

mod arm;
mod assertion;
mod bearer;
mod effects;
mod faults;
mod graph;
mod http;
mod ids;
mod jwt;
mod keyvault;
mod login;
mod managed_identity;
mod principals;
mod requests;
mod server;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use rekey_journal::{Clock, SystemClock};
use tokio::task::JoinHandle;

pub use arm::vaults::VaultResource;
pub use effects::Effect;
pub use faults::{Fault, Route};
// Seeded by the discovery tests only; the benches include this module too.
#[allow(unused_imports)]
pub use graph::store::KeyCred;
pub use graph::store::{App, PasswordCred, ServicePrincipal};
pub use keyvault::KvVersion;
pub use keyvault::store::Cert as KvCert;
pub use requests::{RequestLog, Service};

use arm::appsettings::SiteKey;
use arm::storage::AccountKey;
use keyvault::store::NewVersion;
use state::{Shared, Urls};

/// Metadata of a seeded secret version.
#[derive(Debug, Clone)]
pub struct SecretMeta {
    pub tags: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: Option<i64>,
    pub enabled: bool,
}

impl Default for SecretMeta {
    fn default() -> Self {
        Self {
            tags: BTreeMap::new(),
            content_type: None,
            exp: None,
            enabled: true,
        }
    }
}

/// The running fake services and the handle tests seed, inspect and break them through.
#[derive(Debug)]
pub struct FakeAzure {
    shared: Arc<Shared>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl FakeAzure {
    /// The home tenant: Key Vault's challenge names it, resources accept only its tokens.
    pub const TENANT: &'static str = "7e57a2e0-0000-4000-8000-00000000fa4e";

    /// Starts every service with the real clock.
    pub async fn start() -> FakeAzure {
        Self::start_with_clock(Arc::new(SystemClock)).await
    }

    /// Starts every service (one axum server each, on 127.0.0.1:0) with `clock`.
    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> FakeAzure {
        let listeners = [
            server::bind().await,
            server::bind().await,
            server::bind().await,
            server::bind().await,
            server::bind().await,
            server::bind().await,
        ];
        let base = |i: usize| {
            let addr = listeners[i]
                .local_addr()
                .expect("bound listener has an address");
            format!("http://{addr}")
        };
        let urls = Urls {
            keyvault: base(0),
            arm: base(1),
            graph: format!("{}/v1.0", base(2)),
            authority: base(3),
            imds: format!("{}{}", base(4), managed_identity::IMDS_PATH),
            identity: format!("{}{}", base(5), managed_identity::IDENTITY_PATH),
        };
        let shared = Arc::new(Shared::new(clock, urls, Self::TENANT.to_owned()));
        let routers = [
            keyvault::router(Arc::clone(&shared)),
            arm::router(Arc::clone(&shared)),
            graph::router(Arc::clone(&shared)),
            login::router(Arc::clone(&shared)),
            managed_identity::imds_router(Arc::clone(&shared)),
            managed_identity::identity_router(Arc::clone(&shared)),
        ];
        let servers = listeners
            .into_iter()
            .zip(routers)
            .map(|(listener, router)| server::spawn(listener, router))
            .collect();
        FakeAzure { shared, servers }
    }

    // ---- where the services are -------------------------------------------------------

    /// A vault's base URL, `http://127.0.0.1:P/<vault>` (lower-cased, as vault hosts are);
    /// clients append `/secrets/…`. Secret ids the vault returns start with it.
    pub fn keyvault_url(&self, vault: &str) -> String {
        format!(
            "{}/{}",
            self.shared.urls.keyvault,
            vault.to_ascii_lowercase()
        )
    }

    /// ARM's base URL; paths start `/subscriptions/…`.
    pub fn arm_url(&self) -> String {
        self.shared.urls.arm.clone()
    }

    /// Graph's base URL including `/v1.0`.
    pub fn graph_url(&self) -> String {
        self.shared.urls.graph.clone()
    }

    /// The authority; clients post to `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn authority_url(&self) -> String {
        self.shared.urls.authority.clone()
    }

    /// The full IMDS token URL (`…/metadata/identity/oauth2/token`).
    pub fn imds_url(&self) -> String {
        self.shared.urls.imds.clone()
    }

    /// App Service's `(IDENTITY_ENDPOINT, IDENTITY_HEADER)`.
    pub fn identity_endpoint(&self) -> (String, String) {
        (
            self.shared.urls.identity.clone(),
            self.shared.identity_header.clone(),
        )
    }

    /// The home tenant ([`Self::TENANT`]).
    pub fn tenant(&self) -> String {
        self.shared.tenant.clone()
    }

    // ---- principals and tokens --------------------------------------------------------

    /// Registers a service principal that may get tokens with `secret` (more than one secret
    /// per client may be registered).
    pub fn register_client(&self, tenant: &str, client_id: &str, secret: &str) {
        self.shared
            .lock()
            .principals
            .register_client(tenant, client_id, secret);
    }

    /// Registers a certificate (DER) with which a service principal may sign client
    /// assertions instead of sending a secret.
    pub fn register_client_certificate(&self, tenant: &str, client_id: &str, der: &[u8]) {
        self.shared
            .lock()
            .principals
            .register_client_certificate(tenant, client_id, der);
    }

    /// Registers a federated identity credential: client `client_id` accepts, as its client
    /// assertion, a token from `issuer` for `subject` with audience
    /// `api://AzureADTokenExchange` (workload identity).
    pub fn register_federated_credential(
        &self,
        tenant: &str,
        client_id: &str,
        issuer: &str,
        subject: &str,
    ) {
        self.shared
            .lock()
            .principals
            .register_federated(tenant, client_id, issuer, subject);
    }

    /// The client id of the system-assigned managed identity (used when a managed-identity
    /// request names none).
    pub fn managed_identity_client_id(&self) -> String {
        self.shared
            .lock()
            .principals
            .system_identity
            .client_id
            .clone()
    }

    /// Adds a user-assigned managed identity, requested with `client_id=…`.
    pub fn register_managed_identity(&self, client_id: &str) {
        self.shared.lock().principals.add_user_identity(client_id);
    }

    /// A valid token for `audience` (home tenant, a test principal), without a token request:
    /// for tests of a resource API that do not exercise login.
    pub fn mint_token(&self, audience: &str) -> String {
        let principal = "00000000-0000-4000-8000-00000000beef";
        let (token, _) = self
            .shared
            .issue_token(audience, Self::TENANT, principal, principal);
        token
    }

    // ---- seeding (not recorded as effects) --------------------------------------------

    /// Adds a version (enabled, no tags) to secret `name`; returns the version id.
    pub fn kv_seed(&self, vault: &str, name: &str, value: &str) -> String {
        let base = self.keyvault_url(vault);
        let now = self.shared.now_s();
        let new = NewVersion {
            value: value.to_owned(),
            ..NewVersion::default()
        };
        let mut state = self.shared.lock();
        let (_, version) = state
            .vaults
            .vault(vault)
            .set(&base, name, new, now)
            .expect("kv_seed on a soft-deleted secret");
        version.version.clone()
    }

    /// Soft-deletes secret `name` (a PUT to it then gets 409 `ObjectIsDeletedButRecoverable`).
    pub fn kv_soft_delete(&self, vault: &str, name: &str) {
        let now = self.shared.now_s();
        let mut state = self.shared.lock();
        state
            .vaults
            .vault(vault)
            .delete(name, now)
            .expect("kv_soft_delete of an active secret");
    }

    /// Creates a site (`slot: None`) or a slot with `settings` (a slot's site is created if
    /// missing).
    pub fn site_seed(
        &self,
        sub: &str,
        rg: &str,
        site: &str,
        slot: Option<&str>,
        settings: &[(&str, &str)],
    ) {
        let settings = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.shared
            .lock()
            .sites
            .seed(SiteKey::new(sub, rg, site, slot), settings);
    }

    /// Creates an application (no credentials) whose client id is `app_id`.
    pub fn app_seed(&self, object_id: &str, app_id: &str) {
        self.shared.lock().apps.seed(object_id, app_id);
    }

    /// Adds a password credential that works at once; returns `(keyId, secretText)`.
    pub fn app_add_password(&self, object_id: &str, display_name: &str) -> (String, String) {
        let now_ms = self.shared.now_ms();
        let start = ids::timestamp(now_ms);
        let secret_text = ids::graph_secret_text();
        let cred = PasswordCred {
            key_id: ids::random_uuid(),
            display_name: Some(display_name.to_owned()),
            hint: secret_text.chars().take(3).collect(),
            secret_text: secret_text.clone(),
            start,
            end: start
                .to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(jiff::Span::new().years(2))
                .expect("two years from now fits")
                .timestamp(),
            usable_from_ms: now_ms,
        };
        let key_id = cred.key_id.clone();
        let mut state = self.shared.lock();
        let app = state
            .apps
            .get_mut(object_id)
            .unwrap_or_else(|| panic!("no application {object_id}: app_seed it first"));
        app.passwords.push(cred);
        (key_id, secret_text)
    }

    /// Creates a storage account with fresh `key1`, `key2`, `kerb1`, `kerb2`.
    pub fn storage_seed(&self, sub: &str, rg: &str, account: &str) {
        let now = ids::timestamp(self.shared.now_ms());
        self.shared
            .lock()
            .accounts
            .seed(AccountKey::new(sub, rg, account), now);
    }

    // ---- seeding for discovery (not recorded as effects) --------------------------------

    /// Adds a version of secret `name` with metadata (`created` is the fake clock's now);
    /// returns the version id.
    pub fn kv_seed_item(&self, vault: &str, name: &str, value: &str, meta: SecretMeta) -> String {
        let base = self.keyvault_url(vault);
        let now = self.shared.now_s();
        let new = NewVersion {
            value: value.to_owned(),
            content_type: meta.content_type,
            tags: meta.tags,
            attributes: keyvault::store::AttributesIn {
                enabled: Some(meta.enabled),
                nbf: None,
                exp: meta.exp,
            },
        };
        let mut state = self.shared.lock();
        let (_, version) = state
            .vaults
            .vault(vault)
            .set(&base, name, new, now)
            .expect("kv_seed_item on a soft-deleted secret");
        version.version.clone()
    }

    /// Adds a certificate (and the managed secret backing it) to `vault`.
    pub fn kv_seed_certificate(&self, vault: &str, cert: KvCert) {
        let base = self.keyvault_url(vault);
        self.shared
            .lock()
            .vaults
            .vault(vault)
            .add_certificate(&base, cert, "MIIKfake-pkcs12-blob");
    }

    /// Puts `vault` behind a firewall that refuses this client (403 `ForbiddenByFirewall`
    /// on every authenticated request), or lifts it.
    pub fn kv_set_firewall(&self, vault: &str, on: bool) {
        let vault = vault.to_ascii_lowercase();
        let knobs = &mut self.shared.lock().knobs;
        if on {
            knobs.kv_firewalled.insert(vault);
        } else {
            knobs.kv_firewalled.remove(&vault);
        }
    }

    /// Adds (or replaces) an application with its credentials.
    pub fn graph_insert_app(&self, app: App) {
        self.shared.lock().apps.insert(app);
    }

    /// Adds (or replaces) a service principal with its credentials.
    pub fn graph_insert_principal(&self, sp: ServicePrincipal) {
        self.shared.lock().apps.insert_principal(sp);
    }

    /// Graph listing pages hold at most `n` objects (1–999) whatever `$top` says.
    pub fn set_graph_page_size(&self, n: usize) {
        self.shared.lock().knobs.graph_page_size = n.clamp(1, 999);
    }

    /// Throttles Graph listings that select `keyCredentials`: at most `limit` in any
    /// trailing `window_ms` (fake clock), the rest answered 429 with `Retry-After`.
    pub fn set_graph_key_credentials_rate_limit(&self, limit: u32, window_ms: u64) {
        self.shared.lock().graph_limits.set(limit, window_ms);
    }

    /// How many Graph listings the `keyCredentials` limit refused.
    pub fn graph_throttled_count(&self) -> u64 {
        self.shared.lock().graph_limits.throttled()
    }

    /// Registers vault `name` in resource group `rg` of `sub` for ARM's vault listing, its
    /// `vaultUri` this fake's Key Vault; returns that URI (ending in `/`).
    pub fn arm_vault_seed(&self, sub: &str, rg: &str, name: &str) -> String {
        let vault_uri = format!("{}/", self.keyvault_url(name));
        self.arm_vault_insert(VaultResource {
            sub: sub.to_owned(),
            rg: rg.to_owned(),
            name: name.to_owned(),
            vault_uri: vault_uri.clone(),
            tenant_id: Self::TENANT.to_owned(),
        });
        vault_uri
    }

    /// Registers a vault resource as given (any `vaultUri`).
    pub fn arm_vault_insert(&self, vault: VaultResource) {
        self.shared.lock().kv_resources.seed(vault);
    }

    /// ARM's vault listing pages hold at most `n` vaults whatever `$top` says.
    pub fn set_arm_page_size(&self, n: usize) {
        self.shared.lock().knobs.arm_page_size = n.max(1);
    }

    // ---- inspection -------------------------------------------------------------------

    /// Every change clients made, in order.
    pub fn effects(&self) -> Vec<Effect> {
        self.shared.lock().effects.clone()
    }

    /// Every version of secret `name`, oldest first, deleted or not (empty if none).
    pub fn kv_versions(&self, vault: &str, name: &str) -> Vec<KvVersion> {
        self.shared
            .lock()
            .vaults
            .vault(vault)
            .stored(name)
            .map(|s| s.versions.clone())
            .unwrap_or_default()
    }

    /// The app settings of the site (or slot) named `site`; panics unless exactly one
    /// seeded site has that name.
    pub fn app_settings(&self, site: &str, slot: Option<&str>) -> BTreeMap<String, String> {
        let state = self.shared.lock();
        match state.sites.find(site, slot).as_slice() {
            [settings] => (*settings).clone(),
            [] => panic!("no site {site} slot {slot:?} seeded"),
            _ => panic!("more than one site named {site}"),
        }
    }

    /// The password credentials of application `object_id`, secret text included.
    pub fn app_passwords(&self, object_id: &str) -> Vec<PasswordCred> {
        self.shared
            .lock()
            .apps
            .by_object_id(object_id)
            .unwrap_or_else(|| panic!("no application {object_id}"))
            .passwords
            .clone()
    }

    /// The keys of the storage account named `account`, by key name.
    pub fn storage_keys(&self, account: &str) -> BTreeMap<String, String> {
        let state = self.shared.lock();
        match state.accounts.find(account).as_slice() {
            [keys] => keys
                .iter()
                .map(|(n, k)| ((*n).to_owned(), k.value.clone()))
                .collect(),
            [] => panic!("no storage account {account} seeded"),
            _ => panic!("more than one storage account named {account}"),
        }
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().requests.clone()
    }

    // ---- faults and knobs -------------------------------------------------------------

    /// Queues `fault` for the next `times` authenticated requests to `route`.
    pub fn inject(&self, route: Route, fault: Fault, times: u32) {
        self.shared.lock().faults.inject(route, fault, times);
    }

    /// The next `times` requests to ARM route `route` are done at once and answered `ms`
    /// (real time) later, as a slow way back would: what they read is stale by then if
    /// another request changed it meanwhile.
    pub fn hold_response(&self, route: Route, ms: u64, times: u32) {
        self.shared.lock().faults.hold(route, ms, times);
    }

    /// Refuses every request to `route` with the service's 403 for that operation (the
    /// token endpoint: `unauthorized_client`, app disabled; managed identity: identity not
    /// found) until [`Self::allow`].
    pub fn deny(&self, route: Route) {
        self.shared.lock().faults.deny(route);
    }

    /// Lifts a [`Self::deny`].
    pub fn allow(&self, route: Route) {
        self.shared.lock().faults.allow(route);
    }

    /// The tenant's app management policy: passwords live at most `days` (shown by
    /// `GET /policies/defaultAppManagementPolicy`, enforced by `addPassword`); `None`: no
    /// limit, the policy disabled.
    pub fn set_password_lifetime_days(&self, days: Option<i64>) {
        self.shared.lock().knobs.password_lifetime_days = days;
    }

    /// A Graph password created through `addPassword` works at the token endpoint only `ms`
    /// after creation (by the fake's clock).
    pub fn set_propagation_delay_ms(&self, ms: u64) {
        self.shared.lock().knobs.propagation_delay_ms = i64::try_from(ms).unwrap_or(i64::MAX);
    }

    /// Key Vault list pages hold at most `n` items (1–25) whatever `maxresults` says.
    pub fn set_kv_page_size(&self, n: usize) {
        self.shared.lock().knobs.kv_page_size = n.clamp(1, 25);
    }

    /// Every Key Vault listing starts with an empty page carrying a `nextLink`.
    pub fn set_kv_empty_first_page(&self, on: bool) {
        self.shared.lock().knobs.kv_empty_first_page = on;
    }

    /// Throttles `vault` as Key Vault does: a request arriving when `limit` requests were
    /// served in the trailing `window_ms` (by the fake's clock) is answered 429, with
    /// `Retry-After` in whole seconds until the oldest of them leaves the window and the
    /// service's `Throttled` body, and is not done. Refused requests do not count.
    pub fn set_vault_rate_limit(&self, vault: &str, limit: u32, window_ms: u64) {
        self.shared
            .lock()
            .kv_limits
            .set_rate(vault, limit, window_ms);
    }

    /// How many requests to `vault` its rate limit refused.
    pub fn throttled_count(&self, vault: &str) -> u64 {
        self.shared.lock().kv_limits.throttled(vault)
    }

    /// Every request to `vault` waits `ms` (tokio time) before the vault looks at it, as a
    /// network round trip would (unlike `Fault::Delay`: every request, not queued ones).
    pub fn set_vault_latency_ms(&self, vault: &str, ms: u64) {
        self.shared.lock().kv_limits.set_latency(vault, ms);
    }

    /// Lifetime of tokens issued from now on (default 3599 s).
    pub fn set_token_lifetime_secs(&self, secs: i64) {
        self.shared.lock().knobs.token_lifetime_secs = secs;
    }
}
