//! Chain verification: recompute every stream's hash chain and report the first broken
//! link precisely. Engine-independent: it consumes events in (stream, sequence) order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Head;
use crate::event::{Digest32, Event};

/// The outcome of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Streams read.
    pub streams: u64,
    /// Events read.
    pub events: u64,
    /// The first broken link, or `None` when every chain is intact.
    pub broken: Option<BrokenLink>,
    /// What the storage engine's own integrity check found wrong with the file (a damaged
    /// page or index), or `None` when it found nothing. A damaged file is not verified
    /// further: its rows cannot be trusted to be all there is.
    #[serde(default)]
    pub damaged: Option<String>,
}

impl VerifyReport {
    /// A report on a file whose storage is damaged, before any chain was read.
    pub(crate) fn damaged(what: String) -> Self {
        Self {
            streams: 0,
            events: 0,
            broken: None,
            damaged: Some(what),
        }
    }

    /// True when no link is broken and the file is not damaged.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none() && self.damaged.is_none()
    }
}

/// Where and how a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    pub stream_id: String,
    /// The stream sequence at which the chain stops holding.
    pub seq: u64,
    /// What is wrong, in words.
    pub what: String,
    pub expected: String,
    pub found: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream {} sequence {}: {} (expected {}, found {})",
            self.stream_id, self.seq, self.what, self.expected, self.found
        )
    }
}

/// Folds events into a report. Feed events ordered by stream id, then stream sequence.
#[derive(Debug)]
pub(crate) struct Verifier {
    report: VerifyReport,
    /// Heads recorded in the journal's own stream table.
    recorded: BTreeMap<String, (u64, Digest32)>,
    /// Heads exported earlier, to detect truncation that also rewrote the stream table.
    exported: BTreeMap<String, (u64, Digest32)>,
    /// The stream being read: id, last sequence, last hash, last global sequence.
    current: Option<(String, u64, Digest32, u64)>,
}

impl Verifier {
    pub(crate) fn new(recorded: Vec<Head>, exported: Option<&[Head]>) -> Self {
        let to_map = |heads: &[Head]| {
            heads
                .iter()
                .map(|h| (h.stream_id.clone(), (h.seq, h.hash)))
                .collect()
        };
        Self {
            report: VerifyReport {
                streams: 0,
                events: 0,
                broken: None,
                damaged: None,
            },
            recorded: to_map(&recorded),
            exported: exported.map(to_map).unwrap_or_default(),
            current: None,
        }
    }

    fn is_done(&self) -> bool {
        self.report.broken.is_some()
    }

    fn fail(&mut self, stream: &str, seq: u64, what: &str, expected: String, found: String) {
        if self.report.broken.is_none() {
            self.report.broken = Some(BrokenLink {
                stream_id: stream.to_owned(),
                seq,
                what: what.to_owned(),
                expected,
                found,
            });
        }
    }

    /// Takes the next event; returns false once a break was found (the caller may stop).
    pub(crate) fn feed(&mut self, e: &Event) -> bool {
        if self.is_done() {
            return false;
        }
        let same_stream = matches!(&self.current, Some((s, ..)) if *s == e.stream_id);
        if !same_stream {
            self.end_stream();
            if self.is_done() {
                return false;
            }
            self.report.streams += 1;
            self.current = Some((e.stream_id.clone(), 0, Digest32::GENESIS, 0));
        }
        self.report.events += 1;
        let Some((_, last_seq, last_hash, last_global)) = self.current.clone() else {
            return false;
        };
        if e.stream_seq != last_seq + 1 {
            let what = if e.stream_seq > last_seq + 1 {
                "events missing: sequence gap"
            } else {
                "sequence repeated or out of order"
            };
            self.fail(
                &e.stream_id,
                last_seq + 1,
                what,
                format!("sequence {}", last_seq + 1),
                format!("sequence {}", e.stream_seq),
            );
        } else if e.prev_hash != last_hash {
            self.fail(
                &e.stream_id,
                e.stream_seq,
                "prev_hash does not link to the previous event (reordered or replaced)",
                last_hash.to_hex(),
                e.prev_hash.to_hex(),
            );
        } else if e.expected_hash() != e.hash {
            self.fail(
                &e.stream_id,
                e.stream_seq,
                "event content does not match its hash (edited)",
                e.expected_hash().to_hex(),
                e.hash.to_hex(),
            );
        } else if e.global_seq <= last_global {
            self.fail(
                &e.stream_id,
                e.stream_seq,
                "global order does not follow stream order (rows swapped)",
                format!("global sequence above {last_global}"),
                format!("global sequence {}", e.global_seq),
            );
        } else if let Some(&(seq, hash)) = self.exported.get(&e.stream_id)
            && seq == e.stream_seq
            && hash != e.hash
        {
            self.fail(
                &e.stream_id,
                seq,
                "event differs from the exported head",
                hash.to_hex(),
                e.hash.to_hex(),
            );
        }
        self.current = Some((e.stream_id.clone(), e.stream_seq, e.hash, e.global_seq));
        !self.is_done()
    }

    /// Compares the finished stream with its recorded and exported heads.
    fn end_stream(&mut self) {
        let Some((stream, last_seq, last_hash, _)) = self.current.take() else {
            return;
        };
        let recorded = self.recorded.remove(&stream);
        match recorded {
            None => self.fail(
                &stream,
                last_seq,
                "stream has events but no head record",
                "a head record".into(),
                "none".into(),
            ),
            Some((seq, hash)) if seq != last_seq || hash != last_hash => self.fail(
                &stream,
                last_seq.min(seq) + 1,
                "stream ends where its head record does not (truncated or extended)",
                format!("last sequence {seq} ({hash})"),
                format!("last sequence {last_seq} ({last_hash})"),
            ),
            Some(_) => {}
        }
        if let Some((seq, hash)) = self.exported.remove(&stream)
            && seq > last_seq
        {
            self.fail(
                &stream,
                last_seq + 1,
                "stream is shorter than the exported head (truncated)",
                format!("last sequence {seq} ({hash})"),
                format!("last sequence {last_seq} ({last_hash})"),
            );
        }
    }

    pub(crate) fn finish(mut self) -> VerifyReport {
        self.end_stream();
        let missing_recorded = self.recorded.iter().next().map(|(s, v)| (s.clone(), *v));
        if let Some((stream, (seq, hash))) = missing_recorded {
            self.fail(
                &stream,
                1,
                "head record names a stream with no events (deleted)",
                format!("last sequence {seq} ({hash})"),
                "no events".into(),
            );
        }
        let missing_exported = self.exported.iter().next().map(|(s, v)| (s.clone(), *v));
        if let Some((stream, (seq, hash))) = missing_exported {
            self.fail(
                &stream,
                1,
                "exported head names a stream missing from the journal (deleted)",
                format!("last sequence {seq} ({hash})"),
                "no events".into(),
            );
        }
        self.report
    }
}
