//! Where a target is: its kind, its address (a vault URL and a secret name, an application's
//! object id, a site and a setting, a file path, a role name...) and the name of the
//! configured credential or connection that reaches it. A plan keeps each target's address,
//! fixed when the rotation is requested, so a rotation resumes under a config that has
//! renamed, moved or dropped the provider entry it started with.
//!
//! An address holds no secret: credentials, keys and passwords are named (a
//! `[credentials.<name>]` entry, an environment variable, a key file), never held. Nor
//! does it hold a command: a verifier's command or a file's hook is named by its digest
//! ([`CommandDigest`]), so the journal never decides what runs; the config does. It is
//! part of the journal's format: change it only by adding optional fields.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A command (program and arguments) named by the SHA-256 of its words: which command a
/// target runs, without its text (which could name anything) in the journal. A resumed
/// rotation runs the configured command with this digest, or stops.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandDigest(String);

impl CommandDigest {
    /// The digest of `command`: each word's length, then its bytes, so no two commands
    /// share one.
    pub fn of(command: &[String]) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for word in command {
            hash.update((word.len() as u64).to_le_bytes());
            hash.update(word.as_bytes());
        }
        Self(hex::encode(hash.finalize()))
    }

    /// Its first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

/// How the `postgres_role` kind rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    Single,
    Alternating,
}

/// How a `postgres_role` value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresValueFormat {
    Password,
    Json,
}

/// Transport security of `postgres_role` connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresTls {
    /// TLS required; certificate chain and host name checked.
    #[default]
    VerifyFull,
    /// No TLS: loopback addresses and Unix sockets only.
    Disable,
}

/// What a target is and where, with what rekey needs to act on it there. Tagged by `kind`,
/// as in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Address {
    /// Random bytes from the OS-seeded CSPRNG: no place outside rekey.
    Random { bytes: usize },
    /// Secret `secret` in the local vault file at `path`.
    LocalVault {
        path: PathBuf,
        secret: String,
        /// Where the key that seals values lives (a file, or an environment variable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_env: Option<String>,
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// Line `key` of the env file at `path`, and the hook run after each change.
    EnvFile {
        path: PathBuf,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_write: Option<CommandDigest>,
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// The whole file at `path`, and the hook run after each change.
    File {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_write: Option<CommandDigest>,
        #[serde(default)]
        follow_symlinks: bool,
    },
    /// A verification command.
    Command { command: CommandDigest },
    /// Secret `secret` of the Key Vault at `vault_url`, reached with `credential`.
    KeyVault {
        vault_url: String,
        secret: String,
        credential: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        verify_challenge_resource: bool,
        /// Tags every new version gets besides rekey's own (a fleet rotation's
        /// `rekey-app-id`). Empty for a configured store.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        tags: BTreeMap<String, String>,
        /// Tags set to the id of the credential the rotation created (`rekey-key-id`, and a
        /// key-id tag the item already had, such as `CredentialId`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        credential_tags: Vec<String>,
        /// Each new version keeps the current version's other tags and its content type
        /// (a discovered item: rekey did not create it and must not strip it).
        #[serde(default, skip_serializing_if = "is_false")]
        keep_metadata: bool,
    },
    /// Setting `setting` of an App Service site (or slot), reached with `credential`.
    AppSetting {
        credential: String,
        subscription: String,
        resource_group: String,
        site: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<String>,
        setting: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_vault_reference: Option<String>,
    },
    /// The passwords of the Entra application `object_id`, reached with `credential`.
    EntraPassword {
        credential: String,
        tenant: String,
        object_id: String,
        app_id: String,
        validity_days: i64,
        verify_scope: String,
        propagation: String,
        /// The key ids to retire after the grace period, fixed when the rotation is
        /// requested (a fleet rotation: the credentials discovery identified with HIGH
        /// confidence; empty: none). `None`: the passwords rekey made for this secret
        /// before (found by display name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retire: Option<Vec<String>>,
    },
    /// The key pair of storage account `account`, reached with `credential`.
    StorageKeys {
        credential: String,
        subscription: String,
        resource_group: String,
        account: String,
        kerberos: bool,
    },
    /// An OAuth 2.0 token endpoint; its client secret is in `client_secret_env`.
    OauthToken {
        token_url: String,
        client_id: String,
        client_secret_env: String,
        scope: String,
    },
    /// Login roles `roles` (one in single mode, two alternating) of database `dbname` at
    /// `host:port`, administered as `admin_user` (password in `admin_password_env`).
    PostgresRole {
        host: String,
        port: u16,
        dbname: String,
        admin_user: String,
        admin_password_env: String,
        mode: PostgresMode,
        roles: Vec<String>,
        password_bytes: usize,
        value_format: PostgresValueFormat,
        verify_host: String,
        verify_port: u16,
        tls: PostgresTls,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls_ca_file: Option<PathBuf>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Address {
    /// The kind, as the config names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Address::Random { .. } => "random",
            Address::LocalVault { .. } => "local_vault",
            Address::EnvFile { .. } => "env_file",
            Address::File { .. } => "file",
            Address::Command { .. } => "command",
            Address::KeyVault { .. } => "key_vault",
            Address::AppSetting { .. } => "app_setting",
            Address::EntraPassword { .. } => "entra_password",
            Address::StorageKeys { .. } => "storage_keys",
            Address::OauthToken { .. } => "oauth_token",
            Address::PostgresRole { .. } => "postgres_role",
        }
    }

    /// The secret's name inside a store that holds many (a vault), if this is one.
    pub fn item(&self) -> Option<&str> {
        match self {
            Address::LocalVault { secret, .. } | Address::KeyVault { secret, .. } => Some(secret),
            _ => None,
        }
    }

    /// This address naming another item of the same store (vaults only).
    #[must_use]
    pub fn with_item(mut self, item: &str) -> Self {
        if let Address::LocalVault { secret, .. } | Address::KeyVault { secret, .. } = &mut self {
            item.clone_into(secret);
        }
        self
    }

    /// The configured credential that reaches the target, if it needs one.
    pub fn credential(&self) -> Option<&str> {
        match self {
            Address::KeyVault { credential, .. }
            | Address::AppSetting { credential, .. }
            | Address::EntraPassword { credential, .. }
            | Address::StorageKeys { credential, .. } => Some(credential),
            _ => None,
        }
    }

    /// What one provider instance serves: the address without its item (and what is
    /// written to that item only), so every secret of one vault shares one provider (and
    /// its lock, token scope and request budget).
    pub fn provider_key(&self) -> String {
        let mut shared = self.clone().with_item("");
        if let Address::KeyVault {
            tags,
            credential_tags,
            keep_metadata,
            ..
        } = &mut shared
        {
            tags.clear();
            credential_tags.clear();
            *keep_metadata = false;
        }
        serde_json::to_string(&shared).unwrap_or_else(|_| format!("{shared:?}"))
    }
}

impl std::fmt::Display for Address {
    /// A short description for messages: the kind and where, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind();
        match self {
            Address::Random { .. } => write!(f, "{kind}"),
            Address::LocalVault { path, secret, .. } => {
                write!(f, "{kind} {} secret {secret}", path.display())
            }
            Address::EnvFile { path, key, .. } => write!(f, "{kind} {} ({key})", path.display()),
            Address::File { path, .. } => write!(f, "{kind} {}", path.display()),
            Address::Command { command } => write!(f, "{kind} (sha256 {})", command.short()),
            Address::KeyVault {
                vault_url, secret, ..
            } => write!(f, "{kind} {vault_url} secret {secret}"),
            Address::AppSetting {
                site,
                slot,
                setting,
                ..
            } => match slot {
                Some(slot) => write!(f, "{kind} {setting} of site {site} slot {slot}"),
                None => write!(f, "{kind} {setting} of site {site}"),
            },
            Address::EntraPassword { object_id, .. } => {
                write!(f, "{kind} application {object_id}")
            }
            Address::StorageKeys { account, .. } => write!(f, "{kind} account {account}"),
            Address::OauthToken { token_url, .. } => write!(f, "{kind} {token_url}"),
            Address::PostgresRole {
                host,
                port,
                dbname,
                roles,
                ..
            } => write!(f, "{kind} {} at {host}:{port}/{dbname}", roles.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_one_vault_share_one_provider() {
        let kv = |secret: &str| Address::KeyVault {
            vault_url: "https://kv1.vault.azure.net".into(),
            secret: secret.into(),
            credential: "azure".into(),
            content_type: None,
            verify_challenge_resource: true,
            tags: BTreeMap::new(),
            credential_tags: Vec::new(),
            keep_metadata: false,
        };
        assert_eq!(kv("a").provider_key(), kv("b").provider_key());
        assert_eq!(kv("a").item(), Some("a"));
        assert_eq!(kv("a").credential(), Some("azure"));
        assert_eq!(
            kv("api").to_string(),
            "key_vault https://kv1.vault.azure.net secret api"
        );
        let command = |words: &[&str]| {
            CommandDigest::of(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
        };
        assert_ne!(command(&["a", "bc"]), command(&["ab", "c"]));
        let check = Address::Command {
            command: command(&["sh", "-c", "echo token-123"]),
        };
        let text = serde_json::to_string(&check).unwrap();
        assert!(
            !text.contains("token-123") && !text.contains("sh"),
            "{text}"
        );
        let json = serde_json::to_value(kv("api")).unwrap();
        assert_eq!(json["kind"], "key_vault");
        assert_eq!(serde_json::from_value::<Address>(json).unwrap(), kv("api"));
    }

    #[test]
    fn fleet_fields_are_optional_and_per_item() {
        // A journal written before these fields existed still reads.
        let old = serde_json::json!({
            "kind": "key_vault", "vault_url": "https://kv1.vault.azure.net", "secret": "a",
            "credential": "azure", "verify_challenge_resource": true
        });
        let Address::KeyVault {
            tags,
            credential_tags,
            keep_metadata,
            ..
        } = serde_json::from_value::<Address>(old.clone()).unwrap()
        else {
            panic!("not a key_vault address")
        };
        assert!(tags.is_empty() && credential_tags.is_empty() && !keep_metadata);
        let old_entra = serde_json::json!({
            "kind": "entra_password", "credential": "g", "tenant": "t", "object_id": "o",
            "app_id": "a", "validity_days": 180, "verify_scope": "s", "propagation": "2m"
        });
        let Address::EntraPassword { retire, .. } =
            serde_json::from_value::<Address>(old_entra).unwrap()
        else {
            panic!("not an entra_password address")
        };
        assert!(retire.is_none());
        // What is written to one item does not split the vault's provider, and an
        // address without fleet fields serializes as before.
        let mut fleet = serde_json::from_value::<Address>(old.clone()).unwrap();
        if let Address::KeyVault {
            tags,
            credential_tags,
            keep_metadata,
            secret,
            ..
        } = &mut fleet
        {
            tags.insert("rekey-app-id".into(), "app".into());
            credential_tags.push("rekey-key-id".into());
            *keep_metadata = true;
            "b".clone_into(secret);
        }
        let plain = serde_json::from_value::<Address>(old.clone()).unwrap();
        assert_eq!(fleet.provider_key(), plain.provider_key());
        assert_eq!(serde_json::to_value(&plain).unwrap(), old);
    }
}
