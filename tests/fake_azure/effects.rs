//! What clients did to the fake's state: one entry per change, in order, so tests can count
//! writes (a retried PUT that created two versions shows up twice).
//!
//! Seeding (`kv_seed`, `site_seed`, …) is the test's own doing and is not recorded.

use std::collections::BTreeMap;

/// A change a client made through the fake's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `PUT /secrets/{name}` created `version` (vault lower-cased, name as first created).
    KvVersionCreated {
        vault: String,
        name: String,
        version: String,
        tags: BTreeMap<String, String>,
    },
    /// `PATCH /secrets/{name}/{version}`; `enabled` is the version's state afterwards.
    KvVersionUpdated {
        vault: String,
        name: String,
        version: String,
        enabled: bool,
    },
    /// `DELETE /secrets/{name}`: the secret (every version) is now soft-deleted.
    KvSecretDeleted { vault: String, name: String },
    /// `DELETE /deletedsecrets/{name}`: the deleted secret is gone for good.
    KvSecretPurged { vault: String, name: String },
    /// `POST /deletedsecrets/{name}/recover`: the secret is active again.
    KvSecretRecovered { vault: String, name: String },
    /// A PUT of app settings (which replaces them all); `keys_changed` lists, sorted, every key
    /// added, removed or given a new value (empty when the PUT changed nothing).
    AppSettingsReplaced {
        site: String,
        slot: Option<String>,
        keys_changed: Vec<String>,
    },
    /// `addPassword` created credential `key_id`.
    GraphPasswordAdded {
        object_id: String,
        key_id: String,
        display_name: Option<String>,
    },
    /// `removePassword` deleted credential `key_id`.
    GraphPasswordRemoved { object_id: String, key_id: String },
    /// `regenerateKey` replaced `key_name` (`key1`, `key2`, `kerb1` or `kerb2`).
    StorageKeyRegenerated { account: String, key_name: String },
}
