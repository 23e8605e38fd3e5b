//! `rekey journal show|export|verify|heads`: the auditor's view. Every command here opens
//! the journal read-only and creates nothing beside it (no `-wal` or `-shm`), so auditing
//! never changes the evidence, and a copy nobody may write can be audited.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use rekey_journal::{AnyJournal, FeedCursor, Head, JournalRead, JournalScan, StreamFilter};

use super::{CONFIG_DEFAULT, JournalArg, exit};
use crate::config::{Config, JournalConfig};
pub use crate::report::describe::{format_ms, timeline_line};
use crate::report::{Report, Scope, Source};

/// The journal read when neither `--journal` nor a config names one: where `rekey demo`
/// and the examples put it.
pub const JOURNAL_DEFAULT: &str = "journal.db";

/// Events read per page when exporting.
const EXPORT_PAGE_EVENTS: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Recompute every hash chain; exit 3 naming the first broken link.
    #[command(
        after_help = "Examples:\n  rekey journal verify\n  rekey journal heads > heads.jsonl   # keep somewhere safe\n  rekey journal verify --heads heads.jsonl   # also detects truncation"
    )]
    Verify {
        #[command(flatten)]
        journal: JournalArg,
        /// Heads exported earlier by `rekey journal heads`; a stream shorter than its
        /// exported head is reported as truncated.
        #[arg(long)]
        heads: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one stream (one rotation) as a timeline, as JSON, or as an HTML report.
    #[command(after_help = HTML_HELP_SHOW)]
    Show {
        /// The stream id (a rotation id).
        stream: String,
        #[command(flatten)]
        journal: JournalArg,
        /// Output format: text (a line per event), json (the events as an array) or
        /// html (a self-contained report: the rotation's timeline, the journal's chain
        /// verification and the stream's head).
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
        /// Print the events as a JSON array (same as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Write to this file (atomically: the whole file or, on failure, none) instead
        /// of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write every event, in global order, one JSON object per line; or an HTML report of
    /// every rotation.
    #[command(after_help = HTML_HELP_EXPORT)]
    Export {
        #[command(flatten)]
        journal: JournalArg,
        /// Output format: jsonl (every event of the streams the filters admit) or html (a
        /// self-contained report: an index, each rotation's timeline, the journal's chain
        /// verification and every head).
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write to this file (atomically: the whole file or, on failure, none) instead
        /// of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only streams about this subject (a secret's name).
        #[arg(long)]
        subject: Option<String>,
        /// Only streams with this status (open, completed, compensated).
        #[arg(long)]
        status: Option<String>,
        /// Only streams started at or after this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only streams started before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
    },
    /// Write each stream's head (last sequence and hash) as JSON lines, to keep outside the
    /// journal so that `verify --heads` can detect truncation later.
    Heads {
        #[command(flatten)]
        journal: JournalArg,
    },
    /// Copy every stream of one journal into another, empty one (SQLite to PostgreSQL or
    /// back): events, hashes and global order unchanged, every chain checked on arrival, all
    /// in one transaction (a failure copies nothing). Stop every rekey using the source first.
    #[command(
        after_help = "Examples:\n  rekey journal heads --journal journal.db > heads.jsonl\n  REKEY_JOURNAL_PASSWORD=... rekey journal copy --from journal.db \\\n      --to postgres://rekey@db.example.com/rekey --password-env REKEY_JOURNAL_PASSWORD\n  rekey journal verify --config rekey-pg.toml --heads heads.jsonl   # the copy, checked\n\nA postgres:// side is reached as [journal] url is: TLS verify_full unless --tls disable\n(loopback and Unix sockets only), no password in the URL (--password-env names the\nvariable holding it). The destination must hold nothing: a file that does not exist yet,\nor a database where rekey has written nothing. Exit code 3: the source is broken (the\nstream is named; nothing was copied)."
    )]
    Copy {
        /// The journal to copy: a SQLite file, or postgres://USER@HOST:PORT/DATABASE.
        #[arg(long)]
        from: String,
        /// The empty journal to copy into: a SQLite file (created), or a postgres:// URL.
        #[arg(long)]
        to: String,
        /// For a postgres:// side: the environment variable holding its user's password.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// For a postgres:// side: "verify_full" (default) or "disable" (loopback only).
        #[arg(long, value_enum)]
        tls: Option<TlsArg>,
        /// For a postgres:// side: a PEM root certificate to trust besides the system's.
        #[arg(long, value_name = "FILE")]
        tls_ca_file: Option<PathBuf>,
    },
}

/// `journal copy --tls`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TlsArg {
    /// TLS required, certificate chain and host name checked.
    #[value(name = "verify_full")]
    VerifyFull,
    /// Plain TCP or a Unix socket, for loopback only.
    #[value(name = "disable")]
    Disable,
}

/// `journal export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A self-contained HTML report for auditors.
    Html,
}

/// `journal show --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    /// One line per event.
    Text,
    /// The events as a JSON array.
    Json,
    /// A self-contained HTML report for auditors.
    Html,
}

const HTML_HELP_SHOW: &str = "Examples:\n  rekey journal show 0193a5b2-7c1e-7d3a-9f10-2b7c9e0f1a44\n  rekey journal show 0193a5b2-7c1e-7d3a-9f10-2b7c9e0f1a44 --format html -o rotation.html\n\nThe HTML report opens from the file with no network (no script, nothing fetched). It is\nwritten even when the journal is broken, with the first broken link at the top (stream,\nsequence, expected and found hash), and the command then exits 3, as `journal verify` does.";

const HTML_HELP_EXPORT: &str = "Examples:\n  rekey journal export --format jsonl --subject payments-api > payments.jsonl\n  rekey journal export --format html --since 2026-01-01T00:00:00Z -o audit.html\n\nThe HTML report opens from the file with no network (no script, nothing fetched). It is\nwritten even when the journal is broken, with the first broken link at the top (stream,\nsequence, expected and found hash), and the command then exits 3, as `journal verify` does.";

/// `verify --json`: the report, and whether a `-wal` was beside a SQLite journal and read
/// (absent for PostgreSQL).
#[derive(serde::Serialize)]
struct VerifyOutput<'a> {
    #[serde(flatten)]
    report: &'a rekey_journal::VerifyReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_read: Option<bool>,
}

/// The journal an auditor's command reads, and the config it came from: `--journal` (or
/// `REKEY_JOURNAL`); else the `[journal]` of the config named by `--config` (or
/// `REKEY_CONFIG`), or of `rekey.toml` here when there is one; else [`JOURNAL_DEFAULT`].
/// The config is validated but nothing else is read: no environment variable (but the
/// journal's own `password_env`), no file it names.
fn journal_of(arg: &JournalArg, config: Option<&Path>) -> Result<(JournalConfig, Option<PathBuf>)> {
    if let Some(journal) = &arg.journal {
        return Ok((
            JournalConfig::Sqlite {
                path: journal.clone(),
            },
            None,
        ));
    }
    let config = match config {
        Some(config) => config.to_owned(),
        None if Path::new(CONFIG_DEFAULT).is_file() => PathBuf::from(CONFIG_DEFAULT),
        None => {
            let path = PathBuf::from(JOURNAL_DEFAULT);
            return Ok((JournalConfig::Sqlite { path }, None));
        }
    };
    let text = std::fs::read_to_string(&config).map_err(|cause| crate::config::Error::Read {
        path: config.clone(),
        cause,
    })?;
    let journal = Config::parse(&config, &text)?.journal;
    Ok((journal, Some(config)))
}

/// Opens the journal `arg` and `config` name, read-only; also says where it is.
pub(super) fn open(arg: &JournalArg, config: Option<&Path>) -> Result<(AnyJournal, String)> {
    let (journal, from) = journal_of(arg, config)?;
    let env = |var: &str| std::env::var(var).ok();
    let key = match journal {
        JournalConfig::Sqlite { .. } => "path",
        JournalConfig::Postgres(_) => "url",
    };
    let opened = crate::journal_open::open_read_only(&journal, &env);
    let journal = match from {
        Some(config) => {
            opened.with_context(|| format!("the [journal] {key} of {}", config.display()))?
        }
        None => opened?,
    };
    let location = journal.location();
    Ok((journal, location))
}

/// `rekey journal …`; `config` is the config named by `--config` or `REKEY_CONFIG`.
pub async fn run(cmd: JournalCommand, config: Option<&Path>) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match cmd {
        JournalCommand::Verify {
            journal,
            heads,
            json,
        } => {
            let exported = heads.map(|p| read_heads(&p)).transpose()?;
            let (j, path) = open(&journal, config)?;
            let report = j.verify(exported.as_deref()).await?;
            if json {
                serde_json::to_writer(
                    &mut out,
                    &VerifyOutput {
                        report: &report,
                        wal_read: j.reads_wal(),
                    },
                )?;
                writeln!(out)?;
            } else if let Some(damage) = &report.damaged {
                writeln!(
                    out,
                    "BROKEN: the journal file is damaged (SQLite integrity check: {damage}); its events cannot be trusted to be all there are, and rotations in it cannot resume: restore the journal from a backup"
                )?;
            } else if let Some(b) = &report.broken {
                writeln!(
                    out,
                    "BROKEN: {b}\nchecked {} streams, {} events before the break; restore the journal from a backup and investigate",
                    report.streams, report.events
                )?;
            } else {
                writeln!(
                    out,
                    "intact: {} streams, {} events, every chain verified{}",
                    report.streams,
                    report.events,
                    if exported.is_some() {
                        ", no stream shorter than its exported head"
                    } else {
                        ""
                    }
                )?;
            }
            if !json && j.reads_wal() == Some(false) {
                let wal = format!("{path}-wal");
                writeln!(
                    out,
                    "note: no {wal} beside it: the file holds every event if rekey closed the journal cleanly, but a copy taken while rekey ran may lack the newest: copy {wal} with it"
                )?;
            }
            Ok(if report.is_intact() {
                exit::OK
            } else {
                exit::JOURNAL_BROKEN
            })
        }
        JournalCommand::Show {
            stream,
            journal,
            format,
            json,
            output,
        } => {
            let format = if json { ShowFormat::Json } else { format };
            let (j, path) = open(&journal, config)?;
            check_output(output.as_deref(), &j)?;
            if format == ShowFormat::Html {
                return html_report(&j, &path, &Scope::Stream(stream), output.as_deref()).await;
            }
            let mut buffer = Vec::new();
            let out: &mut dyn Write = if output.is_some() {
                &mut buffer
            } else {
                &mut out
            };
            let events = j.read_stream(&stream).await?;
            if events.is_empty() {
                anyhow::bail!(
                    "no stream {stream} in {path}; list streams with `rekey journal export`"
                );
            }
            if format == ShowFormat::Json {
                serde_json::to_writer_pretty(&mut *out, &events)?;
                writeln!(out)?;
            } else {
                let info = j.stream_info(&stream).await?;
                if let Some(info) = info {
                    writeln!(
                        out,
                        "stream {} ({}) status {}",
                        info.stream_id,
                        info.subject.as_deref().unwrap_or("no subject"),
                        info.status
                    )?;
                }
                for e in &events {
                    writeln!(out, "{}", timeline_line(e))?;
                }
            }
            write_output(output.as_deref(), &buffer)?;
            Ok(exit::OK)
        }
        JournalCommand::Export {
            journal,
            format,
            output,
            subject,
            status,
            since,
            until,
        } => {
            let (j, path) = open(&journal, config)?;
            check_output(output.as_deref(), &j)?;
            let filter = StreamFilter {
                subject,
                status,
                created_from_ms: since,
                created_until_ms: until,
            };
            if format == Format::Html {
                return html_report(&j, &path, &Scope::Export(filter), output.as_deref()).await;
            }
            let mut buffer = Vec::new();
            let out: &mut dyn Write = if output.is_some() {
                &mut buffer
            } else {
                &mut out
            };
            let wanted = if filter != StreamFilter::default() {
                Some(
                    j.streams(&filter)
                        .await?
                        .into_iter()
                        .map(|s| s.stream_id)
                        .collect::<std::collections::HashSet<_>>(),
                )
            } else {
                None
            };
            let mut cursor = FeedCursor::start();
            loop {
                let page = j.read_feed(&cursor, EXPORT_PAGE_EVENTS).await?;
                if page.events.is_empty() {
                    break;
                }
                cursor = page.next;
                for e in page
                    .events
                    .iter()
                    .filter(|e| wanted.as_ref().is_none_or(|w| w.contains(&e.stream_id)))
                {
                    serde_json::to_writer(&mut *out, e)?;
                    writeln!(out)?;
                }
            }
            write_output(output.as_deref(), &buffer)?;
            Ok(exit::OK)
        }
        JournalCommand::Copy {
            from,
            to,
            password_env,
            tls,
            tls_ca_file,
        } => {
            let tls = tls.map(|t| match t {
                TlsArg::VerifyFull => crate::config::PostgresTls::VerifyFull,
                TlsArg::Disable => crate::config::PostgresTls::Disable,
            });
            let pg = PgFlags {
                password_env: password_env.as_deref(),
                tls,
                tls_ca_file: tls_ca_file.as_deref(),
            };
            copy(&from, &to, &pg, &mut out).await
        }
        JournalCommand::Heads { journal } => {
            for head in open(&journal, config)?.0.heads().await? {
                serde_json::to_writer(&mut out, &head)?;
                writeln!(out)?;
            }
            Ok(exit::OK)
        }
    }
}

/// Writes the HTML report of `scope` to `output`, or to stdout; exit 3 when the journal is
/// broken (the report is written all the same, the break at its top), as `verify` does.
async fn html_report(
    j: &AnyJournal,
    location: &str,
    scope: &Scope,
    output: Option<&Path>,
) -> Result<u8> {
    use rekey_journal::Clock;
    let verify = j.verify(None).await?;
    let heads = j.heads().await?;
    let source = Source {
        location,
        verify: &verify,
        heads: &heads,
        generated_at_ms: rekey_journal::SystemClock.now_ms(),
    };
    let report = Report::build(j, scope, &source).await?;
    let html = report.to_html()?;
    match output {
        Some(_) => write_output(output, html.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(html.as_bytes())?;
            out.flush()?;
        }
    }
    if let (Some(path), false) = (output, report.is_intact()) {
        eprintln!(
            "rekey: BROKEN: the journal does not verify; the report in {} shows the first broken link at its top",
            path.display()
        );
    }
    Ok(if report.is_intact() {
        exit::OK
    } else {
        exit::JOURNAL_BROKEN
    })
}

/// Refuses an `--output` that is the journal being read, or a file beside it that is part
/// of it (`-wal`, `-shm`): writing there would destroy the evidence.
fn check_output(output: Option<&Path>, j: &AnyJournal) -> Result<()> {
    let (Some(output), AnyJournal::Sqlite(_)) = (output, j) else {
        return Ok(());
    };
    let Ok(target) = std::fs::canonicalize(output) else {
        return Ok(());
    };
    let journal = std::fs::canonicalize(j.location()).ok();
    let parts = journal.iter().flat_map(|p| {
        ["", "-wal", "-shm"].map(|suffix| PathBuf::from(format!("{}{suffix}", p.display())))
    });
    for part in parts {
        if part == target {
            anyhow::bail!(
                "--output {} is the journal being read ({}); name another file for the report",
                output.display(),
                part.display()
            );
        }
    }
    Ok(())
}

/// Writes `bytes` atomically to `output` (a new file gets mode 0600), when one is given.
fn write_output(output: Option<&Path>, bytes: &[u8]) -> Result<()> {
    if let Some(path) = output {
        crate::atomic_file::write(path, bytes, false)
            .with_context(|| format!("--output {}: nothing was written", path.display()))?;
    }
    Ok(())
}

/// `journal copy`'s flags for a postgres:// side.
struct PgFlags<'a> {
    password_env: Option<&'a str>,
    tls: Option<crate::config::PostgresTls>,
    tls_ca_file: Option<&'a Path>,
}

impl PgFlags<'_> {
    fn given(&self) -> bool {
        self.password_env.is_some() || self.tls.is_some() || self.tls_ca_file.is_some()
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// The journal `text` names on the command line (`--from`, `--to`).
fn journal_argument(flag: &str, text: &str, pg: &PgFlags<'_>) -> Result<JournalConfig> {
    let parsed = if is_url(text) {
        crate::config::journal_from_argument(text, pg.password_env, pg.tls, pg.tls_ca_file)
    } else {
        crate::config::journal_from_argument(text, None, None, None)
    };
    parsed.map_err(|why| anyhow::anyhow!("{flag}: {why}"))
}

/// Whether `a` and `b` name the same journal: the same file (links resolved), or the same
/// database on the same server.
fn same_journal(a: &JournalConfig, b: &JournalConfig) -> bool {
    let real = |p: &Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
        })
    };
    match (a, b) {
        (JournalConfig::Sqlite { path: a }, JournalConfig::Sqlite { path: b }) => {
            a == b || real(a).is_some_and(|ra| real(b) == Some(ra))
        }
        (JournalConfig::Postgres(a), JournalConfig::Postgres(b)) => {
            match (a.connection(), b.connection()) {
                (Ok(a), Ok(b)) => {
                    let db = |c: &rekey_journal::PostgresConfig| {
                        c.get_dbname().or(c.get_user()).map(str::to_owned)
                    };
                    let port = |c: &rekey_journal::PostgresConfig| {
                        c.get_ports().first().copied().unwrap_or(5432)
                    };
                    a.get_hosts() == b.get_hosts() && port(&a) == port(&b) && db(&a) == db(&b)
                }
                _ => a.url == b.url,
            }
        }
        _ => false,
    }
}

/// `rekey journal copy`.
async fn copy(from: &str, to: &str, pg: &PgFlags<'_>, out: &mut impl Write) -> Result<u8> {
    if pg.given() && !is_url(from) && !is_url(to) {
        anyhow::bail!(
            "--password-env, --tls and --tls-ca-file apply to a postgres:// journal, and neither --from nor --to is one"
        );
    }
    let source = journal_argument("--from", from, pg)?;
    let target = journal_argument("--to", to, pg)?;
    if same_journal(&source, &target) {
        anyhow::bail!(
            "--from and --to name the same journal ({}); copy into another, empty journal",
            target.describe()
        );
    }
    let env = |var: &str| std::env::var(var).ok();
    let source_journal = crate::journal_open::open_read_only(&source, &env)
        .with_context(|| format!("--from {}", source.describe()))?;
    // A file this copy creates is removed again when the copy fails.
    let created = target
        .sqlite_path()
        .filter(|p| p.symlink_metadata().is_err())
        .map(Path::to_owned);
    let clock: std::sync::Arc<dyn rekey_journal::Clock> =
        std::sync::Arc::new(rekey_journal::SystemClock);
    let target_journal = crate::journal_open::open(&target, clock, &env)
        .with_context(|| format!("--to {}", target.describe()))?;
    let bar = copy_bar();
    let copied = target_journal
        .copy_from(&source_journal, &mut |done, total| {
            bar.set_length(total.max(done));
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let counts = match copied {
        Ok(counts) => counts,
        Err(e) => {
            drop(target_journal);
            if let Some(path) = &created {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            let nothing = "nothing was copied (the destination is as it was)";
            if let rekey_journal::Error::Corrupt { .. } = e {
                eprintln!(
                    "rekey: BROKEN: the source journal {} is broken: {e}; {nothing}",
                    source.describe()
                );
                return Ok(exit::JOURNAL_BROKEN);
            }
            return Err(anyhow::Error::new(e).context(format!(
                "copying {} to {}: {nothing}",
                source.describe(),
                target.describe()
            )));
        }
    };
    // The copy, read back: every chain verifies, and every head is the source's.
    let heads = source_journal.heads().await?;
    let report = target_journal.verify(Some(&heads)).await?;
    if !report.is_intact() || target_journal.heads().await? != heads {
        anyhow::bail!(
            "the copy in {} does not verify as its source does ({}); do not use it: copy again into an empty journal",
            target.describe(),
            report
                .broken
                .as_ref()
                .map_or_else(|| "heads differ".to_owned(), ToString::to_string)
        );
    }
    writeln!(
        out,
        "copied {} streams, {} events, {} timers from {} to {}; every chain verified on arrival and in the copy, every head as in the source",
        counts.streams,
        counts.events,
        counts.timers,
        source.describe(),
        target.describe()
    )?;
    Ok(exit::OK)
}

/// A progress bar on stderr while a person watches; hidden otherwise.
fn copy_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events copied ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// An RFC 3339 time as Unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"))
}

fn read_heads(path: &PathBuf) -> Result<Vec<Head>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read exported heads from {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{}:{}: not a head line (expected {{\"stream_id\":…,\"seq\":…,\"hash\":…}} as written by `rekey journal heads`)",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}
