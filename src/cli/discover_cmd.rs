//! `rekey discover`: inventory the fleet's Entra credentials and the Key Vault items that
//! hold them, link them with a confidence, journal the run (`discovery:<run id>`) and
//! print a table sorted by expiry, one JSON document, or the evidence for one app.
//!
//! Bad input (config, arguments, missing variables) is refused before the journal is
//! opened or anything is read. Read only: nothing changes in Azure.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, bail};
use rekey_journal::{Clock, SystemClock};

use super::exit;
use crate::config::Config;
use crate::fleet::config::parse_min_confidence;
use crate::fleet::discover::{self, Discovery};
use crate::fleet::explain::{day, explain};
use crate::fleet::inventory::{Phase, Progress};
use crate::fleet::matching::Confidence;
use crate::fleet::report::{LinkRow, Report, report};

/// `rekey discover`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Only this configured tenant (`[fleet.tenants.<name>]`).
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Only credentials that end within this long, e.g. "30d", "12h".
    #[arg(long, value_name = "DURATION")]
    expiring_within: Option<String>,
    /// The confidence every copy needs to be ready to rotate: "high" or "medium" (default:
    /// the config's `min_confidence`, itself "high" by default).
    #[arg(long, value_name = "C")]
    min_confidence: Option<String>,
    /// Print one JSON document (`links`, `unreachable`, `counts`).
    #[arg(long, conflicts_with = "explain")]
    json: bool,
    /// Explain every link of this app (client id, object id or display name): each
    /// scored item, its evidence, vetoes and outcome, and the verdict.
    #[arg(long, value_name = "APP")]
    explain: Option<String>,
}

/// Runs `rekey discover`.
pub async fn run(config: &Path, args: DiscoverArgs) -> Result<u8> {
    let config = Config::load(config)?;
    let fleet = discover::fleet(&config)?;
    let expiring_within_ms = args
        .expiring_within
        .as_deref()
        .map(|t| {
            crate::config::parse_duration_ms(t).map_err(|why| {
                anyhow::anyhow!("--expiring-within {t:?} {why}; write e.g. \"30d\" or \"12h\"")
            })
        })
        .transpose()?;
    let min_confidence = args
        .min_confidence
        .as_deref()
        .map(|c| {
            parse_min_confidence(c).map_err(|m| anyhow::anyhow!("--min-confidence {c:?}: {m}"))
        })
        .transpose()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Everything the run needs (credentials from the environment included) is checked
    // before the journal is touched.
    let mut scanner = discover::scanner(&config, args.tenant.as_deref(), clock.clone(), &|v| {
        std::env::var(v).ok()
    })?;
    let journal =
        crate::journal_open::open(&config.journal, clock.clone(), &|v| std::env::var(v).ok())
            .with_context(|| format!("cannot open the journal {}", config.journal.describe()))?;
    let bars = Arc::new(Bars::new());
    scanner.progress = bars.clone();
    let d = discover::discover(&scanner, fleet, min_confidence, clock.as_ref()).await;
    bars.clear();
    crate::fleet::journal::record(&journal, &d)
        .await
        .with_context(|| format!("cannot journal discovery {}", d.run_id))?;
    let r = report(&d, clock.now_ms(), expiring_within_ms);
    if let Some(app) = &args.explain {
        print_explanation(&d, app)?;
    } else if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(if d.partial() { exit::PARTIAL } else { exit::OK })
}

fn print_explanation(d: &Discovery, app: &str) -> Result<()> {
    let wanted = |c: &crate::fleet::model::AppCredential| {
        c.app_id.eq_ignore_ascii_case(app)
            || c.object_id.eq_ignore_ascii_case(app)
            || c.app_name.eq_ignore_ascii_case(app)
    };
    if !d.matched.credentials.iter().any(wanted) {
        bail!(
            "no app {app:?} among the {} credentials discovered in tenants {}; give its client id, object id or display name as `rekey discover` lists it",
            d.matched.credentials.len(),
            d.tenants.join(", ")
        );
    }
    print!("{}", explain(&d.matched, wanted));
    Ok(())
}

/// The table: one row per credential, soonest expiry first.
fn print_table(r: &Report) {
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut i = 0;
    while i < r.links.len() {
        let first = &r.links[i];
        let mut end = i;
        while end < r.links.len() && r.links[end].key_id == first.key_id {
            end += 1;
        }
        let group = &r.links[i..end];
        rows.push(row(group));
        i = end;
    }
    let header = [
        "APP",
        "CREDENTIAL",
        "EXPIRES",
        "LINKED ITEMS",
        "CONFIDENCE",
        "READY",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if k + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    let c = &r.counts;
    println!(
        "{} credentials of {} apps in {} tenants; {} items in {} vaults; links: {} high, {} medium, {} low, {} ambiguous, {} vetoed; {} in no scanned vault; {} ready at {} ({} excluded credentials, {} excluded items, {} hint reads)",
        c.credentials,
        c.apps,
        c.tenants,
        c.items,
        c.vaults,
        c.high,
        c.medium,
        c.low,
        c.ambiguous,
        c.vetoed,
        c.unlinked,
        c.ready,
        r.min_confidence.as_str(),
        c.excluded_credentials,
        c.excluded_items,
        c.hint_reads
    );
    for u in &r.unreachable {
        println!(
            "unreachable {} {} (tenant {}): {}",
            u.kind.as_str().replace('_', " "),
            u.name,
            u.tenant,
            u.reason
        );
    }
    if r.partial {
        println!(
            "partial: what could not be read may hold copies; nothing is ready to rotate until it can be read ({})",
            r.stream
        );
    } else {
        println!("journaled as {}", r.stream);
    }
}

/// One credential's row from its link rows.
fn row(group: &[LinkRow]) -> [String; 6] {
    let c = &group[0];
    let name = c
        .credential_name
        .as_deref()
        .map_or_else(String::new, |n| format!("{n} "));
    let items: Vec<String> = group
        .iter()
        .filter_map(|l| {
            let (vault, item) = (l.vault.as_deref()?, l.item.as_deref()?);
            Some(format!("{vault}/{item} ({})", l.confidence.as_str()))
        })
        .collect();
    let linked = group
        .iter()
        .filter(|l| !matches!(l.confidence, Confidence::None) && l.vault.is_some())
        .count();
    let items = if linked == 0 && items.is_empty() {
        "not in any scanned vault".to_owned()
    } else {
        items.join(", ")
    };
    let confidence = group
        .iter()
        .filter(|l| l.vault.is_some() && l.confidence != Confidence::None)
        .map(|l| l.confidence)
        .min_by_key(|k| (*k != Confidence::Ambiguous, k.rank()))
        .unwrap_or(Confidence::None);
    let expires = c.end_ms.map_or_else(|| "-".to_owned(), |ms| day(Some(ms)))
        + if c.due { " (due)" } else { "" };
    let ready = if c.ready {
        "yes".to_owned()
    } else {
        format!("no: {}", c.reason)
    };
    [
        format!("{} [{}]", c.app_name, c.app_id),
        format!("{name}{} ({})", c.key_id, c.kind),
        expires,
        items,
        confidence.as_str().to_uppercase(),
        ready,
    ]
}

/// A progress bar per phase on a terminal; nothing otherwise.
#[derive(Debug)]
pub(super) struct Bars {
    multi: Option<indicatif::MultiProgress>,
    bars: Mutex<Vec<(Phase, indicatif::ProgressBar)>>,
}

impl Bars {
    pub(super) fn new() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(indicatif::MultiProgress::new);
        Self {
            multi,
            bars: Mutex::default(),
        }
    }

    fn bar(&self, phase: Phase) -> Option<indicatif::ProgressBar> {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, b)| b.clone())
    }

    pub(super) fn clear(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

impl Progress for Bars {
    fn start(&self, phase: Phase, total: Option<u64>) {
        let Some(multi) = &self.multi else { return };
        if let Some(bar) = self.bar(phase) {
            if let Some(t) = total {
                bar.inc_length(t);
            }
            return;
        }
        let (label, template) = match (phase, total) {
            (Phase::Apps, _) => ("apps", "{spinner} {msg:8} {pos} listed ({elapsed})"),
            (Phase::Vaults, _) => ("vaults", "{spinner} {msg:8} {pos} found ({elapsed})"),
            (Phase::Secrets, _) => (
                "secrets",
                "{bar:30} {msg:8} {pos}/{len} vaults read ({elapsed})",
            ),
        };
        let bar = multi.add(match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        });
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(label);
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((phase, bar));
    }

    fn advance(&self, phase: Phase, n: u64) {
        if let Some(bar) = self.bar(phase) {
            bar.inc(n);
        }
    }

    fn finish(&self, phase: Phase) {
        if let Some(bar) = self.bar(phase) {
            bar.tick();
        }
    }
}
