//! Storage account keys as an alternating rotator. The account has two keys; consumers use
//! one while the other is idle. Rotation regenerates the idle key and hands it out; after
//! the grace period the previously used key is regenerated, so its old value stops working.
//!
//! The key in use is the one whose value the stores hold (the runner shows the rotator the
//! stored value at capture); without one, the newest key is taken. Capture records both
//! keys' `creationTime`, so reconcile knows exactly whether a regeneration happened: the
//! regenerated key's creation time changed. Values can be read back with `listKeys`, so a
//! lost response never orphans anything.

use serde_json::{Value, json};
use url::Url;

use super::http::{Authed, Body, Op, join};
use crate::provider::{
    BoxFuture, Created, Found, ProviderError, Reconciled, Reply, Rotator, SecretValue, Step,
};

/// The api-version rekey speaks to `Microsoft.Storage`.
pub const API_VERSION: &str = "2023-05-01";

/// One storage account's key pair (`key1`/`key2`, or `kerb1`/`kerb2`).
#[derive(Debug)]
pub struct StorageKeys {
    pub api: Authed,
    pub arm: Url,
    pub subscription: String,
    pub resource_group: String,
    pub account: String,
    /// Rotate the Kerberos keys instead of the shared keys.
    pub kerberos: bool,
}

/// One key as listed.
#[derive(Debug, Clone)]
struct Key {
    name: String,
    value: String,
    created: String,
}

impl StorageKeys {
    fn names(&self) -> [&'static str; 2] {
        if self.kerberos {
            ["kerb1", "kerb2"]
        } else {
            ["key1", "key2"]
        }
    }

    fn path(&self, action: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}/{action}",
            self.subscription, self.resource_group, self.account
        )
    }

    fn resource(&self) -> String {
        format!("storage account {}", self.account)
    }

    fn op<'a>(action: &'a str, resource: &'a str) -> Op<'a> {
        Op {
            service: "Azure Storage",
            action,
            resource,
            grant: "Storage Account Key Operator Service Role (listKeys/action, regenerateKey/action)",
        }
    }

    fn parse(&self, body: &Value) -> Vec<Key> {
        body["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| {
                Some(Key {
                    name: k["keyName"].as_str()?.to_owned(),
                    value: k["value"].as_str()?.to_owned(),
                    created: k["creationTime"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .filter(|k| self.names().contains(&k.name.as_str()))
            .collect()
    }

    async fn list(&self) -> Result<Vec<Key>, ProviderError> {
        let mut url = join(&self.arm, &self.path("listKeys"), Some(API_VERSION))?;
        if self.kerberos {
            url.query_pairs_mut().append_pair("$expand", "kerb");
        }
        let resource = self.resource();
        let resp = self
            .api
            .call(
                reqwest::Method::POST,
                &url,
                Body::Empty,
                Self::op("list keys", &resource),
            )
            .await?;
        Ok(self.parse(&resp.body))
    }

    async fn regenerate(&self, name: &str) -> Result<Vec<Key>, ProviderError> {
        let url = join(&self.arm, &self.path("regenerateKey"), Some(API_VERSION))?;
        let body = json!({ "keyName": name });
        let resource = format!("{name} of {}", self.resource());
        let resp = self
            .api
            .call(
                reqwest::Method::POST,
                &url,
                Body::Json(&body),
                Self::op("regenerate a key", &resource),
            )
            .await?;
        Ok(self.parse(&resp.body))
    }

    /// The key regenerated last.
    fn newest(keys: &[Key]) -> Option<&Key> {
        keys.iter()
            .max_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)))
    }

    /// The capture id: the key in use, then each key's creation time, `|`-separated.
    fn capture_id(&self, keys: &[Key], stored: Option<&SecretValue>) -> Option<String> {
        let in_use = stored
            .and_then(|v| keys.iter().find(|k| k.value == v.expose()))
            .or_else(|| Self::newest(keys))?;
        let created = |name: &str| {
            keys.iter()
                .find(|k| k.name == name)
                .map_or(String::new(), |k| k.created.clone())
        };
        let [a, b] = self.names();
        Some(format!("{}|{}|{}", in_use.name, created(a), created(b)))
    }

    /// The key in use at capture (the second key when nothing was captured).
    fn in_use(&self, captured: Option<&str>) -> &'static str {
        let name = captured
            .and_then(|c| c.split('|').next())
            .unwrap_or_default();
        let [a, b] = self.names();
        if name == a { a } else { b }
    }

    /// True when `name` was regenerated after capture (its creation time changed).
    fn regenerated_since(&self, keys: &[Key], captured: Option<&str>, name: &str) -> bool {
        let [a, _] = self.names();
        let mut times = captured.unwrap_or_default().split('|').skip(1);
        let then = if name == a {
            times.next()
        } else {
            times.nth(1)
        };
        let now = keys
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.created.as_str());
        matches!((then, now), (Some(then), Some(now)) if !then.is_empty() && then != now)
    }

    fn other(&self, name: &str) -> &'static str {
        let [a, b] = self.names();
        if name == a { b } else { a }
    }
}

impl Rotator for StorageKeys {
    fn capture<'a>(
        &'a self,
        _: Step<'a>,
        stored: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            let keys = self.list().await?;
            Ok(self.capture_id(&keys, stored))
        })
    }

    fn create<'a>(&'a self, _: Step<'a>, captured: Option<&'a str>) -> Reply<'a, Created> {
        Box::pin(async move {
            let idle = self.other(self.in_use(captured));
            let keys = self.regenerate(idle).await?;
            let key = keys.iter().find(|k| k.name == idle).ok_or_else(|| {
                ProviderError::transient(format!(
                    "regenerated {idle} of {} but it was not returned",
                    self.resource()
                ))
            })?;
            Ok(Created {
                id: idle.to_owned(),
                value: SecretValue::new(key.value.clone()),
            })
        })
    }

    /// The old key was in use until now; regenerating it makes its value worthless.
    fn retire_old<'a>(&'a self, _: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async move {
            if captured.is_some() {
                self.regenerate(self.in_use(captured)).await?;
            }
            Ok(())
        })
    }

    /// The new key was handed out and taken back: make its value worthless.
    fn discard<'a>(
        &'a self,
        _: Step<'a>,
        created: Option<&'a str>,
        _: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        Box::pin(async move {
            if let Some(name) = created {
                self.regenerate(name).await?;
            }
            Ok(None)
        })
    }

    fn discard_lost<'a>(&'a self, _: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()> {
        Box::pin(async move {
            if let Some(name) = created {
                self.regenerate(name).await?;
            }
            Ok(())
        })
    }

    /// The idle key's creation time changed since capture: it was regenerated.
    fn reconcile_create<'a>(
        &'a self,
        _: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Reconciled> {
        Box::pin(async move {
            let keys = self.list().await?;
            let idle = self.other(self.in_use(captured));
            Ok(if self.regenerated_since(&keys, captured, idle) {
                Reconciled::Applied {
                    id: Some(idle.to_owned()),
                }
            } else {
                Reconciled::NotApplied
            })
        })
    }

    fn reconcile_retire_old<'a>(
        &'a self,
        _: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        Box::pin(async move {
            let keys = self.list().await?;
            Ok(
                if self.regenerated_since(&keys, captured, self.in_use(captured)) {
                    Found::Applied { id: None }
                } else {
                    Found::NotApplied
                },
            )
        })
    }

    /// Regenerating a discarded key again only makes it worthless again: run it again.
    fn reconcile_discard<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    fn reconcile_discard_lost<'a>(&'a self, _: Step<'a>, _: Option<&'a str>) -> Reply<'a, Found> {
        Box::pin(async { Ok(Found::NotApplied) })
    }

    /// `listKeys` shows a key's value again, so a lost response orphans nothing.
    fn reveal<'a>(&'a self, id: &'a str) -> Reply<'a, Option<SecretValue>> {
        Box::pin(async move {
            self.list()
                .await?
                .into_iter()
                .find(|k| k.name == id)
                .map(|k| Some(SecretValue::new(k.value)))
                .ok_or_else(|| {
                    ProviderError::permanent(format!("{} has no key {id}", self.resource()))
                })
        })
    }
}

/// Lists the account's keys (what every rotation reads first) with the credential's ARM
/// token, and checks both keys rekey alternates between are there; values are dropped
/// unseen.
impl crate::probe::Probe for StorageKeys {
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
                            "cannot get a token for {} to call {}: {}",
                            self.api.scope,
                            self.resource(),
                            e.message
                        ))
                    })?;
                let keys = self.list().await?;
                let missing: Vec<&str> = self
                    .names()
                    .into_iter()
                    .filter(|n| !keys.iter().any(|k| k.name == *n))
                    .collect();
                if missing.is_empty() {
                    Ok(format!(
                        "{}: keys {} listed (values not shown)",
                        self.resource(),
                        self.names().join(" and ")
                    ))
                } else {
                    Err(ProviderError::permanent(format!(
                        "{} lists no {}; {}",
                        self.resource(),
                        missing.join(" or "),
                        if self.kerberos {
                            "Kerberos keys exist only on accounts joined to Active Directory: set kerberos = false or join the account"
                        } else {
                            "check the account name in the config"
                        }
                    )))
                }
            };
            probed.await.into()
        })
    }
}
