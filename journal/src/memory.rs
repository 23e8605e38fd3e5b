//! An in-memory journal with exactly the SQLite journal's rules (both run [`crate::ops`]).
//! For unit tests and simulations: fast, and shared by cloning, so a "crashed" runner's
//! successor sees every event the crashed one appended.

use std::collections::BTreeMap;
use std::future::{Future, ready};
use std::sync::{Arc, Mutex};

use crate::api::{
    Append, Appended, Head, JournalAppend, JournalRead, JournalScan, Lease, Leases, StreamFilter,
    StreamInfo, Timer,
};
use crate::clock::Clock;
use crate::error::Result;
use crate::event::{Digest32, Event};
use crate::ops::{self, DEFAULT_STATUS, HeadUpdate, WriteStore};
use crate::verify::{Verifier, VerifyReport};

#[derive(Debug, Default, Clone)]
struct State {
    events: Vec<Event>,
    streams: BTreeMap<String, StreamInfo>,
    leases: BTreeMap<String, Lease>,
    timers: BTreeMap<(String, String), i64>,
}

/// A journal held in memory; clones share one journal.
#[derive(Debug, Clone)]
pub struct MemoryJournal {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

impl MemoryJournal {
    /// An empty journal stamped by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one write as a transaction: on error, nothing it did remains.
    fn transact<T>(&self, f: impl FnOnce(&mut State, i64) -> Result<T>) -> Result<T> {
        let now = self.clock.now_ms();
        let mut guard = self.state();
        let mut draft = guard.clone();
        let out = f(&mut draft, now)?;
        *guard = draft;
        Ok(out)
    }

    /// Every event, in global order (tests scan it for leaked values).
    pub fn all_events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Recomputes every chain, as [`crate::SqliteJournal::verify`] does.
    pub fn verify(&self) -> VerifyReport {
        let state = self.state();
        let heads = state
            .streams
            .values()
            .map(|s| Head {
                stream_id: s.stream_id.clone(),
                seq: s.head_seq,
                hash: s.head_hash,
            })
            .collect();
        let mut events: Vec<&Event> = state.events.iter().collect();
        events.sort_by(|a, b| (&a.stream_id, a.stream_seq).cmp(&(&b.stream_id, b.stream_seq)));
        let mut verifier = Verifier::new(heads, None);
        for e in events {
            if !verifier.feed(e) {
                break;
            }
        }
        verifier.finish()
    }
}

impl WriteStore for State {
    fn head(&mut self, stream_id: &str) -> Result<Option<(u64, Digest32)>> {
        Ok(self
            .streams
            .get(stream_id)
            .map(|s| (s.head_seq, s.head_hash)))
    }

    fn lease(&mut self, stream_id: &str) -> Result<Option<Lease>> {
        Ok(self.leases.get(stream_id).cloned())
    }

    fn put_lease(&mut self, lease: &Lease) -> Result<()> {
        self.leases.insert(lease.stream_id.clone(), lease.clone());
        Ok(())
    }

    fn insert_event(&mut self, event: &Event) -> Result<u64> {
        let global_seq = self.events.len() as u64 + 1;
        self.events.push(Event {
            global_seq,
            ..event.clone()
        });
        Ok(global_seq)
    }

    fn put_head(&mut self, h: &HeadUpdate<'_>) -> Result<()> {
        let entry = self
            .streams
            .entry(h.stream_id.to_owned())
            .or_insert_with(|| StreamInfo {
                stream_id: h.stream_id.to_owned(),
                subject: h.subject.map(str::to_owned),
                status: DEFAULT_STATUS.to_owned(),
                created_at_ms: h.now_ms,
                updated_at_ms: h.now_ms,
                head_seq: 0,
                head_hash: Digest32::GENESIS,
            });
        if let Some(status) = h.status {
            entry.status = status.to_owned();
        }
        entry.updated_at_ms = h.now_ms;
        entry.head_seq = h.head_seq;
        entry.head_hash = h.head_hash;
        Ok(())
    }

    fn put_timer(&mut self, t: &Timer) -> Result<()> {
        self.timers
            .insert((t.stream_id.clone(), t.name.clone()), t.due_at_ms);
        Ok(())
    }

    fn clear_timer(&mut self, stream_id: &str, name: &str) -> Result<()> {
        self.timers.remove(&(stream_id.to_owned(), name.to_owned()));
        Ok(())
    }
}

/// The reads, done at once: the memory journal never waits, so its futures are ready.
impl MemoryJournal {
    fn read_stream_now(&self, stream_id: &str) -> Result<Vec<Event>> {
        Ok(self
            .state()
            .events
            .iter()
            .filter(|e| e.stream_id == stream_id)
            .cloned()
            .collect())
    }

    fn stream_info_now(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        Ok(self.state().streams.get(stream_id).cloned())
    }

    fn read_after_now(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self
            .state()
            .events
            .iter()
            .skip(after as usize)
            .take(limit)
            .cloned()
            .collect())
    }

    fn streams_now(&self, f: &StreamFilter) -> Result<Vec<StreamInfo>> {
        let mut out: Vec<StreamInfo> = self
            .state()
            .streams
            .values()
            .filter(|s| f.subject.is_none() || s.subject == f.subject)
            .filter(|s| f.status.as_ref().is_none_or(|st| *st == s.status))
            .filter(|s| f.created_from_ms.is_none_or(|t| s.created_at_ms >= t))
            .filter(|s| f.created_until_ms.is_none_or(|t| s.created_at_ms < t))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at_ms, &a.stream_id).cmp(&(b.created_at_ms, &b.stream_id)));
        Ok(out)
    }

    fn due_timers_now(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        let mut due: Vec<Timer> = self
            .state()
            .timers
            .iter()
            .filter(|(_, due)| **due <= now_ms)
            .map(|((stream_id, name), due)| Timer {
                stream_id: stream_id.clone(),
                name: name.clone(),
                due_at_ms: *due,
            })
            .collect();
        due.sort_by(|a, b| (a.due_at_ms, &a.stream_id).cmp(&(b.due_at_ms, &b.stream_id)));
        due.truncate(limit);
        Ok(due)
    }

    fn next_timer_now(&self) -> Result<Option<Timer>> {
        Ok(self.due_timers_now(i64::MAX, 1)?.into_iter().next())
    }
}

impl JournalRead for MemoryJournal {
    fn read_stream(&self, stream_id: &str) -> impl Future<Output = Result<Vec<Event>>> + Send {
        ready(self.read_stream_now(stream_id))
    }

    fn stream_info(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send {
        ready(self.stream_info_now(stream_id))
    }
}

impl JournalScan for MemoryJournal {
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>>> + Send {
        ready(self.read_after_now(after, limit))
    }

    fn streams(&self, f: &StreamFilter) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send {
        ready(self.streams_now(f))
    }

    fn due_timers(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Timer>>> + Send {
        ready(self.due_timers_now(now_ms, limit))
    }

    fn next_timer(&self) -> impl Future<Output = Result<Option<Timer>>> + Send {
        ready(self.next_timer_now())
    }
}

impl JournalAppend for MemoryJournal {
    async fn append(&self, append: Append) -> Result<Appended> {
        self.transact(|s, now| ops::append(s, &append, now))
    }

    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        let payloads = ops::prepare_all(&appends)?;
        // One draft for all of them: a refusal drops the draft, and with it every append.
        self.transact(|s, now| {
            appends
                .iter()
                .zip(payloads)
                .map(|(a, p)| ops::append_prepared(s, a, p, now))
                .collect()
        })
    }
}

impl Leases for MemoryJournal {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        self.transact(|s, now| ops::acquire(s, stream_id, owner, ttl_ms, now))
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        self.transact(|s, now| ops::renew(s, lease, ttl_ms, now))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.transact(|s, now| ops::release(s, lease, now))
    }
}
