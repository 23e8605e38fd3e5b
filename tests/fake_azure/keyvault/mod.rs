//! Fake Key Vault data plane (secrets, and the certificate listing with `x5t`):
//! `http://127.0.0.1:P/<vault>` is a vault's base URL. A certificate's backing secret is
//! listed `managed: true` and refuses writes (403 `SecretManagedByKeyVault`); a vault
//! behind a firewall answers every authenticated request 403 `ForbiddenByFirewall`.
//!
//! Order of checks, chosen so the challenge flow works as with the real service: route (501
//! for operations the fake does not implement), the vault's opt-in latency and rate limit
//! (429, see [`limits`]), bearer token (401 + `WWW-Authenticate`, before
//! anything else, so a body-less first request gets the challenge), `api-version`, the
//! firewall (403), secret name, then faults and denial, then the operation and its body.

pub(crate) mod limits;
pub(crate) mod paging;
pub(crate) mod store;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::bearer;
use super::effects::Effect;
use super::faults::{self, Gate, Route};
use super::http::{self, Incoming, Reply};
use super::requests::Service;
use super::server::Conn;
use super::state::Shared;
use store::{AttributesIn, NewVersion, VersionPatch};

pub use store::KvVersion;

/// The api-versions the service accepts (the SDK's default is 2026-04-01).
pub const API_VERSIONS: &[&str] = &["7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"];
/// The only audience Key Vault accepts.
pub const AUDIENCE: &str = "https://vault.azure.net";

const MAX_VALUE_BYTES: usize = 25 * 1024;
const MAX_TAGS: usize = 15;
const MAX_TAG_CHARS: usize = 256;
const MAX_CONTENT_TYPE_CHARS: usize = 255;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (incoming, log) = shared.receive(Service::KeyVault, req).await;
    let reply = serve(&shared, &incoming).await;
    shared.respond(log, reply, &conn)
}

/// The operations of the secrets API the fake implements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    List,
    /// `GET /certificates`.
    ListCertificates,
    Set,
    /// `None` = latest.
    Get(Option<String>),
    /// `None` = latest (`PATCH /secrets/{name}/`).
    Update(Option<String>),
    Versions,
    Delete,
    GetDeleted,
    Purge,
    Recover,
}

impl Op {
    fn route(&self) -> Route {
        match self {
            Op::List => Route::KvList,
            Op::ListCertificates => Route::KvListCertificates,
            Op::Set => Route::KvSet,
            Op::Get(_) => Route::KvGet,
            Op::Update(_) => Route::KvUpdate,
            Op::Versions => Route::KvVersions,
            Op::Delete => Route::KvDelete,
            Op::GetDeleted => Route::KvGetDeleted,
            Op::Purge => Route::KvPurge,
            Op::Recover => Route::KvRecover,
        }
    }

    /// The access-policy permission the operation needs (for the 403 text).
    fn permission(&self) -> &'static str {
        match self {
            Op::List | Op::ListCertificates | Op::Versions => "list",
            Op::Set | Op::Update(_) => "set",
            Op::Get(_) | Op::GetDeleted => "get",
            Op::Delete => "delete",
            Op::Purge => "purge",
            Op::Recover => "recover",
        }
    }
}

/// A parsed request: which vault, which secret, which operation.
#[derive(Debug)]
struct Target {
    vault: String,
    name: String,
    op: Op,
}

fn parse(incoming: &Incoming) -> Result<Target, Box<Response>> {
    let seg: Vec<&str> = incoming.segments.iter().map(String::as_str).collect();
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let m = &incoming.method;
    let op = match seg.as_slice() {
        [_, s] | [_, s, ""] if is(s, "secrets") && m == Method::GET => Some(Op::List),
        [_, c] | [_, c, ""] if is(c, "certificates") && m == Method::GET => {
            Some(Op::ListCertificates)
        }
        [_, s, _] if is(s, "secrets") => match *m {
            Method::PUT => Some(Op::Set),
            Method::GET => Some(Op::Get(None)),
            Method::DELETE => Some(Op::Delete),
            _ => None,
        },
        [_, s, _, v] if is(s, "secrets") && is(v, "versions") && m == Method::GET => {
            Some(Op::Versions)
        }
        [_, s, _, v] if is(s, "secrets") => {
            let version = (!v.is_empty()).then(|| (*v).to_owned());
            match *m {
                Method::GET => Some(Op::Get(version)),
                Method::PATCH => Some(Op::Update(version)),
                _ => None,
            }
        }
        [_, s, _] if is(s, "deletedsecrets") => match *m {
            Method::GET => Some(Op::GetDeleted),
            Method::DELETE => Some(Op::Purge),
            _ => None,
        },
        [_, s, _, r] if is(s, "deletedsecrets") && is(r, "recover") && m == Method::POST => {
            Some(Op::Recover)
        }
        _ => None,
    };
    let Some(op) = op else {
        return Err(Box::new(wire::error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplementedByFake",
            &format!(
                "The fake Key Vault does not implement {m} /{}",
                incoming.segments.join("/")
            ),
            None,
        )));
    };
    Ok(Target {
        vault: seg[0].to_ascii_lowercase(),
        name: seg.get(2).map(|s| (*s).to_owned()).unwrap_or_default(),
        op,
    })
}

/// The single accepted `api-version`, or the 400.
fn api_version(incoming: &Incoming) -> Result<String, Box<Response>> {
    match incoming.query_all("api-version").as_slice() {
        [] => Err(Box::new(wire::bad_parameter(
            "The request is missing the required 'api-version' query parameter.",
        ))),
        [v] if API_VERSIONS.contains(v) => Ok((*v).to_owned()),
        [v] => Err(Box::new(wire::bad_parameter(&format!(
            "The specified version ({v}) is not recognized. Consider using the latest \
             supported version (2025-07-01)."
        )))),
        _ => Err(Box::new(wire::bad_parameter(
            "The 'api-version' query parameter was given more than once.",
        ))),
    }
}

/// `^[0-9a-zA-Z-]+$`, 1–127 characters.
fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn serve(shared: &Shared, incoming: &Incoming) -> Reply {
    let target = match parse(incoming) {
        Ok(t) => t,
        Err(r) => return (*r).into(),
    };
    if let Some(retry_after_secs) = limits::admit(shared, &target.vault).await {
        return wire::throttled(retry_after_secs).into();
    }
    let claims = match bearer::check(shared, incoming, &[AUDIENCE]) {
        Ok(c) => c,
        Err(why) => return wire::unauthorized(&shared.urls.authority, &shared.tenant, &why).into(),
    };
    let api_version = match api_version(incoming) {
        Ok(v) => v,
        Err(r) => return (*r).into(),
    };
    if shared.lock().knobs.kv_firewalled.contains(&target.vault) {
        return wire::firewall(&claims, &target.vault).into();
    }
    let is_list = matches!(target.op, Op::List | Op::ListCertificates);
    if !is_list && !valid_name(&target.name) {
        let message = format!("The request URI contains an invalid name: {}", target.name);
        return wire::bad_parameter(&message).into();
    }
    match faults::gate(shared, target.op.route()).await {
        Gate::Denied if target.op == Op::ListCertificates => {
            wire::forbidden_on(&claims, &target.vault, "certificates", "list").into()
        }
        Gate::Denied => wire::forbidden(&claims, &target.vault, target.op.permission()).into(),
        Gate::Status(401) => {
            let why = bearer::Rejected::NotIssued;
            wire::unauthorized(&shared.urls.authority, &shared.tenant, &why).into()
        }
        Gate::Status(code) => wire::status(code).into(),
        Gate::Throttle(secs) => wire::throttled(secs).into(),
        Gate::Proceed { sever } => Reply {
            response: execute(shared, incoming, &target, &api_version),
            sever,
        },
    }
}

fn execute(shared: &Shared, incoming: &Incoming, target: &Target, api_version: &str) -> Response {
    let base = format!("{}/{}", shared.urls.keyvault, target.vault);
    let now = shared.now_s();
    let name = target.name.as_str();
    let mut guard = shared.lock();
    let state = &mut *guard;
    let vault = state.vaults.vault(&target.vault);
    let ok = |body: &Value| http::json(StatusCode::OK, body);
    match &target.op {
        Op::Set => {
            if vault.secret(name).is_ok_and(|s| s.latest().managed) {
                return wire::managed_by_key_vault(name);
            }
            let new = match new_version(incoming) {
                Ok(n) => n,
                Err(message) => return wire::bad_parameter(&message),
            };
            match vault.set(&base, name, new, now) {
                Ok((stored_name, v)) => {
                    let response = ok(&wire::bundle(v, true));
                    let effect = Effect::KvVersionCreated {
                        vault: target.vault.clone(),
                        name: stored_name.to_owned(),
                        version: v.version.clone(),
                        tags: v.tags.clone(),
                    };
                    state.effects.push(effect);
                    response
                }
                Err(_) => wire::deleted_but_recoverable(name),
            }
        }
        Op::Get(version) => match vault.version(name, version.as_deref()) {
            Ok(v) if !v.enabled => wire::secret_disabled(),
            Ok(v) => ok(&wire::bundle(v, true)),
            Err(_) => wire::secret_not_found(&with_version(name, version.as_deref())),
        },
        Op::Update(version) => {
            let patch = match version_patch(incoming) {
                Ok(p) => p,
                Err(message) => return wire::bad_parameter(&message),
            };
            match vault.update(name, version.as_deref(), patch, now) {
                Ok((stored_name, v)) => {
                    let response = ok(&wire::bundle(v, false));
                    let effect = Effect::KvVersionUpdated {
                        vault: target.vault.clone(),
                        name: stored_name.to_owned(),
                        version: v.version.clone(),
                        enabled: v.enabled,
                    };
                    state.effects.push(effect);
                    response
                }
                Err(_) => wire::secret_not_found(&with_version(name, version.as_deref())),
            }
        }
        Op::ListCertificates => {
            let request = match paging::parse(incoming) {
                Ok(r) => r,
                Err(message) => return wire::bad_parameter(&message),
            };
            let items = vault
                .certificates()
                .into_iter()
                .map(|c| wire::certificate_item(&base, c))
                .collect();
            ok(&paging::page(
                items,
                request,
                &state.knobs,
                &format!("{base}/certificates"),
                api_version,
            ))
        }
        Op::Versions | Op::List => {
            let request = match paging::parse(incoming) {
                Ok(r) => r,
                Err(message) => return wire::bad_parameter(&message),
            };
            let (items, link_base) = if target.op == Op::List {
                let items = vault
                    .active()
                    .into_iter()
                    .map(|s| wire::secret_item(&base, s));
                (items.collect(), format!("{base}/secrets"))
            } else {
                let Ok(secret) = vault.secret(name) else {
                    return wire::secret_not_found(name);
                };
                // The service lists versions in no particular order; ordering by version id
                // (random hex) makes sure a client cannot rely on creation order.
                let mut versions: Vec<&KvVersion> = secret.versions.iter().collect();
                versions.sort_by(|a, b| a.version.cmp(&b.version));
                let items = versions.into_iter().map(wire::version_item).collect();
                (items, format!("{base}/secrets/{}/versions", secret.name))
            };
            ok(&paging::page(
                items,
                request,
                &state.knobs,
                &link_base,
                api_version,
            ))
        }
        Op::Delete => match vault.delete(name, now) {
            Ok(secret) => {
                let response = ok(&wire::deleted_bundle(&base, secret));
                let effect = Effect::KvSecretDeleted {
                    vault: target.vault.clone(),
                    name: secret.name.clone(),
                };
                state.effects.push(effect);
                response
            }
            Err(_) => wire::secret_not_found(name),
        },
        Op::GetDeleted => match vault.deleted(name) {
            Ok(secret) => ok(&wire::deleted_bundle(&base, secret)),
            Err(_) => wire::deleted_secret_not_found(name),
        },
        Op::Purge => match vault.purge(name) {
            Ok(stored_name) => {
                state.effects.push(Effect::KvSecretPurged {
                    vault: target.vault.clone(),
                    name: stored_name,
                });
                http::empty(StatusCode::NO_CONTENT)
            }
            Err(_) => wire::deleted_secret_not_found(name),
        },
        Op::Recover => match vault.recover(name) {
            Ok(secret) => {
                let response = ok(&wire::bundle(secret.latest(), false));
                let effect = Effect::KvSecretRecovered {
                    vault: target.vault.clone(),
                    name: secret.name.clone(),
                };
                state.effects.push(effect);
                response
            }
            Err(_) => wire::deleted_secret_not_found(name),
        },
    }
}

/// `name` or `name/version`, as the 404 text quotes it.
fn with_version(name: &str, version: Option<&str>) -> String {
    version.map_or_else(|| name.to_owned(), |v| format!("{name}/{v}"))
}

/// The body as a JSON object, or the 400 message.
fn body_object(incoming: &Incoming) -> Result<Map<String, Value>, String> {
    match incoming.json() {
        Some(Value::Object(m)) => Ok(m),
        _ => Err("The request body is not a valid JSON object.".to_owned()),
    }
}

/// `SecretSetParameters`, validated as the service does.
fn new_version(incoming: &Incoming) -> Result<NewVersion, String> {
    let body = body_object(incoming)?;
    let value = match body.get("value") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err("Property 'value' must be a string.".to_owned()),
        None => return Err("Property 'value' is required.".to_owned()),
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err("The secret value exceeds the maximum size of 25 KB.".to_owned());
    }
    Ok(NewVersion {
        value,
        content_type: content_type(&body)?,
        tags: tags(&body)?.unwrap_or_default(),
        attributes: attributes(&body)?,
    })
}

/// `SecretUpdateParameters`.
fn version_patch(incoming: &Incoming) -> Result<VersionPatch, String> {
    let body = body_object(incoming)?;
    Ok(VersionPatch {
        content_type: content_type(&body)?,
        tags: tags(&body)?,
        attributes: attributes(&body)?,
    })
}

fn content_type(body: &Map<String, Value>) -> Result<Option<String>, String> {
    match body.get("contentType") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= MAX_CONTENT_TYPE_CHARS => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err("Property 'contentType' must be a string of at most 255 characters.".into()),
    }
}

fn tags(body: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, String> {
    let tags = match body.get("tags") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(t)) => t,
        Some(_) => return Err("Property 'tags' must be an object.".to_owned()),
    };
    if tags.len() > MAX_TAGS {
        return Err(format!("A secret may have at most {MAX_TAGS} tags."));
    }
    tags.iter()
        .map(|(k, v)| match v {
            Value::String(v)
                if k.chars().count() <= MAX_TAG_CHARS && v.chars().count() <= MAX_TAG_CHARS =>
            {
                Ok((k.clone(), v.clone()))
            }
            _ => Err(format!(
                "Tag '{k}' must be a string of at most 256 characters."
            )),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `SecretAttributes`: `enabled` a boolean, `nbf`/`exp` integer Unix seconds; read-only
/// fields (`created`, `updated`, `recoveryLevel`, …) are ignored, as the service does.
fn attributes(body: &Map<String, Value>) -> Result<AttributesIn, String> {
    let attrs = match body.get("attributes") {
        None | Some(Value::Null) => return Ok(AttributesIn::default()),
        Some(Value::Object(a)) => a,
        Some(_) => return Err("Property 'attributes' must be an object.".to_owned()),
    };
    let enabled = match attrs.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("Attribute 'enabled' must be a boolean.".to_owned()),
    };
    let seconds = |key: &str| match attrs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("Attribute '{key}' must be an integer number of Unix seconds.")),
    };
    Ok(AttributesIn {
        enabled,
        nbf: seconds("nbf")?,
        exp: seconds("exp")?,
    })
}
