//! rekey's integration tests: one binary, one module per concern.

mod addresses;
mod azure;
mod cli;
mod cli_journal;
mod cli_readonly;
mod cli_wait;
mod commits;
mod console;
mod crash;
mod daemon;
mod fake_azure;
mod fake_azure_selftest;
mod files;
mod fleet;
mod history;
mod intercept;
mod multinode;
mod notify;
mod old_journals;
mod online;
#[path = "../benches/support/open_rotations.rs"]
mod open_rotations;
mod policy;
mod postgres;
mod resume;
mod runner;
mod simulation;
mod telemetry;

/// Awaits `fut` on a fresh current-thread runtime: for the synchronous harnesses (crash,
/// multinode) that drive rekey as processes and read its journal, whose reads are async.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a runtime")
        .block_on(fut)
}
