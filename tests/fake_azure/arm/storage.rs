//! Storage account access keys: `key1`/`key2` (and Kerberos `kerb1`/`kerb2`), each an 88-char
//! base64 value with its creation time; `regenerateKey` replaces one and answers with all.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::super::ids;

/// The key names `regenerateKey` accepts, in the order `listKeys` prints them.
pub const KEY_NAMES: [&str; 4] = ["key1", "key2", "kerb1", "kerb2"];

/// An account, by case-folded ARM names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccountKey {
    pub sub: String,
    pub rg: String,
    pub account: String,
}

impl AccountKey {
    pub fn new(sub: &str, rg: &str, account: &str) -> Self {
        Self {
            sub: sub.to_ascii_lowercase(),
            rg: rg.to_ascii_lowercase(),
            account: account.to_ascii_lowercase(),
        }
    }
}

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub value: String,
    pub created: jiff::Timestamp,
}

impl StoredKey {
    fn fresh(now: jiff::Timestamp) -> Self {
        Self {
            value: ids::storage_key(),
            created: now,
        }
    }
}

/// Every seeded account's keys, by key name.
#[derive(Debug, Default)]
pub struct Accounts(BTreeMap<AccountKey, BTreeMap<&'static str, StoredKey>>);

impl Accounts {
    /// Creates an account with four fresh keys (overwriting one of the same name).
    pub fn seed(&mut self, key: AccountKey, now: jiff::Timestamp) {
        let keys = KEY_NAMES
            .iter()
            .map(|n| (*n, StoredKey::fresh(now)))
            .collect();
        self.0.insert(key, keys);
    }

    pub fn get(&self, key: &AccountKey) -> Option<&BTreeMap<&'static str, StoredKey>> {
        self.0.get(key)
    }

    /// Whether anything lives in subscription `sub` (case-folded).
    pub fn in_sub(&self, sub: &str) -> bool {
        self.0.keys().any(|k| k.sub == sub)
    }

    /// Whether any account lives in resource group `rg` of `sub` (both case-folded).
    pub fn in_group(&self, sub: &str, rg: &str) -> bool {
        self.0.keys().any(|k| k.sub == sub && k.rg == rg)
    }

    /// Replaces key `name` of an existing account.
    pub fn regenerate(&mut self, key: &AccountKey, name: &'static str, now: jiff::Timestamp) {
        if let Some(keys) = self.0.get_mut(key) {
            keys.insert(name, StoredKey::fresh(now));
        }
    }

    /// The keys of the one account named `account` (any subscription or group).
    pub fn find(&self, account: &str) -> Vec<&BTreeMap<&'static str, StoredKey>> {
        let account = account.to_ascii_lowercase();
        self.0
            .iter()
            .filter(|(k, _)| k.account == account)
            .map(|(_, v)| v)
            .collect()
    }
}

/// `StorageAccountListKeysResult`: `key1`, `key2`, and the Kerberos keys when asked for.
pub fn list_keys_result(keys: &BTreeMap<&'static str, StoredKey>, kerb: bool) -> Value {
    let listed: Vec<Value> = KEY_NAMES
        .iter()
        .filter(|n| kerb || n.starts_with("key"))
        .filter_map(|n| keys.get(n).map(|k| (n, k)))
        .map(|(n, k)| {
            json!({
                "creationTime": ids::azure_time(k.created),
                "keyName": n,
                "value": k.value,
                "permissions": "Full",
            })
        })
        .collect();
    json!({ "keys": listed })
}

/// The key name in a `regenerateKey` body (case-insensitive), or `None` if missing/unknown.
pub fn parse_regenerate(body: Option<Value>) -> Option<&'static str> {
    let name = body?.get("keyName")?.as_str()?.to_ascii_lowercase();
    KEY_NAMES.iter().copied().find(|n| *n == name)
}
