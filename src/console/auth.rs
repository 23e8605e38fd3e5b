//! Signing in and out, and the guard in front of every other console route.
//!
//! Sign-in exchanges a bearer token (an operator's or a viewer's, as the API takes them)
//! for a session cookie (`session::cookie`). The guard sends a browser without a live
//! session to `/ui/login`, and refuses with 403 any other method than `GET` that does not
//! carry the session's CSRF token in its form.

use axum::body::{Body, to_bytes};
use axum::extract::rejection::FormRejection;
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::pages::{Chrome, render};
use super::session::{self, Session};
use super::{Console, csrf};
use crate::runner::RunnerJournal;

/// The session a request was made in.
#[derive(Clone)]
pub struct Signed {
    pub id: String,
    pub session: Session,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, askama::Template)]
#[template(path = "console/login.html")]
struct Login {
    chrome: Chrome,
    message: Option<&'static str>,
}

/// `GET /ui/login`.
pub async fn login_page() -> Response {
    render(
        StatusCode::OK,
        &Login {
            chrome: Chrome::signed_out("Sign in"),
            message: None,
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginForm { .. }")
    }
}

/// Whether the session cookie must be `Secure`: as `[daemon] console_secure_cookie`
/// says, and always when a proxy says the browser spoke HTTPS.
fn secure<J: RunnerJournal + 'static>(console: &Console<J>, headers: &HeaderMap) -> bool {
    console.api.config.daemon.console_secure_cookie
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// `POST /ui/login`: a token for a session.
pub async fn login<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let refused = |status, message| {
        render(
            status,
            &Login {
                chrome: Chrome::signed_out("Sign in"),
                message: Some(message),
            },
        )
    };
    if console.api.access_off() {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console is off: no token is configured. Set [daemon] api_token_env (operators) or viewer_token_env (viewers) and restart rekey run.",
        );
    }
    let Some(role) = form
        .ok()
        .and_then(|Form(f)| console.api.role_of(f.token.trim()))
    else {
        tracing::info!("console sign-in refused: wrong token");
        return refused(
            StatusCode::UNAUTHORIZED,
            "That token is not an operator's nor a viewer's. Paste the token from the variable [daemon] api_token_env or viewer_token_env names.",
        );
    };
    let now = console.api.clock.now_ms();
    let (id, _) = match console.sessions.start(role, now) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "console sign-in failed");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No session could be made (the system's random generator failed); see the daemon's log.",
            );
        }
    };
    tracing::info!(role = role.as_str(), "console sign-in");
    (
        [(
            header::SET_COOKIE,
            session::cookie(&id, secure(&console, &headers)),
        )],
        Redirect::to("/ui/secrets"),
    )
        .into_response()
}

/// `POST /ui/logout`.
pub async fn logout<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
    headers: HeaderMap,
) -> Response {
    console.sessions.end(&signed.id);
    (
        [(
            header::SET_COOKIE,
            session::cleared(secure(&console, &headers)),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

/// A page saying why a request was refused.
#[derive(Debug, askama::Template)]
#[template(path = "console/refused.html")]
pub struct Refused {
    pub chrome: Chrome,
    pub message: String,
}

/// In front of every console route but sign-in and the assets.
pub async fn guard<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    request: Request,
    next: Next,
) -> Response {
    let id = session::from_cookies(
        request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .map(str::to_owned);
    let now = console.api.clock.now_ms();
    let Some((id, session)) = id.and_then(|id| console.sessions.touch(&id, now).map(|s| (id, s)))
    else {
        return Redirect::to("/ui/login").into_response();
    };
    let request = if matches!(*request.method(), Method::GET | Method::HEAD) {
        request
    } else {
        let (parts, body) = request.into_parts();
        let form = match to_bytes(body, csrf::FORM_BYTES_MAX).await {
            Ok(form) => form,
            Err(_) => {
                return refused(
                    &session,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "The form is larger than {} bytes, or did not arrive; nothing was changed.",
                        csrf::FORM_BYTES_MAX
                    ),
                );
            }
        };
        if !csrf::accepted(&form, &session.csrf) {
            tracing::info!(path = %parts.uri.path(), "console request refused: missing or wrong CSRF token");
            return refused(
                &session,
                StatusCode::FORBIDDEN,
                "This form's CSRF token is missing or is not this session's, so nothing was changed. Reload the page and submit it again.".to_owned(),
            );
        }
        Request::from_parts(parts, Body::from(form))
    };
    let mut request = request;
    request.extensions_mut().insert(Signed { id, session });
    next.run(request).await
}

/// A refusal page, for a signed-in `session`.
pub fn refused(session: &Session, status: StatusCode, message: String) -> Response {
    render(
        status,
        &Refused {
            chrome: Chrome::of(session, "Refused"),
            message,
        },
    )
}
