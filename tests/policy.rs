//! `rekey policy check` checks the files a config names as `rotate` would, and changes
//! nothing: providers that write one file or one of rekey's own files (config, journal,
//! vault key) are refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
