//! What `rekey discover --json` prints, and the rows its table shows: one document whose
//! `links` array has a row per link (and a row per credential found in no vault) and whose
//! `unreachable` array lists what could not be read. The field names are stable: other
//! tools read them. Never a value, never a hint.
//!
//! Owns: the report's shape, its order (by expiry) and the `--expiring-within` filter.
//! Never touches: I/O.

use serde::Serialize;

use super::discover::Discovery;
use super::matching::{Confidence, Outcome};
use super::model::{ItemKind, UnreachableKind};

/// One day.
const DAY_MS: i64 = 86_400_000;

/// The document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    /// The journal stream that records this run.
    pub stream: String,
    pub started: String,
    pub finished: String,
    /// Something could not be read (the exit code says so too).
    pub partial: bool,
    pub min_confidence: Confidence,
    pub days_before_expiry: u32,
    pub counts: Counts,
    pub links: Vec<LinkRow>,
    pub unreachable: Vec<UnreachableRow>,
}

/// How much was read and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub tenants: usize,
    pub apps: usize,
    pub credentials: usize,
    pub vaults: usize,
    pub items: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
    pub ambiguous: usize,
    /// Links vetoed (confidence none).
    pub vetoed: usize,
    /// Credentials in no scanned vault.
    pub unlinked: usize,
    /// Credentials whose every copy meets `min_confidence` (and nothing went unread).
    pub ready: usize,
    pub excluded_credentials: usize,
    pub excluded_items: usize,
    pub hint_reads: usize,
    pub unreachable: usize,
}

/// One link (or one credential with none).
#[derive(Debug, Clone, Serialize)]
pub struct LinkRow {
    pub tenant: String,
    pub app_id: String,
    pub app_name: String,
    pub object_id: String,
    /// `application` or `service_principal`.
    pub origin: &'static str,
    pub key_id: String,
    /// `password` or `certificate`.
    pub kind: &'static str,
    /// The credential's display name.
    pub credential_name: Option<String>,
    /// `endDateTime`, RFC 3339.
    pub credential_end: Option<String>,
    /// Ends within `days_before_expiry` (or has ended).
    pub due: bool,
    /// `null` when the credential is in no scanned vault.
    pub vault: Option<String>,
    /// The secret or certificate name.
    pub item: Option<String>,
    pub item_kind: Option<ItemKind>,
    pub confidence: Confidence,
    pub score: u32,
    pub evidence: Vec<String>,
    pub vetoes: Vec<String>,
    /// The credential's verdict (same on each of its rows).
    pub ready: bool,
    pub reason: String,
    #[serde(skip)]
    pub end_ms: Option<i64>,
}

/// Something not read.
#[derive(Debug, Clone, Serialize)]
pub struct UnreachableRow {
    /// `tenant`, `subscription`, `vault` or `vault_certificates`.
    pub kind: UnreachableKind,
    pub tenant: String,
    pub name: String,
    pub reason: String,
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms}ms"), |t| t.to_string())
}

/// The report of `d` at `now_ms`; with `expiring_within_ms`, only credentials ending
/// before `now + expiring_within_ms` (or already ended).
pub fn report(d: &Discovery, now_ms: i64, expiring_within_ms: Option<i64>) -> Report {
    let m = &d.matched;
    let due_by = now_ms.saturating_add(i64::from(d.days_before_expiry) * DAY_MS);
    let mut links = Vec::new();
    let mut counts = Counts {
        tenants: d.tenants.len(),
        credentials: m.credentials.len(),
        vaults: d.vaults.len(),
        items: m.items.len(),
        excluded_credentials: d.excluded_credentials,
        excluded_items: d.excluded_items,
        hint_reads: d.hint_reads,
        unreachable: m.unreachable.len(),
        ..Counts::default()
    };
    let mut apps: Vec<(&str, &str)> = m
        .credentials
        .iter()
        .map(|c| (c.tenant.as_str(), c.object_id.as_str()))
        .collect();
    apps.dedup();
    counts.apps = apps.len();
    for (ci, c) in m.credentials.iter().enumerate() {
        let verdict = &m.verdicts[ci];
        counts.ready += usize::from(verdict.ready);
        let pairs: Vec<_> = m.pairs_of(ci).filter(|p| p.is_link()).collect();
        for p in &pairs {
            match (p.outcome, p.confidence) {
                (Outcome::Vetoed, _) => counts.vetoed += 1,
                (_, Confidence::High) => counts.high += 1,
                (_, Confidence::Medium) => counts.medium += 1,
                (_, Confidence::Low) => counts.low += 1,
                (_, Confidence::Ambiguous) => counts.ambiguous += 1,
                (_, Confidence::None) => {}
            }
        }
        if !pairs.iter().any(|p| p.is_copy()) {
            counts.unlinked += 1;
        }
        if let Some(within) = expiring_within_ms
            && c.end_ms
                .is_none_or(|end| end > now_ms.saturating_add(within))
        {
            continue;
        }
        let row = |vault, item, item_kind, confidence, score, evidence, vetoes| LinkRow {
            tenant: c.tenant.clone(),
            app_id: c.app_id.clone(),
            app_name: c.app_name.clone(),
            object_id: c.object_id.clone(),
            origin: c.origin.as_str(),
            key_id: c.key_id.clone(),
            kind: c.kind.as_str(),
            credential_name: c.display_name.clone(),
            credential_end: c.end_ms.map(rfc3339),
            due: c.end_ms.is_some_and(|end| end <= due_by),
            vault,
            item,
            item_kind,
            confidence,
            score,
            evidence,
            vetoes,
            ready: verdict.ready,
            reason: verdict.reason.clone(),
            end_ms: c.end_ms,
        };
        if pairs.is_empty() {
            links.push(row(
                None,
                None,
                None,
                Confidence::None,
                0,
                Vec::new(),
                Vec::new(),
            ));
        }
        for p in pairs {
            let item = &m.items[p.item];
            links.push(row(
                Some(item.vault.clone()),
                Some(item.name.clone()),
                Some(item.kind),
                p.confidence,
                p.score,
                p.evidence.iter().map(ToString::to_string).collect(),
                p.vetoes.iter().map(ToString::to_string).collect(),
            ));
        }
    }
    // By expiry (soonest first, none last), then app and key; a credential's rows stay
    // together in the matcher's (vault, item) order.
    links.sort_by(|a, b| {
        (a.end_ms.is_none(), a.end_ms, &a.app_name, &a.key_id).cmp(&(
            b.end_ms.is_none(),
            b.end_ms,
            &b.app_name,
            &b.key_id,
        ))
    });
    Report {
        run_id: d.run_id.clone(),
        stream: super::journal::stream_id(&d.run_id),
        started: rfc3339(d.started_ms),
        finished: rfc3339(d.finished_ms),
        partial: d.partial(),
        min_confidence: d.min_confidence,
        days_before_expiry: d.days_before_expiry,
        counts,
        links,
        unreachable: m
            .unreachable
            .iter()
            .map(|u| UnreachableRow {
                kind: u.kind,
                tenant: u.tenant.clone(),
                name: u.name.clone(),
                reason: u.reason.clone(),
            })
            .collect(),
    }
}
