//! The per-credential lock stream: at most one open rotation per underlying credential.
//! A stream `lock:<key>` records which rotation is open; optimistic appends make sure two
//! requesters can never both open one. Triggers that arrive meanwhile are journaled as
//! coalesced into the open rotation, so nothing is silently dropped.

use serde::{Deserialize, Serialize};

use crate::saga::{Phase, Plan, Trigger};

/// Stream status while a rotation is open.
pub const BUSY: &str = "busy";
/// Stream status while none is.
pub const IDLE: &str = "idle";

/// The lock stream id for a lock key.
pub fn stream_id(lock_key: &str) -> String {
    format!("lock:{lock_key}")
}

/// True for rotation streams. Rotation ids are UUIDs; every other stream rekey keeps
/// (`lock:`, `schedule:`, `eventgrid:`, `notice:`) is named `<kind>:<key>`.
pub fn is_rotation_stream(stream_id: &str) -> bool {
    !stream_id.contains(':')
}

/// True for lock streams (as opposed to rotation streams).
pub fn is_lock_stream(stream_id: &str) -> bool {
    stream_id.starts_with("lock:")
}

/// Events of a lock stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LockEvent {
    /// A rotation was opened; carries its request so the rotation stream can be created
    /// again if a crash came between the two appends.
    Opened {
        rotation_id: String,
        plan: Plan,
        trigger: Trigger,
        actor: String,
    },
    /// A trigger arrived while `into` was open; it is served by that rotation.
    Coalesced {
        into: String,
        trigger: Trigger,
        actor: String,
    },
    /// The open rotation ended.
    Closed { rotation_id: String, phase: Phase },
}

impl LockEvent {
    /// The journal event type.
    pub fn kind(&self) -> &'static str {
        match self {
            LockEvent::Opened { .. } => "RotationOpened",
            LockEvent::Coalesced { .. } => "TriggerCoalesced",
            LockEvent::Closed { .. } => "RotationClosed",
        }
    }
}

/// The open rotation after folding a lock stream: its `Opened` event, if still open.
pub fn open_rotation(events: &[LockEvent]) -> Option<&LockEvent> {
    events.iter().fold(None, |open, e| match e {
        LockEvent::Opened { .. } => Some(e),
        LockEvent::Closed { .. } => None,
        LockEvent::Coalesced { .. } => open,
    })
}

/// Whether the lock holds `rotation_id` open (its closing is then still owed).
pub fn holds_open(events: &[LockEvent], rotation_id: &str) -> bool {
    matches!(open_rotation(events),
        Some(LockEvent::Opened { rotation_id: open, .. }) if open == rotation_id)
}

/// The request of `secret` by `actor` made since the lock's `Closed` of rotation `after`
/// (since the lock began when `None`): the rotation it opened or coalesced into. A
/// request repeated by another process (a schedule fired again after a takeover) finds
/// the first one here. `None` also when `after` closed in no event here (the secret
/// changed lock keys): nothing since can be told apart.
pub fn requested_since<'e>(
    events: &'e [LockEvent],
    after: Option<&str>,
    secret: &str,
    actor: &str,
) -> Option<(&'e str, bool)> {
    let from = match after {
        None => 0,
        Some(id) => {
            events.iter().position(
                |e| matches!(e, LockEvent::Closed { rotation_id, .. } if rotation_id == id),
            )? + 1
        }
    };
    let secret_of = |id: &str| {
        events.iter().find_map(|e| match e {
            LockEvent::Opened {
                rotation_id, plan, ..
            } if rotation_id == id => Some(plan.secret.as_str()),
            _ => None,
        })
    };
    events[from..].iter().find_map(|e| match e {
        LockEvent::Opened {
            rotation_id,
            plan,
            actor: a,
            ..
        } if a == actor && plan.secret == secret => Some((rotation_id.as_str(), true)),
        LockEvent::Coalesced { into, actor: a, .. }
            if a == actor && secret_of(into) == Some(secret) =>
        {
            Some((into.as_str(), false))
        }
        _ => None,
    })
}
