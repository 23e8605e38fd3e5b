//! The embedded engine: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! All writes go through one writer thread that owns the write connection. It takes
//! every request waiting in its queue, runs them in one transaction, commits once (one
//! fsync), and only then answers each request: group commit, with per-request results.
//! The rules refuse a request before its first write, so a refused one leaves nothing to
//! undo; only an atomic append to several streams runs in a savepoint of its own, and a
//! request that fails part-way (a storage error) rolls back the whole batch. Callers check and
//! encode their events before the queue; the writer keeps stream heads and leases in
//! memory, dropped whenever `PRAGMA data_version` shows another connection committed.
//! Its automatic checkpoint (which runs inside a commit, before anyone hears of it) is
//! off: after enough commits the writer, once it has answered the batch, copies the WAL
//! into the main file itself (passively: it never waits for a reader). Being the only
//! writer, it checkpoints a WAL nobody appends to meanwhile, so the checkpoint completes
//! and the next commit starts the WAL over, overwriting blocks already allocated. (A
//! checkpointer thread beside the writer never caught up with it: the WAL only grew, and
//! every commit paid for growing a file; see `CHECKPOINT_AFTER_COMMITS`.) Reads use
//! separate read-only connections and never wait for the writer.
//!
//! Reads are async but SQLite is not: each read runs on tokio's blocking pool
//! (`spawn_blocking`) with a connection taken from a small pool of read-only connections
//! ([`READERS_MAX`] at most, opened as the first one was), so a read does not hold a
//! runtime worker, and a current-thread runtime goes on with its other tasks while it
//! reads. A short read on a multi-threaded runtime runs in place instead, holding up one
//! worker for tens of microseconds: a stream's summary (`stream_info`), or a stream of at
//! most [`IN_PLACE_EVENTS_MAX`] events (`read_stream`; a longer one goes to the pool once
//! its summary says so). The trip to the pool and back, two thread wake-ups, costs several
//! times what such a read does. Each read opens and ends its own read transaction, so
//! under WAL it sees every commit made before it started.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::api::{
    Append, Appended, Head, JournalAppend, JournalRead, JournalScan, Lease, Leases, StreamFilter,
    StreamInfo, Timer,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::event::{Digest32, Event, check_stream};
use crate::ops::{self, DEFAULT_STATUS, HeadUpdate, WriteStore};
use crate::schema::{self, Found};
use crate::verify::{Verifier, VerifyReport};

/// Most requests folded into one transaction.
const BATCH_REQUESTS_MAX: usize = 1024;
/// How long SQLite waits for another process's write lock before reporting busy.
const BUSY_TIMEOUT_MS: u64 = 5_000;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A write request for the writer thread.
enum Request {
    /// An append with the payloads [`ops::prepare`] made of it.
    Append(Append, Vec<String>, Reply<Appended>),
    /// Appends to several streams, all or none, each with its payloads.
    AppendAll(Vec<(Append, Vec<String>)>, Reply<Vec<Appended>>),
    Acquire {
        stream_id: String,
        owner: String,
        ttl_ms: i64,
        reply: Reply<Lease>,
    },
    Renew(Lease, i64, Reply<Lease>),
    Release(Lease, Reply<()>),
}

/// A journal in a SQLite file.
#[derive(Debug)]
pub struct SqliteJournal {
    path: PathBuf,
    /// Shared with the blocking threads that read through them.
    readers: Arc<Readers>,
    writer: Option<Writer>,
    clock: Arc<dyn Clock>,
    /// Whether what is read includes a `-wal` (see [`SqliteJournal::reads_wal`]).
    reads_wal: bool,
}

/// Most read-only connections a journal holds, and so most reads at once.
const READERS_MAX: usize = 4;

/// The journal's read-only connections: idle ones are reused, and another is opened, the
/// way the first was, when a read finds none idle.
#[derive(Debug)]
struct Readers {
    idle: Mutex<Vec<Connection>>,
    /// One per connection that may exist, so a burst of reads waits (without blocking a
    /// thread) rather than opening connections without limit.
    permits: Arc<tokio::sync::Semaphore>,
    /// The journal, for messages.
    path: PathBuf,
    /// What a connection opens: the journal, a private copy, or an immutable URI.
    target: PathBuf,
    uri: bool,
    /// The private copy a read-only open reads instead of the journal, removed once the
    /// last reader is gone (`idle` is declared first, so its connections close before).
    _aside: Option<tempfile::TempDir>,
}

impl Readers {
    fn new(first: Connection, path: &Path, target: ReaderTarget) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(vec![first]),
            permits: Arc::new(tokio::sync::Semaphore::new(READERS_MAX)),
            path: path.to_owned(),
            target: target.target,
            uri: target.uri,
            _aside: target.aside,
        })
    }

    /// Runs `f` on an idle connection, or a new one, on this thread; the connection is kept
    /// for the next read unless `f` failed (it may have left the connection in a bad state).
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.take_idle() {
            Some(c) => c,
            None => open_reader(&self.path, &self.target, self.uri)?,
        };
        self.run(conn, f)
    }

    /// [`Readers::with`] on an idle connection only: `None` (`f` not run) when none is
    /// idle, as opening one is no short read.
    fn with_idle<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Option<Result<T>> {
        let conn = self.take_idle()?;
        Some(self.run(conn, f))
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn run<T>(&self, conn: Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let out = f(&conn);
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < READERS_MAX {
                idle.push(conn);
            }
        }
        out
    }
}

/// How [`Readers`] opens a connection, and the private copy it reads, if any.
struct ReaderTarget {
    target: PathBuf,
    uri: bool,
    aside: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct Writer {
    queue: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl Request {
    /// Answers the request with `error` without doing it.
    fn refuse(self, error: Error) {
        match self {
            Request::Append(_, _, reply) => drop(reply.send(Err(error))),
            Request::AppendAll(_, reply) => drop(reply.send(Err(error))),
            Request::Acquire { reply, .. } | Request::Renew(_, _, reply) => {
                drop(reply.send(Err(error)));
            }
            Request::Release(_, reply) => drop(reply.send(Err(error))),
        }
    }
}

/// Why a write transaction could not start.
fn write_refusal(e: &rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Error::Busy {
                waited_ms: BUSY_TIMEOUT_MS,
            }
        }
        other => Error::WriteFailed {
            reason: format!("cannot start a write transaction: {other}"),
        },
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl SqliteJournal {
    /// Opens (or creates) the journal at `path` for reading and writing, stamped by the
    /// system clock.
    ///
    /// # Errors
    /// [`Error::NotAJournal`], [`Error::NewerSchema`], [`Error::ReadOnly`],
    /// [`Error::NotDurable`]; in every case the file is left as it was.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// As [`SqliteJournal::open`], with an injected clock.
    ///
    /// # Errors
    /// As [`SqliteJournal::open`].
    pub fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        refuse_empty_file(&path)?;
        refuse_read_only_file(&path)?;
        create_whole(&path)?;
        let mut write = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| schema::readonly_or(e, &path, "opening the journal"))?;
        set_busy_timeout(&write)?;
        let found = schema::inspect(&write, &path)?;
        schema::make_durable(&write, &path)?;
        let from = match found {
            Found::Empty => 0,
            Found::Journal(v) => v,
        };
        schema::migrate(&mut write, &path, from)?;
        let reader = open_reader(&path, &path, false)?;
        let readers = Readers::new(
            reader,
            &path,
            ReaderTarget {
                target: path.clone(),
                uri: false,
                aside: None,
            },
        );
        let side = WriteSide::new(write)?;

        let (queue, requests) = mpsc::channel();
        let writer_clock = clock.clone();
        let thread = std::thread::Builder::new()
            .name("rekey-journal-writer".into())
            .spawn(move || write_loop(side, requests, writer_clock))
            .map_err(|e| Error::WriteFailed {
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            path,
            readers,
            writer: Some(Writer {
                queue,
                thread: Some(thread),
            }),
            clock,
            reads_wal: true,
        })
    }

    /// Opens an existing journal for reading only (auditors, `verify`, `export`, `status`).
    /// Nothing is written to the journal or beside it, so a copy nobody may write (a
    /// read-only mount, another user's files) can be checked, and checking it creates no
    /// `-wal` or `-shm`:
    /// - with no `-wal` beside it, the file is read as one that cannot change;
    /// - with a `-wal` but no `-shm` (no rekey has it open: a crashed writer's files, or a
    ///   copy), both are copied to a private temporary directory and read there;
    /// - with both (rekey may be writing it now), it is read as any SQLite reader reads a
    ///   journal in use, sharing its `-shm`.
    ///
    /// # Errors
    /// [`Error::NoJournal`], [`Error::NotAJournal`], [`Error::NewerSchema`] and
    /// [`Error::CopyAside`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if !path.is_file() {
            return Err(Error::NoJournal { path });
        }
        refuse_empty_file(&path)?;
        let view = ReadView::open(&path)?;
        match schema::inspect(&view.conn, &path)? {
            Found::Journal(v) if v == schema::SCHEMA_VERSION => {}
            Found::Journal(v) => {
                return Err(Error::NotAJournal {
                    path,
                    reason: format!(
                        "schema version {v} is older than {}; open it writable once to migrate",
                        schema::SCHEMA_VERSION
                    ),
                });
            }
            Found::Empty => {
                let reason = if view.wal {
                    "the file is an empty database".into()
                } else {
                    format!(
                        "the file holds no tables: an empty database, or a copy of a journal in use taken without its -wal (copy {} with it)",
                        side_file(&path, "-wal").display()
                    )
                };
                return Err(Error::NotAJournal { path, reason });
            }
        }
        let readers = Readers::new(
            view.conn,
            &path,
            ReaderTarget {
                target: view.target,
                uri: view.uri,
                aside: view.aside,
            },
        );
        Ok(Self {
            path,
            readers,
            writer: None,
            clock: Arc::new(SystemClock),
            reads_wal: view.wal,
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False when the journal was opened read-only with no `-wal` beside it: everything
    /// read comes from the main file, which holds every event when rekey closed the journal
    /// cleanly, but a copy of a journal in use taken without its `-wal` lacks the newest.
    pub fn reads_wal(&self) -> bool {
        self.reads_wal
    }

    /// The clock stamping this journal's events.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let writer = self.writer.as_ref().ok_or(Error::OpenedReadOnly)?;
        let (tx, rx) = oneshot::channel();
        writer
            .queue
            .send(make(tx))
            .map_err(|_| Error::WriterStopped)?;
        rx.await.map_err(|_| Error::WriterStopped)?
    }

    /// Runs `f` with a read connection on tokio's blocking pool and awaits it, so the
    /// caller's runtime thread is free while SQLite reads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        // The semaphore is never closed, so acquiring fails only if it were.
        let permit = readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::WriterStopped)?;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            readers.with(f)
        });
        match task.await {
            Ok(out) => out,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: the runtime is shutting down.
                Err(_) => Err(Error::WriterStopped),
            },
        }
    }

    /// Runs `f`, a short read, in place when the runtime is multi-threaded and a read
    /// connection is idle, and `None` (`f` not run) otherwise. A short read (one row by its
    /// key, or a stream of at most [`IN_PLACE_EVENTS_MAX`] events) takes tens of
    /// microseconds, less than the blocking pool's round trip (two thread wake-ups);
    /// `block_in_place` would hand the worker's tasks to threads it starts, each keeping
    /// an allocator heap of its own (measured: about 80 MiB more at rest).
    fn try_in_place<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Option<Result<T>> {
        if !multi_threaded() {
            return None;
        }
        let _permit = self.readers.permits.try_acquire().ok()?;
        self.readers.with_idle(f)
    }

    /// The head of every stream, for export and later truncation checks.
    ///
    /// # Errors
    /// Storage errors, or [`Error::Corrupt`] for a malformed head hash.
    pub async fn heads(&self) -> Result<Vec<Head>> {
        self.read(heads_in).await
    }

    /// Runs SQLite's integrity check of every page and index, then recomputes every chain
    /// and checks it against the recorded heads and, when given, heads exported earlier
    /// (which detects truncation of a stream's tail).
    ///
    /// # Errors
    /// Storage errors only; a damaged file or a broken chain is a report, not an error.
    pub async fn verify(&self, exported: Option<&[Head]>) -> Result<VerifyReport> {
        let exported = exported.map(<[Head]>::to_vec);
        self.read(move |c| {
            snapshot(c, |c| {
                if let Some(damage) = damage(c)? {
                    return Ok(VerifyReport::damaged(damage));
                }
                match verify_chains(c, exported.as_deref()) {
                    Err(Error::Sqlite { cause, .. }) if is_corrupt(&cause) => {
                        Ok(VerifyReport::damaged(cause.to_string()))
                    }
                    other => other,
                }
            })
        })
        .await
    }
}

/// Streams of at most this many events are read in place ([`SqliteJournal::try_in_place`]).
const IN_PLACE_EVENTS_MAX: u64 = 64;

/// Whether the runtime polling this task is multi-threaded, so a short read in place
/// holds up one worker while the others go on.
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs several reads through `c` in one read transaction, so they see one consistent
/// snapshot even while the writer commits.
fn snapshot<T>(c: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let tx = c
        .unchecked_transaction()
        .map_err(Error::sqlite("starting a read snapshot"))?;
    let out = f(&tx)?;
    tx.finish()
        .map_err(Error::sqlite("ending a read snapshot"))?;
    Ok(out)
}

/// Every event of `stream_id`, links and head checked, read on `c` (inside a snapshot).
fn stream_events_in(c: &Connection, stream_id: &str) -> Result<Vec<Event>> {
    let info = stream_info_in(c, stream_id)?;
    events_of(c, stream_id, info.as_ref())
}

/// [`stream_events_in`], or `None` when the stream is longer than
/// [`IN_PLACE_EVENTS_MAX`] (nothing read but its summary).
fn short_stream_events_in(c: &Connection, stream_id: &str) -> Result<Option<Vec<Event>>> {
    let info = stream_info_in(c, stream_id)?;
    if info
        .as_ref()
        .is_some_and(|i| i.head_seq > IN_PLACE_EVENTS_MAX)
    {
        return Ok(None);
    }
    events_of(c, stream_id, info.as_ref()).map(Some)
}

/// The events of `stream_id` whose summary `info` was read in the same snapshot, checked
/// against it.
fn events_of(c: &Connection, stream_id: &str, info: Option<&StreamInfo>) -> Result<Vec<Event>> {
    let mut stmt = c
        .prepare_cached(&format!(
            "{SELECT_EVENT} WHERE stream_id = ?1 ORDER BY stream_seq"
        ))
        .map_err(Error::sqlite("reading a stream"))?;
    let events = collect_events(&mut stmt, [stream_id])?;
    check_stream(stream_id, info, &events)?;
    Ok(events)
}

/// Most problems of a damaged file a verify report lists.
const DAMAGE_PROBLEMS_MAX: usize = 5;

/// What SQLite's integrity check finds wrong with the file behind `c`, if anything.
fn damage(c: &Connection) -> Result<Option<String>> {
    let found = c
        .prepare(&format!("PRAGMA integrity_check({DAMAGE_PROBLEMS_MAX})"))
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    match found {
        Ok(problems) if problems.iter().all(|p| p == "ok") => Ok(None),
        Ok(problems) => Ok(Some(problems.join("; "))),
        Err(e) if is_corrupt(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(Error::Sqlite {
            context: "running the integrity check".into(),
            cause: e,
        }),
    }
}

/// True for SQLite's "the file is damaged" errors.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// Recomputes every chain read through `c` (see [`SqliteJournal::verify`]).
fn verify_chains(c: &Connection, exported: Option<&[Head]>) -> Result<VerifyReport> {
    let mut verifier = Verifier::new(heads_in(c)?, exported);
    let mut stmt = c
        .prepare(&format!("{SELECT_EVENT} ORDER BY stream_id, stream_seq"))
        .map_err(Error::sqlite("reading events to verify"))?;
    let mut rows = stmt
        .query([])
        .map_err(Error::sqlite("reading events to verify"))?;
    while let Some(row) = rows.next().map_err(Error::sqlite("reading events"))? {
        match row_to_event(row) {
            Ok(event) => {
                if !verifier.feed(&event) {
                    break;
                }
            }
            // A row that cannot even be decoded is the first broken link.
            Err(Error::Corrupt {
                stream,
                seq,
                detail,
            }) => {
                let mut report = verifier.finish();
                report.broken = Some(crate::verify::BrokenLink {
                    stream_id: stream,
                    seq,
                    what: detail,
                    expected: "a well-formed event row".into(),
                    found: "a malformed row".into(),
                });
                return Ok(report);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(verifier.finish())
}

impl Drop for SqliteJournal {
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            drop(writer.queue);
            if let Some(thread) = writer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Every stream's head, read through `c`.
fn heads_in(c: &Connection) -> Result<Vec<Head>> {
    let mut stmt = c
        .prepare("SELECT stream_id, head_seq, head_hash FROM streams ORDER BY stream_id")
        .map_err(Error::sqlite("reading stream heads"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(Error::sqlite("reading stream heads"))?;
    let mut heads = Vec::new();
    for row in rows {
        let (stream_id, seq, hash) = row.map_err(Error::sqlite("reading stream heads"))?;
        let hash = digest(&stream_id, seq as u64, &hash)?;
        heads.push(Head {
            stream_id,
            seq: seq as u64,
            hash,
        });
    }
    Ok(heads)
}

/// Why an existing file of 0 bytes is refused.
const EMPTY_FILE: &str = "the file is empty (0 bytes): a journal that lost its contents, or one whose creation was interrupted; restore it from a backup, or delete it if it never held events";

/// SQLite takes a file of 0 bytes for a new database, and opening it for writing would
/// start a new journal over whatever should be there: such a file is refused like any
/// other file that is not a journal. Only a path where nothing exists becomes a journal.
fn refuse_empty_file(path: &Path) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        return Err(Error::NotAJournal {
            path: path.to_owned(),
            reason: EMPTY_FILE.into(),
        });
    }
    Ok(())
}

/// Root ignores file modes, so the mode is checked here: a journal marked read-only is
/// never written, whoever runs rekey.
fn refuse_read_only_file(path: &Path) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().readonly()
    {
        return Err(Error::ReadOnly {
            path: path.to_owned(),
            reason: "the file's permissions forbid writing".into(),
        });
    }
    Ok(())
}

/// Creates a journal where nothing exists, whole or not at all: the schema is written to
/// an owner-only (0600) file beside it, made durable, then linked into place. A crash
/// never leaves a file of 0 bytes (refused as not a journal) behind, and the secret names
/// and error texts the journal will hold are readable by its owner only (SQLite gives
/// `-wal` and `-shm` the database file's mode). An existing file keeps its mode; a
/// creator that got there first wins, and its journal is used.
fn create_whole(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let failed = |what: &str, e: std::io::Error| Error::WriteFailed {
        reason: format!("creating the journal {}: {what}: {e}", path.display()),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Missing directories and the like are left for SQLite's own open to report.
    let Ok(new) = tempfile::Builder::new()
        .prefix(".rekey-journal-")
        .suffix(".new")
        .tempfile_in(dir)
    else {
        return Ok(());
    };
    {
        let mut conn = Connection::open(new.path())
            .map_err(|e| schema::readonly_or(e, path, "creating the journal"))?;
        schema::set_page_size(&conn, path)?;
        schema::make_durable(&conn, path)?;
        schema::migrate(&mut conn, path, 0)?;
    }
    new.as_file()
        .sync_all()
        .map_err(|e| failed("flushing it", e))?;
    match std::fs::hard_link(new.path(), path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(failed("putting it in place", e)),
    }
    drop(new);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("flushing its directory", e))
}

fn set_busy_timeout(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(Error::sqlite("setting the busy timeout"))
}

/// `path` with `suffix` appended to its file name (SQLite's `-wal` and `-shm`).
fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A read-only connection that writes nothing beside the journal, and what it reads.
struct ReadView {
    conn: Connection,
    /// What `conn` opened, so that more connections like it can be opened.
    target: PathBuf,
    uri: bool,
    /// Whether a `-wal` was beside the journal, and so is read.
    wal: bool,
    /// The private copy read instead of the journal.
    aside: Option<tempfile::TempDir>,
}

impl ReadView {
    /// See [`SqliteJournal::open_read_only`].
    fn open(path: &Path) -> Result<Self> {
        let wal = side_file(path, "-wal");
        let shm = side_file(path, "-shm");
        if !wal.exists() {
            // All of it is in the main file: SQLite reads a file marked immutable without
            // locks and without creating a -wal or -shm beside it.
            let target = immutable_uri(path);
            return Ok(Self {
                conn: open_reader(path, &target, true)?,
                target,
                uri: true,
                wal: false,
                aside: None,
            });
        }
        if !shm.exists()
            && let Some(view) = Self::aside(path, &wal, &shm)?
        {
            return Ok(view);
        }
        Ok(Self {
            conn: open_reader(path, path, false)?,
            target: path.to_owned(),
            uri: false,
            wal: true,
            aside: None,
        })
    }

    /// Reads a copy of the journal and its `-wal`: in place, SQLite would create a `-shm`
    /// beside them, or fail where it cannot. `None` when a writer opened the journal while
    /// it was copied (a `-shm` appeared), so the copy may be torn.
    fn aside(path: &Path, wal: &Path, shm: &Path) -> Result<Option<Self>> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |e: std::io::Error| Error::CopyAside {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let dir = tempfile::Builder::new()
            .prefix("rekey-journal-")
            .tempdir()
            .map_err(fail)?;
        let copy = dir.path().join("journal.db");
        for (from, to) in [(path, copy.clone()), (wal, side_file(&copy, "-wal"))] {
            std::fs::copy(from, &to).map_err(fail)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        }
        if shm.exists() {
            return Ok(None);
        }
        let conn = open_reader(path, &copy, false)?;
        Ok(Some(Self {
            conn,
            target: copy,
            uri: false,
            wal: true,
            aside: Some(dir),
        }))
    }
}

/// A URI opening `path` read-only as a file that cannot change.
fn immutable_uri(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // An absolute path takes an empty authority, so a path starting with `//` stays a path.
    let mut uri = String::from(if path.is_absolute() {
        "file://"
    } else {
        "file:"
    });
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    PathBuf::from(uri)
}

/// A read-only connection to `target`: the journal, a copy of it, or (with `uri`) a URI
/// for it. Errors name the journal at `path`.
fn open_reader(path: &Path, target: &Path, uri: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if uri {
        flags |= OpenFlags::SQLITE_OPEN_URI;
    }
    let conn = Connection::open_with_flags(target, flags).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            Error::NotAJournal {
                path: path.to_owned(),
                reason: "the file is not a SQLite database".into(),
            }
        }
        other => Error::Sqlite {
            context: format!("opening {} for reading", path.display()),
            cause: other,
        },
    })?;
    set_busy_timeout(&conn)?;
    // Keep query plans stable, so cached statements are not re-prepared on every read.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(Error::sqlite("configuring the reader"))?;
    Ok(conn)
}

/// Statements the writer keeps prepared.
const WRITER_STATEMENTS_MAX: usize = 32;
/// Streams whose head and lease the writer keeps in memory before it starts afresh.
const CACHE_STREAMS_MAX: usize = 65_536;
/// Commits, and events, after which the writer copies the WAL into the main file. A
/// checkpoint thread of its own, measured in `ceiling_p1`, made one durable append take
/// about 1.7x as long as this (the WAL it chased never restarted).
const CHECKPOINT_AFTER_COMMITS: u32 = 256;
const CHECKPOINT_AFTER_EVENTS: u64 = 4_096;

/// The writer thread's state: its connection, its cache of heads and leases, and what
/// it committed since its last checkpoint.
struct WriteSide {
    conn: Connection,
    cache: Cache,
    /// `PRAGMA data_version` when the cache was last known current: it changes when
    /// another connection (another process, an import) commits to the file.
    data_version: Option<i64>,
    commits: u32,
    events: u64,
}

/// Heads and leases as this writer last read or wrote them (`None`: no row).
#[derive(Default)]
struct Cache {
    heads: HashMap<String, Option<(u64, Digest32)>>,
    leases: HashMap<String, Option<Lease>>,
}

impl Cache {
    fn clear(&mut self) {
        self.heads.clear();
        self.leases.clear();
    }

    /// Forgets what a rolled-back request wrote.
    fn forget(&mut self, streams: &[String]) {
        for s in streams {
            self.heads.remove(s);
            self.leases.remove(s);
        }
    }
}

/// Runs one transaction-control statement, prepared once per connection.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn write_loop(mut side: WriteSide, requests: mpsc::Receiver<Request>, clock: Arc<dyn Clock>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_REQUESTS_MAX {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        side.commit_batch(batch, clock.now_ms());
    }
    // Closing: move everything from the WAL into the main file, so the `.db` alone (a
    // backup, an auditor's copy) holds every event. The reader is idle, so this completes.
    let _ = side.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

/// A finished request waiting for its commit before its answer is sent.
enum Done {
    Appended(Reply<Appended>, Result<Appended>),
    AppendedAll(Reply<Vec<Appended>>, Result<Vec<Appended>>),
    Lease(Reply<Lease>, Result<Lease>),
    Released(Reply<()>, Result<()>),
}

impl WriteSide {
    fn new(conn: Connection) -> Result<Self> {
        // Checkpoints run between batches (`after_commit`), never inside a commit.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")
            .map_err(Error::sqlite(
                "turning off the writer's automatic checkpoint",
            ))?;
        // Every statement the writer runs stays prepared (16 of them today).
        conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS_MAX);
        Ok(Self {
            conn,
            cache: Cache::default(),
            data_version: None,
            commits: 0,
            events: 0,
        })
    }

    /// Drops the cache when another connection committed since it was last current.
    /// Called inside the write transaction, whose lock keeps everyone else out until
    /// its commit.
    fn check_cache(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(Error::sqlite("reading the journal's data version"))?;
        if self.data_version != Some(version)
            || self.cache.heads.len() + self.cache.leases.len() > CACHE_STREAMS_MAX
        {
            self.cache.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    fn commit_batch(&mut self, batch: Vec<Request>, now_ms: i64) {
        if let Err(e) = exec_cached(&self.conn, "BEGIN IMMEDIATE") {
            // Nothing was done: every request hears why (usually another process's lock).
            for request in batch {
                request.refuse(write_refusal(&e));
            }
            return;
        }
        // A lone request needs no savepoint: if it fails, the transaction is rolled back.
        // Nor does one of a single op: the rules refuse before they write, so a refused op
        // wrote nothing. An atomic append may be refused after its first appends wrote.
        let alone = batch.len() == 1;
        let mut done = Vec::with_capacity(batch.len());
        let mut events = 0u64;
        let mut batch = batch.into_iter();
        let outcome = (|| -> Result<bool> {
            self.check_cache()?;
            let mut any_ok = false;
            for request in batch.by_ref() {
                let savepoint = !alone && matches!(request, Request::AppendAll(..));
                if savepoint {
                    exec_cached(&self.conn, "SAVEPOINT request")
                        .map_err(Error::sqlite("starting a savepoint"))?;
                }
                let mut store = SqlStore {
                    conn: &self.conn,
                    cache: &mut self.cache,
                    touched: Vec::new(),
                    wrote: false,
                };
                let (finished, ok) = match request {
                    Request::Append(a, payloads, reply) => {
                        let n = a.events.len() as u64;
                        let r = ops::append_prepared(&mut store, &a, payloads, now_ms);
                        let ok = r.is_ok();
                        if ok {
                            events += n;
                        }
                        (Done::Appended(reply, r), ok)
                    }
                    Request::AppendAll(all, reply) => {
                        // In the request's savepoint (or alone in the transaction): the
                        // first refusal undoes the appends before it.
                        let n: u64 = all.iter().map(|(a, _)| a.events.len() as u64).sum();
                        let r = all
                            .into_iter()
                            .map(|(a, p)| ops::append_prepared(&mut store, &a, p, now_ms))
                            .collect::<Result<Vec<_>>>();
                        let ok = r.is_ok();
                        if ok {
                            events += n;
                        }
                        (Done::AppendedAll(reply, r), ok)
                    }
                    Request::Acquire {
                        stream_id,
                        owner,
                        ttl_ms,
                        reply,
                    } => {
                        let r = ops::acquire(&mut store, &stream_id, &owner, ttl_ms, now_ms);
                        let ok = r.is_ok();
                        (Done::Lease(reply, r), ok)
                    }
                    Request::Renew(lease, ttl_ms, reply) => {
                        let r = ops::renew(&mut store, &lease, ttl_ms, now_ms);
                        let ok = r.is_ok();
                        (Done::Lease(reply, r), ok)
                    }
                    Request::Release(lease, reply) => {
                        let r = ops::release(&mut store, &lease, now_ms);
                        let ok = r.is_ok();
                        (Done::Released(reply, r), ok)
                    }
                };
                let (touched, wrote) = (store.touched, store.wrote);
                if ok {
                    any_ok = true;
                    if savepoint {
                        exec_cached(&self.conn, "RELEASE request")
                            .map_err(Error::sqlite("releasing a savepoint"))?;
                    }
                } else {
                    // What the request wrote is undone below; so is its trace in the cache.
                    self.cache.forget(&touched);
                    if savepoint {
                        exec_cached(&self.conn, "ROLLBACK TO request")
                            .and_then(|()| exec_cached(&self.conn, "RELEASE request"))
                            .map_err(Error::sqlite("rolling back a savepoint"))?;
                    } else if wrote && !alone {
                        // Failed part-way with no savepoint to undo it: the whole batch
                        // rolls back, and every request hears it.
                        done.push(finished);
                        return Err(Error::WriteFailed {
                            reason: "a write failed part-way through its request".into(),
                        });
                    }
                }
                done.push(finished);
            }
            if any_ok {
                // Commit is the fsync (WAL + synchronous=FULL): nobody hears "ok" before it.
                exec_cached(&self.conn, "COMMIT").map_err(Error::sqlite("committing"))?;
            } else {
                exec_cached(&self.conn, "ROLLBACK")
                    .map_err(Error::sqlite("rolling back a batch that wrote nothing"))?;
            }
            Ok(any_ok)
        })();
        if outcome.is_err() {
            // Whatever the batch wrote is rolled back, and the cache may hold some of it.
            self.cache.clear();
            if !self.conn.is_autocommit() {
                let _ = exec_cached(&self.conn, "ROLLBACK");
            }
        }
        let failed = |e: &Error| Error::WriteFailed {
            reason: format!("the batch commit failed, nothing was written: {e}"),
        };
        if let Err(e) = &outcome {
            // Requests the batch did not reach are answered too.
            for request in batch {
                request.refuse(failed(e));
            }
        }
        for d in done {
            match (d, &outcome) {
                (Done::Appended(reply, r), Ok(_)) => drop(reply.send(r)),
                (Done::Appended(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
                (Done::AppendedAll(reply, r), Ok(_)) => drop(reply.send(r)),
                (Done::AppendedAll(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
                (Done::Lease(reply, r), Ok(_)) => drop(reply.send(r)),
                (Done::Lease(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
                (Done::Released(reply, r), Ok(_)) => drop(reply.send(r)),
                (Done::Released(reply, _), Err(e)) => drop(reply.send(Err(failed(e)))),
            }
        }
        if let Ok(true) = outcome {
            self.after_commit(events);
        }
    }

    /// Checkpoints once enough has been committed since the last checkpoint. Called
    /// after the batch's callers were answered, so none of them waits for it; requests
    /// that arrive meanwhile wait, and join the next batch together.
    fn after_commit(&mut self, events: u64) {
        self.commits += 1;
        self.events += events;
        if self.commits >= CHECKPOINT_AFTER_COMMITS || self.events >= CHECKPOINT_AFTER_EVENTS {
            self.commits = 0;
            self.events = 0;
            // One that cannot finish now (a reader on an old snapshot) is finished by a
            // later one; nothing depends on it.
            let _ = self
                .conn
                .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
                .and_then(|mut s| s.query_row([], |_| Ok(())));
        }
    }
}

/// [`WriteStore`] over the writer's transaction, reading heads and leases through its
/// cache and noting which streams it wrote.
struct SqlStore<'c> {
    conn: &'c Connection,
    cache: &'c mut Cache,
    touched: Vec<String>,
    /// Some row was written (the rules refuse before their first write, so a refused
    /// request that wrote means a storage failure mid-way).
    wrote: bool,
}

impl WriteStore for SqlStore<'_> {
    fn head(&mut self, stream_id: &str) -> Result<Option<(u64, Digest32)>> {
        if let Some(head) = self.cache.heads.get(stream_id) {
            return Ok(*head);
        }
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT head_seq, head_hash FROM streams WHERE stream_id = ?1")
            .and_then(|mut s| {
                s.query_row([stream_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(Error::sqlite_with(|| {
                format!("reading the head of {stream_id}")
            }))?;
        let head = row
            .map(|(seq, hash)| Ok((seq as u64, digest(stream_id, seq as u64, &hash)?)))
            .transpose()?;
        self.cache.heads.insert(stream_id.to_owned(), head);
        Ok(head)
    }

    fn lease(&mut self, stream_id: &str) -> Result<Option<Lease>> {
        if let Some(lease) = self.cache.leases.get(stream_id) {
            return Ok(lease.clone());
        }
        let lease = self
            .conn
            .prepare_cached("SELECT owner, token, expires_at_ms FROM leases WHERE stream_id = ?1")
            .and_then(|mut s| {
                s.query_row([stream_id], |r| {
                    Ok(Lease {
                        stream_id: stream_id.to_owned(),
                        owner: r.get(0)?,
                        token: r.get::<_, i64>(1)? as u64,
                        expires_at_ms: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(Error::sqlite_with(|| {
                format!("reading the lease of {stream_id}")
            }))?;
        self.cache
            .leases
            .insert(stream_id.to_owned(), lease.clone());
        Ok(lease)
    }

    fn put_lease(&mut self, l: &Lease) -> Result<()> {
        self.wrote = true;
        self.touched.push(l.stream_id.clone());
        self.cache.leases.remove(&l.stream_id);
        self.conn
            .prepare_cached(
                "INSERT INTO leases (stream_id, owner, token, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream_id) DO UPDATE SET owner = ?2, token = ?3, expires_at_ms = ?4",
            )
            .and_then(|mut s| {
                s.execute(params![l.stream_id, l.owner, l.token as i64, l.expires_at_ms])
            })
            .map_err(Error::sqlite_with(|| format!("writing the lease of {}", l.stream_id)))?;
        self.cache
            .leases
            .insert(l.stream_id.clone(), Some(l.clone()));
        Ok(())
    }

    fn insert_event(&mut self, e: &Event) -> Result<u64> {
        self.wrote = true;
        self.conn
            .prepare_cached(
                "INSERT INTO events (stream_id, stream_seq, kind, schema_version, recorded_at_ms,
                                     payload, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    e.stream_id,
                    e.stream_seq as i64,
                    e.kind,
                    e.schema_version,
                    e.recorded_at_ms,
                    e.payload,
                    &e.prev_hash.0[..],
                    &e.hash.0[..],
                ])
            })
            .map_err(Error::sqlite_with(|| {
                format!("appending to {}", e.stream_id)
            }))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn put_head(&mut self, h: &HeadUpdate<'_>) -> Result<()> {
        self.wrote = true;
        self.touched.push(h.stream_id.to_owned());
        self.cache.heads.remove(h.stream_id);
        let result = if h.created {
            self.conn
                .prepare_cached(
                    "INSERT INTO streams (stream_id, subject, status, created_at_ms, updated_at_ms,
                                          head_seq, head_hash)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        h.stream_id,
                        h.subject,
                        h.status.unwrap_or(DEFAULT_STATUS),
                        h.now_ms,
                        h.head_seq as i64,
                        &h.head_hash.0[..],
                    ])
                })
        } else if let Some(status) = h.status {
            self.conn
                .prepare_cached(
                    "UPDATE streams SET status = ?2, updated_at_ms = ?3, head_seq = ?4, head_hash = ?5
                     WHERE stream_id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        h.stream_id,
                        status,
                        h.now_ms,
                        h.head_seq as i64,
                        &h.head_hash.0[..],
                    ])
                })
        } else {
            // Most appends keep the status: leaving it out spares the status index a write.
            self.conn
                .prepare_cached(
                    "UPDATE streams SET updated_at_ms = ?2, head_seq = ?3, head_hash = ?4
                     WHERE stream_id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        h.stream_id,
                        h.now_ms,
                        h.head_seq as i64,
                        &h.head_hash.0[..],
                    ])
                })
        };
        result.map_err(Error::sqlite_with(|| {
            format!("advancing the head of {}", h.stream_id)
        }))?;
        self.cache
            .heads
            .insert(h.stream_id.to_owned(), Some((h.head_seq, h.head_hash)));
        Ok(())
    }

    fn put_timer(&mut self, t: &Timer) -> Result<()> {
        self.wrote = true;
        self.conn
            .prepare_cached(
                "INSERT INTO timers (stream_id, name, due_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (stream_id, name) DO UPDATE SET due_at_ms = ?3",
            )
            .and_then(|mut s| s.execute(params![t.stream_id, t.name, t.due_at_ms]))
            .map(drop)
            .map_err(Error::sqlite_with(|| {
                format!("arming timer {} of {}", t.name, t.stream_id)
            }))
    }

    fn clear_timer(&mut self, stream_id: &str, name: &str) -> Result<()> {
        self.wrote = true;
        self.conn
            .prepare_cached("DELETE FROM timers WHERE stream_id = ?1 AND name = ?2")
            .and_then(|mut s| s.execute([stream_id, name]))
            .map(drop)
            .map_err(Error::sqlite_with(|| {
                format!("clearing timer {name} of {stream_id}")
            }))
    }
}

const SELECT_EVENT: &str = "SELECT global_seq, stream_id, stream_seq, kind, schema_version,
    recorded_at_ms, payload, prev_hash, hash FROM events";

fn digest(stream_id: &str, seq: u64, bytes: &[u8]) -> Result<Digest32> {
    Digest32::from_slice(bytes).ok_or_else(|| Error::Corrupt {
        stream: stream_id.to_owned(),
        seq,
        detail: format!("a stored hash is {} bytes, not 32", bytes.len()),
    })
}

fn row_to_event(r: &rusqlite::Row<'_>) -> Result<Event> {
    let get = |e: rusqlite::Error| Error::Sqlite {
        context: "decoding an event row".into(),
        cause: e,
    };
    let stream_id: String = r.get(1).map_err(get)?;
    let stream_seq = r.get::<_, i64>(2).map_err(get)? as u64;
    // Once the row's place is known, an undecodable column is corruption at that place.
    let get = |e: rusqlite::Error| Error::Corrupt {
        stream: stream_id.clone(),
        seq: stream_seq,
        detail: format!("an event column cannot be decoded ({e})"),
    };
    // The hashes are read in place, not copied out of the row first.
    let hash_at = |i: usize| match r.get_ref(i).map_err(get)? {
        rusqlite::types::ValueRef::Blob(bytes) => digest(&stream_id, stream_seq, bytes),
        other => Err(get(rusqlite::Error::InvalidColumnType(
            i,
            "hash".into(),
            other.data_type(),
        ))),
    };
    Ok(Event {
        global_seq: r.get::<_, i64>(0).map_err(get)? as u64,
        kind: r.get(3).map_err(get)?,
        schema_version: r.get(4).map_err(get)?,
        recorded_at_ms: r.get(5).map_err(get)?,
        payload: r.get(6).map_err(get)?,
        prev_hash: hash_at(7)?,
        hash: hash_at(8)?,
        stream_id,
        stream_seq,
    })
}

fn collect_events(
    stmt: &mut rusqlite::Statement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<Event>> {
    let mut rows = stmt.query(p).map_err(Error::sqlite("reading events"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(Error::sqlite("reading events"))? {
        out.push(row_to_event(row)?);
    }
    Ok(out)
}

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StreamInfo, Vec<u8>)> {
    Ok((
        StreamInfo {
            stream_id: r.get(0)?,
            subject: r.get(1)?,
            status: r.get(2)?,
            created_at_ms: r.get(3)?,
            updated_at_ms: r.get(4)?,
            head_seq: r.get::<_, i64>(5)? as u64,
            head_hash: Digest32::GENESIS,
        },
        r.get(6)?,
    ))
}

fn finish_info((mut info, hash): (StreamInfo, Vec<u8>)) -> Result<StreamInfo> {
    info.head_hash = digest(&info.stream_id, info.head_seq, &hash)?;
    Ok(info)
}

fn stream_info_in(c: &Connection, stream_id: &str) -> Result<Option<StreamInfo>> {
    c.prepare_cached(&format!("{SELECT_STREAM} WHERE stream_id = ?1"))
        .and_then(|mut s| s.query_row([stream_id], row_to_info).optional())
        .map_err(Error::sqlite_with(|| format!("reading stream {stream_id}")))?
        .map(finish_info)
        .transpose()
}

const SELECT_STREAM: &str = "SELECT stream_id, subject, status, created_at_ms, updated_at_ms,
    head_seq, head_hash FROM streams";

impl JournalRead for SqliteJournal {
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Event>> {
        let short = self.try_in_place(|c| snapshot(c, |c| short_stream_events_in(c, stream_id)));
        if let Some(events) = short.transpose()?.flatten() {
            // Never waits: yields only when this task has run long without yielding.
            tokio::task::consume_budget().await;
            return Ok(events);
        }
        let stream_id = stream_id.to_owned();
        self.read(move |c| snapshot(c, |c| stream_events_in(c, &stream_id)))
            .await
    }

    async fn read_streams(&self, stream_ids: &[String]) -> Result<Vec<Vec<Event>>> {
        let stream_ids = stream_ids.to_vec();
        // One trip to the blocking pool and one snapshot for the whole list.
        self.read(move |c| {
            snapshot(c, |c| {
                stream_ids
                    .iter()
                    .map(|id| stream_events_in(c, id))
                    .collect()
            })
        })
        .await
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        if let Some(read) = self.try_in_place(|c| stream_info_in(c, stream_id)) {
            tokio::task::consume_budget().await;
            return read;
        }
        let stream_id = stream_id.to_owned();
        self.read(move |c| stream_info_in(c, &stream_id)).await
    }
}

impl JournalScan for SqliteJournal {
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{SELECT_EVENT} WHERE global_seq > ?1 ORDER BY global_seq LIMIT ?2"
                ))
                .map_err(Error::sqlite("reading events"))?;
            collect_events(&mut stmt, params![after as i64, limit as i64])
        })
        .await
    }

    async fn streams(&self, f: &StreamFilter) -> Result<Vec<StreamInfo>> {
        let f = f.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{SELECT_STREAM} WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR status = ?2)
                     AND (?3 IS NULL OR created_at_ms >= ?3) AND (?4 IS NULL OR created_at_ms < ?4)
                     ORDER BY created_at_ms, stream_id"
                ))
                .map_err(Error::sqlite("listing streams"))?;
            let rows = stmt
                .query_map(
                    params![f.subject, f.status, f.created_from_ms, f.created_until_ms],
                    row_to_info,
                )
                .map_err(Error::sqlite("listing streams"))?;
            rows.map(|r| r.map_err(Error::sqlite("listing streams")).and_then(finish_info))
                .collect()
        })
        .await
    }

    async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT stream_id, name, due_at_ms FROM timers WHERE due_at_ms <= ?1
                     ORDER BY due_at_ms, stream_id LIMIT ?2",
                )
                .map_err(Error::sqlite("reading due timers"))?;
            let rows = stmt
                .query_map(params![now_ms, limit as i64], row_to_timer)
                .map_err(Error::sqlite("reading due timers"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(Error::sqlite("reading due timers"))
        })
        .await
    }

    async fn next_timer(&self) -> Result<Option<Timer>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT stream_id, name, due_at_ms FROM timers ORDER BY due_at_ms, stream_id LIMIT 1",
            )
            .and_then(|mut s| s.query_row([], row_to_timer).optional())
            .map_err(Error::sqlite("reading the next timer"))
        })
        .await
    }
}

fn row_to_timer(r: &rusqlite::Row<'_>) -> rusqlite::Result<Timer> {
    Ok(Timer {
        stream_id: r.get(0)?,
        name: r.get(1)?,
        due_at_ms: r.get(2)?,
    })
}

impl JournalAppend for SqliteJournal {
    async fn append(&self, append: Append) -> Result<Appended> {
        self.writer.as_ref().ok_or(Error::OpenedReadOnly)?;
        // Checked and encoded here, so the writer thread spends its time on writing.
        let payloads = ops::prepare(&append)?;
        self.request(|reply| Request::Append(append, payloads, reply))
            .await
    }

    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        self.writer.as_ref().ok_or(Error::OpenedReadOnly)?;
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let payloads = ops::prepare_all(&appends)?;
        let all = appends.into_iter().zip(payloads).collect();
        self.request(|reply| Request::AppendAll(all, reply)).await
    }
}

impl Leases for SqliteJournal {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        let (stream_id, owner) = (stream_id.to_owned(), owner.to_owned());
        self.request(|reply| Request::Acquire {
            stream_id,
            owner,
            ttl_ms,
            reply,
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        let lease = lease.clone();
        self.request(|reply| Request::Renew(lease, ttl_ms, reply))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.request(|reply| Request::Release(lease, reply)).await
    }
}

/// An import into an empty SQLite journal: one `BEGIN IMMEDIATE` transaction on a
/// connection of its own (the writer thread is idle meanwhile), rolled back when dropped
/// without [`crate::import::ImportSink::finish`].
pub(crate) struct SqliteImport {
    conn: Connection,
}

impl SqliteJournal {
    /// Starts an import: takes the write lock and checks that the journal holds nothing.
    pub(crate) fn begin_import(&self) -> Result<SqliteImport> {
        if self.writer.is_none() {
            return Err(Error::OpenedReadOnly);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| schema::readonly_or(e, &self.path, "opening the journal to copy into"))?;
        set_busy_timeout(&conn)?;
        schema::make_durable(&conn, &self.path)?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| write_refusal(&e))?;
        let (streams, events, timers): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM streams), (SELECT count(*) FROM events),
                        (SELECT count(*) FROM timers)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(Error::sqlite("checking that the journal is empty"))?;
        if streams + events + timers > 0 {
            return Err(Error::CopyTargetNotEmpty {
                target: self.path.display().to_string(),
                streams,
                events,
                timers,
            });
        }
        Ok(SqliteImport { conn })
    }
}

impl crate::import::ImportSink for SqliteImport {
    fn events(&mut self, events: &[Event]) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO events (global_seq, stream_id, stream_seq, kind, schema_version,
                                     recorded_at_ms, payload, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(Error::sqlite("preparing the copy of events"))?;
        for e in events {
            st.execute(params![
                e.global_seq as i64,
                e.stream_id,
                e.stream_seq as i64,
                e.kind,
                e.schema_version,
                e.recorded_at_ms,
                e.payload,
                &e.prev_hash.0[..],
                &e.hash.0[..],
            ])
            .map_err(Error::sqlite_with(|| {
                format!("copying event {} of {}", e.stream_seq, e.stream_id)
            }))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, streams: &[StreamInfo], timers: &[Timer]) -> Result<()> {
        {
            let mut st = self
                .conn
                .prepare_cached(
                    "INSERT INTO streams (stream_id, subject, status, created_at_ms,
                                          updated_at_ms, head_seq, head_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(Error::sqlite("preparing the copy of streams"))?;
            for s in streams {
                st.execute(params![
                    s.stream_id,
                    s.subject,
                    s.status,
                    s.created_at_ms,
                    s.updated_at_ms,
                    s.head_seq as i64,
                    &s.head_hash.0[..],
                ])
                .map_err(Error::sqlite_with(|| {
                    format!("copying the record of {}", s.stream_id)
                }))?;
            }
            let mut st = self
                .conn
                .prepare_cached(
                    "INSERT INTO timers (stream_id, name, due_at_ms) VALUES (?1, ?2, ?3)",
                )
                .map_err(Error::sqlite("preparing the copy of timers"))?;
            for t in timers {
                st.execute(params![t.stream_id, t.name, t.due_at_ms])
                    .map_err(Error::sqlite_with(|| {
                        format!("copying timer {} of {}", t.name, t.stream_id)
                    }))?;
            }
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(Error::sqlite("committing the copy"))
    }
}
