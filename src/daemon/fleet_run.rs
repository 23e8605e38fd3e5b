//! Unattended fleet rotation (`[fleet] discover_every`): the leader discovers on that
//! schedule, requests a rotation of every eligible application whose credentials are due
//! (through the same plan builder and [`super::Handle::request_plan`] path as
//! `POST /v1/fleet/rotate`; MEDIUM is never approved), and journals `fleet` notices: what
//! it started rotating, what it refused and why, what will expire with no vault link, and
//! what it will rotate within `[fleet] notice_days_before` days.
//!
//! When the next run is due is read from the journal (the newest `discovery:` stream), so
//! a restart or a new leader does not discover again early. A notice is journaled once
//! per credential and reason (its stream id is the dedup key), however many runs see it.
//!
//! Owns: the run's timing, its limits, its notices. Never touches: planning rules (the
//! fleet planner's), driving rotations (the loop's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rekey_journal::{Clock, StreamFilter};

use crate::config::Config;
use crate::fleet::journal::is_discovery_stream;
use crate::fleet::plan::{AppRotation, Refusal, Selection, UNLINKED};
use crate::fleet::rotate::Unattended;
use crate::runner::RunnerJournal;

/// The actor of the rotations an unattended fleet run requests.
pub const FLEET_ACTOR: &str = "schedule:fleet";

const DAY_MS: i64 = 86_400_000;

/// When the newest discovery in the journal started (any: the daemon's, the API's,
/// `rekey discover`'s), if any.
///
/// # Errors
/// Journal errors.
pub async fn last_discovery_ms<J: RunnerJournal>(
    journal: &J,
) -> rekey_journal::Result<Option<i64>> {
    Ok(journal
        .streams(&StreamFilter::default())
        .await?
        .into_iter()
        .filter(|s| is_discovery_stream(&s.stream_id))
        .map(|s| s.created_at_ms)
        .max())
}

/// When the next unattended run is due: at once when none ran yet, else a period after
/// the last (never before `now`).
pub fn next_run_ms(now: i64, every_ms: i64, last_ms: Option<i64>) -> i64 {
    last_ms.map_or(now, |last| last.saturating_add(every_ms).max(now))
}

/// Discovers and plans what is due now and within `notice_days_before` more, off the
/// loop (a discovery makes many HTTP calls).
pub async fn plan(config: Arc<Config>, clock: Arc<dyn Clock>) -> Result<Unattended, String> {
    let runtime = tokio::runtime::Handle::current();
    // A discovery's future is not `Send`: it runs on a blocking thread of this runtime.
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let fleet = crate::fleet::discover::fleet(&config).map_err(|e| e.to_string())?;
            let scanner = super::fleet_api::scanner(&config, clock.clone(), None)?;
            let sel = Selection {
                now_ms: clock.now_ms(),
                expiring_within_ms: None,
                app: None,
                key_id: None,
                tenant: None,
                min_confidence: fleet.rules.min_confidence,
                // Unattended: MEDIUM is never approved.
                approve_medium: false,
                tenant_max_days: BTreeMap::new(),
                tenant_ids: crate::fleet::rotate::tenant_ids(&config),
            };
            let ahead_ms = i64::from(fleet.notice_days_before) * DAY_MS;
            crate::fleet::rotate::discover_and_plan_ahead(
                &scanner,
                fleet,
                sel,
                ahead_ms,
                clock.as_ref(),
            )
            .await
            .map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|e| format!("the fleet run's task failed: {e}"))?
}

/// Which due rotations to request now: at most `max` in all and `per_tenant` in one
/// tenant; the rest wait for the next run.
pub fn within_limits(
    rotations: &[AppRotation],
    max: usize,
    per_tenant: usize,
) -> (Vec<&AppRotation>, usize) {
    let mut taken = Vec::new();
    let mut by_tenant: BTreeMap<&str, usize> = BTreeMap::new();
    let mut deferred = 0;
    for r in rotations {
        let n = by_tenant.entry(r.tenant.as_str()).or_default();
        if taken.len() >= max || *n >= per_tenant {
            deferred += 1;
            continue;
        }
        *n += 1;
        taken.push(r);
    }
    (taken, deferred)
}

/// How a notice names a credential.
pub fn credential_name(app_name: &str, app_id: &str, key_id: &str) -> String {
    format!("{app_name} ({app_id}) key {key_id}")
}

/// One fleet notice to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNotice {
    pub dedup: String,
    pub credential: String,
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub rotation_id: Option<String>,
    pub at_ms: i64,
}

/// The notices about refusals (once per credential and reason) and advance notices of
/// rotations due within `notice_days_before` (once per credential), from a run's plans.
/// Nothing is said about an app `busy` names (app id): one rotating now, or one whose
/// rotation ended while discovery read it, looks unlinked or partial to discovery until
/// its old password is removed.
pub fn notices(
    run: &Unattended,
    days_before_expiry: u32,
    busy: &mut dyn FnMut(&str) -> bool,
) -> Vec<FleetNotice> {
    let mut out = Vec::new();
    // The wider plan holds every refusal of the narrower one.
    for r in &run.ahead.refused {
        if !busy(&r.app_id) {
            out.push(refusal_notice(r));
        }
    }
    let due: BTreeSet<&str> = run
        .due
        .rotations
        .iter()
        .flat_map(|r| r.credentials.iter().map(|c| c.key_id.as_str()))
        .collect();
    for r in &run.ahead.rotations {
        if busy(&r.app_id) {
            continue;
        }
        for c in r
            .credentials
            .iter()
            .filter(|c| !due.contains(c.key_id.as_str()))
        {
            let Some(end) = c.end_ms else { continue };
            let at_ms = end - i64::from(days_before_expiry) * DAY_MS;
            out.push(FleetNotice {
                dedup: format!("{}:{}:upcoming", r.tenant, c.key_id),
                credential: credential_name(&r.app_name, &r.app_id, &c.key_id),
                outcome: "rotation upcoming",
                reason: Some(format!(
                    "rekey will rotate it unattended when it is due, {days_before_expiry} days before it expires; its copies: {}",
                    items(r)
                )),
                rotation_id: None,
                at_ms,
            });
        }
    }
    out
}

fn refusal_notice(r: &Refusal) -> FleetNotice {
    let unlinked = r.reason == UNLINKED;
    FleetNotice {
        dedup: format!("{}:{}:{}", r.tenant, r.key_id, r.reason),
        credential: credential_name(&r.app_name, &r.app_id, &r.key_id),
        outcome: if unlinked {
            "expires with no vault link"
        } else {
            "refused"
        },
        reason: Some(if unlinked {
            "no scanned vault holds a copy: rekey does not rotate it; rotate it by hand, or tag the vault item that holds it".to_owned()
        } else {
            r.reason.clone()
        }),
        rotation_id: None,
        at_ms: r.end_ms.unwrap_or(0),
    }
}

/// The notice that a rotation of `r` started as `rotation_id`.
pub fn started_notice(r: &AppRotation, rotation_id: &str, now_ms: i64) -> FleetNotice {
    let keys: Vec<&str> = r.credentials.iter().map(|c| c.key_id.as_str()).collect();
    FleetNotice {
        dedup: format!("{rotation_id}:rotating"),
        credential: credential_name(&r.app_name, &r.app_id, &keys.join(", ")),
        outcome: "rotating",
        reason: Some(format!(
            "a new password valid {} days goes to {}",
            r.validity_days,
            items(r)
        )),
        rotation_id: Some(rotation_id.to_owned()),
        at_ms: now_ms,
    }
}

fn items(r: &AppRotation) -> String {
    r.items
        .iter()
        .map(|i| format!("{}/{}", i.vault, i.item))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_run_counts_from_the_last_journaled_discovery() {
        let h = 3_600_000;
        assert_eq!(next_run_ms(1_000, 6 * h, None), 1_000, "never ran: now");
        assert_eq!(next_run_ms(10 * h, 6 * h, Some(8 * h)), 14 * h);
        assert_eq!(
            next_run_ms(20 * h, 6 * h, Some(8 * h)),
            20 * h,
            "overdue: now"
        );
    }
}
