//! Data-driven saga tests: a script says how each step's calls turn out; the transcript of
//! commands and final state is compared with an expected snapshot (`UPDATE_EXPECT=1`
//! rewrites the snapshots).

use std::collections::HashMap;

use expect_test::{Expect, expect};

use super::*;

const T0: i64 = 1_000_000;

fn plan() -> Plan {
    let t = TargetRef::new;
    Plan {
        secret: "payments-api".into(),
        lock_key: "payments-api".into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "probe"),
        ],
        grace_ms: 60_000,
        attempts_max: 3,
    }
}

/// How a call turns out in a script.
#[derive(Clone, Copy)]
enum Reply {
    Ok,
    Fail(ErrorClass),
    /// Reconcile finds the effect applied.
    Applied,
    /// The runner finds the new value lost before the step (only for write/update/verify).
    Lost,
}

/// Drives a rotation by `decide`, answering calls from `script` (keyed by
/// `"<step> <attempt>"` for runs and `"reconcile <step>"` for reconciliations; anything
/// unlisted succeeds or is found not applied), and renders every command.
fn transcript(script: &[(&str, Reply)]) -> String {
    // Each scripted reply is used once; later calls of the same step succeed.
    let mut script: HashMap<&str, Reply> = script.iter().copied().collect();
    let mut out = String::new();
    let requested = RotationEvent::Requested {
        rotation_id: "r1".into(),
        plan: plan(),
        trigger: Trigger::Manual,
        actor: "test".into(),
    };
    let mut state = apply(None, &requested).unwrap();
    let mut now = T0;
    let feed = |state: &mut Rotation, e: RotationEvent| {
        *state = apply(Some(state.clone()), &e).unwrap();
    };
    for _ in 0..200 {
        let cmd = decide(&state, now);
        let line = match &cmd {
            Command::Run { step, attempt, .. } => format!("run {step} attempt {attempt}"),
            Command::Reconcile { step, .. } => format!("reconcile {step}"),
            Command::WaitUntil { at_ms, reason } => format!("wait {reason:?} +{}ms", at_ms - now),
            other => format!("{other:?}"),
        };
        out.push_str(&line);
        match cmd {
            Command::Run { step, attempt, key } => {
                let reply = script
                    .remove(format!("{step} {attempt}").as_str())
                    .unwrap_or(Reply::Ok);
                if let Reply::Lost = reply {
                    out.push_str(" -> value lost");
                    feed(
                        &mut state,
                        RotationEvent::ValueLost {
                            credential_id: None,
                        },
                    );
                } else {
                    feed(
                        &mut state,
                        RotationEvent::StepStarted { step, attempt, key },
                    );
                    match reply {
                        Reply::Fail(class) => {
                            out.push_str(&format!(" -> {class:?}"));
                            let retry_at_ms =
                                (class != ErrorClass::Permanent).then_some(now + 1_000);
                            feed(
                                &mut state,
                                RotationEvent::StepFailed {
                                    step,
                                    attempt,
                                    class,
                                    message: "boom".into(),
                                    retry_at_ms,
                                },
                            );
                        }
                        _ => feed(
                            &mut state,
                            RotationEvent::StepSucceeded {
                                step,
                                id: Some(format!("id-{step}")),
                                reconciled: false,
                            },
                        ),
                    }
                }
            }
            Command::Reconcile { step, .. } => {
                let applied = matches!(
                    script.remove(format!("reconcile {step}").as_str()),
                    Some(Reply::Applied)
                );
                out.push_str(if applied {
                    " -> applied"
                } else {
                    " -> not applied"
                });
                let e = if applied {
                    RotationEvent::StepSucceeded {
                        step,
                        id: Some(format!("found-{step}")),
                        reconciled: true,
                    }
                } else {
                    RotationEvent::StepNotApplied {
                        step,
                        orphan_discarded: None,
                    }
                };
                feed(&mut state, e);
            }
            Command::WaitUntil { at_ms, .. } => now = at_ms,
            Command::StartCompensation { reason } => {
                feed(&mut state, RotationEvent::CompensationStarted { reason });
            }
            Command::ScheduleGrace { due_at_ms } => {
                feed(&mut state, RotationEvent::GraceScheduled { due_at_ms });
            }
            Command::Complete => feed(&mut state, RotationEvent::Completed),
            Command::FinishCompensation => feed(&mut state, RotationEvent::Compensated),
            Command::Done { .. } => break,
        }
        out.push('\n');
    }
    out
}

fn check(script: &[(&str, Reply)], expect: Expect) {
    expect.assert_eq(&transcript(script));
}

#[test]
fn happy_path_waits_out_grace_then_retires() {
    check(
        &[],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1
            run update#2 attempt 1
            run verify#3 attempt 1
            ScheduleGrace { due_at_ms: 1060000 }
            wait Grace +60000ms
            run disable_old#1 attempt 1
            run retire_old#0 attempt 1
            Complete
            Done { phase: Completed }"#]],
    );
}

#[test]
fn transient_failure_backs_off_reconciles_then_retries() {
    check(
        &[("write#1 1", Reply::Fail(ErrorClass::Transient))],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1 -> Transient
            wait Backoff +1000ms
            reconcile write#1 -> not applied
            run write#1 attempt 2
            run update#2 attempt 1
            run verify#3 attempt 1
            ScheduleGrace { due_at_ms: 1061000 }
            wait Grace +60000ms
            run disable_old#1 attempt 1
            run retire_old#0 attempt 1
            Complete
            Done { phase: Completed }"#]],
    );
}

#[test]
fn lost_response_is_found_by_reconcile_and_not_repeated() {
    check(
        &[
            ("write#1 1", Reply::Fail(ErrorClass::Transient)),
            ("reconcile write#1", Reply::Applied),
        ],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1 -> Transient
            wait Backoff +1000ms
            reconcile write#1 -> applied
            run update#2 attempt 1
            run verify#3 attempt 1
            ScheduleGrace { due_at_ms: 1061000 }
            wait Grace +60000ms
            run disable_old#1 attempt 1
            run retire_old#0 attempt 1
            Complete
            Done { phase: Completed }"#]],
    );
}

#[test]
fn failed_verification_compensates_newest_first() {
    check(
        &[("verify#3 1", Reply::Fail(ErrorClass::Permanent))],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1
            run update#2 attempt 1
            run verify#3 attempt 1 -> Permanent
            reconcile verify#3 -> not applied
            StartCompensation { reason: "step verify#3 failed after 1 attempt(s): boom" }
            run revert#2 attempt 1
            run restore#1 attempt 1
            run discard#0 attempt 1
            run disable_old#1 attempt 1
            FinishCompensation
            Done { phase: Compensated }"#]],
    );
}

#[test]
fn exhausted_attempts_compensate_and_undo_steps_never_give_up() {
    check(
        &[
            ("update#2 1", Reply::Fail(ErrorClass::Transient)),
            ("update#2 2", Reply::Fail(ErrorClass::RateLimited)),
            ("update#2 3", Reply::Fail(ErrorClass::Transient)),
            ("restore#1 1", Reply::Fail(ErrorClass::Permanent)),
            ("restore#1 2", Reply::Fail(ErrorClass::Transient)),
        ],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1
            run update#2 attempt 1 -> Transient
            wait Backoff +1000ms
            reconcile update#2 -> not applied
            run update#2 attempt 2 -> RateLimited
            wait Backoff +1000ms
            reconcile update#2 -> not applied
            run update#2 attempt 3 -> Transient
            wait Backoff +1000ms
            reconcile update#2 -> not applied
            StartCompensation { reason: "step update#2 failed after 3 attempt(s): boom" }
            run revert#2 attempt 1
            run restore#1 attempt 1 -> Permanent
            reconcile restore#1 -> not applied
            run restore#1 attempt 2 -> Transient
            wait Backoff +1000ms
            reconcile restore#1 -> not applied
            run restore#1 attempt 3
            run discard#0 attempt 1
            run disable_old#1 attempt 1
            FinishCompensation
            Done { phase: Compensated }"#]],
    );
}

#[test]
fn lost_value_discards_the_credential_and_creates_a_new_generation() {
    check(
        &[("write#1 1", Reply::Lost)],
        expect![[r#"
            run capture#1 attempt 1
            run capture#2 attempt 1
            run capture#0 attempt 1
            run create#0 attempt 1
            run write#1 attempt 1 -> value lost
            run discard_lost#0 attempt 1
            run create#0/g1 attempt 1
            run write#1 attempt 1
            run update#2 attempt 1
            run verify#3 attempt 1
            ScheduleGrace { due_at_ms: 1060000 }
            wait Grace +60000ms
            run disable_old#1 attempt 1
            run retire_old#0 attempt 1
            Complete
            Done { phase: Completed }"#]],
    );
}

fn requested() -> RotationEvent {
    RotationEvent::Requested {
        rotation_id: "r1".into(),
        plan: plan(),
        trigger: Trigger::Schedule,
        actor: "test".into(),
    }
}

#[test]
fn events_that_do_not_fit_are_typed_errors() {
    // Target 1 is the store, whose capture comes first.
    let started = |action, attempt| RotationEvent::StepStarted {
        step: StepId::new(action, 1),
        attempt,
        key: "k".into(),
    };
    let cases: Vec<(Vec<RotationEvent>, &str)> = vec![
        (
            vec![started(Action::Capture, 1)],
            "does not begin with Requested",
        ),
        (vec![requested(), requested()], "the rotation exists"),
        (
            vec![requested(), started(Action::Create, 1)],
            "is not the active step",
        ),
        (
            vec![requested(), started(Action::Capture, 2)],
            "attempt 2 after 0",
        ),
        (
            vec![requested(), RotationEvent::Completed],
            "retirement is not done",
        ),
        (
            vec![requested(), RotationEvent::GraceScheduled { due_at_ms: 1 }],
            "forward steps are not all done",
        ),
        (
            vec![
                requested(),
                RotationEvent::ValueLost {
                    credential_id: None,
                },
            ],
            "no created credential to lose",
        ),
    ];
    for (events, want) in cases {
        let err = fold(&events).expect_err(want);
        assert!(err.to_string().contains(want), "{err} should say {want:?}");
    }
}

#[test]
fn nothing_follows_a_terminal_event() {
    let mut state = apply(None, &requested()).unwrap();
    state.phase = Phase::Compensated;
    let err = apply(Some(state), &RotationEvent::Completed).unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
}

#[test]
fn grace_is_never_cut_short() {
    let mut state = apply(None, &requested()).unwrap();
    state.phase = Phase::Grace;
    state.grace_due_ms = Some(T0);
    for now in [T0 - 60_000, T0 - 1] {
        assert_eq!(
            decide(&state, now),
            Command::WaitUntil {
                at_ms: T0,
                reason: Wait::Grace
            }
        );
    }
    assert!(
        matches!(decide(&state, T0), Command::Run { step, .. } if step.action == Action::DisableOld)
    );
}

#[test]
fn events_round_trip_through_json() {
    let events = vec![
        requested(),
        RotationEvent::StepFailed {
            step: StepId::new(Action::Write, 1),
            attempt: 2,
            class: ErrorClass::RateLimited,
            message: "throttled".into(),
            retry_at_ms: Some(5),
        },
        RotationEvent::Completed,
    ];
    for e in events {
        let text = serde_json::to_string(&e).unwrap();
        let back: RotationEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert!(
            text.contains(&format!("\"type\":\"{}\"", e.kind())),
            "{text}"
        );
    }
}
