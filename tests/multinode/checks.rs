//! What must hold once every node has stopped, read from the journal and from the fakes'
//! effect logs and state. Broken rules are collected as violations, so one run reports
//! all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rekey::journal::{Clock, JournalRead, JournalScan, StreamFilter, SystemClock};
use rekey::runner::lock::{self, LockEvent};

use super::{Cluster, SCHEDULED, SECRETS, UNRELATED_SETTING, VAULT, secret, site};
use crate::crash::journal::{JournalView, Terminal};
use crate::fake_azure::Effect;

const ROTATION_TAG: &str = "rekey-rotation";
const KEY_TAG: &str = "rekey-key";

/// Rotation streams in the journal now.
pub fn rotation_count(c: &Cluster) -> usize {
    let Ok(j) = c.journal() else {
        return 0;
    };
    crate::block_on(j.streams(&StreamFilter::default()))
        .map(|s| {
            s.iter()
                .filter(|i| lock::is_rotation_stream(&i.stream_id))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until no rotation is open and no lock busy; the open ones when time runs out.
pub fn settle(c: &Cluster, timeout: Duration) -> Result<(), Vec<String>> {
    let deadline = SystemClock.now_ms() + timeout.as_millis() as i64;
    loop {
        let streams = c
            .journal()
            .and_then(|j| {
                crate::block_on(j.streams(&StreamFilter::default())).map_err(|e| e.to_string())
            })
            .unwrap_or_default();
        let open: Vec<String> = streams
            .iter()
            .filter(|s| {
                (lock::is_rotation_stream(&s.stream_id) && s.status == "open")
                    || (lock::is_lock_stream(&s.stream_id) && s.status == lock::BUSY)
            })
            .map(|s| s.stream_id.clone())
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        if SystemClock.now_ms() > deadline {
            return Err(open);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last path segment of a Key Vault version id: the version itself.
fn version_of(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Checks everything; returns the number of rotations.
pub fn audit(c: &mut Cluster) -> usize {
    let j = match c.journal() {
        Ok(j) => j,
        Err(e) => {
            c.violations
                .push(format!("the journal cannot be opened: {e}"));
            return 0;
        }
    };
    let view = match crate::block_on(JournalView::of(&j)) {
        Ok(v) => v,
        Err(e) => {
            c.violations
                .push(format!("the journal cannot be read: {e}"));
            return 0;
        }
    };
    let effects = c.fake.effects();
    let stamps = c.stamps(effects.len());
    let mut v: Vec<String> = Vec::new();

    // Exactly one terminal event per rotation, its last; every lock closed.
    for r in &view.rotations {
        let terminals = r.terminals();
        let last = matches!(terminals.as_slice(), [(i, _)] if *i + 1 == r.events.len());
        if !last {
            v.push(format!(
                "rotation {} has terminal events {terminals:?} of {}",
                r.id,
                r.events.len()
            ));
        }
        let status = match terminals.first().map(|t| t.1) {
            Some(Terminal::Completed) => "completed",
            Some(Terminal::Compensated) => "compensated",
            None => "open",
        };
        if r.status != status {
            v.push(format!(
                "rotation {} is {} but ended {status}",
                r.id, r.status
            ));
        }
    }
    for (id, (status, events)) in &view.locks {
        let closed = matches!(events.last(), Some(LockEvent::Closed { .. }));
        if !closed || status != lock::IDLE {
            v.push(format!(
                "lock {id} is left {status}, last event {:?}",
                events.last()
            ));
        }
    }

    // No effect twice, none foreign.
    let ids: BTreeSet<&str> = view.rotations.iter().map(|r| r.id.as_str()).collect();
    let settings: BTreeSet<String> = (0..SECRETS).map(|i| secret(i).1).collect();
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    let mut disabled: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in effects.iter().enumerate() {
        match e {
            Effect::KvVersionCreated { tags, version, .. } => {
                let ours = tags
                    .get(ROTATION_TAG)
                    .is_some_and(|r| ids.contains(r.as_str()));
                if !ours {
                    v.push(format!("version {version} has foreign tags {tags:?}"));
                }
                match tags.get(KEY_TAG) {
                    Some(key) => *by_key.entry(key.as_str()).or_default() += 1,
                    None => v.push(format!("version {version} has no idempotency key")),
                }
            }
            Effect::KvVersionUpdated {
                version,
                enabled: false,
                ..
            } => disabled.entry(version.as_str()).or_default().push(i),
            Effect::AppSettingsReplaced { keys_changed, .. } => {
                let one = matches!(keys_changed.as_slice(), [k] if settings.contains(k));
                if !one {
                    v.push(format!(
                        "a settings write changed {keys_changed:?} (a repeated or foreign write)"
                    ));
                }
            }
            other => v.push(format!("unexpected effect {other:?}")),
        }
    }
    for (key, n) in &by_key {
        if *n > 1 {
            v.push(format!(
                "{n} versions for idempotency key {key}: an effect repeated"
            ));
        }
    }
    for (version, at) in &disabled {
        if at.len() > 1 {
            v.push(format!("version {version} was disabled {} times", at.len()));
        }
    }

    // Retirement once, never before the grace period ended.
    for r in view.rotations.iter().filter(|r| r.status == "completed") {
        let Some(old) = r.captured("kv").map(version_of) else {
            v.push(format!(
                "rotation {} completed without a captured version",
                r.id
            ));
            continue;
        };
        let due = r.graces().into_iter().max().unwrap_or(i64::MAX);
        match disabled.get(old).map(Vec::as_slice) {
            Some([i]) if stamps[*i] >= due => {}
            Some([i]) => v.push(format!(
                "rotation {}: version {old} disabled by {}, before the grace deadline {due}",
                r.id, stamps[*i]
            )),
            other => v.push(format!(
                "rotation {}: its old version {old} was disabled {} times (want once)",
                r.id,
                other.map_or(0, <[usize]>::len)
            )),
        }
    }

    // Each secret ends with one enabled version, the latest, which its setting holds.
    for i in 0..SECRETS {
        let (name, setting) = secret(i);
        let site = c.fake.app_settings(&site(i), None);
        let versions = c.fake.kv_versions(VAULT, &name);
        let enabled: Vec<&str> = versions
            .iter()
            .filter(|x| x.enabled)
            .map(|x| x.version.as_str())
            .collect();
        let latest = versions.last();
        if enabled.len() != 1 || latest.is_none_or(|l| !l.enabled) {
            v.push(format!(
                "{name}: enabled versions {enabled:?}, the latest should be the only one"
            ));
        }
        if latest.map(|l| &l.value) != site.get(&setting) {
            v.push(format!(
                "{setting} does not hold the latest value of {name}"
            ));
        }
        if site.get(UNRELATED_SETTING.0).map(String::as_str) != Some(UNRELATED_SETTING.1) {
            v.push(format!(
                "{name}'s site: unrelated setting {} was changed",
                UNRELATED_SETTING.0
            ));
        }
    }

    // The leader changed hands.
    let owners: BTreeSet<String> = crate::block_on(j.read_stream(rekey::daemon::leader::STREAM))
        .unwrap_or_default()
        .iter()
        .filter_map(|e| serde_json::from_str::<rekey::daemon::leader::LeaderEvent>(&e.payload).ok())
        .map(|rekey::daemon::leader::LeaderEvent::LeaderTaken { owner, .. }| owner)
        .collect();
    if owners.len() < 2 {
        v.push(format!("the leader never changed hands: {owners:?}"));
    }

    // Each schedule fired at most once per slot (minute), and some did.
    let mut fired = 0;
    for i in 0..SCHEDULED {
        let name = secret(i).0;
        let events = crate::block_on(j.read_stream(&lock::stream_id(&name))).unwrap_or_default();
        let mut minutes: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &events {
            let by_schedule = match serde_json::from_str::<LockEvent>(&e.payload) {
                Ok(LockEvent::Opened { actor, .. } | LockEvent::Coalesced { actor, .. }) => {
                    actor == rekey::daemon::SCHEDULE_ACTOR
                }
                _ => false,
            };
            if by_schedule {
                *minutes.entry(e.recorded_at_ms / 60_000).or_default() += 1;
                fired += 1;
            }
        }
        for (minute, n) in minutes {
            if n > 1 {
                v.push(format!(
                    "{name}'s schedule fired {n} times in minute {minute}"
                ));
            }
        }
    }
    if fired == 0 {
        v.push("no schedule ever fired".into());
    }
    drop(j);

    // The journal's chains are intact.
    let verify = c.command(&["journal", "verify"]);
    if !verify.status.success() {
        v.push(format!("journal verify: {}", verify.describe()));
    }

    // No secret value in anything rekey printed.
    let mut values = vec![c.client_secret.clone()];
    for i in 0..SECRETS {
        values.extend(
            c.fake
                .kv_versions(VAULT, &secret(i).0)
                .into_iter()
                .map(|x| x.value),
        );
    }
    let journal_bytes: Vec<u8> = ["journal.db", "journal.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(c.journal_dir().join(f)).ok())
        .flatten()
        .collect();
    for value in values {
        let shown = value.get(..8).unwrap_or_default();
        let found = |hay: &[u8]| hay.windows(value.len()).any(|w| w == value.as_bytes());
        if found(&c.transcript) {
            v.push(format!("a secret value ({shown}…) is in rekey's output"));
        }
        if found(&journal_bytes) {
            v.push(format!("a secret value ({shown}…) is in the journal"));
        }
    }
    c.violations.extend(v);
    view.rotations.len()
}
