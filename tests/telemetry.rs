//! Traces leave rekey only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: then each rotation's
//! spans reach the collector with its `rotation_id`, and never a secret value.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests a collector received: (path, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A loopback OTLP/HTTP collector that records every request (path and body).
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Received = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read the head, then exactly Content-Length bytes of body.
                let (head_end, length) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push((path, buf[head_end..].to_vec()));
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

fn demo(dir: &Path, endpoint: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.args(["demo", "--dir", "d", "--grace-secs", "0"])
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("REKEY_CONFIG");
    if let Some(e) = endpoint {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", e);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rotation = stdout
        .split_whitespace()
        .skip_while(|w| *w != "(rotation")
        .nth(1)
        .unwrap()
        .trim_end_matches(");")
        .to_owned();
    let value = std::fs::read_to_string(dir.join("d/app.env")).unwrap();
    (
        rotation,
        value.trim().trim_start_matches("API_KEY=").to_owned(),
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_only_when_an_endpoint_is_set() {
    let (url, seen) = collector().await;

    let quiet = tempfile::tempdir().unwrap();
    let q = quiet.path().to_owned();
    tokio::task::spawn_blocking(move || demo(&q, None))
        .await
        .unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "exported without an endpoint"
    );

    let loud = tempfile::tempdir().unwrap();
    let l = loud.path().to_owned();
    let endpoint = url.clone();
    let (rotation, value) = tokio::task::spawn_blocking(move || demo(&l, Some(&endpoint)))
        .await
        .unwrap();
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no spans reached {url}");
    assert!(
        requests.iter().all(|(path, _)| path == "/v1/traces"),
        "{requests:?}"
    );
    let body: Vec<u8> = requests.into_iter().flat_map(|(_, b)| b).collect();
    assert!(contains(&body, "rotation_id"), "no rotation span");
    assert!(
        contains(&body, &rotation),
        "the rotation id {rotation} is not in the spans"
    );
    // The trace id is the rotation id's 16 bytes, so every process reports into one trace.
    let id = uuid::Uuid::parse_str(&rotation).unwrap();
    assert!(
        body.windows(16).any(|w| w == id.as_bytes()),
        "the trace id is not the rotation id"
    );
    assert_eq!(value.len(), 64);
    assert!(!contains(&body, &value), "a secret value was exported");
}
