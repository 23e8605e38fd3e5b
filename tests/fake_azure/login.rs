//! Fake Microsoft identity platform (the "authority", `http://127.0.0.1:P`): the v2
//! client-credentials token endpoint and the OpenID discovery document that points at it.
//!
//! A client secret is valid if it was registered with `register_client`, or if it is a live
//! Graph password of the application whose `appId` is the client id and it has propagated
//! (see `set_propagation_delay_ms`): so a test can prove that a password rekey created through
//! Graph really authenticates, and that an old one really stopped working.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::assertion;
use super::faults::{self, Gate, Route};
use super::http::{self, Incoming, Reply, with_header};
use super::ids;
use super::requests::Service;
use super::server::Conn;
use super::state::Shared;

/// The resources (token audiences) the fake authority issues tokens for.
pub const RESOURCES: &[&str] = &[
    "https://vault.azure.net",
    "https://management.azure.com",
    "https://management.azure.com/",
    "https://management.core.windows.net",
    "https://management.core.windows.net/",
    "https://graph.microsoft.com",
    "https://storage.azure.com",
];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::Login, req).await;
    let reply = serve(&shared, &incoming).await;
    shared.respond(log, reply, &conn)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Token,
    Discovery,
    Keys,
}

async fn serve(shared: &Shared, incoming: &Incoming) -> Reply {
    let seg: Vec<&str> = incoming.segments.iter().map(String::as_str).collect();
    let m = &incoming.method;
    let (tenant, op) = match seg.as_slice() {
        [t, "oauth2", "v2.0", "token"] if m == Method::POST => (*t, Op::Token),
        [t, "v2.0", ".well-known", "openid-configuration"] if m == Method::GET => {
            (*t, Op::Discovery)
        }
        [t, "discovery", "v2.0", "keys"] if m == Method::GET => (*t, Op::Keys),
        _ => {
            let message = format!(
                "The fake authority does not implement {m} /{}.",
                incoming.segments.join("/")
            );
            return aad_error(
                shared,
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request",
                900_561,
                &message,
            )
            .into();
        }
    };
    let known = shared
        .lock()
        .principals
        .knows_tenant(&shared.tenant, tenant);
    if !known {
        let message = format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud."
        );
        return aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90_002,
            &message,
        )
        .into();
    }
    match op {
        Op::Token => token(shared, incoming, tenant).await,
        Op::Keys => http::json(StatusCode::OK, &json!({ "keys": [] })).into(),
        Op::Discovery => match faults::gate(shared, Route::OpenIdConfiguration).await {
            Gate::Proceed { sever } => Reply {
                response: http::json(StatusCode::OK, &discovery(&shared.urls.authority, tenant)),
                sever,
            },
            other => fault_response(shared, other).into(),
        },
    }
}

/// The client-credentials grant.
async fn token(shared: &Shared, incoming: &Incoming, tenant: &str) -> Reply {
    let is_form = incoming
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let form: BTreeMap<String, String> = if is_form {
        url::form_urlencoded::parse(&incoming.body)
            .into_owned()
            .collect()
    } else {
        BTreeMap::new()
    };
    let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let missing = |name: &str| {
        let message = format!("The request body must contain the following parameter: '{name}'.");
        aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            &message,
        )
    };
    let Some(grant_type) = param("grant_type") else {
        return missing("grant_type").into();
    };
    if grant_type != "client_credentials" {
        let message = format!("The app requested an unsupported grant type '{grant_type}'.");
        return aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            &message,
        )
        .into();
    }
    let Some(client_id) = param("client_id") else {
        return missing("client_id").into();
    };
    let Some(scope) = param("scope") else {
        return missing("scope").into();
    };
    let resource = match resource_of(scope) {
        Ok(r) => r,
        Err((error, code, message)) => {
            return aad_error(shared, StatusCode::BAD_REQUEST, error, code, &message).into();
        }
    };
    if !RESOURCES.contains(&resource) {
        let message = format!(
            "The resource principal named {resource} was not found in the tenant named {tenant}. \
             This can happen if the application has not been installed by the administrator of \
             the tenant or consented to by any user in the tenant."
        );
        return aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500_011,
            &message,
        )
        .into();
    }
    let sever = match faults::gate(shared, Route::Token).await {
        Gate::Proceed { sever } => sever,
        Gate::Denied => {
            let message = format!("Application '{client_id}'({client_id}) is disabled.");
            return aad_error(
                shared,
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                7_000_112,
                &message,
            )
            .into();
        }
        other => return fault_response(shared, other).into(),
    };
    let principal = match authenticate(
        shared,
        tenant,
        client_id,
        param("client_secret"),
        param("client_assertion").map(|a| (param("client_assertion_type"), a)),
    ) {
        Ok(p) => p,
        Err(response) => return (*response).into(),
    };
    // The token's tenant is the one asked; only the home tenant's tokens open resources.
    let tid = if tenant.eq_ignore_ascii_case(&shared.tenant) {
        shared.tenant.clone()
    } else {
        tenant.to_ascii_lowercase()
    };
    let (token, claims) = shared.issue_token(resource, &tid, client_id, &principal);
    let lifetime = claims.exp - claims.iat;
    let body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    Reply {
        response: http::json(StatusCode::OK, &body),
        sever,
    }
}

/// The resource of a v2 `scope`: exactly one `{resource}/.default`.
fn resource_of(scope: &str) -> Result<&str, (&'static str, u32, String)> {
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    let [single] = scopes.as_slice() else {
        return Err((
            "invalid_scope",
            70_011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    };
    single.strip_suffix("/.default").ok_or_else(|| {
        (
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {single} is not valid. Client credential flows \
                 must have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        )
    })
}

/// Checks the client's secret; returns the `oid` its tokens carry.
fn authenticate(
    shared: &Shared,
    tenant: &str,
    client_id: &str,
    secret: Option<&str>,
    assertion: Option<(Option<&str>, &str)>,
) -> Result<String, Box<Response>> {
    let now_ms = shared.now_ms();
    let state = shared.lock();
    let registered = state.principals.client(tenant, client_id);
    let app = tenant
        .eq_ignore_ascii_case(&shared.tenant)
        .then(|| state.apps.by_app_id(client_id))
        .flatten();
    if registered.is_none() && app.is_none() {
        let message = format!(
            "Application with identifier '{client_id}' was not found in the directory \
             '{tenant}'. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You may \
             have sent your authentication request to the wrong tenant."
        );
        return Err(Box::new(aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            &message,
        )));
    }
    let Some(secret) = secret else {
        if let Some((kind, jwt)) = assertion {
            let fail = |status, error, code, message: &str| {
                Box::new(aad_error(shared, status, error, code, message))
            };
            if kind != Some(assertion::TYPE) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    700_027,
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                ));
            }
            let federated = registered.map_or(&[][..], |c| &c.federated[..]);
            if !federated.is_empty() && !assertion::has_x5t(jwt) {
                return match assertion::check_federated(jwt, federated, now_ms / 1000) {
                    Ok(()) => Ok(registered.map_or_else(String::new, |c| c.principal_id.clone())),
                    Err(assertion::Rejected { code, message }) => Err(fail(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        code,
                        &message,
                    )),
                };
            }
            let certificates = registered.map_or(&[][..], |c| &c.certificates[..]);
            let audience = format!("{}/{tenant}/oauth2/v2.0/token", shared.urls.authority);
            return match assertion::check(jwt, client_id, &audience, certificates, now_ms / 1000) {
                Ok(()) => Ok(registered.map_or_else(String::new, |c| c.principal_id.clone())),
                Err(assertion::Rejected { code, message }) => Err(fail(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    code,
                    &message,
                )),
            };
        }
        return Err(Box::new(aad_error(
            shared,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )));
    };
    if let Some(client) = registered.filter(|c| c.secrets.iter().any(|s| s == secret)) {
        return Ok(client.principal_id.clone());
    }
    if let Some(app) = app
        && let Some(cred) = app.passwords.iter().find(|p| p.secret_text == secret)
    {
        if cred.end.as_millisecond() <= now_ms {
            let message =
                format!("The provided client secret keys for app '{client_id}' are expired.");
            return Err(Box::new(aad_error(
                shared,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_222,
                &message,
            )));
        }
        if cred.usable_from_ms <= now_ms && cred.start.as_millisecond() <= now_ms {
            return Ok(app.principal_id.clone());
        }
    }
    let message = format!(
        "Invalid client secret provided. Ensure the secret being sent in the request is the \
         client secret value, not the client secret ID, for a secret added to app '{client_id}'."
    );
    Err(Box::new(aad_error(
        shared,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7_000_215,
        &message,
    )))
}

/// The OpenID Connect discovery document, its endpoints on the fake authority.
fn discovery(authority: &str, tenant: &str) -> Value {
    let base = format!("{authority}/{tenant}");
    json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "ver", "oid"],
        "kerberos_endpoint": format!("{base}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    })
}

/// An injected fault at the authority.
fn fault_response(shared: &Shared, gate: Gate) -> Response {
    match gate {
        Gate::Throttle(secs) => {
            let response = aad_error(
                shared,
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90_055,
                "The tenant is being throttled due to too many requests. Retry after the time in the Retry-After header.",
            );
            with_header(response, "retry-after", &secs.to_string())
        }
        Gate::Status(code) if code >= 500 => aad_error(
            shared,
            http::status(code),
            "server_error",
            50_000,
            "There was an error issuing a token or an issue with our sign-in service.",
        ),
        Gate::Status(code) => aad_error(
            shared,
            http::status(code),
            "invalid_request",
            90_000,
            "Injected failure.",
        ),
        Gate::Denied | Gate::Proceed { .. } => aad_error(
            shared,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            7_000_112,
            "Application is disabled.",
        ),
    }
}

/// The identity platform's error body (`error`, `error_description` starting `AADSTS<n>:`,
/// `error_codes`, trace and correlation ids).
fn aad_error(
    shared: &Shared,
    status: StatusCode,
    error: &str,
    code: u32,
    description: &str,
) -> Response {
    let now = ids::timestamp(shared.now_ms());
    let timestamp = now.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    let (trace, correlation) = (ids::random_uuid(), ids::random_uuid());
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {}",
            ids::azure_time(now)
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("{}/error?code={code}", shared.urls.authority),
    });
    http::json(status, &body)
}
