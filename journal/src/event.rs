//! Events as written and as read, the hash chain that binds them, and the limits an event
//! must respect. Nothing here touches storage.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::StreamInfo;
use crate::error::{Error, Result};

/// Largest event accepted, type and payload together (TigerStyle: a limit on everything).
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
/// Longest stream id accepted.
pub const STREAM_ID_BYTES_MAX: usize = 128;
/// Longest event type accepted.
pub const KIND_BYTES_MAX: usize = 64;
/// Most events accepted in one append.
pub const APPEND_EVENTS_MAX: usize = 256;

/// A SHA-256 digest in the hash chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest32(pub [u8; 32]);

impl Digest32 {
    /// The `prev_hash` of every stream's first event.
    pub const GENESIS: Digest32 = Digest32([0; 32]);

    /// Lower-case hex, as shown to auditors.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl std::fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl std::fmt::Display for Digest32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest32::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// A change to a stream's durable timer index, made atomically with the event that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerOp {
    /// Arm (or re-arm) the stream's timer `name` to fire at `due_at_ms`.
    Schedule { name: String, due_at_ms: i64 },
    /// Disarm the stream's timer `name` (it fired, or is no longer wanted).
    Clear { name: String },
}

/// An event to append: a type, a JSON object payload, and optionally a timer change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event type, e.g. `StepStarted`.
    pub kind: String,
    /// Version of this event type's payload format.
    pub schema_version: u32,
    /// A JSON object; ids and metadata only, never secret values.
    pub payload: serde_json::Value,
    /// A timer change committed in the same transaction as the event.
    pub timer: Option<TimerOp>,
}

impl NewEvent {
    /// An event of `kind` with payload format version 1 and no timer change.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            schema_version: 1,
            payload,
            timer: None,
        }
    }

    /// The same event, also changing a timer.
    pub fn with_timer(mut self, timer: TimerOp) -> Self {
        self.timer = Some(timer);
        self
    }
}

/// An event as stored: immutable, sequenced and chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the whole journal; strictly increasing across all streams.
    pub global_seq: u64,
    /// The stream (one rotation) this event belongs to.
    pub stream_id: String,
    /// Position in the stream, from 1 without gaps.
    pub stream_seq: u64,
    /// The event type.
    pub kind: String,
    /// Version of the payload format.
    pub schema_version: u32,
    /// When the journal recorded it, Unix milliseconds.
    pub recorded_at_ms: i64,
    /// The payload as canonical JSON text (keys sorted), exactly the bytes hashed.
    pub payload: String,
    /// Hash of the previous event in the stream ([`Digest32::GENESIS`] for the first).
    pub prev_hash: Digest32,
    /// SHA-256 over `prev_hash` and this event's canonical bytes.
    pub hash: Digest32,
}

impl Event {
    /// The payload parsed as JSON.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the stored text is not JSON (only an outside edit does that).
    pub fn payload_json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.payload).map_err(|e| Error::Corrupt {
            stream: self.stream_id.clone(),
            seq: self.stream_seq,
            detail: format!("payload is not JSON: {e}"),
        })
    }

    /// The hash this event should carry, recomputed from its fields.
    pub fn expected_hash(&self) -> Digest32 {
        chain_hash(
            &self.prev_hash,
            &self.stream_id,
            self.stream_seq,
            &self.kind,
            self.schema_version,
            self.recorded_at_ms,
            &self.payload,
        )
    }
}

/// SHA-256 over the previous hash and the event's canonical bytes. Every variable-length
/// field is length-prefixed so that no two different events share an encoding.
pub fn chain_hash(
    prev: &Digest32,
    stream_id: &str,
    stream_seq: u64,
    kind: &str,
    schema_version: u32,
    recorded_at_ms: i64,
    payload: &str,
) -> Digest32 {
    let mut h = Sha256::new();
    h.update(prev.0);
    for field in [stream_id.as_bytes(), kind.as_bytes()] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(stream_seq.to_be_bytes());
    h.update(schema_version.to_be_bytes());
    h.update(recorded_at_ms.to_be_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload.as_bytes());
    Digest32(h.finalize().into())
}

/// Checks a stream id before anything is written.
pub(crate) fn validate_stream_id(stream: &str) -> Result<()> {
    let ok = !stream.is_empty()
        && stream.len() <= STREAM_ID_BYTES_MAX
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEvent {
            stream: stream.chars().take(STREAM_ID_BYTES_MAX).collect(),
            reason: format!(
                "stream id must be 1 to {STREAM_ID_BYTES_MAX} characters of A-Z a-z 0-9 - _ . : /"
            ),
        })
    }
}

/// Checks an event and returns its canonical payload text.
pub(crate) fn canonical_payload(stream: &str, event: &NewEvent) -> Result<String> {
    let invalid = |reason: String| Error::InvalidEvent {
        stream: stream.to_owned(),
        reason,
    };
    let kind_ok = !event.kind.is_empty()
        && event.kind.len() <= KIND_BYTES_MAX
        && event
            .kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !kind_ok {
        return Err(invalid(format!(
            "event type {:?} must be 1 to {KIND_BYTES_MAX} characters of A-Z a-z 0-9 _ .",
            event.kind.chars().take(KIND_BYTES_MAX).collect::<String>()
        )));
    }
    if !event.payload.is_object() {
        return Err(invalid(format!(
            "payload of {} must be a JSON object",
            event.kind
        )));
    }
    if let Some(TimerOp::Schedule { name, .. } | TimerOp::Clear { name }) = &event.timer
        && (name.is_empty() || name.len() > KIND_BYTES_MAX)
    {
        return Err(invalid(format!(
            "timer name must be 1 to {KIND_BYTES_MAX} bytes"
        )));
    }
    // serde_json's default map is a BTreeMap, so this text has sorted keys: canonical.
    let text = event.payload.to_string();
    let size = text.len() + event.kind.len();
    if size > EVENT_BYTES_MAX {
        return Err(Error::EventTooLarge {
            stream: stream.to_owned(),
            kind: event.kind.clone(),
            size,
            max: EVENT_BYTES_MAX,
        });
    }
    Ok(text)
}

/// Checks that `events` continue a stream whose last event was `(last_seq, last_hash)`:
/// contiguous sequences, linked hashes, and each hash matching its event. Used on every
/// read, so a runner is never handed history that was edited outside rekey.
pub(crate) fn check_links(
    mut last_seq: u64,
    mut last_hash: Digest32,
    events: &[Event],
) -> Result<()> {
    for e in events {
        let detail = if e.stream_seq != last_seq + 1 {
            Some(format!(
                "sequence {} follows {} (expected {})",
                e.stream_seq,
                last_seq,
                last_seq + 1
            ))
        } else if e.prev_hash != last_hash {
            Some(format!(
                "prev_hash {} does not match the previous event's hash {}",
                e.prev_hash, last_hash
            ))
        } else if e.expected_hash() != e.hash {
            Some("event content does not match its hash (edited)".to_owned())
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(Error::Corrupt {
                stream: e.stream_id.clone(),
                seq: e.stream_seq,
                detail,
            });
        }
        last_seq = e.stream_seq;
        last_hash = e.hash;
    }
    Ok(())
}

/// Checks that `events`, read in one snapshot with the stream's summary `info`, are the
/// stream's whole, intact history: linked from genesis, and ending where the head record
/// (written in the same transaction as the events it names) says.
pub(crate) fn check_stream(
    stream_id: &str,
    info: Option<&StreamInfo>,
    events: &[Event],
) -> Result<()> {
    check_links(0, Digest32::GENESIS, events)?;
    let (last_seq, last_hash) = events
        .last()
        .map_or((0, Digest32::GENESIS), |e| (e.stream_seq, e.hash));
    if let Some(info) = info
        && (info.head_seq != last_seq || info.head_hash != last_hash)
    {
        return Err(Error::Corrupt {
            stream: stream_id.to_owned(),
            seq: last_seq + 1,
            detail: format!(
                "the stream's events end at sequence {last_seq} but its head record says {}",
                info.head_seq
            ),
        });
    }
    Ok(())
}
