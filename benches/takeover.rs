//! Leader takeover after a node is killed: two `rekey run` nodes (the real binary) share one
//! journal; the leader is SIGKILLed and the time until the other says, on `/readyz`, that
//! it leads is measured. The killed node is started again as the follower for the next
//! iteration, so the lead goes back and forth. Each iteration prints its time; the end
//! prints the median. Goal: median ≤ `leader_ttl` + 1 s.
//!
//! Run: `cargo bench --bench takeover`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use rekey::journal::{Clock, SystemClock};

/// Milliseconds on the system clock.
fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// The nodes' `[daemon] leader_ttl` (the smallest allowed).
const LEADER_TTL: Duration = Duration::from_secs(3);
/// `/readyz` is polled this often.
const POLL: Duration = Duration::from_millis(10);
const NODES: [&str; 2] = ["node-a", "node-b"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(node: &str, port: u16) -> String {
    format!(
        r#"[journal]
path = "journal.db"

[daemon]
listen = "127.0.0.1:{port}"
node_id = "{node}"
leader_ttl = "{}s"

[providers.random]
kind = "random"

[providers.vault]
kind = "local_vault"
path = "vault.json"

[providers.check]
kind = "command"
command = ["true"]

[secrets.api]
rotator = "random"
stores = ["vault"]
verifiers = ["check"]
grace = "1s"
"#,
        LEADER_TTL.as_secs()
    )
}

/// `/readyz` of the node on `port`, or nothing while it does not answer.
fn readyz(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    s.write_all(request.as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn leads(node: &str, port: u16) -> bool {
    readyz(port).is_some_and(|r| r.contains(&format!("leader: {node} (this node)")))
}

struct Node {
    name: &'static str,
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, dir: &Path) {
        let child = Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(["run", "--config"])
            .arg(dir.join(format!("{}.toml", self.name)))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rekey run");
        self.child = Some(child);
        let deadline = now_ms() + 30_000;
        while readyz(self.port).is_none() {
            assert!(now_ms() < deadline, "{} never answered", self.name);
            std::thread::sleep(POLL);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn takeover(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|name| {
            let port = free_port();
            std::fs::write(dir.path().join(format!("{name}.toml")), config(name, port)).unwrap();
            Node {
                name,
                port,
                child: None,
            }
        })
        .collect();
    for n in &mut nodes {
        n.start(dir.path());
    }
    let mut times = Vec::new();
    let mut group = c.benchmark_group("takeover");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("leader killed, other node leads", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Whoever leads now (one of them does once the lease is free).
                let deadline = now_ms() + 4 * LEADER_TTL.as_millis() as i64;
                let leader = loop {
                    if let Some(i) = (0..2).find(|&i| leads(nodes[i].name, nodes[i].port)) {
                        break i;
                    }
                    assert!(now_ms() < deadline, "no node leads");
                    std::thread::sleep(POLL);
                };
                let other = 1 - leader;
                let killed = now_ms();
                nodes[leader].kill();
                while !leads(nodes[other].name, nodes[other].port) {
                    assert!(
                        now_ms() - killed < 4 * LEADER_TTL.as_millis() as i64,
                        "{} never took over",
                        nodes[other].name
                    );
                    std::thread::sleep(POLL);
                }
                let took = Duration::from_millis((now_ms() - killed) as u64);
                eprintln!(
                    "takeover: {} → {} in {took:?}",
                    nodes[leader].name, nodes[other].name
                );
                times.push(took);
                total += took;
                nodes[leader].start(dir.path());
            }
            total
        });
    });
    group.finish();
    times.sort();
    if let Some(median) = times.get(times.len() / 2) {
        eprintln!(
            "takeover: median {median:?} over {} kills (leader_ttl {LEADER_TTL:?}; goal ≤ {:?})",
            times.len(),
            LEADER_TTL + Duration::from_secs(1)
        );
    }
}

criterion_group!(benches, takeover);
criterion_main!(benches);
