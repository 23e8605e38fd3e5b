//! The global feed never skips: while many appenders write many streams (on PostgreSQL from
//! several nodes at once), and some writes are held mid-transaction on purpose, a follower
//! paging through `read_after` from its last position ends with every event exactly once, in
//! an order consistent with each stream's sequence. The follower reads as followers do:
//! `read_feed`, resuming from the opaque cursor each page returns, kept as text.
//!
//! How a write is held:
//! - PostgreSQL: another session locks one stream's row (`FOR UPDATE`), then a node appends
//!   to that stream. The node's batch has begun and taken its place in the global order, and
//!   now waits inside its transaction on the guarded head `UPDATE` (the test checks the
//!   server reports it blocked). Meanwhile the other nodes keep appending: an engine that
//!   numbered their events past the held batch's and let them commit first would have the
//!   follower move past the held events, which then commit behind its position.
//! - SQLite: another connection holds the write lock (`BEGIN IMMEDIATE`), so the writer's
//!   transaction waits; the follower reads throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rekey_journal::{Append, Event, FeedCursor, JournalScan};
use tokio::time::Instant;

use crate::common::{Journal, Kind, Place, append_ok, manual_clock, numbered, on_both_engines};
use crate::pg_server;

/// Nodes (journals opened on one schema) appending at once on PostgreSQL; SQLite has one
/// writer per file, so one journal.
const PG_NODES: usize = 3;
/// Streams written concurrently, spread over the nodes.
const STREAMS: usize = 24;
/// Appends each stream makes at least; appenders keep going until the last hold ends.
const MIN_APPENDS: u64 = 6;
/// Writes held open on purpose, one after another, each on a stream of its own.
const HOLDS: usize = 3;
/// The follower's page size, small so that positions fall between batches.
const PAGE: usize = 7;
/// How long a write is held at least, and how many feed reads must happen meanwhile.
const HOLD_AT_LEAST: Duration = Duration::from_millis(300);
const READS_WHILE_HELD: u64 = 20;

/// A write held mid-transaction by another session.
enum Hold {
    /// The open transaction holding the stream's row lock.
    Postgres(tokio_postgres::Client),
    /// The connection holding the write lock.
    Sqlite(rusqlite::Connection),
}

impl Hold {
    /// Takes the lock that will stop a write to `stream` inside its transaction.
    async fn take(place: &Place, stream: &str) -> Self {
        match place.kind {
            Kind::Postgres => {
                let client = pg_server::client().await;
                client
                    .batch_execute("BEGIN")
                    .await
                    .expect("beginning the holding transaction");
                let locked = client
                    .execute(
                        &format!(
                            "SELECT 1 FROM {}.streams WHERE stream_id = $1 FOR UPDATE",
                            place.schema
                        ),
                        &[&stream],
                    )
                    .await
                    .expect("locking the stream's row");
                assert_eq!(locked, 1, "{stream} has a row to lock");
                Hold::Postgres(client)
            }
            Kind::Sqlite => {
                let c = rusqlite::Connection::open(&place.path).expect("a second connection");
                c.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                c.execute_batch("BEGIN IMMEDIATE")
                    .expect("taking the write lock");
                Hold::Sqlite(c)
            }
        }
    }

    /// Waits until a write is stopped by this hold: on PostgreSQL, until the server reports
    /// a session blocked by ours (the append's transaction, mid-way).
    async fn wait_for_blocked_writer(&self) {
        let Hold::Postgres(client) = self else {
            // SQLite's writer takes the write lock at its transaction's start: nothing of the
            // batch is written until the hold ends, which the held append's answer shows.
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let blocked: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                    &[],
                )
                .await
                .expect("asking who waits on the held row")
                .get(0);
            if blocked > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no write blocked on the held row within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn release(self) {
        match self {
            Hold::Postgres(client) => client
                .batch_execute("ROLLBACK")
                .await
                .expect("releasing the row lock"),
            Hold::Sqlite(c) => c
                .execute_batch("ROLLBACK")
                .expect("releasing the write lock"),
        }
    }
}

/// Events in append `n` of a stream: 1 to 3, so batches and pages cut across appends.
fn events_in(stream: usize, n: u64) -> u64 {
    1 + (stream as u64 + n) % 3
}

async fn follower_never_skips_a_late_commit(kind: Kind) {
    let place = Place::new(kind);
    let clock = manual_clock();
    let nodes: Vec<Arc<Journal>> = match kind {
        Kind::Sqlite => vec![Arc::new(place.open(&clock))],
        Kind::Postgres => (0..PG_NODES)
            .map(|_| Arc::new(place.open(&clock)))
            .collect(),
    };
    // The streams whose writes are held exist beforehand (a held write updates their row).
    for h in 0..HOLDS {
        append_ok(
            &*nodes[0],
            Append::new(format!("held-{h}"), 0, vec![numbered(0)]),
        )
        .await;
    }

    // The follower: its own journal handle on PostgreSQL (another process, in effect).
    let feed_journal = match kind {
        Kind::Sqlite => nodes[0].clone(),
        Kind::Postgres => Arc::new(place.open(&clock)),
    };
    let finished = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let follower = {
        let (j, finished, reads) = (feed_journal.clone(), finished.clone(), reads.clone());
        // On a thread and runtime of its own, so it polls however busy the appenders are.
        std::thread::spawn(move || {
            crate::common::block_on(async move {
                let (mut cursor, mut seen) = (FeedCursor::start(), Vec::<Event>::new());
                loop {
                    // Read the flag first: once it is set, every write has been answered, so an
                    // empty page read after it means the feed is drained.
                    let last_round = finished.load(Ordering::SeqCst);
                    let page = j.read_feed(&cursor, PAGE).await.expect("reading the feed");
                    reads.fetch_add(1, Ordering::SeqCst);
                    if page.events.is_empty() {
                        assert_eq!(page.next, cursor, "an empty page leaves the cursor");
                        if last_round {
                            return seen;
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    assert!(
                        page.events.len() <= PAGE,
                        "a page holds at most {PAGE} events"
                    );
                    // A follower stores its cursor as text and resumes from it.
                    cursor = page
                        .next
                        .to_string()
                        .parse()
                        .expect("a cursor the feed returned");
                    seen.extend(page.events);
                }
            })
        })
    };

    // The appenders: each stream appends until the holds are over, at least MIN_APPENDS times.
    let holds_over = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (j, holds_over) = (nodes[i % nodes.len()].clone(), holds_over.clone());
            tokio::spawn(async move {
                let stream = format!("s-{i:02}");
                let (mut seq, mut n) = (0u64, 0u64);
                while n < MIN_APPENDS || !holds_over.load(Ordering::SeqCst) {
                    let events = (0..events_in(i, n))
                        .map(|k| numbered(seq + k + 1))
                        .collect();
                    seq = append_ok(&*j, Append::new(&stream, seq, events))
                        .await
                        .last_seq;
                    n += 1;
                    tokio::task::yield_now().await;
                }
                (stream, seq)
            })
        })
        .collect();

    // The holds, one after another, each from a different node.
    for h in 0..HOLDS {
        let stream = format!("held-{h}");
        let hold = Hold::take(&place, &stream).await;
        let node = nodes[h % nodes.len()].clone();
        let held = {
            let stream = stream.clone();
            tokio::spawn(async move {
                append_ok(
                    &*node,
                    Append::new(&stream, 1, vec![numbered(1), numbered(2)]),
                )
                .await
            })
        };
        hold.wait_for_blocked_writer().await;
        let (since, reads_before) = (Instant::now(), reads.load(Ordering::SeqCst));
        while since.elapsed() < HOLD_AT_LEAST
            || reads.load(Ordering::SeqCst) < reads_before + READS_WHILE_HELD
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !held.is_finished(),
            "the append to {stream} was answered while its write was held"
        );
        hold.release().await;
        let appended = held.await.expect("the held append's task");
        assert_eq!(
            appended.last_seq, 3,
            "{stream}: the held append lands after release"
        );
    }
    holds_over.store(true, Ordering::SeqCst);

    let mut heads: BTreeMap<String, u64> = (0..HOLDS).map(|h| (format!("held-{h}"), 3)).collect();
    for a in appenders {
        let (stream, seq) = a.await.expect("an appender task");
        heads.insert(stream, seq);
    }
    finished.store(true, Ordering::SeqCst);
    let seen = follower.join().expect("the follower thread");

    // Every event exactly once, in the order of its stream, and the feed's positions rising.
    let total: u64 = heads.values().sum();
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (i, e) in seen.iter().enumerate() {
        if i > 0 {
            assert!(
                e.global_seq > seen[i - 1].global_seq,
                "feed positions must rise: {} after {}",
                e.global_seq,
                seen[i - 1].global_seq
            );
        }
        assert!(
            ids.insert((e.stream_id.clone(), e.stream_seq)),
            "{}#{} was delivered twice",
            e.stream_id,
            e.stream_seq
        );
        let expected = next.entry(e.stream_id.as_str()).or_insert(1);
        assert_eq!(
            e.stream_seq, *expected,
            "{}: the follower got #{} where #{} was due: the feed skipped (or reordered) an \
             event that committed late",
            e.stream_id, e.stream_seq, expected
        );
        *expected += 1;
    }
    for (stream, head) in &heads {
        assert_eq!(
            next.get(stream.as_str()).map_or(0, |n| n - 1),
            *head,
            "{stream}: the follower must end with all {head} events"
        );
    }
    assert_eq!(seen.len() as u64, total, "every event exactly once");
    assert_eq!(
        feed_journal
            .read_after(0, usize::MAX >> 1)
            .await
            .expect("reading the whole feed"),
        seen,
        "the follower's events are the journal's, in the same order"
    );
}

on_both_engines!(follower_never_skips_a_late_commit);
