//! Criterion benchmarks of the PostgreSQL journal against PostgreSQL itself, on one server
//! started by the bench on 127.0.0.1 (`fsync=on`, `synchronous_commit=on`):
//!
//! * `pg_single_append`: one writer, one event per durable append, against PostgreSQL's
//!   own one-row `INSERT` + `COMMIT` into a table of the journal's event row shape.
//! * `pg_group_commit`: 64 and 256 concurrent streams, each awaiting its own appends, so
//!   the journal's writer folds them into shared transactions; against the ceiling of a
//!   plain `INSERT … SELECT unnest(…)` of as many rows of the same shape in one transaction
//!   (goal: the journal at least 0.5x the ceiling). What the journal's global counter row
//!   costs is measured apart: the same batch also locking and advancing a counter row
//!   (`unnest_batch_counter_row`), and four writers committing a quarter each at once,
//!   without and with the counter row (`unnest_writers_*`).
//!
//! The rotation figures on both engines are in `benches/saga.rs` (`rotations`).
//! Without PostgreSQL installed (`initdb` not found) the groups are skipped with a notice.
//!
//! Run: `cargo bench --bench journal_postgres`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rekey::journal::{PostgresConfig, PostgresJournal};
use tokio::runtime::Runtime;
use uuid::Uuid;

#[path = "support/pg.rs"]
mod pg;

#[allow(
    dead_code,
    reason = "shared with the SQLite journal benches, which use more of it"
)]
mod common;
use common::{Stream, bench_concurrent_streams, event, stopwatch};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// A plain client in schema `raw`, holding a table of the journal's event row shape (same
/// columns, keys and unique constraints; no triggers).
async fn raw_client(config: &PostgresConfig) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connecting to the bench server");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS raw;
             CREATE TABLE IF NOT EXISTS raw.events (
                global_seq int8 PRIMARY KEY, event_id bytea NOT NULL UNIQUE,
                stream_id text COLLATE \"C\" NOT NULL, stream_seq int8 NOT NULL,
                kind text NOT NULL, schema_version int8 NOT NULL, recorded_at_ms int8 NOT NULL,
                payload bytea NOT NULL, prev_hash bytea NOT NULL, hash bytea NOT NULL,
                UNIQUE (stream_id, stream_seq));
             CREATE TABLE IF NOT EXISTS raw.meta (id int4 PRIMARY KEY, last_global_seq int8 NOT NULL);
             INSERT INTO raw.meta VALUES (1, 0) ON CONFLICT DO NOTHING;
             SET synchronous_commit = on;",
        )
        .await
        .expect("creating the raw table");
    client
}

/// Rows for the raw table: `n` events starting at global sequence `first`.
struct RawRows {
    globals: Vec<i64>,
    ids: Vec<Vec<u8>>,
    streams: Vec<String>,
    seqs: Vec<i64>,
    kinds: Vec<&'static str>,
    versions: Vec<i64>,
    times: Vec<i64>,
    payloads: Vec<Vec<u8>>,
    prevs: Vec<Vec<u8>>,
    hashes: Vec<Vec<u8>>,
}

impl RawRows {
    fn new(first: i64, n: usize) -> Self {
        let payload = event("0190f0e0-0000-7000-8000-000000000000", 1)
            .payload
            .to_string()
            .into_bytes();
        let globals: Vec<i64> = (first..first + n as i64).collect();
        Self {
            ids: globals
                .iter()
                .map(|g| Uuid::from_u64_pair(0, *g as u64).as_bytes().to_vec())
                .collect(),
            streams: globals.iter().map(|g| format!("raw-{g}")).collect(),
            seqs: vec![1; n],
            kinds: vec!["StepStarted"; n],
            versions: vec![1; n],
            times: vec![1_700_000_000_000; n],
            payloads: vec![payload; n],
            prevs: vec![vec![0u8; 32]; n],
            hashes: vec![vec![7u8; 32]; n],
            globals,
        }
    }
}

const RAW_INSERT: &str = "INSERT INTO raw.events (global_seq, event_id, stream_id, stream_seq,
        kind, schema_version, recorded_at_ms, payload, prev_hash, hash)
    SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::int8[], $5::text[],
        $6::int8[], $7::int8[], $8::bytea[], $9::bytea[], $10::bytea[])";

/// One transaction inserting `rows` with one `INSERT … SELECT unnest(…)`, committed durably;
/// with `counter_row`, the transaction also locks and advances a global counter row from its
/// first statement to its commit, as the journal's batches do.
async fn raw_batch(client: &mut tokio_postgres::Client, rows: &RawRows, counter_row: bool) {
    let tx = client.transaction().await.expect("BEGIN");
    if counter_row {
        tx.execute(
            "SELECT last_global_seq FROM raw.meta WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .expect("locking the counter row");
    }
    tx.execute(
        RAW_INSERT,
        &[
            &rows.globals,
            &rows.ids,
            &rows.streams,
            &rows.seqs,
            &rows.kinds,
            &rows.versions,
            &rows.times,
            &rows.payloads,
            &rows.prevs,
            &rows.hashes,
        ],
    )
    .await
    .expect("INSERT");
    if counter_row {
        tx.execute(
            "UPDATE raw.meta SET last_global_seq = last_global_seq + $1 WHERE id = 1",
            &[&(rows.globals.len() as i64)],
        )
        .await
        .expect("advancing the counter row");
    }
    tx.commit().await.expect("COMMIT");
}

fn open_journal(config: &PostgresConfig, schema: &str) -> Arc<PostgresJournal> {
    Arc::new(PostgresJournal::open(config.clone(), schema).expect("opening the journal"))
}

fn pg_single_append(c: &mut Criterion) {
    let Some(config) = pg::config() else { return };
    let rt = runtime();
    let journal = open_journal(&config, "bench_single");
    let mut raw = rt.block_on(raw_client(&config));
    let mut stream = Stream::new("single".into());
    let mut next_global = 1_000_000_000i64;

    let mut group = c.benchmark_group("pg_single_append");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("journal_append_durable", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = stopwatch();
                for _ in 0..iters {
                    stream.append_one(&*journal).await;
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("insert_commit_one_row", |b| {
        b.iter_custom(|iters| {
            let rows: Vec<RawRows> = (0..iters)
                .map(|i| RawRows::new(next_global + i as i64, 1))
                .collect();
            next_global += iters as i64;
            rt.block_on(async {
                let start = stopwatch();
                for r in &rows {
                    raw_batch(&mut raw, r, false).await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Concurrent writers (nodes) in the multi-writer ceilings.
const WRITERS: usize = 4;

fn pg_group_commit(c: &mut Criterion) {
    let Some(config) = pg::config() else { return };
    let rt = runtime();
    let journal = open_journal(&config, "bench_group");
    let mut raw = rt.block_on(raw_client(&config));
    let mut next_global = 2_000_000_000i64;
    let writers: Vec<Arc<tokio::sync::Mutex<tokio_postgres::Client>>> = (0..WRITERS)
        .map(|_| Arc::new(tokio::sync::Mutex::new(rt.block_on(raw_client(&config)))))
        .collect();

    let mut group = c.benchmark_group("pg_group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [64usize, 256] {
        // One iteration: every stream appends one event.
        bench_concurrent_streams(
            &mut group,
            &rt,
            &journal,
            ("journal_concurrent_streams", ""),
            n,
        );
        // One iteration: one transaction of n rows (the ceiling), and the same holding a
        // counter row as the journal's batches do (what the counter row costs one writer).
        for (name, counter_row) in [
            ("unnest_batch_ceiling", false),
            ("unnest_batch_counter_row", true),
        ] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|rounds| {
                    let batches: Vec<RawRows> = (0..rounds)
                        .map(|r| RawRows::new(next_global + (r * n as u64) as i64, n))
                        .collect();
                    next_global += (rounds * n as u64) as i64;
                    rt.block_on(async {
                        let start = stopwatch();
                        for rows in &batches {
                            raw_batch(&mut raw, rows, counter_row).await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
        // One iteration: WRITERS connections (nodes) each commit n / WRITERS rows at once,
        // without and with the counter row (which serialises their transactions).
        for (name, counter_row) in [
            ("unnest_writers_ceiling", false),
            ("unnest_writers_counter_row", true),
        ] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|rounds| {
                    let per = n / WRITERS;
                    let mut plans: Vec<Vec<RawRows>> = Vec::new();
                    for w in 0..WRITERS {
                        plans.push(
                            (0..rounds)
                                .map(|r| {
                                    let first = next_global
                                        + ((r * WRITERS as u64 + w as u64) * per as u64) as i64;
                                    RawRows::new(first, per)
                                })
                                .collect(),
                        );
                    }
                    next_global += (rounds * n as u64) as i64;
                    rt.block_on(async {
                        let start = stopwatch();
                        let tasks: Vec<_> = plans
                            .into_iter()
                            .zip(writers.iter().cloned())
                            .map(|(batches, client)| {
                                tokio::spawn(async move {
                                    let mut client = client.lock().await;
                                    for rows in &batches {
                                        raw_batch(&mut client, rows, counter_row).await;
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("a writer task");
                        }
                        start.elapsed()
                    })
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = pg_single_append, pg_group_commit
}
criterion_main!(benches);
