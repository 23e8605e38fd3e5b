//! The state every fake service shares: one lock over all stores, logs and knobs, plus the
//! fixed facts (clock, URLs, tenant) the services need to render ids and challenges.
//!
//! One lock keeps cross-service facts consistent without ordering rules: a Graph password
//! added by one request is visible to the very next token request. The lock is never held
//! across an `.await`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::Request;
use axum::response::Response;
use rekey_journal::Clock;

use super::arm::appsettings::Sites;
use super::arm::storage::Accounts;
use super::arm::vaults::VaultResources;
use super::effects::Effect;
use super::faults::FaultBook;
use super::graph::listing::KeyCredentialLimit;
use super::graph::store::Apps;
use super::http::{Incoming, Reply};
use super::jwt::{self, Claims};
use super::keyvault::limits::VaultLimits;
use super::keyvault::store::Vaults;
use super::principals::Principals;
use super::requests::{RequestLog, Service};
use super::server::Conn;

/// Base URLs of the running fake services.
#[derive(Debug, Clone)]
pub(crate) struct Urls {
    /// `http://127.0.0.1:P` (a vault is a path segment below it).
    pub keyvault: String,
    pub arm: String,
    /// Including `/v1.0`.
    pub graph: String,
    pub authority: String,
    /// The full IMDS token URL.
    pub imds: String,
    /// The full App Service `IDENTITY_ENDPOINT`.
    pub identity: String,
}

/// Settings tests turn to provoke specific behaviour.
#[derive(Debug, Clone)]
pub(crate) struct Knobs {
    /// Most Key Vault list items per page, whatever `maxresults` asks (1–25).
    pub kv_page_size: usize,
    /// Whether each Key Vault listing starts with an empty page that has a `nextLink`.
    pub kv_empty_first_page: bool,
    /// How long a new Graph password takes to work at the token endpoint.
    pub propagation_delay_ms: i64,
    /// Lifetime of issued access tokens.
    pub token_lifetime_secs: i64,
    /// Most objects per Graph listing page, whatever `$top` says (1–999).
    pub graph_page_size: usize,
    /// Most vaults per ARM listing page, whatever `$top` says.
    pub arm_page_size: usize,
    /// Vaults whose firewall refuses this client (403 `ForbiddenByFirewall`).
    pub kv_firewalled: std::collections::BTreeSet<String>,
    /// The tenant's app management policy limits password lifetimes to this many days
    /// (`maxLifetime` `P<n>D`): `addPassword` refuses a longer one. `None`: no limit.
    pub password_lifetime_days: Option<i64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            kv_page_size: 25,
            kv_empty_first_page: false,
            propagation_delay_ms: 0,
            token_lifetime_secs: 3599,
            graph_page_size: 999,
            arm_page_size: 1000,
            kv_firewalled: std::collections::BTreeSet::new(),
            password_lifetime_days: None,
        }
    }
}

/// Everything mutable.
#[derive(Debug)]
pub(crate) struct State {
    pub vaults: Vaults,
    /// Opt-in per-vault throttling and latency.
    pub kv_limits: VaultLimits,
    pub sites: Sites,
    pub accounts: Accounts,
    pub apps: Apps,
    /// Opt-in throttling of Graph listings that select `keyCredentials`.
    pub graph_limits: KeyCredentialLimit,
    /// Key Vault resources ARM lists, by subscription.
    pub kv_resources: VaultResources,
    pub principals: Principals,
    /// Every access token the fake issued; resource servers accept no other.
    pub tokens: HashSet<String>,
    pub effects: Vec<Effect>,
    pub requests: Vec<RequestLog>,
    pub faults: FaultBook,
    pub knobs: Knobs,
}

/// What the services share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub urls: Urls,
    /// The home tenant: the one Key Vault's challenge names and resources accept tokens from.
    pub tenant: String,
    /// The App Service `IDENTITY_HEADER` value.
    pub identity_header: String,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(clock: Arc<dyn Clock>, urls: Urls, tenant: String) -> Self {
        Self {
            clock,
            urls,
            tenant,
            identity_header: super::ids::random_uuid(),
            state: Mutex::new(State {
                vaults: Vaults::default(),
                kv_limits: VaultLimits::default(),
                sites: Sites::default(),
                accounts: Accounts::default(),
                apps: Apps::default(),
                graph_limits: KeyCredentialLimit::default(),
                kv_resources: VaultResources::default(),
                principals: Principals::new(),
                tokens: HashSet::new(),
                effects: Vec::new(),
                requests: Vec::new(),
                faults: FaultBook::default(),
                knobs: Knobs::default(),
            }),
        }
    }

    /// The state, even if a panicking test thread poisoned the lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Unix seconds, the unit of Key Vault attributes and token claims.
    pub(crate) fn now_s(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }

    pub(crate) fn record(&self, effect: Effect) {
        self.lock().effects.push(effect);
    }

    /// Issues (and remembers) an app-only token for `aud`.
    pub(crate) fn issue_token(
        &self,
        aud: &str,
        tid: &str,
        appid: &str,
        oid: &str,
    ) -> (String, Claims) {
        let now = self.now_s();
        let mut state = self.lock();
        let claims = Claims::app_only(aud, tid, appid, oid, now, state.knobs.token_lifetime_secs);
        let token = jwt::encode(&claims);
        state.tokens.insert(token.clone());
        (token, claims)
    }

    /// Reads `req` and logs it; returns the request and its log index.
    pub(crate) async fn receive(&self, service: Service, req: Request) -> (Incoming, usize) {
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
        let incoming = Incoming::read(req).await;
        let mut state = self.lock();
        state
            .requests
            .push(RequestLog::new(service, &path, &incoming));
        (incoming, state.requests.len() - 1)
    }

    /// Logs the outcome of request `log` and hands axum the response — or, for a severed
    /// reply, severs `conn` so that response is never written.
    pub(crate) fn respond(&self, log: usize, reply: Reply, conn: &Conn) -> Response {
        if reply.sever {
            conn.sever();
        } else if let Some(entry) = self.lock().requests.get_mut(log) {
            entry.status = Some(reply.response.status().as_u16());
        }
        reply.response
    }
}
