//! One HTTP exchange with an Azure service, and what its failures mean. Every call has a
//! timeout; connection failures, timeouts and 5xx are transient; 429 and 503 honour
//! `Retry-After`; 400/401/403/404 are permanent, with a message saying which permission or
//! resource is missing. Messages quote Azure's error code and text, never a secret value.

use std::sync::Arc;
use std::time::Duration;

use rekey_journal::Clock;
use serde_json::Value;
use url::Url;

use super::guard_credentials;
use crate::provider::{ProviderError, SecretValue};

/// Default timeout of one call.
pub const CALL_TIMEOUT_MS: u64 = 30_000;
/// Wait before retrying a 429/503 that named no `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MS: i64 = 1_000;
/// Largest response body read (Azure's largest answers here are a few KiB).
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// What a request sends.
#[derive(Debug)]
pub enum Body<'a> {
    Empty,
    Json(&'a Value),
    /// Form fields (token requests); values may be secrets and are never logged.
    Form(&'a [(&'a str, &'a str)]),
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after_ms: Option<i64>,
    pub www_authenticate: Option<String>,
    /// The JSON body, or `Null` when empty or not JSON.
    pub body: Value,
}

impl Response {
    /// True for 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A shared HTTP client with a per-call timeout and an injected clock (for `Retry-After`
/// dates).
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    timeout_ms: u64,
}

impl Http {
    /// A client whose every call times out after `timeout_ms`.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(timeout_ms: u64, clock: Arc<dyn Clock>) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .connect_timeout(Duration::from_millis(timeout_ms.min(10_000)))
            .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            clock,
            timeout_ms,
        })
    }

    /// How long one call may take before it times out.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Sends one request. A bearer token or form body is only ever sent where
    /// [`super::may_carry_credentials`] allows.
    ///
    /// # Errors
    /// Transient errors for timeouts and connection failures; permanent when refused
    /// locally (credentials to a non-loopback plain-HTTP URL).
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        bearer: Option<&SecretValue>,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Response, ProviderError> {
        if bearer.is_some() || matches!(body, Body::Form(_)) {
            guard_credentials(url)?;
        }
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(token) = bearer {
            req = req.bearer_auth(token.expose());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            Body::Empty => req.header(reqwest::header::CONTENT_LENGTH, "0"),
            Body::Json(v) => req.json(v),
            Body::Form(fields) => req.form(fields),
        };
        let where_ = format!("{method} {}", redacted(url));
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::transient(format!("{where_}: {}", describe_reqwest(&e))))?;
        let status = resp.status().as_u16();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after_ms = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(&v, self.clock.now_ms()));
        let www_authenticate = header(reqwest::header::WWW_AUTHENTICATE);
        let bytes = resp.bytes().await.map_err(|e| {
            ProviderError::transient(format!(
                "{where_}: the response was lost: {}",
                describe_reqwest(&e)
            ))
        })?;
        if bytes.len() > RESPONSE_BYTES_MAX {
            return Err(ProviderError::transient(format!(
                "{where_}: response of {} bytes is over the {RESPONSE_BYTES_MAX}-byte limit",
                bytes.len()
            )));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Response {
            status,
            retry_after_ms,
            www_authenticate,
            body,
        })
    }
}

/// The URL without its query (which may carry tokens such as `$skiptoken`).
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    // The error's own text names the URL; ours does already, and without the query.
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

/// `Retry-After` as milliseconds from now: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<i64>() {
        return Some(secs.max(0).saturating_mul(1000));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?;
    Some((at.timestamp().as_millisecond() - now_ms).max(0))
}

/// What a call was trying to do, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// e.g. "Key Vault".
    pub service: &'a str,
    /// e.g. "set".
    pub action: &'a str,
    /// e.g. "secret payments-api in `https://kv.vault.azure.net`".
    pub resource: &'a str,
    /// The role or permission that allows the action, e.g. "Key Vault Secrets Officer".
    pub grant: &'a str,
}

/// Azure's error code and message from any of its error body shapes.
pub fn error_text(body: &Value) -> String {
    let err = &body["error"];
    let inner = err["innererror"]["code"].as_str();
    let code = err["code"].as_str().map(|c| match inner {
        Some(i) if i != c => format!("{c}/{i}"),
        _ => c.to_owned(),
    });
    let (code, message) = if err.is_object() {
        (code.as_deref(), err["message"].as_str())
    } else {
        (err.as_str(), body["error_description"].as_str())
    };
    match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {}", m.lines().next().unwrap_or(m)),
        (Some(c), None) => c.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "no error details".to_owned(),
    }
}

/// Classifies a failed response.
pub fn classify(op: Op<'_>, resp: &Response) -> ProviderError {
    let Op {
        service,
        action,
        resource,
        grant,
    } = op;
    let text = error_text(&resp.body);
    let status = resp.status;
    match status {
        429 | 503 => ProviderError::rate_limited(
            resp.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS),
            format!(
                "{service} throttled `{action}` on {resource} (HTTP {status}: {text}); retrying after the time it asked"
            ),
        ),
        408 | 500..=599 => ProviderError::transient(format!(
            "{service} failed `{action}` on {resource} (HTTP {status}: {text}); retrying"
        )),
        401 => ProviderError::permanent(format!(
            "{service} rejected rekey's credentials for `{action}` on {resource} (HTTP 401: {text}); check the credential rekey is configured with"
        )),
        403 => ProviderError::permanent(format!(
            "{service} denied `{action}` on {resource} (HTTP 403: {text}): grant {grant}"
        )),
        404 => ProviderError::permanent(format!(
            "{service}: {resource} not found for `{action}` (HTTP 404: {text}); check the name in the config"
        )),
        409 if text.contains("being deleted") => ProviderError::transient(format!(
            "{service}: {resource} is being deleted (HTTP 409: {text}); retrying"
        )),
        409 => ProviderError::permanent(format!(
            "{service} refused `{action}` on {resource} (HTTP 409: {text}); recover or purge the deleted object first"
        )),
        _ => ProviderError::permanent(format!(
            "{service} refused `{action}` on {resource} (HTTP {status}: {text})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::ErrorClass;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7", 0), Some(7_000));
        let now = 1_445_412_470_000; // 2015-10-21T07:27:50Z
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(10_000)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    fn resp(status: u16, body: Value) -> Response {
        Response {
            status,
            retry_after_ms: None,
            www_authenticate: None,
            body,
        }
    }

    #[test]
    fn statuses_map_to_classes_and_say_what_to_grant() {
        let op = Op {
            service: "Key Vault",
            action: "set",
            resource: "secret payments-api",
            grant: "Key Vault Secrets Officer",
        };
        let kv = |code: &str| serde_json::json!({"error": {"code": code, "message": "m"}});
        let e = classify(op, &resp(403, kv("Forbidden")));
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message
                .contains("Key Vault denied `set` on secret payments-api (HTTP 403: Forbidden: m): grant Key Vault Secrets Officer"),
            "{}",
            e.message
        );
        let mut throttled = resp(429, kv("Throttled"));
        throttled.retry_after_ms = Some(4_000);
        let e = classify(op, &throttled);
        assert_eq!(
            (e.class, e.retry_after_ms),
            (ErrorClass::RateLimited, Some(4_000))
        );
        assert_eq!(
            classify(op, &resp(503, Value::Null)).retry_after_ms,
            Some(1_000)
        );
        assert_eq!(
            classify(op, &resp(502, Value::Null)).class,
            ErrorClass::Transient
        );
        assert_eq!(
            classify(op, &resp(404, kv("SecretNotFound"))).class,
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(op, &resp(401, kv("Unauthorized"))).class,
            ErrorClass::Permanent
        );
        let login = serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret.\r\nTrace ID: x"});
        assert_eq!(
            error_text(&login),
            "invalid_client: AADSTS7000215: Invalid client secret."
        );
    }
}

/// An HTTP client that authenticates every call with a token for one scope (ARM, Graph).
#[derive(Debug, Clone)]
pub struct Authed {
    pub http: Http,
    pub credential: Arc<dyn super::credential::Credential>,
    /// e.g. `https://management.azure.com/.default`.
    pub scope: String,
}

impl Authed {
    /// One authenticated call; any status comes back as a response.
    ///
    /// # Errors
    /// Token and transport errors.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Body<'_>,
    ) -> Result<Response, ProviderError> {
        let token = self.credential.token(&self.scope).await?;
        self.http.send(method, url, Some(&token), &[], body).await
    }

    /// One authenticated call; non-2xx becomes an error classified for `op`.
    ///
    /// # Errors
    /// Token, transport and classified HTTP errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Body<'_>,
        op: Op<'_>,
    ) -> Result<Response, ProviderError> {
        let resp = self.send(method, url, body).await?;
        if resp.ok() {
            Ok(resp)
        } else {
            Err(classify(op, &resp))
        }
    }
}

/// `base` + `path` (+ `?api-version=`), for ARM and Graph URLs.
///
/// # Errors
/// Permanent, when the pieces make no URL.
pub fn join(base: &Url, path: &str, api_version: Option<&str>) -> Result<Url, ProviderError> {
    let mut url = Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
        .map_err(|e| ProviderError::permanent(format!("{base} and {path} make no URL: {e}")))?;
    if let Some(v) = api_version {
        url.query_pairs_mut().append_pair("api-version", v);
    }
    Ok(url)
}
