//! Rows folded from scripted rotations: hand-configured and fleet-shaped, completed,
//! compensated, open and failing; and the filters over them.

use rekey_journal::Digest32;

use super::*;
use crate::runner::lock;
use crate::saga::{Command, Plan, TargetRef, decide};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DAY: i64 = 86_400_000;

/// Built from its journal form, so optional fields added to addresses later change nothing
/// here.
fn kv(vault: &str, secret: &str) -> Address {
    serde_json::from_value(serde_json::json!({
        "kind": "key_vault",
        "vault_url": format!("https://{vault}.vault.azure.net"),
        "secret": secret,
        "credential": "azure",
        "verify_challenge_resource": true,
    }))
    .unwrap()
}

/// A fleet-shaped plan: an Entra application's password, two vault copies, a verifier.
fn fleet_plan(app_id: &str, tenant: &str) -> Plan {
    Plan {
        secret: format!("app-{app_id}"),
        lock_key: format!("entra:{app_id}:key-1"),
        targets: vec![
            TargetRef::at(
                Role::Rotator,
                "entra",
                serde_json::from_value(serde_json::json!({
                    "kind": "entra_password",
                    "credential": "azure",
                    "tenant": tenant,
                    "object_id": format!("obj-{app_id}"),
                    "app_id": app_id,
                    "validity_days": 90,
                    "verify_scope": "https://graph.microsoft.com/.default",
                    "propagation": "30s",
                }))
                .unwrap(),
            ),
            TargetRef::at(Role::Store, "kv1", kv("kv1", "orders-client-secret")),
            TargetRef::at(Role::Store, "kv2", kv("kv2", "orders-secret")),
            TargetRef::new(Role::Verifier, "entra"),
        ],
        grace_ms: DAY,
        attempts_max: 2,
    }
}

/// A hand-configured plan: random value, a local vault, an env file, a command verifier.
fn local_plan(secret: &str) -> Plan {
    Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            TargetRef::new(Role::Rotator, "random"),
            TargetRef::at(
                Role::Store,
                "vault",
                Address::LocalVault {
                    path: "/var/lib/rekey/vault.json".into(),
                    secret: secret.into(),
                    key_file: None,
                    key_env: None,
                    follow_symlinks: false,
                },
            ),
            TargetRef::new(Role::Dependent, "app-env"),
            TargetRef::new(Role::Verifier, "check"),
        ],
        grace_ms: 60_000,
        attempts_max: 2,
    }
}

/// How a scripted rotation goes.
#[derive(Clone, Copy)]
struct Script {
    /// Every attempt of this action fails permanently.
    fail: Option<Action>,
    /// Stop after this many events (the rotation stays open).
    stop_after: Option<usize>,
}

const RUNS_THROUGH: Script = Script {
    fail: None,
    stop_after: None,
};

/// The events of rotation `id`, driven by `decide`, each a second after the last,
/// starting at `start_ms`, as the journal would hold them.
fn journaled(
    id: &str,
    plan: Plan,
    trigger: Trigger,
    actor: &str,
    start_ms: i64,
    script: Script,
) -> Vec<Event> {
    let mut events = vec![RotationEvent::Requested {
        rotation_id: id.into(),
        plan,
        trigger,
        actor: actor.into(),
    }];
    let mut state = apply(None, &events[0]).unwrap();
    let mut now = start_ms;
    let mut push = |state: &mut crate::saga::Rotation, e: RotationEvent| {
        *state = apply(Some(state.clone()), &e).unwrap();
        events.push(e);
    };
    for _ in 0..200 {
        match decide(&state, now) {
            Command::Run { step, attempt, key } => {
                push(
                    &mut state,
                    RotationEvent::StepStarted { step, attempt, key },
                );
                if script.fail == Some(step.action) {
                    push(
                        &mut state,
                        RotationEvent::StepFailed {
                            step,
                            attempt,
                            class: ErrorClass::Permanent,
                            message: format!(
                                "403 Forbidden on attempt {attempt}: {}",
                                "x".repeat(300)
                            ),
                            retry_at_ms: Some(now + 1_000),
                        },
                    );
                } else {
                    push(
                        &mut state,
                        RotationEvent::StepSucceeded {
                            step,
                            id: Some(format!("id-{step}")),
                            reconciled: false,
                        },
                    );
                }
            }
            Command::Reconcile { step, .. } => push(
                &mut state,
                RotationEvent::StepNotApplied {
                    step,
                    orphan_discarded: None,
                },
            ),
            Command::WaitUntil { at_ms, .. } => now = at_ms,
            Command::StartCompensation { reason } => {
                push(&mut state, RotationEvent::CompensationStarted { reason });
            }
            Command::ScheduleGrace { due_at_ms } => {
                push(&mut state, RotationEvent::GraceScheduled { due_at_ms });
            }
            Command::Complete => push(&mut state, RotationEvent::Completed),
            Command::FinishCompensation => push(&mut state, RotationEvent::Compensated),
            Command::Done { .. } => break,
        }
    }
    if let Some(n) = script.stop_after {
        events.truncate(n);
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            global_seq: i as u64 + 1,
            stream_id: id.into(),
            stream_seq: i as u64 + 1,
            kind: e.kind().into(),
            schema_version: 1,
            recorded_at_ms: start_ms + i as i64 * 1_000,
            payload: serde_json::to_string(e).unwrap(),
            prev_hash: Digest32::GENESIS,
            hash: Digest32::GENESIS,
        })
        .collect()
}

#[test]
fn a_completed_fleet_rotation_names_its_app_items_and_new_expiry() {
    let events = journaled(
        "r-fleet",
        fleet_plan("11111111-aaaa", "contoso.onmicrosoft.com"),
        Trigger::Bulk,
        "fleet:run-1",
        T0,
        RUNS_THROUGH,
    );
    let row = fold_row("r-fleet", &events).unwrap();
    assert_eq!(row.outcome, Outcome::Completed);
    assert_eq!(row.phase, Phase::Completed);
    assert_eq!(row.secret, "app-11111111-aaaa");
    assert_eq!(row.app_id.as_deref(), Some("11111111-aaaa"));
    assert_eq!(row.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
    assert_eq!((row.trigger, row.actor.as_str()), ("bulk", "fleet:run-1"));
    assert_eq!(row.requested_at_ms, T0);
    assert_eq!(
        row.finished_at_ms,
        Some(events.last().unwrap().recorded_at_ms)
    );
    let items: Vec<(&str, bool)> = row
        .items_updated
        .iter()
        .map(|i| (i.address.as_str(), i.undone))
        .collect();
    assert_eq!(
        items,
        [
            (
                "key_vault https://kv1.vault.azure.net secret orders-client-secret",
                false
            ),
            (
                "key_vault https://kv2.vault.azure.net secret orders-secret",
                false
            ),
        ]
    );
    // Counted from when the create step started: the create is the ninth event
    // (Requested, three captures of two events each, then StepStarted of create#0).
    let create_started = events
        .iter()
        .find(|e| e.kind == "StepStarted" && e.payload.contains("\"create\""))
        .unwrap()
        .recorded_at_ms;
    assert_eq!(row.new_expiry_ms, Some(create_started + 90 * DAY));
    assert_eq!(row.last_error, None);
}

#[test]
fn a_compensated_rotation_has_its_items_undone_its_error_and_no_new_expiry() {
    let events = journaled(
        "r-comp",
        fleet_plan("22222222-bbbb", "fabrikam"),
        Trigger::Manual,
        "api",
        T0,
        Script {
            fail: Some(Action::Verify),
            stop_after: None,
        },
    );
    let row = fold_row("r-comp", &events).unwrap();
    assert_eq!(row.outcome, Outcome::Compensated);
    assert!(row.finished_at_ms.is_some());
    assert_eq!(row.items_updated.len(), 2);
    assert!(row.items_updated.iter().all(|i| i.undone), "{row:?}");
    assert_eq!(row.new_expiry_ms, None, "the new credential was discarded");
    let error = row.last_error.unwrap();
    assert_eq!(error.step, "verify#3");
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(
        error.message.starts_with("403 Forbidden on attempt 1: xxx"),
        "{error:?}"
    );
    assert_eq!(error.message.chars().count(), ERROR_CHARS_MAX);
    assert!(error.message.ends_with('…'));
}

/// A timeline is the row plus each step in the order first started, with its attempts,
/// failures, outcome and duration, folded in the same pass as the row.
#[test]
fn a_timeline_lists_each_step_with_attempts_errors_outcome_and_duration() {
    let events = journaled(
        "r-steps",
        fleet_plan("33333333-cccc", "fabrikam"),
        Trigger::Manual,
        "api",
        T0,
        Script {
            fail: Some(Action::Verify),
            stop_after: None,
        },
    );
    let timeline = fold_timeline("r-steps", &events).unwrap();
    assert_eq!(timeline.row, fold_row("r-steps", &events).unwrap());
    let steps: Vec<String> = timeline.steps.iter().map(|s| s.step.to_string()).collect();
    assert_eq!(
        steps,
        [
            "capture#1",
            "capture#2",
            "capture#0",
            "create#0",
            "write#1",
            "write#2",
            "verify#3",
            "restore#2",
            "restore#1",
            "discard#0",
            "disable_old#2",
            "disable_old#1",
        ]
    );
    let verify = &timeline.steps[6];
    assert_eq!(
        (verify.role, verify.target.as_str()),
        (Role::Verifier, "entra")
    );
    assert_eq!(verify.attempts, 1, "a permanent failure is not tried again");
    assert_eq!(verify.errors.len(), 1);
    assert_eq!(verify.errors[0].attempt, 1);
    assert_eq!(verify.errors[0].class, ErrorClass::Permanent);
    assert!(
        verify.errors[0]
            .message
            .starts_with("403 Forbidden on attempt 1")
    );
    assert!(matches!(verify.status, StepStatus::Abandoned { .. }));
    assert!(!verify.is_undo() && timeline.steps[7].is_undo());
    // Events are a second apart: started, failed, found not applied (so abandoned).
    assert_eq!(verify.duration_ms(), Some(2_000));
    let write = &timeline.steps[4];
    assert_eq!((write.attempts, write.duration_ms()), (1, Some(1_000)));
    assert!(matches!(write.status, StepStatus::Succeeded { .. }) && write.errors.is_empty());
    assert_eq!(timeline.grace_due_ms, None);
    assert!(
        timeline
            .compensation_reason
            .as_deref()
            .is_some_and(|r| r.contains("verify#3")),
        "{timeline:?}"
    );

    let completed = journaled(
        "r-done",
        local_plan("api"),
        Trigger::Schedule,
        "schedule",
        T0,
        RUNS_THROUGH,
    );
    let timeline = fold_timeline("r-done", &completed).unwrap();
    assert!(timeline.grace_due_ms.is_some());
    assert_eq!(
        timeline.steps.last().map(|s| s.step.to_string()).as_deref(),
        Some("retire_old#0")
    );
    // An open rotation's running step has no duration yet.
    let open = fold_timeline("r-done", &completed[..4]).unwrap();
    let running = open.steps.last().unwrap();
    assert!(matches!(running.status, StepStatus::InDoubt { .. }));
    assert_eq!(running.duration_ms(), None);
}

#[test]
fn hand_configured_rotations_have_no_app_and_show_open_and_failing_states() {
    let done = journaled(
        "r-local",
        local_plan("payments-api"),
        Trigger::Schedule,
        "schedule",
        T0,
        RUNS_THROUGH,
    );
    let row = fold_row("r-local", &done).unwrap();
    assert_eq!((row.app_id, row.tenant), (None, None));
    assert_eq!(row.new_expiry_ms, None);
    let items: Vec<(Role, &str)> = row
        .items_updated
        .iter()
        .map(|i| (i.role, i.address.as_str()))
        .collect();
    assert_eq!(
        items,
        [
            (
                Role::Store,
                "local_vault /var/lib/rekey/vault.json secret payments-api"
            ),
            // Journaled without an address: its provider's name.
            (Role::Dependent, "app-env"),
        ]
    );

    // Stopped after the write: open, forward, nothing failed.
    let open = journaled(
        "r-open",
        local_plan("payments-api"),
        Trigger::Manual,
        "cli",
        T0,
        Script {
            fail: None,
            stop_after: Some(10),
        },
    );
    let row = fold_row("r-open", &open).unwrap();
    assert_eq!((row.outcome, row.phase), (Outcome::Open, Phase::Forward));
    assert_eq!(row.finished_at_ms, None);

    // Stopped right after a failure: failed (waiting to retry), still forward.
    let failing = journaled(
        "r-fail",
        local_plan("payments-api"),
        Trigger::NearExpiry,
        "eventgrid:abc",
        T0,
        Script {
            fail: Some(Action::Write),
            stop_after: Some(11),
        },
    );
    assert_eq!(failing.last().unwrap().kind, "StepFailed");
    let row = fold_row("r-fail", &failing).unwrap();
    assert_eq!((row.outcome, row.phase), (Outcome::Failed, Phase::Forward));
    assert_eq!(row.last_error.unwrap().step, "write#1");
}

#[test]
fn an_event_that_is_not_a_rotation_event_is_named_with_its_sequence() {
    let mut events = journaled(
        "r-bad",
        local_plan("a"),
        Trigger::Manual,
        "cli",
        T0,
        RUNS_THROUGH,
    );
    events[2].payload = r#"{"type":"Nonsense"}"#.into();
    let message = fold_row("r-bad", &events).unwrap_err().to_string();
    assert!(
        message.starts_with("rotation r-bad: event 3 cannot be read"),
        "{message}"
    );
}

fn raw(f: impl FnOnce(&mut RawFilter)) -> RawFilter {
    let mut r = RawFilter::default();
    f(&mut r);
    r
}

#[test]
fn filters_parse_times_globs_and_lists_and_name_what_is_valid() {
    let now = T0 + 10 * DAY;
    let f = raw(|r| {
        r.since = Some("7d".into());
        r.until = Some("2026-01-10T00:00:00Z".into());
        r.status = Some("Completed, failed".into());
        r.trigger = Some("bulk".into());
        r.app = Some("1111*".into());
    })
    .parse(now)
    .unwrap();
    assert_eq!(f.since_ms, Some(T0 + 3 * DAY));
    assert_eq!(f.until_ms, Some(T0 + 9 * DAY));
    assert_eq!(
        f.status,
        BTreeSet::from([Outcome::Completed, Outcome::Failed])
    );
    assert_eq!(f.trigger, BTreeSet::from(["bulk"]));

    let error = |r: RawFilter| r.parse(now).unwrap_err().to_string();
    assert_eq!(
        error(raw(|r| r.status = Some("complete".into()))),
        "status \"complete\": unknown; valid: completed, compensated, open, failed"
    );
    assert_eq!(
        error(raw(|r| r.trigger = Some("manual,cron".into()))),
        "trigger \"cron\": unknown; valid: manual, schedule, near_expiry, bulk"
    );
    assert!(
        error(raw(|r| r.since = Some("yesterday".into())))
            .starts_with("since \"yesterday\": not an RFC 3339 time"),
    );
    assert!(
        error(raw(|r| {
            r.since = Some("1d".into());
            r.until = Some("2d".into());
        }))
        .starts_with("since 1d is not before until 2d"),
    );
    assert!(error(raw(|r| r.app = Some(" ".into()))).starts_with("app \" \": an empty pattern"));
}

#[test]
fn filters_admit_rows_by_each_field() {
    let fleet = fold_row(
        "r1",
        &journaled(
            "r1",
            fleet_plan("11111111-aaaa", "contoso"),
            Trigger::Bulk,
            "fleet",
            T0,
            RUNS_THROUGH,
        ),
    )
    .unwrap();
    let local = fold_row(
        "r2",
        &journaled(
            "r2",
            local_plan("payments-api"),
            Trigger::Manual,
            "cli",
            T0 + DAY,
            RUNS_THROUGH,
        ),
    )
    .unwrap();
    let admitted = |r: RawFilter| -> Vec<&str> {
        let f = r.parse(T0 + 2 * DAY).unwrap();
        [&fleet, &local]
            .into_iter()
            .filter(|row| f.admits(row))
            .map(|row| row.rotation_id.as_str())
            .collect()
    };
    assert_eq!(admitted(RawFilter::default()), ["r1", "r2"]);
    assert_eq!(admitted(raw(|r| r.app = Some("1111*".into()))), ["r1"]);
    assert_eq!(
        admitted(raw(|r| r.app = Some("*".into()))),
        ["r1"],
        "no app: no match"
    );
    assert_eq!(admitted(raw(|r| r.tenant = Some("CONTOSO".into()))), ["r1"]);
    assert_eq!(admitted(raw(|r| r.secret = Some("pay*".into()))), ["r2"]);
    assert_eq!(admitted(raw(|r| r.trigger = Some("manual".into()))), ["r2"]);
    assert_eq!(admitted(raw(|r| r.since = Some("1d".into()))), ["r2"]);
    assert_eq!(admitted(raw(|r| r.until = Some("1d".into()))), ["r1"]);
    assert_eq!(
        admitted(raw(|r| r.status = Some("open,compensated".into()))),
        Vec::<&str>::new()
    );
}

/// A journal that counts the streams read through it.
struct Counting {
    inner: rekey_journal::MemoryJournal,
    reads: std::sync::Mutex<Vec<String>>,
}

impl JournalRead for Counting {
    async fn read_stream(&self, stream_id: &str) -> rekey_journal::Result<Vec<Event>> {
        self.reads.lock().unwrap().push(stream_id.to_owned());
        self.inner.read_stream(stream_id).await
    }
    async fn stream_info(&self, stream_id: &str) -> rekey_journal::Result<Option<StreamInfo>> {
        self.inner.stream_info(stream_id).await
    }
}

impl JournalScan for Counting {
    async fn read_after(&self, after: u64, limit: usize) -> rekey_journal::Result<Vec<Event>> {
        self.inner.read_after(after, limit).await
    }
    async fn streams(&self, filter: &StreamFilter) -> rekey_journal::Result<Vec<StreamInfo>> {
        self.inner.streams(filter).await
    }
    async fn due_timers(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> rekey_journal::Result<Vec<rekey_journal::Timer>> {
        self.inner.due_timers(now_ms, limit).await
    }
    async fn next_timer(&self) -> rekey_journal::Result<Option<rekey_journal::Timer>> {
        self.inner.next_timer().await
    }
}

/// Appends `events` (as [`journaled`] made them) as their stream, at their times, with
/// the status labels the runner gives; and its credential's lock stream, where, if
/// `joined_by` names an actor, a later request joined the rotation.
async fn append_all(
    journal: &rekey_journal::MemoryJournal,
    clock: &rekey_journal::ManualClock,
    events: &[Event],
    joined_by: Option<&str>,
) {
    use rekey_journal::{Append, JournalAppend, NewEvent};
    for e in events {
        clock.set(e.recorded_at_ms);
        let mut append = Append::new(
            &e.stream_id,
            e.stream_seq - 1,
            vec![NewEvent::new(
                &e.kind,
                serde_json::from_str(&e.payload).unwrap(),
            )],
        );
        append = match e.kind.as_str() {
            "Requested" => append
                .subject(format!("subject-of-{}", e.stream_id))
                .status("open"),
            "Completed" => append.status("completed"),
            "Compensated" => append.status("compensated"),
            _ => append,
        };
        journal.append(append).await.unwrap();
    }
    let RotationEvent::Requested { plan, .. } = serde_json::from_str(&events[0].payload).unwrap()
    else {
        panic!("a rotation begins with Requested");
    };
    let id = events[0].stream_id.clone();
    let mut lock = vec![lock::LockEvent::Opened {
        rotation_id: id.clone(),
        plan: plan.clone(),
        trigger: Trigger::Manual,
        actor: "cli".into(),
    }];
    if let Some(actor) = joined_by {
        lock.push(lock::LockEvent::Coalesced {
            into: id.clone(),
            trigger: Trigger::NearExpiry,
            actor: actor.into(),
        });
    }
    let lock: Vec<NewEvent> = lock
        .iter()
        .map(|e| NewEvent::new(e.kind(), serde_json::to_value(e).unwrap()))
        .collect();
    journal
        .append(Append::new(lock::stream_id(&plan.lock_key), 0, lock).status("idle"))
        .await
        .unwrap();
}

#[tokio::test]
async fn rows_read_each_matching_rotation_once_and_no_other_stream() {
    let clock = rekey_journal::ManualClock::new(T0);
    let inner = rekey_journal::MemoryJournal::new(std::sync::Arc::new(clock.clone()));
    let mut all = Vec::new();
    for i in 0..30i64 {
        let id = format!("r{i:02}");
        let script = Script {
            fail: (i % 3 == 1).then_some(Action::Verify),
            stop_after: None,
        };
        let plan = if i % 2 == 0 {
            fleet_plan(&format!("app-{i}"), "contoso")
        } else {
            local_plan(&format!("s{i}"))
        };
        let events = journaled(&id, plan, Trigger::Manual, "cli", T0 + i * DAY, script);
        let joined_by = format!("eventgrid:{i}");
        append_all(&inner, &clock, &events, (i % 4 == 0).then_some(&joined_by)).await;
        all.push(id);
    }
    let journal = Counting {
        inner,
        reads: std::sync::Mutex::default(),
    };
    let every = rows(&journal, &Filter::default()).await.unwrap();
    let ids: Vec<&str> = every.iter().map(|r| r.rotation_id.as_str()).collect();
    assert_eq!(ids, all, "sorted by request time");
    let locks = |rows: &[Row]| -> Vec<String> {
        rows.iter()
            .map(|r| lock::stream_id(&r.lock_key))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut expected = all.clone();
    expected.extend(locks(&every));
    assert_eq!(
        *journal.reads.lock().unwrap(),
        expected,
        "each rotation read once, then each lock stream once, nothing else"
    );
    for (i, row) in every.iter().enumerate() {
        let joined: Vec<(&str, &str)> = row
            .joined
            .iter()
            .map(|j| (j.trigger, j.actor.as_str()))
            .collect();
        if i % 4 == 0 {
            assert_eq!(joined, [("near_expiry", format!("eventgrid:{i}").as_str())]);
        } else {
            assert_eq!(joined, []);
        }
    }

    // Time, secret and status narrow before any stream is read.
    journal.reads.lock().unwrap().clear();
    let filter = RawFilter {
        since: Some("2026-01-10T00:00:00Z".into()),
        until: Some("2026-01-20T00:00:00Z".into()),
        status: Some("compensated".into()),
        ..RawFilter::default()
    }
    .parse(T0)
    .unwrap();
    let some = rows(&journal, &filter).await.unwrap();
    let ids: Vec<&str> = some.iter().map(|r| r.rotation_id.as_str()).collect();
    // r19 was requested at the until time, which is not included.
    assert_eq!(ids, ["r10", "r13", "r16"]);
    let mut expected: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    expected.extend(locks(&some));
    assert_eq!(
        *journal.reads.lock().unwrap(),
        expected,
        "only the matching streams read"
    );
    assert!(some.iter().all(|r| r.outcome == Outcome::Compensated));

    // The app is known only after a read, and reads are still one per rotation.
    journal.reads.lock().unwrap().clear();
    let filter = RawFilter {
        app: Some("app-2?".into()),
        ..RawFilter::default()
    }
    .parse(T0)
    .unwrap();
    let ids: Vec<String> = rows(&journal, &filter)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.rotation_id)
        .collect();
    assert_eq!(ids, ["r20", "r22", "r24", "r26", "r28"]);
    assert_eq!(journal.reads.lock().unwrap().len(), 30 + 5);
}

/// Three chunks of streams, one event each, read through [`Counting`].
async fn three_chunks() -> (Counting, Vec<String>) {
    use rekey_journal::{Append, JournalAppend, NewEvent};
    let clock = rekey_journal::ManualClock::new(T0);
    let inner = rekey_journal::MemoryJournal::new(std::sync::Arc::new(clock));
    let ids: Vec<String> = (0..2 * STREAMS_PER_READ + 3)
        .map(|i| format!("s{i:04}"))
        .collect();
    for id in &ids {
        let event = NewEvent::new("Noted", serde_json::json!({ "id": id }));
        inner.append(Append::new(id, 0, vec![event])).await.unwrap();
    }
    let journal = Counting {
        inner,
        reads: std::sync::Mutex::default(),
    };
    (journal, ids)
}

#[tokio::test]
async fn read_ahead_reads_the_next_chunk_before_folding_this_one() {
    let (journal, ids) = three_chunks().await;
    let mut folded = Vec::new();
    read_ahead(&journal, &ids, |chunk, read| {
        journal.reads.lock().unwrap().push("fold".into());
        for (id, events) in chunk.iter().zip(read) {
            assert_eq!(events.len(), 1);
            assert_eq!(&events[0].stream_id, id);
            folded.push(id.clone());
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(folded, ids, "every stream folded once, in order");
    let log = journal.reads.lock().unwrap();
    let folds: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "fold").collect();
    let n = STREAMS_PER_READ;
    // Chunks 1 and 2 read, then chunk 1 folded; chunk 3 read, then chunk 2 folded; then 3.
    assert_eq!(folds, [2 * n, 2 * n + 4, 2 * n + 5], "{log:?}");
}

#[tokio::test]
async fn read_ahead_stops_at_the_first_fold_that_fails() {
    let (journal, ids) = three_chunks().await;
    let mut calls = 0;
    let err = read_ahead(&journal, &ids, |chunk, _| {
        calls += 1;
        match calls {
            2 => Err(Error::Decode {
                rotation: chunk[0].clone(),
                seq: 1,
                detail: "planted".into(),
            }),
            _ => Ok(()),
        }
    })
    .await
    .unwrap_err();
    assert_eq!(calls, 2, "no chunk is folded after a failed one");
    assert!(err.to_string().contains(&ids[STREAMS_PER_READ]), "{err}");
}
