//! `rekey policy check --online [SECRET]`: the offline checks, then a read-only probe of
//! every target of every secret (or one) through its credential (see `crate::probe`).
//! Opens no journal, changes nothing; exits 1 when any target fails.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use rekey_journal::{Clock, SystemClock};

use super::exit;
use crate::config::Config;
use crate::probe::{TargetReport, probe_all};
use crate::saga::Plan;

/// Probes `secret`'s targets (or every secret's) and prints one line per target.
pub async fn run(config: &Path, secret: Option<&str>, json: bool) -> Result<u8> {
    let config = Config::load(config)?;
    let plans: Vec<&Plan> = match secret {
        Some(s) => vec![config.plan(s)?],
        None => config.secrets.values().collect(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let probes = config.build_probes(clock, &|var| std::env::var(var).ok())?;
    let reports = probe_all(&plans, &probes).await;
    let failed = reports.iter().filter(|r| !r.ok).count();
    if json {
        println!("{}", serde_json::to_string(&reports)?);
    } else {
        print!("{}", render(&reports));
        if failed == 0 {
            println!("all {} target(s) ready; nothing was changed", reports.len());
        } else {
            println!(
                "{failed} of {} target(s) not ready (✘ above); nothing was changed",
                reports.len()
            );
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}

/// One line per target: mark, secret, role, target (aligned), then what was found.
fn render(reports: &[TargetReport]) -> String {
    let width = |f: fn(&TargetReport) -> &str| reports.iter().map(|r| f(r).len()).max();
    let secret_w = width(|r| &r.secret).unwrap_or(0);
    let role_w = width(|r| &r.role).unwrap_or(0);
    let target_w = width(|r| &r.target).unwrap_or(0);
    reports
        .iter()
        .map(|r| {
            format!(
                "{} {:<secret_w$} {:<role_w$} {:<target_w$} {}\n",
                if r.ok { "✔" } else { "✘" },
                r.secret,
                r.role,
                r.target,
                // One line per target, whatever a service put in its message.
                r.detail.replace(['\r', '\n'], " ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_is_one_aligned_line() {
        let row = |secret: &str, role: &str, target: &str, ok, detail: &str| TargetReport {
            secret: secret.into(),
            role: role.into(),
            target: target.into(),
            ok,
            detail: detail.into(),
        };
        let out = render(&[
            row("api", "rotator", "random", true, "nothing to probe"),
            row("db-password", "store", "kv", false, "denied:\ngrant X"),
        ]);
        assert_eq!(
            out,
            "✔ api         rotator random nothing to probe\n\
             ✘ db-password store   kv     denied: grant X\n"
        );
    }
}
