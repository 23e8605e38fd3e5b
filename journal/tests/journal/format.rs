//! The stored format: canonical payload text, the hash chain's byte layout (pinned, since
//! changing it would orphan every existing journal), and stream summaries.

use rekey_journal::{
    Append, Digest32, JournalScan, ManualClock, SqliteJournal, StreamFilter, chain_hash,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::{
    Engine, T0, append_ok, assert_chain, assert_intact, event, fill, manual_clock, memory,
    numbered, open_sqlite, read, scratch,
};

/// Payloads are stored with sorted keys, whatever order they were built in, so the hashed
/// bytes do not depend on how a caller assembled the JSON.
#[tokio::test]
async fn payloads_are_stored_as_canonical_json() {
    let (_dir, path) = scratch();
    let j = open_sqlite(&path, &manual_clock());
    let mut inner = serde_json::Map::new();
    inner.insert("zeta".into(), json!(1));
    inner.insert("alpha".into(), json!([true, null, "é\n\"q\""]));
    let mut outer = serde_json::Map::new();
    outer.insert("b".into(), serde_json::Value::Object(inner));
    outer.insert("a".into(), json!(-5));
    append_ok(&j, Append::new("s", 0, vec![event("Sorted", outer.into())])).await;
    let events = read(&j, "s").await;
    assert_eq!(
        events[0].payload, r#"{"a":-5,"b":{"alpha":[true,null,"é\n\"q\""],"zeta":1}}"#,
        "the stored text must be compact JSON with keys sorted at every level"
    );
    assert_chain("s", &events);
}

/// The chain hash's byte layout, computed independently here and pinned to a known value.
#[test]
fn chain_hash_layout_is_pinned() {
    let prev = Digest32([0x11; 32]);
    let (stream, seq, kind, version, at, payload) = ("s-1", 7u64, "K", 2u32, 1234i64, r#"{"a":1}"#);
    let mut h = Sha256::new();
    h.update(prev.0);
    h.update(3u64.to_be_bytes());
    h.update(stream);
    h.update(1u64.to_be_bytes());
    h.update(kind);
    h.update(seq.to_be_bytes());
    h.update(version.to_be_bytes());
    h.update(at.to_be_bytes());
    h.update(7u64.to_be_bytes());
    h.update(payload);
    let independent = Digest32(h.finalize().into());
    let hash = chain_hash(&prev, stream, seq, kind, version, at, payload);
    assert_eq!(
        hash, independent,
        "chain_hash must follow the documented layout"
    );
    assert_eq!(
        hash.to_hex(),
        PINNED,
        "the chain hash of existing journals must never change"
    );
    assert_eq!(Digest32::from_hex(PINNED), Some(hash), "hex round-trips");
    assert_ne!(
        chain_hash(&prev, "s-1K", seq, "", version, at, payload),
        hash,
        "length prefixes keep field boundaries apart"
    );
}

const PINNED: &str = "928ffe63a85c7eba0c7c036e189e3496680f9f94172b1c7686a4992e958eea38";

/// A cleanly closed journal is one self-contained file: copying just that file (a backup, an
/// auditor's copy) must carry every acknowledged event, not leave them in a `-wal` beside it.
#[tokio::test]
async fn a_closed_journal_file_holds_every_event() {
    let (dir, path) = scratch();
    {
        let j = open_sqlite(&path, &manual_clock());
        fill(&j, "one", 30).await;
        fill(&j, "two", 20).await;
    }
    let copy = dir.path().join("copy").join("journal.db");
    std::fs::create_dir(copy.parent().expect("parent")).expect("creating the copy's dir");
    std::fs::copy(&path, &copy).expect("copying the journal file alone");
    let j = SqliteJournal::open_read_only(&copy)
        .unwrap_or_else(|e| panic!("the copied journal file must open on its own: {e}"));
    assert_eq!(
        j.read_after(0, 100).await.expect("read_after").len(),
        50,
        "every event in the copy"
    );
    assert_intact(&j.verify(None).await.expect("verify"), "the copy");
}

/// A new journal has 2,048-byte pages: a commit writes each page it changed whole, and
/// appends to many streams change many pages. The file keeps them once written.
#[tokio::test]
async fn a_new_sqlite_journal_has_2048_byte_pages() {
    let (_dir, path) = scratch();
    {
        let j = open_sqlite(&path, &manual_clock());
        fill(&j, "one", 3).await;
    }
    let conn = rusqlite::Connection::open(&path).expect("opening the journal file");
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("reading the page size");
    assert_eq!(page_size, 2048);
}

/// The names in `dir`.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the dir")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Copies `files` of the journal in `from` into a new dir `to`.
fn copy_journal(from: &std::path::Path, files: &[&str], to: &std::path::Path) {
    std::fs::create_dir(to).expect("creating the copy's dir");
    for f in files {
        let name = format!("journal.db{f}");
        std::fs::copy(from.join(&name), to.join(&name)).expect("copying");
    }
}

/// A copy of a journal in use, taken with its `-wal`, is read whole; taken without it, it
/// is read as it is, saying no `-wal` was read; a cleanly closed journal's file alone is read, saying it read no
/// `-wal`. No read creates a `-wal` or `-shm` beside the copy.
#[tokio::test]
async fn a_copy_with_its_wal_is_read_whole_and_nothing_is_created_beside_it() {
    let (dir, path) = scratch();
    let with_wal = dir.path().join("with-wal");
    let stale = dir.path().join("stale");
    let alone = dir.path().join("alone");
    {
        let j = open_sqlite(&path, &manual_clock());
        fill(&j, "one", 4).await;
        copy_journal(dir.path(), &["", "-wal"], &with_wal);
        copy_journal(dir.path(), &[""], &stale);
    }
    copy_journal(dir.path(), &[""], &alone);
    let j = SqliteJournal::open_read_only(with_wal.join("journal.db")).expect("opening the copy");
    assert!(j.reads_wal());
    assert_eq!(
        read(&j, "one").await.len(),
        4,
        "the events in the -wal are read"
    );
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "the copy with its -wal",
    );
    drop(j);
    assert_eq!(names(&with_wal), ["journal.db", "journal.db-wal"]);

    // The journal is created whole, so a copy without the -wal that holds its events is
    // a journal all the same: it reads without them, and says it read no -wal (so
    // `verify` warns that the copy may be stale).
    let j = SqliteJournal::open_read_only(stale.join("journal.db")).expect("opening the copy");
    assert!(!j.reads_wal());
    assert_eq!(
        read(&j, "one").await.len(),
        0,
        "the events were in the -wal left behind"
    );
    drop(j);
    assert_eq!(names(&stale), ["journal.db"]);

    let j = SqliteJournal::open_read_only(alone.join("journal.db")).expect("opening the copy");
    assert!(!j.reads_wal(), "no -wal was there to read");
    assert_intact(&j.verify(None).await.expect("verify"), "the file alone");
    drop(j);
    assert_eq!(names(&alone), ["journal.db"]);
}

/// Stream summaries and their filters agree between engines.
async fn summaries<J: Engine>(j: &J, clock: &ManualClock) {
    append_ok(
        j,
        Append::new("r1", 0, vec![numbered(1)]).subject("db-password"),
    )
    .await;
    clock.advance(10);
    append_ok(
        j,
        Append::new("r2", 0, vec![numbered(1)])
            .subject("api-key")
            .status("running"),
    )
    .await;
    clock.advance(10);
    let a = append_ok(
        j,
        Append::new("r1", 1, vec![numbered(2)])
            .subject("ignored")
            .status("completed"),
    )
    .await;
    let r1 = j
        .stream_info("r1")
        .await
        .expect("stream_info")
        .expect("r1 exists");
    assert_eq!(
        r1.subject.as_deref(),
        Some("db-password"),
        "the subject is set on creation only"
    );
    assert_eq!(
        r1.status, "completed",
        "status follows the latest append that names one"
    );
    assert_eq!(
        (r1.created_at_ms, r1.updated_at_ms),
        (T0, T0 + 20),
        "timestamps"
    );
    assert_eq!((r1.head_seq, r1.head_hash), (2, a.head_hash), "head");
    let names = async |f: StreamFilter| -> Vec<String> {
        j.streams(&f)
            .await
            .expect("streams")
            .into_iter()
            .map(|s| s.stream_id)
            .collect()
    };
    assert_eq!(
        names(StreamFilter::default()).await,
        ["r1", "r2"],
        "oldest first"
    );
    let by_subject = StreamFilter {
        subject: Some("api-key".into()),
        ..StreamFilter::default()
    };
    assert_eq!(names(by_subject).await, ["r2"], "by subject");
    let by_status = StreamFilter {
        status: Some("completed".into()),
        ..StreamFilter::default()
    };
    assert_eq!(names(by_status).await, ["r1"], "by status");
    let window = StreamFilter {
        created_from_ms: Some(T0 + 1),
        created_until_ms: Some(T0 + 11),
        ..StreamFilter::default()
    };
    assert_eq!(
        names(window).await,
        ["r2"],
        "by creation window [from, until)"
    );
    assert_eq!(
        j.stream_info("nope").await.expect("stream_info"),
        None,
        "unknown stream"
    );
    assert_eq!(
        j.read_stream("nope").await.expect("read_stream"),
        vec![],
        "unknown stream reads empty"
    );
}

#[tokio::test]
async fn stream_summaries_and_filters_on_both_engines() {
    let (_dir, path) = scratch();
    let clock = manual_clock();
    summaries(&open_sqlite(&path, &clock), &clock).await;
    let clock = manual_clock();
    summaries(&memory(&clock), &clock).await;
}
