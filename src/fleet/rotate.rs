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
use super::plan::{FleetPlans, SelectError, Selection, plan};
use crate::config::{Config, CredentialConfig};

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
    mut sel: Selection,
    clock: &dyn Clock,
) -> Result<(Discovery, FleetPlans), SelectError> {
    let d = discover::discover(scanner, fleet, Some(sel.min_confidence), clock).await;
    for t in &scanner.tenants {
        if let Some(days) = scanner.password_lifetime_days(t, sel.now_ms).await {
            sel.tenant_max_days.insert(t.name.clone(), days);
        }
    }
    let plans = plan(&d, fleet, &sel)?;
    Ok((d, plans))
}
