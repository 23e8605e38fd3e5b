//! Group commit: the SQLite writer folds every waiting request into one transaction, yet each
//! request must get its own answer, and one request's failure must not sink its batch.

use std::collections::BTreeSet;
use std::sync::Arc;

use rekey_journal::{Append, Error, JournalAppend, JournalScan, Leases, SqliteJournal, TimerOp};
use serde_json::json;

use crate::common::{
    T0, append_ok, assert_chain, assert_intact, event, manual_clock, numbered, open_sqlite,
    queue_while_held, read, scratch,
};

/// Many tasks appending to their own streams at once all land, each with its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_to_different_streams_all_land() {
    const TASKS: u64 = 48;
    const APPENDS: u64 = 5;
    let (_dir, path) = scratch();
    let j = Arc::new(SqliteJournal::open(&path).expect("opening the journal"));
    let start = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (j, start) = (j.clone(), start.clone());
            tokio::spawn(async move {
                let stream = format!("stream-{t:02}");
                start.wait().await;
                let mut answers = Vec::new();
                for n in 0..APPENDS {
                    // Append n carries n + 1 events, so answers differ per append.
                    let events = (0..=n).map(|k| numbered(n * 10 + k)).collect();
                    let a = append_ok(&*j, Append::new(&stream, n * (n + 1) / 2, events)).await;
                    answers.push((stream.clone(), a));
                }
                answers
            })
        })
        .collect();

    let mut globals = BTreeSet::new();
    for handle in handles {
        let answers = handle.await.expect("appender task panicked");
        let (stream, last) = answers.last().cloned().expect("answers");
        let events = read(&*j, &stream).await;
        assert_chain(&stream, &events);
        assert_eq!(
            events.len() as u64,
            APPENDS * (APPENDS + 1) / 2,
            "{stream}: event count"
        );
        assert_eq!(
            last.head_hash,
            events.last().expect("events").hash,
            "{stream}: head hash"
        );
        for (n, (_, a)) in answers.iter().enumerate() {
            let n = n as u64;
            assert_eq!(
                (a.first_seq, a.last_seq),
                (n * (n + 1) / 2 + 1, (n + 1) * (n + 2) / 2),
                "{stream}: append {n} must be told its own sequences"
            );
            let e = &events[a.last_seq as usize - 1];
            assert_eq!(
                a.last_global_seq, e.global_seq,
                "{stream}#{}: global seq",
                e.stream_seq
            );
            assert!(
                globals.insert(a.last_global_seq),
                "two appends were given one global seq"
            );
        }
    }
    let report = j.verify(None).await.expect("verify");
    assert_intact(&report, "after concurrent appends");
    assert_eq!(report.streams, TASKS, "every stream verified");
}

/// Holds the journal's write lock from a second connection, so the writer thread cannot
/// commit: every request sent meanwhile is queued, and once the lock is released the writer
/// takes at most two batches (whatever it grabbed before blocking, then all the rest). A
/// conflicting append placed mid-queue therefore shares a transaction with appends that must
/// succeed; it must fail alone, and its timer change must roll back with it.
#[tokio::test]
async fn a_conflicting_append_fails_alone_inside_its_batch() {
    const N: usize = 40;
    let (_dir, path) = scratch();
    let clock = manual_clock();
    let j = open_sqlite(&path, &clock);
    append_ok(&j, Append::new("taken", 0, vec![numbered(1)])).await;

    let locker = rusqlite::Connection::open(&path).expect("opening a second connection");
    locker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("taking the write lock");

    let conflicting = N / 2;
    let appends: Vec<Append> = (0..N)
        .map(|i| match i {
            // Stale: "taken" is already at 1. Carries a timer that must not be armed.
            _ if i == conflicting => Append::new(
                "taken",
                0,
                vec![numbered(99).with_timer(TimerOp::Schedule {
                    name: "never".into(),
                    due_at_ms: T0,
                })],
            ),
            // Two appends to one new stream at 0: the later one must see the earlier one's
            // uncommitted write in the same batch and conflict.
            _ if i == conflicting + 1 || i == conflicting + 2 => {
                Append::new("twice", 0, vec![event("Twice", json!({ "i": i }))])
            }
            _ => Append::new(
                format!("batch-{i:02}"),
                0,
                vec![numbered(i as u64); 1 + i % 3],
            ),
        })
        .collect();

    // Polling each future once sends its request to the writer; none can complete yet.
    let pending = queue_while_held(&j, &appends, "another connection's write lock");
    locker
        .execute_batch("ROLLBACK")
        .expect("releasing the write lock");

    let mut results = Vec::new();
    for f in pending {
        results.push(f.await);
    }
    for (i, (a, r)) in appends.iter().zip(&results).enumerate() {
        if i == conflicting || i == conflicting + 2 {
            let stream = &a.stream_id;
            assert!(
                matches!(r, Err(Error::Conflict { stream: s, expected: 0, actual: 1 }) if s == stream),
                "request {i} to {stream} must conflict (expected 0, actual 1), got {r:?}"
            );
        } else {
            let got = r
                .as_ref()
                .unwrap_or_else(|e| panic!("request {i} must land: {e}"));
            let events = read(&j, &a.stream_id).await;
            assert_chain(&a.stream_id, &events);
            assert_eq!(
                got.last_seq,
                a.events.len() as u64,
                "request {i}: its own last_seq"
            );
            assert_eq!(
                events.len(),
                a.events.len(),
                "request {i}: its events landed"
            );
        }
    }
    assert_eq!(
        read(&j, "taken").await.len(),
        1,
        "the conflicting append wrote nothing"
    );
    assert_eq!(
        read(&j, "twice").await[0].payload_json().expect("payload"),
        json!({ "i": conflicting + 1 }),
        "the first of the two appends to 'twice' is the one that landed"
    );
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        None,
        "the refused append's timer"
    );
    let globals: BTreeSet<u64> = results
        .iter()
        .flatten()
        .map(|a| a.last_global_seq)
        .collect();
    assert_eq!(
        globals.len(),
        N - 2,
        "each landed append has its own global sequence"
    );
    assert_intact(&j.verify(None).await.expect("verify"), "after the batch");
}

/// After a batch with a failure, the writer keeps serving: the failure is not sticky.
#[tokio::test]
async fn the_writer_keeps_serving_after_refusals() {
    let (_dir, path) = scratch();
    let j = SqliteJournal::open(&path).expect("opening the journal");
    append_ok(&j, Append::new("s", 0, vec![numbered(1)])).await;
    for _ in 0..3 {
        let r = j.append(Append::new("s", 0, vec![numbered(2)])).await;
        assert!(
            matches!(r, Err(Error::Conflict { .. })),
            "stale append: {r:?}"
        );
    }
    let a = append_ok(&j, Append::new("s", 1, vec![numbered(2)])).await;
    assert_eq!(
        a.last_seq, 2,
        "the next good append lands after the refusals"
    );
    assert_eq!(
        j.read_after(0, 10).await.expect("read_after").len(),
        2,
        "exactly the two good events"
    );
}

/// The writer keeps heads and leases in memory, yet another connection writing the same
/// file (another process, or a second handle as here) is never missed: a head or lease
/// it changed is read afresh, never served from the first writer's memory.
#[tokio::test]
async fn a_second_writer_on_the_file_is_never_hidden_by_the_cache() {
    let (_dir, path) = scratch();
    let clock = manual_clock();
    let a = open_sqlite(&path, &clock);
    let b = open_sqlite(&path, &clock);
    // `a` reads and writes the head of "s", so it knows it as sequence 1.
    append_ok(&a, Append::new("s", 0, vec![numbered(1)])).await;
    append_ok(&b, Append::new("s", 1, vec![numbered(2)])).await;

    let stale = a.append(Append::new("s", 1, vec![numbered(3)])).await;
    assert!(
        matches!(
            stale,
            Err(Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "the head `b` moved is seen by `a`: {stale:?}"
    );
    let next = append_ok(&a, Append::new("s", 2, vec![numbered(3)])).await;
    assert_eq!(next.last_seq, 3, "`a` appends after `b`'s event");
    assert_chain("s", &read(&a, "s").await);

    // A lease `b` takes fences `a`'s unfenced appends, though `a` saw "s" with none.
    b.acquire("s", "runner-b", 60_000).await.expect("acquire");
    let fenced = a.append(Append::new("s", 3, vec![numbered(4)])).await;
    assert!(
        matches!(fenced, Err(Error::LeaseHeld { ref holder, .. }) if holder == "runner-b"),
        "`b`'s lease holds for `a`: {fenced:?}"
    );
    assert_intact(&a.verify(None).await.expect("verify"), "after two writers");
}

/// The writer checkpoints the WAL itself between batches, so the WAL starts over after
/// each checkpoint and stays as large as the commits between two checkpoints need, however
/// many appends come one after another. (A checkpointer racing the writer never caught up:
/// the WAL grew with every commit.)
#[tokio::test]
async fn the_wal_starts_over_instead_of_growing_with_every_commit() {
    const APPENDS: u64 = 2_500;
    let (_dir, path) = scratch();
    let j = open_sqlite(&path, &manual_clock());
    let wal = path.with_file_name(format!(
        "{}-wal",
        path.file_name().unwrap().to_string_lossy()
    ));
    let mut largest = 0;
    for seq in 0..APPENDS {
        append_ok(&j, Append::new("long", seq, vec![numbered(seq + 1)])).await;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    // Each commit writes a few pages (the event's, its index's, the stream's head): 2,500
    // commits without a restart would leave a WAL of 30 MB or more.
    assert!(
        largest < 8 << 20,
        "the WAL grew to {largest} bytes over {APPENDS} appends"
    );
    assert_eq!(read(&j, "long").await.len() as u64, APPENDS);
}

/// A request that fails part-way through its writes (here a storage-level refusal of its
/// second event, after its first was inserted) has no savepoint to undo it: the whole batch
/// rolls back, every request in it hears that nothing was written, and nothing of it lands.
#[tokio::test]
async fn a_request_failing_part_way_rolls_back_its_whole_batch() {
    const N: usize = 12;
    let (_dir, path) = scratch();
    let j = open_sqlite(&path, &manual_clock());
    append_ok(&j, Append::new("before", 0, vec![numbered(1)])).await;

    let locker = rusqlite::Connection::open(&path).expect("opening a second connection");
    locker
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.kind = 'Poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;
             BEGIN IMMEDIATE;",
        )
        .expect("arming the poison and taking the write lock");
    let poisoned = N / 2;
    let appends: Vec<Append> = (0..N)
        .map(|i| {
            let mut events = vec![numbered(1)];
            if i == poisoned {
                events.push(event("Poison", json!({})));
            }
            Append::new(format!("p-{i:02}"), 0, events)
        })
        .collect();
    // The writer takes a first request alone and drains the queue at once, so a request
    // sent ahead of the others, given time to be taken, keeps the writer blocked on the lock
    // while the others queue: they then form the next batch together, however the threads
    // are scheduled. (Taken late, the gate joins their batch and fails with it.)
    let gate = Append::new("gate", 0, vec![numbered(1)]);
    let gate = queue_while_held(&j, &[gate], "another connection's write lock");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pending = queue_while_held(&j, &appends, "another connection's write lock");
    locker
        .execute_batch("ROLLBACK")
        .expect("releasing the lock");
    for f in gate {
        let _ = f.await;
    }
    for (i, f) in pending.into_iter().enumerate() {
        let e = match f.await {
            Err(e) => e,
            Ok(a) => panic!("request {i} must fail with its batch, but landed: {a:?}"),
        };
        assert!(
            matches!(&e, Error::WriteFailed { reason } if reason.contains("nothing was written")),
            "request {i}: {e}"
        );
    }
    for i in 0..N {
        assert!(
            read(&j, &format!("p-{i:02}")).await.is_empty(),
            "p-{i:02}: nothing of the batch landed"
        );
    }
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "after the failed batch",
    );
    append_ok(&j, Append::new("before", 1, vec![numbered(2)])).await;
}
