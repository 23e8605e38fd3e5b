//! The journal as the checks see it: every stream read read-only (once no child is
//! running) and decoded into rotation and lock events.

use std::collections::BTreeMap;
use std::path::Path;

use rekey::journal::{JournalRead, JournalScan, SqliteJournal, StreamFilter};
use rekey::runner::lock::{LockEvent, is_lock_stream};
use rekey::saga::{Action, Plan, Role, RotationEvent, StepId};

/// A rotation event with the time the journal recorded it.
#[derive(Debug)]
pub struct Logged {
    pub at_ms: i64,
    pub event: RotationEvent,
}

/// One rotation stream.
#[derive(Debug)]
pub struct RotationLog {
    pub id: String,
    pub status: String,
    pub events: Vec<Logged>,
}

/// How a rotation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Completed,
    Compensated,
}

impl RotationLog {
    pub fn plan(&self) -> Option<&Plan> {
        match self.events.first().map(|l| &l.event) {
            Some(RotationEvent::Requested { plan, .. }) => Some(plan),
            _ => None,
        }
    }

    pub fn secret(&self) -> &str {
        self.plan().map_or("", |p| p.secret.as_str())
    }

    fn store(&self, name: &str) -> Option<u16> {
        let plan = self.plan()?;
        let i = plan
            .targets
            .iter()
            .position(|t| t.name == name && t.role == Role::Store)?;
        u16::try_from(i).ok()
    }

    /// The version store `name` held before the rotation (its capture's outcome).
    pub fn captured(&self, name: &str) -> Option<&str> {
        let step = StepId::new(Action::Capture, self.store(name)?);
        self.events.iter().rev().find_map(|l| match &l.event {
            RotationEvent::StepSucceeded { step: s, id, .. } if *s == step => id.as_deref(),
            _ => None,
        })
    }

    /// The idempotency key of `action` on store `name` (what its versions are tagged with).
    pub fn key(&self, action: Action, name: &str) -> Option<String> {
        Some(StepId::new(action, self.store(name)?).key(&self.id))
    }

    /// The deadline of every grace period scheduled.
    pub fn graces(&self) -> Vec<i64> {
        self.events
            .iter()
            .filter_map(|l| match l.event {
                RotationEvent::GraceScheduled { due_at_ms } => Some(due_at_ms),
                _ => None,
            })
            .collect()
    }

    /// Every terminal event, with its position.
    pub fn terminals(&self) -> Vec<(usize, Terminal)> {
        self.events
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.event {
                RotationEvent::Completed => Some((i, Terminal::Completed)),
                RotationEvent::Compensated => Some((i, Terminal::Compensated)),
                _ => None,
            })
            .collect()
    }

    /// When the rotation was requested.
    pub fn requested_at_ms(&self) -> Option<i64> {
        self.events.first().map(|l| l.at_ms)
    }

    /// Whether, at `t_ms`, a step had started and nothing had followed yet: a kill then
    /// hit the step in flight.
    pub fn in_flight_at(&self, t_ms: i64) -> bool {
        self.events.windows(2).any(|w| {
            matches!(w[0].event, RotationEvent::StepStarted { .. })
                && (w[0].at_ms..w[1].at_ms).contains(&t_ms)
        })
    }

    /// The stream as compact lines, timed from `origin_ms`, for failure messages.
    pub fn timeline(&self, origin_ms: i64) -> String {
        let mut out = format!("  rotation {} ({}):", self.id, self.secret());
        for l in &self.events {
            let what = match &l.event {
                RotationEvent::Requested { .. } => "Requested".to_owned(),
                RotationEvent::StepStarted { step, attempt, .. } => {
                    format!("StepStarted {step} attempt {attempt}")
                }
                RotationEvent::StepSucceeded {
                    step, reconciled, ..
                } => format!("StepSucceeded {step} (reconciled: {reconciled})"),
                RotationEvent::StepFailed { step, message, .. } => {
                    format!("StepFailed {step}: {message}")
                }
                RotationEvent::StepNotApplied { step, .. } => format!("StepNotApplied {step}"),
                other => format!("{other:?}"),
            };
            out.push_str(&format!("\n    +{} ms {what}", l.at_ms - origin_ms));
        }
        out
    }
}

/// Every stream of the journal, decoded.
#[derive(Debug, Default)]
pub struct JournalView {
    pub rotations: Vec<RotationLog>,
    /// Lock streams by id: status and events.
    pub locks: BTreeMap<String, (String, Vec<LockEvent>)>,
}

impl JournalView {
    /// Reads the journal at `path` read-only. None there yet (every command of the round
    /// was killed before one had to be created) reads as empty: then no effect may have
    /// happened either, which the checks of the round's effects see.
    pub fn read(path: &Path) -> Result<Self, String> {
        if !path.exists() {
            return Ok(JournalView::default());
        }
        let j = SqliteJournal::open_read_only(path).map_err(|e| format!("opening: {e}"))?;
        crate::block_on(Self::of(&j))
    }

    /// Reads every stream of `j` (any engine). Streams other than rotations and locks
    /// (`schedule:`, `leader:`, …) are left out.
    pub async fn of<J: JournalRead + JournalScan>(j: &J) -> Result<Self, String> {
        let mut view = JournalView::default();
        let streams = j
            .streams(&StreamFilter::default())
            .await
            .map_err(|e| format!("listing streams: {e}"))?;
        for info in streams {
            let events = j
                .read_stream(&info.stream_id)
                .await
                .map_err(|e| format!("reading {}: {e}", info.stream_id))?;
            let undecodable = |seq: u64, payload: &str| {
                format!("{}#{seq} is not decodable: {payload}", info.stream_id)
            };
            if is_lock_stream(&info.stream_id) {
                let events = events
                    .iter()
                    .map(|e| {
                        serde_json::from_str(&e.payload)
                            .map_err(|_| undecodable(e.stream_seq, &e.payload))
                    })
                    .collect::<Result<_, _>>()?;
                view.locks.insert(info.stream_id, (info.status, events));
            } else if rekey::runner::lock::is_rotation_stream(&info.stream_id) {
                let events = events
                    .iter()
                    .map(|e| {
                        let event = serde_json::from_str(&e.payload)
                            .map_err(|_| undecodable(e.stream_seq, &e.payload))?;
                        Ok(Logged {
                            at_ms: e.recorded_at_ms,
                            event,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                view.rotations.push(RotationLog {
                    id: info.stream_id,
                    status: info.status,
                    events,
                });
            }
        }
        Ok(view)
    }
}
