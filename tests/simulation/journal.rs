//! Crash points in the journal. [`SimJournal`] wraps a `MemoryJournal` and yields once
//! before and once after every append and lease operation, so a harness that drops a
//! future "crashes" the runner either before an append reached the journal or after it
//! was durable but before the runner heard so. The [`Probe`] tells the harness where a
//! future is parked, which is all it needs to choose crash points and stale runners.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use rekey::journal::{
    Append, Appended, Event, Fence, JournalAppend, JournalRead, JournalScan, Lease, Leases,
    MemoryJournal, Result, StreamFilter, StreamInfo, Timer,
};

/// Locks a mutex, ignoring poisoning (a panicking seed is reported, not propagated).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a future was parked when it last returned `Pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// About to append; `fenced` appends carry a lease token.
    BeforeAppend { fenced: bool },
    /// The append is durable; the runner has not seen the answer yet.
    AfterAppend,
    /// Around an acquire, renew or release.
    Lease,
    /// A provider is about to apply an effect.
    BeforeEffect,
    /// A provider applied an effect; the response has not reached the runner.
    AfterEffect,
    /// A provider is about to inspect a target (reconcile, read a value).
    Inspect,
    /// A slow call.
    Slow,
}

/// Shared by the journal wrapper and the fake providers.
#[derive(Debug, Default)]
pub struct Probe {
    parked: Mutex<Option<Point>>,
}

impl Probe {
    /// Where the future polled last is parked, if it is.
    pub fn take(&self) -> Option<Point> {
        lock(&self.parked).take()
    }
}

/// A future that is pending exactly once, recording `point` in `probe`.
pub fn yield_at(probe: &Probe, point: Point) -> YieldAt<'_> {
    YieldAt {
        probe,
        point,
        yielded: false,
    }
}

#[derive(Debug)]
pub struct YieldAt<'a> {
    probe: &'a Probe,
    point: Point,
    yielded: bool,
}

impl Future for YieldAt<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.yielded {
            return Poll::Ready(());
        }
        this.yielded = true;
        *lock(&this.probe.parked) = Some(this.point);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One successful append, as the fencing check (I6) sees it.
#[derive(Debug, Clone)]
pub struct AppendRecord {
    pub stream: String,
    pub first_seq: u64,
    pub fence: Option<Fence>,
}

/// What the wrapper observed.
#[derive(Debug, Default)]
pub struct JournalLog {
    pub appends: Vec<AppendRecord>,
    /// The last lease granted per stream (by acquire or renew).
    pub leases: BTreeMap<String, Lease>,
}

/// A `MemoryJournal` with a crash point before and after every write.
#[derive(Debug, Clone)]
pub struct SimJournal {
    memory: MemoryJournal,
    probe: Arc<Probe>,
    log: Arc<Mutex<JournalLog>>,
}

impl SimJournal {
    pub fn new(memory: MemoryJournal, probe: Arc<Probe>) -> Self {
        Self {
            memory,
            probe,
            log: Arc::default(),
        }
    }

    pub fn log(&self) -> MutexGuard<'_, JournalLog> {
        lock(&self.log)
    }

    async fn leased(&self, op: impl Future<Output = Result<Lease>>) -> Result<Lease> {
        yield_at(&self.probe, Point::Lease).await;
        let lease = op.await?;
        self.log()
            .leases
            .insert(lease.stream_id.clone(), lease.clone());
        yield_at(&self.probe, Point::Lease).await;
        Ok(lease)
    }
}

impl JournalRead for SimJournal {
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Event>> {
        self.memory.read_stream(stream_id).await
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        self.memory.stream_info(stream_id).await
    }
}

impl JournalScan for SimJournal {
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.memory.read_after(after, limit).await
    }

    async fn streams(&self, filter: &StreamFilter) -> Result<Vec<StreamInfo>> {
        self.memory.streams(filter).await
    }

    async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        self.memory.due_timers(now_ms, limit).await
    }

    async fn next_timer(&self) -> Result<Option<Timer>> {
        self.memory.next_timer().await
    }
}

impl JournalAppend for SimJournal {
    async fn append(&self, append: Append) -> Result<Appended> {
        let fenced = append.fence.is_some();
        yield_at(&self.probe, Point::BeforeAppend { fenced }).await;
        let stream = append.stream_id.clone();
        let fence = append.fence.clone();
        let appended = self.memory.append(append).await?;
        self.log().appends.push(AppendRecord {
            stream,
            first_seq: appended.first_seq,
            fence,
        });
        yield_at(&self.probe, Point::AfterAppend).await;
        Ok(appended)
    }

    /// One crash point before and one after: the appends land together or not at all.
    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        let fenced = appends.iter().any(|a| a.fence.is_some());
        yield_at(&self.probe, Point::BeforeAppend { fenced }).await;
        let records: Vec<(String, Option<rekey::journal::Fence>)> = appends
            .iter()
            .map(|a| (a.stream_id.clone(), a.fence.clone()))
            .collect();
        let appended = self.memory.append_all(appends).await?;
        self.log()
            .appends
            .extend(
                records
                    .into_iter()
                    .zip(&appended)
                    .map(|((stream, fence), a)| AppendRecord {
                        stream,
                        first_seq: a.first_seq,
                        fence,
                    }),
            );
        yield_at(&self.probe, Point::AfterAppend).await;
        Ok(appended)
    }
}

impl Leases for SimJournal {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        self.leased(self.memory.acquire(stream_id, owner, ttl_ms))
            .await
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        self.leased(self.memory.renew(lease, ttl_ms)).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        yield_at(&self.probe, Point::Lease).await;
        self.memory.release(lease).await?;
        yield_at(&self.probe, Point::Lease).await;
        Ok(())
    }
}
