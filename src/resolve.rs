//! Finding the provider that plays each target of a plan. The runner asks a [`Resolve`]
//! for a target's provider in the target's role ([`Cast`]) and calls nothing else; how
//! the provider is found (a name in a map, an address built into a provider) is the
//! resolver's business.
//!
//! [`Registry`] finds providers by the target's name, among providers built beforehand:
//! what tests and simulations use. The config's resolver (`config::Resolver`) also builds
//! providers for the addresses a journal keeps.

use std::collections::HashMap;

use crate::provider::{Cast, Roles, role_list};
use crate::saga::{Role, TargetRef};

/// Finds the provider for a target.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// The provider that plays `target`, in its role.
    ///
    /// # Errors
    /// [`ResolveError`] saying what is missing and what to do.
    fn resolve(&self, target: &TargetRef) -> Result<Cast, ResolveError>;
}

/// Why a target has no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no provider is configured for target {name}; add it to the config or finish the rotation with the config it was started with"
    )]
    UnknownTarget { name: String },
    #[error(
        "{what} cannot be a {}; it can be: {can}; finish the rotation with the config it was started with",
        role.as_str()
    )]
    Miscast {
        /// The provider, e.g. `provider "vault" (kind local_vault)`.
        what: String,
        role: Role,
        /// The roles it can play.
        can: String,
    },
    #[error(
        "target {target} is reached through credential {credential:?}, which {config} does not define; add [credentials.{credential}] back as it was when the rotation started, then resume"
    )]
    MissingCredential {
        /// The target, e.g. `"vault" (key_vault https://… secret api)`.
        target: String,
        credential: String,
        /// The config file.
        config: String,
    },
    #[error("target {target}: {why}")]
    Build { target: String, why: String },
}

/// Providers by target name, each in the roles it was added in.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    providers: HashMap<String, Roles>,
}

impl Registry {
    /// An empty registry (a runner that only folds the journal needs no provider).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the provider `name` in `cast`'s role (once per role it plays).
    pub fn with(mut self, name: impl Into<String>, cast: Cast) -> Self {
        self.insert(name, cast);
        self
    }

    /// Adds the provider `name` in `cast`'s role.
    pub fn insert(&mut self, name: impl Into<String>, cast: Cast) {
        self.providers.entry(name.into()).or_default().add(cast);
    }

    /// Adds the provider `name` in every role of `roles` (see [`roles!`](crate::roles)).
    pub fn with_roles(mut self, name: impl Into<String>, roles: Roles) -> Self {
        let name = name.into();
        for role in roles.roles() {
            if let Some(cast) = roles.cast(role) {
                self.insert(name.clone(), cast);
            }
        }
        self
    }

    /// The names of the providers here.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.providers.keys()
    }

    /// The roles `name` plays here, if it is known.
    pub fn roles(&self, name: &str) -> Option<&Roles> {
        self.providers.get(name)
    }
}

impl Resolve for Registry {
    fn resolve(&self, target: &TargetRef) -> Result<Cast, ResolveError> {
        let roles =
            self.providers
                .get(&target.name)
                .ok_or_else(|| ResolveError::UnknownTarget {
                    name: target.name.clone(),
                })?;
        roles
            .cast(target.role)
            .ok_or_else(|| ResolveError::Miscast {
                what: format!("provider {:?}", target.name),
                role: target.role,
                can: role_list(&roles.roles()),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::providers::local::RandomRotator;

    #[test]
    fn a_registry_finds_a_provider_only_in_the_roles_it_plays() {
        let registry = Registry::new().with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        );
        let rotator = TargetRef::new(Role::Rotator, "random");
        assert!(matches!(registry.resolve(&rotator), Ok(Cast::Rotator(_))));
        let store = TargetRef::new(Role::Store, "random");
        assert_eq!(
            registry.resolve(&store).unwrap_err().to_string(),
            "provider \"random\" cannot be a store; it can be: rotator; finish the rotation with the config it was started with"
        );
        let unknown = TargetRef::new(Role::Store, "vault");
        assert!(matches!(
            registry.resolve(&unknown),
            Err(ResolveError::UnknownTarget { .. })
        ));
    }
}
