//! One row per rotation, hand-configured and fleet alike, folded from the journal alone:
//! `rekey history` and the daemon's `GET /v1/history`.
//!
//! A row says when a rotation was requested and ended, what it rotated (the secret; the
//! application and tenant when its rotator is an Entra application), why and on whose
//! request, which items it wrote, the new credential's expiry when the plan says its
//! lifetime, how it ended and its last error. It holds ids, names, times and error
//! classes only, like the journal it is read from: never a value.
//!
//! Filters that the streams' summary rows answer (time, secret, status) are applied
//! before a stream is read; each remaining rotation stream is read once, then the lock
//! stream of each credential listed (requests that joined a rotation already open are
//! journaled there), once however many rows share it. No other stream (schedules,
//! notices, discoveries) is read.

use std::collections::BTreeSet;

use rekey_journal::{Event, JournalRead, JournalScan, StreamFilter, StreamInfo};
use serde::Serialize;

use crate::fleet::rules::{check_glob, glob_match};
use crate::runner::lock;
use crate::saga::{
    Action, Address, ErrorClass, Phase, Role, RotationEvent, StepId, StepStatus, Trigger, apply,
};
use crate::text::excerpt;

/// Characters of a failure message a row quotes.
pub const ERROR_CHARS_MAX: usize = 200;

/// How a rotation ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// New credential in place, old one retired.
    Completed,
    /// Every applied step undone.
    Compensated,
    /// Still running (forward, in its grace period, or compensating).
    Open,
    /// Still open, and its step's last attempt failed: it waits to be reconciled and
    /// retried (`rekey status` shows when).
    Failed,
}

impl Outcome {
    /// Every outcome, as `--status` takes them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Completed,
        Outcome::Compensated,
        Outcome::Open,
        Outcome::Failed,
    ];

    /// Its name in filters and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Compensated => "compensated",
            Outcome::Open => "open",
            Outcome::Failed => "failed",
        }
    }

    /// The journal's status label of a stream with this outcome.
    fn stream_status(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Compensated => "compensated",
            Outcome::Open | Outcome::Failed => "open",
        }
    }
}

/// A trigger's name as the journal writes it (and `--trigger` takes it).
pub fn trigger_name(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Manual => "manual",
        Trigger::Schedule => "schedule",
        Trigger::NearExpiry => "near_expiry",
        Trigger::Bulk => "bulk",
    }
}

/// Every trigger name `--trigger` takes.
pub const TRIGGERS: [&str; 4] = ["manual", "schedule", "near_expiry", "bulk"];

/// One item a rotation wrote: a store's new version or a dependent's new setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `store` or `dependent`.
    pub role: Role,
    /// The provider's name in the config when the rotation was requested.
    pub name: String,
    /// Where it is (kind and place, e.g. `key_vault https://kv1.vault.azure.net secret
    /// api`), or the provider's name for targets journaled without an address.
    pub address: String,
    /// The item's name inside a store that holds many (a vault's secret name).
    pub item: Option<String>,
    /// The old value was put back by the rotation's compensation.
    pub undone: bool,
}

/// The last failure a rotation journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// The step that failed, e.g. `write#1`.
    pub step: String,
    pub class: ErrorClass,
    /// An excerpt of the journaled message (at most [`ERROR_CHARS_MAX`] characters).
    pub message: String,
    pub at_ms: i64,
}

/// A request that arrived while a rotation was open and was served by it (journaled in
/// the credential's lock stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Joined {
    pub trigger: &'static str,
    pub actor: String,
    pub at_ms: i64,
}

/// One rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub rotation_id: String,
    pub requested_at_ms: i64,
    /// When its terminal event was journaled; `None` while open.
    pub finished_at_ms: Option<i64>,
    /// The plan's secret (a configured secret's name, or the name a fleet plan gives).
    pub secret: String,
    /// The credential underneath (one open rotation per key).
    pub lock_key: String,
    /// The Entra application's client id, when the rotator is an application's password.
    pub app_id: Option<String>,
    /// Its tenant.
    pub tenant: Option<String>,
    /// `manual`, `schedule`, `near_expiry` or `bulk`.
    pub trigger: &'static str,
    /// Who asked: `cli`, `api`, `schedule`, `eventgrid:<event>`…
    pub actor: String,
    /// Later requests that found this rotation open and were served by it.
    pub joined: Vec<Joined>,
    pub items_updated: Vec<Item>,
    /// When the new credential expires, when the plan fixes its lifetime (an Entra
    /// password's validity) and it was created and kept: its creation plus that
    /// lifetime, counted from when its creation started (so never later than the real
    /// expiry).
    pub new_expiry_ms: Option<i64>,
    pub outcome: Outcome,
    pub phase: Phase,
    pub last_error: Option<LastError>,
}

/// `rekey history --json` and `GET /v1/history`: `{"rotations": [...]}`.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub rotations: &'a [Row],
}

/// What to list; every field narrows, empty means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Requested at or after (ms).
    pub since_ms: Option<i64>,
    /// Requested before (ms).
    pub until_ms: Option<i64>,
    /// A case-insensitive glob on the secret's name.
    pub secret: Option<String>,
    /// A case-insensitive glob on the application id.
    pub app: Option<String>,
    /// A case-insensitive glob on the tenant.
    pub tenant: Option<String>,
    /// Any of these outcomes.
    pub status: BTreeSet<Outcome>,
    /// Any of these triggers (names from [`TRIGGERS`]).
    pub trigger: BTreeSet<&'static str>,
}

/// The filters as given on the command line or in a query string, not yet checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub secret: Option<String>,
    pub app: Option<String>,
    pub tenant: Option<String>,
    /// Comma-separated outcomes.
    pub status: Option<String>,
    /// Comma-separated triggers.
    pub trigger: Option<String>,
}

/// Why the history cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{filter} {}: not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z) nor a time back from now (e.g. 7d, 12h, 30m)",
        crate::text::quoted(value)
    )]
    BadTime { filter: &'static str, value: String },
    #[error("since {since} is not before until {until}: nothing can match; swap them")]
    EmptyRange { since: String, until: String },
    #[error("{filter} {}: {why}", crate::text::quoted(value))]
    BadGlob {
        filter: &'static str,
        value: String,
        why: String,
    },
    #[error("status {}: unknown; valid: {}", crate::text::quoted(value), valid_list(&Outcome::ALL.map(Outcome::as_str)))]
    UnknownStatus { value: String },
    #[error("trigger {}: unknown; valid: {}", crate::text::quoted(value), valid_list(&TRIGGERS))]
    UnknownTrigger { value: String },
    #[error(transparent)]
    Journal(#[from] rekey_journal::Error),
    #[error(
        "rotation {rotation}: event {seq} cannot be read ({detail}); run `rekey journal verify`"
    )]
    Decode {
        rotation: String,
        seq: u64,
        detail: String,
    },
}

fn valid_list(names: &[&str]) -> String {
    names.join(", ")
}

impl RawFilter {
    /// The checked filter; relative times count back from `now_ms`.
    ///
    /// # Errors
    /// The first bad value, naming what is valid.
    pub fn parse(&self, now_ms: i64) -> Result<Filter, Error> {
        let time = |filter: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| parse_time(filter, v, now_ms))
                .transpose()
        };
        let glob = |filter: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    check_glob(v)
                        .map(|()| v.trim().to_owned())
                        .map_err(|why| Error::BadGlob {
                            filter,
                            value: v.to_owned(),
                            why,
                        })
                })
                .transpose()
        };
        let filter = Filter {
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            secret: glob("secret", &self.secret)?,
            app: glob("app", &self.app)?,
            tenant: glob("tenant", &self.tenant)?,
            status: list(self.status.as_deref())
                .map(|v| {
                    Outcome::ALL
                        .into_iter()
                        .find(|o| o.as_str().eq_ignore_ascii_case(v))
                        .ok_or_else(|| Error::UnknownStatus {
                            value: v.to_owned(),
                        })
                })
                .collect::<Result<_, _>>()?,
            trigger: list(self.trigger.as_deref())
                .map(|v| {
                    TRIGGERS
                        .into_iter()
                        .find(|t| t.eq_ignore_ascii_case(v))
                        .ok_or_else(|| Error::UnknownTrigger {
                            value: v.to_owned(),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms)
            && since >= until
        {
            return Err(Error::EmptyRange {
                since: self.since.clone().unwrap_or_default(),
                until: self.until.clone().unwrap_or_default(),
            });
        }
        Ok(filter)
    }
}

/// The non-empty items of a comma-separated list.
fn list(text: Option<&str>) -> impl Iterator<Item = &str> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// An RFC 3339 time, or a duration back from `now_ms` (`7d`, `12h`).
fn parse_time(filter: &'static str, text: &str, now_ms: i64) -> Result<i64, Error> {
    let bad = || Error::BadTime {
        filter,
        value: text.to_owned(),
    };
    let text = text.trim();
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let ago = crate::config::parse_duration_ms(text).map_err(|_| bad())?;
    now_ms.checked_sub(ago).ok_or_else(bad)
}

impl Filter {
    /// Whether a stream's summary row may hold a matching rotation (no stream read).
    fn admits_stream(&self, info: &StreamInfo) -> bool {
        lock::is_rotation_stream(&info.stream_id)
            && self.since_ms.is_none_or(|s| info.created_at_ms >= s)
            && self.until_ms.is_none_or(|u| info.created_at_ms < u)
            && self.secret.as_deref().is_none_or(|g| {
                info.subject
                    .as_deref()
                    .is_some_and(|subject| glob_match(g, subject))
            })
            && (self.status.is_empty()
                || self.status.iter().any(|o| o.stream_status() == info.status))
    }

    /// Whether a folded row matches.
    pub fn admits(&self, row: &Row) -> bool {
        let glob = |pattern: &Option<String>, value: &Option<String>| {
            pattern
                .as_deref()
                .is_none_or(|g| value.as_deref().is_some_and(|v| glob_match(g, v)))
        };
        self.since_ms.is_none_or(|s| row.requested_at_ms >= s)
            && self.until_ms.is_none_or(|u| row.requested_at_ms < u)
            && glob(&self.secret, &Some(row.secret.clone()))
            && glob(&self.app, &row.app_id)
            && glob(&self.tenant, &row.tenant)
            && (self.status.is_empty() || self.status.contains(&row.outcome))
            && (self.trigger.is_empty() || self.trigger.contains(row.trigger))
    }

    /// The journal-side narrowing: times and, for one outcome, the stream status.
    fn stream_filter(&self) -> StreamFilter {
        let statuses: BTreeSet<&str> = self.status.iter().map(|o| o.stream_status()).collect();
        StreamFilter {
            subject: None,
            status: match statuses.len() {
                1 => statuses.first().map(|s| (*s).to_owned()),
                _ => None,
            },
            created_from_ms: self.since_ms,
            created_until_ms: self.until_ms,
        }
    }
}

/// Streams read per journal call: one storage round trip each, with a bounded snapshot.
const STREAMS_PER_READ: usize = 256;

/// Reads `ids`' streams [`STREAMS_PER_READ`] at a time and hands each chunk, with its
/// streams' events, to `fold`; the next chunk's read is under way while `fold` runs, so
/// the storage's reading and the caller's folding overlap.
///
/// # Errors
/// The first failed read, or the first error `fold` returns (no chunk is folded after it).
pub async fn read_ahead<J: JournalRead + Sync + ?Sized>(
    journal: &J,
    ids: &[String],
    mut fold: impl FnMut(&[String], Vec<Vec<Event>>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut chunks = ids.chunks(STREAMS_PER_READ);
    let Some(first) = chunks.next() else {
        return Ok(());
    };
    let (mut chunk, mut read) = (first, journal.read_streams(first).await?);
    for next in chunks {
        // The read is polled first, so it has started when the fold begins.
        let (next_read, folded) =
            tokio::join!(journal.read_streams(next), async { fold(chunk, read) });
        folded?;
        (chunk, read) = (next, next_read?);
    }
    fold(chunk, read)
}

/// Every rotation `filter` admits, sorted by request time (then id).
///
/// # Errors
/// Journal errors, and a rotation whose events cannot be read.
pub async fn rows<J: JournalRead + JournalScan + Sync + ?Sized>(
    journal: &J,
    filter: &Filter,
) -> Result<Vec<Row>, Error> {
    let admitted: Vec<String> = journal
        .streams(&filter.stream_filter())
        .await?
        .into_iter()
        .filter(|info| filter.admits_stream(info))
        .map(|info| info.stream_id)
        .collect();
    let mut rows = Vec::new();
    read_ahead(journal, &admitted, |chunk, read| {
        for (id, events) in chunk.iter().zip(read) {
            if events.is_empty() {
                continue;
            }
            let row = fold_row(id, &events)?;
            if filter.admits(&row) {
                rows.push(row);
            }
        }
        Ok(())
    })
    .await?;
    add_joined(journal, &mut rows).await?;
    rows.sort_by(|a, b| {
        (a.requested_at_ms, &a.rotation_id).cmp(&(b.requested_at_ms, &b.rotation_id))
    });
    Ok(rows)
}

/// Adds to each row the requests its lock stream says it served; each lock stream is read
/// once, whatever number of rows share it.
pub async fn add_joined<J: JournalRead + Sync + ?Sized>(
    journal: &J,
    rows: &mut [Row],
) -> Result<(), Error> {
    let keys: BTreeSet<String> = rows.iter().map(|r| r.lock_key.clone()).collect();
    let streams: Vec<String> = keys.iter().map(|k| lock::stream_id(k)).collect();
    let mut joined: std::collections::HashMap<String, Vec<Joined>> =
        std::collections::HashMap::new();
    read_ahead(journal, &streams, |chunk, read| {
        for (stream, e) in chunk
            .iter()
            .zip(read)
            .flat_map(|(stream, events)| events.into_iter().map(move |e| (stream, e)))
        {
            if e.kind != "TriggerCoalesced" {
                continue;
            }
            let event: lock::LockEvent =
                serde_json::from_str(&e.payload).map_err(|err| Error::Decode {
                    rotation: stream.clone(),
                    seq: e.stream_seq,
                    detail: err.to_string(),
                })?;
            if let lock::LockEvent::Coalesced {
                into,
                trigger,
                actor,
            } = event
            {
                joined.entry(into).or_default().push(Joined {
                    trigger: trigger_name(&trigger),
                    actor,
                    at_ms: e.recorded_at_ms,
                });
            }
        }
        Ok(())
    })
    .await?;
    for row in rows {
        if let Some(j) = joined.remove(&row.rotation_id) {
            row.joined = j;
        }
    }
    Ok(())
}

/// The row of one rotation stream's events (in stream order); `joined` is left empty
/// (it is in the lock stream).
///
/// # Errors
/// [`Error::Decode`] for an event that is not a rotation event or does not fit the ones
/// before it.
pub fn fold_row(rotation_id: &str, events: &[Event]) -> Result<Row, Error> {
    fold(rotation_id, events, None).map(|(row, _)| row)
}

/// One step of a rotation as its events tell it: when it first started, its attempts and
/// their failures, and where it stands now (the saga's own fold says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    pub step: StepId,
    /// The target's role and name in the plan.
    pub role: Role,
    pub target: String,
    /// When its first attempt started.
    pub started_at_ms: i64,
    /// When its last event was journaled.
    pub last_at_ms: i64,
    /// Attempts started.
    pub attempts: u32,
    /// Where it stands after the last event.
    pub status: StepStatus,
    /// Its success was found by reconciling, not from a response.
    pub reconciled: bool,
    /// Every failure journaled against it, oldest first.
    pub errors: Vec<StepError>,
}

impl StepRecord {
    /// How long it took, from its first start to its outcome; `None` while it is still
    /// in doubt.
    pub fn duration_ms(&self) -> Option<i64> {
        (!matches!(self.status, StepStatus::InDoubt { .. }))
            .then(|| self.last_at_ms.saturating_sub(self.started_at_ms))
    }

    /// An undo step (compensation).
    pub fn is_undo(&self) -> bool {
        matches!(
            self.step.action,
            Action::Discard | Action::Restore | Action::Revert
        )
    }
}

/// One journaled failure of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepError {
    pub attempt: u32,
    pub class: ErrorClass,
    /// An excerpt of the journaled message (at most [`STEP_ERROR_CHARS_MAX`] characters).
    pub message: String,
    pub at_ms: i64,
    pub retry_at_ms: Option<i64>,
}

/// Characters of a failure message a step's timeline quotes.
pub const STEP_ERROR_CHARS_MAX: usize = 2_000;

/// One rotation in full: its row, each step it started in the order first started, its
/// grace deadline and why it compensated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    pub row: Row,
    pub steps: Vec<StepRecord>,
    /// When the old credential is (or was) retired, once every forward step succeeded.
    pub grace_due_ms: Option<i64>,
    pub compensation_reason: Option<String>,
}

/// The timeline of one rotation stream's events (in stream order), folded by the same code
/// as [`fold_row`]; the row's `joined` is left empty (it is in the lock stream).
///
/// # Errors
/// As [`fold_row`].
pub fn fold_timeline(rotation_id: &str, events: &[Event]) -> Result<Timeline, Error> {
    let mut steps = Vec::new();
    let (row, state) = fold(rotation_id, events, Some(&mut steps))?;
    for record in &mut steps {
        if let Some(status) = state.steps.get(&record.step) {
            record.status = status.clone();
        }
        if let Some(t) = state.plan.targets.get(usize::from(record.step.target)) {
            record.role = t.role;
            record.target.clone_from(&t.name);
        }
    }
    Ok(Timeline {
        row,
        steps,
        grace_due_ms: state.grace_due_ms,
        compensation_reason: state.compensation_reason,
    })
}

/// Records what `event` (journaled at `at_ms`) says of its step into `steps`.
fn record_step(steps: &mut Vec<StepRecord>, event: &RotationEvent, at_ms: i64) {
    let step = match event {
        RotationEvent::StepStarted { step, .. }
        | RotationEvent::StepSucceeded { step, .. }
        | RotationEvent::StepFailed { step, .. }
        | RotationEvent::StepNotApplied { step, .. } => *step,
        _ => return,
    };
    // Found from the newest: a rotation's steps are few, and the one an event is about is
    // almost always the last started.
    let index = match steps.iter().rposition(|r| r.step == step) {
        Some(i) => i,
        None => {
            steps.push(StepRecord {
                step,
                role: Role::Rotator,
                target: String::new(),
                started_at_ms: at_ms,
                last_at_ms: at_ms,
                attempts: 0,
                status: StepStatus::InDoubt {
                    attempt: 0,
                    failure: None,
                },
                reconciled: false,
                errors: Vec::new(),
            });
            steps.len() - 1
        }
    };
    let record = &mut steps[index];
    record.last_at_ms = at_ms;
    match event {
        RotationEvent::StepStarted { attempt, .. } => record.attempts = *attempt,
        RotationEvent::StepSucceeded { reconciled, .. } => record.reconciled = *reconciled,
        RotationEvent::StepFailed {
            attempt,
            class,
            message,
            retry_at_ms,
            ..
        } => record.errors.push(StepError {
            attempt: *attempt,
            class: *class,
            message: excerpt(message, STEP_ERROR_CHARS_MAX),
            at_ms,
            retry_at_ms: *retry_at_ms,
        }),
        _ => {}
    }
}

/// Folds a rotation stream through the saga's `apply` into its row and final state; when
/// `steps` is given, also records each step's timeline there (status, role and target
/// are filled in by the caller from the final state).
fn fold(
    rotation_id: &str,
    events: &[Event],
    mut steps: Option<&mut Vec<StepRecord>>,
) -> Result<(Row, crate::saga::Rotation), Error> {
    let decode = |e: &Event, detail: String| Error::Decode {
        rotation: rotation_id.to_owned(),
        seq: e.stream_seq,
        detail,
    };
    let mut state = None;
    let mut actor = String::new();
    let mut requested_at_ms = 0;
    let mut finished_at_ms = None;
    let mut last_error = None;
    // Per rotator step: when its last attempt started.
    let mut create_started_ms = std::collections::BTreeMap::new();
    for e in events {
        let event = RotationEvent::from_journal(&e.kind, &e.payload)
            .map_err(|err| decode(e, err.to_string()))?;
        match &event {
            RotationEvent::Requested { actor: a, .. } => {
                actor.clone_from(a);
                requested_at_ms = e.recorded_at_ms;
            }
            RotationEvent::StepStarted { step, .. } if step.action == Action::Create => {
                create_started_ms.insert(*step, e.recorded_at_ms);
            }
            RotationEvent::StepFailed {
                step,
                class,
                message,
                ..
            } => {
                last_error = Some(LastError {
                    step: step.to_string(),
                    class: *class,
                    message: excerpt(message, ERROR_CHARS_MAX),
                    at_ms: e.recorded_at_ms,
                });
            }
            RotationEvent::Completed | RotationEvent::Compensated => {
                finished_at_ms = Some(e.recorded_at_ms);
            }
            _ => {}
        }
        if let Some(steps) = steps.as_deref_mut() {
            record_step(steps, &event, e.recorded_at_ms);
        }
        state = Some(apply(state, &event).map_err(|n| decode(e, n.why))?);
    }
    let Some(state) = state else {
        return Err(Error::Decode {
            rotation: rotation_id.to_owned(),
            seq: 0,
            detail: "the stream has no events".into(),
        });
    };
    let entra = state.plan.targets.iter().find_map(|t| match &t.address {
        Some(Address::EntraPassword {
            tenant,
            app_id,
            validity_days,
            ..
        }) if t.role == Role::Rotator => Some((tenant.clone(), app_id.clone(), *validity_days)),
        _ => None,
    });
    let succeeded = |action: Action, target: usize| {
        state.steps.iter().any(|(s, st)| {
            s.action == action
                && usize::from(s.target) == target
                && matches!(st, StepStatus::Succeeded { .. })
        })
    };
    let items_updated = state
        .plan
        .targets
        .iter()
        .enumerate()
        .filter(|(i, t)| match t.role {
            Role::Store => succeeded(Action::Write, *i),
            Role::Dependent => succeeded(Action::Update, *i),
            Role::Rotator | Role::Verifier => false,
        })
        .map(|(i, t)| Item {
            role: t.role,
            name: t.name.clone(),
            address: t
                .address
                .as_ref()
                .map_or_else(|| t.name.clone(), ToString::to_string),
            item: t
                .address
                .as_ref()
                .and_then(Address::item)
                .map(str::to_owned),
            undone: succeeded(Action::Restore, i) || succeeded(Action::Revert, i),
        })
        .collect();
    // The credential kept: the latest generation's create, if it succeeded and the
    // rotation is not undoing it.
    let kept_since_ms = (!matches!(state.phase, Phase::Compensating | Phase::Compensated))
        .then(|| {
            state
                .steps
                .iter()
                .filter(|(s, st)| {
                    s.action == Action::Create
                        && s.generation == state.generation
                        && matches!(st, StepStatus::Succeeded { .. })
                })
                .find_map(|(s, _)| create_started_ms.get(s).copied())
        })
        .flatten();
    let new_expiry_ms = match (&entra, kept_since_ms) {
        (Some((_, _, days)), Some(at)) => days
            .checked_mul(86_400_000)
            .and_then(|ms| at.checked_add(ms)),
        _ => None,
    };
    let failing = state.steps.values().any(|s| {
        matches!(
            s,
            StepStatus::InDoubt {
                failure: Some(_),
                ..
            }
        )
    });
    let outcome = match state.phase {
        Phase::Completed => Outcome::Completed,
        Phase::Compensated => Outcome::Compensated,
        _ if failing => Outcome::Failed,
        _ => Outcome::Open,
    };
    let (tenant, app_id) = entra.map_or((None, None), |(t, a, _)| (Some(t), Some(a)));
    let row = Row {
        rotation_id: rotation_id.to_owned(),
        requested_at_ms,
        finished_at_ms,
        secret: state.plan.secret.clone(),
        lock_key: state.plan.lock_key.clone(),
        app_id,
        tenant,
        trigger: trigger_name(&state.trigger),
        actor,
        joined: Vec::new(),
        items_updated,
        new_expiry_ms,
        outcome,
        phase: state.phase,
        last_error,
    };
    Ok((row, state))
}

#[cfg(test)]
mod tests;
