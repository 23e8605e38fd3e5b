//! The SQLite journal against its engine's ceiling, in one run.
//!
//! * `ceiling_group_commit`: SQLite alone with the journal's row shape — the journal's
//!   own schema (tables, indices, triggers), WAL, `synchronous=FULL` — committing
//!   1,000 appends per transaction, each one cached `INSERT` of a ~150-byte event and one
//!   cached `UPDATE` of its stream's head, round-robin over 256 streams; beside it the
//!   journal's group commit with 64 and 256 concurrent streams, each awaiting its own
//!   one-event appends (goal: at least 0.6x the engine at 256 streams).
//! * `ceiling_p1`: one durable append at a time against raw `write` + `fdatasync` of a
//!   growing file in the same directory (goal: at least 0.9x), and against the engine
//!   alone committing one append's rows (an event and its stream's head) per transaction:
//!   the most any SQLite journal of this row shape could reach.
//!
//! Figures are events per second (criterion's elements). Scratch files live under
//! `REKEY_BENCH_DIR` (default: this workspace's `target/`).
//!
//! Run: `cargo bench --bench ceiling`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rekey_journal::SqliteJournal;
use rusqlite::{Connection, params};

mod common;
use common::{bench_concurrent_streams, multi_thread_runtime, payload, scratch_dir, stopwatch};

/// Appends per engine transaction.
const ROWS_PER_TX: u64 = 1_000;
/// Streams the engine's appends go round-robin over.
const ENGINE_STREAMS: usize = 256;

/// The engine alone: the journal's schema, written with plain cached statements.
struct Engine {
    conn: Connection,
    streams: Vec<(String, i64)>,
    payload: String,
}

impl Engine {
    fn open(path: &std::path::Path) -> Self {
        // The journal creates the file with its schema and durability settings.
        drop(SqliteJournal::open(path).expect("creating the journal schema"));
        let conn = Connection::open(path).expect("opening the engine connection");
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .expect("making the engine durable");
        let streams: Vec<(String, i64)> = (0..ENGINE_STREAMS)
            .map(|i| (format!("engine-{i:04}"), 0))
            .collect();
        {
            let tx = conn.unchecked_transaction().expect("begin");
            for (id, _) in &streams {
                tx.execute(
                    "INSERT INTO streams (stream_id, subject, status, created_at_ms,
                                          updated_at_ms, head_seq, head_hash)
                     VALUES (?1, 'bench', 'open', 0, 0, 0, ?2)",
                    params![id, &[0u8; 32][..]],
                )
                .expect("creating an engine stream");
            }
            tx.commit().expect("commit");
        }
        Self {
            conn,
            streams,
            payload: payload("0190c6a2-5f0e-7000-8000-000000000000", 1).to_string(),
        }
    }

    /// One durable transaction of `rows` appends.
    fn commit_rows(&mut self, now_ms: i64, rows: usize) {
        let tx = self.conn.unchecked_transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (stream_id, stream_seq, kind, schema_version,
                                         recorded_at_ms, payload, prev_hash, hash)
                     VALUES (?1, ?2, 'StepStarted', 1, ?3, ?4, ?5, ?6)",
                )
                .expect("prepare insert");
            let mut head = tx
                .prepare_cached(
                    "UPDATE streams SET updated_at_ms = ?2, head_seq = ?3, head_hash = ?4
                     WHERE stream_id = ?1",
                )
                .expect("prepare update");
            let n = self.streams.len();
            for i in 0..rows {
                let (id, seq) = &mut self.streams[i % n];
                let id = id.as_str();
                *seq += 1;
                let hash = [(*seq % 251) as u8; 32];
                insert
                    .execute(params![
                        id,
                        *seq,
                        now_ms,
                        self.payload,
                        &[1u8; 32][..],
                        &hash[..]
                    ])
                    .expect("insert");
                head.execute(params![id, now_ms, *seq, &hash[..]])
                    .expect("update");
            }
        }
        tx.commit().expect("commit");
    }
}

fn ceiling_group_commit(c: &mut Criterion) {
    let dir = scratch_dir();
    let mut engine = Engine::open(&dir.path().join("engine.journal"));
    let journal = Arc::new(
        SqliteJournal::open(dir.path().join("group.journal")).expect("opening the journal"),
    );
    let rt = multi_thread_runtime();

    let mut group = c.benchmark_group("ceiling_group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    group.throughput(Throughput::Elements(ROWS_PER_TX));
    group.bench_function(
        BenchmarkId::new("sqlite_alone_rows_per_tx", ROWS_PER_TX),
        |b| {
            b.iter_custom(|iters| {
                let start = stopwatch();
                for i in 0..iters {
                    engine.commit_rows(i as i64, ROWS_PER_TX as usize);
                }
                start.elapsed()
            });
        },
    );
    for n in [64usize, 256] {
        // One iteration: every stream appends one event.
        bench_concurrent_streams(
            &mut group,
            &rt,
            &journal,
            ("journal_concurrent_streams", "ceiling-"),
            n,
        );
    }
    group.finish();
}

fn ceiling_p1(c: &mut Criterion) {
    let dir = scratch_dir();
    let mut engine = Engine::open(&dir.path().join("p1-engine.journal"));
    let mut now_ms = 0;
    let mut one_append = || {
        now_ms += 1;
        engine.commit_rows(now_ms, 1);
    };
    common::p1_single_writer(
        c,
        "ceiling_p1",
        Duration::from_secs(3),
        Some(&mut one_append),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = ceiling_group_commit, ceiling_p1
}
criterion_main!(benches);
