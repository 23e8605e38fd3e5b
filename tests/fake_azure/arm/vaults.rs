//! Key Vault resources as ARM lists them (contract §10.2):
//! `GET /subscriptions/{sub}/providers/Microsoft.KeyVault/vaults?api-version=…[&$top=N]`.
//!
//! Each vault is `{id, name, type, location, tags, properties: {vaultUri, tenantId, …}}`
//! with `vaultUri` ending in `/`; pages carry an absolute `nextLink` that keeps the
//! api-version and `$top` and adds an opaque `$skiptoken`. A page-size knob forces pages.
//!
//! Order of checks (after the bearer token): api-version (400), faults and denial (403
//! `AuthorizationFailed` on `Microsoft.KeyVault/vaults/read`), the subscription (404
//! `SubscriptionNotFound` when nothing was seeded there), `$top` and `$skiptoken` (400),
//! then the page.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::super::faults::{self, Gate, Route};
use super::super::http::{self, Incoming, Reply};
use super::super::jwt::Claims;
use super::super::state::Shared;
use super::errors::{authorization_failed, cloud_error, status, throttled};

/// Stable `Microsoft.KeyVault` api-versions accepted for vaults.
pub const KEYVAULT_API_VERSIONS: &[&str] = &[
    "2019-09-01",
    "2021-10-01",
    "2022-07-01",
    "2023-02-01",
    "2023-07-01",
    "2024-11-01",
    "2025-05-01",
];

/// One vault resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultResource {
    pub sub: String,
    pub rg: String,
    pub name: String,
    /// Where its data plane answers (the fake's Key Vault, or anything a test wants).
    pub vault_uri: String,
    pub tenant_id: String,
}

/// Every seeded vault resource, by lower-cased subscription, in seeding order.
#[derive(Debug, Default)]
pub(crate) struct VaultResources(BTreeMap<String, Vec<VaultResource>>);

impl VaultResources {
    pub(crate) fn seed(&mut self, v: VaultResource) {
        let list = self.0.entry(v.sub.to_ascii_lowercase()).or_default();
        list.retain(|x| !x.name.eq_ignore_ascii_case(&v.name));
        list.push(v);
    }

    pub(crate) fn in_sub(&self, sub: &str) -> bool {
        self.0.contains_key(&sub.to_ascii_lowercase())
    }

    fn of(&self, sub: &str) -> Vec<VaultResource> {
        self.0
            .get(&sub.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }
}

/// The subscription of a vault listing request, if it is one.
pub(crate) fn target(incoming: &Incoming) -> Option<String> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    match incoming
        .segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [s, sub, p, ns, v]
            if is(s, "subscriptions")
                && is(p, "providers")
                && is(ns, "Microsoft.KeyVault")
                && is(v, "vaults")
                && incoming.method == axum::http::Method::GET =>
        {
            Some((*sub).to_owned())
        }
        _ => None,
    }
}

/// Serves a vault listing of `sub` for `claims`.
pub(crate) async fn serve(
    shared: &Shared,
    incoming: &Incoming,
    claims: &Claims,
    sub: &str,
) -> Reply {
    match incoming.query_one("api-version") {
        Some(v) if KEYVAULT_API_VERSIONS.contains(&v) => {}
        Some(v) => {
            let message = format!(
                "No registered resource provider found for location 'westeurope' and API \
                 version '{v}' for type 'vaults'. The supported api-versions are '{}'.",
                KEYVAULT_API_VERSIONS.join(", ")
            );
            return cloud_error(
                StatusCode::BAD_REQUEST,
                "NoRegisteredProviderFound",
                &message,
            )
            .into();
        }
        None => {
            return cloud_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
            .into();
        }
    }
    let scope = format!("/subscriptions/{sub}");
    match faults::gate(shared, Route::ArmListVaults).await {
        Gate::Denied => {
            authorization_failed(claims, "Microsoft.KeyVault/vaults/read", &scope).into()
        }
        Gate::Status(code) => status(code).into(),
        Gate::Throttle(secs) => throttled(claims, sub, secs).into(),
        Gate::Proceed { sever } => Reply {
            response: page(shared, incoming, sub),
            sever,
        },
    }
}

fn page(shared: &Shared, incoming: &Incoming, sub: &str) -> Response {
    let (vaults, known, page_size) = {
        let state = shared.lock();
        let sub_l = sub.to_ascii_lowercase();
        let known = state.kv_resources.in_sub(sub)
            || state.sites.in_sub(&sub_l)
            || state.accounts.in_sub(&sub_l);
        (state.kv_resources.of(sub), known, state.knobs.arm_page_size)
    };
    if !known {
        let message = format!("The subscription '{sub}' could not be found.");
        return cloud_error(StatusCode::NOT_FOUND, "SubscriptionNotFound", &message);
    }
    let top = match incoming.query_one("$top") {
        None => None,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                let message = format!("The value '{raw}' of query parameter '$top' is invalid.");
                return cloud_error(StatusCode::BAD_REQUEST, "InvalidTopParameter", &message);
            }
        },
    };
    let offset = match incoming.query_one("$skiptoken") {
        None => 0,
        Some(t) => match URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("vaults:")?.parse::<usize>().ok())
        {
            Some(o) => o,
            None => {
                return cloud_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSkipToken",
                    "The skip token is invalid.",
                );
            }
        },
    };
    let size = top.unwrap_or(usize::MAX).min(page_size.max(1));
    let start = offset.min(vaults.len());
    let end = start.saturating_add(size).min(vaults.len());
    let value: Vec<Value> = vaults[start..end].iter().map(resource).collect();
    let mut body = json!({ "value": value });
    if end < vaults.len() {
        let mut link = format!(
            "{}/subscriptions/{sub}/providers/Microsoft.KeyVault/vaults?api-version={}",
            shared.urls.arm,
            incoming.query_one("api-version").unwrap_or_default()
        );
        if let Some(t) = top {
            link.push_str(&format!("&$top={t}"));
        }
        link.push_str(&format!(
            "&$skiptoken={}",
            URL_SAFE_NO_PAD.encode(format!("vaults:{end}"))
        ));
        body["nextLink"] = json!(link);
    }
    http::json(StatusCode::OK, &body)
}

fn resource(v: &VaultResource) -> Value {
    json!({
        "id": format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            v.sub, v.rg, v.name
        ),
        "name": v.name,
        "type": "Microsoft.KeyVault/vaults",
        "location": "westeurope",
        "tags": {},
        "properties": {
            "sku": { "family": "A", "name": "standard" },
            "tenantId": v.tenant_id,
            "vaultUri": v.vault_uri,
            "enabledForDeployment": false,
            "enableSoftDelete": true,
            "softDeleteRetentionInDays": 90,
            "enableRbacAuthorization": true,
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled"
        }
    })
}
