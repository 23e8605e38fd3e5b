//! `rekey journal copy` from SQLite to PostgreSQL through the real binary: a journal with
//! real rotations arrives with every event, hash and global sequence unchanged (the SQLite
//! heads file verifies the copy, and rekey carries on there); a tampered source is refused
//! naming the broken stream, with nothing copied; a non-empty destination and a journal
//! copied onto itself are refused.

use std::path::Path;
use std::process::Output;

use super::journal::{config, journal_database, rekey, text};
use super::server::server;

const PASSWORD_VAR: &str = "REKEY_TEST_COPY_PASSWORD";

/// A SQLite journal `journal.db` in `dir` with `n` completed rotations of `app-key`.
fn sqlite_journal_with_rotations(dir: &Path, n: usize) {
    std::fs::write(dir.join("app.env"), "API_KEY=initial\n").unwrap();
    std::fs::write(
        dir.join("rekey.toml"),
        config("[journal]\npath = \"journal.db\""),
    )
    .unwrap();
    for _ in 0..n {
        let out = rekey(&["rotate", "app-key", "--wait"], dir, &[]);
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

fn url(user: &str, db: &str) -> String {
    format!("postgres://{user}@127.0.0.1:{}/{db}", server().port)
}

fn copy(dir: &Path, from: &str, to: &str, password: &str) -> Output {
    let ca = server().ca_file.display().to_string();
    rekey(
        &[
            "journal",
            "copy",
            "--from",
            from,
            "--to",
            to,
            "--password-env",
            PASSWORD_VAR,
            "--tls-ca-file",
            &ca,
        ],
        dir,
        &[(PASSWORD_VAR, password)],
    )
}

/// The config of a journal in database `db` as `user`, over TLS.
fn pg_config(user: &str, db: &str) -> String {
    config(&format!(
        "[journal]\nurl = \"{}\"\npassword_env = \"{PASSWORD_VAR}\"\ntls_ca_file = \"{}\"",
        url(user, db).replace("127.0.0.1", "localhost"),
        server().ca_file.display()
    ))
}

async fn events_in(db: &str) -> i64 {
    let c = server().superuser(db).await;
    c.query_one("SELECT count(*) FROM rekey.events", &[])
        .await
        .map_or(0, |r| r.get(0))
}

#[tokio::test]
async fn a_sqlite_journal_copies_to_postgres_and_its_heads_verify_the_copy() {
    journal_database("jcopy_ok", "jcopy_ok_user", "copy-ok-pw").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sqlite_journal_with_rotations(dir, 2);
    let heads = rekey(&["journal", "heads", "--journal", "journal.db"], dir, &[]);
    assert!(heads.status.success());
    std::fs::write(dir.join("heads.jsonl"), &heads.stdout).unwrap();
    let exported = rekey(&["journal", "export", "--journal", "journal.db"], dir, &[]);

    let out = copy(
        dir,
        "journal.db",
        &url("jcopy_ok_user", "jcopy_ok"),
        "copy-ok-pw",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let events = text(&exported.stdout).lines().count();
    assert!(
        stdout.starts_with(&format!("copied 3 streams, {events} events, ")),
        "two rotations and their lock stream: {stdout}"
    );

    // Switch the config to PostgreSQL: the SQLite heads verify the copy, the export is the
    // same byte for byte (payloads, hashes, global sequences), and rekey carries on there.
    std::fs::write(
        dir.join("rekey.toml"),
        pg_config("jcopy_ok_user", "jcopy_ok"),
    )
    .unwrap();
    let env = [(PASSWORD_VAR, "copy-ok-pw")];
    let verify = rekey(&["journal", "verify", "--heads", "heads.jsonl"], dir, &env);
    let stdout = text(&verify.stdout);
    assert!(verify.status.success(), "{stdout}{}", text(&verify.stderr));
    assert!(
        stdout.contains("no stream shorter than its exported head"),
        "{stdout}"
    );
    let copied = rekey(&["journal", "export"], dir, &env);
    assert_eq!(text(&copied.stdout), text(&exported.stdout));
    let out = rekey(&["rotate", "app-key", "--wait"], dir, &env);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let verify = rekey(&["journal", "verify", "--heads", "heads.jsonl"], dir, &env);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    let after = rekey(&["journal", "export"], dir, &env);
    let after = text(&after.stdout);
    assert!(
        after.starts_with(&text(&exported.stdout)),
        "the copy's history is kept"
    );
    assert!(
        after.lines().count() > events,
        "and the new rotation follows it"
    );

    // Heads written from PostgreSQL verify the SQLite original (up to what it holds).
    let pg_heads = rekey(&["journal", "heads"], dir, &env);
    std::fs::write(dir.join("pg-heads.jsonl"), &pg_heads.stdout).unwrap();
    let verify = rekey(
        &[
            "journal",
            "verify",
            "--journal",
            "journal.db",
            "--heads",
            "pg-heads.jsonl",
        ],
        dir,
        &[],
    );
    let stdout = text(&verify.stdout);
    assert_eq!(
        verify.status.code(),
        Some(3),
        "the original lacks the new rotation: {stdout}"
    );
    assert!(stdout.contains("BROKEN"), "{stdout}");

    // A journal that is not empty any more is refused as a destination, and left as it was.
    let before = events_in("jcopy_ok").await;
    let out = copy(
        dir,
        "journal.db",
        &url("jcopy_ok_user", "jcopy_ok"),
        "copy-ok-pw",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the destination journal is not empty"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was copied"), "{stderr}");
    assert_eq!(events_in("jcopy_ok").await, before);
}

#[tokio::test]
async fn a_tampered_source_is_refused_naming_the_stream_and_nothing_is_copied() {
    journal_database("jcopy_bad", "jcopy_bad_user", "copy-bad-pw").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sqlite_journal_with_rotations(dir, 1);
    let stream: String = {
        let conn = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
        conn.execute_batch(
            "DROP TRIGGER events_append_only_update;
             UPDATE events SET payload = replace(payload, '\"attempt\":1', '\"attempt\":7')
             WHERE stream_seq = 2 AND stream_id NOT LIKE 'lock:%';",
        )
        .unwrap();
        conn.query_row(
            "SELECT stream_id FROM events WHERE stream_seq = 2 AND stream_id NOT LIKE 'lock:%'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let out = copy(
        dir,
        "journal.db",
        &url("jcopy_bad_user", "jcopy_bad"),
        "copy-bad-pw",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stream {stream}: journal is corrupt at sequence 2"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was copied"), "{stderr}");
    assert_eq!(events_in("jcopy_bad").await, 0, "nothing half-copied");

    // Into a new SQLite file: refused the same way, and no file is left behind.
    let out = rekey(
        &["journal", "copy", "--from", "journal.db", "--to", "copy.db"],
        dir,
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!dir.join("copy.db").exists());
}

#[test]
fn a_journal_is_not_copied_onto_itself_and_flags_need_a_postgres_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("journal.db"), b"").unwrap();
    for (from, to) in [
        ("journal.db", "./sub/../journal.db"),
        (
            "postgres://rekey@db.example.com/rekey",
            "postgresql://rekey@db.example.com:5432/rekey",
        ),
    ] {
        let out = rekey(&["journal", "copy", "--from", from, "--to", to], dir, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("--from and --to name the same journal"),
            "{stderr}"
        );
    }
    let out = rekey(
        &[
            "journal",
            "copy",
            "--from",
            "journal.db",
            "--to",
            "b.db",
            "--tls",
            "disable",
        ],
        dir,
        &[],
    );
    assert!(
        text(&out.stderr).contains("neither --from nor --to is one"),
        "{}",
        text(&out.stderr)
    );
    let out = rekey(
        &[
            "journal",
            "copy",
            "--from",
            "journal.db",
            "--to",
            "postgres://u:pw-in-url@127.0.0.1/x",
        ],
        dir,
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--to: a postgres:// journal holds a password"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-in-url"), "{stderr}");
    assert!(!dir.join("b.db").exists());
}
