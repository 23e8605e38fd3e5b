//! `rekey run`: the daemon. One loop owns every decision about what to drive next; all
//! inputs (requests from the API and webhook, finished drives, timers, signals) are turned
//! into one closed [`Input`] enum in one `select!`, so the order of events is easy to follow
//! and to test. The journal stays the only source of truth: at start the daemon resumes
//! every open rotation, and a crash at any moment loses nothing that `resume` cannot redo.
//!
//! Shutdown: the first signal stops taking triggers and lets started steps reach their
//! outcome event (the runner stops between steps); a second signal returns at once, which
//! is as safe as a crash.

pub mod api;
pub mod events;
pub mod fleet_api;
pub mod fleet_run;
pub mod history_api;
pub mod leader;
pub mod metrics;
pub mod schedules;
pub mod serve;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rekey_journal::Clock;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::notify::Notifier;
use crate::provider::ProviderError;
use crate::runner::{Progress, Requested, Runner, RunnerJournal};
use crate::saga::{Phase, Trigger};
use crate::triggers::eventgrid::Delivery;
use crate::triggers::schedule::{Alert, Due, DueReason};

/// How often the journal is scanned for open rotations, by default.
pub const RESCAN_MS_DEFAULT: i64 = 30_000;
/// The actor of scheduled rotations.
pub const SCHEDULE_ACTOR: &str = "schedule";
/// Retry a rotation whose drive failed (journal busy, a bug) after this long.
pub const DRIVE_ERROR_RETRY_MS: i64 = 30_000;
/// Look again at a rotation another runner holds after this long.
pub const BUSY_RETRY_MS: i64 = 1_000;
/// Requests waiting for the loop before callers are made to wait.
pub const INBOX_CAPACITY: usize = 1_024;

/// Why the daemon cannot serve a request or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Runner(#[from] crate::runner::Error),
    #[error("the daemon is shutting down; the request was not taken (try again after restart)")]
    ShuttingDown,
    #[error(
        "[daemon] {key} names {var}, whose value is too short: a token needs at least {min} characters (it has {chars}); export a long random one, e.g. $(openssl rand -hex 32)",
        min = api::TOKEN_CHARS_MIN
    )]
    ShortToken {
        key: String,
        var: String,
        chars: usize,
    },
    #[error("cannot serve HTTP on {addr}: {cause}")]
    Serve { addr: String, cause: String },
}

/// One thing for the loop to handle.
#[derive(Debug)]
pub enum Input {
    /// Open (or coalesce into) a rotation of `secret`.
    Request {
        secret: String,
        trigger: Trigger,
        actor: String,
        reply: oneshot::Sender<Result<Requested, Error>>,
    },
    /// Open (or coalesce into) a rotation of a plan made elsewhere (a fleet rotation).
    RequestPlan {
        plan: Box<crate::saga::Plan>,
        trigger: Trigger,
        actor: String,
        reply: oneshot::Sender<Result<Requested, Error>>,
    },
    /// A drive task returned.
    Drove {
        rotation_id: String,
        result: Result<Progress, crate::runner::Error>,
    },
    /// Key Vault events from the webhook, to be journaled before the reply.
    Webhook(Delivery),
    /// A store answered when a scheduled secret's current version expires.
    Expiry {
        secret: String,
        /// The secret's rotation count when the poll started: a rotation that ended
        /// since makes the answer stale (it was the old version's).
        generation: u64,
        result: Result<Option<i64>, ProviderError>,
    },
    /// The earliest timer is due.
    Wake,
    /// This node began or ceased to hold the leader lease.
    Leadership { leading: bool },
    /// An unattended fleet run discovered and planned (or could not).
    FleetPlanned(Box<Result<crate::fleet::rotate::Unattended, String>>),
    /// SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one.
    Signal { count: u32 },
}

/// A cheap, cloneable way to talk to a running daemon.
#[derive(Debug, Clone)]
pub struct Handle {
    inbox: mpsc::Sender<Input>,
    signals: Arc<watch::Sender<u32>>,
}

impl Handle {
    /// Requests a rotation of `secret`; waits while the inbox is full (bulk requests
    /// queue instead of failing).
    ///
    /// # Errors
    /// Unknown secret, journal errors, or [`Error::ShuttingDown`].
    pub async fn rotate(
        &self,
        secret: &str,
        trigger: Trigger,
        actor: &str,
    ) -> Result<Requested, Error> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Input::Request {
                secret: secret.to_owned(),
                trigger,
                actor: actor.to_owned(),
                reply,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Requests a rotation of `plan` (a fleet rotation: its targets by address), driven
    /// like every other.
    ///
    /// # Errors
    /// Journal errors, or [`Error::ShuttingDown`].
    pub async fn request_plan(
        &self,
        plan: crate::saga::Plan,
        trigger: Trigger,
        actor: &str,
    ) -> Result<Requested, Error> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Input::RequestPlan {
                plan: Box::new(plan),
                trigger,
                actor: actor.to_owned(),
                reply,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Delivers a stop signal (what SIGTERM and SIGINT do).
    pub fn signal(&self) {
        self.signals.send_modify(|n| *n += 1);
    }

    /// Resolves once the daemon has been asked to stop (at once if it has been), so that
    /// long-lived responses (progress streams) end and let the server stop.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut signals = self.signals.subscribe();
        async move {
            let _ = signals.wait_for(|n| *n >= 1).await;
        }
    }
}

/// What the daemon needs besides the runner.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rotations driven at once; more wait their turn.
    pub max_concurrent: usize,
    /// An upcoming notice goes out this long before a scheduled rotation.
    pub notice_before_ms: i64,
    /// The journal is scanned for open rotations this often (and at start): one another
    /// node, or a killed `rekey rotate`, left is taken up here once its lease lapsed.
    pub rescan_ms: i64,
}

impl Settings {
    /// `max_concurrent` rotations at once, notices three days ahead.
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            max_concurrent,
            notice_before_ms: 3 * 86_400_000,
            rescan_ms: RESCAN_MS_DEFAULT,
        }
    }
}

/// Steps failing this many attempts in a row are reported as stuck (then at each doubling).
pub const STUCK_ATTEMPTS: u32 = 3;
/// Rotations that ended this long before a start get their missing notices then.
pub const NOTICE_CATCH_UP_MS: i64 = 7 * 86_400_000;
/// Due notices are looked for at least this often (other processes may journal some).
pub const NOTICE_POLL_MS: i64 = 60_000;

/// How a run ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub completed: u64,
    pub compensated: u64,
    /// Rotations left open for the next start or `resume`.
    pub left_open: usize,
    /// True when a second signal cut the graceful stop short.
    pub immediate: bool,
}

/// When each scheduled secret's current version expires, as its stores last reported it
/// (polled for schedules with `before_expiry_days`); known only while the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Expiries(Arc<std::sync::Mutex<std::collections::BTreeMap<String, i64>>>);

impl Expiries {
    /// The expiry last reported for `secret`.
    pub fn get(&self, secret: &str) -> Option<i64> {
        self.0.lock().expect("expiries").get(secret).copied()
    }

    fn set(&self, secret: &str, expiry_ms: Option<i64>) {
        let mut map = self.0.lock().expect("expiries");
        match expiry_ms {
            Some(at) => map.insert(secret.to_owned(), at),
            None => map.remove(secret),
        };
    }
}

/// The daemon: its loop state. Build with [`Daemon::new`], then [`Daemon::run`].
pub struct Daemon<J: RunnerJournal + 'static> {
    runner: Arc<Runner<J>>,
    journal: Arc<J>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    inbox: mpsc::Receiver<Input>,
    handle: Handle,
    signals: watch::Receiver<u32>,
    ready: Arc<AtomicBool>,
    /// Shared with the API: an on-demand discovery is running.
    discovering: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<(String, Result<Progress, crate::runner::Error>)>,
    /// Rotations with a drive task now.
    active: HashSet<String>,
    /// Rotations waiting for a time: (due, rotation).
    waiting: BTreeSet<(i64, String)>,
    /// The due time of each waiting rotation, to replace its entry.
    waiting_at: HashMap<String, i64>,
    /// Each scheduled secret's state; its due time is re-derived from the journal.
    scheduled: HashMap<String, Scheduled>,
    /// The expiry each scheduled secret's stores last reported, for the API's readers.
    expiries: Expiries,
    polls: JoinSet<(String, u64, Result<Option<i64>, ProviderError>)>,
    webhook_tx: mpsc::Sender<Delivery>,
    webhook: mpsc::Receiver<Delivery>,
    notifier: Option<Arc<Notifier<J>>>,
    /// Vault names of events no store names, already logged.
    unknown_vaults: events::UnknownVaults,
    /// Wakes the delivery task when a notice was journaled.
    kick: Arc<tokio::sync::Notify>,
    /// The leader lease, when several nodes may share the journal; `None`: this node
    /// always does the singleton duties.
    leadership: Option<Arc<leader::Leadership>>,
    /// Tells the loop when this node starts or stops leading.
    leading: Option<watch::Receiver<bool>>,
    /// When to scan the journal for open rotations next.
    rescan_at_ms: i64,
    /// Delivers notices while this node leads.
    deliverer: Option<tokio::task::JoinHandle<()>>,
    /// The singleton duties run here now.
    duties: bool,
    /// When the next unattended fleet run is due, while this node leads and
    /// `[fleet] discover_every` is set.
    fleet_at_ms: Option<i64>,
    /// The unattended fleet run in progress (at most one).
    fleet_runs: JoinSet<Result<crate::fleet::rotate::Unattended, String>>,
    summary: Summary,
}

/// One scheduled secret as the loop sees it.
#[derive(Debug, Clone, Default)]
struct Scheduled {
    adopted_ms: i64,
    /// `None` while a rotation of it is open (its end computes the next one).
    due: Option<Due>,
    expiry_ms: Option<i64>,
    /// When to ask its stores for the expiry again.
    poll_at_ms: i64,
    /// The due time an upcoming notice was journaled for.
    noticed_at_ms: Option<i64>,
    /// Rotations of it that ended while this daemon ran; stamps expiry polls.
    generation: u64,
}

impl<J: RunnerJournal + 'static> std::fmt::Debug for Daemon<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("active", &self.active.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<J: RunnerJournal + 'static> Daemon<J> {
    /// A daemon over `runner` and its `journal`; the handle talks to it once it runs.
    pub fn new(
        runner: Arc<Runner<J>>,
        journal: Arc<J>,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> (Self, Handle) {
        let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let (signal_tx, signals) = watch::channel(0);
        let handle = Handle {
            inbox: tx,
            signals: Arc::new(signal_tx),
        };
        let permits = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
        let (webhook_tx, webhook) = mpsc::channel(INBOX_CAPACITY);
        let daemon = Self {
            runner,
            journal,
            config,
            clock,
            settings,
            inbox,
            handle: handle.clone(),
            signals,
            ready: Arc::new(AtomicBool::new(false)),
            discovering: Arc::new(AtomicBool::new(false)),
            expiries: Expiries::default(),
            permits,
            tasks: JoinSet::new(),
            active: HashSet::new(),
            waiting: BTreeSet::new(),
            waiting_at: HashMap::new(),
            scheduled: HashMap::new(),
            polls: JoinSet::new(),
            webhook_tx,
            webhook,
            notifier: None,
            unknown_vaults: events::UnknownVaults::default(),
            kick: Arc::new(tokio::sync::Notify::new()),
            leadership: None,
            leading: None,
            deliverer: None,
            rescan_at_ms: 0,
            duties: false,
            fleet_at_ms: None,
            fleet_runs: JoinSet::new(),
            summary: Summary::default(),
        };
        (daemon, handle)
    }

    /// True once every open rotation found at start has been taken up (`/readyz`).
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Sends notices through `notifier` (completed, compensated, stuck, upcoming).
    #[must_use]
    pub fn with_notifier(mut self, notifier: Arc<Notifier<J>>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Does the singleton duties (schedules, expiry polls, notice delivery) only while
    /// holding the leader lease of `leadership`.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Arc<leader::Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Whether this node may do the singleton duties now.
    fn leads(&self) -> bool {
        self.leadership
            .as_ref()
            .is_none_or(|l| l.leads(self.clock.now_ms()))
    }

    /// Where the Event Grid webhook hands its deliveries.
    pub fn webhook_sink(&self) -> mpsc::Sender<Delivery> {
        self.webhook_tx.clone()
    }

    /// The state the HTTP API reads from.
    pub fn api_state(&self, api_tokens: Vec<crate::provider::SecretValue>) -> api::State<J> {
        api::State {
            handle: self.handle.clone(),
            runner: self.runner.clone(),
            journal: self.journal.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            tokens: Arc::new(api_tokens),
            viewer_tokens: Arc::new(Vec::new()),
            expiries: self.expiries.clone(),
            ready: self.ready.clone(),
            discovering: self.discovering.clone(),
            metrics: None,
            leadership: self.leadership.clone(),
        }
    }

    /// Runs until signalled: resumes every open rotation, then serves inputs.
    ///
    /// # Errors
    /// Journal errors while finding open rotations at start.
    pub async fn run(mut self) -> Result<Summary, Error> {
        // Each open rotation's drive starts as soon as it is found (summary rows first,
        // then what only a busy lock names), not after the whole set is listed.
        let runner = self.runner.clone();
        let found = runner
            .each_open_rotation(|open| self.spawn_drive(open.rotation_id))
            .await?;
        info!(found, "open rotations taken up");
        let now = self.clock.now_ms();
        self.rescan_at_ms = now + self.settings.rescan_ms;
        let names: Vec<String> = self.config.schedules.keys().cloned().collect();
        for secret in names {
            let adopted_ms = schedules::adopted_at(&*self.journal, &secret, now)
                .await
                .map_err(crate::runner::Error::from)?;
            self.scheduled.insert(
                secret.clone(),
                Scheduled {
                    adopted_ms,
                    poll_at_ms: now,
                    ..Scheduled::default()
                },
            );
            self.reschedule(&secret).await;
        }
        let campaign = self.leadership.clone().map(|l| {
            self.leading = Some(l.watch());
            let (journal, clock) = (self.journal.clone(), self.clock.clone());
            tokio::spawn(async move { l.campaign(&*journal, &*clock).await })
        });
        if self.leadership.is_none() {
            self.start_duties(now).await;
        }
        self.ready.store(true, Ordering::Release);
        info!(
            open = self.active.len(),
            max_concurrent = self.settings.max_concurrent,
            "daemon running"
        );
        loop {
            let input = self.next_input().await;
            if let Input::Signal { count } = input {
                if count >= 1 {
                    // Notices not yet delivered stay due in the journal for the next start.
                    self.stop_duties();
                    if let (Some(c), Some(l)) = (&campaign, &self.leadership) {
                        c.abort();
                        l.resign(&*self.journal).await;
                    }
                    return Ok(self.stop_gracefully().await);
                }
                continue;
            }
            self.handle_input(input).await;
        }
    }

    /// Takes up the singleton duties: every schedule derived again from the journal
    /// (another node may have fired or ended rotations meanwhile), expiry polls due now,
    /// notices caught up on and delivered.
    async fn start_duties(&mut self, now: i64) {
        self.stop_duties();
        self.duties = true;
        let names: Vec<String> = self.scheduled.keys().cloned().collect();
        for secret in names {
            if let Some(s) = self.scheduled.get_mut(&secret) {
                s.poll_at_ms = now;
                s.noticed_at_ms = None;
            }
            self.reschedule(&secret).await;
        }
        let every = self.config.fleet.as_ref().and_then(|f| f.discover_every_ms);
        self.fleet_at_ms = match every {
            None => None,
            Some(every) => match fleet_run::last_discovery_ms(&*self.journal).await {
                Ok(last) => Some(fleet_run::next_run_ms(now, every, last)),
                Err(e) => {
                    warn!(error = %e, "cannot read the last discovery's time; discovering later");
                    Some(now + every)
                }
            },
        };
        if let Some(at_ms) = self.fleet_at_ms {
            info!(at_ms, "next unattended fleet run");
        }
        self.deliverer = self.notifier.clone().map(|notifier| {
            let (kick, clock) = (self.kick.clone(), self.clock.clone());
            tokio::spawn(async move {
                match notifier.catch_up(now - NOTICE_CATCH_UP_MS).await {
                    Ok(0) => {}
                    Ok(n) => info!(notices = n, "journaled notices a crash had left out"),
                    Err(e) => warn!(error = %e, "cannot catch up on notices"),
                }
                deliver(&notifier, &kick, &*clock).await;
            })
        });
    }

    /// Leaves the singleton duties to the next leader: no delivery, no expiry poll.
    fn stop_duties(&mut self) {
        self.duties = false;
        self.fleet_at_ms = None;
        self.fleet_runs.abort_all();
        if let Some(d) = self.deliverer.take() {
            d.abort();
        }
        self.polls.abort_all();
    }

    /// Starts the unattended fleet run when it is due and this node leads.
    fn start_fleet_run(&mut self) {
        let now = self.clock.now_ms();
        if !self.duties
            || !self.fleet_runs.is_empty()
            || self.fleet_at_ms.is_none_or(|at| at > now)
            || !self.leads()
        {
            return;
        }
        info!("unattended fleet run: discovering");
        let (config, clock) = (self.config.clone(), self.clock.clone());
        self.fleet_runs.spawn(fleet_run::plan(config, clock));
    }

    /// Journals the run's discovery, requests the due rotations within the fleet's
    /// limits, journals its notices, and sets the next run.
    async fn fleet_planned(&mut self, result: Result<crate::fleet::rotate::Unattended, String>) {
        let now = self.clock.now_ms();
        let Some(fleet) = self.config.fleet.clone() else {
            return;
        };
        let every = fleet.discover_every_ms.unwrap_or(i64::MAX);
        if !self.duties || !self.leads() {
            info!(
                "unattended fleet run ended after this node stopped leading; its result is dropped"
            );
            return;
        }
        self.fleet_at_ms = Some(now.saturating_add(every));
        let run = match result {
            Ok(run) => run,
            Err(why) => {
                error!(
                    error = why,
                    "unattended fleet run failed; trying again at the next run"
                );
                return;
            }
        };
        if let Err(e) = crate::fleet::journal::record(&*self.journal, &run.discovery).await {
            error!(error = %e, "cannot journal the unattended discovery; trying again at the next run");
            return;
        }
        let mut notices = Vec::new();
        let (taken, deferred) = fleet_run::within_limits(
            &run.due.rotations,
            fleet.rotation.max_concurrent,
            fleet.rotation.max_concurrent_per_tenant,
        );
        if deferred > 0 {
            info!(
                deferred,
                "fleet rotations past [fleet.rotation] max_concurrent wait for the next run"
            );
        }
        let (mut started, mut coalesced) = (0, 0);
        for r in taken {
            // Rotating already (the lock coalesces it), or a rotation of it ended while
            // discovery read the tenant (the plan may name a password already retired):
            // the next run decides anew.
            if self
                .lock_busy(&r.plan.lock_key, run.discovery.started_ms)
                .await
            {
                coalesced += 1;
                continue;
            }
            match self
                .request_planned(r.plan.clone(), Trigger::NearExpiry, fleet_run::FLEET_ACTOR)
                .await
            {
                Ok(Requested::Started { rotation_id }) => {
                    started += 1;
                    notices.push(fleet_run::started_notice(r, &rotation_id, now));
                }
                // Already rotating (its lock is held): nothing new to say.
                Ok(Requested::Coalesced { .. }) => coalesced += 1,
                Err(e) => {
                    error!(app_id = r.app_id, error = %e, "cannot request the fleet rotation; trying again at the next run");
                }
            }
        }
        let since = run.discovery.started_ms;
        // Read up front: the notices are decided by a plain function.
        let mut busy_apps: HashMap<String, bool> = HashMap::new();
        let apps = (run.ahead.refused.iter().map(|r| &r.app_id))
            .chain(run.ahead.rotations.iter().map(|r| &r.app_id));
        for app_id in apps {
            if !busy_apps.contains_key(app_id) {
                let lock = crate::fleet::plan::entra_app_lock_key(app_id);
                let busy = self.lock_busy(&lock, since).await;
                busy_apps.insert(app_id.clone(), busy);
            }
        }
        let mut busy = |app_id: &str| busy_apps.get(app_id).copied().unwrap_or(true);
        notices.extend(fleet_run::notices(
            &run,
            fleet.days_before_expiry,
            &mut busy,
        ));
        info!(
            discovery = run.discovery.run_id,
            started,
            coalesced,
            refused = run.due.refused.len(),
            "unattended fleet run done"
        );
        let Some(notifier) = &self.notifier else {
            return;
        };
        let mut created = 0;
        for n in notices {
            match notifier
                .fleet(
                    &n.dedup,
                    &n.credential,
                    n.outcome,
                    n.reason.as_deref(),
                    n.rotation_id.as_deref(),
                    n.at_ms,
                )
                .await
            {
                Ok(k) => created += k,
                Err(e) => warn!(error = %e, "cannot journal a fleet notice"),
            }
        }
        if created > 0 {
            self.kick.notify_one();
        }
    }

    /// Whether a rotation holds `lock_key` now or held it at or after `since_ms` (an
    /// unreadable lock counts as busy: nothing is requested or said on a guess).
    async fn lock_busy(&self, lock_key: &str, since_ms: i64) -> bool {
        let lock = crate::runner::lock::stream_id(lock_key);
        match self.journal.stream_info(&lock).await {
            Ok(Some(info)) => {
                info.status == crate::runner::lock::BUSY || info.updated_at_ms >= since_ms
            }
            Ok(None) => false,
            Err(e) => {
                error!(lock_key, error = %e, "cannot read a lock; trying again at the next run");
                true
            }
        }
    }

    /// Journals notices about a rotation `drive` left; errors are logged, never fatal.
    async fn notice_rotation(&self, rotation_id: &str, ended: bool) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let Ok((state, _)) = self.runner.load(rotation_id).await else {
            return;
        };
        let created = if ended {
            notifier
                .rotation_ended(
                    rotation_id,
                    &state.plan.secret,
                    state.phase == Phase::Completed,
                    state.compensation_reason.as_deref(),
                )
                .await
        } else {
            notifier.steps_stuck(&state, STUCK_ATTEMPTS).await
        };
        match created {
            Ok(0) => {}
            Ok(_) => self.kick.notify_one(),
            Err(e) => warn!(rotation_id, error = %e, "cannot journal a notice"),
        }
    }

    async fn notice_upcoming(&self, secret: &str, what: &str, at_ms: i64) {
        if let Some(notifier) = &self.notifier {
            match notifier.upcoming(secret, what, at_ms).await {
                Ok(0) => {}
                Ok(_) => self.kick.notify_one(),
                Err(e) => warn!(secret, error = %e, "cannot journal a notice"),
            }
        }
    }

    /// The one `select!`: everything the loop reacts to becomes an [`Input`].
    async fn next_input(&mut self) -> Input {
        let wake_in = self.wake_in();
        tokio::select! {
            Some(leading) = changed(self.leading.as_mut()) => Input::Leadership { leading },
            changed = self.signals.changed() => match changed {
                Ok(()) => Input::Signal { count: *self.signals.borrow_and_update() },
                // Every handle is gone: nobody can signal or request any more.
                Err(_) => Input::Signal { count: 1 },
            },
            Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => match joined {
                Ok((rotation_id, result)) => Input::Drove { rotation_id, result },
                Err(e) => {
                    // A drive task panicked: its rotation is still in the journal.
                    error!(error = %e, "a drive task failed; its rotation is resumed at the next start");
                    Input::Wake
                }
            },
            Some(input) = self.inbox.recv() => input,
            Some(joined) = self.fleet_runs.join_next(), if !self.fleet_runs.is_empty() => {
                match joined {
                    Ok(result) => Input::FleetPlanned(Box::new(result)),
                    // Aborted when this node stopped leading.
                    Err(_) => Input::Wake,
                }
            }
            Some(delivery) = self.webhook.recv() => Input::Webhook(delivery),
            Some(Ok((secret, generation, result))) = self.polls.join_next(), if !self.polls.is_empty() => {
                Input::Expiry { secret, generation, result }
            }
            () = sleep_ms(wake_in), if wake_in.is_some() => Input::Wake,
        }
    }

    async fn handle_input(&mut self, input: Input) {
        match input {
            Input::Request {
                secret,
                trigger,
                actor,
                reply,
            } => {
                let result = self.request(&secret, trigger, &actor).await;
                let _ = reply.send(result);
            }
            Input::RequestPlan {
                plan,
                trigger,
                actor,
                reply,
            } => {
                let result = self.request_planned(*plan, trigger, &actor).await;
                let _ = reply.send(result);
            }
            Input::Drove {
                rotation_id,
                result,
            } => self.drove(rotation_id, result).await,
            Input::Webhook(delivery) => {
                let result = self.webhook_delivery(&delivery.events).await;
                let _ = delivery.reply.send(result);
            }
            Input::Expiry {
                secret,
                generation,
                result,
            } => {
                let now = self.clock.now_ms();
                let Some(s) = self.scheduled.get_mut(&secret) else {
                    return;
                };
                if s.generation != generation {
                    return;
                }
                match result {
                    Ok(expiry) => {
                        s.expiry_ms = expiry;
                        self.expiries.set(&secret, expiry);
                    }
                    Err(e) => warn!(secret, error = %e, "cannot read the current version's expiry"),
                }
                s.poll_at_ms = now + schedules::EXPIRY_POLL_MS;
                self.reschedule(&secret).await;
            }
            Input::Wake => {
                self.wake();
                self.rescan().await;
                self.run_schedules().await;
                self.start_fleet_run();
            }
            Input::FleetPlanned(result) => self.fleet_planned(*result).await,
            Input::Leadership { leading } => {
                let node = self.leadership.as_ref().map(|l| l.node().to_owned());
                if leading {
                    info!(
                        node,
                        "leading: schedules, expiry polls and notices run here"
                    );
                    self.start_duties(self.clock.now_ms()).await;
                } else {
                    info!(
                        node,
                        "not leading: schedules, expiry polls and notices stop here"
                    );
                    self.stop_duties();
                }
            }
            Input::Signal { .. } => {}
        }
    }

    async fn request(
        &mut self,
        secret: &str,
        trigger: Trigger,
        actor: &str,
    ) -> Result<Requested, Error> {
        let plan = self.config.plan(secret)?.clone();
        self.request_planned(plan, trigger, actor).await
    }

    async fn request_planned(
        &mut self,
        plan: crate::saga::Plan,
        trigger: Trigger,
        actor: &str,
    ) -> Result<Requested, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let requested = self.runner.request(plan, trigger, actor, id).await?;
        let id = match &requested {
            Requested::Started { rotation_id } => rotation_id.clone(),
            Requested::Coalesced { into } => into.clone(),
        };
        self.spawn_drive(id);
        Ok(requested)
    }

    /// Fires `secret`'s schedule once per slot: the slot is the rotation it counts from
    /// (the last that ended), and a request for it already made (by a node that led
    /// before) is found in the lock stream, not made again.
    async fn request_scheduled(&mut self, secret: &str, trigger: Trigger) -> Result<(), Error> {
        let plan = self.config.plan(secret)?.clone();
        let after = schedules::last_ended(&*self.journal, secret)
            .await
            .map_err(crate::runner::Error::from)?;
        let id = uuid::Uuid::now_v7().to_string();
        let requested = self
            .runner
            .request_once(plan, trigger, SCHEDULE_ACTOR, id, after.as_deref())
            .await?;
        let id = match requested {
            Requested::Started { rotation_id } => rotation_id,
            Requested::Coalesced { into } => into,
        };
        self.spawn_drive(id);
        Ok(())
    }

    /// Journals each event and starts what it asks for; `Err` makes Event Grid deliver
    /// the batch again (events already handled are then recognised by id, and a request
    /// already made for an event is found in its lock stream, never made twice).
    async fn webhook_delivery(
        &mut self,
        events: &[crate::triggers::eventgrid::KeyVaultEvent],
    ) -> Result<(), String> {
        for event in events {
            let event_id = events::short(&event.id);
            let duplicate = events::seen(&*self.journal, &event.id)
                .await
                .map_err(|e| e.to_string())?;
            if duplicate {
                info!(event_id, "event delivered again; already handled");
                continue;
            }
            let decision = events::decide(&self.config, &*self.journal, event)
                .await
                .map_err(|e| e.to_string())?;
            let outcome = match decision {
                events::Decision::Rotate { secret } => {
                    let actor = events::stream_id(&event.id);
                    let plan = self.config.plan(&secret).map_err(|e| e.to_string())?;
                    let before = events::requested_before(&*self.journal, &plan.lock_key, &actor)
                        .await
                        .map_err(|e| e.to_string())?;
                    let requested = match before {
                        Some(requested) => {
                            info!(
                                event_id,
                                "event delivered again; its rotation was requested before"
                            );
                            Ok(requested)
                        }
                        None => self.request(&secret, Trigger::NearExpiry, &actor).await,
                    };
                    match requested {
                        Ok(Requested::Started { rotation_id }) => format!("started {rotation_id}"),
                        Ok(Requested::Coalesced { into }) => format!("coalesced into {into}"),
                        Err(e) => return Err(format!("event {event_id}: {e}")),
                    }
                }
                events::Decision::Ignore { why } => {
                    let kind = events::short(event.kind.as_str());
                    info!(event_id, kind, why, "event ignored");
                    format!("ignored: {why}")
                }
                events::Decision::UnknownVault { why } => {
                    let kind = events::short(event.kind.as_str());
                    info!(event_id, kind, why, "event ignored");
                    self.log_unknown_vault(&event.vault);
                    format!("ignored: {why}")
                }
            };
            events::record(&*self.journal, event, &outcome)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Warns, once per vault name, that an event names a vault no store names: the
    /// config may lack a `vault_name`, or the subscription sends other vaults' events.
    fn log_unknown_vault(&mut self, vault: &str) {
        match self.unknown_vaults.log(vault) {
            events::UnknownVaultLog::First => warn!(
                vault = events::short(vault),
                known = events::known_vaults(&self.config),
                "Key Vault events name a vault that no key_vault store names: they are journaled as ignored; if it is one of yours, set vault_name on its store (logged once per vault)"
            ),
            events::UnknownVaultLog::TooMany => warn!(
                limit = events::UNKNOWN_VAULTS_LOGGED_MAX,
                "Key Vault events name more unknown vaults than are logged; further ones are journaled as ignored without a log line"
            ),
            events::UnknownVaultLog::Again => {}
        }
    }

    /// Re-derives `secret`'s due time from the journal.
    async fn reschedule(&mut self, secret: &str) {
        let now = self.clock.now_ms();
        let (Some(schedule), Some(state)) = (
            self.config.schedules.get(secret),
            self.scheduled.get(secret),
        ) else {
            return;
        };
        let due = match schedules::history(&*self.journal, secret).await {
            Ok(h) if h.open => None,
            Ok(h) => Some(schedules::next_due(
                schedule,
                secret,
                now,
                state.adopted_ms,
                h,
                state.expiry_ms,
            )),
            Err(e) => {
                error!(secret, error = %e, "cannot read the journal to schedule; trying later");
                None
            }
        };
        if let Some(d) = &due {
            info!(secret, at_ms = d.at_ms, reason = ?d.reason, "next scheduled rotation");
        }
        if let Some(s) = self.scheduled.get_mut(secret) {
            s.due = due;
        }
    }

    /// Starts the scheduled rotations that are due and the expiry polls that are.
    async fn run_schedules(&mut self) {
        if !self.leads() {
            return;
        }
        let now = self.clock.now_ms();
        let mut due_now = Vec::new();
        for (secret, s) in &mut self.scheduled {
            if s.poll_at_ms <= now {
                s.poll_at_ms = i64::MAX;
                if let Ok(plan) = self.config.plan(secret) {
                    let (runner, plan, secret) =
                        (self.runner.clone(), plan.clone(), secret.clone());
                    let generation = s.generation;
                    self.polls
                        .spawn(async move { (secret, generation, runner.expiry(&plan).await) });
                }
            }
            if let Some(d) = s.due.as_ref().filter(|d| d.at_ms <= now) {
                due_now.push((secret.clone(), *d));
            }
        }
        let ahead = self.settings.notice_before_ms;
        let mut upcoming = Vec::new();
        for (secret, s) in &mut self.scheduled {
            if let Some(d) = s.due.as_ref().filter(|d| d.at_ms - ahead <= now)
                && s.noticed_at_ms != Some(d.at_ms)
            {
                s.noticed_at_ms = Some(d.at_ms);
                upcoming.push((secret.clone(), *d, s.expiry_ms));
            }
        }
        for (secret, due, expiry) in upcoming {
            self.notice_upcoming(&secret, "rotation", due.at_ms).await;
            if let (Some(alert), Some(expiry)) = (&due.alert, expiry) {
                warn!(
                    secret,
                    ?alert,
                    "the current version may expire before it is rotated"
                );
                self.notice_upcoming(&secret, "expiry", expiry).await;
            }
        }
        for (secret, due) in due_now {
            if let Some(s) = self.scheduled.get_mut(&secret) {
                s.due = None;
            }
            if let Some(alert) = &due.alert {
                warn!(secret, ?alert, "schedule alert");
                if matches!(alert, Alert::NoAllowedTime { .. }) {
                    continue;
                }
            }
            let trigger = match due.reason {
                DueReason::Cadence => Trigger::Schedule,
                DueReason::BeforeExpiry => Trigger::NearExpiry,
            };
            if !self.leads() {
                break;
            }
            if let Err(e) = self.request_scheduled(&secret, trigger).await {
                error!(secret, error = %e, "cannot start the scheduled rotation; trying later");
                if let Some(s) = self.scheduled.get_mut(&secret) {
                    s.poll_at_ms = now + DRIVE_ERROR_RETRY_MS;
                }
            }
        }
    }

    fn spawn_drive(&mut self, rotation_id: String) {
        if let Some(at) = self.waiting_at.remove(&rotation_id) {
            self.waiting.remove(&(at, rotation_id.clone()));
        }
        if !self.active.insert(rotation_id.clone()) {
            return;
        }
        let (runner, permits) = (self.runner.clone(), self.permits.clone());
        self.tasks.spawn(async move {
            // Queued, not refused, while the limit is reached.
            let _permit = permits.acquire_owned().await;
            let result = runner.drive(&rotation_id).await;
            (rotation_id, result)
        });
    }

    async fn drove(&mut self, rotation_id: String, result: Result<Progress, crate::runner::Error>) {
        self.active.remove(&rotation_id);
        let now = self.clock.now_ms();
        match result {
            Ok(Progress::Finished(phase)) => {
                info!(rotation_id, ?phase, "rotation ended");
                match phase {
                    Phase::Completed => self.summary.completed += 1,
                    Phase::Compensated => self.summary.compensated += 1,
                    _ => {}
                }
                self.notice_rotation(&rotation_id, true).await;
                let secret = self
                    .journal
                    .stream_info(&rotation_id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|i| i.subject);
                if let Some(secret) = secret {
                    // The expiry read before was the old version's: ask the stores again
                    // before scheduling by it.
                    if let Some(s) = self.scheduled.get_mut(&secret) {
                        s.expiry_ms = None;
                        self.expiries.set(&secret, None);
                        s.poll_at_ms = now;
                        s.generation += 1;
                    }
                    self.reschedule(&secret).await;
                }
            }
            Ok(Progress::Waiting { until_ms, reason }) => {
                info!(rotation_id, until_ms, ?reason, "rotation waiting");
                if reason == crate::saga::Wait::Backoff {
                    self.notice_rotation(&rotation_id, false).await;
                }
                self.wait(rotation_id, until_ms);
            }
            Ok(Progress::Busy { holder }) => {
                info!(rotation_id, holder, "rotation held by another runner");
                self.wait(rotation_id, now + BUSY_RETRY_MS);
            }
            Ok(Progress::Stopped) => {}
            Err(e) => {
                error!(rotation_id, error = %e, "driving the rotation failed; retrying later");
                self.wait(rotation_id, now + DRIVE_ERROR_RETRY_MS);
            }
        }
    }

    fn wait(&mut self, rotation_id: String, until_ms: i64) {
        self.waiting.insert((until_ms, rotation_id.clone()));
        self.waiting_at.insert(rotation_id, until_ms);
    }

    /// Milliseconds until the earliest timer (a waiting rotation, a due schedule, an
    /// expiry poll), if any.
    fn wake_in(&self) -> Option<u64> {
        let rotations = self.waiting.first().map(|(at, _)| *at);
        let ahead = self.settings.notice_before_ms;
        // A node that does not lead has no schedule to wake for (nor would it act).
        let leads = self.duties && self.leads();
        let schedules = self
            .scheduled
            .values()
            .filter(|_| leads)
            .flat_map(|s| {
                let notice = s
                    .due
                    .as_ref()
                    .filter(|d| s.noticed_at_ms != Some(d.at_ms))
                    .map(|d| d.at_ms - ahead);
                [s.due.as_ref().map(|d| d.at_ms), Some(s.poll_at_ms), notice]
            })
            .flatten()
            .filter(|at| *at != i64::MAX)
            .min();
        let fleet = self
            .fleet_at_ms
            .filter(|_| leads && self.fleet_runs.is_empty());
        let at = [rotations, schedules, fleet, Some(self.rescan_at_ms)]
            .into_iter()
            .flatten()
            .min()?;
        let ms = at.saturating_sub(self.clock.now_ms()).max(0);
        Some(u64::try_from(ms).unwrap_or(0))
    }

    /// Takes up, when due, every open rotation this node neither drives nor waits for:
    /// those another node or a killed command left (their lease decides who drives them).
    async fn rescan(&mut self) {
        let now = self.clock.now_ms();
        if now < self.rescan_at_ms {
            return;
        }
        self.rescan_at_ms = now + self.settings.rescan_ms;
        match self.runner.open_rotations().await {
            Ok(open) => {
                for rotation_id in open {
                    if !self.active.contains(&rotation_id)
                        && !self.waiting_at.contains_key(&rotation_id)
                    {
                        info!(rotation_id, "open rotation found by the rescan");
                        self.spawn_drive(rotation_id);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot scan the journal for open rotations"),
        }
    }

    fn wake(&mut self) {
        let now = self.clock.now_ms();
        while let Some((at, _)) = self.waiting.first() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = self.waiting.pop_first() {
                self.waiting_at.remove(&id);
                self.spawn_drive(id);
            }
        }
    }

    /// Stops taking inputs, lets drives reach a step boundary, and returns; a second
    /// signal returns at once.
    async fn stop_gracefully(mut self) -> Summary {
        info!(
            active = self.active.len(),
            "stopping: started steps finish, the rest is left for resume"
        );
        self.runner.stop();
        self.inbox.close();
        self.webhook.close();
        let first = *self.signals.borrow();
        loop {
            tokio::select! {
                changed = self.signals.changed() => {
                    let count = *self.signals.borrow_and_update();
                    if changed.is_err() || count > first {
                        warn!("second signal: exiting now; run `rekey resume` or start again");
                        self.summary.immediate = true;
                        self.tasks.abort_all();
                        break;
                    }
                }
                joined = self.tasks.join_next() => match joined {
                    Some(Ok((rotation_id, result))) => self.drove(rotation_id, result).await,
                    Some(Err(_)) => {}
                    None => break,
                },
            }
        }
        self.summary.left_open = self
            .runner
            .open_rotations()
            .await
            .map(|o| o.len())
            .unwrap_or(0);
        self.summary
    }
}

/// The next value of `leading` once it changes; pending forever without one.
async fn changed(leading: Option<&mut watch::Receiver<bool>>) -> Option<bool> {
    let Some(rx) = leading else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => std::future::pending().await,
    }
}

async fn sleep_ms(ms: Option<u64>) {
    tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
}

/// Delivers due notices until aborted: whenever one is journaled (`kick`), when a retry
/// is due, and every [`NOTICE_POLL_MS`] in case another process journaled some.
async fn deliver<J: RunnerJournal + 'static>(
    notifier: &Notifier<J>,
    kick: &tokio::sync::Notify,
    clock: &dyn Clock,
) {
    loop {
        let next = match notifier.deliver_due().await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "cannot deliver notices now");
                None
            }
        };
        let now = clock.now_ms();
        let wait = next.map_or(NOTICE_POLL_MS, |at| (at - now).clamp(0, NOTICE_POLL_MS));
        tokio::select! {
            () = kick.notified() => {}
            () = sleep_ms(Some(u64::try_from(wait).unwrap_or(0))) => {}
        }
    }
}
