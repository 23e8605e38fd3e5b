//! The command line: argument parsing (clap), output rendering and exit codes.
//! `anyhow` is used here, at the binary's edge, and nowhere below it.

mod demo;
mod discover_cmd;
mod fleet_cmd;
mod history_cmd;
mod journal_cmd;
mod plan_cmd;
mod probe_cmd;
mod rotation_cmd;
mod run_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed (bad input, unreachable journal, a compensated rotation); see stderr.
    pub const FAILED: u8 = 1;
    /// Usage error: unknown flag or missing argument (clap's own code).
    pub const USAGE: u8 = 2;
    /// `journal verify` found a broken link: the journal was tampered with or damaged (also
    /// the HTML report's exit code, once written).
    pub const JOURNAL_BROKEN: u8 = 3;
    /// `discover` finished but could not read some tenants, subscriptions or vaults.
    pub const PARTIAL: u8 = 4;
    /// `rotate --wait` stopped waiting: the rotation cannot end within `--wait-max` (a step
    /// keeps failing, or the grace period runs longer). It stays open, safe in the journal,
    /// for `rekey resume` or the daemon; `rekey status` shows why. The same code as
    /// [`PARTIAL`]: either way, the command ended without finishing everything it was
    /// asked, and says what is left.
    pub const STILL_OPEN: u8 = 4;
}

/// The config file read when neither `--config` nor `REKEY_CONFIG` names one.
pub const CONFIG_DEFAULT: &str = "rekey.toml";

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure (see the message), 2 usage error, 3 journal verification failed,
4 not everything done: discovery partial (some tenants or vaults could not be read), or
still open: `rotate --wait` gave up waiting (--wait-max); run `rekey status`.

Examples:
  rekey demo                                   # rotate a demo secret on this machine
  rekey policy check --config rekey.toml       # validate a config, change nothing
  rekey plan payments-api                      # the steps a rotation would take
  rekey rotate payments-api --wait             # rotate now, through the grace period
  rekey rotate payments-api --wait --wait-max 10m   # ... but give up waiting after 10 minutes
  rekey resume                                 # after a crash: finish every open rotation
  rekey status --json
  rekey history --since 30d --status compensated,failed   # what went wrong lately
  rekey discover --expiring-within 30d         # fleet credentials and the vault items holding them
  rekey journal verify                         # the journal the config's [journal] names
  rekey journal verify --journal /var/lib/rekey/journal.db
  rekey journal copy --from journal.db --to postgres://rekey@db.example.com/rekey --password-env REKEY_JOURNAL_PASSWORD";

/// rekey rotates secrets as sagas whose every step is an event in an append-only journal.
#[derive(Debug, Parser)]
#[command(name = "rekey", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// The config file (TOML): journal, providers, secrets [default: rekey.toml]
    #[arg(long, global = true, env = "REKEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the journal lives, for the auditor's commands: `--journal`, else the config's
/// `[journal]` (`path` or `url`), else `journal.db` (where `rekey demo` writes it). They need no
/// environment variables and no file the config names but the journal.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArg {
    /// The journal file (SQLite) [default: the [journal] path or url of --config, or of
    /// ./rekey.toml if there is one; else journal.db]
    #[arg(long, env = "REKEY_JOURNAL")]
    pub journal: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rotate a demo secret end to end on this machine: local vault file, env-file
    /// dependent, SQLite journal; then print and verify the journal.
    #[command(after_help = "Example:\n  rekey demo --dir /tmp/rekey-demo --grace-secs 2")]
    Demo(demo::DemoArgs),
    /// Start a rotation of SECRET now (or join the one already open) and drive it.
    #[command(
        after_help = "Examples:\n  rekey rotate payments-api          # drive until it waits (grace period, backoff)\n  rekey rotate payments-api --wait   # drive to its end, old credential retired\n  rekey rotate payments-api --wait --wait-max 10m\n\nWith --wait, each failed attempt of a step is shown on stderr (the step, its error, the\nnext attempt). Exit code 4: the rotation cannot end within --wait-max and is left open\nfor `rekey resume` or the daemon; run `rekey status`.\n\nFleet ([fleet] in the config): discover, then rotate the Entra app passwords whose every\nvault copy is linked with enough confidence, one rotation per application:\n  rekey rotate --fleet --expiring-within 30d --dry-run   # the review; nothing changes\n  rekey rotate --fleet --expiring-within 30d             # review, confirm on the terminal, rotate\n  rekey rotate --fleet --app 'orders-*' --yes --json     # unattended: --yes is required\n  rekey rotate --fleet --app orders --key-id <keyId> --min-confidence medium --approve-medium\nEach rotation adds a password (addPassword), writes it as a new version of every linked\nitem (keeping its tags and content type; tagged rekey-app-id, rekey-key-id, rekey-rotation),\nsigns in with it, and after [fleet.rotation] grace (24h) removes the old password and\ndisables the versions it superseded; `rekey resume` or the daemon finishes that part.\nOnly HIGH rotates by default; MEDIUM needs --approve-medium and keeps the old password;\nLOW, ambiguous, partially covered and unlinked credentials are refused with the reason.\nExit code 1 when any rotation was undone or failed."
    )]
    Rotate {
        /// The secret's name in the config (or --fleet).
        #[arg(required_unless_present = "fleet")]
        secret: Option<String>,
        /// Keep going through backoffs and the grace period until the rotation ends.
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting, exit 4 and leave the rotation open once it cannot end
        /// within this long, e.g. "2s", "10m", "1h" [default: until 5 minutes after the
        /// grace period ends]
        #[arg(long, requires = "wait", conflicts_with = "fleet", value_parser = parse_wait_max)]
        wait_max: Option<i64>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// Print the plan (steps, resources, undo) and change nothing; with --fleet, the
        /// review.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        fleet: fleet_cmd::FleetArgs,
    },
    /// Print the ordered steps of a rotation, what each touches and how it is undone;
    /// changes nothing.
    #[command(after_help = "Examples:\n  rekey plan payments-api\n  rekey plan --json")]
    Plan {
        /// Only this secret.
        secret: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inventory the fleet ([fleet] in the config): every Entra app credential, the Key
    /// Vault items that hold it and how sure each link is. Read only; journaled as
    /// `discovery:<run id>`.
    #[command(
        after_help = "Exit codes: 0 complete, 4 partial (something could not be read; listed under `unreachable`), 1 bad input.\n\nExamples:\n  rekey discover                                # table sorted by expiry\n  rekey discover --expiring-within 30d --json  # links[], unreachable[], counts\n  rekey discover --explain orders-api           # why each item is (not) linked"
    )]
    Discover(discover_cmd::DiscoverArgs),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  rekey completions bash > /etc/bash_completion.d/rekey")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Drive every open rotation in the journal towards its end (run after a crash or an
    /// outage; safe to run twice at once: leases give each rotation to one runner).
    #[command(after_help = "Examples:\n  rekey resume\n  rekey resume --wait --json")]
    Resume {
        /// Keep going through backoffs and grace periods until every rotation ends.
        #[arg(long)]
        wait: bool,
        /// Print the outcomes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon: resume every open rotation, then rotate on schedules, Key Vault
    /// events and API requests until SIGTERM/Ctrl-C (a second signal exits at once; both
    /// are safe, `resume` or the next start finishes what is left).
    #[command(
        after_help = "Config ([daemon] section, all optional):\n  listen = \"127.0.0.1:8787\"          # API, /healthz, /readyz, /metrics, /eventgrid\n  api_token_env = \"REKEY_API_TOKEN\"   # bearer token for /v1 (16+ characters); unset = /v1 off\n  max_concurrent_rotations = 64\n  webhook_secret_env = \"REKEY_WEBHOOK_SECRET\"   # Event Grid: ?code= or x-rekey-webhook-secret\n  webhook_token_env = \"REKEY_WEBHOOK_TOKEN\"     # or a bearer token\n  notice_days_before = 3\n  header_read_timeout = \"10s\"        # a request's head must arrive within this\n  body_timeout = \"30s\"               # its body within this of the head, else 408\n  connections_max = 256              # open at once (at most half of ulimit -n); the oldest idle one makes way\n  node_id = \"rekey-a\"                # this node among those sharing the journal (default: host-pid)\n  leader_ttl = \"15s\"                 # the leader lease: schedules, expiry polls, notices run on one node\nSchedules: [secrets.NAME.schedule]; notices: [notifications.NAME] (docs/config.md).\n\nExample:\n  REKEY_API_TOKEN=$(openssl rand -hex 32) rekey run --config /etc/rekey/rekey.toml"
    )]
    Run,
    /// Per secret: the open rotation and what it does next, and the last one that ended.
    Status {
        /// Only this secret.
        secret: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file and change nothing.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// One line per rotation, hand-configured and fleet alike: when, what, trigger and
    /// actor, items updated, new expiry, outcome, last error. Read from the journal only.
    #[command(
        after_help = "Examples:\n  rekey history --since 7d\n  rekey history --app '1b2c*' --status compensated,failed --json\n  rekey history --secret 'payments-*' --trigger schedule --until 2026-01-01T00:00:00Z"
    )]
    History(history_cmd::HistoryArgs),
    /// Read, export and verify the journal (auditors start here).
    #[command(subcommand)]
    Journal(journal_cmd::JournalCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check the config: unknown keys, wrong types, missing providers, bad durations.
    /// With --online, also sign in with each credential and probe every target
    /// read-only: exit 0 when every target is ready, 1 when any is not.
    #[command(
        after_help = "Examples:\n  rekey policy check\n  rekey policy check --online                # every secret's targets\n  rekey policy check --online payments-api --json\n\nOnline probes change nothing and open no journal: Key Vault lists the secret's\nversions (values unread), App Service lists the site's settings, Graph reads the\napplication, storage lists the account's keys, PostgreSQL logs in as the admin and\nreads the roles; local files are read; a command verifier has nothing to probe.\nA target that fails says what is missing, e.g. \"grant Key Vault Secrets Officer on …\"."
    )]
    Check {
        /// Print the validated plans (with --online: each target's result) as JSON.
        #[arg(long)]
        json: bool,
        /// Also acquire each credential's token and probe every target, read-only.
        #[arg(long)]
        online: bool,
        /// With --online: only this secret's targets.
        #[arg(requires = "online")]
        secret: Option<String>,
    },
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
    let named_config = cli.config.clone();
    let config = cli.config.unwrap_or_else(|| PathBuf::from(CONFIG_DEFAULT));
    let outcome = match cli.command {
        Command::Journal(cmd) => block_on(journal_cmd::run(cmd, named_config.as_deref())),
        Command::History(args) => block_on(history_cmd::run(args, named_config.as_deref())),
        Command::Demo(args) => block_on(demo::run(args)),
        Command::Rotate {
            fleet,
            dry_run,
            wait,
            json,
            ..
        } if fleet.fleet => block_on(fleet_cmd::run(&config, fleet, dry_run, wait, json)),
        Command::Rotate {
            secret: Some(secret),
            dry_run: true,
            json,
            ..
        } => plan_cmd::run(&config, Some(&secret), json),
        Command::Rotate {
            secret: Some(secret),
            wait,
            wait_max,
            json,
            ..
        } => {
            let limit = wait.then_some(match wait_max {
                Some(ms) => rotation_cmd::WaitLimit::For { ms },
                None => rotation_cmd::WaitLimit::AfterGrace,
            });
            block_on(rotation_cmd::rotate(&config, &secret, limit, json))
        }
        // clap requires SECRET unless --fleet.
        Command::Rotate { secret: None, .. } => Ok(exit::USAGE),
        Command::Plan { secret, json } => plan_cmd::run(&config, secret.as_deref(), json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "rekey", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Run => block_on(run_cmd::run(&config)),
        Command::Discover(args) => block_on(discover_cmd::run(&config, args)),
        Command::Resume { wait, json } => block_on(rotation_cmd::resume(&config, wait, json)),
        Command::Status { secret, json } => {
            block_on(rotation_cmd::status(&config, secret.as_deref(), json))
        }
        Command::Policy(PolicyCommand::Check {
            json,
            online: true,
            secret,
        }) => block_on(probe_cmd::run(&config, secret.as_deref(), json)),
        Command::Policy(PolicyCommand::Check { json, .. }) => {
            rotation_cmd::policy_check(&config, json)
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        // A reader that stopped early (`| head`) is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("rekey: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// `--wait-max`: a duration, in milliseconds.
fn parse_wait_max(text: &str) -> Result<i64, String> {
    crate::config::parse_duration_ms(text)
        .map_err(|why| format!("{text:?} {why}; write e.g. \"30s\", \"10m\" or \"2h\""))
}

/// Runs an async command on a fresh runtime.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
