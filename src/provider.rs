//! The boundary between the runner and the outside world. Every external system (a vault,
//! an app's settings, an identity provider, a database, a file) implements [`Provider`];
//! the runner calls nothing else. Secret values cross this boundary only in memory, as
//! [`SecretValue`], which never prints itself.

use std::future::Future;
use std::pin::Pin;

use crate::saga::{Action, ErrorClass, StepId, TargetRef};

/// A boxed future, so providers can live behind `dyn Provider`.
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

/// One provider call: which step, on which target, with what it may need.
#[derive(Debug)]
pub struct Call<'a> {
    pub rotation_id: &'a str,
    pub secret: &'a str,
    pub step: StepId,
    /// The idempotency key to tag the effect with (a version tag, a display name).
    pub key: &'a str,
    pub target: &'a TargetRef,
    /// What `Capture` found on this target before the rotation changed anything.
    pub captured: Option<&'a str>,
    /// What this target's forward step produced (the new version or credential id).
    pub produced: Option<&'a str>,
    /// The new value (write, update, verify), or the old one (restore, revert, and a
    /// rotator's capture, which may use it to tell which credential is in use).
    pub value: Option<&'a SecretValue>,
}

/// What an applied call produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// The id produced or found: a version id, a key id, a captured fingerprint.
    pub id: Option<String>,
    /// The new credential's value; only `Create` returns one.
    pub value: Option<SecretValue>,
}

/// What a reconciliation found for an in-doubt step.
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

    /// `what` cannot `verb` (perform, undo) `call`'s step: the plan or config put the
    /// provider in a role it does not play. `hint` (may be empty) says what to do.
    pub fn unsupported(call: &Call<'_>, what: &str, verb: &str, hint: &str) -> Self {
        Self::permanent(format!(
            "{what} cannot {verb} {} (step {}){hint}",
            call.step.action.as_str(),
            call.step
        ))
    }
}

/// An external system, seen by the runner. One provider serves one configured target.
///
/// Forward and retirement actions go to [`Provider::apply`], undo actions to
/// [`Provider::compensate`]; both must tag what they create with `call.key` where the
/// target allows, so that [`Provider::reconcile`] can find it after a crash or a lost
/// response.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Performs a forward or retirement step.
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn apply<'a>(&'a self, call: &'a Call<'a>) -> BoxFuture<'a, Result<Applied, ProviderError>>;

    /// Undoes a forward step (`Discard`, `DiscardLost`, `Restore`, `Revert`).
    ///
    /// # Errors
    /// A classified [`ProviderError`]; the effect may or may not have happened.
    fn compensate<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>>;

    /// Inspects the target: did the step with `call.key` happen?
    ///
    /// # Errors
    /// A classified [`ProviderError`] when the target cannot be inspected now.
    fn reconcile<'a>(
        &'a self,
        call: &'a Call<'a>,
    ) -> BoxFuture<'a, Result<Reconciled, ProviderError>>;

    /// When the current version of `secret` expires (Unix ms), for stores that record it;
    /// schedules rotate ahead of it. `None`: no expiry known.
    ///
    /// # Errors
    /// [`ProviderError`] when the store cannot be asked now.
    fn expiry<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Option<i64>, ProviderError>> {
        let _ = secret;
        Box::pin(async { Ok(None) })
    }

    /// Reads a stored version's value (stores only), so values never pass through the
    /// journal: after a crash they are read back from where they were written.
    ///
    /// # Errors
    /// [`ProviderError`]; permanent for providers that hold no values.
    fn read_value<'a>(
        &'a self,
        version: &'a str,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>>;
}

/// True for the actions that go to [`Provider::compensate`].
pub fn is_compensation(action: Action) -> bool {
    matches!(
        action,
        Action::Discard | Action::DiscardLost | Action::Restore | Action::Revert
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Role;

    #[test]
    fn unsupported_steps_name_the_provider_the_action_and_the_step() {
        let target = TargetRef {
            role: Role::Store,
            name: "vault".into(),
        };
        let call = Call {
            rotation_id: "r",
            secret: "s",
            step: StepId::new(Action::Discard, 2),
            key: "k",
            target: &target,
            captured: None,
            produced: None,
            value: None,
        };
        let err =
            ProviderError::unsupported(&call, "storage keys", "undo", "; use it as a rotator");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            format!(
                "storage keys cannot undo discard (step {}); use it as a rotator",
                call.step
            )
        );
    }
}
