//! Credentials rekey uses to call Azure: a client secret or certificate, a managed identity
//! (IMDS or the App Service `IDENTITY_ENDPOINT`), workload identity federation, the Azure
//! CLI, or a static bearer token (CI pipelines). Tokens are cached per scope and refreshed
//! before they expire. `chain` tries several in the order Azure users expect.
//!
//! Written by hand rather than with `azure_identity`: that crate cannot point its managed
//! identity and authority endpoints at loopback test servers without its own test hooks,
//! and what rekey needs is five small HTTP exchanges.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use url::Url;

use super::azure_cli::AzureCli;
use super::certificate::{ASSERTION_TYPE, ClientCertificate};
use super::http::{Body, Http, Op, classify};
use crate::provider::{BoxFuture, ProviderError, SecretValue};

/// Refresh a cached token this long before it expires.
pub const REFRESH_MARGIN_MS: i64 = 5 * 60_000;

/// Something that hands out bearer tokens for a scope (`https://vault.azure.net/.default`).
pub trait Credential: Send + Sync + std::fmt::Debug {
    /// A token for `scope`, from the cache when still fresh.
    ///
    /// # Errors
    /// Classified [`ProviderError`]s from the token endpoint.
    fn token<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<SecretValue, ProviderError>>;
}

/// Where tokens come from.
#[derive(Debug)]
pub enum Source {
    /// OAuth 2.0 client credentials (v2 endpoint) with a client secret.
    ClientSecret {
        authority: Url,
        tenant: String,
        client_id: String,
        secret: SecretValue,
    },
    /// OAuth 2.0 client credentials (v2 endpoint) with a signed certificate assertion.
    ClientCertificate {
        authority: Url,
        tenant: String,
        client_id: String,
        certificate: ClientCertificate,
    },
    /// Managed identity through the instance metadata service.
    Imds {
        endpoint: Url,
        client_id: Option<String>,
    },
    /// Managed identity through App Service's `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
    AppService {
        endpoint: Url,
        header: SecretValue,
        client_id: Option<String>,
    },
    /// A token given from outside (e.g. `REKEY_AZURE_TOKEN` in a pipeline); never refreshed.
    Static { token: SecretValue },
    /// The signed-in Azure CLI (`az login`).
    AzureCli(AzureCli),
    /// Workload identity federation (AKS): the projected service-account token in
    /// `token_file` is the client assertion. Read at every token request, so a token the
    /// kubelet rotated is used as soon as it lands.
    WorkloadIdentity {
        authority: Url,
        tenant: String,
        client_id: String,
        token_file: std::path::PathBuf,
    },
}

/// A token and when it stops working.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: SecretValue,
    pub expires_at_ms: i64,
}

/// A [`Credential`] over a [`Source`], caching tokens per scope.
#[derive(Debug)]
pub struct TokenCache {
    http: Http,
    source: Source,
    cache: Mutex<HashMap<String, AccessToken>>,
}

impl TokenCache {
    /// Tokens from `source`, fetched with `http`.
    pub fn new(http: Http, source: Source) -> Self {
        Self {
            http,
            source,
            cache: Mutex::default(),
        }
    }

    async fn fetch(&self, scope: &str) -> Result<AccessToken, ProviderError> {
        let now = self.http.clock().now_ms();
        // Managed identity endpoints take a resource, not a v2 scope.
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        match &self.source {
            Source::Static { token } => Ok(AccessToken {
                token: token.clone(),
                expires_at_ms: i64::MAX,
            }),
            Source::ClientSecret {
                authority,
                tenant,
                client_id,
                secret,
            } => {
                let url = token_url(authority, tenant)?;
                client_credentials(&self.http, &url, client_id, secret, scope).await
            }
            Source::ClientCertificate {
                authority,
                tenant,
                client_id,
                certificate,
            } => {
                let url = token_url(authority, tenant)?;
                let jti = {
                    use rand::RngExt;
                    let mut raw = [0u8; 16];
                    rand::rng().fill(&mut raw[..]);
                    hex::encode(raw)
                };
                let assertion = certificate.assertion(client_id, url.as_str(), now, &jti)?;
                let form = [
                    ("client_id", client_id.as_str()),
                    ("scope", scope),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.as_str()),
                    ("grant_type", "client_credentials"),
                ];
                let resp = self
                    .http
                    .send(reqwest::Method::POST, &url, None, &[], Body::Form(&form))
                    .await?;
                token_from(&resp, now, &format!("client {client_id}"), scope)
            }
            Source::AzureCli(cli) => cli.token(resource, now).await,
            Source::WorkloadIdentity {
                authority,
                tenant,
                client_id,
                token_file,
            } => {
                let url = token_url(authority, tenant)?;
                let assertion = read_federated_token(token_file)?;
                let form = [
                    ("client_id", client_id.as_str()),
                    ("scope", scope),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.expose()),
                    ("grant_type", "client_credentials"),
                ];
                let resp = self
                    .http
                    .send(reqwest::Method::POST, &url, None, &[], Body::Form(&form))
                    .await?;
                token_from(&resp, now, &format!("workload identity {client_id}"), scope)
            }
            Source::Imds {
                endpoint,
                client_id,
            } => {
                let mut url = endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("api-version", "2018-02-01")
                    .append_pair("resource", resource);
                if let Some(id) = client_id {
                    url.query_pairs_mut().append_pair("client_id", id);
                }
                let resp = self
                    .http
                    .send(
                        reqwest::Method::GET,
                        &url,
                        None,
                        &[("Metadata", "true")],
                        Body::Empty,
                    )
                    .await?;
                token_from(&resp, now, "managed identity (IMDS)", resource)
            }
            Source::AppService {
                endpoint,
                header,
                client_id,
            } => {
                let mut url = endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("api-version", "2019-08-01")
                    .append_pair("resource", resource);
                if let Some(id) = client_id {
                    url.query_pairs_mut().append_pair("client_id", id);
                }
                super::guard_credentials(&url)?;
                let resp = self
                    .http
                    .send(
                        reqwest::Method::GET,
                        &url,
                        None,
                        &[("X-IDENTITY-HEADER", header.expose())],
                        Body::Empty,
                    )
                    .await?;
                token_from(&resp, now, "managed identity (App Service)", resource)
            }
        }
    }
}

impl Credential for TokenCache {
    fn token<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            let now = self.http.clock().now_ms();
            let cached = {
                let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache
                    .get(scope)
                    .filter(|t| t.expires_at_ms.saturating_sub(REFRESH_MARGIN_MS) > now)
                    .map(|t| t.token.clone())
            };
            if let Some(token) = cached {
                return Ok(token);
            }
            let fresh = self.fetch(scope).await?;
            let token = fresh.token.clone();
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(scope.to_owned(), fresh);
            Ok(token)
        })
    }
}

/// The projected service-account token, as the client assertion.
fn read_federated_token(path: &std::path::Path) -> Result<SecretValue, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProviderError::permanent(format!(
            "workload identity: cannot read the federated token file {} ({e}); is AZURE_FEDERATED_TOKEN_FILE right and the service account token projected?",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ProviderError::transient(format!(
            "workload identity: the federated token file {} is empty",
            path.display()
        )));
    }
    Ok(SecretValue::new(token))
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
///
/// # Errors
/// Permanent, when the authority URL cannot take the path.
pub fn token_url(authority: &Url, tenant: &str) -> Result<Url, ProviderError> {
    let base = authority.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/token")).map_err(|e| {
        ProviderError::permanent(format!(
            "authority {authority} and tenant {tenant} make no URL: {e}"
        ))
    })
}

/// One client-credentials token request (also how a rotated client secret is verified).
///
/// # Errors
/// Classified: `invalid_client` is permanent, throttling and 5xx transient.
pub async fn client_credentials(
    http: &Http,
    url: &Url,
    client_id: &str,
    secret: &SecretValue,
    scope: &str,
) -> Result<AccessToken, ProviderError> {
    let now = http.clock().now_ms();
    let form = [
        ("client_id", client_id),
        ("scope", scope),
        ("client_secret", secret.expose()),
        ("grant_type", "client_credentials"),
    ];
    let resp = http
        .send(reqwest::Method::POST, url, None, &[], Body::Form(&form))
        .await?;
    token_from(&resp, now, &format!("client {client_id}"), scope)
}

/// Reads a token response: `access_token` plus `expires_in` or `expires_on`, each a
/// number or a numeric string (the endpoints differ).
fn token_from(
    resp: &super::http::Response,
    now_ms: i64,
    who: &str,
    scope: &str,
) -> Result<AccessToken, ProviderError> {
    if !resp.ok() {
        return Err(classify(
            Op {
                service: "Entra ID",
                action: "get a token",
                resource: &format!("{who} for {scope}"),
                grant: "the identity access (check tenant, client id and secret)",
            },
            resp,
        ));
    }
    let token = resp.body["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ProviderError::permanent(format!("token response for {who} has no access_token"))
        })?;
    let number = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    let expires_at_ms = if let Some(secs) = number(&resp.body["expires_in"]) {
        now_ms.saturating_add(secs.saturating_mul(1000))
    } else if let Some(at) = number(&resp.body["expires_on"]) {
        at.saturating_mul(1000)
    } else {
        return Err(ProviderError::permanent(format!(
            "token response for {who} has neither expires_in nor expires_on"
        )));
    };
    Ok(AccessToken {
        token: SecretValue::new(token),
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::azure::http::Response;

    fn ok(body: Value) -> Response {
        Response {
            status: 200,
            retry_after_ms: None,
            www_authenticate: None,
            body,
        }
    }

    #[test]
    fn expiry_is_read_as_number_or_string_in_either_field() {
        let cases = [
            (
                serde_json::json!({"access_token": "t", "expires_in": 3599}),
                1_000 + 3_599_000,
            ),
            (
                serde_json::json!({"access_token": "t", "expires_in": "3599"}),
                1_000 + 3_599_000,
            ),
            (
                serde_json::json!({"access_token": "t", "expires_on": 1_506_484_173}),
                1_506_484_173_000,
            ),
            (
                serde_json::json!({"access_token": "t", "expires_on": "1506484173"}),
                1_506_484_173_000,
            ),
        ];
        for (body, want) in cases {
            let t = token_from(&ok(body.clone()), 1_000, "x", "s").unwrap();
            assert_eq!(t.expires_at_ms, want, "{body}");
        }
        let err =
            token_from(&ok(serde_json::json!({"access_token": "t"})), 0, "x", "s").unwrap_err();
        assert!(err.message.contains("neither expires_in nor expires_on"));
    }
}
