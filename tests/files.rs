//! The files rekey writes (vault files, env and raw file dependents): atomic replacement
//! that nobody else who can write the directory can catch or take over, owner, group and
//! mode kept, files sharing a stem kept apart, and links written through only on request.
//! These tests run as root, so "another user" is uid 65534 (nobody), made with chown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rekey::journal::{Clock, MemoryJournal, SystemClock};
use rekey::provider::{Cast, Dependent, SecretValue, Step};
use rekey::providers::local::{EnvFile, LocalVault, RandomRotator};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Action, Phase, Plan, Role, StepId, TargetRef, Trigger};

use crate::cli::{rekey, text};

/// The other user: nobody.
const OTHER: u32 = 65_534;

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o777)
}

fn chown_other(path: &Path) {
    std::os::unix::fs::lchown(path, Some(OTHER), Some(OTHER)).unwrap();
}

/// A directory the other user owns and anybody may write (no sticky bit).
fn shared_dir(parent: &Path) -> std::path::PathBuf {
    let dir = parent.join("shared");
    std::fs::create_dir(&dir).unwrap();
    chown_other(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Rotates `secret` once, to its end (no grace period), through a vault at `vault` and
/// an env-file dependent and verifier at `env` (line `K`).
async fn rotate(secret: &str, vault: LocalVault, env: EnvFile) -> Progress {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = Registry::new()
        .with(
            "random",
            Cast::Rotator(Arc::new(RandomRotator { bytes: 16 })),
        )
        .with("vault", Cast::Store(Arc::new(vault)))
        .with_roles("app", roles!(Arc::new(env)));
    let t = TargetRef::new;
    let plan = Plan {
        secret: secret.into(),
        lock_key: secret.into(),
        targets: vec![
            t(Role::Rotator, "random"),
            t(Role::Store, "vault"),
            t(Role::Dependent, "app"),
            t(Role::Verifier, "app"),
        ],
        grace_ms: 0,
        attempts_max: 1,
    };
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let runner = Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("runner", 1),
    );
    let Requested::Started { rotation_id } = runner
        .request(plan, Trigger::Manual, "test", "rot-1".into())
        .await
        .unwrap()
    else {
        panic!("a fresh journal has no open rotation");
    };
    runner.drive(&rotation_id).await.unwrap()
}

/// The value of line `K` of an env file.
fn env_value(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.strip_prefix("K=")
        .and_then(|v| v.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{}: {text:?}", path.display()))
        .to_owned()
}

/// In a directory the other user can write, they plant files at the names a write could
/// use for its temporary file: a file of theirs, and a link to a file of theirs. The
/// rotation's value reaches neither, and the files rekey writes stay rekey's.
#[tokio::test]
async fn a_planted_temp_file_or_link_catches_no_secret_and_takes_over_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared_dir(tmp.path());
    let loot_dir = tmp.path().join("loot");
    std::fs::create_dir(&loot_dir).unwrap();
    let loot = loot_dir.join("loot");
    std::fs::write(&loot, "").unwrap();
    chown_other(&loot);
    // The names `<stem>.rekey-tmp` once served every write of `<stem>.<ext>`.
    let planted = dir.join("store.rekey-tmp");
    std::fs::write(&planted, "").unwrap();
    chown_other(&planted);
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let link = dir.join("app.rekey-tmp");
    std::os::unix::fs::symlink(&loot, &link).unwrap();
    chown_other(&link);

    let progress = rotate(
        "api",
        LocalVault::new(dir.join("store.json")),
        EnvFile::new(dir.join("app.env"), "K"),
    )
    .await;
    assert_eq!(progress, Progress::Finished(Phase::Completed));

    let value = env_value(&dir.join("app.env"));
    assert_eq!(value.len(), 32, "the new value is in the env file");
    assert_eq!(std::fs::read(&planted).unwrap(), b"", "the planted file");
    assert_eq!(std::fs::read(&loot).unwrap(), b"", "the link's target");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the planted link is where it was"
    );
    for file in ["store.json", "app.env"] {
        assert_eq!(
            owner_and_mode(&dir.join(file)),
            (0, 0, 0o600),
            "{file} is rekey's, readable by its owner only"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["app.env", "app.rekey-tmp", "store.json", "store.rekey-tmp"],
        "no temporary file is left behind"
    );
}

/// An application's file owned by the application and readable by its group stays so
/// after rekey replaces it (rekey runs as root here).
#[tokio::test]
async fn a_replaced_file_keeps_its_owner_group_and_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (vault, env) = (tmp.path().join("vault.json"), tmp.path().join("app.env"));
    LocalVault::new(&vault)
        .set("api", &SecretValue::new("old-value"), "seed")
        .unwrap();
    std::fs::write(&env, "OTHER=1\nK=old-value\n").unwrap();
    for file in [&vault, &env] {
        chown_other(file);
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    let progress = rotate("api", LocalVault::new(&vault), EnvFile::new(&env, "K")).await;
    assert_eq!(progress, Progress::Finished(Phase::Completed));

    let text = std::fs::read_to_string(&env).unwrap();
    assert!(
        text.starts_with("OTHER=1\nK=") && !text.contains("old-value"),
        "{text}"
    );
    for file in [&vault, &env] {
        assert_eq!(
            owner_and_mode(file),
            (OTHER, OTHER, 0o640),
            "{}",
            file.display()
        );
    }
}

/// The `Update` step an env-file dependent is given.
fn update_step() -> Step<'static> {
    Step {
        rotation_id: "rot",
        secret: "b",
        id: StepId::new(Action::Update, 0),
        key: "rot:update",
        credential: None,
        address: None,
    }
}

/// A vault `store.json` and an env file `store.env` written at the same time, over and
/// over: every write succeeds and each file holds only its own content.
#[test]
fn files_sharing_a_stem_written_at_once_stay_apart() {
    const ROUNDS: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let (vault_path, env_path) = (tmp.path().join("store.json"), tmp.path().join("store.env"));
    let start = Arc::new(std::sync::Barrier::new(2));

    let vault_writer = {
        let (start, path) = (start.clone(), vault_path.clone());
        std::thread::spawn(move || {
            let vault = LocalVault::new(&path);
            start.wait();
            for i in 0..ROUNDS {
                vault
                    .set("a", &SecretValue::new(format!("vault-{i}")), "k")
                    .unwrap_or_else(|e| panic!("vault write {i}: {}", e.message));
                let text = std::fs::read_to_string(&path).unwrap();
                let json: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("store.json after write {i} ({e}): {text}"));
                assert_eq!(json["secrets"]["a"].as_array().unwrap().len(), i + 1);
            }
        })
    };
    let env_writer = {
        let (start, path) = (start.clone(), env_path.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let env = EnvFile::new(&path, "K");
            start.wait();
            for i in 0..ROUNDS {
                let value = SecretValue::new(format!("env-{i}"));
                rt.block_on(env.update(update_step(), &value))
                    .unwrap_or_else(|e| panic!("env write {i}: {}", e.message));
                assert_eq!(
                    std::fs::read_to_string(&path).unwrap(),
                    format!("K=env-{i}\n"),
                    "store.env after write {i}"
                );
            }
        })
    };
    let results = [vault_writer.join(), env_writer.join()];
    for r in results {
        if let Err(panic) = r {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A dependent whose path is a link to another file: refused, at check time and at write
/// time, with the setting that allows it; with `follow_symlinks = true` the linked file
/// gets the value and the link stays.
#[tokio::test]
async fn a_linked_target_is_refused_unless_the_provider_follows_links() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/app.env"), "K=old\n").unwrap();
    std::os::unix::fs::symlink("app/app.env", dir.join("app.env")).unwrap();

    // The provider alone refuses to write through the link.
    let value = SecretValue::new("new-value");
    let err = EnvFile::new(dir.join("app.env"), "K")
        .update(update_step(), &value)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("is a symbolic link") && err.message.contains("follow_symlinks"),
        "{}",
        err.message
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("app/app.env")).unwrap(),
        "K=old\n"
    );

    // So does the config, before anything runs.
    let config = |extra: &str| {
        format!(
            "[journal]\npath = \"journal.db\"\n\n[providers.random]\nkind = \"random\"\n\n\
             [providers.vault]\nkind = \"local_vault\"\npath = \"vault.json\"\n\n\
             [providers.app]\nkind = \"env_file\"\npath = \"app.env\"\nkey = \"K\"\n{extra}\n\
             [secrets.api]\nrotator = \"random\"\nstores = [\"vault\"]\ndependents = [\"app\"]\n\
             verifiers = [\"app\"]\ngrace = \"0s\"\n"
        )
    };
    std::fs::write(dir.join("rekey.toml"), config("")).unwrap();
    for args in [&["policy", "check"][..], &["rotate", "api"][..]] {
        let out = rekey(args, dir);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("provider app")
                && stderr.contains("app.env is a symbolic link")
                && stderr.contains("follow_symlinks = true"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.join("journal.db").exists(), "nothing ran");

    std::fs::write(dir.join("rekey.toml"), config("follow_symlinks = true\n")).unwrap();
    let out = rekey(&["rotate", "api", "--wait"], dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(dir.join("app.env"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays"
    );
    let value = env_value(&dir.join("app/app.env"));
    assert_eq!(value.len(), 64, "the linked file holds the new value");
}

/// A FIFO named where rekey reads a certificate or a CA file is refused instead of
/// waited on (opening a FIFO for reading blocks until someone writes to it).
#[test]
fn a_fifo_named_as_a_certificate_or_a_ca_file_is_refused_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("cert.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let cert = rekey::providers::azure::certificate::ClientCertificate::from_pem_file(&fifo)
            .map(drop)
            .map_err(|e| e.to_string());
        let ca = rekey::providers::postgres::tls_verify_full(Some(&fifo)).map(drop);
        let _ = tx.send((cert, ca));
    });
    // The reads are refused at once; the deadline only turns a hang into a failure.
    let (cert, ca) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("reading a FIFO hung");
    for err in [cert.unwrap_err(), ca.unwrap_err()] {
        assert!(
            err.contains("cert.pem") && err.contains("is a FIFO, not a regular file"),
            "{err}"
        );
    }
}
