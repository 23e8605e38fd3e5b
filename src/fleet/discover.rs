//! One discovery run: build a scanner from the config (credentials read from the
//! environment first, so bad input stops before anything is read), scan, drop what is
//! excluded, read hint values if opted in, match. The journal and the output are the
//! caller's (`fleet::journal`, `fleet::report`, `cli::discover_cmd`).
//!
//! Owns: the order of a run and its errors. Never touches: rendering.

use std::path::PathBuf;
use std::sync::Arc;

use rekey_journal::Clock;

use super::config::FleetConfig;
use super::inventory::{Scanner, Tenant};
use super::matching::{Confidence, Hints, Matched, hint_candidates, match_inventory};
use super::rules::Rules;
use crate::config::Config;
use crate::providers::azure::http::Http;

/// Why a discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(
        "{path}: no [fleet] section; add one with at least one [fleet.tenants.<name>] (see docs/config.md)"
    )]
    NoFleet { path: PathBuf },
    #[error("no tenant named {name:?} in [fleet.tenants] of {path}; configured tenants: {known}")]
    UnknownTenant {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What one run read and concluded.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// A UUIDv7; the journal stream is `discovery:<run_id>`.
    pub run_id: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The tenants read, by configured name.
    pub tenants: Vec<String>,
    /// `(tenant, vault)` of every vault whose secrets were listed.
    pub vaults: Vec<(String, String)>,
    pub matched: Matched,
    pub excluded_credentials: usize,
    pub excluded_items: usize,
    /// The vault items left out by the exclusions: a rotation must not leave one of them
    /// holding a retired credential.
    pub excluded: Vec<super::model::VaultItem>,
    /// Each vault read, by `(tenant, vault name)`: its URL (where a rotation writes).
    pub vault_urls: std::collections::BTreeMap<(String, String), url::Url>,
    /// Values read for the hint check (0 unless opted in).
    pub hint_reads: usize,
    pub read_values_for_hint: bool,
    pub days_before_expiry: u32,
    pub min_confidence: Confidence,
}

impl Discovery {
    /// Something could not be read: the exit code says so.
    pub fn partial(&self) -> bool {
        !self.matched.unreachable.is_empty()
    }
}

/// The config's `[fleet]` section.
///
/// # Errors
/// [`Error::NoFleet`] without one.
pub fn fleet(config: &Config) -> Result<&FleetConfig, Error> {
    config.fleet.as_ref().ok_or_else(|| Error::NoFleet {
        path: config.path.clone(),
    })
}

/// A scanner of the configured tenants (or only `only`), credentials built from `env`.
///
/// # Errors
/// Config, unknown-tenant and missing-variable errors; nothing has been read yet.
pub fn scanner(
    config: &Config,
    only: Option<&str>,
    clock: Arc<dyn Clock>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Scanner, Error> {
    let fleet = fleet(config)?;
    if let Some(name) = only
        && !fleet.tenants.contains_key(name)
    {
        return Err(Error::UnknownTenant {
            path: config.path.clone(),
            name: name.to_owned(),
            known: fleet.tenants.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    }
    let http = Http::new(config.azure.timeout_ms, clock).map_err(|e| Error::Http(e.message))?;
    let credentials = config.build_credentials(&http, env)?;
    let tenants = fleet
        .tenants
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .map(|(name, t)| Tenant {
            name: name.clone(),
            credential: credentials[t.credential.as_str()].clone(),
            subscriptions: t.subscriptions.clone(),
            vaults: t.vaults.clone(),
            service_principals: t.service_principals,
        })
        .collect();
    let endpoints = &config.azure.endpoints;
    let mut scanner = Scanner::new(
        http,
        endpoints.graph.clone(),
        endpoints.arm.clone(),
        tenants,
    );
    scanner.exclusions = fleet.exclusions.clone();
    scanner.verify_challenge_resource = fleet.verify_challenge_resource;
    Ok(scanner)
}

/// Runs one discovery with `scanner` under `fleet`'s rules (`min_confidence` overrides
/// the configured one).
pub async fn discover(
    scanner: &Scanner,
    fleet: &FleetConfig,
    min_confidence: Option<Confidence>,
    clock: &dyn Clock,
) -> Discovery {
    let run_id = uuid::Uuid::now_v7().to_string();
    let started_ms = clock.now_ms();
    let scan = scanner.scan().await;
    let rules = Rules {
        min_confidence: min_confidence.unwrap_or(fleet.rules.min_confidence),
        ..fleet.rules.clone()
    };
    let (inventory, excluded_credentials, excluded_items) =
        fleet.exclusions.apply(scan.inventory.clone());
    let excluded: Vec<_> = scan
        .inventory
        .items
        .iter()
        .filter(|i| fleet.exclusions.excludes_item(i))
        .cloned()
        .collect();
    let (hints, hint_reads) = if fleet.read_values_for_hint {
        let candidates = hint_candidates(&inventory, &rules);
        (
            scanner.read_hints(&scan, &candidates).await,
            candidates.len(),
        )
    } else {
        (Hints::new(), 0)
    };
    let matched = match_inventory(&inventory, &rules, &hints);
    for u in &matched.unreachable {
        tracing::info!(
            run_id,
            kind = u.kind.as_str(),
            tenant = u.tenant,
            name = u.name,
            reason = u.reason,
            "could not read"
        );
    }
    tracing::info!(
        run_id,
        credentials = matched.credentials.len(),
        items = matched.items.len(),
        links = matched.links().count(),
        unreachable = matched.unreachable.len(),
        hint_reads,
        "discovery finished"
    );
    Discovery {
        run_id,
        started_ms,
        finished_ms: clock.now_ms(),
        tenants: scanner.tenants.iter().map(|t| t.name.clone()).collect(),
        vaults: inventory.vaults.clone(),
        matched,
        excluded_credentials,
        excluded_items,
        excluded,
        vault_urls: scan.vault_urls(),
        hint_reads,
        read_values_for_hint: fleet.read_values_for_hint,
        days_before_expiry: fleet.days_before_expiry,
        min_confidence: rules.min_confidence,
    }
}
