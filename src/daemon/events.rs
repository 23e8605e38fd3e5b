//! What the daemon does with a Key Vault event from the webhook: which configured secret
//! it is about, whether it starts a rotation, and its journal record, which also makes
//! redeliveries of the same event id harmless (Event Grid delivers at least once).
//!
//! Any event id can be recorded: an id that is not 1 to 100 characters of the journal's
//! stream-id alphabet is hashed into its stream id, and the record quotes short excerpts
//! of what the event says, so an odd event can never fail to be recorded and be delivered
//! again forever.
//!
//! Order: the rotation is requested first, the event recorded second. Recording first
//! could lose the trigger in a crash between the two. Requesting first could repeat the
//! request when the record fails, so the request is idempotent per event: the lock stream
//! journals every request with its actor, the event's stream id, and a redelivered event
//! whose request is found there is recorded without a second one.

use rekey_journal::{Append, JournalAppend, JournalRead, JournalScan, NewEvent, StreamFilter};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::runner::{Requested, lock};
use crate::text::excerpt;
use crate::triggers::eventgrid::{EventKind, KeyVaultEvent};

/// Longest event id kept as it is in its stream id (`eventgrid:<id>`); longer ids, and ids
/// with other characters than the journal allows in a stream id, are hashed.
pub const PLAIN_ID_CHARS_MAX: usize = 100;
/// Characters of each field an event record quotes.
pub const RECORD_FIELD_CHARS_MAX: usize = 200;
const HASHED: &str = "sha256:";

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rotate this configured secret.
    Rotate { secret: String },
    /// Acknowledge and do nothing, for this reason.
    Ignore { why: String },
    /// Acknowledge and do nothing: no `key_vault` store has the event's vault name (a
    /// `vault_name` may be missing), which the operator should hear about.
    UnknownVault { why: String },
}

/// Most unknown vault names the daemon remembers having logged; past it, one more line
/// says further ones go unlogged (events are still journaled), so a sender cannot grow
/// the set without bound.
pub const UNKNOWN_VAULTS_LOGGED_MAX: usize = 1_000;

/// Whether an event for a vault no store names is to be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownVaultLog {
    /// The first event for this vault name: log it.
    First,
    /// Logged before: stay quiet.
    Again,
    /// The first name past [`UNKNOWN_VAULTS_LOGGED_MAX`]: say that no more are logged.
    TooMany,
}

/// The unknown vault names already logged (without regard to case, as Key Vault names
/// are), so each is logged once however many events name it.
#[derive(Debug, Default)]
pub struct UnknownVaults {
    logged: std::collections::HashSet<String>,
    full: bool,
}

impl UnknownVaults {
    /// Whether to log an event for the unknown vault `vault`.
    pub fn log(&mut self, vault: &str) -> UnknownVaultLog {
        let key = short(vault).to_ascii_lowercase();
        if self.logged.contains(&key) || self.full {
            return UnknownVaultLog::Again;
        }
        if self.logged.len() >= UNKNOWN_VAULTS_LOGGED_MAX {
            self.full = true;
            return UnknownVaultLog::TooMany;
        }
        self.logged.insert(key);
        UnknownVaultLog::First
    }
}

/// The vault names events are matched against, for a log line: `name (provider P)` for
/// each `key_vault` store, or `provider P: none (set vault_name)`.
pub fn known_vaults(config: &Config) -> String {
    let vaults = config.event_vaults();
    if vaults.is_empty() {
        return "none (no key_vault store is configured)".to_owned();
    }
    vaults
        .iter()
        .map(|(provider, name)| match name {
            Some(name) => format!("{name} (provider {provider})"),
            None => format!("provider {provider}: none (set vault_name)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
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

/// The dedup stream of an event id: `eventgrid:<id>` when the id is 1 to
/// [`PLAIN_ID_CHARS_MAX`] characters of A-Z a-z 0-9 - _ . : / (Event Grid's GUIDs are),
/// else `eventgrid:sha256:<hex of the id>`. Ids that look like a hashed one are hashed too,
/// so no two ids share a stream. It is also the actor of the rotation the event requests.
pub fn stream_id(event_id: &str) -> String {
    let fits = (1..=PLAIN_ID_CHARS_MAX).contains(&event_id.len())
        && event_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
        && !event_id.starts_with(HASHED);
    if fits {
        format!("eventgrid:{event_id}")
    } else {
        format!(
            "eventgrid:{HASHED}{}",
            hex::encode(openssl::sha::sha256(event_id.as_bytes()))
        )
    }
}

/// The request an earlier delivery of the event whose stream id is `actor` made for a
/// secret locked by `lock_key`, if its request is in the lock stream (the record of that
/// delivery failed, or the process died before it).
///
/// # Errors
/// Journal errors.
pub async fn requested_before<J: JournalRead>(
    journal: &J,
    lock_key: &str,
    actor: &str,
) -> Result<Option<Requested>, rekey_journal::Error> {
    let events = journal.read_stream(&lock::stream_id(lock_key)).await?;
    Ok(events.iter().find_map(|e| {
        match serde_json::from_str::<lock::LockEvent>(&e.payload).ok()? {
            lock::LockEvent::Opened {
                rotation_id,
                actor: a,
                ..
            } if a == actor => Some(Requested::Started { rotation_id }),
            lock::LockEvent::Coalesced { into, actor: a, .. } if a == actor => {
                Some(Requested::Coalesced { into })
            }
            _ => None,
        }
    }))
}

/// Whether this event id was handled before.
///
/// # Errors
/// Journal errors.
pub async fn seen<J: JournalRead>(
    journal: &J,
    event_id: &str,
) -> Result<bool, rekey_journal::Error> {
    Ok(journal.stream_info(&stream_id(event_id)).await?.is_some())
}

/// Decides what `event` asks for.
///
/// # Errors
/// Journal errors (looking for rekey's own versions).
pub async fn decide<J: JournalRead + JournalScan>(
    config: &Config,
    journal: &J,
    event: &KeyVaultEvent,
) -> Result<Decision, rekey_journal::Error> {
    let Some(secret) = config.secret_in_vault(&event.vault, &event.secret) else {
        let (secret, vault) = (short(&event.secret), short(&event.vault));
        let known = config
            .event_vaults()
            .iter()
            .any(|(_, name)| name.is_some_and(|n| n.eq_ignore_ascii_case(&event.vault)));
        return Ok(if known {
            Decision::Ignore {
                why: format!(
                    "secret {secret} of vault {vault} is not configured in a key_vault store"
                ),
            }
        } else {
            Decision::UnknownVault {
                why: format!(
                    "vault {vault} is not configured: no key_vault store has this vault_name"
                ),
            }
        });
    };
    Ok(match &event.kind {
        EventKind::NearExpiry | EventKind::Expired => Decision::Rotate {
            secret: secret.to_owned(),
        },
        EventKind::NewVersionCreated => {
            let why = if written_by_rekey(journal, secret, event).await? {
                "a version rekey wrote itself".to_owned()
            } else {
                "a new version written outside rekey".to_owned()
            };
            Decision::Ignore { why }
        }
        EventKind::Other(kind) => Decision::Ignore {
            why: format!("event type {} starts nothing", short(kind)),
        },
    })
}

/// Whether the event's version is one a rotation of `secret` wrote (its id is journaled
/// as the outcome of a write or restore step).
async fn written_by_rekey<J: JournalRead + JournalScan>(
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
    let streams = journal
        .streams(&StreamFilter {
            subject: Some(secret.to_owned()),
            ..StreamFilter::default()
        })
        .await?;
    for s in streams
        .iter()
        .filter(|s| lock::is_rotation_stream(&s.stream_id))
    {
        for e in journal.read_stream(&s.stream_id).await? {
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

/// What the event says, shortened to fit a record or a log line.
pub fn short(text: &str) -> String {
    excerpt(text, RECORD_FIELD_CHARS_MAX)
}

/// Journals that `event` was handled with `outcome`; `false` when it was already. Every
/// field is an excerpt, so the record fits the journal whatever the event carries.
///
/// # Errors
/// Journal errors other than the duplicate.
pub async fn record<J: JournalAppend>(
    journal: &J,
    event: &KeyVaultEvent,
    outcome: &str,
) -> Result<bool, rekey_journal::Error> {
    let record = EventRecord::KeyVaultEventReceived {
        event_id: short(&event.id),
        event_type: short(event.kind.as_str()),
        vault: short(&event.vault),
        secret: short(&event.secret),
        outcome: short(outcome),
    };
    let payload = serde_json::to_value(&record).unwrap_or_default();
    let append = Append::new(
        stream_id(&event.id),
        0,
        vec![NewEvent::new("KeyVaultEventReceived", payload)],
    )
    .subject(short(&event.secret))
    .status("received");
    match journal.append(append).await {
        Ok(_) => Ok(true),
        Err(rekey_journal::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rekey_journal::{ManualClock, MemoryJournal};

    use super::*;

    fn event(id: &str) -> KeyVaultEvent {
        KeyVaultEvent {
            id: id.to_owned(),
            kind: EventKind::NearExpiry,
            vault: "kv1".to_owned(),
            secret: "payments".to_owned(),
            version: None,
            version_id: None,
            exp_s: None,
        }
    }

    fn journal() -> MemoryJournal {
        MemoryJournal::new(Arc::new(ManualClock::new(1_000)))
    }

    /// Records `e` twice: the first is journaled, the second is recognised.
    fn recorded_once(e: &KeyVaultEvent) -> (bool, bool) {
        let j = journal();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = record(&j, e, "ignored: test").await;
            let again = record(&j, e, "ignored: test").await;
            (first.unwrap(), again.unwrap())
        })
    }

    #[test]
    fn ids_that_fit_keep_their_stream_id_and_the_rest_are_hashed() {
        let guid = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
        assert_eq!(stream_id(guid), format!("eventgrid:{guid}"));
        let longest = "a".repeat(PLAIN_ID_CHARS_MAX);
        assert_eq!(stream_id(&longest), format!("eventgrid:{longest}"));
        let long = "a".repeat(PLAIN_ID_CHARS_MAX + 1);
        let hashed = "eventgrid:sha256:";
        for odd in [&long[..], "id with spaces", "ünï", "a\u{0}b", "sha256:00"] {
            let id = stream_id(odd);
            assert!(
                id.starts_with(hashed) && id.len() == hashed.len() + 64,
                "{id}"
            );
        }
        assert_ne!(stream_id("a b"), stream_id("a  b"));
    }

    #[test]
    fn odd_ids_and_huge_fields_are_recorded_once() {
        let huge = "x".repeat(1 << 20);
        for id in ["id with spaces", "ünïcødé", "tab\there", "\u{1b}[2J", &huge] {
            assert_eq!(recorded_once(&event(id)), (true, false), "{}", short(id));
        }
        let mut fat = event("fat");
        (fat.vault, fat.secret) = (huge.clone(), huge.clone());
        fat.kind = EventKind::Other(huge.clone());
        assert_eq!(recorded_once(&fat), (true, false));
    }

    /// Each unknown vault name is logged once in any case; past the limit one line says
    /// the rest go unlogged, and the names logged before stay quiet.
    #[test]
    fn unknown_vaults_are_logged_once_per_name_up_to_a_limit() {
        let mut seen = UnknownVaults::default();
        assert_eq!(seen.log("other-vault"), UnknownVaultLog::First);
        assert_eq!(seen.log("Other-Vault"), UnknownVaultLog::Again);
        assert_eq!(seen.log("other-vault"), UnknownVaultLog::Again);
        for i in 1..UNKNOWN_VAULTS_LOGGED_MAX {
            assert_eq!(seen.log(&format!("v{i}")), UnknownVaultLog::First);
        }
        assert_eq!(seen.log("one-too-many"), UnknownVaultLog::TooMany);
        assert_eq!(seen.log("two-too-many"), UnknownVaultLog::Again);
        assert_eq!(seen.log("OTHER-VAULT"), UnknownVaultLog::Again);
        assert_eq!(seen.logged.len(), UNKNOWN_VAULTS_LOGGED_MAX);
    }

    proptest! {
        #[test]
        fn any_event_id_is_recorded_once(id in any::<String>()) {
            prop_assert_eq!(recorded_once(&event(&id)), (true, false));
        }
    }
}
