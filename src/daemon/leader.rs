//! The leader lease: several `rekey run` nodes may share one journal, and the duties only
//! one of them may do (schedules, expiry polls, notice delivery) belong to whichever node
//! holds the lease on [`STREAM`]. Every node serves the API and the webhook and drives
//! rotations (fenced per rotation stream, as ever).
//!
//! The lease is renewed every third of its time to live. A node counts itself leader only
//! until three quarters of the time to live after the moment it *asked* for its last
//! renewal: a node that cannot renew stops its duties while its lease still stands, so
//! nobody else can have taken it yet. A node that takes the lease journals
//! `LeaderTaken` in [`STREAM`], fenced by the lease, which is how `rekey status` and
//! `/readyz` tell who leads and since when.

use std::sync::Mutex;

use rekey_journal::{Append, Clock, Lease, NewEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::runner::RunnerJournal;

/// The stream whose lease makes a node the leader.
pub const STREAM: &str = "leader:duties";
/// The status label of [`STREAM`] (never `open`: it is no rotation).
pub const STATUS: &str = "leader";
/// The leader lease's time to live unless `[daemon] leader_ttl` says otherwise.
pub const TTL_DEFAULT_MS: i64 = 15_000;
/// After a journal error, the next try comes this soon (or sooner, by the time to live).
const RETRY_MS: i64 = 1_000;

/// Events of [`STREAM`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LeaderEvent {
    /// `node` took the lease (a new holder, or the same node after losing it).
    LeaderTaken {
        node: String,
        /// The lease owner: the node id and this process's instance.
        owner: String,
        token: u64,
        at_ms: i64,
    },
}

/// This node's identity: `[daemon] node_id`, else the host name and the process id.
pub fn node_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Who leads, as the journal last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub node: String,
    pub since_ms: i64,
}

/// The last `LeaderTaken` in the journal, if any node ever led.
///
/// # Errors
/// Journal errors.
pub async fn recorded<J: rekey_journal::JournalRead>(
    journal: &J,
) -> Result<Option<Recorded>, rekey_journal::Error> {
    Ok(journal
        .read_stream(STREAM)
        .await?
        .iter()
        .rev()
        .find_map(
            |e| match serde_json::from_str::<LeaderEvent>(&e.payload).ok()? {
                LeaderEvent::LeaderTaken { node, at_ms, .. } => Some(Recorded {
                    node,
                    since_ms: at_ms,
                }),
            },
        ))
}

/// What this node holds.
#[derive(Debug, Default)]
struct Held {
    lease: Option<Lease>,
    /// The node stops counting itself leader at this time (its clock).
    valid_until_ms: i64,
    /// Since when it leads without a break.
    since_ms: Option<i64>,
}

/// This node's side of the leader lease. [`Leadership::tick`] takes or renews it; the
/// daemon asks [`Leadership::leads`] before each duty and watches [`Leadership::watch`].
#[derive(Debug)]
pub struct Leadership {
    node: String,
    owner: String,
    ttl_ms: i64,
    held: Mutex<Held>,
    leading: watch::Sender<bool>,
}

impl Leadership {
    /// Node `node`, with a lease of `ttl_ms`; its lease owner is unique to this process,
    /// so two processes given the same node id never share the lease.
    pub fn new(node: impl Into<String>, ttl_ms: i64) -> Self {
        let node = node.into();
        let owner = format!("{node}#{}", uuid::Uuid::now_v7().simple());
        Self {
            node,
            owner,
            ttl_ms: ttl_ms.max(3),
            held: Mutex::default(),
            leading: watch::channel(false).0,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node may do the singleton duties at `now_ms`.
    pub fn leads(&self, now_ms: i64) -> bool {
        let held = self.held();
        held.lease.is_some() && now_ms < held.valid_until_ms
    }

    /// Since when this node leads, if it does.
    pub fn since_ms(&self, now_ms: i64) -> Option<i64> {
        let held = self.held();
        (held.lease.is_some() && now_ms < held.valid_until_ms)
            .then_some(held.since_ms)
            .flatten()
    }

    /// Tells of every change between leading and not.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn publish(&self, leading: bool) {
        self.leading
            .send_if_modified(|l| std::mem::replace(l, leading) != leading);
    }

    /// Takes or renews the lease once; returns when to tick again (clock time). A node
    /// that has not renewed in time stops leading here too.
    pub async fn tick<J: RunnerJournal>(&self, journal: &J, clock: &dyn Clock) -> i64 {
        let asked_ms = clock.now_ms();
        let held = self.held().lease.clone();
        let result = match &held {
            Some(lease) => journal.renew(lease, self.ttl_ms).await,
            None => journal.acquire(STREAM, &self.owner, self.ttl_ms).await,
        };
        let every = self.ttl_ms / 3;
        match result {
            Ok(lease) => {
                if held.is_none() && !self.record(journal, &lease, asked_ms).await {
                    return asked_ms + every.min(RETRY_MS);
                }
                let mut h = self.held();
                h.lease = Some(lease);
                h.valid_until_ms = asked_ms + self.ttl_ms * 3 / 4;
                h.since_ms.get_or_insert(asked_ms);
                drop(h);
                self.publish(true);
                asked_ms + every
            }
            Err(e) => {
                let lost = matches!(
                    e,
                    rekey_journal::Error::LeaseHeld { .. }
                        | rekey_journal::Error::StaleFence { .. }
                        | rekey_journal::Error::LeaseExpired { .. }
                );
                if held.is_some() {
                    warn!(node = self.node, error = %e, "cannot renew the leader lease");
                }
                if lost {
                    self.step_down();
                    asked_ms + every
                } else {
                    self.expire(clock.now_ms());
                    asked_ms + every.min(RETRY_MS)
                }
            }
        }
    }

    /// Journals that this node took the lease; false when the lease was lost meanwhile.
    async fn record<J: RunnerJournal>(&self, journal: &J, lease: &Lease, at_ms: i64) -> bool {
        let event = LeaderEvent::LeaderTaken {
            node: self.node.clone(),
            owner: self.owner.clone(),
            token: lease.token,
            at_ms,
        };
        let payload = serde_json::to_value(&event).unwrap_or_default();
        for _ in 0..3 {
            let seq = match journal.stream_info(STREAM).await {
                Ok(info) => info.map_or(0, |i| i.head_seq),
                Err(e) => {
                    warn!(error = %e, "cannot read the leader stream");
                    return false;
                }
            };
            let append = Append::new(
                STREAM,
                seq,
                vec![NewEvent::new("LeaderTaken", payload.clone())],
            )
            .fenced(lease.fence())
            .status(STATUS);
            match journal.append(append).await {
                Ok(_) => {
                    info!(node = self.node, token = lease.token, "this node leads");
                    return true;
                }
                Err(rekey_journal::Error::Conflict { .. }) => {}
                Err(e) => {
                    warn!(error = %e, "cannot journal the leader's takeover");
                    return false;
                }
            }
        }
        false
    }

    /// Stops leading now when the last renewal is too old.
    pub fn expire(&self, now_ms: i64) {
        let lapsed = {
            let h = self.held();
            h.lease.is_some() && now_ms >= h.valid_until_ms
        };
        if lapsed {
            warn!(
                node = self.node,
                "leader lease not renewed in time: duties stop"
            );
            self.step_down();
        }
    }

    fn step_down(&self) {
        let was = {
            let mut h = self.held();
            let was = h.lease.is_some();
            *h = Held::default();
            was
        };
        if was {
            info!(node = self.node, "this node no longer leads");
        }
        self.publish(false);
    }

    /// Gives the lease up (a graceful stop), so another node takes over at once.
    pub async fn resign<J: RunnerJournal>(&self, journal: &J) {
        let lease = self.held().lease.clone();
        self.step_down();
        if let Some(lease) = lease {
            let _ = journal.release(&lease).await;
        }
    }

    /// Ticks until aborted, stopping duties the moment the lease is no longer sure.
    pub async fn campaign<J: RunnerJournal>(&self, journal: &J, clock: &dyn Clock) {
        loop {
            let next = self.tick(journal, clock).await;
            let until = {
                let h = self.held();
                if h.lease.is_some() {
                    next.min(h.valid_until_ms)
                } else {
                    next
                }
            };
            let wait = (until - clock.now_ms()).max(0);
            tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
            self.expire(clock.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rekey_journal::{JournalRead, Leases, ManualClock, MemoryJournal};

    use super::*;

    #[tokio::test]
    async fn one_node_leads_stops_before_its_lease_lapses_and_another_takes_over() {
        let clock = ManualClock::new(1_700_000_000_000);
        let journal = MemoryJournal::new(Arc::new(clock.clone()));
        let (a, b) = (Leadership::new("a", 3_000), Leadership::new("b", 3_000));
        a.tick(&journal, &clock).await;
        b.tick(&journal, &clock).await;
        let start = clock.now_ms();
        assert!(a.leads(start) && !b.leads(start));
        assert!(*a.watch().borrow());
        // a stops renewing (a stall): it stops leading while its lease still stands.
        clock.advance(2_250);
        a.expire(clock.now_ms());
        assert!(!a.leads(clock.now_ms()) && !*a.watch().borrow());
        b.tick(&journal, &clock).await;
        assert!(!b.leads(clock.now_ms()), "a's lease still stands");
        assert!(journal.acquire(STREAM, "intruder", 1).await.is_err());
        // Once it lapsed, b takes over with a larger token, and a cannot renew.
        clock.advance(800);
        b.tick(&journal, &clock).await;
        assert!(b.leads(clock.now_ms()));
        a.tick(&journal, &clock).await;
        assert!(!a.leads(clock.now_ms()));
        let recorded = recorded(&journal).await.unwrap().unwrap();
        assert_eq!(recorded.node, "b");
        assert_eq!(recorded.since_ms, clock.now_ms());
        let tokens: Vec<u64> = journal
            .read_stream(STREAM)
            .await
            .unwrap()
            .iter()
            .map(|e| match serde_json::from_str(&e.payload).unwrap() {
                LeaderEvent::LeaderTaken { token, .. } => token,
            })
            .collect();
        assert_eq!(tokens.len(), 2);
        assert!(tokens[1] > tokens[0], "{tokens:?}");
        // Renewed in time, b keeps leading past its first lease.
        for _ in 0..5 {
            clock.advance(1_000);
            b.tick(&journal, &clock).await;
            assert!(b.leads(clock.now_ms()));
        }
        // Resigning hands over at once.
        b.resign(&journal).await;
        a.tick(&journal, &clock).await;
        assert!(a.leads(clock.now_ms()));
    }
}
