//! rekey: a durable, event-sourced secret-rotation orchestrator.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and how data flows.

pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod fleet;
pub mod history;
pub mod journal_open;
pub mod notify;
pub mod probe;
pub mod provider;
pub mod providers;
pub mod report;
pub mod resolve;
pub mod retry;
pub mod runner;
pub mod saga;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod triggers;

pub use rekey_journal as journal;

/// rekey's allocator, for the binary and everything else that links this library (so the
/// tests and benchmarks run what the binary runs). A rotation's work is many small
/// allocations made on the runtime's threads and freed on the journal's writer thread;
/// glibc's allocator spent about 40% of the runtime threads' time on them (malloc, free,
/// consolidating freed chunks) in a profile of 256 rotations in flight.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
