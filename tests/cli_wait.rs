//! `rotate --wait` on a rotation that cannot end: it shows the failing step on stderr and,
//! after `--wait-max`, returns exit code 4 and leaves the rotation open for `resume`.

use super::cli::{rekey, text};

/// A rotation whose verifier, after accepting the value, breaks the vault file: the
/// rotation is verified, and then disabling the old version fails with a permanent error
/// every time (retirement never gives up, so it would retry forever).
const BREAKS_THE_VAULT_AFTER_VERIFICATION: &str = r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.app]
kind = "file"
path = "secret.txt"

[providers.check]
kind = "command"
command = ["sh", "-c", "cat > /dev/null; echo 'not a vault' > vault.json"]

[secrets.api]
rotator = "random"
stores = ["vault"]
dependents = ["app"]
verifiers = ["check"]
grace = "0s"
"#;

#[test]
fn rotate_wait_shows_a_stuck_step_and_gives_up_with_exit_4_after_wait_max() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("rekey.toml"), BREAKS_THE_VAULT_AFTER_VERIFICATION).unwrap();

    let usage = rekey(&["rotate", "api", "--wait-max", "2s"], dir);
    assert_eq!(usage.status.code(), Some(2), "--wait-max needs --wait");

    let out = rekey(&["rotate", "api", "--wait", "--wait-max", "2s"], dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    // On stderr: one line for the failure, naming the step, its target, the error and the
    // next attempt.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("rekey: api: disable_old on store vault failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("failed (permanent error, attempt 1): local vault ")
            && lines[0].contains("vault.json is not a rekey vault file")
            && lines[0].contains("; next attempt at "),
        "{}",
        lines[0]
    );
    assert!(
        stdout.contains(": still open: run `rekey status` (waiting to retry until ")
            && stdout
                .contains("; disable_old on store vault failed (permanent error): local vault ")
            && stdout.contains("`rekey resume` or the daemon finishes it"),
        "{stdout}"
    );
    // The new value reached the dependent and is nowhere in what rekey printed.
    let value = std::fs::read_to_string(dir.join("secret.txt")).unwrap();
    assert_eq!(value.len(), 64);
    assert!(!stdout.contains(&value) && !stderr.contains(&value));

    // The rotation is left open, verified, for `resume` or the daemon.
    let status = rekey(&["status", "api", "--json"], dir);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["open_rotation"]["phase"], "grace");
    assert!(
        rows[0]["open_rotation"]["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("is not a rekey vault file")),
        "{rows}"
    );

    // Asked again, it joins the open rotation and gives up at once (the next attempt is
    // minutes away), saying why in its JSON outcome.
    let again = rekey(
        &["rotate", "api", "--wait", "--wait-max", "2s", "--json"],
        dir,
    );
    assert_eq!(again.status.code(), Some(4), "{}", text(&again.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        outcome[0]["rotation_id"],
        rows[0]["open_rotation"]["rotation_id"]
    );
    assert!(
        outcome[0]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("still open: run `rekey status`")),
        "{outcome}"
    );
    assert!(
        outcome[0]["failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("disable_old on store vault failed")),
        "{outcome}"
    );
}
