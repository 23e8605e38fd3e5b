//! A real crash test, on each durable engine. This test binary re-executes itself as a child
//! process that appends to a journal from several tasks (so requests are group-committed) and
//! prints every acknowledged append; the parent SIGKILLs it at a random moment, then checks
//! that every acknowledged event survived, chains, and that nothing exported earlier was lost.
//! Repeated on one journal (a file, or a schema of the test server, which the parent keeps
//! running), so each round also recovers from the previous round's kill.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use rekey_journal::{Append, Error, Head, JournalAppend, JournalRead};
use serde_json::json;

use crate::common::{
    Journal, Kind, Place, SplitMix, assert_chain, assert_intact, event, on_both_engines_sync,
};

/// Set only in the child process: `sqlite:<path>` or `postgres:<schema>` (the server's port
/// is passed as [`crate::pg_server::PORT_ENV`]).
const CHILD_ENV: &str = "REKEY_CRASH_CHILD";
/// The round number, so the child's payloads are unique across rounds.
const ROUND_ENV: &str = "REKEY_CRASH_ROUND";
/// Overrides the number of kills (default [`KILLS_DEFAULT`]).
const KILLS_ENV: &str = "REKEY_CRASH_KILLS";
/// Replays a failing run.
const SEED_ENV: &str = "REKEY_CRASH_SEED";
const KILLS_DEFAULT: u64 = 50;
/// The child's test name, as libtest knows it.
const CHILD_TEST: &str = "crash::crash_child_process_entry_point";
/// Streams the child writes; two writer tasks per stream, so they also conflict.
const STREAMS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
const WRITERS: usize = 6;
/// A child nobody kills (its parent died) stops by itself after this many appends per writer
/// (seconds of work, far beyond the at most 80 ms it runs before the kill).
const CHILD_APPENDS_MAX: u64 = 20_000;

/// NOT A TEST: the entry point of the child process that `sigkilled_writers_lose_no_
/// acknowledged_event` spawns. Run by the harness like any test, it returns at once.
#[test]
fn crash_child_process_entry_point() {
    let Ok(place) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("the child needs its round number");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child: building a runtime");
    rt.block_on(async move {
        let j = Arc::new(child_place(&place).open_real_time());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(child_writer(j.clone(), round, w)))
            .collect();
        for w in writers {
            w.await.expect("child: a writer panicked");
        }
    });
}

/// Appends to its stream until killed; prints `ack <stream> <first> <last> <nonce>` only once
/// `append` has returned Ok, as one write of one complete line.
/// The place the parent named in [`CHILD_ENV`].
fn child_place(named: &str) -> Place {
    let (kind, at) = named.split_once(':').expect("child: kind:place");
    let mut place = Place::new(if kind == "sqlite" {
        Kind::Sqlite
    } else {
        Kind::Postgres
    });
    match place.kind {
        Kind::Sqlite => place.path = at.into(),
        Kind::Postgres => place.schema = at.to_owned(),
    }
    place
}

/// What the child is told to open.
fn child_env(place: &Place) -> String {
    match place.kind {
        Kind::Sqlite => format!("sqlite:{}", place.path.display()),
        Kind::Postgres => format!("postgres:{}", place.schema),
    }
}

async fn child_writer(j: Arc<Journal>, round: u64, writer: usize) {
    let stream = STREAMS[writer % STREAMS.len()];
    for n in 0..CHILD_APPENDS_MAX {
        let head = j
            .stream_info(stream)
            .await
            .expect("child: stream_info")
            .map_or(0, |i| i.head_seq);
        let nonce = format!("{round}.{writer}.{n}");
        let events = (0..1 + n % 3)
            .map(|k| event("CrashProbe", json!({ "nonce": nonce, "k": k })))
            .collect();
        match j.append(Append::new(stream, head, events)).await {
            Ok(a) => {
                let line = format!("ack {stream} {} {} {nonce}\n", a.first_seq, a.last_seq);
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).expect("child: stdout");
                out.flush().expect("child: flushing stdout");
            }
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("child: append to {stream} failed: {e}"),
        }
    }
}

/// Kills the child if the parent panics, so no writer outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One acknowledged append, as the child printed it.
#[derive(Debug)]
struct Ack {
    stream: String,
    first: u64,
    last: u64,
    nonce: String,
}

/// Parses a complete (newline-terminated) `ack` line; anything else the harness printed is
/// ignored, and a line cut off by the kill was never acknowledged.
fn parse_ack(line: &str) -> Option<Ack> {
    let line = line.strip_suffix('\n')?;
    let mut f = line.strip_prefix("ack ")?.split(' ');
    let ack = Ack {
        stream: f.next()?.to_owned(),
        first: f.next()?.parse().ok()?,
        last: f.next()?.parse().ok()?,
        nonce: f.next()?.to_owned(),
    };
    f.next().is_none().then_some(ack)
}

/// Runs one child, kills it `delay` after its first acknowledgement, and returns every
/// acknowledgement it printed.
fn run_and_kill(place: &Place, round: u64, delay: Duration) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("locating the test binary");
    let mut command = Command::new(exe);
    if place.kind == Kind::Postgres {
        command.env(
            crate::pg_server::PORT_ENV,
            crate::pg_server::server().port.to_string(),
        );
    }
    let child = command
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, child_env(place))
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut stderr = child.0.stderr.take().expect("child stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut acks = Vec::new();
    while acks.is_empty() {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => acks.extend(parse_ack(&line)),
            Err(e) => {
                let _ = child.0.kill();
                let _ = child.0.wait();
                panic!(
                    "round {round}: the child acknowledged nothing ({e}); did `{CHILD_TEST}` \
                     run? its stderr:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
        }
    }
    std::thread::sleep(delay); // the crash point, not synchronisation
    child.0.kill().expect("killing the child");
    let status = child.0.wait().expect("reaping the child");
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child must die by SIGKILL mid-write, not exit ({status}); stderr:\n{}",
        stderr.join().unwrap_or_default()
    );
    acks.extend(lines.iter().filter_map(|l| parse_ack(&l)));
    acks
}

/// Reopens the journal as a restarted rekey would and checks every acknowledged event is
/// there, every stream chains, and nothing exported after earlier rounds went missing.
/// Returns the heads to export for the next round.
fn check_recovered(
    place: &Place,
    acked: &BTreeMap<(String, u64), String>,
    exported: &[Head],
    context: &str,
) -> Vec<Head> {
    let j = place.open_real_time();
    let mut streams = BTreeMap::new();
    for stream in STREAMS {
        let events = crate::common::block_on(j.read_stream(stream))
            .unwrap_or_else(|e| panic!("{context}: reading {stream}: {e}"));
        assert_chain(stream, &events);
        streams.insert(stream.to_owned(), events);
    }
    for ((stream, seq), nonce) in acked {
        let e = streams[stream.as_str()]
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("{context}: acknowledged event {stream}#{seq} was lost"));
        let payload = e.payload_json().expect("payload parses");
        assert_eq!(
            payload["nonce"].as_str(),
            Some(nonce.as_str()),
            "{context}: {stream}#{seq} is not the event that was acknowledged"
        );
    }
    let report = crate::common::block_on(j.verify(Some(exported))).expect("verify");
    assert_intact(&report, context);
    crate::common::block_on(j.heads()).expect("heads")
}

on_both_engines_sync!(sigkilled_writers_lose_no_acknowledged_event);

/// The crash test proper (see the module doc). `REKEY_CRASH_KILLS=N` raises the number of
/// kills; `REKEY_CRASH_SEED` replays the kill points of a failed run.
fn sigkilled_writers_lose_no_acknowledged_event(kind: Kind) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // inside a child: only the entry point runs
    }
    let kills: u64 = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().build_hasher().finish());
    println!("crash test ({kind:?}): {kills} kills, seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = SplitMix(seed);
    let place = Place::new(kind);
    let mut acked: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut exported = Vec::new();
    for round in 0..kills {
        let delay = Duration::from_millis(5 + rng.below(76));
        let context = format!("seed {seed}, round {round} (killed {delay:?} after the first ack)");
        let acks = run_and_kill(&place, round, delay);
        for ack in acks {
            assert!(
                STREAMS.contains(&ack.stream.as_str()) && ack.first >= 1 && ack.first <= ack.last,
                "{context}: malformed ack {ack:?}"
            );
            for seq in ack.first..=ack.last {
                let earlier = acked.insert((ack.stream.clone(), seq), ack.nonce.clone());
                assert!(
                    earlier.is_none(),
                    "{context}: {}#{seq} was acknowledged twice ({earlier:?}, then {}): an \
                     acknowledged event was lost and its sequence reused",
                    ack.stream,
                    ack.nonce
                );
            }
        }
        exported = check_recovered(&place, &acked, &exported, &context);
    }
    let events: u64 = exported.iter().map(|h| h.seq).sum();
    println!(
        "crash test ({kind:?}): {kills} kills, {} acknowledged events, {events} in the journal",
        acked.len()
    );
    assert!(
        acked.len() as u64 >= kills,
        "every round acknowledges at least one event"
    );
}
