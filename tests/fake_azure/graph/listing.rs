//! Graph's collection listings: `GET /v1.0/applications` and `GET /v1.0/servicePrincipals`
//! (contract §10.1).
//!
//! - `$select` narrows each object (unknown properties: 400); `$top` is 1–999 (default
//!   100; anything else 400); `$skip` is 400 on these collections; `$filter` supports
//!   `appId eq '…'` only here; `$count`, `$search` and `$orderby` need the header
//!   `ConsistencyLevel: eventual` (400 without it), and `$count=true` adds `@odata.count`.
//! - Pages: `@odata.nextLink` is absolute and keeps every query option, plus an opaque
//!   `$skiptoken` (one the fake did not issue is 400). A page-size knob makes pages smaller
//!   than `$top`, as Graph may.
//! - Throttling, opt-in: listings that select `keyCredentials` (explicitly or by default)
//!   count against a per-tenant window, as Graph throttles them harder (about 150 a
//!   minute); over it, 429 `TooManyRequests` with `Retry-After` in seconds, not counted.
//!
//! Order of checks: route, bearer (401), query (400), throttling (429), faults and denial
//! (403 `Authorization_RequestDenied`), then the page.

use std::collections::VecDeque;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::super::faults::{self, Gate, Route};
use super::super::http::{self, Incoming, Reply, with_header};
use super::super::state::Shared;
use super::wire::{
    ODATA_JSON, PRINCIPAL_PROPERTIES, PROPERTIES, application_full, error, narrowed,
    principal_full, selection, status,
};

/// Graph's default and largest page sizes.
pub const TOP_DEFAULT: usize = 100;
pub const TOP_MAX: usize = 999;

/// Which collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Applications,
    ServicePrincipals,
}

impl Collection {
    /// The collection named by a path segment.
    pub fn parse(segment: &str) -> Option<Self> {
        if segment.eq_ignore_ascii_case("applications") {
            Some(Self::Applications)
        } else if segment.eq_ignore_ascii_case("servicePrincipals") {
            Some(Self::ServicePrincipals)
        } else {
            None
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Applications => "applications",
            Self::ServicePrincipals => "servicePrincipals",
        }
    }

    fn route(self) -> Route {
        match self {
            Self::Applications => Route::GraphListApplications,
            Self::ServicePrincipals => Route::GraphListServicePrincipals,
        }
    }

    fn properties(self) -> (&'static [&'static str], &'static str) {
        match self {
            Self::Applications => (PROPERTIES, "application"),
            Self::ServicePrincipals => (PRINCIPAL_PROPERTIES, "servicePrincipal"),
        }
    }
}

/// The opt-in `keyCredentials` throttle (one home tenant, so one window).
#[derive(Debug, Default)]
pub(crate) struct KeyCredentialLimit {
    rate: Option<(u32, i64)>,
    /// Arrival times (fake clock, ms) of the listings served within the window.
    served: VecDeque<i64>,
    throttled: u64,
}

impl KeyCredentialLimit {
    pub(crate) fn set(&mut self, limit: u32, window_ms: u64) {
        self.rate = Some((limit, i64::try_from(window_ms).unwrap_or(i64::MAX)));
        self.served.clear();
    }

    pub(crate) fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Counts a listing at `now_ms`, or refuses it with the `Retry-After` seconds.
    fn admit(&mut self, now_ms: i64) -> Option<u64> {
        let (limit, window) = self.rate?;
        while self.served.front().is_some_and(|&t| t + window <= now_ms) {
            self.served.pop_front();
        }
        if self.served.len() < limit as usize {
            self.served.push_back(now_ms);
            return None;
        }
        self.throttled += 1;
        let oldest = self.served.front().copied().unwrap_or(now_ms);
        let wait = u64::try_from((oldest + window - now_ms).max(1)).unwrap_or(1);
        Some(wait.div_ceil(1000))
    }
}

fn bad_request(shared: &Shared, incoming: &Incoming, code: &str, message: &str) -> Reply {
    error(shared, incoming, StatusCode::BAD_REQUEST, code, message).into()
}

/// Serves a listing of `collection` (the bearer token has been checked).
pub(crate) async fn serve(shared: &Shared, incoming: &Incoming, collection: Collection) -> Reply {
    let (known, type_name) = collection.properties();
    let names = match selection(incoming.query_one("$select"), known, type_name) {
        Ok(n) => n,
        Err(message) => return bad_request(shared, incoming, "BadRequest", &message),
    };
    let top = match incoming.query_one("$top") {
        None => TOP_DEFAULT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=TOP_MAX).contains(&n) => n,
            _ => {
                let message = format!(
                    "Invalid page size specified: '{raw}'. Must be between 1 and {TOP_MAX} inclusive."
                );
                return bad_request(shared, incoming, "Request_UnsupportedQuery", &message);
            }
        },
    };
    if incoming.query_one("$skip").is_some() {
        return bad_request(
            shared,
            incoming,
            "Request_BadRequest",
            "'$skip' is not supported by the service.",
        );
    }
    let advanced = ["$count", "$search", "$orderby"]
        .into_iter()
        .find(|q| incoming.query_one(q).is_some());
    let eventual = incoming
        .header("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    if let Some(q) = advanced
        && !eventual
    {
        let message = format!(
            "{q} is an advanced query: send the header 'ConsistencyLevel: eventual' with it."
        );
        return bad_request(shared, incoming, "Request_UnsupportedQuery", &message);
    }
    if incoming.query_one("$search").is_some() || incoming.query_one("$orderby").is_some() {
        return error(
            shared,
            incoming,
            StatusCode::NOT_IMPLEMENTED,
            "NotImplementedByFake",
            "The fake Graph does not implement $search or $orderby.",
        )
        .into();
    }
    let filter = match incoming.query_one("$filter") {
        None => None,
        Some(f) => match app_id_filter(f) {
            Some(id) => Some(id),
            None => {
                let message = format!("Unsupported or invalid query filter clause: '{f}'.");
                return bad_request(shared, incoming, "Request_UnsupportedQuery", &message);
            }
        },
    };
    let offset = match incoming.query_one("$skiptoken") {
        None => 0,
        Some(t) => match decode_token(t, collection) {
            Some(o) => o,
            None => {
                return bad_request(
                    shared,
                    incoming,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                );
            }
        },
    };
    let selects_keys = names.as_ref().is_none_or(|n| n.contains(&"keyCredentials"));
    if selects_keys {
        let now = shared.now_ms();
        if let Some(secs) = shared.lock().graph_limits.admit(now) {
            let response = error(
                shared,
                incoming,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests. Please retry after the time in the Retry-After header.",
            );
            return with_header(response, "retry-after", &secs.to_string()).into();
        }
    }
    match faults::gate(shared, collection.route()).await {
        Gate::Denied => error(
            shared,
            incoming,
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
        .into(),
        Gate::Status(code) => status(shared, incoming, code).into(),
        Gate::Throttle(secs) => {
            let response = error(
                shared,
                incoming,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests. Please retry after the time in the Retry-After header.",
            );
            with_header(response, "retry-after", &secs.to_string()).into()
        }
        Gate::Proceed { sever } => Reply {
            response: page(
                shared,
                incoming,
                collection,
                names.as_deref(),
                top,
                offset,
                filter.as_deref(),
            ),
            sever,
        },
    }
}

/// `appId eq '…'`, the one filter this fake understands.
fn app_id_filter(f: &str) -> Option<String> {
    let rest = f.trim().strip_prefix("appId eq '")?;
    Some(rest.strip_suffix('\'')?.to_owned())
}

fn page(
    shared: &Shared,
    incoming: &Incoming,
    collection: Collection,
    names: Option<&[&str]>,
    top: usize,
    offset: usize,
    filter: Option<&str>,
) -> Response {
    let graph = &shared.urls.graph;
    let (all, page_size) = {
        let state = shared.lock();
        let objects: Vec<Value> = match collection {
            Collection::Applications => state
                .apps
                .all()
                .filter(|a| filter.is_none_or(|f| a.app_id.eq_ignore_ascii_case(f)))
                .map(application_full)
                .collect(),
            Collection::ServicePrincipals => state
                .apps
                .principals()
                .filter(|p| filter.is_none_or(|f| p.app_id.eq_ignore_ascii_case(f)))
                .map(principal_full)
                .collect(),
        };
        (objects, state.knobs.graph_page_size)
    };
    let size = top.min(page_size.max(1));
    let start = offset.min(all.len());
    let end = (start + size).min(all.len());
    let value: Vec<Value> = all[start..end].iter().map(|o| narrowed(o, names)).collect();
    let context = match names {
        Some(n) => format!("{graph}/$metadata#{}({})", collection.path(), n.join(",")),
        None => format!("{graph}/$metadata#{}", collection.path()),
    };
    let mut body = json!({ "@odata.context": context, "value": value });
    if incoming.query_one("$count") == Some("true") {
        body["@odata.count"] = json!(all.len());
    }
    if end < all.len() {
        body["@odata.nextLink"] = json!(next_link(graph, incoming, collection, end));
    }
    http::json_typed(StatusCode::OK, &body, ODATA_JSON)
}

/// The request's own URL with every query option kept and the skip token replaced.
fn next_link(graph: &str, incoming: &Incoming, collection: Collection, offset: usize) -> String {
    let mut query: Vec<String> = incoming
        .query
        .iter()
        .filter(|(k, _)| k != "$skiptoken")
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    query.push(format!("$skiptoken={}", encode_token(offset, collection)));
    format!("{graph}/{}?{}", collection.path(), query.join("&"))
}

/// Percent-encodes what a query value cannot hold as is (keeps `,` `'` `$` readable).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b','
            | b'$'
            | b'\''
            | b'('
            | b')' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Opaque, like Graph's `RFNwdAIAAQAAAB…` tokens.
fn encode_token(offset: usize, collection: Collection) -> String {
    let marker = json!({ "offset": offset, "of": collection.path() });
    format!("RFNwd{}", URL_SAFE_NO_PAD.encode(marker.to_string()))
}

fn decode_token(token: &str, collection: Collection) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(token.strip_prefix("RFNwd")?).ok()?;
    let marker: Value = serde_json::from_slice(&raw).ok()?;
    (marker["of"] == collection.path())
        .then(|| marker["offset"].as_u64())
        .flatten()
        .and_then(|o| usize::try_from(o).ok())
}
