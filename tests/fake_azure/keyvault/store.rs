//! Key Vault's secret store: per vault, secrets keyed by case-folded name, each an ordered
//! list of versions, with the soft-delete state a PUT can collide with.
//!
//! Pure data operations; the HTTP layer (`mod.rs`) validates input and renders results.

use std::collections::BTreeMap;

use super::super::ids;

/// One version of a secret, as stored (and as tests inspect it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvVersion {
    /// The full id: `<vault base>/secrets/<name>/<version>`.
    pub id: String,
    /// 32 lower-case hex digits.
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    /// Not-before, Unix seconds.
    pub nbf: Option<i64>,
    /// Expiry, Unix seconds.
    pub exp: Option<i64>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Last update, Unix seconds.
    pub updated: i64,
    /// The secret backs a certificate (`managed: true`): Key Vault refuses writes to it.
    pub managed: bool,
}

/// A certificate, as the certificate listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub name: String,
    /// The SHA-1 thumbprint (`x5t` is its base64url).
    pub thumbprint: [u8; 20],
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    /// Not-before and expiry, Unix seconds.
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

/// The settable attributes of a version (`SecretAttributes` minus the read-only ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributesIn {
    pub enabled: Option<bool>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

/// A new version's content (`SecretSetParameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewVersion {
    pub value: String,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub attributes: AttributesIn,
}

/// A change to a version (`SecretUpdateParameters`); `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionPatch {
    pub content_type: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub attributes: AttributesIn,
}

/// A secret: its name as first created, its versions oldest first, and whether it is
/// soft-deleted (and when, Unix seconds).
#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub versions: Vec<KvVersion>,
    pub deleted: Option<i64>,
}

impl Secret {
    /// The current version: the one created last.
    pub fn latest(&self) -> &KvVersion {
        self.versions
            .last()
            .expect("a secret has at least one version")
    }
}

/// Why a store operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such active secret (or version; or no such deleted secret).
    NotFound,
    /// The name is soft-deleted: it can only be recovered or purged.
    DeletedButRecoverable,
}

/// One vault's secrets and certificates.
#[derive(Debug, Default)]
pub struct Vault {
    secrets: BTreeMap<String, Secret>,
    certificates: BTreeMap<String, Cert>,
}

impl Vault {
    /// Adds (or replaces) a certificate, and a version of the secret that backs it
    /// (`managed`, PKCS#12 content type, holding `backing_value`).
    pub fn add_certificate(&mut self, base: &str, cert: Cert, backing_value: &str) {
        let new = NewVersion {
            value: backing_value.to_owned(),
            content_type: Some("application/x-pkcs12".into()),
            tags: BTreeMap::new(),
            attributes: AttributesIn {
                enabled: Some(cert.enabled),
                nbf: cert.nbf,
                exp: cert.exp,
            },
        };
        if self.set(base, &cert.name, new, cert.created).is_ok()
            && let Some(s) = self.secrets.get_mut(&cert.name.to_ascii_lowercase())
            && let Some(v) = s.versions.last_mut()
        {
            v.managed = true;
        }
        self.certificates
            .insert(cert.name.to_ascii_lowercase(), cert);
    }

    /// Every certificate, in name order.
    pub fn certificates(&self) -> Vec<&Cert> {
        self.certificates.values().collect()
    }

    /// Adds a version to `name` (creating the secret), stamped `now_s`; returns the stored
    /// name (as first created) and the new version.
    pub fn set(
        &mut self,
        base: &str,
        name: &str,
        new: NewVersion,
        now_s: i64,
    ) -> Result<(&str, &KvVersion), Refusal> {
        let secret = self
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| Secret {
                name: name.to_owned(),
                versions: Vec::new(),
                deleted: None,
            });
        if secret.deleted.is_some() {
            return Err(Refusal::DeletedButRecoverable);
        }
        let version = ids::kv_version();
        secret.versions.push(KvVersion {
            id: format!("{base}/secrets/{}/{version}", secret.name),
            version,
            value: new.value,
            content_type: new.content_type,
            tags: new.tags,
            enabled: new.attributes.enabled.unwrap_or(true),
            nbf: new.attributes.nbf,
            exp: new.attributes.exp,
            created: now_s,
            updated: now_s,
            managed: false,
        });
        Ok((&secret.name, secret.latest()))
    }

    /// Secret `name` whatever its state (for inspection).
    pub fn stored(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(&name.to_ascii_lowercase())
    }

    /// The active secret `name`.
    pub fn secret(&self, name: &str) -> Result<&Secret, Refusal> {
        self.secrets
            .get(&name.to_ascii_lowercase())
            .filter(|s| s.deleted.is_none())
            .ok_or(Refusal::NotFound)
    }

    /// Version `version` of active secret `name`, or its latest when `version` is `None`.
    pub fn version(&self, name: &str, version: Option<&str>) -> Result<&KvVersion, Refusal> {
        let secret = self.secret(name)?;
        match version {
            None => Ok(secret.latest()),
            Some(v) => secret
                .versions
                .iter()
                .find(|x| x.version == v)
                .ok_or(Refusal::NotFound),
        }
    }

    /// Applies `patch` to a version of active secret `name`.
    pub fn update(
        &mut self,
        name: &str,
        version: Option<&str>,
        patch: VersionPatch,
        now_s: i64,
    ) -> Result<(&str, &KvVersion), Refusal> {
        let secret = self
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .filter(|s| s.deleted.is_none())
            .ok_or(Refusal::NotFound)?;
        let index = match version {
            None => secret.versions.len() - 1,
            Some(v) => secret
                .versions
                .iter()
                .position(|x| x.version == v)
                .ok_or(Refusal::NotFound)?,
        };
        let target = &mut secret.versions[index];
        if let Some(ct) = patch.content_type {
            target.content_type = Some(ct);
        }
        if let Some(tags) = patch.tags {
            target.tags = tags;
        }
        let a = patch.attributes;
        target.enabled = a.enabled.unwrap_or(target.enabled);
        target.nbf = a.nbf.or(target.nbf);
        target.exp = a.exp.or(target.exp);
        target.updated = now_s;
        Ok((&secret.name, &secret.versions[index]))
    }

    /// Every active secret, in name order.
    pub fn active(&self) -> Vec<&Secret> {
        self.secrets
            .values()
            .filter(|s| s.deleted.is_none())
            .collect()
    }

    /// Soft-deletes active secret `name` (all its versions) at `now_s`.
    pub fn delete(&mut self, name: &str, now_s: i64) -> Result<&Secret, Refusal> {
        let secret = self
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .filter(|s| s.deleted.is_none())
            .ok_or(Refusal::NotFound)?;
        secret.deleted = Some(now_s);
        Ok(secret)
    }

    /// The soft-deleted secret `name`.
    pub fn deleted(&self, name: &str) -> Result<&Secret, Refusal> {
        self.secrets
            .get(&name.to_ascii_lowercase())
            .filter(|s| s.deleted.is_some())
            .ok_or(Refusal::NotFound)
    }

    /// Removes soft-deleted secret `name` for good; returns its name.
    pub fn purge(&mut self, name: &str) -> Result<String, Refusal> {
        let name = self.deleted(name)?.name.clone();
        self.secrets.remove(&name.to_ascii_lowercase());
        Ok(name)
    }

    /// Makes soft-deleted secret `name` active again, every version intact.
    pub fn recover(&mut self, name: &str) -> Result<&Secret, Refusal> {
        let secret = self
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .filter(|s| s.deleted.is_some())
            .ok_or(Refusal::NotFound)?;
        secret.deleted = None;
        Ok(secret)
    }
}

/// All vaults, keyed by lower-cased name; a vault exists as soon as it is mentioned.
#[derive(Debug, Default)]
pub struct Vaults(BTreeMap<String, Vault>);

impl Vaults {
    pub fn vault(&mut self, name: &str) -> &mut Vault {
        self.0.entry(name.to_ascii_lowercase()).or_default()
    }
}
