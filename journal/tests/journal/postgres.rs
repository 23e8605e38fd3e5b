//! What only the PostgreSQL engine has: a connection lost after COMMIT (the retried append is
//! recognised as done and stored once), several nodes on one schema (fencing and optimistic
//! appends across connections), timers claimed with `SKIP LOCKED`, and the database clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rekey_journal::{
    Append, Error, JournalAppend, JournalRead, JournalScan, Leases, PostgresJournal, TimerOp,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    Kind, Place, T0, append_ok, assert_chain, assert_intact, event, expect_err, fill, head_seq,
    manual_clock, numbered, queue_while_held, read,
};
use crate::pg_server;

/// The simple-protocol message `COMMIT` as the journal's writer sends it.
const COMMIT_QUERY: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// The server's CommandComplete tag for it.
const COMMIT_DONE: &[u8] = b"COMMIT\0";

/// A TCP proxy on 127.0.0.1 in front of the test server. Once armed, the next connection
/// that sends COMMIT has it forwarded, waits until the server has answered that it committed,
/// and is then cut without passing the answer on: the client never learns the outcome.
#[derive(Debug, Clone)]
struct CommitCutter {
    port: u16,
    upstream: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl CommitCutter {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let cutter = Self {
            port: listener.local_addr().expect("address").port(),
            upstream,
            armed: Arc::default(),
            cuts: Arc::default(),
        };
        let c = cutter.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(c.clone().relay(client));
            }
        });
        cutter
    }

    async fn relay(self, client: TcpStream) {
        let Ok(server) = TcpStream::connect(("127.0.0.1", self.upstream)).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let commit_sent = Arc::new(AtomicBool::new(false));
        let sent = commit_sent.clone();
        let armed = self.armed.clone();
        let upstream = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if armed.load(Ordering::SeqCst) && contains(&buf[..n], COMMIT_QUERY) {
                    sent.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if commit_sent.load(Ordering::SeqCst)
                && contains(&buf[..n], COMMIT_DONE)
                && self.armed.swap(false, Ordering::SeqCst)
            {
                // The server committed; the client hears nothing more.
                self.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        upstream.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A journal on a fresh schema, reached through a [`CommitCutter`] (not yet armed).
async fn behind_a_commit_cutter() -> (CommitCutter, PostgresJournal) {
    let cutter = CommitCutter::start(pg_server::server().port).await;
    let config = pg_server::config_on(cutter.port);
    let j = PostgresJournal::open_with_clock(
        config,
        &pg_server::fresh_schema(),
        Arc::new(manual_clock()),
    )
    .expect("opening through the proxy");
    (cutter, j)
}

/// The connection is cut after the server committed an append and before the writer heard
/// so. The writer runs the append again on a new connection, with the same event ids: it is
/// reported done, with the sequences it got, and its events are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_commit_acknowledgement_is_lost_is_reported_done_and_stored_once() {
    let (cutter, j) = behind_a_commit_cutter().await;
    fill(&j, "s", 2).await;

    cutter.armed.store(true, Ordering::SeqCst);
    let events = vec![
        event("Lost", json!({"k": 1})),
        event("Lost", json!({"k": 2})),
    ];
    let appended = j
        .append(Append::new("s", 2, events))
        .await
        .expect("the retried append must be reported done, not as a conflict with itself");
    assert_eq!(
        cutter.cuts.load(Ordering::SeqCst),
        1,
        "the acknowledgement of the commit must really have been lost"
    );
    assert_eq!((appended.first_seq, appended.last_seq), (3, 4));

    let stored = read(&j, "s").await;
    assert_chain("s", &stored);
    assert_eq!(stored.len(), 4, "the append is stored once: {stored:#?}");
    assert_eq!(appended.head_hash, stored[3].hash, "the head it reported");
    assert_eq!(appended.last_global_seq, stored[3].global_seq);
    assert_eq!(
        stored
            .iter()
            .filter(|e| e.kind == "Lost")
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
        [r#"{"k":1}"#, r#"{"k":2}"#]
    );
    // The writer goes on as usual.
    append_ok(&j, Append::new("s", 4, vec![numbered(5)])).await;
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "after the lost acknowledgement",
    );
}

/// As above, for an atomic append to two streams: run again with the same event ids after
/// the lost acknowledgement, each of its appends is found done, and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_append_whose_commit_acknowledgement_is_lost_is_reported_done_once() {
    let (cutter, j) = behind_a_commit_cutter().await;
    fill(&j, "lock", 1).await;

    cutter.armed.store(true, Ordering::SeqCst);
    let appended = j
        .append_all(vec![
            Append::new("lock", 1, vec![event("Lost", json!({"k": 1}))]),
            Append::new("rotation", 0, vec![event("Lost", json!({"k": 2}))]),
        ])
        .await
        .expect("the retried atomic append must be reported done");
    assert_eq!(
        cutter.cuts.load(Ordering::SeqCst),
        1,
        "the acknowledgement was lost"
    );
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.first_seq, a.last_seq))
            .collect::<Vec<_>>(),
        [(2, 2), (1, 1)]
    );
    for (stream, len) in [("lock", 2), ("rotation", 1)] {
        let stored = read(&j, stream).await;
        assert_chain(stream, &stored);
        assert_eq!(stored.len(), len, "{stream} stored once: {stored:#?}");
    }
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "after the lost acknowledgement",
    );
}

/// Two nodes (two journals on one schema, each with its own connections and writer) racing
/// for the same sequences: the guarded statement lets exactly one win each round, and the
/// loser is told it conflicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_one_stream_never_both_win() {
    let place = Place::new(Kind::Postgres);
    let (a, b) = (
        Arc::new(place.open_real_time()),
        Arc::new(place.open_real_time()),
    );
    for head in 0..40u64 {
        let round = head;
        let (ra, rb) = tokio::join!(
            a.append(Append::new("raced", head, vec![numbered(round)])),
            b.append(Append::new("raced", head, vec![numbered(round)])),
        );
        let won: Vec<_> = [&ra, &rb].into_iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {ra:?} / {rb:?}");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert!(
                    matches!(e, Error::Conflict { expected, actual, .. } if *expected == head && *actual == head + 1),
                    "round {round}: the loser conflicts: {e}"
                );
            }
        }
    }
    let events = read(&*a, "raced").await;
    assert_chain("raced", &events);
    assert_eq!(events.len(), 40);
    assert_eq!(
        read(&*b, "raced").await,
        events,
        "both nodes read one history"
    );
}

/// Fencing across nodes: node B takes over the lease once node A's lapses, and A, still
/// holding its old token, can no longer append.
#[tokio::test]
async fn a_takeover_by_another_node_fences_the_old_one() {
    let place = Place::new(Kind::Postgres);
    let clock = manual_clock();
    let (a, b) = (place.open(&clock), place.open(&clock));
    let la = a
        .acquire("r", "node-a", 1_000)
        .await
        .expect("node a leases");
    append_ok(
        &a,
        Append::new("r", 0, vec![numbered(1)]).fenced(la.fence()),
    )
    .await;
    expect_err!(
        b.acquire("r", "node-b", 1_000).await,
        Error::LeaseHeld { holder, .. } if holder == "node-a",
        "node b while a's lease is live"
    );
    clock.advance(1_000);
    let lb = b
        .acquire("r", "node-b", 1_000)
        .await
        .expect("node b takes over");
    assert_eq!(lb.token, la.token + 1, "a takeover bumps the epoch");
    expect_err!(
        a.append(Append::new("r", 1, vec![numbered(2)]).fenced(la.fence())).await,
        Error::StaleFence { presented, current, holder, .. }
            if *presented == la.token && *current == lb.token && holder == "node-b",
        "node a's append after the takeover"
    );
    append_ok(
        &b,
        Append::new("r", 1, vec![numbered(2)]).fenced(lb.fence()),
    )
    .await;
    assert_eq!(head_seq(&a, "r").await, 2);
}

/// Nodes claiming due timers at once each get their own: none is claimed twice, none is
/// left out, and a claim that lapses makes the timer claimable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_timers_are_claimed_by_one_node_each() {
    const TIMERS: usize = 60;
    let schema = pg_server::fresh_schema();
    let clock = manual_clock();
    let open = || {
        Arc::new(
            PostgresJournal::open_with_clock(pg_server::config(), &schema, Arc::new(clock.clone()))
                .expect("opening"),
        )
    };
    let (a, b) = (open(), open());
    for i in 0..TIMERS {
        let e = numbered(i as u64).with_timer(TimerOp::Schedule {
            name: "fire".into(),
            due_at_ms: T0 + i as i64,
        });
        append_ok(&*a, Append::new(format!("t-{i:02}"), 0, vec![e])).await;
    }
    let not_yet = e_claim(&a, "node-a").await;
    assert_eq!(
        not_yet.len(),
        1,
        "only the timer due at T0 is due: {not_yet:?}"
    );
    clock.advance(TIMERS as i64);

    let claim_all = |j: Arc<PostgresJournal>, owner: &'static str| async move {
        let mut mine = Vec::new();
        loop {
            let got = j
                .claim_due_timers(owner, 10_000, 7)
                .await
                .expect("claiming");
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|t| t.stream_id));
        }
    };
    let (ta, tb) = tokio::join!(
        tokio::spawn(claim_all(a.clone(), "node-a")),
        tokio::spawn(claim_all(b.clone(), "node-b")),
    );
    let (ta, tb) = (ta.expect("node a"), tb.expect("node b"));
    let all: BTreeSet<&String> = ta.iter().chain(&tb).collect();
    assert_eq!(
        ta.len() + tb.len() + not_yet.len(),
        TIMERS,
        "no timer claimed twice"
    );
    assert_eq!(all.len() + not_yet.len(), TIMERS, "every due timer claimed");
    assert_eq!(
        a.due_timers(i64::MAX, 1_000).await.expect("due").len(),
        TIMERS,
        "a claim does not disarm a timer"
    );

    clock.advance(10_000);
    assert_eq!(
        e_claim(&b, "node-b").await.len(),
        TIMERS,
        "lapsed claims are claimable again"
    );
    // Re-arming clears the claim; clearing removes the timer.
    let rearm = numbered(9).with_timer(TimerOp::Schedule {
        name: "fire".into(),
        due_at_ms: T0,
    });
    append_ok(&*a, Append::new("t-00", 1, vec![rearm])).await;
    let clear = numbered(10).with_timer(TimerOp::Clear {
        name: "fire".into(),
    });
    append_ok(&*a, Append::new("t-01", 1, vec![clear])).await;
    let again: Vec<String> = e_claim(&a, "node-a")
        .await
        .into_iter()
        .map(|t| t.stream_id)
        .collect();
    assert_eq!(again, ["t-00"], "only the re-armed timer is claimable");
}

async fn e_claim(j: &PostgresJournal, owner: &str) -> Vec<rekey_journal::Timer> {
    j.claim_due_timers(owner, 10_000, 1_000)
        .await
        .expect("claiming")
}

/// Without an injected clock, leases and events are stamped by the database's clock.
#[tokio::test]
async fn leases_and_events_take_the_database_clock() {
    let place = Place::new(Kind::Postgres);
    let j = place.open_real_time();
    let db = pg_server::client().await;
    let db_now = || async {
        db.query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await
        .expect("reading the database clock")
        .get::<_, i64>(0)
    };
    let before = db_now().await;
    let lease = j.acquire("clocked", "node", 60_000).await.expect("leasing");
    append_ok(
        &j,
        Append::new("clocked", 0, vec![numbered(1)]).fenced(lease.fence()),
    )
    .await;
    let after = db_now().await;
    assert!(
        (before + 60_000..=after + 60_000).contains(&lease.expires_at_ms),
        "the lease expires 60 s after the database's now: {before}..{after} + 60000, got {}",
        lease.expires_at_ms
    );
    let at = read(&j, "clocked").await[0].recorded_at_ms;
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
}

/// Nodes starting at once on an empty schema create the journal once, and all use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_create_one_journal() {
    let schema = pg_server::fresh_schema();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let schema = schema.clone();
            std::thread::spawn(move || PostgresJournal::open(pg_server::config(), &schema))
        })
        .collect();
    let journals: Vec<PostgresJournal> = opens
        .into_iter()
        .map(|t| {
            t.join()
                .expect("a thread")
                .expect("every node opens the journal")
        })
        .collect();
    for (i, j) in journals.iter().enumerate() {
        append_ok(j, Append::new(format!("n{i}"), 0, vec![numbered(1)])).await;
    }
    assert_eq!(
        journals[0]
            .read_after(0, 100)
            .await
            .expect("read_after")
            .len(),
        4
    );
}

/// Group commit: requests queued while the writer waits are written in one transaction (all
/// their events carry one transaction id), yet each gets its own answer, and one that
/// conflicts fails alone, its timer change with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_commit_in_one_transaction_and_a_conflict_fails_alone() {
    const N: usize = 30;
    let place = Place::new(Kind::Postgres);
    let clock = manual_clock();
    let j = place.open(&clock);
    append_ok(&j, Append::new("taken", 0, vec![numbered(1)])).await;

    // Another session holds the journal's counter row: the writer's next batch waits for it.
    let mut blocker = pg_server::client().await;
    let hold = blocker.transaction().await.expect("a transaction");
    hold.execute(
        &format!("SELECT 1 FROM {}.meta FOR UPDATE", place.schema),
        &[],
    )
    .await
    .expect("holding the counter row");

    let conflicting = N / 2;
    let appends: Vec<Append> = (0..N)
        .map(|i| {
            if i == conflicting {
                // Stale: "taken" is at 1. Its timer must not be armed.
                Append::new(
                    "taken",
                    0,
                    vec![numbered(99).with_timer(TimerOp::Schedule {
                        name: "never".into(),
                        due_at_ms: T0,
                    })],
                )
            } else {
                Append::new(
                    format!("batch-{i:02}"),
                    0,
                    vec![numbered(i as u64); 1 + i % 3],
                )
            }
        })
        .collect();
    // Polling each future once queues its request; none can be answered yet.
    let pending = queue_while_held(&j, &appends, "the counter row");
    hold.rollback().await.expect("releasing the counter row");
    let mut results = Vec::new();
    for f in pending {
        results.push(f.await);
    }
    for (i, (a, r)) in appends.iter().zip(&results).enumerate() {
        if i == conflicting {
            assert!(
                matches!(
                    r,
                    Err(Error::Conflict {
                        expected: 0,
                        actual: 1,
                        ..
                    })
                ),
                "request {i} must conflict, got {r:?}"
            );
        } else {
            let got = r
                .as_ref()
                .unwrap_or_else(|e| panic!("request {i} must land: {e}"));
            assert_eq!(
                got.last_seq,
                a.events.len() as u64,
                "request {i}: its own answer"
            );
            assert_eq!(read(&j, &a.stream_id).await.len(), a.events.len());
        }
    }
    assert_eq!(
        read(&j, "taken").await.len(),
        1,
        "the conflicting append wrote nothing"
    );
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        None,
        "its timer was not armed"
    );
    let transactions: i64 = blocker
        .query_one(
            &format!(
                "SELECT count(DISTINCT xmin::text) FROM {}.events WHERE stream_id LIKE 'batch-%'",
                place.schema
            ),
            &[],
        )
        .await
        .expect("counting transactions")
        .get(0);
    assert!(
        transactions <= 2,
        "{} appends queued behind one lock must commit in at most two transactions, not {transactions}",
        N - 1
    );
    assert_intact(&j.verify(None).await.expect("verify"), "after the batch");
}

/// A server that is not there is reported with where it was looked for, promptly.
#[test]
fn an_unreachable_server_is_reported_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let err = PostgresJournal::open(pg_server::config_on(port), "rekey")
        .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(
        matches!(err, Error::Postgres { .. })
            && message.contains(&format!("127.0.0.1:{port}"))
            && message.contains("connecting"),
        "{message}"
    );
}

/// A read that waits on the server leaves the runtime it was awaited on free: here a read is
/// held up by another session's table lock, and that session lets go only once a task on the
/// reader's runtime has answered it, or after a deadline, which fails the test. Run on a
/// current-thread runtime (whose only thread a blocking read would hold) and on a one-worker
/// multi-threaded one (the daemon's kind).
fn a_read_waiting_on_the_server_does_not_stall_the_runtime(runtime: tokio::runtime::Runtime) {
    let place = Place::new(Kind::Postgres);
    let j = Arc::new(place.open(&manual_clock()));
    crate::common::block_on(append_ok(&*j, Append::new("slow", 0, vec![numbered(1)])));

    // Another session, on a thread and runtime of its own, locks the events table, says when
    // a read waits on it, then waits for a task on the reader's runtime to answer (or for
    // the deadline) before it lets go. It returns whether the answer came in time.
    let (locked_tx, locked) = tokio::sync::oneshot::channel::<()>();
    let (blocked_tx, blocked) = tokio::sync::oneshot::channel::<()>();
    let (answer, answered) = std::sync::mpsc::channel::<()>();
    let schema = place.schema.clone();
    let locker = std::thread::spawn(move || {
        crate::common::block_on(async move {
            let client = pg_server::client().await;
            client
                .batch_execute(&format!(
                    "BEGIN; LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE"
                ))
                .await
                .expect("locking the events table");
            let _ = locked_tx.send(());
            loop {
                let waiting: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                        &[],
                    )
                    .await
                    .expect("asking who waits on the lock")
                    .get(0);
                if waiting > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let _ = blocked_tx.send(());
            // A plain blocking wait: this thread's runtime has nothing else to do.
            let in_time = answered
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok();
            client.batch_execute("ROLLBACK").await.expect("unlocking");
            in_time
        })
    });

    let events = runtime.block_on(async move {
        locked.await.expect("the events table is locked");
        // The answering task runs only if the runtime is free while the read waits.
        let answering = tokio::spawn(async move {
            blocked
                .await
                .expect("the read reached the server and waits on the lock");
            let _ = answer.send(());
        });
        // The read runs in a task of its own, so on the multi-threaded runtime it waits on
        // the worker, as the daemon's reads do.
        let events = tokio::spawn(async move { j.read_stream("slow").await })
            .await
            .expect("the reading task");
        answering.await.expect("the answering task");
        events
    });
    let answered_in_time = locker.join().expect("the locking thread");
    assert!(
        answered_in_time,
        "a task on the reader's runtime must run while the read waits on the server; \
         the runtime stalled until the lock's deadline"
    );
    let events = events.expect("the read");
    assert_eq!(events.len(), 1, "the read completes once the lock is gone");
}

mod a_read_waiting_on_the_server_does_not_stall_the_runtime {
    #[test]
    fn on_a_current_thread_runtime() {
        super::a_read_waiting_on_the_server_does_not_stall_the_runtime(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime"),
        );
    }

    #[test]
    fn on_a_worker_of_a_multi_threaded_runtime() {
        super::a_read_waiting_on_the_server_does_not_stall_the_runtime(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("building a runtime"),
        );
    }
}
