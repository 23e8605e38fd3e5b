//! Atomic appends to several streams (`append_all`): every append lands in one commit, or
//! none does, on every engine (each body runs on the durable engine under test and on the
//! memory journal); a refused one leaves the journal as it was, and a batch it shares with
//! other writers' appends does not sink them.

use std::sync::Arc;

use rekey_journal::{Append, Error, JournalAppend, JournalRead};

use crate::common::{
    Engine, Kind, Place, append_ok, assert_chain, expect_err, fill, head_seq, manual_clock, memory,
    numbered, on_both_engines, read,
};

/// The events of every stream, in global order, as `(stream, seq)`.
async fn everything<J: Engine>(j: &J) -> Vec<(String, u64)> {
    j.read_after(0, 10_000)
        .await
        .expect("reading the feed")
        .into_iter()
        .map(|e| (e.stream_id, e.stream_seq))
        .collect()
}

async fn appends_land_together<J: Engine>(j: &J) {
    fill(j, "lock", 1).await;
    let appended = j
        .append_all(vec![
            Append::new("lock", 1, vec![numbered(2)]).status("busy"),
            Append::new("rotation", 0, vec![numbered(1), numbered(2)]).subject("api"),
        ])
        .await
        .expect("both appends land");
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.first_seq, a.last_seq))
            .collect::<Vec<_>>(),
        [(2, 2), (1, 2)],
        "each append's own sequences, in the order given"
    );
    assert!(
        appended[0].last_global_seq < appended[1].last_global_seq,
        "global order follows the order given"
    );
    for (stream, len) in [("lock", 2), ("rotation", 2)] {
        let events = read(j, stream).await;
        assert_chain(stream, &events);
        assert_eq!(events.len(), len, "{stream}");
    }
    let info = j.stream_info("rotation").await.unwrap().expect("created");
    assert_eq!(
        (info.subject.as_deref(), info.status.as_str()),
        (Some("api"), "open")
    );
    assert_eq!(j.stream_info("lock").await.unwrap().unwrap().status, "busy");
    assert!(
        j.append_all(Vec::new())
            .await
            .expect("nothing to append")
            .is_empty(),
        "an empty list appends nothing"
    );
}

async fn a_refused_append_refuses_them_all<J: Engine>(j: &J) {
    fill(j, "a", 1).await;
    fill(j, "b", 3).await;
    let before = everything(j).await;
    // The second append expects a head its stream has passed.
    expect_err!(
        j.append_all(vec![
            Append::new("a", 1, vec![numbered(2)]),
            Append::new("new", 0, vec![numbered(1)]),
            Append::new("b", 1, vec![numbered(2)]),
        ])
        .await,
        Error::Conflict { stream, expected: 1, actual: 3, .. } if stream == "b",
        "the stale append is named"
    );
    assert_eq!(everything(j).await, before, "nothing landed");
    assert!(
        j.stream_info("new").await.unwrap().is_none(),
        "no stream created"
    );
    // Another owner's live lease on one stream refuses the whole append.
    j.acquire("b", "other", 60_000).await.expect("a lease");
    expect_err!(
        j.append_all(vec![
            Append::new("a", 1, vec![numbered(2)]),
            Append::new("b", 3, vec![numbered(4)]),
        ])
        .await,
        Error::LeaseHeld { .. },
        "an append without the lease of a leased stream"
    );
    assert_eq!(everything(j).await, before, "nothing landed");
    // A stream named twice is refused before anything is written.
    let e = expect_err!(
        j.append_all(vec![
            Append::new("a", 1, vec![numbered(2)]),
            Append::new("a", 1, vec![numbered(2)]),
        ])
        .await,
        Error::InvalidEvent { stream, .. } if stream == "a",
        "a stream named twice"
    );
    assert!(e.to_string().contains("twice"), "says why: {e}");
    assert_eq!(everything(j).await, before, "nothing landed");
    // The journal goes on: the same appends, corrected, land.
    j.append_all(vec![
        Append::new("a", 1, vec![numbered(2)]),
        Append::new("new", 0, vec![numbered(1)]),
    ])
    .await
    .expect("corrected appends land");
    assert_eq!((head_seq(j, "a").await, head_seq(j, "new").await), (2, 1));
}

async fn atomic_appends_land_together(kind: Kind) {
    let place = Place::new(kind);
    let clock = manual_clock();
    appends_land_together(&place.open(&clock)).await;
    appends_land_together(&memory(&clock)).await;
}

async fn atomic_append_refused_in_part_lands_nothing(kind: Kind) {
    let place = Place::new(kind);
    let clock = manual_clock();
    a_refused_append_refuses_them_all(&place.open(&clock)).await;
    a_refused_append_refuses_them_all(&memory(&clock)).await;
}

/// Many writers at once, one of them with an atomic append that is refused: every other
/// append lands (the refused one is undone alone), and the refused one lands nothing.
async fn a_refused_atomic_append_does_not_sink_a_shared_batch(kind: Kind) {
    let place = Place::new(kind);
    let j = Arc::new(place.open(&manual_clock()));
    fill(&*j, "held", 2).await;
    // Spawned together (the atomic one in the middle), so the writer finds them queued
    // together behind its first.
    let writer = |i: usize| {
        let j = j.clone();
        tokio::spawn(async move {
            append_ok(&*j, Append::new(format!("w-{i:02}"), 0, vec![numbered(1)])).await;
        })
    };
    let mut writers: Vec<_> = (0..16).map(writer).collect();
    let atomic = {
        let j = j.clone();
        tokio::spawn(async move {
            j.append_all(vec![
                Append::new("fresh", 0, vec![numbered(1)]),
                Append::new("held", 0, vec![numbered(1)]),
            ])
            .await
        })
    };
    writers.extend((16..32).map(writer));
    for w in writers {
        w.await.expect("a writer");
    }
    let refused = atomic.await.expect("the atomic append");
    expect_err!(refused, Error::Conflict { stream, .. } if stream == "held", "stale");
    assert!(
        j.stream_info("fresh").await.unwrap().is_none(),
        "nothing of it landed"
    );
    for i in 0..32 {
        assert_eq!(head_seq(&*j, &format!("w-{i:02}")).await, 1, "writer {i}");
    }
}

on_both_engines!(
    atomic_appends_land_together,
    atomic_append_refused_in_part_lands_nothing,
    a_refused_atomic_append_does_not_sink_a_shared_batch,
);

/// A journal opened read-only refuses an atomic append as it refuses an append.
#[tokio::test]
async fn a_read_only_journal_refuses_an_atomic_append() {
    let place = Place::new(Kind::Sqlite);
    fill(&place.open(&manual_clock()), "a", 1).await;
    let audit = place.open_audit();
    expect_err!(
        audit
            .append_all(vec![Append::new("a", 1, vec![numbered(2)])])
            .await,
        Error::OpenedReadOnly,
        "a read-only journal"
    );
}
