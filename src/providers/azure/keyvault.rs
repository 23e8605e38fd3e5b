//! Key Vault secrets as a store. Each rotation writes a new version tagged with the
//! rotation and the step's idempotency key, so `reconcile` finds a version whose response
//! was lost by listing versions (following `nextLink` pages) and matching the tag. Versions
//! are named by their full id URL, so a value can be read back by version alone.
//!
//! Authentication is challenge-based, as Azure's SDKs do it: a first request without a
//! token learns the token resource from `WWW-Authenticate`, which must belong to the vault's
//! domain unless verification is turned off (loopback test servers).
//!
//! Every request to the vault, the challenge probe and each listing page included, first
//! takes a slot from the vault's [`RequestBudget`] (when one is set), and a 429 tells the
//! budget to pause everyone: bulk rotations queue instead of being throttled.

use std::sync::Arc;

use serde_json::json;
use url::Url;

use super::budget::RequestBudget;
use super::credential::Credential;
use super::http::{Body, DEFAULT_RETRY_AFTER_MS, Http, Op, Response, classify};
use crate::provider::{BoxFuture, Found, ProviderError, Reply, SecretValue, Step, Store, Verifier};
use crate::providers::versions;

/// The api-version rekey speaks (the contract's stable versions share these shapes).
pub const API_VERSION: &str = "7.5";
/// Tag carrying the rotation id on every version rekey writes.
pub const ROTATION_TAG: &str = "rekey-rotation";
/// Tag carrying the step's idempotency key.
pub const KEY_TAG: &str = "rekey-key";
/// Most version pages followed when reconciling (25 versions a page).
pub const VERSION_PAGES_MAX: usize = 400;
/// Most tags Key Vault keeps on one version.
pub const TAGS_MAX: usize = 15;

/// What a new version carries beyond its value and rekey's own tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub tags: std::collections::BTreeMap<String, String>,
    pub content_type: Option<String>,
}

/// One vault, holding each secret under its config name.
#[derive(Debug)]
pub struct KeyVaultStore {
    http: Http,
    credential: Arc<dyn Credential>,
    vault: Url,
    verify_challenge_resource: bool,
    content_type: Option<String>,
    /// The token scope learned from the vault's challenge; one probe for all callers, so a
    /// bulk rotation starting at once does not send one each.
    scope: tokio::sync::OnceCell<String>,
    /// The vault's request budget; `None` sends without waiting.
    budget: Option<Arc<RequestBudget>>,
}

impl KeyVaultStore {
    /// The vault at `vault` (e.g. `https://myvault.vault.azure.net`).
    pub fn new(http: Http, credential: Arc<dyn Credential>, vault: Url) -> Self {
        Self {
            http,
            credential,
            vault,
            verify_challenge_resource: true,
            content_type: None,
            scope: tokio::sync::OnceCell::new(),
            budget: None,
        }
    }

    /// Sends every request within `budget`, shared by every store of the same vault
    /// (see [`super::budget::VaultBudgets`]).
    pub fn with_budget(mut self, budget: Arc<RequestBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Accept a challenge whose resource is not the vault's domain (the config's
    /// `verify_challenge_resource = false`: a trusted vault address outside that domain).
    pub fn without_challenge_verification(mut self) -> Self {
        self.verify_challenge_resource = false;
        self
    }

    /// Set this content type on every version written.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    fn base(&self) -> String {
        self.vault.as_str().trim_end_matches('/').to_owned()
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        Url::parse(&format!("{}{path}?api-version={API_VERSION}", self.base())).map_err(|e| {
            ProviderError::permanent(format!("bad Key Vault URL {}{path}: {e}", self.base()))
        })
    }

    fn secret_name(secret: &str) -> Result<&str, ProviderError> {
        let ok = !secret.is_empty()
            && secret.len() <= 127
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(secret)
        } else {
            Err(ProviderError::permanent(format!(
                "{secret:?} is not a valid Key Vault secret name (1 to 127 letters, digits and -); rename the secret in the config"
            )))
        }
    }

    fn resource(&self, secret: &str) -> String {
        format!("secret {secret} in {}", self.base())
    }

    /// The token scope, learned once from the vault's `WWW-Authenticate` challenge.
    async fn scope(&self) -> Result<&str, ProviderError> {
        self.scope
            .get_or_try_init(|| self.probe())
            .await
            .map(String::as_str)
    }

    /// Asks the vault, without a token, which token it wants.
    async fn probe(&self) -> Result<String, ProviderError> {
        // Nothing, not even the unauthenticated probe, goes where a token may not follow.
        super::guard_credentials(&self.vault)?;
        let mut probe = self.url("/secrets")?;
        probe.query_pairs_mut().append_pair("maxresults", "1");
        let resp = self
            .exchange(reqwest::Method::GET, &probe, None, Body::Empty)
            .await?;
        let challenge = match (resp.status, &resp.www_authenticate) {
            (401, Some(c)) => c.clone(),
            // Throttled before it could challenge: retry later, as for any other call.
            (429 | 503, _) => {
                let base = self.base();
                return Err(classify(
                    Self::op("probe", &base, "nothing (the probe carries no token)"),
                    &resp,
                ));
            }
            _ => {
                return Err(ProviderError::permanent(format!(
                    "{} did not answer like a Key Vault (HTTP {} without a Bearer challenge); check the vault URL",
                    self.base(),
                    resp.status
                )));
            }
        };
        let scope = scope_from_challenge(&challenge).ok_or_else(|| {
            ProviderError::permanent(format!(
                "Key Vault {} sent a challenge without resource or scope: {challenge}",
                self.base()
            ))
        })?;
        if self.verify_challenge_resource && !resource_matches(&scope, &self.vault) {
            return Err(ProviderError::permanent(format!(
                "Key Vault {} asked for a token for {scope}, which is not the vault's domain; refusing, so that no token for another service goes to this address. A vault reached at an address outside the domain its challenge names (a private endpoint or proxy under another name or an IP address, an emulator) needs verify_challenge_resource = false on its key_vault provider (in [fleet] for `rekey discover`): set it only for an address you trust",
                self.base()
            )));
        }
        Ok(scope)
    }

    /// One request to the vault, within its budget: the slot is taken just before sending
    /// (after the token, which may take a login), so grants and arrivals stay close; a
    /// 429 pauses every caller of the budget.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: &Url,
        bearer: Option<&SecretValue>,
        body: Body<'_>,
    ) -> Result<Response, ProviderError> {
        let Some(budget) = &self.budget else {
            return self.http.send(method, url, bearer, &[], body).await;
        };
        budget.acquire().await;
        let resp = self.http.send(method, url, bearer, &[], body).await?;
        if resp.status == 429 {
            let wait = resp.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS);
            budget.on_throttled(u64::try_from(wait).unwrap_or(0));
        } else {
            budget.on_success();
        }
        Ok(resp)
    }

    /// One authenticated call; any status comes back as a response.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Body<'_>,
    ) -> Result<Response, ProviderError> {
        let token = self.credential.token(self.scope().await?).await?;
        self.exchange(method, url, Some(&token), body).await
    }

    /// One authenticated call; non-2xx becomes a classified error.
    async fn call(
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

    fn op<'a>(action: &'a str, resource: &'a str, grant: &'a str) -> Op<'a> {
        Op {
            service: "Key Vault",
            action,
            resource,
            grant,
        }
    }

    /// The latest version's id, or `None` when the secret does not exist yet.
    pub async fn current(&self, secret: &str) -> Result<Option<String>, ProviderError> {
        let name = Self::secret_name(secret)?;
        let url = self.url(&format!("/secrets/{name}/"))?;
        let resource = self.resource(secret);
        let resp = self.send(reqwest::Method::GET, &url, Body::Empty).await?;
        match resp.status {
            200 => Ok(resp.body["id"].as_str().map(str::to_owned)),
            404 => Ok(None),
            // The latest version is disabled (a compensated first rotation leaves it so):
            // the current value is the newest enabled version, if any.
            403 if resp.body["error"]["innererror"]["code"] == "SecretDisabled" => {
                self.newest_enabled(secret).await
            }
            _ => Err(classify(
                Self::op(
                    "get",
                    &resource,
                    "Key Vault Secrets User (or the get permission)",
                ),
                &resp,
            )),
        }
    }

    /// Writes `value` as the newest version, tagged with the rotation and `key`.
    pub async fn set(
        &self,
        secret: &str,
        value: &SecretValue,
        rotation_id: &str,
        key: &str,
    ) -> Result<String, ProviderError> {
        self.set_with(secret, value, rotation_id, key, Metadata::default())
            .await
    }

    /// Writes `value` as the newest version with `meta`'s tags and content type, tagged
    /// with the rotation and `key` as well (rekey's tags win over any of `meta`'s).
    pub async fn set_with(
        &self,
        secret: &str,
        value: &SecretValue,
        rotation_id: &str,
        key: &str,
        meta: Metadata,
    ) -> Result<String, ProviderError> {
        let name = Self::secret_name(secret)?;
        let url = self.url(&format!("/secrets/{name}"))?;
        let mut tags = meta.tags;
        tags.retain(|k, _| {
            !k.eq_ignore_ascii_case(ROTATION_TAG) && !k.eq_ignore_ascii_case(KEY_TAG)
        });
        tags.insert(ROTATION_TAG.to_owned(), rotation_id.to_owned());
        tags.insert(KEY_TAG.to_owned(), key.to_owned());
        let resource = self.resource(secret);
        if tags.len() > TAGS_MAX {
            return Err(ProviderError::permanent(format!(
                "{resource} would need {} tags on its new version (its own, kept from the current version, and rekey's), more than Key Vault's {TAGS_MAX}; remove some tags from the secret",
                tags.len()
            )));
        }
        let mut body = json!({
            "value": value.expose(),
            "tags": tags,
        });
        if let Some(ct) = self.content_type.as_ref().or(meta.content_type.as_ref()) {
            body["contentType"] = json!(ct);
        }
        let resp = self
            .call(
                reqwest::Method::PUT,
                &url,
                Body::Json(&body),
                Self::op(
                    "set",
                    &resource,
                    "Key Vault Secrets Officer (or the set permission)",
                ),
            )
            .await?;
        resp.body["id"].as_str().map(str::to_owned).ok_or_else(|| {
            ProviderError::permanent(format!("Key Vault set on {resource} returned no id"))
        })
    }

    /// What a write to `step`'s item carries beyond the value, as its address asks: the
    /// tags and content type of the version `from` (or, without one, of the newest
    /// enabled version) when it keeps them, its fixed tags, and `credential` under each
    /// credential tag. Listing shows tags and content types without values.
    async fn metadata_for(
        &self,
        step: Step<'_>,
        from: Option<&str>,
        credential: Option<&str>,
    ) -> Result<Metadata, ProviderError> {
        let Some(crate::saga::Address::KeyVault {
            tags,
            credential_tags,
            keep_metadata,
            ..
        }) = step.address
        else {
            return Ok(Metadata::default());
        };
        let mut meta = Metadata::default();
        if *keep_metadata {
            let source = match from {
                Some(id) => self
                    .versions(step.secret)
                    .await?
                    .into_iter()
                    .find(|v| v["id"].as_str().is_some_and(|v| v.eq_ignore_ascii_case(id))),
                None => self.newest_enabled_listed(step.secret).await?,
            };
            if let Some(v) = source {
                meta.content_type = v["contentType"].as_str().map(str::to_owned);
                meta.tags = v["tags"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect();
            }
        }
        let mut set = |name: &str, value: &str| {
            meta.tags.retain(|k, _| !k.eq_ignore_ascii_case(name));
            meta.tags.insert(name.to_owned(), value.to_owned());
        };
        for (k, v) in tags {
            set(k, v);
        }
        if let Some(id) = credential {
            for name in credential_tags {
                set(name, id);
            }
        }
        Ok(meta)
    }

    /// Checks that a version id belongs to this vault before a token is sent to it.
    fn own_version(&self, id: &str) -> Result<Url, ProviderError> {
        let prefix = format!("{}/secrets/", self.base());
        if !id
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase())
        {
            return Err(ProviderError::permanent(format!(
                "version {id} is not in vault {}; was the store's vault URL changed during the rotation?",
                self.base()
            )));
        }
        Url::parse(&format!("{id}?api-version={API_VERSION}"))
            .map_err(|e| ProviderError::permanent(format!("bad version id {id}: {e}")))
    }

    /// Enables or disables one version.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), ProviderError> {
        let url = self.own_version(id)?;
        let body = json!({"attributes": {"enabled": enabled}});
        self.call(
            reqwest::Method::PATCH,
            &url,
            Body::Json(&body),
            Self::op(
                "update",
                id,
                "Key Vault Secrets Officer (or the set permission)",
            ),
        )
        .await
        .map(drop)
    }

    /// Every version of `secret` (ids, tags, attributes; never values), following
    /// `nextLink` pages; empty when the secret does not exist.
    pub async fn versions(&self, secret: &str) -> Result<Vec<serde_json::Value>, ProviderError> {
        let name = Self::secret_name(secret)?;
        let mut url = self.url(&format!("/secrets/{name}/versions"))?;
        url.query_pairs_mut().append_pair("maxresults", "25");
        let resource = self.resource(secret);
        let mut all = Vec::new();
        for _ in 0..VERSION_PAGES_MAX {
            let resp = self.send(reqwest::Method::GET, &url, Body::Empty).await?;
            match resp.status {
                200..=299 => {}
                404 => return Ok(Vec::new()),
                _ => {
                    return Err(classify(
                        Self::op(
                            "list versions",
                            &resource,
                            "Key Vault Secrets User (or the list permission)",
                        ),
                        &resp,
                    ));
                }
            }
            all.extend(resp.body["value"].as_array().into_iter().flatten().cloned());
            // Pages may be empty yet carry a nextLink: follow it until there is none.
            match resp.body["nextLink"].as_str().filter(|s| !s.is_empty()) {
                Some(next) => url = self.same_origin(next)?,
                None => return Ok(all),
            }
        }
        Err(ProviderError::transient(format!(
            "listing versions of {resource} did not end after {VERSION_PAGES_MAX} pages"
        )))
    }

    /// The version carrying `key` in its tags, if any.
    pub async fn find_tagged(
        &self,
        secret: &str,
        key: &str,
    ) -> Result<Option<String>, ProviderError> {
        Ok(self
            .versions(secret)
            .await?
            .iter()
            .find(|v| v["tags"][KEY_TAG].as_str() == Some(key))
            .and_then(|v| v["id"].as_str())
            .map(str::to_owned))
    }

    /// The enabled versions rekey knows of, other than `live` (see [`versions`]).
    async fn superseded(
        &self,
        secret: &str,
        live: Option<&str>,
        captured: Option<&str>,
    ) -> Result<Vec<String>, ProviderError> {
        let listed = self.versions(secret).await?;
        let listed = listed.iter().filter_map(|v| {
            Some(versions::Listed {
                id: v["id"].as_str()?,
                enabled: v["attributes"]["enabled"].as_bool() != Some(false),
                written_by_rekey: v["tags"][ROTATION_TAG].is_string(),
            })
        });
        Ok(versions::superseded(listed, live, captured)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Disables every version `live` supersedes (I8).
    async fn disable_superseded_by(
        &self,
        secret: &str,
        live: Option<&str>,
        captured: Option<&str>,
    ) -> Result<(), ProviderError> {
        for id in self.superseded(secret, live, captured).await? {
            self.set_enabled(&id, false).await?;
        }
        Ok(())
    }

    /// True when nothing that `live` supersedes is still enabled.
    async fn settled(
        &self,
        secret: &str,
        live: Option<&str>,
        captured: Option<&str>,
    ) -> Result<bool, ProviderError> {
        Ok(self.superseded(secret, live, captured).await?.is_empty())
    }

    /// The `exp` attribute of the newest enabled version, in Unix ms (listing carries
    /// attributes without values, so no value is fetched to learn it).
    pub async fn expiry(&self, secret: &str) -> Result<Option<i64>, ProviderError> {
        Ok(self
            .newest_enabled_listed(secret)
            .await?
            .and_then(|v| v["attributes"]["exp"].as_i64())
            .map(|s| s.saturating_mul(1000)))
    }

    /// The newest enabled version's id.
    async fn newest_enabled(&self, secret: &str) -> Result<Option<String>, ProviderError> {
        Ok(self
            .newest_enabled_listed(secret)
            .await?
            .and_then(|v| v["id"].as_str().map(str::to_owned)))
    }

    /// The newest enabled version as listed (versions are not listed in order).
    async fn newest_enabled_listed(
        &self,
        secret: &str,
    ) -> Result<Option<serde_json::Value>, ProviderError> {
        Ok(self
            .versions(secret)
            .await?
            .into_iter()
            .filter(|v| v["attributes"]["enabled"].as_bool() != Some(false))
            .max_by_key(|v| v["attributes"]["created"].as_i64().unwrap_or(0)))
    }

    /// The value of the version `id` (a full version id URL of this vault).
    pub async fn read(&self, id: &str) -> Result<SecretValue, ProviderError> {
        let url = self.own_version(id)?;
        let resp = self
            .call(
                reqwest::Method::GET,
                &url,
                Body::Empty,
                Self::op("get", id, "Key Vault Secrets User (or the get permission)"),
            )
            .await?;
        resp.body["value"]
            .as_str()
            .map(SecretValue::new)
            .ok_or_else(|| {
                ProviderError::permanent(format!("Key Vault returned no value for {id}"))
            })
    }

    /// The vault's URL as configured.
    pub fn vault_url(&self) -> &Url {
        &self.vault
    }

    /// The first page of a listing of `collection` (`secrets` or `certificates`), 25
    /// items a page.
    ///
    /// # Errors
    /// Permanent, when the vault URL makes no listing URL.
    pub fn list_url(&self, collection: &str) -> Result<Url, ProviderError> {
        let mut url = self.url(&format!("/{collection}"))?;
        url.query_pairs_mut().append_pair("maxresults", "25");
        Ok(url)
    }

    /// One page of a listing (ids, attributes, tags; never values) and the next page's
    /// URL, which must point back at this vault. Pages may be empty yet carry a
    /// `nextLink`.
    ///
    /// # Errors
    /// Token, transport and classified HTTP errors (403 names the list permission).
    pub async fn list_page(
        &self,
        url: &Url,
        collection: &str,
    ) -> Result<(Vec<serde_json::Value>, Option<Url>), ProviderError> {
        let resource = format!("{collection} of {}", self.base());
        let resp = self
            .call(
                reqwest::Method::GET,
                url,
                Body::Empty,
                Self::op(
                    "list",
                    &resource,
                    "Key Vault Secrets User and Certificates User (or the list permission)",
                ),
            )
            .await?;
        let items = resp.body["value"].as_array().cloned().unwrap_or_default();
        let next = match resp.body["nextLink"].as_str().filter(|s| !s.is_empty()) {
            Some(link) => Some(self.same_origin(link)?),
            None => None,
        };
        Ok((items, next))
    }

    /// A `nextLink` is followed with a token only when it points back at this vault.
    fn same_origin(&self, link: &str) -> Result<Url, ProviderError> {
        let url = Url::parse(link)
            .map_err(|e| ProviderError::permanent(format!("Key Vault sent a bad nextLink: {e}")))?;
        let port = |u: &Url| u.port_or_known_default();
        if url.scheme() != self.vault.scheme()
            || url.host_str().map(str::to_ascii_lowercase)
                != self.vault.host_str().map(str::to_ascii_lowercase)
            || port(&url) != port(&self.vault)
        {
            return Err(ProviderError::permanent(format!(
                "Key Vault {} sent a nextLink to another origin ({}); refusing to follow it with a token",
                self.base(),
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }
}

/// The token scope a `WWW-Authenticate: Bearer ...` challenge asks for.
pub fn scope_from_challenge(header: &str) -> Option<String> {
    let params = header.trim().strip_prefix("Bearer").unwrap_or(header);
    let mut resource = None;
    let mut scope = None;
    for part in params.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim() {
            "resource" => resource = Some(v),
            "scope" => scope = Some(v),
            _ => {}
        }
    }
    scope.or_else(|| resource.map(|r| format!("{}/.default", r.trim_end_matches('/'))))
}

/// The challenge's resource must be the vault host's parent domain (`vault.azure.net` for
/// `myvault.vault.azure.net`), so a hostile endpoint cannot obtain a token for elsewhere.
fn resource_matches(scope: &str, vault: &Url) -> bool {
    let Ok(resource) = Url::parse(scope) else {
        return false;
    };
    match (resource.host_str(), vault.host_str()) {
        (Some(r), Some(v)) => {
            let (r, v) = (r.to_ascii_lowercase(), v.to_ascii_lowercase());
            v == r || v.ends_with(&format!(".{r}"))
        }
        _ => false,
    }
}

/// A store of each secret under the step's `secret` name.
impl Store for KeyVaultStore {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(self.current(step.secret))
    }

    /// A discovered item (its address keeps metadata) keeps its other tags and content
    /// type, and is tagged with the new credential's id.
    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String> {
        Box::pin(async move {
            let meta = self.metadata_for(step, None, step.credential).await?;
            self.set_with(step.secret, new, step.rotation_id, step.key, meta)
                .await
        })
    }

    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            match (old, written) {
                // Versions cannot be un-created: the old value goes back as the newest
                // version, once per key. What it supersedes is disabled by the
                // compensation's own `DisableOld` step, which needs no value.
                (Some(old), _) => {
                    let id = match self.find_tagged(step.secret, step.key).await? {
                        Some(id) => id,
                        None => {
                            // The old value goes back with the tags it had.
                            let meta = self.metadata_for(step, captured, None).await?;
                            self.set_with(step.secret, old, step.rotation_id, step.key, meta)
                                .await?
                        }
                    };
                    Ok(Some(id))
                }
                // The secret did not exist before: disable what this rotation wrote.
                (None, Some(_)) => {
                    self.disable_superseded_by(step.secret, None, captured)
                        .await?;
                    Ok(None)
                }
                (None, None) => Ok(None),
            }
        })
    }

    fn disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, ()> {
        Box::pin(async move {
            let live = self.current(step.secret).await?;
            self.disable_superseded_by(step.secret, live.as_deref(), captured)
                .await
        })
    }

    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async move {
            Ok(match self.find_tagged(step.secret, step.key).await? {
                Some(id) => Found::Applied { id: Some(id) },
                None => Found::NotApplied,
            })
        })
    }

    /// A restore is done when its copy of the old value exists (or, without an old value,
    /// when what the rotation wrote is disabled); otherwise it runs again.
    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(async move {
            if !had_old {
                return Ok(if self.settled(step.secret, None, captured).await? {
                    Found::Applied { id: None }
                } else {
                    Found::NotApplied
                });
            }
            Ok(match self.find_tagged(step.secret, step.key).await? {
                Some(id) => Found::Applied { id: Some(id) },
                None => Found::NotApplied,
            })
        })
    }

    /// Retiring is found done when nothing but the live version is enabled, so a lost
    /// response does not count as a second retirement.
    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(async move {
            let live = self.current(step.secret).await?;
            Ok(
                if self.settled(step.secret, live.as_deref(), captured).await? {
                    Found::Applied { id: None }
                } else {
                    Found::NotApplied
                },
            )
        })
    }

    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue> {
        Box::pin(self.read(version))
    }

    fn expiry<'a>(&'a self, secret: &'a str) -> Reply<'a, Option<i64>> {
        Box::pin(KeyVaultStore::expiry(self, secret))
    }
}

/// As a verifier: the vault's latest version holds the new value.
impl Verifier for KeyVaultStore {
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        Box::pin(async move {
            let latest = self.current(step.secret).await?.ok_or_else(|| {
                ProviderError::permanent(format!(
                    "verification failed: {} does not exist",
                    self.resource(step.secret)
                ))
            })?;
            if self.read(&latest).await? == *new {
                Ok(())
            } else {
                Err(ProviderError::permanent(format!(
                    "verification failed: the latest version of {} is not the new value",
                    self.resource(step.secret)
                )))
            }
        })
    }
}

/// Lists the secret's versions (ids and attributes, never values) with the vault's own
/// token: the challenge, the token and the list permission are what a rotation needs
/// first. A secret that does not exist yet passes: the first rotation creates it.
impl crate::probe::Probe for KeyVaultStore {
    fn probe<'a>(
        &'a self,
        secret: &'a str,
        role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let probed = async {
                let base = self.base();
                // A store writes versions and disables old ones; a verifier only reads.
                let grant = if role == crate::saga::Role::Store {
                    format!(
                        "Key Vault Secrets Officer on {base} (or the list, get and set permissions)"
                    )
                } else {
                    format!("Key Vault Secrets User on {base} (or the list and get permissions)")
                };
                let name = Self::secret_name(secret)?;
                let scope = self.scope().await?;
                let token = self.credential.token(scope).await.map_err(|e| {
                    ProviderError::permanent(format!(
                        "cannot get a token for {scope} to call {base}: {}",
                        e.message
                    ))
                })?;
                let mut url = self.url(&format!("/secrets/{name}/versions"))?;
                url.query_pairs_mut().append_pair("maxresults", "25");
                let resp = self
                    .exchange(reqwest::Method::GET, &url, Some(&token), Body::Empty)
                    .await?;
                let resource = self.resource(secret);
                let listed = resp.body["value"].as_array().map_or(0, Vec::len);
                match resp.status {
                    404 => Ok(format!(
                        "{resource} does not exist yet: the first rotation creates it"
                    )),
                    200..=299 if listed == 0 && resp.body["nextLink"].is_null() => Ok(format!(
                        "{resource} does not exist yet: the first rotation creates it"
                    )),
                    200..=299 => Ok(format!("{resource}: versions listed (values not read)")),
                    _ => Err(classify(
                        Self::op("list versions", &resource, &grant),
                        &resp,
                    )),
                }
            };
            probed.await.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_give_a_scope_only_for_the_vault_domain() {
        let real = r#"Bearer authorization="https://login.windows.net/72f988bf", resource="https://vault.azure.net""#;
        assert_eq!(
            scope_from_challenge(real).as_deref(),
            Some("https://vault.azure.net/.default")
        );
        let lowkey =
            r#"Bearer resource="https://vault.azure.net", authorization_uri="https://login""#;
        assert_eq!(
            scope_from_challenge(lowkey).as_deref(),
            Some("https://vault.azure.net/.default")
        );
        let scoped =
            r#"Bearer authorization="https://login/t", scope="https://vault.azure.net/.default""#;
        assert_eq!(
            scope_from_challenge(scoped).as_deref(),
            Some("https://vault.azure.net/.default")
        );
        assert_eq!(scope_from_challenge("Bearer realm=\"x\""), None);

        let vault = Url::parse("https://myvault.vault.azure.net").unwrap();
        assert!(resource_matches("https://vault.azure.net/.default", &vault));
        assert!(!resource_matches("https://evil.example/.default", &vault));
        assert!(!resource_matches(
            "https://azure.net.evil.example/.default",
            &vault
        ));
        let local = Url::parse("http://127.0.0.1:9/kv").unwrap();
        assert!(!resource_matches(
            "https://vault.azure.net/.default",
            &local
        ));
    }
}
