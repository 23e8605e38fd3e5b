//! Resume at scale, over a generated SQLite journal of 10,000 open rotations in varied
//! phases (`support/open_rotations.rs`):
//!
//! * `resume/first_call`: from opening the journal to the first provider call of the
//!   resume (`runner::resume::drive_open`, 16 at once, as `rekey resume`) (goal: 0.5 s);
//!   beside it `first_call_after_listing`, the same drives started only once the whole
//!   open set is listed (`Runner::open_rotations`, as before).
//! * `fold`: every rotation folded into its state, in events per second, over the global
//!   feed (`read_after`, pages of 10,000) and over per-stream reads, one call each
//!   (`Runner::load` awaited in turn by a task on a multi-threaded runtime, as a resume's
//!   drives; `per_stream_current_thread`: each awaited alone on a current-thread runtime)
//!   and 256 streams a call, the next call under way while a chunk is folded
//!   (`history::read_ahead`, as `rekey history`) (goal: 1M events/s each), beside the
//!   ceilings measured in the same run: a raw SQLite scan of the same table's rows, every
//!   column read, nothing decoded, and the same raw reads one stream at a time by its index
//!   (`ceiling_raw_per_stream`); and, with nothing folded, what the journal's reading
//!   costs alone: `read_after_unfolded` and `per_stream_batched_unfolded`.
//!
//! Run: `cargo bench --bench resume`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rekey::history::read_ahead;
use rekey::journal::{Clock, JournalRead, JournalScan, SqliteJournal, SystemClock};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::lock::is_rotation_stream;
use rekey::runner::resume::{Quiet, drive_open};
use rekey::runner::{Options, Runner};
use rekey::saga::{Rotation, RotationEvent, apply};

#[allow(dead_code, reason = "this bench uses a few of the shared helpers")]
mod common;
use common::{multi_thread_runtime, scratch_dir, stopwatch};

#[path = "support/open_rotations.rs"]
mod open_rotations;
use open_rotations::{Local, PROVIDER, generate};

/// Open rotations in the generated journal.
const ROTATIONS: usize = 10_000;
/// Drives at once, as `rekey resume`.
const RESUME_LIMIT: usize = 16;

/// The generated journal's files, copied afresh for each resume.
struct Template {
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: u64,
}

fn template() -> Template {
    let dir = scratch_dir();
    let path = dir.path().join("open.journal");
    let rt = multi_thread_runtime();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(SqliteJournal::open_with_clock(&path, clock).unwrap());
    let generated = rt.block_on(generate(journal.clone(), ROTATIONS, 256));
    drop(journal);
    println!(
        "generated {} open rotations, {} events",
        generated.rotations, generated.events
    );
    Template {
        _dir: dir,
        path,
        events: generated.events,
    }
}

/// Copies the template journal (with its WAL, if one is left) to `to`.
fn copy_journal(from: &Path, to: &Path) {
    for suffix in ["", "-wal"] {
        let src = PathBuf::from(format!("{}{suffix}", from.display()));
        if src.exists() {
            std::fs::copy(&src, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

fn runner(journal: Arc<SqliteJournal>, local: Arc<Local>) -> Arc<Runner<SqliteJournal>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = Registry::new().with_roles(PROVIDER, roles!(local));
    Arc::new(Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("resume-bench", 1),
    ))
}

/// How a resume starts its drives.
#[derive(Clone, Copy)]
enum Start {
    /// Each as soon as it is found (`drive_open`, as `rekey resume` and `rekey run`).
    AsFound,
    /// After the whole open set is listed (`Runner::open_rotations`), for comparison.
    AfterListing,
}

fn first_call(c: &mut Criterion, t: &Template) {
    let rt = multi_thread_runtime();
    let scratch = scratch_dir();
    let mut g = c.benchmark_group("resume");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, start) in [
        ("first_call", Start::AsFound),
        ("first_call_after_listing", Start::AfterListing),
    ] {
        first_call_by(&mut g, &rt, &scratch, t, name, start);
    }
    g.finish();
}

fn first_call_by(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    scratch: &tempfile::TempDir,
    t: &Template,
    name: &str,
    start: Start,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = scratch.path().join(format!("resume-{i}.journal"));
                copy_journal(&t.path, &path);
                let local = Arc::new(Local::default());
                local.hold.store(true, std::sync::atomic::Ordering::Relaxed);
                total += rt.block_on(async {
                    let started = stopwatch();
                    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                    let journal = Arc::new(SqliteJournal::open_with_clock(&path, clock).unwrap());
                    let runner = runner(journal, local.clone());
                    let resume = tokio::spawn(async move {
                        match start {
                            Start::AsFound => {
                                drive_open(&runner, RESUME_LIMIT, Arc::new(Quiet), |open| {
                                    let (runner, id) = (runner.clone(), open.rotation_id.clone());
                                    async move { runner.drive(&id).await }
                                })
                                .await
                                .map(|_| ())
                            }
                            Start::AfterListing => {
                                let limit = Arc::new(tokio::sync::Semaphore::new(RESUME_LIMIT));
                                let mut tasks = tokio::task::JoinSet::new();
                                for id in runner.open_rotations().await? {
                                    let (runner, limit) = (runner.clone(), limit.clone());
                                    tasks.spawn(async move {
                                        let _permit = limit.acquire_owned().await;
                                        runner.drive(&id).await
                                    });
                                }
                                tasks.join_all().await;
                                Ok(())
                            }
                        }
                    });
                    local.first_call.notified().await;
                    let elapsed = started.elapsed();
                    resume.abort();
                    let _ = resume.await;
                    elapsed
                });
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            total
        })
    });
}

/// Folds rotation events into per-rotation states; returns how many it folded.
fn fold_page(states: &mut States, page: &[rekey::journal::Event]) -> u64 {
    let mut folded = 0;
    for e in page {
        if !is_rotation_stream(&e.stream_id) {
            continue;
        }
        let event = RotationEvent::from_journal(&e.kind, &e.payload).unwrap();
        if !states.contains_key(&e.stream_id) {
            states.insert(e.stream_id.clone(), None);
        }
        let state = states.get_mut(&e.stream_id).unwrap();
        *state = Some(apply(state.take(), &event).unwrap());
        folded += 1;
    }
    folded
}

/// A plain read-only SQLite connection to the journal's file, for the raw ceilings.
fn raw_connection(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Every column of an event row, as the journal stores it.
const RAW_SELECT: &str = "SELECT global_seq, stream_id, stream_seq, kind, schema_version, \
     recorded_at_ms, payload, prev_hash, hash FROM events";

/// Reads every column of every row of `rows` into owned values; returns how many rows.
fn raw_rows(mut rows: rusqlite::Rows<'_>) -> u64 {
    let mut n = 0;
    while let Some(row) = rows.next().unwrap() {
        let _: (i64, String, i64, String, i64, i64, String, Vec<u8>, Vec<u8>) = (
            row.get(0).unwrap(),
            row.get(1).unwrap(),
            row.get(2).unwrap(),
            row.get(3).unwrap(),
            row.get(4).unwrap(),
            row.get(5).unwrap(),
            row.get(6).unwrap(),
            row.get(7).unwrap(),
            row.get(8).unwrap(),
        );
        n += 1;
    }
    n
}

/// Each rotation's state by its id (`None` only while its first event is folded).
type States = HashMap<String, Option<Rotation>>;

fn fold(c: &mut Criterion, t: &Template) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(SqliteJournal::open_with_clock(&t.path, clock).unwrap());
    let ids: Vec<String> = (0..ROTATIONS)
        .map(|i| open_rotations::rotation(i).0)
        .collect();
    let runner = runner(journal.clone(), Arc::new(Local::default()));
    let mut g = c.benchmark_group("fold");
    g.sample_size(10).throughput(Throughput::Elements(t.events));
    g.bench_function("ceiling_raw_scan", |b| {
        let conn = raw_connection(&t.path);
        b.iter(|| {
            let mut stmt = conn
                .prepare_cached(&format!("{RAW_SELECT} ORDER BY global_seq"))
                .unwrap();
            assert_eq!(raw_rows(stmt.query([]).unwrap()), t.events);
        })
    });
    // Reads are async: each pass is awaited on a runtime made once, outside the measured loop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("read_after", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut states = States::with_capacity(ROTATIONS);
                let (mut after, mut folded) = (0, 0);
                loop {
                    let page = journal.read_after(after, 10_000).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.global_seq;
                    folded += fold_page(&mut states, &page);
                }
                assert_eq!(states.len(), ROTATIONS);
                folded
            })
        })
    });
    // The same reads with nothing folded: what the journal's reading costs alone.
    g.bench_function("read_after_unfolded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (mut after, mut read) = (0, 0);
                loop {
                    let page = journal.read_after(after, 10_000).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.global_seq;
                    read += page.len();
                }
                assert_eq!(read as u64, t.events);
                read
            })
        })
    });
    // Per-stream reads fold the rotation streams only (one lock event per rotation less).
    let rotation_events = t.events - ROTATIONS as u64;
    g.throughput(Throughput::Elements(rotation_events));
    // The engine alone reading each rotation's stream by its index, one query a stream,
    // every column read, nothing decoded: the ceiling of the per-stream lines.
    g.bench_function("ceiling_raw_per_stream", |b| {
        let conn = raw_connection(&t.path);
        b.iter(|| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "{RAW_SELECT} WHERE stream_id = ?1 ORDER BY stream_seq"
                ))
                .unwrap();
            let read: u64 = ids
                .iter()
                .map(|id| raw_rows(stmt.query([id]).unwrap()))
                .sum();
            assert_eq!(read, rotation_events);
        })
    });
    // As a resume's drives load them: by a task on a multi-threaded runtime (as the CLI's).
    let mt = multi_thread_runtime();
    let shared_ids = Arc::new(ids.clone());
    g.bench_function("per_stream", |b| {
        b.iter(|| {
            let (runner, ids) = (runner.clone(), shared_ids.clone());
            let loads = mt.spawn(async move {
                let mut folded = 0;
                for id in ids.iter() {
                    folded += runner.load(id).await.unwrap().1;
                }
                folded
            });
            mt.block_on(loads).unwrap()
        })
    });
    // The same loads, each awaited alone on a current-thread runtime.
    g.bench_function("per_stream_current_thread", |b| {
        b.iter(|| {
            ids.iter()
                .map(|id| rt.block_on(runner.load(id)).unwrap().1)
                .sum::<u64>()
        })
    });
    // The same per-stream reads, 256 streams a call, the next read while one chunk is
    // folded (`history::read_ahead`, as `rekey history`).
    g.bench_function("per_stream_batched", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut states = States::with_capacity(ROTATIONS);
                let mut folded = 0;
                read_ahead(journal.as_ref(), &ids, |_, read| {
                    for events in read {
                        folded += fold_page(&mut states, &events);
                    }
                    Ok(())
                })
                .await
                .unwrap();
                assert_eq!(states.len(), ROTATIONS);
                folded
            })
        })
    });
    // The same per-stream reads, 256 streams a call, with nothing folded: what reading
    // them costs alone.
    g.bench_function("per_stream_batched_unfolded", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut read = 0;
                for chunk in ids.chunks(256) {
                    for events in journal.read_streams(chunk).await.unwrap() {
                        read += events.len();
                    }
                }
                assert_eq!(read as u64, rotation_events);
                read
            })
        })
    });
    g.finish();
}

fn resume(c: &mut Criterion) {
    let t = template();
    fold(c, &t);
    first_call(c, &t);
}

criterion_group!(benches, resume);
criterion_main!(benches);
