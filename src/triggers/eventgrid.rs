//! The Event Grid webhook: Key Vault events (Event Grid or CloudEvents 1.0 schema) in, a
//! [`Delivery`] to the caller out. Event Grid signs nothing, so every POST must carry a
//! shared secret (header or query parameter) or a configured bearer token, compared in
//! constant time. Events are acknowledged only after the caller says it recorded them;
//! otherwise 503 makes Event Grid deliver again (at least once). Contract: `azure.md` §2.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::provider::SecretValue;
use crate::telemetry::LogThrottle;

/// The route Event Grid delivers to.
pub const PATH: &str = "/eventgrid";
/// Characters of each event field a log line quotes.
const LOGGED_CHARS_MAX: usize = 200;
const VALIDATION_TYPE: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
const MEDIA_TYPES: [&str; 3] = [
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
];

/// Why a request or the configuration was refused. Messages never quote a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "unsupported content type {0:?}: expected application/json, application/cloudevents+json or application/cloudevents-batch+json (charset utf-8)"
    )]
    UnsupportedMediaType(String),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is neither a JSON array nor an object")]
    NotArrayOrObject,
    #[error("event {0} is not a JSON object")]
    NotAnObject(usize),
    #[error("event {index} has no {field}")]
    Missing { index: usize, field: &'static str },
    #[error("event {index} has an invalid {field}: {why}")]
    Invalid {
        index: usize,
        field: &'static str,
        why: &'static str,
    },
    #[error("a subscription validation event must be delivered alone, not with {0} other event(s)")]
    ValidationNotAlone(usize),
    #[error("webhook configuration: {0}")]
    Config(String),
}

type ParseResult<T> = Result<T, WebhookError>;

/// What a body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Event Grid's subscription handshake: answer with this code.
    Validation {
        code: String,
    },
    Events(Vec<KeyVaultEvent>),
}

/// One Key Vault event, in whichever schema it came.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyVaultEvent {
    pub id: String,
    pub kind: EventKind,
    /// `data.VaultName`, or the last segment of topic/source.
    pub vault: String,
    /// `data.ObjectName`, or the subject (empty for other event types without one).
    pub secret: String,
    pub version: Option<String>,
    /// `data.Id`: the versioned secret URL.
    pub version_id: Option<String>,
    /// `data.EXP`: expiry, Unix seconds.
    pub exp_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    NearExpiry,
    Expired,
    NewVersionCreated,
    /// Any other type, kept so the caller can acknowledge and ignore it.
    Other(String),
}

impl EventKind {
    fn from_type(ty: &str) -> Self {
        match ty {
            "Microsoft.KeyVault.SecretNearExpiry" => Self::NearExpiry,
            "Microsoft.KeyVault.SecretExpired" => Self::Expired,
            "Microsoft.KeyVault.SecretNewVersionCreated" => Self::NewVersionCreated,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire type name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::NearExpiry => "Microsoft.KeyVault.SecretNearExpiry",
            Self::Expired => "Microsoft.KeyVault.SecretExpired",
            Self::NewVersionCreated => "Microsoft.KeyVault.SecretNewVersionCreated",
            Self::Other(ty) => ty,
        }
    }
}

/// Checks the content type (before the body is read, so a wrong one costs nothing).
fn check_media_type(content_type: Option<&str>) -> Result<(), WebhookError> {
    let raw = content_type.unwrap_or("");
    let refuse = || WebhookError::UnsupportedMediaType(raw.chars().take(100).collect());
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !MEDIA_TYPES.contains(&essence.as_str()) {
        return Err(refuse());
    }
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Parses a delivery body. Every schema and content type is accepted by shape: an array
/// of events or a single event; an event with `specversion` is a CloudEvent.
///
/// # Errors
/// An unsupported content type, malformed JSON, or an event that lacks what it needs.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, WebhookError> {
    check_media_type(content_type)?;
    let value = serde_json::from_slice(body).map_err(|e| WebhookError::Json(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err(WebhookError::NotArrayOrObject),
    };
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index = i + 1;
        let Value::Object(event) = item else {
            return Err(WebhookError::NotAnObject(index));
        };
        let cloud = event.contains_key("specversion");
        if cloud && event["specversion"] != "1.0" {
            return Err(invalid(index, "specversion", "not 1.0"));
        }
        let (type_field, origin_field) = if cloud {
            ("type", "source")
        } else {
            ("eventType", "topic")
        };
        let field = |name: &'static str| text(event.get(name), index, name);
        let id = field("id")?.ok_or(missing(index, "id"))?;
        let ty = field(type_field)?.ok_or(missing(index, type_field))?;
        let data = event.get("data").and_then(Value::as_object);
        if ty == VALIDATION_TYPE {
            if items.len() != 1 {
                return Err(WebhookError::ValidationNotAlone(items.len() - 1));
            }
            let code = data.and_then(|d| data_value(d, "validationCode"));
            let code = text(code, index, "validationCode")?;
            let code = code.ok_or(missing(index, "data.validationCode"))?;
            return Ok(Parsed::Validation { code });
        }
        let kind = EventKind::from_type(&ty);
        // Other types are acknowledged and ignored by the caller: their data is not ours to
        // judge, and their names are best effort.
        let known = !matches!(kind, EventKind::Other(_));
        let empty = Map::new();
        let data = match data {
            _ if !known => &empty,
            Some(data) => data,
            None => return Err(missing(index, "data")),
        };
        let data_text = |name: &'static str| text(data_value(data, name), index, name);
        let origin = field(origin_field)?;
        let vault = data_text("VaultName")?.or(origin.as_deref().and_then(last_segment));
        let secret = data_text("ObjectName")?.or(field("subject")?);
        let (vault, secret) = match (vault, secret) {
            (Some(vault), Some(secret)) => (vault, secret),
            (vault, secret) if !known => (vault.unwrap_or_default(), secret.unwrap_or_default()),
            (None, _) => return Err(missing(index, "vault name")),
            (_, None) => return Err(missing(index, "secret name")),
        };
        events.push(KeyVaultEvent {
            id,
            kind,
            vault,
            secret,
            version: data_text("Version")?,
            version_id: data_text("Id")?,
            exp_s: seconds(data_value(data, "EXP"), index, "EXP")?,
        });
    }
    Ok(Parsed::Events(events))
}

fn missing(index: usize, field: &'static str) -> WebhookError {
    WebhookError::Missing { index, field }
}

fn invalid(index: usize, field: &'static str, why: &'static str) -> WebhookError {
    WebhookError::Invalid { index, field, why }
}

/// A `data` value by name: case-insensitive and trimmed (the documented examples carry
/// `"ObjectName "`).
fn data_value<'a>(data: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut entries = data.iter();
    entries
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A string, trimmed (the examples carry `" ee05…"`); absent, null or blank is `None`.
fn text(value: Option<&Value>, index: usize, field: &'static str) -> ParseResult<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Some(_) => Err(invalid(index, field, "not a string")),
    }
}

/// NBF/EXP: a number, a numeric string, or null.
fn seconds(value: Option<&Value>, index: usize, field: &'static str) -> ParseResult<Option<f64>> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let number = number.filter(|n| n.is_finite());
    number
        .map(Some)
        .ok_or(invalid(index, field, "not a number"))
}

fn last_segment(path: &str) -> Option<String> {
    let segment = path.trim_end_matches('/').rsplit('/').next();
    segment.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Events handed to the caller. Reply `Ok` only once they are durably recorded; an `Err`
/// (or dropping `reply`) answers 503 so Event Grid redelivers.
#[derive(Debug)]
pub struct Delivery {
    pub events: Vec<KeyVaultEvent>,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// How callers prove they are our Event Grid subscription; at least one credential is
/// required. `Debug` redacts every credential.
pub struct WebhookConfig {
    /// Shared secret, accepted in `header` or in the `query_param` of the URL.
    pub secret: Option<SecretValue>,
    pub header: String,
    /// Empty disables the query parameter.
    pub query_param: String,
    /// Accepted as `Authorization: Bearer <token>` (static tokens, not JWT validation).
    pub bearer_tokens: Vec<String>,
    pub body_limit_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secret: None,
            header: "x-rekey-webhook-secret".to_owned(),
            query_param: "code".to_owned(),
            bearer_tokens: Vec::new(),
            body_limit_bytes: 1 << 20,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens = format!("[{} redacted]", self.bearer_tokens.len());
        f.debug_struct("WebhookConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("header", &self.header)
            .field("query_param", &self.query_param)
            .field("bearer_tokens", &format_args!("{tokens}"))
            .field("body_limit_bytes", &self.body_limit_bytes)
            .finish()
    }
}

/// Equality whose time depends only on `expected`'s length, never on where or whether
/// `candidate` differs (its length included).
fn ct_eq(candidate: &[u8], expected: &[u8]) -> bool {
    let mut same = (candidate.len() as u64).ct_eq(&(expected.len() as u64));
    for (i, byte) in expected.iter().enumerate() {
        same &= candidate.get(i).copied().unwrap_or(!byte).ct_eq(byte);
    }
    same.into()
}

#[derive(Debug)]
struct Shared {
    config: WebhookConfig,
    header: HeaderName,
    sink: mpsc::Sender<Delivery>,
    /// Anyone can send requests without a credential: one warning per period says so.
    refused: LogThrottle,
}

/// At most one warning about refused, unauthenticated requests per this period.
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

impl Shared {
    fn warn_refused(&self, what: &str) {
        if let Some(left_out) = self.refused.admit() {
            warn!(
                left_out,
                "webhook {what} without a valid credential refused ({left_out} more refused since the last warning)"
            );
        }
    }
}

impl Shared {
    /// `None` when no configured kind of credential was presented, else whether one of
    /// those presented is right.
    fn authenticated(&self, parts: &Parts) -> Option<bool> {
        let mut presented = Vec::new();
        if let Some(secret) = &self.config.secret {
            let expected = secret.expose().as_bytes();
            for value in parts.headers.get_all(&self.header) {
                presented.push(ct_eq(value.as_bytes(), expected));
            }
            let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes());
            let param = &self.config.query_param;
            for (_, value) in query.filter(|(name, _)| !param.is_empty() && name == param) {
                presented.push(ct_eq(value.as_bytes(), expected));
            }
        }
        if !self.config.bearer_tokens.is_empty() {
            for value in parts.headers.get_all(header::AUTHORIZATION) {
                let token = match value.as_bytes().split_at_checked(7) {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
                    _ => b"", // another scheme: presented, and wrong
                };
                // Every token is compared, so timing does not tell which one matched.
                let tokens = self.config.bearer_tokens.iter().map(String::as_bytes);
                presented.push(tokens.fold(false, |any, t| any | ct_eq(token.trim_ascii(), t)));
            }
        }
        (!presented.is_empty()).then(|| presented.contains(&true))
    }
}

/// The webhook: `POST /eventgrid` (deliveries) and `OPTIONS /eventgrid` (the CloudEvents
/// abuse-protection handshake). Other methods get 405.
///
/// # Errors
/// No credential configured (an unauthenticated webhook is not allowed), an empty one, or
/// an invalid header name.
pub fn router(config: WebhookConfig, sink: mpsc::Sender<Delivery>) -> Result<Router, WebhookError> {
    let refuse = |why: &str| Err(WebhookError::Config(why.to_owned()));
    let Ok(header) = HeaderName::from_bytes(config.header.as_bytes()) else {
        return refuse("the secret header name is not a valid HTTP header name");
    };
    let secret = config.secret.as_ref().map(SecretValue::expose);
    if secret.is_none() && config.bearer_tokens.is_empty() {
        return refuse("no secret and no bearer token: an unauthenticated webhook is not allowed");
    }
    if secret == Some("") || config.bearer_tokens.iter().any(String::is_empty) {
        return refuse("an empty secret or bearer token is not a credential");
    }
    let shared = Arc::new(Shared {
        config,
        header,
        sink,
        refused: LogThrottle::new(REFUSED_LOG_EVERY),
    });
    Ok(Router::new()
        .route(PATH, post(deliver).options(handshake))
        .with_state(shared))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn unauthorized() -> Response {
    let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
    (
        challenge,
        error(StatusCode::UNAUTHORIZED, "missing or wrong credential"),
    )
        .into_response()
}

/// CloudEvents abuse protection. Event Grid sends no custom header here, so a credential
/// is not required, but one that is presented must be right.
async fn handshake(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if shared.authenticated(&parts) == Some(false) {
        shared.warn_refused("handshake");
        return unauthorized();
    }
    let Some(origin) = parts.headers.get("webhook-request-origin").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing WebHook-Request-Origin header",
        );
    };
    info!(?origin, "webhook handshake accepted");
    let headers = [
        (HeaderName::from_static("webhook-allowed-origin"), origin),
        (
            HeaderName::from_static("webhook-allowed-rate"),
            HeaderValue::from_static("*"),
        ),
        (header::ALLOW, HeaderValue::from_static("POST")),
    ];
    (StatusCode::OK, headers).into_response()
}

async fn deliver(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if shared.authenticated(&parts) != Some(true) {
        shared.warn_refused("delivery");
        return unauthorized();
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = check_media_type(content_type) {
        warn!(error = %e, "webhook delivery refused");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &e.to_string());
    }
    let limit = shared.config.body_limit_bytes;
    let body = match read_limited(&parts.headers, body, limit).await {
        Ok(body) => body,
        Err(status) => {
            warn!(%status, limit, "webhook body refused");
            let message = if status == StatusCode::REQUEST_TIMEOUT {
                "the body did not arrive in time; send it whole, promptly"
            } else {
                "body too large or unreadable"
            };
            return error(status, message);
        }
    };
    let events = match parse(content_type, &body) {
        Ok(Parsed::Events(events)) => events,
        Ok(Parsed::Validation { code }) => {
            info!("Event Grid subscription validated");
            return axum::Json(json!({ "validationResponse": code })).into_response();
        }
        Err(e) => {
            warn!(error = %e, "malformed webhook delivery refused");
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    for e in &events {
        // Excerpts: an event may carry anything, up to the body limit, in any field.
        let short = |text: &str| crate::text::excerpt(text, LOGGED_CHARS_MAX);
        let (id, event_type) = (short(&e.id), short(e.kind.as_str()));
        let (vault, secret) = (short(&e.vault), short(&e.secret));
        info!(id, event_type, vault, secret, "Key Vault event received");
    }
    if events.is_empty() {
        return StatusCode::OK.into_response();
    }
    let (count, (reply, replied)) = (events.len(), oneshot::channel());
    let outcome = match shared.sink.send(Delivery { events, reply }).await {
        Ok(()) => replied
            .await
            .unwrap_or_else(|_| Err("the sink dropped the delivery".into())),
        Err(_) => Err("the sink is closed".to_owned()),
    };
    if let Err(reason) = outcome {
        warn!(
            count,
            reason, "events not recorded; Event Grid will deliver again"
        );
        let retry = [(header::RETRY_AFTER, "10")];
        let message = "events not recorded; deliver again later";
        return (retry, error(StatusCode::SERVICE_UNAVAILABLE, message)).into_response();
    }
    StatusCode::OK.into_response()
}

/// Reads at most `limit` bytes: 413 above it (by `Content-Length` before reading, or while
/// reading), 408 if it does not arrive in time, 400 if it breaks off.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if declared
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let (mut stream, mut read) = (body.into_data_stream(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::daemon::serve::is_body_timeout(&e) {
                StatusCode::REQUEST_TIMEOUT
            } else {
                StatusCode::BAD_REQUEST
            }
        })?;
        if read.len() + chunk.len() > limit {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    const SECRET: &str = "hook-secret-0123";
    const JSON: Option<&str> = Some("application/json; charset=utf-8");
    const ID: &str = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
    const VERSION: &str = "ee059b2bb5bc48398a53b168c6cdcb10";
    const CODE: &str = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6";
    // The contract's examples (azure.md §2.2, §2.3), verbatim.
    const EVENT_GRID: &str = r#"[{"id":"00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
  "topic":"/subscriptions/{sub}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
  "subject":"newsecret","eventType":"Microsoft.KeyVault.SecretNearExpiry","eventTime":"2019-07-25T01:08:33.1036736Z",
  "data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10","VaultName":"sample-kv",
          "ObjectType":"Secret","ObjectName":"newsecret","Version":"ee059b2bb5bc48398a53b168c6cdcb10","NBF":1559081980,"EXP":1559082102},
  "dataVersion":"1","metadataVersion":"1"}]"#;
    const CLOUD_EVENT: &str = r#"{"specversion":"1.0","type":"Microsoft.KeyVault.SecretNewVersionCreated",
 "source":"/subscriptions/{sub}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
 "subject":"newsecret","id":"00eccf70-95a7-4e7c-8299-2eb17ee9ad64","time":"2019-07-25T01:08:33.1036736Z",
 "data":{"Id":"…/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10","VaultName":"sample-kv","ObjectType":"Secret",
         "ObjectName":"newsecret","Version":"ee059b2bb5bc48398a53b168c6cdcb10","NBF":"1559081980","EXP":"1559082102"}}"#;
    const VALIDATION: &str = r#"[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/xxxxxxxx-…","subject":"",
  "data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
          "validationUrl":"https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/estest/validate?id=…&token=…"},
  "eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2018-01-25T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]"#;

    fn near_expiry() -> KeyVaultEvent {
        let url = format!("https://sample-kv.vault.azure.net/secrets/newsecret/{VERSION}");
        KeyVaultEvent {
            id: ID.to_owned(),
            kind: EventKind::NearExpiry,
            vault: "sample-kv".to_owned(),
            secret: "newsecret".to_owned(),
            version: Some(VERSION.to_owned()),
            version_id: Some(url),
            exp_s: Some(1_559_082_102.0),
        }
    }

    fn events(content_type: &str, body: &str) -> Vec<KeyVaultEvent> {
        match parse(Some(content_type), body.as_bytes()) {
            Ok(Parsed::Events(events)) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn event_grid_example_with_numeric_string_or_null_times() {
        let ct = "application/json; charset=utf-8";
        assert_eq!(events(ct, EVENT_GRID), [near_expiry()]);
        let quoted = EVENT_GRID.replace("1559082102", "\" 1559082102\"");
        let quoted = quoted.replace("1559081980", "\"1559081980\"");
        assert_eq!(events(ct, &quoted), [near_expiry()]);
        let mut never = near_expiry();
        never.exp_s = None;
        let null = EVENT_GRID.replace("1559082102", "null");
        assert_eq!(
            events(ct, &null.replace("1559081980", "null")),
            [never.clone()]
        );
        let absent = EVENT_GRID.replace(r#","EXP":1559082102"#, "");
        assert_eq!(events(ct, &absent), [never]);
    }

    #[test]
    fn cloud_events_single_and_batch() {
        let mut new = near_expiry();
        new.kind = EventKind::NewVersionCreated;
        new.version_id = Some(format!("…/secrets/newsecret/{VERSION}"));
        let ct = "application/cloudevents+json; charset=utf-8";
        assert_eq!(events(ct, CLOUD_EVENT), [new.clone()]);
        let expired = CLOUD_EVENT.replace("SecretNewVersionCreated", "SecretExpired");
        let batch = format!("[{CLOUD_EVENT},{}]", expired.replace(ID, "2nd"));
        let mut second = new.clone();
        (second.id, second.kind) = ("2nd".to_owned(), EventKind::Expired);
        assert_eq!(
            events("application/cloudevents-batch+json", &batch),
            [new, second]
        );
    }

    #[test]
    fn validation_event_gives_its_code() {
        let code = CODE.to_owned();
        assert_eq!(
            parse(JSON, VALIDATION.as_bytes()),
            Ok(Parsed::Validation { code })
        );
    }

    const TYPOS: &str = r#"[{"id":"t","topic":"/x/vaults/topic-kv","subject":"subject-secret",
        "eventType":"Microsoft.KeyVault.SecretExpired","data":{"vaultname":"other-kv",
        "ObjectName ":"typo-secret","VERSION":" v1","id":"https://v/secrets/typo-secret/v1","exp":"12.5"}}]"#;

    #[test]
    fn data_keys_are_trimmed_and_case_insensitive_and_names_fall_back_to_the_envelope() {
        let expected = KeyVaultEvent {
            id: "t".to_owned(),
            kind: EventKind::Expired,
            vault: "other-kv".to_owned(),
            secret: "typo-secret".to_owned(),
            version: Some("v1".to_owned()),
            version_id: Some("https://v/secrets/typo-secret/v1".to_owned()),
            exp_s: Some(12.5),
        };
        assert_eq!(
            events("application/json", TYPOS),
            std::slice::from_ref(&expected)
        );
        let bare = TYPOS.replace(r#""vaultname":"other-kv","#, "");
        let bare = bare.replace(r#""ObjectName ":"typo-secret","#, "");
        let mut fallback = expected;
        (fallback.vault, fallback.secret) = ("topic-kv".to_owned(), "subject-secret".to_owned());
        assert_eq!(events("application/json", &bare), [fallback]);
    }

    #[test]
    fn unknown_types_are_other_not_errors() {
        let body = r#"[{"id":"b","eventType":"Microsoft.Storage.BlobCreated","topic":"/a/acct","data":{"Id":5}}]"#;
        let event = &events("application/json", body)[0];
        let other = EventKind::Other("Microsoft.Storage.BlobCreated".to_owned());
        assert_eq!(event.kind, other);
        let (vault, secret) = (event.vault.as_str(), event.secret.as_str());
        assert_eq!((vault, secret, &event.version_id), ("acct", "", &None));
    }

    /// `body => message`, one case a line (every content type is parsed by shape).
    const MALFORMED: &str = r#"
[{ => body is not valid JSON: EOF while parsing an object at line 1 column 2
42 => body is neither a JSON array nor an object
[{"id":"a","eventType":"X"},{"eventType":"X"}] => event 2 has no id
[{"id":"a","eventType":"X"},7] => event 2 is not a JSON object
[{"id":"a"}] => event 1 has no eventType
[{"id":1,"eventType":"X"}] => event 1 has an invalid id: not a string
{"specversion":"1.0","id":"a"} => event 1 has no type
{"specversion":"0.3","id":"a","type":"X"} => event 1 has an invalid specversion: not 1.0
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","topic":"/v/kv","subject":"s"}] => event 1 has no data
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","topic":"/v/kv","subject":"s","data":{"EXP":"soon"}}] => event 1 has an invalid EXP: not a number
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","topic":"/v/kv","subject":"s","data":{"EXP":true}}] => event 1 has an invalid EXP: not a number
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","topic":"/v/kv","subject":"s","data":{"Version":3}}] => event 1 has an invalid Version: not a string
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","subject":"s","data":{}}] => event 1 has no vault name
[{"id":"a","eventType":"Microsoft.KeyVault.SecretExpired","topic":"/v/kv","subject":" ","data":{}}] => event 1 has no secret name
[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{}}] => event 1 has no data.validationCode
[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"c"}},{"id":"a","eventType":"X"}] => a subscription validation event must be delivered alone, not with 1 other event(s)
"#;

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        for line in MALFORMED.lines().filter(|line| !line.is_empty()) {
            let (body, message) = line.split_once(" => ").unwrap();
            let error = parse(JSON, body.as_bytes()).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
        let error = parse(Some("text/plain"), EVENT_GRID.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("unsupported content type \"text/plain\": expected"));
    }

    #[test]
    fn content_types() {
        let batch = "application/cloudevents-batch+json; charset=\"utf-8\"";
        for ok in ["application/json", "Application/JSON;charset=UTF-8", batch] {
            assert_eq!(check_media_type(Some(ok)), Ok(()), "{ok}");
        }
        let latin = Some("application/json; charset=latin1");
        for bad in [None, Some(""), Some("text/json"), latin] {
            let refused = check_media_type(bad).unwrap_err();
            assert!(
                matches!(refused, WebhookError::UnsupportedMediaType(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        for wrong in [&b""[..], b"ab", b"abd", b"abcd", b"xbc"] {
            assert!(!ct_eq(wrong, b"abc"));
        }
    }

    fn config() -> WebhookConfig {
        WebhookConfig {
            secret: Some(SecretValue::new(SECRET)),
            bearer_tokens: vec!["token-a".to_owned(), "token-b".to_owned()],
            body_limit_bytes: 4096,
            ..WebhookConfig::default()
        }
    }

    fn app() -> (Router, mpsc::Receiver<Delivery>) {
        let (sink, deliveries) = mpsc::channel(4);
        (router(config(), sink).unwrap(), deliveries)
    }

    const AUTH: (&str, &str) = ("x-rekey-webhook-secret", SECRET);
    const CT: (&str, &str) = ("content-type", "application/json");
    const ORIGIN: (&str, &str) = ("WebHook-Request-Origin", "eventgrid.azure.net");

    type Reply = (StatusCode, HeaderMap, String);

    /// One request: status, headers and body. A handler stuck on the sink fails the test.
    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let call = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request));
        let (parts, body) = call.await.unwrap().unwrap().into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn validation_handshake_with_each_credential() {
        let (app, mut deliveries) = app();
        let query = format!("{PATH}?code={SECRET}");
        let bearer = [("authorization", "Bearer token-b"), CT];
        for (uri, headers) in [(PATH, &[AUTH, CT][..]), (&query, &[CT]), (PATH, &bearer)] {
            let (status, _, body) = send(&app, "POST", uri, headers, VALIDATION).await;
            let expected = format!(r#"{{"validationResponse":"{CODE}"}}"#);
            assert_eq!((status, body), (StatusCode::OK, expected));
        }
        assert!(deliveries.try_recv().is_err());
    }

    #[tokio::test]
    async fn unauthenticated_is_401_and_forwards_nothing() {
        let (app, mut deliveries) = app();
        let wrong_query = format!("{PATH}?code=hook-secret-0124");
        let cases: [(&str, &[(&str, &str)]); 6] = [
            (PATH, &[CT]),
            (PATH, &[("x-rekey-webhook-secret", "hook-secret-0124"), CT]),
            (PATH, &[("x-rekey-webhook-secret", "hook-secret"), CT]),
            (&wrong_query, &[CT]),
            (PATH, &[("authorization", "Bearer token-c"), CT]),
            (PATH, &[("authorization", "Basic token-a"), CT]),
        ];
        for (uri, headers) in cases {
            let (status, headers, body) = send(&app, "POST", uri, headers, EVENT_GRID).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert_eq!(body, r#"{"error":"missing or wrong credential"}"#);
        }
        assert!(deliveries.try_recv().is_err());
    }

    #[tokio::test]
    async fn options_handshake() {
        let (app, _deliveries) = app();
        for uri in [PATH, &format!("{PATH}?code={SECRET}")] {
            let (status, headers, _) = send(&app, "OPTIONS", uri, &[ORIGIN], "").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["webhook-allowed-origin"], "eventgrid.azure.net");
            assert_eq!(headers["webhook-allowed-rate"], "*");
            assert_eq!(headers["allow"], "POST");
        }
        let (status, _, body) = send(&app, "OPTIONS", PATH, &[], "").await;
        let expected = r#"{"error":"missing WebHook-Request-Origin header"}"#;
        assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, expected));
        let wrong = format!("{PATH}?code=nope");
        let (status, ..) = send(&app, "OPTIONS", &wrong, &[ORIGIN], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, ..) = send(&app, "GET", PATH, &[AUTH], "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn oversize_malformed_and_wrong_type_forward_nothing() {
        let (app, mut deliveries) = app();
        let padded = |n: usize| VALIDATION.to_owned() + &" ".repeat(n - VALIDATION.len());
        let (status, _, body) = send(&app, "POST", PATH, &[AUTH, CT], &padded(4096)).await;
        assert_eq!((status, body.contains(CODE)), (StatusCode::OK, true));
        let (status, ..) = send(&app, "POST", PATH, &[AUTH, CT], &padded(4097)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let declared = [AUTH, CT, ("content-length", "5000")];
        let (status, ..) = send(&app, "POST", PATH, &declared, &padded(5000)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _, body) = send(&app, "POST", PATH, &[AUTH, CT], r#"[{"id":"a"}]"#).await;
        let expected = r#"{"error":"event 1 has no eventType"}"#;
        assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, expected));
        for headers in [&[AUTH, ("content-type", "text/plain")][..], &[AUTH]] {
            let (status, ..) = send(&app, "POST", PATH, headers, EVENT_GRID).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        assert!(deliveries.try_recv().is_err());
    }

    /// Posts the Event Grid example; the sink answers `reply` (or drops it when `None`).
    async fn deliver_with(reply: Option<Result<(), String>>) -> (Reply, Vec<KeyVaultEvent>) {
        let (app, mut deliveries) = app();
        let sink = tokio::spawn(async move {
            let delivery = deliveries.recv().await.unwrap();
            if let Some(reply) = reply {
                delivery.reply.send(reply).unwrap();
            }
            delivery.events
        });
        let reply = send(&app, "POST", PATH, &[AUTH, CT], EVENT_GRID).await;
        (reply, sink.await.unwrap())
    }

    #[tokio::test]
    async fn events_are_acknowledged_only_once_recorded() {
        let ((status, headers, body), events) = deliver_with(Some(Ok(()))).await;
        assert_eq!(
            (status, body.as_str(), events),
            (StatusCode::OK, "", vec![near_expiry()])
        );
        assert!(headers.get("retry-after").is_none());
        for reply in [Some(Err("journal busy".to_owned())), None] {
            let ((status, headers, _), events) = deliver_with(reply).await;
            let unavailable = StatusCode::SERVICE_UNAVAILABLE;
            assert_eq!((status, events), (unavailable, vec![near_expiry()]));
            assert_eq!(headers["retry-after"], "10");
        }
        let (sink, deliveries) = mpsc::channel(1);
        drop(deliveries);
        let app = router(config(), sink).unwrap();
        let (status, headers, _) = send(&app, "POST", PATH, &[AUTH, CT], EVENT_GRID).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "10");
    }

    #[test]
    fn no_credential_no_router_and_debug_redacts() {
        let refused = |config| router(config, mpsc::channel(1).0).unwrap_err().to_string();
        let none = "no secret and no bearer token: an unauthenticated webhook is not allowed";
        assert_eq!(
            refused(WebhookConfig::default()),
            format!("webhook configuration: {none}")
        );
        let mut empty = config();
        empty.bearer_tokens.push(String::new());
        let empty = refused(empty);
        assert!(empty.ends_with("an empty secret or bearer token is not a credential"));
        let mut header = config();
        header.header = "bad header".to_owned();
        let header = refused(header);
        assert!(header.ends_with("the secret header name is not a valid HTTP header name"));
        let debug = format!("{:?}", config());
        assert!(
            !debug.contains(SECRET) && !debug.contains("token-"),
            "{debug}"
        );
        assert!(debug.contains(r#"secret: Some("[redacted]")"#) && debug.contains("[2 redacted]"));
    }
}
