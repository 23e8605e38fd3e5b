//! The daemon's HTTP server: HTTP/1.1 on a listener it is given, until a shutdown future
//! resolves. Everything a client can hold is bounded, so idle or half-sent requests can
//! never lock the probes, the API or the webhook out:
//!
//! - a request's head must arrive within `header_read_timeout` (this also closes idle
//!   keep-alive connections), and its body within `body_timeout` of its head (then 408);
//! - at most `connections_max` connections are open, kept under half the open-files limit.
//!   A connection beyond it pushes out the oldest one that has no request in progress (it
//!   is reading a head or idle, so nothing is lost); when every one is busy, the newcomer
//!   gets 503. When the process runs out of file descriptors, an idle connection is
//!   closed to make room as well.
//!
//! It owns connections only; routes live in `api.rs` and `triggers/eventgrid.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::telemetry::LogThrottle;

/// What one client may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this of its head.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub connections_max: usize,
}

/// Default of `[daemon] header_read_timeout`.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default of `[daemon] body_timeout`.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default of `[daemon] connections_max`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            body_timeout: BODY_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// At most one warning about refused connections per this period.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after an accept error that is not the
/// client's (and no idle connection could be closed to recover).
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// The answer to a connection beyond the limit while every open one is busy.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 47\r\nconnection: close\r\n\r\n{\"error\":\"too many connections; retry shortly\"}";

/// One open connection, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    /// Accept order: the oldest idle connection is the first to go.
    seq: u64,
    /// Requests in progress (head read, response not yet fully written).
    busy: Arc<AtomicUsize>,
    abort: AbortHandle,
    /// Aborted to make room; its descriptor is freed when its task is joined.
    closing: bool,
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, lets requests in progress finish and closes idle connections.
///
/// # Errors
/// None today: accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections_max = within_open_files(limits.connections_max, open_files_limit());
    if connections_max < limits.connections_max {
        warn!(
            connections_max,
            configured = limits.connections_max,
            "[daemon] connections_max lowered to half the open-files limit (ulimit -n), leaving the rest to the journal and providers"
        );
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut conns: HashMap<tokio::task::Id, Conn> = HashMap::new();
    let refused = LogThrottle::new(REFUSED_LOG_EVERY);
    let mut seq = 0u64;
    let mut paused: Option<Pin<Box<tokio::time::Sleep>>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                conns.remove(&id);
                // A descriptor was freed: accept again at once.
                paused = None;
            }
            () = async { paused.as_mut().expect("guarded").await }, if paused.is_some() => {
                paused = None;
            }
            accepted = listener.accept(), if paused.is_none() => match accepted {
                Ok((stream, _)) => {
                    let open = conns.values().filter(|c| !c.closing).count();
                    if open >= connections_max && !close_oldest_idle(&mut conns) {
                        if let Some(left_out) = refused.admit() {
                            warn!(connections_max, left_out, "connection refused: every connection is busy ({left_out} more refused since the last warning)");
                        }
                        let _ = stream.try_write(BUSY_RESPONSE);
                        continue;
                    }
                    seq += 1;
                    let busy = Arc::new(AtomicUsize::new(0));
                    let task = serve_connection(
                        &http,
                        stream,
                        app.clone(),
                        limits.body_timeout,
                        busy.clone(),
                        stop_rx.clone(),
                    );
                    let abort = tasks.spawn(task);
                    conns.insert(abort.id(), Conn { seq, busy, abort, closing: false });
                }
                Err(e) if is_client_error(&e) => debug!(error = %e, "a connection failed before it was accepted"),
                Err(e) => {
                    // Out of descriptors: one is freed when a closing connection's task is
                    // joined, so close an idle one unless some are closing already. Accepting
                    // resumes when a task is joined, or after a while.
                    let freeing = out_of_descriptors(&e)
                        && (conns.values().any(|c| c.closing) || close_oldest_idle(&mut conns));
                    if freeing {
                        debug!(error = %e, "out of file descriptors; closing an idle connection");
                    } else if let Some(left_out) = refused.admit() {
                        warn!(error = %e, left_out, "cannot accept connections now; retrying");
                    }
                    paused = Some(Box::pin(tokio::time::sleep(ACCEPT_RETRY)));
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Closes the oldest open connection with no request in progress; `false` if there is
/// none. It stays listed, as closing, until its task is joined.
fn close_oldest_idle(conns: &mut HashMap<tokio::task::Id, Conn>) -> bool {
    let oldest = conns
        .values_mut()
        .filter(|c| !c.closing && c.busy.load(Ordering::Acquire) == 0)
        .min_by_key(|c| c.seq);
    let Some(conn) = oldest else {
        return false;
    };
    debug!("closing the oldest idle connection to make room for a new one");
    conn.abort.abort();
    conn.closing = true;
    true
}

/// One connection until it ends, or until the server stops (then it finishes the request
/// in progress, if any, and closes).
fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    app: Router,
    body_timeout: Duration,
    busy: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let guard = Busy::start(busy.clone());
        let app = app.clone();
        async move {
            let request =
                request.map(|body| Body::new(Deadline::new(Body::new(body), body_timeout)));
            let Ok(response) = app.oneshot(request).await;
            // The connection counts as busy until the whole response is written.
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _busy: guard,
                })
            }))
        }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection closed with an error");
        }
    }
}

/// Counts a request in progress on its connection while alive.
#[derive(Debug)]
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it is written (or dropped).
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive by a deadline; after it, reading fails with an
/// [`std::io::ErrorKind::TimedOut`] error (the webhook answers 408).
struct Deadline {
    inner: Body,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(std::io::Error::other)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let message = format!(
                "the request body did not arrive within {} s ([daemon] body_timeout)",
                self.timeout.as_secs_f64()
            );
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                message,
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether reading a request body failed because it did not arrive in time.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A failure of one incoming connection, not of the listener.
fn is_client_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// EMFILE or ENFILE: this process, or the system, has no file descriptor left.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// `configured`, lowered to half the open-files limit `soft` when known, so that sockets
/// never take the descriptors the journal, providers and notifications need.
pub fn within_open_files(configured: usize, soft: Option<u64>) -> usize {
    let half = soft.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    configured.min(half).max(1)
}

/// The soft limit on open files of this process (`ulimit -n`), where the system says.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_stays_under_half_the_open_files() {
        assert_eq!(within_open_files(256, None), 256);
        assert_eq!(within_open_files(256, Some(1024)), 256);
        assert_eq!(within_open_files(256, Some(64)), 32);
        assert_eq!(within_open_files(256, Some(1)), 1);
    }

    #[test]
    fn the_open_files_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
