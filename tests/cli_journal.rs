//! The journal file as the `rekey` binary meets it: which commands may create one, empty
//! and damaged files, auditing read-only copies (as an unprivileged user), and a drive
//! whose lease lapses while the journal stalls. Each test runs the real binary in its own
//! temp dir.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rekey::journal::{Clock, SystemClock};

/// The unprivileged user auditors run as in these tests (`nobody`).
const NOBODY: u32 = 65_534;

fn command(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rekey"));
    c.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("REKEY_CONFIG")
        .env_remove("REKEY_JOURNAL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    c
}

fn rekey(args: &[&str], dir: &Path) -> Output {
    command(args, dir).output().expect("run rekey")
}

/// `rekey args` run as `nobody`, who may read the files but write none of them.
fn rekey_as_nobody(args: &[&str], dir: &Path) -> Output {
    command(args, dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run rekey as nobody")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file in `dir` with its bytes and mode: what auditing must leave as it was.
fn listing(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    std::fs::read_dir(dir)
        .expect("listing the dir")
        .map(|e| {
            let e = e.expect("a dir entry");
            let mode = e.metadata().expect("metadata").permissions().mode();
            let bytes = std::fs::read(e.path()).expect("reading a file");
            (e.file_name().to_string_lossy().into_owned(), (bytes, mode))
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    listing(dir).into_keys().collect()
}

/// A config for secret `api`: a random value, kept in a local vault, written to a file and
/// checked by the `verifier` command; `extra` is appended. Its journal is `journal.db`.
fn config(verifier: &str, extra: &str) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.secret-file]
kind = "file"
path = "secret.txt"

[providers.check]
kind = "command"
command = {verifier}

[secrets.api]
rotator = "random"
stores = ["vault"]
dependents = ["secret-file"]
verifiers = ["check"]
grace = "0s"
{extra}"#
    )
}

/// `rotate` of an unknown secret, `status`, `resume`, `plan` and the auditor's commands
/// never create a journal; `rotate` of a configured secret does.
#[test]
fn only_a_command_that_must_write_creates_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("rekey.toml"), config(r#"["true"]"#, "")).unwrap();
    let only_config = vec!["rekey.toml".to_owned()];

    let out = rekey(&["rotate", "apj"], dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no secret named \"apj\"")
            && text(&out.stderr).contains("configured secrets: api"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(names(dir), only_config, "rotate of a typo created a file");

    let out = rekey(&["status"], dir);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("no journal at ") && stdout.contains("journal.db yet"),
        "status must say there is no journal yet: {stdout}"
    );
    assert!(
        stdout.contains("api: no open rotation; never rotated"),
        "{stdout}"
    );
    let out = rekey(&["status", "--json"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["secret"], "api");
    assert!(rows[0]["open_rotation"].is_null() && rows[0]["last_ended"].is_null());
    let out = rekey(&["status", "apj"], dir);
    assert_eq!(out.status.code(), Some(1), "status of a typo");

    let out = rekey(&["resume"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("nothing to resume: no journal at "),
        "{}",
        text(&out.stdout)
    );
    let out = rekey(&["resume", "--wait", "--json"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");

    assert!(rekey(&["plan"], dir).status.success());
    for args in [
        &["journal", "verify"][..],
        &["journal", "export"][..],
        &["journal", "heads"][..],
        &["journal", "show", "some-rotation"][..],
    ] {
        let mut args = args.to_vec();
        args.extend(["--journal", "journal.db"]);
        let out = rekey(&args, dir);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("journal.db: no journal here"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(names(dir), only_config, "a command created a file");

    let out = rekey(&["rotate", "api"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        dir.join("journal.db").exists(),
        "rotate of a configured secret creates the journal"
    );
}

/// A zero-length file where the journal should be (a truncated or half-restored journal) is
/// refused like any other file that is not a journal, and left as it is.
#[test]
fn an_empty_journal_file_is_refused_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("rekey.toml"), config(r#"["true"]"#, "")).unwrap();
    std::fs::write(dir.join("journal.db"), b"").unwrap();
    let before = listing(dir);
    for args in [
        &["rotate", "api"][..],
        &["status"][..],
        &["resume"][..],
        &["resume", "--wait"][..],
        &["journal", "verify", "--journal", "journal.db"][..],
        &["journal", "export", "--journal", "journal.db"][..],
        &["journal", "show", "x", "--journal", "journal.db"][..],
    ] {
        let out = rekey(args, dir);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("journal.db: not a rekey journal (the file is empty"),
            "{args:?}: {stderr}"
        );
        assert_eq!(listing(dir), before, "{args:?} changed the dir");
    }
}

/// Writes a demo journal in `dir/d` and returns (its path, a rotation id in it).
fn demo_journal(dir: &Path) -> (std::path::PathBuf, String) {
    let out = rekey(&["demo", "--dir", "d", "--grace-secs", "0"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotation = text(&out.stdout)
        .split("(rotation ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the demo names its rotation")
        .to_owned();
    (dir.join("d/journal.db"), rotation)
}

/// Copies `files` of the journal at `from` into a new dir `to`.
fn copy_journal(from: &Path, files: &[&str], to: &Path) {
    std::fs::create_dir(to).unwrap();
    for f in files {
        let name = format!("journal.db{f}");
        std::fs::copy(from.with_file_name(&name), to.join(&name)).unwrap();
    }
}

/// Runs the auditor's commands on the journal in `dir` (as `nobody` when `unprivileged`)
/// and checks each works, sees `streams`/`events` and the stream `show`n, and that `dir`
/// is as before: no `-wal` or `-shm` created, no file or mode changed.
fn audit(dir: &Path, unprivileged: bool, streams: u64, events: usize, show: &str, what: &str) {
    let run = |args: &[&str]| {
        let out = if unprivileged {
            rekey_as_nobody(args, dir)
        } else {
            rekey(args, dir)
        };
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let before = listing(dir);
    let j = ["--journal", "journal.db"];
    let verify = run(&[&["journal", "verify"][..], &j].concat());
    assert!(
        verify.contains(&format!("intact: {streams} streams, {events} events")),
        "{what}: {verify}"
    );
    let has_wal = before.contains_key("journal.db-wal");
    assert_eq!(
        verify.contains("note: no journal.db-wal beside it"),
        !has_wal,
        "{what}: verify says whether a -wal was there to read: {verify}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&run(&[&["journal", "verify", "--json"][..], &j].concat())).unwrap();
    assert_eq!(report["events"], events, "{what}");
    assert_eq!(report["wal_read"], has_wal, "{what}");
    let export = run(&[&["journal", "export"][..], &j].concat());
    assert_eq!(export.lines().count(), events, "{what}: export");
    let heads = run(&[&["journal", "heads"][..], &j].concat());
    assert_eq!(heads.lines().count() as u64, streams, "{what}: heads");
    let shown = run(&[&["journal", "show", show][..], &j].concat());
    assert!(!shown.trim().is_empty(), "{what}: show");
    let mut after = listing(dir);
    // A `-shm` already there is SQLite's shared index of a journal that may be in use: a
    // reader in a writable dir takes part in it like any reader. It is not evidence.
    if let (Some(shm), Some(was)) = (
        after.get_mut("journal.db-shm"),
        before.get("journal.db-shm"),
    ) {
        shm.0.clone_from(&was.0);
    }
    assert_eq!(after, before, "{what}: auditing created or changed a file");
}

/// Auditors read copies they may not write (a read-only mount, another user's files):
/// `journal.db` alone, with the `-wal` of a journal copied while rekey ran, or with its
/// `-shm` too. Every read works and creates or changes nothing beside the evidence, whether
/// or not the directory could be written.
#[tokio::test]
async fn auditing_a_copy_reads_it_and_writes_nothing_beside_it() {
    use rekey::journal::{Append, JournalAppend, NewEvent, SqliteJournal};

    let tmp = tempfile::tempdir().unwrap();
    // `nobody` must reach the copies.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (journal, rotation) = demo_journal(tmp.path());
    let copies = tmp.path().join("copies");
    std::fs::create_dir(&copies).unwrap();
    std::fs::set_permissions(&copies, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Copies taken while a writer has events only in the WAL.
    let note = "audit-note";
    {
        let j = SqliteJournal::open(&journal).unwrap();
        for seq in 0..3 {
            let event = NewEvent::new("Note", serde_json::json!({ "n": seq }));
            j.append(Append::new(note, seq, vec![event])).await.unwrap();
        }
        for (name, files) in [
            ("wal", &["", "-wal"][..]),
            ("wal-shm", &["", "-wal", "-shm"]),
        ] {
            copy_journal(&journal, files, &copies.join(format!("ro-{name}")));
            copy_journal(&journal, files, &copies.join(format!("rw-{name}")));
        }
    }
    // The cleanly closed journal is one file.
    assert!(!journal.with_file_name("journal.db-wal").exists());
    copy_journal(&journal, &[""], &copies.join("ro-db"));
    copy_journal(&journal, &[""], &copies.join("rw-db"));
    let verify = rekey(
        &["journal", "verify", "--journal", "d/journal.db", "--json"],
        tmp.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let (streams, events) = (
        report["streams"].as_u64().unwrap(),
        report["events"].as_u64().unwrap() as usize,
    );

    for name in ["db", "wal", "wal-shm"] {
        let ro = copies.join(format!("ro-{name}"));
        for f in std::fs::read_dir(&ro).unwrap() {
            std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o444))
                .unwrap();
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        audit(
            &ro,
            true,
            streams,
            events,
            &rotation,
            &format!("read-only {name}"),
        );
        audit(
            &ro,
            true,
            streams,
            events,
            note,
            &format!("read-only {name}"),
        );
        let rw = copies.join(format!("rw-{name}"));
        audit(
            &rw,
            false,
            streams,
            events,
            &rotation,
            &format!("writable {name}"),
        );
    }
}

/// The page number and size of index `name` in the SQLite file at `path`.
fn index_page(path: &Path, name: &str) -> (u64, u64) {
    let c = rusqlite::Connection::open(path).unwrap();
    let page: i64 = c
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    (page as u64, size as u64)
}

/// A journal whose chains are intact but whose SQLite file is damaged (an index page
/// overwritten) fails `verify` with exit 3, saying the file is damaged, before `resume`
/// trips over it.
#[test]
fn a_damaged_index_page_fails_verify_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, _) = demo_journal(tmp.path());
    // An index `verify`'s own reads do not use, but `resume` does.
    let (page, size) = index_page(&journal, "streams_by_status");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap();
        f.seek(SeekFrom::Start((page - 1) * size)).unwrap();
        f.write_all(&vec![0x55; size as usize]).unwrap();
    }
    let out = rekey(
        &["journal", "verify", "--journal", "d/journal.db"],
        tmp.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("BROKEN: the journal file is damaged")
            && stdout.contains("SQLite integrity check"),
        "{stdout}"
    );
    let out = rekey(
        &["journal", "verify", "--journal", "d/journal.db", "--json"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["damaged"].as_str().is_some_and(|d| !d.is_empty()),
        "{report}"
    );
}

/// Waits until `path` exists (a hook reached its rendezvous), failing after a minute.
fn wait_for(path: &Path) {
    let deadline_ms = SystemClock.now_ms() + 60_000;
    while !path.exists() {
        assert!(
            SystemClock.now_ms() < deadline_ms,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `resume --wait` with a 1 s lease, while the journal stalls for longer than the lease
/// (another process holds its write lock): the lease lapses mid-drive, the command takes
/// it again and finishes the rotation, exit 0.
#[test]
fn resume_wait_finishes_when_its_lease_lapses_during_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The first verification kills `rekey rotate` (leaving the check in doubt); the next
    // one waits at a rendezvous so the test can stall the journal under it.
    let verifier = r#"["sh", "-c", "cat > /dev/null; if [ ! -e crashed ]; then touch crashed; kill -KILL $PPID; exit 1; fi; touch stalled; while [ ! -e go ]; do sleep 0.02; done"]"#;
    let lease_ms = 1_000;
    std::fs::write(
        dir.join("rekey.toml"),
        config(verifier, "\n[runner]\nlease_ttl = \"1s\"\n"),
    )
    .unwrap();
    let crashed = rekey(&["rotate", "api"], dir);
    assert_eq!(crashed.status.code(), None, "the hook killed rotate");

    let resume = command(&["resume", "--wait", "--json"], dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&dir.join("stalled"));
    let other = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let expires_at_ms: i64 = other
        .query_row("SELECT max(expires_at_ms) FROM leases", [], |r| r.get(0))
        .unwrap();
    std::fs::write(dir.join("go"), b"").unwrap();
    // The injected stall: the journal takes no write until its clock is a whole lease past
    // the lease's expiry (a renewal queued during the stall carries a time from inside it).
    while SystemClock.now_ms() < expires_at_ms + lease_ms {
        std::thread::sleep(Duration::from_millis(20));
    }
    other.execute_batch("ROLLBACK").unwrap();

    let out = resume.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let outcomes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcomes[0]["result"], "completed", "{outcomes}");
    assert!(
        text(&out.stderr).contains("the lease lapsed mid-drive; taking the rotation up again"),
        "the stall must have cost the lease: {}",
        text(&out.stderr)
    );
}
