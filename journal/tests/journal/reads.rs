//! Reads are async and leave the runtime that awaits them free. A SQLite read runs on the
//! runtime's blocking pool with a connection of the journal's read pool, except a short
//! read on a multi-threaded runtime (a stream's summary, a stream of a few events), which
//! runs in place; a PostgreSQL read runs on the journal's own runtime (`postgres.rs` holds
//! one up at the server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use rekey_journal::{Append, JournalRead, JournalScan, StreamFilter};

use crate::common::{
    Journal, Kind, Place, append_ok, assert_chain, block_on, manual_clock, numbered,
};

/// Streams written before each read, and events in the long one.
const STREAMS: u64 = 64;
const LONG_EVENTS: u64 = 1_000;

/// Which read is under test.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// `read_stream` of the long stream.
    Stream,
    /// `streams` of every stream.
    Streams,
    /// `read_streams` of every stream, in one call.
    Many,
}

/// A SQLite journal holding [`STREAMS`] streams, one of them `long` with [`LONG_EVENTS`]
/// events, written on a runtime of its own (so the runtime under test starts with an empty
/// blocking pool).
fn filled_sqlite() -> Place {
    let place = Place::new(Kind::Sqlite);
    let j = place.open(&manual_clock());
    block_on(async {
        let mut seq = 0;
        while seq < LONG_EVENTS {
            let events = (seq + 1..=(seq + 100).min(LONG_EVENTS))
                .map(numbered)
                .collect();
            seq = append_ok(&j, Append::new("long", seq, events))
                .await
                .last_seq;
        }
        for i in 1..STREAMS {
            append_ok(&j, Append::new(format!("s-{i:03}"), 0, vec![numbered(1)])).await;
        }
    });
    place
}

/// Awaits `read` of `j` on a current-thread runtime whose every started thread (all of them
/// blocking-pool threads: such a runtime has no workers) waits, before its first task, for a
/// gate that only a task spawned on the runtime ahead of the read opens. The read can then
/// complete only if it ran off the runtime's thread and left that thread free to run the
/// opener meanwhile; a read done on the runtime's thread completes before the opener runs.
fn read_behind_a_gate(j: Journal, read: Read) {
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let started: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
    let runtime = {
        let started = started.clone();
        tokio::runtime::Builder::new_current_thread()
            .on_thread_start(move || {
                started
                    .lock()
                    .expect("the started threads")
                    .push(std::thread::current().id());
                // Disconnected (the opener has run) or opened: go on. The deadline only keeps
                // a broken engine from hanging the test; it then fails below.
                let _ = gate
                    .lock()
                    .expect("the gate")
                    .recv_timeout(Duration::from_secs(10));
            })
            .build()
            .expect("building a runtime")
    };
    let runtime_thread = std::thread::current().id();
    let opened = Arc::new(AtomicU64::new(0));
    let (opened_when_read, outcome) = runtime.block_on(async {
        let opener = {
            let opened = opened.clone();
            tokio::spawn(async move {
                opened.fetch_add(1, Ordering::SeqCst);
                let _ = open.send(());
            })
        };
        let outcome = match read {
            Read::Stream => j.read_stream("long").await.map(|e| e.len() as u64),
            Read::Streams => j
                .streams(&StreamFilter::default())
                .await
                .map(|s| s.len() as u64),
            Read::Many => j
                .read_streams(&stream_ids())
                .await
                .map(|all| all.iter().map(|events| events.len() as u64).sum::<u64>()),
        };
        let opened_when_read = opened.load(Ordering::SeqCst);
        opener.await.expect("the opening task");
        (opened_when_read, outcome)
    });
    assert_eq!(
        opened_when_read, 1,
        "{read:?}: the read completed before a task spawned ahead of it ran: it held the \
         runtime's only thread"
    );
    let started = started.lock().expect("the started threads").clone();
    assert!(
        !started.is_empty() && !started.contains(&runtime_thread),
        "{read:?}: the read must run on a blocking-pool thread, not the runtime's own; \
         threads started: {started:?}"
    );
    let expected = match read {
        Read::Stream => LONG_EVENTS,
        Read::Streams => STREAMS,
        Read::Many => LONG_EVENTS + STREAMS - 1,
    };
    assert_eq!(
        outcome.expect("the read"),
        expected,
        "{read:?}: what was read"
    );
}

#[test]
fn a_sqlite_read_stream_leaves_a_current_thread_runtime_free() {
    let place = filled_sqlite();
    read_behind_a_gate(place.open(&manual_clock()), Read::Stream);
}

#[test]
fn a_sqlite_streams_scan_leaves_a_current_thread_runtime_free() {
    let place = filled_sqlite();
    read_behind_a_gate(place.open(&manual_clock()), Read::Streams);
}

#[test]
fn a_sqlite_read_of_many_streams_leaves_a_current_thread_runtime_free() {
    let place = filled_sqlite();
    read_behind_a_gate(place.open(&manual_clock()), Read::Many);
}

/// Which read of one stream is under test, and where it is awaited.
#[derive(Debug, Clone, Copy)]
enum One {
    Stream,
    Info,
}

#[derive(Debug, Clone, Copy)]
enum AwaitedBy {
    /// A task on one of the runtime's workers (a resume's drives).
    Task,
    /// The future given to the runtime's `block_on` (the CLI's commands).
    BlockOn,
}

/// A multi-threaded runtime with one worker, its only blocking-pool thread held busy (for
/// at most 10 s) until the sender releases it; the busy thread's outcome says whether it
/// was released (Ok) or gave up waiting.
type BusyPool = (
    tokio::runtime::Runtime,
    tokio::task::JoinHandle<Result<(), std::sync::mpsc::RecvTimeoutError>>,
    std::sync::mpsc::Sender<()>,
);

fn runtime_with_a_busy_blocking_pool() -> BusyPool {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("building a runtime");
    let (started, running) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let busy = runtime.spawn_blocking(move || {
        let _ = started.send(());
        released.recv_timeout(Duration::from_secs(10))
    });
    running.recv().expect("the blocking-pool thread started");
    (runtime, busy, release)
}

/// Awaits `read` of `j` (a short stream's events, or the long stream's summary) on a
/// multi-threaded runtime whose only blocking-pool thread is held busy until the read has
/// returned. The read completes only if it ran in place, needing no blocking-pool thread:
/// a read sent to the pool would wait until the busy thread gave up (after 10 s), and the
/// busy thread would then report it was never released.
fn read_one_while_the_blocking_pool_is_busy(j: Journal, read: One, by: AwaitedBy) {
    let (runtime, busy, release) = runtime_with_a_busy_blocking_pool();
    let j = Arc::new(j);
    let reading = {
        let j = j.clone();
        async move {
            match read {
                One::Stream => j.read_stream("s-001").await.map(|e| e.len() as u64),
                One::Info => j
                    .stream_info("long")
                    .await
                    .map(|i| i.map_or(0, |i| i.head_seq)),
            }
        }
    };
    let outcome = match by {
        AwaitedBy::Task => runtime
            .block_on(runtime.spawn(reading))
            .expect("the reading task"),
        AwaitedBy::BlockOn => runtime.block_on(reading),
    };
    let _ = release.send(());
    let busy = runtime.block_on(busy).expect("the busy thread");
    assert!(
        busy.is_ok(),
        "{read:?} awaited by {by:?}: the read waited for the blocking pool's only thread"
    );
    let expected = match read {
        One::Stream => 1,
        One::Info => LONG_EVENTS,
    };
    assert_eq!(
        outcome.expect("the read"),
        expected,
        "{read:?}: what was read"
    );
}

/// A stream longer than a short read goes to the blocking pool even on a multi-threaded
/// runtime: with the pool's only thread busy, its read is still waiting a while later, and
/// completes once the thread is released.
#[test]
fn a_sqlite_read_of_a_long_stream_on_a_multi_threaded_runtime_goes_to_the_blocking_pool() {
    let place = filled_sqlite();
    let j = Arc::new(place.open(&manual_clock()));
    let (runtime, busy, release) = runtime_with_a_busy_blocking_pool();
    let reading = {
        let j = j.clone();
        runtime.spawn(async move { j.read_stream("long").await })
    };
    // Read in place, 1,000 events take a few milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reading.is_finished(),
        "the long stream was read in place, on the runtime's worker"
    );
    let _ = release.send(());
    let events = runtime
        .block_on(reading)
        .expect("the reading task")
        .expect("the read");
    assert_eq!(events.len() as u64, LONG_EVENTS);
    assert_chain("long", &events);
    assert!(runtime.block_on(busy).expect("the busy thread").is_ok());
}

#[test]
fn a_sqlite_read_of_one_stream_on_a_multi_threaded_runtime_runs_in_place() {
    let place = filled_sqlite();
    for read in [One::Stream, One::Info] {
        for by in [AwaitedBy::Task, AwaitedBy::BlockOn] {
            read_one_while_the_blocking_pool_is_busy(place.open(&manual_clock()), read, by);
        }
    }
}

/// The ids of [`filled_sqlite`]'s streams, the long one first.
fn stream_ids() -> Vec<String> {
    std::iter::once("long".to_owned())
        .chain((1..STREAMS).map(|i| format!("s-{i:03}")))
        .collect()
}

/// `read_streams` answers each stream asked, in the order asked (a repeat twice, a stream
/// that does not exist as nothing), each exactly as `read_stream` reads it.
async fn many_streams_read_as_each_alone(kind: Kind) {
    let place = Place::new(kind);
    let j = place.open(&manual_clock());
    for (stream, n) in [("alpha", 3), ("bravo", 1), ("charlie", 5)] {
        crate::common::fill(&j, stream, n).await;
    }
    let asked: Vec<String> = ["charlie", "missing", "alpha", "bravo", "alpha"]
        .map(str::to_owned)
        .to_vec();
    let many = j.read_streams(&asked).await.expect("reading many streams");
    assert_eq!(many.len(), asked.len(), "one answer per stream asked");
    for (id, events) in asked.iter().zip(&many) {
        let alone = j.read_stream(id).await.expect("reading one stream");
        assert_eq!(events, &alone, "{id}: as read alone");
        assert!(
            events.iter().all(|e| &e.stream_id == id),
            "{id}: its own events"
        );
        assert_chain(id, events);
    }
    assert_eq!(
        many.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 0, 3, 1, 3]
    );
    assert!(
        j.read_streams(&[])
            .await
            .expect("reading no stream")
            .is_empty(),
        "no stream asked, none read"
    );
}

crate::common::on_both_engines!(many_streams_read_as_each_alone);

/// A journal opened read-only reads through connections opened as its first one was.
#[test]
fn a_read_only_sqlite_read_leaves_a_current_thread_runtime_free() {
    let place = filled_sqlite();
    read_behind_a_gate(place.open_audit(), Read::Stream);
}

/// More reads at once than the journal keeps connections: each waits its turn for one (or a
/// new one) and every one reads the whole stream, links checked.
#[test]
fn many_concurrent_sqlite_reads_each_read_the_whole_stream() {
    let place = filled_sqlite();
    for j in [place.open(&manual_clock()), place.open_audit()] {
        let j = Arc::new(j);
        crate::common::block_on_threaded(async {
            let reads: Vec<_> = (0..24)
                .map(|_| {
                    let j = j.clone();
                    tokio::spawn(async move { j.read_stream("long").await })
                })
                .collect();
            for read in reads {
                let events = read.await.expect("a reading task").expect("a read");
                assert_eq!(events.len() as u64, LONG_EVENTS, "every read is whole");
                assert_chain("long", &events);
            }
        });
    }
}
