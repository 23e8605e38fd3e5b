//! A PostgreSQL batch is written with a constant number of requests to the server, whatever
//! its size, and still keeps every rule of the journal: requests decided in batch order over
//! the rows read at its start, each write guarded by the row the rules saw, global sequences
//! gap-free, one refused request failing alone.
//!
//! How a batch is made: a session holds the journal's counter row, so the writer's first
//! batch (one request) waits for it; every request sent meanwhile waits in the queue, and
//! the writer takes them all as its next batch once the row is free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rekey_journal::{
    Append, Error, JournalAppend, JournalRead, JournalScan, Leases, PostgresJournal, TimerOp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    Kind, Place, T0, append_ok, assert_chain, assert_intact, event, manual_clock, numbered, read,
};
use crate::pg_server;

/// A session of the test server beside the journal's, and its backend's process id.
async fn session() -> (tokio_postgres::Client, i32) {
    let client = pg_server::client().await;
    let pid = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("asking the session's pid")
        .get(0);
    (client, pid)
}

/// Waits until some session waits on a lock the session `pid` holds.
async fn wait_until_blocked_by(observer: &tokio_postgres::Client, pid: i32, what: &str) {
    for _ in 0..6_000 {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&pid],
            )
            .await
            .expect("asking who waits on a lock")
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: nothing waited on session {pid} within 30 s");
}

/// Takes the journal's counter row in a transaction of `hold`, so the writer's batches wait.
async fn hold_counter_row(hold: &tokio_postgres::Client, schema: &str) {
    hold.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM {schema}.meta WHERE id = 1 FOR UPDATE"
    ))
    .await
    .expect("holding the counter row");
}

/// Polls `f` once, which queues its request with the writer; it cannot be answered yet.
fn queue<F: Future + Unpin>(f: &mut F, what: &str) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(std::pin::Pin::new(f).poll(&mut cx), Poll::Pending),
        "{what} was answered while the counter row was held"
    );
}

/// One batch mixing appends to many new streams, several appends to one stream, a stream
/// created and changed twice, an append the rules refuse, and two fenced appends whose rows
/// another session changes while the batch writes them: one lease was renewed (the append is
/// decided again on the new row and lands), one was taken over (decided again, it is refused
/// as stale). Everything that should land lands, in one transaction, with global sequences
/// 1..N exactly; exactly the two refused requests fail; the renewal is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_lands_what_it_should_without_gaps_and_refuses_exactly_the_stale_ones() {
    let place = Place::new(Kind::Postgres);
    let schema = place.schema.clone();
    let clock = manual_clock();
    let j = place.open(&clock);
    append_ok(&j, Append::new("twice", 0, vec![numbered(0)])).await;
    let taken = j.acquire("taken", "node-a", 60_000).await.expect("lease");
    let renewed = j.acquire("renewed", "node-a", 60_000).await.expect("lease");

    let (hold, hold_pid) = session().await;
    hold_counter_row(&hold, &schema).await;
    // Another writer changes the two leased rows in a transaction it keeps open: the batch
    // reads them as they were committed, decides, and its guarded write then waits on them.
    let (other, other_pid) = session().await;
    other
        .batch_execute(&format!(
            "BEGIN;
             UPDATE {schema}.streams SET lease_owner = 'node-b', lease_epoch = lease_epoch + 1,
                 lease_expires_at_ms = {} WHERE stream_id = 'taken';
             UPDATE {schema}.streams SET lease_expires_at_ms = lease_expires_at_ms + 30000
                 WHERE stream_id = 'renewed'",
            T0 + 120_000
        ))
        .await
        .expect("changing the leased rows");

    let mut first = Box::pin(j.append(Append::new("first", 0, vec![numbered(1)])));
    queue(&mut first, "the first request");
    wait_until_blocked_by(&hold, hold_pid, "the first batch").await;

    let mut appends: Vec<Append> = Vec::new();
    for i in 0..20u64 {
        let mut events = vec![numbered(i); 1 + i as usize % 3];
        if i == 0 {
            events[0] = numbered(i).with_timer(TimerOp::Schedule {
                name: "t".into(),
                due_at_ms: T0 + 5,
            });
        }
        appends.push(Append::new(format!("many-{i:02}"), 0, events));
    }
    let stale = appends.len();
    appends.push(
        Append::new(
            "taken",
            0,
            vec![numbered(1).with_timer(TimerOp::Schedule {
                name: "never".into(),
                due_at_ms: T0,
            })],
        )
        .fenced(taken.fence()),
    );
    appends.push(Append::new("twice", 1, vec![numbered(2)]));
    let replanned = appends.len();
    appends.push(Append::new("renewed", 0, vec![numbered(1)]).fenced(renewed.fence()));
    appends.push(Append::new("twice", 2, vec![numbered(3), numbered(4)]));
    let conflicting = appends.len();
    appends.push(Append::new("twice", 1, vec![numbered(99)]));
    appends.push(
        Append::new(
            "fresh",
            0,
            vec![
                event("Opened", serde_json::json!({})).with_timer(TimerOp::Schedule {
                    name: "tmp".into(),
                    due_at_ms: T0,
                }),
            ],
        )
        .subject("fresh-subject"),
    );
    appends.push(
        Append::new(
            "fresh",
            1,
            vec![
                event("Closed", serde_json::json!({}))
                    .with_timer(TimerOp::Clear { name: "tmp".into() }),
            ],
        )
        .status("done"),
    );
    for i in 0..10u64 {
        appends.push(Append::new(format!("late-{i:02}"), 0, vec![numbered(i)]));
    }
    let mut pending: Vec<_> = appends
        .iter()
        .cloned()
        .map(|a| Box::pin(j.append(a)))
        .collect();
    for (i, f) in pending.iter_mut().enumerate() {
        queue(f, &format!("request {i}"));
    }

    hold.batch_execute("ROLLBACK")
        .await
        .expect("releasing the counter row");
    wait_until_blocked_by(&hold, other_pid, "the batch's guarded write").await;
    other
        .batch_execute("COMMIT")
        .await
        .expect("committing the other writer's changes");

    let first = first.await.expect("the first request lands");
    assert_eq!(first.last_global_seq, 2, "the first batch's one event");
    let mut results = Vec::new();
    for f in pending {
        results.push(f.await);
    }

    let all = j.read_after(0, 10_000).await.expect("read_after");
    let globals: Vec<u64> = all.iter().map(|e| e.global_seq).collect();
    assert_eq!(
        globals,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "global sequences are 1..N, with no gap where a request was refused"
    );
    let landed_events: usize = appends
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(a, _)| a.events.len())
        .sum();
    assert_eq!(
        all.len(),
        2 + landed_events,
        "every landed event is stored once"
    );

    let mut expected_seq = std::collections::HashMap::from([("twice", 1u64)]);
    for (i, (a, r)) in appends.iter().zip(&results).enumerate() {
        if i == stale {
            assert!(
                matches!(r, Err(Error::StaleFence { presented, current, holder, .. })
                    if *presented == taken.token && *current == taken.token + 1 && holder == "node-b"),
                "request {i}: the append whose lease was taken over mid-batch is stale, got {r:?}"
            );
            continue;
        }
        if i == conflicting {
            assert!(
                matches!(
                    r,
                    Err(Error::Conflict {
                        expected: 1,
                        actual: 4,
                        ..
                    })
                ),
                "request {i}: sees the earlier appends of its batch, got {r:?}"
            );
            continue;
        }
        let got = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} to {} must land: {e}", a.stream_id));
        let before = expected_seq.entry(a.stream_id.as_str()).or_insert(0);
        assert_eq!(
            (got.first_seq, got.last_seq),
            (*before + 1, *before + a.events.len() as u64),
            "request {i}: its own sequences"
        );
        *before = got.last_seq;
        let stored = &read(&j, &a.stream_id).await[got.last_seq as usize - 1];
        assert_eq!(
            (got.last_global_seq, got.head_hash),
            (stored.global_seq, stored.hash),
            "request {i}: the global sequence and head it was told are its last event's"
        );
    }
    assert!(results[replanned].is_ok(), "the renewed lease's append");

    for stream in expected_seq.keys() {
        assert_chain(stream, &read(&j, stream).await);
    }
    assert!(
        read(&j, "taken").await.is_empty(),
        "the stale append wrote nothing"
    );
    assert_eq!(
        read(&j, "twice").await.len(),
        4,
        "1 before, 1 + 2 in the batch"
    );
    let timers: Vec<(String, String)> = j
        .due_timers(i64::MAX, 100)
        .await
        .expect("due_timers")
        .into_iter()
        .map(|t| (t.stream_id, t.name))
        .collect();
    assert_eq!(
        timers,
        [("many-00".to_owned(), "t".to_owned())],
        "the landed timer only: not the stale append's, not the one armed then cleared"
    );
    let fresh = j
        .stream_info("fresh")
        .await
        .expect("info")
        .expect("fresh exists");
    assert_eq!(
        (
            fresh.subject.as_deref(),
            fresh.status.as_str(),
            fresh.head_seq
        ),
        (Some("fresh-subject"), "done", 2),
        "the creating append's subject and the later append's status"
    );
    let many = j
        .stream_info("many-05")
        .await
        .expect("info")
        .expect("many-05");
    assert_eq!(many.status, "open", "a new stream's default status");

    let (observer, _) = session().await;
    let row = observer
        .query_one(
            &format!(
                "SELECT lease_owner, lease_epoch, lease_expires_at_ms FROM {schema}.streams
                 WHERE stream_id = 'renewed'"
            ),
            &[],
        )
        .await
        .expect("reading the renewed lease");
    assert_eq!(
        (
            row.get::<_, Option<String>>(0),
            row.get::<_, i64>(1),
            row.get::<_, Option<i64>>(2)
        ),
        (
            Some("node-a".to_owned()),
            renewed.token as i64,
            Some(renewed.expires_at_ms + 30_000)
        ),
        "the batch kept the renewal the other writer made"
    );
    let transactions: i64 = observer
        .query_one(
            &format!(
                "SELECT count(DISTINCT xmin::text) FROM {schema}.events
                 WHERE stream_id NOT IN ('first', 'twice') OR stream_seq > 1"
            ),
            &[],
        )
        .await
        .expect("counting transactions")
        .get(0);
    assert_eq!(
        transactions, 1,
        "the queued requests committed as one batch"
    );
    assert_intact(&j.verify(None).await.expect("verify"), "after the batch");
}

/// A TCP proxy on 127.0.0.1 in front of the test server that counts the requests clients
/// send: each simple query (`Q`) and each extended-protocol request ending in `Sync` (`S`).
#[derive(Debug, Clone)]
struct RequestCounter {
    port: u16,
    requests: Arc<AtomicU64>,
}

impl RequestCounter {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let counter = Self {
            port: listener.local_addr().expect("address").port(),
            requests: Arc::default(),
        };
        let requests = counter.requests.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let requests = requests.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let mut messages = Messages::default();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let counted = messages.feed(&buf[..n]);
                        requests.fetch_add(counted, Ordering::SeqCst);
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        counter
    }
}

/// Splits a client's byte stream into protocol messages: the startup message (untyped),
/// then messages of a type byte and a length.
#[derive(Debug, Default)]
struct Messages {
    started: bool,
    pending: Vec<u8>,
}

impl Messages {
    /// Takes more bytes; returns how many requests (`Q` or `S`) they completed.
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut counted = 0;
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.pending.len() < header {
                return counted;
            }
            let at = header - 4;
            let len = u32::from_be_bytes(self.pending[at..at + 4].try_into().expect("4 bytes"));
            let total = at + len as usize;
            if self.pending.len() < total {
                return counted;
            }
            if self.started && matches!(self.pending[0], b'Q' | b'S') {
                counted += 1;
            }
            self.started = true;
            self.pending.drain(..total);
        }
    }
}

/// Queues `n` appends to new streams as one batch and returns how many requests the
/// journal sent the server from the moment the counter row was free until all were answered
/// (the one-request batch before them included).
async fn requests_for_batch(
    j: &PostgresJournal,
    counter: &RequestCounter,
    schema: &str,
    n: usize,
) -> u64 {
    let (hold, hold_pid) = session().await;
    hold_counter_row(&hold, schema).await;
    let mut first = Box::pin(j.append(Append::new(format!("first-{n}"), 0, vec![numbered(0)])));
    queue(&mut first, "the first request");
    wait_until_blocked_by(&hold, hold_pid, "the first batch").await;
    let mut pending: Vec<_> = (0..n)
        .map(|i| {
            Box::pin(j.append(Append::new(
                format!("size-{n}-{i:03}"),
                0,
                vec![numbered(i as u64)],
            )))
        })
        .collect();
    for (i, f) in pending.iter_mut().enumerate() {
        queue(f, &format!("request {i}"));
    }
    let before = counter.requests.load(Ordering::SeqCst);
    hold.batch_execute("ROLLBACK")
        .await
        .expect("releasing the counter row");
    first.await.expect("the first request lands");
    for f in pending {
        f.await.expect("a queued append lands");
    }
    counter.requests.load(Ordering::SeqCst) - before
}

/// A batch costs the server a constant number of requests, not one per append: 64 appends
/// queued together take no more requests than 4 do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_costs_a_constant_number_of_requests_whatever_its_size() {
    let counter = RequestCounter::start(pg_server::server().port).await;
    let schema = pg_server::fresh_schema();
    let j = PostgresJournal::open_with_clock(
        pg_server::config_on(counter.port),
        &schema,
        Arc::new(manual_clock()),
    )
    .expect("opening through the proxy");
    // The writer's statements are prepared once per connection: prepare them first.
    append_ok(&j, Append::new("warm-up", 0, vec![numbered(0)])).await;

    let small = requests_for_batch(&j, &counter, &schema, 4).await;
    let large = requests_for_batch(&j, &counter, &schema, 64).await;
    assert!(
        large <= small + 2 && large <= 12,
        "a batch of 64 appends took {large} requests and one of 4 took {small}: \
         the cost of a batch must not grow with its size"
    );
    assert_eq!(
        j.read_after(0, 1_000).await.expect("read_after").len(),
        1 + 2 + 4 + 64,
        "every append landed"
    );
}
