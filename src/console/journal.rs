//! The console's Journal page: whether every hash chain of the journal holds (as `rekey
//! journal verify` says), and its heads to download (as `rekey journal heads` writes them:
//! one JSON line per stream), to keep elsewhere so that a later verify can detect
//! truncation. The journal is opened a second time, read-only, for this.

use askama::Template;
use axum::Extension;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Console;
use super::auth::{Signed, refused};
use super::pages::{Chrome, render};
use crate::runner::RunnerJournal;

#[derive(Debug, Template)]
#[template(path = "console/journal.html")]
pub struct JournalPage {
    pub chrome: Chrome,
    pub location: String,
    pub streams: u64,
    pub events: u64,
    /// The first broken link, in words; `None` when intact.
    pub broken: Option<String>,
    pub damaged: Option<String>,
}

/// The daemon's journal, opened again read-only.
fn open<J: RunnerJournal + 'static>(
    console: &Console<J>,
) -> Result<rekey_journal::AnyJournal, String> {
    crate::journal_open::open_read_only(&console.api.config.journal, &|v| std::env::var(v).ok())
        .map_err(|e| format!("The journal cannot be opened for reading: {e}"))
}

/// [`open`], on the blocking pool: opening may copy a SQLite journal aside, or wait for the
/// PostgreSQL server, and is synchronous.
async fn opened<J: RunnerJournal + 'static>(
    console: &Console<J>,
) -> Result<rekey_journal::AnyJournal, String> {
    let c = console.clone();
    tokio::task::spawn_blocking(move || open(&c))
        .await
        .unwrap_or_else(|e| Err(format!("Opening the journal failed: {e}")))
}

/// `GET /ui/journal`.
pub async fn page<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    let location = console.api.config.journal.describe();
    let verified = match opened(&console).await {
        // Every event is read: awaited, so the threads that serve requests go on meanwhile.
        Ok(j) => j
            .verify(None)
            .await
            .map_err(|e| format!("The journal cannot be verified now: {e}")),
        Err(why) => Err(why),
    };
    match verified {
        Ok(report) => render(
            StatusCode::OK,
            &JournalPage {
                chrome: Chrome::of(&signed.session, "Journal"),
                location,
                streams: report.streams,
                events: report.events,
                broken: report.broken.map(|b| b.to_string()),
                damaged: report.damaged,
            },
        ),
        Err(why) => refused(&signed.session, StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// `GET /ui/journal/heads`: the heads as JSON Lines, to save.
pub async fn heads<J: RunnerJournal + 'static>(
    Extract(console): Extract<Console<J>>,
    Extension(signed): Extension<Signed>,
) -> Response {
    let read = match opened(&console).await {
        Ok(j) => j
            .heads()
            .await
            .map_err(|e| format!("The journal's heads cannot be read now: {e}")),
        Err(why) => Err(why),
    };
    let heads = match read {
        Ok(heads) => heads,
        Err(why) => return refused(&signed.session, StatusCode::SERVICE_UNAVAILABLE, why),
    };
    let mut body = String::new();
    for head in &heads {
        match serde_json::to_string(head) {
            Ok(line) => {
                body.push_str(&line);
                body.push('\n');
            }
            Err(e) => {
                return refused(
                    &signed.session,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("A head cannot be written: {e}"),
                );
            }
        }
    }
    (
        [
            (header::CONTENT_TYPE, "application/jsonl; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"rekey-heads.jsonl\"",
            ),
        ],
        body,
    )
        .into_response()
}
