//! `rekey history`: one line per rotation, hand-configured and fleet alike, read from the
//! journal alone (opened read-only, like the `journal` commands: no config secrets, no
//! providers).

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::JournalArg;
use super::journal_cmd::format_ms;
use crate::history::{Item, RawFilter, Row};
use crate::text::excerpt;

/// Characters of a last error the table shows (`--json` has the journal's excerpt).
const TABLE_ERROR_CHARS: usize = 80;

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub journal: JournalArg,
    /// Only rotations requested at or after this time: RFC 3339 (2026-01-01T00:00:00Z) or
    /// a time back from now (7d, 12h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only rotations requested before this time (RFC 3339, or back from now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only secrets whose name matches this glob (case-insensitive; * and ?).
    #[arg(long)]
    pub secret: Option<String>,
    /// Only rotations of an Entra application whose app id matches this glob.
    #[arg(long)]
    pub app: Option<String>,
    /// Only rotations of an Entra application in a tenant matching this glob.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only these outcomes, comma-separated: completed, compensated, open, failed (open
    /// with its step's last attempt failed).
    #[arg(long)]
    pub status: Option<String>,
    /// Only these triggers, comma-separated: manual, schedule, near_expiry, bulk.
    #[arg(long)]
    pub trigger: Option<String>,
    /// Print `{"rotations": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rekey history`.
pub async fn run(args: HistoryArgs, config: Option<&Path>) -> Result<u8> {
    let raw = RawFilter {
        since: args.since,
        until: args.until,
        secret: args.secret,
        app: args.app,
        tenant: args.tenant,
        status: args.status,
        trigger: args.trigger,
    };
    // Checked before the journal is opened: bad input reads nothing.
    let now = rekey_journal::Clock::now_ms(&rekey_journal::SystemClock);
    let filter = raw.parse(now)?;
    let (journal, _) = super::journal_cmd::open(&args.journal, config)?;
    let rows = crate::history::rows(&journal, &filter).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &crate::history::Document { rotations: &rows })?;
        writeln!(out)?;
    } else {
        write!(out, "{}", table(&rows))?;
    }
    Ok(super::exit::OK)
}

/// The rows as an aligned table, one line per rotation, sorted as given.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "REQUESTED",
        "ROTATION",
        "SECRET",
        "APP",
        "TRIGGER",
        "ITEMS UPDATED",
        "NEW EXPIRY",
        "OUTCOME",
        "LAST ERROR",
    ]
    .map(str::to_owned);
    let lines: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                format_ms(r.requested_at_ms),
                r.rotation_id.clone(),
                r.secret.clone(),
                match (&r.app_id, &r.tenant) {
                    (Some(app), Some(tenant)) => format!("{app} ({tenant})"),
                    _ => "-".into(),
                },
                match r.joined.len() {
                    0 => format!("{} by {}", r.trigger, excerpt(&r.actor, 40)),
                    n => format!("{} by {} (+{n} joined)", r.trigger, excerpt(&r.actor, 40)),
                },
                if r.items_updated.is_empty() {
                    "-".into()
                } else {
                    r.items_updated
                        .iter()
                        .map(item_label)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                r.new_expiry_ms.map_or("-".into(), format_ms),
                match (r.outcome, r.finished_at_ms) {
                    (crate::history::Outcome::Open | crate::history::Outcome::Failed, _) => {
                        format!("{} ({})", r.outcome.as_str(), phase_name(r))
                    }
                    (_, Some(at)) => format!("{} {}", r.outcome.as_str(), format_ms(at)),
                    (_, None) => r.outcome.as_str().to_owned(),
                },
                r.last_error.as_ref().map_or("-".into(), |e| {
                    format!(
                        "{} {:?}: {}",
                        e.step,
                        e.class,
                        excerpt(&e.message, TABLE_ERROR_CHARS)
                    )
                }),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for line in std::iter::once(&header).chain(&lines) {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    if rows.is_empty() {
        text.push_str("(no rotation matches)\n");
    }
    text
}

/// `name` for a target, `name/item` for one item of a vault; `(undone)` when the
/// compensation put the old value back.
fn item_label(item: &Item) -> String {
    let mut label = match &item.item {
        Some(name) => format!("{}/{name}", item.name),
        None => item.name.clone(),
    };
    if item.undone {
        label.push_str(" (undone)");
    }
    label
}

fn phase_name(row: &Row) -> String {
    serde_json::to_value(row.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
