//! What must hold after every round (DESIGN.md §6: I1, I2, I3, I5), read from the journal
//! and from the fakes' effect logs and state. A broken rule is recorded as a violation and
//! the test goes on, so one run reports all of them.
//!
//! Rounds partition the effects: every rotation opened in a round ends in it, at most one
//! per secret, so an effect on a secret's Key Vault entry or setting during a round belongs
//! to that secret's rotation of the round.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use rekey::runner::lock::{self, LockEvent};
use rekey::saga::{Action, RotationEvent};

use super::child::{Ended, Rekey};
use super::journal::{JournalView, RotationLog, Terminal};
use super::world::{SITE, SPECS, Spec, UNRELATED_SETTINGS, VAULT, World};
use crate::fake_azure::{Effect, KvVersion};

/// How long an auditor's command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The Key Vault tags rekey writes on every version.
const ROTATION_TAG: &str = "rekey-rotation";
const KEY_TAG: &str = "rekey-key";

/// The running verdict: rotations seen, what each secret should hold, violations found.
#[derive(Debug)]
pub struct Audit {
    /// Rotations checked, with their number of events then (an ended stream never grows).
    checked: BTreeMap<String, usize>,
    /// The value each secret holds, as far as the test knows.
    value: BTreeMap<&'static str, String>,
    pub violations: Vec<String>,
    pub completed: usize,
    pub compensated: usize,
    /// The first effect not yet attributed to a round.
    effects_seen: usize,
    /// Each secret's targets that disagree with its vault, as last reported.
    mismatches: BTreeMap<&'static str, BTreeSet<String>>,
}

/// What a round left behind, read once no child runs.
struct RoundData<'a> {
    ctx: &'a str,
    world: &'a World,
    view: JournalView,
    effects: Vec<Effect>,
    /// When each effect was first seen; it happened no later.
    stamps: Vec<i64>,
    /// The round's effects.
    range: Range<usize>,
}

/// The effects of one round on one secret.
#[derive(Debug, Default)]
struct SecretEffects<'a> {
    /// Versions created: (effect index, version, tags).
    created: Vec<(usize, &'a str, &'a BTreeMap<String, String>)>,
    /// Versions disabled: (effect index, version).
    disabled: Vec<(usize, &'a str)>,
    /// Settings PUTs that changed this secret's setting.
    setting_writes: usize,
}

impl<'a> SecretEffects<'a> {
    fn of(spec: &Spec, round: &'a RoundData<'_>) -> Self {
        let mut out = SecretEffects::default();
        let ours = |vault: &str, name: &str| {
            vault.eq_ignore_ascii_case(VAULT) && name.eq_ignore_ascii_case(spec.name)
        };
        for i in round.range.clone() {
            match &round.effects[i] {
                Effect::KvVersionCreated {
                    vault,
                    name,
                    version,
                    tags,
                } if ours(vault, name) => out.created.push((i, version, tags)),
                Effect::KvVersionUpdated {
                    vault,
                    name,
                    version,
                    enabled: false,
                } if ours(vault, name) => out.disabled.push((i, version)),
                Effect::AppSettingsReplaced { keys_changed, .. }
                    if keys_changed.iter().any(|k| k == spec.setting) =>
                {
                    out.setting_writes += 1;
                }
                _ => {}
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.created.is_empty() && self.disabled.is_empty() && self.setting_writes == 0
    }
}

/// The last path segment of a Key Vault version id: the version itself.
fn version_of(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

impl Audit {
    /// An audit of secrets that hold `first` now.
    pub fn new(first: BTreeMap<&'static str, String>) -> Self {
        Self {
            checked: BTreeMap::new(),
            value: first,
            violations: Vec::new(),
            completed: 0,
            compensated: 0,
            effects_seen: 0,
            mismatches: BTreeMap::new(),
        }
    }

    pub fn rotations(&self) -> usize {
        self.checked.len()
    }

    fn violation(&mut self, ctx: &str, what: impl std::fmt::Display) {
        self.violations.push(format!("{ctx}: {what}"));
    }

    /// Records a violation unless `ok`.
    fn expect(&mut self, ok: bool, ctx: &str, what: impl FnOnce() -> String) {
        if !ok {
            self.violation(ctx, what());
        }
    }

    /// A child that was to be killed: if it exited first, it exited cleanly (a rotation
    /// that compensated exits 1 and says so; a `rotate --wait` that cannot end its rotation
    /// in time, a step failing with a long backoff, exits 4 and leaves it open).
    pub fn killable(&mut self, ctx: &str, ended: &Ended) {
        self.no_panic(ctx, ended);
        let compensated = ended.status.code() == Some(1) && ended.stdout.contains("compensated");
        let still_open = ended.status.code() == Some(4) && ended.stdout.contains("still open");
        self.expect(
            ended.killed || ended.status.success() || compensated || still_open,
            ctx,
            || format!("exited by itself, badly: {}", ended.describe()),
        );
    }

    /// The round's last `resume --wait --json`, which must end every open rotation.
    /// Returns false when it did not: the rotations are then in an unknown state.
    pub fn finished(&mut self, ctx: &str, ended: &Ended) -> bool {
        self.no_panic(ctx, ended);
        if !ended.status.success() {
            self.violation(
                ctx,
                format!("the final resume failed: {}", ended.describe()),
            );
            return false;
        }
        let outcomes: Vec<serde_json::Value> = match serde_json::from_str(ended.stdout.trim()) {
            Ok(o) => o,
            Err(e) => {
                let why = format!(
                    "the final resume printed no JSON ({e}): {}",
                    ended.describe()
                );
                self.violation(ctx, why);
                return false;
            }
        };
        for o in outcomes {
            let ended = matches!(o["result"].as_str(), Some("completed" | "compensated"));
            self.expect(ended, ctx, || format!("resume --wait left {o} unfinished"));
        }
        true
    }

    fn no_panic(&mut self, ctx: &str, ended: &Ended) {
        let calm = !ended.stderr.contains("panicked");
        self.expect(calm, ctx, || {
            format!("rekey panicked: {}", ended.describe())
        });
    }

    /// Checks the journal, the round's effects (those since the last round) and every
    /// secret's state, once no child runs. Returns the round's new rotations.
    pub fn round(&mut self, ctx: &str, world: &World, rekey: &mut Rekey) -> Vec<RotationLog> {
        let view = match JournalView::read(&world.journal) {
            Ok(v) => v,
            Err(e) => {
                self.violation(ctx, format!("the journal cannot be read: {e}"));
                return Vec::new();
            }
        };
        let effects = world.fake.effects();
        let round = RoundData {
            ctx,
            world,
            stamps: world.stamps(effects.len()),
            range: self.effects_seen..effects.len(),
            effects,
            view,
        };
        self.effects_seen = round.effects.len();
        self.locks(&round);
        self.foreign_effects(&round);
        let new = self.new_rotations(&round);
        for spec in &SPECS {
            let rotation = new.iter().find(|r| r.secret() == spec.name).copied();
            self.secret(&round, spec, rotation);
        }
        self.settings(&round);
        self.commands(ctx, world, rekey);
        let new: BTreeSet<String> = new.iter().map(|r| r.id.clone()).collect();
        let rotations = round.view.rotations.into_iter();
        rotations.filter(|r| new.contains(&r.id)).collect()
    }

    /// The auditor's and the operator's view agree: `journal verify` finds every chain
    /// intact, and `status` shows no open rotation.
    fn commands(&mut self, ctx: &str, world: &World, rekey: &mut Rekey) {
        let journal = world.journal.display().to_string();
        // No journal yet (every command was killed before it had to create one): there is
        // nothing to verify, and `verify` rightly refuses a path with no journal.
        if !world.journal.exists() {
            return;
        }
        let verify = rekey
            .spawn_bare(&["journal", "verify", "--journal", &journal])
            .wait_for(COMMAND_TIMEOUT);
        rekey.record(&verify);
        let intact = verify.status.success();
        self.expect(intact, ctx, || {
            format!("journal verify: {}", verify.describe())
        });
        let status = rekey.spawn(&["status", "--json"]).wait_for(COMMAND_TIMEOUT);
        rekey.record(&status);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(status.stdout.trim()).unwrap_or_default();
        let idle = status.status.success()
            && rows.len() == SPECS.len()
            && rows.iter().all(|r| r["open_rotation"].is_null());
        self.expect(idle, ctx, || {
            format!("status after the round: {}", status.describe())
        });
    }

    /// The rotations not seen before: at most one per secret. Earlier ones must not have
    /// grown since they ended.
    fn new_rotations<'r>(&mut self, round: &'r RoundData<'_>) -> Vec<&'r RotationLog> {
        let mut new: Vec<&RotationLog> = Vec::new();
        for r in &round.view.rotations {
            match self.checked.insert(r.id.clone(), r.events.len()) {
                Some(n) => self.expect(n == r.events.len(), round.ctx, || {
                    format!("rotation {} got events after it ended", r.id)
                }),
                None => {
                    if let Some(other) = new.iter().find(|o| o.secret() == r.secret()) {
                        let (secret, first) = (r.secret(), &other.id);
                        let why =
                            format!("two rotations of {secret} in a round: {first}, {}", r.id);
                        self.violation(round.ctx, why);
                    }
                    new.push(r);
                }
            }
        }
        new
    }

    /// Every lock stream ends closed.
    fn locks(&mut self, round: &RoundData<'_>) {
        for (id, (status, events)) in &round.view.locks {
            let closed = matches!(events.last(), Some(LockEvent::Closed { .. }));
            self.expect(closed && status == lock::IDLE, round.ctx, || {
                format!("lock {id} is left {status}, last event {:?}", events.last())
            });
        }
    }

    /// Effects nobody may cause: PUTs that change a setting not ours, or several, or
    /// nothing (a repeated write); untagged versions; re-enabled versions; deletions.
    fn foreign_effects(&mut self, round: &RoundData<'_>) {
        for e in &round.effects[round.range.clone()] {
            let ok = match e {
                Effect::AppSettingsReplaced { keys_changed, .. } => {
                    matches!(keys_changed.as_slice(), [k] if SPECS.iter().any(|s| s.setting == k))
                }
                Effect::KvVersionCreated { tags, .. } => tags.contains_key(ROTATION_TAG),
                Effect::KvVersionUpdated { enabled, .. } => !enabled,
                _ => false,
            };
            self.expect(ok, round.ctx, || format!("unexpected effect {e:?}"));
        }
    }

    /// The site holds the unrelated settings as seeded, plus one setting per secret.
    fn settings(&mut self, round: &RoundData<'_>) {
        let settings = round.world.fake.app_settings(SITE, None);
        let keys: BTreeSet<&str> = settings.keys().map(String::as_str).collect();
        let mut want: BTreeSet<&str> = UNRELATED_SETTINGS.iter().map(|(k, _)| *k).collect();
        want.extend(SPECS.iter().map(|s| s.setting));
        self.expect(keys == want, round.ctx, || {
            format!("the site's settings are {keys:?}, not {want:?}")
        });
        for (k, v) in UNRELATED_SETTINGS {
            let kept = settings.get(k).map(String::as_str) == Some(v);
            self.expect(kept, round.ctx, || {
                format!("unrelated setting {k} was changed")
            });
        }
    }

    /// One secret after a round. Without a rotation nothing touched it; with one, the
    /// rotation ended once and its effects fit how it ended. Either way every target
    /// holds the value of the vault's latest version.
    fn secret(&mut self, round: &RoundData<'_>, spec: &Spec, rotation: Option<&RotationLog>) {
        let ctx = &match rotation {
            Some(r) => format!("{}, {} rotation {}", round.ctx, spec.name, r.id),
            None => format!("{}, {}", round.ctx, spec.name),
        };
        let versions = round.world.fake.kv_versions(VAULT, spec.name);
        let Some(latest) = versions.last() else {
            return self.violation(ctx, "Key Vault holds no version");
        };
        let before = self.value[spec.name].clone();
        let seen = SecretEffects::of(spec, round);
        match rotation {
            None => {
                self.expect(seen.is_empty(), ctx, || {
                    format!("effects without a rotation: {seen:?}")
                });
                self.expect(latest.value == before, ctx, || {
                    "the value changed without a rotation".into()
                });
            }
            Some(r) => match self.journal(ctx, round, r) {
                Some(Terminal::Completed) => {
                    self.completed += 1;
                    self.completed_effects(ctx, round, spec, r, &seen, latest);
                    self.expect(latest.value != before, ctx, || {
                        "completed, but the value is the old one".into()
                    });
                }
                Some(Terminal::Compensated) => {
                    self.compensated += 1;
                    self.compensated_effects(ctx, r, &seen);
                    self.expect(latest.value == before, ctx, || {
                        "compensated, but the old value is not back".into()
                    });
                }
                None => {}
            },
        }
        self.value.insert(spec.name, latest.value.clone());
        self.holds(ctx, round.world, spec, latest);
        if rotation.is_some() {
            self.one_enabled(ctx, round.world, spec, &versions);
        }
    }

    /// I8: after a rotation ends, the vault (and the local vault) hold one enabled version
    /// of the secret, the latest. Every version there is rekey's or was captured by it.
    fn one_enabled(&mut self, ctx: &str, world: &World, spec: &Spec, versions: &[KvVersion]) {
        let enabled: Vec<&str> = versions
            .iter()
            .filter(|v| v.enabled)
            .map(|v| v.version.as_str())
            .collect();
        let latest = versions.last().map(|v| v.version.as_str());
        self.expect(
            enabled.len() == 1 && enabled.first().copied() == latest,
            ctx,
            || {
                format!(
                    "I8: Key Vault versions {enabled:?} enabled, want only the latest {latest:?}"
                )
            },
        );
        if spec.local_vault {
            let local = world.local_versions(spec.name);
            let enabled: Vec<&str> = local
                .iter()
                .filter(|(_, _, enabled)| *enabled)
                .map(|(id, _, _)| id.as_str())
                .collect();
            let latest = local.last().map(|(id, _, _)| id.as_str());
            self.expect(
                enabled.len() == 1 && enabled.first().copied() == latest,
                ctx,
                || {
                    format!(
                        "I8: local versions {enabled:?} enabled, want only the latest {latest:?}"
                    )
                },
            );
        }
    }

    /// The rotation's journal: exactly one terminal event, last; one grace period when it
    /// completed (none when it compensated), and nothing retired before its deadline;
    /// its lock opened, then closed.
    fn journal(&mut self, ctx: &str, round: &RoundData<'_>, r: &RotationLog) -> Option<Terminal> {
        let end = match r.terminals().as_slice() {
            [(i, t)] if *i + 1 == r.events.len() => Some(*t),
            _ => {
                let kinds: Vec<&str> = r.events.iter().map(|l| l.event.kind()).collect();
                self.violation(
                    ctx,
                    format!("not exactly one terminal event, last: {kinds:?}"),
                );
                None
            }
        };
        let status = match end {
            Some(Terminal::Completed) => "completed",
            Some(Terminal::Compensated) => "compensated",
            None => "ended",
        };
        self.expect(r.status == status, ctx, || {
            format!("stream status {} after {end:?}", r.status)
        });
        match (end, r.graces().as_slice()) {
            (Some(Terminal::Completed), [due]) => {
                for l in &r.events {
                    let retires = match &l.event {
                        RotationEvent::StepStarted { step, .. } => {
                            matches!(step.action, Action::DisableOld | Action::RetireOld)
                        }
                        RotationEvent::Completed => true,
                        _ => false,
                    };
                    self.expect(!retires || l.at_ms >= *due, ctx, || {
                        format!(
                            "{} at {} ms, before the grace period ended at {due}",
                            l.event.kind(),
                            l.at_ms
                        )
                    });
                }
            }
            (Some(Terminal::Compensated), []) | (None, _) => {}
            (end, graces) => self.violation(ctx, format!("{end:?} after grace periods {graces:?}")),
        }
        let lock = r
            .plan()
            .map(|p| format!("lock:{}", p.lock_key))
            .unwrap_or_default();
        let events = round
            .view
            .locks
            .get(&lock)
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default();
        let at = |opened: bool| {
            events.iter().position(|e| match e {
                LockEvent::Opened { rotation_id, .. } => opened && *rotation_id == r.id,
                LockEvent::Closed { rotation_id, .. } => !opened && *rotation_id == r.id,
                LockEvent::Coalesced { .. } => false,
            })
        };
        let (opened, closed) = (at(true), at(false));
        self.expect(
            matches!((opened, closed), (Some(o), Some(c)) if o < c),
            ctx,
            || format!("{lock}: opened at {opened:?}, closed at {closed:?}"),
        );
        end
    }

    /// The Key Vault versions the rotation created: each tagged with it, at most one per
    /// idempotency key, only for its write and its restore. Returns those two versions.
    fn created(
        &mut self,
        ctx: &str,
        r: &RotationLog,
        seen: &SecretEffects<'_>,
    ) -> [Option<String>; 2] {
        let keys = [r.key(Action::Write, "kv"), r.key(Action::Restore, "kv")];
        let mut found = [None, None];
        for (_, version, tags) in &seen.created {
            self.expect(tags.get(ROTATION_TAG) == Some(&r.id), ctx, || {
                format!("version {version} has foreign tags {tags:?}")
            });
            let key = tags.get(KEY_TAG);
            let Some(slot) = keys.iter().position(|k| k.as_ref() == key) else {
                self.violation(ctx, format!("version {version} has an unknown key {key:?}"));
                continue;
            };
            if let Some(first) = found[slot].replace((*version).to_owned()) {
                let why = format!(
                    "two versions for key {key:?}: {first} and {version}, an effect repeated"
                );
                self.violation(ctx, why);
            }
        }
        found
    }

    /// A completed rotation wrote one version, now the latest, and changed its setting
    /// once; it disabled the version it captured exactly once, and not before the grace
    /// period ended (going by when the effect was first seen); the local vault's captured
    /// version is disabled too.
    fn completed_effects(
        &mut self,
        ctx: &str,
        round: &RoundData<'_>,
        spec: &Spec,
        r: &RotationLog,
        seen: &SecretEffects<'_>,
        latest: &KvVersion,
    ) {
        let [write, restore] = self.created(ctx, r, seen);
        self.expect(
            write.as_deref() == Some(&latest.version) && restore.is_none(),
            ctx,
            || {
                let latest = &latest.version;
                format!("completed: wrote {write:?}, restored {restore:?}, latest {latest}")
            },
        );
        self.expect(seen.setting_writes == 1, ctx, || {
            format!(
                "completed with {} writes of {} (want 1)",
                seen.setting_writes, spec.setting
            )
        });
        let Some(old) = r.captured("kv").map(version_of) else {
            return self.violation(ctx, "completed without a captured Key Vault version");
        };
        let disabled: Vec<&str> = seen.disabled.iter().map(|(_, v)| *v).collect();
        self.expect(disabled == [old], ctx, || {
            format!("the old version {old} was disabled as {disabled:?} (want exactly once)")
        });
        let due = r.graces().first().copied().unwrap_or(i64::MAX);
        for (i, version) in &seen.disabled {
            let seen_at = round.stamps[*i];
            self.expect(seen_at >= due, ctx, || {
                format!(
                    "version {version} was disabled by {seen_at}, before the grace deadline {due}"
                )
            });
        }
        let versions = round.world.fake.kv_versions(VAULT, spec.name);
        let still = versions.iter().any(|v| v.version == old && v.enabled);
        self.expect(!still, ctx, || {
            format!("the old version {old} is still enabled")
        });
        if spec.local_vault {
            let old = r.captured("local-vault").unwrap_or_default();
            let local = round.world.local_versions(spec.name);
            let still = local.iter().any(|(id, _, enabled)| id == old && *enabled);
            self.expect(!still, ctx, || {
                format!("the old local version {old:?} is still enabled")
            });
        }
    }

    /// A compensated rotation restored what it wrote and disabled, once each, only what
    /// its restore superseded (the version it wrote and the one it captured), and either
    /// never changed its setting or changed it and changed it back.
    fn compensated_effects(&mut self, ctx: &str, r: &RotationLog, seen: &SecretEffects<'_>) {
        let [write, restore] = self.created(ctx, r, seen);
        self.expect(write.is_some() == restore.is_some(), ctx, || {
            format!("compensated with versions written {write:?}, restored {restore:?}")
        });
        let mut disabled: Vec<&str> = seen.disabled.iter().map(|(_, v)| *v).collect();
        disabled.sort_unstable();
        let mut allowed: Vec<&str> = match &write {
            Some(w) => [Some(w.as_str()), r.captured("kv").map(version_of)]
                .into_iter()
                .flatten()
                .collect(),
            None => Vec::new(),
        };
        allowed.sort_unstable();
        self.expect(disabled == allowed, ctx, || {
            format!("compensated, disabled {disabled:?} (want {allowed:?}, once each)")
        });
        self.expect([0, 2].contains(&seen.setting_writes), ctx, || {
            format!(
                "compensated after {} setting writes (want 0, or update and revert)",
                seen.setting_writes
            )
        });
    }

    /// Every target holds the value of the vault's latest version, which is enabled. A
    /// mismatch is reported once, not again in each round it persists.
    fn holds(&mut self, ctx: &str, world: &World, spec: &Spec, latest: &KvVersion) {
        let mut wrong = BTreeSet::new();
        if !latest.enabled {
            wrong.insert(format!("the latest version {} is disabled", latest.version));
        }
        let settings = world.fake.app_settings(SITE, None);
        if settings.get(spec.setting) != Some(&latest.value) {
            wrong.insert(format!(
                "{} does not hold the vault's latest value",
                spec.setting
            ));
        }
        if let Some(key) = spec.env_key {
            let (value, intact) = world.env_line(key);
            if value.as_ref() != Some(&latest.value) {
                wrong.insert(format!(
                    "the env file's {key} does not hold the vault's latest value"
                ));
            }
            if !intact {
                wrong.insert("the env file's unrelated line was changed".into());
            }
        }
        if spec.local_vault {
            let local = world.local_versions(spec.name);
            let current = local.iter().rev().find(|(_, _, enabled)| *enabled);
            if current.map(|(_, v, _)| v) != Some(&latest.value) {
                wrong.insert("the local vault's current version is not the vault's latest".into());
            }
        }
        let known = self
            .mismatches
            .insert(spec.name, wrong.clone())
            .unwrap_or_default();
        for what in wrong.difference(&known) {
            self.violation(ctx, what);
        }
    }

    /// I5: no value any store ever held, nor the client secret, is in the journal's files
    /// or in anything a child printed.
    pub fn no_leaks(&mut self, world: &World, rekey: &Rekey) {
        let mut values = vec![world.client_secret.clone()];
        for spec in &SPECS {
            let kv = world.fake.kv_versions(VAULT, spec.name);
            values.extend(kv.into_iter().map(|v| v.value));
            let local = world.local_versions(spec.name);
            values.extend(local.into_iter().map(|(_, v, _)| v));
        }
        let journal = world.journal_bytes();
        for value in values {
            let shown = value.get(..8).unwrap_or_default();
            self.expect(!contains(&journal, &value), "I5", || {
                format!("a secret value ({shown}…) is in the journal")
            });
            self.expect(!contains(&rekey.transcript, &value), "I5", || {
                format!("a secret value ({shown}…) is in rekey's output")
            });
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}
