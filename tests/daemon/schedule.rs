//! Schedules driven by the daemon on a paused tokio clock (days pass in milliseconds):
//! a new schedule waits for its first due time, cadence and jitter, windows, rotating
//! ahead of an expiry, and freezes that push a rotation past them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rekey::config::Config;
use rekey::daemon::{Daemon, Handle, Settings, Summary};
use rekey::journal::{Clock, JournalRead, JournalScan, MemoryJournal, StreamFilter};
use rekey::provider::Reply;
use rekey::runner::{Options, Runner};
use rekey::saga::Action;
use serde_json::Value;

use crate::intercept::{Hook, Seen, intercept};
use crate::runner::TokioClock;

const DAY_MS: i64 = 86_400_000;

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// `n` secrets `s0..` with `schedule` (TOML lines), each rotated into a local vault and an
/// env file of its own (no child processes: the clock is paused).
fn config(n: usize, schedule: &str) -> String {
    let mut text = String::from(
        "[journal]\npath = \"journal.db\"\n\n[providers.random]\nkind = \"random\"\n\n[providers.vault]\nkind = \"local_vault\"\npath = \"vault.json\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[providers.file{i}]\nkind = \"env_file\"\npath = \"app{i}.env\"\nkey = \"KEY\"\n\n[secrets.s{i}]\nrotator = \"random\"\nstores = [\"vault\"]\ndependents = [\"file{i}\"]\nverifiers = [\"file{i}\"]\ngrace = \"0s\"\n\n[secrets.s{i}.schedule]\n{schedule}\n"
        ));
    }
    text
}

/// A store whose seeded version expires at `expiry_ms`; versions rekey writes do not.
#[derive(Debug)]
struct Expiring {
    expiry_ms: i64,
    written: AtomicBool,
}

impl Hook for Expiring {
    fn around<'a, T: Send + 'a>(&'a self, seen: Seen, call: Reply<'a, T>) -> Reply<'a, T> {
        if seen.performs(Action::Write) {
            self.written.store(true, Ordering::SeqCst);
        }
        call
    }

    fn expiry(&self, _: Option<i64>) -> Option<i64> {
        (!self.written.load(Ordering::SeqCst)).then_some(self.expiry_ms)
    }
}

struct Paused {
    journal: Arc<MemoryJournal>,
    runner: Arc<Runner<MemoryJournal>>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    handle: Handle,
    done: tokio::task::JoinHandle<Summary>,
    /// What the API and the console read of the stores' expiries.
    expiries: rekey::daemon::Expiries,
}

async fn start(dir: &Path, text: &str, base_ms: i64, expiry_ms: Option<i64>) -> Paused {
    start_notifying(dir, text, base_ms, expiry_ms, false).await
}

/// As [`start`]; with `notify`, notices go to a webhook channel `ops` at a loopback port
/// nothing listens on (they stay due in the journal).
async fn start_notifying(
    dir: &Path,
    text: &str,
    base_ms: i64,
    expiry_ms: Option<i64>,
    notify: bool,
) -> Paused {
    let mut text = text.to_owned();
    if notify {
        text.push_str("\n[notifications.ops]\nkind = \"webhook\"\nurl_env = \"OPS_URL\"\n");
    }
    let text = text.as_str();
    std::fs::write(dir.join("rekey.toml"), text).unwrap();
    let config = Config::load(&dir.join("rekey.toml")).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(base_ms));
    let mut providers = config.build_providers(clock.clone(), &|_| None).unwrap();
    if let Some(expiry_ms) = expiry_ms {
        let inner = providers.roles("vault").unwrap().clone();
        let written = AtomicBool::new(false);
        providers =
            providers.with_roles("vault", intercept(inner, Expiring { expiry_ms, written }));
    }
    let journal = Arc::new(MemoryJournal::new(clock.clone()));
    let runner = Arc::new(Runner::new(
        journal.clone(),
        Arc::new(providers),
        clock.clone(),
        Options {
            sleep: Some(rekey::runner::tokio_sleep()),
            ..Options::new("paused-daemon", 1)
        },
    ));
    let channels = rekey::notify::channels(&config.notifications, &|_| {
        Some("http://127.0.0.1:9/hook".to_owned())
    })
    .unwrap();
    let config = Arc::new(config);
    let (daemon, handle) = Daemon::new(
        runner.clone(),
        journal.clone(),
        config.clone(),
        clock.clone(),
        Settings::new(8),
    );
    let daemon = if notify {
        daemon.with_notifier(Arc::new(rekey::notify::Notifier::new(
            journal.clone(),
            channels,
            reqwest::Client::new(),
            clock.clone(),
        )))
    } else {
        daemon
    };
    let expiries = daemon.api_state(Vec::new()).expiries;
    let done = tokio::spawn(async move { daemon.run().await.unwrap() });
    Paused {
        expiries,
        journal,
        runner,
        config,
        clock,
        handle,
        done,
    }
}

/// (secret, trigger, requested at) of every rotation, oldest first.
async fn rotations(journal: &MemoryJournal) -> Vec<(String, String, i64)> {
    let mut all: Vec<(String, String, i64)> = Vec::new();
    let streams = journal.streams(&StreamFilter::default()).await.unwrap();
    for s in streams
        .into_iter()
        .filter(|s| rekey::runner::lock::is_rotation_stream(&s.stream_id))
    {
        let first = &journal.read_stream(&s.stream_id).await.unwrap()[0];
        let requested: Value = serde_json::from_str(&first.payload).unwrap();
        all.push((
            s.subject.unwrap(),
            requested["trigger"].as_str().unwrap().to_owned(),
            first.recorded_at_ms,
        ));
    }
    all.sort_by_key(|r| r.2);
    all
}

/// Sleeps (paused: instantly) until `at_ms` on a clock that started at `base_ms`.
async fn sleep_until(base_ms: i64, start: tokio::time::Instant, at_ms: i64) {
    let offset = Duration::from_millis(u64::try_from(at_ms - base_ms).unwrap());
    tokio::time::sleep_until(start + offset).await;
}

#[tokio::test(start_paused = true)]
async fn a_new_schedule_waits_for_its_time_then_keeps_its_cadence() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ms("2026-03-01T10:00:00Z");
    let start_at = tokio::time::Instant::now();
    let d = start(
        tmp.path(),
        &config(
            1,
            "every_days = 1\nat = \"03:00\"\ntime_zone = \"Europe/Paris\"",
        ),
        base,
        None,
    )
    .await;
    // 03:00 in Paris is 02:00 UTC in March (before the switch to summer time).
    let first_due = ms("2026-03-02T02:00:00Z");
    sleep_until(base, start_at, first_due - 60_000).await;
    assert!(
        rotations(&d.journal).await.is_empty(),
        "rotated before it was due"
    );
    // `rekey status` and the API show the same due time, read from the journal.
    let rows = rekey::status::secrets(
        &*d.journal,
        &d.runner,
        &d.config.schedules,
        &["s0".to_owned()],
        d.clock.now_ms(),
    )
    .await
    .unwrap();
    let next = rows[0]
        .next_scheduled
        .as_ref()
        .expect("a next scheduled time");
    assert_eq!((next.at_ms, next.reason), (first_due, "cadence"));
    sleep_until(base, start_at, first_due + DAY_MS + 60_000).await;
    let done = rotations(&d.journal).await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done[0].1, "schedule");
    assert!(
        (first_due..first_due + 60_000).contains(&done[0].2),
        "{done:?}"
    );
    let second_due = first_due + DAY_MS;
    assert!(
        (second_due..second_due + 60_000).contains(&done[1].2),
        "{done:?}"
    );
    d.handle.signal();
    assert_eq!(d.done.await.unwrap().completed, 2);
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_secrets_due_at_the_same_hour() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ms("2026-06-01T12:00:00Z");
    let start_at = tokio::time::Instant::now();
    let n = 6;
    let d = start(
        tmp.path(),
        &config(
            n,
            "every_days = 1\nat = \"03:00\"\ntime_zone = \"UTC\"\njitter_minutes = 30",
        ),
        base,
        None,
    )
    .await;
    let due = ms("2026-06-02T03:00:00Z");
    sleep_until(base, start_at, due + 31 * 60_000).await;
    let done = rotations(&d.journal).await;
    assert_eq!(done.len(), n, "{done:?}");
    let mut starts: Vec<i64> = done.iter().map(|r| r.2).collect();
    for at in &starts {
        assert!((due..due + 31 * 60_000).contains(at), "{done:?}");
    }
    starts.dedup_by(|a, b| (*a - *b).abs() < 1_000);
    assert!(starts.len() >= n - 1, "not spread: {done:?}");
    d.handle.signal();
    d.done.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rotation_due_outside_its_window_waits_for_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ms("2026-03-02T10:00:00Z"); // a Monday
    let start_at = tokio::time::Instant::now();
    let d = start(
        tmp.path(),
        &config(
            1,
            "every_days = 1\nat = \"03:00\"\ntime_zone = \"UTC\"\nwindows = [{ days = [\"Sat\", \"Sun\"], hours = \"05:00-06:00\" }]",
        ),
        base,
        None,
    )
    .await;
    let saturday = ms("2026-03-07T05:00:00Z");
    sleep_until(base, start_at, saturday - 60_000).await;
    assert!(
        rotations(&d.journal).await.is_empty(),
        "rotated outside its window"
    );
    sleep_until(base, start_at, saturday + 60 * 60_000).await;
    let done = rotations(&d.journal).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(
        (saturday..saturday + 60 * 60_000).contains(&done[0].2),
        "{done:?}"
    );
    d.handle.signal();
    d.done.await.unwrap();
}

/// The expiry the stores report is what the API's readers (the console's Secrets page)
/// see, until a rotation replaces the version it was of.
#[tokio::test(start_paused = true)]
async fn the_reported_expiry_is_shared_with_the_api_until_a_rotation_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ms("2026-03-01T00:00:00Z");
    let expiry = base + 5 * DAY_MS;
    let start_at = tokio::time::Instant::now();
    let d = start(
        tmp.path(),
        &config(1, "every_days = 30\nbefore_expiry_days = 2\n"),
        base,
        Some(expiry),
    )
    .await;
    sleep_until(base, start_at, base + 60_000).await;
    assert_eq!(d.expiries.get("s0"), Some(expiry));
    // Rotated two days ahead; the new version does not expire.
    sleep_until(base, start_at, expiry - 2 * DAY_MS + 120_000).await;
    assert_eq!(rotations(&d.journal).await.len(), 1);
    assert_eq!(d.expiries.get("s0"), None);
    d.handle.signal();
    d.done.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expiry_rotates_ahead_and_a_freeze_pushes_the_rotation_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ms("2026-03-01T00:00:00Z");
    let expiry = base + 5 * DAY_MS;
    // Without a freeze: rotated two days ahead of the expiry, not at the 30-day cadence.
    let start_at = tokio::time::Instant::now();
    let d = start(
        tmp.path(),
        &config(1, "every_days = 30\nbefore_expiry_days = 2\n"),
        base,
        Some(expiry),
    )
    .await;
    sleep_until(base, start_at, expiry - 2 * DAY_MS + 60_000).await;
    let done = rotations(&d.journal).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].1, "near_expiry");
    assert!(
        (expiry - 2 * DAY_MS..expiry - 2 * DAY_MS + 60_000).contains(&done[0].2),
        "{done:?}"
    );
    // The new version does not expire: no second rotation before the cadence.
    sleep_until(base, start_at, expiry + 2 * DAY_MS).await;
    assert_eq!(rotations(&d.journal).await.len(), 1);
    d.handle.signal();
    d.done.await.unwrap();

    // With a freeze over the due time: nothing inside it; rotated when it ends.
    let tmp = tempfile::tempdir().unwrap();
    let start_at = tokio::time::Instant::now();
    let base = base + 100 * DAY_MS;
    let expiry = base + 5 * DAY_MS;
    let freeze_until = base + 10 * DAY_MS;
    let freeze = format!(
        "every_days = 30\nbefore_expiry_days = 2\nfreezes = [{{ from = \"{}\", until = \"{}\" }}]\n",
        jiff::Timestamp::from_millisecond(base + DAY_MS).unwrap(),
        jiff::Timestamp::from_millisecond(freeze_until).unwrap(),
    );
    let d = start_notifying(tmp.path(), &config(1, &freeze), base, Some(expiry), true).await;
    sleep_until(base, start_at, freeze_until - 60_000).await;
    assert!(
        rotations(&d.journal).await.is_empty(),
        "rotated inside the freeze"
    );
    // The expiry inside the freeze was announced, not passed over in silence.
    let notices: Vec<String> = d
        .journal
        .streams(&StreamFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stream_id)
        .filter(|id| id.starts_with("notice:ops:"))
        .collect();
    assert!(
        notices.contains(&format!("notice:ops:s0:upcoming:expiry:{expiry}")),
        "{notices:?}"
    );
    sleep_until(base, start_at, freeze_until + 60_000).await;
    let done = rotations(&d.journal).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].2 >= freeze_until, "{done:?}");
    d.handle.signal();
    d.done.await.unwrap();
}
