//! Bad input: files (and PostgreSQL schemas) that are not journals, journals from a newer
//! rekey, read-only files and malformed events are each refused with a specific error, and
//! nothing on disk (or in the database) changes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rekey_journal::{
    APPEND_EVENTS_MAX, Append, EVENT_BYTES_MAX, Error, JournalAppend, JournalScan, KIND_BYTES_MAX,
    Leases, NewEvent, PostgresJournal, SCHEMA_VERSION, STREAM_ID_BYTES_MAX, SqliteJournal, TimerOp,
};
use serde_json::{Value, json};

use crate::common::{
    Engine, Kind, Place, SplitMix, append_ok, assert_chain, assert_intact, assert_unchanged,
    dir_snapshot, event, expect_err, fill, head_seq, manual_clock, memory, numbered, open_sqlite,
    read, scratch,
};
use crate::pg_server;

/// Writes a small healthy journal at `path` and closes it.
async fn small_journal(path: &Path) {
    let j = open_sqlite(path, &manual_clock());
    fill(&j, "one", 3).await;
    fill(&j, "two", 2).await;
}

/// Asserts both ways of opening `path` refuse it with an error matching `pattern`, and that
/// nothing in its directory changed.
macro_rules! assert_refused {
    ($path:expr, $pattern:pat $(if $guard:expr)?, $what:expr) => {{
        let path: &Path = $path;
        let dir = path.parent().expect("a parent dir");
        let before = dir_snapshot(dir);
        expect_err!(SqliteJournal::open(path), $pattern $(if $guard)?, "open {}", $what);
        assert_unchanged(&before, &dir_snapshot(dir), &format!("after open of {}", $what));
        expect_err!(SqliteJournal::open_read_only(path), $pattern $(if $guard)?, "open_read_only {}", $what);
        assert_unchanged(&before, &dir_snapshot(dir), &format!("after open_read_only of {}", $what));
    }};
}

#[test]
fn a_text_file_is_not_a_journal() {
    let (_dir, path) = scratch();
    let mut rng = SplitMix(7);
    let text: String = (0..4096)
        .map(|_| char::from(b' ' + rng.below(95) as u8))
        .collect();
    std::fs::write(&path, text).expect("writing the text file");
    assert_refused!(&path, Error::NotAJournal { .. }, "a text file");
}

/// A file of 0 bytes (a journal that lost its contents) is not taken for a new journal.
#[test]
fn an_empty_file_is_not_a_journal() {
    let (_dir, path) = scratch();
    std::fs::write(&path, b"").expect("creating the empty file");
    assert_refused!(
        &path,
        Error::NotAJournal { reason, .. } if reason.contains("the file is empty (0 bytes)"),
        "an empty file"
    );
}

#[test]
fn another_programs_database_is_not_a_journal() {
    let (_dir, path) = scratch();
    let c = rusqlite::Connection::open(&path).expect("creating a database");
    c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER); INSERT INTO invoices VALUES (1, 42);")
        .expect("filling it");
    drop(c);
    assert_refused!(
        &path,
        Error::NotAJournal { reason, .. } if reason.contains("another program"),
        "another program's database"
    );

    // Another program that versions its schema: it has a user_version but not rekey's id.
    let c = rusqlite::Connection::open(&path).expect("reopening it");
    c.execute_batch("PRAGMA user_version = 3")
        .expect("versioning it");
    drop(c);
    assert_refused!(
        &path,
        Error::NotAJournal { reason, .. } if reason.contains("application id"),
        "another program's versioned database"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_naming_both_versions() {
    let (_dir, path) = scratch();
    small_journal(&path).await;
    let newer = SCHEMA_VERSION + 40;
    let c = rusqlite::Connection::open(&path).expect("opening the file directly");
    c.execute_batch(&format!("PRAGMA user_version = {newer}"))
        .expect("raising the schema version");
    drop(c);
    assert_refused!(
        &path,
        Error::NewerSchema { found, supported, .. } if *found == newer && *supported == SCHEMA_VERSION,
        "a newer journal"
    );
    let message = SqliteJournal::open(&path)
        .expect_err("newer schema")
        .to_string();
    assert!(
        message.contains(&format!("version {newer}"))
            && message.contains(&format!("({SCHEMA_VERSION})")),
        "the message must name the file's version {newer} and ours {SCHEMA_VERSION}: {message}"
    );
}

/// The crate checks the mode itself, so this holds even when the tests run as root.
#[tokio::test]
async fn a_read_only_journal_is_refused_for_writing_but_can_be_audited() {
    let (dir, path) = scratch();
    small_journal(&path).await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod 0444");
    let before = dir_snapshot(dir.path());
    expect_err!(
        SqliteJournal::open(&path),
        Error::ReadOnly { .. },
        "opening a 0444 journal"
    );
    assert_unchanged(&before, &dir_snapshot(dir.path()), "after the refused open");

    let j = SqliteJournal::open_read_only(&path).expect("auditing a read-only journal");
    assert_intact(
        &j.verify(Some(&j.heads().await.expect("heads")))
            .await
            .expect("verify"),
        "read-only",
    );
    assert_eq!(
        read(&j, "one").await.len(),
        3,
        "the audit reads every event"
    );
    drop(j);
    assert_eq!(
        std::fs::read(&path).expect("reading the journal"),
        before["journal.db"],
        "auditing must not write the journal file"
    );
}

/// `open_read_only` reads and verifies a journal and refuses every write, changing no byte.
#[tokio::test]
async fn open_read_only_reads_and_verifies_without_writing() {
    let (dir, path) = scratch();
    small_journal(&path).await;
    let before = dir_snapshot(dir.path());
    {
        let j = SqliteJournal::open_read_only(&path).expect("opening read-only");
        let report = j
            .verify(Some(&j.heads().await.expect("heads")))
            .await
            .expect("verify");
        assert_intact(&report, "read-only open");
        assert_eq!(
            (report.streams, report.events),
            (2, 5),
            "verify reads everything"
        );
        let events = read(&j, "one").await;
        assert_chain("one", &events);
        assert_eq!(
            j.read_after(0, 100).await.expect("read_after").len(),
            5,
            "read_after"
        );
        expect_err!(
            j.append(Append::new("one", 3, vec![numbered(4)])).await,
            Error::OpenedReadOnly,
            "appending through a read-only journal"
        );
        expect_err!(
            j.acquire("one", "auditor", 1_000).await,
            Error::OpenedReadOnly,
            "leasing through a read-only journal"
        );
    }
    assert_eq!(
        std::fs::read(&path).expect("reading the journal"),
        before["journal.db"],
        "a read-only open must not write the journal file"
    );
    assert_unchanged(&before, &dir_snapshot(dir.path()), "after a read-only open");
}

#[test]
fn open_read_only_of_a_missing_file_creates_nothing() {
    let (dir, path) = scratch();
    expect_err!(
        SqliteJournal::open_read_only(&path),
        Error::NoJournal { .. },
        "a path that does not exist"
    );
    let created = std::fs::read_dir(dir.path())
        .expect("listing the dir")
        .count();
    assert_eq!(
        created, 0,
        "no file may be created, not even SQLite's side files"
    );
}

/// A payload of exactly `size` bytes together with its kind.
fn sized_event(size: usize) -> NewEvent {
    // `{"p":"..."}` is 8 bytes of framing; the kind "Big" is 3.
    event("Big", json!({ "p": "x".repeat(size - 11) }))
}

/// A malformed append: what it is, the append, and a check of the error it must get.
type Malformed = (&'static str, Append, fn(&Error) -> bool);

/// Every malformed append, with the error it must get. Each is refused before it touches
/// the journal.
fn malformed() -> Vec<Malformed> {
    let invalid: fn(&Error) -> bool = |e| matches!(e, Error::InvalidEvent { .. });
    let too_large: fn(&Error) -> bool = |e| matches!(e, Error::EventTooLarge { size, max, .. } if *size == EVENT_BYTES_MAX + 1 && *max == EVENT_BYTES_MAX);
    let one = |e: NewEvent| Append::new("s", 0, vec![e]);
    vec![
        (
            "an oversize event",
            one(sized_event(EVENT_BYTES_MAX + 1)),
            too_large,
        ),
        (
            "an oversize event after a good one",
            Append::new("s", 0, vec![numbered(1), sized_event(EVENT_BYTES_MAX + 1)]),
            too_large,
        ),
        ("an array payload", one(event("E", json!([1, 2]))), invalid),
        ("a string payload", one(event("E", json!("text"))), invalid),
        ("a number payload", one(event("E", json!(7))), invalid),
        ("a null payload", one(event("E", Value::Null)), invalid),
        ("an empty event type", one(event("", json!({}))), invalid),
        (
            "an event type with a space",
            one(event("Step Started", json!({}))),
            invalid,
        ),
        (
            "a non-ASCII event type",
            one(event("Étape", json!({}))),
            invalid,
        ),
        (
            "an event type with a slash",
            one(event("a/b", json!({}))),
            invalid,
        ),
        (
            "an overlong event type",
            one(event(&"K".repeat(KIND_BYTES_MAX + 1), json!({}))),
            invalid,
        ),
        (
            "an unnamed timer",
            one(numbered(1).with_timer(TimerOp::Clear {
                name: String::new(),
            })),
            invalid,
        ),
        (
            "an empty stream id",
            Append::new("", 0, vec![numbered(1)]),
            invalid,
        ),
        (
            "a stream id with a space",
            Append::new("a b", 0, vec![numbered(1)]),
            invalid,
        ),
        (
            "a stream id with a NUL",
            Append::new("a\0b", 0, vec![numbered(1)]),
            invalid,
        ),
        (
            "an overlong stream id",
            Append::new("s".repeat(STREAM_ID_BYTES_MAX + 1), 0, vec![numbered(1)]),
            invalid,
        ),
        (
            "an append with no events",
            Append::new("s", 0, vec![]),
            invalid,
        ),
        (
            "an append with too many events",
            Append::new("s", 0, vec![numbered(1); APPEND_EVENTS_MAX + 1]),
            invalid,
        ),
    ]
}

async fn refuse_malformed<J: Engine>(j: &J, engine: &str) {
    for (what, append, ok) in malformed() {
        let stream = append.stream_id.clone();
        let err = j
            .append(append)
            .await
            .expect_err(&format!("{engine}: {what} must be refused"));
        assert!(ok(&err), "{engine}: {what} got the wrong error: {err:?}");
        if let Error::InvalidEvent { stream: s, .. } | Error::EventTooLarge { stream: s, .. } = &err
        {
            assert_eq!(
                *s,
                stream.chars().take(STREAM_ID_BYTES_MAX).collect::<String>(),
                "{engine}: {what}: the error names the stream"
            );
        }
    }
    assert_eq!(
        j.read_after(0, 100).await.expect("read_after"),
        vec![],
        "{engine}: no refused append may write anything"
    );
    assert_eq!(
        j.stream_info("s").await.expect("stream_info"),
        None,
        "{engine}: no stream created"
    );

    // The limits are inclusive: exactly the largest event, type and id are accepted.
    let largest = Append::new(
        "s".repeat(STREAM_ID_BYTES_MAX),
        0,
        vec![
            sized_event(EVENT_BYTES_MAX),
            event(&"K".repeat(KIND_BYTES_MAX), json!({})),
        ],
    );
    j.append(largest)
        .await
        .unwrap_or_else(|e| panic!("{engine}: events exactly at the limits must be accepted: {e}"));
}

#[tokio::test]
async fn malformed_appends_are_refused_and_the_file_is_unchanged() {
    let (dir, path) = scratch();
    small_journal(&path).await;
    let before = dir_snapshot(dir.path());
    {
        let j = open_sqlite(&path, &manual_clock());
        for (what, append, ok) in malformed() {
            let err = j.append(append).await.expect_err(what);
            assert!(ok(&err), "{what} got the wrong error: {err:?}");
        }
        assert_eq!(
            j.read_after(0, 100).await.expect("read_after").len(),
            5,
            "nothing appended"
        );
        assert_intact(&j.verify(None).await.expect("verify"), "after the refusals");
    }
    assert_unchanged(&before, &dir_snapshot(dir.path()), "after refused appends");
}

#[tokio::test]
async fn malformed_appends_are_refused_by_every_engine() {
    let (_dir, path) = scratch();
    refuse_malformed(&open_sqlite(&path, &manual_clock()), "sqlite").await;
    refuse_malformed(&memory(&manual_clock()), "memory").await;
    let place = Place::new(Kind::Postgres);
    refuse_malformed(&place.open(&manual_clock()), "postgres").await;
}

/// Every table of `schema` with all its rows as text; two equal snapshots mean nothing in
/// the schema was created, changed or removed.
async fn schema_snapshot(schema: &str) -> Vec<(String, String)> {
    let c = pg_server::client().await;
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .expect("listing the schema")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let rows = match c
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(x::text, '|' ORDER BY x::text), '') FROM {schema}.{t} x"
                ),
                &[],
            )
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => "(an index or sequence)".to_owned(),
        };
        out.push((t, rows));
    }
    out
}

/// Asserts opening `schema` is refused with an error matching `pattern`, changing nothing.
macro_rules! assert_pg_refused {
    ($schema:expr, $pattern:pat $(if $guard:expr)?, $what:expr) => {{
        let schema: &str = $schema;
        let before = schema_snapshot(schema).await;
        expect_err!(
            PostgresJournal::open(pg_server::config(), schema),
            $pattern $(if $guard)?,
            "open {}", $what
        );
        assert_eq!(before, schema_snapshot(schema).await, "after open of {}", $what);
    }};
}

#[tokio::test]
async fn a_schema_of_another_program_is_not_a_journal() {
    let schema = pg_server::fresh_schema();
    let c = pg_server::client().await;
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.invoices (id int8 PRIMARY KEY, total int8);
         INSERT INTO {schema}.invoices VALUES (1, 42);"
    ))
    .await
    .expect("another program's schema");
    assert_pg_refused!(
        &schema,
        Error::NotAPostgresJournal { reason, .. } if reason.contains("another program") && reason.contains("invoices"),
        "another program's schema"
    );

    // Another program with a table called meta: its application id is not rekey's.
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.meta (id int4, application_id int8, schema_version int8);
         INSERT INTO {schema}.meta VALUES (1, 7, 1);"
    ))
    .await
    .expect("a meta table");
    assert_pg_refused!(
        &schema,
        Error::NotAPostgresJournal { reason, .. } if reason.contains("application id"),
        "another program's meta table"
    );
}

#[tokio::test]
async fn a_newer_postgres_schema_is_refused_naming_both_versions() {
    let place = Place::new(Kind::Postgres);
    fill(&place.open(&manual_clock()), "one", 2).await;
    let newer = SCHEMA_VERSION + 40;
    pg_server::client()
        .await
        .batch_execute(&format!(
            "UPDATE {}.meta SET schema_version = {newer}",
            place.schema
        ))
        .await
        .expect("raising the schema version");
    assert_pg_refused!(
        &place.schema,
        Error::NewerPostgresSchema { found, supported, .. } if *found == newer && *supported == SCHEMA_VERSION,
        "a newer journal"
    );
    let message = PostgresJournal::open(pg_server::config(), &place.schema)
        .expect_err("newer schema")
        .to_string();
    assert!(
        message.contains(&format!("version {newer}"))
            && message.contains(&format!("({SCHEMA_VERSION})")),
        "the message must name the schema's version {newer} and ours {SCHEMA_VERSION}: {message}"
    );
}

#[test]
fn a_schema_name_that_is_not_a_plain_identifier_is_refused() {
    for bad in [
        "",
        "Rekey",
        "1st",
        "pg_catalog",
        "a-b",
        "a;drop table x",
        &"s".repeat(64),
    ] {
        expect_err!(
            PostgresJournal::open(pg_server::config(), bad),
            Error::PostgresConfig { reason } if reason.contains("schema name"),
            "schema name {bad:?}"
        );
    }
}

/// Malformed appends leave the PostgreSQL journal's tables exactly as they were.
#[tokio::test]
async fn malformed_appends_change_nothing_in_the_postgres_schema() {
    let place = Place::new(Kind::Postgres);
    let j = place.open(&manual_clock());
    fill(&j, "one", 3).await;
    let before = schema_snapshot(&place.schema).await;
    for (what, append, ok) in malformed() {
        let err = j.append(append).await.expect_err(what);
        assert!(ok(&err), "{what} got the wrong error: {err:?}");
    }
    assert_eq!(
        before,
        schema_snapshot(&place.schema).await,
        "after refused appends"
    );
}

/// A journal whose write lock another process holds past the busy timeout: the append is
/// refused with `Busy` (saying what to do), nothing is written, and the writer keeps
/// serving once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_locked_by_another_process_is_reported_as_busy() {
    let (_dir, path) = scratch();
    let clock = manual_clock();
    let j = open_sqlite(&path, &clock);
    fill(&j, "s", 1).await;

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = j
        .append(Append::new("s", 1, vec![numbered(2)]))
        .await
        .expect_err("the lock is held");
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    assert!(err.is_transient());
    other.execute_batch("ROLLBACK").unwrap();

    append_ok(&j, Append::new("s", 1, vec![numbered(2)])).await;
    assert_eq!(head_seq(&j, "s").await, 2);
}
