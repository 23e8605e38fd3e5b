//! The `rekey-journal` test suite: one binary, one module per concern.
//!
//! Every test uses its own temp dir (SQLite) or schema (PostgreSQL: one server, started by
//! the tests on 127.0.0.1, per run). Time is a `ManualClock` wherever it matters, so lease
//! and timer assertions are exact. The crash test re-executes this binary as its child.

#[path = "journal/common.rs"]
mod common;
#[path = "journal/pg_server.rs"]
mod pg_server;

#[path = "journal/atomic.rs"]
mod atomic;
#[path = "journal/bad_input.rs"]
mod bad_input;
#[path = "journal/consistency.rs"]
mod consistency;
#[path = "journal/copy.rs"]
mod copy;
#[path = "journal/crash.rs"]
mod crash;
#[path = "journal/feed.rs"]
mod feed;
#[path = "journal/format.rs"]
mod format;
#[path = "journal/group_commit.rs"]
mod group_commit;
#[path = "journal/leases.rs"]
mod leases;
#[path = "journal/modes.rs"]
mod modes;
#[path = "journal/pg_batch.rs"]
mod pg_batch;
#[path = "journal/postgres.rs"]
mod postgres;
#[path = "journal/properties.rs"]
mod properties;
#[path = "journal/reads.rs"]
mod reads;
#[path = "journal/tamper.rs"]
mod tamper;
#[path = "journal/timers.rs"]
mod timers;
