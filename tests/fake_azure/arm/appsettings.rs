//! App Service application settings: one string map per site or slot, which a PUT replaces
//! whole (any key left out is deleted — the behaviour that makes list-merge-put necessary).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// A site or slot, by case-folded ARM names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SiteKey {
    pub sub: String,
    pub rg: String,
    pub site: String,
    pub slot: Option<String>,
}

impl SiteKey {
    pub fn new(sub: &str, rg: &str, site: &str, slot: Option<&str>) -> Self {
        Self {
            sub: sub.to_ascii_lowercase(),
            rg: rg.to_ascii_lowercase(),
            site: site.to_ascii_lowercase(),
            slot: slot.map(str::to_ascii_lowercase),
        }
    }

    /// The same site without the slot (a slot's parent).
    pub fn parent(&self) -> Self {
        Self {
            slot: None,
            ..self.clone()
        }
    }
}

/// Every seeded site and slot, with its settings.
#[derive(Debug, Default)]
pub struct Sites(BTreeMap<SiteKey, BTreeMap<String, String>>);

impl Sites {
    /// Creates (or overwrites) a site or slot; a slot's parent site is created if missing.
    pub fn seed(&mut self, key: SiteKey, settings: BTreeMap<String, String>) {
        if key.slot.is_some() {
            self.0.entry(key.parent()).or_default();
        }
        self.0.insert(key, settings);
    }

    pub fn get(&self, key: &SiteKey) -> Option<&BTreeMap<String, String>> {
        self.0.get(key)
    }

    /// Whether anything lives in subscription `sub` (case-folded).
    pub fn in_sub(&self, sub: &str) -> bool {
        self.0.keys().any(|k| k.sub == sub)
    }

    /// Whether any site lives in resource group `rg` of `sub` (both case-folded).
    pub fn in_group(&self, sub: &str, rg: &str) -> bool {
        self.0.keys().any(|k| k.sub == sub && k.rg == rg)
    }

    /// Replaces a site's settings with `new`; returns the keys added, removed or changed.
    pub fn replace(&mut self, key: &SiteKey, new: BTreeMap<String, String>) -> Vec<String> {
        let old = self.0.insert(key.clone(), new.clone()).unwrap_or_default();
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        keys.into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .cloned()
            .collect()
    }

    /// The settings of the one site named `site` (any subscription or group) or its `slot`.
    pub fn find(&self, site: &str, slot: Option<&str>) -> Vec<&BTreeMap<String, String>> {
        let site = site.to_ascii_lowercase();
        let slot = slot.map(str::to_ascii_lowercase);
        self.0
            .iter()
            .filter(|(k, _)| k.site == site && k.slot == slot)
            .map(|(_, v)| v)
            .collect()
    }
}

/// The `StringDictionary` resource App Service returns for settings at `id`.
pub fn string_dictionary(id: &str, is_slot: bool, settings: &BTreeMap<String, String>) -> Value {
    let kind = if is_slot {
        "Microsoft.Web/sites/slots/config"
    } else {
        "Microsoft.Web/sites/config"
    };
    json!({
        "id": id,
        "name": "appsettings",
        "type": kind,
        "kind": "app",
        "properties": settings,
    })
}

/// The settings in a PUT body (`{"properties": {…}}`), or the reason it is invalid. A body
/// without `properties` replaces the settings with none, as the service does.
pub fn parse_put(body: Option<Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(Value::Object(body)) = body else {
        return Err("The request content was invalid and could not be deserialized.".to_owned());
    };
    match body.get("properties") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(props)) => props
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!(
                    "The request content was invalid and could not be deserialized: \
                     'properties.{k}' must be a string."
                )),
            })
            .collect(),
        Some(_) => Err(
            "The request content was invalid and could not be deserialized: 'properties' \
             must be an object."
                .to_owned(),
        ),
    }
}
