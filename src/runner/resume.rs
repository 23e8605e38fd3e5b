//! Taking up open rotations at scale (`rekey resume`, the daemon's start): the open set
//! comes from the streams' summary rows (one query), and each rotation is handed to a
//! drive as soon as it is found, so the first provider call does not wait for the rest
//! to be listed or folded. Each drive folds only its own stream. What a crash between
//! two appends left (a lock opened without its rotation stream, or an ended rotation
//! whose lock stayed busy) is repaired after, from the busy lock streams.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use rekey_journal::StreamFilter;
use tokio::sync::Semaphore;

use super::lock::{self, LockEvent};
use super::{Error, Runner, RunnerJournal};

/// An open rotation, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRotation {
    pub rotation_id: String,
    /// The secret it rotates (the stream's subject), when recorded.
    pub secret: Option<String>,
}

/// Told how taking up open rotations goes (a progress bar, a test's counters).
pub trait ResumeProgress: Send + Sync {
    /// One more open rotation was found and queued.
    fn found(&self);
    /// One drive returned (ended, waiting, busy elsewhere, or failed).
    fn driven(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ResumeProgress for Quiet {
    fn found(&self) {}
    fn driven(&self) {}
}

impl<J: RunnerJournal> Runner<J> {
    /// Calls `found` with every rotation not yet ended, as it is found: first those whose
    /// stream is open (from the streams' summary rows, without reading any event), then
    /// those only a busy lock names, after repairing what a crash between two appends
    /// left (the lock opened but its rotation stream missing: created now; the rotation
    /// ended but its lock still busy: its drive closes the lock). Each rotation once.
    ///
    /// # Errors
    /// Journal errors; rotations found before one was already handed to `found`.
    pub async fn each_open_rotation(
        &self,
        mut found: impl FnMut(OpenRotation),
    ) -> Result<usize, Error> {
        let mut seen = HashSet::new();
        let open = StreamFilter {
            status: Some("open".to_owned()),
            ..StreamFilter::default()
        };
        for info in self.journal.streams(&open).await? {
            // Other streams (`schedule:`, …) start `open` too, and are no rotations.
            if lock::is_rotation_stream(&info.stream_id) && seen.insert(info.stream_id.clone()) {
                found(OpenRotation {
                    rotation_id: info.stream_id,
                    secret: info.subject,
                });
            }
        }
        let busy = StreamFilter {
            status: Some(lock::BUSY.to_owned()),
            ..StreamFilter::default()
        };
        for info in self.journal.streams(&busy).await? {
            let (events, _) = self.read_lock(&info.stream_id).await?;
            if let Some(LockEvent::Opened {
                rotation_id,
                plan,
                trigger,
                actor,
            }) = lock::open_rotation(&events)
            {
                if seen.contains(rotation_id) {
                    continue;
                }
                if self.journal.stream_info(rotation_id).await?.is_none() {
                    self.create_rotation_stream(rotation_id, plan, trigger, actor)
                        .await?;
                }
                seen.insert(rotation_id.clone());
                found(OpenRotation {
                    rotation_id: rotation_id.clone(),
                    secret: Some(plan.secret.clone()),
                });
            }
        }
        Ok(seen.len())
    }
}

/// Drives every open rotation of `runner` with `drive`, at most `limit` at once, each
/// started as soon as it is found ([`Runner::each_open_rotation`]). Returns each
/// rotation with what its drive returned, in the order they were found.
///
/// # Errors
/// Journal errors while finding open rotations (drives already started are stopped).
///
/// # Panics
/// When a drive panics, the same panic.
pub async fn drive_open<J, T, F, Fut>(
    runner: &Runner<J>,
    limit: usize,
    progress: Arc<dyn ResumeProgress>,
    drive: F,
) -> Result<Vec<(OpenRotation, T)>, Error>
where
    J: RunnerJournal,
    F: Fn(&OpenRotation) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let limit = Arc::new(Semaphore::new(limit.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0usize;
    runner
        .each_open_rotation(|open| {
            progress.found();
            let driving = drive(&open);
            let (limit, progress, i) = (limit.clone(), progress.clone(), next);
            next += 1;
            tasks.spawn(async move {
                // Queued, not refused, while the limit is reached; never closed.
                let _permit = limit.acquire_owned().await;
                let out = driving.await;
                progress.driven();
                (i, open, out)
            });
        })
        .await?;
    let mut done = Vec::with_capacity(next);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(one) => done.push(one),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    done.sort_by_key(|(i, _, _)| *i);
    Ok(done.into_iter().map(|(_, open, out)| (open, out)).collect())
}
