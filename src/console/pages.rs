//! The console's pages, rendered from askama templates (`templates/console/`; values are
//! HTML-escaped), over the same folds as the command line and the API: `status` for
//! Secrets, the journal's rotation stream for Rotation, `history` for History. The one
//! action, Rotate, goes through the daemon loop's [`crate::daemon::Handle`] like an API
//! call, journaled with the actor `console:operator`.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, extract};
use serde::Deserialize;

use super::Console;
use super::auth::{Signed, refused};
use super::session::Session;
use crate::daemon::api::Role;
use crate::history::{Outcome, RawFilter, TRIGGERS};
use crate::runner::{Requested, RunnerJournal, lock};
use crate::saga::{Phase, RotationEvent, StepStatus, Trigger};
use crate::text::excerpt;

/// The actor journaled for rotations started from the console.
pub const ACTOR: &str = "console:operator";
/// History rows per page.
pub const PAGE_ROWS: usize = 50;

/// What the shared layout needs: the title, and who is signed in.
#[derive(Clone)]
pub struct Chrome {
    pub title: &'static str,
    /// `viewer` or `operator`; `None` signed out.
    pub role: Option<&'static str>,
    pub operator: bool,
    /// The session's CSRF token, for the forms.
    pub csrf: String,
}

impl std::fmt::Debug for Chrome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chrome")
            .field("title", &self.title)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Chrome {
    pub fn signed_out(title: &'static str) -> Self {
        Self {
            title,
            role: None,
            operator: false,
            csrf: String::new(),
        }
    }

    pub fn of(session: &Session, title: &'static str) -> Self {
        Self {
            title,
            role: Some(session.role.as_str()),
            operator: session.role == Role::Operator,
            csrf: session.csrf.clone(),
        }
    }
}

/// `template` as an HTML response with `status`.
pub fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page failed to render; see the daemon's log",
            )
                .into_response()
        }
    }
}

/// A time as the console shows it: UTC to the second.
pub fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| format!("{ms} ms"),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// A duration as the console shows it.
pub fn took(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{:.1} min", ms as f64 / 60_000.0),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Forward => "forward",
        Phase::Grace => "grace",
        Phase::Compensating => "compensating",
        Phase::Completed => "completed",
        Phase::Compensated => "compensated",
    }
}

/// One row of the Secrets page.
#[derive(Debug)]
pub struct SecretRow {
    pub name: String,
    /// Rotation id, outcome, when.
    pub last: Option<(String, String, String)>,
    /// Rotation id, phase, next step, last failure.
    pub open: Option<(String, &'static str, String, Option<String>)>,
    pub next_scheduled: Option<String>,
    /// When the stores say the current version expires.
    pub expires: Option<String>,
}

#[derive(Debug, Template)]
#[template(path = "console/secrets.html")]
pub struct SecretsPage {
    pub chrome: Chrome,
    pub rows: Vec<SecretRow>,
    pub error: Option<String>,
}

/// `GET /ui` and `/ui/secrets`.
pub async fn secrets<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    let state = &console.api;
    let names: Vec<String> = state.config.secrets.keys().cloned().collect();
    let now = state.clock.now_ms();
    let folded = crate::status::secrets(
        &*state.journal,
        &state.runner,
        &state.config.schedules,
        &names,
        now,
    )
    .await;
    let (rows, error, status) = match folded {
        Ok(rows) => (rows, None, StatusCode::OK),
        Err(e) => (
            Vec::new(),
            Some(format!("The journal cannot be read now: {e}")),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    let rows = rows
        .into_iter()
        .map(|r| SecretRow {
            last: r
                .last_ended
                .map(|e| (e.rotation_id, e.status, at(e.ended_at_ms))),
            open: r.open_rotation.map(|o| {
                (
                    o.rotation_id,
                    phase_name(o.phase),
                    crate::status::describe(&o.next, &at),
                    o.last_failure,
                )
            }),
            next_scheduled: r
                .next_scheduled
                .map(|n| format!("{} ({})", at(n.at_ms), n.reason.replace('_', " "))),
            expires: state.expiries.get(&r.secret).map(at),
            name: r.secret,
        })
        .collect();
    render(
        status,
        &SecretsPage {
            chrome: Chrome::of(&signed.session, "Secrets"),
            rows,
            error,
        },
    )
}

/// `POST /ui/secrets/{secret}/rotate` (operators; the guard checked the CSRF token).
pub async fn rotate<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    Path(secret): Path<String>,
) -> Response {
    if signed.session.role != Role::Operator {
        return refused(
            &signed.session,
            StatusCode::FORBIDDEN,
            "You are signed in as a viewer, who may only read; nothing was started. Sign in with an operator token ([daemon] api_token_env) to rotate.".to_owned(),
        );
    }
    let state = &console.api;
    if state.config.plan(&secret).is_err() {
        let known: Vec<&str> = state.config.secrets.keys().map(String::as_str).collect();
        return refused(
            &signed.session,
            StatusCode::NOT_FOUND,
            format!(
                "No secret named {} is configured, so nothing was started; configured: {}.",
                crate::text::quoted(&secret),
                known.join(", ")
            ),
        );
    }
    match state.handle.rotate(&secret, Trigger::Manual, ACTOR).await {
        Ok(Requested::Started { rotation_id } | Requested::Coalesced { into: rotation_id }) => {
            Redirect::to(&format!("/ui/rotations/{rotation_id}")).into_response()
        }
        Err(e) => refused(
            &signed.session,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The rotation of {secret} was not started: {e}"),
        ),
    }
}

/// One step on the Rotation page (`history::StepRecord`, as the audit report shows it).
#[derive(Debug)]
pub struct StepRow {
    pub step: String,
    /// The target's role and name.
    pub target: String,
    pub attempts: u32,
    pub started: String,
    pub started_ms: i64,
    pub outcome: &'static str,
    pub took: String,
    /// The last failure, if any.
    pub error: String,
}

/// One journaled event on the Rotation page.
#[derive(Debug)]
pub struct EventRow {
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Template)]
#[template(path = "console/rotation.html")]
pub struct RotationPage {
    pub chrome: Chrome,
    pub id: String,
    pub secret: String,
    pub trigger: &'static str,
    pub actor: String,
    pub phase: &'static str,
    pub ended: bool,
    pub grace_until: Option<String>,
    pub steps: Vec<StepRow>,
    pub events: Vec<EventRow>,
    pub last_seq: u64,
}

/// What an event says, in a line.
fn detail(event: &RotationEvent) -> String {
    match event {
        RotationEvent::Requested { actor, trigger, .. } => format!(
            "{} rotation requested by {actor}",
            crate::history::trigger_name(trigger)
        ),
        RotationEvent::StepStarted { step, attempt, .. } => format!("{step}, attempt {attempt}"),
        RotationEvent::StepSucceeded {
            step, reconciled, ..
        } => format!("{step}{}", if *reconciled { " (reconciled)" } else { "" }),
        RotationEvent::StepFailed {
            step,
            attempt,
            class,
            message,
            retry_at_ms,
        } => format!(
            "{step}, attempt {attempt}: {class:?}: {}{}",
            excerpt(message, crate::history::ERROR_CHARS_MAX),
            retry_at_ms.map_or_else(String::new, |r| format!("; retry at {}", at(r)))
        ),
        RotationEvent::StepNotApplied { step, .. } => format!("{step} was not applied"),
        RotationEvent::ValueLost { .. } => "the new value was lost before it was stored".into(),
        RotationEvent::CompensationStarted { reason } => excerpt(reason, 200),
        RotationEvent::GraceScheduled { due_at_ms } => format!("grace until {}", at(*due_at_ms)),
        RotationEvent::Completed => "new credential in place, old one retired".into(),
        RotationEvent::Compensated => "every applied step undone".into(),
    }
}

/// `GET /ui/rotations/{id}`.
pub async fn rotation<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    let state = &console.api;
    let not_found = || {
        refused(
            &signed.session,
            StatusCode::NOT_FOUND,
            format!("There is no rotation {}.", crate::text::quoted(&id)),
        )
    };
    if !lock::is_rotation_stream(&id) {
        return not_found();
    }
    let events = match state.journal.read_stream(&id).await {
        Ok(events) if events.is_empty() => return not_found(),
        Ok(events) => events,
        Err(e) => {
            return refused(
                &signed.session,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The journal cannot be read now: {e}"),
            );
        }
    };
    let timeline = match crate::history::fold_timeline(&id, &events) {
        Ok(timeline) => timeline,
        Err(e) => {
            return refused(
                &signed.session,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Rotation {id} cannot be folded: {e}"),
            );
        }
    };
    let row = &timeline.row;
    let mut page = RotationPage {
        chrome: Chrome::of(&signed.session, "Rotation"),
        id: id.clone(),
        secret: row.secret.clone(),
        trigger: row.trigger,
        actor: row.actor.clone(),
        phase: phase_name(row.phase),
        ended: row.phase.is_terminal(),
        grace_until: timeline.grace_due_ms.map(at),
        steps: timeline
            .steps
            .iter()
            .map(|s| StepRow {
                step: s.step.to_string(),
                target: format!("{} {}", s.role.as_str(), s.target),
                attempts: s.attempts,
                started: at(s.started_at_ms),
                started_ms: s.started_at_ms,
                outcome: match &s.status {
                    StepStatus::Succeeded { .. } => "succeeded",
                    StepStatus::InDoubt { failure: None, .. } => "running",
                    StepStatus::InDoubt {
                        failure: Some(_), ..
                    } => "failed",
                    StepStatus::Pending { .. } => "retrying",
                    StepStatus::Abandoned { .. } => "abandoned",
                },
                took: s.duration_ms().map(took).unwrap_or_default(),
                error: s
                    .errors
                    .last()
                    .map(|e| {
                        format!(
                            "attempt {}: {:?}: {}",
                            e.attempt,
                            e.class,
                            excerpt(&e.message, crate::history::ERROR_CHARS_MAX)
                        )
                    })
                    .unwrap_or_default(),
            })
            .collect(),
        events: Vec::new(),
        last_seq: 0,
    };
    for e in &events {
        page.last_seq = e.stream_seq;
        let detail = RotationEvent::from_journal(&e.kind, &e.payload).map_or_else(
            |_| "(cannot be read by this version of rekey)".to_owned(),
            |event| detail(&event),
        );
        page.events.push(EventRow {
            seq: e.stream_seq,
            at: at(e.recorded_at_ms),
            kind: e.kind.clone(),
            detail,
        });
    }
    render(StatusCode::OK, &page)
}

/// `GET /ui/rotations/{id}/events`: the rotation's progress stream (as
/// `/v1/rotations/{id}/events`), for the page's script.
pub async fn events<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    crate::daemon::history_api::events::<J>(
        extract::State(console.api.clone()),
        Extension(console.streams.clone()),
        Path(id),
        headers,
    )
    .await
}

/// The History page's query: the `history` filters, and the page.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    secret: Option<String>,
    app: Option<String>,
    tenant: Option<String>,
    status: Option<String>,
    trigger: Option<String>,
    page: Option<usize>,
}

/// One row of the History page.
#[derive(Debug)]
pub struct HistoryRow {
    pub rotation_id: String,
    pub requested: String,
    pub finished: String,
    pub secret: String,
    pub app: String,
    pub tenant: String,
    pub trigger: &'static str,
    pub actor: String,
    pub outcome: &'static str,
    pub error: String,
}

#[derive(Debug, Template)]
#[template(path = "console/history.html")]
pub struct HistoryPage {
    pub chrome: Chrome,
    /// The filters as given, to fill the form again.
    pub since: String,
    pub until: String,
    pub secret: String,
    pub app: String,
    pub tenant: String,
    pub status: String,
    pub trigger: String,
    pub statuses: Vec<&'static str>,
    pub triggers: Vec<&'static str>,
    pub rows: Vec<HistoryRow>,
    pub total: usize,
    pub first: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub error: Option<String>,
}

/// A filter field as the form sends it: blank means any.
fn given(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `GET /ui/history`.
pub async fn history<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let state = &console.api;
    let (q, mut error) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (HistoryQuery::default(), Some(e.body_text())),
    };
    let raw = RawFilter {
        since: given(q.since.as_ref()),
        until: given(q.until.as_ref()),
        secret: given(q.secret.as_ref()),
        app: given(q.app.as_ref()),
        tenant: given(q.tenant.as_ref()),
        status: given(q.status.as_ref()),
        trigger: given(q.trigger.as_ref()),
    };
    let page_no = q.page.unwrap_or(1).max(1);
    let mut rows = Vec::new();
    if error.is_none() {
        match raw.parse(state.clock.now_ms()) {
            Err(e) => error = Some(e.to_string()),
            Ok(filter) => match crate::history::rows(&*state.journal, &filter).await {
                Ok(listed) => rows = listed,
                Err(e) => error = Some(format!("The history cannot be listed: {e}")),
            },
        }
    }
    let total = rows.len();
    let first = (page_no - 1) * PAGE_ROWS;
    let link = |page: usize| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("since", &raw.since),
            ("until", &raw.until),
            ("secret", &raw.secret),
            ("app", &raw.app),
            ("tenant", &raw.tenant),
            ("status", &raw.status),
            ("trigger", &raw.trigger),
        ] {
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
        q.append_pair("page", &page.to_string());
        format!("/ui/history?{}", q.finish())
    };
    let shown = rows
        .into_iter()
        .skip(first)
        .take(PAGE_ROWS)
        .map(|r| HistoryRow {
            requested: at(r.requested_at_ms),
            finished: r.finished_at_ms.map(at).unwrap_or_default(),
            app: r.app_id.unwrap_or_default(),
            tenant: r.tenant.unwrap_or_default(),
            trigger: r.trigger,
            actor: r.actor,
            outcome: r.outcome.as_str(),
            error: r
                .last_error
                .map(|e| format!("{} {:?}: {}", e.step, e.class, e.message))
                .unwrap_or_default(),
            secret: r.secret,
            rotation_id: r.rotation_id,
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(
        status,
        &HistoryPage {
            chrome: Chrome::of(&signed.session, "History"),
            since: raw.since.clone().unwrap_or_default(),
            until: raw.until.clone().unwrap_or_default(),
            secret: raw.secret.clone().unwrap_or_default(),
            app: raw.app.clone().unwrap_or_default(),
            tenant: raw.tenant.clone().unwrap_or_default(),
            status: raw.status.clone().unwrap_or_default(),
            trigger: raw.trigger.clone().unwrap_or_default(),
            statuses: Outcome::ALL.map(Outcome::as_str).to_vec(),
            triggers: TRIGGERS.to_vec(),
            total,
            first: first + 1,
            prev: (page_no > 1).then(|| link(page_no - 1)),
            next: (first + PAGE_ROWS < total).then(|| link(page_no + 1)),
            rows: shown,
            error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKUP: &str = "<script>alert('x')</script>&\"";

    fn chrome() -> Chrome {
        Chrome {
            title: "Secrets",
            role: Some("operator"),
            operator: true,
            csrf: "c".into(),
        }
    }

    /// Names, ids and messages are text, never markup: askama escapes every value.
    #[test]
    fn names_with_markup_render_as_text() {
        let secrets = SecretsPage {
            chrome: chrome(),
            rows: vec![SecretRow {
                name: MARKUP.into(),
                last: Some(("r".into(), "completed".into(), "t".into())),
                open: Some(("o".into(), "forward", MARKUP.into(), Some(MARKUP.into()))),
                next_scheduled: None,
                expires: None,
            }],
            error: Some(MARKUP.into()),
        }
        .render()
        .unwrap();
        let history = HistoryPage {
            chrome: chrome(),
            since: MARKUP.into(),
            until: String::new(),
            secret: MARKUP.into(),
            app: String::new(),
            tenant: String::new(),
            status: String::new(),
            trigger: String::new(),
            statuses: vec![],
            triggers: vec![],
            rows: vec![HistoryRow {
                rotation_id: MARKUP.into(),
                requested: String::new(),
                finished: String::new(),
                secret: MARKUP.into(),
                app: MARKUP.into(),
                tenant: MARKUP.into(),
                trigger: "manual",
                actor: MARKUP.into(),
                outcome: "open",
                error: MARKUP.into(),
            }],
            total: 1,
            first: 1,
            prev: None,
            next: None,
            error: None,
        }
        .render()
        .unwrap();
        for html in [&secrets, &history] {
            assert!(!html.contains("<script>alert"), "{html}");
            assert!(!html.contains("'x')</script>&\""), "{html}");
            assert!(
                html.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;&#38;&#34;"),
                "{html}"
            );
        }
        // Where a name lands in an attribute or a URL, it stays inside it.
        assert!(secrets.contains("data-secret=\"&#60;script"), "{secrets}");
        assert!(
            secrets.contains("aria-label=\"Rotate &#60;script"),
            "{secrets}"
        );
    }
}
