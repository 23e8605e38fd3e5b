//! The command line: argument parsing (clap), output rendering and exit codes.
//! `anyhow` is used here, at the binary's edge, and nowhere below it.

mod demo;
mod journal_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed (bad input, unreachable journal, provider error); see stderr.
    pub const FAILED: u8 = 1;
    /// Usage error: unknown flag or missing argument (clap's own code).
    pub const USAGE: u8 = 2;
    /// `journal verify` found a broken link: the journal was tampered with or damaged.
    pub const JOURNAL_BROKEN: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure (see the message), 2 usage error, 3 journal verification failed.

Examples:
  rekey journal verify --journal /var/lib/rekey/journal.db
  rekey journal show 0193a5b2-7c1e-7d3a-9f10-2b7c9e0f1a44 --json
  rekey journal export --format jsonl > journal.jsonl";

/// rekey rotates secrets as sagas whose every step is an event in an append-only journal.
#[derive(Debug, Parser)]
#[command(name = "rekey", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the journal lives; shared by every command that reads or writes it.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArg {
    /// The journal file (SQLite). Created on first write.
    #[arg(long, env = "REKEY_JOURNAL", default_value = "rekey-journal.db")]
    pub journal: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rotate a demo secret end to end on this machine: local vault file, env-file
    /// dependent, SQLite journal; then print and verify the journal.
    #[command(after_help = "Example:\n  rekey demo --dir /tmp/rekey-demo --grace-secs 2")]
    Demo(demo::DemoArgs),
    /// Read, export and verify the journal (auditors start here).
    #[command(subcommand)]
    Journal(journal_cmd::JournalCommand),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let _telemetry = crate::telemetry::init("warn");
    let outcome = match cli.command {
        Command::Journal(cmd) => journal_cmd::run(cmd),
        Command::Demo(args) => block_on(demo::run(args)),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rekey: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// Runs an async command on a fresh runtime.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
