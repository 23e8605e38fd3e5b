//! What each secret's rotations look like now, folded from the journal: shared by
//! `rekey status` and the daemon's `GET /v1/secrets`.

use std::collections::BTreeMap;

use rekey_journal::StreamFilter;
use serde::Serialize;

use crate::daemon::schedules;
use crate::triggers::schedule::{DueReason, Schedule};

use crate::runner::{Runner, RunnerJournal};
use crate::saga::{Command, Phase, Wait, decide};

/// One secret's status row.
#[derive(Debug, Serialize)]
pub struct SecretStatus {
    pub secret: String,
    pub open_rotation: Option<OpenStatus>,
    pub last_ended: Option<Ended>,
    /// The next scheduled rotation, when no rotation is open and the daemon has adopted
    /// the secret's schedule (expiry-driven times are known only to the daemon).
    pub next_scheduled: Option<Scheduled>,
}

#[derive(Debug, Serialize)]
pub struct Scheduled {
    pub at_ms: i64,
    /// `cadence` or `before_expiry`.
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct OpenStatus {
    pub rotation_id: String,
    pub phase: Phase,
    pub next: Command,
    /// The last failure's message, when a step is waiting to retry.
    pub last_failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Ended {
    pub rotation_id: String,
    pub status: String,
    pub ended_at_ms: i64,
}

/// The status of each secret in `names` at `now`.
///
/// # Errors
/// Journal, decode and nondeterminism errors.
pub async fn secrets<J: RunnerJournal>(
    journal: &J,
    runner: &Runner<J>,
    schedules: &BTreeMap<String, Schedule>,
    names: &[String],
    now: i64,
) -> Result<Vec<SecretStatus>, crate::runner::Error> {
    let mut rows = Vec::new();
    for name in names {
        let name = name.clone();
        let streams = journal
            .streams(&StreamFilter {
                subject: Some(name.clone()),
                ..StreamFilter::default()
            })
            .await?;
        let mut row = SecretStatus {
            secret: name.clone(),
            open_rotation: None,
            last_ended: None,
            next_scheduled: None,
        };
        for s in streams
            .iter()
            .filter(|s| crate::runner::lock::is_rotation_stream(&s.stream_id))
        {
            if s.status == "open" {
                let (state, _) = runner.load(&s.stream_id).await?;
                let last_failure = state.steps.values().find_map(|st| match st {
                    crate::saga::StepStatus::InDoubt {
                        failure: Some(f), ..
                    } => Some(format!("{:?}: {}", f.class, f.message)),
                    _ => None,
                });
                row.open_rotation = Some(OpenStatus {
                    rotation_id: s.stream_id.clone(),
                    phase: state.phase,
                    next: decide(&state, now),
                    last_failure,
                });
            } else if row
                .last_ended
                .as_ref()
                .is_none_or(|e| e.ended_at_ms <= s.updated_at_ms)
            {
                row.last_ended = Some(Ended {
                    rotation_id: s.stream_id.clone(),
                    status: s.status.clone(),
                    ended_at_ms: s.updated_at_ms,
                });
            }
        }
        if let (Some(schedule), None) = (schedules.get(&name), &row.open_rotation)
            && let Some(adopted) = schedules::adopted(journal, &name).await?
        {
            // The streams read above already say it: no second scan.
            let history = schedules::History {
                last_ended: row
                    .last_ended
                    .as_ref()
                    .map(|e| (e.ended_at_ms, e.status == "compensated")),
                open: false,
            };
            let due = schedules::next_due(schedule, &name, now, adopted, history, None);
            row.next_scheduled = Some(Scheduled {
                at_ms: due.at_ms,
                reason: match due.reason {
                    DueReason::Cadence => "cadence",
                    DueReason::BeforeExpiry => "before_expiry",
                },
            });
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What an open rotation does next, in words, with times written by `at`.
pub fn describe(cmd: &Command, at: &dyn Fn(i64) -> String) -> String {
    match cmd {
        Command::Run { step, attempt, .. } => format!("run {step} (attempt {attempt})"),
        Command::Reconcile { step, .. } => format!("reconcile in-doubt {step}"),
        Command::WaitUntil { at_ms, reason } => {
            let why = match reason {
                Wait::Backoff => "retry backoff",
                Wait::Grace => "grace period",
            };
            format!("{why} until {}", at(*at_ms))
        }
        other => format!("{other:?}"),
    }
}
