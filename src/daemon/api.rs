//! The daemon's HTTP API (axum). Reads (`GET`) fold the journal directly; the one write,
//! starting a rotation, goes through the daemon loop's [`Handle`] like every other trigger.
//! `/v1/*` needs a bearer token, compared in constant time: an operator's
//! (`[daemon] api_token_env`) may do anything, a viewer's (`[daemon] viewer_token_env`)
//! may only read (`GET`; any other method is answered 403). `/healthz`, `/readyz` and
//! `/metrics` expose no secret and no secret name and are open, as probes expect.
//! `docs/openapi.json` describes it and is served at `/openapi.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rekey_journal::{Clock, StreamFilter};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::Handle;
use super::history_api;
use super::metrics::Metrics;
use crate::config::Config;
use crate::provider::SecretValue;
use crate::runner::{Requested, Runner, RunnerJournal, lock};
use crate::saga::Trigger;
use crate::text::quoted;

/// Fewest characters a bearer token or webhook secret may have: shorter ones are refused
/// when the daemon starts ([`check_token`]).
pub const TOKEN_CHARS_MIN: usize = 16;

/// Checks a token that the variable `var`, named by `[daemon] key`, holds: at least
/// [`TOKEN_CHARS_MIN`] characters. The message never quotes the token.
///
/// # Errors
/// [`super::Error::ShortToken`].
pub fn check_token(key: &str, var: &str, token: &SecretValue) -> Result<(), super::Error> {
    let chars = token.expose().chars().count();
    if chars < TOKEN_CHARS_MIN {
        return Err(super::Error::ShortToken {
            key: key.to_owned(),
            var: var.to_owned(),
            chars,
        });
    }
    Ok(())
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// What the handlers share.
pub struct State<J: RunnerJournal + 'static> {
    pub handle: Handle,
    pub runner: Arc<Runner<J>>,
    pub journal: Arc<J>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    /// The operator role's bearer tokens: read and act. With `viewer_tokens` empty too,
    /// `/v1/*` and the console are off (every call is refused).
    pub tokens: Arc<Vec<SecretValue>>,
    /// The viewer role's bearer tokens: read only.
    pub viewer_tokens: Arc<Vec<SecretValue>>,
    /// What the stores last said about each scheduled secret's expiry.
    pub expiries: super::Expiries,
    pub ready: Arc<AtomicBool>,
    /// Set while an on-demand discovery (API or console) runs: a second is refused.
    pub discovering: Arc<AtomicBool>,
    pub metrics: Option<Arc<Metrics>>,
    /// This node's leader lease, when nodes may share the journal (`/readyz` says who leads).
    pub leadership: Option<Arc<crate::daemon::leader::Leadership>>,
}

impl<J: RunnerJournal + 'static> std::fmt::Debug for State<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tokens", &self.tokens.len())
            .field("viewer_tokens", &self.viewer_tokens.len())
            .finish_non_exhaustive()
    }
}

impl<J: RunnerJournal + 'static> Clone for State<J> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            runner: self.runner.clone(),
            journal: self.journal.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            tokens: self.tokens.clone(),
            viewer_tokens: self.viewer_tokens.clone(),
            expiries: self.expiries.clone(),
            ready: self.ready.clone(),
            discovering: self.discovering.clone(),
            metrics: self.metrics.clone(),
            leadership: self.leadership.clone(),
        }
    }
}

/// The routes, ready to serve.
pub fn router<J: RunnerJournal + 'static>(state: State<J>) -> Router {
    router_with(
        state,
        history_api::Streams::new(history_api::StreamLimits::default()),
    )
}

/// The routes, with progress streams served as `streams` says.
pub fn router_with<J: RunnerJournal + 'static>(
    state: State<J>,
    streams: history_api::Streams,
) -> Router {
    let v1 = Router::new()
        .route("/v1/secrets", get(list_secrets::<J>))
        .route("/v1/secrets/{secret}/rotate", post(rotate::<J>))
        .route("/v1/rotations/{id}", get(rotation::<J>))
        .route("/v1/rotations/{id}/events", get(history_api::events::<J>))
        .route("/v1/history", get(history_api::history::<J>))
        .merge(super::fleet_api::routes::<J>())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<J>,
        ))
        .layer(axum::Extension(streams.clone()));
    let console = crate::console::router(state.clone(), streams);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<J>))
        .route("/metrics", get(metrics::<J>))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(v1)
        .with_state(state)
        .nest("/ui", console)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read only: `GET /v1/*`, the console's pages.
    Viewer,
    /// Read, rotate, discover.
    Operator,
}

impl Role {
    /// Its name in messages and actors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl<J: RunnerJournal + 'static> State<J> {
    /// The role `token` has, if it is one of the configured tokens (constant time).
    pub fn role_of(&self, token: &str) -> Option<Role> {
        // Both lists are compared in full, so the time taken does not say which matched.
        let operator = matches(&self.tokens, token);
        let viewer = matches(&self.viewer_tokens, token);
        if operator {
            Some(Role::Operator)
        } else if viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// Whether no token is configured: the API and the console are off.
    pub fn access_off(&self) -> bool {
        self.tokens.is_empty() && self.viewer_tokens.is_empty()
    }
}

/// Why a viewer may not do what it asked.
pub const VIEWER_REFUSED: &str = "this token has the viewer role, which may only read (GET); rotating and discovery need an operator token ([daemon] api_token_env)";

/// Bearer-token and role check for `/v1/*`: reads need a viewer or operator token,
/// everything else an operator token.
async fn authenticate<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    request: Request,
    next: Next,
) -> Response {
    let role = bearer(request.headers()).and_then(|t| state.role_of(t));
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    match role {
        Some(Role::Operator) => return next.run(request).await,
        Some(Role::Viewer) if reads => return next.run(request).await,
        Some(Role::Viewer) => return error(StatusCode::FORBIDDEN, VIEWER_REFUSED),
        None => {}
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        if state.access_off() {
            "the API is off: no token is configured (set [daemon] api_token_env)"
        } else {
            "missing or wrong bearer token (send Authorization: Bearer <token>)"
        },
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The bearer token `headers` carry. The scheme is case-insensitive (`Bearer`, `bearer`;
/// RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, token)| {
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
}

/// Whether `given` is one of `tokens`, compared in constant time.
fn matches(tokens: &[SecretValue], given: &str) -> bool {
    // Every token is compared, so the time taken does not say which one matched.
    tokens.iter().fold(false, |ok, t| {
        ok | bool::from(t.expose().as_bytes().ct_eq(given.as_bytes()))
    })
}

/// Whether `headers` carry one of `tokens`, compared in constant time.
pub fn token_accepted(headers: &HeaderMap, tokens: &[SecretValue]) -> bool {
    bearer(headers).is_some_and(|given| matches(tokens, given))
}

async fn readyz<J: RunnerJournal + 'static>(Extract(state): Extract<State<J>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        let Some(l) = &state.leadership else {
            return "ready\n".into_response();
        };
        let now = state.clock.now_ms();
        let at = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
        };
        let leader = match l.since_ms(now) {
            Some(since) => format!("leader: {} (this node) since {}", l.node(), at(since)),
            None => match crate::daemon::leader::recorded(&*state.journal).await {
                Ok(Some(r)) => format!(
                    "leader: {} since {} (as last journaled)",
                    r.node,
                    at(r.since_ms)
                ),
                Ok(None) => "leader: none yet".to_owned(),
                Err(e) => format!("leader: unknown ({e})"),
            },
        };
        format!("ready\nnode: {}\n{leader}\n", l.node()).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "resuming open rotations; not ready yet",
        )
    }
}

async fn metrics<J: RunnerJournal + 'static>(Extract(state): Extract<State<J>>) -> Response {
    let open = state
        .journal
        .streams(&StreamFilter {
            status: Some("open".into()),
            ..StreamFilter::default()
        })
        .await
        .map(|s| {
            s.iter()
                .filter(|i| !lock::is_lock_stream(&i.stream_id))
                .count()
        });
    match (open, &state.metrics) {
        (Ok(open), Some(m)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.encode(open),
        )
            .into_response(),
        (Ok(_), None) => error(StatusCode::NOT_FOUND, "metrics are off"),
        (Err(e), _) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn list_secrets<J: RunnerJournal + 'static>(Extract(state): Extract<State<J>>) -> Response {
    let names: Vec<String> = state.config.secrets.keys().cloned().collect();
    let now = state.clock.now_ms();
    let schedules = &state.config.schedules;
    match crate::status::secrets(&*state.journal, &state.runner, schedules, &names, now).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn rotate<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    Path(secret): Path<String>,
) -> Response {
    if state.config.plan(&secret).is_err() {
        let known: Vec<&String> = state.config.secrets.keys().collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no secret named {} is configured; configured: {known:?}",
                quoted(&secret)
            ),
        );
    }
    match state.handle.rotate(&secret, Trigger::Manual, "api").await {
        Ok(Requested::Started { rotation_id }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "rotation_id": rotation_id, "coalesced": false })),
        )
            .into_response(),
        Ok(Requested::Coalesced { into }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "rotation_id": into, "coalesced": true })),
        )
            .into_response(),
        Err(super::Error::ShuttingDown) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                super::Error::ShuttingDown.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn rotation<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    Path(id): Path<String>,
) -> Response {
    if !lock::is_rotation_stream(&id) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no rotation {}", quoted(&id)),
        );
    }
    let events = match state.journal.read_stream(&id).await {
        Ok(events) if events.is_empty() => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no rotation {}", quoted(&id)),
            );
        }
        Ok(events) => events,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let (rotation, _) = match state.runner.load(&id).await {
        Ok(loaded) => loaded,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let timeline: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "seq": e.stream_seq,
                "type": e.kind,
                "recorded_at_ms": e.recorded_at_ms,
                "event": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null),
            })
        })
        .collect();
    Json(json!({
        "rotation_id": id,
        "secret": rotation.plan.secret,
        "trigger": rotation.trigger,
        "phase": rotation.phase,
        "timeline": timeline,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "api-token-7f3a-91c2";

    fn accepted(authorization: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        token_accepted(&headers, &[SecretValue::new(TOKEN)])
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(accepted(&format!("{scheme} {TOKEN}")), "{scheme}");
        }
        assert!(accepted(&format!("Bearer  {TOKEN} ")));
        for refused in [
            format!("Basic {TOKEN}"),
            format!("Bearer{TOKEN}"),
            format!("Bearer {TOKEN}x"),
            "Bearer ".to_owned(),
            TOKEN.to_owned(),
        ] {
            assert!(!accepted(&refused), "{refused}");
        }
    }

    #[test]
    fn short_tokens_are_refused_naming_the_setting_not_the_token() {
        let short = SecretValue::new("x".repeat(TOKEN_CHARS_MIN - 1));
        let message = check_token("api_token_env", "REKEY_API_TOKEN", &short)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("[daemon] api_token_env names REKEY_API_TOKEN, whose value is too short: a token needs at least 16 characters (it has 15)"),
            "{message}"
        );
        assert!(!message.contains(short.expose()), "{message}");
        let long = SecretValue::new("x".repeat(TOKEN_CHARS_MIN));
        assert!(check_token("api_token_env", "REKEY_API_TOKEN", &long).is_ok());
    }
}
