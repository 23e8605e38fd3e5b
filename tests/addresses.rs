//! Targets by address: a plan keeps where each target is (kind, address, the credential
//! that reaches it), fixed when the rotation is requested, so a rotation resumes under a
//! config that renamed the entries it started with. Commands are named by digest: what
//! runs is what the config says.

use std::path::Path;
use std::sync::Arc;

use rekey::config::Config;
use rekey::journal::{Clock, JournalRead, ManualClock, SqliteJournal};
use rekey::runner::{Observer, Options, Progress, Requested, Runner};
use rekey::saga::{Action, Address, Phase, Role, Rotation, RotationEvent, Trigger, Wait};

const T0_MS: i64 = 1_772_323_200_000;
const DAY_MS: i64 = 86_400_000;

/// The config the rotation starts under.
const BEFORE: &str = r#"
[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.app]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[secrets.api]
rotator = "random"
stores = ["vault"]
dependents = ["app"]
verifiers = ["app"]
grace = "1d"
"#;

/// The same targets, every entry renamed (the secret's too), while the rotation waits.
const AFTER: &str = r#"
[journal]
path = "journal.db"

[providers.rng]
kind = "random"

[providers.main-vault]
kind = "local_vault"
path = "vault.json"

[providers.api-env]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[secrets.public-api]
rotator = "rng"
stores = ["main-vault"]
dependents = ["api-env"]
verifiers = ["api-env"]
grace = "1d"
"#;

/// A runner over the journal in `dir`, its providers found by the config `text`.
fn runner(dir: &Path, text: &str, clock: &ManualClock) -> (Runner<SqliteJournal>, Config) {
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
    let config = Config::load(&dir.join("rekey.toml")).unwrap();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let resolver = config.resolver(shared.clone(), Arc::new(|_| None)).unwrap();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(&config.journal_path, shared.clone()).unwrap());
    let runner = Runner::new(
        journal,
        Arc::new(resolver),
        shared,
        Options::new("addresses", 1),
    );
    (runner, config)
}

/// The rotation waits out its grace period; meanwhile every config entry it names is
/// renamed. It resumes by the addresses its plan keeps, and completes: the vault holds one
/// enabled version, the new one, which the env file holds too.
#[tokio::test]
async fn a_rotation_resumes_after_its_config_entries_were_renamed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.env"), "API_KEY=old-value\n").unwrap();
    let clock = ManualClock::new(T0_MS);
    let id = "0195f0a0-0000-7000-8000-00000000add1";
    {
        let (runner, config) = runner(dir.path(), BEFORE, &clock);
        let plan = config.plan("api").unwrap().clone();
        let vault = &plan.targets[1];
        assert_eq!((vault.role, vault.name.as_str()), (Role::Store, "vault"));
        assert_eq!(
            vault.address,
            Some(Address::LocalVault {
                path: dir.path().join("vault.json"),
                secret: "api".into(),
                key_file: None,
                key_env: None,
                follow_symlinks: false,
            }),
            "the store's address: the vault file and the secret in it"
        );
        let got = runner
            .request(plan, Trigger::Manual, "test", id.into())
            .await
            .unwrap();
        assert_eq!(
            got,
            Requested::Started {
                rotation_id: id.into()
            }
        );
        let waiting = runner.drive(id).await.unwrap();
        assert!(
            matches!(
                waiting,
                Progress::Waiting {
                    reason: Wait::Grace,
                    ..
                }
            ),
            "{waiting:?}"
        );
    }

    clock.advance(2 * DAY_MS);
    let (runner, config) = runner(dir.path(), AFTER, &clock);
    assert!(
        config.plan("api").is_err(),
        "nothing is called api any more"
    );
    assert_eq!(
        runner.drive(id).await.unwrap(),
        Progress::Finished(Phase::Completed)
    );

    let vault: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("vault.json")).unwrap()).unwrap();
    let versions = vault["secrets"]["api"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["enabled"], true);
    let app = std::fs::read_to_string(dir.path().join("app.env")).unwrap();
    assert_eq!(
        app,
        format!("API_KEY={}\n", versions[0]["value"].as_str().unwrap())
    );

    // The journal says which names the rotation started with; the addresses did the rest.
    let journal =
        SqliteJournal::open_with_clock(dir.path().join("journal.db"), Arc::new(clock.clone()))
            .unwrap();
    let first: RotationEvent =
        serde_json::from_str(&journal.read_stream(id).await.unwrap()[0].payload).unwrap();
    let RotationEvent::Requested { plan, .. } = first else {
        panic!("a rotation starts with Requested");
    };
    let names: Vec<&str> = plan.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["random", "vault", "app", "app"]);
}

/// A config in `dir` whose env file runs a hook (appending to `dir/hook.log`) and whose
/// verifier is a command ending in the comment `word`, its providers named as given.
fn with_commands(dir: &Path, [random, vault, app, check]: [&str; 4], word: &str) -> String {
    let log = dir.join("hook.log");
    let log = log.display();
    format!(
        r#"
[journal]
path = "journal.db"

[providers.{random}]
kind = "random"

[providers.{vault}]
kind = "local_vault"
path = "vault.json"

[providers.{app}]
kind = "env_file"
path = "app.env"
key = "API_KEY"
after_write = ["sh", "-c", "echo hook-7c1 >> '{log}'"]

[providers.{check}]
kind = "command"
command = ["sh", "-c", "read v; test -n \"$v\" # {word}"]

[secrets.api]
rotator = "{random}"
stores = ["{vault}"]
dependents = ["{app}"]
verifiers = ["{check}"]
grace = "0s"
"#
    )
}

/// Stops its runner once a dependent has been updated, so the rotation waits for its
/// verifier.
#[derive(Default)]
struct StopAfterUpdate(std::sync::OnceLock<std::sync::Weak<Runner<SqliteJournal>>>);

impl Observer for StopAfterUpdate {
    fn journaled(&self, _: &Rotation, event: &RotationEvent, _: f64) {
        // Heard once the update's start is durable: the update runs to its outcome,
        // and no step starts after it.
        if let RotationEvent::StepStarted { step, .. } = event
            && step.action == Action::Update
            && let Some(runner) = self.0.get().and_then(std::sync::Weak::upgrade)
        {
            runner.stop();
        }
    }
}

/// The journal never holds a command a target runs (a verifier's, a file's hook), only its
/// digest: the config says what runs. A rotation stopped before its verifier resumes under
/// renamed entries and runs the same command; under a config whose command changed, it
/// stops before running anything, saying so.
#[tokio::test]
async fn commands_are_named_by_digest_and_run_only_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let id = "0195f0a0-0000-7000-8000-00000000add2";
    let path = dir.path().join("rekey.toml");
    {
        std::fs::write(
            &path,
            with_commands(dir.path(), ["random", "vault", "app", "check"], "check-5e2"),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let resolver = config.resolver(shared.clone(), Arc::new(|_| None)).unwrap();
        let journal =
            Arc::new(SqliteJournal::open_with_clock(&config.journal_path, shared.clone()).unwrap());
        let stop = Arc::new(StopAfterUpdate::default());
        let options = Options {
            observer: Some(stop.clone()),
            ..Options::new("first", 1)
        };
        let runner = Arc::new(Runner::new(
            journal,
            Arc::new(resolver),
            shared.clone(),
            options,
        ));
        let _ = stop.0.set(Arc::downgrade(&runner));
        let plan = config.plan("api").unwrap().clone();
        runner
            .request(plan, Trigger::Manual, "test", id.into())
            .await
            .unwrap();
        assert_eq!(runner.drive(id).await.unwrap(), Progress::Stopped);
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hook.log")).unwrap(),
        "hook-7c1\n"
    );
    let journal =
        SqliteJournal::open_with_clock(dir.path().join("journal.db"), shared.clone()).unwrap();
    let payloads: String = journal
        .read_stream(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    for word in ["hook-7c1", "check-5e2", "echo"] {
        assert!(
            !payloads.contains(word),
            "{word:?} is in the journal: {payloads}"
        );
    }
    drop(journal);

    // The verifier's command changed: the rotation stops before the verifier runs.
    let events = async |dir: &Path| {
        SqliteJournal::open_with_clock(dir.join("journal.db"), Arc::new(ManualClock::new(T0_MS)))
            .unwrap()
            .read_stream(id)
            .await
            .unwrap()
            .len()
    };
    let before = events(dir.path()).await;
    std::fs::write(
        &path,
        with_commands(dir.path(), ["random", "vault", "app", "check"], "changed"),
    )
    .unwrap();
    let (runner, _) = runner_from(dir.path(), &clock);
    let err = runner.drive(id).await.unwrap_err().to_string();
    for says in [
        "target \"check\" (command (sha256",
        "runs a command",
        "no longer has; put the command back as it was when the rotation started",
    ] {
        assert!(err.contains(says), "{says:?} missing from: {err}");
    }
    assert_eq!(events(dir.path()).await, before, "nothing journaled");
    drop(runner);

    // The same commands under other names: the rotation verifies and completes.
    std::fs::write(
        &path,
        with_commands(dir.path(), ["rng", "kv", "env", "probe"], "check-5e2"),
    )
    .unwrap();
    let (runner, _) = runner_from(dir.path(), &clock);
    assert_eq!(
        runner.drive(id).await.unwrap(),
        Progress::Finished(Phase::Completed)
    );
}

/// A runner over the journal in `dir`, its providers found by `dir/rekey.toml`.
fn runner_from(dir: &Path, clock: &ManualClock) -> (Runner<SqliteJournal>, Config) {
    let text = std::fs::read_to_string(dir.join("rekey.toml")).unwrap();
    runner(dir, &text, clock)
}
