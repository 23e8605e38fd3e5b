//! The `rekey` binary end to end: the demo rotation, the auditor's commands, and bad input.
//! Each test works in its own temp dir and runs the real binary.

use std::path::Path;
use std::process::{Command, Output};

pub fn rekey(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "trace")
        .env_remove("REKEY_CONFIG")
        .env_remove("REKEY_JOURNAL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run rekey")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every value the local vault holds, old and new.
fn vault_values(vault: &Path) -> Vec<(String, bool)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(vault).unwrap()).unwrap();
    v["secrets"]["demo-api-key"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ver| {
            (
                ver["value"].as_str().unwrap().to_owned(),
                ver["enabled"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Bytes of every file of the journal (the database and its WAL).
fn journal_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["journal.db", "journal.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn demo_rotates_end_to_end_and_no_value_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rekey(&["demo", "--dir", "d", "--grace-secs", "1"], tmp.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    assert!(stdout.contains("Completed"), "{stdout}");
    assert!(stdout.contains(": intact"), "{stdout}");

    let dir = tmp.path().join("d");
    let versions = vault_values(&dir.join("vault.json"));
    assert_eq!(
        versions.len(),
        2,
        "one initial and one new version: {versions:?}"
    );
    assert!(
        !versions[0].1,
        "the old version is disabled after the grace period"
    );
    assert!(versions[1].1, "the new version is enabled");
    assert!(
        versions.iter().all(|(v, _)| v.starts_with("sealed:v1:")),
        "values are sealed at rest: {versions:?}"
    );
    let env = std::fs::read_to_string(dir.join("app.env")).unwrap();
    let value = env.trim().strip_prefix("API_KEY=").unwrap().to_owned();
    assert_eq!(value.len(), 64, "32 random bytes, hex encoded");

    // I5: the value is nowhere but the app's file: not in the vault file (sealed), the
    // journal, stdout or the trace-level logs.
    let journal = journal_bytes(&dir);
    assert!(!journal.is_empty());
    let vault = std::fs::read(dir.join("vault.json")).unwrap();
    assert!(
        !contains(&vault, &value),
        "the vault file holds the value in the clear"
    );
    assert!(
        !contains(&journal, &value),
        "a secret value is in the journal"
    );
    assert!(
        !stdout.contains(value.as_str()),
        "a secret value is on stdout"
    );
    assert!(
        !stderr.contains(value.as_str()),
        "a secret value is in the logs"
    );
    assert!(
        stderr.contains("step succeeded"),
        "trace logs were captured: {stderr}"
    );

    let verify = rekey(
        &["journal", "verify", "--journal", "d/journal.db"],
        tmp.path(),
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn a_tampered_journal_fails_verify_with_exit_3_naming_the_link() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rekey(&["demo", "--dir", "d", "--grace-secs", "0"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = tmp.path().join("d/journal.db");
    let stream: String = {
        let conn = rusqlite::Connection::open(&db).unwrap();
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
    let verify = rekey(
        &["journal", "verify", "--journal", "d/journal.db"],
        tmp.path(),
    );
    let stdout = text(&verify.stdout);
    assert_eq!(verify.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(&format!("stream {stream} sequence 2")) && stdout.contains("edited"),
        "{stdout}"
    );
    let json = rekey(
        &["journal", "verify", "--journal", "d/journal.db", "--json"],
        tmp.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["broken"]["stream_id"], stream.as_str());
    assert_eq!(report["broken"]["seq"], 2);
}

#[test]
fn a_bad_config_is_explained_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("rekey.toml"),
        "[journal]\npath = \"journal.db\"\n\n[secrets.api]\nrotator = \"nope\"\nstores = []\nverifiers = []\ngrace = \"1d\"\n",
    )
    .unwrap();
    for args in [
        &["policy", "check"][..],
        &["rotate", "api"][..],
        &["resume"][..],
        &["status"][..],
    ] {
        let out = rekey(args, tmp.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("rekey.toml:5:11: secret api: rotator \"nope\" is not defined"),
            "{args:?}: {stderr}"
        );
        assert!(
            !tmp.path().join("journal.db").exists(),
            "{args:?} created a journal"
        );
    }
}

#[test]
fn unknown_secret_and_missing_journal_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = rekey(&["demo", "--dir", "d", "--grace-secs", "0"], tmp.path());
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    let out = rekey(
        &["--config", "d/rekey.toml", "rotate", "payments"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no secret named \"payments\"")
            && text(&out.stderr).contains("configured secrets: demo-api-key"),
        "{}",
        text(&out.stderr)
    );
    let out = rekey(
        &["journal", "verify", "--journal", "missing.db"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.db: no journal here"));
    assert!(
        !tmp.path().join("missing.db").exists(),
        "verify created a file"
    );
}

#[test]
fn resume_with_nothing_open_and_status_after_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = rekey(&["demo", "--dir", "d", "--grace-secs", "0"], tmp.path());
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    let out = rekey(&["--config", "d/rekey.toml", "resume"], tmp.path());
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        "nothing to resume: no open rotation"
    );
    let out = rekey(
        &["--config", "d/rekey.toml", "status", "--json"],
        tmp.path(),
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["secret"], "demo-api-key");
    assert!(rows[0]["open_rotation"].is_null());
    assert_eq!(rows[0]["last_ended"]["status"], "completed");
}

#[test]
fn plan_and_dry_run_list_the_steps_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("rekey.toml"),
        "[journal]\npath = \"journal.db\"\n\n[providers.random]\nkind = \"random\"\n\n[providers.vault]\nkind = \"local_vault\"\npath = \"vault.json\"\n\n[providers.app]\nkind = \"env_file\"\npath = \"app.env\"\nkey = \"K\"\n\n[secrets.api]\nrotator = \"random\"\nstores = [\"vault\"]\ndependents = [\"app\"]\nverifiers = [\"app\"]\ngrace = \"1h\"\n",
    )
    .unwrap();
    let out = rekey(&["plan", "api"], tmp.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Numbered step lines give their action second; the grace wait stands between.
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next()? {
                n if n.ends_with('.') && n[..n.len() - 1].parse::<u32>().is_ok() => words.next(),
                "wait" => Some("wait"),
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        order,
        [
            "capture",
            "capture",
            "capture",
            "create",
            "write",
            "update",
            "verify",
            "wait",
            "disable_old",
            "retire_old"
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("write        store vault   (undo: restore)"),
        "{stdout}"
    );
    let dry = rekey(&["rotate", "api", "--dry-run", "--json"], tmp.path());
    let plans: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plans[0]["steps"].as_array().unwrap().len(), 9);
    for file in ["journal.db", "vault.json", "app.env"] {
        assert!(!tmp.path().join(file).exists(), "plan created {file}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = rekey(&["completions", shell], tmp.path());
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("resume"),
            "{shell} completion lacks subcommands"
        );
    }
}

#[test]
fn the_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in ["examples/local.toml", "examples/azure.toml"] {
        let config = root.join(example);
        let out = rekey(
            &["--config", config.to_str().unwrap(), "policy", "check"],
            root,
        );
        assert!(out.status.success(), "{example}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(": valid;"), "{example}");
    }
}

/// A config with a raw file dependent whose hook runs after each change, and a
/// verification command that gets the value on stdin.
fn hooks_config(verifier: &str) -> String {
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
after_write = ["sh", "-c", "echo changed >> hook.log"]

[providers.check]
kind = "command"
command = {verifier}

[secrets.api]
rotator = "random"
stores = ["vault"]
dependents = ["secret-file"]
verifiers = ["check"]
grace = "0s"
"#
    )
}

#[test]
fn file_hooks_run_once_per_change_and_a_failing_check_compensates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The check compares its stdin with the file: it passes only if the file has the value.
    let ok = r#"["sh", "-c", "read v; test \"$v\" = \"$(cat secret.txt)\""]"#;
    std::fs::write(dir.join("rekey.toml"), hooks_config(ok)).unwrap();
    let out = rekey(&["rotate", "api", "--wait"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("completed"),
        "{}",
        text(&out.stdout)
    );
    let value = std::fs::read_to_string(dir.join("secret.txt")).unwrap();
    assert_eq!(value.len(), 64, "the whole file is the value");
    assert_eq!(
        std::fs::read_to_string(dir.join("hook.log")).unwrap(),
        "changed\n"
    );

    // A check that fails: the rotation compensates, the file gets its value back, and the
    // hook runs for the change and for its undo.
    std::fs::write(
        dir.join("rekey.toml"),
        hooks_config(r#"["sh", "-c", "echo nope >&2; exit 3"]"#),
    )
    .unwrap();
    let out = rekey(&["rotate", "api", "--wait", "--json"], dir);
    assert_eq!(out.status.code(), Some(1), "a compensated rotation exits 1");
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome[0]["result"], "compensated");
    assert_eq!(
        std::fs::read_to_string(dir.join("secret.txt")).unwrap(),
        value
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hook.log")).unwrap(),
        "changed\nchanged\nchanged\n"
    );
    let journal = rekey(&["journal", "export", "--journal", "journal.db"], dir);
    let events = text(&journal.stdout);
    assert!(
        events.contains(
            "verification: sh failed (exit status: 3); its output is shown on rekey's stderr only"
        ),
        "{events}"
    );
    assert!(
        !events.contains("nope"),
        "a command's output is in the journal"
    );
    assert!(
        text(&out.stderr).contains("rekey:   | nope"),
        "{}",
        text(&out.stderr)
    );
    assert!(!events.contains(&value), "a secret value is in the journal");
}

/// A verification command that prints the value with one character changed: no run of 16
/// of its characters reaches the journal, its export, stdout or the trace-level logs; the
/// terminal shows the end of the command's stderr with the value's runs masked.
#[test]
fn a_failing_check_that_echoes_the_value_changed_leaks_none_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let echo = r#"["sh", "-c", "read v; printf '%s' \"$v\" > seen.txt; printf 'login failed for %s\n' \"$v\" | sed 's/./X/37' >&2; exit 1"]"#;
    std::fs::write(dir.join("rekey.toml"), hooks_config(echo)).unwrap();
    let out = rekey(&["rotate", "api", "--wait", "--json"], dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let value = std::fs::read_to_string(dir.join("seen.txt")).unwrap();
    assert_eq!(value.len(), 64, "the check saw the new value");
    let export = rekey(&["journal", "export", "--journal", "journal.db"], dir);
    let status = rekey(&["status", "--json"], dir);
    let stderr = text(&out.stderr);
    let places = [
        ("the journal", journal_bytes(dir)),
        ("the export", export.stdout.clone()),
        ("status", status.stdout),
        ("stdout", out.stdout),
        ("the logs", out.stderr),
    ];
    for (place, bytes) in places {
        assert!(!bytes.is_empty(), "{place} is empty");
        for run in value.as_bytes().windows(16) {
            let run = std::str::from_utf8(run).unwrap();
            assert!(
                !contains(&bytes, run),
                "{place} holds {run}, a run of the value"
            );
        }
    }
    assert!(
        text(&export.stdout).contains("verification: sh failed (exit status: 1)"),
        "{}",
        text(&export.stdout)
    );
    assert!(
        stderr.contains("login failed for [redacted]X[redacted]"),
        "{stderr}"
    );
}

#[test]
fn a_rotation_left_waiting_is_finished_by_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = hooks_config(r#"["true"]"#).replace("grace = \"0s\"", "grace = \"1s\"");
    std::fs::write(dir.join("rekey.toml"), config).unwrap();
    let out = rekey(&["rotate", "api", "--json"], dir);
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started[0]["result"], "waiting out the grace period");
    let status = rekey(&["status", "api", "--json"], dir);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["open_rotation"]["phase"], "grace");

    let out = rekey(&["resume", "--wait", "--json"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resumed[0]["rotation_id"], started[0]["rotation_id"]);
    assert_eq!(resumed[0]["result"], "completed");
    let again = rekey(&["resume", "--json"], dir);
    assert_eq!(text(&again.stdout).trim(), "[]", "nothing left to resume");
}

/// The values of `secret` in a plain local vault, oldest first, with whether each is enabled.
fn versions_of(vault: &Path, secret: &str) -> Vec<(String, bool)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(vault).unwrap()).unwrap();
    v["secrets"][secret]
        .as_array()
        .unwrap()
        .iter()
        .map(|ver| {
            let value = ver["value"].as_str().unwrap().to_owned();
            (value, ver["enabled"].as_bool().unwrap())
        })
        .collect()
}

fn enabled_of(vault: &Path, secret: &str) -> Vec<String> {
    versions_of(vault, secret)
        .into_iter()
        .filter_map(|(value, enabled)| enabled.then_some(value))
        .collect()
}

/// I8 on the local vault: after a completed rotation, a compensated one, and another
/// completed one, the vault holds exactly one enabled version each time: the live value.
/// A vault listed twice as a store of one secret also ends with one.
#[test]
fn the_local_vault_keeps_one_enabled_version_through_compensation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vault = dir.join("vault.json");
    let ok = r#"["true"]"#;
    let failing = r#"["false"]"#;
    let rotate = |verifier: &str, expect: &str| {
        std::fs::write(dir.join("rekey.toml"), hooks_config(verifier)).unwrap();
        let out = rekey(&["rotate", "api", "--wait", "--json"], dir);
        let outcome: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stderr)));
        assert_eq!(outcome[0]["result"], expect, "{}", text(&out.stderr));
        std::fs::read_to_string(dir.join("secret.txt")).unwrap()
    };
    let first = rotate(ok, "completed");
    assert_eq!(enabled_of(&vault, "api"), std::slice::from_ref(&first));
    let after_failure = rotate(failing, "compensated");
    assert_eq!(after_failure, first, "the dependent got the old value back");
    assert_eq!(
        versions_of(&vault, "api").len(),
        3,
        "written, then restored"
    );
    assert_eq!(
        enabled_of(&vault, "api"),
        [first],
        "only the restored copy is enabled"
    );
    let second = rotate(ok, "completed");
    assert_eq!(enabled_of(&vault, "api"), [second]);

    let twice = hooks_config(ok).replace(r#"stores = ["vault"]"#, r#"stores = ["vault", "vault"]"#);
    std::fs::write(dir.join("rekey.toml"), twice).unwrap();
    let out = rekey(&["rotate", "api", "--wait"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let third = std::fs::read_to_string(dir.join("secret.txt")).unwrap();
    assert_eq!(enabled_of(&vault, "api"), [third]);
}
