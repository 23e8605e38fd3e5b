//! The web console under `/ui`: server-rendered pages over the same folds the API and the
//! command line use (`status`, `history`, the journal), for people who would rather not
//! use a terminal.
//!
//! - `session`: sign-in sessions (random ids, idle and absolute expiry);
//! - `csrf`: the token every state-changing form carries;
//! - `auth`: sign-in and sign-out, and the guard that sends a browser without a session
//!   to `/ui/login` and refuses a `POST` without the session's CSRF token;
//! - `pages`: the Secrets, Rotation and History pages and the Rotate action;
//! - `journal`: the Journal page (chain verification) and the heads download;
//! - `fleet`: the Fleet page, Discover now, and a bulk rotation's Review and Confirm;
//! - `assets`: the stylesheet and the script, embedded in the binary.
//!
//! Every response carries a strict `Content-Security-Policy` (no inline script or style,
//! nothing from elsewhere), `X-Content-Type-Options: nosniff` and `Referrer-Policy:
//! no-referrer`; `docs/console.md` says more.

pub mod assets;
pub mod auth;
pub mod csrf;
pub mod fleet;
pub mod journal;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::daemon::api::State;
use crate::daemon::history_api::Streams;
use crate::runner::RunnerJournal;

/// The console's `Content-Security-Policy`.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console's handlers share.
pub struct Console<J: RunnerJournal + 'static> {
    pub api: State<J>,
    pub sessions: Arc<session::Sessions>,
    pub streams: Streams,
}

impl<J: RunnerJournal + 'static> Clone for Console<J> {
    fn clone(&self) -> Self {
        Self {
            api: self.api.clone(),
            sessions: self.sessions.clone(),
            streams: self.streams.clone(),
        }
    }
}

impl<J: RunnerJournal + 'static> std::fmt::Debug for Console<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// The console's routes, to nest under `/ui`.
pub fn router<J: RunnerJournal + 'static>(api: State<J>, streams: Streams) -> Router {
    let console = Console {
        api,
        sessions: Arc::new(session::Sessions::default()),
        streams,
    };
    let signed_in = Router::new()
        .route("/", get(pages::secrets::<J>))
        .route("/secrets", get(pages::secrets::<J>))
        .route("/secrets/{secret}/rotate", post(pages::rotate::<J>))
        .route("/rotations/{id}", get(pages::rotation::<J>))
        .route("/rotations/{id}/events", get(pages::events::<J>))
        .route("/history", get(pages::history::<J>))
        .route("/journal", get(journal::page::<J>))
        .route("/journal/heads", get(journal::heads::<J>))
        .route("/fleet", get(fleet::page::<J>))
        .route("/fleet/discover", post(fleet::discover::<J>))
        .route("/fleet/review", post(fleet::review::<J>))
        .route("/fleet/rotate", post(fleet::rotate::<J>))
        .route("/logout", post(auth::logout::<J>))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            auth::guard::<J>,
        ));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login::<J>))
        .route("/assets/console.css", get(assets::css))
        .route("/assets/console.js", get(assets::js))
        .merge(signed_in)
        .with_state(console)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}
