//! Fleet rotation plans (pure): from a discovery, the credentials selected and due, and the
//! rotation rules of DESIGN §7, either a [`saga::Plan`](crate::saga::Plan) per application
//! or a [`Refusal`] per credential, with the reason.
//!
//! - Only passwords of applications rotate (certificates and service principals' credentials
//!   are reported).
//! - Every copy that scored at least LOW must reach the threshold (no partial coverage); the
//!   weak copies are named. LOW, NONE and AMBIGUOUS never rotate; MEDIUM only with an
//!   explicit approval, and then the old password is kept (only a credential identified with
//!   HIGH confidence is ever removed).
//! - A credential with no copy is "not in any scanned vault": never rotated, never removed.
//! - Anything unread (a tenant, a subscription, a vault) or an excluded item that would hold
//!   a copy leaves coverage unknown: refused.
//!
//! One plan per application: its rotations share one lock (`entra-app.<appId>`), so two due
//! credentials of one app are one rotation (one new password written to every copy of
//! either, both old ones removed after the grace period), not two that would coalesce.
//!
//! - App Service settings of the tenant's configured sites (`app_service_sites`) whose Key
//!   Vault reference names an item the rotation writes are refreshed by it (one dependent
//!   each, re-writing the reference unchanged after the vault writes, so the site fetches
//!   the new version now instead of within 24 h); [`refresh_app_settings`]. A reference
//!   that pins a version of such an item, or a configured site that could not be read,
//!   refuses the rotation: the site would keep the old password past the grace period.
//!
//! Owns: selection, eligibility, the plan's targets (addresses). Never touches: I/O, clocks
//! (`now_ms` is an argument), values.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{FleetConfig, SiteId};
use super::discover::Discovery;
use super::matching::{Confidence, Hints, Outcome, match_inventory};
use super::model::{AppCredential, CredentialKind, Inventory, ItemKind, Origin, UnreachableKind};
use super::rules::{REKEY_APP_ID_TAG, REKEY_KEY_ID_TAG, glob_match};
use crate::providers::azure::appservice::KeyVaultReference;
use crate::saga::{Address, Plan, Role, TargetRef};

const DAY_MS: i64 = 86_400_000;

/// The refusal reason of a credential no scanned vault holds a copy of.
pub const UNLINKED: &str = "not in any scanned vault: never rotated or removed";

/// The lock key of every rotation of application `app_id`'s passwords, configured or
/// fleet: one open rotation per application.
pub fn entra_app_lock_key(app_id: &str) -> String {
    format!("entra-app.{}", app_id.trim().to_ascii_lowercase())
}

/// Which credentials to consider, and how boldly.
#[derive(Debug, Clone)]
pub struct Selection {
    pub now_ms: i64,
    /// Due when `endDateTime` is within this long (or past); `None`: the config's
    /// `days_before_expiry`.
    pub expiring_within_ms: Option<i64>,
    /// A glob on the client id, object id or display name.
    pub app: Option<String>,
    /// Only this credential (of the selected apps).
    pub key_id: Option<String>,
    /// Only this configured tenant.
    pub tenant: Option<String>,
    /// Every copy must reach this (`high` or `medium`).
    pub min_confidence: Confidence,
    /// MEDIUM copies were approved on the command line.
    pub approve_medium: bool,
    /// The longest password lifetime each tenant allows, in days, where known.
    pub tenant_max_days: BTreeMap<String, i64>,
    /// Each configured tenant's directory (tenant) id, from its credential: where a new
    /// password is verified.
    pub tenant_ids: BTreeMap<String, String>,
}

/// Bad selections: nothing is planned, nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "no application matches --app {app:?} among the {apps} discovered in tenants {tenants} (excluded apps are not listed); give a client id, object id or display name as `rekey discover` lists it"
    )]
    UnknownApp {
        app: String,
        apps: usize,
        tenants: String,
    },
    #[error(
        "no credential {key_id} on {apps}; its credentials are: {known}. Run `rekey discover --explain <app>` to see them"
    )]
    UnknownKey {
        key_id: String,
        apps: String,
        known: String,
    },
    #[error("--key-id needs --app naming the application it belongs to")]
    KeyWithoutApp,
}

/// One vault item a rotation writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedItem {
    pub tenant: String,
    pub vault: String,
    pub vault_url: String,
    pub item: String,
    /// The credential it holds now.
    pub key_id: String,
    pub confidence: Confidence,
}

/// One credential a rotation replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedCredential {
    pub key_id: String,
    pub end_ms: Option<i64>,
    /// Its weakest copy's confidence.
    pub confidence: Confidence,
    /// Removed after the grace period (identified with HIGH confidence).
    pub retire: bool,
}

/// One application's rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppRotation {
    pub tenant: String,
    pub app_id: String,
    pub object_id: String,
    pub app_name: String,
    pub credentials: Vec<PlannedCredential>,
    pub items: Vec<PlannedItem>,
    /// Days the new password is valid.
    pub validity_days: i64,
    /// When the new password ends, if created at `now_ms`.
    pub new_end_ms: i64,
    /// App Service settings refreshed after the vault writes.
    pub settings: Vec<PlannedSetting>,
    #[serde(skip)]
    pub plan: Plan,
}

/// An App Service setting a rotation refreshes: where it is, and the item it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSetting {
    /// The site's (or slot's) ARM id.
    pub site: String,
    pub setting: String,
    pub vault: String,
    pub item: String,
}

/// What a fleet run read of one configured site: its settings that hold a Key Vault
/// reference (never a literal value), or why they are unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    pub tenant: String,
    pub site: SiteId,
    pub settings: Result<BTreeMap<String, String>, String>,
}

/// Adds to each rotation one dependent per setting of its tenant's configured sites whose
/// Key Vault reference names an item the rotation writes (versionless: re-written as it
/// is). A rotation is refused, each of its credentials with the reason, when such a
/// reference pins a version, or when one of its tenant's sites could not be read.
pub fn refresh_app_settings(plans: &mut FleetPlans, sites: &[SiteSettings], fleet: &FleetConfig) {
    let rotations = std::mem::take(&mut plans.rotations);
    for mut r in rotations {
        match settings_of(&r, sites, fleet) {
            Ok(found) => {
                let verifier = r.plan.targets.len().saturating_sub(1);
                for (planned, target) in found.into_iter().rev() {
                    r.settings.insert(0, planned);
                    r.plan.targets.insert(verifier, target);
                }
                plans.rotations.push(r);
            }
            Err(reason) => plans.refused.extend(r.credentials.iter().map(|c| Refusal {
                tenant: r.tenant.clone(),
                app_id: r.app_id.clone(),
                app_name: r.app_name.clone(),
                key_id: c.key_id.clone(),
                end_ms: c.end_ms,
                confidence: c.confidence,
                reason: reason.clone(),
            })),
        }
    }
}

/// The settings `r` refreshes, with their targets, or why it must not rotate.
fn settings_of(
    r: &AppRotation,
    sites: &[SiteSettings],
    fleet: &FleetConfig,
) -> Result<Vec<(PlannedSetting, TargetRef)>, String> {
    let mut out = Vec::new();
    let credential = &fleet.tenants[&r.tenant].credential;
    for s in sites.iter().filter(|s| s.tenant == r.tenant) {
        let settings = s.settings.as_ref().map_err(|why| {
            format!(
                "App Service site {} could not be read ({why}), so whether it references a copy is unknown; grant the tenant's credential Website Contributor on it, or remove it from app_service_sites",
                s.site
            )
        })?;
        for (name, value) in settings {
            let Some(reference) = KeyVaultReference::parse(value) else {
                continue;
            };
            let Some(item) = r
                .items
                .iter()
                .find(|i| reference.points_at(&i.vault, &i.vault_url, &i.item))
            else {
                continue;
            };
            if let Some(version) = &reference.version {
                return Err(format!(
                    "setting {name} of App Service site {} pins version {version} of {}/{}: it would keep the old password, which is removed after the grace period; make the reference versionless, then rotate",
                    s.site, item.vault, item.item
                ));
            }
            let planned = PlannedSetting {
                site: s.site.to_string(),
                setting: name.clone(),
                vault: item.vault.clone(),
                item: item.item.clone(),
            };
            let target = TargetRef::at(
                Role::Dependent,
                format!("setting {name} of {}", s.site),
                Address::AppSetting {
                    credential: credential.clone(),
                    subscription: s.site.subscription.clone(),
                    resource_group: s.site.resource_group.clone(),
                    site: s.site.site.clone(),
                    slot: s.site.slot.clone(),
                    setting: name.clone(),
                    key_vault_reference: Some(value.clone()),
                },
            );
            out.push((planned, target));
        }
    }
    Ok(out)
}

/// A credential that will not rotate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub tenant: String,
    pub app_id: String,
    pub app_name: String,
    pub key_id: String,
    pub end_ms: Option<i64>,
    pub confidence: Confidence,
    pub reason: String,
}

/// What `rotate --fleet` would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetPlans {
    pub rotations: Vec<AppRotation>,
    pub refused: Vec<Refusal>,
    /// Selected credentials not due yet.
    pub not_due: usize,
}

/// A credential that may rotate: its index, the copies to write, its weakest copy.
type Ready = (usize, Vec<PlannedItem>, Confidence);

/// The plans for `d` under `fleet`'s rules and `sel`.
///
/// # Errors
/// [`SelectError`] when `--app` or `--key-id` names nothing discovered.
pub fn plan(
    d: &Discovery,
    fleet: &FleetConfig,
    sel: &Selection,
) -> Result<FleetPlans, SelectError> {
    let m = &d.matched;
    let selected = select(d, sel)?;
    let window_ms = sel
        .expiring_within_ms
        .unwrap_or(i64::from(fleet.days_before_expiry) * DAY_MS);
    let due_by = sel.now_ms.saturating_add(window_ms);
    let excluded_copies = excluded_copies(d, &fleet.rules);
    let mut out = FleetPlans::default();
    // Ready credentials by application (tenant, object id), in discovery order.
    let mut ready: BTreeMap<(String, String), Vec<Ready>> = BTreeMap::new();
    for ci in selected {
        let c = &m.credentials[ci];
        // A key named on the command line is considered whatever its expiry.
        let due = sel.key_id.is_some() || c.end_ms.is_some_and(|end| end <= due_by);
        if !due {
            out.not_due += 1;
            continue;
        }
        match eligible(d, fleet, sel, ci, &excluded_copies) {
            Ok((items, weakest)) => ready
                .entry((c.tenant.clone(), c.object_id.clone()))
                .or_default()
                .push((ci, items, weakest)),
            Err((confidence, reason)) => out.refused.push(Refusal {
                tenant: c.tenant.clone(),
                app_id: c.app_id.clone(),
                app_name: c.app_name.clone(),
                key_id: c.key_id.clone(),
                end_ms: c.end_ms,
                confidence,
                reason,
            }),
        }
    }
    for creds in ready.into_values() {
        out.rotations.push(app_rotation(d, fleet, sel, &creds));
    }
    Ok(out)
}

/// The credentials `sel` names (tenant, app, key), in discovery order.
fn select(d: &Discovery, sel: &Selection) -> Result<Vec<usize>, SelectError> {
    let m = &d.matched;
    if sel.key_id.is_some() && sel.app.is_none() {
        return Err(SelectError::KeyWithoutApp);
    }
    let in_tenant = |c: &AppCredential| sel.tenant.as_deref().is_none_or(|t| c.tenant == t);
    let of_app = |c: &AppCredential| {
        sel.app.as_deref().is_none_or(|g| {
            glob_match(g, &c.app_id) || glob_match(g, &c.object_id) || glob_match(g, &c.app_name)
        })
    };
    let apps: Vec<usize> = (0..m.credentials.len())
        .filter(|&i| in_tenant(&m.credentials[i]) && of_app(&m.credentials[i]))
        .collect();
    if let Some(app) = &sel.app
        && apps.is_empty()
    {
        let mut all: Vec<&str> = m.credentials.iter().map(|c| c.object_id.as_str()).collect();
        all.dedup();
        return Err(SelectError::UnknownApp {
            app: app.clone(),
            apps: all.len(),
            tenants: d.tenants.join(", "),
        });
    }
    let Some(key) = &sel.key_id else {
        return Ok(apps);
    };
    let with_key: Vec<usize> = apps
        .iter()
        .copied()
        .filter(|&i| m.credentials[i].key_id.eq_ignore_ascii_case(key.trim()))
        .collect();
    if with_key.is_empty() {
        let mut names: Vec<String> = apps
            .iter()
            .map(|&i| {
                let c = &m.credentials[i];
                format!("{} ({})", c.app_name, c.app_id)
            })
            .collect();
        names.dedup();
        let known: Vec<&str> = apps
            .iter()
            .map(|&i| m.credentials[i].key_id.as_str())
            .collect();
        return Err(SelectError::UnknownKey {
            key_id: key.clone(),
            apps: names.join(", "),
            known: known.join(", "),
        });
    }
    Ok(with_key)
}

/// `(credential, "vault/item (confidence)")` of every excluded item that would be a copy
/// of a credential: matched against every discovered credential, as if not excluded.
fn excluded_copies(
    d: &Discovery,
    rules: &super::rules::Rules,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    if d.excluded.is_empty() {
        return out;
    }
    let inventory = Inventory {
        credentials: d.matched.credentials.clone(),
        items: d.excluded.clone(),
        unreachable: Vec::new(),
        vaults: Vec::new(),
    };
    let matched = match_inventory(&inventory, rules, &Hints::new());
    for p in matched.pairs.iter().filter(|p| p.is_copy()) {
        let c = &matched.credentials[p.credential];
        let i = &matched.items[p.item];
        out.entry((c.object_id.clone(), c.key_id.clone()))
            .or_default()
            .push(format!(
                "{}/{} ({})",
                i.vault,
                i.name,
                p.confidence.as_str()
            ));
    }
    out
}

/// The copies to write and the weakest confidence, or why the credential may not rotate
/// (with the confidence to report).
fn eligible(
    d: &Discovery,
    fleet: &FleetConfig,
    sel: &Selection,
    ci: usize,
    excluded: &BTreeMap<(String, String), Vec<String>>,
) -> Result<(Vec<PlannedItem>, Confidence), (Confidence, String)> {
    let m = &d.matched;
    let c = &m.credentials[ci];
    let copies: Vec<_> = m.pairs_of(ci).filter(|p| p.is_copy()).collect();
    let place = |p: &super::matching::Pair| {
        format!(
            "{}/{} ({})",
            m.items[p.item].vault,
            m.items[p.item].name,
            p.confidence.as_str()
        )
    };
    let weakest = copies
        .iter()
        .map(|p| p.confidence)
        .min_by_key(|k| (*k != Confidence::Ambiguous, k.rank()))
        .unwrap_or(Confidence::None);
    let refuse = |reason: String| Err((weakest, reason));
    if c.origin == Origin::ServicePrincipal {
        return refuse("a service principal's credential: reported, never rotated".into());
    }
    if c.kind == CredentialKind::Certificate {
        return refuse("a certificate: reported, not rotated by rotate --fleet".into());
    }
    if copies.is_empty() {
        return refuse(UNLINKED.into());
    }
    if let Some(p) = copies.iter().find(|p| p.outcome == Outcome::Ambiguous) {
        return refuse(format!(
            "ambiguous: {} fits another credential equally well; removing the old one needs the right keyId",
            place(p)
        ));
    }
    let weak: Vec<String> = copies
        .iter()
        .filter(|p| !p.confidence.meets(sel.min_confidence))
        .map(|p| place(p))
        .collect();
    if !weak.is_empty() {
        let reason = if weak.len() == copies.len() && weakest.rank() < Confidence::Medium.rank() {
            format!(
                "{} only: LOW and NONE never rotate ({})",
                weakest.as_str().to_ascii_uppercase(),
                weak.join(", ")
            )
        } else if weak.len() == copies.len() {
            format!(
                "{} only, below --min-confidence {} ({}); approve MEDIUM with --min-confidence medium --approve-medium",
                weakest.as_str().to_ascii_uppercase(),
                sel.min_confidence.as_str(),
                weak.join(", ")
            )
        } else {
            format!(
                "partial coverage: {} below {}; every copy must be {} or more, or a copy keeps the old password when it is removed",
                weak.join(", "),
                sel.min_confidence.as_str(),
                sel.min_confidence.as_str()
            )
        };
        return refuse(reason);
    }
    if weakest == Confidence::Medium && !sel.approve_medium {
        let medium: Vec<String> = copies
            .iter()
            .filter(|p| p.confidence == Confidence::Medium)
            .map(|p| place(p))
            .collect();
        return refuse(format!(
            "MEDIUM copies need --approve-medium on the command line: {}",
            medium.join(", ")
        ));
    }
    let unread: Vec<String> = m
        .unreachable
        .iter()
        .filter(|u| u.kind != UnreachableKind::VaultCertificates)
        .map(|u| format!("{} {}", u.kind.as_str().replace('_', " "), u.name))
        .collect();
    if !unread.is_empty() {
        return refuse(format!(
            "{} could not be read; a copy may live there",
            unread.join(", ")
        ));
    }
    if let Some(found) = excluded.get(&(c.object_id.clone(), c.key_id.clone())) {
        return refuse(format!(
            "excluded item {} holds a copy; rotating would leave it with a removed password",
            found.join(", ")
        ));
    }
    if !fleet.tenants.contains_key(&c.tenant) {
        return refuse(format!("tenant {} is not configured", c.tenant));
    }
    if !sel.tenant_ids.contains_key(&c.tenant) {
        return refuse(format!(
            "the credential of tenant {} names no directory (tenant) id to verify a new password in; give it a client_secret or client_certificate credential with tenant = \"<tenant id>\"",
            c.tenant
        ));
    }
    let mut items = Vec::new();
    for p in &copies {
        let i = &m.items[p.item];
        if i.kind != ItemKind::Secret {
            return refuse(format!("{} is a certificate, not a secret", place(p)));
        }
        let Some(url) = d.vault_urls.get(&(i.tenant.clone(), i.vault.clone())) else {
            return refuse(format!("the URL of vault {} is unknown", i.vault));
        };
        if !fleet.tenants.contains_key(&i.tenant) {
            return refuse(format!("tenant {} is not configured", i.tenant));
        }
        items.push(PlannedItem {
            tenant: i.tenant.clone(),
            vault: i.vault.clone(),
            vault_url: url.as_str().trim_end_matches('/').to_owned(),
            item: i.name.clone(),
            key_id: c.key_id.clone(),
            confidence: p.confidence,
        });
    }
    Ok((items, weakest))
}

/// One application's plan: one rotator (which also verifies), one store per copy.
fn app_rotation(
    d: &Discovery,
    fleet: &FleetConfig,
    sel: &Selection,
    creds: &[Ready],
) -> AppRotation {
    let m = &d.matched;
    let c = &m.credentials[creds[0].0];
    let validity_days = sel
        .tenant_max_days
        .get(&c.tenant)
        .map_or(fleet.rotation.validity_days, |max| {
            fleet.rotation.validity_days.min(*max).max(1)
        });
    let credentials: Vec<PlannedCredential> = creds
        .iter()
        .map(|(ci, _, weakest)| PlannedCredential {
            key_id: m.credentials[*ci].key_id.clone(),
            end_ms: m.credentials[*ci].end_ms,
            confidence: *weakest,
            retire: *weakest == Confidence::High,
        })
        .collect();
    let retire: Vec<String> = credentials
        .iter()
        .filter(|k| k.retire)
        .map(|k| k.key_id.clone())
        .collect();
    let mut items: Vec<PlannedItem> = creds.iter().flat_map(|(_, i, _)| i.clone()).collect();
    items.sort_by(|a, b| (&a.vault, &a.item).cmp(&(&b.vault, &b.item)));
    let secret = entra_app_lock_key(&c.app_id);
    let rotator = Address::EntraPassword {
        credential: fleet.tenants[&c.tenant].credential.clone(),
        tenant: sel.tenant_ids[&c.tenant].clone(),
        object_id: c.object_id.clone(),
        app_id: c.app_id.clone(),
        validity_days,
        verify_scope: "https://graph.microsoft.com/.default".into(),
        propagation: fleet.rotation.propagation.clone(),
        retire: Some(retire),
    };
    let app_name = format!("app {} ({})", c.app_name, c.app_id);
    let mut targets = vec![TargetRef::at(Role::Rotator, &app_name, rotator.clone())];
    let key_tags = &fleet.rules.tag_keys;
    for item in &items {
        let i = m
            .items
            .iter()
            .find(|i| i.tenant == item.tenant && i.vault == item.vault && i.name == item.item);
        let mut credential_tags = vec![REKEY_KEY_ID_TAG.to_owned()];
        for (k, v) in i.map(|i| &i.tags).into_iter().flatten() {
            if key_tags.is_key_id(k)
                && !k.eq_ignore_ascii_case(REKEY_KEY_ID_TAG)
                && credentials
                    .iter()
                    .any(|c| c.key_id.eq_ignore_ascii_case(v.trim()))
            {
                credential_tags.push(k.clone());
            }
        }
        targets.push(TargetRef::at(
            Role::Store,
            format!("{}/{}", item.vault, item.item),
            Address::KeyVault {
                vault_url: item.vault_url.clone(),
                secret: item.item.clone(),
                credential: fleet.tenants[&item.tenant].credential.clone(),
                content_type: None,
                verify_challenge_resource: fleet.verify_challenge_resource,
                tags: BTreeMap::from([(REKEY_APP_ID_TAG.to_owned(), c.app_id.clone())]),
                credential_tags,
                keep_metadata: true,
            },
        ));
    }
    targets.push(TargetRef::at(Role::Verifier, &app_name, rotator));
    AppRotation {
        tenant: c.tenant.clone(),
        app_id: c.app_id.clone(),
        object_id: c.object_id.clone(),
        app_name: c.app_name.clone(),
        credentials,
        items,
        validity_days,
        new_end_ms: sel.now_ms.saturating_add(validity_days * DAY_MS),
        settings: Vec::new(),
        plan: Plan {
            secret: secret.clone(),
            lock_key: secret,
            targets,
            grace_ms: fleet.rotation.grace_ms,
            attempts_max: fleet.rotation.attempts_max,
        },
    }
}

/// The review `rotate --fleet` prints before it asks, and the console shows before its
/// Confirm: each application, the credentials it replaces (expiry, confidence, what
/// becomes of the old one), the new expiry and every item to write; then the refusals.
pub fn review(plans: &FleetPlans) -> String {
    use super::explain::day;
    let mut out = String::new();
    for r in &plans.rotations {
        out += &format!(
            "rotate {} ({}) in {}: new password until {}\n",
            r.app_name,
            r.app_id,
            r.tenant,
            day(Some(r.new_end_ms))
        );
        for c in &r.credentials {
            out += &format!(
                "  replaces {} (expires {}, {}; {})\n",
                c.key_id,
                c.end_ms.map_or_else(|| "never".into(), |ms| day(Some(ms))),
                c.confidence.as_str().to_ascii_uppercase(),
                if c.retire {
                    "removed after the grace period"
                } else {
                    "kept: remove it yourself once nothing uses it"
                }
            );
        }
        for i in &r.items {
            out += &format!(
                "  writes {}/{} ({})\n",
                i.vault,
                i.item,
                i.confidence.as_str()
            );
        }
        for s in &r.settings {
            out += &format!(
                "  refreshes App Service setting {} {} ({}/{})\n",
                s.site, s.setting, s.vault, s.item
            );
        }
    }
    for f in &plans.refused {
        out += &format!(
            "refused {} ({}) {}: {}\n",
            f.app_name, f.app_id, f.key_id, f.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use expect_test::{Expect, expect};

    use super::*;
    use crate::fleet::config::RotationConfig;
    use crate::fleet::matching::Hints;
    use crate::fleet::model::{Unreachable, VaultItem};
    use crate::fleet::rules::{Exclusions, Rules};

    /// 2025-06-15T14:40:00Z.
    const NOW: i64 = 1_750_000_000_000;

    fn guid(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// Password `key` of app `n`, ending in `days`.
    fn password(app: &str, n: u32, key: u32, days: i64) -> AppCredential {
        AppCredential {
            tenant: "contoso".into(),
            origin: Origin::Application,
            object_id: guid(n),
            app_id: guid(n + 0x100),
            app_name: app.into(),
            key_id: guid(0x10000 + key),
            kind: CredentialKind::Password,
            display_name: None,
            start_ms: Some(NOW - 100 * DAY_MS),
            end_ms: Some(NOW + days * DAY_MS),
            hint: None,
            thumbprint: None,
        }
    }

    fn secret(vault: &str, name: &str, tags: &[(&str, &str)]) -> VaultItem {
        VaultItem {
            tenant: "contoso".into(),
            vault: vault.into(),
            name: name.into(),
            kind: ItemKind::Secret,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            content_type: Some("text/plain".into()),
            enabled: true,
            exp_ms: None,
            created_ms: None,
            x5t: None,
            managed: false,
        }
    }

    fn fleet(exclusions: Exclusions) -> FleetConfig {
        FleetConfig {
            tenants: BTreeMap::from([(
                "contoso".to_owned(),
                super::super::config::TenantConfig {
                    credential: "reader".into(),
                    subscriptions: Vec::new(),
                    vaults: Vec::new(),
                    service_principals: true,
                    app_service_sites: Vec::new(),
                },
            )]),
            days_before_expiry: 30,
            read_values_for_hint: false,
            verify_challenge_resource: true,
            rules: Rules::default(),
            exclusions,
            rotation: RotationConfig::default(),
            discover_every_ms: None,
            notice_days_before: 7,
        }
    }

    /// A discovery of `credentials` and `items` (vaults kv-a and kv-b), under `fleet`'s
    /// exclusions, as `discover` makes it.
    fn discovery(
        fleet: &FleetConfig,
        credentials: Vec<AppCredential>,
        items: Vec<VaultItem>,
        unreachable: Vec<Unreachable>,
    ) -> Discovery {
        let inventory = Inventory {
            credentials,
            items: items.clone(),
            unreachable,
            vaults: vec![
                ("contoso".into(), "kv-a".into()),
                ("contoso".into(), "kv-b".into()),
            ],
        };
        let (kept, excluded_credentials, excluded_items) = fleet.exclusions.apply(inventory);
        let matched = match_inventory(&kept, &fleet.rules, &Hints::new());
        Discovery {
            run_id: "run".into(),
            started_ms: NOW,
            finished_ms: NOW,
            tenants: vec!["contoso".into()],
            vaults: kept.vaults.clone(),
            matched,
            excluded_credentials,
            excluded_items,
            excluded: items
                .into_iter()
                .filter(|i| fleet.exclusions.excludes_item(i))
                .collect(),
            vault_urls: ["kv-a", "kv-b"]
                .into_iter()
                .map(|v| {
                    (
                        ("contoso".to_owned(), v.to_owned()),
                        url::Url::parse(&format!("https://{v}.vault.azure.net/")).unwrap(),
                    )
                })
                .collect(),
            hint_reads: 0,
            read_values_for_hint: false,
            days_before_expiry: 30,
            min_confidence: Confidence::High,
        }
    }

    fn selection() -> Selection {
        Selection {
            now_ms: NOW,
            expiring_within_ms: None,
            app: None,
            key_id: None,
            tenant: None,
            min_confidence: Confidence::High,
            approve_medium: false,
            tenant_max_days: BTreeMap::new(),
            tenant_ids: BTreeMap::from([("contoso".to_owned(), "tid-contoso".to_owned())]),
        }
    }

    /// One line per rotation (what it retires, writes, for how long) and per refusal.
    fn render(plans: &FleetPlans) -> String {
        let short = |k: &str| k[k.len() - 5..].to_owned();
        let mut out = String::new();
        for r in &plans.rotations {
            let retire: Vec<String> = r
                .credentials
                .iter()
                .map(|c| {
                    format!(
                        "{}{}",
                        short(&c.key_id),
                        if c.retire { "" } else { " (kept)" }
                    )
                })
                .collect();
            let items: Vec<String> = r
                .items
                .iter()
                .map(|i| format!("{}/{} {}", i.vault, i.item, i.confidence.as_str()))
                .collect();
            out += &format!(
                "rotate {} [{}] lock {} for {}d: {}\n",
                r.app_name,
                retire.join(", "),
                r.plan.lock_key,
                r.validity_days,
                items.join(", ")
            );
        }
        for r in &plans.refused {
            out += &format!(
                "refuse {} {} ({}): {}\n",
                r.app_name,
                short(&r.key_id),
                r.confidence.as_str(),
                r.reason
            );
        }
        out += &format!("not due: {}\n", plans.not_due);
        out
    }

    fn check(d: &Discovery, fleet: &FleetConfig, sel: &Selection, want: Expect) {
        want.assert_eq(&render(&plan(d, fleet, sel).unwrap()));
    }

    /// The tenant of the rules' tests: one app per rule, each due in 10 days unless said.
    fn tenant() -> (Vec<AppCredential>, Vec<VaultItem>) {
        let high = password("orders", 1, 1, 10);
        let medium = password("billing", 2, 2, 10);
        let low = password("search", 3, 3, 10);
        let partial = password("payroll", 4, 4, 10);
        let later = password("mail", 5, 5, 200);
        let unlinked = password("lonely", 6, 6, 10);
        let items = vec![
            secret(
                "kv-a",
                "orders-client-secret",
                &[("CredentialId", &high.key_id), ("team", "shop")],
            ),
            secret(
                "kv-b",
                "orders-copy",
                &[
                    ("rekey-app-id", &high.app_id),
                    ("rekey-key-id", &high.key_id),
                ],
            ),
            // App-id tag and the name template: 75 points, MEDIUM.
            secret(
                "kv-a",
                "billing-client-secret",
                &[("AppId", &medium.app_id)],
            ),
            // The name template alone: LOW.
            secret("kv-a", "search-client-secret", &[]),
            secret(
                "kv-a",
                "payroll-client-secret",
                &[("CredentialId", &partial.key_id)],
            ),
            secret("kv-b", "payroll-secret", &[]),
            secret(
                "kv-a",
                "mail-client-secret",
                &[("CredentialId", &later.key_id)],
            ),
        ];
        (vec![high, medium, low, partial, later, unlinked], items)
    }

    #[test]
    fn only_high_due_fully_covered_credentials_rotate() {
        let fleet = fleet(Exclusions::default());
        let (creds, items) = tenant();
        let d = discovery(&fleet, creds, items, Vec::new());
        check(
            &d,
            &fleet,
            &selection(),
            expect![[r#"
                rotate orders [10001] lock entra-app.00000000-0000-4000-8000-000000000101 for 180d: kv-a/orders-client-secret high, kv-b/orders-copy high
                refuse billing 10002 (medium): MEDIUM only, below --min-confidence high (kv-a/billing-client-secret (medium)); approve MEDIUM with --min-confidence medium --approve-medium
                refuse search 10003 (low): LOW only: LOW and NONE never rotate (kv-a/search-client-secret (low))
                refuse payroll 10004 (low): partial coverage: kv-b/payroll-secret (low) below high; every copy must be high or more, or a copy keeps the old password when it is removed
                refuse lonely 10006 (none): not in any scanned vault: never rotated or removed
                not due: 1
            "#]],
        );
    }

    #[test]
    fn medium_rotates_only_when_approved_and_keeps_the_old_password() {
        let fleet = fleet(Exclusions::default());
        let (creds, items) = tenant();
        let d = discovery(&fleet, creds, items, Vec::new());
        let medium = Selection {
            min_confidence: Confidence::Medium,
            app: Some("billing".into()),
            ..selection()
        };
        check(
            &d,
            &fleet,
            &medium,
            expect![[r#"
                refuse billing 10002 (medium): MEDIUM copies need --approve-medium on the command line: kv-a/billing-client-secret (medium)
                not due: 0
            "#]],
        );
        let approved = Selection {
            approve_medium: true,
            ..medium
        };
        let plans = plan(&d, &fleet, &approved).unwrap();
        check(
            &d,
            &fleet,
            &approved,
            expect![[r#"
                rotate billing [10002 (kept)] lock entra-app.00000000-0000-4000-8000-000000000102 for 180d: kv-a/billing-client-secret medium
                not due: 0
            "#]],
        );
        // Nothing to remove after the grace period: only HIGH identifies the old one.
        let Some(Address::EntraPassword { retire, .. }) =
            &plans.rotations[0].plan.targets[0].address
        else {
            panic!("the rotator is not an entra_password")
        };
        assert_eq!(retire.as_deref(), Some(&[][..]));
    }

    #[test]
    fn the_plan_fixes_every_address() {
        let fleet = fleet(Exclusions::default());
        let (creds, items) = tenant();
        let d = discovery(&fleet, creds, items, Vec::new());
        let sel = Selection {
            app: Some("ORDERS".into()),
            tenant_max_days: BTreeMap::from([("contoso".to_owned(), 90)]),
            ..selection()
        };
        let plans = plan(&d, &fleet, &sel).unwrap();
        let r = &plans.rotations[0];
        assert_eq!(r.new_end_ms, NOW + 90 * DAY_MS);
        assert_eq!(r.plan.grace_ms, 24 * 3_600_000);
        let json = serde_json::to_string_pretty(&r.plan.targets).unwrap();
        expect![[r#"
            [
              {
                "role": "rotator",
                "name": "app orders (00000000-0000-4000-8000-000000000101)",
                "address": {
                  "kind": "entra_password",
                  "credential": "reader",
                  "tenant": "tid-contoso",
                  "object_id": "00000000-0000-4000-8000-000000000001",
                  "app_id": "00000000-0000-4000-8000-000000000101",
                  "validity_days": 90,
                  "verify_scope": "https://graph.microsoft.com/.default",
                  "propagation": "2m",
                  "retire": [
                    "00000000-0000-4000-8000-000000010001"
                  ]
                }
              },
              {
                "role": "store",
                "name": "kv-a/orders-client-secret",
                "address": {
                  "kind": "key_vault",
                  "vault_url": "https://kv-a.vault.azure.net",
                  "secret": "orders-client-secret",
                  "credential": "reader",
                  "verify_challenge_resource": true,
                  "tags": {
                    "rekey-app-id": "00000000-0000-4000-8000-000000000101"
                  },
                  "credential_tags": [
                    "rekey-key-id",
                    "CredentialId"
                  ],
                  "keep_metadata": true
                }
              },
              {
                "role": "store",
                "name": "kv-b/orders-copy",
                "address": {
                  "kind": "key_vault",
                  "vault_url": "https://kv-b.vault.azure.net",
                  "secret": "orders-copy",
                  "credential": "reader",
                  "verify_challenge_resource": true,
                  "tags": {
                    "rekey-app-id": "00000000-0000-4000-8000-000000000101"
                  },
                  "credential_tags": [
                    "rekey-key-id"
                  ],
                  "keep_metadata": true
                }
              },
              {
                "role": "verifier",
                "name": "app orders (00000000-0000-4000-8000-000000000101)",
                "address": {
                  "kind": "entra_password",
                  "credential": "reader",
                  "tenant": "tid-contoso",
                  "object_id": "00000000-0000-4000-8000-000000000001",
                  "app_id": "00000000-0000-4000-8000-000000000101",
                  "validity_days": 90,
                  "verify_scope": "https://graph.microsoft.com/.default",
                  "propagation": "2m",
                  "retire": [
                    "00000000-0000-4000-8000-000000010001"
                  ]
                }
              }
            ]"#]]
        .assert_eq(&json);
    }

    #[test]
    fn two_due_passwords_of_one_app_are_one_rotation() {
        let fleet = fleet(Exclusions::default());
        let a = password("orders", 1, 1, 10);
        let b = password("orders", 1, 2, 20);
        let items = vec![
            secret("kv-a", "orders-a", &[("CredentialId", &a.key_id)]),
            secret("kv-b", "orders-b", &[("CredentialId", &b.key_id)]),
        ];
        let d = discovery(&fleet, vec![a, b], items, Vec::new());
        check(
            &d,
            &fleet,
            &selection(),
            expect![[r#"
                rotate orders [10001, 10002] lock entra-app.00000000-0000-4000-8000-000000000101 for 180d: kv-a/orders-a high, kv-b/orders-b high
                not due: 0
            "#]],
        );
        // The window is the command line's when given.
        let sel = Selection {
            expiring_within_ms: Some(15 * DAY_MS),
            ..selection()
        };
        check(
            &d,
            &fleet,
            &sel,
            expect![[r#"
                rotate orders [10001] lock entra-app.00000000-0000-4000-8000-000000000101 for 180d: kv-a/orders-a high
                not due: 1
            "#]],
        );
    }

    #[test]
    fn unread_vaults_and_excluded_copies_leave_coverage_unknown() {
        let excluding = fleet(Exclusions {
            secret_names: vec!["*-backup".into()],
            ..Exclusions::default()
        });
        let a = password("orders", 1, 1, 10);
        let items = vec![
            secret(
                "kv-a",
                "orders-client-secret",
                &[("CredentialId", &a.key_id)],
            ),
            secret("kv-b", "orders-backup", &[("CredentialId", &a.key_id)]),
        ];
        let d = discovery(&excluding, vec![a.clone()], items.clone(), Vec::new());
        check(
            &d,
            &excluding,
            &selection(),
            expect![[r#"
                refuse orders 10001 (high): excluded item kv-b/orders-backup (high) holds a copy; rotating would leave it with a removed password
                not due: 0
            "#]],
        );
        let open = fleet(Exclusions::default());
        let lost = Unreachable {
            kind: UnreachableKind::Vault,
            tenant: "contoso".into(),
            name: "kv-c".into(),
            reason: "ForbiddenByFirewall".into(),
        };
        let d = discovery(&open, vec![a], items, vec![lost]);
        check(
            &d,
            &open,
            &selection(),
            expect![[r#"
                refuse orders 10001 (high): vault kv-c could not be read; a copy may live there
                not due: 0
            "#]],
        );
    }

    #[test]
    fn unknown_apps_and_keys_are_refused_before_planning() {
        let fleet = fleet(Exclusions::default());
        let (creds, items) = tenant();
        let d = discovery(&fleet, creds, items, Vec::new());
        let err = |sel: Selection| plan(&d, &fleet, &sel).unwrap_err().to_string();
        expect![[r#"no application matches --app "nope-*" among the 6 discovered in tenants contoso (excluded apps are not listed); give a client id, object id or display name as `rekey discover` lists it"#]]
        .assert_eq(&err(Selection {
            app: Some("nope-*".into()),
            ..selection()
        }));
        expect![[r#"no credential 00000000-0000-4000-8000-000000099999 on orders (00000000-0000-4000-8000-000000000101); its credentials are: 00000000-0000-4000-8000-000000010001. Run `rekey discover --explain <app>` to see them"#]]
        .assert_eq(&err(Selection {
            app: Some("orders".into()),
            key_id: Some(guid(0x99999)),
            ..selection()
        }));
        expect!["--key-id needs --app naming the application it belongs to"].assert_eq(&err(
            Selection {
                key_id: Some(guid(0x10001)),
                ..selection()
            },
        ));
        // A key named on the command line is considered whatever its expiry.
        let sel = Selection {
            app: Some("mail".into()),
            key_id: Some(guid(0x10005).to_ascii_uppercase()),
            ..selection()
        };
        assert_eq!(plan(&d, &fleet, &sel).unwrap().rotations.len(), 1);
    }
}
