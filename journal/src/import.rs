//! Copying a whole journal into an empty one, on either engine (`rekey journal copy`):
//! every event in the source's global order with its canonical bytes, hashes and global
//! sequence unchanged, so every chain verifies identically and a heads file exported from
//! the source verifies the copy. Each chain is checked as its events arrive and against its
//! head record; the copy is written in one transaction, so a failure leaves nothing
//! half-copied. Leases are not copied (they belong to the runners of the source); armed
//! timers are.

use std::collections::HashMap;

use crate::any::AnyJournal;
use crate::api::{JournalRead, JournalScan, StreamFilter, StreamInfo, Timer};
use crate::error::{Error, Result};
use crate::event::{Digest32, Event, check_links};
use crate::feed::{FeedCursor, FeedPage};

/// Events read from the source per page (and written per statement).
pub(crate) const IMPORT_PAGE_EVENTS: usize = 2_000;

/// What [`AnyJournal::copy_from`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyCounts {
    pub streams: u64,
    pub events: u64,
    pub timers: u64,
}

/// One engine's side of an import: an open transaction on an empty journal.
pub(crate) trait ImportSink {
    /// Writes `events` (already checked) as they are, global sequence included.
    fn events(&mut self, events: &[Event]) -> Result<()>;
    /// Writes the stream rows and timers, then commits.
    fn finish(self: Box<Self>, streams: &[StreamInfo], timers: &[Timer]) -> Result<()>;
}

impl AnyJournal {
    /// Copies every stream of `source` into this journal, which must hold nothing
    /// ([`Error::CopyTargetNotEmpty`] otherwise). `progress` is told the events copied so
    /// far and the total expected.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the first broken stream of the source (nothing is written),
    /// [`Error::CopyTargetNotEmpty`], storage errors; in every case this journal is left as
    /// it was.
    pub async fn copy_from(
        &self,
        source: &AnyJournal,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CopyCounts> {
        let streams = source.streams(&StreamFilter::default()).await?;
        let timers = source.due_timers(i64::MAX, i64::MAX as usize).await?;
        let total: u64 = streams.iter().map(|s| s.head_seq).sum();
        let mut sink: Box<dyn ImportSink + '_> = match self {
            AnyJournal::Sqlite(j) => Box::new(j.begin_import()?),
            AnyJournal::Postgres(j) => Box::new(j.begin_import()?),
        };
        let mut heads: HashMap<String, (u64, Digest32)> = HashMap::new();
        let (mut cursor, mut copied) = (FeedCursor::start(), 0u64);
        loop {
            let FeedPage { events: page, next } =
                source.read_feed(&cursor, IMPORT_PAGE_EVENTS).await?;
            if page.is_empty() {
                break;
            }
            cursor = next;
            for e in &page {
                let head = heads
                    .entry(e.stream_id.clone())
                    .or_insert((0, Digest32::GENESIS));
                check_links(head.0, head.1, std::slice::from_ref(e))?;
                *head = (e.stream_seq, e.hash);
            }
            sink.events(&page)?;
            copied += page.len() as u64;
            progress(copied, total);
        }
        for info in &streams {
            let seen = heads
                .remove(&info.stream_id)
                .unwrap_or((0, Digest32::GENESIS));
            if seen != (info.head_seq, info.head_hash) {
                return Err(mismatch(source, &info.stream_id, seen, Some(info.head_seq)).await?);
            }
        }
        if let Some((stream, seen)) = heads.into_iter().next() {
            return Err(mismatch(source, &stream, seen, None).await?);
        }
        sink.finish(&streams, &timers)?;
        Ok(CopyCounts {
            streams: streams.len() as u64,
            events: copied,
            timers: timers.len() as u64,
        })
    }
}

/// Why the events of `stream` read from `source` (ending at `seen`) disagree with the
/// stream's head record as first listed (`listed`, or `None` when it was not listed): the
/// source changed meanwhile (a rekey is writing to it) when its head record now matches what
/// was read; else the stream is broken.
async fn mismatch(
    source: &AnyJournal,
    stream: &str,
    seen: (u64, Digest32),
    listed: Option<u64>,
) -> Result<Error> {
    let now = source.stream_info(stream).await?;
    if now
        .as_ref()
        .is_some_and(|i| (i.head_seq, i.head_hash) == seen && Some(i.head_seq) != listed)
    {
        return Ok(Error::CopySourceChanged {
            stream: stream.to_owned(),
        });
    }
    Ok(Error::Corrupt {
        stream: stream.to_owned(),
        seq: seen.0 + 1,
        detail: match listed {
            Some(head) => format!(
                "the stream's events end at sequence {} but its head record says {head}",
                seen.0
            ),
            None => "events of a stream with no stream record".into(),
        },
    })
}
