//! The write rules, written once for every engine: an engine supplies a [`WriteStore`]
//! (a transaction over its tables) and these functions decide. Keeping the rules here is
//! what makes the in-memory journal behave exactly like the SQLite one.

use crate::api::{Append, Appended, Fence, Lease, Timer};
use crate::error::{Error, Result};
use crate::event::{
    APPEND_EVENTS_MAX, Digest32, Event, TimerOp, canonical_payload, chain_hash, validate_stream_id,
};

/// Primitive reads and writes an engine offers inside one transaction.
pub(crate) trait WriteStore {
    /// The stream's last sequence and hash, if it exists.
    fn head(&mut self, stream_id: &str) -> Result<Option<(u64, Digest32)>>;
    /// The stream's lease row, live or not.
    fn lease(&mut self, stream_id: &str) -> Result<Option<Lease>>;
    /// Inserts or replaces the stream's lease row.
    fn put_lease(&mut self, lease: &Lease) -> Result<()>;
    /// Inserts an event and returns the global sequence it received.
    fn insert_event(&mut self, event: &Event) -> Result<u64>;
    /// Creates or advances the stream's summary row.
    fn put_head(&mut self, head: &HeadUpdate<'_>) -> Result<()>;
    /// Arms or re-arms a timer.
    fn put_timer(&mut self, timer: &Timer) -> Result<()>;
    /// Disarms a timer (no error when it was not armed).
    fn clear_timer(&mut self, stream_id: &str, name: &str) -> Result<()>;
}

/// A change to a stream's summary row.
#[derive(Debug)]
pub(crate) struct HeadUpdate<'a> {
    pub stream_id: &'a str,
    pub created: bool,
    pub subject: Option<&'a str>,
    pub status: Option<&'a str>,
    pub now_ms: i64,
    pub head_seq: u64,
    pub head_hash: Digest32,
}

/// The status label a stream gets when its first append names none.
pub const DEFAULT_STATUS: &str = "open";

/// Checks what an append carries on its own and encodes its payloads as canonical JSON:
/// the part of an append that needs no store, done by the caller before a writer queue.
pub(crate) fn prepare(a: &Append) -> Result<Vec<String>> {
    validate_stream_id(&a.stream_id)?;
    if a.events.is_empty() || a.events.len() > APPEND_EVENTS_MAX {
        return Err(Error::InvalidEvent {
            stream: a.stream_id.clone(),
            reason: format!(
                "an append carries 1 to {APPEND_EVENTS_MAX} events, not {}",
                a.events.len()
            ),
        });
    }
    a.events
        .iter()
        .map(|e| canonical_payload(&a.stream_id, e))
        .collect()
}

/// [`prepare`] for each append of an atomic multi-stream append, which names each
/// stream once (two appends to one stream would each expect the same head).
pub(crate) fn prepare_all(appends: &[Append]) -> Result<Vec<Vec<String>>> {
    for (i, a) in appends.iter().enumerate() {
        if appends[..i].iter().any(|b| b.stream_id == a.stream_id) {
            return Err(Error::InvalidEvent {
                stream: a.stream_id.clone(),
                reason: "the stream appears twice in one atomic append; give it one append \
                         carrying all its events"
                    .into(),
            });
        }
    }
    appends.iter().map(prepare).collect()
}

/// Appends under the journal's rules (see [`crate::JournalAppend::append`]).
pub(crate) fn append(store: &mut impl WriteStore, a: &Append, now_ms: i64) -> Result<Appended> {
    let payloads = prepare(a)?;
    append_prepared(store, a, payloads, now_ms)
}

/// [`append`] with the payloads [`prepare`] made of `a`.
pub(crate) fn append_prepared(
    store: &mut impl WriteStore,
    a: &Append,
    payloads: Vec<String>,
    now_ms: i64,
) -> Result<Appended> {
    check_fence(store, &a.stream_id, a.fence.as_ref(), now_ms)?;
    let head = store.head(&a.stream_id)?;
    let (mut seq, mut hash) = head.unwrap_or((0, Digest32::GENESIS));
    if seq != a.expected_seq {
        return Err(Error::Conflict {
            stream: a.stream_id.clone(),
            expected: a.expected_seq,
            actual: seq,
        });
    }

    let first_seq = seq + 1;
    let mut last_global_seq = 0;
    for (new, payload) in a.events.iter().zip(payloads) {
        seq += 1;
        let event_hash = chain_hash(
            &hash,
            &a.stream_id,
            seq,
            &new.kind,
            new.schema_version,
            now_ms,
            &payload,
        );
        let event = Event {
            global_seq: 0,
            stream_id: a.stream_id.clone(),
            stream_seq: seq,
            kind: new.kind.clone(),
            schema_version: new.schema_version,
            recorded_at_ms: now_ms,
            payload,
            prev_hash: hash,
            hash: event_hash,
        };
        last_global_seq = store.insert_event(&event)?;
        hash = event_hash;
        match &new.timer {
            Some(TimerOp::Schedule { name, due_at_ms }) => store.put_timer(&Timer {
                stream_id: a.stream_id.clone(),
                name: name.clone(),
                due_at_ms: *due_at_ms,
            })?,
            Some(TimerOp::Clear { name }) => store.clear_timer(&a.stream_id, name)?,
            None => {}
        }
    }
    store.put_head(&HeadUpdate {
        stream_id: &a.stream_id,
        created: head.is_none(),
        subject: a.subject.as_deref(),
        status: a.status.as_deref(),
        now_ms,
        head_seq: seq,
        head_hash: hash,
    })?;
    Ok(Appended {
        first_seq,
        last_seq: seq,
        last_global_seq,
        head_hash: hash,
    })
}

/// A fenced append needs the current, live lease; an unfenced one needs no live lease.
fn check_fence(
    store: &mut impl WriteStore,
    stream_id: &str,
    fence: Option<&Fence>,
    now_ms: i64,
) -> Result<()> {
    let lease = store.lease(stream_id)?;
    match (lease, fence) {
        (None, None) => Ok(()),
        (Some(l), None) if l.expires_at_ms <= now_ms => Ok(()),
        (Some(l), None) => Err(Error::LeaseHeld {
            stream: stream_id.to_owned(),
            holder: l.owner,
            expires_at_ms: l.expires_at_ms,
        }),
        (None, Some(f)) => Err(Error::StaleFence {
            stream: stream_id.to_owned(),
            presented: f.token,
            current: 0,
            holder: "nobody".to_owned(),
        }),
        (Some(l), Some(f)) => current_lease(stream_id, l, f, now_ms).map(|_| ()),
    }
}

/// Checks that `fence` is the live lease `l`, and returns it.
fn current_lease(stream_id: &str, l: Lease, f: &Fence, now_ms: i64) -> Result<Lease> {
    if l.token != f.token || l.owner != f.owner {
        return Err(Error::StaleFence {
            stream: stream_id.to_owned(),
            presented: f.token,
            current: l.token,
            holder: l.owner,
        });
    }
    if l.expires_at_ms <= now_ms {
        return Err(Error::LeaseExpired {
            stream: stream_id.to_owned(),
            token: l.token,
            expired_at_ms: l.expires_at_ms,
        });
    }
    Ok(l)
}

fn check_ttl(stream_id: &str, ttl_ms: i64) -> Result<()> {
    if ttl_ms <= 0 {
        return Err(Error::InvalidEvent {
            stream: stream_id.to_owned(),
            reason: format!("a lease needs a positive duration, not {ttl_ms} ms"),
        });
    }
    Ok(())
}

/// Takes a stream's lease (see [`crate::Leases::acquire`]).
pub(crate) fn acquire(
    store: &mut impl WriteStore,
    stream_id: &str,
    owner: &str,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<Lease> {
    validate_stream_id(stream_id)?;
    check_ttl(stream_id, ttl_ms)?;
    if owner.is_empty() {
        return Err(Error::InvalidEvent {
            stream: stream_id.to_owned(),
            reason: "a lease owner must be named".to_owned(),
        });
    }
    let token = match store.lease(stream_id)? {
        Some(l) if l.expires_at_ms > now_ms && l.owner != owner => {
            return Err(Error::LeaseHeld {
                stream: stream_id.to_owned(),
                holder: l.owner,
                expires_at_ms: l.expires_at_ms,
            });
        }
        // Re-acquiring one's own live lease keeps its token: appends in flight stay valid.
        Some(l) if l.expires_at_ms > now_ms => l.token,
        Some(l) => l.token + 1,
        None => 1,
    };
    let lease = Lease {
        stream_id: stream_id.to_owned(),
        owner: owner.to_owned(),
        token,
        expires_at_ms: now_ms.saturating_add(ttl_ms),
    };
    store.put_lease(&lease)?;
    Ok(lease)
}

/// Extends a lease still held (see [`crate::Leases::renew`]).
pub(crate) fn renew(
    store: &mut impl WriteStore,
    lease: &Lease,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<Lease> {
    check_ttl(&lease.stream_id, ttl_ms)?;
    let current = held(store, lease, now_ms)?;
    let renewed = Lease {
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        ..current
    };
    store.put_lease(&renewed)?;
    Ok(renewed)
}

/// Gives a lease up (see [`crate::Leases::release`]).
pub(crate) fn release(store: &mut impl WriteStore, lease: &Lease, now_ms: i64) -> Result<()> {
    match held(store, lease, now_ms) {
        Ok(current) => store.put_lease(&Lease {
            expires_at_ms: now_ms,
            ..current
        }),
        // Already expired and nobody took over: there is nothing left to give up.
        Err(Error::LeaseExpired { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn held(store: &mut impl WriteStore, lease: &Lease, now_ms: i64) -> Result<Lease> {
    let fence = lease.fence();
    match store.lease(&lease.stream_id)? {
        Some(l) => current_lease(&lease.stream_id, l, &fence, now_ms),
        None => Err(Error::StaleFence {
            stream: lease.stream_id.clone(),
            presented: lease.token,
            current: 0,
            holder: "nobody".to_owned(),
        }),
    }
}
