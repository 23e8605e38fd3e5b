//! The shared engine: a journal in a PostgreSQL schema, for several rekey nodes on one
//! database (DESIGN §8). It obeys exactly the write rules of the other engines: every
//! decision is made by [`crate::ops`], run over a snapshot of the stream's row, and the
//! decision is then written by one guarded statement whose guard is that snapshot:
//!
//! - an append is a guarded `UPDATE` of the stream's head row (its sequence, head hash and
//!   lease columns as the rules saw them) feeding the `INSERT` of its events, so the fence
//!   is inside the write and holds at READ COMMITTED. A row that changed since it was read
//!   is not updated and its events are not inserted: the row is read again and the rules
//!   decide again (a conflict, a stale or expired fence, or the same append on the new head);
//! - a lease change is the same guarded `UPDATE` of the lease columns;
//! - every event carries a client-generated id (unique), so when the connection is lost
//!   after COMMIT was sent the retried append finds its events and is reported done, once.
//!
//! Group commit: one writer task takes every request waiting in its queue, runs them in one
//! transaction (one durable commit), and only then answers each. The batch holds the
//! journal's global counter row from its first statement to its commit, so global sequences
//! are given in commit order and a reader of [`JournalScan::read_after`] never skips an event
//! that commits late.
//!
//! A batch costs a constant number of round trips, whatever its size:
//!
//! 1. `BEGIN`, the counter row's lock and the read of the row of every stream the batch
//!    touches, in one round trip (the read is pipelined behind `BEGIN`);
//! 2. the rules decide every request in batch order, in memory, each over its stream's row
//!    as the earlier requests of the batch left it, and each stream's changes fold into one
//!    change guarded by the row as read;
//! 3. one statement writes them all (`write_round_sql`): every stream's guarded change, the
//!    events of only the streams whose change landed, numbered after the counter in batch
//!    order in SQL (so a guard that fails leaves no gap), their timers, and the counter row.
//!    A stream whose guard failed is read again and its requests are decided again in a next
//!    round of the same transaction;
//! 4. `COMMIT`.
//!
//! So a lone append costs three round trips and one durable commit, as a one-row `INSERT`
//! in its own transaction does. The writer also waits briefly (at most [`LINGER`]) for the
//! callers its last batch answered to come back, rather than commit the first few alone.
//! Measured (`cargo bench --bench journal_postgres`, one run each on a shared, loaded 2-core
//! machine, so take the ratios, not the absolute figures): before, with one round trip per
//! request inside a batch, a single durable append took 3.6 ms against 5.8 ms for
//! PostgreSQL's own one-row `INSERT` + `COMMIT`, and group commit reached 5,000 events/s at
//! 64 streams (0.47x the `INSERT … SELECT unnest(…)` ceiling of the same run) and 8,500 at
//! 256 (0.25x). With a constant number of round trips per batch: 0.50x and 0.39x; with the
//! writer also waiting for returning callers: a single append 1.0 ms against 3.8 ms, and
//! 20,000 events/s at 64 streams (1.3x the ceiling's 15,400) and 24,500 at 256 (0.63x of
//! 39,100). What remains at 256 is the work a batch does beyond the ceiling's one insert:
//! the streams' head rows it updates under their guards, timers, and the rules run in the
//! writer.
//!
//! The global feed: why a counter row, not the transaction horizon. DESIGN §8 sketches a
//! feed read below the transaction horizon (`xid < pg_snapshot_xmin(pg_current_snapshot())`,
//! ordered by transaction id, then id), which lets writers commit in parallel. The counter
//! row instead orders every batch of every node; it also never skips, and gives a gap-free
//! global sequence that `journal copy` and `export` keep. Measured (`cargo bench --bench
//! journal_postgres`, one run on a shared 2-core machine): a batch of 64 or 256 rows that
//! also locks and advances a counter row runs at about 0.9x the same batch without it, and
//! four writers committing at once through the counter row at about 0.4x to 0.55x of the
//! same four without it, so the row costs one node little and serialises several nodes'
//! commits. So the counter row stays; followers read through
//! [`JournalScan::read_feed`] with an opaque [`crate::FeedCursor`], so that a horizon feed
//! can replace the counter (a cursor of transaction id and id) without changing them.
//!
//! Time: lease expiry and event timestamps come from the database clock, one reading per
//! batch, so nodes with skewed clocks agree on who holds a lease. Tests inject a [`Clock`].
//!
//! Runtimes: the journal owns a small runtime of its own on which all its database I/O
//! runs (the writer task, the pool's connections, every query), so it neither needs nor
//! disturbs the caller's runtime, whatever its flavour, and cannot deadlock with it, since
//! the journal's own tasks never wait for a caller. Every read is async (the read traits,
//! [`PostgresJournal::heads`], [`PostgresJournal::verify`]): it spawns its query on the
//! journal's runtime and awaits the join handle, so the caller's runtime goes on with its
//! other tasks while the server answers, even a current-thread one. Appends and lease
//! changes await the writer's answer the same way. Only two synchronous calls still block
//! the calling thread until the journal's runtime is done: opening (`wait_on`), because a
//! constructor cannot await and a command opens its journal once, before its work; and the
//! steps of an import (the sink of [`crate::AnyJournal::copy_from`], on the import's own
//! channel), because that sink is a synchronous trait shared with SQLite's.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row, SimpleQueryMessage};

use crate::tls::PgTls;

use crate::api::{
    Append, Appended, Head, JournalAppend, JournalRead, JournalScan, Lease, Leases, StreamFilter,
    StreamInfo, Timer,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::{Digest32, Event, check_stream, validate_stream_id};
use crate::ops::{self, DEFAULT_STATUS, HeadUpdate, WriteStore};
use crate::schema::{APPLICATION_ID, SCHEMA_VERSION};
use crate::verify::{BrokenLink, Verifier, VerifyReport};

/// PostgreSQL connection settings, as `tokio-postgres` parses them from a URL.
pub use tokio_postgres::Config as PostgresConfig;

/// The schema a journal lives in unless told otherwise.
pub const DEFAULT_PG_SCHEMA: &str = "rekey";

/// Most requests folded into one transaction.
const BATCH_REQUESTS_MAX: usize = 1024;
/// How often one request is planned again because its row changed under it; each retry
/// means another writer made progress, so this bounds only pathological contention.
const PLAN_ATTEMPTS_MAX: usize = 16;
/// How often a batch is run again after its connection failed (the outcome was unknown).
const BATCH_ATTEMPTS_MAX: usize = 4;
/// Connections the journal keeps: the writer and a few concurrent readers.
const POOL_SIZE: usize = 6;
/// How long opening a connection may take before the journal reports the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer waits at most for the callers of its last batch to come back before
/// it starts a smaller batch (see `write_loop`); about one tick of the runtime's timer.
const LINGER: Duration = Duration::from_millis(1);

/// The database clock in Unix milliseconds, as SQL.
const DB_NOW: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// Migrations in order; migration `i` moves the schema from version `i` to `i + 1`. `{s}` is
/// the journal's schema. Schema version 1 on PostgreSQL is the same logical format as SQLite's
/// version 1: the same events, the same hashes.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE {s}.meta (
    id              int4 PRIMARY KEY CHECK (id = 1),
    application_id  int8 NOT NULL,
    schema_version  int8 NOT NULL,
    -- The last global sequence given; its row lock orders batches (see the module doc).
    last_global_seq int8 NOT NULL
);
CREATE TABLE {s}.streams (
    stream_id           text COLLATE "C" PRIMARY KEY,
    subject             text,
    status              text NOT NULL,
    created_at_ms       int8 NOT NULL,
    updated_at_ms       int8 NOT NULL,
    -- 0 while the stream has a lease but no event yet.
    head_seq            int8 NOT NULL CHECK (head_seq >= 0),
    head_hash           bytea NOT NULL,
    lease_owner         text,
    -- The fencing token: it grows on every takeover and is kept on release.
    lease_epoch         int8 NOT NULL DEFAULT 0,
    lease_expires_at_ms int8
);
CREATE INDEX streams_by_subject ON {s}.streams (subject, created_at_ms);
CREATE INDEX streams_by_status ON {s}.streams (status, created_at_ms);
CREATE TABLE {s}.events (
    global_seq     int8 PRIMARY KEY,
    -- Client-generated, so a retried append is recognised as already done.
    event_id       bytea NOT NULL UNIQUE,
    stream_id      text COLLATE "C" NOT NULL,
    stream_seq     int8 NOT NULL,
    kind           text NOT NULL,
    schema_version int8 NOT NULL,
    recorded_at_ms int8 NOT NULL,
    -- The canonical JSON text exactly as hashed (jsonb would reorder it).
    payload        bytea NOT NULL,
    prev_hash      bytea NOT NULL,
    hash           bytea NOT NULL,
    UNIQUE (stream_id, stream_seq)
);
CREATE TABLE {s}.timers (
    stream_id        text COLLATE "C" NOT NULL,
    name             text NOT NULL,
    due_at_ms        int8 NOT NULL,
    claimed_by       text,
    claimed_until_ms int8,
    PRIMARY KEY (stream_id, name)
);
CREATE INDEX timers_by_due ON {s}.timers (due_at_ms, stream_id);
CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rekey journal %: % refused', TG_ARGV[0], TG_OP;
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {s}.events
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse('events are append-only');
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse('events are append-only');
CREATE TRIGGER streams_no_delete BEFORE DELETE ON {s}.streams
    FOR EACH ROW EXECUTE FUNCTION {s}.refuse('streams cannot be deleted');
CREATE TRIGGER streams_no_truncate BEFORE TRUNCATE ON {s}.streams
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse('streams cannot be deleted');
CREATE TRIGGER streams_head_forward BEFORE UPDATE OF head_seq ON {s}.streams
    FOR EACH ROW WHEN (NEW.head_seq < OLD.head_seq)
    EXECUTE FUNCTION {s}.refuse('stream heads only move forward');
"#];

/// The text of a PostgreSQL error: the server's own message when it sent one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// True for failures where trying again may succeed: a lost connection, a server shutting
/// down, a serialization failure or a deadlock.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => {
            e.is_closed()
                || std::error::Error::source(e)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        }
        Some(code) => [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code),
    }
}

/// Every statement the journal runs, with its schema filled in.
#[derive(Debug)]
struct Sql {
    /// The journal's schema (a checked bare identifier).
    schema: String,
    begin: String,
    read_rows: String,
    write_round: String,
    find_events: String,
    select_events_of: String,
    select_events_of_many: String,
    select_events_after: String,
    select_events_all: String,
    stream_info: String,
    stream_infos: String,
    streams: String,
    heads: String,
    due_timers: String,
    next_timer: String,
    claim_timers: String,
}

const EVENT_COLUMNS: &str = "global_seq, stream_id, stream_seq, kind, schema_version, recorded_at_ms, payload, prev_hash, hash";
const STREAM_COLUMNS: &str =
    "stream_id, subject, status, created_at_ms, updated_at_ms, head_seq, head_hash";
const ROW_COLUMNS: &str =
    "stream_id, head_seq, head_hash, lease_owner, lease_epoch, lease_expires_at_ms";

/// The one statement that writes a round of a batch (see [`write_round`]); `{s}` is the
/// schema. Parameters: one element per changed stream in `$1..$15` (stream, no row yet,
/// appended, the guard's head sequence, head hash, lease owner, epoch and expiry, then the
/// new head sequence, head hash, status, subject, lease owner, epoch and expiry); `$16` the
/// time; one element per event in `$17..$25` (the batch position of its append, stream,
/// client id, stream sequence, kind, schema version, payload, previous hash, hash); `$26`
/// the last global sequence given; one element per timer change in `$27..$29` (stream, name,
/// due time or null to clear).
///
/// Each stream's change is guarded by the row the rules read: its lease columns always, its
/// head too when it appends; a stream with no row is inserted unless another writer inserted
/// it first. Only the events, timers of the streams whose change landed are written, and the
/// events are numbered after `$26` in batch order among those alone, so the global sequence
/// has no gap. It returns the streams that landed, then each append's last global sequence.
fn write_round_sql() -> String {
    format!(
        r#"WITH h AS (
    SELECT * FROM unnest($1::text[], $2::bool[], $3::bool[], $4::int8[], $5::bytea[],
                         $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::bytea[],
                         $11::text[], $12::text[], $13::text[], $14::int8[], $15::int8[])
        AS h(stream_id, is_new, appended, g_seq, g_hash, g_owner, g_epoch, g_expiry,
             seq, hash, status, subject, owner, epoch, expiry)),
 changed AS (
    UPDATE {{s}}.streams st SET
        head_seq = CASE WHEN h.appended THEN h.seq ELSE st.head_seq END,
        head_hash = CASE WHEN h.appended THEN h.hash ELSE st.head_hash END,
        updated_at_ms = CASE WHEN h.appended THEN $16 ELSE st.updated_at_ms END,
        status = CASE WHEN NOT h.appended THEN st.status
            ELSE COALESCE(h.status, CASE WHEN st.head_seq = 0 THEN '{DEFAULT_STATUS}' ELSE st.status END) END,
        subject = CASE WHEN h.appended AND st.head_seq = 0 THEN h.subject ELSE st.subject END,
        created_at_ms = CASE WHEN h.appended AND st.head_seq = 0 THEN $16 ELSE st.created_at_ms END,
        lease_owner = h.owner, lease_epoch = h.epoch, lease_expires_at_ms = h.expiry
    FROM h
    WHERE NOT h.is_new AND st.stream_id = h.stream_id COLLATE "C"
      AND (NOT h.appended OR (st.head_seq = h.g_seq AND st.head_hash = h.g_hash))
      AND st.lease_owner IS NOT DISTINCT FROM h.g_owner AND st.lease_epoch = h.g_epoch
      AND st.lease_expires_at_ms IS NOT DISTINCT FROM h.g_expiry
    RETURNING st.stream_id),
 created AS (
    INSERT INTO {{s}}.streams (stream_id, subject, status, created_at_ms, updated_at_ms,
        head_seq, head_hash, lease_owner, lease_epoch, lease_expires_at_ms)
    SELECT h.stream_id, h.subject, COALESCE(h.status, '{DEFAULT_STATUS}'), $16, $16, h.seq,
        h.hash, h.owner, h.epoch, h.expiry
    FROM h WHERE h.is_new
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id),
 landed AS (SELECT stream_id FROM changed UNION ALL SELECT stream_id FROM created),
 ev AS MATERIALIZED (
    SELECT e.*, $26 + row_number() OVER (ORDER BY e.pos, e.seq) AS g
    FROM unnest($17::int8[], $18::text[], $19::bytea[], $20::int8[], $21::text[],
                $22::int8[], $23::bytea[], $24::bytea[], $25::bytea[])
        AS e(pos, stream_id, id, seq, kind, ver, payload, prev, hash)
    WHERE e.stream_id COLLATE "C" IN (SELECT stream_id FROM landed)),
 added AS (
    INSERT INTO {{s}}.events (global_seq, event_id, stream_id, stream_seq, kind,
        schema_version, recorded_at_ms, payload, prev_hash, hash)
    SELECT ev.g, ev.id, ev.stream_id, ev.seq, ev.kind, ev.ver, $16, ev.payload, ev.prev, ev.hash
    FROM ev),
 counted AS (
    UPDATE {{s}}.meta SET last_global_seq = $26 + (SELECT count(*) FROM ev) WHERE id = 1),
 armed AS (
    INSERT INTO {{s}}.timers (stream_id, name, due_at_ms)
    SELECT t.stream_id, t.name, t.due
    FROM unnest($27::text[], $28::text[], $29::int8[]) AS t(stream_id, name, due)
    WHERE t.due IS NOT NULL AND t.stream_id COLLATE "C" IN (SELECT stream_id FROM landed)
    ON CONFLICT (stream_id, name) DO UPDATE
    SET due_at_ms = EXCLUDED.due_at_ms, claimed_by = NULL, claimed_until_ms = NULL),
 cleared AS (
    DELETE FROM {{s}}.timers d
    USING unnest($27::text[], $28::text[], $29::int8[]) AS t(stream_id, name, due)
    WHERE t.due IS NULL AND d.stream_id = t.stream_id COLLATE "C" AND d.name = t.name
      AND t.stream_id COLLATE "C" IN (SELECT stream_id FROM landed))
SELECT stream_id, NULL::int8, NULL::int8 FROM landed
UNION ALL
SELECT NULL, ev.pos, max(ev.g) FROM ev GROUP BY ev.pos"#
    )
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = |t: &str| t.replace("{s}", schema);
        Self {
            schema: schema.to_owned(),
            begin: s(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = on;
                 SELECT last_global_seq, {DB_NOW} FROM {{s}}.meta WHERE id = 1 FOR UPDATE"
            )),
            read_rows: s(&format!(
                "SELECT {ROW_COLUMNS} FROM {{s}}.streams WHERE stream_id = ANY($1)"
            )),
            write_round: s(&write_round_sql()),
            find_events: s("SELECT stream_seq, global_seq, hash FROM {s}.events
                 WHERE event_id = ANY($1) ORDER BY stream_seq"),
            select_events_of: s(&format!(
                "SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE stream_id = $1 ORDER BY stream_seq"
            )),
            select_events_of_many: s(&format!(
                "SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE stream_id = ANY($1)
                 ORDER BY stream_id, stream_seq"
            )),
            select_events_after: s(&format!(
                "SELECT {EVENT_COLUMNS} FROM {{s}}.events WHERE global_seq > $1
                 ORDER BY global_seq LIMIT $2"
            )),
            select_events_all: s(&format!(
                "SELECT {EVENT_COLUMNS} FROM {{s}}.events ORDER BY stream_id, stream_seq"
            )),
            stream_info: s(&format!(
                "SELECT {STREAM_COLUMNS} FROM {{s}}.streams WHERE stream_id = $1 AND head_seq > 0"
            )),
            stream_infos: s(&format!(
                "SELECT {STREAM_COLUMNS} FROM {{s}}.streams
                 WHERE stream_id = ANY($1) AND head_seq > 0"
            )),
            streams: s(&format!(
                "SELECT {STREAM_COLUMNS} FROM {{s}}.streams WHERE head_seq > 0
                   AND ($1::text IS NULL OR subject = $1) AND ($2::text IS NULL OR status = $2)
                   AND ($3::int8 IS NULL OR created_at_ms >= $3)
                   AND ($4::int8 IS NULL OR created_at_ms < $4)
                 ORDER BY created_at_ms, stream_id"
            )),
            heads: s(
                "SELECT stream_id, head_seq, head_hash FROM {s}.streams WHERE head_seq > 0
                 ORDER BY stream_id",
            ),
            due_timers: s(
                "SELECT stream_id, name, due_at_ms FROM {s}.timers WHERE due_at_ms <= $1
                 ORDER BY due_at_ms, stream_id LIMIT $2",
            ),
            next_timer: s("SELECT stream_id, name, due_at_ms FROM {s}.timers
                 ORDER BY due_at_ms, stream_id LIMIT 1"),
            // $1 owner, $2 now (or null for the database clock), $3 claim length, $4 limit.
            claim_timers: s(&format!(
                "WITH now AS (SELECT COALESCE($2::int8, {DB_NOW}) AS ms),
                 due AS (
                    SELECT t.stream_id, t.name FROM {{s}}.timers t, now
                    WHERE t.due_at_ms <= now.ms
                      AND (t.claimed_until_ms IS NULL OR t.claimed_until_ms <= now.ms)
                    ORDER BY t.due_at_ms, t.stream_id LIMIT $4
                    FOR UPDATE OF t SKIP LOCKED)
                 UPDATE {{s}}.timers t SET claimed_by = $1, claimed_until_ms = now.ms + $3
                 FROM due, now WHERE t.stream_id = due.stream_id AND t.name = due.name
                 RETURNING t.stream_id, t.name, t.due_at_ms"
            )),
        }
    }
}

/// A stream's row as a write read it: what the rules decide on, and what the guard compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamRow {
    head_seq: u64,
    head_hash: Digest32,
    lease_owner: Option<String>,
    lease_epoch: i64,
    lease_expires_at_ms: Option<i64>,
}

impl StreamRow {
    fn lease(&self, stream_id: &str) -> Option<Lease> {
        let owner = self.lease_owner.clone()?;
        Some(Lease {
            stream_id: stream_id.to_owned(),
            owner,
            token: self.lease_epoch as u64,
            expires_at_ms: self.lease_expires_at_ms.unwrap_or(i64::MIN),
        })
    }
}

/// A timer change an append makes to its own stream, in order.
#[derive(Debug, Clone)]
enum TimerChange {
    Put(Timer),
    /// Clears the timer of this name.
    Clear(String),
}

/// A [`WriteStore`] that reads one stream's row as it was read from the database and records
/// what the rules decide to write, for the guarded statement to write it.
#[derive(Debug)]
struct Plan<'a> {
    row: Option<&'a StreamRow>,
    events: Vec<Event>,
    head: Option<(Option<String>, Option<String>, u64, Digest32)>,
    lease: Option<Lease>,
    timers: Vec<TimerChange>,
}

impl<'a> Plan<'a> {
    fn new(row: Option<&'a StreamRow>) -> Self {
        Self {
            row,
            events: Vec::new(),
            head: None,
            lease: None,
            timers: Vec::new(),
        }
    }
}

impl WriteStore for Plan<'_> {
    fn head(&mut self, _stream_id: &str) -> Result<Option<(u64, Digest32)>> {
        Ok(self
            .row
            .filter(|r| r.head_seq > 0)
            .map(|r| (r.head_seq, r.head_hash)))
    }

    fn lease(&mut self, stream_id: &str) -> Result<Option<Lease>> {
        Ok(self.row.and_then(|r| r.lease(stream_id)))
    }

    fn put_lease(&mut self, lease: &Lease) -> Result<()> {
        self.lease = Some(lease.clone());
        Ok(())
    }

    fn insert_event(&mut self, event: &Event) -> Result<u64> {
        self.events.push(event.clone());
        // The global sequence is given when the plan is written.
        Ok(0)
    }

    fn put_head(&mut self, h: &HeadUpdate<'_>) -> Result<()> {
        self.head = Some((
            h.subject.map(str::to_owned),
            h.status.map(str::to_owned),
            h.head_seq,
            h.head_hash,
        ));
        Ok(())
    }

    fn put_timer(&mut self, timer: &Timer) -> Result<()> {
        self.timers.push(TimerChange::Put(timer.clone()));
        Ok(())
    }

    fn clear_timer(&mut self, _stream_id: &str, name: &str) -> Result<()> {
        self.timers.push(TimerChange::Clear(name.to_owned()));
        Ok(())
    }
}

/// A write for the writer task.
#[derive(Debug)]
enum Op {
    /// An append, with its events' client-generated ids and canonical payloads (encoded by
    /// the caller, so the writer does not).
    Append(Append, Vec<[u8; 16]>, Vec<String>),
    Acquire {
        stream_id: String,
        owner: String,
        ttl_ms: i64,
    },
    Renew(Lease, i64),
    Release(Lease),
}

impl Op {
    fn stream_id(&self) -> &str {
        match self {
            Op::Append(a, ..) => &a.stream_id,
            Op::Acquire { stream_id, .. } => stream_id,
            Op::Renew(l, _) | Op::Release(l) => &l.stream_id,
        }
    }
}

/// What a write produced.
#[derive(Debug)]
enum Done {
    Appended(Appended),
    Lease(Lease),
    Released,
}

/// A request for the writer: one op, or the ops of an atomic multi-stream append, which
/// land together or not at all (see [`plan_round`]).
#[derive(Debug)]
struct Request {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<Done>>>,
}

/// Why a batch did not commit.
#[derive(Debug)]
enum BatchFailure {
    /// The connection failed: the batch may or may not have committed.
    Connection(Error),
    /// The server refused a statement: the batch rolled back.
    Refused(Error),
}

/// A journal in a PostgreSQL schema.
pub struct PostgresJournal {
    shared: Arc<Shared>,
    queue: Option<mpsc::UnboundedSender<Request>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells apart the ids of this journal's events.
    ids: IdSource,
    /// Opened by [`PostgresJournal::open_read_only`]: every write is refused.
    read_only: bool,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// What the writer task and the readers share.
#[derive(Debug)]
struct Shared {
    pool: Pool,
    sql: Sql,
    /// The injected clock, or `None` for the database clock.
    clock: Option<Arc<dyn Clock>>,
    /// Where the journal is, for messages (never a password).
    target: String,
}

/// Client-generated event ids: random per journal, then counted.
#[derive(Debug)]
struct IdSource {
    prefix: [u8; 8],
    next: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        let random = uuid::Uuid::new_v4();
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&random.as_bytes()[..8]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&random.as_bytes()[8..]);
        Self {
            prefix,
            next: AtomicU64::new(u64::from_be_bytes(start)),
        }
    }

    fn take(&self, n: usize) -> Vec<[u8; 16]> {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        (0..n as u64)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.prefix);
                id[8..].copy_from_slice(&first.wrapping_add(i).to_be_bytes());
                id
            })
            .collect()
    }
}

/// `schema` as a bare SQL identifier, or why it cannot be one.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::PostgresConfig {
            reason: format!(
                "schema name {:?} must be 1 to 63 characters of a-z 0-9 _, not starting with a digit or pg_",
                schema.chars().take(64).collect::<String>()
            ),
        })
    }
}

/// "database D, schema S on H:P" (never the user's password).
fn describe_target(config: &PostgresConfig, schema: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "PostgreSQL database {}, schema {schema} on {}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(default)"),
        if hosts.is_empty() {
            "(default host)".to_owned()
        } else {
            hosts.join(",")
        }
    )
}

impl PostgresJournal {
    /// Opens (or creates) the journal in schema `schema` of the database `config` names;
    /// events and leases are stamped by the database clock.
    ///
    /// # Errors
    /// [`Error::PostgresConfig`], [`Error::NotAPostgresJournal`],
    /// [`Error::NewerPostgresSchema`], [`Error::PostgresNotDurable`], [`Error::Postgres`]; in
    /// every case the database is left as it was.
    pub fn open(config: PostgresConfig, schema: &str) -> Result<Self> {
        Self::open_inner(config, schema, None, PgTls::Disable, false)
    }

    /// As [`PostgresJournal::open`], stamped by an injected clock instead of the database's
    /// (tests and simulations).
    ///
    /// # Errors
    /// As [`PostgresJournal::open`].
    pub fn open_with_clock(
        config: PostgresConfig,
        schema: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Self::open_inner(config, schema, Some(clock), PgTls::Disable, false)
    }

    /// As [`PostgresJournal::open`], over `tls` (TLS is required, never a plain fallback,
    /// unless `tls` is [`PgTls::Disable`]).
    ///
    /// # Errors
    /// As [`PostgresJournal::open`].
    pub fn open_tls(config: PostgresConfig, schema: &str, tls: PgTls) -> Result<Self> {
        Self::open_inner(config, schema, None, tls, false)
    }

    /// Opens an existing journal for reading only (`status`, `journal verify`, `export`):
    /// nothing is created, migrated or written, and every write is refused
    /// ([`Error::OpenedReadOnly`]). PostgreSQL serves readers a consistent snapshot while
    /// nodes write, so no copy is taken.
    ///
    /// # Errors
    /// [`Error::NoPostgresJournal`] when the schema holds no journal,
    /// [`Error::NotAPostgresJournal`], [`Error::NewerPostgresSchema`], [`Error::Postgres`].
    pub fn open_read_only(config: PostgresConfig, schema: &str, tls: PgTls) -> Result<Self> {
        Self::open_inner(config, schema, None, tls, true)
    }

    fn open_inner(
        mut config: PostgresConfig,
        schema: &str,
        clock: Option<Arc<dyn Clock>>,
        tls: PgTls,
        read_only: bool,
    ) -> Result<Self> {
        check_schema_name(schema)?;
        let target = describe_target(&config, schema);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.ssl_mode(tls.ssl_mode());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rekey-journal-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::WriteFailed {
                reason: format!("cannot start the journal's runtime: {e}"),
            })?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            PgTls::Disable => Manager::from_config(config, NoTls, manager_config),
            PgTls::VerifyFull(tls) => Manager::from_config(config, tls, manager_config),
        };
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| Error::PostgresConfig {
                    reason: format!("cannot build the connection pool: {e}"),
                })?
        };
        let shared = Arc::new(Shared {
            pool,
            sql: Sql::new(schema),
            clock,
            target,
        });
        let setup = {
            let (shared, schema) = (shared.clone(), schema.to_owned());
            wait_on(&runtime, async move {
                if read_only {
                    check_existing(&shared, &schema).await
                } else {
                    prepare_schema(&shared, &schema).await
                }
            })
        };
        if let Err(e) = setup {
            runtime.shutdown_background();
            return Err(e);
        }
        let (queue, requests) = mpsc::unbounded_channel();
        runtime.spawn(write_loop(shared.clone(), requests));
        Ok(Self {
            shared,
            queue: Some(queue),
            runtime: Some(runtime),
            ids: IdSource::new(),
            read_only,
        })
    }

    /// Where the journal is: database, schema and server (for messages; no password).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Runs `f` on the journal's runtime and awaits it from the caller's. The query runs
    /// where the pool's connections live (their I/O tasks were spawned on the journal's
    /// runtime), and the caller's runtime only waits on a join handle, so it goes on with
    /// its other tasks meanwhile, whatever its flavour.
    async fn read<T, F>(&self, f: impl FnOnce(Arc<Shared>) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or(Error::WriterStopped)?;
        runtime
            .spawn(f(self.shared.clone()))
            .await
            .map_err(|_| Error::WriterStopped)?
    }

    async fn request(&self, op: Op) -> Result<Done> {
        let mut done = self.request_all(vec![op]).await?;
        done.pop().ok_or_else(|| Error::WriteFailed {
            reason: "the writer answered a write with no outcome".into(),
        })
    }

    async fn request_all(&self, ops: Vec<Op>) -> Result<Vec<Done>> {
        if self.read_only {
            return Err(Error::OpenedReadOnly);
        }
        let queue = self.queue.as_ref().ok_or(Error::WriterStopped)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Request { ops, reply })
            .map_err(|_| Error::WriterStopped)?;
        answer.await.map_err(|_| Error::WriterStopped)?
    }

    /// The head of every stream, for export and later truncation checks.
    ///
    /// # Errors
    /// Storage errors, or [`Error::Corrupt`] for a malformed head hash.
    pub async fn heads(&self) -> Result<Vec<Head>> {
        self.read(|s| async move {
            let c = s.client().await?;
            heads_in(&s, &c).await
        })
        .await
    }

    /// Recomputes every chain, in one consistent snapshot, and checks it against the
    /// recorded heads and, when given, heads exported earlier (which detects truncation of a
    /// stream's tail). PostgreSQL checks its own pages, so `damaged` is always `None`.
    ///
    /// # Errors
    /// Storage errors only; a broken chain is a report, not an error.
    pub async fn verify(&self, exported: Option<&[Head]>) -> Result<VerifyReport> {
        let exported = exported.map(<[Head]>::to_vec);
        self.read(|s| async move {
            let mut c = s.client().await?;
            let tx = s.snapshot(&mut c).await?;
            let mut verifier = Verifier::new(heads_in(&s, &tx).await?, exported.as_deref());
            let rows = tx
                .query(s.sql.select_events_all.as_str(), &[])
                .await
                .map_err(s.failed("reading events to verify"))?;
            for row in &rows {
                match row_to_event(row) {
                    Ok(event) => {
                        if !verifier.feed(&event) {
                            break;
                        }
                    }
                    // A row that cannot even be decoded is the first broken link.
                    Err(Error::Corrupt {
                        stream,
                        seq,
                        detail,
                    }) => {
                        let mut report = verifier.finish();
                        report.broken = Some(BrokenLink {
                            stream_id: stream,
                            seq,
                            what: detail,
                            expected: "a well-formed event row".into(),
                            found: "a malformed row".into(),
                        });
                        return Ok(report);
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit()
                .await
                .map_err(s.failed("ending a read snapshot"))?;
            Ok(verifier.finish())
        })
        .await
    }

    /// Claims up to `limit` due timers for `owner` for `claim_ms`, earliest first: rows
    /// another node is claiming at this moment are skipped (`FOR UPDATE SKIP LOCKED`), and a
    /// timer claimed by another node is claimable again once its claim lapses. Re-arming a
    /// timer clears its claim; an append that clears it removes it.
    ///
    /// # Errors
    /// Storage errors only.
    pub async fn claim_due_timers(
        &self,
        owner: &str,
        claim_ms: i64,
        limit: usize,
    ) -> Result<Vec<Timer>> {
        if owner.is_empty() || claim_ms <= 0 {
            return Err(Error::PostgresConfig {
                reason: format!(
                    "a timer claim needs an owner and a positive duration, not {owner:?} for {claim_ms} ms"
                ),
            });
        }
        if self.read_only {
            return Err(Error::OpenedReadOnly);
        }
        let (owner, runtime) = (
            owner.to_owned(),
            self.runtime.as_ref().ok_or(Error::WriterStopped)?,
        );
        let s = self.shared.clone();
        let task = runtime.spawn(async move {
            let c = s.client().await?;
            let now = s.clock.as_ref().map(|c| c.now_ms());
            let rows = c
                .query(
                    s.sql.claim_timers.as_str(),
                    &[&owner, &now, &claim_ms, &(limit as i64)],
                )
                .await
                .map_err(s.failed("claiming due timers"))?;
            let mut timers = rows.iter().map(row_to_timer).collect::<Result<Vec<_>>>()?;
            timers.sort_by(|a, b| (a.due_at_ms, &a.stream_id).cmp(&(b.due_at_ms, &b.stream_id)));
            Ok(timers)
        });
        task.await.map_err(|_| Error::WriterStopped)?
    }
}

/// Runs `fut` on the journal's runtime and blocks this thread until it is done: for opening
/// only (a constructor cannot await); reads are async. Unlike
/// `Runtime::block_on`, this may be called from inside another runtime. On a worker of a
/// multi-threaded runtime, the wait hands the worker's other tasks to another thread first
/// (`block_in_place`); on a current-thread runtime it blocks that runtime for the call.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let wait = || rx.recv().map_err(|_| Error::WriterStopped)?;
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl Drop for PostgresJournal {
    fn drop(&mut self) {
        // The writer finishes when its queue closes; nobody awaits an answer any more,
        // so an unfinished batch may roll back (no one was told it committed).
        drop(self.queue.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn failed(&self, context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        let context = context.to_owned();
        move |cause| Error::Postgres {
            target: self.target.clone(),
            context,
            cause,
        }
    }

    /// A read-only transaction on `c` in which every query sees one snapshot.
    async fn snapshot<'c>(&self, c: &'c mut Object) -> Result<deadpool_postgres::Transaction<'c>> {
        c.build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.failed("starting a read snapshot"))
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(cause) => Error::Postgres {
                target: self.target.clone(),
                context: "connecting".into(),
                cause,
            },
            other => Error::WriteFailed {
                reason: format!("no connection to {}: {other}", self.target),
            },
        })
    }
}

/// Identifies what is in `schema` and creates or migrates the journal there, under an
/// advisory lock so that nodes starting together do it once. Nothing is changed unless the
/// schema is absent, empty, or an older rekey journal.
async fn prepare_schema(s: &Shared, schema: &str) -> Result<()> {
    let mut c = s.client().await?;
    check_durable(s, &c).await?;
    let tx = c
        .transaction()
        .await
        .map_err(s.failed("starting the schema check"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('rekey journal ' || $1, 0))",
        &[&schema],
    )
    .await
    .map_err(s.failed("locking the schema check"))?;
    let from = match inspect(s, &tx, schema).await? {
        Found::Journal(v) if v == SCHEMA_VERSION => return Ok(()),
        Found::Journal(v) => v,
        Found::Empty => 0,
    };
    if from == 0 {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(s.failed("creating the journal's schema"))?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.batch_execute(&sql.replace("{s}", schema))
            .await
            .map_err(s.failed(&format!("migrating the schema to version {}", i + 1)))?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.meta (id, application_id, schema_version, last_global_seq)
             VALUES (1, $1, $2, 0)
             ON CONFLICT (id) DO UPDATE SET schema_version = $2"
        ),
        &[&APPLICATION_ID, &SCHEMA_VERSION],
    )
    .await
    .map_err(s.failed("stamping the schema version"))?;
    tx.commit()
        .await
        .map_err(s.failed("committing the schema migration"))
}

/// Checks that `schema` holds a journal this rekey reads, without writing anything.
async fn check_existing(s: &Shared, schema: &str) -> Result<()> {
    let c = s.client().await?;
    match inspect(s, &c, schema).await? {
        Found::Journal(v) if v == SCHEMA_VERSION => Ok(()),
        Found::Journal(v) => Err(Error::NotAPostgresJournal {
            target: s.target.clone(),
            reason: format!(
                "schema version {v} is older than {SCHEMA_VERSION}; open it writable once (`rekey run` or `rekey rotate`) to migrate"
            ),
        }),
        Found::Empty => Err(Error::NoPostgresJournal {
            target: s.target.clone(),
        }),
    }
}

/// Refuses a server that acknowledges commits before they are on disk.
async fn check_durable(s: &Shared, c: &Object) -> Result<()> {
    let row = c
        .query_one("SELECT current_setting('fsync')", &[])
        .await
        .map_err(s.failed("reading the server's fsync setting"))?;
    let fsync: String = row.get(0);
    if fsync != "on" {
        return Err(Error::PostgresNotDurable {
            target: s.target.clone(),
            setting: "fsync",
            found: fsync,
            required: "on",
        });
    }
    Ok(())
}

/// What a schema turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Absent or holding nothing: a new journal may be created in it.
    Empty,
    /// A rekey journal at this schema version (never newer than ours).
    Journal(i64),
}

/// Identifies `schema` without writing to it.
async fn inspect(
    s: &Shared,
    c: &impl deadpool_postgres::GenericClient,
    schema: &str,
) -> Result<Found> {
    let not_a_journal = |reason: String| Error::NotAPostgresJournal {
        target: s.target.clone(),
        reason,
    };
    let objects: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(s.failed("inspecting the journal's schema"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if objects.is_empty() {
        return Ok(Found::Empty);
    }
    if !objects.iter().any(|o| o == "meta") {
        return Err(not_a_journal(format!(
            "the schema holds {} tables of another program ({}) and no rekey meta table",
            objects.len(),
            objects
                .iter()
                .take(3)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let row = c
        .query_opt(
            &format!(
                "SELECT application_id::int8, schema_version::int8 FROM {schema}.meta WHERE id = 1"
            ),
            &[],
        )
        .await
        .map_err(|e| not_a_journal(format!("its meta table is not rekey's ({})", describe(&e))))?
        .ok_or_else(|| not_a_journal("its meta table is empty".into()))?;
    let (app_id, version): (i64, i64) = (row.get(0), row.get(1));
    if app_id != APPLICATION_ID {
        return Err(not_a_journal(format!(
            "application id is {app_id:#x}, not rekey's {APPLICATION_ID:#x}"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::NewerPostgresSchema {
            target: s.target.clone(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Found::Journal(version))
}

/// Takes the writer's requests in batches. Callers answered by one batch usually send their
/// next request at once; a batch started on the first of them to arrive would commit those
/// few alone while the rest queue behind it. So while fewer requests wait than the last
/// batch answered, the writer waits for more, up to [`LINGER`]. A lone caller never waits.
async fn write_loop(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut answered = 0;
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        take_waiting(&mut requests, &mut batch);
        let want = answered.min(BATCH_REQUESTS_MAX);
        if batch.len() < want {
            let mut linger = std::pin::pin!(tokio::time::sleep(LINGER));
            while batch.len() < want {
                // `None`: the wait is over; `Some(None)`: the queue closed.
                let next = std::future::poll_fn(|cx| match requests.poll_recv(cx) {
                    std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                    std::task::Poll::Pending => linger.as_mut().poll(cx).map(|()| None),
                })
                .await;
                match next {
                    Some(Some(r)) => {
                        batch.push(r);
                        take_waiting(&mut requests, &mut batch);
                    }
                    Some(None) | None => break,
                }
            }
        }
        answered = batch.len();
        commit_batch(&shared, batch, false).await;
    }
}

/// Moves the requests already queued into `batch`, up to [`BATCH_REQUESTS_MAX`].
fn take_waiting(requests: &mut mpsc::UnboundedReceiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < BATCH_REQUESTS_MAX {
        match requests.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// Runs a batch in one transaction and answers each request once it committed. A batch whose
/// connection failed is run again, on a new connection, with the same event ids, so what did
/// commit is recognised; a batch the server refused is run again one request at a time, so one
/// request's failure does not sink the others.
async fn commit_batch(s: &Shared, batch: Vec<Request>, mut retried: bool) {
    let mut ops = Vec::new();
    let mut groups = Vec::new();
    let mut replies = Vec::new();
    for r in batch {
        let start = ops.len();
        ops.extend(r.ops);
        groups.push(start..ops.len());
        replies.push(r.reply);
    }
    let mut last = None;
    for attempt in 0..BATCH_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        match run_batch(s, &ops, &groups, retried).await {
            Ok(mut outcomes) => {
                // Each request's ops, in order: all done, or its first refusal.
                for (reply, group) in replies.into_iter().zip(&groups).rev() {
                    let answer = outcomes.split_off(group.start).into_iter().collect();
                    let _ = reply.send(answer);
                }
                return;
            }
            Err(BatchFailure::Connection(e)) => {
                retried = true;
                last = Some(e);
            }
            Err(BatchFailure::Refused(e)) if replies.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
                return;
            }
            Err(BatchFailure::Refused(_)) => {
                // Alone, each request gets its own outcome.
                let mut ops = ops.into_iter();
                for (reply, group) in replies.into_iter().zip(groups) {
                    let ops = ops.by_ref().take(group.len()).collect();
                    Box::pin(commit_batch(s, vec![Request { ops, reply }], retried)).await;
                }
                return;
            }
        }
    }
    for reply in replies {
        let _ = reply.send(Err(outcome_unknown(s, last.as_ref())));
    }
}

/// The answer to a write whose connection failed every attempt.
fn outcome_unknown(s: &Shared, last: Option<&Error>) -> Error {
    let why = last.map(ToString::to_string).unwrap_or_default();
    Error::WriteFailed {
        reason: format!(
            "the connection to {} failed {BATCH_ATTEMPTS_MAX} times, so whether this write was committed is unknown ({why}); re-read the stream before deciding again",
            s.target
        ),
    }
}

/// Splits a failure into "the connection failed" and "the server refused".
fn classify(s: &Shared, context: &str, e: tokio_postgres::Error) -> BatchFailure {
    let transient = is_transient(&e);
    let error = Error::Postgres {
        target: s.target.clone(),
        context: context.to_owned(),
        cause: e,
    };
    if transient {
        BatchFailure::Connection(error)
    } else {
        BatchFailure::Refused(error)
    }
}

/// One try at a batch: on any failure the connection is discarded, so a half-done
/// transaction never returns to the pool.
async fn run_batch(
    s: &Shared,
    ops: &[Op],
    groups: &[Range<usize>],
    retried: bool,
) -> std::result::Result<Vec<Result<Done>>, BatchFailure> {
    let client = s.client().await.map_err(BatchFailure::Connection)?;
    let result = run_batch_on(s, &client, ops, groups, retried).await;
    if result.is_err() {
        drop(Object::take(client));
    }
    result
}

async fn run_batch_on(
    s: &Shared,
    c: &Object,
    ops: &[Op],
    groups: &[Range<usize>],
    retried: bool,
) -> std::result::Result<Vec<Result<Done>>, BatchFailure> {
    let fail = |context: &'static str| move |e| classify(s, context, e);
    // A malformed stream id is refused by the rules, before it reaches the database.
    let ids: Vec<&str> = ops
        .iter()
        .map(Op::stream_id)
        .filter(|id| validate_stream_id(id).is_ok())
        .collect();
    let read = c
        .prepare_cached(&s.sql.read_rows)
        .await
        .map_err(fail("preparing a read"))?;
    // One round trip: the read is sent behind BEGIN without waiting for its answer, and the
    // server runs it once the counter row is locked, inside the transaction.
    let read_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (begun, read_rows) =
        tokio::join!(c.simple_query(&s.sql.begin), c.query(&read, &read_params));
    let begun = begun.map_err(fail("starting a write transaction"))?;
    let read_rows = read_rows.map_err(fail("reading stream heads"))?;
    let (mut last_global, db_now) = begun
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(|v| v.parse::<i64>().ok()),
                r.get(1).and_then(|v| v.parse::<i64>().ok()),
            )),
            _ => None,
        })
        .and_then(|(g, n)| Some((g?, n?)))
        .ok_or_else(|| {
            BatchFailure::Refused(Error::NotAPostgresJournal {
                target: s.target.clone(),
                reason: "its meta table has no counter row".into(),
            })
        })?;
    let now_ms = s.clock.as_ref().map_or(db_now, |clock| clock.now_ms());
    let mut rows: HashMap<String, StreamRow> = HashMap::new();
    for r in &read_rows {
        let (id, row) = decode_stream_row(r).map_err(BatchFailure::Refused)?;
        rows.insert(id, row);
    }

    let mut outcomes: Vec<Option<Result<Done>>> = ops.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..ops.len()).collect();
    for round in 0..PLAN_ATTEMPTS_MAX {
        if round > 0 {
            reread_rows(s, c, ops, &pending, &mut rows).await?;
        }
        let planned = plan_round(ops, groups, &pending, &mut rows, now_ms);
        let written = write_round(s, c, ops, &planned, last_global, now_ms).await?;
        let mut again = Vec::new();
        for (i, decided) in planned.decided {
            let stream_id = ops[i].stream_id();
            if planned.folds.contains_key(stream_id) && !written.landed.contains(stream_id) {
                // Another writer changed the row since it was read: read it again, decide
                // again, in the next round.
                again.push(i);
                continue;
            }
            outcomes[i] = Some(match (decided, &ops[i]) {
                (Ok(Done::Appended(mut appended)), _) => match written.last_globals.get(&i) {
                    Some(g) => {
                        appended.last_global_seq = *g as u64;
                        Ok(Done::Appended(appended))
                    }
                    None => Err(Error::WriteFailed {
                        reason: format!(
                            "the events of an append to {stream_id} were not given global sequences"
                        ),
                    }),
                },
                // A retried append that committed before its acknowledgement was lost is
                // refused now (its own events moved the head): find them, and report done.
                (Err(refusal), Op::Append(a, event_ids, _)) if retried => {
                    match find_appended(s, c, a, event_ids).await? {
                        Some(appended) => Ok(Done::Appended(appended)),
                        None => Err(refusal),
                    }
                }
                (other, _) => other,
            });
        }
        // Part of an atomic group landed and part found its row changed: it cannot be
        // undone alone, so the batch is refused, and run again one request at a time.
        if let Some(g) = groups.iter().find(|g| {
            let waiting = (g.start..g.end).filter(|i| again.contains(i)).count();
            g.len() > 1 && waiting > 0 && waiting < g.len()
        }) {
            return Err(BatchFailure::Refused(Error::WriteFailed {
                reason: format!(
                    "stream {} changed under an atomic append; retry",
                    ops[g.start].stream_id()
                ),
            }));
        }
        last_global = written.last_global.max(last_global);
        pending = again;
        if pending.is_empty() {
            break;
        }
    }
    let outcomes: Vec<Result<Done>> = outcomes
        .into_iter()
        .zip(ops)
        .map(|(outcome, op)| {
            outcome.unwrap_or_else(|| {
                Err(Error::WriteFailed {
                    reason: format!(
                        "stream {} changed under this write {PLAN_ATTEMPTS_MAX} times in a row; retry",
                        op.stream_id()
                    ),
                })
            })
        })
        .collect();
    // The durable commit: nobody hears "ok" before it.
    c.batch_execute("COMMIT")
        .await
        .map_err(fail("committing"))?;
    Ok(outcomes)
}

/// Reads again the rows of the streams of `pending`, whose guarded writes found them changed.
async fn reread_rows(
    s: &Shared,
    c: &Object,
    ops: &[Op],
    pending: &[usize],
    rows: &mut HashMap<String, StreamRow>,
) -> std::result::Result<(), BatchFailure> {
    let mut ids: Vec<&str> = pending.iter().map(|&i| ops[i].stream_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let read = c
        .prepare_cached(&s.sql.read_rows)
        .await
        .map_err(|e| classify(s, "preparing a read", e))?;
    let found = c
        .query(&read, &[&ids])
        .await
        .map_err(|e| classify(s, "re-reading stream heads", e))?;
    for id in &ids {
        rows.remove(*id);
    }
    for r in &found {
        let (id, row) = decode_stream_row(r).map_err(BatchFailure::Refused)?;
        rows.insert(id, row);
    }
    Ok(())
}

/// One stream's change in a round: the row the rules read first (the guard) and the row their
/// decisions leave, with what the stream's appends carry for its summary row.
#[derive(Debug, Clone)]
struct Fold {
    /// The row as read, `None` when the stream had no row (it is then inserted).
    base: Option<StreamRow>,
    /// The row after every op of the round on this stream.
    row: StreamRow,
    /// Some op appended: the head columns change, and the guard covers them.
    appended: bool,
    /// The subject of the append that created the stream, when one did.
    subject: Option<String>,
    /// The last status an append set.
    status: Option<String>,
    /// Each timer's last change: its due time, or `None` to clear it.
    timers: Vec<(String, Option<i64>)>,
}

impl Fold {
    fn new(base: Option<StreamRow>) -> Self {
        let row = base.clone().unwrap_or(StreamRow {
            head_seq: 0,
            head_hash: Digest32::GENESIS,
            lease_owner: None,
            lease_epoch: 0,
            lease_expires_at_ms: None,
        });
        Self {
            base,
            row,
            appended: false,
            subject: None,
            status: None,
            timers: Vec::new(),
        }
    }

    /// Adds what the rules decided for one op (in batch order) to the stream's change.
    fn absorb(&mut self, plan: &Plan<'_>) {
        if let Some((subject, status, head_seq, head_hash)) = &plan.head {
            if !self.appended && self.row.head_seq == 0 {
                // The append that creates the stream records its subject.
                self.subject.clone_from(subject);
            }
            if status.is_some() {
                self.status.clone_from(status);
            }
            self.appended = true;
            self.row.head_seq = *head_seq;
            self.row.head_hash = *head_hash;
        }
        if let Some(lease) = &plan.lease {
            self.row.lease_owner = Some(lease.owner.clone());
            self.row.lease_epoch = lease.token as i64;
            self.row.lease_expires_at_ms = Some(lease.expires_at_ms);
        }
        for change in &plan.timers {
            let (name, due) = match change {
                TimerChange::Put(t) => (&t.name, Some(t.due_at_ms)),
                TimerChange::Clear(name) => (name, None),
            };
            match self.timers.iter_mut().find(|(n, _)| n == name) {
                Some(last) => last.1 = due,
                None => self.timers.push((name.clone(), due)),
            }
        }
    }
}

/// A round's decisions, before they are written.
#[derive(Debug, Default)]
struct Round {
    /// Each op of the round (by batch position) and what the rules decided for it.
    decided: Vec<(usize, Result<Done>)>,
    /// The change of each stream some op of the round changes.
    folds: HashMap<String, Fold>,
    /// The streams of `folds` in the order the batch first changed them.
    order: Vec<String>,
    /// The events to insert: the batch position of their append, and the event with its id.
    events: Vec<(usize, Event, [u8; 16])>,
}

/// Decides every op of `pending` in batch order with the rules, each over its stream's row
/// as the earlier ops of the batch left it (`rows` is updated as it goes). The ops of an
/// atomic group (a range of `groups` longer than one) are decided together: when the rules
/// refuse one of them, the others are undone from the round too, and each is refused.
fn plan_round(
    ops: &[Op],
    groups: &[Range<usize>],
    pending: &[usize],
    rows: &mut HashMap<String, StreamRow>,
    now_ms: i64,
) -> Round {
    let mut round = Round::default();
    let mut pending = pending.iter().copied().peekable();
    while let Some(i) = pending.next() {
        // The groups are the batch's requests, in order: the one holding `i` is found by
        // bisection, not by a scan per op.
        let group = groups
            .get(groups.partition_point(|g| g.end <= i))
            .filter(|g| g.contains(&i) && g.len() > 1 && g.start == i)
            .cloned();
        let Some(group) = group else {
            plan_op(&mut round, rows, ops, i, now_ms);
            continue;
        };
        let saved = Saved::take(&round, rows, &ops[group.clone()]);
        plan_op(&mut round, rows, ops, i, now_ms);
        while let Some(next) = pending.next_if(|n| group.contains(n)) {
            plan_op(&mut round, rows, ops, next, now_ms);
        }
        if round.decided[saved.decided..]
            .iter()
            .any(|(_, d)| d.is_err())
        {
            saved.restore(&mut round, rows);
        }
    }
    round
}

/// Decides op `i` and adds what it changes to the round.
fn plan_op(
    round: &mut Round,
    rows: &mut HashMap<String, StreamRow>,
    ops: &[Op],
    i: usize,
    now_ms: i64,
) {
    let op = &ops[i];
    let stream_id = op.stream_id();
    let row = rows.get(stream_id).cloned();
    let mut plan = Plan::new(row.as_ref());
    let decided = match op {
        Op::Append(a, _, payloads) => {
            ops::append_prepared(&mut plan, a, payloads.clone(), now_ms).map(Done::Appended)
        }
        Op::Acquire {
            stream_id,
            owner,
            ttl_ms,
        } => ops::acquire(&mut plan, stream_id, owner, *ttl_ms, now_ms).map(Done::Lease),
        Op::Renew(lease, ttl_ms) => ops::renew(&mut plan, lease, *ttl_ms, now_ms).map(Done::Lease),
        Op::Release(lease) => ops::release(&mut plan, lease, now_ms).map(|()| Done::Released),
    };
    // A refused op changes nothing; an accepted one that writes joins its stream's change.
    if decided.is_ok() && (plan.head.is_some() || plan.lease.is_some()) {
        let fold = round.folds.entry(stream_id.to_owned()).or_insert_with(|| {
            round.order.push(stream_id.to_owned());
            Fold::new(row.clone())
        });
        fold.absorb(&plan);
        rows.insert(stream_id.to_owned(), fold.row.clone());
        if let Op::Append(_, event_ids, _) = op {
            round.events.extend(
                plan.events
                    .into_iter()
                    .zip(event_ids.iter().copied())
                    .map(|(event, id)| (i, event, id)),
            );
        }
    }
    round.decided.push((i, decided));
}

/// The round and rows as they were before an atomic group was decided, for its streams.
struct Saved {
    decided: usize,
    events: usize,
    order: usize,
    streams: Vec<(String, Option<StreamRow>, Option<Fold>)>,
}

impl Saved {
    fn take(round: &Round, rows: &HashMap<String, StreamRow>, group: &[Op]) -> Self {
        Self {
            decided: round.decided.len(),
            events: round.events.len(),
            order: round.order.len(),
            streams: group
                .iter()
                .map(|op| {
                    let id = op.stream_id();
                    (
                        id.to_owned(),
                        rows.get(id).cloned(),
                        round.folds.get(id).cloned(),
                    )
                })
                .collect(),
        }
    }

    /// Undoes the group's changes and refuses each of its ops: the first with the refusal
    /// the rules gave (the group's answer), the others saying why they were not written.
    fn restore(self, round: &mut Round, rows: &mut HashMap<String, StreamRow>) {
        round.events.truncate(self.events);
        round.order.truncate(self.order);
        for (id, row, fold) in self.streams {
            match row {
                Some(row) => rows.insert(id.clone(), row),
                None => rows.remove(&id),
            };
            match fold {
                Some(fold) => round.folds.insert(id, fold),
                None => round.folds.remove(&id),
            };
        }
        // The group's answer is its first op's: the refusal the rules gave.
        let mut decided = round.decided.split_off(self.decided);
        let mut refusal = decided
            .iter_mut()
            .find(|(_, d)| d.is_err())
            .map(|(_, d)| std::mem::replace(d, Ok(Done::Released)));
        for (i, _) in decided {
            let d = refusal.take().unwrap_or_else(|| {
                Err(Error::WriteFailed {
                    reason: "not written: another append of its atomic group was refused".into(),
                })
            });
            round.decided.push((i, d));
        }
    }
}

/// What a round's statement wrote.
#[derive(Debug, Default)]
struct Written {
    /// The streams whose guarded change landed.
    landed: std::collections::HashSet<String>,
    /// The global sequence of the last event of each append that landed, by batch position.
    last_globals: HashMap<usize, i64>,
    /// The last global sequence given (unchanged when no event landed).
    last_global: i64,
}

/// Writes a round's changes with one statement: every stream's guarded head and lease change,
/// the events of the streams whose change landed (numbered after `last_global` in batch order,
/// so a change that did not land leaves no gap), their timers, and the counter row.
async fn write_round(
    s: &Shared,
    c: &Object,
    ops: &[Op],
    round: &Round,
    last_global: i64,
    now_ms: i64,
) -> std::result::Result<Written, BatchFailure> {
    let mut written = Written {
        last_global,
        ..Written::default()
    };
    if round.order.is_empty() {
        return Ok(written);
    }
    let folds: Vec<(&str, &Fold)> = round
        .order
        .iter()
        .map(|id| (id.as_str(), &round.folds[id]))
        .collect();
    let genesis = Digest32::GENESIS;
    let streams: Vec<&str> = folds.iter().map(|(id, _)| *id).collect();
    let is_new: Vec<bool> = folds.iter().map(|(_, f)| f.base.is_none()).collect();
    let appended: Vec<bool> = folds.iter().map(|(_, f)| f.appended).collect();
    let g_seq: Vec<i64> = folds
        .iter()
        .map(|(_, f)| f.base.as_ref().map_or(0, |r| r.head_seq as i64))
        .collect();
    let g_hash: Vec<&[u8]> = folds
        .iter()
        .map(|(_, f)| &f.base.as_ref().map_or(&genesis, |r| &r.head_hash).0[..])
        .collect();
    let g_owner: Vec<Option<&str>> = folds
        .iter()
        .map(|(_, f)| f.base.as_ref().and_then(|r| r.lease_owner.as_deref()))
        .collect();
    let g_epoch: Vec<i64> = folds
        .iter()
        .map(|(_, f)| f.base.as_ref().map_or(0, |r| r.lease_epoch))
        .collect();
    let g_expiry: Vec<Option<i64>> = folds
        .iter()
        .map(|(_, f)| f.base.as_ref().and_then(|r| r.lease_expires_at_ms))
        .collect();
    let seq: Vec<i64> = folds.iter().map(|(_, f)| f.row.head_seq as i64).collect();
    let hash: Vec<&[u8]> = folds.iter().map(|(_, f)| &f.row.head_hash.0[..]).collect();
    let status: Vec<Option<&str>> = folds.iter().map(|(_, f)| f.status.as_deref()).collect();
    let subject: Vec<Option<&str>> = folds.iter().map(|(_, f)| f.subject.as_deref()).collect();
    let owner: Vec<Option<&str>> = folds
        .iter()
        .map(|(_, f)| f.row.lease_owner.as_deref())
        .collect();
    let epoch: Vec<i64> = folds.iter().map(|(_, f)| f.row.lease_epoch).collect();
    let expiry: Vec<Option<i64>> = folds
        .iter()
        .map(|(_, f)| f.row.lease_expires_at_ms)
        .collect();

    let events = &round.events;
    let e_pos: Vec<i64> = events.iter().map(|(i, _, _)| *i as i64).collect();
    let e_stream: Vec<&str> = events
        .iter()
        .map(|(_, e, _)| e.stream_id.as_str())
        .collect();
    let e_id: Vec<&[u8]> = events.iter().map(|(_, _, id)| &id[..]).collect();
    let e_seq: Vec<i64> = events.iter().map(|(_, e, _)| e.stream_seq as i64).collect();
    let e_kind: Vec<&str> = events.iter().map(|(_, e, _)| e.kind.as_str()).collect();
    let e_version: Vec<i64> = events
        .iter()
        .map(|(_, e, _)| i64::from(e.schema_version))
        .collect();
    let e_payload: Vec<&[u8]> = events
        .iter()
        .map(|(_, e, _)| e.payload.as_bytes())
        .collect();
    let e_prev: Vec<&[u8]> = events.iter().map(|(_, e, _)| &e.prev_hash.0[..]).collect();
    let e_hash: Vec<&[u8]> = events.iter().map(|(_, e, _)| &e.hash.0[..]).collect();

    let timers: Vec<(&str, &str, Option<i64>)> = folds
        .iter()
        .flat_map(|(id, f)| {
            f.timers
                .iter()
                .map(|(name, due)| (*id, name.as_str(), *due))
        })
        .collect();
    let t_stream: Vec<&str> = timers.iter().map(|t| t.0).collect();
    let t_name: Vec<&str> = timers.iter().map(|t| t.1).collect();
    let t_due: Vec<Option<i64>> = timers.iter().map(|t| t.2).collect();

    let params: [&(dyn ToSql + Sync); 29] = [
        &streams,
        &is_new,
        &appended,
        &g_seq,
        &g_hash,
        &g_owner,
        &g_epoch,
        &g_expiry,
        &seq,
        &hash,
        &status,
        &subject,
        &owner,
        &epoch,
        &expiry,
        &now_ms,
        &e_pos,
        &e_stream,
        &e_id,
        &e_seq,
        &e_kind,
        &e_version,
        &e_payload,
        &e_prev,
        &e_hash,
        &last_global,
        &t_stream,
        &t_name,
        &t_due,
    ];
    let st = c
        .prepare_cached(&s.sql.write_round)
        .await
        .map_err(|e| classify(s, "preparing a batch write", e))?;
    let result = c.query(&st, &params).await.map_err(|e| {
        let context = match ops.len() {
            1 => format!("writing to {}", ops[0].stream_id()),
            n => format!("writing a batch of {n} requests"),
        };
        classify(s, &context, e)
    })?;
    for r in &result {
        if let Some(stream_id) = r.get::<_, Option<String>>(0) {
            written.landed.insert(stream_id);
        } else if let (Some(pos), Some(g)) =
            (r.get::<_, Option<i64>>(1), r.get::<_, Option<i64>>(2))
        {
            written.last_globals.insert(pos as usize, g);
            written.last_global = written.last_global.max(g);
        }
    }
    Ok(written)
}

/// The append whose events carry `event_ids`, when they are already stored.
async fn find_appended(
    s: &Shared,
    c: &Object,
    a: &Append,
    event_ids: &[[u8; 16]],
) -> std::result::Result<Option<Appended>, BatchFailure> {
    let ids: Vec<&[u8]> = event_ids.iter().map(|id| &id[..]).collect();
    let st = c
        .prepare_cached(&s.sql.find_events)
        .await
        .map_err(|e| classify(s, "preparing a lookup", e))?;
    let found = c.query(&st, &[&ids]).await.map_err(|e| {
        classify(
            s,
            &format!("looking up a retried append to {}", a.stream_id),
            e,
        )
    })?;
    if found.len() != event_ids.len() {
        return Ok(None);
    }
    let (first, last) = (&found[0], &found[found.len() - 1]);
    let last_seq = last.get::<_, i64>(0) as u64;
    let hash: Vec<u8> = last.get(2);
    Ok(Some(Appended {
        first_seq: first.get::<_, i64>(0) as u64,
        last_seq,
        last_global_seq: last.get::<_, i64>(1) as u64,
        head_hash: digest(&a.stream_id, last_seq, &hash).map_err(BatchFailure::Refused)?,
    }))
}

fn decode_stream_row(r: &Row) -> Result<(String, StreamRow)> {
    let id: String = r.get(0);
    let seq = r.get::<_, i64>(1) as u64;
    let hash: Vec<u8> = r.get(2);
    Ok((
        id.clone(),
        StreamRow {
            head_seq: seq,
            head_hash: digest(&id, seq, &hash)?,
            lease_owner: r.get(3),
            lease_epoch: r.get(4),
            lease_expires_at_ms: r.get(5),
        },
    ))
}

fn digest(stream_id: &str, seq: u64, bytes: &[u8]) -> Result<Digest32> {
    Digest32::from_slice(bytes).ok_or_else(|| Error::Corrupt {
        stream: stream_id.to_owned(),
        seq,
        detail: format!("a stored hash is {} bytes, not 32", bytes.len()),
    })
}

fn row_to_event(r: &Row) -> Result<Event> {
    let stream_id: String = r.try_get(1).map_err(|e| Error::Corrupt {
        stream: String::new(),
        seq: 0,
        detail: format!("an event row cannot be decoded ({e})"),
    })?;
    let stream_seq = r.try_get::<_, i64>(2).map_err(|e| Error::Corrupt {
        stream: stream_id.clone(),
        seq: 0,
        detail: format!("an event row cannot be decoded ({e})"),
    })? as u64;
    // Once the row's place is known, an undecodable column is corruption at that place.
    let bad = |detail: String| Error::Corrupt {
        stream: stream_id.clone(),
        seq: stream_seq,
        detail,
    };
    let col = |e: tokio_postgres::Error| bad(format!("an event column cannot be decoded ({e})"));
    let version: i64 = r.try_get(4).map_err(col)?;
    let payload: Vec<u8> = r.try_get(6).map_err(col)?;
    let prev: Vec<u8> = r.try_get(7).map_err(col)?;
    let hash: Vec<u8> = r.try_get(8).map_err(col)?;
    Ok(Event {
        global_seq: r.try_get::<_, i64>(0).map_err(col)? as u64,
        kind: r.try_get(3).map_err(col)?,
        schema_version: u32::try_from(version)
            .map_err(|_| bad(format!("schema version {version} is out of range")))?,
        recorded_at_ms: r.try_get(5).map_err(col)?,
        payload: String::from_utf8(payload)
            .map_err(|_| bad("the payload is not UTF-8 text".into()))?,
        prev_hash: digest(&stream_id, stream_seq, &prev)?,
        hash: digest(&stream_id, stream_seq, &hash)?,
        stream_id,
        stream_seq,
    })
}

fn row_to_info(r: &Row) -> Result<StreamInfo> {
    let stream_id: String = r.get(0);
    let head_seq = r.get::<_, i64>(5) as u64;
    let hash: Vec<u8> = r.get(6);
    Ok(StreamInfo {
        head_hash: digest(&stream_id, head_seq, &hash)?,
        subject: r.get(1),
        status: r.get(2),
        created_at_ms: r.get(3),
        updated_at_ms: r.get(4),
        head_seq,
        stream_id,
    })
}

fn row_to_timer(r: &Row) -> Result<Timer> {
    Ok(Timer {
        stream_id: r.get(0),
        name: r.get(1),
        due_at_ms: r.get(2),
    })
}

async fn heads_in(s: &Shared, c: &impl deadpool_postgres::GenericClient) -> Result<Vec<Head>> {
    let rows = c
        .query(s.sql.heads.as_str(), &[])
        .await
        .map_err(s.failed("reading stream heads"))?;
    rows.iter()
        .map(|r| {
            let stream_id: String = r.get(0);
            let seq = r.get::<_, i64>(1) as u64;
            let hash: Vec<u8> = r.get(2);
            Ok(Head {
                hash: digest(&stream_id, seq, &hash)?,
                stream_id,
                seq,
            })
        })
        .collect()
}

async fn stream_info_in(
    s: &Shared,
    c: &impl deadpool_postgres::GenericClient,
    stream_id: &str,
) -> Result<Option<StreamInfo>> {
    c.query_opt(s.sql.stream_info.as_str(), &[&stream_id])
        .await
        .map_err(|e| Error::Postgres {
            target: s.target.clone(),
            context: format!("reading stream {stream_id}"),
            cause: e,
        })?
        .as_ref()
        .map(row_to_info)
        .transpose()
}

impl JournalRead for PostgresJournal {
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Event>> {
        let stream_id = stream_id.to_owned();
        self.read(|s| async move {
            let mut c = s.client().await?;
            let tx = s.snapshot(&mut c).await?;
            let info = stream_info_in(&s, &tx, &stream_id).await?;
            let rows = tx
                .query(s.sql.select_events_of.as_str(), &[&stream_id])
                .await
                .map_err(s.failed("reading a stream"))?;
            let events = rows.iter().map(row_to_event).collect::<Result<Vec<_>>>()?;
            tx.commit()
                .await
                .map_err(s.failed("ending a read snapshot"))?;
            check_stream(&stream_id, info.as_ref(), &events)?;
            Ok(events)
        })
        .await
    }

    async fn read_streams(&self, stream_ids: &[String]) -> Result<Vec<Vec<Event>>> {
        let ids = stream_ids.to_vec();
        self.read(|s| async move {
            let mut c = s.client().await?;
            let tx = s.snapshot(&mut c).await?;
            // Two queries for the whole list, whatever its length.
            let infos = tx
                .query(s.sql.stream_infos.as_str(), &[&ids])
                .await
                .map_err(s.failed("reading stream summaries"))?;
            let rows = tx
                .query(s.sql.select_events_of_many.as_str(), &[&ids])
                .await
                .map_err(s.failed("reading streams"))?;
            tx.commit()
                .await
                .map_err(s.failed("ending a read snapshot"))?;
            let mut infos: HashMap<String, StreamInfo> = infos
                .iter()
                .map(|r| row_to_info(r).map(|i| (i.stream_id.clone(), i)))
                .collect::<Result<_>>()?;
            let mut by_stream: HashMap<String, Vec<Event>> = HashMap::new();
            for r in &rows {
                let event = row_to_event(r)?;
                by_stream
                    .entry(event.stream_id.clone())
                    .or_default()
                    .push(event);
            }
            // A stream asked for more than once is handed over whole at its last mention.
            let mut mentions: HashMap<&str, usize> = HashMap::new();
            for id in &ids {
                *mentions.entry(id.as_str()).or_default() += 1;
            }
            ids.iter()
                .map(|id| {
                    let left = mentions.get_mut(id.as_str()).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    let (events, info) = if left == 0 {
                        (by_stream.remove(id), infos.remove(id))
                    } else {
                        (by_stream.get(id).cloned(), infos.get(id).cloned())
                    };
                    let events = events.unwrap_or_default();
                    check_stream(id, info.as_ref(), &events)?;
                    Ok(events)
                })
                .collect()
        })
        .await
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        let stream_id = stream_id.to_owned();
        self.read(|s| async move {
            let c = s.client().await?;
            stream_info_in(&s, &c, &stream_id).await
        })
        .await
    }
}

impl JournalScan for PostgresJournal {
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.read(move |s| async move {
            let c = s.client().await?;
            let (after, limit) = (after as i64, limit.min(i64::MAX as usize) as i64);
            let rows = c
                .query(s.sql.select_events_after.as_str(), &[&after, &limit])
                .await
                .map_err(s.failed("reading events"))?;
            rows.iter().map(row_to_event).collect()
        })
        .await
    }

    async fn streams(&self, f: &StreamFilter) -> Result<Vec<StreamInfo>> {
        let f = f.clone();
        self.read(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    s.sql.streams.as_str(),
                    &[
                        &f.subject,
                        &f.status,
                        &f.created_from_ms,
                        &f.created_until_ms,
                    ],
                )
                .await
                .map_err(s.failed("listing streams"))?;
            rows.iter().map(row_to_info).collect()
        })
        .await
    }

    async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        self.read(move |s| async move {
            let c = s.client().await?;
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = c
                .query(s.sql.due_timers.as_str(), &[&now_ms, &limit])
                .await
                .map_err(s.failed("reading due timers"))?;
            rows.iter().map(row_to_timer).collect()
        })
        .await
    }

    async fn next_timer(&self) -> Result<Option<Timer>> {
        self.read(|s| async move {
            let c = s.client().await?;
            c.query_opt(s.sql.next_timer.as_str(), &[])
                .await
                .map_err(s.failed("reading the next timer"))?
                .as_ref()
                .map(row_to_timer)
                .transpose()
        })
        .await
    }
}

impl JournalAppend for PostgresJournal {
    async fn append(&self, append: Append) -> Result<Appended> {
        if self.read_only {
            return Err(Error::OpenedReadOnly);
        }
        // What needs no row is checked, and the payloads encoded, here rather than in the
        // writer, which every request waits on.
        let payloads = ops::prepare(&append)?;
        // The ids are made here, once: every retry of this append carries the same ones.
        let ids = self.ids.take(append.events.len());
        match self.request(Op::Append(append, ids, payloads)).await? {
            Done::Appended(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        if self.read_only {
            return Err(Error::OpenedReadOnly);
        }
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let payloads = ops::prepare_all(&appends)?;
        let ops: Vec<Op> = appends
            .into_iter()
            .zip(payloads)
            .map(|(a, p)| {
                let ids = self.ids.take(a.events.len());
                Op::Append(a, ids, p)
            })
            .collect();
        // One request: the writer commits it with the batch it joins, all of it or none.
        self.request_all(ops)
            .await?
            .into_iter()
            .map(|d| match d {
                Done::Appended(a) => Ok(a),
                other => Err(unexpected(&other)),
            })
            .collect()
    }
}

fn unexpected(done: &Done) -> Error {
    Error::WriteFailed {
        reason: format!("the journal writer answered with the wrong kind of result ({done:?})"),
    }
}

impl Leases for PostgresJournal {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        let op = Op::Acquire {
            stream_id: stream_id.to_owned(),
            owner: owner.to_owned(),
            ttl_ms,
        };
        match self.request(op).await? {
            Done::Lease(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        match self.request(Op::Renew(lease.clone(), ttl_ms)).await? {
            Done::Lease(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        match self.request(Op::Release(lease.clone())).await? {
            Done::Released => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// What the caller of an import asks its task on the journal's runtime to do.
enum ImportCommand {
    Events(Vec<Event>, Vec<[u8; 16]>),
    Finish(Vec<StreamInfo>, Vec<Timer>),
}

/// An import into an empty PostgreSQL journal: one transaction, held by a task on the
/// journal's runtime, holding the journal's counter row (so no node writes meanwhile), rolled
/// back when this is dropped without [`crate::import::ImportSink::finish`].
pub(crate) struct PgImport<'a> {
    journal: &'a PostgresJournal,
    commands: mpsc::UnboundedSender<(ImportCommand, std::sync::mpsc::SyncSender<Result<()>>)>,
}

impl PostgresJournal {
    /// Starts an import: opens the transaction and checks that the journal holds nothing.
    pub(crate) fn begin_import(&self) -> Result<PgImport<'_>> {
        if self.read_only {
            return Err(Error::OpenedReadOnly);
        }
        let runtime = self.runtime.as_ref().ok_or(Error::WriterStopped)?;
        let (commands, requests) = mpsc::unbounded_channel();
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(import_task(self.shared.clone(), requests, ready));
        started.recv().map_err(|_| Error::WriterStopped)??;
        Ok(PgImport {
            journal: self,
            commands,
        })
    }
}

impl PgImport<'_> {
    fn ask(&self, command: ImportCommand) -> Result<()> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.commands
            .send((command, reply))
            .map_err(|_| Error::WriterStopped)?;
        answer.recv().map_err(|_| Error::WriterStopped)?
    }
}

impl crate::import::ImportSink for PgImport<'_> {
    fn events(&mut self, events: &[Event]) -> Result<()> {
        let ids = self.journal.ids.take(events.len());
        self.ask(ImportCommand::Events(events.to_vec(), ids))
    }

    fn finish(self: Box<Self>, streams: &[StreamInfo], timers: &[Timer]) -> Result<()> {
        self.ask(ImportCommand::Finish(streams.to_vec(), timers.to_vec()))
    }
}

/// The import's transaction: set up, then each command in turn until `Finish` commits it
/// or the caller goes away (rolled back).
async fn import_task(
    s: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<(ImportCommand, std::sync::mpsc::SyncSender<Result<()>>)>,
    ready: std::sync::mpsc::SyncSender<Result<()>>,
) {
    let mut c = match s.client().await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let tx = match c
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
    {
        Ok(tx) => tx,
        Err(e) => {
            let _ = ready.send(Err(s.failed("starting the copy")(e)));
            return;
        }
    };
    let schema = s.sql.schema.as_str();
    let counts = async {
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await?;
        tx.execute(
            &format!("SELECT 1 FROM {schema}.meta WHERE id = 1 FOR UPDATE"),
            &[],
        )
        .await?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {schema}.streams WHERE head_seq > 0),
                            (SELECT count(*) FROM {schema}.events),
                            (SELECT count(*) FROM {schema}.timers)"
                ),
                &[],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get(2)))
    }
    .await;
    match counts {
        Err(e) => {
            let _ = ready.send(Err(s.failed("checking that the journal is empty")(e)));
            return;
        }
        Ok((streams, events, timers)) if streams + events + timers > 0 => {
            let _ = ready.send(Err(Error::CopyTargetNotEmpty {
                target: s.target.clone(),
                streams,
                events,
                timers,
            }));
            return;
        }
        Ok(_) => {
            if ready.send(Ok(())).is_err() {
                return;
            }
        }
    }
    let mut last_global = 0i64;
    while let Some((command, reply)) = commands.recv().await {
        let result = match command {
            ImportCommand::Events(events, ids) => {
                last_global = events
                    .iter()
                    .map(|e| e.global_seq as i64)
                    .fold(last_global, i64::max);
                let globals: Vec<i64> = events.iter().map(|e| e.global_seq as i64).collect();
                let ids: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
                let streams: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
                let seqs: Vec<i64> = events.iter().map(|e| e.stream_seq as i64).collect();
                let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
                let versions: Vec<i64> =
                    events.iter().map(|e| i64::from(e.schema_version)).collect();
                let times: Vec<i64> = events.iter().map(|e| e.recorded_at_ms).collect();
                let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_bytes()).collect();
                let prevs: Vec<&[u8]> = events.iter().map(|e| &e.prev_hash.0[..]).collect();
                let hashes: Vec<&[u8]> = events.iter().map(|e| &e.hash.0[..]).collect();
                tx.execute(
                    &format!(
                        "INSERT INTO {schema}.events (global_seq, event_id, stream_id, stream_seq,
                            kind, schema_version, recorded_at_ms, payload, prev_hash, hash)
                         SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::int8[],
                            $5::text[], $6::int8[], $7::int8[], $8::bytea[], $9::bytea[], $10::bytea[])"
                    ),
                    &[
                        &globals, &ids, &streams, &seqs, &kinds, &versions, &times, &payloads,
                        &prevs, &hashes,
                    ],
                )
                .await
                .map(drop)
                .map_err(s.failed("copying events"))
            }
            ImportCommand::Finish(streams, timers) => {
                let result = match finish_import(&s, &tx, &streams, &timers, last_global).await {
                    Ok(()) => tx.commit().await.map_err(s.failed("committing the copy")),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                return;
            }
        };
        let failed = result.is_err();
        let _ = reply.send(result);
        if failed {
            return;
        }
    }
}

/// Writes the stream records and timers of an import and advances the global counter.
async fn finish_import(
    s: &Shared,
    tx: &deadpool_postgres::Transaction<'_>,
    streams: &[StreamInfo],
    timers: &[Timer],
    last_global: i64,
) -> Result<()> {
    let schema = s.sql.schema.as_str();
    let ids: Vec<&str> = streams.iter().map(|i| i.stream_id.as_str()).collect();
    let subjects: Vec<Option<&str>> = streams.iter().map(|i| i.subject.as_deref()).collect();
    let statuses: Vec<&str> = streams.iter().map(|i| i.status.as_str()).collect();
    let created: Vec<i64> = streams.iter().map(|i| i.created_at_ms).collect();
    let updated: Vec<i64> = streams.iter().map(|i| i.updated_at_ms).collect();
    let seqs: Vec<i64> = streams.iter().map(|i| i.head_seq as i64).collect();
    let hashes: Vec<&[u8]> = streams.iter().map(|i| &i.head_hash.0[..]).collect();
    tx.execute(
        &format!(
            "INSERT INTO {schema}.streams (stream_id, subject, status, created_at_ms,
                updated_at_ms, head_seq, head_hash)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                $6::int8[], $7::bytea[])"
        ),
        &[
            &ids, &subjects, &statuses, &created, &updated, &seqs, &hashes,
        ],
    )
    .await
    .map_err(s.failed("copying stream records"))?;
    let t_streams: Vec<&str> = timers.iter().map(|t| t.stream_id.as_str()).collect();
    let t_names: Vec<&str> = timers.iter().map(|t| t.name.as_str()).collect();
    let t_due: Vec<i64> = timers.iter().map(|t| t.due_at_ms).collect();
    tx.execute(
        &format!(
            "INSERT INTO {schema}.timers (stream_id, name, due_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])"
        ),
        &[&t_streams, &t_names, &t_due],
    )
    .await
    .map_err(s.failed("copying timers"))?;
    tx.execute(
        &format!(
            "UPDATE {schema}.meta SET last_global_seq = GREATEST(last_global_seq, $1) WHERE id = 1"
        ),
        &[&last_global],
    )
    .await
    .map_err(s.failed("advancing the global sequence"))?;
    Ok(())
}
