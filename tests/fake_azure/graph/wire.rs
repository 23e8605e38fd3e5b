//! Graph's JSON: `passwordCredential`, the `application` resource (with `$select`), and
//! Graph's error body — `innerError` in camelCase with `date`, `request-id` and
//! `client-request-id`, unlike Key Vault's `innererror`.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::super::bearer::Rejected;
use super::super::http::{self, Incoming, with_header};
use super::super::ids;
use super::super::state::Shared;
use super::store::{App, PasswordCred};

/// The content type of Graph's successful JSON responses.
pub const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Properties `$select` may name.
pub const PROPERTIES: &[&str] = &[
    "id",
    "appId",
    "displayName",
    "signInAudience",
    "keyCredentials",
    "passwordCredentials",
];

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
    let passwords: Vec<Value> = app
        .passwords
        .iter()
        .map(|c| Value::Object(credential(c, false)))
        .collect();
    let full = json!({
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": format!("app {}", app.app_id),
        "signInAudience": "AzureADMyOrg",
        "keyCredentials": [],
        "passwordCredentials": passwords,
    });
    let Some(select) = select else {
        let mut body = full;
        body["@odata.context"] = json!(format!("{graph}/$metadata#applications/$entity"));
        return Ok(body);
    };
    let mut body = Map::new();
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(known) = PROPERTIES.iter().find(|p| p.eq_ignore_ascii_case(name)) else {
            return Err(format!(
                "Could not find a property named '{name}' on type 'microsoft.graph.application'."
            ));
        };
        body.insert((*known).to_owned(), full[*known].clone());
        names.push(*known);
    }
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{graph}/$metadata#applications({})/$entity",
            names.join(",")
        )),
    );
    Ok(Value::Object(body))
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
