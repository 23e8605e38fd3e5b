//! Who may get tokens: service principals registered with client secrets (per tenant), and
//! managed identities (the system-assigned one, plus user-assigned ones named by client id).
//! Graph applications' passwords are the other kind of client secret (see `login`).

use std::collections::BTreeMap;

use super::ids;

/// A service principal registered with a client secret.
#[derive(Debug, Clone)]
pub struct Client {
    pub secrets: Vec<String>,
    /// Certificates uploaded to the app registration (DER), for client assertions.
    pub certificates: Vec<Vec<u8>>,
    /// Federated identity credentials: (issuer, subject) pairs whose tokens it accepts as
    /// client assertions (workload identity).
    pub federated: Vec<(String, String)>,
    /// The `oid` of its tokens.
    pub principal_id: String,
}

/// A managed identity: its client id and the `oid` of its tokens.
#[derive(Debug, Clone)]
pub struct Identity {
    pub client_id: String,
    pub principal_id: String,
}

impl Identity {
    fn random() -> Self {
        Self {
            client_id: ids::random_uuid(),
            principal_id: ids::random_uuid(),
        }
    }
}

/// Who may get tokens: registered clients (per tenant) and managed identities.
#[derive(Debug)]
pub struct Principals {
    /// By (lower-cased tenant, lower-cased client id).
    clients: BTreeMap<(String, String), Client>,
    /// The system-assigned identity IMDS and App Service use when no id is named.
    pub system_identity: Identity,
    /// User-assigned identities, by lower-cased client id.
    user_identities: BTreeMap<String, Identity>,
}

impl Principals {
    pub fn new() -> Self {
        Self {
            clients: BTreeMap::new(),
            system_identity: Identity::random(),
            user_identities: BTreeMap::new(),
        }
    }

    /// Adds `secret` to client `client_id` of `tenant` (creating the client).
    pub fn register_client(&mut self, tenant: &str, client_id: &str, secret: &str) {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        self.client_entry(key).secrets.push(secret.to_owned());
    }

    /// Adds a certificate (DER) to client `client_id` of `tenant` (creating the client).
    pub fn register_client_certificate(&mut self, tenant: &str, client_id: &str, der: &[u8]) {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        self.client_entry(key).certificates.push(der.to_vec());
    }

    /// Lets client `client_id` of `tenant` (created if new) sign in with tokens that
    /// `issuer` issued to `subject`.
    pub fn register_federated(
        &mut self,
        tenant: &str,
        client_id: &str,
        issuer: &str,
        subject: &str,
    ) {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        self.client_entry(key)
            .federated
            .push((issuer.to_owned(), subject.to_owned()));
    }

    fn client_entry(&mut self, key: (String, String)) -> &mut Client {
        self.clients.entry(key).or_insert_with(|| Client {
            secrets: Vec::new(),
            certificates: Vec::new(),
            federated: Vec::new(),
            principal_id: ids::random_uuid(),
        })
    }

    pub fn client(&self, tenant: &str, client_id: &str) -> Option<&Client> {
        self.clients
            .get(&(tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase()))
    }

    /// Whether `tenant` is one the fake knows (home, or any registered client's).
    pub fn knows_tenant(&self, home: &str, tenant: &str) -> bool {
        tenant.eq_ignore_ascii_case(home)
            || self
                .clients
                .keys()
                .any(|(t, _)| *t == tenant.to_ascii_lowercase())
    }

    pub fn add_user_identity(&mut self, client_id: &str) -> Identity {
        let identity = Identity {
            client_id: client_id.to_owned(),
            principal_id: ids::random_uuid(),
        };
        self.user_identities
            .insert(client_id.to_ascii_lowercase(), identity.clone());
        identity
    }

    /// The identity a managed-identity request names (by client id, object id or resource
    /// id), or the system-assigned one when it names none.
    pub fn identity(&self, client_id: Option<&str>, object_id: Option<&str>) -> Option<&Identity> {
        match (client_id, object_id) {
            (None, None) => Some(&self.system_identity),
            (Some(c), _) => std::iter::once(&self.system_identity)
                .chain(self.user_identities.values())
                .find(|i| i.client_id.eq_ignore_ascii_case(c)),
            (None, Some(o)) => std::iter::once(&self.system_identity)
                .chain(self.user_identities.values())
                .find(|i| i.principal_id.eq_ignore_ascii_case(o)),
        }
    }
}
