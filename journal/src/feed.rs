//! The global feed's position: an opaque cursor. Followers, exporters and copies read the
//! feed page by page with [`crate::JournalScan::read_feed`] and resume from the cursor the
//! last page returned, never from a number of their own making.
//!
//! Today both engines order the feed by a gap-free global sequence given in commit order
//! (SQLite has one writer; PostgreSQL's batches hold a counter row from their first
//! statement to their commit, see `postgres.rs`), and the cursor holds that sequence. The
//! cursor is opaque so that the PostgreSQL feed can move to a transaction-horizon order
//! (DESIGN §8: rows below `pg_snapshot_xmin`, ordered by transaction id then id) without
//! changing its callers: only the engine reads what is inside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::event::Event;

/// Where a reader of the global feed stands: after every event it has been given.
///
/// Its text form (`Display`, `FromStr`, serde) is opaque; store it as it is and hand it
/// back. Cursors are ordered within one journal only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FeedCursor {
    /// The global sequence of the last event read (0 before the first).
    after_global: u64,
}

/// The tag of the cursor's text form: the ordering it positions in.
const GLOBAL_TAG: char = 'g';

impl FeedCursor {
    /// Before the first event of the journal.
    pub fn start() -> Self {
        Self::default()
    }

    /// After the event with global sequence `global_seq`.
    pub(crate) fn after_global(global_seq: u64) -> Self {
        Self {
            after_global: global_seq,
        }
    }

    /// The global sequence this cursor stands after.
    pub(crate) fn global_seq(&self) -> u64 {
        self.after_global
    }

    /// The cursor after `events`, a page read from this one.
    pub(crate) fn past(&self, events: &[Event]) -> Self {
        events
            .last()
            .map_or_else(|| self.clone(), |e| Self::after_global(e.global_seq))
    }
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{GLOBAL_TAG}{}", self.after_global)
    }
}

impl FromStr for FeedCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadFeedCursor {
            cursor: s.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        let digits = s
            .strip_prefix(GLOBAL_TAG)
            .ok_or_else(|| bad("unknown form"))?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("its position is not a number"));
        }
        let after_global = digits
            .parse()
            .map_err(|_| bad("its position is out of range"))?;
        Ok(Self { after_global })
    }
}

impl Serialize for FeedCursor {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FeedCursor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One page of the global feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    /// The events, in feed order; empty when the reader is at the end (for now).
    pub events: Vec<Event>,
    /// Where to read on from: after these events (the same cursor when there were none).
    pub next: FeedCursor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for c in [FeedCursor::start(), FeedCursor::after_global(u64::MAX)] {
            assert_eq!(c.to_string().parse::<FeedCursor>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<FeedCursor>(&json).unwrap(), c);
        }
    }

    #[test]
    fn a_cursor_this_rekey_did_not_write_is_refused() {
        for bad in [
            "",
            "17",
            "g",
            "g-1",
            "g+1",
            "g1x",
            "x5",
            "g99999999999999999999",
        ] {
            let e = bad.parse::<FeedCursor>().unwrap_err();
            assert!(
                matches!(&e, Error::BadFeedCursor { cursor, .. } if cursor == bad),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("resume from a cursor"), "{e}");
        }
        assert!(serde_json::from_str::<FeedCursor>("\"nope\"").is_err());
    }
}
