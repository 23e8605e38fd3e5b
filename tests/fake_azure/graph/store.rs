//! Entra applications and their password credentials.
//!
//! A credential remembers its secret text (which Graph shows only once, in the `addPassword`
//! response) so tests can see what a client was given, and when it starts to work at the
//! token endpoint (`usable_from_ms`): real Entra takes seconds to minutes to propagate a new
//! password, which a rotation must wait out before it deletes the old one.

use std::collections::BTreeMap;

/// A password credential of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordCred {
    /// A uuid.
    pub key_id: String,
    pub display_name: Option<String>,
    /// The first 3 characters of the secret text.
    pub hint: String,
    /// The secret itself (test-side only: the service never shows it again).
    pub secret_text: String,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
    /// When the token endpoint starts accepting it (creation + propagation delay).
    pub usable_from_ms: i64,
}

/// An application object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub object_id: String,
    /// The client id (`appId`) tokens are requested with.
    pub app_id: String,
    /// The object id of the app's service principal (the `oid` of its tokens).
    pub principal_id: String,
    pub passwords: Vec<PasswordCred>,
}

/// Every application, by lower-cased object id.
#[derive(Debug, Default)]
pub struct Apps(BTreeMap<String, App>);

impl Apps {
    /// Creates (or replaces) an application without credentials.
    pub fn seed(&mut self, object_id: &str, app_id: &str) {
        let app = App {
            object_id: object_id.to_owned(),
            app_id: app_id.to_owned(),
            principal_id: super::super::ids::random_uuid(),
            passwords: Vec::new(),
        };
        self.0.insert(object_id.to_ascii_lowercase(), app);
    }

    pub fn by_object_id(&self, object_id: &str) -> Option<&App> {
        self.0.get(&object_id.to_ascii_lowercase())
    }

    pub fn by_app_id(&self, app_id: &str) -> Option<&App> {
        self.0
            .values()
            .find(|a| a.app_id.eq_ignore_ascii_case(app_id))
    }

    pub fn get_mut(&mut self, object_id: &str) -> Option<&mut App> {
        self.0.get_mut(&object_id.to_ascii_lowercase())
    }
}

impl App {
    /// Removes credential `key_id`; whether it existed.
    pub fn remove_password(&mut self, key_id: &str) -> bool {
        let before = self.passwords.len();
        self.passwords
            .retain(|p| !p.key_id.eq_ignore_ascii_case(key_id));
        self.passwords.len() != before
    }
}
