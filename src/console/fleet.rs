//! The console's Fleet page: the last journaled discovery's credentials by expiry (with
//! an expiry timeline drawn as inline SVG), their linked vault copies with confidence and
//! evidence, what could not be read and what was excluded; for operators, Discover now,
//! and a bulk selection whose Review shows the review `rekey rotate --fleet` prints
//! (`fleet::plan::review`) before a Confirm starts the rotations. Discovery and planning
//! are the API's (`daemon::fleet_api`); rotations are requested through the daemon loop,
//! journaled with the actor `console:operator`.

use std::collections::BTreeSet;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::Console;
use super::auth::{Signed, refused};
use super::pages::{ACTOR, Chrome, at, render};
use crate::daemon::api::Role;
use crate::daemon::fleet_api::{self, Wanted};
use crate::fleet::plan::FleetPlans;
use crate::runner::{Requested, RunnerJournal};
use crate::saga::Trigger;

const DAY_MS: i64 = 86_400_000;
/// Days the expiry timeline spans from now.
pub const HORIZON_DAYS: i64 = 90;
/// The timeline's drawing width and its left margin, in SVG units.
const WIDTH: i64 = 960;
const LEFT: i64 = 20;
const SPAN: i64 = 920;

/// One vault copy of a credential.
#[derive(Debug)]
pub struct Copy {
    pub place: String,
    pub confidence: String,
    pub outcome: String,
    pub evidence: String,
}

/// One discovered credential.
#[derive(Debug)]
pub struct Credential {
    pub app_name: String,
    pub app_id: String,
    pub tenant: String,
    pub key_id: String,
    pub kind: String,
    pub expires: String,
    pub left: String,
    pub ready: bool,
    pub reason: String,
    pub copies: Vec<Copy>,
}

/// A credential on the expiry timeline.
#[derive(Debug)]
pub struct Dot {
    pub x: i64,
    pub y: i64,
    pub class: &'static str,
    pub label: String,
}

#[derive(Debug, Template)]
#[template(path = "console/fleet.html")]
pub struct FleetPage {
    pub chrome: Chrome,
    pub discovery: Option<String>,
    pub partial: bool,
    pub credentials: Vec<Credential>,
    /// Kind, tenant, name, reason.
    pub unreachable: Vec<(String, String, String, String)>,
    pub excluded_credentials: usize,
    pub excluded_items: usize,
    pub dots: Vec<Dot>,
    /// x and label of each tick.
    pub ticks: Vec<(i64, String)>,
    pub expired: usize,
    pub within: usize,
    pub error: Option<String>,
    pub width: i64,
}

/// Where a credential ending at `end_ms` sits on the timeline from `now_ms`.
fn x_of(end_ms: i64, now_ms: i64) -> i64 {
    let offset = (end_ms - now_ms).clamp(0, HORIZON_DAYS * DAY_MS);
    LEFT + offset * SPAN / (HORIZON_DAYS * DAY_MS)
}

/// `GET /ui/fleet`.
pub async fn page<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    let state = &console.api;
    let now = state.clock.now_ms();
    let mut page = FleetPage {
        chrome: Chrome::of(&signed.session, "Fleet"),
        discovery: None,
        partial: false,
        credentials: Vec::new(),
        unreachable: Vec::new(),
        excluded_credentials: 0,
        excluded_items: 0,
        dots: Vec::new(),
        ticks: (0..=HORIZON_DAYS / 15)
            .map(|i| {
                let d = i * 15;
                (x_of(now + d * DAY_MS, now), format!("+{d} d"))
            })
            .collect(),
        expired: 0,
        within: 0,
        error: None,
        width: WIDTH,
    };
    let latest = match crate::fleet::journal::latest(state.journal.as_ref()).await {
        Ok(latest) => latest,
        Err(e) => {
            page.error = Some(format!("The journal cannot be read now: {e}"));
            return render(StatusCode::SERVICE_UNAVAILABLE, &page);
        }
    };
    let Some(mut latest) = latest else {
        return render(StatusCode::OK, &page);
    };
    page.discovery = Some(format!(
        "{} ({}{})",
        latest.run_id.as_deref().unwrap_or(&latest.stream),
        latest.status,
        latest
            .finished_ms
            .map(|ms| format!(", finished {}", at(ms)))
            .unwrap_or_default()
    ));
    page.partial = latest.partial.unwrap_or(false) || !latest.unreachable.is_empty();
    page.excluded_credentials = latest.excluded_credentials;
    page.excluded_items = latest.excluded_items;
    latest
        .credentials
        .sort_by_key(|c| (c.end_ms.is_none(), c.end_ms, c.app_name.clone()));
    for (i, c) in latest.credentials.iter().enumerate() {
        let copies = latest
            .links
            .iter()
            .filter(|l| l.app_id == c.app_id && l.key_id == c.key_id)
            .map(|l| Copy {
                place: format!("{}/{}", l.vault, l.item),
                confidence: l.confidence.to_ascii_uppercase(),
                outcome: l.outcome.replace('_', " "),
                evidence: l.evidence.join("; "),
            })
            .collect();
        if let Some(end) = c.end_ms {
            let class = if end <= now {
                page.expired += 1;
                "expired"
            } else if end - now <= HORIZON_DAYS * DAY_MS {
                page.within += 1;
                "soon"
            } else {
                "later"
            };
            let row = i64::try_from(i % 4).unwrap_or(0);
            page.dots.push(Dot {
                x: x_of(end, now),
                y: 58 - row * 12,
                class,
                label: format!("{} {}: {}", c.app_name, c.key_id, at(end)),
            });
        }
        page.credentials.push(Credential {
            app_name: c.app_name.clone(),
            app_id: c.app_id.clone(),
            tenant: c.tenant.clone(),
            key_id: c.key_id.clone(),
            kind: c.kind.clone(),
            expires: c.end_ms.map_or_else(|| "never".to_owned(), at),
            left: c.end_ms.map_or_else(String::new, |end| {
                let days = (end - now).div_euclid(DAY_MS);
                if end <= now {
                    "expired".to_owned()
                } else {
                    format!("{days} d")
                }
            }),
            ready: c.ready,
            reason: c.reason.clone(),
            copies,
        });
    }
    page.unreachable = latest
        .unreachable
        .into_iter()
        .map(|u| (u.kind, u.tenant, u.name, u.reason))
        .collect();
    render(StatusCode::OK, &page)
}

/// The applications a form selects (`app=<client id>`, repeated).
fn selected(form: &[u8]) -> BTreeSet<String> {
    url::form_urlencoded::parse(form)
        .filter(|(name, _)| name == "app")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Only the plans and refusals of `apps`.
fn only(plans: FleetPlans, apps: &BTreeSet<String>) -> FleetPlans {
    FleetPlans {
        rotations: plans
            .rotations
            .into_iter()
            .filter(|r| apps.contains(&r.app_id))
            .collect(),
        refused: plans
            .refused
            .into_iter()
            .filter(|r| apps.contains(&r.app_id))
            .collect(),
        not_due: plans.not_due,
    }
}

/// Refuses a viewer; `None` for an operator.
fn operator_only(signed: &Signed, what: &str) -> Option<Response> {
    (signed.session.role != Role::Operator).then(|| {
        refused(
            &signed.session,
            StatusCode::FORBIDDEN,
            format!(
                "You are signed in as a viewer, who may only read; nothing was {what}. Sign in with an operator token ([daemon] api_token_env)."
            ),
        )
    })
}

/// `POST /ui/fleet/discover`.
pub async fn discover<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    if let Some(r) = operator_only(&signed, "discovered") {
        return r;
    }
    match fleet_api::discover_now(&console.api).await {
        Ok(_) => Redirect::to("/ui/fleet").into_response(),
        Err((status, why)) => refused(
            &signed.session,
            status,
            format!("The discovery did not run: {why}"),
        ),
    }
}

#[derive(Debug, Template)]
#[template(path = "console/fleet_review.html")]
pub struct ReviewPage {
    pub chrome: Chrome,
    pub review: String,
    pub apps: Vec<String>,
    pub rotations: usize,
    pub items: usize,
    pub refused: usize,
}

/// Plans the fleet for the selected applications, or the refusal page.
async fn planned<J: RunnerJournal + 'static>(
    console: &Console<J>,
    signed: &Signed,
    form: &[u8],
) -> Result<(BTreeSet<String>, FleetPlans), Response> {
    let apps = selected(form);
    if apps.is_empty() {
        return Err(refused(
            &signed.session,
            StatusCode::BAD_REQUEST,
            "No application was selected; tick at least one on the Fleet page.".to_owned(),
        ));
    }
    match fleet_api::plan(&console.api, Wanted::default()).await {
        Ok((_, plans)) => Ok((apps.clone(), only(plans, &apps))),
        Err((status, why)) => Err(refused(
            &signed.session,
            status,
            format!("The fleet could not be planned, so nothing was started: {why}"),
        )),
    }
}

/// `POST /ui/fleet/review`: what Confirm would do, as the command line reviews it.
pub async fn review<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    form: Bytes,
) -> Response {
    if let Some(r) = operator_only(&signed, "planned") {
        return r;
    }
    let (apps, plans) = match planned(&console, &signed, &form).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    render(
        StatusCode::OK,
        &ReviewPage {
            chrome: Chrome::of(&signed.session, "Review"),
            review: crate::fleet::plan::review(&plans),
            apps: apps.into_iter().collect(),
            rotations: plans.rotations.len(),
            items: plans.rotations.iter().map(|r| r.items.len()).sum(),
            refused: plans.refused.len(),
        },
    )
}

/// One rotation Confirm requested.
#[derive(Debug)]
pub struct Started {
    pub app_name: String,
    pub app_id: String,
    pub rotation_id: Option<String>,
    pub note: String,
}

#[derive(Debug, Template)]
#[template(path = "console/fleet_started.html")]
pub struct StartedPage {
    pub chrome: Chrome,
    pub started: Vec<Started>,
    pub refused: Vec<(String, String)>,
}

/// `POST /ui/fleet/rotate`: plans again (the fleet may have changed since the review)
/// and requests each selected application's rotation.
pub async fn rotate<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    form: Bytes,
) -> Response {
    if let Some(r) = operator_only(&signed, "started") {
        return r;
    }
    let (_, plans) = match planned(&console, &signed, &form).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut started = Vec::new();
    for r in &plans.rotations {
        let requested = console
            .api
            .handle
            .request_plan(r.plan.clone(), Trigger::Bulk, ACTOR)
            .await;
        let (rotation_id, note) = match requested {
            Ok(Requested::Started { rotation_id }) => (Some(rotation_id), "started".to_owned()),
            Ok(Requested::Coalesced { into }) => {
                (Some(into), "joined the rotation already open".to_owned())
            }
            Err(e) => (None, format!("not started: {e}")),
        };
        started.push(Started {
            app_name: r.app_name.clone(),
            app_id: r.app_id.clone(),
            rotation_id,
            note,
        });
    }
    render(
        StatusCode::OK,
        &StartedPage {
            chrome: Chrome::of(&signed.session, "Fleet rotation"),
            started,
            refused: plans
                .refused
                .iter()
                .map(|f| {
                    (
                        format!("{} ({}) {}", f.app_name, f.app_id, f.key_id),
                        f.reason.clone(),
                    )
                })
                .collect(),
        },
    )
}
