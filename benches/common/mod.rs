//! Helpers shared by the journal benchmarks (`journal`, `ceiling`, `journal_postgres`): scratch files on the
//! workspace's file system, a saga step's event, streams appended one event at a time,
//! and the P1 single-writer group.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rekey_journal::{Append, JournalAppend, NewEvent, SqliteJournal};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use uuid::Uuid;

/// Starts a wall-clock timer. Real elapsed time is what a benchmark measures, so this is
/// the one place here that reads the real clock rather than an injected `Clock`.
#[allow(
    clippy::disallowed_methods,
    reason = "benchmarks measure real elapsed time"
)]
pub fn stopwatch() -> Instant {
    Instant::now()
}

/// A scratch directory on the workspace's file system (`REKEY_BENCH_DIR`, default
/// this workspace's `target/`), so `fsync` hits a real disk rather than a tmpfs.
pub fn scratch_dir() -> TempDir {
    let base = std::env::var_os("REKEY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).expect("creating the bench scratch base");
    tempfile::Builder::new()
        .prefix("rekey-bench-")
        .tempdir_in(&base)
        .expect("creating the bench scratch dir")
}

/// A saga step's event payload, about 150 bytes of canonical JSON.
pub fn payload(key: &str, attempt: u64) -> Value {
    json!({
        "step": "write_store",
        "attempt": attempt,
        "key": key,
        "provider": "aws_secrets_manager",
        "secret": "prod/payments/postgres",
    })
}

pub fn event(key: &str, attempt: u64) -> NewEvent {
    NewEvent::new("StepStarted", payload(key, attempt))
}

/// One stream a benchmark appends to, with the sequence its next append expects.
#[derive(Debug, Clone)]
pub struct Stream {
    pub id: String,
    pub key: String,
    pub seq: u64,
}

impl Stream {
    pub fn new(id: String) -> Self {
        Self {
            id,
            key: Uuid::now_v7().to_string(),
            seq: 0,
        }
    }

    /// Appends one event and waits until it is durable.
    pub async fn append_one<J: JournalAppend>(&mut self, journal: &J) {
        let append = Append::new(
            self.id.clone(),
            self.seq,
            vec![event(&self.key, self.seq + 1)],
        );
        let done = journal.append(append).await.expect("durable append");
        self.seq = done.last_seq;
    }
}

pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

pub fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// P1: one writer, one event per durable append, against a raw `write` + `fdatasync`
/// loop on a file in the same directory, as the group `group`; and, when given, against
/// `engine_alone`: one durable commit of the engine alone with one append's rows.
pub fn p1_single_writer(
    c: &mut Criterion,
    group: &str,
    measurement: Duration,
    engine_alone: Option<&mut dyn FnMut()>,
) {
    let dir = scratch_dir();
    let journal = SqliteJournal::open(dir.path().join("p1.journal")).expect("opening the journal");
    let rt = current_thread_runtime();
    let mut stream = Stream::new("p1-rotation".into());

    let mut record = payload(&stream.key, 1).to_string().into_bytes();
    record.push(b'\n');
    let mut raw = File::options()
        .create(true)
        .append(true)
        .open(dir.path().join("p1.raw"))
        .expect("opening the raw file");

    let mut group = c.benchmark_group(group);
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement);
    group.bench_function("journal_append_durable", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = stopwatch();
                for _ in 0..iters {
                    stream.append_one(&journal).await;
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("raw_write_fdatasync", |b| {
        b.iter(|| {
            raw.write_all(black_box(&record)).expect("raw write");
            raw.sync_data().expect("raw fdatasync");
        });
    });
    if let Some(commit) = engine_alone {
        group.bench_function("engine_alone_one_append_per_commit", |b| {
            b.iter(&mut *commit)
        });
    }
    group.finish();
}

/// Benchmarks `n` streams appending at once, one event each per iteration, as `name/n` in
/// `group`; the streams are named `{prefix}c{n}-{i}`.
pub fn bench_concurrent_streams<J: JournalAppend + Send + Sync + 'static>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    journal: &Arc<J>,
    (name, prefix): (&str, &str),
    n: usize,
) {
    let mut streams: Vec<Stream> = (0..n)
        .map(|i| Stream::new(format!("{prefix}c{n}-{i:04}")))
        .collect();
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|rounds| {
            let (elapsed, back) = rt.block_on(concurrent_streams(
                journal,
                std::mem::take(&mut streams),
                rounds,
            ));
            streams = back;
            elapsed
        });
    });
}

/// Each stream appends `rounds` events, one at a time, all streams concurrently.
async fn concurrent_streams<J: JournalAppend + Send + Sync + 'static>(
    journal: &Arc<J>,
    streams: Vec<Stream>,
    rounds: u64,
) -> (Duration, Vec<Stream>) {
    let start = stopwatch();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let journal = Arc::clone(journal);
            tokio::spawn(async move {
                for _ in 0..rounds {
                    stream.append_one(&*journal).await;
                }
                stream
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for task in tasks {
        back.push(task.await.expect("append task"));
    }
    (start.elapsed(), back)
}
