//! The PostgreSQL role provider against a real PostgreSQL server that the tests start on
//! loopback (one per test run; see `server`), each test in its own database with its own
//! roles; and the journal itself in PostgreSQL (`[journal] url`).

mod copy;
mod failures;
mod harness;
pub(crate) mod journal;
mod rotation;
pub(crate) mod server;
