//! Durable commits per rotation: a no-op rotation journals each step's outcome with the
//! next step's `StepStarted` in one append, lets steps that only read (captures, a verify)
//! ride along with the next commit instead of committing before their calls, and spends
//! no lease round trip it does not need (no release once the rotation has ended), while
//! every append to the rotation stream stays fenced.

use std::sync::{Arc, Mutex};

use rekey::journal::{
    Append, Appended, Clock, Event, JournalAppend, JournalRead, JournalScan, Lease, Leases,
    MemoryJournal, Result, StreamFilter, StreamInfo, SystemClock, Timer,
};
use rekey::resolve::Registry;
use rekey::roles;
use rekey::runner::{Options, Progress, Requested, Runner};
use rekey::saga::{Phase, RotationEvent, Trigger};

use crate::open_rotations::{Local, PROVIDER, plan};

/// One durable write the runner asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// An append: its stream, event kinds, and whether it was fenced.
    Append {
        stream: String,
        kinds: Vec<String>,
        /// The action of each `StepStarted` among them, in order.
        started: Vec<String>,
        /// The idempotency key of each `StepStarted` among them, in order.
        keys: Vec<String>,
        fenced: bool,
    },
    Lease(&'static str),
    /// An atomic append to several streams: one commit.
    AppendAll(Vec<Write>),
}

/// A memory journal that records every write (each one durable commit on disk).
#[derive(Debug)]
struct Counting {
    memory: MemoryJournal,
    writes: Mutex<Vec<Write>>,
    /// Set: the first atomic append that closes a lock finds a trigger joined the lock
    /// just before it (as one arriving from another process would).
    race_the_close: std::sync::atomic::AtomicBool,
}

impl Counting {
    fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            memory: MemoryJournal::new(clock),
            writes: Mutex::default(),
            race_the_close: false.into(),
        }
    }

    /// Appends a `TriggerCoalesced` to the lock that `closing` would close, once.
    async fn join_before(&self, closing: &[Append]) {
        let Some(close) = closing
            .iter()
            .find(|a| a.events.iter().any(|e| e.kind == "RotationClosed"))
        else {
            return;
        };
        if !self
            .race_the_close
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let rotation_id = close.events[0].payload["rotation_id"].clone();
        let joined = rekey::journal::NewEvent::new(
            "TriggerCoalesced",
            serde_json::json!({
                "type": "Coalesced",
                "into": rotation_id,
                "trigger": "schedule",
                "actor": "another-process",
            }),
        );
        self.memory
            .append(Append::new(
                &close.stream_id,
                close.expected_seq,
                vec![joined],
            ))
            .await
            .expect("the joining trigger");
    }
}

impl JournalRead for Counting {
    async fn read_stream(&self, stream_id: &str) -> Result<Vec<Event>> {
        self.memory.read_stream(stream_id).await
    }
    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        self.memory.stream_info(stream_id).await
    }
}

impl JournalScan for Counting {
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.memory.read_after(after, limit).await
    }
    async fn streams(&self, filter: &StreamFilter) -> Result<Vec<StreamInfo>> {
        self.memory.streams(filter).await
    }
    async fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>> {
        self.memory.due_timers(now_ms, limit).await
    }
    async fn next_timer(&self) -> Result<Option<Timer>> {
        self.memory.next_timer().await
    }
}

impl Write {
    /// The record of `append`.
    fn of(append: &Append) -> Self {
        let (started, keys) = append
            .events
            .iter()
            .filter(|e| e.kind == "StepStarted")
            .map(|e| {
                let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
                (text(&e.payload["step"]["action"]), text(&e.payload["key"]))
            })
            .unzip();
        Write::Append {
            stream: append.stream_id.clone(),
            kinds: append.events.iter().map(|e| e.kind.clone()).collect(),
            started,
            keys,
            fenced: append.fence.is_some(),
        }
    }

    /// The appends this write made: itself, or each part of an atomic append.
    fn parts(&self) -> Vec<&Write> {
        match self {
            Write::AppendAll(parts) => parts.iter().collect(),
            other => vec![other],
        }
    }
}

impl JournalAppend for Counting {
    async fn append(&self, append: Append) -> Result<Appended> {
        self.writes.lock().unwrap().push(Write::of(&append));
        self.memory.append(append).await
    }

    async fn append_all(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        self.join_before(&appends).await;
        self.writes
            .lock()
            .unwrap()
            .push(Write::AppendAll(appends.iter().map(Write::of).collect()));
        self.memory.append_all(appends).await
    }
}

impl Leases for Counting {
    async fn acquire(&self, stream_id: &str, owner: &str, ttl_ms: i64) -> Result<Lease> {
        self.writes.lock().unwrap().push(Write::Lease("acquire"));
        self.memory.acquire(stream_id, owner, ttl_ms).await
    }
    async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<Lease> {
        self.writes.lock().unwrap().push(Write::Lease("renew"));
        self.memory.renew(lease, ttl_ms).await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.writes.lock().unwrap().push(Write::Lease("release"));
        self.memory.release(lease).await
    }
}

/// Requests rotation `r1` of `plan("s")` over `journal` with `local` as its provider, and
/// drives it, as runner `owner`, until it completes.
async fn rotate_to_completion(
    journal: Arc<Counting>,
    clock: Arc<dyn Clock>,
    local: Local,
    owner: &str,
) {
    let providers = Registry::new().with_roles(PROVIDER, roles!(Arc::new(local)));
    let runner = Runner::new(journal, Arc::new(providers), clock, Options::new(owner, 1));
    let Requested::Started { rotation_id } = runner
        .request(plan("s"), Trigger::Manual, "test", "r1".into())
        .await
        .unwrap()
    else {
        panic!("a first request opens a rotation");
    };
    assert_eq!(
        runner.drive(&rotation_id).await.unwrap(),
        Progress::Finished(Phase::Completed)
    );
}

async fn no_op_rotation() -> (Vec<Write>, Arc<Counting>) {
    no_op_rotation_racing(false).await
}

/// A no-op rotation of `plan("s")`, where a trigger joins its lock just before the drive
/// would close it when `race_the_close`.
async fn no_op_rotation_racing(race_the_close: bool) -> (Vec<Write>, Arc<Counting>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(Counting::new(clock.clone()));
    journal
        .race_the_close
        .store(race_the_close, std::sync::atomic::Ordering::SeqCst);
    rotate_to_completion(journal.clone(), clock, Local::default(), "commits").await;
    let writes = journal.writes.lock().unwrap().clone();
    (writes, journal)
}

/// Each append the runner asked for, those of an atomic append included: its commit's
/// index among the writes, its stream, its event kinds, and whether it was fenced.
fn appends(writes: &[Write]) -> Vec<(usize, &str, &Vec<String>, bool)> {
    appended(writes)
        .into_iter()
        .map(|(c, s, k, _, f)| (c, s, k, f))
        .collect()
}

/// An append as [`appended`] lists it: its commit's index, its stream, its event kinds,
/// the action of each `StepStarted` among them, and whether it was fenced.
type Record<'a> = (usize, &'a str, &'a Vec<String>, &'a Vec<String>, bool);

/// As [`appends`], with the action of each `StepStarted` in the append.
fn appended(writes: &[Write]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    for (commit, w) in writes.iter().enumerate() {
        for part in w.parts() {
            if let Write::Append {
                stream,
                kinds,
                started,
                fenced,
                ..
            } = part
            {
                out.push((commit, stream.as_str(), kinds, started, *fenced));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_no_op_rotation_commits_once_per_step_that_changes_something_and_never_releases() {
    let (writes, _) = no_op_rotation().await;
    let all = appended(&writes);
    let rotation: Vec<_> = all.iter().filter(|(_, s, ..)| *s == "r1").collect();
    let lock: Vec<_> = all.iter().filter(|(_, s, ..)| *s != "r1").collect();
    // The request, then one append per step that starts after an effect or starts one
    // (carrying the previous step's outcome with it), then the last outcome with the
    // terminal event. The captures ride along with the create's start.
    let (first, last) = (rotation[0], rotation[rotation.len() - 1]);
    assert_eq!(first.2, &vec!["Requested".to_owned()]);
    assert_eq!(last.2.last().map(String::as_str), Some("Completed"));
    let middle = &rotation[1..rotation.len() - 1];
    let last_started: Vec<&str> = middle
        .iter()
        .map(|(_, _, kinds, started, fenced)| {
            assert!(*fenced, "an append to the rotation stream was not fenced");
            assert_eq!(kinds.last().map(String::as_str), Some("StepStarted"));
            started.last().unwrap().as_str()
        })
        .collect();
    assert_eq!(
        last_started,
        [
            "create",
            "write",
            "update",
            "verify",
            "disable_old",
            "retire_old"
        ],
        "{writes:#?}"
    );
    assert_eq!(
        *middle[0].3,
        ["capture", "capture", "capture", "create"],
        "the reads start and end in the create's commit: {writes:#?}"
    );
    for (i, (_, _, kinds, started, _)) in middle.iter().enumerate().skip(1) {
        assert_eq!(started.len(), 1, "append {i}: {kinds:?}");
        assert_eq!(kinds.first().map(String::as_str), Some("StepSucceeded"));
    }
    // The lock's opening lands with the request, its closing with the terminal event:
    // one commit each, so no crash leaves one without the other.
    let lock_kinds: Vec<(usize, &str)> = lock
        .iter()
        .map(|(c, _, k, ..)| (*c, k[0].as_str()))
        .collect();
    assert_eq!(
        lock_kinds,
        [(first.0, "RotationOpened"), (last.0, "RotationClosed")],
        "{writes:#?}"
    );
    // One lease round trip: the acquire. The lease of an ended rotation is not released.
    let leases: Vec<_> = writes
        .iter()
        .filter(|w| matches!(w, Write::Lease(_)))
        .collect();
    assert_eq!(leases, vec![&Write::Lease("acquire")]);
    // For this plan of four targets: 9 steps, 23 events (21 in the rotation's stream, 2 in
    // its lock's) in 9 durable commits (the opening, the acquire, six steps' starts, the
    // ending), where one commit per step took 12, and one event per commit 25.
    let steps: usize = rotation.iter().map(|(_, _, _, s, _)| s.len()).sum();
    let events: usize = all.iter().map(|(_, _, k, ..)| k.len()).sum();
    assert_eq!((steps, events, writes.len()), (9, 23, 9));
}

/// A trigger that joins the lock just before the drive ends the rotation makes the atomic
/// ending conflict on the lock: nothing of it lands, and the drive ends in two commits
/// instead, the rotation's terminal event first, then the lock's closing after the join.
#[tokio::test]
async fn an_ending_that_races_a_joining_trigger_ends_in_two_commits() {
    let (writes, journal) = no_op_rotation_racing(true).await;
    let all = appends(&writes);
    let (last_commit, ..) = *all.last().unwrap();
    let tail: Vec<(&str, &str)> = all
        .iter()
        .filter(|(c, ..)| *c + 3 > last_commit)
        .map(|(_, s, k, _)| (*s, k.last().unwrap().as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            ("r1", "Completed"),
            ("lock:s", "RotationClosed"),
            ("r1", "Completed"),
            ("lock:s", "RotationClosed"),
        ],
        "the refused atomic ending, then the rotation's, then the lock's: {writes:#?}"
    );
    assert!(matches!(writes[writes.len() - 3], Write::AppendAll(_)));
    let lock: Vec<String> = journal
        .read_stream("lock:s")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        lock,
        ["RotationOpened", "TriggerCoalesced", "RotationClosed"]
    );
    let rotation = journal.read_stream("r1").await.unwrap();
    assert_eq!(rotation.last().unwrap().kind, "Completed");
    assert_eq!(
        rotation.iter().filter(|e| e.kind == "Completed").count(),
        1,
        "one terminal event"
    );
}

/// Driving an ended rotation again, from another runner while the first runner's lease
/// is still live, finds it ended (it needs no lease: nothing is left to call).
#[tokio::test]
async fn an_ended_rotation_is_finished_for_any_runner_without_its_lease() {
    let (_, journal) = no_op_rotation().await;
    let other = Runner::new(
        journal.clone(),
        Arc::new(Registry::new()),
        Arc::new(SystemClock),
        Options::new("other", 2),
    );
    assert_eq!(
        other.drive("r1").await.unwrap(),
        Progress::Finished(Phase::Completed)
    );
    let events: Vec<RotationEvent> = journal
        .read_stream("r1")
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, RotationEvent::Completed))
            .count(),
        1
    );
}

/// An effect's `StepStarted` is durable before the provider is called for it (DESIGN §4),
/// and so is the outcome of every effect before any later call. Only reads (the captures)
/// are called with their starts not yet durable: they join the next effect's commit.
#[tokio::test]
async fn each_effect_is_journaled_as_started_before_its_provider_call() {
    use crate::open_rotations::OnCall;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let journal = Arc::new(Counting::new(clock.clone()));
    // At each provider call: for an effect, whether its start was durable; and how many
    // StepStarted and StepSucceeded were durable.
    type AtCall = (Option<bool>, usize, usize);
    let seen: Arc<Mutex<Vec<AtCall>>> = Arc::default();
    let (watched, log) = (journal.clone(), seen.clone());
    let local = Local::calling(OnCall(Arc::new(move |effect: Option<&str>| {
        let writes = watched.writes.lock().unwrap();
        let count = |kind: &str| {
            appends(&writes)
                .iter()
                .map(|(_, _, kinds, _)| kinds.iter().filter(|k| *k == kind).count())
                .sum()
        };
        let durable_start = effect.map(|key| {
            writes
                .iter()
                .flat_map(Write::parts)
                .any(|p| matches!(p, Write::Append { keys, .. } if keys.iter().any(|k| k == key)))
        });
        let durable = (durable_start, count("StepStarted"), count("StepSucceeded"));
        log.lock().unwrap().push(durable);
    })));
    rotate_to_completion(journal.clone(), clock, local, "durable-start").await;
    let seen = seen.lock().unwrap().clone();
    // One call per step, and a read of the stored value for the rotator's capture.
    assert_eq!(seen.len(), 10, "{seen:?}");
    let mut effects = 0;
    for (i, &(durable_start, _, succeeded)) in seen.iter().enumerate() {
        assert_ne!(durable_start, Some(false), "call {i}: {seen:?}");
        // The outcome of every effect called before is durable.
        assert!(succeeded >= effects, "call {i}: {seen:?}");
        effects += usize::from(durable_start.is_some());
    }
    assert_eq!(effects, 5, "{seen:?}");
    // The captures (and the read of the stored value) come first, and are called before
    // anything but the request is durable; the verify, the last read, after the update,
    // finds its start already durable with the update's outcome.
    assert_eq!(&seen[..4], &[(None, 0, 0); 4], "{seen:?}");
    let last_read = seen.iter().rev().find(|(effect, ..)| effect.is_none());
    assert_eq!(last_read, Some(&(None, 7, 6)), "{seen:?}");
}
