//! Criterion benchmarks of the SQLite journal (`rekey-journal`).
//!
//! * `p1_single_writer`: one writer, one event per durable append, against a raw
//!   `write` + `fdatasync` loop on a file in the same directory (goal: journal at least
//!   0.85x the raw rate).
//! * `p2_group_commit`: 64 and 256 concurrent streams, each awaiting its own appends, so
//!   the writer thread folds them into shared commits; against the same 64 streams
//!   appended one at a time (one commit per event). Goal: 200,000 events/s.
//! * `replay`: a journal of `REKEY_BENCH_REPLAY_EVENTS` events (default 1,000,000) in
//!   streams of 100 events, scanned with `read_after` in pages of 10,000 and read back
//!   stream by stream with `read_stream`. Goal: 1,000,000 events/s.
//!
//! Every figure is reported by criterion in elements (events) per second. Scratch files
//! live under `REKEY_BENCH_DIR` (default: this workspace's `target/`), so `fsync` hits the
//! same file system as the workspace rather than a tmpfs.
//!
//! Run: `cargo bench --bench journal` (add `-- p1` to run one group).

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rekey_journal::{
    APPEND_EVENTS_MAX, Append, JournalAppend, JournalRead, JournalScan, SqliteJournal,
};
use tempfile::TempDir;
use tokio::task::JoinSet;
use uuid::Uuid;

#[allow(
    dead_code,
    reason = "shared with the ceiling bench, which uses more of it"
)]
mod common;
use common::{
    Stream, bench_concurrent_streams, current_thread_runtime, event, multi_thread_runtime,
    scratch_dir, stopwatch,
};

/// Events in each replay stream.
const REPLAY_STREAM_EVENTS: u64 = 100;
/// Events per append while building the replay journal. Each stream is written in
/// several appends, round-robin across all streams, so a stream's events are spread
/// through the file as they are in a live journal rather than stored contiguously.
const REPLAY_BUILD_CHUNK: u64 = 25;
/// Appends in flight while building (the writer folds up to 1,024 into one commit).
const REPLAY_BUILD_IN_FLIGHT: usize = 2048;
/// Page size of the `read_after` scan.
const REPLAY_PAGE: usize = 10_000;

fn p1_single_writer(c: &mut Criterion) {
    common::p1_single_writer(c, "p1_single_writer", Duration::from_secs(5), None);
}

fn p2_group_commit(c: &mut Criterion) {
    let dir = scratch_dir();
    let journal =
        Arc::new(SqliteJournal::open(dir.path().join("p2.journal")).expect("opening the journal"));
    let rt = multi_thread_runtime();

    let mut group = c.benchmark_group("p2_group_commit");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    for n in [64usize, 256] {
        // One iteration: every stream appends one event.
        bench_concurrent_streams(&mut group, &rt, &journal, ("concurrent_streams", "p2-"), n);
    }

    // The same 64 streams, round-robin from one task: every append is its own commit.
    let mut streams: Vec<Stream> = (0..64)
        .map(|i| Stream::new(format!("p2-s64-{i:04}")))
        .collect();
    let mut next = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("one_commit_per_event", 64), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = stopwatch();
                for _ in 0..iters {
                    streams[next].append_one(&*journal).await;
                    next = (next + 1) % streams.len();
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Events in the replay journal, from `REKEY_BENCH_REPLAY_EVENTS` (rounded to whole streams).
fn replay_events() -> u64 {
    let wanted = std::env::var("REKEY_BENCH_REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse::<u64>().ok())
        .unwrap_or(1_000_000);
    wanted.div_ceil(REPLAY_STREAM_EVENTS).max(1) * REPLAY_STREAM_EVENTS
}

/// A journal built once for the replay benchmarks.
struct ReplayJournal {
    _dir: TempDir,
    journal: Arc<SqliteJournal>,
    stream_ids: Vec<String>,
    events: u64,
}

fn build_replay_journal(events: u64) -> ReplayJournal {
    const _: () = assert!(REPLAY_BUILD_CHUNK as usize <= APPEND_EVENTS_MAX);
    const _: () = assert!(REPLAY_STREAM_EVENTS.is_multiple_of(REPLAY_BUILD_CHUNK));
    let dir = scratch_dir();
    let journal = Arc::new(
        SqliteJournal::open(dir.path().join("replay.journal")).expect("opening the journal"),
    );
    let streams: Vec<(String, String)> = (0..events / REPLAY_STREAM_EVENTS)
        .map(|i| (format!("replay-{i:07}"), Uuid::now_v7().to_string()))
        .collect();
    let start = stopwatch();
    current_thread_runtime().block_on(async {
        for round in 0..REPLAY_STREAM_EVENTS / REPLAY_BUILD_CHUNK {
            let mut in_flight = JoinSet::new();
            for (id, key) in &streams {
                if in_flight.len() >= REPLAY_BUILD_IN_FLIGHT {
                    in_flight.join_next().await;
                }
                let first = round * REPLAY_BUILD_CHUNK;
                let append = Append::new(
                    id.clone(),
                    first,
                    (first + 1..=first + REPLAY_BUILD_CHUNK)
                        .map(|seq| event(key, seq))
                        .collect(),
                );
                let journal = Arc::clone(&journal);
                in_flight.spawn(async move {
                    journal
                        .append(append)
                        .await
                        .expect("building the replay journal");
                });
            }
            while let Some(done) = in_flight.join_next().await {
                done.expect("append task");
            }
        }
    });
    let elapsed = start.elapsed();
    eprintln!(
        "replay: built {events} events in {} streams in {:.1} s ({:.0} events/s)",
        streams.len(),
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    ReplayJournal {
        _dir: dir,
        journal,
        stream_ids: streams.into_iter().map(|(id, _)| id).collect(),
        events,
    }
}

fn replay(c: &mut Criterion) {
    let events = replay_events();
    // Built on first use, so a filtered run (`-- p1`) does not pay for it.
    let built: OnceCell<ReplayJournal> = OnceCell::new();
    let get = || built.get_or_init(|| build_replay_journal(events));

    let mut group = c.benchmark_group("replay");
    group
        .throughput(Throughput::Elements(events))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    // Reads are async: each pass is awaited on a runtime made once, outside the measured loop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    group.bench_function(format!("read_after_pages_{REPLAY_PAGE}"), |b| {
        let r = get();
        b.iter(|| {
            rt.block_on(async {
                let (mut after, mut seen) = (0, 0u64);
                loop {
                    let page = r
                        .journal
                        .read_after(after, REPLAY_PAGE)
                        .await
                        .expect("read_after");
                    let Some(last) = page.last() else { break };
                    after = last.global_seq;
                    seen += page.len() as u64;
                    black_box(&page);
                }
                assert_eq!(seen, r.events, "read_after saw every event");
            })
        });
    });
    group.bench_function("read_stream_every_stream", |b| {
        let r = get();
        b.iter(|| {
            rt.block_on(async {
                let mut seen = 0u64;
                for id in &r.stream_ids {
                    let stream = r.journal.read_stream(id).await.expect("read_stream");
                    seen += stream.len() as u64;
                    black_box(&stream);
                }
                assert_eq!(seen, r.events, "read_stream saw every event");
            })
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = p1_single_writer, p2_group_commit, replay
}
criterion_main!(benches);
