//! Fake Azure Resource Manager: App Service app settings (`Microsoft.Web`), storage account
//! keys (`Microsoft.Storage`) and the listing of a subscription's Key Vaults ([`vaults`]),
//! at the contract's paths below `http://127.0.0.1:P`.
//!
//! ARM matches its fixed path segments and resource names case-insensitively, so the fake
//! does too. Order of checks: route (501 if not implemented), bearer token (401 with
//! `WWW-Authenticate`), `api-version` (400), faults and denial (403 `AuthorizationFailed`,
//! which ARM decides before the resource provider looks for the resource), existence (404),
//! then the body and the operation.

pub(crate) mod appsettings;
mod errors;
pub(crate) mod storage;
pub(crate) mod vaults;

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::bearer::{self, Rejected};
use super::effects::Effect;
use super::faults::{self, Gate, Route};
use super::http::{self, Incoming, Reply};
use super::ids;
use super::requests::Service;
use super::server::Conn;
use super::state::{Shared, State as FakeState};
use appsettings::SiteKey;
use errors::{
    authorization_failed, cloud_error, decorate, resource_not_found, status, throttled,
    unauthorized,
};
use storage::AccountKey;

/// The audiences ARM accepts (its own error message lists these four).
pub const AUDIENCES: &[&str] = &[
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];

/// Stable `Microsoft.Web` api-versions accepted for sites/config.
pub const WEB_API_VERSIONS: &[&str] = &[
    "2016-08-01",
    "2018-02-01",
    "2018-11-01",
    "2019-08-01",
    "2020-06-01",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-01-15",
    "2021-02-01",
    "2021-03-01",
    "2022-03-01",
    "2022-09-01",
    "2023-01-01",
    "2023-12-01",
    "2024-04-01",
    "2024-11-01",
    "2025-03-01",
];

/// Stable `Microsoft.Storage` api-versions accepted for storageAccounts.
pub const STORAGE_API_VERSIONS: &[&str] = &[
    "2016-12-01",
    "2017-06-01",
    "2018-02-01",
    "2019-06-01",
    "2021-04-01",
    "2021-09-01",
    "2022-05-01",
    "2022-09-01",
    "2023-01-01",
    "2023-04-01",
    "2023-05-01",
    "2024-01-01",
    "2025-01-01",
    "2025-06-01",
];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::Arm, req).await;
    let mut reply = serve(&shared, &incoming).await;
    reply.response = decorate(reply.response, &incoming);
    shared.respond(log, reply, &conn)
}

/// What a request addresses, with names as the client spelled them (for ids and messages).
#[derive(Debug)]
enum Op {
    AppSettingsList(Site),
    AppSettingsPut(Site),
    StorageListKeys(Account),
    StorageRegenerateKey(Account),
}

#[derive(Debug)]
struct Site {
    sub: String,
    rg: String,
    site: String,
    slot: Option<String>,
}

impl Site {
    fn key(&self) -> SiteKey {
        SiteKey::new(&self.sub, &self.rg, &self.site, self.slot.as_deref())
    }

    /// The settings resource id (also the RBAC scope).
    fn settings_id(&self) -> String {
        let slot = self
            .slot
            .as_ref()
            .map(|s| format!("/slots/{s}"))
            .unwrap_or_default();
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/sites/{}{slot}/config/appsettings",
            self.sub, self.rg, self.site
        )
    }
}

#[derive(Debug)]
struct Account {
    sub: String,
    rg: String,
    account: String,
}

impl Account {
    fn key(&self) -> AccountKey {
        AccountKey::new(&self.sub, &self.rg, &self.account)
    }

    fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
            self.sub, self.rg, self.account
        )
    }
}

impl Op {
    fn route(&self) -> Route {
        match self {
            Op::AppSettingsList(_) => Route::AppSettingsList,
            Op::AppSettingsPut(_) => Route::AppSettingsPut,
            Op::StorageListKeys(_) => Route::StorageListKeys,
            Op::StorageRegenerateKey(_) => Route::StorageRegenerateKey,
        }
    }

    /// The RBAC action the operation needs.
    fn action(&self) -> &'static str {
        match self {
            Op::AppSettingsList(_) => "Microsoft.Web/sites/config/list/action",
            Op::AppSettingsPut(_) => "Microsoft.Web/sites/config/write",
            Op::StorageListKeys(_) => "Microsoft.Storage/storageAccounts/listkeys/action",
            Op::StorageRegenerateKey(_) => "Microsoft.Storage/storageAccounts/regeneratekey/action",
        }
    }

    fn scope(&self) -> String {
        match self {
            Op::AppSettingsList(s) | Op::AppSettingsPut(s) => s.settings_id(),
            Op::StorageListKeys(a) | Op::StorageRegenerateKey(a) => a.id(),
        }
    }

    fn sub(&self) -> &str {
        match self {
            Op::AppSettingsList(s) | Op::AppSettingsPut(s) => &s.sub,
            Op::StorageListKeys(a) | Op::StorageRegenerateKey(a) => &a.sub,
        }
    }

    fn api_versions(&self) -> (&'static [&'static str], &'static str) {
        match self {
            Op::AppSettingsList(_) | Op::AppSettingsPut(_) => (WEB_API_VERSIONS, "sites"),
            Op::StorageListKeys(_) | Op::StorageRegenerateKey(_) => {
                (STORAGE_API_VERSIONS, "storageAccounts")
            }
        }
    }
}

fn parse(incoming: &Incoming) -> Option<Op> {
    let seg: Vec<&str> = incoming.segments.iter().map(String::as_str).collect();
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let m = &incoming.method;
    let [s, sub, g, rg, p, ns, rest @ ..] = seg.as_slice() else {
        return None;
    };
    if !(is(s, "subscriptions") && is(g, "resourceGroups") && is(p, "providers")) {
        return None;
    }
    let (sub, rg) = ((*sub).to_owned(), (*rg).to_owned());
    if is(ns, "Microsoft.Web") {
        let (site, slot, tail) = match rest {
            [t, site, sl, slot, tail @ ..] if is(t, "sites") && is(sl, "slots") => {
                (*site, Some((*slot).to_owned()), tail)
            }
            [t, site, tail @ ..] if is(t, "sites") => (*site, None, tail),
            _ => return None,
        };
        let site = Site {
            sub,
            rg,
            site: site.to_owned(),
            slot,
        };
        return match tail {
            [c, a, l] if is(c, "config") && is(a, "appsettings") && is(l, "list") => {
                (m == Method::POST).then_some(Op::AppSettingsList(site))
            }
            [c, a] if is(c, "config") && is(a, "appsettings") => {
                (m == Method::PUT).then_some(Op::AppSettingsPut(site))
            }
            _ => None,
        };
    }
    if is(ns, "Microsoft.Storage") {
        let [t, account, action] = rest else {
            return None;
        };
        let account = Account {
            sub,
            rg,
            account: (*account).to_owned(),
        };
        if !is(t, "storageAccounts") || m != Method::POST {
            return None;
        }
        if is(action, "listKeys") {
            return Some(Op::StorageListKeys(account));
        }
        if is(action, "regenerateKey") {
            return Some(Op::StorageRegenerateKey(account));
        }
    }
    None
}

async fn serve(shared: &Shared, incoming: &Incoming) -> Reply {
    if let Some(sub) = vaults::target(incoming) {
        return match bearer::check(shared, incoming, AUDIENCES) {
            Ok(claims) => vaults::serve(shared, incoming, &claims, &sub).await,
            Err(why) => unauthorized(shared, &why).into(),
        };
    }
    let Some(op) = parse(incoming) else {
        let message = format!(
            "The fake ARM does not implement {} /{}",
            incoming.method,
            incoming.segments.join("/")
        );
        return cloud_error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplementedByFake",
            &message,
        )
        .into();
    };
    let claims = match bearer::check(shared, incoming, AUDIENCES) {
        Ok(c) => c,
        Err(why) => return unauthorized(shared, &why).into(),
    };
    if let Err(r) = api_version(incoming, &op) {
        return (*r).into();
    }
    match faults::gate(shared, op.route()).await {
        Gate::Denied => authorization_failed(&claims, op.action(), &op.scope()).into(),
        Gate::Status(401) => unauthorized(shared, &Rejected::NotIssued).into(),
        Gate::Status(code) => status(code).into(),
        Gate::Throttle(secs) => throttled(&claims, op.sub(), secs).into(),
        Gate::Proceed { sever } => {
            let response = execute(shared, incoming, &op);
            let hold = shared.lock().faults.take_hold(op.route());
            if let Some(ms) = hold {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Reply { response, sever }
        }
    }
}

fn execute(shared: &Shared, incoming: &Incoming, op: &Op) -> Response {
    let now = ids::timestamp(shared.now_ms());
    let mut guard = shared.lock();
    let state = &mut *guard;
    if let Err(r) = group_exists(state, op) {
        return *r;
    }
    match op {
        Op::AppSettingsList(site) => {
            // IIS in front of ARM refuses a body-less POST without a length.
            let has_length = incoming.headers.contains_key("content-length")
                || incoming.headers.contains_key("transfer-encoding");
            if !has_length {
                return cloud_error(
                    StatusCode::LENGTH_REQUIRED,
                    "LengthRequired",
                    "A POST request must carry a Content-Length header (send Content-Length: 0).",
                );
            }
            match state.sites.get(&site.key()) {
                Some(settings) => http::json(
                    StatusCode::OK,
                    &appsettings::string_dictionary(
                        &site.settings_id(),
                        site.slot.is_some(),
                        settings,
                    ),
                ),
                None => site_not_found(site),
            }
        }
        Op::AppSettingsPut(site) => {
            if state.sites.get(&site.key()).is_none() {
                return site_not_found(site);
            }
            let new = match appsettings::parse_put(incoming.json()) {
                Ok(n) => n,
                Err(message) => {
                    return cloud_error(StatusCode::BAD_REQUEST, "InvalidRequestContent", &message);
                }
            };
            let keys_changed = state.sites.replace(&site.key(), new.clone());
            state.effects.push(Effect::AppSettingsReplaced {
                site: site.site.to_ascii_lowercase(),
                slot: site.slot.as_deref().map(str::to_ascii_lowercase),
                keys_changed,
            });
            let body =
                appsettings::string_dictionary(&site.settings_id(), site.slot.is_some(), &new);
            http::json(StatusCode::OK, &body)
        }
        Op::StorageListKeys(account) => match state.accounts.get(&account.key()) {
            Some(keys) => {
                let kerb = incoming.query_one("$expand") == Some("kerb");
                http::json(StatusCode::OK, &storage::list_keys_result(keys, kerb))
            }
            None => account_not_found(account),
        },
        Op::StorageRegenerateKey(account) => {
            if state.accounts.get(&account.key()).is_none() {
                return account_not_found(account);
            }
            let Some(name) = storage::parse_regenerate(incoming.json()) else {
                return cloud_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidValuesForRequestParameters",
                    "Values for request parameters are invalid: keyName.",
                );
            };
            state.accounts.regenerate(&account.key(), name, now);
            state.effects.push(Effect::StorageKeyRegenerated {
                account: account.account.to_ascii_lowercase(),
                key_name: name.to_owned(),
            });
            let keys = state.accounts.get(&account.key()).expect("checked above");
            http::json(
                StatusCode::OK,
                &storage::list_keys_result(keys, name.starts_with("kerb")),
            )
        }
    }
}

/// 404 `SubscriptionNotFound` / `ResourceGroupNotFound` when nothing was seeded there.
fn group_exists(state: &FakeState, op: &Op) -> Result<(), Box<Response>> {
    let (sub, rg) = match op {
        Op::AppSettingsList(s) | Op::AppSettingsPut(s) => (&s.sub, &s.rg),
        Op::StorageListKeys(a) | Op::StorageRegenerateKey(a) => (&a.sub, &a.rg),
    };
    let (sub_l, rg_l) = (sub.to_ascii_lowercase(), rg.to_ascii_lowercase());
    let in_group = |s: &str, g: &str| state.sites.in_group(s, g) || state.accounts.in_group(s, g);
    let sub_known = state.sites.in_sub(&sub_l) || state.accounts.in_sub(&sub_l);
    if !sub_known {
        let message = format!("The subscription '{sub}' could not be found.");
        return Err(Box::new(cloud_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &message,
        )));
    }
    if !in_group(&sub_l, &rg_l) {
        let message = format!("Resource group '{rg}' could not be found.");
        return Err(Box::new(cloud_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            &message,
        )));
    }
    Ok(())
}

fn site_not_found(site: &Site) -> Response {
    let (kind, name) = match &site.slot {
        Some(slot) => ("Microsoft.Web/sites/slots", format!("{}/{slot}", site.site)),
        None => ("Microsoft.Web/sites", site.site.clone()),
    };
    resource_not_found(kind, &name, &site.rg)
}

fn account_not_found(account: &Account) -> Response {
    resource_not_found(
        "Microsoft.Storage/storageAccounts",
        &account.account,
        &account.rg,
    )
}

fn api_version(incoming: &Incoming, op: &Op) -> Result<(), Box<Response>> {
    let (accepted, kind) = op.api_versions();
    match incoming.query_one("api-version") {
        None => Err(Box::new(cloud_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ))),
        Some(v) if accepted.contains(&v) => Ok(()),
        Some(v) => {
            let message = format!(
                "No registered resource provider found for location 'westeurope' and API \
                 version '{v}' for type '{kind}'. The supported api-versions are '{}'.",
                accepted.join(", ")
            );
            Err(Box::new(cloud_error(
                StatusCode::BAD_REQUEST,
                "NoRegisteredProviderFound",
                &message,
            )))
        }
    }
}
