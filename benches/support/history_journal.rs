//! A journal of many ended rotations, as `rekey history` and the console's History page
//! read them: half fleet-shaped (an Entra application's password and two Key Vault
//! copies), half hand-configured, each with its lock stream beside it, requested a
//! minute apart from [`T0`]; every fifth fails verification and compensates. Shared by
//! the history bench and the console's figures.

use rekey::journal::{Append, JournalAppend, ManualClock, NewEvent, SqliteJournal};
use rekey::saga::{
    Action, Address, Command, ErrorClass, Plan, Role, RotationEvent, TargetRef, Trigger, apply,
    decide,
};

/// The first rotation's request time (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600_000;
pub const MINUTE: i64 = 60_000;

pub fn plan(i: i64) -> Plan {
    // Addresses from their journal form: optional fields added later change nothing here.
    let kv = |vault: &str| -> Address {
        serde_json::from_value(serde_json::json!({
            "kind": "key_vault",
            "vault_url": format!("https://{vault}.vault.azure.net"),
            "secret": format!("app-{i}-secret"),
            "credential": "azure",
            "verify_challenge_resource": true,
        }))
        .unwrap()
    };
    let targets = if i % 2 == 0 {
        vec![
            TargetRef::at(
                Role::Rotator,
                "entra",
                serde_json::from_value(serde_json::json!({
                    "kind": "entra_password",
                    "credential": "azure",
                    "tenant": format!("tenant-{}", i % 7),
                    "object_id": format!("obj-{i}"),
                    "app_id": format!("{i:08}-app"),
                    "validity_days": 180,
                    "verify_scope": "https://graph.microsoft.com/.default",
                    "propagation": "30s",
                }))
                .unwrap(),
            ),
            TargetRef::at(Role::Store, "kv1", kv("kv1")),
            TargetRef::at(Role::Store, "kv2", kv("kv2")),
            TargetRef::new(Role::Verifier, "entra"),
        ]
    } else {
        vec![
            TargetRef::new(Role::Rotator, "random"),
            TargetRef::at(Role::Store, "vault", kv("kv1")),
            TargetRef::new(Role::Dependent, "app"),
            TargetRef::new(Role::Verifier, "check"),
        ]
    };
    Plan {
        secret: format!("secret-{i}"),
        lock_key: format!("key-{i}"),
        targets,
        grace_ms: 0,
        attempts_max: 1,
    }
}

/// Rotation `i`'s events, driven by the saga; every fifth fails verification and
/// compensates.
pub fn events(id: &str, i: i64) -> Vec<RotationEvent> {
    let mut events = vec![RotationEvent::Requested {
        rotation_id: id.into(),
        plan: plan(i),
        trigger: if i % 2 == 0 {
            Trigger::Bulk
        } else {
            Trigger::Schedule
        },
        actor: "bench".into(),
    }];
    let mut state = apply(None, &events[0]).unwrap();
    let mut now = 0;
    loop {
        let next = match decide(&state, now) {
            Command::Run { step, attempt, key } => {
                let started = RotationEvent::StepStarted { step, attempt, key };
                state = apply(Some(state), &started).unwrap();
                events.push(started);
                if i % 5 == 0 && step.action == Action::Verify {
                    RotationEvent::StepFailed {
                        step,
                        attempt,
                        class: ErrorClass::Permanent,
                        message: "401 invalid_client".into(),
                        retry_at_ms: None,
                    }
                } else {
                    RotationEvent::StepSucceeded {
                        step,
                        id: Some(format!("v-{step}")),
                        reconciled: false,
                    }
                }
            }
            Command::Reconcile { step, .. } => RotationEvent::StepNotApplied {
                step,
                orphan_discarded: None,
            },
            Command::WaitUntil { at_ms, .. } => {
                now = at_ms;
                continue;
            }
            Command::StartCompensation { reason } => RotationEvent::CompensationStarted { reason },
            Command::ScheduleGrace { due_at_ms } => RotationEvent::GraceScheduled { due_at_ms },
            Command::Complete => RotationEvent::Completed,
            Command::FinishCompensation => RotationEvent::Compensated,
            Command::Done { .. } => return events,
        };
        state = apply(Some(state), &next).unwrap();
        events.push(next);
    }
}

/// Appends `rotations` ended rotations to `journal`, moving `clock` a minute each.
pub async fn write(journal: &SqliteJournal, clock: &ManualClock, rotations: i64) {
    for i in 0..rotations {
        clock.set(T0 + i * MINUTE);
        let id = format!("0190{i:08}-0000-7000-8000-000000000000");
        let rotation = events(&id, i);
        let status = match rotation.last() {
            Some(RotationEvent::Completed) => "completed",
            _ => "compensated",
        };
        let new = rotation
            .iter()
            .map(|e| NewEvent::new(e.kind(), serde_json::to_value(e).unwrap()))
            .collect();
        let lock = Append::new(
            format!("lock:key-{i}"),
            0,
            vec![NewEvent::new(
                "RotationOpened",
                serde_json::json!({ "rotation_id": id }),
            )],
        )
        .status("idle");
        journal.append(lock).await.unwrap();
        let append = Append::new(&id, 0, new)
            .subject(format!("secret-{i}"))
            .status(status);
        journal.append(append).await.unwrap();
    }
}
