//! `rekey rotate`, `resume`, `status` and `policy check`: the operator's commands. Each
//! loads and validates the config first, so bad input changes nothing. Only `rotate` (and
//! `rekey run`) create the journal where none exists; `resume` and `status` never do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rekey_journal::{AnyJournal, Clock, MemoryJournal, SystemClock};
use serde::Serialize;

use super::exit;
use super::journal_cmd::format_ms;
use crate::config::Config;
use crate::runner::{Options, Progress, Requested, Runner, RunnerJournal};
use crate::saga::{ErrorClass, Phase, Rotation, RotationEvent, StepId, StepStatus, Trigger, Wait};

/// A runner over the config's journal and providers, stamped by the system clock.
pub struct Env {
    pub config: Config,
    pub journal: Arc<AnyJournal>,
    pub runner: Arc<Runner<AnyJournal>>,
    pub clock: Arc<dyn Clock>,
}

impl Env {
    /// Loads the config at `path` and opens its journal, creating it if none exists.
    ///
    /// # Errors
    /// Config and journal errors, each naming the file and what to do.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_observed(path, None)
    }

    /// As [`Env::open`], with `observer` told of every event the runner journals.
    ///
    /// # Errors
    /// Config and journal errors.
    pub fn open_observed(
        path: &Path,
        observer: Option<Arc<dyn crate::runner::Observer>>,
    ) -> Result<Self> {
        Self::with_config(Config::load(path)?, observer)
    }

    /// As [`Env::open_observed`], with the config already loaded and checked. Creates the
    /// journal if none exists.
    ///
    /// # Errors
    /// Provider and journal errors.
    pub fn with_config(
        config: Config,
        observer: Option<Arc<dyn crate::runner::Observer>>,
    ) -> Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Everything the config needs is checked before the journal is touched.
        let providers = config.resolver(clock.clone(), Arc::new(|var| std::env::var(var).ok()))?;
        let journal = Arc::new(crate::journal_open::open(
            &config.journal,
            clock.clone(),
            &|var| std::env::var(var).ok(),
        )?);
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        providers.share_site_leases(Arc::new(
            crate::providers::azure::appservice::JournalSiteLeases::new(
                journal.clone(),
                owner.clone(),
            ),
        ));
        let runner = Arc::new(Runner::new(
            journal.clone(),
            Arc::new(providers),
            clock.clone(),
            Options {
                lease_ttl_ms: config.lease_ttl_ms,
                call_timeout_ms: config.call_timeout_ms(),
                sleep: Some(crate::runner::tokio_sleep()),
                observer,
                ..Options::new(owner, rand::random())
            },
        ));
        Ok(Self {
            config,
            journal,
            runner,
            clock,
        })
    }

    /// Drives a rotation until it ends; with `wait`, also through backoffs, the grace
    /// period and other runners' leases.
    pub async fn drive(&self, rotation_id: &str, wait: bool) -> Result<Progress> {
        loop {
            let progress = self.drive_once(rotation_id).await?;
            let pause_ms = match &progress {
                Progress::Finished(_) | Progress::Stopped => return Ok(progress),
                _ if !wait => return Ok(progress),
                Progress::Waiting { until_ms, .. } => until_ms.saturating_sub(self.clock.now_ms()),
                Progress::Busy { .. } => BUSY_POLL_MS,
            };
            tokio::time::sleep(Duration::from_millis(pause_ms.max(0) as u64)).await;
        }
    }

    /// As [`Env::drive`] with `wait`, but only while the rotation can still end within
    /// `limit`: once the next thing it can do (a retry, the end of the grace period, another
    /// runner letting go) lies past the limit, it returns [`Watched::StillOpen`] and leaves
    /// the rotation, safe in the journal, to `resume` or the daemon.
    ///
    /// # Errors
    /// Runner and journal errors.
    pub async fn drive_within(&self, rotation_id: &str, limit: WaitLimit) -> Result<Watched> {
        let started_ms = self.clock.now_ms();
        loop {
            let progress = self.drive_once(rotation_id).await?;
            let now = self.clock.now_ms();
            let wake_ms = match &progress {
                Progress::Finished(_) | Progress::Stopped => return Ok(Watched::Ended(progress)),
                Progress::Waiting { until_ms, .. } => *until_ms,
                Progress::Busy { .. } => now.saturating_add(BUSY_POLL_MS),
            };
            let deadline_ms = match limit {
                WaitLimit::For { ms } => started_ms.saturating_add(ms),
                WaitLimit::AfterGrace => {
                    // The grace period ends when it was scheduled to; before verification,
                    // no sooner than a grace period after this wait began.
                    let (state, _) = self.runner.load(rotation_id).await?;
                    state
                        .grace_due_ms
                        .unwrap_or_else(|| started_ms.saturating_add(state.plan.grace_ms))
                        .saturating_add(WAIT_AFTER_GRACE_MS)
                }
            };
            if wake_ms > deadline_ms {
                return Ok(Watched::StillOpen(progress));
            }
            tokio::time::sleep(Duration::from_millis(
                wake_ms.saturating_sub(now).max(0) as u64
            ))
            .await;
        }
    }

    /// Drives a rotation as far as it goes now. A drive whose lease lapsed (this process or
    /// the journal stalled for longer than the lease) is taken up again at once, as the
    /// daemon does later: the journal says where it stood.
    async fn drive_once(&self, rotation_id: &str) -> Result<Progress> {
        let mut lapses = 0;
        loop {
            match self.runner.drive(rotation_id).await {
                Ok(progress) => return Ok(progress),
                Err(e) if lease_lapsed(&e) && lapses < LEASE_LAPSES_MAX => {
                    lapses += 1;
                    tracing::warn!(rotation_id, error = %e, "the lease lapsed mid-drive; taking the rotation up again");
                }
                Err(e) if lease_lapsed(&e) => anyhow::bail!(
                    "rotation {rotation_id}: this runner's lease lapsed {} times in a row ({e}); something stalls this process, the journal or a provider for longer than [runner] lease_ttl ({} ms): raise lease_ttl or find the stall, then run `rekey resume` (the rotation is safe in the journal)",
                    lapses + 1,
                    self.config.lease_ttl_ms
                ),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How often a drive waiting on another runner's lease looks again.
const BUSY_POLL_MS: i64 = 1_000;

/// How long `rotate --wait` keeps trying after the grace period ends, by default: the
/// retirement steps' time, with room for a few retries.
pub const WAIT_AFTER_GRACE_MS: i64 = 5 * 60_000;

/// How long `rotate --wait` waits for its rotation to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitLimit {
    /// Until five minutes ([`WAIT_AFTER_GRACE_MS`]) after the grace period ends.
    AfterGrace,
    /// At most this long from the start (`--wait-max`).
    For { ms: i64 },
}

/// Where [`Env::drive_within`] left a rotation.
#[derive(Debug)]
pub enum Watched {
    /// It ended (or the runner is stopping).
    Ended(Progress),
    /// It cannot end within the limit; this is what it waits for.
    StillOpen(Progress),
}

/// Lapsed leases in a row after which a drive gives up.
const LEASE_LAPSES_MAX: u32 = 5;

/// True when a drive stopped because its lease lapsed or was taken over.
fn lease_lapsed(e: &crate::runner::Error) -> bool {
    matches!(
        e,
        crate::runner::Error::Journal(
            rekey_journal::Error::LeaseExpired { .. } | rekey_journal::Error::StaleFence { .. }
        )
    )
}

/// One rotation's outcome, as printed.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub rotation_id: String,
    pub secret: String,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// The failed step holding the rotation up (`rotate --wait` that gave up waiting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The result of a rotation `rotate --wait` stopped waiting for (exit code 4).
pub const STILL_OPEN: &str = "still open: run `rekey status`";

impl Outcome {
    fn new(rotation_id: &str, secret: &str, p: &Progress) -> Self {
        let (result, until_ms) = match p {
            Progress::Finished(Phase::Completed) => ("completed".to_owned(), None),
            Progress::Finished(Phase::Compensated) => ("compensated".to_owned(), None),
            Progress::Finished(other) => (format!("{other:?}").to_lowercase(), None),
            Progress::Waiting { until_ms, reason } => (
                match reason {
                    Wait::Backoff => "waiting to retry".to_owned(),
                    Wait::Grace => "waiting out the grace period".to_owned(),
                },
                Some(*until_ms),
            ),
            Progress::Busy { holder } => (format!("busy: leased by {holder}"), None),
            Progress::Stopped => ("stopped: run `rekey resume` to continue".to_owned(), None),
        };
        Self {
            rotation_id: rotation_id.to_owned(),
            secret: secret.to_owned(),
            result,
            until_ms,
            failure: None,
        }
    }

    /// A rotation that cannot end within `rotate --wait`'s limit: what it waits for and
    /// the failure holding it up.
    fn still_open(rotation_id: &str, secret: &str, p: &Progress, failure: Option<String>) -> Self {
        let waiting = Self::new(rotation_id, secret, p);
        let until = waiting
            .until_ms
            .map(|t| format!(" until {}", format_ms(t)))
            .unwrap_or_default();
        Self {
            result: format!("{STILL_OPEN} ({}{until})", waiting.result),
            failure,
            ..waiting
        }
    }

    fn line(&self) -> String {
        let still_open = self.result.starts_with(STILL_OPEN);
        let until = self
            .until_ms
            .filter(|_| !still_open)
            .map(|t| format!(" until {}", format_ms(t)))
            .unwrap_or_default();
        let mut line = format!(
            "{} {}: {}{until}",
            self.rotation_id, self.secret, self.result
        );
        if let Some(failure) = &self.failure {
            line.push_str(&format!("; {failure}"));
        }
        if still_open {
            line.push_str("; `rekey resume` or the daemon finishes it");
        }
        line
    }
}

fn print_outcomes(outcomes: &[Outcome], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(outcomes)?);
    } else if outcomes.is_empty() {
        println!("nothing to resume: no open rotation");
    } else {
        for o in outcomes {
            println!("{}", o.line());
        }
    }
    Ok(())
}

/// A step of `state` in words: "disable_old on store vault".
fn step_words(state: &Rotation, step: StepId) -> String {
    match state.plan.targets.get(usize::from(step.target)) {
        Some(t) => format!(
            "{} on {} {}",
            step.action.as_str(),
            format!("{:?}", t.role).to_lowercase(),
            t.name
        ),
        None => step.to_string(),
    }
}

fn class_words(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient => "transient error",
        ErrorClass::RateLimited => "rate limited",
        ErrorClass::Permanent => "permanent error",
    }
}

/// The failed step holding `state` up, in words: the step, its target and the error.
pub(super) fn holding_failure(state: &Rotation) -> Option<String> {
    state.steps.iter().find_map(|(step, status)| match status {
        StepStatus::InDoubt {
            failure: Some(f), ..
        } => Some(format!(
            "{} failed ({}): {}",
            step_words(state, *step),
            class_words(f.class),
            f.message
        )),
        _ => None,
    })
}

/// Tells the operator on stderr of each failed attempt of a step: which step, on which
/// target, the error and when it is tried next. An attempt that fails as the step's
/// previous one did gets a short line, so a step that keeps failing does not flood the
/// terminal (its attempts are spaced by growing backoff).
#[derive(Debug, Default)]
struct FailureReporter {
    /// The last message of each failed step, by rotation.
    last: std::sync::Mutex<HashMap<(String, StepId), String>>,
}

impl crate::runner::Observer for FailureReporter {
    fn journaled(&self, state: &Rotation, event: &RotationEvent, _append_seconds: f64) {
        let RotationEvent::StepFailed {
            step,
            attempt,
            class,
            message,
            retry_at_ms,
        } = event
        else {
            return;
        };
        let next = match retry_at_ms {
            Some(at) => format!("next attempt at {}", format_ms(*at)),
            None => "no further attempt: the rotation is undone".to_owned(),
        };
        let again = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((state.id.clone(), *step), message.clone())
            .is_some_and(|previous| previous == *message);
        let what = format!("{}: {}", state.plan.secret, step_words(state, *step));
        if again {
            eprintln!("rekey: {what} failed again (attempt {attempt}), as before; {next}");
        } else {
            eprintln!(
                "rekey: {what} failed ({}, attempt {attempt}): {message}; {next}",
                class_words(*class)
            );
        }
    }
}

/// `rekey rotate SECRET`: drives the rotation until it waits, or with `wait` until it ends
/// or cannot end within the limit (exit code 4, the rotation left open).
pub async fn rotate(
    config: &Path,
    secret: &str,
    wait: Option<WaitLimit>,
    json: bool,
) -> Result<u8> {
    let config = Config::load(config)?;
    // An unknown secret (a typo) is refused before the journal is opened or created.
    let plan = config.plan(secret)?.clone();
    let env = Env::with_config(config, Some(Arc::new(FailureReporter::default())))?;
    let rotation_id = uuid::Uuid::now_v7().to_string();
    let rotation_id = match env
        .runner
        .request(plan, Trigger::Manual, "cli", rotation_id)
        .await?
    {
        Requested::Started { rotation_id } => rotation_id,
        Requested::Coalesced { into } => {
            if !json {
                println!("a rotation of {secret} is already open: {into}; driving it");
            }
            into
        }
    };
    let progress = match wait {
        None => env.drive(&rotation_id, false).await?,
        Some(limit) => match env.drive_within(&rotation_id, limit).await? {
            Watched::Ended(progress) => progress,
            Watched::StillOpen(progress) => {
                let (state, _) = env.runner.load(&rotation_id).await?;
                let failure = holding_failure(&state);
                let outcome = Outcome::still_open(&rotation_id, secret, &progress, failure);
                print_outcomes(&[outcome], json)?;
                return Ok(exit::STILL_OPEN);
            }
        },
    };
    print_outcomes(&[Outcome::new(&rotation_id, secret, &progress)], json)?;
    Ok(match progress {
        Progress::Finished(Phase::Compensated) => exit::FAILED,
        _ => exit::OK,
    })
}

/// `rekey resume`.
pub async fn resume(config: &Path, wait: bool, json: bool) -> Result<u8> {
    let config = Config::load(config)?;
    if !journal_exists(&config)? {
        // Nothing was ever started here; a journal created now would hold nothing.
        if json {
            println!("[]");
        } else {
            println!(
                "nothing to resume: no journal at {} yet",
                config.journal.describe()
            );
        }
        return Ok(exit::OK);
    }
    let env = Arc::new(Env::with_config(config, None)?);
    let bar = progress_bar(json);
    // Rotations are independent: drive several at once, so one waiting out its grace
    // period does not hold up the rest; each starts as soon as it is found.
    let progress = Arc::new(BarProgress(bar.clone()));
    let driven =
        crate::runner::resume::drive_open(&env.runner, RESUME_PARALLEL_MAX, progress, |open| {
            let (env, id) = (env.clone(), open.rotation_id.clone());
            async move { env.drive(&id, wait).await }
        })
        .await;
    bar.finish_and_clear();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (open, driven) in driven? {
        match driven {
            Ok(progress) => outcomes.push(Outcome::new(
                &open.rotation_id,
                open.secret.as_deref().unwrap_or_default(),
                &progress,
            )),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    print_outcomes(&outcomes, json)?;
    if failures.is_empty() {
        Ok(exit::OK)
    } else {
        for f in &failures {
            eprintln!("rekey: {f}");
        }
        Ok(exit::FAILED)
    }
}

/// Whether the configured journal exists (read-only, creating nothing).
fn journal_exists(config: &Config) -> Result<bool> {
    match &config.journal {
        crate::config::JournalConfig::Sqlite { path } => Ok(path.exists()),
        pg => match crate::journal_open::open_read_only(pg, &|var| std::env::var(var).ok()) {
            Ok(_) => Ok(true),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

/// Rotations `resume` drives at once.
const RESUME_PARALLEL_MAX: usize = 16;

/// A progress bar on stderr when a person is watching; hidden otherwise (pipes,
/// `--json`). Its length grows as open rotations are found.
fn progress_bar(json: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} rotations resumed ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Resume progress on a bar: each rotation found lengthens it, each drive that returns
/// advances it.
struct BarProgress(indicatif::ProgressBar);

impl crate::runner::resume::ResumeProgress for BarProgress {
    fn found(&self) {
        self.0.inc_length(1);
    }
    fn driven(&self) {
        self.0.inc(1);
    }
}

/// `rekey status [SECRET]`: reads the journal read-only, and never creates one.
pub async fn status(config: &Path, secret: Option<&str>, json: bool) -> Result<u8> {
    let config = Config::load(config)?;
    let names: Vec<String> = match secret {
        Some(s) => vec![config.plan(s)?.secret.clone()],
        None => config.secrets.keys().cloned().collect(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let env = |var: &str| std::env::var(var).ok();
    let mut leader = None;
    let rows = match crate::journal_open::open_read_only(&config.journal, &env) {
        Ok(journal) => {
            leader = crate::daemon::leader::recorded(&journal).await?;
            status_rows(Arc::new(journal), &config, &names, clock).await?
        }
        Err(e) if e.is_missing() => {
            let note = format!(
                "no journal at {} yet: nothing has been rotated (the first `rekey rotate` or `rekey run` creates it)",
                config.journal.describe()
            );
            if json {
                eprintln!("rekey: {note}");
            } else {
                println!("{note}");
            }
            status_rows(
                Arc::new(MemoryJournal::new(clock.clone())),
                &config,
                &names,
                clock,
            )
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        for r in &rows {
            let open = r
                .open_rotation
                .as_ref()
                .map_or("no open rotation".to_owned(), |o| {
                    format!(
                        "open {} ({:?}), next: {}{}",
                        o.rotation_id,
                        o.phase,
                        crate::status::describe(&o.next, &format_ms),
                        o.last_failure
                            .as_ref()
                            .map(|f| format!(" after {f}"))
                            .unwrap_or_default()
                    )
                });
            let last = r
                .last_ended
                .as_ref()
                .map_or("never rotated".to_owned(), |e| {
                    format!(
                        "last {} {} at {}",
                        e.rotation_id,
                        e.status,
                        format_ms(e.ended_at_ms)
                    )
                });
            let next = r
                .next_scheduled
                .as_ref()
                .map(|n| {
                    format!(
                        "; next scheduled {} ({})",
                        format_ms(n.at_ms),
                        n.reason.replace('_', " ")
                    )
                })
                .unwrap_or_default();
            println!("{}: {open}; {last}{next}", r.secret);
        }
        if let Some(l) = leader {
            let since = format_ms(l.since_ms);
            println!(
                "daemon leader: node {} since {since} (as last journaled)",
                l.node
            );
        }
    }
    Ok(exit::OK)
}

/// The status of each secret in `names`, read from `journal`.
async fn status_rows<J: RunnerJournal>(
    journal: Arc<J>,
    config: &Config,
    names: &[String],
    clock: Arc<dyn Clock>,
) -> Result<Vec<crate::status::SecretStatus>> {
    let now = clock.now_ms();
    // Status folds the journal and calls no provider, so its runner has none.
    let runner = Runner::new(
        journal.clone(),
        Arc::new(crate::resolve::Registry::new()),
        clock,
        Options::new("status", 0),
    );
    Ok(crate::status::secrets(&*journal, &runner, &config.schedules, names, now).await?)
}

/// `rekey policy check`.
pub fn policy_check(config: &Path, json: bool) -> Result<u8> {
    let config = Config::load(config)?;
    if json {
        let secrets: Vec<_> = config.secrets.values().collect();
        println!("{}", serde_json::to_string(&secrets)?);
    } else {
        println!(
            "{}: valid; journal {}; {} provider(s); {} secret(s): {}",
            config.path.display(),
            config.journal.describe(),
            config.providers.len(),
            config.secrets.len(),
            config
                .secrets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(exit::OK)
}
