//! The narrow interfaces the rest of rekey sees. Code asks only for what it uses:
//! a runner appends and reads one stream; a follower or an exporter scans; a daemon
//! looks up due timers; leases fence writers. Every method is async, reads as well as
//! writes, so no engine blocks the caller's runtime while it waits on storage.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::event::{Digest32, Event, NewEvent};
use crate::feed::{FeedCursor, FeedPage};

/// A writer's proof that it holds a stream's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Who holds the lease (a runner id).
    pub owner: String,
    /// The fencing token; it grows on every takeover, so an older one is stale.
    pub token: u64,
}

/// One append: events for one stream, conditional on the stream's current sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The stream to append to; created by its first append.
    pub stream_id: String,
    /// The sequence of the stream's last event as the writer saw it (0 for a new stream).
    pub expected_seq: u64,
    /// The writer's lease, required when the stream has a live lease.
    pub fence: Option<Fence>,
    /// What the stream is about (for rekey, the secret's name); recorded on creation.
    pub subject: Option<String>,
    /// The stream's new status label (e.g. `open`, `completed`), if it changes.
    pub status: Option<String>,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
}

impl Append {
    /// Appends `events` to `stream_id` after sequence `expected_seq`.
    pub fn new(stream_id: impl Into<String>, expected_seq: u64, events: Vec<NewEvent>) -> Self {
        Self {
            stream_id: stream_id.into(),
            expected_seq,
            fence: None,
            subject: None,
            status: None,
            events,
        }
    }

    /// The same append, fenced by `fence`.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The same append, recording the stream's subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The same append, setting the stream's status label.
    pub fn status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }
}

/// What a durable append produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the first event written.
    pub first_seq: u64,
    /// Stream sequence of the last event written (the new expected sequence).
    pub last_seq: u64,
    /// Global sequence of the last event written.
    pub last_global_seq: u64,
    /// The stream's new head hash.
    pub head_hash: Digest32,
}

/// A stream's summary row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub stream_id: String,
    pub subject: Option<String>,
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub head_seq: u64,
    pub head_hash: Digest32,
}

/// Which streams to list; every field narrows, `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    pub subject: Option<String>,
    pub status: Option<String>,
    /// Created at or after this time (ms).
    pub created_from_ms: Option<i64>,
    /// Created before this time (ms).
    pub created_until_ms: Option<i64>,
}

/// A stream's last event, exported so a later `verify` can detect truncation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub stream_id: String,
    pub seq: u64,
    pub hash: Digest32,
}

/// A live or past lease on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub stream_id: String,
    pub owner: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

impl Lease {
    /// The fence to present on appends made under this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            owner: self.owner.clone(),
            token: self.token,
        }
    }
}

/// An armed durable timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub stream_id: String,
    pub name: String,
    pub due_at_ms: i64,
}

/// Reads one stream.
pub trait JournalRead {
    /// Every event of `stream_id` in order, links checked; empty when the stream does not exist.
    ///
    /// # Errors
    /// [`crate::Error::Corrupt`] when the stored events do not chain.
    fn read_stream(&self, stream_id: &str) -> impl Future<Output = Result<Vec<Event>>> + Send;

    /// The events of each of `stream_ids`, in the order asked, each as
    /// [`JournalRead::read_stream`] returns it, all from one snapshot where the engine has
    /// them. For folding many streams (history, reports): the engines answer the whole list
    /// in one storage round trip instead of one per stream.
    ///
    /// # Errors
    /// [`crate::Error::Corrupt`] for the first stream whose stored events do not chain.
    fn read_streams(
        &self,
        stream_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Vec<Event>>>> + Send
    where
        Self: Sync,
    {
        async move {
            let mut all = Vec::with_capacity(stream_ids.len());
            for id in stream_ids {
                all.push(self.read_stream(id).await?);
            }
            Ok(all)
        }
    }

    /// The stream's summary, if it exists.
    ///
    /// # Errors
    /// Storage errors only.
    fn stream_info(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send;
}

/// Appends, durably and conditionally.
pub trait JournalAppend {
    /// Appends when the stream is at `expected_seq` and the fence (if any) is current;
    /// resolves only after the events are durable.
    ///
    /// # Errors
    /// [`crate::Error::Conflict`], [`crate::Error::StaleFence`], [`crate::Error::LeaseExpired`],
    /// [`crate::Error::LeaseHeld`], [`crate::Error::InvalidEvent`], [`crate::Error::EventTooLarge`].
    fn append(&self, append: Append) -> impl Future<Output = Result<Appended>> + Send;

    /// Appends to several streams in one transaction: every append lands or none does, and
    /// the call resolves only after all are durable. Each is checked as
    /// [`JournalAppend::append`] checks it, and the first refusal refuses them all. For a
    /// change that spans streams (a lock and the rotation it opens), so no crash can leave
    /// half of it; it also costs one durable commit instead of one per stream.
    ///
    /// # Errors
    /// As [`JournalAppend::append`], for the first append refused; and
    /// [`crate::Error::InvalidEvent`] when a stream appears twice (give it one append).
    fn append_all(
        &self,
        appends: Vec<Append>,
    ) -> impl Future<Output = Result<Vec<Appended>>> + Send;
}

/// Scans across streams: followers, exporters, status views, the timer wheel.
pub trait JournalScan {
    /// Up to `limit` events with a global sequence above `after`, in global order.
    /// Followers of the feed use [`JournalScan::read_feed`], whose cursor does not tie them
    /// to this numbering.
    ///
    /// # Errors
    /// Storage errors only.
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>>> + Send;

    /// The global feed: up to `limit` events after `cursor`, in feed order, and the cursor to
    /// read on from. A follower that reads page after page from the returned cursors gets
    /// every event exactly once, each stream's in sequence order, even when a write commits
    /// late (never skip a gap on a timer: there are none to skip). An empty page means
    /// nothing more has committed yet.
    ///
    /// # Errors
    /// Storage errors only.
    fn read_feed(
        &self,
        cursor: &FeedCursor,
        limit: usize,
    ) -> impl Future<Output = Result<FeedPage>> + Send {
        let read = self.read_after(cursor.global_seq(), limit);
        let cursor = cursor.clone();
        async move {
            let events = read.await?;
            Ok(FeedPage {
                next: cursor.past(&events),
                events,
            })
        }
    }

    /// Streams matching `filter`, oldest first.
    ///
    /// # Errors
    /// Storage errors only.
    fn streams(
        &self,
        filter: &StreamFilter,
    ) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;

    /// Timers due at or before `now_ms`, earliest first, at most `limit`.
    ///
    /// # Errors
    /// Storage errors only.
    fn due_timers(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Timer>>> + Send;

    /// The earliest armed timer, if any (the daemon sleeps until then).
    ///
    /// # Errors
    /// Storage errors only.
    fn next_timer(&self) -> impl Future<Output = Result<Option<Timer>>> + Send;
}

/// Per-stream leases with fencing tokens.
pub trait Leases {
    /// Takes the lease for `ttl_ms` when it is free, expired, or already `owner`'s.
    /// A takeover from another owner gets a larger token.
    ///
    /// # Errors
    /// [`crate::Error::LeaseHeld`] while another owner's lease is live.
    fn acquire(
        &self,
        stream_id: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Lease>> + Send;

    /// Extends a lease this owner still holds.
    ///
    /// # Errors
    /// [`crate::Error::StaleFence`] or [`crate::Error::LeaseExpired`] when it was lost.
    fn renew(&self, lease: &Lease, ttl_ms: i64) -> impl Future<Output = Result<Lease>> + Send;

    /// Gives the lease up (its token is kept, so tokens never repeat).
    ///
    /// # Errors
    /// [`crate::Error::StaleFence`] when the lease had already passed to another owner.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<()>> + Send;
}
