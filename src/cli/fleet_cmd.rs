//! `rekey rotate --fleet`: discover (as `rekey discover` does), plan each application's
//! rotation or refuse each credential with its reason (`fleet::plan`), print the review,
//! confirm, then request and drive the rotations through the runner, at most
//! `[fleet.rotation] max_concurrent` at once and `max_concurrent_per_tenant` per tenant.
//!
//! Bad input (arguments, config, variables, an unknown app or keyId) is refused before
//! anything changes; the journal is opened only once there is something to rotate and the
//! operator said yes. `--dry-run` prints the review and changes nothing (not even the
//! journal).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use rekey_journal::{Clock, SystemClock};
use serde::Serialize;

use super::exit;
use super::journal_cmd::format_ms;
use super::rotation_cmd::Env;
use crate::config::Config;
use crate::fleet::config::parse_min_confidence;
use crate::fleet::discover;
use crate::fleet::matching::Confidence;
use crate::fleet::plan::{AppRotation, FleetPlans, Refusal, Selection};
use crate::runner::{Progress, Requested};
use crate::saga::{Phase, Trigger, Wait};

/// The arguments `rotate --fleet` adds to `rotate`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetArgs {
    /// Rotate discovered Entra app passwords instead of a configured secret: discover,
    /// review, confirm, rotate (see the examples below).
    #[arg(long, conflicts_with = "secret")]
    pub fleet: bool,
    /// With --fleet: only credentials that end within this long (or have ended), e.g.
    /// "30d" [default: [fleet] days_before_expiry]
    #[arg(long, value_name = "DURATION", requires = "fleet")]
    pub expiring_within: Option<String>,
    /// With --fleet: only apps whose client id, object id or display name matches this
    /// glob (* and ?, case-insensitive).
    #[arg(long, value_name = "GLOB", requires = "fleet")]
    pub app: Option<String>,
    /// With --fleet and --app: only this credential (keyId), whatever its expiry.
    #[arg(long, value_name = "KEY_ID", requires = "app")]
    pub key_id: Option<String>,
    /// With --fleet: only this configured tenant ([fleet.tenants.<name>]).
    #[arg(long, value_name = "TENANT", requires = "fleet")]
    pub tenant: Option<String>,
    /// With --fleet: the confidence every copy of a credential needs, "high" or
    /// "medium" [default: [fleet] min_confidence, "high"]
    #[arg(long, value_name = "C", requires = "fleet")]
    pub min_confidence: Option<String>,
    /// With --fleet: rotate credentials whose copies are MEDIUM (implies
    /// --min-confidence medium). Their old passwords are kept: only a credential
    /// identified with HIGH confidence is ever removed.
    #[arg(long, requires = "fleet")]
    pub approve_medium: bool,
    /// With --fleet: do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, requires = "fleet")]
    pub yes: bool,
}

/// What a fleet run printed as JSON.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    dry_run: bool,
    discovery: &'a str,
    rotations: Vec<RotationRow>,
    refused: &'a [Refusal],
    not_due: usize,
    counts: Counts,
}

#[derive(Debug, Default, Serialize)]
struct Counts {
    planned: usize,
    /// Verified; the old password is removed after the grace period.
    rotated: usize,
    completed: usize,
    compensated: usize,
    /// Still open (a step is waiting to be retried): `rekey resume` finishes it.
    open: usize,
    failed: usize,
    refused: usize,
}

#[derive(Debug, Serialize)]
struct RotationRow {
    tenant: String,
    app_id: String,
    app_name: String,
    object_id: String,
    /// The credentials replaced, and whether each is removed after the grace period.
    credentials: Vec<CredentialRow>,
    items: Vec<String>,
    /// App Service settings refreshed after the vault writes: `site setting (vault/item)`.
    settings: Vec<String>,
    new_expiry: String,
    confidence: Confidence,
    rotation_id: Option<String>,
    /// `planned`, `rotated`, `completed`, `compensated`, `open` or `failed`.
    outcome: &'static str,
    /// When the old password is removed (a rotated one).
    grace_until: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct CredentialRow {
    key_id: String,
    expiry: Option<String>,
    remove_after_grace: bool,
}

impl RotationRow {
    fn planned(r: &AppRotation) -> Self {
        Self {
            tenant: r.tenant.clone(),
            app_id: r.app_id.clone(),
            app_name: r.app_name.clone(),
            object_id: r.object_id.clone(),
            credentials: r
                .credentials
                .iter()
                .map(|c| CredentialRow {
                    key_id: c.key_id.clone(),
                    expiry: c.end_ms.map(format_ms),
                    remove_after_grace: c.retire,
                })
                .collect(),
            items: r
                .items
                .iter()
                .map(|i| format!("{}/{} ({})", i.vault, i.item, i.confidence.as_str()))
                .collect(),
            settings: r
                .settings
                .iter()
                .map(|s| format!("{} {} ({}/{})", s.site, s.setting, s.vault, s.item))
                .collect(),
            new_expiry: format_ms(r.new_end_ms),
            confidence: r
                .credentials
                .iter()
                .map(|c| c.confidence)
                .min_by_key(|c| c.rank())
                .unwrap_or(Confidence::None),
            rotation_id: None,
            outcome: "planned",
            grace_until: None,
            error: None,
        }
    }
}

/// The selection from the arguments: every argument checked before anything is read.
fn selection(args: &FleetArgs, config: &Config, now_ms: i64) -> Result<Selection> {
    let fleet = discover::fleet(config)?;
    let expiring_within_ms = args
        .expiring_within
        .as_deref()
        .map(|t| {
            crate::config::parse_duration_ms(t).map_err(|why| {
                anyhow::anyhow!("--expiring-within {t:?} {why}; write e.g. \"30d\" or \"12h\"")
            })
        })
        .transpose()?;
    let min_confidence = match args.min_confidence.as_deref() {
        Some(c) => {
            parse_min_confidence(c).map_err(|m| anyhow::anyhow!("--min-confidence {c:?}: {m}"))?
        }
        None if args.approve_medium => Confidence::Medium,
        None => fleet.rules.min_confidence,
    };
    if let Some(app) = &args.app {
        crate::fleet::rules::check_glob(app)
            .map_err(|why| anyhow::anyhow!("--app {app:?}: {why}"))?;
    }
    if let Some(t) = &args.tenant
        && !fleet.tenants.contains_key(t)
    {
        bail!(
            "--tenant {t:?} is not a tenant of [fleet.tenants] in {}; configured: {}",
            config.path.display(),
            fleet.tenants.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let tenant_ids = crate::fleet::rotate::tenant_ids(config);
    Ok(Selection {
        now_ms,
        expiring_within_ms,
        app: args.app.clone(),
        key_id: args.key_id.clone(),
        tenant: args.tenant.clone(),
        min_confidence,
        approve_medium: args.approve_medium,
        tenant_max_days: BTreeMap::new(),
        tenant_ids,
    })
}

/// Runs `rekey rotate --fleet`.
pub async fn run(
    config_path: &Path,
    args: FleetArgs,
    dry_run: bool,
    wait: bool,
    json: bool,
) -> Result<u8> {
    let config = Config::load(config_path)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sel = selection(&args, &config, clock.now_ms())?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !dry_run && !args.yes && !interactive {
        bail!(
            "rotate --fleet changes credentials and asks for confirmation, but stdin is not a terminal; review with --dry-run, then pass --yes"
        );
    }
    let fleet = discover::fleet(&config)?;
    // Credentials come from the environment here: a missing variable stops before
    // anything is read.
    let mut scanner = discover::scanner(&config, args.tenant.as_deref(), clock.clone(), &|v| {
        std::env::var(v).ok()
    })?;
    let bars = Arc::new(super::discover_cmd::Bars::new());
    scanner.progress = bars.clone();
    let planned =
        crate::fleet::rotate::discover_and_plan(&scanner, fleet, sel, clock.as_ref()).await;
    bars.clear();
    let (d, plans) = planned?;
    if dry_run || plans.rotations.is_empty() {
        let rows: Vec<RotationRow> = plans.rotations.iter().map(RotationRow::planned).collect();
        print(&d.run_id, dry_run, rows, &plans, json)?;
        return Ok(exit::OK);
    }
    if !json {
        print_review(&plans);
    }
    if !args.yes && !confirm(&plans)? {
        eprintln!("rekey: nothing rotated");
        return Ok(exit::FAILED);
    }
    let progress = Arc::new(Progressing::new(plans.rotations.len(), json));
    let observer = crate::fleet::progress::FleetProgress::new(progress.clone());
    let env = Arc::new(Env::with_config(config, Some(Arc::new(observer)))?);
    crate::fleet::journal::record(env.journal.as_ref(), &d)
        .await
        .with_context(|| format!("cannot journal discovery {}", d.run_id))?;
    let rows = rotate_all(&env, fleet_limits(&env.config), &plans, wait).await;
    progress.finish();
    let failed = rows
        .iter()
        .any(|r| matches!(r.outcome, "compensated" | "failed"));
    print(&d.run_id, false, rows, &plans, json)?;
    Ok(if failed { exit::FAILED } else { exit::OK })
}

fn fleet_limits(config: &Config) -> (usize, usize) {
    config.fleet.as_ref().map_or((1, 1), |f| {
        (
            f.rotation.max_concurrent,
            f.rotation.max_concurrent_per_tenant,
        )
    })
}

/// Requests and drives every planned rotation, at most `limits.0` at once and `limits.1`
/// per tenant.
async fn rotate_all(
    env: &Arc<Env>,
    (max, per_tenant): (usize, usize),
    plans: &FleetPlans,
    wait: bool,
) -> Vec<RotationRow> {
    let all = Arc::new(tokio::sync::Semaphore::new(max));
    let mut tenants: BTreeMap<String, Arc<tokio::sync::Semaphore>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in plans.rotations.iter().enumerate() {
        let tenant = tenants
            .entry(r.tenant.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per_tenant)))
            .clone();
        let (env, all, r) = (env.clone(), all.clone(), r.clone());
        tasks.spawn(async move {
            let _tenant = tenant.acquire_owned().await;
            let _all = all.acquire_owned().await;
            (i, rotate_one(&env, &r, wait).await)
        });
    }
    let mut rows = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(row) => rows.push(row),
            Err(e) => tracing::error!(error = %e, "a fleet rotation task ended abnormally"),
        }
    }
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

async fn rotate_one(env: &Env, r: &AppRotation, wait: bool) -> RotationRow {
    let mut row = RotationRow::planned(r);
    let id = uuid::Uuid::now_v7().to_string();
    let actor = format!("cli:rotate --fleet:{}", whoami());
    let id = match env
        .runner
        .request(r.plan.clone(), Trigger::Bulk, &actor, id)
        .await
    {
        Ok(Requested::Started { rotation_id }) => rotation_id,
        // One is open for this app already (a configured secret, an earlier run): drive
        // that one; this plan is not started.
        Ok(Requested::Coalesced { into }) => into,
        Err(e) => {
            row.outcome = "failed";
            row.error = Some(e.to_string());
            return row;
        }
    };
    row.rotation_id = Some(id.clone());
    match env.drive(&id, wait).await {
        Ok(Progress::Finished(Phase::Completed)) => row.outcome = "completed",
        Ok(Progress::Finished(_)) => {
            row.outcome = "compensated";
            row.error = last_failure(env, &id).await;
        }
        Ok(Progress::Waiting {
            reason: Wait::Grace,
            until_ms,
        }) => {
            row.outcome = "rotated";
            row.grace_until = Some(format_ms(until_ms));
        }
        Ok(_) => {
            row.outcome = "open";
            row.error = last_failure(env, &id).await;
        }
        Err(e) => {
            row.outcome = "failed";
            row.error = Some(format!("{e:#}"));
        }
    }
    row
}

/// Why a rotation is undone or held up, from its journal.
async fn last_failure(env: &Env, id: &str) -> Option<String> {
    let (state, _) = env.runner.load(id).await.ok()?;
    state
        .compensation_reason
        .clone()
        .or_else(|| super::rotation_cmd::holding_failure(&state))
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The review (`fleet::plan::review`), on stderr.
fn print_review(plans: &FleetPlans) {
    eprint!("{}", crate::fleet::plan::review(plans));
}

/// Asks on the terminal.
fn confirm(plans: &FleetPlans) -> Result<bool> {
    let items: usize = plans.rotations.iter().map(|r| r.items.len()).sum();
    eprint!(
        "Rotate {} application(s), writing {items} vault item(s)? [y/N] ",
        plans.rotations.len()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn print(
    run_id: &str,
    dry_run: bool,
    rows: Vec<RotationRow>,
    plans: &FleetPlans,
    json: bool,
) -> Result<()> {
    let mut counts = Counts {
        planned: rows.len(),
        refused: plans.refused.len(),
        ..Counts::default()
    };
    for r in &rows {
        match r.outcome {
            "rotated" => counts.rotated += 1,
            "completed" => counts.completed += 1,
            "compensated" => counts.compensated += 1,
            "open" => counts.open += 1,
            "failed" => counts.failed += 1,
            _ => {}
        }
    }
    if json {
        let summary = Summary {
            dry_run,
            discovery: run_id,
            rotations: rows,
            refused: &plans.refused,
            not_due: plans.not_due,
            counts,
        };
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    let mut out = String::new();
    if dry_run {
        out += "dry run: nothing changed\n";
    }
    for r in &rows {
        let what = if r.settings.is_empty() {
            format!("{} ({}): {} item(s)", r.app_name, r.app_id, r.items.len())
        } else {
            format!(
                "{} ({}): {} item(s), {} App Service setting(s)",
                r.app_name,
                r.app_id,
                r.items.len(),
                r.settings.len()
            )
        };
        let line = match r.outcome {
            "planned" => format!(
                "would rotate {what}, new password until {}",
                &r.new_expiry[..10.min(r.new_expiry.len())]
            ),
            "rotated" => format!(
                "rotated {what}; old password removed after {}",
                r.grace_until.as_deref().unwrap_or("the grace period")
            ),
            "completed" => format!("completed {what}; old password removed"),
            other => format!(
                "{other} {what}: {}",
                r.error.as_deref().unwrap_or("see `rekey status`")
            ),
        };
        out += &line;
        if let Some(id) = &r.rotation_id {
            out += &format!(" [rotation {id}]");
        }
        out += "\n";
        if r.outcome == "planned" {
            for setting in &r.settings {
                out += &format!("  refreshes App Service setting {setting}\n");
            }
        }
    }
    for f in &plans.refused {
        out += &format!(
            "refused {} ({}) {}: {}\n",
            f.app_name, f.app_id, f.key_id, f.reason
        );
    }
    out += &format!(
        "{} planned, {} rotated, {} completed, {} compensated, {} open, {} failed, {} refused, {} not due (discovery {run_id})\n",
        counts.planned,
        counts.rotated,
        counts.completed,
        counts.compensated,
        counts.open,
        counts.failed,
        counts.refused,
        plans.not_due
    );
    print!("{out}");
    Ok(())
}

/// The bars of `rotate --fleet` on a terminal: one line per rotation in flight (the
/// application, its step and attempt), gone when the rotation reaches its grace period or
/// its end, above an overall bar of rotations done. Hidden when stdout or stderr is not a
/// terminal, and with `--json`.
struct Progressing {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    /// Lines by rotation id; `None` once the rotation ended (it is counted once).
    lines: std::sync::Mutex<BTreeMap<String, Option<indicatif::ProgressBar>>>,
}

impl Progressing {
    fn new(len: usize, json: bool) -> Self {
        let shown = !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let multi = if shown {
            indicatif::MultiProgress::new()
        } else {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let overall = multi.add(indicatif::ProgressBar::new(len as u64));
        overall.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rotations ({elapsed}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self {
            multi,
            overall,
            lines: std::sync::Mutex::default(),
        }
    }

    fn finish(&self) {
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()));
        for line in lines.into_values().flatten() {
            line.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl crate::fleet::progress::ProgressSink for Progressing {
    fn show(&self, update: crate::fleet::progress::RotationProgress) {
        use crate::fleet::progress::RotationProgress;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        match update {
            RotationProgress::Step {
                rotation_id,
                app,
                step,
                attempt,
            } => {
                let Some(line) = lines
                    .entry(rotation_id)
                    .or_insert_with(|| {
                        let line = self
                            .multi
                            .insert_before(&self.overall, indicatif::ProgressBar::new_spinner());
                        line.set_style(
                            indicatif::ProgressStyle::with_template("  {spinner} {msg}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                        );
                        line.enable_steady_tick(std::time::Duration::from_millis(200));
                        Some(line)
                    })
                    .as_ref()
                else {
                    return;
                };
                line.set_message(format!("{app}: {step} (attempt {attempt})"));
            }
            RotationProgress::Ended {
                rotation_id,
                app,
                outcome,
            } => {
                let line = lines.insert(rotation_id, None);
                if let Some(Some(line)) = &line {
                    line.finish_and_clear();
                    self.multi.remove(line);
                }
                if !matches!(line, Some(None)) {
                    self.overall.inc(1);
                    self.overall.set_message(format!("{app}: {outcome}"));
                }
            }
        }
    }
}
