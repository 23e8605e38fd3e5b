//! Reads while the journal is being written: a healthy journal must never look corrupt just
//! because an append committed in the middle of a read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rekey_journal::{Append, JournalRead, SqliteJournal};

use crate::common::{append_ok, assert_chain, block_on, numbered, scratch};

const APPENDS: u64 = 400;

/// Appends `APPENDS` events to `grow` while `read` runs in a loop on another thread (with a
/// runtime of its own, to await async reads on); returns how many reads ran, or the first
/// error a read reported.
fn while_appending(
    read: impl Fn(&SqliteJournal, &tokio::runtime::Runtime) -> Result<(), String> + Send + 'static,
) -> Result<u64, String> {
    let (_dir, path) = scratch();
    let j = Arc::new(SqliteJournal::open(&path).expect("opening the journal"));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (j, done) = (j.clone(), done.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("building the reader's runtime");
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                read(&j, &runtime)?;
                reads += 1;
            }
            Ok(reads)
        })
    };
    block_on(async {
        for seq in 0..APPENDS {
            append_ok(&*j, Append::new("grow", seq, vec![numbered(seq + 1)])).await;
        }
    });
    done.store(true, Ordering::SeqCst);
    reader.join().expect("the reader thread panicked")
}

/// A follower re-reading a stream another runner is appending to must always get a valid
/// prefix of it, never `Corrupt`.
#[test]
fn read_stream_never_reports_corruption_while_the_stream_grows() {
    let outcome = while_appending(|j, runtime| {
        let events = runtime
            .block_on(j.read_stream("grow"))
            .map_err(|e| e.to_string())?;
        assert_chain("grow", &events);
        Ok(())
    });
    let reads = outcome.unwrap_or_else(|e| {
        panic!("read_stream reported a healthy, growing journal as corrupt: {e}")
    });
    assert!(reads > 0, "the reader must have run");
}

/// `rekey journal verify` run against a live journal must not report a break that is only an
/// append landing between two of its reads.
#[test]
fn verify_is_intact_while_the_journal_grows() {
    let outcome = while_appending(|j, runtime| {
        let report = runtime
            .block_on(j.verify(None))
            .map_err(|e| e.to_string())?;
        match report.broken {
            None => Ok(()),
            Some(b) => Err(b.to_string()),
        }
    });
    let reads = outcome
        .unwrap_or_else(|e| panic!("verify reported a healthy, growing journal as broken: {e}"));
    assert!(reads > 0, "verify must have run");
}
