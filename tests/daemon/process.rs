//! The `rekey run` binary: killed with SIGKILL while busy, started again, it finishes every
//! open rotation exactly once and loses no completion notice; SIGTERM then stops it
//! cleanly. Under a small open-files limit, idle connections cannot lock it out, and
//! refused requests cannot flood its logs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::{TOKEN, client, config_text, get_json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A notification receiver on loopback: every JSON body posted to it, in order.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn spawn(dir: &Path, notify_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["run", "--config", "rekey.toml"])
        .current_dir(dir)
        .env("REKEY_TEST_API_TOKEN", TOKEN)
        .env("REKEY_TEST_NOTIFY_URL", notify_url)
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rekey run")
}

async fn wait_healthy(base: &str) {
    for _ in 0..400 {
        if let Ok(r) = client().get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("rekey run never became ready");
}

async fn secrets(base: &str) -> Vec<Value> {
    serde_json::from_value(get_json(base, "/v1/secrets").await).unwrap()
}

#[tokio::test]
async fn daemon_killed_while_busy_finishes_every_rotation_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 24;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut text = config_text(n, "300ms", r#"["sh", "-c", "cat >/dev/null; sleep 0.05"]"#);
    text.push_str(&format!(
        "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_API_TOKEN\"\nmax_concurrent_rotations = 4\n\n[notifications.ops]\nkind = \"webhook\"\nurl_env = \"REKEY_TEST_NOTIFY_URL\"\non = [\"completed\", \"compensated\"]\n"
    ));
    let (notify_url, notices) = receiver().await;
    std::fs::write(tmp.path().join("rekey.toml"), text).unwrap();

    let mut first = spawn(tmp.path(), &notify_url);
    wait_healthy(&base).await;
    for i in 0..n {
        let r = client()
            .post(format!("{base}/v1/secrets/s{i}/rotate"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn(tmp.path(), &notify_url);
    wait_healthy(&base).await;
    let mut rows = Vec::new();
    for _ in 0..800 {
        rows = secrets(&base).await;
        if rows
            .iter()
            .all(|r| r["open_rotation"].is_null() && r["last_ended"]["status"] == "completed")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), n);
    for r in &rows {
        assert_eq!(r["last_ended"]["status"], "completed", "{r}");
    }
    // Every rotation's completion is notified at least once, across the kill.
    let mut notified = std::collections::BTreeSet::new();
    for _ in 0..400 {
        notified = notices
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "completed")
            .filter_map(|n| n["rotation_id"].as_str().map(str::to_owned))
            .collect();
        if notified.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(notified.len(), n, "a completion notice was lost");
    let term = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = second.wait().unwrap();
    assert!(status.success(), "rekey run exited with {status}");

    // Each secret: one version written, disabled after grace; one rotation completed.
    let vault: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("vault.json")).unwrap()).unwrap();
    for i in 0..n {
        let versions = vault["secrets"][format!("s{i}")].as_array().unwrap();
        assert_eq!(versions.len(), 1, "s{i} written {} times", versions.len());
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["journal", "verify", "--journal", "journal.db", "--json"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let export = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["journal", "export", "--journal", "journal.db"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&export.stdout).into_owned();
    let completed = lines
        .lines()
        .filter(|l| l.contains("\"Completed\""))
        .count();
    assert_eq!(completed, n, "one Completed per rotation");
}

/// Bad daemon settings are explained before anything is opened: the journal file is not
/// created, and the message names the variable or the address and what to do.
#[test]
fn bad_daemon_settings_are_explained_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &str| {
        let mut text = config_text(1, "0s", r#"["true"]"#);
        text.push_str(extra);
        std::fs::write(tmp.path().join("rekey.toml"), text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", "--config", "rekey.toml"])
            .current_dir(tmp.path())
            .env_remove("REKEY_UNSET_TOKEN")
            .env("REKEY_SHORT_TOKEN", "k")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run("\n[daemon]\napi_token_env = \"REKEY_UNSET_TOKEN\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("REKEY_UNSET_TOKEN") && stderr.contains("not set"),
        "{stderr}"
    );
    for key in ["api_token_env", "webhook_secret_env", "webhook_token_env"] {
        let (code, stderr) = run(&format!("\n[daemon]\n{key} = \"REKEY_SHORT_TOKEN\"\n"));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("[daemon] {key} names REKEY_SHORT_TOKEN, whose value is too short: a token needs at least 16 characters (it has 1)")),
            "{stderr}"
        );
    }
    let (code, stderr) = run("\n[daemon]\nlisten = \"localhost\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not an address and port"), "{stderr}");
    let (code, stderr) = run("\n[daemon]\nnode_id = \"a b\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[daemon] node_id = \"a b\" must be 1 to 100 characters"),
        "{stderr}"
    );
    let (code, stderr) = run("\n[daemon]\nleader_ttl = \"1s\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[daemon] leader_ttl = \"1s\" must be 3s to 10m"),
        "{stderr}"
    );
    let (code, stderr) =
        run("\n[notifications.ops]\nkind = \"teams\"\nurl_env = \"REKEY_UNSET_TOKEN\"\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ops") && stderr.contains("REKEY_UNSET_TOKEN"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("journal.db").exists(),
        "the journal was created"
    );
}

/// Under a 64-file limit, far more idle, half-sent connections than descriptors leave
/// `/healthz` answering at once (idle connections make way); a burst of unauthenticated
/// webhook posts is refused with a bounded number of log lines.
#[tokio::test]
async fn the_daemon_stays_reachable_and_quiet_under_idle_connections_and_refused_posts() {
    use tokio::io::AsyncWriteExt;

    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut text = config_text(1, "0s", r#"["true"]"#);
    text.push_str(&format!(
        "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\nwebhook_secret_env = \"REKEY_TEST_HOOK_SECRET\"\n"
    ));
    std::fs::write(tmp.path().join("rekey.toml"), text).unwrap();
    let daemon = Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\" run --config rekey.toml"])
        .arg(env!("CARGO_BIN_EXE_rekey"))
        .current_dir(tmp.path())
        .env("REKEY_TEST_HOOK_SECRET", "hook-secret-0d5b-47aa")
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rekey run");
    let mut daemon = KillOnDrop(daemon);
    // Read as it comes, so a flood of logs cannot block the daemon on a full pipe.
    let mut pipe = daemon.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        text
    });
    wait_healthy(&base).await;

    let mut idle = Vec::new();
    for _ in 0..150 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1")
            .await
            .unwrap();
        idle.push(stream);
    }
    let probe = client()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        probe.is_ok_and(|p| p.status() == 200),
        "/healthz did not answer behind idle connections"
    );
    drop(idle);

    let started = tokio::time::Instant::now();
    let posts = 2_000;
    let c = client();
    let statuses: Vec<u16> = futures::stream::iter(0..posts)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/eventgrid?code=wrong");
            async move {
                let post = c.post(url).header("content-type", "application/json");
                let sent = post.timeout(Duration::from_secs(10)).body("[]").send();
                sent.await.map_or(0, |r| r.status().as_u16())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "every post is refused");
    let seconds = started.elapsed().as_secs();
    let term = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.0.wait().unwrap().success());
    let stderr = logs.join().unwrap();
    let refused = stderr
        .lines()
        .filter(|l| l.contains("without a valid credential"))
        .count() as u64;
    assert!(
        (1..=2 + seconds / 10).contains(&refused),
        "{refused} lines for {posts} refused posts in {seconds} s"
    );
    assert!(stderr.len() < 8 * 1024, "{} bytes of logs", stderr.len());
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node says which node it is and which leads since when: on `/readyz` (its own view)
/// and, from the journal, in `rekey status`.
#[tokio::test]
async fn readyz_and_status_say_which_node_leads() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut text = config_text(1, "0s", r#"["true"]"#);
    text.push_str(&format!(
        "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\nnode_id = \"solo-1\"\nleader_ttl = \"3s\"\n"
    ));
    std::fs::write(tmp.path().join("rekey.toml"), text).unwrap();
    let mut node = spawn(tmp.path(), "http://127.0.0.1:9/unused");
    wait_healthy(&base).await;
    let mut body = String::new();
    for _ in 0..400 {
        body = client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("leader: solo-1 (this node) since ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(body.starts_with("ready\nnode: solo-1\n"), "{body}");
    assert!(
        body.contains("leader: solo-1 (this node) since 20"),
        "{body}"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(["status", "--config", "rekey.toml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("daemon leader: node solo-1 since "), "{out}");
    node.kill().unwrap();
    node.wait().unwrap();
}
