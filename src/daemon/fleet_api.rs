//! The fleet's routes of the daemon's API (bearer auth as every `/v1` route):
//!
//! - `POST /v1/discovery`: run a discovery now, journal it (`discovery:<run id>`), answer
//!   with its report (`rekey discover --json`'s document) when it ends;
//! - `GET /v1/discovery/latest`: the last journaled discovery's credentials, links and
//!   what could not be read, read from the journal;
//! - `POST /v1/fleet/rotate`: discover, plan, and request every eligible application's
//!   rotation (`{app_id, key_id, expiry_days, tenant, dry_run}`, each optional); answers
//!   with the rotation ids, or with the plans when `dry_run`, and the refusals with their
//!   reasons. MEDIUM is never approved here: approval is a command-line act.
//!
//! Credentials are read from the daemon's environment, as the providers' are.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::State;
use crate::fleet::plan::Selection;
use crate::runner::{Requested, RunnerJournal};
use crate::saga::Trigger;

const DAY_MS: i64 = 86_400_000;

/// The fleet routes, to merge into `/v1` before its authentication layer.
pub fn routes<J: RunnerJournal + 'static>() -> Router<State<J>> {
    Router::new()
        .route("/v1/discovery", post(discover::<J>))
        .route("/v1/discovery/latest", get(latest::<J>))
        .route("/v1/fleet/rotate", post(rotate::<J>))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Runs the future `make` builds on a blocking thread of this runtime: a discovery's
/// future holds borrows across awaits that a handler's future may not.
async fn off_thread<T, F>(make: impl FnOnce() -> F + Send + 'static) -> Result<T, Response>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(make()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A scanner of the config's fleet, or why there is none (the daemon's config or
/// environment is wrong for it).
pub(super) fn scanner(
    config: &crate::config::Config,
    clock: std::sync::Arc<dyn rekey_journal::Clock>,
    tenant: Option<&str>,
) -> Result<crate::fleet::inventory::Scanner, String> {
    crate::fleet::discover::scanner(config, tenant, clock, &|v| std::env::var(v).ok())
        .map_err(|e| e.to_string())
}

/// Marks an on-demand discovery as running until dropped (also when its request is
/// cancelled), so two never read the tenants' and vaults' budgets at once.
struct Discovering<'a>(&'a AtomicBool);

impl<'a> Discovering<'a> {
    fn start(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(flag))
    }
}

impl Drop for Discovering<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs a discovery now and journals it; or the status and message to answer with.
///
/// # Errors
/// 409 while another on-demand discovery runs, 400 when the config or environment is
/// wrong for it, 503 when the journal cannot record it.
pub async fn discover_now<J: RunnerJournal + 'static>(
    state: &State<J>,
) -> Result<crate::fleet::discover::Discovery, (StatusCode, String)> {
    let Some(_running) = Discovering::start(&state.discovering) else {
        return Err((
            StatusCode::CONFLICT,
            "a discovery is already running on this node; its result will be at GET /v1/discovery/latest when it ends"
                .to_owned(),
        ));
    };
    let (config, clock) = (state.config.clone(), state.clock.clone());
    let found = off_thread(move || async move {
        let fleet = crate::fleet::discover::fleet(&config).map_err(|e| e.to_string())?;
        let scanner = scanner(&config, clock.clone(), None)?;
        Ok::<_, String>(
            crate::fleet::discover::discover(&scanner, fleet, None, clock.as_ref()).await,
        )
    })
    .await;
    let d = match found {
        Ok(Ok(d)) => d,
        Ok(Err(why)) => return Err((StatusCode::BAD_REQUEST, why)),
        Err(_) => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the discovery failed; see the daemon's log".to_owned(),
            ));
        }
    };
    if let Err(e) = crate::fleet::journal::record(state.journal.as_ref(), &d).await {
        return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
    }
    Ok(d)
}

async fn discover<J: RunnerJournal + 'static>(Extract(state): Extract<State<J>>) -> Response {
    match discover_now(&state).await {
        Ok(d) => Json(crate::fleet::report::report(&d, state.clock.now_ms(), None)).into_response(),
        Err((status, why)) => error(status, why),
    }
}

async fn latest<J: RunnerJournal + 'static>(Extract(state): Extract<State<J>>) -> Response {
    let last = match crate::fleet::journal::latest(state.journal.as_ref()).await {
        Ok(Some(last)) => last,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "no discovery has been journaled yet; POST /v1/discovery or run `rekey discover`",
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut doc = json!({
        "stream": last.stream,
        "status": last.status,
        "credentials": last.credentials,
        "links": last.links,
        "unreachable": last.unreachable,
    });
    if let (Some(run_id), Some(started_ms)) = (last.run_id, last.started_ms) {
        doc["run_id"] = json!(run_id);
        doc["started_ms"] = json!(started_ms);
    }
    if let (Some(finished_ms), Some(partial)) = (last.finished_ms, last.partial) {
        doc["finished_ms"] = json!(finished_ms);
        doc["partial"] = json!(partial);
    }
    Json(doc).into_response()
}

/// What a fleet rotation run selects (`POST /v1/fleet/rotate`, the console's Fleet page).
#[derive(Debug, Default)]
pub struct Wanted {
    /// A glob on client id, object id or display name.
    pub app_id: Option<String>,
    pub key_id: Option<String>,
    /// Due within this many days [default: `[fleet] days_before_expiry`].
    pub expiry_days: Option<u32>,
    pub tenant: Option<String>,
}

/// Discovers and plans as `wanted` says, unattended (MEDIUM is never approved), and
/// journals the discovery; or the status and message to answer with.
///
/// # Errors
/// 400 when the config or environment is wrong for it, 404 when the selection names
/// nothing discovered, 503 when the journal cannot record the discovery.
pub async fn plan<J: RunnerJournal + 'static>(
    state: &State<J>,
    wanted: Wanted,
) -> Result<
    (
        crate::fleet::discover::Discovery,
        crate::fleet::plan::FleetPlans,
    ),
    (StatusCode, String),
> {
    let (config, clock) = (state.config.clone(), state.clock.clone());
    let planned = off_thread(move || async move {
        let fleet = crate::fleet::discover::fleet(&config)
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let scanner = scanner(&config, clock.clone(), wanted.tenant.as_deref())
            .map_err(|why| (StatusCode::BAD_REQUEST, why))?;
        let sel = Selection {
            now_ms: clock.now_ms(),
            expiring_within_ms: wanted.expiry_days.map(|d| i64::from(d) * DAY_MS),
            app: wanted.app_id.clone(),
            key_id: wanted.key_id.clone(),
            tenant: wanted.tenant.clone(),
            min_confidence: fleet.rules.min_confidence,
            // Unattended: MEDIUM is never approved here.
            approve_medium: false,
            tenant_max_days: std::collections::BTreeMap::new(),
            tenant_ids: crate::fleet::rotate::tenant_ids(&config),
        };
        crate::fleet::rotate::discover_and_plan(&scanner, fleet, sel, clock.as_ref())
            .await
            .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))
    })
    .await;
    let (d, plans) = match planned {
        Ok(Ok(planned)) => planned,
        Ok(Err(why)) => return Err(why),
        Err(_) => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the fleet run failed; see the daemon's log".to_owned(),
            ));
        }
    };
    if let Err(e) = crate::fleet::journal::record(state.journal.as_ref(), &d).await {
        return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
    }
    Ok((d, plans))
}

/// `POST /v1/fleet/rotate`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// A glob on client id, object id or display name.
    app_id: Option<String>,
    key_id: Option<String>,
    /// Due within this many days [default: `[fleet] days_before_expiry`].
    expiry_days: Option<u32>,
    tenant: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn rotate<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    body: Option<Json<Value>>,
) -> Response {
    let body: RotateBody = match body.map(|Json(v)| serde_json::from_value(v)) {
        None => RotateBody::default(),
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad body: {e}; send {{\"app_id\", \"key_id\", \"expiry_days\", \"tenant\", \"dry_run\"}}, each optional"
                ),
            );
        }
    };
    if body.expiry_days.is_some_and(|d| !(1..=365).contains(&d)) {
        return error(StatusCode::BAD_REQUEST, "expiry_days must be 1 to 365");
    }
    let dry_run = body.dry_run;
    let planned = plan(
        &state,
        Wanted {
            app_id: body.app_id,
            key_id: body.key_id,
            expiry_days: body.expiry_days,
            tenant: body.tenant,
        },
    )
    .await;
    let (d, plans) = match planned {
        Ok(planned) => planned,
        Err((status, why)) => return error(status, why),
    };
    let mut rotations = Vec::new();
    for r in &plans.rotations {
        let mut row = json!({
            "tenant": r.tenant,
            "app_id": r.app_id,
            "app_name": r.app_name,
            "object_id": r.object_id,
            "credentials": r.credentials,
            "items": r.items,
            "settings": r.settings,
            "validity_days": r.validity_days,
        });
        if !dry_run {
            match state
                .handle
                .request_plan(r.plan.clone(), Trigger::Bulk, "api:fleet")
                .await
            {
                Ok(Requested::Started { rotation_id }) => {
                    row["rotation_id"] = json!(rotation_id);
                    row["coalesced"] = json!(false);
                }
                Ok(Requested::Coalesced { into }) => {
                    row["rotation_id"] = json!(into);
                    row["coalesced"] = json!(true);
                }
                Err(e) => row["error"] = json!(e.to_string()),
            }
        }
        rotations.push(row);
    }
    let status = if dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (
        status,
        Json(json!({
            "dry_run": dry_run,
            "discovery": d.run_id,
            "rotations": rotations,
            "refused": plans.refused,
            "not_due": plans.not_due,
        })),
    )
        .into_response()
}
