//! `rekey demo`: the embedded default end to end. Rotates a demo secret held in a local
//! vault file and consumed from an env file, waits out a short grace period, retires the
//! old version, then prints the journal and verifies it. No cloud account needed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rekey_journal::{Clock, JournalRead, SqliteJournal, SystemClock};

use super::exit;
use super::journal_cmd::{format_ms, timeline_line};
use crate::provider::{Provider, SecretValue};
use crate::providers::local::{EnvFile, LocalVault, RandomRotator};
use crate::runner::{Options, Progress, Requested, Runner};
use crate::saga::{Plan, Role, TargetRef, Trigger};

/// The demo secret's name.
const SECRET: &str = "demo-api-key";
/// Bytes of randomness in a demo value (64 hex characters).
const VALUE_BYTES: usize = 32;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's journal, vault file and app env file.
    #[arg(long, default_value = "rekey-demo")]
    dir: PathBuf,
    /// Grace period before the old version is retired, in seconds.
    #[arg(long, default_value_t = 3)]
    grace_secs: u64,
}

fn plan(grace_ms: i64) -> Plan {
    let target = |role, name: &str| TargetRef {
        role,
        name: name.to_owned(),
    };
    Plan {
        secret: SECRET.to_owned(),
        lock_key: SECRET.to_owned(),
        targets: vec![
            target(Role::Rotator, "random"),
            target(Role::Store, "local-vault"),
            target(Role::Dependent, "app-env"),
            target(Role::Verifier, "app-env"),
        ],
        grace_ms,
        attempts_max: 5,
    }
}

pub async fn run(args: DemoArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create the demo directory {}", args.dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal_path = args.dir.join("journal.db");
    let journal = Arc::new(SqliteJournal::open_with_clock(
        &journal_path,
        clock.clone(),
    )?);
    let vault = Arc::new(LocalVault::new(args.dir.join("vault.json"), SECRET));
    let env = Arc::new(EnvFile::new(args.dir.join("app.env"), "API_KEY"));

    // First run: give the secret an initial version, as if someone had set it by hand.
    if env.read()?.is_none() {
        let initial = SecretValue::new(format!("initial-{}", uuid::Uuid::now_v7().simple()));
        vault.set(&initial, "demo-initial")?;
        std::fs::write(
            args.dir.join("app.env"),
            format!("API_KEY={}\n", initial.expose()),
        )?;
    }

    let providers: HashMap<String, Arc<dyn Provider>> = HashMap::from([
        (
            "random".to_owned(),
            Arc::new(RandomRotator { bytes: VALUE_BYTES }) as Arc<dyn Provider>,
        ),
        ("local-vault".to_owned(), vault),
        ("app-env".to_owned(), env),
    ]);
    let owner = format!("demo-{}", uuid::Uuid::now_v7());
    let runner = Runner::new(
        journal.clone(),
        providers,
        clock.clone(),
        Options::new(owner, rand::random()),
    );
    let grace_ms = i64::try_from(args.grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let rotation_id = uuid::Uuid::now_v7().to_string();
    let rotation_id = match runner
        .request(plan(grace_ms), Trigger::Manual, "demo", rotation_id)
        .await?
    {
        Requested::Started { rotation_id } => {
            println!("started rotation {rotation_id} of {SECRET}");
            rotation_id
        }
        Requested::Coalesced { into } => {
            println!("a rotation of {SECRET} is already open ({into}); driving it");
            into
        }
    };
    loop {
        match runner.drive(&rotation_id).await? {
            Progress::Finished(phase) => {
                println!("rotation {rotation_id} ended: {phase:?}");
                break;
            }
            Progress::Waiting { until_ms, reason } => {
                println!("waiting ({reason:?}) until {}", format_ms(until_ms));
                let wait = until_ms.saturating_sub(clock.now_ms()).max(0);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
            Progress::Busy { holder } => {
                println!("rotation {rotation_id} is leased by {holder}; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    println!(
        "\njournal {} — rotation {rotation_id}:",
        journal_path.display()
    );
    for e in journal.read_stream(&rotation_id)? {
        println!("{}", timeline_line(&e));
    }
    let report = journal.verify(None)?;
    println!(
        "\njournal verify: {} ({} streams, {} events)",
        if report.is_intact() {
            "intact"
        } else {
            "BROKEN"
        },
        report.streams,
        report.events
    );
    println!(
        "the app now reads API_KEY from {}; run `rekey demo --dir {}` again to rotate once more",
        args.dir.join("app.env").display(),
        args.dir.display()
    );
    Ok(if report.is_intact() {
        exit::OK
    } else {
        exit::JOURNAL_BROKEN
    })
}
