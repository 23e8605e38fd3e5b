//! `GET /v1/history` (the rows of `rekey history`, same filters and JSON) and
//! `GET /v1/rotations/{id}/events`: a rotation's journaled events as Server-Sent Events,
//! then each new one as it lands, ending after the terminal event.
//!
//! An event is sent as the journal has it: `id:` its stream sequence, `event:` its type,
//! `data:` its payload (ids, tags, times and error classes: never a value). A client that
//! reconnects with `Last-Event-ID` gets only the events after it. New events are found by
//! reading the stream's head when the daemon's runner journals an event ([`Appends`], an
//! observer of the runner), and every [`StreamLimits::poll`] besides (another process
//! sharing the journal, `rekey resume`, may drive the rotation). A stream holds its connection busy, so it is bounded: a keep-alive comment every
//! [`StreamLimits::keep_alive`] while nothing happens, at most
//! [`StreamLimits::duration_max`] (then a comment says to reconnect with `Last-Event-ID`
//! and it ends), at most [`StreamLimits::streams_max`] at once (then 503), and it ends
//! when the daemon stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::Stream;
use rekey_journal::{Event, JournalRead};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::api::State;
use crate::history::{Document, RawFilter};
use crate::runner::{Observer, RunnerJournal, lock};
use crate::saga::{Rotation, RotationEvent};
use crate::text::quoted;

/// How long and how many progress streams may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// How often the stream's head is read for new events.
    pub poll: Duration,
    /// A comment is sent after this long without an event, so proxies keep it open.
    pub keep_alive: Duration,
    /// A stream ends after this long; the client reconnects with `Last-Event-ID`.
    pub duration_max: Duration,
    /// Streams open at once; more are answered 503 (each holds a connection busy, and the
    /// server's `connections_max` must leave room for the API and probes).
    pub streams_max: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            keep_alive: Duration::from_secs(15),
            duration_max: Duration::from_secs(15 * 60),
            streams_max: 64,
        }
    }
}

/// Counts the events the daemon's runner journals, so progress streams look at once.
#[derive(Debug, Clone)]
pub struct Appends(Arc<watch::Sender<u64>>);

impl Default for Appends {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Observer for Appends {
    fn journaled(&self, _: &Rotation, _: &RotationEvent, _: f64) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The progress streams of one server: their limits, the slots left, and what wakes them.
#[derive(Debug, Clone)]
pub struct Streams {
    limits: StreamLimits,
    slots: Arc<Semaphore>,
    appends: Option<watch::Receiver<u64>>,
}

impl Streams {
    /// Streams within `limits`, finding new events by polling.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.streams_max.max(1))),
            appends: None,
        }
    }

    /// The same streams, also looking as soon as `appends` counts an event.
    #[must_use]
    pub fn waking_on(mut self, appends: &Appends) -> Self {
        self.appends = Some(appends.0.subscribe());
        self
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// `GET /v1/history`.
pub async fn history<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    query: Result<Query<RawFilter>, QueryRejection>,
) -> Response {
    let raw = match query {
        Ok(Query(raw)) => raw,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; the filters are since, until, secret, app, tenant, status, trigger",
                    e.body_text()
                ),
            );
        }
    };
    let filter = match raw.parse(state.clock.now_ms()) {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Thousands of streams may be read: every read is awaited, so the threads that serve
    // requests and drive rotations go on meanwhile.
    match crate::history::rows(&*state.journal, &filter).await {
        Ok(rows) => Json(Document { rotations: &rows }).into_response(),
        Err(e @ crate::history::Error::Journal(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/rotations/{id}/events`.
pub async fn events<J: RunnerJournal + 'static>(
    Extract(state): Extract<State<J>>,
    Extension(streams): Extension<Streams>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let after = match headers.get("last-event-id").map(HeaderValue::to_str) {
        None => 0,
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(seq) => seq,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Last-Event-ID {}: not an event id of this stream (the number sent as id:)",
                        quoted(text)
                    ),
                );
            }
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID: not an event id of this stream (the number sent as id:)",
            );
        }
    };
    let exists = lock::is_rotation_stream(&id)
        && match state.journal.stream_info(&id).await {
            Ok(info) => info.is_some(),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
    if !exists {
        return error(
            StatusCode::NOT_FOUND,
            format!("no rotation {}", quoted(&id)),
        );
    }
    let Ok(slot) = streams.slots.clone().try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} progress streams are open, the most this server keeps; retry shortly (with Last-Event-ID to resume)",
                streams.limits.streams_max
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let body = progress(
        state.journal.clone(),
        id,
        after,
        streams.limits,
        Box::pin(state.handle.stopping()),
        streams.appends.clone(),
        slot,
    );
    axum::response::Sse::new(body)
        .keep_alive(KeepAlive::new().interval(streams.limits.keep_alive))
        .into_response()
}

/// Event types that end a rotation.
fn is_terminal(kind: &str) -> bool {
    matches!(kind, "Completed" | "Compensated")
}

/// Where a progress stream is.
struct Progress<J> {
    journal: Arc<J>,
    rotation_id: String,
    /// The last stream sequence sent (or the client's `Last-Event-ID`).
    sent: u64,
    /// Read and not yet sent.
    pending: VecDeque<Event>,
    /// Nothing more to send after `pending`.
    ended: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Changes when the daemon's runner journals an event.
    appends: Option<watch::Receiver<u64>>,
    limits: StreamLimits,
    _slot: OwnedSemaphorePermit,
}

/// The events of `rotation_id` after sequence `after`, then each new one, until the
/// terminal event, `limits.duration_max`, `stop`, or a journal error (sent as a comment).
pub fn progress<J: JournalRead + Send + Sync + 'static>(
    journal: Arc<J>,
    rotation_id: String,
    after: u64,
    limits: StreamLimits,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    appends: Option<watch::Receiver<u64>>,
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Sse, Infallible>> + Send + 'static {
    let start = Progress {
        journal,
        rotation_id,
        sent: after,
        pending: VecDeque::new(),
        ended: false,
        deadline: Box::pin(tokio::time::sleep(limits.duration_max)),
        stop,
        appends,
        limits,
        _slot: slot,
    };
    futures::stream::unfold(start, |mut p| async move {
        let sse = match next(&mut p).await? {
            Out::Event(e) => Sse::default()
                .id(e.stream_seq.to_string())
                .event(e.kind)
                .data(e.payload),
            Out::Ended(why) => Sse::default().comment(why),
        };
        Some((Ok(sse), p))
    })
}

/// What a progress stream sends next.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// A journaled event.
    Event(Event),
    /// The last thing sent: why the stream ends before the rotation does.
    Ended(String),
}

/// What to send next, or `None` when the stream ends.
async fn next<J: JournalRead>(p: &mut Progress<J>) -> Option<Out> {
    loop {
        if let Some(e) = p.pending.pop_front() {
            p.sent = e.stream_seq;
            if is_terminal(&e.kind) {
                p.ended = true;
                p.pending.clear();
            }
            return Some(Out::Event(e));
        }
        if p.ended {
            return None;
        }
        // Seen before reading, so an event journaled after the read wakes the wait below.
        if let Some(appends) = &mut p.appends {
            appends.borrow_and_update();
        }
        match p.journal.stream_info(&p.rotation_id).await {
            Ok(Some(info)) if info.head_seq > p.sent => {
                match p.journal.read_stream(&p.rotation_id).await {
                    Ok(events) => {
                        p.pending = events
                            .into_iter()
                            .filter(|e| e.stream_seq > p.sent)
                            .collect();
                        continue;
                    }
                    Err(e) => return Some(ended(p, &format!("cannot read the journal: {e}"))),
                }
            }
            // Nothing new, and the rotation has ended: everything was sent.
            Ok(Some(info)) if info.status != "open" => return None,
            Ok(_) => {}
            Err(e) => return Some(ended(p, &format!("cannot read the journal: {e}"))),
        }
        tokio::select! {
            () = tokio::time::sleep(p.limits.poll) => {}
            () = appended(&mut p.appends) => {}
            () = p.deadline.as_mut() => {
                let message = format!(
                    "this stream has run {} s, the most it may; reconnect with Last-Event-ID: {} to go on",
                    p.limits.duration_max.as_secs(),
                    p.sent
                );
                return Some(ended(p, &message));
            }
            () = p.stop.as_mut() => {
                return Some(ended(p, "the daemon is stopping; reconnect with Last-Event-ID after it restarts"));
            }
        }
    }
}

/// Resolves when the daemon's runner journals an event; never without a runner to watch.
async fn appended(appends: &mut Option<watch::Receiver<u64>>) {
    let woken = match appends {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !woken {
        std::future::pending::<()>().await;
    }
}

/// A last comment saying why the stream ends early.
fn ended<J>(p: &mut Progress<J>, why: &str) -> Out {
    p.ended = true;
    Out::Ended(why.to_owned())
}

#[cfg(test)]
mod tests;
