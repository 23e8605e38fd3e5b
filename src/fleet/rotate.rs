//! One fleet rotation run's discovery and plans, shared by `rekey rotate --fleet` and the
//! daemon's `POST /v1/fleet/rotate`: discover, learn each tenant's password lifetime
//! limit, plan. What to do with the plans (review, confirm, request) is the caller's.
//!
//! Owns: the order of a run. Never touches: rendering, the journal.

use std::collections::BTreeMap;

use rekey_journal::Clock;

use super::config::FleetConfig;
use super::discover::{self, Discovery};
use super::inventory::Scanner;
use super::plan::{FleetPlans, SelectError, Selection, SiteSettings, plan, refresh_app_settings};
use crate::config::{Config, CredentialConfig};
use crate::providers::azure::appservice::KeyVaultReference;

/// Each configured tenant's directory id, from the credential it is read with (the
/// kinds that name one); a tenant without one cannot verify a new password, and its
/// credentials are refused.
pub fn tenant_ids(config: &Config) -> BTreeMap<String, String> {
    let Some(fleet) = &config.fleet else {
        return BTreeMap::new();
    };
    fleet
        .tenants
        .iter()
        .filter_map(|(name, t)| {
            let id = match config.credentials.get(&t.credential)? {
                CredentialConfig::ClientSecret { tenant, .. }
                | CredentialConfig::ClientCertificate { tenant, .. } => Some(tenant.clone()),
                CredentialConfig::AzureCli { tenant, .. } => tenant.clone(),
                _ => None,
            }?;
            Some((name.clone(), id))
        })
        .collect()
}

/// Discovers with `scanner` and plans under `sel` (a new password lives no longer than
/// its tenant's policy allows).
///
/// # Errors
/// [`SelectError`] when the selection names an app or key discovery did not find.
pub async fn discover_and_plan(
    scanner: &Scanner,
    fleet: &FleetConfig,
    sel: Selection,
    clock: &dyn Clock,
) -> Result<(Discovery, FleetPlans), SelectError> {
    let (d, sel) = discover_with_limits(scanner, fleet, sel, clock).await?;
    let mut plans = plan(&d, fleet, &sel)?;
    let sites = read_sites(scanner, fleet, &plans).await;
    refresh_app_settings(&mut plans, &sites, fleet);
    Ok((d, plans))
}

/// Reads the settings of the App Service sites configured for the tenants `plans` rotates
/// in (`[fleet.tenants.<name>] app_service_sites`), each with its tenant's credential; no
/// other site is read. A site that cannot be read is reported with the reason. Only the
/// settings holding a Key Vault reference are kept.
pub async fn read_sites(
    scanner: &Scanner,
    fleet: &FleetConfig,
    plans: &FleetPlans,
) -> Vec<SiteSettings> {
    let mut out = Vec::new();
    for t in &scanner.tenants {
        let Some(config) = fleet.tenants.get(&t.name) else {
            continue;
        };
        if !plans.rotations.iter().any(|r| r.tenant == t.name) {
            continue;
        }
        let api = crate::providers::azure::http::Authed {
            http: scanner.http.clone(),
            credential: t.credential.clone(),
            scope: crate::config::ARM_SCOPE.to_owned(),
        };
        for site in &config.app_service_sites {
            let settings = crate::providers::azure::appservice::list_settings(
                &api,
                &scanner.arm,
                &site.subscription,
                &site.resource_group,
                &site.site,
                site.slot.as_deref(),
            )
            .await
            // Only Key Vault references (addresses) are kept: a literal setting may be a
            // secret, and is dropped as soon as it is read.
            .map(|all| {
                all.into_iter()
                    .filter(|(_, v)| KeyVaultReference::parse(v).is_some())
                    .collect()
            })
            .map_err(|e| e.message);
            out.push(SiteSettings {
                tenant: t.name.clone(),
                site: site.clone(),
                settings,
            });
        }
    }
    out
}

/// One unattended run's discovery and plans (`rekey run` with `[fleet] discover_every`).
#[derive(Debug)]
pub struct Unattended {
    pub discovery: Discovery,
    /// Due now (within `days_before_expiry`): rotate these, notice these refusals.
    pub due: FleetPlans,
    /// Due within `days_before_expiry + notice_days_before`: the advance notices.
    pub ahead: FleetPlans,
}

/// Discovers and plans twice with the same plan builder: what is due now under `sel`'s
/// window (`[fleet] days_before_expiry` when it has none), and what will be due within
/// `ahead_ms` more.
///
/// # Errors
/// [`SelectError`] when the selection names an app or key discovery did not find.
pub async fn discover_and_plan_ahead(
    scanner: &Scanner,
    fleet: &FleetConfig,
    sel: Selection,
    ahead_ms: i64,
    clock: &dyn Clock,
) -> Result<Unattended, SelectError> {
    let (discovery, mut sel) = discover_with_limits(scanner, fleet, sel, clock).await?;
    let mut due = plan(&discovery, fleet, &sel)?;
    let window = sel
        .expiring_within_ms
        .unwrap_or(i64::from(fleet.days_before_expiry) * 86_400_000);
    sel.expiring_within_ms = Some(window.saturating_add(ahead_ms));
    let mut ahead = plan(&discovery, fleet, &sel)?;
    // What is due is within what is ahead: one read of the sites serves both.
    let sites = read_sites(scanner, fleet, &ahead).await;
    refresh_app_settings(&mut due, &sites, fleet);
    refresh_app_settings(&mut ahead, &sites, fleet);
    Ok(Unattended {
        discovery,
        due,
        ahead,
    })
}

/// Discovers, then learns each tenant's password lifetime limit into `sel`.
async fn discover_with_limits(
    scanner: &Scanner,
    fleet: &FleetConfig,
    mut sel: Selection,
    clock: &dyn Clock,
) -> Result<(Discovery, Selection), SelectError> {
    let d = discover::discover(scanner, fleet, Some(sel.min_confidence), clock).await;
    for t in &scanner.tenants {
        if let Some(days) = scanner.password_lifetime_days(t, sel.now_ms).await {
            sel.tenant_max_days.insert(t.name.clone(), days);
        }
    }
    Ok((d, sel))
}
