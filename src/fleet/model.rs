//! What discovery finds, as plain data: Entra credentials (of applications and service
//! principals), Key Vault items (secrets and certificates), and what could not be read.
//! The inventory module fills these from Graph, ARM and Key Vault; the matcher reads them.
//!
//! Owns: the inventory types and the normalisation of identifiers (key ids, SHA-1
//! thumbprints in hex or base64). Never touches: I/O, clocks, secret values. A password's
//! `hint` (three characters of its text, as Graph shows them) lives here in memory only:
//! nothing that serializes this module's types writes it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// Which kind of Entra credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A client secret (`passwordCredentials`).
    Password,
    /// A certificate (`keyCredentials`).
    Certificate,
}

impl CredentialKind {
    /// `password` or `certificate`, as the JSON output names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Certificate => "certificate",
        }
    }
}

/// Where Graph listed a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// An application registration (`/applications`).
    Application,
    /// A service principal (`/servicePrincipals`): reported, rotated only when configured.
    ServicePrincipal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Application => "application",
            Origin::ServicePrincipal => "service_principal",
        }
    }
}

/// A certificate's SHA-1 thumbprint: 20 bytes, however it was written.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Thumbprint(pub [u8; 20]);

impl Thumbprint {
    /// Parses a thumbprint written as 40 hex digits, or as base64 / base64url (padded or
    /// not) of either the 20 bytes or of the 40 hex characters (Graph echoes a hex
    /// `customKeyIdentifier` that way). `None` for anything else (a custom identifier
    /// that is not a thumbprint).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(t) = Self::from_hex(text) {
            return Some(t);
        }
        let bytes = [URL_SAFE_NO_PAD, URL_SAFE, STANDARD, STANDARD_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())?;
        Self::from_bytes(&bytes)
    }

    /// 20 raw bytes, or 40 bytes of ASCII hex.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if let Ok(raw) = <[u8; 20]>::try_from(bytes) {
            return Some(Self(raw));
        }
        std::str::from_utf8(bytes).ok().and_then(Self::from_hex)
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 40 {
            return None;
        }
        let raw = hex::decode(text).ok()?;
        <[u8; 20]>::try_from(raw.as_slice()).ok().map(Self)
    }

    /// Upper-case hex, as the Azure portal shows thumbprints.
    pub fn to_hex(self) -> String {
        hex::encode_upper(self.0)
    }
}

impl std::fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thumbprint({})", self.to_hex())
    }
}

/// One Entra credential: a client secret or certificate of an application or a service
/// principal.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredential {
    /// The configured tenant's name (`[fleet.tenants.<name>]`).
    pub tenant: String,
    pub origin: Origin,
    /// The application's (or service principal's) object id, lower case.
    pub object_id: String,
    /// The client id (`appId`), lower case.
    pub app_id: String,
    /// The application's display name.
    pub app_name: String,
    /// The credential's `keyId`, lower case.
    pub key_id: String,
    pub kind: CredentialKind,
    /// The credential's own display name, if any.
    pub display_name: Option<String>,
    /// `startDateTime`, Unix ms.
    pub start_ms: Option<i64>,
    /// `endDateTime`, Unix ms.
    pub end_ms: Option<i64>,
    /// A password's `hint`: the first three characters of its text. In memory only.
    pub hint: Option<String>,
    /// A certificate's thumbprint (from `customKeyIdentifier`).
    pub thumbprint: Option<Thumbprint>,
}

impl std::fmt::Debug for AppCredential {
    /// Everything but the hint, which is part of a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredential")
            .field("tenant", &self.tenant)
            .field("origin", &self.origin)
            .field("object_id", &self.object_id)
            .field("app_id", &self.app_id)
            .field("app_name", &self.app_name)
            .field("key_id", &self.key_id)
            .field("kind", &self.kind)
            .field("display_name", &self.display_name)
            .field("start_ms", &self.start_ms)
            .field("end_ms", &self.end_ms)
            .field("hint", &self.hint.as_ref().map(|_| "[redacted]"))
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

impl AppCredential {
    /// The identity that orders and tells credentials apart.
    pub fn sort_key(&self) -> (&str, Origin, &str, &str) {
        (&self.tenant, self.origin, &self.object_id, &self.key_id)
    }
}

/// Which kind of Key Vault item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Secret,
    Certificate,
}

/// One Key Vault secret or certificate, as listed (never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultItem {
    /// The configured tenant whose credential read the vault.
    pub tenant: String,
    /// The vault's name (lower case), e.g. `kv-payments`.
    pub vault: String,
    /// The item's name as the vault lists it.
    pub name: String,
    pub kind: ItemKind,
    pub tags: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub enabled: bool,
    /// `attributes.exp`, Unix ms.
    pub exp_ms: Option<i64>,
    /// `attributes.created`, Unix ms.
    pub created_ms: Option<i64>,
    /// A certificate's `x5t`.
    pub x5t: Option<Thumbprint>,
    /// The secret that backs a certificate (`managed: true`); its certificate stands for it.
    pub managed: bool,
}

impl VaultItem {
    /// The order that tells items apart: vault, kind, then name ignoring ASCII case (Key
    /// Vault names are case-insensitive). Allocates nothing: sorting 30,000 items calls
    /// it half a million times.
    pub fn cmp_key(&self, other: &Self) -> std::cmp::Ordering {
        self.vault
            .cmp(&other.vault)
            .then(self.kind.cmp(&other.kind))
            .then_with(|| {
                let a = self.name.bytes().map(|b| b.to_ascii_lowercase());
                a.cmp(other.name.bytes().map(|b| b.to_ascii_lowercase()))
            })
    }
}

/// What could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableKind {
    /// No token, or Graph refused the listing: none of the tenant's credentials are known.
    Tenant,
    /// ARM refused the vault listing: vaults of the subscription are unknown.
    Subscription,
    /// The vault refused its secrets listing (403, firewall) or never answered.
    Vault,
    /// The vault listed its secrets but refused its certificates.
    VaultCertificates,
}

impl UnreachableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnreachableKind::Tenant => "tenant",
            UnreachableKind::Subscription => "subscription",
            UnreachableKind::Vault => "vault",
            UnreachableKind::VaultCertificates => "vault_certificates",
        }
    }
}

/// Something discovery could not read, and why. Never "empty": a copy may live there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unreachable {
    pub kind: UnreachableKind,
    /// The configured tenant it belongs to.
    pub tenant: String,
    /// The tenant's name, the subscription id or the vault's name.
    pub name: String,
    /// What went wrong, with the service's own error code.
    pub reason: String,
}

/// Everything one discovery read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub credentials: Vec<AppCredential>,
    pub items: Vec<VaultItem>,
    pub unreachable: Vec<Unreachable>,
    /// The vaults read, by tenant: `(tenant, vault name)`.
    pub vaults: Vec<(String, String)>,
}

/// Lower-cased and trimmed: how ids (GUIDs) are compared.
pub fn id_key(id: &str) -> String {
    id.trim().to_ascii_lowercase()
}

/// True for a GUID in its usual 8-4-4-4-12 form (what app ids, object ids and key ids
/// look like), so a tag holding one can be read as naming an object.
pub fn looks_like_guid(text: &str) -> bool {
    let t = text.trim();
    t.len() == 36
        && t.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_normalise_from_hex_and_both_base64_forms() {
        let raw: [u8; 20] = core::array::from_fn(|i| (i as u8) * 13 + 7);
        let want = Some(Thumbprint(raw));
        let hex_upper = hex::encode_upper(raw);
        assert_eq!(Thumbprint::parse(&hex_upper), want);
        assert_eq!(Thumbprint::parse(&hex::encode(raw)), want);
        assert_eq!(Thumbprint::parse(&URL_SAFE_NO_PAD.encode(raw)), want);
        assert_eq!(Thumbprint::parse(&STANDARD.encode(raw)), want);
        // Graph's echo of a hex customKeyIdentifier: base64 of the 40 characters.
        assert_eq!(Thumbprint::parse(&STANDARD.encode(&hex_upper)), want);
        assert_eq!(Thumbprint::parse("not a thumbprint"), None);
        assert_eq!(Thumbprint::parse(&STANDARD.encode([1u8; 16])), None);
    }

    #[test]
    fn guids_are_recognised() {
        assert!(looks_like_guid("5e7c0000-0000-4000-8000-00000000C11E"));
        assert!(!looks_like_guid("5e7c0000-0000-4000-8000-00000000c11"));
        assert!(!looks_like_guid("orders-api"));
    }
}
