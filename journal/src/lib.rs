//! rekey's journal: a durable, hash-chained, append-only event store.
//!
//! Every rotation is one stream of immutable events. Appends are optimistic (the writer
//! states the sequence it expects) and fenced (the writer presents its lease token), so two
//! runners can never both drive one stream. Each event's hash covers the previous event's
//! hash, so any edit, deletion, reorder or truncation is found by `verify`.
//!
//! Architecture invariant: this crate knows nothing of secrets, sagas or providers. It
//! stores opaque JSON objects and never interprets them.

mod any;
mod api;
mod clock;
mod error;
mod event;
mod feed;
mod import;
mod memory;
mod ops;
mod postgres;
mod schema;
mod sqlite;
mod tls;
mod verify;

pub use any::AnyJournal;
pub use api::{
    Append, Appended, Fence, Head, JournalAppend, JournalRead, JournalScan, Lease, Leases,
    StreamFilter, StreamInfo, Timer,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use event::{
    APPEND_EVENTS_MAX, Digest32, EVENT_BYTES_MAX, Event, KIND_BYTES_MAX, NewEvent,
    STREAM_ID_BYTES_MAX, TimerOp, chain_hash,
};
pub use feed::{FeedCursor, FeedPage};
pub use import::CopyCounts;
pub use memory::MemoryJournal;
pub use ops::DEFAULT_STATUS;
pub use postgres::{DEFAULT_PG_SCHEMA, PostgresConfig, PostgresJournal};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use sqlite::SqliteJournal;
pub use tls::{PgTls, is_local_host};
pub use verify::{BrokenLink, VerifyReport};
