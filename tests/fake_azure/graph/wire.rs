//! Graph's JSON: `passwordCredential`, `keyCredential`, the `application` and
//! `servicePrincipal` resources (with `$select`), and
//! Graph's error body — `innerError` in camelCase with `date`, `request-id` and
//! `client-request-id`, unlike Key Vault's `innererror`.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::super::bearer::Rejected;
use super::super::http::{self, Incoming, with_header};
use super::super::ids;
use super::super::state::Shared;
use super::store::{App, KeyCred, PasswordCred, ServicePrincipal};

/// The content type of Graph's successful JSON responses.
pub const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Properties `$select` may name on an application.
pub const PROPERTIES: &[&str] = &[
    "id",
    "appId",
    "displayName",
    "signInAudience",
    "keyCredentials",
    "passwordCredentials",
    "tags",
];

/// Properties `$select` may name on a service principal.
pub const PRINCIPAL_PROPERTIES: &[&str] = &[
    "id",
    "appId",
    "displayName",
    "servicePrincipalType",
    "accountEnabled",
    "keyCredentials",
    "passwordCredentials",
    "tags",
];

/// A `keyCredential` as lists show it: `customKeyIdentifier` in base64, `key` null (Graph
/// returns the key only when one object is read with `$select=keyCredentials`).
pub fn key_credential(c: &KeyCred) -> Value {
    use base64::Engine as _;
    json!({
        "customKeyIdentifier": base64::engine::general_purpose::STANDARD.encode(&c.custom_key_identifier),
        "displayName": c.display_name,
        "endDateTime": ids::azure_time(c.end),
        "key": null,
        "keyId": c.key_id,
        "startDateTime": ids::azure_time(c.start),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    })
}

/// Every property of an application.
pub fn application_full(app: &App) -> Value {
    let passwords: Vec<Value> = app
        .passwords
        .iter()
        .map(|c| Value::Object(credential(c, false)))
        .collect();
    let keys: Vec<Value> = app.keys.iter().map(key_credential).collect();
    json!({
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "signInAudience": "AzureADMyOrg",
        "keyCredentials": keys,
        "passwordCredentials": passwords,
        "tags": app.tags,
    })
}

/// Every property of a service principal.
pub fn principal_full(sp: &ServicePrincipal) -> Value {
    let passwords: Vec<Value> = sp
        .passwords
        .iter()
        .map(|c| Value::Object(credential(c, false)))
        .collect();
    let keys: Vec<Value> = sp.keys.iter().map(key_credential).collect();
    json!({
        "id": sp.object_id,
        "appId": sp.app_id,
        "displayName": sp.display_name,
        "servicePrincipalType": sp.principal_type,
        "accountEnabled": true,
        "keyCredentials": keys,
        "passwordCredentials": passwords,
        "tags": [],
    })
}

/// `$select` as a list of known property names (in `known`'s spelling), or the 400 message.
pub fn selection<'a>(
    select: Option<&str>,
    known: &[&'a str],
    type_name: &str,
) -> Result<Option<Vec<&'a str>>, String> {
    let Some(select) = select else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(k) = known.iter().find(|p| p.eq_ignore_ascii_case(name)) else {
            return Err(format!(
                "Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'."
            ));
        };
        names.push(*k);
    }
    Ok(Some(names))
}

/// `full` narrowed to `names` (all of it when `None`).
pub fn narrowed(full: &Value, names: Option<&[&str]>) -> Value {
    match names {
        None => full.clone(),
        Some(names) => Value::Object(
            names
                .iter()
                .map(|n| ((*n).to_owned(), full[*n].clone()))
                .collect(),
        ),
    }
}

/// A `passwordCredential`; `secretText` only when just created.
pub fn credential(c: &PasswordCred, with_secret: bool) -> Map<String, Value> {
    let secret = if with_secret {
        json!(c.secret_text)
    } else {
        Value::Null
    };
    let Value::Object(m) = json!({
        "customKeyIdentifier": null,
        "displayName": c.display_name,
        "endDateTime": ids::azure_time(c.end),
        "hint": c.hint,
        "keyId": c.key_id,
        "secretText": secret,
        "startDateTime": ids::azure_time(c.start),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    m
}

/// The application resource, narrowed to `$select` if given.
pub fn application(graph: &str, app: &App, select: Option<&str>) -> Result<Value, String> {
    let full = application_full(app);
    let Some(names) = selection(select, PROPERTIES, "application")? else {
        let mut body = full;
        body["@odata.context"] = json!(format!("{graph}/$metadata#applications/$entity"));
        return Ok(body);
    };
    let mut body = narrowed(&full, Some(&names));
    body["@odata.context"] = json!(format!(
        "{graph}/$metadata#applications({})/$entity",
        names.join(",")
    ));
    Ok(body)
}

/// Graph's error body, with `innerError` (camelCase) and the request ids.
pub fn error(
    shared: &Shared,
    incoming: &Incoming,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    let date = ids::timestamp(shared.now_ms())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let client_request_id = incoming
        .header("client-request-id")
        .map_or_else(ids::random_uuid, str::to_owned);
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": date,
                "request-id": ids::random_uuid(),
                "client-request-id": client_request_id,
            }
        }
    });
    http::json(status, &body)
}

/// 401 `InvalidAuthenticationToken` with Graph's challenge.
pub fn unauthorized(shared: &Shared, incoming: &Incoming, why: &Rejected) -> Response {
    let message = match why {
        Rejected::Missing => "Access token is empty.",
        Rejected::Malformed => "IDX14100: JWT is not well formed, there are no dots (.).",
        Rejected::NotIssued => "Access token validation failure. Invalid signature.",
        Rejected::Expired { .. } => "Lifetime validation failed, the token is expired.",
        Rejected::WrongAudience { .. } => "Access token validation failure. Invalid audience.",
        Rejected::WrongTenant { .. } => "Access token validation failure. Invalid issuer.",
    };
    let response = error(
        shared,
        incoming,
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    );
    let challenge = format!(
        "Bearer realm=\"\", authorization_uri=\"{}/common/oauth2/authorize\", \
         client_id=\"00000003-0000-0000-c000-000000000000\"",
        shared.urls.authority
    );
    with_header(response, "www-authenticate", &challenge)
}

/// An injected failure with status `code` and Graph's error body.
pub fn status(shared: &Shared, incoming: &Incoming, code: u16) -> Response {
    let (name, message) = match code {
        400 => ("BadRequest", "The request is invalid."),
        403 => (
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        404 => ("Request_ResourceNotFound", "The resource does not exist."),
        409 => ("Conflict", "The request conflicts with the current state."),
        429 => ("TooManyRequests", "Too many requests."),
        500 => ("generalException", "An unexpected error occurred."),
        502 => ("BadGateway", "Bad gateway."),
        503 => (
            "serviceNotAvailable",
            "The service is temporarily unavailable.",
        ),
        504 => ("UnknownError", "Gateway timeout."),
        _ => ("UnknownError", "Injected failure."),
    };
    error(shared, incoming, http::status(code), name, message)
}
