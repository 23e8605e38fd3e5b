//! Key Vault's JSON: `SecretBundle`, `SecretItem`, `DeletedSecretBundle` and `KeyVaultError`,
//! with the exact property names of the 2025-07-01 OpenAPI (`contentType`, integer-second
//! `attributes`, lower-case `innererror`).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::super::bearer::Rejected;
use super::super::http::{self, with_header};
use super::super::jwt::{Claims, issuer};
use super::store::{Cert, KvVersion, Secret};

/// Every vault in the fake is a default vault: soft delete on, 90 days, purge allowed.
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
const RECOVERABLE_DAYS: i64 = 90;

fn attributes(v: &KvVersion) -> Value {
    let mut a = Map::new();
    a.insert("enabled".into(), json!(v.enabled));
    if let Some(nbf) = v.nbf {
        a.insert("nbf".into(), json!(nbf));
    }
    if let Some(exp) = v.exp {
        a.insert("exp".into(), json!(exp));
    }
    a.insert("created".into(), json!(v.created));
    a.insert("updated".into(), json!(v.updated));
    a.insert("recoveryLevel".into(), json!(RECOVERY_LEVEL));
    a.insert("recoverableDays".into(), json!(RECOVERABLE_DAYS));
    Value::Object(a)
}

/// The fields a bundle and an item share; `id` is passed in (items of `GET /secrets` carry
/// no version).
fn common(id: &str, v: &KvVersion) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    if let Some(ct) = &v.content_type {
        m.insert("contentType".into(), json!(ct));
    }
    m.insert("attributes".into(), attributes(v));
    if !v.tags.is_empty() {
        m.insert("tags".into(), json!(v.tags));
    }
    if v.managed {
        m.insert("managed".into(), json!(true));
    }
    m
}

/// `CertificateItem` of `GET /certificates`: the versionless id, `x5t` (base64url of the
/// SHA-1 thumbprint), attributes and tags.
pub fn certificate_item(base: &str, c: &Cert) -> Value {
    use base64::Engine as _;
    let mut a = Map::new();
    a.insert("enabled".into(), json!(c.enabled));
    if let Some(nbf) = c.nbf {
        a.insert("nbf".into(), json!(nbf));
    }
    if let Some(exp) = c.exp {
        a.insert("exp".into(), json!(exp));
    }
    a.insert("created".into(), json!(c.created));
    a.insert("updated".into(), json!(c.updated));
    a.insert("recoveryLevel".into(), json!(RECOVERY_LEVEL));
    a.insert("recoverableDays".into(), json!(RECOVERABLE_DAYS));
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!(format!("{base}/certificates/{}", c.name)),
    );
    m.insert(
        "x5t".into(),
        json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.thumbprint)),
    );
    m.insert("attributes".into(), Value::Object(a));
    if !c.tags.is_empty() {
        m.insert("tags".into(), json!(c.tags));
    }
    Value::Object(m)
}

/// 403 `Forbidden`/`ForbiddenByFirewall`: the vault's network rules refuse this client.
pub fn firewall(claims: &Claims, vault: &str) -> Response {
    let message = format!(
        "Client address is not authorized and caller is not a trusted service.\r\nClient \
         address: 127.0.0.1\r\nCaller: appid={};oid={}\r\nVault: {vault};location=westeurope",
        claims.appid, claims.oid
    );
    error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &message,
        Some("ForbiddenByFirewall"),
    )
}

/// 403 `Forbidden`/`SecretManagedByKeyVault`: a write to the secret backing a certificate.
pub fn managed_by_key_vault(name: &str) -> Response {
    let message = format!(
        "Secret {name} is managed by Key Vault (it backs a certificate); update the certificate instead."
    );
    error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &message,
        Some("SecretManagedByKeyVault"),
    )
}

/// `SecretBundle`; `with_value` is false for PATCH, recover and the like.
pub fn bundle(v: &KvVersion, with_value: bool) -> Value {
    let mut m = common(&v.id, v);
    if with_value {
        m.insert("value".into(), json!(v.value));
    }
    Value::Object(m)
}

/// `SecretItem` of a version listing: never a value.
pub fn version_item(v: &KvVersion) -> Value {
    Value::Object(common(&v.id, v))
}

/// `SecretItem` of `GET /secrets`: the versionless id, the latest version's metadata.
pub fn secret_item(base: &str, s: &Secret) -> Value {
    Value::Object(common(&format!("{base}/secrets/{}", s.name), s.latest()))
}

/// `DeletedSecretBundle` (no value) of soft-deleted `s`.
pub fn deleted_bundle(base: &str, s: &Secret) -> Value {
    let mut m = common(&s.latest().id, s.latest());
    let deleted = s.deleted.unwrap_or_default();
    m.insert(
        "recoveryId".into(),
        json!(format!("{base}/deletedsecrets/{}", s.name)),
    );
    m.insert("deletedDate".into(), json!(deleted));
    m.insert(
        "scheduledPurgeDate".into(),
        json!(deleted + RECOVERABLE_DAYS * 86_400),
    );
    Value::Object(m)
}

/// A `KeyVaultError` response.
pub fn error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let innererror = inner.map_or(Value::Null, |c| json!({ "code": c }));
    let mut body = json!({ "error": { "code": code, "message": message } });
    if !innererror.is_null() {
        body["error"]["innererror"] = innererror;
    }
    http::json(status, &body)
}

/// 400 `BadParameter`.
pub fn bad_parameter(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
}

/// 404 `SecretNotFound` with the service's text; `what` is `name` or `name/version`.
pub fn secret_not_found(what: &str) -> Response {
    let message = format!(
        "A secret with (name/id) {what} was not found in this key vault. If you recently \
         deleted this secret you may be able to recover it using the correct recovery \
         command. For help resolving this issue, please see \
         https://go.microsoft.com/fwlink/?linkid=2125182"
    );
    error(StatusCode::NOT_FOUND, "SecretNotFound", &message, None)
}

/// 404 for `GET|DELETE /deletedsecrets/{name}` when `name` is not soft-deleted.
pub fn deleted_secret_not_found(name: &str) -> Response {
    let message = format!("Deleted Secret not found: {name}");
    error(StatusCode::NOT_FOUND, "SecretNotFound", &message, None)
}

/// 403 `Forbidden`/`SecretDisabled` for reading a disabled version.
pub fn secret_disabled() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "Operation get is not allowed on a disabled secret.",
        Some("SecretDisabled"),
    )
}

/// 409 `Conflict`/`ObjectIsDeletedButRecoverable` for a PUT on a soft-deleted name.
pub fn deleted_but_recoverable(name: &str) -> Response {
    let message = format!(
        "Secret {name} is currently in a deleted but recoverable state, and its name cannot \
         be reused; in this state, the secret can only be recovered or purged."
    );
    error(
        StatusCode::CONFLICT,
        "Conflict",
        &message,
        Some("ObjectIsDeletedButRecoverable"),
    )
}

/// 403 `Forbidden`/`ForbiddenByPolicy`: the caller lacks secrets `permission` on `vault`.
pub fn forbidden(claims: &Claims, vault: &str, permission: &str) -> Response {
    forbidden_on(claims, vault, "secrets", permission)
}

/// 403 `Forbidden`/`ForbiddenByPolicy`: the caller lacks `object` (secrets,
/// certificates) `permission` on `vault`.
pub fn forbidden_on(claims: &Claims, vault: &str, object: &str, permission: &str) -> Response {
    let message = format!(
        "The user, group or application 'appid={};oid={};iss={}' does not have {object} \
         {permission} permission on key vault '{vault};location=westeurope'. For help \
         resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
        claims.appid,
        claims.oid,
        issuer(&claims.tid)
    );
    error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &message,
        Some("ForbiddenByPolicy"),
    )
}

/// 401 with the challenge a client uses to find the authority and resource.
pub fn unauthorized(authority: &str, tenant: &str, why: &Rejected) -> Response {
    let message = match why {
        Rejected::Missing => "Request is missing a Bearer or PoP token.".to_owned(),
        Rejected::Malformed => "Error validating token: IDX14100: JWT is not well formed, \
                                there are no dots (.)."
            .to_owned(),
        Rejected::NotIssued => {
            "Error validating token: IDX10511: Signature validation failed.".to_owned()
        }
        Rejected::Expired { exp } => format!(
            "Error validating token: IDX10223: Lifetime validation failed. The token is \
             expired. ValidTo (UTC): '{exp}'."
        ),
        Rejected::WrongAudience { found } => {
            format!("AKV10022: Invalid audience. Expected https://vault.azure.net, found: {found}.")
        }
        Rejected::WrongTenant { found } => format!(
            "AKV10032: Invalid issuer. Expected one of {}, found {}.",
            issuer(tenant),
            issuer(found)
        ),
    };
    let response = error(StatusCode::UNAUTHORIZED, "Unauthorized", &message, None);
    with_header(
        response,
        "www-authenticate",
        &format!(
            "Bearer authorization=\"{authority}/{tenant}\", resource=\"https://vault.azure.net\""
        ),
    )
}

/// 429 `Throttled` with `Retry-After`.
pub fn throttled(retry_after_secs: u64) -> Response {
    let response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: A1",
        None,
    );
    with_header(response, "retry-after", &retry_after_secs.to_string())
}

/// An injected failure with status `code` and a plausible `KeyVaultError`.
pub fn status(code: u16) -> Response {
    let (name, message) = match code {
        400 => ("BadParameter", "The request is invalid."),
        401 => ("Unauthorized", "Request is missing a Bearer or PoP token."),
        403 => ("Forbidden", "Access denied."),
        404 => ("NotFound", "The requested resource was not found."),
        409 => ("Conflict", "The request conflicts with the current state."),
        429 => (
            "Throttled",
            "Request was not processed because too many requests were received.",
        ),
        500 => ("InternalServerError", "An unexpected error occurred."),
        502 => ("BadGateway", "The service received an invalid response."),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        504 => ("GatewayTimeout", "The service timed out."),
        _ => ("Error", "Injected failure."),
    };
    error(http::status(code), name, message, None)
}
