//! The daemon's HTTP server on a loopback socket: a half-sent head or body is closed after
//! its timeout; idle connections beyond the limit make way for new ones; when every
//! connection is busy a newcomer gets 503.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rekey::daemon::serve::{Limits, serve};
use rekey::provider::SecretValue;
use rekey::triggers::eventgrid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};

use super::client;

/// Serves `app` on a loopback port within `limits`; the sender stops the server.
async fn serving(app: Router, limits: Limits) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn probes() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}

/// A connection that sent `bytes` and nothing more.
async fn half_sent(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection; panics if it does not
/// close it within `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1";

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _stop) = serving(probes(), limits).await;
    let mut slow = half_sent(addr, HALF_HEAD).await;
    let answer = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // An idle connection that sent nothing is closed too.
    let mut idle = half_sent(addr, b"").await;
    read_until_closed(&mut idle, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let hook = eventgrid::WebhookConfig {
        secret: Some(SecretValue::new("hook-secret-5e1d")),
        ..eventgrid::WebhookConfig::default()
    };
    let (sink, _deliveries) = mpsc::channel(1);
    let app = eventgrid::router(hook, sink).unwrap();
    let limits = Limits {
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _stop) = serving(app, limits).await;
    let head = "POST /eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nx-rekey-webhook-secret: hook-secret-5e1d\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[{\"id\":";
    let mut slow = half_sent(addr, head.as_bytes()).await;
    let answer = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
}

#[tokio::test]
async fn idle_connections_make_way_and_a_newcomer_gets_503_when_all_are_busy() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let hold = {
        let release = release.clone();
        get(move || {
            let (entered_tx, release) = (entered_tx.clone(), release.clone());
            async move {
                let released = release.notified();
                let _ = entered_tx.send(());
                released.await;
                "released\n"
            }
        })
    };
    let app = probes().route("/hold", hold);
    let limits = Limits {
        connections_max: 4,
        ..Limits::default()
    };
    let (addr, _stop) = serving(app, limits).await;

    // Far more half-sent heads than the limit, and the header timeout far away: the
    // probe still answers at once, as the oldest idle connections make way.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(half_sent(addr, HALF_HEAD).await);
    }
    let probe = client()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the probe answers despite the idle connections");
    assert_eq!(probe.status(), 200);
    for stream in &mut idle[..36] {
        read_until_closed(stream, Duration::from_secs(5)).await;
    }

    // Four requests in progress fill the limit; a fifth connection is refused with 503.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(half_sent(addr, b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await);
        entered.recv().await.unwrap();
    }
    let mut fifth = half_sent(addr, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let refused = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    release.notify_waiters();
    for stream in &mut held {
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
