//! Resume at scale: a generated journal of open rotations in varied phases (requested, a
//! step in doubt, between steps, failed and due for a retry, compensating), taken up by
//! `runner::resume::drive_open` as `rekey resume` does, ends every rotation exactly once,
//! applies no effect twice, stays under its concurrency limit and reports its progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rekey::journal::{Clock, JournalRead, SqliteJournal, SystemClock};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::lock;
use rekey::runner::resume::{OpenRotation, ResumeProgress, drive_open};
use rekey::runner::{Options, Progress, Runner};
use rekey::saga::{Phase, RotationEvent};

use crate::open_rotations::{self, Local, PROVIDER, generate};

/// Counts what the resume reports, and the drives in flight at once.
#[derive(Debug, Default)]
struct Counted {
    found: AtomicUsize,
    driven: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl ResumeProgress for Counted {
    fn found(&self) {
        self.found.fetch_add(1, Ordering::SeqCst);
    }
    fn driven(&self) {
        // Never more reported driven than found.
        assert!(self.driven.fetch_add(1, Ordering::SeqCst) < self.found.load(Ordering::SeqCst));
    }
}

const ROTATIONS: usize = 2_000;
const LIMIT: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_generated_open_rotations_ends_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(
        SqliteJournal::open_with_clock(dir.path().join("open.journal"), clock.clone()).unwrap(),
    );
    let generated = generate(journal.clone(), ROTATIONS, 64).await;
    assert_eq!(generated.rotations, ROTATIONS as u64);

    let local = Arc::new(Local::default());
    let providers = Registry::new().with_roles(PROVIDER, roles!(local.clone()));
    let runner = Arc::new(Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock,
        Options::new("resume-test", 7),
    ));
    let counted = Arc::new(Counted::default());
    let gauge = counted.clone();
    let results = drive_open(&runner, LIMIT, counted.clone(), |open: &OpenRotation| {
        let (runner, id, gauge) = (runner.clone(), open.rotation_id.clone(), gauge.clone());
        async move {
            let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let progress = runner.drive(&id).await;
            gauge.in_flight.fetch_sub(1, Ordering::SeqCst);
            progress
        }
    })
    .await
    .unwrap();

    // Every generated rotation was found once and driven to its end.
    assert_eq!(results.len(), ROTATIONS);
    assert_eq!(counted.found.load(Ordering::SeqCst), ROTATIONS);
    assert_eq!(counted.driven.load(Ordering::SeqCst), ROTATIONS);
    let most = counted.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT,
        "{most} drives at once, above the limit {LIMIT}"
    );
    let (mut completed, mut compensated) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for (open, progress) in &results {
        let i = usize::from_str_radix(&open.rotation_id[24..], 16).unwrap();
        assert!(seen.insert(i), "rotation {i} found twice");
        let (id, secret, _) = open_rotations::rotation(i);
        assert_eq!(open.rotation_id, id);
        assert_eq!(open.secret.as_deref(), Some(secret.as_str()));
        let Ok(Progress::Finished(phase)) = progress else {
            panic!("rotation {id} did not end: {progress:?}");
        };
        match phase {
            Phase::Completed => completed += 1,
            _ => compensated += 1,
        }

        // The journal: exactly one terminal event, the last, matching the stream's status;
        // no step succeeded twice; the lock is free again.
        let events: Vec<RotationEvent> = journal
            .read_stream(&id)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.payload).unwrap())
            .collect();
        let terminal: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, RotationEvent::Completed | RotationEvent::Compensated))
            .collect();
        assert_eq!(terminal.len(), 1, "rotation {id}: {terminal:?}");
        assert!(matches!(
            events.last(),
            Some(RotationEvent::Completed | RotationEvent::Compensated)
        ));
        let status = journal.stream_info(&id).await.unwrap().unwrap().status;
        let expected = match phase {
            Phase::Completed => "completed",
            _ => "compensated",
        };
        assert_eq!(status, expected, "rotation {id}");
        let mut succeeded = std::collections::HashSet::new();
        for e in &events {
            if let RotationEvent::StepSucceeded { step, .. } = e {
                assert!(
                    succeeded.insert(*step),
                    "rotation {id}: {step} succeeded twice"
                );
            }
        }
        let lock = journal
            .stream_info(&lock::stream_id(&secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lock.status, lock::IDLE, "rotation {id}'s lock");
    }
    // Both ends occur among the generated phases (compensations already under way).
    assert!(
        completed > 0 && compensated > 0,
        "{completed} completed, {compensated} compensated"
    );
    // No effect reached a provider twice, and nothing is left open.
    assert_eq!(local.repeated(), Vec::<(String, u32)>::new());
    assert!(local.effects() > 0);
    let left = runner.each_open_rotation(|_| {}).await.unwrap();
    assert_eq!(left, 0);
}

/// A lock opened by a process that died before it created the rotation stream is found
/// through the busy lock, its stream is created, and it is driven like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_finds_a_rotation_only_its_lock_names() {
    use rekey::journal::{Append, JournalAppend, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(
        SqliteJournal::open_with_clock(dir.path().join("open.journal"), clock.clone()).unwrap(),
    );
    generate(journal.clone(), 3, 4).await;
    let opened = lock::LockEvent::Opened {
        rotation_id: "00000000-0000-7000-8000-0000000000ff".into(),
        plan: open_rotations::plan("orphaned"),
        trigger: rekey::saga::Trigger::Manual,
        actor: "test".into(),
    };
    journal
        .append(
            Append::new(
                lock::stream_id("orphaned"),
                0,
                vec![NewEvent::new(
                    opened.kind(),
                    serde_json::to_value(&opened).unwrap(),
                )],
            )
            .subject("orphaned")
            .status(lock::BUSY),
        )
        .await
        .unwrap();
    let local = Arc::new(Local::default());
    let providers = Registry::new().with_roles(PROVIDER, roles!(local.clone()));
    let runner = Arc::new(Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock,
        Options::new("resume-test", 7),
    ));
    let counted = Arc::new(Counted::default());
    let results = drive_open(&runner, LIMIT, counted.clone(), |open: &OpenRotation| {
        let (runner, id) = (runner.clone(), open.rotation_id.clone());
        async move { runner.drive(&id).await }
    })
    .await
    .unwrap();
    let ids: Vec<&str> = results
        .iter()
        .map(|(o, _)| o.rotation_id.as_str())
        .collect();
    assert_eq!(ids.len(), 4);
    // Found after the rotations whose streams are open.
    assert_eq!(ids[3], "00000000-0000-7000-8000-0000000000ff");
    assert_eq!(results[3].0.secret.as_deref(), Some("orphaned"));
    assert!(
        results
            .iter()
            .all(|(_, p)| matches!(p, Ok(Progress::Finished(_))))
    );
    assert_eq!(counted.found.load(Ordering::SeqCst), 4);
    assert_eq!(counted.driven.load(Ordering::SeqCst), 4);
}
