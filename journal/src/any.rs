//! One journal, whichever engine holds it: what every command opens as "the configured
//! journal". Each trait is served by the engine inside, so the runner, the daemon and the
//! commands are written once for both.

use crate::api::{
    Append, Appended, Head, JournalAppend, JournalRead, JournalScan, Lease, Leases, StreamFilter,
    StreamInfo, Timer,
};
use crate::error::Result;
use crate::event::Event;
use crate::feed::{FeedCursor, FeedPage};
use crate::postgres::PostgresJournal;
use crate::sqlite::SqliteJournal;
use crate::verify::VerifyReport;

/// A journal on either engine.
#[derive(Debug)]
pub enum AnyJournal {
    /// A SQLite file on this machine.
    Sqlite(SqliteJournal),
    /// A schema in a PostgreSQL database, shared by several nodes.
    Postgres(PostgresJournal),
}

/// Runs `$body` with `$j` bound to the engine inside `$self`.
macro_rules! each {
    ($self:expr, $j:ident => $body:expr) => {
        match $self {
            AnyJournal::Sqlite($j) => $body,
            AnyJournal::Postgres($j) => $body,
        }
    };
}

impl AnyJournal {
    /// Where the journal is, for messages: the file, or database, schema and server (never a
    /// password).
    pub fn location(&self) -> String {
        match self {
            AnyJournal::Sqlite(j) => j.path().display().to_string(),
            AnyJournal::Postgres(j) => j.target().to_owned(),
        }
    }

    /// The head of every stream, for export and later truncation checks; the same format
    /// from either engine.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn heads(&self) -> Result<Vec<Head>> {
        each!(self, j => j.heads().await)
    }

    /// Recomputes every chain and checks it against the recorded heads and, when given,
    /// heads exported earlier (from either engine).
    ///
    /// # Errors
    /// Storage errors only; a broken chain is a report, not an error.
    pub async fn verify(&self, exported: Option<&[Head]>) -> Result<VerifyReport> {
        each!(self, j => j.verify(exported).await)
    }

    /// For a SQLite journal opened read-only, whether a `-wal` beside it was read; `None`
    /// for PostgreSQL, which has no such file.
    pub fn reads_wal(&self) -> Option<bool> {
        match self {
            AnyJournal::Sqlite(j) => Some(j.reads_wal()),
            AnyJournal::Postgres(_) => None,
        }
    }
}

impl From<SqliteJournal> for AnyJournal {
    fn from(j: SqliteJournal) -> Self {
        AnyJournal::Sqlite(j)
    }
}

impl From<PostgresJournal> for AnyJournal {
    fn from(j: PostgresJournal) -> Self {
        AnyJournal::Postgres(j)
    }
}

impl JournalRead for AnyJournal {
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Event>> {
        each!(self, j => j.read_stream(stream_id).await)
    }

    async fn read_streams(&self, stream_ids: &[String]) -> Result<Vec<Vec<Event>>> {
        each!(self, j => j.read_streams(stream_ids).await)
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        each!(self, j => j.stream_info(stream_id).await)
    }
}

impl JournalScan for AnyJournal {
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        each!(self, j => j.read_after(after, limit).await)
    }

    async fn read_feed(&self, cursor: &FeedCursor, limit: usize) -> Result<FeedPage> {
        each!(self, j => j.read_feed(cursor, limit).await)
    }

    async fn streams(&self, filter: &StreamFilter) -> Result<Vec<StreamInfo>> {
        each!(self, j => j.streams(filter).await)
    }

    async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        each!(self, j => j.due_timers(now_ms, limit).await)
    }

    async fn next_timer(&self) -> Result<Option<Timer>> {
        each!(self, j => j.next_timer().await)
    }
}

impl JournalAppend for AnyJournal {
    async fn append(&self, append: Append) -> Result<Appended> {
        each!(self, j => j.append(append).await)
    }

    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        each!(self, j => j.append_all(appends).await)
    }
}

impl Leases for AnyJournal {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        each!(self, j => j.acquire(stream_id, owner, ttl_ms).await)
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        each!(self, j => j.renew(lease, ttl_ms).await)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        each!(self, j => j.release(lease).await)
    }
}
