//! The HTTP plumbing shared by every fake service: a loopback listener whose connections a
//! handler can sever, and the spawn of one axum server on it.
//!
//! Why a custom listener: `Fault::ApplyThenDropResponse` must let the effect happen and then
//! leave the client with *no* response at all (the case where a write succeeded but the
//! client cannot know). A handler cannot express that through axum, so each connection
//! carries a kill switch ([`Conn`]) that the handler reaches through `ConnectInfo`; once set,
//! every write on that socket fails, hyper abandons the connection without sending a byte of
//! the response, and the client sees the connection close mid-exchange.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Binds a listener on 127.0.0.1 with an ephemeral port: the fake never listens elsewhere.
pub(crate) async fn bind() -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind a loopback port for a fake Azure service")
}

/// Serves `router` on `listener` until the returned task is aborted.
pub(crate) fn spawn(listener: TcpListener, router: Router) -> JoinHandle<()> {
    let service = router.into_make_service_with_connect_info::<Conn>();
    tokio::spawn(async move {
        axum::serve(Severable(listener), service)
            .await
            .expect("fake Azure server stopped");
    })
}

/// One accepted connection, as a handler sees it: lets the handler sever it.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    severed: Arc<AtomicBool>,
}

impl Conn {
    /// From now on every write to this connection fails, so the response being prepared is
    /// never sent and the client sees the connection close.
    pub(crate) fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, Severable>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Severable>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections can be severed by their handlers.
#[derive(Debug)]
pub(crate) struct Severable(TcpListener);

impl Listener for Severable {
    type Io = SeverableStream;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Accept errors on loopback are transient (e.g. too many open files): retry.
            if let Ok((stream, _)) = self.0.accept().await {
                let severed = Arc::new(AtomicBool::new(false));
                let io = SeverableStream {
                    inner: stream,
                    severed: Arc::clone(&severed),
                };
                return (io, Conn { severed });
            }
            tokio::task::yield_now().await;
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        // Only axum's logging asks; a fresh, unsevered handle is a fine answer.
        self.0.local_addr().map(|_| Conn {
            severed: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A TCP stream that refuses all writes once its [`Conn`] is severed.
#[derive(Debug)]
pub(crate) struct SeverableStream {
    inner: TcpStream,
    severed: Arc<AtomicBool>,
}

impl SeverableStream {
    fn check(&self) -> io::Result<()> {
        if self.severed.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fake Azure: response deliberately dropped",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for SeverableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SeverableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
