//! App Service application settings as a dependent. The API replaces the whole settings map
//! on every PUT, so rekey lists, changes only its own setting, and PUTs the merged map;
//! writes to one site are serialized. A setting is either the literal value, or a Key Vault
//! reference (`@Microsoft.KeyVault(...)`), whose refresh is forced by re-writing the map.
//! The setting is compared before writing, so repeating an update changes nothing.
//!
//! Writes to one site (or slot) are serialized twice over: by an in-process mutex, the fast
//! path, and by a journal lease on the site's stream ([`site_stream`]), so several rekey
//! nodes sharing one journal never read-merge-write the same site at once. The lease is
//! made to outlive each call before the call starts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rekey_journal::{Lease, Leases};
use sha2::Digest;

use serde_json::{Value, json};
use tracing::warn;
use url::Url;

use super::http::{Authed, Body, Op, join};
use crate::provider::{BoxFuture, Dependent, Found, ProviderError, Reply, SecretValue, Step};

/// The api-version rekey speaks to `Microsoft.Web`.
pub const API_VERSION: &str = "2024-04-01";
/// Capture id of a setting that did not exist.
pub const ABSENT: &str = "absent";
/// Capture id of a literal setting that existed (its value is never journaled).
pub const PRESENT: &str = "present";

/// How the site consumes the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The setting holds the value itself.
    Literal,
    /// The setting holds this Key Vault reference; rotation re-writes the map so the site
    /// re-fetches the secret at once instead of within 24 h.
    Reference(String),
}

/// Where a Key Vault reference in a setting points (contract: `@Microsoft.KeyVault(...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultRef {
    /// `SecretUri=`: the vault's URL, up to `/secrets/`.
    Url(String),
    /// `VaultName=`: the vault's name.
    Name(String),
}

/// A Key Vault reference: the vault, the secret and the version it pins, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultReference {
    pub vault: VaultRef,
    pub secret: String,
    pub version: Option<String>,
}

impl KeyVaultReference {
    /// Parses a setting's value: `@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/s/[version])`
    /// or `@Microsoft.KeyVault(VaultName=v;SecretName=s[;SecretVersion=version])`. `None`
    /// for anything else (a literal, or a reference to something other than a secret).
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim();
        let prefix = "@microsoft.keyvault(";
        if v.len() <= prefix.len()
            || !v.is_char_boundary(prefix.len())
            || !v[..prefix.len()].eq_ignore_ascii_case(prefix)
            || !v.ends_with(')')
        {
            return None;
        }
        let inner = v[prefix.len()..v.len() - 1].trim();
        let mut pairs = inner.split(';').filter(|p| !p.trim().is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.trim().to_ascii_lowercase(), v.trim())
        });
        let version = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        let first = pairs.next()?;
        if first.0 == "secreturi" {
            let uri = first.1;
            let at = uri.to_ascii_lowercase().find("/secrets/")?;
            let base = uri[..at].trim_end_matches('/').to_owned();
            let mut rest = uri[at + "/secrets/".len()..].trim_matches('/').split('/');
            let secret = rest.next().filter(|s| !s.is_empty())?.to_owned();
            let pinned = rest.next().and_then(version);
            if rest.next().is_some() || base.is_empty() {
                return None;
            }
            return Some(Self {
                vault: VaultRef::Url(base),
                secret,
                version: pinned,
            });
        }
        let mut fields: BTreeMap<String, &str> = BTreeMap::new();
        for (k, v) in std::iter::once(first).chain(pairs) {
            fields.insert(k, v);
        }
        let vault = fields.get("vaultname").filter(|v| !v.is_empty())?;
        let secret = fields.get("secretname").filter(|v| !v.is_empty())?;
        Some(Self {
            vault: VaultRef::Name((*vault).to_owned()),
            secret: (*secret).to_owned(),
            version: fields.get("secretversion").and_then(|v| version(v)),
        })
    }

    /// Whether this points at item `secret` of the vault named `vault_name` at
    /// `vault_url` (names and URLs compared case-insensitively, as Key Vault's).
    pub fn points_at(&self, vault_name: &str, vault_url: &str, secret: &str) -> bool {
        let vault = match &self.vault {
            VaultRef::Url(u) => u
                .trim_end_matches('/')
                .eq_ignore_ascii_case(vault_url.trim_end_matches('/')),
            VaultRef::Name(n) => n.eq_ignore_ascii_case(vault_name),
        };
        vault && self.secret.eq_ignore_ascii_case(secret)
    }
}

/// Every setting of a site or slot (`POST …/config/appsettings/list`), as an update reads
/// it first: fleet rotations read the sites they may refresh with it.
///
/// # Errors
/// Token, transport and classified HTTP errors.
pub async fn list_settings(
    api: &Authed,
    arm: &Url,
    subscription: &str,
    resource_group: &str,
    site: &str,
    slot: Option<&str>,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut path = format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Web/sites/{site}"
    );
    let resource = match slot {
        Some(slot) => {
            path.push_str(&format!("/slots/{slot}"));
            format!("the settings of site {site} slot {slot}")
        }
        None => format!("the settings of site {site}"),
    };
    list_at(api, arm, &path, &resource).await
}

/// Every setting of the site or slot at ARM `path`; `resource` names it in errors.
async fn list_at(
    api: &Authed,
    arm: &Url,
    path: &str,
    resource: &str,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let url = join(
        arm,
        &format!("{path}/config/appsettings/list"),
        Some(API_VERSION),
    )?;
    let resp = api
        .call(
            reqwest::Method::POST,
            &url,
            Body::Empty,
            op("list settings", resource),
        )
        .await?;
    Ok(resp.body["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect())
}

/// One setting of one site (or slot).
#[derive(Debug)]
pub struct AppSetting {
    pub api: Authed,
    pub arm: Url,
    pub subscription: String,
    pub resource_group: String,
    pub site: String,
    pub slot: Option<String>,
    pub setting: String,
    pub mode: Mode,
    /// Serializes read-merge-write cycles on this site and slot, shared by every setting
    /// of it (there is no ETag to catch races). Get it from [`SiteLocks::lock`].
    pub lock: Arc<SiteLock>,
}

/// The journal's leases, as the App Service settings of every node take them: held on a
/// site's stream around each read-merge-write, so two nodes never interleave theirs.
pub trait SiteLeases: Send + Sync {
    /// Takes the lease on `stream` for `ttl_ms` (see [`Leases::acquire`]).
    fn acquire<'a>(
        &'a self,
        stream: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, rekey_journal::Error>>;
    /// Extends it (see [`Leases::renew`]).
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, rekey_journal::Error>>;
    /// Gives it up (see [`Leases::release`]).
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), rekey_journal::Error>>;
}

/// [`SiteLeases`] in a journal, as lease owner `owner` (unique per process).
pub struct JournalSiteLeases<J> {
    journal: Arc<J>,
    owner: String,
}

impl<J> std::fmt::Debug for JournalSiteLeases<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalSiteLeases")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl<J> JournalSiteLeases<J> {
    pub fn new(journal: Arc<J>, owner: impl Into<String>) -> Self {
        Self {
            journal,
            owner: owner.into(),
        }
    }
}

impl<J: Leases + Send + Sync> SiteLeases for JournalSiteLeases<J> {
    fn acquire<'a>(
        &'a self,
        stream: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, rekey_journal::Error>> {
        Box::pin(self.journal.acquire(stream, &self.owner, ttl_ms))
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease, rekey_journal::Error>> {
        Box::pin(self.journal.renew(lease, ttl_ms))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), rekey_journal::Error>> {
        Box::pin(self.journal.release(lease))
    }
}

/// Where the journal's leases come from once the journal is open (the providers are built
/// before it is, so bad config is found first).
type SharedLeases = Arc<OnceLock<Arc<dyn SiteLeases>>>;

/// The stream whose lease serializes writes to a site (or slot) across nodes:
/// `appservice-site:<subscription>/<group>/<site>[/<slot>]`, case-folded as ARM names are;
/// a name a stream id cannot carry (or one too long) is replaced by its SHA-256.
pub fn site_stream(
    subscription: &str,
    resource_group: &str,
    site: &str,
    slot: Option<&str>,
) -> String {
    let mut key = format!("{subscription}/{resource_group}/{site}").to_ascii_lowercase();
    if let Some(slot) = slot {
        key.push('/');
        key.push_str(&slot.to_ascii_lowercase());
    }
    let readable = format!("{SITE_STREAM_PREFIX}{key}");
    let fits = readable.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if fits {
        readable
    } else {
        format!(
            "{SITE_STREAM_PREFIX}sha256/{}",
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        )
    }
}

/// The kind prefix of [`site_stream`]s.
pub const SITE_STREAM_PREFIX: &str = "appservice-site:";

/// Beyond a call's own timeout, how long a site lease lasts: room for the journal write
/// that renews it and for clocks that disagree a little.
const LEASE_MARGIN_MS: i64 = 5_000;
/// First wait before asking again for a site lease another node holds; doubled up to
/// [`LEASE_POLL_MAX_MS`].
const LEASE_POLL_MS: u64 = 50;
const LEASE_POLL_MAX_MS: u64 = 1_000;

/// One site's (or slot's) lock: an in-process mutex, and the journal lease on its stream
/// once the journal's leases are shared ([`SiteLocks::share_leases`]).
pub struct SiteLock {
    stream: String,
    local: tokio::sync::Mutex<()>,
    leases: SharedLeases,
}

impl std::fmt::Debug for SiteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteLock")
            .field("stream", &self.stream)
            .field("journal_leases", &self.leases.get().is_some())
            .finish_non_exhaustive()
    }
}

impl SiteLock {
    /// The lock's journal stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

/// One lock per site and slot, so two settings of one site never write at once: each PUT
/// replaces the whole map, and a write built from a stale read would undo the other.
#[derive(Default)]
pub struct SiteLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<SiteLock>>>,
    leases: SharedLeases,
}

impl std::fmt::Debug for SiteLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteLocks")
            .field("journal_leases", &self.leases.get().is_some())
            .finish_non_exhaustive()
    }
}

impl SiteLocks {
    /// The lock of a site (or slot); ARM names are case-insensitive.
    pub fn lock(
        &self,
        subscription: &str,
        resource_group: &str,
        site: &str,
        slot: Option<&str>,
    ) -> Arc<SiteLock> {
        let stream = site_stream(subscription, resource_group, site, slot);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stream.clone())
            .or_insert_with(|| {
                Arc::new(SiteLock {
                    stream,
                    local: tokio::sync::Mutex::new(()),
                    leases: self.leases.clone(),
                })
            })
            .clone()
    }

    /// From now on, every lock (made before or after) also holds the journal lease on its
    /// site's stream, taken from `leases`. The first call wins; false for a later one.
    pub fn share_leases(&self, leases: Arc<dyn SiteLeases>) -> bool {
        self.leases.set(leases).is_ok()
    }
}

/// A site lease held around one read-merge-write.
struct Held {
    leases: Arc<dyn SiteLeases>,
    lease: Lease,
}

impl AppSetting {
    fn site_path(&self) -> String {
        let mut p = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/sites/{}",
            self.subscription, self.resource_group, self.site
        );
        if let Some(slot) = &self.slot {
            p.push_str(&format!("/slots/{slot}"));
        }
        p
    }

    fn resource(&self) -> String {
        match &self.slot {
            Some(slot) => format!("setting {} of site {} slot {slot}", self.setting, self.site),
            None => format!("setting {} of site {}", self.setting, self.site),
        }
    }

    /// The longest one call can take: a token fetch and the request, each within the
    /// HTTP client's timeout.
    fn call_ms(&self) -> i64 {
        i64::try_from(self.api.http.timeout_ms())
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
    }

    /// Takes the site's journal lease (when the journal's leases are shared), lasting
    /// beyond the next call. Another node's lease is waited out for as long as a
    /// read-merge-write of its can last; past that the step is retried later.
    async fn hold(&self) -> Result<Option<Held>, ProviderError> {
        let Some(leases) = self.lock.leases.get().cloned() else {
            return Ok(None);
        };
        let ttl = self.call_ms().saturating_add(LEASE_MARGIN_MS);
        // A holder's lease lasts at most two calls and its renewal; a dead one's lapses.
        let patience =
            Duration::from_millis(u64::try_from(ttl.saturating_mul(2)).unwrap_or(u64::MAX / 4));
        let started = tokio::time::Instant::now();
        let mut poll = LEASE_POLL_MS;
        loop {
            match leases.acquire(&self.lock.stream, ttl).await {
                Ok(lease) => return Ok(Some(Held { leases, lease })),
                Err(rekey_journal::Error::LeaseHeld { holder, .. }) => {
                    if started.elapsed() >= patience {
                        return Err(ProviderError::transient(format!(
                            "{}: another rekey process ({holder}) has been writing this site's settings for {} ms (journal lease {}); nothing was written, retrying later",
                            self.resource(),
                            patience.as_millis(),
                            self.lock.stream
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(poll)).await;
                    poll = (poll * 2).min(LEASE_POLL_MAX_MS);
                }
                Err(e) => {
                    return Err(ProviderError::transient(format!(
                        "{}: cannot take the journal lease {} that serializes writes to this site: {e}; nothing was written, retrying",
                        self.resource(),
                        self.lock.stream
                    )));
                }
            }
        }
    }

    /// Makes a held lease outlive the call about to start; a lease lost meanwhile (this
    /// process stalled past it) stops the write before the call.
    async fn outlive_call(&self, held: &mut Held) -> Result<(), ProviderError> {
        let ttl = self.call_ms().saturating_add(LEASE_MARGIN_MS);
        held.lease = held.leases.renew(&held.lease, ttl).await.map_err(|e| {
            ProviderError::transient(format!(
                "{}: lost the journal lease {} before writing the settings ({e}); nothing was written, retrying",
                self.resource(),
                self.lock.stream
            ))
        })?;
        Ok(())
    }

    /// Every setting of the site.
    async fn list(&self) -> Result<BTreeMap<String, String>, ProviderError> {
        list_at(&self.api, &self.arm, &self.site_path(), &self.resource()).await
    }

    /// Sets (or, with `None`, removes) our setting, leaving every other one as it was.
    /// Writes nothing when the setting already holds `desired`, unless `force`.
    async fn put(&self, desired: Option<&str>, force: bool) -> Result<(), ProviderError> {
        let _local = self.lock.local.lock().await;
        let mut held = self.hold().await?;
        let result = self.merge_and_put(desired, force, held.as_mut()).await;
        if let Some(held) = held {
            // Best effort: an unreleased lease lapses by itself.
            if let Err(e) = held.leases.release(&held.lease).await {
                warn!(stream = %self.lock.stream, error = %e, "cannot release the site lease");
            }
        }
        result
    }

    /// [`AppSetting::put`] under the site's locks.
    async fn merge_and_put(
        &self,
        desired: Option<&str>,
        force: bool,
        held: Option<&mut Held>,
    ) -> Result<(), ProviderError> {
        let mut settings = self.list().await?;
        if !force && settings.get(&self.setting).map(String::as_str) == desired {
            return Ok(());
        }
        match desired {
            Some(v) => settings.insert(self.setting.clone(), v.to_owned()),
            None => settings.remove(&self.setting),
        };
        let url = join(
            &self.arm,
            &format!("{}/config/appsettings", self.site_path()),
            Some(API_VERSION),
        )?;
        let body: Value = json!({ "properties": settings });
        let resource = self.resource();
        if let Some(held) = held {
            self.outlive_call(held).await?;
        }
        self.api
            .call(
                reqwest::Method::PUT,
                &url,
                Body::Json(&body),
                op("write settings", &resource),
            )
            .await
            .map(drop)
    }
}

fn op<'a>(action: &'a str, resource: &'a str) -> Op<'a> {
    Op {
        service: "App Service",
        action,
        resource,
        grant: "Website Contributor on the site (Microsoft.Web/sites/config/write and list/action)",
    }
}

/// Updates compare before writing, so running one again is always safe: neither an update
/// nor a revert is ever found done by reconciling.
impl Dependent for AppSetting {
    fn capture<'a>(&'a self, _: Step<'a>) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            let settings = self.list().await?;
            Ok(Some(match &self.mode {
                Mode::Literal if settings.contains_key(&self.setting) => PRESENT.to_owned(),
                Mode::Literal => ABSENT.to_owned(),
                // A reference is an address, not a secret: it is safe to journal.
                Mode::Reference(_) => settings
                    .get(&self.setting)
                    .cloned()
                    .unwrap_or_else(|| ABSENT.to_owned()),
            }))
        })
    }

    fn update<'a>(&'a self, _: Step<'a>, new: &'a SecretValue) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            match &self.mode {
                Mode::Literal => self.put(Some(new.expose()), false).await?,
                // Re-writing the map is what makes App Service fetch the new version now.
                Mode::Reference(reference) => self.put(Some(reference), true).await?,
            }
            Ok(None)
        })
    }

    fn revert<'a>(
        &'a self,
        _: Step<'a>,
        captured: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            match (&self.mode, captured) {
                (_, Some(ABSENT) | None) => self.put(None, false).await?,
                (Mode::Literal, Some(_)) => match old {
                    Some(old) => self.put(Some(old.expose()), false).await?,
                    // The old value was never in a store, so nothing can bring it back:
                    // the setting keeps the new value, and the journal says so.
                    None => {
                        warn!(resource = %self.resource(), "old value unknown; setting left as is");
                        return Ok(Some("left-unchanged: the old value was in no store".into()));
                    }
                },
                (Mode::Reference(_), Some(reference)) => self.put(Some(reference), true).await?,
            }
            Ok(None)
        })
    }

    fn reconcile_update<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_revert<'a>(&'a self, _: Step<'a>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// Lists the site's settings (`POST …/config/appsettings/list`, what every update reads
/// first) with the credential's ARM token; values are never shown.
impl crate::probe::Probe for AppSetting {
    fn probe<'a>(
        &'a self,
        _secret: &'a str,
        _role: crate::saga::Role,
    ) -> BoxFuture<'a, crate::probe::Probed> {
        Box::pin(async move {
            let probed = async {
                self.api
                    .credential
                    .token(&self.api.scope)
                    .await
                    .map_err(|e| {
                        ProviderError::permanent(format!(
                            "cannot get a token for {} to read {}: {}",
                            self.api.scope,
                            self.resource(),
                            e.message
                        ))
                    })?;
                let settings = self.list().await?;
                Ok(match (settings.get(&self.setting), &self.mode) {
                    (None, _) => format!(
                        "{}: settings listed; it is not set yet, the first rotation adds it",
                        self.resource()
                    ),
                    (Some(v), Mode::Reference(r)) if v != r => format!(
                        "{}: settings listed; it does not hold the configured Key Vault reference yet, the first rotation writes it",
                        self.resource()
                    ),
                    (Some(_), _) => {
                        format!("{}: settings listed (values not shown)", self.resource())
                    }
                })
            };
            probed.await.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_vault_references_in_both_syntaxes() {
        let r = |v: &str| KeyVaultReference::parse(v);
        let uri = r("@Microsoft.KeyVault(SecretUri=https://KV1.vault.azure.net/secrets/api-key/)")
            .unwrap();
        assert_eq!(uri.version, None);
        assert!(uri.points_at("kv1", "https://kv1.vault.azure.net", "API-KEY"));
        assert!(!uri.points_at("kv1", "https://kv2.vault.azure.net", "api-key"));
        let pinned = r("@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/secrets/api-key/ec96f02080254f109c51a1f14cdb1931)").unwrap();
        assert_eq!(
            pinned.version.as_deref(),
            Some("ec96f02080254f109c51a1f14cdb1931")
        );
        let named = r(" @microsoft.keyvault(VaultName=kv1; SecretName=api-key) ").unwrap();
        assert_eq!(named.vault, VaultRef::Name("kv1".into()));
        assert!(named.points_at("KV1", "https://elsewhere", "api-key"));
        assert!(!named.points_at("kv1", "", "other"));
        let named_pinned =
            r("@Microsoft.KeyVault(VaultName=kv1;SecretName=api-key;SecretVersion=abc)").unwrap();
        assert_eq!(named_pinned.version.as_deref(), Some("abc"));
        for not in [
            "plain value",
            "@Microsoft.KeyVault(",
            "@Microsoft.KeyVault(VaultName=kv1)",
            "@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/keys/k/)",
            "@Microsoft.AppConfiguration(Endpoint=https://x.azconfig.io; Key=k)",
            "@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/secrets/a/b/c)",
        ] {
            assert_eq!(r(not), None, "{not}");
        }
    }

    #[test]
    fn site_streams_are_case_folded_and_always_valid_ids() {
        let a = site_stream("SUB", "RG", "Web", Some("Staging"));
        assert_eq!(a, "appservice-site:sub/rg/web/staging");
        assert_eq!(a, site_stream("sub", "rg", "web", Some("staging")));
        assert_ne!(a, site_stream("sub", "rg", "web", None));
        let odd = site_stream("sub", "rg (prod)", "web", None);
        assert!(odd.starts_with("appservice-site:sha256/"), "{odd}");
        let long = site_stream(&"s".repeat(100), "rg", "web", None);
        assert!(long.len() <= 128, "{long}");
    }
}
