//! The invariants of DESIGN.md §6, checked against the journal and the simulated world.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use futures::executor::block_on;
use rekey::journal::{JournalRead, JournalScan, MemoryJournal, StreamFilter};
use rekey::runner::lock::{LockEvent, is_lock_stream};
use rekey::saga::{Action, Phase, Rotation, RotationEvent, StepId, fold};

use super::journal::AppendRecord;
use super::world::{EffectKind, Kind, SecretWorld, VALUE_PREFIX, World, target_name};

/// Which promise a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// I1: exactly one terminal event per rotation; lock streams end idle.
    Terminal,
    /// I2: every effect at most once; the old credential retired once, not before its time;
    /// a finished rotation leaves every target as it promised.
    Effects,
    /// I3: crashes do not change the terminal state.
    SameOutcome,
    /// I5: no secret value in the journal, logs or errors.
    NoValues,
    /// I8: after a rotation ends, each store holds one enabled version that rekey wrote or
    /// captured: the live one.
    OneEnabled,
    /// I6: a stale runner's appends are refused.
    Fencing,
    /// Everything ends, and no loop spins without waiting.
    Liveness,
    /// The runner returned an error, or called a provider in a way no correct runner does.
    Runner,
    /// The journal's own chain check failed.
    Journal,
    /// The same seed ran twice and did not do the same thing.
    Determinism,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::Terminal => "I1 one terminal event",
            Invariant::Effects => "I2 effects at most once",
            Invariant::SameOutcome => "I3 same outcome after crashes",
            Invariant::NoValues => "I5 no secret values",
            Invariant::OneEnabled => "I8 one enabled version",
            Invariant::Fencing => "I6 fencing",
            Invariant::Liveness => "liveness",
            Invariant::Runner => "runner misbehaved",
            Invariant::Journal => "journal integrity",
            Invariant::Determinism => "determinism",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    pub rotation: Option<String>,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: Invariant, rotation: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            invariant,
            rotation: rotation.map(str::to_owned),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.invariant)?;
        if let Some(r) = &self.rotation {
            write!(f, " rotation {r}:")?;
        }
        write!(f, " {}", self.detail)
    }
}

/// The credential and value a secret holds between rotations.
#[derive(Debug, Clone)]
pub struct Holding {
    pub credential: String,
    pub value: String,
}

/// A rotation's events, decoded.
pub fn rotation_events(
    memory: &MemoryJournal,
    rotation: &str,
) -> Result<Vec<RotationEvent>, String> {
    // The memory journal's reads are ready futures: the harness, which is synchronous,
    // takes their values at once.
    let events = block_on(memory.read_stream(rotation)).map_err(|e| e.to_string())?;
    events
        .iter()
        .map(|e| {
            serde_json::from_str(&e.payload)
                .map_err(|err| format!("event {} does not decode: {err}", e.stream_seq))
        })
        .collect()
}

/// A rotation's folded state.
pub fn load(memory: &MemoryJournal, rotation: &str) -> Result<Rotation, String> {
    let events = rotation_events(memory, rotation)?;
    fold(&events)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("rotation {rotation} has no events"))
}

/// Checks what a rotation that just ended left behind, and moves `holding` on when it
/// completed. Called as soon as the harness sees the rotation end, before any later
/// rotation of the same secret can start.
pub fn check_ended(
    rot: &Rotation,
    world: &World,
    secret: usize,
    holding: &mut Holding,
) -> Vec<Violation> {
    let sw = &world.secrets[secret];
    // I8, whatever the phase.
    let mut out: Vec<Violation> = (0..sw.stores.len())
        .filter_map(|k| {
            let name = target_name(&sw.name, Kind::Store(k));
            let target = rot.plan.targets.iter().position(|t| t.name == name);
            let captured = target.and_then(|t| rot.captured(t as u16));
            one_enabled(rot, sw, k, captured)
        })
        .collect();
    let mut fail =
        |detail: String| out.push(Violation::new(Invariant::Effects, Some(&rot.id), detail));
    let target = |kind: Kind| {
        let name = target_name(&sw.name, kind);
        rot.plan
            .targets
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u16)
    };
    let Some(rotator) = target(Kind::Rotator) else {
        fail("the plan has no rotator".into());
        return out;
    };
    let old = holding.credential.clone();
    if let Some(captured) = rot.captured(rotator)
        && captured != old
    {
        fail(format!(
            "captured credential {captured}, but {old} was the live one"
        ));
    }
    let prefix = format!("{}:", rot.id);
    let ours = |key: Option<&str>| key.is_some_and(|k| k.starts_with(&prefix));
    let effects: Vec<_> = world
        .effects
        .iter()
        .filter(|e| e.secret == secret)
        .collect();

    // At most one version per key, at most one state change of the dependent per key.
    for (k, versions) in sw.stores.iter().enumerate() {
        let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
        for v in versions.iter().filter(|v| ours(v.key.as_deref())) {
            *per_key
                .entry(v.key.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        for (key, n) in per_key.into_iter().filter(|(_, n)| *n > 1) {
            fail(format!(
                "store {k} holds {n} versions written with key {key}"
            ));
        }
    }
    let mut sets: BTreeMap<&str, usize> = BTreeMap::new();
    for e in effects
        .iter()
        .filter(|e| e.kind == EffectKind::DependentSet && ours(Some(&e.key)))
    {
        *sets.entry(&e.key).or_default() += 1;
    }
    for (key, n) in sets.into_iter().filter(|(_, n)| *n > 1) {
        fail(format!(
            "the dependent was changed {n} times with key {key}"
        ));
    }

    let live = sw.live_count();
    if live != 1 {
        fail(format!("{live} live credentials; exactly one must remain"));
    }
    let created: Vec<_> = sw
        .credentials
        .iter()
        .filter(|c| ours(c.key.as_deref()))
        .collect();
    let old_retired: Vec<_> = effects
        .iter()
        .filter(|e| e.kind == EffectKind::CredentialRetired && e.object == old)
        .collect();
    let store_count = sw.stores.len();
    match rot.phase {
        Phase::Completed => {
            let create = StepId {
                generation: rot.generation,
                ..StepId::new(Action::Create, rotator)
            };
            let Some(new) = rot.outcome(&create).and_then(|id| sw.credential(id)) else {
                fail(format!(
                    "completed, but step {create} produced no known credential"
                ));
                return out;
            };
            if !new.live {
                fail(format!(
                    "completed, but its credential {} is retired",
                    new.id
                ));
            }
            for c in created.iter().filter(|c| c.live && c.id != new.id) {
                fail(format!(
                    "credential {} (key {}) is still live besides the new {}",
                    c.id,
                    c.key.as_deref().unwrap_or_default(),
                    new.id
                ));
            }
            let due = rot.grace_due_ms.unwrap_or(i64::MAX);
            match old_retired.as_slice() {
                [] => fail(format!("the old credential {old} was never retired")),
                [once] if once.at_ms < due => fail(format!(
                    "the old credential {old} was retired at {}, before the grace period ended at {due}",
                    once.at_ms
                )),
                [_] => {}
                many => fail(format!(
                    "the old credential {old} was retired {} times",
                    many.len()
                )),
            }
            for e in effects
                .iter()
                .filter(|e| e.kind == EffectKind::VersionDisabled && ours(Some(&e.key)))
                .filter(|e| e.at_ms < due)
            {
                fail(format!(
                    "version {} was disabled at {}, before the grace period ended at {due}",
                    e.object, e.at_ms
                ));
            }
            for k in 0..store_count {
                if sw.latest_enabled(k).map(|v| v.value.as_str()) != Some(new.value.as_str()) {
                    fail(format!(
                        "store {k}: the latest enabled version does not hold the new value"
                    ));
                }
                let captured = target(Kind::Store(k)).and_then(|t| rot.captured(t));
                if captured
                    .and_then(|id| sw.version(k, id))
                    .is_none_or(|v| v.enabled)
                {
                    fail(format!(
                        "store {k}: the old version {captured:?} is still enabled"
                    ));
                }
            }
            if sw.dependent.as_ref().is_some_and(|d| d.value != new.value) {
                fail("the dependent does not hold the new value".into());
            }
            *holding = Holding {
                credential: new.id.clone(),
                value: new.value.clone(),
            };
        }
        Phase::Compensated => {
            for c in created.iter().filter(|c| c.live) {
                fail(format!(
                    "credential {} (key {}) made by the rotation is still live after compensation",
                    c.id,
                    c.key.as_deref().unwrap_or_default()
                ));
            }
            if !old_retired.is_empty() {
                fail(format!(
                    "the old credential {old} was retired by a compensated rotation"
                ));
            }
            if sw.credential(&old).is_none_or(|c| !c.live) {
                fail(format!(
                    "the old credential {old} is not live after compensation"
                ));
            }
            for k in 0..store_count {
                if sw.latest_enabled(k).map(|v| v.value.as_str()) != Some(holding.value.as_str()) {
                    fail(format!(
                        "store {k}: the latest enabled version does not hold the old value"
                    ));
                }
            }
            if sw
                .dependent
                .as_ref()
                .is_some_and(|d| d.value != holding.value)
            {
                fail("the dependent does not hold the old value".into());
            }
        }
        phase => out.push(Violation::new(
            Invariant::Terminal,
            Some(&rot.id),
            format!("ended in phase {phase:?}"),
        )),
    }
    out
}

/// I8 for store `k` after `rot` ended: of the versions rekey wrote or `captured`, only the
/// live one (the newest enabled) is enabled.
fn one_enabled(
    rot: &Rotation,
    sw: &SecretWorld,
    k: usize,
    captured: Option<&str>,
) -> Option<Violation> {
    let live = sw.latest_enabled(k).map(|v| v.id.as_str());
    let left: Vec<&str> = sw.stores[k]
        .iter()
        .filter(|v| v.enabled && Some(v.id.as_str()) != live)
        .filter(|v| v.key.is_some() || Some(v.id.as_str()) == captured)
        .map(|v| v.id.as_str())
        .collect();
    (!left.is_empty()).then(|| {
        Violation::new(
            Invariant::OneEnabled,
            Some(&rot.id),
            format!("store {k}: {left:?} still enabled besides the live version {live:?}"),
        )
    })
}

/// I5: `text` holds no value the world made: nothing with the values' prefix, and none
/// of `values` without it either.
pub fn scan_for_values(what: &str, text: &str, values: &[String]) -> Option<Violation> {
    let at = text.find(VALUE_PREFIX).or_else(|| {
        values
            .iter()
            .filter_map(|v| text.find(v.strip_prefix(VALUE_PREFIX).unwrap_or(v)))
            .min()
    })?;
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(60)
        .map_or(0, |(i, _)| i);
    let context: String = text[start..].chars().take(140).collect();
    Some(Violation::new(
        Invariant::NoValues,
        None,
        format!("{what} contains a secret value: …{context}…"),
    ))
}

/// The journal after a run: I1 per rotation stream, lock streams idle and consistent,
/// I5 over every event, I6 over every append, and the hash chains intact.
pub fn check_journal(
    memory: &MemoryJournal,
    appends: &[AppendRecord],
    values: &[String],
    ended: bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let report = memory.verify();
    if !report.is_intact() {
        out.push(Violation::new(
            Invariant::Journal,
            None,
            format!("verify: {:?}", report.broken),
        ));
    }
    for e in memory.all_events() {
        let step = serde_json::from_str::<serde_json::Value>(&e.payload)
            .ok()
            .and_then(|p| {
                p.pointer("/step/action")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned)
            })
            .map_or_else(String::new, |a| format!(" of step {a}"));
        let what = format!("event {} #{} ({}{step})", e.stream_id, e.stream_seq, e.kind);
        let text = format!("{} {}", e.kind, e.payload);
        out.extend(scan_for_values(&what, &text, values).map(|mut v| {
            v.rotation = Some(e.stream_id.clone());
            v
        }));
    }
    out.extend(check_fences(appends));
    let streams = match block_on(memory.streams(&StreamFilter::default())) {
        Ok(s) => s,
        Err(e) => {
            out.push(Violation::new(Invariant::Journal, None, e.to_string()));
            return out;
        }
    };
    let mut phases: BTreeMap<String, Phase> = BTreeMap::new();
    for info in streams.iter().filter(|s| !is_lock_stream(&s.stream_id)) {
        let id = info.stream_id.as_str();
        let events = match rotation_events(memory, id) {
            Ok(events) => events,
            Err(e) => {
                out.push(Violation::new(Invariant::Terminal, Some(id), e));
                continue;
            }
        };
        out.extend(check_retries(id, &events));
        if !ended {
            continue;
        }
        let mut fail =
            |detail: String| out.push(Violation::new(Invariant::Terminal, Some(id), detail));
        let terminal: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, RotationEvent::Completed | RotationEvent::Compensated))
            .map(|(i, _)| i)
            .collect();
        match terminal.as_slice() {
            [i] if *i + 1 == events.len() => {}
            [] => fail("no terminal event".into()),
            [_] => fail("the terminal event is not the last".into()),
            many => fail(format!("{} terminal events", many.len())),
        }
        match fold(&events) {
            Ok(Some(r)) if r.phase.is_terminal() => {
                let status = if r.phase == Phase::Completed {
                    "completed"
                } else {
                    "compensated"
                };
                if info.status != status {
                    fail(format!("stream status {} after {:?}", info.status, r.phase));
                }
                phases.insert(id.to_owned(), r.phase);
            }
            Ok(r) => fail(format!("not ended: {:?}", r.map(|r| r.phase))),
            Err(e) => fail(e.to_string()),
        }
    }
    if !ended {
        return out;
    }
    let mut opened: BTreeSet<String> = BTreeSet::new();
    for info in streams.iter().filter(|s| is_lock_stream(&s.stream_id)) {
        let id = info.stream_id.as_str();
        let mut fail = |detail: String| {
            out.push(Violation::new(
                Invariant::Terminal,
                None,
                format!("{id}: {detail}"),
            ))
        };
        let events = match block_on(memory.read_stream(id)) {
            Ok(events) => events,
            Err(e) => {
                fail(e.to_string());
                continue;
            }
        };
        let mut open: Option<String> = None;
        for e in &events {
            let event: LockEvent = match serde_json::from_str(&e.payload) {
                Ok(event) => event,
                Err(err) => {
                    fail(format!("event {} does not decode: {err}", e.stream_seq));
                    break;
                }
            };
            match event {
                LockEvent::Opened { rotation_id, .. } => {
                    if let Some(o) = &open {
                        fail(format!("{rotation_id} opened while {o} was open"));
                    }
                    if !opened.insert(rotation_id.clone()) {
                        fail(format!("{rotation_id} opened twice"));
                    }
                    open = Some(rotation_id);
                }
                LockEvent::Coalesced { into, .. } => {
                    if open.as_ref() != Some(&into) {
                        fail(format!(
                            "a trigger coalesced into {into} while {open:?} was open"
                        ));
                    }
                }
                LockEvent::Closed { rotation_id, phase } => {
                    if open.as_ref() != Some(&rotation_id) {
                        fail(format!("{rotation_id} closed while {open:?} was open"));
                    }
                    if phases.get(&rotation_id) != Some(&phase) {
                        fail(format!(
                            "{rotation_id} closed as {phase:?} but its stream says {:?}",
                            phases.get(&rotation_id)
                        ));
                    }
                    open = None;
                }
            }
        }
        if let Some(o) = open {
            fail(format!("{o} is still open"));
        }
        if info.status != "idle" {
            fail(format!("status {} at the end", info.status));
        }
    }
    for id in opened.iter().filter(|id| !phases.contains_key(*id)) {
        out.push(Violation::new(
            Invariant::Terminal,
            Some(id),
            "opened, but no rotation stream ended",
        ));
    }
    for id in phases.keys().filter(|id| !opened.contains(*id)) {
        out.push(Violation::new(
            Invariant::Terminal,
            Some(id),
            "no lock stream ever opened it",
        ));
    }
    out
}

/// Every retry waits: a failure journaled right after a failure of the same attempt is a
/// reconciliation that failed, and it must name a time to try again. Without one the
/// runner asks again at once, for as long as the target keeps failing.
fn check_retries(id: &str, events: &[RotationEvent]) -> Option<Violation> {
    for pair in events.windows(2) {
        if let [
            RotationEvent::StepFailed { step, attempt, .. },
            RotationEvent::StepFailed {
                step: again,
                attempt: same,
                retry_at_ms: None,
                message,
                ..
            },
        ] = pair
            && step == again
            && attempt == same
        {
            return Some(Violation::new(
                Invariant::Liveness,
                Some(id),
                format!(
                    "step {step} attempt {attempt}: reconciliation failed ({message}) and is retried at once, \
                     without waiting"
                ),
            ));
        }
    }
    None
}

/// I6: after its first (unfenced) event, every append to a rotation stream is fenced, and
/// fencing tokens never go back: no runner appended after a newer one took over.
fn check_fences(appends: &[AppendRecord]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for a in appends.iter().filter(|a| !is_lock_stream(&a.stream)) {
        let stream = a.stream.as_str();
        match (&a.fence, a.first_seq) {
            (None, 1) => {}
            (None, seq) => out.push(Violation::new(
                Invariant::Fencing,
                Some(stream),
                format!("event {seq} was appended without a lease"),
            )),
            (Some(f), seq) => {
                let previous = last.insert(stream, f.token).unwrap_or(0);
                if f.token < previous {
                    out.push(Violation::new(
                        Invariant::Fencing,
                        Some(stream),
                        format!(
                            "event {seq} was appended with token {} by {} after token {previous}",
                            f.token, f.owner
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// The world after a run: no call a correct runner would not make, one live credential
/// per secret, and at most one store version per idempotency key.
pub fn check_world(world: &World, ended: bool) -> Vec<Violation> {
    let mut out: Vec<Violation> = world
        .anomalies
        .iter()
        .map(|a| {
            Violation::new(
                Invariant::Runner,
                None,
                format!("provider called wrongly: {a}"),
            )
        })
        .collect();
    for sw in &world.secrets {
        let live = sw.live_count();
        if ended && live != 1 {
            out.push(Violation::new(
                Invariant::Effects,
                None,
                format!("secret {}: {live} live credentials at the end", sw.name),
            ));
        }
        for (k, versions) in sw.stores.iter().enumerate() {
            let mut keys = BTreeSet::new();
            for key in versions.iter().filter_map(|v| v.key.as_deref()) {
                if !keys.insert(key) {
                    out.push(Violation::new(
                        Invariant::Effects,
                        None,
                        format!("secret {} store {k}: two versions with key {key}", sw.name),
                    ));
                }
            }
        }
    }
    out
}

/// A rotation's events, one line each, for a failure report (long ones cut in the middle).
pub fn trace(memory: &MemoryJournal, stream: &str) -> String {
    const HEAD: usize = 40;
    const TAIL: usize = 10;
    let Ok(events) = block_on(memory.read_stream(stream)) else {
        return format!("    (stream {stream} cannot be read)\n");
    };
    let start = events.first().map_or(0, |e| e.recorded_at_ms);
    let line = |e: &rekey::journal::Event| {
        format!(
            "    #{:<3} +{:>9} ms  {:<20} {}\n",
            e.stream_seq,
            e.recorded_at_ms - start,
            e.kind,
            e.payload
        )
    };
    if events.len() <= HEAD + TAIL {
        return events.iter().map(line).collect();
    }
    let mut out: String = events[..HEAD].iter().map(line).collect();
    out.push_str(&format!(
        "    … {} more events …\n",
        events.len() - HEAD - TAIL
    ));
    out.extend(events[events.len() - TAIL..].iter().map(line));
    out
}
