//! `--explain`: every pair the matcher scored for some credentials, with its evidence,
//! vetoes and outcome, and each credential's verdict, as plain text. Pure formatting; the
//! golden tests read the same text.

use std::fmt::Write as _;

use super::matching::{Matched, Outcome};
use super::model::AppCredential;

/// A date as `2025-07-01` (UTC), or `-`.
pub fn day(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "-".to_owned(), |t| t.strftime("%Y-%m-%d").to_string())
}

/// The explanation of every credential `which` selects, in the matcher's order.
pub fn explain(m: &Matched, which: impl Fn(&AppCredential) -> bool) -> String {
    let mut out = String::new();
    for (ci, c) in m.credentials.iter().enumerate() {
        if !which(c) {
            continue;
        }
        let name = c
            .display_name
            .as_deref()
            .map_or_else(String::new, |n| format!(" {n:?}"));
        let _ = writeln!(
            out,
            "{} [{}] {} {}{name} key {} ends {}",
            c.app_name,
            c.app_id,
            c.origin.as_str(),
            c.kind.as_str(),
            c.key_id,
            day(c.end_ms)
        );
        let mut any = false;
        for p in m.pairs_of(ci) {
            any = true;
            let item = &m.items[p.item];
            let outcome = match p.outcome {
                Outcome::Linked => "linked".to_owned(),
                Outcome::Ambiguous => "ambiguous".to_owned(),
                Outcome::Vetoed => "vetoed".to_owned(),
                Outcome::Lost { to } => format!("lost to key {}", m.credentials[to].key_id),
            };
            let evidence: Vec<String> = p.evidence.iter().map(ToString::to_string).collect();
            let vetoes: Vec<String> = p.vetoes.iter().map(ToString::to_string).collect();
            let _ = write!(
                out,
                "  {}/{} score {} ({}) -> {} {}: {}",
                item.vault,
                item.name,
                p.score,
                p.level.as_str(),
                p.confidence.as_str(),
                outcome,
                evidence.join(", ")
            );
            if !vetoes.is_empty() {
                let _ = write!(out, "; vetoed by {}", vetoes.join(", "));
            }
            out.push('\n');
        }
        if !any {
            out.push_str("  (no item scored)\n");
        }
        let v = &m.verdicts[ci];
        let _ = writeln!(
            out,
            "  verdict: {}, {}: {}",
            v.confidence.as_str(),
            if v.ready { "ready" } else { "not ready" },
            v.reason
        );
    }
    for u in &m.unreachable {
        let _ = writeln!(
            out,
            "unreachable {} {} (tenant {}): {}",
            u.kind.as_str(),
            u.name,
            u.tenant,
            u.reason
        );
    }
    out
}
