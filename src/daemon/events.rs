//! What the daemon does with a Key Vault event from the webhook: which configured secret
//! it is about, whether it starts a rotation, and its journal record, which also makes
//! redeliveries of the same event id harmless (Event Grid delivers at least once).
//!
//! Order: the rotation is requested first, the event recorded second. A crash between the
//! two makes Event Grid deliver again; the new request then coalesces into the rotation
//! that is still open. Recording first could lose the trigger instead.

use rekey_journal::{Append, JournalAppend, JournalRead, JournalScan, NewEvent, StreamFilter};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::runner::lock;
use crate::triggers::eventgrid::{EventKind, KeyVaultEvent};

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rotate this configured secret.
    Rotate { secret: String },
    /// Acknowledge and do nothing, for this reason.
    Ignore { why: String },
}

/// The journal record of one received event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventRecord {
    KeyVaultEventReceived {
        event_id: String,
        event_type: String,
        vault: String,
        secret: String,
        outcome: String,
    },
}

/// The dedup stream of an event id (long ids are hashed to fit a stream id).
pub fn stream_id(event_id: &str) -> String {
    if event_id.len() <= 100 && !event_id.is_empty() {
        format!("eventgrid:{event_id}")
    } else {
        format!(
            "eventgrid:sha256:{}",
            hex::encode(openssl::sha::sha256(event_id.as_bytes()))
        )
    }
}

/// Whether this event id was handled before.
///
/// # Errors
/// Journal errors.
pub fn seen<J: JournalRead>(journal: &J, event_id: &str) -> Result<bool, rekey_journal::Error> {
    Ok(journal.stream_info(&stream_id(event_id))?.is_some())
}

/// Decides what `event` asks for.
///
/// # Errors
/// Journal errors (looking for rekey's own versions).
pub fn decide<J: JournalRead + JournalScan>(
    config: &Config,
    journal: &J,
    event: &KeyVaultEvent,
) -> Result<Decision, rekey_journal::Error> {
    let Some(secret) = config.secret_in_vault(&event.vault, &event.secret) else {
        return Ok(Decision::Ignore {
            why: format!(
                "secret {} of vault {} is not configured in a key_vault store",
                event.secret, event.vault
            ),
        });
    };
    Ok(match &event.kind {
        EventKind::NearExpiry | EventKind::Expired => Decision::Rotate {
            secret: secret.to_owned(),
        },
        EventKind::NewVersionCreated => {
            let why = if written_by_rekey(journal, secret, event)? {
                "a version rekey wrote itself".to_owned()
            } else {
                "a new version written outside rekey".to_owned()
            };
            Decision::Ignore { why }
        }
        EventKind::Other(kind) => Decision::Ignore {
            why: format!("event type {kind} starts nothing"),
        },
    })
}

/// Whether the event's version is one a rotation of `secret` wrote (its id is journaled
/// as the outcome of a write or restore step).
fn written_by_rekey<J: JournalRead + JournalScan>(
    journal: &J,
    secret: &str,
    event: &KeyVaultEvent,
) -> Result<bool, rekey_journal::Error> {
    let version = event
        .version
        .clone()
        .or_else(|| {
            event
                .version_id
                .as_deref()
                .and_then(|id| id.trim_end_matches('/').rsplit('/').next())
                .map(str::to_owned)
        })
        .unwrap_or_default()
        .to_ascii_lowercase();
    if version.is_empty() {
        return Ok(false);
    }
    let streams = journal.streams(&StreamFilter {
        subject: Some(secret.to_owned()),
        ..StreamFilter::default()
    })?;
    for s in streams
        .iter()
        .filter(|s| lock::is_rotation_stream(&s.stream_id))
    {
        for e in journal.read_stream(&s.stream_id)? {
            if e.kind != "StepSucceeded" {
                continue;
            }
            let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap_or_default();
            if payload["id"].as_str().is_some_and(|id| {
                id.to_ascii_lowercase()
                    .trim_end_matches('/')
                    .ends_with(&format!("/{version}"))
            }) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Journals that `event` was handled with `outcome`; `false` when it was already.
///
/// # Errors
/// Journal errors other than the duplicate.
pub async fn record<J: JournalAppend>(
    journal: &J,
    event: &KeyVaultEvent,
    outcome: &str,
) -> Result<bool, rekey_journal::Error> {
    let record = EventRecord::KeyVaultEventReceived {
        event_id: event.id.clone(),
        event_type: event.kind.as_str().to_owned(),
        vault: event.vault.clone(),
        secret: event.secret.clone(),
        outcome: outcome.to_owned(),
    };
    let payload = serde_json::to_value(&record).unwrap_or_default();
    let append = Append::new(
        stream_id(&event.id),
        0,
        vec![NewEvent::new("KeyVaultEventReceived", payload)],
    )
    .subject(&event.secret)
    .status("received");
    match journal.append(append).await {
        Ok(_) => Ok(true),
        Err(rekey_journal::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
