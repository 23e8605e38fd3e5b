//! The boundary between the runner and the outside world. A rotation's targets play four
//! roles, each a trait whose methods say what the role does: [`Rotator`] (makes and retires
//! credentials), [`Store`] (holds versions), [`Dependent`] (consumes the value) and
//! [`Verifier`] (proves it works). Every external system (a vault, an app's settings, an
//! identity provider, a database, a file) implements the roles it plays and no others, so
//! the compiler, not a run-time error, refuses a kind in a role it does not play
//! ([`Cast`]). The runner calls nothing else. Secret values cross this boundary only in
//! memory, as [`SecretValue`], which never prints itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::saga::{ErrorClass, Role, StepId};

/// A boxed future, so providers can live behind `dyn Rotator` and the other role traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A secret value in memory: zeroed on drop, redacted in `Debug`, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(zeroize::Zeroizing::new(value.into()))
    }

    /// The value itself, for the provider that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

/// What a reconciliation of an in-doubt create found. Unlike every other step, a create
/// can have happened in a way that cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The effect happened; `id` is what it produced.
    Applied { id: Option<String> },
    /// The effect did not happen; the step may run again.
    NotApplied,
    /// The effect happened but cannot be used (a password whose text was never received):
    /// the orphan must be discarded, then the step runs again.
    AppliedUnusable { orphan_id: String },
}

/// What a reconciliation of any other in-doubt step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The effect happened; `id` is what it produced.
    Applied { id: Option<String> },
    /// The effect did not happen (or changes nothing): the step may run again.
    NotApplied,
}

impl From<Found> for Reconciled {
    fn from(found: Found) -> Self {
        match found {
            Found::Applied { id } => Reconciled::Applied { id },
            Found::NotApplied => Reconciled::NotApplied,
        }
    }
}

/// The step a role method serves: which rotation, which secret, and the idempotency key
/// to tag its effect with where the target allows (a version tag, a display name, a role
/// comment), so that the matching `reconcile_*` method finds it after a crash.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub rotation_id: &'a str,
    /// The secret's name at this target: what a store holds it under, what a rotator
    /// tags its credentials with.
    pub secret: &'a str,
    pub id: StepId,
    pub key: &'a str,
    /// The id of the credential this rotation created (its current generation's), once
    /// there is one: a store tags the version it writes with it where the plan asks
    /// (`rekey-key-id`), so the next discovery links the copy definitively.
    pub credential: Option<&'a str>,
    /// Where the step's target is, as the plan fixed it (`None` for targets found by
    /// name): what a store writes to one item beyond the value (tags to keep or add).
    pub address: Option<&'a crate::saga::Address>,
}

/// A credential a rotator made: its id (journaled) and its value (never journaled).
#[derive(Debug)]
pub struct Created {
    pub id: String,
    pub value: SecretValue,
}

/// A result on its way back from a role method.
pub type Reply<'a, T> = BoxFuture<'a, Result<T, ProviderError>>;

/// Makes the new credential at its source, and retires the old one after the grace period
/// (an Entra application password, a storage key, a database role's password).
///
/// Every method that changes something tags its effect with `step.key` where the source
/// allows, so the `reconcile_*` method of the same name can tell whether it happened.
pub trait Rotator: Send + Sync + std::fmt::Debug {
    /// Which credential is in use now (ids only, never a value). `stored` is the value the
    /// first store holds, which names the credential in use when the source cannot tell
    /// (an alternating pair of keys or roles).
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    fn capture<'a>(
        &'a self,
        step: Step<'a>,
        stored: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>>;

    /// Whether [`Rotator::capture`] and [`Rotator::discard`] use the value the first store
    /// holds. When not, the runner does not read it for them: one vault read less per
    /// rotation (the store's capture still journals the version it held).
    fn uses_stored_value(&self) -> bool {
        true
    }

    /// Makes the new credential. `captured` is what [`Rotator::capture`] found.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the credential may or may not exist.
    fn create<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, Created>;

    /// After the grace period: retires the credential `captured` before the rotation.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn retire_old<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()>;

    /// Undoes [`Rotator::create`]: retires the new credential `created` (`None` when the
    /// create never said which). `old` is the value before the rotation, for a source that
    /// replaced it in place and can set it back. Returns what the journal should record.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>>;

    /// Retires a credential nobody can use: one whose value was lost in a crash before any
    /// store held it, or an orphan that [`Rotator::reconcile_create`] found.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn discard_lost<'a>(&'a self, step: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()>;

    /// Did the create tagged `step.key` happen, and can its credential be used?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be inspected now.
    fn reconcile_create<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Reconciled>;

    /// Did the retirement of `captured` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be inspected now.
    fn reconcile_retire_old<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found>;

    /// Did the discard of `created` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be inspected now.
    fn reconcile_discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found>;

    /// Did the discard of the lost credential `created` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be inspected now.
    fn reconcile_discard_lost<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found>;

    /// A capture changes nothing: found in doubt, it runs again.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be asked now.
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let _ = step;
        Box::pin(async { Ok(Found::NotApplied) })
    }

    /// The value of credential `id`, when the source shows it again (storage keys list
    /// theirs); `None` when it never does (an Entra password): the value is then lost.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the source cannot be asked now.
    fn reveal<'a>(&'a self, id: &'a str) -> Reply<'a, Option<SecretValue>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
}

/// Holds the secret in versions (a vault entry): written, restored, and after the grace
/// period rid of every version but the live one (I8). Values can be read back by version
/// id, so a value never passes through the journal.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The current version's id, or `None` when the secret does not exist yet.
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>>;

    /// Writes `new` as the newest version, tagged with `step.key`; returns its id.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the version may or may not exist.
    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String>;

    /// Undoes [`Store::write`]. Versions cannot be un-created: `old` goes back as the
    /// newest version (once per `step.key`), and every version it supersedes (the failed
    /// rotation's, the `captured` one) is disabled; returns the restored copy's id. Without
    /// an old value (the secret did not exist), what the rotation `written` is disabled.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>>;

    /// After the grace period: disables every enabled version rekey wrote or `captured`,
    /// except the live one (I8).
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn disable_superseded<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>)
    -> Reply<'a, ()>;

    /// Did the write tagged `step.key` happen? Its version's id if so.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the store cannot be inspected now.
    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found>;

    /// Is the restore done: its copy written (`had_old`) and nothing it supersedes enabled?
    /// `had_old` says whether the rotation had an old value to write back.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the store cannot be inspected now.
    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found>;

    /// Is the retirement done: nothing but the live version enabled of those rekey knows?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the store cannot be inspected now.
    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found>;

    /// A capture changes nothing: found in doubt, it runs again.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the store cannot be asked now.
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let _ = step;
        Box::pin(async { Ok(Found::NotApplied) })
    }

    /// The value of `version`, read back after a crash so values never pass through the
    /// journal.
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue>;

    /// When the current version of `secret` expires (Unix ms), for stores that record it;
    /// schedules rotate ahead of it. `None`: no expiry known.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the store cannot be asked now.
    fn expiry<'a>(&'a self, secret: &'a str) -> Reply<'a, Option<i64>> {
        let _ = secret;
        Box::pin(async { Ok(None) })
    }
}

/// Consumes the secret (an app setting, a file): updated to the new value, and set back if
/// the rotation is undone. Only rekey's own setting or line changes.
pub trait Dependent: Send + Sync + std::fmt::Debug {
    /// What the target holds now, as an id that never reveals a value (`present`,
    /// `absent`, a revision, a Key Vault reference).
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>>;

    /// Sets the new value; returns what the journal should record, if anything.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn update<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, Option<String>>;

    /// Undoes [`Dependent::update`]: sets back what was `captured`, with the `old` value
    /// when one is known.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn revert<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>>;

    /// Did the update tagged `step.key` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the target cannot be inspected now.
    fn reconcile_update<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found>;

    /// Did the revert tagged `step.key` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the target cannot be inspected now.
    fn reconcile_revert<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found>;

    /// A capture changes nothing: found in doubt, it runs again.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the target cannot be asked now.
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let _ = step;
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// Proves the new credential works (a token request, a login, a read-back); changes
/// nothing.
pub trait Verifier: Send + Sync + std::fmt::Debug {
    /// Succeeds when `new` works.
    ///
    /// # Errors
    /// A classified [`ProviderError`]: permanent when the value does not work.
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()>;

    /// Verifying changes nothing: found in doubt, it runs again.
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the target cannot be asked now.
    fn reconcile_verify<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let _ = step;
        Box::pin(async { Ok(Found::NotApplied) })
    }
}

/// A provider failure, classified so the runner knows whether and when to retry.
/// Messages name the target and the missing permission, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// From `Retry-After`, when the target said how long to wait.
    pub retry_after_ms: Option<i64>,
    pub message: String,
}

impl ProviderError {
    /// A failure that may pass: retry with backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            retry_after_ms: None,
            message: message.into(),
        }
    }

    /// Throttled: retry no sooner than `retry_after_ms`.
    pub fn rate_limited(retry_after_ms: i64, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::RateLimited,
            retry_after_ms: Some(retry_after_ms),
            message: message.into(),
        }
    }

    /// A refusal that retrying will not change.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            retry_after_ms: None,
            message: message.into(),
        }
    }
}

/// One provider in one role: what the runner calls for one target of a plan.
///
/// A provider goes into a role only through the role's trait, so the compiler refuses a
/// kind in a role it does not play. A random-value rotator is a [`Rotator`]:
///
/// ```
/// # use std::sync::Arc;
/// # use rekey::provider::Cast;
/// # use rekey::providers::local::RandomRotator;
/// let rotator = Cast::Rotator(Arc::new(RandomRotator { bytes: 32 }));
/// ```
///
/// but no [`Store`], so this does not compile:
///
/// ```compile_fail
/// # use std::sync::Arc;
/// # use rekey::provider::Cast;
/// # use rekey::providers::local::RandomRotator;
/// let store = Cast::Store(Arc::new(RandomRotator { bytes: 32 }));
/// ```
///
/// A config that names a provider in a role its kind does not play is refused with the
/// roles it can play, found the same way (see [`Roles`]).
#[derive(Debug, Clone)]
pub enum Cast {
    Rotator(Arc<dyn Rotator>),
    Store(Arc<dyn Store>),
    Dependent(Arc<dyn Dependent>),
    Verifier(Arc<dyn Verifier>),
}

impl Cast {
    /// The role this provider plays here.
    pub fn role(&self) -> Role {
        match self {
            Cast::Rotator(_) => Role::Rotator,
            Cast::Store(_) => Role::Store,
            Cast::Dependent(_) => Role::Dependent,
            Cast::Verifier(_) => Role::Verifier,
        }
    }
}

/// Every role one provider plays, as the compiler sees it: [`roles!`](crate::roles) fills
/// in each role whose trait the provider's type implements, and only those.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    rotator: Option<Arc<dyn Rotator>>,
    store: Option<Arc<dyn Store>>,
    dependent: Option<Arc<dyn Dependent>>,
    verifier: Option<Arc<dyn Verifier>>,
}

impl Roles {
    /// One provider in the roles given (what [`roles!`](crate::roles) expands to).
    pub fn new(casts: impl IntoIterator<Item = Option<Cast>>) -> Self {
        let mut roles = Self::default();
        for cast in casts.into_iter().flatten() {
            roles.add(cast);
        }
        roles
    }

    /// Adds (or replaces) the provider of `cast`'s role.
    pub fn add(&mut self, cast: Cast) {
        match cast {
            Cast::Rotator(p) => self.rotator = Some(p),
            Cast::Store(p) => self.store = Some(p),
            Cast::Dependent(p) => self.dependent = Some(p),
            Cast::Verifier(p) => self.verifier = Some(p),
        }
    }

    /// The provider in `role`, if it plays it.
    pub fn cast(&self, role: Role) -> Option<Cast> {
        match role {
            Role::Rotator => self.rotator.clone().map(Cast::Rotator),
            Role::Store => self.store.clone().map(Cast::Store),
            Role::Dependent => self.dependent.clone().map(Cast::Dependent),
            Role::Verifier => self.verifier.clone().map(Cast::Verifier),
        }
    }

    /// The provider as a rotator, if it is one.
    pub fn rotator(&self) -> Option<&Arc<dyn Rotator>> {
        self.rotator.as_ref()
    }

    /// The provider as a store, if it is one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// The provider as a dependent, if it is one.
    pub fn dependent(&self) -> Option<&Arc<dyn Dependent>> {
        self.dependent.as_ref()
    }

    /// The provider as a verifier, if it is one.
    pub fn verifier(&self) -> Option<&Arc<dyn Verifier>> {
        self.verifier.as_ref()
    }

    /// The roles played, in plan order.
    pub fn roles(&self) -> Vec<Role> {
        ROLES
            .into_iter()
            .filter(|r| self.cast(*r).is_some())
            .collect()
    }
}

/// Every role, in the order a plan lists its targets.
pub const ROLES: [Role; 4] = [Role::Rotator, Role::Store, Role::Dependent, Role::Verifier];

/// The roles a role list names, for messages: `rotator, verifier`.
pub fn role_list(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "none".to_owned();
    }
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finding the roles a type plays at compile time, without a table. For each role, an
/// inherent item of [`plays::Plays`] exists only where the type implements the role's trait; a
/// trait item of the same name (`No*`) answers for every other type. Rust picks the
/// inherent item when its bounds hold, so with a concrete type the answer is the
/// compiler's. Use it through [`roles!`](crate::roles) and [`roles_of!`](crate::roles_of).
pub mod plays {
    use std::marker::PhantomData;
    use std::sync::Arc;

    use super::{Cast, Dependent, Rotator, Store, Verifier};

    /// A provider (or, with `None`, only its type) asked which roles it plays.
    #[derive(Debug)]
    pub struct Plays<'a, T>(pub Option<&'a Arc<T>>, pub PhantomData<T>);

    macro_rules! role {
        ($role:ident, $trait:ident, $no:ident, $is:ident, $cast:ident) => {
            impl<T: $trait + 'static> Plays<'_, T> {
                /// True: the type implements the role's trait.
                pub const $is: bool = true;
                /// The provider in this role.
                pub fn $cast(&self) -> Option<Cast> {
                    self.0.map(|p| Cast::$role(p.clone()))
                }
            }

            /// Answers for types that do not play the role.
            pub trait $no {
                /// False: the type does not implement the role's trait.
                const $is: bool = false;
                /// Never in this role.
                fn $cast(&self) -> Option<Cast> {
                    None
                }
            }

            impl<T> $no for Plays<'_, T> {}
        };
    }

    role!(Rotator, Rotator, NoRotator, ROTATOR, rotator);
    role!(Store, Store, NoStore, STORE, store);
    role!(Dependent, Dependent, NoDependent, DEPENDENT, dependent);
    role!(Verifier, Verifier, NoVerifier, VERIFIER, verifier);
}

/// Every role a provider (`Arc<T>` of a concrete type) plays, as [`Roles`].
#[macro_export]
macro_rules! roles {
    ($provider:expr) => {{
        #[allow(unused_imports)]
        use $crate::provider::plays::{
            NoDependent as _, NoRotator as _, NoStore as _, NoVerifier as _,
        };
        let provider = $provider;
        let plays = $crate::provider::plays::Plays(Some(&provider), ::std::marker::PhantomData);
        $crate::provider::Roles::new([
            plays.rotator(),
            plays.store(),
            plays.dependent(),
            plays.verifier(),
        ])
    }};
}

/// Every role a concrete provider type plays, in plan order.
#[macro_export]
macro_rules! roles_of {
    ($type:ty) => {{
        #[allow(unused_imports)]
        use $crate::provider::plays::{
            NoDependent as _, NoRotator as _, NoStore as _, NoVerifier as _,
        };
        type P = $crate::provider::plays::Plays<'static, $type>;
        [
            ($crate::saga::Role::Rotator, P::ROTATOR),
            ($crate::saga::Role::Store, P::STORE),
            ($crate::saga::Role::Dependent, P::DEPENDENT),
            ($crate::saga::Role::Verifier, P::VERIFIER),
        ]
        .into_iter()
        .filter_map(|(role, plays)| plays.then_some(role))
        .collect::<::std::vec::Vec<$crate::saga::Role>>()
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::azure::keyvault::KeyVaultStore;
    use crate::providers::local::{CommandVerifier, FileDependent, LocalVault, RandomRotator};

    #[test]
    fn the_compiler_says_which_roles_a_kind_plays() {
        assert_eq!(roles_of!(RandomRotator), [Role::Rotator]);
        assert_eq!(roles_of!(LocalVault), [Role::Store]);
        assert_eq!(roles_of!(KeyVaultStore), [Role::Store, Role::Verifier]);
        assert_eq!(roles_of!(FileDependent), [Role::Dependent, Role::Verifier]);
        assert_eq!(roles_of!(CommandVerifier), [Role::Verifier]);
        let roles = roles!(Arc::new(FileDependent::raw("/nowhere")));
        assert_eq!(roles.roles(), [Role::Dependent, Role::Verifier]);
        assert!(roles.cast(Role::Store).is_none());
        assert_eq!(role_list(&roles.roles()), "dependent, verifier");
    }
}
