//! `policy check --online`: read-only probes of every target a rotation would touch, so an
//! operator learns of a missing permission before a rotation meets it. A probe acquires
//! its credential's token and reads what the rotation would read first (a vault's version
//! list, a site's settings, an application, a storage account's keys, a database's roles);
//! it writes nothing, anywhere, and never reveals a value. Each provider implements
//! [`Probe`] in its own module; this module owns the trait and the run over a config's
//! secrets. It knows nothing of the journal.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::provider::{BoxFuture, ProviderError};
use crate::saga::{Plan, Role};

/// Probes run at once: enough to hide round trips, few enough not to be throttled.
pub const PROBES_PARALLEL_MAX: usize = 8;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probed {
    /// The target is ready for a rotation, as far as reading can tell.
    pub ok: bool,
    /// What was checked, or what is missing and what to grant; never a secret value.
    pub detail: String,
}

impl Probed {
    /// The target passed: `detail` says what was checked.
    pub fn passed(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// The target would fail a rotation: `detail` says why and what to do.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

impl From<Result<String, ProviderError>> for Probed {
    fn from(result: Result<String, ProviderError>) -> Self {
        match result {
            Ok(detail) => Self::passed(detail),
            Err(e) => Self::failed(e.message),
        }
    }
}

/// A read-only check of one configured provider.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// Checks, changing nothing, that a rotation of `secret` could go through this target
    /// in `role`: credentials, permissions, names.
    fn probe<'a>(&'a self, secret: &'a str, role: Role) -> BoxFuture<'a, Probed>;
}

/// One target of one secret, probed.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub secret: String,
    /// `rotator`, `store`, `dependent` or `verifier`.
    pub role: String,
    /// The provider's name in the config.
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

/// Probes every target of every plan in `plans`, at most [`PROBES_PARALLEL_MAX`] at a
/// time, and reports them in plan order. A target whose provider has no probe (a config
/// and its probes built apart) is reported as failed.
pub async fn probe_all(
    plans: &[&Plan],
    probes: &HashMap<String, Arc<dyn Probe>>,
) -> Vec<TargetReport> {
    let targets = plans.iter().flat_map(|plan| {
        plan.targets
            .iter()
            .map(move |t| (plan.secret.as_str(), t.role, t.name.as_str()))
    });
    futures::stream::iter(targets)
        .map(|(secret, role, name)| async move {
            let probed = match probes.get(name) {
                Some(probe) => probe.probe(secret, role).await,
                None => Probed::failed(format!("no provider named {name} was built")),
            };
            TargetReport {
                secret: secret.to_owned(),
                role: format!("{role:?}").to_lowercase(),
                target: name.to_owned(),
                ok: probed.ok,
                detail: probed.detail,
            }
        })
        .buffered(PROBES_PARALLEL_MAX)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::TargetRef;

    /// Passes for `good`, fails otherwise, and says which secret and role it was asked.
    #[derive(Debug)]
    struct Fixed {
        good: bool,
    }

    impl Probe for Fixed {
        fn probe<'a>(&'a self, secret: &'a str, role: Role) -> BoxFuture<'a, Probed> {
            let detail = format!("{secret} as {role:?}");
            Box::pin(async move {
                if self.good {
                    Probed::passed(detail)
                } else {
                    Probed::failed(detail)
                }
            })
        }
    }

    #[tokio::test]
    async fn every_target_of_every_plan_is_reported_in_order() {
        let target = TargetRef::new;
        let plan = Plan {
            secret: "api".into(),
            lock_key: "api".into(),
            targets: vec![
                target(Role::Rotator, "random"),
                target(Role::Store, "vault"),
                target(Role::Verifier, "vault"),
                target(Role::Dependent, "gone"),
            ],
            grace_ms: 0,
            attempts_max: 1,
        };
        let mut probes: HashMap<String, Arc<dyn Probe>> = HashMap::new();
        probes.insert("random".into(), Arc::new(Fixed { good: true }));
        probes.insert("vault".into(), Arc::new(Fixed { good: false }));
        let rows: Vec<(String, String, bool, String)> = probe_all(&[&plan], &probes)
            .await
            .into_iter()
            .map(|r| (r.role, r.target, r.ok, r.detail))
            .collect();
        let row = |role: &str, target: &str, ok, detail: &str| {
            (role.into(), target.into(), ok, detail.into())
        };
        assert_eq!(
            rows,
            [
                row("rotator", "random", true, "api as Rotator"),
                row("store", "vault", false, "api as Store"),
                row("verifier", "vault", false, "api as Verifier"),
                row(
                    "dependent",
                    "gone",
                    false,
                    "no provider named gone was built"
                ),
            ]
        );
    }
}
