//! `AnyJournal::copy_from` (`rekey journal copy`) between every pair of durable engines: the
//! copy holds every event with its bytes, hashes and global sequence, every stream record and
//! armed timer, verifies with the source's heads and takes appends where the source left
//! off; an empty destination only; a broken or changing source copies nothing.

use rekey_journal::{
    AnyJournal, Append, Error, JournalAppend, JournalScan, NewEvent, StreamFilter, TimerOp,
};

use crate::common::{Kind, Place, assert_intact, fill, manual_clock, numbered};

/// A journal with three interleaved streams (subjects and statuses set), an armed timer and
/// a lease, opened as the library's `AnyJournal`.
async fn source(kind: Kind) -> (Place, AnyJournal) {
    let place = Place::new(kind);
    let clock = manual_clock();
    let j = place.open(&clock);
    for round in 0..5u64 {
        for (stream, len) in [("alpha", 4u64), ("bravo", 5), ("lock:charlie", 2)] {
            if round < len {
                clock.advance(3);
                fill(&j, stream, 1).await;
            }
        }
    }
    j.append(
        Append::new(
            "bravo",
            5,
            vec![
                NewEvent::new("Waiting", serde_json::json!({})).with_timer(TimerOp::Schedule {
                    name: "wake".into(),
                    due_at_ms: crate::common::T0 + 60_000,
                }),
            ],
        )
        .subject("payments")
        .status("completed"),
    )
    .await
    .unwrap();
    rekey_journal::Leases::acquire(&j, "alpha", "runner-1", 30_000)
        .await
        .unwrap();
    (place, j)
}

async fn all_events(j: &AnyJournal) -> Vec<rekey_journal::Event> {
    j.read_after(0, usize::MAX >> 1).await.unwrap()
}

/// Every pair of durable engines.
const PAIRS: [(Kind, Kind); 4] = [
    (Kind::Sqlite, Kind::Postgres),
    (Kind::Postgres, Kind::Sqlite),
    (Kind::Sqlite, Kind::Sqlite),
    (Kind::Postgres, Kind::Postgres),
];

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_holds_every_event_record_and_timer_and_carries_on() {
    for (from, to) in PAIRS {
        let (_source_place, src) = source(from).await;
        let place = Place::new(to);
        let dst = place.open_real_time();
        let mut calls = 0;
        let counts = dst.copy_from(&src, &mut |_, _| calls += 1).await.unwrap();
        let events = all_events(&src).await;
        assert_eq!(
            (counts.streams, counts.events, counts.timers),
            (3, events.len() as u64, 1),
            "{from:?} -> {to:?}"
        );
        assert!(calls >= 1, "progress is told");
        assert_eq!(
            all_events(&dst).await,
            events,
            "{from:?} -> {to:?}: byte for byte"
        );
        let every = StreamFilter::default();
        assert_eq!(
            dst.streams(&every).await.unwrap(),
            src.streams(&every).await.unwrap()
        );
        assert_eq!(
            dst.due_timers(i64::MAX, 10).await.unwrap(),
            src.due_timers(i64::MAX, 10).await.unwrap()
        );
        let heads = src.heads().await.unwrap();
        assert_eq!(dst.heads().await.unwrap(), heads);
        assert_intact(&dst.verify(Some(&heads)).await.unwrap(), "the copy");

        // The copy takes appends where the source left off, after its global sequences.
        let appended = dst
            .append(Append::new("alpha", 4, vec![numbered(5)]))
            .await
            .unwrap();
        assert_eq!(appended.last_seq, 5);
        assert!(appended.last_global_seq > events.last().unwrap().global_seq);
        assert_intact(&dst.verify(None).await.unwrap(), "the copy after an append");

        // Now it holds something: a second copy into it is refused, and changes nothing.
        let before = all_events(&dst).await;
        let e = dst.copy_from(&src, &mut |_, _| {}).await.unwrap_err();
        assert!(
            matches!(e, Error::CopyTargetNotEmpty { streams: 3, .. }),
            "{e}"
        );
        assert_eq!(all_events(&dst).await, before);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_grows_during_the_copy_copies_nothing() {
    for (from, to) in PAIRS {
        let (_source_place, src) = source(from).await;
        let place = Place::new(to);
        let dst = place.open_real_time();
        let mut grew = false;
        let e = dst
            .copy_from(&src, &mut |_, _| {
                if !grew {
                    grew = true;
                    let handle = tokio::runtime::Handle::current();
                    tokio::task::block_in_place(|| {
                        handle.block_on(src.append(Append::new("bravo", 6, vec![numbered(7)])))
                    })
                    .unwrap();
                }
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::CopySourceChanged { stream } if stream == "bravo"),
            "{from:?} -> {to:?}: {e}"
        );
        assert!(all_events(&dst).await.is_empty(), "nothing half-copied");
        assert!(
            dst.streams(&StreamFilter::default())
                .await
                .unwrap()
                .is_empty()
        );
        // Once the source is still, the same destination takes the copy.
        dst.copy_from(&src, &mut |_, _| {}).await.unwrap();
        assert_eq!(all_events(&dst).await, all_events(&src).await);
    }
}
