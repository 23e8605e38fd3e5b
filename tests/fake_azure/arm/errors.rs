//! ARM's error responses: `CloudError` bodies with ARM's codes, its bearer challenge, and
//! the correlation headers every ARM response carries.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::super::bearer::Rejected;
use super::super::http::{self, Incoming, with_header};
use super::super::ids;
use super::super::jwt::{Claims, issuer};
use super::super::state::Shared;
use super::AUDIENCES;

pub fn resource_not_found(kind: &str, name: &str, rg: &str) -> Response {
    let message = format!(
        "The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more \
         details please go to https://aka.ms/ARMResourceNotFoundFix"
    );
    cloud_error(StatusCode::NOT_FOUND, "ResourceNotFound", &message)
}

/// ARM's `{"error":{"code","message"}}`.
pub fn cloud_error(status: StatusCode, code: &str, message: &str) -> Response {
    http::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// 401 with ARM's `WWW-Authenticate` and the code for what was wrong with the token.
pub fn unauthorized(shared: &Shared, why: &Rejected) -> Response {
    let tenant = &shared.tenant;
    let (code, message) = match why {
        Rejected::Missing => (
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".to_owned(),
        ),
        Rejected::Malformed => (
            "InvalidAuthenticationToken",
            "The access token is invalid.".to_owned(),
        ),
        Rejected::NotIssued => (
            "InvalidAuthenticationToken",
            "The access token has an invalid signature.".to_owned(),
        ),
        Rejected::Expired { exp } => (
            "ExpiredAuthenticationToken",
            format!(
                "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                ids::azure_time(ids::timestamp(exp * 1000)),
                ids::azure_time(ids::timestamp(shared.now_ms()))
            ),
        ),
        Rejected::WrongAudience { found } => (
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{found}'. \
                 It should exactly match with one of the allowed audiences '{}'.",
                AUDIENCES.join("','")
            ),
        ),
        Rejected::WrongTenant { found } => (
            "InvalidAuthenticationTokenTenant",
            format!(
                "The access token is from the wrong issuer '{}'. It must match the tenant '{}' \
                 associated with this subscription. Please use the authority (URL) \
                 '{}/{tenant}' to get the token.",
                issuer(found),
                issuer(tenant),
                shared.urls.authority
            ),
        ),
    };
    let description = if *why == Rejected::Missing {
        "The authentication failed because of missing 'Authorization' header."
    } else {
        "The access token is invalid."
    };
    let challenge = format!(
        "Bearer authorization_uri=\"{}/{tenant}\", error=\"invalid_token\", \
         error_description=\"{description}\"",
        shared.urls.authority
    );
    with_header(
        cloud_error(StatusCode::UNAUTHORIZED, code, &message),
        "www-authenticate",
        &challenge,
    )
}

/// 403 `AuthorizationFailed` naming the caller, the action and the scope.
pub fn authorization_failed(claims: &Claims, action: &str, scope: &str) -> Response {
    let message = format!(
        "The client '{}' with object id '{}' does not have authorization to perform action \
         '{}' over scope '{}' or the scope is invalid. If access was recently granted, please \
         refresh your credentials.",
        claims.appid, claims.oid, action, scope
    );
    cloud_error(StatusCode::FORBIDDEN, "AuthorizationFailed", &message)
}

/// 429 with `Retry-After`, as ARM's subscription throttling answers a write.
pub fn throttled(claims: &Claims, sub: &str, secs: u64) -> Response {
    let message = format!(
        "Number of 'write' requests for subscription '{}' actor '{}' exceeded. Please try \
         again after '{secs}' seconds after additional tokens are available. Refer to \
         https://aka.ms/arm-throttling",
        sub, claims.oid
    );
    let response = cloud_error(
        StatusCode::TOO_MANY_REQUESTS,
        "SubscriptionRequestsThrottled",
        &message,
    );
    with_header(response, "retry-after", &secs.to_string())
}

/// An injected failure with status `code` and a `CloudError` body.
pub fn status(code: u16) -> Response {
    let (name, message) = match code {
        400 => ("BadRequest", "The request is invalid."),
        403 => (
            "AuthorizationFailed",
            "The client does not have authorization.",
        ),
        404 => ("ResourceNotFound", "The resource was not found."),
        409 => (
            "Conflict",
            "The request conflicts with the current state of the resource.",
        ),
        429 => ("TooManyRequests", "Too many requests."),
        500 => ("InternalServerError", "Encountered internal server error."),
        502 => ("BadGateway", "The gateway received an invalid response."),
        503 => ("ServiceUnavailable", "The service is unavailable."),
        504 => (
            "GatewayTimeout",
            "The gateway did not receive a response in time.",
        ),
        _ => ("Error", "Injected failure."),
    };
    cloud_error(http::status(code), name, message)
}

/// ARM's correlation headers on every response (the client's correlation id echoed).
pub fn decorate(response: Response, incoming: &Incoming) -> Response {
    let request_id = ids::random_uuid();
    let correlation = incoming
        .header("x-ms-correlation-request-id")
        .map_or_else(ids::random_uuid, str::to_owned);
    let response = with_header(response, "x-ms-request-id", &request_id);
    let response = with_header(response, "x-ms-correlation-request-id", &correlation);
    with_header(
        response,
        "x-ms-ratelimit-remaining-subscription-writes",
        "199",
    )
}
