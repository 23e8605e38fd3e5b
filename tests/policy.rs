//! `rekey policy check` checks the files a config names as `rotate` would, and changes
//! nothing: providers that write one file or one of rekey's own files (config, journal,
//! vault key), vault key files that are missing, not regular files or readable by
//! others, and configs that run commands but that others may change.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::cli::{rekey, text};

/// A config: a vault, an env dependent `app` at `app_path`, and `extra` providers.
fn config(app_path: &str, extra: &str) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"
key_file = "vault.key"

[providers.app]
kind = "env_file"
path = "{app_path}"
key = "K"
{extra}
[secrets.api]
rotator = "random"
stores = ["vault"]
dependents = ["app"]
verifiers = ["app"]
grace = "0s"
"#
    )
}

/// A good vault key at `dir/vault.key`, mode 0600.
fn key_file(dir: &Path) {
    let path = dir.join("vault.key");
    std::fs::write(&path, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `policy check` in `dir` and returns its stderr, asserting it refused the config
/// and created nothing.
fn refused(dir: &Path) -> String {
    let out = rekey(&["policy", "check"], dir);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    for file in ["journal.db", "vault.json"] {
        assert!(!dir.join(file).exists(), "policy check created {file}");
    }
    stderr
}

/// The real path of `name` in `dir` (the temp dir may sit behind a link).
fn real(dir: &Path, name: &str) -> String {
    std::fs::canonicalize(dir)
        .unwrap()
        .join(name)
        .display()
        .to_string()
}

#[test]
fn a_good_config_passes() {
    let tmp = tempfile::tempdir().unwrap();
    key_file(tmp.path());
    std::fs::write(tmp.path().join("rekey.toml"), config("app.env", "")).unwrap();
    let out = rekey(&["policy", "check"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A dependent on the vault file, the key file, the config or the journal, or two
/// providers on one file (however the path is spelled), is refused naming both and the
/// file.
#[test]
fn providers_on_one_file_or_on_rekeys_own_files_are_refused() {
    let other = |name: &str, path: &str| {
        format!("\n[providers.{name}]\nkind = \"file\"\npath = \"{path}\"\n")
    };
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "vault.json",
            String::new(),
            "the vault file of provider vault",
            "vault.json",
        ),
        (
            "vault.key",
            String::new(),
            "the key file of provider vault",
            "vault.key",
        ),
        ("rekey.toml", String::new(), "the config file", "rekey.toml"),
        ("journal.db", String::new(), "the journal", "journal.db"),
        (
            "journal.db-wal",
            String::new(),
            "the journal",
            "journal.db-wal",
        ),
        (
            "app.env",
            other("other", "app.env"),
            "provider other",
            "app.env",
        ),
        // Spelled differently: through `..`, through a link to the directory, and a
        // file that does not exist yet under a directory that does not either.
        (
            "sub/../app.env",
            other("other", "./app.env"),
            "provider other",
            "app.env",
        ),
        (
            "linked/app.env",
            other("other", "sub/app.env"),
            "provider other",
            "sub/app.env",
        ),
        (
            "new/x/../y.env",
            other("other", "new/y.env"),
            "provider other",
            "new/y.env",
        ),
    ];
    for (app_path, extra, other_what, file) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        key_file(dir);
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("sub", dir.join("linked")).unwrap();
        std::fs::write(dir.join("rekey.toml"), config(app_path, extra)).unwrap();
        let stderr = refused(dir);
        let file = real(dir, file);
        assert!(
            stderr.contains("provider app")
                && stderr.contains(other_what)
                && stderr.contains(&file),
            "{app_path}: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("vault.key")).unwrap(),
            "ab".repeat(32),
            "{app_path}: the key file is untouched"
        );
    }
}

/// Runs rekey with `args` in `dir`, killing it (and failing) if it has not ended within
/// ten seconds: a command that waits for a FIFO's writer would never end.
fn rekey_within_10s(args: &[&str], dir: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .current_dir(dir)
        .env_remove("REKEY_CONFIG")
        .env_remove("REKEY_JOURNAL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("rekey {args:?} hung");
        }
    }
}

/// A key file that is missing, a directory, a FIFO, or readable by others is refused by
/// `policy check` as by `rotate`, which never blocks on a FIFO.
#[test]
fn a_vault_key_file_rotate_would_refuse_is_refused_by_policy_check() {
    let cases: &[(&str, &str)] = &[
        ("absent", "cannot read the key file"),
        ("directory", "is a directory, not a regular file"),
        ("fifo", "is a FIFO, not a regular file"),
        ("0644", "has mode 644; others may read it"),
        ("0640", "has mode 640; others may read it"),
    ];
    for (case, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = dir.join("vault.key");
        match *case {
            "absent" => {}
            "directory" => std::fs::create_dir(&key).unwrap(),
            "fifo" => {
                let made = Command::new("mkfifo")
                    .args(["-m", "600"])
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(made.success());
            }
            mode => {
                key_file(dir);
                let mode = u32::from_str_radix(mode, 8).unwrap();
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        std::fs::write(dir.join("rekey.toml"), config("app.env", "")).unwrap();
        for args in [&["policy", "check"][..], &["rotate", "api"][..]] {
            let out = rekey_within_10s(args, dir);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{case} {args:?}: {stderr}");
            assert!(
                stderr.contains("provider vault")
                    && stderr.contains("vault.key")
                    && stderr.contains(want),
                "{case} {args:?}: {stderr}"
            );
            assert!(!dir.join("journal.db").exists(), "{case} {args:?}");
        }
    }
}

/// A config that runs commands as the user running rekey is refused while others may
/// change it or replace it; without commands it is accepted.
#[test]
fn a_config_running_commands_must_not_be_writable_by_others() {
    let hook = "after_write = [\"systemctl\", \"reload\", \"app\"]\n";
    let verifier = "\n[providers.check]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n";
    for (extra, runs_commands) in [(hook, true), (verifier, true), ("", false)] {
        for world_writable in ["rekey.toml", "."] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            key_file(dir);
            std::fs::write(dir.join("rekey.toml"), config("app.env", extra)).unwrap();
            let loose = dir.join(world_writable);
            let mode = std::fs::metadata(&loose).unwrap().permissions().mode();
            std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(mode | 0o002))
                .unwrap();
            let out = rekey(&["policy", "check"], dir);
            let stderr = text(&out.stderr);
            if runs_commands {
                assert_eq!(out.status.code(), Some(1), "{extra} {world_writable}");
                let what = if world_writable == "." {
                    format!("directory {}", real(dir, "").trim_end_matches('/'))
                } else {
                    real(dir, "rekey.toml")
                };
                assert!(
                    stderr.contains(&what)
                        && stderr.contains("anyone may change")
                        && stderr.contains("chmod o-w"),
                    "{extra} {world_writable}: {stderr}"
                );
            } else {
                assert!(out.status.success(), "{world_writable}: {stderr}");
            }
        }
    }
}
