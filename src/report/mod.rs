//! The auditor's HTML report of a journal: `rekey journal show ID --format html` (one
//! stream) and `rekey journal export --format html` (every rotation `export`'s filters
//! admit, with an index). One self-contained file (inline CSS, no script, nothing
//! fetched) that opens from disk: the journal's chain verification at the top (a broken
//! link named by stream, sequence, expected and found hash), then each rotation's timeline
//! folded by [`crate::history::fold_timeline`] (the fold `history` uses, through the
//! saga's own `apply`) with every event in words, then the heads.
//!
//! A broken journal still gets its report: events are read from the global feed, which
//! does not stop at a broken link, so the broken stream shows what it holds, its broken
//! event marked. Names, error texts and ids are escaped by the template engine (askama):
//! markup in a secret's or an application's name renders as text. Events hold no secret
//! value, and nothing else is read.

pub mod describe;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use askama::Template;
use rekey_journal::{
    Event, FeedCursor, Head, JournalRead, JournalScan, StreamFilter, StreamInfo, VerifyReport,
};

use crate::history::{self, Outcome, Timeline};
use crate::runner::lock;
use crate::saga::{Phase, StepStatus};
use describe::{describe, format_ms};

/// Events read per page of the global feed.
const FEED_PAGE_EVENTS: usize = 10_000;

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Journal(#[from] rekey_journal::Error),
    #[error("no stream {stream} in {location}; list streams with `rekey journal export`")]
    NoStream { stream: String, location: String },
    #[error("rendering the HTML report: {0}")]
    Render(#[from] askama::Error),
}

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One stream (`journal show`).
    Stream(String),
    /// The streams `export`'s filters admit (all of them for the default filter).
    Export(StreamFilter),
}

/// What the report is of and when it was made.
#[derive(Debug)]
pub struct Source<'a> {
    /// Where the journal is (a file path, or a PostgreSQL URL without password).
    pub location: &'a str,
    /// The journal's chain verification (`verify`).
    pub verify: &'a VerifyReport,
    /// Every stream's head (`heads`).
    pub heads: &'a [Head],
    /// When the report is made (Unix ms).
    pub generated_at_ms: i64,
}

/// The report, ready to render.
#[derive(Debug, Template)]
#[template(path = "report/journal.html")]
pub struct Report {
    title: String,
    location: String,
    generated_at: String,
    scope: String,
    verification: Verification,
    /// For an export: every section, in the order shown.
    index: Vec<IndexRow>,
    /// The index's outcomes counted, e.g. `998 completed, 2 compensated`.
    totals: String,
    sections: Vec<Section>,
    /// Streams in scope that are not rotations (export only).
    others: Vec<OtherStream>,
    heads: Vec<HeadRow>,
    heads_note: String,
}

#[derive(Debug)]
struct Verification {
    intact: bool,
    headline: String,
    broken: Option<BrokenView>,
    damaged: Option<String>,
}

#[derive(Debug)]
struct BrokenView {
    stream: String,
    seq: u64,
    what: String,
    expected: String,
    found: String,
    /// The section showing the stream, when the report has one.
    anchor: Option<String>,
}

#[derive(Debug)]
struct IndexRow {
    anchor: String,
    rotation_id: String,
    secret: String,
    requested: String,
    ended: String,
    outcome: String,
    outcome_class: &'static str,
    broken: bool,
}

#[derive(Debug)]
struct Section {
    anchor: String,
    stream_id: String,
    heading: String,
    status: String,
    summary: Vec<(&'static str, String)>,
    outcome: Option<(String, &'static str)>,
    fold_error: Option<String>,
    steps: Vec<StepRow>,
    events: Vec<EventRow>,
    /// The sequence at which this stream's chain breaks.
    broken_at: Option<u64>,
}

#[derive(Debug)]
struct StepRow {
    step: String,
    target: String,
    undo: bool,
    started: String,
    outcome: String,
    outcome_class: &'static str,
    duration: String,
    attempts: u32,
    result_id: String,
    errors: Vec<String>,
}

#[derive(Debug)]
struct EventRow {
    seq: u64,
    time: String,
    kind: String,
    text: String,
    broken: bool,
}

#[derive(Debug)]
struct OtherStream {
    stream_id: String,
    subject: String,
    status: String,
    events: usize,
    created: String,
}

#[derive(Debug)]
struct HeadRow {
    stream_id: String,
    seq: u64,
    hash: String,
    broken: bool,
}

impl Report {
    /// Reads what `scope` covers from `journal` and builds its report.
    ///
    /// # Errors
    /// Journal errors; [`Error::NoStream`] for a stream the journal does not have.
    pub async fn build<J: JournalRead + JournalScan + Sync + ?Sized>(
        journal: &J,
        scope: &Scope,
        source: &Source<'_>,
    ) -> Result<Self, Error> {
        let broken = source.verify.broken.as_ref();
        let (infos, mut events) = match scope {
            Scope::Stream(id) => {
                let events = match journal.read_stream(id).await {
                    Ok(events) => events,
                    // A chain that does not hold: what the feed has of it, marked.
                    Err(rekey_journal::Error::Corrupt { .. }) => {
                        let wanted = HashSet::from([id.clone()]);
                        feed_events(journal, Some(&wanted))
                            .await?
                            .remove(id)
                            .unwrap_or_default()
                    }
                    Err(e) => return Err(e.into()),
                };
                if events.is_empty() {
                    return Err(Error::NoStream {
                        stream: id.clone(),
                        location: source.location.to_owned(),
                    });
                }
                let info = journal.stream_info(id).await?;
                (
                    info.into_iter().collect::<Vec<_>>(),
                    BTreeMap::from([(id.clone(), events)]),
                )
            }
            Scope::Export(filter) => {
                let infos = journal.streams(filter).await?;
                let wanted = (filter != &StreamFilter::default())
                    .then(|| infos.iter().map(|s| s.stream_id.clone()).collect());
                (infos, feed_events(journal, wanted.as_ref()).await?)
            }
        };
        let mut sections = Vec::new();
        let mut index = Vec::new();
        let mut others = Vec::new();
        let mut timelines = Vec::new();
        let ids: Vec<(String, Option<StreamInfo>)> = match scope {
            Scope::Stream(id) => vec![(id.clone(), infos.into_iter().next())],
            Scope::Export(_) => infos
                .into_iter()
                .map(|i| (i.stream_id.clone(), Some(i)))
                .collect(),
        };
        for (id, info) in ids {
            let stream_events = events.remove(&id).unwrap_or_default();
            let rotation = lock::is_rotation_stream(&id);
            if !rotation && matches!(scope, Scope::Export(_)) {
                others.push(OtherStream {
                    subject: info
                        .as_ref()
                        .and_then(|i| i.subject.clone())
                        .unwrap_or_default(),
                    status: info.as_ref().map(|i| i.status.clone()).unwrap_or_default(),
                    created: info
                        .as_ref()
                        .map(|i| format_ms(i.created_at_ms))
                        .unwrap_or_default(),
                    events: stream_events.len(),
                    stream_id: id,
                });
                continue;
            }
            let timeline = rotation.then(|| history::fold_timeline(&id, &stream_events));
            timelines.push((id, info, stream_events, timeline));
        }
        // Requests that joined an open rotation are in its credential's lock stream.
        let mut rows: Vec<history::Row> = timelines
            .iter()
            .filter_map(|(_, _, _, t)| t.as_ref()?.as_ref().ok().map(|t| t.row.clone()))
            .collect();
        let joined_known = history::add_joined(journal, &mut rows).await.is_ok();
        let mut joined: BTreeMap<String, Vec<history::Joined>> = rows
            .into_iter()
            .map(|r| (r.rotation_id, r.joined))
            .collect();
        for (n, (id, info, stream_events, timeline)) in timelines.into_iter().enumerate() {
            let anchor = format!("stream-{}", n + 1);
            let broken_at = broken.filter(|b| b.stream_id == id).map(|b| b.seq);
            let mut section = Section {
                anchor: anchor.clone(),
                heading: info
                    .as_ref()
                    .and_then(|i| i.subject.clone())
                    .unwrap_or_else(|| id.clone()),
                stream_id: id.clone(),
                status: info.as_ref().map(|i| i.status.clone()).unwrap_or_default(),
                summary: Vec::new(),
                outcome: None,
                fold_error: None,
                steps: Vec::new(),
                events: stream_events
                    .iter()
                    .map(|e| EventRow {
                        seq: e.stream_seq,
                        time: format_ms(e.recorded_at_ms),
                        kind: e.kind.clone(),
                        text: describe(e),
                        broken: broken_at == Some(e.stream_seq),
                    })
                    .collect(),
                broken_at,
            };
            let mut index_row = IndexRow {
                anchor,
                rotation_id: id.clone(),
                secret: info
                    .as_ref()
                    .and_then(|i| i.subject.clone())
                    .unwrap_or_default(),
                requested: info
                    .as_ref()
                    .map(|i| format_ms(i.created_at_ms))
                    .unwrap_or_default(),
                ended: String::new(),
                outcome: section.status.clone(),
                outcome_class: "unknown",
                broken: broken_at.is_some(),
            };
            match timeline {
                Some(Ok(mut t)) => {
                    if let Some(j) = joined.remove(&id) {
                        t.row.joined = j;
                    }
                    fill_rotation(&mut section, &t, joined_known);
                    index_row.secret.clone_from(&t.row.secret);
                    index_row.requested = format_ms(t.row.requested_at_ms);
                    index_row.ended = t.row.finished_at_ms.map(format_ms).unwrap_or_default();
                    index_row.outcome = t.row.outcome.as_str().to_owned();
                    index_row.outcome_class = outcome_class(t.row.outcome);
                }
                Some(Err(e)) => {
                    section.fold_error = Some(e.to_string());
                    index_row.outcome = "cannot be read".to_owned();
                    index_row.outcome_class = "bad";
                }
                None => {}
            }
            sections.push(section);
            index.push(index_row);
        }
        let verification = verification(source.verify, &sections);
        let (heads, heads_note) = match scope {
            Scope::Stream(id) => (
                source
                    .heads
                    .iter()
                    .filter(|h| &h.stream_id == id)
                    .collect::<Vec<_>>(),
                "The head of this stream, as `rekey journal heads` writes it: keep it outside the journal; `rekey journal verify --heads` then detects truncation.".to_owned(),
            ),
            Scope::Export(_) => (
                source.heads.iter().collect(),
                "Every stream's head, as `rekey journal heads` writes it (all streams of the journal, whatever the filters): keep them outside the journal; `rekey journal verify --heads` then detects truncation.".to_owned(),
            ),
        };
        let broken_streams: BTreeSet<&str> = broken.iter().map(|b| b.stream_id.as_str()).collect();
        let title = match scope {
            Scope::Stream(id) => format!("rekey journal report: stream {id}"),
            Scope::Export(_) => "rekey journal report".to_owned(),
        };
        Ok(Report {
            title,
            location: source.location.to_owned(),
            generated_at: format_ms(source.generated_at_ms),
            scope: scope_text(scope),
            verification,
            totals: totals(&index),
            index: match scope {
                Scope::Stream(_) => Vec::new(),
                Scope::Export(_) => index,
            },
            sections,
            others,
            heads: heads
                .into_iter()
                .map(|h| HeadRow {
                    stream_id: h.stream_id.clone(),
                    seq: h.seq,
                    hash: h.hash.to_hex(),
                    broken: broken_streams.contains(h.stream_id.as_str()),
                })
                .collect(),
            heads_note,
        })
    }

    /// The report as one HTML document.
    ///
    /// # Errors
    /// [`Error::Render`] (a template fault; never the data).
    pub fn to_html(&self) -> Result<String, Error> {
        Ok(self.render()?)
    }

    /// Whether the journal verified intact.
    pub fn is_intact(&self) -> bool {
        self.verification.intact
    }
}

/// The events of the `wanted` streams (every stream when `None`), each stream's in
/// sequence order, from the global feed, which does not stop at a broken link.
async fn feed_events<J: JournalScan + ?Sized>(
    journal: &J,
    wanted: Option<&HashSet<String>>,
) -> Result<BTreeMap<String, Vec<Event>>, Error> {
    let mut by_stream: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    let mut cursor = FeedCursor::start();
    loop {
        let page = journal.read_feed(&cursor, FEED_PAGE_EVENTS).await?;
        if page.events.is_empty() {
            break;
        }
        cursor = page.next;
        for e in page.events {
            if wanted.is_none_or(|w| w.contains(&e.stream_id)) {
                by_stream.entry(e.stream_id.clone()).or_default().push(e);
            }
        }
    }
    Ok(by_stream)
}

fn verification(report: &VerifyReport, sections: &[Section]) -> Verification {
    if let Some(damage) = &report.damaged {
        return Verification {
            intact: false,
            headline: "BROKEN: the journal file is damaged; its events cannot be trusted to be all there are: restore the journal from a backup".to_owned(),
            broken: None,
            damaged: Some(damage.clone()),
        };
    }
    if let Some(b) = &report.broken {
        return Verification {
            intact: false,
            headline: format!(
                "BROKEN: stream {} sequence {}: {}; {} streams, {} events checked before the break: restore the journal from a backup and investigate",
                b.stream_id, b.seq, b.what, report.streams, report.events
            ),
            broken: Some(BrokenView {
                stream: b.stream_id.clone(),
                seq: b.seq,
                what: b.what.clone(),
                expected: b.expected.clone(),
                found: b.found.clone(),
                anchor: sections
                    .iter()
                    .find(|s| s.stream_id == b.stream_id)
                    .map(|s| s.anchor.clone()),
            }),
            damaged: None,
        };
    }
    Verification {
        intact: true,
        headline: format!(
            "intact: {} streams, {} events, every chain verified",
            report.streams, report.events
        ),
        broken: None,
        damaged: None,
    }
}

/// The summary and steps of a rotation's timeline.
fn fill_rotation(section: &mut Section, t: &Timeline, joined_known: bool) {
    let row = &t.row;
    section.heading = row.secret.clone();
    section.outcome = Some((row.outcome.as_str().to_owned(), outcome_class(row.outcome)));
    let mut summary = vec![
        ("Rotation", row.rotation_id.clone()),
        ("Secret", row.secret.clone()),
        ("Credential", row.lock_key.clone()),
    ];
    if let Some(app) = &row.app_id {
        summary.push(("Application", app.clone()));
    }
    if let Some(tenant) = &row.tenant {
        summary.push(("Tenant", tenant.clone()));
    }
    summary.push(("Trigger", format!("{} by {}", row.trigger, row.actor)));
    summary.push(("Requested", format_ms(row.requested_at_ms)));
    summary.push((
        "Ended",
        row.finished_at_ms
            .map_or_else(|| "not yet (open)".to_owned(), format_ms),
    ));
    if let Some(ms) = row.finished_at_ms {
        summary.push((
            "Took",
            duration_text(ms.saturating_sub(row.requested_at_ms)),
        ));
    }
    summary.push(("Phase", format!("{:?}", row.phase).to_lowercase()));
    summary.push((
        "Grace deadline",
        t.grace_due_ms.map_or_else(
            || match row.phase {
                Phase::Forward => "not yet (set once every forward step succeeded)".to_owned(),
                _ => "none (the forward steps did not all succeed)".to_owned(),
            },
            |ms| format!("{} (old credential retired then)", format_ms(ms)),
        ),
    ));
    if let Some(reason) = &t.compensation_reason {
        summary.push(("Compensated because", reason.clone()));
    }
    if !row.items_updated.is_empty() {
        let items: Vec<String> = row
            .items_updated
            .iter()
            .map(|i| {
                format!(
                    "{} {} ({}){}",
                    i.role.as_str(),
                    i.name,
                    i.address,
                    if i.undone { ", undone" } else { "" }
                )
            })
            .collect();
        summary.push(("Items written", items.join("; ")));
    }
    if let Some(ms) = row.new_expiry_ms {
        summary.push(("New credential expires", format_ms(ms)));
    }
    if !row.joined.is_empty() {
        let joined: Vec<String> = row
            .joined
            .iter()
            .map(|j| format!("{} by {} at {}", j.trigger, j.actor, format_ms(j.at_ms)))
            .collect();
        summary.push(("Requests that joined it", joined.join("; ")));
    } else if !joined_known {
        summary.push((
            "Requests that joined it",
            "unknown (the credential's lock stream cannot be read)".to_owned(),
        ));
    }
    if let Some(e) = &row.last_error {
        summary.push((
            "Last error",
            format!(
                "{} at {}: {:?}: {}",
                e.step,
                format_ms(e.at_ms),
                e.class,
                e.message
            ),
        ));
    }
    section.summary = summary;
    section.steps = t
        .steps
        .iter()
        .map(|s| {
            let (outcome, class) = match &s.status {
                StepStatus::Succeeded { .. } if s.reconciled => {
                    ("succeeded (found by reconciling)".to_owned(), "ok")
                }
                StepStatus::Succeeded { .. } => ("succeeded".to_owned(), "ok"),
                StepStatus::Pending { .. } => ("did not happen; may run again".to_owned(), "warn"),
                StepStatus::InDoubt { failure: None, .. } => {
                    ("running (in doubt)".to_owned(), "info")
                }
                StepStatus::InDoubt {
                    failure: Some(f), ..
                } => (
                    f.retry_at_ms.map_or_else(
                        || "failed; in doubt until reconciled".to_owned(),
                        |at| format!("failed; retry at {}", format_ms(at)),
                    ),
                    "bad",
                ),
                StepStatus::Abandoned { .. } => ("abandoned".to_owned(), "bad"),
            };
            StepRow {
                step: s.step.to_string(),
                target: format!("{} {}", s.role.as_str(), s.target),
                undo: s.is_undo(),
                started: format_ms(s.started_at_ms),
                outcome,
                outcome_class: class,
                duration: s
                    .duration_ms()
                    .map_or_else(|| "—".to_owned(), duration_text),
                attempts: s.attempts,
                result_id: match &s.status {
                    StepStatus::Succeeded { id: Some(id) } => id.clone(),
                    _ => String::new(),
                },
                errors: s
                    .errors
                    .iter()
                    .map(|e| {
                        format!(
                            "attempt {} at {}: {:?}: {}{}",
                            e.attempt,
                            format_ms(e.at_ms),
                            e.class,
                            e.message,
                            e.retry_at_ms
                                .map_or(String::new(), |t| format!(" (retry at {})", format_ms(t)))
                        )
                    })
                    .collect(),
            }
        })
        .collect();
}

/// The rows' outcomes counted, most frequent first.
fn totals(index: &[IndexRow]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for row in index {
        *counts.entry(row.outcome.as_str()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(outcome, n)| format!("{n} {outcome}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "ok",
        Outcome::Compensated => "warn",
        Outcome::Open => "info",
        Outcome::Failed => "bad",
    }
}

/// What the report covers, in words.
fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Stream(id) => format!("stream {id} (rekey journal show)"),
        Scope::Export(filter) => {
            let mut parts = Vec::new();
            if let Some(s) = &filter.subject {
                parts.push(format!("subject {s}"));
            }
            if let Some(s) = &filter.status {
                parts.push(format!("status {s}"));
            }
            if let Some(ms) = filter.created_from_ms {
                parts.push(format!("started at or after {}", format_ms(ms)));
            }
            if let Some(ms) = filter.created_until_ms {
                parts.push(format!("started before {}", format_ms(ms)));
            }
            if parts.is_empty() {
                "every rotation in the journal (rekey journal export)".to_owned()
            } else {
                format!(
                    "the rotations of streams with {} (rekey journal export)",
                    parts.join(", ")
                )
            }
        }
    }
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`, `3 d 4 h`.
pub fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{} s", s, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{} min {} s", s / 60, s % 60)
    } else if ms < 86_400_000 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else {
        format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::duration_text;

    #[test]
    fn durations_read_in_the_largest_units() {
        assert_eq!(duration_text(-5), "0 ms");
        assert_eq!(duration_text(850), "850 ms");
        assert_eq!(duration_text(12_345), "12.3 s");
        assert_eq!(duration_text(245_000), "4 min 5 s");
        assert_eq!(duration_text(7_380_000), "2 h 3 min");
        assert_eq!(duration_text(273_600_000), "3 d 4 h");
    }
}
