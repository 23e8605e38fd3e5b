//! Each discovery run is a journal stream `discovery:<run id>`, so an auditor can later see
//! what rekey knew when it decided to rotate: what was read (tenants, counts per vault),
//! the credentials found (ids and expiries), what could not be read and why, and every
//! link with its confidence, evidence and vetoes. Never a value or a hint.
//!
//! Events are bounded: records are packed into chunks of at most [`CHUNK_BYTES_MAX`]
//! bytes and [`CHUNK_RECORDS_MAX`] records, and every string in them is capped, so a fleet
//! of any size is many small events, never one too large for the journal.
//!
//! Owns: the stream's events and their chunking. Never touches: matching, output.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rekey_journal::{APPEND_EVENTS_MAX, Append, JournalAppend, NewEvent};

use super::discover::Discovery;
use super::matching::Outcome;

/// Every discovery stream id starts with this.
pub const STREAM_PREFIX: &str = "discovery:";
/// Most payload bytes of one chunk event (the journal allows 64 KiB per event).
pub const CHUNK_BYTES_MAX: usize = 32 * 1024;
/// Most records in one chunk event.
pub const CHUNK_RECORDS_MAX: usize = 200;
/// Longest string kept in a record (names, reasons).
pub const TEXT_CHARS_MAX: usize = 512;

/// The stream of run `run_id`.
pub fn stream_id(run_id: &str) -> String {
    format!("{STREAM_PREFIX}{run_id}")
}

/// True for discovery streams.
pub fn is_discovery_stream(stream_id: &str) -> bool {
    stream_id.starts_with(STREAM_PREFIX)
}

/// The last journaled discovery that ended, as read back from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latest {
    pub stream: String,
    /// The stream's status (`completed`, `partial`…).
    pub status: String,
    pub run_id: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Some tenant, vault or listing could not be read.
    pub partial: Option<bool>,
    pub credentials: Vec<CredentialRecord>,
    pub links: Vec<LinkRecord>,
    pub unreachable: Vec<UnreachableRecord>,
    pub excluded_credentials: usize,
    pub excluded_items: usize,
}

/// The last discovery that is no longer running, read from `journal`; `None` when none
/// was journaled. Events this version cannot read are skipped.
///
/// # Errors
/// Journal errors.
pub async fn latest<J: rekey_journal::JournalRead + rekey_journal::JournalScan + ?Sized>(
    journal: &J,
) -> Result<Option<Latest>, rekey_journal::Error> {
    let streams = journal
        .streams(&rekey_journal::StreamFilter::default())
        .await?;
    let Some(last) = streams
        .into_iter()
        .filter(|s| is_discovery_stream(&s.stream_id) && s.status != "running")
        .max_by(|a, b| (a.created_at_ms, &a.stream_id).cmp(&(b.created_at_ms, &b.stream_id)))
    else {
        return Ok(None);
    };
    let mut out = Latest {
        stream: last.stream_id.clone(),
        status: last.status.clone(),
        ..Latest::default()
    };
    for e in journal.read_stream(&last.stream_id).await? {
        let Ok(event) = serde_json::from_str::<DiscoveryEvent>(&e.payload) else {
            continue;
        };
        match event {
            DiscoveryEvent::DiscoveryStarted {
                run_id, started_ms, ..
            } => {
                out.run_id = Some(run_id);
                out.started_ms = Some(started_ms);
            }
            DiscoveryEvent::CredentialsFound { credentials, .. } => {
                out.credentials.extend(credentials);
            }
            DiscoveryEvent::LinksFound { links, .. } => out.links.extend(links),
            DiscoveryEvent::UnreachableFound { unreachable, .. } => {
                out.unreachable.extend(unreachable);
            }
            DiscoveryEvent::DiscoveryFinished {
                finished_ms,
                partial,
                excluded_credentials,
                excluded_items,
                ..
            } => {
                out.finished_ms = Some(finished_ms);
                out.partial = Some(partial);
                out.excluded_credentials = excluded_credentials;
                out.excluded_items = excluded_items;
            }
            DiscoveryEvent::VaultsRead { .. } => {}
        }
    }
    Ok(Some(out))
}

fn cap(text: &str) -> String {
    text.chars().take(TEXT_CHARS_MAX).collect()
}

/// A credential as journaled: ids and dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub tenant: String,
    pub origin: String,
    pub object_id: String,
    pub app_id: String,
    pub app_name: String,
    pub key_id: String,
    pub kind: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// The verdict: may it rotate, and why (not).
    pub ready: bool,
    pub reason: String,
}

/// One vault read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    pub tenant: String,
    pub vault: String,
    pub secrets: usize,
    pub certificates: usize,
}

/// Something not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableRecord {
    pub kind: String,
    pub tenant: String,
    pub name: String,
    pub reason: String,
}

/// A link as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub app_id: String,
    pub key_id: String,
    pub vault: String,
    pub item: String,
    pub item_kind: String,
    pub confidence: String,
    /// `linked`, `ambiguous` or `vetoed`.
    pub outcome: String,
    pub score: u32,
    pub evidence: Vec<String>,
    pub vetoes: Vec<String>,
}

/// Events of a discovery stream, in this order: `DiscoveryStarted`, chunks of
/// `CredentialsFound`, `VaultsRead`, `UnreachableFound`, chunks of `LinksFound`, then
/// `DiscoveryFinished`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DiscoveryEvent {
    DiscoveryStarted {
        run_id: String,
        started_ms: i64,
        tenants: Vec<String>,
        read_values_for_hint: bool,
        min_confidence: String,
        days_before_expiry: u32,
    },
    CredentialsFound {
        chunk: u32,
        credentials: Vec<CredentialRecord>,
    },
    VaultsRead {
        chunk: u32,
        vaults: Vec<VaultRecord>,
    },
    UnreachableFound {
        chunk: u32,
        unreachable: Vec<UnreachableRecord>,
    },
    LinksFound {
        chunk: u32,
        links: Vec<LinkRecord>,
    },
    DiscoveryFinished {
        finished_ms: i64,
        partial: bool,
        credentials: usize,
        items: usize,
        links: usize,
        ready: usize,
        hint_reads: usize,
        excluded_credentials: usize,
        excluded_items: usize,
        events: usize,
    },
}

impl DiscoveryEvent {
    /// The journal event type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DiscoveryStarted { .. } => "DiscoveryStarted",
            Self::CredentialsFound { .. } => "CredentialsFound",
            Self::VaultsRead { .. } => "VaultsRead",
            Self::UnreachableFound { .. } => "UnreachableFound",
            Self::LinksFound { .. } => "LinksFound",
            Self::DiscoveryFinished { .. } => "DiscoveryFinished",
        }
    }

    fn to_new(&self) -> NewEvent {
        NewEvent::new(
            self.kind(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        )
    }
}

/// Packs `records` into chunks of bounded size, each made into an event by `make`.
fn chunked<T: Serialize>(
    records: Vec<T>,
    make: impl Fn(u32, Vec<T>) -> DiscoveryEvent,
) -> Vec<DiscoveryEvent> {
    let mut out = Vec::new();
    let mut chunk: Vec<T> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = serde_json::to_vec(&r).map_or(0, |v| v.len()) + 1;
        if !chunk.is_empty() && (bytes + size > CHUNK_BYTES_MAX || chunk.len() >= CHUNK_RECORDS_MAX)
        {
            out.push(make(out.len() as u32, std::mem::take(&mut chunk)));
            bytes = 0;
        }
        bytes += size;
        chunk.push(r);
    }
    if !chunk.is_empty() {
        out.push(make(out.len() as u32, chunk));
    }
    out
}

/// The events of run `d`, in order.
pub fn events(d: &Discovery) -> Vec<DiscoveryEvent> {
    let m = &d.matched;
    let mut out = vec![DiscoveryEvent::DiscoveryStarted {
        run_id: d.run_id.clone(),
        started_ms: d.started_ms,
        tenants: d.tenants.iter().map(|t| cap(t)).collect(),
        read_values_for_hint: d.read_values_for_hint,
        min_confidence: d.min_confidence.as_str().to_owned(),
        days_before_expiry: d.days_before_expiry,
    }];
    let credentials: Vec<CredentialRecord> = m
        .credentials
        .iter()
        .zip(&m.verdicts)
        .map(|(c, v)| CredentialRecord {
            tenant: cap(&c.tenant),
            origin: c.origin.as_str().to_owned(),
            object_id: cap(&c.object_id),
            app_id: cap(&c.app_id),
            app_name: cap(&c.app_name),
            key_id: cap(&c.key_id),
            kind: c.kind.as_str().to_owned(),
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            ready: v.ready,
            reason: cap(&v.reason),
        })
        .collect();
    out.extend(chunked(credentials, |chunk, credentials| {
        DiscoveryEvent::CredentialsFound { chunk, credentials }
    }));
    let vaults: Vec<VaultRecord> = d
        .vaults
        .iter()
        .map(|(tenant, vault)| {
            let of = |kind| {
                m.items
                    .iter()
                    .filter(|i| &i.vault == vault && i.kind == kind)
                    .count()
            };
            VaultRecord {
                tenant: cap(tenant),
                vault: cap(vault),
                secrets: of(super::model::ItemKind::Secret),
                certificates: of(super::model::ItemKind::Certificate),
            }
        })
        .collect();
    out.extend(chunked(vaults, |chunk, vaults| {
        DiscoveryEvent::VaultsRead { chunk, vaults }
    }));
    let unreachable: Vec<UnreachableRecord> = m
        .unreachable
        .iter()
        .map(|u| UnreachableRecord {
            kind: u.kind.as_str().to_owned(),
            tenant: cap(&u.tenant),
            name: cap(&u.name),
            reason: cap(&u.reason),
        })
        .collect();
    out.extend(chunked(unreachable, |chunk, unreachable| {
        DiscoveryEvent::UnreachableFound { chunk, unreachable }
    }));
    let links: Vec<LinkRecord> = m
        .links()
        .map(|p| {
            let c = &m.credentials[p.credential];
            let i = &m.items[p.item];
            LinkRecord {
                app_id: cap(&c.app_id),
                key_id: cap(&c.key_id),
                vault: cap(&i.vault),
                item: cap(&i.name),
                item_kind: format!("{:?}", i.kind).to_lowercase(),
                confidence: p.confidence.as_str().to_owned(),
                outcome: match p.outcome {
                    Outcome::Linked => "linked",
                    Outcome::Ambiguous => "ambiguous",
                    Outcome::Vetoed => "vetoed",
                    Outcome::Lost { .. } => "lost",
                }
                .to_owned(),
                score: p.score,
                evidence: p.evidence.iter().map(|e| cap(&e.to_string())).collect(),
                vetoes: p.vetoes.iter().map(|v| cap(&v.to_string())).collect(),
            }
        })
        .collect();
    let link_count = links.len();
    out.extend(chunked(links, |chunk, links| DiscoveryEvent::LinksFound {
        chunk,
        links,
    }));
    let events = out.len() + 1;
    out.push(DiscoveryEvent::DiscoveryFinished {
        finished_ms: d.finished_ms,
        partial: d.partial(),
        credentials: m.credentials.len(),
        items: m.items.len(),
        links: link_count,
        ready: m.verdicts.iter().filter(|v| v.ready).count(),
        hint_reads: d.hint_reads,
        excluded_credentials: d.excluded_credentials,
        excluded_items: d.excluded_items,
        events,
    });
    out
}

/// Journals run `d` as its own stream (at most [`APPEND_EVENTS_MAX`] events an append);
/// the stream's status is `completed`, or `partial` when something could not be read.
///
/// # Errors
/// Journal errors (a second run with the same id conflicts).
pub async fn record<J: JournalAppend>(journal: &J, d: &Discovery) -> rekey_journal::Result<usize> {
    let stream = stream_id(&d.run_id);
    let all: Vec<NewEvent> = events(d).iter().map(DiscoveryEvent::to_new).collect();
    let total = all.len();
    let status = if d.partial() { "partial" } else { "completed" };
    let mut seq = 0u64;
    let mut rest = all;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(APPEND_EVENTS_MAX));
        let batch = std::mem::replace(&mut rest, tail);
        let last = rest.is_empty();
        let mut append = Append::new(stream.clone(), seq, batch);
        append = append.status(if last { status } else { "running" });
        seq = journal.append(append).await?.last_seq;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rekey_journal::{EVENT_BYTES_MAX, JournalRead, ManualClock, MemoryJournal};

    use super::*;
    use crate::fleet::matching::{Confidence, Hints, match_inventory};
    use crate::fleet::model::{
        AppCredential, CredentialKind, Inventory, ItemKind, Origin, Unreachable, UnreachableKind,
        VaultItem,
    };
    use crate::fleet::rules::Rules;

    /// A fleet of `n` apps with the longest names Graph allows, each with a tagged copy.
    fn big(n: u32) -> Discovery {
        let long = "x".repeat(256);
        let mut inv = Inventory::default();
        for k in 0..n {
            let key_id = format!("00000000-0000-4000-8000-{k:012x}");
            inv.credentials.push(AppCredential {
                tenant: "contoso".into(),
                origin: Origin::Application,
                object_id: format!("10000000-0000-4000-8000-{k:012x}"),
                app_id: format!("20000000-0000-4000-8000-{k:012x}"),
                app_name: format!("{long}{k}"),
                key_id: key_id.clone(),
                kind: CredentialKind::Password,
                display_name: Some(long.clone()),
                start_ms: Some(0),
                end_ms: Some(1),
                hint: Some("h!~".into()),
                thumbprint: None,
            });
            inv.items.push(VaultItem {
                tenant: "contoso".into(),
                vault: "kv".into(),
                name: format!("s{k}-{}", "y".repeat(100)),
                kind: ItemKind::Secret,
                tags: [(format!("CredentialId{}", "z".repeat(200)), key_id)].into(),
                content_type: None,
                enabled: true,
                exp_ms: None,
                created_ms: None,
                x5t: None,
                managed: false,
            });
        }
        inv.unreachable.push(Unreachable {
            kind: UnreachableKind::Vault,
            tenant: "contoso".into(),
            name: "kv-dr".into(),
            reason: "r".repeat(10_000),
        });
        inv.vaults.push(("contoso".into(), "kv".into()));
        let matched = match_inventory(&inv, &Rules::default(), &Hints::new());
        Discovery {
            run_id: "0197a000-0000-7000-8000-000000000001".into(),
            started_ms: 0,
            finished_ms: 1,
            tenants: vec!["contoso".into()],
            vaults: inv.vaults.clone(),
            matched,
            excluded_credentials: 0,
            excluded_items: 0,
            excluded: Vec::new(),
            vault_urls: std::collections::BTreeMap::new(),
            hint_reads: 0,
            read_values_for_hint: false,
            days_before_expiry: 30,
            min_confidence: Confidence::High,
        }
    }

    /// A large fleet is journaled as many bounded events (several appends), in order, with
    /// every credential and link once, and the stream says the run was partial.
    #[tokio::test]
    async fn a_large_fleet_is_many_bounded_events() {
        let d = big(8_000);
        let journal = MemoryJournal::new(Arc::new(ManualClock::new(0)));
        let n = record(&journal, &d).await.unwrap();
        let events = journal.read_stream(&stream_id(&d.run_id)).await.unwrap();
        assert_eq!(events.len(), n);
        assert!(n > APPEND_EVENTS_MAX, "several appends: {n} events");
        let mut credentials = 0;
        let mut links = 0;
        for e in &events {
            let bytes = e.payload.len();
            assert!(
                bytes <= CHUNK_BYTES_MAX + 1_024,
                "{} is {bytes} bytes",
                e.kind
            );
            assert!(bytes < EVENT_BYTES_MAX);
            match serde_json::from_str::<DiscoveryEvent>(&e.payload).unwrap() {
                DiscoveryEvent::CredentialsFound { credentials: c, .. } => credentials += c.len(),
                DiscoveryEvent::LinksFound { links: l, .. } => links += l.len(),
                _ => {}
            }
        }
        assert_eq!((credentials, links), (8_000, 8_000));
        assert_eq!(events[0].kind, "DiscoveryStarted");
        assert_eq!(events[n - 1].kind, "DiscoveryFinished");
        let info = journal
            .stream_info(&stream_id(&d.run_id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.status, "partial");
        assert!(
            events.iter().all(|e| !e.payload.contains("h!~")),
            "hints are never journaled"
        );
    }
}
