//! Entra applications and service principals, and their password and certificate
//! credentials.
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

impl PasswordCred {
    /// A credential with `secret_text` (its hint is the first three characters), usable
    /// at once.
    pub fn new(
        key_id: &str,
        display_name: Option<&str>,
        secret_text: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
    ) -> Self {
        Self {
            key_id: key_id.to_owned(),
            display_name: display_name.map(str::to_owned),
            hint: secret_text.chars().take(3).collect(),
            secret_text: secret_text.to_owned(),
            start,
            end,
            usable_from_ms: start.as_millisecond(),
        }
    }
}

/// A certificate credential (`keyCredential`) of an application or service principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCred {
    /// A uuid.
    pub key_id: String,
    pub display_name: Option<String>,
    /// `customKeyIdentifier`'s bytes (Edm.Binary, base64 on the wire): by default the
    /// SHA-1 thumbprint's 20 bytes; some upload paths store the 40 hex characters instead.
    pub custom_key_identifier: Vec<u8>,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
}

/// An application object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub object_id: String,
    /// The client id (`appId`) tokens are requested with.
    pub app_id: String,
    /// The object id of the app's service principal (the `oid` of its tokens).
    pub principal_id: String,
    pub display_name: String,
    pub tags: Vec<String>,
    pub passwords: Vec<PasswordCred>,
    pub keys: Vec<KeyCred>,
}

/// A service principal object that holds credentials of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    pub object_id: String,
    pub app_id: String,
    pub display_name: String,
    /// `Application`, `ManagedIdentity`, …
    pub principal_type: String,
    pub passwords: Vec<PasswordCred>,
    pub keys: Vec<KeyCred>,
}

/// Every application and service principal, by lower-cased object id (listed in that
/// order, as Graph lists in a stable but unspecified order).
#[derive(Debug, Default)]
pub struct Apps {
    apps: BTreeMap<String, App>,
    principals: BTreeMap<String, ServicePrincipal>,
}

impl Apps {
    /// Creates (or replaces) an application without credentials, named `app <app id>`.
    pub fn seed(&mut self, object_id: &str, app_id: &str) {
        let app = App {
            object_id: object_id.to_owned(),
            app_id: app_id.to_owned(),
            principal_id: super::super::ids::random_uuid(),
            display_name: format!("app {app_id}"),
            tags: Vec::new(),
            passwords: Vec::new(),
            keys: Vec::new(),
        };
        self.apps.insert(object_id.to_ascii_lowercase(), app);
    }

    /// Creates (or replaces) an application as given.
    pub fn insert(&mut self, app: App) {
        self.apps.insert(app.object_id.to_ascii_lowercase(), app);
    }

    /// Creates (or replaces) a service principal as given.
    pub fn insert_principal(&mut self, sp: ServicePrincipal) {
        self.principals
            .insert(sp.object_id.to_ascii_lowercase(), sp);
    }

    pub fn by_object_id(&self, object_id: &str) -> Option<&App> {
        self.apps.get(&object_id.to_ascii_lowercase())
    }

    pub fn by_app_id(&self, app_id: &str) -> Option<&App> {
        self.apps
            .values()
            .find(|a| a.app_id.eq_ignore_ascii_case(app_id))
    }

    pub fn get_mut(&mut self, object_id: &str) -> Option<&mut App> {
        self.apps.get_mut(&object_id.to_ascii_lowercase())
    }

    /// Every application, in listing order.
    pub fn all(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    /// Every service principal, in listing order.
    pub fn principals(&self) -> impl Iterator<Item = &ServicePrincipal> {
        self.principals.values()
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
