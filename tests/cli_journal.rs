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

/// The `<section>` of the HTML report `html` that shows stream `id`.
fn report_section<'a>(html: &'a str, id: &str) -> &'a str {
    html.split("<section id=\"stream-")
        .skip(1)
        .find(|s| s.contains(&format!("Stream <code>{id}</code>")))
        .unwrap_or_else(|| panic!("no section shows stream {id}"))
        .split("</section>")
        .next()
        .unwrap()
}

/// The steps of rotation `id` in the order first started, from `journal show --json`.
fn steps_started(dir: &Path, id: &str) -> Vec<String> {
    let out = rekey(&["journal", "show", id, "--json"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut steps = Vec::new();
    for e in events.iter().filter(|e| e["kind"] == "StepStarted") {
        let payload: serde_json::Value =
            serde_json::from_str(e["payload"].as_str().unwrap()).unwrap();
        let step: rekey::saga::StepId = serde_json::from_value(payload["step"].clone()).unwrap();
        if !steps.contains(&step.to_string()) {
            steps.push(step.to_string());
        }
    }
    steps
}

/// Whether `needles` occur in `haystack` in this order.
fn in_order(haystack: &str, needles: &[String]) -> bool {
    let mut from = 0;
    needles
        .iter()
        .all(|n| match haystack[from..].find(n.as_str()) {
            Some(at) => {
                from += at + n.len();
                true
            }
            None => false,
        })
}

/// The HTML report of a journal holding a completed and a compensated rotation: each
/// rotation's steps in the order they started (undo steps marked), the chain verified
/// intact at the top, every head as `journal heads` writes it, written atomically with
/// `--output` and to stdout without; no secret value anywhere in it.
#[test]
fn an_html_report_shows_each_rotation_step_by_step_with_verification_and_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("rekey.toml"), config(r#"["true"]"#, "")).unwrap();
    let out = rekey(&["rotate", "api"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let completed = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(dir.join("rekey.toml"), config(r#"["false"]"#, "")).unwrap();
    let out = rekey(&["rotate", "api"], dir);
    assert!(
        text(&out.stdout).contains("compensated"),
        "{}",
        text(&out.stdout)
    );
    let compensated = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let out = rekey(
        &["journal", "export", "--format", "html", "-o", "report.html"],
        dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the report went to the file only");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let mode = std::fs::metadata(dir.join("report.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a new report is private, as every file rekey writes"
    );
    assert!(
        !names(dir)
            .iter()
            .any(|n| n.contains(".tmp") || n.starts_with('.')),
        "no temporary file left: {:?}",
        names(dir)
    );

    // Verification first, then the index, then the rotations.
    let verify = rekey(&["journal", "verify", "--json"], dir);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let intact = format!(
        "intact: {} streams, {} events, every chain verified",
        report["streams"], report["events"]
    );
    let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("no {needle}"));
    assert!(at("Chain verification: intact") < at("<section id=\"index\""));
    assert!(at(&intact) < at("<section id=\"stream-1\""), "{html}");
    assert!(!html.contains("BROKEN"));
    assert!(
        at(&completed) < at("<section id=\"stream-1\""),
        "the index lists it"
    );
    assert!(at(&compensated) < at("<section id=\"stream-1\""));
    assert!(at("<p>1 compensated, 1 completed</p>") < at("<section id=\"stream-1\""));

    let done = report_section(&html, &completed);
    let steps = steps_started(dir, &completed);
    assert!(
        steps.first().is_some_and(|s| s.starts_with("capture#")),
        "{steps:?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("retire_old#0"));
    let cells: Vec<String> = steps
        .iter()
        .map(|s| format!("<td class=\"step\"><code>{s}</code>"))
        .collect();
    assert!(in_order(done, &cells), "steps {steps:?} in order:\n{done}");
    assert!(
        done.contains("<span class=\"badge ok\">completed</span>"),
        "{done}"
    );
    assert!(done.contains("Grace deadline") && !done.contains("<tr class=\"undo\">"));

    let undone = report_section(&html, &compensated);
    let steps = steps_started(dir, &compensated);
    assert!(
        in_order(&steps.join(" "), &["verify#3".into(), "restore#1".into()]),
        "{steps:?}"
    );
    let cells: Vec<String> = steps
        .iter()
        .map(|s| format!("<td class=\"step\"><code>{s}</code>"))
        .collect();
    assert!(
        in_order(undone, &cells),
        "steps {steps:?} in order:\n{undone}"
    );
    assert!(undone.contains("<span class=\"badge warn\">compensated</span>"));
    assert!(
        undone.contains("<tr class=\"undo\"><td class=\"step\"><code>restore#1</code>"),
        "{undone}"
    );
    assert!(
        undone.contains("Compensated because")
            && undone.contains("verification: false failed (exit status: 1)"),
        "the failure is quoted: {undone}"
    );

    // Every head, as `journal heads` writes it.
    let heads = text(&rekey(&["journal", "heads"], dir).stdout);
    assert_eq!(heads.lines().count(), 3);
    for line in heads.lines() {
        let head: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = format!(
            "<td><code>{}</code></td><td class=\"num\">{}</td><td><code class=\"hash\">{}</code></td>",
            head["stream_id"].as_str().unwrap(),
            head["seq"],
            head["hash"].as_str().unwrap()
        );
        assert!(html.contains(&row), "head {line} not in the report");
    }

    // -o takes the other formats too: the same bytes as stdout.
    let events = rekey(&["journal", "export"], dir);
    let out = rekey(&["journal", "export", "-o", "events.jsonl"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.join("events.jsonl")).unwrap(),
        events.stdout
    );
    let shown = rekey(&["journal", "show", &completed, "--json"], dir);
    let out = rekey(
        &[
            "journal", "show", &completed, "--format", "json", "-o", "s.json",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(dir.join("s.json")).unwrap(), shown.stdout);

    // A report never lands on the evidence.
    let before = std::fs::read(dir.join("journal.db")).unwrap();
    for target in ["journal.db", "./journal.db"] {
        let out = rekey(
            &["journal", "export", "--format", "html", "-o", target],
            dir,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("is the journal being read"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(dir.join("journal.db")).unwrap(), before);

    // One rotation, to stdout: its own head only.
    let out = rekey(&["journal", "show", &compensated, "--format", "html"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("<!DOCTYPE html>") && shown.contains(&intact));
    assert!(in_order(report_section(&shown, &compensated), &cells));
    assert!(!shown.contains(&completed), "show covers its one stream");
    assert_eq!(
        shown.matches("<code class=\"hash\">").count(),
        1,
        "one head"
    );

    // Self-contained: nothing to fetch, nothing to run.
    for page in [&html, &shown] {
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("http"));
    }
    // No value the rotations made or replaced is anywhere in the reports.
    let vault: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vault.json")).unwrap()).unwrap();
    let values: Vec<&str> = vault["secrets"]["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(values.len(), 3, "{vault}");
    for value in values {
        assert!(value.len() >= 16);
        assert!(
            !html.contains(value) && !shown.contains(value),
            "a value is in a report"
        );
    }
}

/// A tampered journal's report says BROKEN at its top, naming the stream, the sequence and
/// the expected and found hashes as `verify` does; it still shows the broken rotation's
/// events (the broken one marked), and the command exits as `verify` does (3), with
/// the report written all the same.
#[test]
fn a_tampered_journals_html_report_names_the_broken_link_and_exits_like_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, rotation) = demo_journal(tmp.path());
    {
        let conn = rusqlite::Connection::open(&journal).unwrap();
        conn.execute_batch(
            "DROP TRIGGER events_append_only_update;
             UPDATE events SET payload = replace(payload, '\"attempt\":1', '\"attempt\":7')
             WHERE stream_seq = 2 AND stream_id NOT LIKE 'lock:%';",
        )
        .unwrap();
    }
    let j = ["--journal", "d/journal.db"];
    let verify = rekey(
        &[&["journal", "verify", "--json"][..], &j].concat(),
        tmp.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["broken"]["stream_id"], rotation.as_str());
    assert_eq!(report["broken"]["seq"], 2);

    let export = rekey(
        &[&["journal", "export", "--format", "html"][..], &j].concat(),
        tmp.path(),
    );
    assert_eq!(
        export.status.code(),
        verify.status.code(),
        "exits as verify does"
    );
    assert_eq!(export.status.code(), Some(3));
    let html = text(&export.stdout);
    let top = html.split("<section id=\"index\"").next().unwrap();
    assert!(top.contains("Chain verification: BROKEN"), "{top}");
    for (label, value) in [
        ("Stream", format!("<code>{rotation}</code>")),
        ("Sequence", "2".to_owned()),
        (
            "Expected",
            report["broken"]["expected"].as_str().unwrap().to_owned(),
        ),
        (
            "Found",
            report["broken"]["found"].as_str().unwrap().to_owned(),
        ),
    ] {
        assert!(
            top.contains(&format!("<th scope=\"row\">{label}</th><td>"))
                && top
                    .split(&format!("<th scope=\"row\">{label}</th>"))
                    .nth(1)
                    .unwrap()
                    .split("</tr>")
                    .next()
                    .unwrap()
                    .contains(&value),
            "{label} {value} at the top:\n{top}"
        );
    }
    // What can be shown is shown: the broken rotation's events, the break marked.
    let section = report_section(&html, &rotation);
    assert!(section.contains("breaks at sequence 2"), "{section}");
    assert!(
        section.contains("<tr class=\"broken-row\"><td class=\"num\">2</td>"),
        "{section}"
    );
    assert!(
        section.contains("<td class=\"num\">21</td>"),
        "every event is listed"
    );
    assert!(
        html.contains("lock:demo-api-key"),
        "the other stream is listed"
    );

    // `show` of the broken stream, to a file: written, and exit 3.
    let out = rekey(
        &[
            &[
                "journal", "show", &rotation, "--format", "html", "-o", "r.html",
            ][..],
            &j,
        ]
        .concat(),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("BROKEN"),
        "{}",
        text(&out.stderr)
    );
    let shown = std::fs::read_to_string(tmp.path().join("r.html")).unwrap();
    assert!(shown.contains("Chain verification: BROKEN") && shown.contains("breaks at sequence 2"));
}

/// Names and error texts are data, not markup: a secret, an application and an error text
/// holding `<script>`, quotes and `&` render as text in the report.
#[tokio::test]
async fn an_html_report_renders_markup_in_names_and_errors_as_text() {
    use rekey::journal::{Append, JournalAppend, NewEvent, SqliteJournal};
    use rekey::saga::{Command as Next, Plan, Role, RotationEvent, TargetRef, Trigger};

    let tmp = tempfile::tempdir().unwrap();
    let secret = r#"<script>alert("secret")</script> & co"#;
    let app = r#"<img src=x onerror="alert('app')">"#;
    let message = r#"</td><b onmouseover="x()">denied</b> & "quoted""#;
    let plan = Plan {
        secret: secret.to_owned(),
        lock_key: secret.to_owned(),
        targets: vec![
            TargetRef::new(Role::Rotator, app),
            TargetRef::new(Role::Store, "vault"),
            TargetRef::new(Role::Verifier, "check"),
        ],
        grace_ms: 0,
        attempts_max: 3,
    };
    let id = "0193a5b2-7c1e-7d3a-9f10-2b7c9e0f1a44";
    let requested = RotationEvent::Requested {
        rotation_id: id.to_owned(),
        plan,
        trigger: Trigger::Bulk,
        actor: "api".to_owned(),
    };
    let state = rekey::saga::apply(None, &requested).unwrap();
    let Next::Run { step, attempt, key } = rekey::saga::decide(&state, 0) else {
        panic!("a new rotation runs its first step");
    };
    let events = [
        requested,
        RotationEvent::StepStarted { step, attempt, key },
        RotationEvent::StepFailed {
            step,
            attempt,
            class: rekey::saga::ErrorClass::Transient,
            message: message.to_owned(),
            retry_at_ms: Some(SystemClock.now_ms() + 60_000),
        },
    ];
    {
        let j = SqliteJournal::open(tmp.path().join("journal.db")).unwrap();
        let events = events
            .iter()
            .map(|e| NewEvent::new(e.kind(), serde_json::to_value(e).unwrap()))
            .collect();
        j.append(Append::new(id, 0, events).subject(secret).status("open"))
            .await
            .unwrap();
    }
    let out = rekey(
        &[
            "journal",
            "export",
            "--format",
            "html",
            "--journal",
            "journal.db",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let html = text(&out.stdout);
    let section = report_section(&html, id);
    assert!(
        section.contains("<td class=\"num\">3</td>"),
        "all three events: {section}"
    );
    for raw in [secret, app, message, "<script", "<img", "<b ", "</td><b"] {
        assert!(
            !html.contains(raw),
            "{raw} is markup in the report:\n{html}"
        );
    }
    // Each as text: its markup characters as character references.
    let as_text = |raw: &str| {
        raw.replace('&', "&#38;")
            .replace('<', "&#60;")
            .replace('>', "&#62;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;")
    };
    assert!(
        section.contains(&format!("<dt>Secret</dt><dd>{}</dd>", as_text(secret))),
        "{section}"
    );
    assert!(
        section.contains(&format!("rotator {}, store vault", as_text(app))),
        "{section}"
    );
    assert!(section.contains(&as_text(message)), "{section}");
    assert!(html.contains(&format!("<a href=\"#stream-1\">{}</a>", as_text(secret))));
}
