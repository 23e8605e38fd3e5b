//! Fake managed-identity token sources: Azure IMDS (`GET /metadata/identity/oauth2/token`,
//! header `Metadata: true`) and the App Service identity endpoint (`IDENTITY_ENDPOINT`,
//! header `X-IDENTITY-HEADER`). Both take a v1 `resource` (no `/.default`) and answer with
//! expiry times as *strings*, unlike the v2 endpoint — exactly where clients trip.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::faults::{self, Gate, Route};
use super::http::{self, Incoming, Reply, with_header};
use super::ids;
use super::login::RESOURCES;
use super::principals::Identity;
use super::requests::Service;
use super::server::Conn;
use super::state::Shared;

/// The path of the IMDS token endpoint.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// The path of the App Service identity endpoint.
pub const IDENTITY_PATH: &str = "/msi/token";
/// IMDS's identity api-version.
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// The App Service identity endpoint's api-version (with `X-IDENTITY-HEADER`).
pub const IDENTITY_API_VERSION: &str = "2019-08-01";

pub(crate) fn imds_router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(imds).with_state(shared)
}

pub(crate) fn identity_router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(identity).with_state(shared)
}

async fn imds(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::Imds, req).await;
    let reply = serve_imds(&shared, &incoming).await;
    shared.respond(log, reply, &conn)
}

async fn identity(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::AppServiceIdentity, req).await;
    let reply = serve_identity(&shared, &incoming).await;
    shared.respond(log, reply, &conn)
}

/// IMDS's error body.
fn imds_error(status: StatusCode, error: &str, description: &str) -> Response {
    http::json(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

/// The App Service identity endpoint's error body.
fn identity_error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "correlationId": ids::random_uuid(),
    });
    http::json(status, &body)
}

fn path_is(incoming: &Incoming, path: &str) -> bool {
    incoming.method == Method::GET && format!("/{}", incoming.segments.join("/")) == path
}

/// The resource asked for, or why it is unacceptable (`Err((error, description))`).
fn resource(incoming: &Incoming) -> Result<String, (&'static str, String)> {
    let Some(resource) = incoming.query_one("resource").filter(|r| !r.is_empty()) else {
        return Err((
            "invalid_request",
            "Required query variable 'resource' is missing".to_owned(),
        ));
    };
    if !RESOURCES.contains(&resource) {
        return Err((
            "invalid_resource",
            format!(
                "AADSTS500011: The resource principal named {resource} was not found in the \
                 tenant. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    Ok(resource.to_owned())
}

/// The identity named by `client_id`/`object_id`/`principal_id`/`mi_res_id`/`msi_res_id`.
fn named_identity(shared: &Shared, incoming: &Incoming) -> Option<Identity> {
    let client_id = incoming.query_one("client_id");
    let object_id = incoming
        .query_one("object_id")
        .or_else(|| incoming.query_one("principal_id"));
    let resource_id = incoming
        .query_one("mi_res_id")
        .or_else(|| incoming.query_one("msi_res_id"));
    if resource_id.is_some() {
        // Resource ids are not modelled; name user-assigned identities by client id.
        return None;
    }
    shared
        .lock()
        .principals
        .identity(client_id, object_id)
        .cloned()
}

async fn serve_imds(shared: &Shared, incoming: &Incoming) -> Reply {
    if !path_is(incoming, IMDS_PATH) {
        return imds_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "The fake IMDS serves only the identity token endpoint.",
        )
        .into();
    }
    if incoming.header("metadata") != Some("true") {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "bad_request_102",
            "Required metadata header not specified",
        )
        .into();
    }
    match incoming.query_one("api-version") {
        Some(IMDS_API_VERSION) => {}
        Some(_) | None => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Bad request. api-version was not specified in the request, or is not supported.",
            )
            .into();
        }
    }
    let resource = match resource(incoming) {
        Ok(r) => r,
        Err((error, description)) => {
            return imds_error(StatusCode::BAD_REQUEST, error, &description).into();
        }
    };
    let Some(identity) = named_identity(shared, incoming) else {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        )
        .into();
    };
    let sever = match faults::gate(shared, Route::Imds).await {
        Gate::Proceed { sever } => sever,
        Gate::Denied => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            )
            .into();
        }
        Gate::Throttle(secs) => {
            let response = imds_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests to the Instance Metadata Service.",
            );
            return with_header(response, "retry-after", &secs.to_string()).into();
        }
        Gate::Status(code) => {
            return imds_error(http::status(code), "unknown_error", "Injected failure.").into();
        }
    };
    let body = token_body(shared, &identity, &resource, true);
    Reply {
        response: http::json(StatusCode::OK, &body),
        sever,
    }
}

async fn serve_identity(shared: &Shared, incoming: &Incoming) -> Reply {
    if !path_is(incoming, IDENTITY_PATH) {
        return identity_error(StatusCode::NOT_FOUND, "Not found.").into();
    }
    if incoming.header("x-identity-header") != Some(shared.identity_header.as_str()) {
        return identity_error(
            StatusCode::UNAUTHORIZED,
            "The X-IDENTITY-HEADER request header is missing or does not match IDENTITY_HEADER.",
        )
        .into();
    }
    if incoming.query_one("api-version") != Some(IDENTITY_API_VERSION) {
        let message =
            format!("Only api-version {IDENTITY_API_VERSION} is supported with X-IDENTITY-HEADER.");
        return identity_error(StatusCode::BAD_REQUEST, &message).into();
    }
    let resource = match resource(incoming) {
        Ok(r) => r,
        Err((_, description)) => {
            return identity_error(StatusCode::BAD_REQUEST, &description).into();
        }
    };
    let Some(identity) = named_identity(shared, incoming) else {
        return identity_error(
            StatusCode::BAD_REQUEST,
            "Unable to load the requested managed identity.",
        )
        .into();
    };
    let sever = match faults::gate(shared, Route::IdentityEndpoint).await {
        Gate::Proceed { sever } => sever,
        Gate::Denied => {
            return identity_error(
                StatusCode::BAD_REQUEST,
                "Unable to load the requested managed identity.",
            )
            .into();
        }
        Gate::Throttle(secs) => {
            let response = identity_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests.");
            return with_header(response, "retry-after", &secs.to_string()).into();
        }
        Gate::Status(code) => {
            return identity_error(http::status(code), "Injected failure.").into();
        }
    };
    let body = token_body(shared, &identity, &resource, false);
    Reply {
        response: http::json(StatusCode::OK, &body),
        sever,
    }
}

/// A token response with every number as a string. IMDS adds `expires_in`, `not_before` and
/// `refresh_token`; App Service adds `client_id`.
fn token_body(shared: &Shared, identity: &Identity, resource: &str, imds: bool) -> Value {
    let (token, claims) = shared.issue_token(
        resource,
        &shared.tenant,
        &identity.client_id,
        &identity.principal_id,
    );
    if imds {
        json!({
            "access_token": token,
            "refresh_token": "",
            "expires_in": (claims.exp - claims.iat).to_string(),
            "expires_on": claims.exp.to_string(),
            "not_before": claims.nbf.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        })
    } else {
        json!({
            "access_token": token,
            "expires_on": claims.exp.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        })
    }
}
