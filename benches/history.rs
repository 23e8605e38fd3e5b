//! Criterion benchmark of `rekey history` over a large journal.
//!
//! A SQLite journal of 5,000 completed or compensated rotations (half of them fleet-shaped:
//! an Entra application's password and two Key Vault copies; half hand-configured), each
//! with its lock stream beside it, requested a minute apart:
//!
//! * `all`: every row (each rotation stream read once, no lock stream read);
//! * `app_glob`: `--app` (known only after reading each rotation stream);
//! * `since_last_tenth`: `--since` the last 500, narrowed by the journal's stream index
//!   before any stream is read.
//!
//! Run: `cargo bench --bench history`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rekey::history::{Filter, RawFilter, rows};
use rekey::journal::{ManualClock, SqliteJournal};

#[path = "support/history_journal.rs"]
mod history_journal;

use history_journal::{MINUTE, T0};

const ROTATIONS: i64 = 5_000;

fn journal(dir: &std::path::Path) -> SqliteJournal {
    let clock = ManualClock::new(T0);
    let journal =
        SqliteJournal::open_with_clock(dir.join("journal.db"), Arc::new(clock.clone())).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(history_journal::write(&journal, &clock, ROTATIONS));
    journal
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(dir.path());
    // Reads are async: each is awaited on a runtime made once, outside the measured loop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = T0 + ROTATIONS * MINUTE;
    let parse = |raw: RawFilter| raw.parse(now).unwrap();
    let mut group = c.benchmark_group("history");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROTATIONS as u64));
    group.bench_function("all", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(rows(&journal, &Filter::default()))
                    .unwrap()
                    .len(),
            )
        });
    });
    let app = parse(RawFilter {
        app: Some("00001*".into()),
        ..RawFilter::default()
    });
    group.bench_function("app_glob", |b| {
        b.iter(|| black_box(rt.block_on(rows(&journal, &app)).unwrap().len()));
    });
    let since = parse(RawFilter {
        since: Some(format!("{}m", ROTATIONS / 10)),
        ..RawFilter::default()
    });
    assert_eq!(
        rt.block_on(rows(&journal, &since)).unwrap().len(),
        (ROTATIONS / 10) as usize
    );
    group.bench_function("since_last_tenth", |b| {
        b.iter(|| black_box(rt.block_on(rows(&journal, &since)).unwrap().len()));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
