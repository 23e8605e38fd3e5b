//! App Service application settings as a dependent. The API replaces the whole settings map
//! on every PUT, so rekey lists, changes only its own setting, and PUTs the merged map;
//! writes to one site are serialized. A setting is either the literal value, or a Key Vault
//! reference (`@Microsoft.KeyVault(...)`), whose refresh is forced by re-writing the map.
//! The setting is compared before writing, so repeating an update changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

/// One lock per site and slot, so two settings of one site never write at once: each PUT
/// replaces the whole map, and a write built from a stale read would undo the other.
#[derive(Debug, Default)]
pub struct SiteLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl SiteLocks {
    /// The lock of a site (or slot); ARM names are case-insensitive.
    pub fn lock(
        &self,
        subscription: &str,
        resource_group: &str,
        site: &str,
        slot: Option<&str>,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!(
            "{subscription}/{resource_group}/{site}/{}",
            slot.unwrap_or("")
        )
        .to_ascii_lowercase();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }
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

    /// Every setting of the site.
    async fn list(&self) -> Result<BTreeMap<String, String>, ProviderError> {
        let url = join(
            &self.arm,
            &format!("{}/config/appsettings/list", self.site_path()),
            Some(API_VERSION),
        )?;
        let resource = self.resource();
        let resp = self
            .api
            .call(
                reqwest::Method::POST,
                &url,
                Body::Empty,
                op("list settings", &resource),
            )
            .await?;
        Ok(resp.body["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect())
    }

    /// Sets (or, with `None`, removes) our setting, leaving every other one as it was.
    /// Writes nothing when the setting already holds `desired`, unless `force`.
    async fn put(&self, desired: Option<&str>, force: bool) -> Result<(), ProviderError> {
        let _guard = self.lock.lock().await;
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
