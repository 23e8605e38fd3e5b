//! Events in words: one line per event for `journal show` and `demo`, and the
//! descriptions and times the HTML report shows. Ids, names, times and error texts only:
//! events hold no secret value.

use rekey_journal::Event;

/// One event as a human-readable line: sequence, time, type, and what it says.
pub fn timeline_line(e: &Event) -> String {
    format!(
        "{:>4}  {}  {:<20} {}",
        e.stream_seq,
        format_ms(e.recorded_at_ms),
        e.kind,
        describe(e)
    )
}

/// What an event says, in words for rotation and lock events, raw JSON otherwise.
pub fn describe(e: &Event) -> String {
    use crate::runner::lock::LockEvent;
    use crate::saga::RotationEvent as R;
    let id = |id: &Option<String>| id.as_deref().map_or(String::new(), |i| format!(" -> {i}"));
    if let Ok(r) = R::from_journal(&e.kind, &e.payload) {
        return match r {
            R::Requested {
                plan,
                trigger,
                actor,
                ..
            } => {
                let targets: Vec<String> = plan
                    .targets
                    .iter()
                    .map(|t| format!("{:?} {}", t.role, t.name).to_lowercase())
                    .collect();
                format!(
                    "{} by {actor} ({trigger:?}); {}; grace {} s",
                    plan.secret,
                    targets.join(", "),
                    plan.grace_ms / 1000
                )
            }
            R::StepStarted { step, attempt, .. } => format!("{step} attempt {attempt}"),
            R::StepSucceeded {
                step,
                id: i,
                reconciled,
            } => format!(
                "{step}{}{}",
                id(&i),
                if reconciled {
                    " (found by reconciling)"
                } else {
                    ""
                }
            ),
            R::StepFailed {
                step,
                attempt,
                class,
                message,
                retry_at_ms,
            } => format!(
                "{step} attempt {attempt}: {class:?}: {message}{}",
                retry_at_ms.map_or(String::new(), |t| format!("; retry at {}", format_ms(t)))
            ),
            R::StepNotApplied {
                step,
                orphan_discarded,
            } => format!(
                "{step} did not happen{}",
                orphan_discarded.map_or(String::new(), |o| format!(" (orphan {o} removed)"))
            ),
            R::ValueLost { credential_id } => format!(
                "new value lost in a crash before any store held it{}",
                id(&credential_id)
            ),
            R::CompensationStarted { reason } => reason,
            R::GraceScheduled { due_at_ms } => {
                format!("old credential retired at {}", format_ms(due_at_ms))
            }
            R::Completed | R::Compensated => String::new(),
        };
    }
    if let Ok(l) = serde_json::from_str::<LockEvent>(&e.payload) {
        return match l {
            LockEvent::Opened { rotation_id, .. } => format!("rotation {rotation_id} opened"),
            LockEvent::Coalesced {
                into,
                trigger,
                actor,
            } => {
                format!("{trigger:?} trigger by {actor} joined open rotation {into}")
            }
            LockEvent::Closed { rotation_id, phase } => {
                format!("rotation {rotation_id} ended {phase:?}")
            }
        };
    }
    e.payload.clone()
}

/// Unix milliseconds as an RFC 3339 UTC timestamp.
pub fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| format!("{ms}ms"),
        |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}
