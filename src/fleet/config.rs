//! The `[fleet]` section: which tenants to inventory (each with its own credential), which
//! subscriptions and vaults to scan, the matcher's rules and the exclusions. `Config::parse`
//! calls [`validate`], so its errors carry the file, line and column like every other.
//!
//! Owns: the section's raw TOML shape and its validation. Never touches: I/O.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::matching::Confidence;
use super::rules::{Exclusions, Rules, TagKeys, check_glob};

/// Days before `endDateTime` that a credential is due, by default.
pub const DAYS_BEFORE_EXPIRY_DEFAULT: u32 = 30;
/// Days before a credential is due that its first notice goes out, by default.
pub const NOTICE_DAYS_BEFORE_DEFAULT: u32 = 7;
/// Most days of `notice_days_before`.
pub const NOTICE_DAYS_BEFORE_MAX: u32 = 365;
/// Bounds of `discover_every`: a second (tests, demos) to 30 days.
pub const DISCOVER_EVERY_MIN_MS: i64 = 1_000;
pub const DISCOVER_EVERY_MAX_MS: i64 = 30 * 86_400_000;
/// Most tenants, subscriptions, vaults, templates or patterns in one list.
pub const LIST_MAX: usize = 1_000;

/// `[fleet]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    #[serde(default)]
    tenants: BTreeMap<String, Spanned<RawTenant>>,
    days_before_expiry: Option<Spanned<i64>>,
    min_confidence: Option<Spanned<String>>,
    #[serde(default)]
    read_values_for_hint: bool,
    /// Turn off only for loopback test vaults (see `key_vault` providers).
    #[serde(default = "yes")]
    verify_challenge_resource: bool,
    name_templates: Option<Spanned<Vec<String>>>,
    tag_keys: Option<Spanned<RawTagKeys>>,
    exclude: Option<Spanned<RawExclude>>,
    rotation: Option<Spanned<RawRotation>>,
    /// `rekey run` discovers and rotates on this schedule (absent: never unattended).
    discover_every: Option<Spanned<String>>,
    notice_days_before: Option<Spanned<i64>>,
}

/// `[fleet.rotation]`: how `rekey rotate --fleet` rotates what discovery found.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    grace: Option<String>,
    validity_days: Option<i64>,
    max_concurrent: Option<i64>,
    max_concurrent_per_tenant: Option<i64>,
    attempts_max: Option<i64>,
    propagation: Option<String>,
}

/// Grace before the old credential is removed, by default: App Service caches Key Vault
/// references up to 24 h.
pub const GRACE_DEFAULT_MS: i64 = 24 * 3_600_000;
/// Days a new password is valid, by default.
pub const VALIDITY_DAYS_DEFAULT: i64 = 180;
/// Fleet rotations driven at once, by default, and per tenant.
pub const MAX_CONCURRENT_DEFAULT: usize = 16;
pub const MAX_CONCURRENT_PER_TENANT_DEFAULT: usize = 8;
/// Most rotations at once that the config may ask for.
pub const MAX_CONCURRENT_LIMIT: usize = 1_000;

/// The validated `[fleet.rotation]` (defaults when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// How long the old credential stays valid after verification.
    pub grace_ms: i64,
    /// Days a new password is valid (Graph `endDateTime`); a tenant limit, when one is
    /// known, may shorten it.
    pub validity_days: i64,
    pub max_concurrent: usize,
    pub max_concurrent_per_tenant: usize,
    pub attempts_max: u32,
    /// How long verification keeps signing in while a new password propagates.
    pub propagation: String,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            grace_ms: GRACE_DEFAULT_MS,
            validity_days: VALIDITY_DAYS_DEFAULT,
            max_concurrent: MAX_CONCURRENT_DEFAULT,
            max_concurrent_per_tenant: MAX_CONCURRENT_PER_TENANT_DEFAULT,
            attempts_max: 5,
            propagation: "2m".into(),
        }
    }
}

fn rotation(raw: &Spanned<RawRotation>) -> Result<RotationConfig, Invalid> {
    let at = Some(raw.span());
    let r = raw.get_ref();
    let mut out = RotationConfig::default();
    let duration = |key: &str, text: &str| {
        crate::config::parse_duration_ms(text).map_err(|why| {
            (
                at.clone(),
                format!("[fleet.rotation] {key} = {text:?} {why}; write e.g. \"24h\" or \"7d\""),
            )
        })
    };
    if let Some(g) = &r.grace {
        out.grace_ms = duration("grace", g)?;
    }
    if let Some(p) = &r.propagation {
        duration("propagation", p)?;
        out.propagation.clone_from(p);
    }
    let ranged = |key: &str, v: i64, max: i64| {
        if (1..=max).contains(&v) {
            Ok(v)
        } else {
            Err((
                at.clone(),
                format!("[fleet.rotation] {key} = {v} must be 1 to {max}"),
            ))
        }
    };
    if let Some(v) = r.validity_days {
        out.validity_days = ranged("validity_days", v, 3650)?;
    }
    let limit = MAX_CONCURRENT_LIMIT as i64;
    if let Some(v) = r.max_concurrent {
        out.max_concurrent = ranged("max_concurrent", v, limit)? as usize;
    }
    if let Some(v) = r.max_concurrent_per_tenant {
        out.max_concurrent_per_tenant = ranged("max_concurrent_per_tenant", v, limit)? as usize;
    }
    if let Some(v) = r.attempts_max {
        out.attempts_max = ranged(
            "attempts_max",
            v,
            i64::from(crate::config::ATTEMPTS_MAX_LIMIT),
        )? as u32;
    }
    Ok(out)
}

fn yes() -> bool {
    true
}

/// `[fleet.tenants.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    /// The `[credentials.<name>]` rekey reads this tenant with.
    credential: Spanned<String>,
    subscriptions: Option<Spanned<Vec<String>>>,
    vaults: Option<Spanned<Vec<String>>>,
    /// Also list service principals' credentials (reported, never rotated by default).
    #[serde(default = "yes")]
    service_principals: bool,
    /// App Service sites (and slots), by ARM id, whose Key Vault references to the items a
    /// fleet rotation writes it refreshes.
    app_service_sites: Option<Spanned<Vec<String>>>,
}

/// `[fleet.tag_keys]`: each list replaces its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTagKeys {
    app_id: Option<Vec<String>>,
    key_id: Option<Vec<String>>,
    app_name: Option<Vec<String>>,
}

/// `[fleet.exclude]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclude {
    #[serde(default)]
    app_ids: Vec<String>,
    #[serde(default)]
    app_names: Vec<String>,
    #[serde(default)]
    secret_names: Vec<String>,
    #[serde(default)]
    vaults: Vec<String>,
    #[serde(default)]
    subscriptions: Vec<String>,
}

/// One tenant to inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// The credential's name in `[credentials]`.
    pub credential: String,
    /// Subscriptions whose vaults ARM lists.
    pub subscriptions: Vec<String>,
    /// Vaults scanned by URL.
    pub vaults: Vec<Url>,
    pub service_principals: bool,
    /// Sites (and slots) whose settings a rotation of this tenant reads, and whose Key
    /// Vault references to the items it writes it refreshes; no other site is touched.
    pub app_service_sites: Vec<SiteId>,
}

/// An App Service site or one of its slots, from its ARM id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct SiteId {
    pub subscription: String,
    pub resource_group: String,
    pub site: String,
    pub slot: Option<String>,
}

impl SiteId {
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{site}`,
    /// optionally followed by `/slots/{slot}` (segment names case-insensitive, as ARM's).
    ///
    /// # Errors
    /// What is wrong with the id, and what one looks like.
    pub fn parse(id: &str) -> Result<Self, String> {
        let example = "write e.g. \"/subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.Web/sites/<site>\" (add \"/slots/<slot>\" for a slot)";
        let parts: Vec<&str> = id.trim_end_matches('/').split('/').collect();
        let shape =
            |i: usize, want: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(want));
        let named = |i: usize| parts.get(i).filter(|p| !p.is_empty() && p.len() <= 90);
        let base_ok = parts.first() == Some(&"")
            && shape(1, "subscriptions")
            && shape(3, "resourceGroups")
            && shape(5, "providers")
            && shape(6, "Microsoft.Web")
            && shape(7, "sites")
            && (parts.len() == 9 || (parts.len() == 11 && shape(9, "slots")));
        let (Some(sub), Some(rg), Some(site)) = (named(2), named(4), named(8)) else {
            return Err(format!("{id:?} is not an App Service site id; {example}"));
        };
        if !base_ok {
            return Err(format!("{id:?} is not an App Service site id; {example}"));
        }
        if !super::model::looks_like_guid(sub) {
            return Err(format!(
                "{id:?}: {sub:?} is not a subscription id (a GUID); {example}"
            ));
        }
        let slot = if parts.len() == 11 {
            Some(
                named(10)
                    .ok_or_else(|| format!("{id:?} names no slot; {example}"))?
                    .to_string(),
            )
        } else {
            None
        };
        Ok(Self {
            subscription: sub.to_ascii_lowercase(),
            resource_group: (*rg).to_owned(),
            site: (*site).to_owned(),
            slot,
        })
    }
}

impl std::fmt::Display for SiteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/sites/{}",
            self.subscription, self.resource_group, self.site
        )?;
        if let Some(slot) = &self.slot {
            write!(f, "/slots/{slot}")?;
        }
        Ok(())
    }
}

/// The validated `[fleet]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub tenants: BTreeMap<String, TenantConfig>,
    pub days_before_expiry: u32,
    pub read_values_for_hint: bool,
    pub verify_challenge_resource: bool,
    /// Name templates, tag keys, minimum confidence.
    pub rules: Rules,
    pub exclusions: Exclusions,
    /// How `rotate --fleet` rotates (`[fleet.rotation]`).
    pub rotation: RotationConfig,
    /// How often `rekey run`'s leader discovers and rotates what is due; `None`: never.
    pub discover_every_ms: Option<i64>,
    /// The first notice about a credential goes out this many days before it is due.
    pub notice_days_before: u32,
}

/// A validation failure: where (a byte range of the config text) and what.
pub type Invalid = (Option<Range<usize>>, String);

/// Validates `[fleet]`; `credentials` are the names defined in `[credentials]`.
///
/// # Errors
/// The span and message of the first problem.
pub fn validate(raw: &Spanned<RawFleet>, credentials: &[&str]) -> Result<FleetConfig, Invalid> {
    let here = Some(raw.span());
    let f = raw.get_ref();
    if f.tenants.is_empty() {
        return Err((
            here,
            "[fleet] needs at least one tenant: add [fleet.tenants.<name>] with credential = \"<a [credentials] name>\"".into(),
        ));
    }
    let mut tenants = BTreeMap::new();
    for (name, t) in &f.tenants {
        tenants.insert(name.clone(), tenant(name, t, credentials)?);
    }
    let days_before_expiry = match &f.days_before_expiry {
        None => DAYS_BEFORE_EXPIRY_DEFAULT,
        Some(d) => match u32::try_from(*d.get_ref()) {
            Ok(n) if (1..=365).contains(&n) => n,
            _ => {
                return Err((
                    Some(d.span()),
                    format!(
                        "[fleet] days_before_expiry = {} must be 1 to 365 ({DAYS_BEFORE_EXPIRY_DEFAULT} is the default)",
                        d.get_ref()
                    ),
                ));
            }
        },
    };
    let discover_every_ms = match &f.discover_every {
        None => None,
        Some(d) => {
            let text = d.get_ref();
            let ms = crate::config::parse_duration_ms(text).map_err(|why| {
                (
                    Some(d.span()),
                    format!("[fleet] discover_every = {text:?} {why}; write e.g. \"6h\""),
                )
            })?;
            if !(DISCOVER_EVERY_MIN_MS..=DISCOVER_EVERY_MAX_MS).contains(&ms) {
                return Err((
                    Some(d.span()),
                    format!(
                        "[fleet] discover_every = {text:?} must be 1s to 30d; write e.g. \"6h\", or leave it out to discover only on request"
                    ),
                ));
            }
            Some(ms)
        }
    };
    let notice_days_before = match &f.notice_days_before {
        None => NOTICE_DAYS_BEFORE_DEFAULT,
        Some(d) => match u32::try_from(*d.get_ref()) {
            Ok(n) if n <= NOTICE_DAYS_BEFORE_MAX => n,
            _ => {
                return Err((
                    Some(d.span()),
                    format!(
                        "[fleet] notice_days_before = {} must be 0 to {NOTICE_DAYS_BEFORE_MAX} ({NOTICE_DAYS_BEFORE_DEFAULT} is the default)",
                        d.get_ref()
                    ),
                ));
            }
        },
    };
    let min_confidence = match &f.min_confidence {
        None => Confidence::High,
        Some(c) => parse_min_confidence(c.get_ref()).map_err(|m| {
            (
                Some(c.span()),
                format!("[fleet] min_confidence = {:?}: {m}", c.get_ref()),
            )
        })?,
    };
    let mut rules = Rules {
        min_confidence,
        ..Rules::default()
    };
    if let Some(t) = &f.name_templates {
        let at = Some(t.span());
        check_list("name_templates", t.get_ref()).map_err(|m| (at.clone(), m))?;
        for template in t.get_ref() {
            check_template(template).map_err(|m| (at.clone(), m))?;
        }
        rules.name_templates = t.get_ref().clone();
    }
    if let Some(k) = &f.tag_keys {
        let at = Some(k.span());
        let raw = k.get_ref();
        let mut keys = TagKeys::default();
        for (field, given, slot) in [
            ("app_id", &raw.app_id, &mut keys.app_id),
            ("key_id", &raw.key_id, &mut keys.key_id),
            ("app_name", &raw.app_name, &mut keys.app_name),
        ] {
            if let Some(list) = given {
                let field = format!("tag_keys.{field}");
                check_list(&field, list).map_err(|m| (at.clone(), m))?;
                if let Some(bad) = list.iter().find(|k| k.trim().is_empty() || k.len() > 256) {
                    return Err((
                        at,
                        format!("[fleet] {field}: {bad:?} is not a tag key (1 to 256 characters)"),
                    ));
                }
                *slot = list.clone();
            }
        }
        rules.tag_keys = keys;
    }
    let exclusions = match &f.exclude {
        None => Exclusions::default(),
        Some(e) => {
            let at = Some(e.span());
            let raw = e.get_ref();
            for (field, list) in [
                ("app_ids", &raw.app_ids),
                ("app_names", &raw.app_names),
                ("secret_names", &raw.secret_names),
                ("vaults", &raw.vaults),
                ("subscriptions", &raw.subscriptions),
            ] {
                let field = format!("exclude.{field}");
                check_list(&field, list).map_err(|m| (at.clone(), m))?;
                for p in list {
                    check_glob(p)
                        .map_err(|why| (at.clone(), format!("[fleet] {field}: {p:?}: {why}")))?;
                }
            }
            Exclusions {
                app_ids: raw.app_ids.clone(),
                app_names: raw.app_names.clone(),
                secret_names: raw.secret_names.clone(),
                vaults: raw.vaults.clone(),
                subscriptions: raw.subscriptions.clone(),
            }
        }
    };
    Ok(FleetConfig {
        tenants,
        days_before_expiry,
        read_values_for_hint: f.read_values_for_hint,
        verify_challenge_resource: f.verify_challenge_resource,
        rules,
        exclusions,
        rotation: f
            .rotation
            .as_ref()
            .map(rotation)
            .transpose()?
            .unwrap_or_default(),
        discover_every_ms,
        notice_days_before,
    })
}

/// `high` or `medium`: LOW and NONE never rotate, so they are no threshold.
///
/// # Errors
/// Why not, naming the accepted values.
pub fn parse_min_confidence(text: &str) -> Result<Confidence, String> {
    match Confidence::parse(text) {
        Some(c @ (Confidence::High | Confidence::Medium)) => Ok(c),
        Some(_) => Err(
            "low, none and ambiguous links never rotate; write \"high\" (the default) or \"medium\"".into(),
        ),
        None => Err(
            "not a confidence; write \"high\" (the default) or \"medium\"".into(),
        ),
    }
}

fn tenant(
    name: &str,
    spanned: &Spanned<RawTenant>,
    credentials: &[&str],
) -> Result<TenantConfig, Invalid> {
    let t = spanned.get_ref();
    let valid_name = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid_name {
        return Err((
            Some(spanned.span()),
            format!(
                "[fleet.tenants] name {name:?} must be 1 to 100 characters of A-Z a-z 0-9 - _ ."
            ),
        ));
    }
    let at = format!("[fleet.tenants.{name}]");
    let credential = t.credential.get_ref();
    if !credentials.contains(&credential.as_str()) {
        return Err((
            Some(t.credential.span()),
            format!(
                "{at} credential {credential:?} is not defined; define [credentials.{credential}] or use one of: {}",
                if credentials.is_empty() {
                    "(none defined)".to_owned()
                } else {
                    credentials.join(", ")
                }
            ),
        ));
    }
    let list = |l: &Option<Spanned<Vec<String>>>| {
        l.as_ref().map_or((None, Vec::new()), |l| {
            (Some(l.span()), l.get_ref().clone())
        })
    };
    let (subs_at, subs) = list(&t.subscriptions);
    let (vaults_at, raw_vaults) = list(&t.vaults);
    check_list(&format!("tenants.{name}.subscriptions"), &subs)
        .map_err(|m| (subs_at.clone(), m))?;
    check_list(&format!("tenants.{name}.vaults"), &raw_vaults)
        .map_err(|m| (vaults_at.clone(), m))?;
    if let Some(s) = subs.iter().find(|s| !super::model::looks_like_guid(s)) {
        return Err((
            subs_at,
            format!(
                "{at} subscriptions: {s:?} is not a subscription id; write its GUID, e.g. \"00000000-0000-0000-0000-000000000000\""
            ),
        ));
    }
    let mut vaults: Vec<Url> = Vec::new();
    for v in &raw_vaults {
        let url = Url::parse(v).map_err(|e| {
            (
                vaults_at.clone(),
                format!(
                    "{at} vaults: {v:?} is not a URL ({e}); write e.g. \"https://my-vault.vault.azure.net\""
                ),
            )
        })?;
        if !crate::providers::azure::may_carry_credentials(&url) {
            return Err((
                vaults_at,
                format!(
                    "{at} vaults: {v:?} would receive a bearer token over plain http; use https (plain http only to 127.0.0.1, ::1 or localhost)"
                ),
            ));
        }
        if !vaults.contains(&url) {
            vaults.push(url);
        }
    }
    let (sites_at, raw_sites) = list(&t.app_service_sites);
    check_list(&format!("tenants.{name}.app_service_sites"), &raw_sites)
        .map_err(|m| (sites_at.clone(), m))?;
    let mut app_service_sites: Vec<SiteId> = Vec::new();
    for id in &raw_sites {
        let site = SiteId::parse(id)
            .map_err(|why| (sites_at.clone(), format!("{at} app_service_sites: {why}")))?;
        let same = |s: &SiteId| s.to_string().eq_ignore_ascii_case(&site.to_string());
        if !app_service_sites.iter().any(same) {
            app_service_sites.push(site);
        }
    }
    Ok(TenantConfig {
        credential: credential.clone(),
        subscriptions: subs.iter().map(|s| s.to_ascii_lowercase()).collect(),
        vaults,
        service_principals: t.service_principals,
        app_service_sites,
    })
}

fn check_list(field: &str, list: &[String]) -> Result<(), String> {
    if list.len() > LIST_MAX {
        return Err(format!(
            "[fleet] {field} has {} entries; at most {LIST_MAX}",
            list.len()
        ));
    }
    Ok(())
}

/// A template names the app (`{app}` or `{app_id}`) and no other placeholder.
fn check_template(template: &str) -> Result<(), String> {
    let rest = template.replace("{app}", "").replace("{app_id}", "");
    if rest.contains(['{', '}']) {
        return Err(format!(
            "[fleet] name_templates: {template:?} has an unknown placeholder; only {{app}} (the app's display name) and {{app_id}} (its client id) are replaced"
        ));
    }
    if rest.len() == template.len() {
        return Err(format!(
            "[fleet] name_templates: {template:?} names no app; include {{app}} or {{app_id}}, e.g. \"{{app}}-client-secret\""
        ));
    }
    if template.len() > 127 {
        return Err(format!(
            "[fleet] name_templates: {template:?} is longer than a Key Vault name can be (127)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, Error};

    use super::*;

    const GOOD: &str = r#"[journal]
path = "journal.db"

[credentials.reader]
kind = "static_token"
token_env = "T"

[fleet]
read_values_for_hint = true

[fleet.tenants.contoso]
credential = "reader"
subscriptions = ["00000000-AAAA-4bbb-8ccc-000000000002"]
vaults = ["https://kv-prod.vault.azure.net"]

[fleet.exclude]
app_names = ["test-*"]
"#;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/rekey/rekey.toml"), text)
    }

    #[test]
    fn a_fleet_section_gets_its_defaults() {
        let fleet = parse(GOOD).unwrap().fleet.unwrap();
        assert_eq!(fleet.days_before_expiry, 30);
        assert_eq!(fleet.rules.min_confidence, Confidence::High);
        assert!(fleet.read_values_for_hint);
        assert!(fleet.verify_challenge_resource);
        assert_eq!(fleet.rules, Rules::default());
        let t = &fleet.tenants["contoso"];
        assert_eq!(t.credential, "reader");
        assert_eq!(t.subscriptions, ["00000000-aaaa-4bbb-8ccc-000000000002"]);
        assert_eq!(t.vaults[0].as_str(), "https://kv-prod.vault.azure.net/");
        assert!(t.service_principals);
        assert_eq!(fleet.exclusions.app_names, ["test-*"]);
        assert_eq!(fleet.discover_every_ms, None, "unattended only when asked");
        assert_eq!(fleet.notice_days_before, NOTICE_DAYS_BEFORE_DEFAULT);
        let every = GOOD.replace(
            "read_values_for_hint = true",
            "discover_every = \"6h\"\nnotice_days_before = 0",
        );
        let fleet = parse(&every).unwrap().fleet.unwrap();
        assert_eq!(fleet.discover_every_ms, Some(6 * 3_600_000));
        assert_eq!(fleet.notice_days_before, 0);
        assert!(
            parse("[journal]\npath = \"j.db\"\n")
                .unwrap()
                .fleet
                .is_none(),
            "no [fleet], no fleet"
        );
    }

    /// Each bad `[fleet]` is refused with its file, line, column and what to write.
    #[test]
    fn app_service_sites_are_site_or_slot_ids() {
        let sub = "00000000-aaaa-4bbb-8ccc-000000000002";
        let site = format!(
            "/subscriptions/{sub}/resourceGroups/rg-Web/providers/Microsoft.Web/sites/orders"
        );
        let text = GOOD.replace(
            "vaults = [\"https://kv-prod.vault.azure.net\"]",
            &format!(
                "vaults = [\"https://kv-prod.vault.azure.net\"]\napp_service_sites = [\"{site}\", \"{}/slots/staging\", \"{}\"]",
                site.replace("/providers/Microsoft.Web/sites/", "/PROVIDERS/microsoft.web/Sites/"),
                site.to_ascii_uppercase().replace(&sub.to_ascii_uppercase(), sub),
            ),
        );
        let fleet = parse(&text).unwrap().fleet.unwrap();
        let sites = &fleet.tenants["contoso"].app_service_sites;
        assert_eq!(
            sites.len(),
            2,
            "the same site twice is listed once: {sites:?}"
        );
        assert_eq!(sites[0].to_string(), site);
        assert_eq!(sites[1].slot.as_deref(), Some("staging"));
        for (bad, why) in [
            (
                "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Web/sites/a",
                "\"x\" is not a subscription id",
            ),
            ("orders-web", "is not an App Service site id; write e.g."),
            (
                &format!(
                    "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"
                ),
                "is not an App Service site id",
            ),
            (
                &format!(
                    "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/a/config/x"
                ),
                "is not an App Service site id",
            ),
        ] {
            let text = GOOD.replace(
                "vaults = [\"https://kv-prod.vault.azure.net\"]",
                &format!("app_service_sites = [\"{bad}\"]"),
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("[fleet.tenants.contoso] app_service_sites: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_fleet_sections_name_the_line_and_the_fix() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "read_values_for_hint = true",
                "days_before_expiry = 0",
                9,
                "[fleet] days_before_expiry = 0 must be 1 to 365 (30 is the default)",
            ),
            (
                "read_values_for_hint = true",
                "days_before_expiry = 366",
                9,
                "must be 1 to 365",
            ),
            (
                "read_values_for_hint = true",
                "discover_every = \"often\"",
                9,
                "[fleet] discover_every = \"often\" is not a duration",
            ),
            (
                "read_values_for_hint = true",
                "discover_every = \"500ms\"",
                9,
                "[fleet] discover_every = \"500ms\" must be 1s to 30d; write e.g. \"6h\", or leave it out to discover only on request",
            ),
            (
                "read_values_for_hint = true",
                "discover_every = \"31d\"",
                9,
                "must be 1s to 30d",
            ),
            (
                "read_values_for_hint = true",
                "discover_every = \"-6h\"",
                9,
                "[fleet] discover_every = \"-6h\"",
            ),
            (
                "read_values_for_hint = true",
                "notice_days_before = 366",
                9,
                "[fleet] notice_days_before = 366 must be 0 to 365 (7 is the default)",
            ),
            (
                "read_values_for_hint = true",
                "notice_days_before = -1",
                9,
                "must be 0 to 365",
            ),
            (
                "read_values_for_hint = true",
                "min_confidence = \"low\"",
                9,
                "low, none and ambiguous links never rotate; write \"high\" (the default) or \"medium\"",
            ),
            (
                "read_values_for_hint = true",
                "min_confidence = \"sure\"",
                9,
                "[fleet] min_confidence = \"sure\": not a confidence",
            ),
            (
                "credential = \"reader\"",
                "credential = \"writer\"",
                12,
                "[fleet.tenants.contoso] credential \"writer\" is not defined; define [credentials.writer] or use one of: reader",
            ),
            (
                "vaults = [\"https://kv-prod.vault.azure.net\"]",
                "vaults = [\"http://kv-prod.vault.azure.net\"]",
                14,
                "would receive a bearer token over plain http; use https",
            ),
            (
                "vaults = [\"https://kv-prod.vault.azure.net\"]",
                "vaults = [\"kv-prod\"]",
                14,
                "vaults: \"kv-prod\" is not a URL",
            ),
            (
                "subscriptions = [\"00000000-AAAA-4bbb-8ccc-000000000002\"]",
                "subscriptions = [\"prod\"]",
                13,
                "subscriptions: \"prod\" is not a subscription id",
            ),
            (
                "read_values_for_hint = true",
                "name_templates = [\"client-secret\"]",
                9,
                "names no app; include {app} or {app_id}",
            ),
            (
                "read_values_for_hint = true",
                "name_templates = [\"{application}-secret\"]",
                9,
                "has an unknown placeholder",
            ),
            (
                "app_names = [\"test-*\"]",
                "app_names = [\"\"]",
                16,
                "[fleet] exclude.app_names: \"\": an empty pattern matches nothing",
            ),
            (
                "app_names = [\"test-*\"]",
                "app_name = [\"test-*\"]",
                17,
                "unknown field `app_name`",
            ),
            (
                "read_values_for_hint = true",
                "read_values_for_hint = \"yes\"",
                9,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                "[fleet.tenants.contoso]\ncredential = \"reader\"\nsubscriptions = [\"00000000-AAAA-4bbb-8ccc-000000000002\"]\nvaults = [\"https://kv-prod.vault.azure.net\"]\n",
                "",
                8,
                "[fleet] needs at least one tenant",
            ),
            (
                "credential = \"reader\"",
                "credentials = \"reader\"",
                12,
                "unknown field `credentials`",
            ),
        ];
        for (from, to, line, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "case {want:?} did not change the config");
            match parse(&text) {
                Err(e @ Error::Invalid { .. }) => {
                    let Error::Invalid {
                        line: got,
                        column,
                        ref message,
                        ..
                    } = e
                    else {
                        unreachable!()
                    };
                    assert!(
                        message.contains(want),
                        "{message:?} should contain {want:?}"
                    );
                    assert_eq!(got, *line, "line of {want:?}");
                    assert!(column >= 1);
                    assert!(e.to_string().starts_with("/etc/rekey/rekey.toml:"), "{e}");
                }
                other => panic!("{want:?}: expected an invalid-config error, got {other:?}"),
            }
        }
    }
}
