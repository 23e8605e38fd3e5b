//! `[journal] url`: the journal in PostgreSQL, through the real `rekey` binary. A rotation,
//! `status` and `journal verify` run on a journal reached over TLS with full verification
//! (as a user the server refuses without TLS), and bad `[journal]` settings are refused with
//! a clear error before anything is created.

use std::path::Path;
use std::process::{Command, Output};

use super::server::{JOURNAL_TLS_USER, server};

pub fn rekey(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rekey"));
    c.args(args)
        .current_dir(dir)
        .env_remove("REKEY_CONFIG")
        .env_remove("REKEY_JOURNAL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run rekey")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A database `db` owned by login role `user` with password `password` (so rekey may create
/// its schema there), made by the superuser.
pub async fn journal_database(db: &str, user: &str, password: &str) {
    let su = server().superuser("postgres").await;
    su.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {db}; DROP ROLE IF EXISTS {user}"
    ))
    .await
    .ok();
    su.batch_execute(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        .await
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db} OWNER {user}"))
        .await
        .unwrap();
}

/// Whether database `db` holds a schema named `rekey`.
async fn has_journal_schema(db: &str) -> bool {
    let c = server().superuser(db).await;
    c.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'rekey'", &[])
        .await
        .unwrap()
        .is_some()
}

/// The rows of `rekey.events` in database `db`.
async fn events_in(db: &str) -> i64 {
    let c = server().superuser(db).await;
    c.query_one("SELECT count(*) FROM rekey.events", &[])
        .await
        .unwrap()
        .get(0)
}

/// A config rotating `app-key` (random → local vault → env file), its `[journal]` given.
pub fn config(journal: &str) -> String {
    format!(
        r#"{journal}

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.app-env]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[secrets.app-key]
rotator = "random"
stores = ["vault"]
dependents = ["app-env"]
verifiers = ["app-env"]
grace = "0s"
"#
    )
}

const PASSWORD_VAR: &str = "REKEY_TEST_JOURNAL_PASSWORD";

/// `rekey rotate --wait`, `status` and `journal verify` on a journal in PostgreSQL, reached
/// over TLS (`verify_full` against the test CA, by host name) as a user the server refuses
/// without TLS; the password comes from the variable `password_env` names.
#[tokio::test]
async fn rotate_status_and_verify_run_on_a_postgres_journal_over_tls() {
    let s = server();
    let password = "journal-pw-5f2c9a";
    journal_database("jurl_tls", JOURNAL_TLS_USER, password).await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("app.env"), "API_KEY=initial\n").unwrap();
    let journal = format!(
        "[journal]\nurl = \"postgres://{JOURNAL_TLS_USER}@localhost:{}/jurl_tls\"\npassword_env = \"{PASSWORD_VAR}\"\ntls_ca_file = \"{}\"",
        s.port,
        s.ca_file.display()
    );
    std::fs::write(tmp.path().join("rekey.toml"), config(&journal)).unwrap();
    let env = [(PASSWORD_VAR, password)];

    let out = rekey(&["rotate", "app-key", "--wait"], tmp.path(), &env);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "rotate failed: {stdout}\n{stderr}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(!tmp.path().join("journal.db").exists(), "no SQLite journal");
    assert!(
        events_in("jurl_tls").await > 0,
        "the events are in PostgreSQL"
    );

    let out = rekey(&["status"], tmp.path(), &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("app-key: no open rotation; last ") && stdout.contains(" completed at "),
        "{stdout}"
    );

    let out = rekey(&["journal", "verify"], tmp.path(), &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("intact: "), "{stdout}");
    assert!(
        !stdout.contains("-wal"),
        "no SQLite note on PostgreSQL: {stdout}"
    );
    let out = rekey(&["journal", "heads"], tmp.path(), &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).lines().count() >= 2,
        "a rotation and its lock stream"
    );

    // The password never shows in what rekey prints.
    for out in [
        rekey(&["status", "--json"], tmp.path(), &env),
        rekey(&["policy", "check"], tmp.path(), &env),
    ] {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(password), "{all}");
    }
}

/// A journal whose `password_env` variable is unset is refused, naming the variable, before
/// anything is created in the database; so is a read-only command on a database that holds
/// no journal yet, which creates nothing either.
#[tokio::test]
async fn an_unset_password_variable_is_refused_and_creates_nothing() {
    let s = server();
    journal_database("jurl_unset", "jurl_unset_user", "unset-pw-77").await;
    let tmp = tempfile::tempdir().unwrap();
    let journal = format!(
        "[journal]\nurl = \"postgres://jurl_unset_user@127.0.0.1:{}/jurl_unset\"\npassword_env = \"{PASSWORD_VAR}\"\ntls = \"disable\"",
        s.port
    );
    std::fs::write(tmp.path().join("rekey.toml"), config(&journal)).unwrap();
    std::fs::write(tmp.path().join("app.env"), "API_KEY=initial\n").unwrap();

    for args in [
        &["rotate", "app-key"][..],
        &["journal", "verify"],
        &["status"],
    ] {
        let out = rekey(args, tmp.path(), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "password_env names {PASSWORD_VAR}, which is not set"
            )),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !has_journal_schema("jurl_unset").await,
        "nothing was created"
    );

    // With the password, a read-only command finds no journal and creates none.
    let env = [(PASSWORD_VAR, "unset-pw-77")];
    let out = rekey(&["status"], tmp.path(), &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no journal at postgres://"),
        "{}",
        text(&out.stdout)
    );
    let out = rekey(&["journal", "verify"], tmp.path(), &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no rekey journal here yet"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !has_journal_schema("jurl_unset").await,
        "nothing was created"
    );

    // And `rotate` creates it, over plain TCP on loopback as `tls = "disable"` allows.
    let out = rekey(&["rotate", "app-key", "--wait"], tmp.path(), &env);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(has_journal_schema("jurl_unset").await);
}

/// Bad `[journal]` settings are refused by every command, naming the key and what to write,
/// with nothing created: a password inside the URL (never echoed back), `tls = "disable"`
/// for a host beyond this machine, both `path` and `url`.
#[test]
fn bad_journal_settings_are_refused_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("app.env"), "API_KEY=initial\n").unwrap();
    let cases = [
        (
            "[journal]\nurl = \"postgres://rekey:hunter2-pw@127.0.0.1:1/rekey\"\ntls = \"disable\"",
            "[journal] url holds a password",
        ),
        (
            "[journal]\nurl = \"postgres://rekey@db.example.com/rekey\"\ntls = \"disable\"",
            "tls = \"disable\" is allowed only for loopback addresses and Unix sockets, and the url's host \"db.example.com\" is neither",
        ),
        (
            "[journal]\npath = \"journal.db\"\nurl = \"postgres://rekey@127.0.0.1/rekey\"",
            "[journal] has both path and url",
        ),
    ];
    for (journal, want) in cases {
        std::fs::write(tmp.path().join("rekey.toml"), config(journal)).unwrap();
        for args in [
            &["rotate", "app-key"][..],
            &["status"],
            &["journal", "verify"],
        ] {
            let out = rekey(args, tmp.path(), &[]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{journal}\n{args:?}: {stderr}");
            assert!(stderr.contains(want), "{journal}\n{args:?}: {stderr}");
            assert!(
                stderr.contains("rekey.toml:"),
                "names the file and line: {stderr}"
            );
            assert!(
                !stderr.contains("hunter2-pw"),
                "the password is never echoed: {stderr}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            left.iter().all(|f| f == "rekey.toml" || f == "app.env"),
            "nothing created: {left:?}"
        );
    }
}

/// The ```sql blocks of `docs/deployment.md`, in order.
fn deployment_sql() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md");
    let docs = std::fs::read_to_string(path).unwrap();
    docs.split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

/// The roles and grants `docs/deployment.md` gives, run as written: the owner creates the
/// journal, the runtime role then rotates and audits with only its grants, and cannot
/// change an event or drop the triggers that keep events append-only.
#[tokio::test]
async fn the_documented_grants_let_the_runtime_role_rotate_but_not_rewrite() {
    let s = server();
    let blocks = deployment_sql();
    assert_eq!(
        blocks.len(),
        2,
        "the administrator's block and the owner's grants"
    );
    let su = s.superuser("postgres").await;
    su.batch_execute("CREATE DATABASE rekey").await.unwrap();
    let (owner_pw, app_pw) = ("owner-pw-31", "app-pw-47");
    let admin = blocks[0]
        .replacen("'...'", &format!("'{owner_pw}'"), 1)
        .replacen("'...'", &format!("'{app_pw}'"), 1);
    s.superuser("rekey")
        .await
        .batch_execute(&admin)
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("app.env"), "API_KEY=initial\n").unwrap();
    let write_config = |user: &str| {
        let journal = format!(
            "[journal]\nurl = \"postgres://{user}@127.0.0.1:{}/rekey\"\npassword_env = \"{PASSWORD_VAR}\"\ntls = \"disable\"",
            s.port
        );
        std::fs::write(tmp.path().join("rekey.toml"), config(&journal)).unwrap();
    };
    write_config("rekey_owner");
    let out = rekey(
        &["rotate", "app-key", "--wait"],
        tmp.path(),
        &[(PASSWORD_VAR, owner_pw)],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let owner = super::server::connect(s.port, "rekey", "rekey_owner", owner_pw)
        .await
        .unwrap();
    owner.batch_execute(&blocks[1]).await.unwrap();

    write_config("rekey_app");
    let env = [(PASSWORD_VAR, app_pw)];
    for args in [
        &["rotate", "app-key", "--wait"][..],
        &["status"],
        &["journal", "verify"],
    ] {
        let out = rekey(args, tmp.path(), &env);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let app = super::server::connect(s.port, "rekey", "rekey_app", app_pw)
        .await
        .unwrap();
    for attack in [
        "UPDATE rekey.events SET kind = 'x'",
        "DELETE FROM rekey.events",
        "TRUNCATE rekey.events",
        "DROP TRIGGER events_append_only ON rekey.events",
    ] {
        let e = app.batch_execute(attack).await.unwrap_err();
        assert!(
            e.as_db_error().is_some_and(|db| db.code()
                == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
                || db.message().contains("must be owner")),
            "{attack}: {e:?}"
        );
    }
}

/// `rekey run` on a PostgreSQL journal: rotations requested through the API, the daemon
/// killed (SIGKILL) while they run and started again; every rotation completes once, and
/// the journal verifies.
#[tokio::test]
async fn the_daemon_runs_on_a_postgres_journal_and_finishes_after_a_kill() {
    const TOKEN: &str = "pg-daemon-test-token-8d2e";
    let s = server();
    journal_database("jurl_run", "jurl_run_user", "run-pw-19").await;
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let n = 8;
    let mut toml = format!(
        "[journal]\nurl = \"postgres://jurl_run_user@127.0.0.1:{}/jurl_run\"\npassword_env = \"{PASSWORD_VAR}\"\ntls = \"disable\"\n\n[runner]\nlease_ttl = \"1s\"\n\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_API_TOKEN\"\n\n[providers.random]\nkind = \"random\"\n\n[providers.vault]\nkind = \"local_vault\"\npath = \"vault.json\"\n\n[providers.check]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; sleep 0.1\"]\n",
        s.port
    );
    for i in 0..n {
        toml.push_str(&format!(
            "\n[secrets.s{i}]\nrotator = \"random\"\nstores = [\"vault\"]\nverifiers = [\"check\"]\ngrace = \"300ms\"\n"
        ));
    }
    std::fs::write(tmp.path().join("rekey.toml"), toml).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", "--config", "rekey.toml"])
            .current_dir(tmp.path())
            .env(PASSWORD_VAR, "run-pw-19")
            .env("REKEY_TEST_API_TOKEN", TOKEN)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rekey run")
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = || async {
        for _ in 0..400 {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("rekey run on PostgreSQL never became ready");
    };

    let mut first = spawn();
    ready().await;
    for i in 0..n {
        let r = http
            .post(format!("{base}/v1/secrets/s{i}/rotate"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn();
    ready().await;
    let mut rows = Vec::new();
    for _ in 0..600 {
        let r = http
            .get(format!("{base}/v1/secrets"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        rows = r.json::<Vec<serde_json::Value>>().await.unwrap();
        if rows
            .iter()
            .all(|r| r["open_rotation"].is_null() && r["last_ended"]["status"] == "completed")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), n);
    for r in &rows {
        assert_eq!(r["last_ended"]["status"], "completed", "{r}");
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let c = server().superuser("jurl_run").await;
    let ended: i64 = c
        .query_one(
            "SELECT count(*) FROM rekey.events WHERE kind IN ('Completed', 'Compensated')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, n as i64, "one terminal event per rotation");
    let out = rekey(
        &["journal", "verify"],
        tmp.path(),
        &[(PASSWORD_VAR, "run-pw-19")],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A server certificate from a root the journal does not trust is refused, saying what to
/// check, and nothing is written.
#[tokio::test]
async fn an_untrusted_server_certificate_is_refused_saying_what_to_check() {
    let s = server();
    journal_database("jurl_ca", "jurl_ca_user", "ca-pw-23").await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("app.env"), "API_KEY=initial\n").unwrap();
    let journal = format!(
        "[journal]\nurl = \"postgres://jurl_ca_user@localhost:{}/jurl_ca\"\npassword_env = \"{PASSWORD_VAR}\"",
        s.port
    );
    std::fs::write(tmp.path().join("rekey.toml"), config(&journal)).unwrap();
    let out = rekey(
        &["rotate", "app-key"],
        tmp.path(),
        &[(PASSWORD_VAR, "ca-pw-23")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error performing TLS handshake"),
        "{stderr}"
    );
    assert!(stderr.contains("tls_ca_file adds one"), "{stderr}");
    assert!(!has_journal_schema("jurl_ca").await, "nothing was created");
}
