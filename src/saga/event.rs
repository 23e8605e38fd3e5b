//! The rotation's vocabulary: its plan, its steps, and the events that record them.
//! Events carry ids, tags, times and error classes only: never a secret value.

use serde::{Deserialize, Serialize};

use super::address::Address;

/// What a target does in a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Makes the new credential at its source and retires the old one.
    Rotator,
    /// Holds the secret (a vault entry): written, restored, old versions disabled.
    Store,
    /// Consumes the secret (an app setting, a file): updated and reverted.
    Dependent,
    /// Proves the new credential works; changes nothing.
    Verifier,
}

impl Role {
    /// The role's name as the config and messages write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Rotator => "rotator",
            Role::Store => "store",
            Role::Dependent => "dependent",
            Role::Verifier => "verifier",
        }
    }
}

/// One target of a rotation: its role, its provider's name in the config when the
/// rotation was requested, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub role: Role,
    pub name: String,
    /// What and where the target is, and what reaches it. `None` in journals written
    /// before targets carried addresses (the name is then resolved through the config),
    /// and for providers found by name alone (tests, simulations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

impl TargetRef {
    /// The provider `name` in `role`, found by its name.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            role,
            name: name.into(),
            address: None,
        }
    }

    /// The provider `name` in `role`, at `address`.
    pub fn at(role: Role, name: impl Into<String>, address: Address) -> Self {
        Self {
            address: Some(address),
            ..Self::new(role, name)
        }
    }

    /// The secret's name at this target: its address's item (a vault's secret name), or
    /// else the plan's secret.
    pub fn secret<'a>(&'a self, plan_secret: &'a str) -> &'a str {
        self.address
            .as_ref()
            .and_then(Address::item)
            .unwrap_or(plan_secret)
    }
}

/// Everything a rotation needs to know, fixed when it is requested so that replay never
/// depends on a config file that may have changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The secret's name in the config.
    pub secret: String,
    /// The underlying credential; two secrets sharing one credential share this key, and
    /// only one rotation per key may be open.
    pub lock_key: String,
    /// Exactly one rotator, one or more stores, any dependents, one or more verifiers.
    pub targets: Vec<TargetRef>,
    /// How long the old credential stays valid after verification.
    pub grace_ms: i64,
    /// Attempts a forward step gets before the rotation compensates.
    pub attempts_max: u32,
}

/// What a step does to its target. Forward actions first, then retirement, then undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read the target's current version or credential id (no effect).
    Capture,
    /// Rotator: make the new credential.
    Create,
    /// Store: write the new value as a new version, tagged with the rotation.
    Write,
    /// Dependent: set the new value (only our setting).
    Update,
    /// Verifier: prove the new credential works (no effect).
    Verify,
    /// Rotator, after the grace period: retire the old credential.
    RetireOld,
    /// Store, after the grace period: disable the old version.
    DisableOld,
    /// Undo of `Create`: retire the new credential.
    Discard,
    /// Undo of `Write`: write the old value back as a new version.
    Restore,
    /// Undo of `Update`: set the old value back.
    Revert,
    /// Retire a new credential whose value was lost in a crash before any store held it.
    DiscardLost,
}

impl Action {
    /// Whether the action only reads its target (capture, verify): running it again
    /// repeats no effect, so its start need not be durable before its call.
    pub fn only_reads(self) -> bool {
        matches!(self, Action::Capture | Action::Verify)
    }

    /// The compensation of a forward action, if it changed anything.
    pub fn undo(self) -> Option<Action> {
        match self {
            Action::Create => Some(Action::Discard),
            Action::Write => Some(Action::Restore),
            Action::Update => Some(Action::Revert),
            _ => None,
        }
    }

    /// Whether the undo puts the target back to what was captured, and so is harmless
    /// when the forward step never landed. Such a step is undone whenever it was started:
    /// a dependent cannot always tell whether an update whose response was lost landed.
    pub fn undo_sets_captured_state(self) -> bool {
        self == Action::Update
    }

    /// Forward steps may give up (and the rotation compensates); retirement and undo
    /// steps never give up, because nothing may be left half-done.
    pub fn may_abandon(self) -> bool {
        matches!(
            self,
            Action::Capture | Action::Create | Action::Write | Action::Update | Action::Verify
        )
    }

    /// The action's name as written in keys and timelines.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Capture => "capture",
            Action::Create => "create",
            Action::Write => "write",
            Action::Update => "update",
            Action::Verify => "verify",
            Action::RetireOld => "retire_old",
            Action::DisableOld => "disable_old",
            Action::Discard => "discard",
            Action::Restore => "restore",
            Action::Revert => "revert",
            Action::DiscardLost => "discard_lost",
        }
    }
}

/// One step: an action on one target. `generation` counts credential re-creations after a
/// lost value, so each generation's create has its own idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepId {
    pub action: Action,
    /// Index into [`Plan::targets`].
    pub target: u16,
    #[serde(default)]
    pub generation: u32,
}

impl StepId {
    /// A step of generation 0.
    pub fn new(action: Action, target: u16) -> Self {
        Self {
            action,
            target,
            generation: 0,
        }
    }

    /// The idempotency key a provider tags this step's effect with. The same for every
    /// attempt, so reconciling finds an effect made by any earlier attempt.
    pub fn key(&self, rotation_id: &str) -> String {
        format!(
            "{rotation_id}:{}:{}:{}",
            self.action.as_str(),
            self.target,
            self.generation
        )
    }
}

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.action.as_str(), self.target)?;
        if self.generation > 0 {
            write!(f, "/g{}", self.generation)?;
        }
        Ok(())
    }
}

/// How a provider call failed; decides whether and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Network trouble, 5xx, timeouts: retry with backoff.
    Transient,
    /// 429 / 503 with `Retry-After`: retry no sooner than asked.
    RateLimited,
    /// 400/401/403/404 and verification failures: retrying the same call will not help.
    Permanent,
}

/// Why a rotation was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    NearExpiry,
    Bulk,
}

/// Every event of a rotation stream. The journal's event type is the variant name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RotationEvent {
    /// The rotation exists; its plan is fixed from here on.
    Requested {
        rotation_id: String,
        plan: Plan,
        trigger: Trigger,
        actor: String,
    },
    /// Written and made durable before the provider is called, when the step changes
    /// something; a step that only reads may be journaled with the next commit.
    StepStarted {
        step: StepId,
        attempt: u32,
        key: String,
    },
    /// The effect happened; `id` is what it produced or found (a version, a key id).
    StepSucceeded {
        step: StepId,
        id: Option<String>,
        /// True when the outcome was found by reconciling, not from a response.
        reconciled: bool,
    },
    /// The call failed; whether the effect happened is still unknown until reconciled.
    StepFailed {
        step: StepId,
        attempt: u32,
        class: ErrorClass,
        /// A description of the failure, free of secret values.
        message: String,
        /// Not before this time will the step be reconciled and retried.
        retry_at_ms: Option<i64>,
    },
    /// Reconciliation found the effect did not happen (an unusable orphan, if any, was
    /// removed first), so the step may run again.
    StepNotApplied {
        step: StepId,
        orphan_discarded: Option<String>,
    },
    /// The new credential's value was lost in a crash before any store held it.
    ValueLost { credential_id: Option<String> },
    /// A forward step gave up: undo every applied step, newest first.
    CompensationStarted { reason: String },
    /// Every forward step succeeded; the old credential stays valid until `due_at_ms`.
    GraceScheduled { due_at_ms: i64 },
    /// Terminal: new credential in place, old one retired.
    Completed,
    /// Terminal: every applied step undone.
    Compensated,
}

impl RotationEvent {
    /// The journal event type.
    pub fn kind(&self) -> &'static str {
        match self {
            RotationEvent::Requested { .. } => "Requested",
            RotationEvent::StepStarted { .. } => "StepStarted",
            RotationEvent::StepSucceeded { .. } => "StepSucceeded",
            RotationEvent::StepFailed { .. } => "StepFailed",
            RotationEvent::StepNotApplied { .. } => "StepNotApplied",
            RotationEvent::ValueLost { .. } => "ValueLost",
            RotationEvent::CompensationStarted { .. } => "CompensationStarted",
            RotationEvent::GraceScheduled { .. } => "GraceScheduled",
            RotationEvent::Completed => "Completed",
            RotationEvent::Compensated => "Compensated",
        }
    }
}
