//! Property tests: whatever sequence of appends is made, each durable engine (SQLite and
//! PostgreSQL) gives the same answers as the in-memory one,
//! reads return exactly what was written, sequences are gap-free and chains verify; and
//! racing writers on one stream never both win a sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use rekey_journal::{
    Append, Error, Event, JournalAppend, JournalScan, ManualClock, MemoryJournal, NewEvent,
    StreamFilter,
};
use serde_json::{Value, json};

use crate::common::{
    Engine, Kind, Place, T0, assert_chain, assert_intact, block_on, block_on_threaded, event,
    head_seq, manual_clock, memory, read,
};

/// Stream ids exercising every allowed punctuation character.
const STREAMS: [&str; 3] = ["alpha", "rot:beta/2", "gamma_3.x-y"];

/// JSON values that survive a text round trip exactly (floats only where the decimal form is
/// exact, since serde_json's default float parser is best-effort).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-4096i32..4096).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\a-zé€😀]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid payload: always a JSON object.
fn payload() -> impl Strategy<Value = Value> {
    btree_map("[a-zA-Z_\"\\\\ ]{1,8}", json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn new_event() -> impl Strategy<Value = NewEvent> {
    ("[A-Za-z0-9_.]{1,24}", 0u32..4, payload()).prop_map(|(kind, schema_version, payload)| {
        NewEvent {
            kind,
            schema_version,
            payload,
            timer: None,
        }
    })
}

/// One append: which stream, how far off the writer's expected sequence is (mostly exact, so
/// most appends land; sometimes stale or ahead, so conflicts are exercised too), the events.
#[derive(Debug, Clone)]
struct Op {
    stream: usize,
    skew: i64,
    events: Vec<NewEvent>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0..STREAMS.len(),
        prop_oneof![6 => Just(0i64), 1 => -2i64..=2],
        vec(new_event(), 1..4),
    )
        .prop_map(|(stream, skew, events)| Op {
            stream,
            skew,
            events,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// All engines run the same write rules, so the same appends on the same clock must give
    /// identical answers and identical events, and reads must return exactly what was written.
    #[test]
    fn appends_round_trip_identically_on_sqlite_and_in_memory(ops in vec(op(), 1..24)) {
        block_on(round_trip(Kind::Sqlite, ops));
    }

    /// As above, on PostgreSQL.
    #[test]
    fn appends_round_trip_identically_on_postgres_and_in_memory(ops in vec(op(), 1..24)) {
        block_on(round_trip(Kind::Postgres, ops));
    }
}

async fn round_trip(kind: Kind, ops: Vec<Op>) {
    let place = Place::new(kind);
    let clock = manual_clock();
    let sql = place.open(&clock);
    let mem = memory(&clock);
    let mut model: BTreeMap<&str, Vec<NewEvent>> = BTreeMap::new();
    let mut last_global = 0;

    for (i, op) in ops.iter().enumerate() {
        clock.advance(1 + (i as i64 % 3));
        let stream = STREAMS[op.stream];
        let written = model.entry(stream).or_default();
        let head = written.len() as u64;
        let expected = head.saturating_add_signed(op.skew);
        let append = Append::new(stream, expected, op.events.clone());
        let from_sql = sql.append(append.clone()).await;
        let from_mem = mem.append(append).await;
        if expected == head {
            let a = from_sql.unwrap_or_else(|e| panic!("op {i}: {kind:?} refused: {e}"));
            let b = from_mem.unwrap_or_else(|e| panic!("op {i}: memory refused: {e}"));
            assert_eq!(a, b, "op {i}: the engines disagree on the append's outcome");
            let len = op.events.len() as u64;
            assert_eq!(
                (a.first_seq, a.last_seq),
                (head + 1, head + len),
                "op {i}: the append must continue the stream"
            );
            assert!(
                a.last_global_seq > last_global,
                "op {i}: global sequence must grow"
            );
            last_global = a.last_global_seq;
            written.extend(op.events.iter().cloned());
        } else {
            for (engine, result) in [(format!("{kind:?}"), from_sql), ("memory".into(), from_mem)] {
                assert!(
                    matches!(&result, Err(Error::Conflict { expected: e, actual: a, .. })
                        if *e == expected && *a == head),
                    "op {i}: {engine} must refuse expected {expected} at head {head}, got {result:?}"
                );
            }
        }
    }

    let mut total = 0;
    for stream in STREAMS {
        let from_sql = read(&sql, stream).await;
        assert_eq!(
            from_sql,
            read(&mem, stream).await,
            "{stream}: the engines store different events"
        );
        assert_chain(stream, &from_sql);
        let written = model.get(stream).map_or(&[][..], Vec::as_slice);
        assert_eq!(from_sql.len(), written.len(), "{stream}: event count");
        for (e, w) in from_sql.iter().zip(written) {
            assert_payload_matches(e, w);
        }
        total += written.len();
    }

    let all = sql.read_after(0, 100_000).await.expect("read_after");
    assert_eq!(
        all,
        mem.read_after(0, 100_000).await.expect("read_after"),
        "global order differs"
    );
    assert_eq!(all.len(), total, "read_after must return every event");
    assert!(
        all.windows(2).all(|w| w[0].global_seq < w[1].global_seq),
        "global sequence must be strictly increasing"
    );
    if let Some(mid) = all.get(all.len() / 2) {
        let rest = sql
            .read_after(mid.global_seq, 100_000)
            .await
            .expect("read_after");
        assert_eq!(
            rest,
            all[all.len() / 2 + 1..],
            "read_after(mid) must resume after mid"
        );
    }

    let filter = StreamFilter::default();
    assert_eq!(
        sql.streams(&filter).await.expect("streams"),
        mem.streams(&filter).await.expect("streams")
    );
    let report = sql
        .verify(Some(&sql.heads().await.expect("heads")))
        .await
        .expect("verify");
    assert_intact(&report, &format!("{kind:?}"));
    assert_eq!(report.events, total as u64, "verify must read every event");
    assert_eq!(
        report.streams as usize,
        model.values().filter(|w| !w.is_empty()).count()
    );
    assert_intact(&mem.verify(), "memory");

    // What was acknowledged is what a later process reads.
    drop(sql);
    let reopened = place.open(&clock);
    assert_eq!(
        reopened.read_after(0, 100_000).await.expect("read_after"),
        all,
        "after reopening"
    );
}

/// A stored event carries exactly the kind, version and payload written, as canonical text.
fn assert_payload_matches(e: &Event, written: &NewEvent) {
    let at = format!("{}#{}", e.stream_id, e.stream_seq);
    assert_eq!(e.kind, written.kind, "{at}: kind");
    assert_eq!(
        e.schema_version, written.schema_version,
        "{at}: schema_version"
    );
    assert_eq!(
        e.payload_json().expect("payload parses"),
        written.payload,
        "{at}: payload"
    );
    assert_eq!(
        e.payload,
        serde_json::to_string(&written.payload).expect("serialising"),
        "{at}: payload text must be the canonical (sorted-key) serialisation"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Optimistic concurrency: writers racing for one sequence must produce exactly one winner,
    /// every loser must be told `Conflict`, and the stream must stay gap-free.
    #[test]
    fn racing_appenders_have_exactly_one_winner_per_sequence(
        tasks in 8usize..=16,
        rounds in 1u64..=4,
        len in 1u64..=3,
    ) {
        block_on_threaded(async {
            for kind in [Kind::Sqlite, Kind::Postgres] {
                let place = Place::new(kind);
                let j = Arc::new(place.open_real_time());
                race(j.clone(), tasks, rounds, len).await;
                assert_intact(&j.verify(None).await.expect("verify"), &format!("{kind:?} after the race"));
            }
            let mem = Arc::new(memory(&ManualClock::new(T0)));
            race(mem.clone(), tasks, rounds, len).await;
            assert_intact(&mem.verify(), "memory after the race");
        });
    }
}

const RACED: &str = "contended";

/// `rounds` times, `tasks` tasks all append `len` events at the same expected sequence.
async fn race<J: Engine>(j: Arc<J>, tasks: usize, rounds: u64, len: u64) {
    let mut head = 0;
    let mut winners = Vec::new();
    for round in 0..rounds {
        // A barrier releases every task at once, so they really contend.
        let start = Arc::new(tokio::sync::Barrier::new(tasks));
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (j, start) = (j.clone(), start.clone());
                let events = (0..len)
                    .map(|k| event("Raced", json!({"round": round, "task": task, "k": k})))
                    .collect();
                tokio::spawn(async move {
                    start.wait().await;
                    j.append(Append::new(RACED, head, events)).await
                })
            })
            .collect();
        let mut won = Vec::new();
        for (task, handle) in handles.into_iter().enumerate() {
            match handle.await.expect("an appender task panicked") {
                Ok(a) => {
                    assert_eq!(
                        (a.first_seq, a.last_seq),
                        (head + 1, head + len),
                        "round {round}"
                    );
                    won.push(task);
                }
                Err(Error::Conflict {
                    expected, actual, ..
                }) => assert_eq!(
                    (expected, actual),
                    (head, head + len),
                    "round {round} task {task}: a loser must see the winner's append"
                ),
                Err(e) => panic!("round {round} task {task}: unexpected error {e}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one writer may win sequence {}",
            head + 1
        );
        winners.push(won[0]);
        head += len;
        assert_eq!(
            head_seq(&*j, RACED).await,
            head,
            "round {round}: head after the race"
        );
    }

    let events = read(&*j, RACED).await;
    assert_chain(RACED, &events);
    assert_eq!(
        events.len() as u64,
        head,
        "every winning event and nothing else"
    );
    for (round, winner) in winners.iter().enumerate() {
        for k in 0..len {
            let e = &events[round * len as usize + k as usize];
            assert_eq!(
                e.payload_json().expect("payload parses"),
                json!({"round": round, "task": winner, "k": k}),
                "{RACED}#{}: each round's block must be its winner's events, in order",
                e.stream_seq
            );
        }
    }
}

/// Writers that retry on `Conflict` all eventually land every event exactly once, in each
/// writer's own order, without gaps (the loop a runner would run).
#[test]
fn retrying_writers_land_every_event_exactly_once() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 12;
    async fn writer<J: Engine>(j: Arc<J>, w: u64) -> u64 {
        let mut conflicts = 0;
        let mut n = 0;
        while n < EACH {
            let head = head_seq(&*j, RACED).await;
            let e = event("Retried", json!({"writer": w, "n": n}));
            match j.append(Append::new(RACED, head, vec![e])).await {
                Ok(_) => n += 1,
                Err(Error::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("writer {w}: unexpected error {e}"),
            }
        }
        conflicts
    }
    async fn run<J: Engine>(j: Arc<J>) {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(j.clone(), w)))
            .collect();
        for h in handles {
            h.await.expect("writer task panicked");
        }
        let events = read(&*j, RACED).await;
        assert_chain(RACED, &events);
        assert_eq!(
            events.len() as u64,
            WRITERS * EACH,
            "every event exactly once"
        );
        let mut next = vec![0u64; WRITERS as usize];
        for e in &events {
            let p = e.payload_json().expect("payload parses");
            let w = p["writer"].as_u64().expect("writer") as usize;
            assert_eq!(
                p["n"].as_u64(),
                Some(next[w]),
                "writer {w}'s events must be in its order"
            );
            next[w] += 1;
        }
    }
    block_on_threaded(async {
        for kind in [Kind::Sqlite, Kind::Postgres] {
            let place = Place::new(kind);
            let j = Arc::new(place.open_real_time());
            run(j.clone()).await;
            assert_intact(&j.verify(None).await.expect("verify"), &format!("{kind:?}"));
        }
        run(Arc::new(MemoryJournal::new(Arc::new(manual_clock())))).await;
    });
}
