//! `GET /v1/history` and `GET /v1/rotations/{id}/events` over real HTTP on 127.0.0.1,
//! against a daemon in process served by rekey's own server (its timeouts and connection
//! limit in force).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rekey::config::Config;
use rekey::daemon::history_api::{Appends, StreamLimits, Streams};
use rekey::daemon::{Daemon, Handle, Settings, Summary, api, serve};
use rekey::journal::{Clock, JournalRead, SqliteJournal, SystemClock};
use rekey::provider::SecretValue;
use rekey::runner::{Options, Runner};
use serde_json::Value;

const TOKEN: &str = "history-test-token-9b1e";

/// Two secrets, `s0` and `s1`, each with a grace period long enough to reconnect to
/// their progress mid-way.
const DAEMON_CONFIG: &str = r#"[journal]
path = "journal.db"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.pass]
kind = "command"
command = ["true"]

[secrets.s0]
rotator = "random"
stores = ["vault"]
verifiers = ["pass"]
grace = "1500ms"

[secrets.s1]
rotator = "random"
stores = ["vault"]
verifiers = ["pass"]
grace = "1500ms"
"#;

struct Running {
    handle: Handle,
    base: String,
    done: tokio::task::JoinHandle<Summary>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    journal: Arc<SqliteJournal>,
}

/// A daemon over `dir`'s `rekey.toml` (written from `text` unless `None`), served by
/// `serve::serve` with request timeouts far shorter than a rotation takes. Progress
/// streams poll only once a minute: they see the runner's events because it wakes them.
async fn start(dir: &Path, text: Option<&str>) -> Running {
    start_with(dir, text, 8).await
}

/// As [`start`], with at most `streams_max` progress streams at once.
async fn start_with(dir: &Path, text: Option<&str>, streams_max: usize) -> Running {
    if let Some(text) = text {
        std::fs::write(dir.join("rekey.toml"), text).unwrap();
    }
    let config = Config::load(&dir.join("rekey.toml")).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = config.build_providers(clock.clone(), &|_| None).unwrap();
    let journal =
        Arc::new(SqliteJournal::open_with_clock(&config.journal_path, clock.clone()).unwrap());
    let appends = Appends::default();
    let runner = Arc::new(Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock.clone(),
        Options {
            sleep: Some(rekey::runner::tokio_sleep()),
            observer: Some(Arc::new(appends.clone())),
            ..Options::new(format!("history-api-{}", uuid::Uuid::now_v7()), 5)
        },
    ));
    let (daemon, handle) = Daemon::new(
        runner,
        journal.clone(),
        Arc::new(config),
        clock,
        Settings::new(4),
    );
    let state = daemon.api_state(vec![SecretValue::new(TOKEN)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let streams = Streams::new(StreamLimits {
        poll: Duration::from_secs(60),
        keep_alive: Duration::from_millis(200),
        streams_max,
        ..StreamLimits::default()
    });
    let app = api::router_with(state, streams.waking_on(&appends));
    let limits = serve::Limits {
        header_read_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        connections_max: 16,
    };
    let stopping = handle.stopping();
    let server = tokio::spawn(serve::serve(listener, app, limits, stopping));
    let done = tokio::spawn(async move { daemon.run().await.expect("daemon run") });
    Running {
        handle,
        base,
        done,
        server,
        journal,
    }
}

impl Running {
    async fn stop(self) -> Summary {
        self.handle.signal();
        let summary = self.done.await.unwrap();
        self.server.await.unwrap().unwrap();
        summary
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One server-sent event: `id:`, `event:`, `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    id: u64,
    event: String,
    data: String,
}

/// Reads server-sent events from `response` until the stream ends or `limit` events came
/// (failing after 30 s). Comments (keep-alives) are counted.
async fn read_events(response: &mut reqwest::Response, limit: usize) -> (Vec<Sent>, usize) {
    tokio::time::timeout(
        Duration::from_secs(30),
        read_events_unbounded(response, limit),
    )
    .await
    .expect("the stream ended (or sent as many events as asked) within 30 s")
}

async fn read_events_unbounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> (Vec<Sent>, usize) {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let mut comments = 0;
    while events.len() < limit {
        let Some(chunk) = response.chunk().await.unwrap() else {
            break;
        };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if line.starts_with(':') {
                    comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                events.push(Sent { id, event, data });
            }
        }
    }
    (events, comments)
}

async fn subscribe(base: &str, id: &str, last: Option<u64>) -> reqwest::Response {
    let mut req = client()
        .get(format!("{base}/v1/rotations/{id}/events"))
        .bearer_auth(TOKEN);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last.to_string());
    }
    let response = req.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

async fn rotate(base: &str, secret: &str) -> String {
    let started: Value = client()
        .post(format!("{base}/v1/secrets/{secret}/rotate"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    started["rotation_id"].as_str().unwrap().to_owned()
}

/// What the journal holds for `id`, as the stream should send it.
async fn journaled(journal: &SqliteJournal, id: &str) -> Vec<Sent> {
    journal
        .read_stream(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| Sent {
            id: e.stream_seq,
            event: e.kind,
            data: e.payload,
        })
        .collect()
}

#[tokio::test]
async fn progress_streams_every_event_in_order_to_the_end_and_resumes_after_last_event_id() {
    let tmp = tempfile::tempdir().unwrap();
    let r = start(tmp.path(), Some(DAEMON_CONFIG)).await;

    // From the start: every event, in order, through the grace period (longer than the
    // server's request timeouts) to the terminal event; then the stream closes.
    let id = rotate(&r.base, "s0").await;
    let mut response = subscribe(&r.base, &id, None).await;
    let (seen, keep_alives) = read_events(&mut response, usize::MAX).await;
    let journal = journaled(&r.journal, &id).await;
    assert_eq!(
        seen, journal,
        "every journaled event, as journaled, in order"
    );
    assert_eq!(seen.first().unwrap().event, "Requested");
    assert!(seen.iter().any(|e| e.event == "GraceScheduled"));
    assert_eq!(seen.last().unwrap().event, "Completed");
    assert!(
        keep_alives > 0,
        "keep-alive comments while the grace period ran"
    );

    // Mid-way: three events, then the connection drops; the client reconnects with the
    // last id it saw and gets the rest, without a gap or a repeat.
    let id = rotate(&r.base, "s1").await;
    let mut first = subscribe(&r.base, &id, None).await;
    let (head, _) = read_events(&mut first, 3).await;
    drop(first);
    assert_eq!(head.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    let open: Value = client()
        .get(format!("{}/v1/rotations/{id}", r.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(open["phase"], "completed", "reconnected while it still ran");
    let mut second = subscribe(&r.base, &id, Some(head.last().unwrap().id)).await;
    let (tail, _) = read_events(&mut second, usize::MAX).await;
    let mut all = head;
    all.extend(tail);
    assert_eq!(all, journaled(&r.journal, &id).await);
    assert_eq!(all.last().unwrap().event, "Completed");

    // After the end, a resumed stream has nothing to send and closes.
    let mut after = subscribe(&r.base, &id, Some(all.last().unwrap().id)).await;
    assert_eq!(read_events(&mut after, usize::MAX).await.0, []);

    // No value in what was streamed.
    let vault: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("vault.json")).unwrap()).unwrap();
    let streamed: String = all.iter().chain(&seen).map(|e| e.data.as_str()).collect();
    for versions in vault["secrets"].as_object().unwrap().values() {
        for v in versions.as_array().unwrap() {
            assert!(!streamed.contains(v["value"].as_str().unwrap()));
        }
    }
    let summary = r.stop().await;
    assert_eq!(summary.completed, 2);
}

#[tokio::test]
async fn progress_refuses_without_the_token_unknown_rotations_and_bad_event_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let r = start(tmp.path(), Some(DAEMON_CONFIG)).await;
    let id = rotate(&r.base, "s0").await;
    let c = client();
    let events = format!("{}/v1/rotations/{id}/events", r.base);
    let none = c.get(&events).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = c.get(&events).bearer_auth("wrong-token-0000000").send();
    assert_eq!(wrong.await.unwrap().status(), 401);
    assert_eq!(
        c.get(format!("{}/v1/history", r.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    for unknown in ["0190aaaa-0000-7000-8000-000000000000", "lock:s0"] {
        let response = c
            .get(format!("{}/v1/rotations/{unknown}/events", r.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{unknown}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], format!("no rotation \"{unknown}\""));
    }
    let bad = c
        .get(&events)
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "three")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Last-Event-ID \"three\""),
        "{body}"
    );
    r.stop().await;
}

/// Streams beyond the limit are refused with 503 and Retry-After, not queued on a
/// connection; a slot frees when its client goes away.
#[tokio::test]
async fn progress_streams_beyond_the_limit_are_refused_until_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let long = DAEMON_CONFIG.replace("grace = \"1500ms\"", "grace = \"1h\"");
    let r = start_with(tmp.path(), Some(&long), 1).await;
    let id = rotate(&r.base, "s0").await;
    let first = subscribe(&r.base, &id, None).await;
    let events = format!("{}/v1/rotations/{id}/events", r.base);
    let refused = client()
        .get(&events)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("1 progress streams are open"),
        "{body}"
    );
    // The server finds the first client gone at its next keep-alive and frees its slot.
    drop(first);
    let mut accepted = false;
    for _ in 0..100 {
        let again = client()
            .get(&events)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if again.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "the slot of a closed stream is freed");
    r.stop().await;
}

/// A stream still open when the daemon stops ends, and the server stops.
#[tokio::test]
async fn a_live_progress_stream_ends_when_the_daemon_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let long = DAEMON_CONFIG.replace("grace = \"1500ms\"", "grace = \"1h\"");
    let r = start(tmp.path(), Some(&long)).await;
    let id = rotate(&r.base, "s0").await;
    let mut response = subscribe(&r.base, &id, None).await;
    let (seen, _) = read_events(&mut response, 1).await;
    assert_eq!(seen[0].event, "Requested");
    let reader = tokio::spawn(async move { read_events(&mut response, usize::MAX).await });
    let summary = tokio::time::timeout(Duration::from_secs(20), r.stop())
        .await
        .expect("the daemon and its server stop with a stream open");
    assert_eq!(summary.left_open, 1);
    let (rest, _) = reader.await.unwrap();
    assert!(rest.iter().all(|e| e.event != "Completed"));
}

/// `GET /v1/history` answers what `rekey history --json` prints, filter for filter, and
/// refuses bad filters as the CLI does.
#[test]
fn history_over_http_answers_what_the_cli_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = super::mixed_journal(dir, false);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let r = start(dir, None).await;
        let c = client();
        let get = |query: &'static str| {
            let c = c.clone();
            let url = format!("{}/v1/history{query}", r.base);
            async move {
                let response = c.get(url).bearer_auth(TOKEN).send().await.unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap(),
                )
            }
        };
        for (query, args, expected) in [
            ("", &[][..], &ids[..]),
            ("?secret=API", &["--secret", "API"][..], &ids[..1]),
            ("?app=1111*", &["--app", "1111*"][..], &ids[2..]),
            ("?tenant=contoso", &["--tenant", "contoso"][..], &ids[2..]),
            (
                "?status=compensated",
                &["--status", "compensated"][..],
                &ids[1..2],
            ),
            (
                "?status=completed&trigger=manual",
                &["--status", "completed", "--trigger", "manual"][..],
                &ids[..1],
            ),
            ("?since=1h", &["--since", "1h"][..], &ids[..]),
            ("?until=1h", &["--until", "1h"][..], &[][..]),
        ] {
            let (status, body) = get(query).await;
            assert_eq!(status, 200, "{query}: {body}");
            let listed: Vec<&str> = body["rotations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["rotation_id"].as_str().unwrap())
                .collect();
            assert_eq!(listed, expected, "{query}");
            let (_, cli) = super::history(dir, args);
            assert_eq!(
                body["rotations"],
                Value::from(cli),
                "{query}: the CLI's rows"
            );
        }
        for (query, said) in [
            (
                "?status=done",
                "status \"done\": unknown; valid: completed, compensated, open, failed",
            ),
            (
                "?trigger=cron",
                "trigger \"cron\": unknown; valid: manual, schedule, near_expiry, bulk",
            ),
            ("?since=soon", "since \"soon\": not an RFC 3339 time"),
            ("?colour=red", "unknown field `colour`"),
        ] {
            let (status, body) = get(query).await;
            assert_eq!(status, 400, "{query}");
            assert!(
                body["error"].as_str().unwrap().contains(said),
                "{query}: {body}"
            );
        }
        r.stop().await;
    });
}

#[test]
fn openapi_documents_history_and_progress() {
    let doc: Value = serde_json::from_str(api::OPENAPI).unwrap();
    for path in ["/v1/history", "/v1/rotations/{id}/events"] {
        assert_eq!(
            doc["paths"][path]["get"]["security"][0]["bearer"],
            serde_json::json!([]),
            "{path} is documented, behind the bearer token"
        );
    }
    let row = &doc["components"]["schemas"]["HistoryRow"]["properties"];
    for field in [
        "rotation_id",
        "requested_at_ms",
        "finished_at_ms",
        "secret",
        "lock_key",
        "app_id",
        "tenant",
        "trigger",
        "actor",
        "joined",
        "items_updated",
        "new_expiry_ms",
        "outcome",
        "phase",
        "last_error",
    ] {
        assert!(
            row[field].is_object(),
            "HistoryRow.{field} is not documented"
        );
    }
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `rekey run` binary: a client follows a rotation to its end; SIGTERM with a stream
/// still open ends the stream and the daemon exits cleanly, without waiting out the
/// stream's time limit.
#[tokio::test]
async fn rekey_run_streams_progress_and_stops_with_a_stream_open() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let text = DAEMON_CONFIG.replace(
        "verifiers = [\"pass\"]\ngrace = \"1500ms\"\n\n[secrets.s1]\nrotator = \"random\"\nstores = [\"vault\"]\nverifiers = [\"pass\"]\ngrace = \"1500ms\"",
        "verifiers = [\"pass\"]\ngrace = \"1500ms\"\n\n[secrets.s1]\nrotator = \"random\"\nstores = [\"vault\"]\nverifiers = [\"pass\"]\ngrace = \"1h\"",
    );
    assert!(text.contains("grace = \"1h\""));
    let text = format!(
        "{text}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\napi_token_env = \"REKEY_TEST_API_TOKEN\"\n"
    );
    std::fs::write(tmp.path().join("rekey.toml"), text).unwrap();
    let mut daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", "--config", "rekey.toml"])
            .current_dir(tmp.path())
            .env("REKEY_TEST_API_TOKEN", TOKEN)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rekey run"),
    );
    let mut ready = false;
    for _ in 0..400 {
        if let Ok(r) = client().get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "rekey run never became ready");

    let id = rotate(&base, "s0").await;
    let mut response = subscribe(&base, &id, None).await;
    let (seen, _) = read_events(&mut response, usize::MAX).await;
    let journal = SqliteJournal::open_read_only(tmp.path().join("journal.db")).unwrap();
    assert_eq!(seen, journaled(&journal, &id).await);
    assert_eq!(seen.last().unwrap().event, "Completed");

    let open = rotate(&base, "s1").await;
    let mut response = subscribe(&base, &open, None).await;
    assert_eq!(read_events(&mut response, 1).await.0[0].event, "Requested");
    let term = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let rest = tokio::spawn(async move { read_events(&mut response, usize::MAX).await });
    let mut exited = None;
    for _ in 0..400 {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = exited.expect("rekey run exits within 10 s of SIGTERM with a stream open");
    assert!(status.success(), "rekey run exited with {status}");
    let (rest, _) = rest.await.unwrap();
    assert!(rest.iter().all(|e| e.event != "Completed"));
}
