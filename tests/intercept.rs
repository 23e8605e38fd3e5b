//! A provider wrapped so a test can watch or change its calls (delay them, note their
//! errors, refuse one step, lose a response) without writing every role method again.
//! The wrapper plays exactly the roles of the provider it wraps.

use std::sync::Arc;

use rekey::provider::{
    Cast, Created, Dependent, Found, Reconciled, Reply, Roles, Rotator, SecretValue, Step, Store,
    Verifier,
};
use rekey::saga::{Action, Role, StepId};

/// One intercepted call: the method, and the step when it has one.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub method: &'static str,
    pub step: Option<StepId>,
}

impl Seen {
    fn of(method: &'static str, step: Step<'_>) -> Self {
        Self {
            method,
            step: Some(step.id),
        }
    }

    fn bare(method: &'static str) -> Self {
        Self { method, step: None }
    }

    /// The step's action, for a call that performs or reconciles a step.
    pub fn action(&self) -> Option<Action> {
        self.step.map(|s| s.action)
    }

    /// True for a call that performs `action` (not one that reconciles it).
    pub fn performs(&self, action: Action) -> bool {
        self.action() == Some(action) && !self.method.starts_with("reconcile")
    }
}

/// What a test does around each call.
pub trait Hook: Send + Sync + std::fmt::Debug + 'static {
    /// Runs (or replaces) `call`, the wrapped provider's answer.
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T>;

    /// Told of every credential a create made, before `around` sees the answer.
    fn created(&self, _created: &Created) {}

    /// The expiry a store reports, given the wrapped store's.
    fn expiry(&self, inner: Option<i64>) -> Option<i64> {
        inner
    }
}

impl<H: Hook> Hook for Arc<H> {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        (**self).around(seen, call)
    }

    fn created(&self, created: &Created) {
        (**self).created(created);
    }

    fn expiry(&self, inner: Option<i64>) -> Option<i64> {
        (**self).expiry(inner)
    }
}

/// A provider behind a [`Hook`].
#[derive(Debug)]
pub struct Intercepted<H> {
    inner: Roles,
    hook: H,
}

/// `inner`, in every role it plays, behind `hook`.
pub fn intercept<H: Hook>(inner: Roles, hook: H) -> Roles {
    let roles = inner.roles();
    let wrapped = Arc::new(Intercepted { inner, hook });
    Roles::new(roles.into_iter().map(|role| {
        Some(match role {
            Role::Rotator => Cast::Rotator(wrapped.clone()),
            Role::Store => Cast::Store(wrapped.clone()),
            Role::Dependent => Cast::Dependent(wrapped.clone()),
            Role::Verifier => Cast::Verifier(wrapped.clone()),
        })
    }))
}

impl<H> Intercepted<H> {
    fn rotator(&self) -> &Arc<dyn Rotator> {
        self.inner
            .rotator()
            .expect("cast only in the roles it plays")
    }
    fn store(&self) -> &Arc<dyn Store> {
        self.inner.store().expect("cast only in the roles it plays")
    }
    fn dependent(&self) -> &Arc<dyn Dependent> {
        self.inner
            .dependent()
            .expect("cast only in the roles it plays")
    }
    fn verifier(&self) -> &Arc<dyn Verifier> {
        self.inner
            .verifier()
            .expect("cast only in the roles it plays")
    }
}

impl<H: Hook> Rotator for Intercepted<H> {
    fn capture<'a>(
        &'a self,
        step: Step<'a>,
        stored: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        let call = self.rotator().capture(step, stored);
        self.hook.around(Seen::of("capture", step), call)
    }
    fn create<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, Created> {
        let call = Box::pin(async move {
            let created = self.rotator().create(step, captured).await;
            if let Ok(c) = &created {
                self.hook.created(c);
            }
            created
        });
        self.hook.around(Seen::of("create", step), call)
    }
    fn retire_old<'a>(&'a self, step: Step<'a>, captured: Option<&'a str>) -> Reply<'a, ()> {
        let call = self.rotator().retire_old(step, captured);
        self.hook.around(Seen::of("retire_old", step), call)
    }
    fn discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        let call = self.rotator().discard(step, created, old);
        self.hook.around(Seen::of("discard", step), call)
    }
    fn discard_lost<'a>(&'a self, step: Step<'a>, created: Option<&'a str>) -> Reply<'a, ()> {
        let call = self.rotator().discard_lost(step, created);
        self.hook.around(Seen::of("discard_lost", step), call)
    }
    fn reconcile_create<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Reconciled> {
        let call = self.rotator().reconcile_create(step, captured);
        self.hook.around(Seen::of("reconcile_create", step), call)
    }
    fn reconcile_retire_old<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        let call = self.rotator().reconcile_retire_old(step, captured);
        self.hook
            .around(Seen::of("reconcile_retire_old", step), call)
    }
    fn reconcile_discard<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        let call = self.rotator().reconcile_discard(step, created);
        self.hook.around(Seen::of("reconcile_discard", step), call)
    }
    fn reconcile_discard_lost<'a>(
        &'a self,
        step: Step<'a>,
        created: Option<&'a str>,
    ) -> Reply<'a, Found> {
        let call = self.rotator().reconcile_discard_lost(step, created);
        self.hook
            .around(Seen::of("reconcile_discard_lost", step), call)
    }
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.rotator().reconcile_capture(step);
        self.hook.around(Seen::of("reconcile_capture", step), call)
    }
    fn reveal<'a>(&'a self, id: &'a str) -> Reply<'a, Option<SecretValue>> {
        let call = self.rotator().reveal(id);
        self.hook.around(Seen::bare("reveal"), call)
    }
}

impl<H: Hook> Store for Intercepted<H> {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        let call = self.store().capture(step);
        self.hook.around(Seen::of("capture", step), call)
    }
    fn write<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, String> {
        let call = self.store().write(step, new);
        self.hook.around(Seen::of("write", step), call)
    }
    fn restore<'a>(
        &'a self,
        step: Step<'a>,
        old: Option<&'a SecretValue>,
        written: Option<&'a str>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Option<String>> {
        let call = self.store().restore(step, old, written, captured);
        self.hook.around(Seen::of("restore", step), call)
    }
    fn disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, ()> {
        let call = self.store().disable_superseded(step, captured);
        self.hook.around(Seen::of("disable_superseded", step), call)
    }
    fn reconcile_write<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.store().reconcile_write(step);
        self.hook.around(Seen::of("reconcile_write", step), call)
    }
    fn reconcile_restore<'a>(
        &'a self,
        step: Step<'a>,
        had_old: bool,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        let call = self.store().reconcile_restore(step, had_old, captured);
        self.hook.around(Seen::of("reconcile_restore", step), call)
    }
    fn reconcile_disable_superseded<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
    ) -> Reply<'a, Found> {
        let call = self.store().reconcile_disable_superseded(step, captured);
        self.hook
            .around(Seen::of("reconcile_disable_superseded", step), call)
    }
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.store().reconcile_capture(step);
        self.hook.around(Seen::of("reconcile_capture", step), call)
    }
    fn read_value<'a>(&'a self, version: &'a str) -> Reply<'a, SecretValue> {
        let call = self.store().read_value(version);
        self.hook.around(Seen::bare("read_value"), call)
    }
    fn expiry<'a>(&'a self, secret: &'a str) -> Reply<'a, Option<i64>> {
        let call = Box::pin(async move {
            let inner = self.store().expiry(secret).await?;
            Ok(self.hook.expiry(inner))
        });
        self.hook.around(Seen::bare("expiry"), call)
    }
}

impl<H: Hook> Dependent for Intercepted<H> {
    fn capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Option<String>> {
        let call = self.dependent().capture(step);
        self.hook.around(Seen::of("capture", step), call)
    }
    fn update<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, Option<String>> {
        let call = self.dependent().update(step, new);
        self.hook.around(Seen::of("update", step), call)
    }
    fn revert<'a>(
        &'a self,
        step: Step<'a>,
        captured: Option<&'a str>,
        old: Option<&'a SecretValue>,
    ) -> Reply<'a, Option<String>> {
        let call = self.dependent().revert(step, captured, old);
        self.hook.around(Seen::of("revert", step), call)
    }
    fn reconcile_update<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.dependent().reconcile_update(step);
        self.hook.around(Seen::of("reconcile_update", step), call)
    }
    fn reconcile_revert<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.dependent().reconcile_revert(step);
        self.hook.around(Seen::of("reconcile_revert", step), call)
    }
    fn reconcile_capture<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.dependent().reconcile_capture(step);
        self.hook.around(Seen::of("reconcile_capture", step), call)
    }
}

impl<H: Hook> Verifier for Intercepted<H> {
    fn verify<'a>(&'a self, step: Step<'a>, new: &'a SecretValue) -> Reply<'a, ()> {
        let call = self.verifier().verify(step, new);
        self.hook.around(Seen::of("verify", step), call)
    }
    fn reconcile_verify<'a>(&'a self, step: Step<'a>) -> Reply<'a, Found> {
        let call = self.verifier().reconcile_verify(step);
        self.hook.around(Seen::of("reconcile_verify", step), call)
    }
}
