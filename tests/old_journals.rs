//! Journals written by an older rekey still replay, resume and complete.
//!
//! `tests/fixtures/journal-name-targets/` holds a SQLite journal written before plans
//! carried target addresses (each target named only by its provider's config name), with
//! the config, local vault and env files it was written against. It was made by driving
//! two rotations of the local providers on a manual clock standing at
//! 2026-03-01T00:00:00Z:
//!
//! - `alpha` (rotation `0195f0a0-…-a1fa`): Requested, then capture, create, write, update
//!   and verify each StepStarted → StepSucceeded, then GraceScheduled (due one day later).
//!   Open in its grace period.
//! - `beta` (rotation `0195f0a0-…-b2fb`): Requested, captures and create done, then
//!   StepStarted for `write#1`, whose version reached the vault before the process died:
//!   in doubt.
//!
//! Both old versions were made by hand (no rekey tags).

use std::path::Path;
use std::sync::Arc;

use rekey::config::Config;
use rekey::journal::{Clock, JournalRead, ManualClock, SqliteJournal};
use rekey::runner::{Options, Progress, Runner};
use rekey::saga::{Action, Phase, RotationEvent, StepId, Wait};

/// Where the fixture's clock stood when its last event was written.
const WRITTEN_AT_MS: i64 = 1_772_323_200_000 + 63_000;
const ALPHA: &str = "0195f0a0-0000-7000-8000-00000000a1fa";
const BETA: &str = "0195f0a0-0000-7000-8000-00000000b2fb";
const DAY_MS: i64 = 86_400_000;

/// A private copy of a fixture directory (the fixture itself is never written).
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Each secret's versions in the vault file: (id, value, enabled, written by rekey).
fn versions(vault: &Path, secret: &str) -> Vec<(String, String, bool, bool)> {
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(vault).unwrap()).unwrap();
    file["secrets"][secret]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["value"].as_str().unwrap().to_owned(),
                v["enabled"].as_bool().unwrap(),
                v["tags"]["rekey-key"].is_string(),
            )
        })
        .collect()
}

fn env_line(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{}: no {key} in {text:?}", path.display()))
        .to_owned()
}

async fn events(journal: &SqliteJournal, rotation: &str) -> Vec<RotationEvent> {
    journal
        .read_stream(rotation)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect()
}

/// The rotation in its grace period waits, then completes; the in-doubt write is found
/// done by reconciling (not written again), and the rotation completes. Afterwards each
/// secret's vault holds one enabled version, the new one, which its env file holds too.
#[tokio::test]
async fn a_journal_of_name_only_targets_resumes_to_completion() {
    let dir = copy_fixture("journal-name-targets");
    let config = Config::load(&dir.path().join("rekey.toml")).unwrap();
    let clock = ManualClock::new(WRITTEN_AT_MS + 60_000);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let resolver = config.resolver(shared.clone(), Arc::new(|_| None)).unwrap();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(&config.journal_path, shared.clone()).unwrap());
    let runner = Runner::new(
        journal.clone(),
        Arc::new(resolver),
        shared,
        Options::new("today", 1),
    );

    let mut open = runner.open_rotations().await.unwrap();
    open.sort();
    assert_eq!(open, [ALPHA, BETA]);

    let grace = |p: Progress| {
        matches!(
            p,
            Progress::Waiting {
                reason: Wait::Grace,
                ..
            }
        )
    };
    let p = runner.drive(ALPHA).await.unwrap();
    assert!(grace(p.clone()), "alpha waits out its grace period: {p:?}");
    let p = runner.drive(BETA).await.unwrap();
    assert!(grace(p.clone()), "beta goes on to its grace period: {p:?}");

    let write = StepId::new(Action::Write, 1);
    assert!(
        events(&journal, BETA)
            .await
            .contains(&RotationEvent::StepSucceeded {
                step: write,
                id: Some(
                    versions(&dir.path().join("vault.json"), "beta")[1]
                        .0
                        .clone()
                ),
                reconciled: true,
            }),
        "beta's in-doubt write is found by its tag"
    );

    clock.advance(2 * DAY_MS);
    for rotation in [ALPHA, BETA] {
        assert_eq!(
            runner.drive(rotation).await.unwrap(),
            Progress::Finished(Phase::Completed),
            "{rotation}"
        );
    }

    let vault = dir.path().join("vault.json");
    for (secret, env, key) in [
        ("alpha", "alpha.env", "ALPHA"),
        ("beta", "beta.env", "BETA"),
    ] {
        let versions = versions(&vault, secret);
        assert_eq!(
            versions.len(),
            2,
            "{secret}: one version written, once: {versions:?}"
        );
        let (old, new) = (&versions[0], &versions[1]);
        assert!(
            !old.2 && !old.3,
            "{secret}: the hand-made old version is disabled (I8)"
        );
        assert!(
            new.2 && new.3,
            "{secret}: the new version is live and rekey's"
        );
        assert_eq!(
            env_line(&dir.path().join(env), key),
            new.1,
            "{secret}: env file"
        );
    }
    assert_eq!(env_line(&dir.path().join("alpha.env"), "OTHER"), "kept");
    let report = journal.verify(None).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    // Written before new journals got 2,048-byte pages, it keeps its 4,096-byte ones.
    let page_size: i64 = rusqlite::Connection::open(&config.journal_path)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 4096);
}

/// A journal from before addresses names its targets only by their config names: under a
/// config that renamed them, its rotation stops before calling anything, naming the
/// target and what to do (what every rotation did before targets carried addresses).
#[tokio::test]
async fn a_journal_of_name_only_targets_needs_the_names_it_was_written_with() {
    let dir = copy_fixture("journal-name-targets");
    let path = dir.path().join("rekey.toml");
    let renamed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[providers.vault]", "[providers.main-vault]")
        .replace("stores = [\"vault\"]", "stores = [\"main-vault\"]");
    std::fs::write(&path, renamed).unwrap();
    let config = Config::load(&path).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(WRITTEN_AT_MS + 2 * DAY_MS));
    let resolver = config.resolver(clock.clone(), Arc::new(|_| None)).unwrap();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(&config.journal_path, clock.clone()).unwrap());
    let runner = Runner::new(
        journal.clone(),
        Arc::new(resolver),
        clock,
        Options::new("today", 1),
    );
    let before = journal.read_stream(ALPHA).await.unwrap().len();
    let err = runner.drive(ALPHA).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "rotation {ALPHA}: no provider is configured for target vault; add it to the config or finish the rotation with the config it was started with"
        )
    );
    assert_eq!(journal.read_stream(ALPHA).await.unwrap().len(), before);
}
