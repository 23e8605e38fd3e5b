//! When each scheduled secret is due, derived from the journal alone: the last rotation
//! that ended, or, for a secret never rotated, the moment its schedule was first seen
//! (journaled once in `schedule:<secret>`, so a new schedule never rotates at once and a
//! restart does not move it). The arithmetic itself is `triggers::schedule`.

use rekey_journal::{Append, JournalAppend, JournalRead, JournalScan, NewEvent, StreamFilter};
use serde::{Deserialize, Serialize};

use crate::runner::lock;
use crate::triggers::schedule::{Due, DueInput, DueReason, Schedule};

/// After a compensated rotation, or one made for an expiry, the next such attempt waits
/// at least this long (otherwise a secret past its due time would be rotated in a loop).
pub const AFTER_COMPENSATION_MS: i64 = 3_600_000;
/// How often stores are asked for the current version's expiry.
pub const EXPIRY_POLL_MS: i64 = 3_600_000;

/// The stream recording when a secret's schedule was adopted.
pub fn stream_id(secret: &str) -> String {
    format!("schedule:{secret}")
}

/// Events of a `schedule:` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ScheduleEvent {
    /// The daemon first saw this secret's schedule; the first rotation counts from here.
    ScheduleAdopted { secret: String, at_ms: i64 },
}

/// When the schedule of `secret` was adopted, if it has been.
///
/// # Errors
/// Journal errors.
pub async fn adopted<J: JournalRead>(
    journal: &J,
    secret: &str,
) -> Result<Option<i64>, rekey_journal::Error> {
    Ok(journal.read_stream(&stream_id(secret)).await?.first().map(
        |first| match serde_json::from_str::<ScheduleEvent>(&first.payload) {
            Ok(ScheduleEvent::ScheduleAdopted { at_ms, .. }) => at_ms,
            Err(_) => first.recorded_at_ms,
        },
    ))
}

/// When the schedule of `secret` was adopted, journaling `now_ms` if this is the first
/// time it is seen.
///
/// # Errors
/// Journal errors.
pub async fn adopted_at<J: JournalRead + JournalAppend>(
    journal: &J,
    secret: &str,
    now_ms: i64,
) -> Result<i64, rekey_journal::Error> {
    let stream = stream_id(secret);
    loop {
        if let Some(at_ms) = adopted(journal, secret).await? {
            return Ok(at_ms);
        }
        let event = ScheduleEvent::ScheduleAdopted {
            secret: secret.to_owned(),
            at_ms: now_ms,
        };
        let payload = serde_json::to_value(&event).unwrap_or_default();
        let append = Append::new(&stream, 0, vec![NewEvent::new("ScheduleAdopted", payload)])
            .subject(secret);
        match journal.append(append).await {
            Ok(_) => return Ok(now_ms),
            // Another daemon adopted it first: read its time.
            Err(rekey_journal::Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the journal says of a secret's rotations now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// When the last rotation ended and whether it compensated.
    pub last_ended: Option<(i64, bool)>,
    /// A rotation of it is open.
    pub open: bool,
}

/// Reads the secret's rotation streams (its lock and schedule streams aside).
///
/// # Errors
/// Journal errors.
pub async fn history<J: JournalScan>(
    journal: &J,
    secret: &str,
) -> Result<History, rekey_journal::Error> {
    let streams = journal
        .streams(&StreamFilter {
            subject: Some(secret.to_owned()),
            ..StreamFilter::default()
        })
        .await?;
    let mut h = History {
        last_ended: None,
        open: false,
    };
    for s in streams
        .iter()
        .filter(|s| lock::is_rotation_stream(&s.stream_id))
    {
        match s.status.as_str() {
            "open" => h.open = true,
            "completed" | "compensated"
                if h.last_ended.is_none_or(|(t, _)| t <= s.updated_at_ms) =>
            {
                h.last_ended = Some((s.updated_at_ms, s.status == "compensated"));
            }
            _ => {}
        }
    }
    Ok(h)
}

/// The secret's rotation that ended last: a scheduled rotation counts from it, so it
/// names the slot a schedule fires for (see [`crate::runner::Runner::request_once`]).
///
/// # Errors
/// Journal errors.
pub async fn last_ended<J: JournalScan>(
    journal: &J,
    secret: &str,
) -> Result<Option<String>, rekey_journal::Error> {
    let streams = journal
        .streams(&StreamFilter {
            subject: Some(secret.to_owned()),
            ..StreamFilter::default()
        })
        .await?;
    Ok(streams
        .into_iter()
        .filter(|s| lock::is_rotation_stream(&s.stream_id))
        .filter(|s| matches!(s.status.as_str(), "completed" | "compensated"))
        .max_by_key(|s| s.updated_at_ms)
        .map(|s| s.stream_id))
}

/// The next due time of `secret`: counted from its last ended rotation (or adoption),
/// ahead of `expiry_ms`, and not sooner than [`AFTER_COMPENSATION_MS`] after a compensation.
pub fn next_due(
    schedule: &Schedule,
    secret: &str,
    now_ms: i64,
    adopted_ms: i64,
    history: History,
    expiry_ms: Option<i64>,
) -> Due {
    let anchor = history
        .last_ended
        .map_or(adopted_ms, |(t, _)| t.max(adopted_ms));
    let mut due = schedule.next_due(&DueInput {
        secret,
        now_ms,
        anchor_ms: anchor,
        expiry_ms,
    });
    match (history.last_ended, due.reason) {
        (Some((ended, true)), _) => {
            due.at_ms = due.at_ms.max(ended.saturating_add(AFTER_COMPENSATION_MS));
        }
        // A new version that expires within the lead time again would otherwise be
        // rotated in a loop: at most once per hour, and the expiry alert says why.
        (Some((ended, false)), DueReason::BeforeExpiry) => {
            due.at_ms = due.at_ms.max(ended.saturating_add(AFTER_COMPENSATION_MS));
        }
        _ => {}
    }
    due
}
