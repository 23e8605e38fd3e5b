//! Fake Microsoft Graph (`http://127.0.0.1:P/v1.0`): applications' password credentials —
//! `addPassword`, `removePassword` and reading `passwordCredentials` — by object id or by
//! `applications(appId='…')`; the listings of applications and service principals
//! with their password and certificate credentials ([`listing`]); and the tenant's
//! `policies/defaultAppManagementPolicy`, whose password lifetime limit (a knob)
//! `addPassword` enforces.
//!
//! Graph's error body differs from Key Vault's and ARM's: `innerError` (camelCase) with
//! `date`, `request-id` and `client-request-id`. Order of checks: route (501), bearer (401),
//! faults and denial (403 `Authorization_RequestDenied`), the application (404), the body.

pub(crate) mod listing;
pub(crate) mod store;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use jiff::ToSpan as _;
use serde_json::{Map, Value, json};

use super::bearer::{self, Rejected};
use super::effects::Effect;
use super::faults::{self, Gate, Route};
use super::http::{self, Incoming, Reply, with_header};
use super::ids;
use super::requests::Service;
use super::server::Conn;
use super::state::Shared;
use store::PasswordCred;
use wire::{ODATA_JSON, application, credential, error, status, unauthorized};

/// The audiences Graph accepts: its URI and its well-known application id.
pub const AUDIENCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
    "00000003-0000-0000-c000-000000000000",
];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::Graph, req).await;
    let mut reply = serve(&shared, &incoming).await;
    reply.response = with_header(reply.response, "request-id", &ids::random_uuid());
    shared.respond(log, reply, &conn)
}

/// How the request names the application.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppRef {
    ObjectId(String),
    AppId(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    AddPassword,
    RemovePassword,
}

impl Op {
    fn route(self) -> Route {
        match self {
            Op::Get => Route::GraphGetApplication,
            Op::AddPassword => Route::GraphAddPassword,
            Op::RemovePassword => Route::GraphRemovePassword,
        }
    }
}

fn parse(incoming: &Incoming) -> Option<(AppRef, Op)> {
    let seg: Vec<&str> = incoming.segments.iter().map(String::as_str).collect();
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let (app, rest) = match seg.as_slice() {
        ["v1.0", a, id, rest @ ..] if is(a, "applications") => {
            (AppRef::ObjectId((*id).to_owned()), rest)
        }
        ["v1.0", key, rest @ ..] => {
            let inner = key
                .strip_prefix("applications(appId='")
                .or_else(|| key.strip_prefix("applications(appid='"))?;
            (AppRef::AppId(inner.strip_suffix("')")?.to_owned()), rest)
        }
        _ => return None,
    };
    let op = match (rest, &incoming.method) {
        ([], &Method::GET) => Op::Get,
        ([a], &Method::POST) if is(a, "addPassword") => Op::AddPassword,
        ([a], &Method::POST) if is(a, "removePassword") => Op::RemovePassword,
        _ => return None,
    };
    Some((app, op))
}

/// `GET /v1.0/applications` or `/v1.0/servicePrincipals` (a trailing slash allowed).
fn listing(incoming: &Incoming) -> Option<listing::Collection> {
    match incoming.segments.as_slice() {
        [v, c] | [v, c, _] if v == "v1.0" && incoming.method == Method::GET => {
            if incoming.segments.get(2).is_some_and(|s| !s.is_empty()) {
                return None;
            }
            listing::Collection::parse(c)
        }
        _ => None,
    }
}

/// `GET /v1.0/policies/defaultAppManagementPolicy`: the shape Graph documents
/// (`applicationRestrictions.passwordCredentials[]` with `restrictionType` and an ISO 8601
/// `maxLifetime`); disabled and empty unless a lifetime limit is set.
fn default_policy(shared: &Shared) -> Response {
    let days = shared.lock().knobs.password_lifetime_days;
    let restrictions: Vec<Value> = days
        .map(|d| {
            json!({
                "restrictionType": "passwordLifetime",
                "maxLifetime": format!("P{d}D"),
                "restrictForAppsCreatedAfterDateTime": "2019-01-01T00:00:00Z",
            })
        })
        .into_iter()
        .collect();
    let body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/defaultAppManagementPolicy/$entity",
        "id": "00000000-0000-0000-0000-000000000000",
        "displayName": "Default app management tenant policy",
        "description": "Default tenant policy that enforces app management restrictions on applications and service principals.",
        "isEnabled": days.is_some(),
        "applicationRestrictions": {"passwordCredentials": restrictions, "keyCredentials": []},
        "servicePrincipalRestrictions": {"passwordCredentials": [], "keyCredentials": []},
    });
    http::json(StatusCode::OK, &body)
}

async fn serve(shared: &Shared, incoming: &Incoming) -> Reply {
    let is_policy = incoming.method == Method::GET
        && matches!(incoming.segments.as_slice(), [v, p, d]
            if v == "v1.0" && p == "policies" && d.eq_ignore_ascii_case("defaultAppManagementPolicy"));
    if is_policy {
        if let Err(why) = bearer::check(shared, incoming, AUDIENCES) {
            return unauthorized(shared, incoming, &why).into();
        }
        return default_policy(shared).into();
    }
    if let Some(collection) = listing(incoming) {
        if let Err(why) = bearer::check(shared, incoming, AUDIENCES) {
            return unauthorized(shared, incoming, &why).into();
        }
        return listing::serve(shared, incoming, collection).await;
    }
    let Some((app, op)) = parse(incoming) else {
        let message = format!(
            "The fake Graph does not implement {} /{}",
            incoming.method,
            incoming.segments.join("/")
        );
        return error(
            shared,
            incoming,
            StatusCode::NOT_IMPLEMENTED,
            "NotImplementedByFake",
            &message,
        )
        .into();
    };
    if let Err(why) = bearer::check(shared, incoming, AUDIENCES) {
        return unauthorized(shared, incoming, &why).into();
    }
    if let AppRef::ObjectId(id) = &app
        && uuid::Uuid::parse_str(id).is_err()
    {
        let message = format!("Invalid object identifier '{id}'.");
        return error(
            shared,
            incoming,
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            &message,
        )
        .into();
    }
    match faults::gate(shared, op.route()).await {
        Gate::Denied => error(
            shared,
            incoming,
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
        .into(),
        Gate::Status(401) => unauthorized(shared, incoming, &Rejected::NotIssued).into(),
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
            response: execute(shared, incoming, &app, op),
            sever,
        },
    }
}

fn execute(shared: &Shared, incoming: &Incoming, app: &AppRef, op: Op) -> Response {
    let now_ms = shared.now_ms();
    let mut guard = shared.lock();
    let state = &mut *guard;
    let found = match app {
        AppRef::ObjectId(id) => state.apps.by_object_id(id),
        AppRef::AppId(id) => state.apps.by_app_id(id),
    };
    let Some(object_id) = found.map(|a| a.object_id.clone()) else {
        let id = match app {
            AppRef::ObjectId(id) | AppRef::AppId(id) => id,
        };
        let message = format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects \
             are not present."
        );
        return error(
            shared,
            incoming,
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &message,
        );
    };
    let app = state.apps.get_mut(&object_id).expect("found above");
    match op {
        Op::Get => match application(&shared.urls.graph, app, incoming.query_one("$select")) {
            Ok(body) => http::json_typed(StatusCode::OK, &body, ODATA_JSON),
            Err(message) => error(
                shared,
                incoming,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &message,
            ),
        },
        Op::AddPassword => {
            let delay = state.knobs.propagation_delay_ms;
            let limit = state.knobs.password_lifetime_days;
            let cred = match new_password(incoming, now_ms, delay) {
                // The policy's limit (the exact service text is not documented; the code
                // and the refusal are what clients rely on).
                Ok(c)
                    if limit.is_some_and(|days| {
                        c.end.as_second() - c.start.as_second() > days * 86_400
                    }) =>
                {
                    let message = format!(
                        "Credential lifetime exceeds the max value allowed as per assigned policy ({} days).",
                        limit.unwrap_or_default()
                    );
                    return error(
                        shared,
                        incoming,
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        &message,
                    );
                }
                Ok(c) => c,
                Err(message) => {
                    return error(
                        shared,
                        incoming,
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        &message,
                    );
                }
            };
            let mut body = credential(&cred, true);
            body.insert(
                "@odata.context".into(),
                json!(format!(
                    "{}/$metadata#microsoft.graph.passwordCredential",
                    shared.urls.graph
                )),
            );
            app.passwords.push(cred.clone());
            state.effects.push(Effect::GraphPasswordAdded {
                object_id: object_id.clone(),
                key_id: cred.key_id,
                display_name: cred.display_name,
            });
            http::json_typed(StatusCode::OK, &Value::Object(body), ODATA_JSON)
        }
        Op::RemovePassword => {
            let key_id = incoming
                .json()
                .and_then(|b| b.get("keyId").and_then(Value::as_str).map(str::to_owned))
                .filter(|k| uuid::Uuid::parse_str(k).is_ok());
            let Some(key_id) = key_id else {
                return error(
                    shared,
                    incoming,
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Invalid value specified for property 'keyId' of resource 'PasswordCredential'.",
                );
            };
            if !app.remove_password(&key_id) {
                let message = format!("No password credential found with keyId '{key_id}'.");
                return error(
                    shared,
                    incoming,
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    &message,
                );
            }
            state.effects.push(Effect::GraphPasswordRemoved {
                object_id,
                key_id: key_id.to_ascii_lowercase(),
            });
            http::empty(StatusCode::NO_CONTENT)
        }
    }
}

/// A new credential from an `addPassword` body (which may be empty): start defaults to now,
/// end to start + 2 years.
fn new_password(incoming: &Incoming, now_ms: i64, delay_ms: i64) -> Result<PasswordCred, String> {
    let body = if incoming.body.is_empty() {
        Value::Object(Map::new())
    } else {
        incoming.json().filter(Value::is_object).ok_or(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and \
             payload is of valid JSON format.",
        )?
    };
    let cred = body
        .get("passwordCredential")
        .cloned()
        .unwrap_or(Value::Null);
    let field = |name: &str| cred.get(name).and_then(Value::as_str).map(str::to_owned);
    let invalid = |name: &str| {
        format!("Invalid value specified for property '{name}' of resource 'PasswordCredential'.")
    };
    let time = |name: &str| -> Result<Option<jiff::Timestamp>, String> {
        field(name)
            .map(|t| t.parse::<jiff::Timestamp>().map_err(|_| invalid(name)))
            .transpose()
    };
    let start = time("startDateTime")?.unwrap_or(ids::timestamp(now_ms));
    let end = match time("endDateTime")? {
        Some(end) => end,
        None => start
            .to_zoned(jiff::tz::TimeZone::UTC)
            .checked_add(2.years())
            .map_err(|_| invalid("endDateTime"))?
            .timestamp(),
    };
    if end <= start {
        return Err(invalid("endDateTime"));
    }
    let secret_text = ids::graph_secret_text();
    Ok(PasswordCred {
        key_id: ids::random_uuid(),
        display_name: field("displayName"),
        hint: secret_text.chars().take(3).collect(),
        secret_text,
        start,
        end,
        usable_from_ms: now_ms + delay_ms,
    })
}
