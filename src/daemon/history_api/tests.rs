//! The progress stream over an in-memory journal: what it sends, when it ends.

use std::sync::Arc;

use rekey_journal::{Append, JournalAppend, ManualClock, MemoryJournal, NewEvent};
use serde_json::json;

use super::*;

/// A journal with rotation `r1` holding `n` events, the stream `open`.
async fn journal(n: u64) -> Arc<MemoryJournal> {
    let j = Arc::new(MemoryJournal::new(Arc::new(ManualClock::new(1_000))));
    for seq in 1..=n {
        append(&j, seq, "StepStarted").await;
    }
    j
}

async fn append(j: &MemoryJournal, seq: u64, kind: &str) {
    let mut a = Append::new(
        "r1",
        seq - 1,
        vec![NewEvent::new(kind, json!({ "n": seq }))],
    );
    a = match kind {
        "Completed" => a.status("completed"),
        _ if seq == 1 => a.subject("s").status("open"),
        _ => a,
    };
    j.append(a).await.unwrap();
}

fn limits(duration_max: Duration) -> StreamLimits {
    StreamLimits {
        poll: Duration::from_millis(10),
        keep_alive: Duration::from_secs(1),
        duration_max,
        streams_max: 1,
    }
}

fn start(
    j: Arc<MemoryJournal>,
    after: u64,
    limits: StreamLimits,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Progress<MemoryJournal> {
    Progress {
        journal: j,
        rotation_id: "r1".into(),
        sent: after,
        pending: VecDeque::new(),
        ended: false,
        deadline: Box::pin(tokio::time::sleep(limits.duration_max)),
        stop,
        appends: None,
        limits,
        _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
    }
}

fn seq(out: Option<Out>) -> (u64, String) {
    match out {
        Some(Out::Event(e)) => (e.stream_seq, e.kind),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn events_after_the_given_one_then_new_ones_then_the_end_at_the_terminal_event() {
    let j = journal(3).await;
    let mut p = start(
        j.clone(),
        1,
        limits(Duration::from_secs(60)),
        Box::pin(std::future::pending()),
    );
    assert_eq!(seq(next(&mut p).await).0, 2);
    assert_eq!(seq(next(&mut p).await).0, 3);
    let writer = {
        let j = j.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            append(&j, 4, "StepSucceeded").await;
            append(&j, 5, "Completed").await;
        })
    };
    assert_eq!(seq(next(&mut p).await), (4, "StepSucceeded".into()));
    assert_eq!(seq(next(&mut p).await), (5, "Completed".into()));
    assert_eq!(
        next(&mut p).await,
        None,
        "the stream ends after the terminal event"
    );
    writer.await.unwrap();

    // Resumed after the terminal event: nothing to send, and it ends at once.
    let mut p = start(
        j,
        5,
        limits(Duration::from_secs(60)),
        Box::pin(std::future::pending()),
    );
    assert_eq!(next(&mut p).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_stream_ends_at_its_time_limit_or_when_the_daemon_stops() {
    let j = journal(2).await;
    let mut p = start(
        j.clone(),
        0,
        limits(Duration::from_secs(30)),
        Box::pin(std::future::pending()),
    );
    assert_eq!(seq(next(&mut p).await).0, 1);
    assert_eq!(seq(next(&mut p).await).0, 2);
    match next(&mut p).await {
        Some(Out::Ended(why)) => assert!(
            why.contains("run 30 s") && why.contains("Last-Event-ID: 2"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut p).await, None);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut p = start(
        j,
        2,
        limits(Duration::from_secs(3_600)),
        Box::pin(async move {
            let _ = rx.await;
        }),
    );
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = tx.send(());
    });
    match next(&mut p).await {
        Some(Out::Ended(why)) => assert!(why.contains("daemon is stopping"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut p).await, None);
}

/// With a runner to watch, a new event is sent as soon as it is journaled, not at the
/// next poll (an hour away here; real time, so nothing skips the wait).
#[tokio::test]
async fn an_event_the_runner_journals_wakes_the_stream_at_once() {
    let j = journal(1).await;
    let appends = Appends::default();
    let mut p = start(
        j.clone(),
        1,
        limits(Duration::from_secs(7_200)),
        Box::pin(std::future::pending()),
    );
    p.limits.poll = Duration::from_secs(3_600);
    p.appends = Some(appends.0.subscribe());
    let waiting = tokio::spawn(async move { (next(&mut p).await, p) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&j, 2, "StepSucceeded").await;
    let state = crate::saga::apply(
        None,
        &RotationEvent::Requested {
            rotation_id: "r1".into(),
            plan: crate::saga::Plan {
                secret: "s".into(),
                lock_key: "s".into(),
                targets: vec![],
                grace_ms: 0,
                attempts_max: 1,
            },
            trigger: crate::saga::Trigger::Manual,
            actor: "test".into(),
        },
    )
    .unwrap();
    appends.journaled(&state, &RotationEvent::Completed, 0.0);
    let (out, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the runner's event, not the hourly poll")
        .unwrap();
    assert_eq!(seq(out), (2, "StepSucceeded".into()));
}
