//! The rules discovery matches and filters by: name templates, the tag keys that name an
//! app, a key or an app's name, the confidence a credential needs to rotate, and the
//! exclusions. Built from `[fleet]` (see `config.rs`); pure data with pure functions.
//!
//! Owns: glob patterns and applying exclusions to an inventory. Never touches: I/O.

use super::matching::Confidence;
use super::model::{AppCredential, Inventory, VaultItem};

/// The tag that excludes a vault item from discovery, whatever its value.
pub const EXCLUDE_TAG: &str = "rekey-exclude";
/// The tags rekey writes on what it rotated: the app's client id and the credential's
/// key id. Both matching is definitive.
pub const REKEY_APP_ID_TAG: &str = "rekey-app-id";
pub const REKEY_KEY_ID_TAG: &str = "rekey-key-id";

/// Default name templates: `{app}` is the app's display name, `{app_id}` its client id.
pub const NAME_TEMPLATES_DEFAULT: &[&str] = &[
    "{app}-client-secret",
    "{app}-secret",
    "{app}-password",
    "{app}-certificate",
    "{app}-cert",
];
/// Tag keys whose value names an app (client id or object id). Azure's rotation samples
/// write `ProviderAddress`.
pub const APP_ID_TAG_KEYS_DEFAULT: &[&str] = &[
    "ProviderAddress",
    "AppId",
    "ApplicationId",
    "ClientId",
    "app-id",
    "client-id",
];
/// Tag keys whose value names a credential's key id. Azure's rotation samples write
/// `CredentialId`.
pub const KEY_ID_TAG_KEYS_DEFAULT: &[&str] = &["CredentialId", "KeyId", "key-id"];
/// Tag keys whose value names an app by display name.
pub const APP_NAME_TAG_KEYS_DEFAULT: &[&str] = &["AppName", "ApplicationName", "app-name"];

/// Which tag keys mean what (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagKeys {
    pub app_id: Vec<String>,
    pub key_id: Vec<String>,
    pub app_name: Vec<String>,
}

impl Default for TagKeys {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            app_id: own(APP_ID_TAG_KEYS_DEFAULT),
            key_id: own(KEY_ID_TAG_KEYS_DEFAULT),
            app_name: own(APP_NAME_TAG_KEYS_DEFAULT),
        }
    }
}

impl TagKeys {
    /// Whether `key` names an app (rekey's own tag always does).
    pub fn is_app_id(&self, key: &str) -> bool {
        key.eq_ignore_ascii_case(REKEY_APP_ID_TAG) || contains_ci(&self.app_id, key)
    }

    /// Whether `key` names a credential (rekey's own tag always does).
    pub fn is_key_id(&self, key: &str) -> bool {
        key.eq_ignore_ascii_case(REKEY_KEY_ID_TAG) || contains_ci(&self.key_id, key)
    }

    pub fn is_app_name(&self, key: &str) -> bool {
        contains_ci(&self.app_name, key)
    }
}

fn contains_ci(list: &[String], key: &str) -> bool {
    list.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// What discovery leaves out. Every pattern is a case-insensitive glob (`*`, `?`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclusions {
    /// Client ids (`appId`).
    pub app_ids: Vec<String>,
    /// App display names.
    pub app_names: Vec<String>,
    /// Vault item names.
    pub secret_names: Vec<String>,
    /// Vault names (not scanned at all).
    pub vaults: Vec<String>,
    /// Subscription ids (their vaults are not listed).
    pub subscriptions: Vec<String>,
}

impl Exclusions {
    /// Whether the credential is left out, by app id or app name.
    pub fn excludes_credential(&self, c: &AppCredential) -> bool {
        any_glob(&self.app_ids, &c.app_id) || any_glob(&self.app_names, &c.app_name)
    }

    /// Whether the item is left out: by name, by vault, or by the `rekey-exclude` tag.
    pub fn excludes_item(&self, i: &VaultItem) -> bool {
        i.tags.keys().any(|k| k.eq_ignore_ascii_case(EXCLUDE_TAG))
            || any_glob(&self.secret_names, &i.name)
            || self.excludes_vault(&i.vault)
    }

    pub fn excludes_vault(&self, vault: &str) -> bool {
        any_glob(&self.vaults, vault)
    }

    pub fn excludes_subscription(&self, subscription: &str) -> bool {
        any_glob(&self.subscriptions, subscription)
    }

    /// The inventory without what is excluded, and how many credentials and items were
    /// left out.
    pub fn apply(&self, mut inventory: Inventory) -> (Inventory, usize, usize) {
        let (c0, i0) = (inventory.credentials.len(), inventory.items.len());
        inventory
            .credentials
            .retain(|c| !self.excludes_credential(c));
        inventory.items.retain(|i| !self.excludes_item(i));
        let dropped_c = c0 - inventory.credentials.len();
        let dropped_i = i0 - inventory.items.len();
        (inventory, dropped_c, dropped_i)
    }
}

/// The matcher's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Item names that hold an app's credential, e.g. `{app}-client-secret`.
    pub name_templates: Vec<String>,
    pub tag_keys: TagKeys,
    /// The confidence every copy of a credential needs before it may rotate.
    pub min_confidence: Confidence,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            name_templates: NAME_TEMPLATES_DEFAULT
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            tag_keys: TagKeys::default(),
            min_confidence: Confidence::High,
        }
    }
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, text))
}

/// Case-insensitive glob: `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    // The classic two-pointer walk with one backtrack point (the last `*`): linear in
    // practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Checks a glob: not empty, not longer than 256 characters.
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("an empty pattern matches nothing; remove it or write e.g. \"test-*\"".into());
    }
    if pattern.chars().count() > 256 {
        return Err("a pattern may be at most 256 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_case_insensitively() {
        assert!(glob_match("test-*", "TEST-orders"));
        assert!(glob_match("*-dev", "orders-dev"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("test-*", "prod-test-x"));
        assert!(glob_match("5e7c*", "5E7C0000-0000-4000-8000-00000000c11e"));
    }
}
