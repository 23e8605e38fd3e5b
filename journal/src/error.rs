//! The journal's one error type. Every message names the journal file or stream and
//! says what to do next, because operators read these at 3 a.m.

use std::path::PathBuf;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but was not written by rekey (or is not SQLite at all).
    #[error(
        "{path}: not a rekey journal ({reason}); point --journal at a journal rekey created, or at a path that does not exist yet"
    )]
    NotAJournal { path: PathBuf, reason: String },

    /// A read-only open found a `-wal` no rekey has open, and could not copy the journal
    /// aside to read it without writing beside the evidence.
    #[error(
        "{path}: cannot read the journal and its -wal without writing beside them: copying both to a private temporary directory failed ({reason}); point TMPDIR at a writable directory with room for the journal"
    )]
    CopyAside { path: PathBuf, reason: String },

    /// A read-only open found no journal file.
    #[error("{path}: no journal here; check the path (--journal or REKEY_JOURNAL)")]
    NoJournal { path: PathBuf },

    /// The journal was written by a newer rekey; we refuse rather than guess.
    #[error(
        "{path}: journal schema version {found} is newer than the newest this rekey understands ({supported}); upgrade rekey to open it (nothing was changed)"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// The journal file or its directory cannot be written.
    #[error(
        "{path}: the journal is read-only ({reason}); rekey must append to it: make it writable, or use the read-only commands (journal verify/show/export)"
    )]
    ReadOnly { path: PathBuf, reason: String },

    /// SQLite could not be set to the durability rekey requires.
    #[error(
        "{path}: cannot make the journal durable: {setting} is {found}, rekey requires {required}; is the file on a file system that supports SQLite WAL?"
    )]
    NotDurable {
        path: PathBuf,
        setting: &'static str,
        found: String,
        required: &'static str,
    },

    /// Optimistic concurrency: someone else appended to the stream first.
    #[error(
        "stream {stream}: append expected the stream at sequence {expected} but it is at {actual}; another writer appended first: re-read the stream and decide again"
    )]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },

    /// The writer's fencing token is not the current lease's.
    #[error(
        "stream {stream}: lease token {presented} is stale (the lease is now token {current}, held by {holder}); this runner must stop driving the stream"
    )]
    StaleFence {
        stream: String,
        presented: u64,
        current: u64,
        holder: String,
    },

    /// The writer's lease ran out before it appended.
    #[error(
        "stream {stream}: lease token {token} expired at {expired_at_ms} ms; renew the lease before appending, or stop driving the stream"
    )]
    LeaseExpired {
        stream: String,
        token: u64,
        expired_at_ms: i64,
    },

    /// Another owner holds a live lease on the stream.
    #[error(
        "stream {stream}: leased by {holder} until {expires_at_ms} ms; another runner is driving it: wait for it to finish or for the lease to expire"
    )]
    LeaseHeld {
        stream: String,
        holder: String,
        expires_at_ms: i64,
    },

    /// An event was refused before it touched the journal.
    #[error("stream {stream}: event refused: {reason}")]
    InvalidEvent { stream: String, reason: String },

    /// An event is larger than the journal accepts.
    #[error(
        "stream {stream}: event {kind} is {size} bytes, over the {max}-byte limit; events carry ids and metadata only, never bulk data"
    )]
    EventTooLarge {
        stream: String,
        kind: String,
        size: usize,
        max: usize,
    },

    /// A read found history that does not chain: the journal was edited outside rekey.
    #[error(
        "stream {stream}: journal is corrupt at sequence {seq}: {detail}; run `rekey journal verify` and restore the journal from a backup"
    )]
    Corrupt {
        stream: String,
        seq: u64,
        detail: String,
    },

    /// Another process held the journal's write lock for longer than the busy timeout.
    #[error(
        "the journal is locked by another process (its write lock was held for over {waited_ms} ms); retry, or find the process holding it (a long backup or a stuck writer)"
    )]
    Busy { waited_ms: u64 },

    /// A write failed for a reason with no SQLite error attached (the reason says which).
    #[error("journal write failed: {reason}")]
    WriteFailed { reason: String },

    /// The journal was opened read-only and cannot take writes.
    #[error("the journal was opened read-only; open it writable to append or take leases")]
    OpenedReadOnly,

    /// The background writer stopped (the journal was closed or the writer failed).
    #[error("the journal writer has stopped; reopen the journal")]
    WriterStopped,

    /// The PostgreSQL schema named for the journal holds something that is not a rekey journal.
    #[error(
        "{target}: not a rekey journal ({reason}); point the journal at a schema rekey created, or at a schema that does not exist yet (nothing was changed)"
    )]
    NotAPostgresJournal { target: String, reason: String },

    /// `journal copy` found the destination holding something already.
    #[error(
        "{target}: the destination journal is not empty ({streams} streams, {events} events, {timers} timers); `journal copy` copies only into an empty journal (a file that does not exist yet, or a database where rekey has written nothing): nothing was copied"
    )]
    CopyTargetNotEmpty {
        target: String,
        streams: i64,
        events: i64,
        timers: i64,
    },

    /// `journal copy` found the source changing under it.
    #[error(
        "stream {stream} grew while it was being copied: a rekey is writing to the source journal; stop every rekey using it (`rekey run`, `rotate`, `resume`) and copy again (nothing was copied)"
    )]
    CopySourceChanged { stream: String },

    /// A feed cursor that no feed read of this rekey returned.
    #[error(
        "feed cursor {cursor:?} is not one this rekey wrote ({reason}); resume from a cursor a feed read returned, or from the start"
    )]
    BadFeedCursor { cursor: String, reason: String },

    /// A read-only open found no journal in the PostgreSQL schema.
    #[error(
        "{target}: no rekey journal here yet (nothing has been written to it); check [journal] url, or run `rekey rotate` or `rekey run` to create it"
    )]
    NoPostgresJournal { target: String },

    /// The PostgreSQL journal was written by a newer rekey; we refuse rather than guess.
    #[error(
        "{target}: journal schema version {found} is newer than the newest this rekey understands ({supported}); upgrade rekey to open it (nothing was changed)"
    )]
    NewerPostgresSchema {
        target: String,
        found: i64,
        supported: i64,
    },

    /// The PostgreSQL server would acknowledge commits it has not made durable.
    #[error(
        "{target}: cannot make the journal durable: the server's {setting} is {found}, rekey requires {required}; change it in postgresql.conf (nothing was changed)"
    )]
    PostgresNotDurable {
        target: String,
        setting: &'static str,
        found: String,
        required: &'static str,
    },

    /// The PostgreSQL journal was configured wrongly (before anything was read or written).
    #[error("PostgreSQL journal: {reason}")]
    PostgresConfig { reason: String },

    /// Any other PostgreSQL failure, with what we were doing and where.
    #[error("journal {context} on {target}: {}", crate::postgres::describe(cause))]
    Postgres {
        target: String,
        context: String,
        cause: tokio_postgres::Error,
    },

    /// Any other SQLite failure, with what we were doing.
    #[error("journal {context}: {cause}")]
    Sqlite {
        context: String,
        cause: rusqlite::Error,
    },
}

impl Error {
    pub(crate) fn sqlite(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let context = context.into();
        move |cause| Error::Sqlite { context, cause }
    }

    /// As [`Error::sqlite`], building the context only when there is an error (hot paths).
    pub(crate) fn sqlite_with(
        context: impl FnOnce() -> String,
    ) -> impl FnOnce(rusqlite::Error) -> Error {
        move |cause| Error::Sqlite {
            context: context(),
            cause,
        }
    }

    /// True when retrying the same call later may succeed (the database was busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy { .. })
            || matches!(
                self,
                Error::Sqlite {
                    cause: rusqlite::Error::SqliteFailure(e, _),
                    ..
                } if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
            || matches!(self, Error::Postgres { cause, .. } if crate::postgres::is_transient(cause))
    }
}

/// The journal's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
