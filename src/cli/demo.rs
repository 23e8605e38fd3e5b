//! `rekey demo`: the embedded default end to end. Writes a small config (local vault file,
//! env-file dependent, SQLite journal) into a directory, rotates its demo secret, waits out
//! a short grace period, retires the old version, then prints and verifies the journal.
//! No cloud account needed; the config it writes works with every other command.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rekey_journal::JournalRead;

use super::exit;
use super::journal_cmd::timeline_line;
use super::rotation_cmd::Env;
use crate::atomic_file;
use crate::provider::SecretValue;
use crate::providers::local::{EnvFile, LocalVault, VaultKey};
use crate::runner::{Progress, Requested};
use crate::saga::Trigger;

/// The demo secret's name.
const SECRET: &str = "demo-api-key";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's config, journal, vault file and app env file.
    #[arg(long, default_value = "rekey-demo")]
    dir: PathBuf,
    /// Grace period before the old version is retired, in seconds.
    #[arg(long, default_value_t = 3)]
    grace_secs: u64,
}

fn demo_config(grace_secs: u64) -> String {
    format!(
        r#"# Written by `rekey demo`. Paths are relative to this file.
[journal]
path = "journal.db"

[providers.random]
kind = "random"
bytes = 32

[providers.local-vault]
kind = "local_vault"
path = "vault.json"
key_file = "vault.key"

[providers.app-env]
kind = "env_file"
path = "app.env"
key = "API_KEY"

[secrets.{SECRET}]
rotator = "random"
stores = ["local-vault"]
dependents = ["app-env"]
verifiers = ["app-env"]
grace = "{grace_secs}s"
attempts_max = 5
"#
    )
}

pub async fn run(args: DemoArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create the demo directory {}", args.dir.display()))?;
    // The key sealing the vault's values; made once (whole or not at all), readable by its
    // owner only. An existing key is kept.
    let key_path = args.dir.join("vault.key");
    atomic_file::create_new(&key_path, VaultKey::generate_hex().as_bytes())
        .with_context(|| format!("cannot write the vault key {}", key_path.display()))?;
    let config_path = args.dir.join("rekey.toml");
    atomic_file::write(&config_path, demo_config(args.grace_secs).as_bytes(), false)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let env = Env::open(&config_path)?;

    // First run: give the secret an initial version, as if someone had set it by hand.
    let app_env = EnvFile::new(args.dir.join("app.env"), "API_KEY");
    if app_env.read()?.is_none() {
        let initial = SecretValue::new(format!("initial-{}", uuid::Uuid::now_v7().simple()));
        let key = atomic_file::read(&key_path, false)?
            .with_context(|| format!("the vault key {} is gone", key_path.display()))?;
        let key = VaultKey::from_hex(std::str::from_utf8(&key).unwrap_or_default())
            .map_err(|why| anyhow::anyhow!("{}: {why}", key_path.display()))?;
        LocalVault::sealed(args.dir.join("vault.json"), key).set(
            SECRET,
            &initial,
            "demo-initial",
        )?;
        let line = zeroize::Zeroizing::new(format!("API_KEY={}\n", initial.expose()));
        atomic_file::write(&args.dir.join("app.env"), line.as_bytes(), false)?;
    }

    let plan = env.config.plan(SECRET)?.clone();
    let rotation_id = uuid::Uuid::now_v7().to_string();
    let rotation_id = match env
        .runner
        .request(plan, Trigger::Manual, "demo", rotation_id)
        .await?
    {
        Requested::Started { rotation_id } => rotation_id,
        Requested::Coalesced { into } => into,
    };
    println!(
        "rotating {SECRET} (rotation {rotation_id}); the old version is retired after a {} s grace period",
        args.grace_secs
    );
    let progress = env.drive(&rotation_id, true).await?;
    println!("rotation {rotation_id} ended: {progress:?}\n");
    for e in env.journal.read_stream(&rotation_id).await? {
        println!("{}", timeline_line(&e));
    }
    let report = env.journal.verify(None).await?;
    println!(
        "\njournal {}: {} ({} streams, {} events)",
        env.config.journal.describe(),
        if report.is_intact() {
            "intact"
        } else {
            "BROKEN"
        },
        report.streams,
        report.events
    );
    println!(
        "the app reads API_KEY from {}; try `rekey --config {} status`",
        args.dir.join("app.env").display(),
        config_path.display()
    );
    Ok(match (report.is_intact(), progress) {
        (true, Progress::Finished(crate::saga::Phase::Completed)) => exit::OK,
        (false, _) => exit::JOURNAL_BROKEN,
        _ => exit::FAILED,
    })
}
