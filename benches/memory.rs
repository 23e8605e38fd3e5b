//! Memory per rotation in flight: resident memory (`VmRSS` in `/proc/self/status`) with
//! 256 no-op rotations held mid-flight (each parked in its verify step, its lease and
//! state live, over a durable SQLite journal), against the same process just before
//! they started, after a warm-up of 256 whole rotations (allocator and page cache warm).
//! Prints the figures; no criterion measurement.
//!
//! Run: `cargo bench --bench memory`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rekey::journal::{Clock, SqliteJournal, SystemClock};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::Trigger;
use tokio::task::JoinSet;

#[allow(dead_code, reason = "this bench uses a few of the shared helpers")]
mod common;
use common::{multi_thread_runtime, scratch_dir};

#[path = "support/open_rotations.rs"]
mod open_rotations;
use open_rotations::{Gate, Local, PROVIDER, plan};

const IN_FLIGHT: usize = 256;

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// `n` rotations of fresh secrets, each requested and driven to its end.
fn rotations(
    runner: &Arc<Runner<SqliteJournal>>,
    next: &Arc<AtomicU64>,
    n: usize,
) -> JoinSet<Progress> {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (runner, id) = (runner.clone(), next.fetch_add(1, Ordering::Relaxed));
        tasks.spawn(async move {
            let Requested::Started { rotation_id } = runner
                .request(
                    plan(&format!("s{id}")),
                    Trigger::Bulk,
                    "bench",
                    format!("00000000-0000-7000-8000-{id:012x}"),
                )
                .await
                .unwrap()
            else {
                panic!("each secret is rotated once");
            };
            runner.drive(&rotation_id).await.unwrap()
        });
    }
    tasks
}

fn main() {
    let dir = scratch_dir();
    let rt = multi_thread_runtime();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(
        SqliteJournal::open_with_clock(dir.path().join("memory.journal"), clock.clone()).unwrap(),
    );
    let gate = Arc::new(Gate::default());
    let local = Arc::new(Local::gated(gate.clone()));
    let providers = Registry::new().with_roles(PROVIDER, roles!(local));
    let runner = Arc::new(Runner::new(
        journal,
        Arc::new(providers),
        clock,
        Options::new("memory-bench", 1),
    ));
    let next = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        // Warm-up: as many whole rotations, through the gate.
        gate.open(IN_FLIGHT);
        let mut warm = rotations(&runner, &next, IN_FLIGHT);
        while let Some(done) = warm.join_next().await {
            done.unwrap();
        }
        gate.arrivals(IN_FLIGHT as u64).await;
        let before = status_kib("VmRSS");
        let mut held = rotations(&runner, &next, IN_FLIGHT);
        gate.arrivals(2 * IN_FLIGHT as u64).await;
        let during = status_kib("VmRSS");
        let peak = status_kib("VmHWM");
        gate.open(IN_FLIGHT);
        while let Some(done) = held.join_next().await {
            done.unwrap();
        }
        let after = status_kib("VmRSS");
        let per = (during.saturating_sub(before) as f64) / IN_FLIGHT as f64;
        println!(
            "rss: before {before} KiB, with {IN_FLIGHT} rotations in flight {during} KiB \
             (peak {peak} KiB), after they ended {after} KiB"
        );
        println!("rss per rotation in flight: {per:.1} KiB");
    });
}
