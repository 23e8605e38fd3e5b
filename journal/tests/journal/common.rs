//! Helpers shared by every test module: a temp dir per test, journals on a manual clock,
//! event builders, chain assertions, byte-for-byte directory snapshots and a seeded PRNG.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rekey_journal::{
    Append, Appended, Digest32, Event, JournalAppend, JournalRead, JournalScan, Leases,
    ManualClock, MemoryJournal, NewEvent, PostgresJournal, SqliteJournal, VerifyReport,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A fixed start time, so timestamps and lease expiries can be asserted exactly.
pub const T0: i64 = 1_700_000_000_000;

/// Everything both engines offer; lets one generic test body run on SQLite and in memory.
pub trait Engine:
    JournalAppend + JournalRead + JournalScan + Leases + Send + Sync + 'static
{
}
impl<T: JournalAppend + JournalRead + JournalScan + Leases + Send + Sync + 'static> Engine for T {}

/// A fresh temp dir and the journal path inside it (the file does not exist yet). Keep the
/// dir alive for the whole test: dropping it deletes the journal.
pub fn scratch() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let path = dir.path().join("journal.db");
    (dir, path)
}

/// A manual clock standing at [`T0`].
pub fn manual_clock() -> ManualClock {
    ManualClock::new(T0)
}

/// Opens a writable SQLite journal stamped by `clock`.
pub fn open_sqlite(path: &Path, clock: &ManualClock) -> SqliteJournal {
    SqliteJournal::open_with_clock(path, Arc::new(clock.clone()))
        .unwrap_or_else(|e| panic!("opening {} writable: {e}", path.display()))
}

/// An in-memory journal stamped by `clock`.
pub fn memory(clock: &ManualClock) -> MemoryJournal {
    MemoryJournal::new(Arc::new(clock.clone()))
}

/// The durable engines; the suites that apply to both run once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Where one durable journal lives: a file in a temp dir, or a schema of the test server's
/// database. Opening it again reopens the same journal, as a restarted rekey would.
#[derive(Debug)]
pub struct Place {
    pub kind: Kind,
    /// Keeps the SQLite file's directory alive.
    pub _dir: Option<TempDir>,
    pub path: PathBuf,
    pub schema: String,
}

impl Place {
    /// A new place where no journal exists yet.
    pub fn new(kind: Kind) -> Self {
        match kind {
            Kind::Sqlite => {
                let (dir, path) = scratch();
                Self {
                    kind,
                    _dir: Some(dir),
                    path,
                    schema: String::new(),
                }
            }
            Kind::Postgres => Self {
                kind,
                _dir: None,
                path: PathBuf::new(),
                schema: crate::pg_server::fresh_schema(),
            },
        }
    }

    /// Opens the journal writable, stamped by `clock`.
    pub fn open(&self, clock: &ManualClock) -> Journal {
        match self.kind {
            Kind::Sqlite => Journal::Sqlite(open_sqlite(&self.path, clock)),
            Kind::Postgres => Journal::Postgres(
                PostgresJournal::open_with_clock(
                    crate::pg_server::config(),
                    &self.schema,
                    Arc::new(clock.clone()),
                )
                .unwrap_or_else(|e| panic!("opening schema {}: {e}", self.schema)),
            ),
        }
    }

    /// Opens the journal writable, stamped by the real clock (SQLite: the system's;
    /// PostgreSQL: the database's).
    pub fn open_real_time(&self) -> Journal {
        match self.kind {
            Kind::Sqlite => Journal::Sqlite(
                SqliteJournal::open(&self.path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display())),
            ),
            Kind::Postgres => Journal::Postgres(
                PostgresJournal::open(crate::pg_server::config(), &self.schema)
                    .unwrap_or_else(|e| panic!("opening schema {}: {e}", self.schema)),
            ),
        }
    }

    /// Opens the journal for an audit: read-only for SQLite (PostgreSQL has no read-only
    /// open; an audit there only reads).
    pub fn open_audit(&self) -> Journal {
        match self.kind {
            Kind::Sqlite => Journal::Sqlite(
                SqliteJournal::open_read_only(&self.path)
                    .unwrap_or_else(|e| panic!("auditing {}: {e}", self.path.display())),
            ),
            Kind::Postgres => self.open_real_time(),
        }
    }
}

/// A durable journal of either engine: the library's own, as every rekey command opens it.
pub type Journal = rekey_journal::AnyJournal;

/// Makes `mod $body { fn sqlite; fn postgres }`, two tests running the async test body
/// `$body(kind)` on each durable engine.
macro_rules! on_both_engines {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn sqlite() {
                super::$body(crate::common::Kind::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                super::$body(crate::common::Kind::Postgres).await
            }
        }
    )+};
}
pub(crate) use on_both_engines;

/// As [`on_both_engines`], for synchronous test bodies `$body(kind)`.
macro_rules! on_both_engines_sync {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[test]
            fn sqlite() {
                super::$body(crate::common::Kind::Sqlite)
            }

            #[test]
            fn postgres() {
                super::$body(crate::common::Kind::Postgres)
            }
        }
    )+};
}
pub(crate) use on_both_engines_sync;

/// An event of `kind` carrying `payload`.
pub fn event(kind: &str, payload: Value) -> NewEvent {
    NewEvent::new(kind, payload)
}

/// A small event whose payload records `i`, to tell events apart after a read.
pub fn numbered(i: u64) -> NewEvent {
    event("Numbered", json!({ "i": i }))
}

/// Appends and panics, naming the stream, when the journal refuses.
pub async fn append_ok<J: JournalAppend>(j: &J, append: Append) -> Appended {
    let stream = append.stream_id.clone();
    j.append(append)
        .await
        .unwrap_or_else(|e| panic!("append to {stream} should succeed: {e}"))
}

/// Appends `n` single-event appends to `stream`, continuing from its current head; returns
/// the last append's outcome.
pub async fn fill<J: JournalAppend + JournalRead>(j: &J, stream: &str, n: u64) -> Appended {
    assert!(n > 0, "fill needs at least one event");
    let mut head = head_seq(j, stream).await;
    let mut last = None;
    for _ in 0..n {
        let appended = append_ok(j, Append::new(stream, head, vec![numbered(head + 1)])).await;
        head = appended.last_seq;
        last = Some(appended);
    }
    last.expect("n > 0")
}

/// The stream's head sequence (0 when it does not exist).
pub async fn head_seq<J: JournalRead>(j: &J, stream: &str) -> u64 {
    j.stream_info(stream)
        .await
        .unwrap_or_else(|e| panic!("reading the head of {stream}: {e}"))
        .map_or(0, |info| info.head_seq)
}

/// Reads a stream and panics with the error when the read fails.
pub async fn read<J: JournalRead>(j: &J, stream: &str) -> Vec<Event> {
    j.read_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("reading {stream}: {e}"))
}

/// Asserts `events` are a stream's whole history: sequences 1..=n without gaps or
/// duplicates, each event linked to its predecessor, each hash recomputing from its fields.
pub fn assert_chain(stream: &str, events: &[Event]) {
    let mut prev = Digest32::GENESIS;
    for (i, e) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(e.stream_id, stream, "event {seq} belongs to another stream");
        assert_eq!(
            e.stream_seq, seq,
            "{stream}: sequences must run 1, 2, 3... gap-free"
        );
        assert_eq!(
            e.prev_hash,
            prev,
            "{stream}#{seq}: prev_hash must link to #{}",
            seq - 1
        );
        assert_eq!(
            e.hash,
            e.expected_hash(),
            "{stream}#{seq}: hash must recompute"
        );
        prev = e.hash;
    }
}

/// Asserts a verify report found no broken link.
pub fn assert_intact(report: &VerifyReport, context: &str) {
    assert!(
        report.is_intact(),
        "{context}: verify should be intact, found {}",
        report
            .broken
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
}

/// The journal's data files in `dir` with their bytes; two equal snapshots mean no data was
/// written and no data file created. SQLite's `-shm` file is left out: it is a shared-memory
/// index that every connection rewrites and rebuilds from the WAL, and holds no data. An empty
/// `-wal` is left out too: it is equivalent to no WAL (a read-only connection creates one).
pub fn dir_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.expect("reading a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path())
                .unwrap_or_else(|e| panic!("reading {}: {e}", entry.path().display()));
            let scratch = name.ends_with("-shm") || (name.ends_with("-wal") && bytes.is_empty());
            (!scratch).then_some((name, bytes))
        })
        .collect()
}

/// Asserts two snapshots are identical, naming the files that differ rather than dumping bytes.
pub fn assert_unchanged(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
    context: &str,
) {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    let changed: Vec<String> = names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| match (before.get(n), after.get(n)) {
            (None, Some(b)) => format!("{n} (created, {} bytes)", b.len()),
            (Some(_), None) => format!("{n} (deleted)"),
            _ => format!("{n} (bytes changed)"),
        })
        .collect();
    assert!(
        changed.is_empty(),
        "{context}: files must be left byte-for-byte unchanged, but: {}",
        changed.join(", ")
    );
}

/// Runs `fut` to completion on a fresh single-threaded runtime (for proptest bodies).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(fut)
}

/// Runs `fut` to completion on a fresh multi-threaded runtime, so spawned tasks really race.
pub fn block_on_threaded<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(fut)
}

/// A small seeded PRNG (SplitMix64): reproducible choices without another dev-dependency.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Asserts `result` is an error matching `pattern` and returns it; otherwise panics with the
/// context and what actually came back.
macro_rules! expect_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?, $($context:tt)+) => {
        match $result {
            Err(e) => {
                assert!(
                    matches!(&e, $pattern $(if $guard)?),
                    "{}: expected {}, got {e:?} ({e})",
                    format!($($context)+),
                    stringify!($pattern)
                );
                e
            }
            Ok(v) => panic!(
                "{}: expected {}, but it succeeded with {v:?}",
                format!($($context)+),
                stringify!($pattern)
            ),
        }
    };
}
pub(crate) use expect_err;

/// An append queued with the writer and not yet answered.
pub type Queued<'a> = std::pin::Pin<Box<dyn Future<Output = rekey_journal::Result<Appended>> + 'a>>;

/// Sends each of `appends` to `j`'s writer (polling each once) while something else holds
/// the write lock (`held` names it), asserting none is answered yet: once the lock is
/// released they reach the writer queued together, as one batch.
pub fn queue_while_held<'a, J: JournalAppend>(
    j: &'a J,
    appends: &[Append],
    held: &str,
) -> Vec<Queued<'a>> {
    let mut queued: Vec<Queued<'a>> = appends
        .iter()
        .cloned()
        .map(|a| Box::pin(j.append(a)) as Queued<'a>)
        .collect();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for (i, f) in queued.iter_mut().enumerate() {
        assert!(
            f.as_mut().poll(&mut cx).is_pending(),
            "request {i} was answered while {held} was held"
        );
    }
    queued
}
