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
